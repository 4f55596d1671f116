//! Running commands in the VM for a step: setup commands in order (the first failure fails the
//! step), background services (which must still run when the step ends), and one command with
//! its output streamed into the step's log.

use std::time::Duration;

use serde_json::json;
use warmpool_types::agent::{AgentExecEvent, AgentExecRequest};
use warmpool_types::api::SetupCommand;

use super::StepCx;

/// How long a background command gets from its start to show it cannot start.
const BACKGROUND_SETTLE: Duration = Duration::from_millis(300);

/// One line, at most `max` characters (an ellipsis marks a cut).
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let first = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let multi = s.trim().lines().count() > 1;
    if first.chars().count() > max {
        format!("{}…", first.chars().take(max).collect::<String>())
    } else if multi {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

/// How a command is called in logs and errors: its name, or its first line.
fn label(c: &SetupCommand) -> String {
    if c.name.trim().is_empty() {
        one_line(&c.command, 80)
    } else {
        one_line(&c.name, 80)
    }
}

/// A file name for a background command's log.
fn log_name(name: &str, index: usize) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() || s.starts_with('.') || s.chars().all(|c| c == '_') {
        format!("command-{index}")
    } else {
        s
    }
}

/// Runs commands in order from `cwd`; the first that fails (or times out) fails the step. `what`
/// names them in the log when there are none.
pub(crate) async fn run_commands(
    cx: &mut StepCx<'_>,
    cmds: &[SetupCommand],
    cwd: &str,
    what: &str,
) -> Result<(), String> {
    if cmds.is_empty() {
        cx.log
            .line(&format!("no {what} are configured; nothing to run"));
        return Ok(());
    }
    let timeout = cx.svc.timeouts.command;
    let mut started_background = false;
    for (index, c) in cmds.iter().enumerate() {
        let label = label(c);
        cx.log.line(&format!("$ {label}"));
        if c.background == Some(true) {
            start_background(cx, c, index, cwd).await?;
            started_background = true;
            continue;
        }
        let req = AgentExecRequest {
            command: Some(c.command.clone()),
            cwd: Some(cwd.into()),
            timeout_ms: Some(timeout.as_millis() as u64),
            ..Default::default()
        };
        let (code, timed_out) = exec_logged(cx, req, &label).await?;
        if timed_out {
            return Err(format!(
                "timed out after {} s: `{label}`",
                timeout.as_secs()
            ));
        }
        if code != 0 {
            return Err(format!("command `{label}` exited with status {code}"));
        }
    }
    if started_background {
        // A service that cannot start (its port taken, say) fails the step that started it.
        check_background(cx, false).await?;
    }
    Ok(())
}

/// Starts background command `c` (the `index`th of its list) from `cwd`, its output to a log
/// file of its own, and keeps it among the boot's background commands.
async fn start_background(
    cx: &mut StepCx<'_>,
    c: &SetupCommand,
    index: usize,
    cwd: &str,
) -> Result<(), String> {
    let label = label(c);
    let file = format!("/var/log/warmpool/{}.log", log_name(&c.name, index));
    let req = AgentExecRequest {
        command: Some(c.command.clone()),
        cwd: Some(cwd.into()),
        background_log: Some(file.clone()),
        ..Default::default()
    };
    let res = cx
        .agent()?
        .exec(req)
        .await
        .map_err(|e| format!("could not start background command `{label}`: {e}"))?;
    cx.log.push(&res.output);
    cx.vm.background.insert(file, label);
    Ok(())
}

/// On a clone of a golden whose running processes did not come with it (a filesystem layer, not
/// a memory snapshot): starts the background commands of `cmds` again, as the golden's step did,
/// and fails like that step would when one cannot start. Nothing to do where processes come with
/// the clone.
pub(crate) async fn restart_background(
    cx: &mut StepCx<'_>,
    cmds: &[SetupCommand],
    cwd: &str,
) -> Result<(), String> {
    if cx.svc.backend.clones_keep_processes() {
        return Ok(());
    }
    let mut started = false;
    for (index, c) in cmds.iter().enumerate() {
        if c.background != Some(true) {
            continue;
        }
        cx.log.line(&format!(
            "$ {} (started again in this VM: processes do not come with a golden's files)",
            label(c)
        ));
        start_background(cx, c, index, cwd).await?;
        started = true;
    }
    if started {
        check_background(cx, false).await?;
    }
    Ok(())
}

