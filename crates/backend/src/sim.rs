//! `sim`: VMs that exist only in this process, for reconciler tests and scale benchmarks. Creating
//! one takes a configurable delay; its "agent" keeps files in memory and understands a tiny command
//! language so tests can steer outcomes: `exit N`, `false`, `sleep SECONDS`, `echo TEXT`, and —
//! only when [`SimOptions::panic_command`] is on — `panic` (the server's own code panics, to test
//! that it survives that); anything else succeeds silently. It is never the only test of a feature.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use warmpool_types::agent::{
    AgentBackground, AgentExecEvent, AgentExecRequest, AgentExecResult, AgentHealth,
    IdentityRequest,
};

use crate::{Agent, AgentCallError, Backend, BackendError, VmHandle, VmSpec};

#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// How long `create` takes.
    pub create_delay: Duration,
    /// `create` fails with this message (after its delay), as a host out of resources would.
    pub create_error: Option<String>,
    /// A command `panic` panics (off by default: no input panics a server).
    pub panic_command: bool,
    /// Clones of goldens come without the golden's processes, as on `sandbox` (the steps' tests
    /// model both kinds of backend with it).
    pub clones_lose_processes: bool,
}

#[derive(Default)]
struct SimVm {
    token: String,
    files: Mutex<HashMap<String, Vec<u8>>>,
    /// Background commands: their model runs at once (`exit 3` has ended with 3, `sleep` runs).
    background: Mutex<Vec<AgentBackground>>,
}

pub struct SimBackend {
    opts: SimOptions,
    vms: Mutex<HashMap<String, Arc<SimVm>>>,
}

impl SimBackend {
    pub fn new(opts: SimOptions) -> Self {
        Self {
            opts,
            vms: Mutex::new(HashMap::new()),
        }
    }

    fn vm(&self, vm_id: &str) -> Option<Arc<SimVm>> {
        self.vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm_id)
            .cloned()
    }
}

#[async_trait]
impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn clones_keep_processes(&self) -> bool {
        !self.opts.clones_lose_processes
    }

    async fn create(&self, spec: &VmSpec) -> Result<VmHandle, BackendError> {
        tokio::time::sleep(self.opts.create_delay).await;
        if let Some(e) = &self.opts.create_error {
            return Err(BackendError::new(e.clone()));
        }
        let vm = Arc::new(SimVm {
            token: spec.agent_token.clone(),
            files: Mutex::default(),
            background: Mutex::default(),
        });
        self.vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.vm_id.clone(), vm);
        Ok(VmHandle {
            agent_url: format!("sim://{}", spec.vm_id),
            ..Default::default()
        })
    }

    async fn destroy(&self, vm_id: &str) -> Result<(), BackendError> {
        self.vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm_id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        Ok(self
            .vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect())
    }

    fn host_address_for_vm(&self) -> &str {
        "127.0.0.1"
    }

    fn agent(&self, vm_id: &str, _agent_url: &str, token: &str) -> Arc<dyn Agent> {
        Arc::new(SimAgent {
            vm: self.vm(vm_id),
            token: token.to_string(),
            vm_id: vm_id.to_string(),
            panic_command: self.opts.panic_command,
        })
    }

    async fn log_tail(&self, _vm_id: &str) -> Option<String> {
        None
    }
}

struct SimAgent {
    vm: Option<Arc<SimVm>>,
    token: String,
    vm_id: String,
    panic_command: bool,
}

impl SimAgent {
    fn vm(&self) -> Result<&SimVm, AgentCallError> {
        let vm = self
            .vm
            .as_deref()
            .ok_or_else(|| AgentCallError::Unreachable("no such sim VM".into()))?;
        if vm.token != self.token {
            return Err(AgentCallError::Unauthorized);
        }
        Ok(vm)
    }

