//! What each client command does and prints.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::Value;
use warmpool_client::{Claim, Client};
use warmpool_types::api::{
    ClaimBody, ClaimResponse, ClearWarmPoolBody, CreateProjectBody, DevboxRepo, EnvVarInput,
    ExecBody, ListInstancesQuery, ListProjectsQuery, Project, PutEnvVarsBody, RepoInput, Resources,
    SetupCommand, StepRecord, TestWarmPoolBootBody, UpdateAutoscaleBody, UpdateDevboxBody,
    UpdateResourcesBody, UpdateWarmPoolBody,
};
use warmpool_types::events::Event;
use warmpool_types::state::{StepResult, StepStatus};

use super::{
    Cli, Command, DevboxCmd, EnvCmd, ImageCmd, InstanceCmd, PoolCmd, ProjectCmd, ResourcesCmd,
    TokenCmd, VmsCmd,
};
use crate::provision::envfile::shell_quote;

/// The admin token of the local data dir, for when none is given.
fn local_token() -> anyhow::Result<String> {
    let dir = std::env::var_os("WARMPOOL_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("./warmpool-data"));
    let path = dir.join("admin-token");
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .with_context(|| {
            format!(
                "no --token given and cannot read {} (set WARMPOOL_TOKEN, or WARMPOOL_DATA_DIR to the server's data dir)",
                path.display()
            )
        })
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints an answer with its keys in alphabetical order, as these commands always have (they
/// printed the server's JSON as a map): scripts reading their output keep working.
fn print_json_sorted(v: &impl serde::Serialize) -> anyhow::Result<()> {
    print_json(&serde_json::to_value(v)?);
    Ok(())
}

/// `NAME=COMMAND` pairs, in order; names listed in `background` start in the background.
fn parse_commands(cmds: &[String], background: &[String]) -> anyhow::Result<Vec<SetupCommand>> {
    let bg: HashSet<&str> = background.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for c in cmds {
        let Some((name, command)) = c.split_once('=') else {
            bail!("--cmd takes NAME=COMMAND, got `{c}`");
        };
        seen.insert(name);
        out.push(SetupCommand {
            name: name.to_string(),
            command: command.to_string(),
            background: bg.contains(name).then_some(true),
        });
    }
    if let Some(missing) = bg.iter().find(|b| !seen.contains(*b)) {
        bail!("--background {missing} names no --cmd");
    }
    Ok(out)
}

/// `owner/name=URL[#branch]`; a local path is made absolute (the server resolves nothing relative).
fn parse_repo(spec: &str) -> anyhow::Result<RepoInput> {
    let Some((full, rest)) = spec.split_once('=') else {
        bail!("--repo takes owner/name=URL[#branch], got `{spec}`");
    };
    let (url, branch) = match rest.rsplit_once('#') {
        Some((u, b)) => (u, Some(b)),
        None => (rest, None),
    };
    let looks_local = !url.contains("://") && !url.contains('@') && !url.contains(':');
    let url = if looks_local && Path::new(url).exists() {
        std::path::absolute(url)?.display().to_string()
    } else {
        url.to_string()
    };
    Ok(RepoInput {
        repo_full_name: full.to_string(),
        url,
        branch: branch.map(str::to_string),
    })
}

async fn project_id(c: &Client, p: &str) -> anyhow::Result<String> {
    if p.starts_with("proj_") {
        return Ok(p.to_string());
    }
    let mut query = ListProjectsQuery {
        limit: Some(100),
        cursor: None,
    };
    let mut found = Vec::new();
    loop {
        let page = c.list_projects(&query).await?;
        found.extend(page.items.into_iter().filter(|x| x.name == p).map(|x| x.id));
        match page.next_cursor {
            Some(n) if page.has_more => query.cursor = Some(n),
            _ => break,
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no project is named `{p}` (give its id, proj_...)"),
        _ => bail!("several projects are named `{p}`; give the id instead"),
    }
}

fn print_project(p: &Project) {
    println!("{}  {}  ({})", p.id, p.name, p.task_code);
    if let Some(d) = &p.description {
        println!("  {d}");
    }
    for r in &p.repos {
        println!(
            "  repo {} @ {}",
            r.repo_full_name,
            if r.branch.is_empty() {
                "(default)"
            } else {
                &r.branch
            }
        );
    }
}

fn step_line(s: &StepRecord) -> String {
    let mark = match s.status {
        StepResult::Success => "ok ",
        StepResult::Error => "ERR",
    };
    let what = s
        .metadata
        .as_ref()
        .and_then(|m| m.get("repo"))
        .and_then(Value::as_str)
        .map(|r| format!(" [{r}]"))
        .unwrap_or_default();
    let dur = s
        .duration_ms
        .map(|d| format!(" {d} ms"))
        .unwrap_or_default();
    match &s.error {
        Some(e) => format!("  {mark} {}{what}{dur}: {e}", s.name),
        None => format!("  {mark} {}{what}{dur}", s.name),
    }
}

fn output_tail(s: &StepRecord, lines: usize) -> String {
    let out = s.output.as_deref().unwrap_or("");
    let all: Vec<&str> = out.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Prints a boot's events as they come: output (indented, under its step) and each step as it
/// ends. Returns at the `done` event.
struct LivePrinter {
    /// Prefix for every line (the instance, when following several).
    prefix: String,
    step: String,
    header_shown: bool,
    at_line_start: bool,
}

impl LivePrinter {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            step: String::new(),
            header_shown: false,
            at_line_start: true,
        }
    }

    fn end_line(&mut self) {
        if !self.at_line_start {
            println!();
            self.at_line_start = true;
        }
    }

    /// Handles one event; true when it was the last (`done`).
    fn event(&mut self, event: &Event) -> bool {
        use std::io::Write;
        match event {
            Event::Step(s) if s.status == StepStatus::Running => {
                self.step = s.name.as_str().to_string();
                self.header_shown = false;
            }
            Event::Step(s) => {
                self.end_line();
                let rec = StepRecord {
                    name: s.name.as_str().to_string(),
                    status: if s.status == StepStatus::Success {
                        StepResult::Success
                    } else {
                        StepResult::Error
                    },
                    error: s.error.clone(),
                    output: None,
                    duration_ms: s.duration_ms,
                    timestamp: String::new(),
                    metadata: Some(s.metadata.clone()),
                };
                println!("{}{}", self.prefix, step_line(&rec));
            }
            Event::Output(o) => {
                if !self.header_shown {
                    self.end_line();
                    println!("{}  ..  {}", self.prefix, self.step);
                    self.header_shown = true;
                }
                let mut out = String::new();
                for piece in o.data.split_inclusive('\n') {
                    if self.at_line_start {
                        out.push_str(&self.prefix);
                        out.push_str("      ");
                    }
                    out.push_str(piece);
                    self.at_line_start = piece.ends_with('\n');
                }
                print!("{out}");
                let _ = std::io::stdout().flush();
            }
            Event::Done(_) => {
                self.end_line();
                return true;
            }
        }
        false
    }
}

/// How `follow` shows what happens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Show {
    /// Steps and output as they come, then a report.
    Live,
    /// The final instance detail as JSON.
    Json,
    /// Nothing.
    Quiet,
}

/// Follows an instance live until it is ready or failed, then reports; answers whether it is
/// ready (or claimed).
async fn follow(c: &Client, pid: &str, id: &str, show: Show) -> anyhow::Result<bool> {
    let json_out = show != Show::Live;
    let mut events = c.instance_events(pid, id).await?;
    let mut printer = LivePrinter::new(String::new());
    while let Some(event) = events.next().await {
        let event = event?;
        if json_out {
            if matches!(event, Event::Done(_)) {
                break;
            }
            continue;
        }
        if printer.event(&event) {
            break;
        }
    }
    let d = c.get_instance(pid, id).await?;
    if json_out {
        if show == Show::Json {
            print_json(&d);
        }
        return Ok(d.summary.success);
    }
    if d.summary.success {
        println!(
            "ready: {} ({}/{} steps, {:.1} s). Run commands in it with:\n  warmpool exec {pid} {id} -- <command>",
            d.instance_id,
            d.summary.completed_steps,
            d.summary.total_steps,
            d.summary.total_duration_ms as f64 / 1000.0
        );
        return Ok(true);
    }
    println!(
        "failed at {}: {}",
        d.summary.failed_step.as_deref().unwrap_or("(no step)"),
        d.summary.error.as_deref().unwrap_or("unknown error")
    );
    if let Some(s) = d.steps.iter().find(|s| s.status == StepResult::Error) {
        let tail = output_tail(s, 25);
        if !tail.is_empty() {
            println!("--- the end of {}'s output ---\n{tail}", s.name);
        }
    }
    Ok(false)
}

/// Prints every boot of a project as it happens, until interrupted.
async fn watch(c: &Client, pid: &str) -> anyhow::Result<()> {
    let w = c.get_warm_pool(pid).await?;
    println!(
        "watching {pid}: ready {}, provisioning {}, failed {} (Ctrl-C to stop)",
        w.status.ready, w.status.provisioning, w.status.failed
    );
    let mut events = c.pool_events(pid).await?;
    let mut printers: std::collections::HashMap<String, LivePrinter> = Default::default();
    while let Some(event) = events.next().await {
        let event = event?;
        let id = match &event {
            Event::Step(s) => s.instance_id.clone(),
            Event::Output(o) => o.instance_id.clone(),
            Event::Done(d) => d.instance_id.clone(),
        };
        let printer = printers
            .entry(id.clone())
            .or_insert_with(|| LivePrinter::new(format!("[{id}] ")));
        if printer.event(&event) {
            printers.remove(&id);
            let status = match &event {
                Event::Done(d) => d.status.as_str(),
                _ => "?",
            };
            let w = c.get_warm_pool(pid).await?;
            println!(
                "[{id}] {status} — pool: ready {}, provisioning {}, failed {}",
                w.status.ready, w.status.provisioning, w.status.failed
            );
        }
    }
    Ok(())
}

fn print_access(pid: &str, r: &ClaimResponse) {
    let i = &r.instance;
    println!(
        "claimed {} ({}), {}",
        i.id,
        i.instance_id,
        if r.warm {
            "warm: ready from the pool"
        } else {
            "cold: booted for this claim"
        }
    );
    if let Some(vm) = &r.vm {
        println!("  agent:   {} (token {})", vm.agent_url, vm.agent_token);
        println!("  run:     warmpool exec {pid} {} -- <command>", i.id);
        println!(
            "  direct:  curl -H 'Authorization: Bearer {}' -H 'content-type: application/json' -d '{{\"command\": \"hostname\"}}' {}/v1/exec",
            vm.agent_token, vm.agent_url
        );
        println!("  release: warmpool release {pid} {}", i.id);
    }
    if let Some(at) = &r.expires_at {
        println!(
            "  lease:   until {at}; extend it with warmpool renew {pid} {}",
            i.id
        );
    }
}

async fn claim(
    c: &Client,
    pid: &str,
    task_id: Option<String>,
    wait: u32,
    ttl: Option<u32>,
    json_out: bool,
    quiet: bool,
) -> anyhow::Result<i32> {
    let body = ClaimBody {
        task_id,
        wait_seconds: Some(f64::from(wait)),
        ttl_seconds: ttl.map(f64::from),
    };
    let (pending, mut r) = match c.claim(pid, &body).await? {
        Claim::Ready(r) => (false, r),
        Claim::Pending(r) => (true, r),
    };
    if pending {
        let id = r.instance.id.clone();
        if r.instance.status == "provisioning" {
            if !json_out && !quiet {
                println!("no VM was ready; {id} is booting for this claim:");
            }
            let show = if quiet || json_out {
                Show::Quiet
            } else {
                Show::Live
            };
            follow(c, pid, &id, show).await?;
        }
        let d = c.get_instance(pid, &id).await?;
        if d.status != "claimed" {
            bail!(
                "the VM booted for this claim failed at {}: {}",
                d.summary.failed_step.as_deref().unwrap_or("(no step)"),
                d.summary.error.as_deref().unwrap_or("unknown error")
            );
        }
        r.instance.status = d.status;
        r.vm = Some(c.vm_access(pid, &id).await?);
        // Its lease started when it became ready.
        r.expires_at = c.instance_lifecycle(pid, &id).await?.expires_at;
    }
    if quiet {
        println!("{}", r.instance.id);
    } else if json_out {
        print_json(&r);
    } else {
        print_access(pid, &r);
    }
    Ok(0)
}

fn build_image(
    cache_dir: Option<PathBuf>,
    mirror: &str,
    agent_bin: Option<PathBuf>,
    qemu: bool,
) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressStyle};
    use warmpool_backend::image::{self, Progress};
    let cache = crate::serve::absolute(&cache_dir.unwrap_or_else(crate::serve::default_cache_dir))?;
    let agent = crate::serve::find_agent_bin(agent_bin.as_deref())?;
    let qemu_files = |rootfs: &std::path::Path| -> anyhow::Result<()> {
        if qemu {
            println!("building the qemu guest: kernel, initramfs, base disk");
            let files = warmpool_backend::qemu::guest::ensure(&cache, rootfs, &agent)
                .map_err(anyhow::Error::msg)?;
            println!(
                "qemu guest: {}, {}, {}",
                files.kernel.display(),
                files.initrd.display(),
                files.base_disk.display()
            );
        }
        Ok(())
    };
    if image::is_built(&cache) {
        println!(
            "the guest image is already built: {}",
            image::image_dir(&cache).display()
        );
        return qemu_files(&image::rootfs_dir(&cache));
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let rootfs = image::build(&cache, mirror, &agent, &mut |p| match p {
        Progress::Phase(m) => bar.set_message(m),
        Progress::Step { done, total, phase } => {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(phase);
        }
        Progress::Line(l) => bar.println(l),
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    println!("built the guest image: {}", rootfs.display());
    qemu_files(&rootfs)
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let Cli {
        url,
        token,
        json: json_out,
        ca_cert,
        command,
    } = cli;
    let command = match command {
        Command::Serve(args) => {
            crate::serve::serve(*args).await?;
            return Ok(0);
        }
        Command::Bench(args) => {
            crate::bench::run(args).await?;
            return Ok(0);
        }
        Command::Vms(cmd) => return local_vms(cmd, json_out).await,
        Command::Image(ImageCmd::Build {
            cache_dir,
            debian_mirror,
            agent_bin,
            qemu,
        }) => {
            tokio::task::spawn_blocking(move || {
                build_image(cache_dir, &debian_mirror, agent_bin, qemu)
            })
            .await??;
            return Ok(0);
        }
        other => other,
    };
    let token = match token {
        Some(t) => t,
        None => local_token()?,
    };
    let c = Client::new(&url, &token, ca_cert.as_deref())?;
    match command {
        Command::Serve(_) | Command::Bench(_) | Command::Image(_) | Command::Vms(_) => {
            unreachable!("handled above")
        }
        Command::Project(cmd) => match cmd {
            ProjectCmd::Create {
                name,
                repos,
                description,
            } => {
                let repos = repos
                    .iter()
                    .map(|r| parse_repo(r))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let body = CreateProjectBody {
                    name,
                    description,
                    repos,
                };
                let p = c.create_project(&body).await?;
                if json_out {
                    print_json(&p);
                } else {
                    print_project(&p);
                }
            }
            ProjectCmd::List => {
                let page = c
                    .list_projects(&ListProjectsQuery {
                        limit: Some(100),
                        cursor: None,
                    })
                    .await?;
                if json_out {
                    print_json(&page);
                } else {
                    page.items.iter().for_each(print_project);
                }
            }
            ProjectCmd::Show { project } => {
                let pid = project_id(&c, &project).await?;
                let p = c.get_project(&pid).await?;
                if json_out {
                    print_json(&p);
                } else {
                    print_project(&p);
                }
            }
            ProjectCmd::Delete { project } => {
                let pid = project_id(&c, &project).await?;
                c.delete_project(&pid).await?;
                println!("deleted {pid}");
            }
        },
        Command::Env(cmd) => match cmd {
            EnvCmd::Set { project, vars } => {
                let pid = project_id(&c, &project).await?;
                let mut items = Vec::new();
                for v in &vars {
                    let Some((name, value)) = v.split_once('=') else {
                        bail!("give NAME=VALUE, got `{v}`");
                    };
                    items.push(EnvVarInput {
                        name: name.to_string(),
                        value: value.to_string(),
                    });
                }
                let r = c
                    .put_env_vars(&pid, &PutEnvVarsBody { variables: items })
                    .await?;
                if json_out {
                    print_json(&r);
                } else {
                    println!(
                        "set {} variable(s); the project has {}",
                        vars.len(),
                        r.items.len()
                    );
                }
            }
            EnvCmd::List { project } => {
                let pid = project_id(&c, &project).await?;
                let r = c.list_env_vars(&pid).await?;
                if json_out {
                    print_json(&r);
                } else {
                    for v in r.items {
                        println!("{}  (set {})", v.name, v.updated_at);
                    }
                }
            }
            EnvCmd::Rm { project, name } => {
                let pid = project_id(&c, &project).await?;
                c.delete_env_var(&pid, &name).await?;
                println!("deleted {name}");
            }
        },
        Command::Devbox(cmd) => match cmd {
            DevboxCmd::Show { project } => {
                let pid = project_id(&c, &project).await?;
                print_json_sorted(&c.get_devbox(&pid).await?)?;
            }
            DevboxCmd::Set {
                project,
                repo,
                cmds,
                background,
            } => {
                let pid = project_id(&c, &project).await?;
                let list = parse_commands(&cmds, &background)?;
                let body = match repo {
                    Some(r) => UpdateDevboxBody {
                        setup_commands: None,
                        repos: Some(vec![DevboxRepo {
                            repo_full_name: r,
                            setup_commands: list,
                        }]),
                    },
                    None => UpdateDevboxBody {
                        setup_commands: Some(list),
                        repos: None,
                    },
                };
                print_json_sorted(&c.update_devbox(&pid, &body).await?)?;
            }
        },
        Command::Resources(cmd) => match cmd {
            ResourcesCmd::Show { project } => {
                let pid = project_id(&c, &project).await?;
                let r = c.get_resources(&pid).await?;
                print_resources(&r, json_out);
            }
            ResourcesCmd::Set {
                project,
                cpus,
                memory_mb,
                pids_max,
                disk_mb,
            } => {
                let pid = project_id(&c, &project).await?;
                let body = UpdateResourcesBody {
                    cpus,
                    memory_mb,
                    pids_max,
                    disk_mb,
                };
                let r = c.update_resources(&pid, &body).await?;
                print_resources(&r, json_out);
            }
        },
        Command::Pool(cmd) => match cmd {
            PoolCmd::Status { project } => {
                let pid = project_id(&c, &project).await?;
                let w = c.get_warm_pool(&pid).await?;
                if json_out {
                    print_json(&w);
                } else {
                    match &w.config {
                        None => println!("no warm pool configured yet (allowed: {})", w.allowed),
                        Some(cfg) => {
                            println!(
                                "enabled: {}  target size: {}  max age: {} min  branch: {}",
                                cfg.enabled,
                                cfg.target_size,
                                cfg.max_age_minutes,
                                cfg.branch.as_deref().unwrap_or("(each repo's)")
                            );
                            for s in cfg.setup_commands.iter().flatten() {
                                let bg = if s.background == Some(true) {
                                    " (background)"
                                } else {
                                    ""
                                };
                                println!("  $ {}{bg}: {}", s.name, s.command);
                            }
                        }
                    }
                    println!(
                        "ready: {}  provisioning: {}  failed: {}",
                        w.status.ready, w.status.provisioning, w.status.failed
                    );
                }
            }
            PoolCmd::Stats { project } => {
                let pid = project_id(&c, &project).await?;
                let st = c.pool_stats(&pid).await?;
                if json_out {
                    print_json(&st);
                } else {
                    let ms = |v: Option<u64>| {
                        v.map(|m| format!("{:.1} s", m as f64 / 1000.0))
                            .unwrap_or("-".into())
                    };
                    println!(
                        "target {}  ready {}  provisioning {}  failed {}  claimed {}  stale {}",
                        st.target_size.map(|t| t.to_string()).unwrap_or("-".into()),
                        st.ready,
                        st.provisioning,
                        st.failed,
                        st.claimed,
                        st.stale
                    );
                    println!(
                        "claims: {} warm, {} cold; boot time p50 {}, p95 {}",
                        st.warm_claims,
                        st.cold_claims,
                        ms(st.provisioning_p50_ms),
                        ms(st.provisioning_p95_ms)
                    );
                    if let Some(a) = &st.autoscale {
                        println!(
                            "autoscale {}..{}: effective target {} ({}): {}",
                            a.min,
                            a.max,
                            st.effective_target
                                .map(|t| t.to_string())
                                .unwrap_or("-".into()),
                            a.reason.map(|r| r.as_str()).unwrap_or("undecided"),
                            a.why
                        );
                    }
                    if let Some(d) = &st.degraded {
                        println!(
                            "DEGRADED since {}: {} failed: {} — fix the setup (or run a test boot that succeeds) to resume",
                            d.since,
                            d.failed_step.as_deref().unwrap_or("?"),
                            d.error.as_deref().unwrap_or("?")
                        );
                    } else if let Some(t) = &st.next_attempt_at {
                        println!("backing off after failures; next boot at {t}");
                    }
                }
            }
            PoolCmd::Watch { project } => {
                let pid = project_id(&c, &project).await?;
                watch(&c, &pid).await?;
            }
            PoolCmd::Set {
                project,
                size,
                max_age,
                branch,
                no_branch,
                enabled,
                cmds,
                background,
                no_cmds,
            } => {
                let pid = project_id(&c, &project).await?;
                // Absent fields stay as they are; `Some(None)` sets one to null.
                let mut body = UpdateWarmPoolBody {
                    enabled,
                    target_size: size.map(f64::from),
                    max_age_minutes: max_age.map(f64::from),
                    branch: branch.map(Some),
                    setup_commands: None,
                };
                if no_branch {
                    body.branch = Some(None);
                }
                if !cmds.is_empty() {
                    body.setup_commands = Some(Some(parse_commands(&cmds, &background)?));
                }
                if no_cmds {
                    body.setup_commands = Some(None);
                }
                print_json_sorted(&c.update_warm_pool(&pid, &body).await?)?;
            }
            PoolCmd::Autoscale {
                project,
                enabled,
                min,
                max,
            } => {
                let pid = project_id(&c, &project).await?;
                let a = if enabled.is_some() || min.is_some() || max.is_some() {
                    let body = UpdateAutoscaleBody {
                        enabled,
                        min: min.map(f64::from),
                        max: max.map(f64::from),
                    };
                    c.update_autoscale(&pid, &body).await?
                } else {
                    c.get_autoscale(&pid).await?
                };
                if json_out {
                    print_json(&a);
                } else {
                    let st = c.pool_stats(&pid).await?;
                    let on = if a.enabled { "on" } else { "off" };
                    println!("autoscale {on}, {} to {} VMs", a.min, a.max);
                    let target = st.effective_target.map(|t| t.to_string());
                    println!("effective target: {}", target.unwrap_or("-".into()));
                    if let Some(s) = &st.autoscale {
                        println!("why: {}", s.why);
                    }
                }
            }
            PoolCmd::Test {
                project,
                wait,
                cmds,
                background,
            } => {
                let pid = project_id(&c, &project).await?;
                let body = TestWarmPoolBootBody {
                    setup_commands: if cmds.is_empty() {
                        None
                    } else {
                        Some(Some(parse_commands(&cmds, &background)?))
                    },
                };
                let r = c.test_boot(&pid, &body).await?;
                if !wait {
                    if json_out {
                        print_json(&r);
                    } else {
                        println!("{}", r.id);
                    }
                    return Ok(0);
                }
                if !json_out {
                    println!("test boot {} started", r.id);
                }
                return Ok(
                    if follow(
                        &c,
                        &pid,
                        &r.id,
                        if json_out { Show::Json } else { Show::Live },
                    )
                    .await?
                    {
                        0
                    } else {
                        1
                    },
                );
            }
            PoolCmd::Clear { project, replenish } => {
                let pid = project_id(&c, &project).await?;
                let body = ClearWarmPoolBody {
                    replenish: Some(replenish),
                };
                print_json_sorted(&c.clear_warm_pool(&pid, &body).await?)?;
            }
        },
        Command::Instance(cmd) => match cmd {
            InstanceCmd::List {
                project,
                status,
                limit,
                quiet,
            } => {
                let pid = project_id(&c, &project).await?;
                let query = ListInstancesQuery {
                    limit: Some(f64::from(limit.unwrap_or(20))),
                    status,
                };
                let r = c.list_instances(&pid, &query).await?;
                if json_out {
                    print_json(&r);
                } else if quiet {
                    r.items.iter().for_each(|i| println!("{}", i.id));
                } else {
                    for i in r.items {
                        println!(
                            "{}  {}  {:<12} {}{}",
                            i.id,
                            i.instance_id,
                            i.status,
                            if i.is_test { "test " } else { "" },
                            i.failure_reason
                                .map(|f| format!("— {f}"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
            InstanceCmd::Show {
                project,
                instance,
                output,
                wait,
            } => {
                let pid = project_id(&c, &project).await?;
                if wait {
                    let ok = follow(
                        &c,
                        &pid,
                        &instance,
                        if json_out { Show::Json } else { Show::Live },
                    )
                    .await?;
                    if json_out || !output {
                        return Ok(if ok { 0 } else { 1 });
                    }
                    println!();
                }
                let d = c.get_instance(&pid, &instance).await?;
                if json_out {
                    print_json(&d);
                } else {
                    println!(
                        "{}  {}  {}{}  {}/{} steps  {:.1} s",
                        d.id,
                        d.instance_id,
                        d.status,
                        if d.is_test { " (test)" } else { "" },
                        d.summary.completed_steps,
                        d.summary.total_steps,
                        d.summary.total_duration_ms as f64 / 1000.0
                    );
                    if let (Some(step), Some(err)) = (&d.summary.failed_step, &d.summary.error) {
                        println!("failed at {step}: {err}");
                    } else if let Some(err) = &d.summary.error {
                        println!("failed: {err}");
                    }
                    // Beyond the boot: who claimed it, and when and why it was ended.
                    let life = c.instance_lifecycle(&pid, &instance).await?;
                    if let Some(at) = &life.claimed_at {
                        match &life.task_id {
                            Some(task) => println!("claimed at {at} for task {task}"),
                            None => println!("claimed at {at}"),
                        }
                    }
                    if let (Some(at), None) = (&life.expires_at, &life.ended_at) {
                        println!("lease until {at} (warmpool renew {pid} {instance})");
                    }
                    if let (Some(at), Some(why)) = (&life.ended_at, life.end_reason) {
                        println!("ended at {at}: {}", why.as_str().replace('_', " "));
                    }
                    for s in &d.steps {
                        println!("{}", step_line(s));
                        if output {
                            for l in s.output.as_deref().unwrap_or("").lines() {
                                println!("      {l}");
                            }
                        }
                    }
                }
            }
            InstanceCmd::Rm { project, instance } => {
                let pid = project_id(&c, &project).await?;
                c.delete_instance(&pid, &instance).await?;
                println!("destroyed {instance}");
            }
        },
        Command::Claim {
            project,
            task_id,
            wait_seconds,
            ttl,
            quiet,
        } => {
            let pid = project_id(&c, &project).await?;
            return claim(&c, &pid, task_id, wait_seconds, ttl, json_out, quiet).await;
        }
        Command::Renew {
            project,
            instance,
            ttl,
        } => {
            let pid = project_id(&c, &project).await?;
            let body = warmpool_types::api::RenewBody {
                ttl_seconds: ttl.map(f64::from),
            };
            let life = c.renew(&pid, &instance, &body).await?;
            if json_out {
                print_json(&life);
            } else {
                println!(
                    "renewed {instance}: its lease runs until {}",
                    life.expires_at.as_deref().unwrap_or("(no lease)")
                );
            }
        }
        Command::Token(cmd) => match cmd {
            TokenCmd::Create { project } => {
                let pid = project_id(&c, &project).await?;
                let t = c.create_token(&pid).await?;
                if json_out {
                    print_json(&t);
                } else {
                    println!("{}  (id {}; shown once: store it now)", t.token, t.id);
                }
            }
            TokenCmd::List { project } => {
                let pid = project_id(&c, &project).await?;
                let r = c.list_tokens(&pid).await?;
                if json_out {
                    print_json(&r);
                } else {
                    for t in r.items {
                        println!(
                            "{}  created {}  last used {}",
                            t.id,
                            t.created_at,
                            t.last_used_at.as_deref().unwrap_or("never")
                        );
                    }
                }
            }
            TokenCmd::Rm { project, token_id } => {
                let pid = project_id(&c, &project).await?;
                c.delete_token(&pid, &token_id).await?;
                println!("revoked {token_id}");
            }
        },
        Command::Release { project, instance } => {
            let pid = project_id(&c, &project).await?;
            c.delete_instance(&pid, &instance).await?;
            println!("released {instance}: its VM is destroyed");
        }
        Command::Exec {
            project,
            instance,
            cwd,
            timeout,
            command,
        } => {
            let pid = project_id(&c, &project).await?;
            // One argument is a shell string; several are a program and its arguments.
            let command = match command.as_slice() {
                [one] => one.clone(),
                many => many
                    .iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            let body = ExecBody {
                command,
                cwd,
                env: None,
                timeout_seconds: timeout.map(|t| t as f64),
            };
            let r = c.exec(&pid, &instance, &body).await?;
            if json_out {
                print_json(&r);
            } else {
                print!("{}", r.output);
                if r.timed_out {
                    eprintln!("warmpool: the command timed out");
                }
            }
            return Ok(r.exit_code);
        }
    }
    Ok(0)
}

fn print_resources(r: &Resources, json_out: bool) {
    if json_out {
        print_json(r);
    } else {
        println!(
            "cpus: {}  memory: {} MiB  processes: {}  disk: {} MiB",
            r.cpus, r.memory_mb, r.pids_max, r.disk_mb
        );
    }
}

/// `warmpool vms`: works on the data dir itself, with no server.
async fn local_vms(cmd: VmsCmd, json_out: bool) -> anyhow::Result<i32> {
    use crate::local_vms;
    match cmd {
        VmsCmd::List { data_dir } => {
            let data_dir = crate::serve::absolute(&data_dir)?;
            let vms = local_vms::list(&data_dir);
            if json_out {
                print_json(&vms);
            } else if vms.is_empty() {
                println!("no VMs in {}", data_dir.display());
            } else {
                for v in &vms {
                    let kind = serde_json::to_value(v.backend)?;
                    let state = match v.pid {
                        Some(pid) => format!("running (pid {pid})"),
                        None => "not running".into(),
                    };
                    let spare = if v.spare {
                        " (started ahead, no project's)"
                    } else {
                        ""
                    };
                    println!("{}  {}{spare}  {state}", v.id, kind.as_str().unwrap_or(""));
                }
            }
        }
        VmsCmd::Rm {
            data_dir,
            cache_dir,
            all,
            ids,
        } => {
            let data_dir = crate::serve::absolute(&data_dir)?;
            let cache_dir =
                crate::serve::absolute(&cache_dir.unwrap_or_else(crate::serve::default_cache_dir))?;
            for id in local_vms::remove(&data_dir, &cache_dir, &ids, all).await? {
                println!("destroyed {id}");
            }
        }
    }
    Ok(0)
}