/// Fails when a background command of this boot has ended with a non-zero status, naming it and
/// putting the end of its log into the step's output. Each gets up to [`BACKGROUND_SETTLE`] from
/// its start to die: a service that cannot start dies in its first moments. With `count`, the
/// step's metadata says how many still run.
pub(crate) async fn check_background(cx: &mut StepCx<'_>, count: bool) -> Result<(), String> {
    if cx.vm.background.is_empty() {
        return Ok(());
    }
    let agent = cx.agent()?;
    let all = agent
        .background(BACKGROUND_SETTLE)
        .await
        .map_err(|e| format!("could not ask the VM about its background commands: {e}"))?;
    if count {
        cx.meta.insert(
            "backgroundRunning".into(),
            json!(all.iter().filter(|b| b.exit_code.is_none()).count()),
        );
    }
    let Some((b, code)) = all
        .iter()
        .find_map(|b| b.exit_code.filter(|c| *c != 0).map(|c| (b, c)))
    else {
        return Ok(());
    };
    let label = cx
        .vm
        .background
        .get(&b.log)
        .cloned()
        .unwrap_or_else(|| b.log.clone());
    cx.log.line(&format!("--- the end of {} ---", b.log));
    // argv, not a shell line: the log's name came from the command's name.
    let tail = AgentExecRequest {
        argv: Some(
            ["tail", "-n", "40", "--", b.log.as_str()]
                .map(String::from)
                .to_vec(),
        ),
        timeout_ms: Some(10_000),
        ..Default::default()
    };
    match agent.exec(tail).await {
        Ok(r) => {
            cx.log.push(&r.output);
            if !r.output.ends_with('\n') {
                cx.log.line("");
            }
        }
        Err(e) => cx.log.line(&format!("(the log could not be read: {e})")),
    }
    Err(format!(
        "background command `{label}` exited with status {code}"
    ))
}

/// Runs one command in the VM with its output going to the step's log; answers its exit code and
/// whether it timed out.
pub(crate) async fn exec_logged(
    cx: &mut StepCx<'_>,
    req: AgentExecRequest,
    label: &str,
) -> Result<(i32, bool), String> {
    let agent = cx.agent()?;
    // The agent enforces the command's own timeout; this bound is for a VM that goes silent.
    let guard = Duration::from_millis(req.timeout_ms.unwrap_or(0)) + Duration::from_secs(60);
    let mut exit: Option<(i32, bool)> = None;
    let mut spawn_error: Option<String> = None;
    let log = &mut *cx.log;
    let mut on_event = |ev| match ev {
        AgentExecEvent::Output { data } => log.push(&data),
        AgentExecEvent::Exit {
            exit_code,
            timed_out,
            ..
        } => exit = Some((exit_code, timed_out)),
        AgentExecEvent::SpawnError { message } => spawn_error = Some(message),
        AgentExecEvent::Started { .. } => {}
    };
    let call = agent.exec_stream(req, &mut on_event);
    match tokio::time::timeout(guard, call).await {
        Err(_) => return Err(format!("the VM stopped answering while running `{label}`")),
        Ok(Err(e)) => {
            return Err(format!(
                "lost contact with the VM's server while running `{label}`: {e}"
            ))
        }
        Ok(Ok(())) => {}
    }
    if let Some(m) = spawn_error {
        cx.log.line(&m);
        return Err(format!("could not start `{label}`: {m}"));
    }
    exit.ok_or_else(|| format!("the VM's server gave no exit status for `{label}`"))
}

/// Runs git commands (argv, called `label` in errors) in the VM in order; the first that fails
/// fails with `fail(reason)`.
pub(crate) async fn git_in_vm(
    cx: &mut StepCx<'_>,
    cmds: Vec<Vec<String>>,
    label: &str,
    fail: &(dyn Fn(&str) -> String + Send + Sync),
) -> Result<(), String> {
    let timeout = cx.svc.timeouts.command;
    for argv in cmds {
        let req = AgentExecRequest {
            argv: Some(argv),
            cwd: Some("/home".into()),
            timeout_ms: Some(timeout.as_millis() as u64),
            ..Default::default()
        };
        let (code, timed_out) = exec_logged(cx, req, label).await?;
        if timed_out {
            return Err(fail(&format!("timed out after {} s", timeout.as_secs())));
        }
        if code != 0 {
            return Err(fail(&format!("git exited with status {code}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_one_line() {
        assert_eq!(one_line("a\nb", 10), "a …");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(log_name("npm ci / dev", 0), "npm_ci___dev");
        assert_eq!(log_name("../..", 2), "command-2");
    }
}