    async fn run(&self, req: &AgentExecRequest) -> Result<(i32, String), AgentCallError> {
        self.vm()?;
        if let Some(argv) = &req.argv {
            let out = if argv.iter().any(|a| a == "rev-parse") {
                format!("{}\n", "0".repeat(40))
            } else {
                String::new()
            };
            return Ok((0, out));
        }
        let command = req.command.as_deref().unwrap_or("").trim();
        let mut words = command.split_whitespace();
        Ok(match words.next() {
            Some("exit") => (
                words.next().and_then(|n| n.parse().ok()).unwrap_or(1),
                String::new(),
            ),
            Some("false") => (1, String::new()),
            Some("sleep") => {
                // `nan`, `inf`, negative: whatever a test writes, no panic.
                let secs: f64 = words
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .filter(|s| !s.is_nan())
                    .unwrap_or(0.0);
                tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 3600.0))).await;
                (0, String::new())
            }
            Some("echo") => (0, format!("{}\n", command[4..].trim())),
            Some("panic") if self.panic_command => panic!("the sim backend was told to panic"),
            _ => (0, String::new()),
        })
    }
}

#[async_trait]
impl Agent for SimAgent {
    async fn health(&self) -> Result<AgentHealth, AgentCallError> {
        self.vm()?;
        Ok(AgentHealth {
            version: format!("sim-{}", env!("CARGO_PKG_VERSION")),
            hostname: self.vm_id.clone(),
        })
    }

    async fn exec_stream(
        &self,
        req: AgentExecRequest,
        on_event: &mut (dyn FnMut(AgentExecEvent) + Send),
    ) -> Result<(), AgentCallError> {
        let started = Instant::now();
        let (exit_code, data) = self.run(&req).await?;
        if !data.is_empty() {
            on_event(AgentExecEvent::Output { data });
        }
        on_event(AgentExecEvent::Exit {
            exit_code,
            timed_out: false,
            duration_ms: started.elapsed().as_millis() as u64,
        });
        Ok(())
    }

    async fn exec(&self, req: AgentExecRequest) -> Result<AgentExecResult, AgentCallError> {
        let started = Instant::now();
        let background = req.background_log.is_some();
        let (exit_code, output) = if background {
            let cmd = req.command.as_deref().unwrap_or("").trim();
            let ended = match cmd.split_whitespace().next() {
                Some("exit") | Some("false") => Some(self.run(&req).await?.0),
                _ => None,
            };
            let mut all = self
                .vm()?
                .background
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let pid = all.len() as u32 + 100;
            all.push(AgentBackground {
                pid,
                log: req.background_log.clone().unwrap_or_default(),
                exit_code: ended,
            });
            (0, String::new())
        } else {
            self.run(&req).await?
        };
        Ok(AgentExecResult {
            exit_code,
            output,
            duration_ms: started.elapsed().as_millis() as u64,
            truncated: false,
            timed_out: false,
            pid: background.then_some(1),
        })
    }

    async fn write_file(
        &self,
        path: &str,
        data: Vec<u8>,
        _mode: u32,
    ) -> Result<(), AgentCallError> {
        self.vm()?
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), data);
        Ok(())
    }

    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, AgentCallError> {
        Ok(self
            .vm()?
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned())
    }

    async fn set_identity(&self, _identity: &IdentityRequest) -> Result<(), AgentCallError> {
        self.vm()?;
        Ok(())
    }

    async fn background(&self, _settle: Duration) -> Result<Vec<AgentBackground>, AgentCallError> {
        Ok(self
            .vm()?
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever `sleep` is given, the fake answers (a test's typo never panics the server).
    #[tokio::test]
    async fn sleep_takes_any_word() {
        let b = SimBackend::new(SimOptions::default());
        let spec = VmSpec {
            vm_id: "vm-sleeptest000000".into(),
            agent_token: "t".repeat(20),
            ..VmSpec::default()
        };
        let h = b.create(&spec).await.unwrap();
        let agent = b.agent(&spec.vm_id, &h.agent_url, &spec.agent_token);
        for w in ["nan", "NaN", "-nan", "-inf", "-5", "1e-300", "x", ""] {
            let r = agent
                .exec(AgentExecRequest {
                    command: Some(format!("sleep {w}")),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(r.exit_code, 0, "sleep {w}");
        }
    }
}
