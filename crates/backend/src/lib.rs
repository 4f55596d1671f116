//! Where VMs run. A [`Backend`] creates, lists and destroys VMs; each VM runs `warmpool-agent`, which
//! the control plane talks to through an [`Agent`]. Backends: `sandbox` (Linux namespaces over the
//! guest image, the default; run by runc), `qemu` (full VMs), `sim` (in-process fakes for
//! reconciler tests and scale benchmarks).

pub mod agent_client;
pub mod firewall;
pub mod image;
pub mod process;
pub mod qemu;
pub mod sandbox;
pub mod sim;
pub mod spawn;

use std::sync::Arc;

use async_trait::async_trait;
use warmpool_types::agent::{
    AgentBackground, AgentExecEvent, AgentExecRequest, AgentExecResult, AgentHealth,
    IdentityRequest,
};

/// What a backend needs to make one VM.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    /// `vm-...`: the VM's id and hostname.
    pub vm_id: String,
    /// The VM's agent token, handed in at boot, never baked into the image.
    pub agent_token: String,
    /// Make it a copy-on-write clone of this golden (backends with goldens only).
    pub from_golden: Option<String>,
    /// It will be saved as a golden once set up (its memory must be kept where a golden can use it).
    pub golden_builder: bool,
    /// What the VM may use.
    pub resources: Resources,
    /// Ports of services on the server host's loopback that the VM may reach (the git mirror),
    /// at the same port on its own loopback or at [`Backend::host_address_for_vm`]. Nothing
    /// else of the host is reachable from a VM.
    pub host_ports: Vec<u16>,
}

/// The names in `dir` that `keep` accepts (VM or golden ids): what a backend holds, from its
/// directories. `what` names them in the error.
pub(crate) async fn names_in(
    dir: &std::path::Path,
    keep: fn(&str) -> bool,
    what: &str,
) -> Result<Vec<String>, BackendError> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| BackendError::new(format!("cannot list {what}: {e}")))?;
    while let Ok(Some(e)) = rd.next_entry().await {
        if let Some(name) = e.file_name().to_str().filter(|n| keep(n)) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// Random bytes as hex, for machine ids and the entropy handed to clones.
pub(crate) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// The limits of one VM (a project's resources).
pub use warmpool_types::api::Resources;

/// A created VM: where its agent answers, as seen from the server.
#[derive(Debug, Clone, Default)]
pub struct VmHandle {
    pub agent_url: String,
    /// It was started ahead of need and has just been made this VM (see the sandbox backend).
    pub started_ahead: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    /// One line saying what went wrong.
    pub message: String,
    /// The end of the VM's console or setup log, when there is one.
    pub log_tail: Option<String>,
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            log_tail: None,
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `sandbox`, `qemu` or `sim`.
    fn name(&self) -> &'static str;
    /// Creates and starts the VM; returns once it runs (its agent may still be starting).
    async fn create(&self, spec: &VmSpec) -> Result<VmHandle, BackendError>;
    /// Destroys the VM and everything it left: processes, mounts, files. Destroying a VM that
    /// does not exist succeeds.
    async fn destroy(&self, vm_id: &str) -> Result<(), BackendError>;
    /// Ids of every VM this backend currently holds, including ones a crashed server left behind.
    async fn list(&self) -> Result<Vec<String>, BackendError>;
    /// The address under which a VM reaches a service on the server host's loopback.
    fn host_address_for_vm(&self) -> &str;
    /// A client for the agent of a VM.
    fn agent(&self, vm_id: &str, agent_url: &str, token: &str) -> Arc<dyn Agent>;
    /// The end of a VM's console or setup log, for error reports.
    async fn log_tail(&self, vm_id: &str) -> Option<String>;

    /// Whether VMs can be saved as goldens and cloned from them.
    fn supports_goldens(&self) -> bool {
        false
    }
    /// Whether a clone of a golden comes with the golden's running processes (a memory
    /// snapshot) or only with its files (a filesystem layer: its background services must be
    /// started again).
    fn clones_keep_processes(&self) -> bool {
        true
    }

    /// Freezes a running VM (made with `golden_builder`) into the immutable golden `golden_id`;
    /// the VM itself is gone afterwards.
    async fn save_golden(&self, vm_id: &str, golden_id: &str) -> Result<(), BackendError> {
        let _ = (vm_id, golden_id);
        Err(BackendError::new(format!(
            "the {} backend has no goldens",
            self.name()
        )))
    }
    /// Waits until a VM made by `create` has its network (a backend may attach it while the VM
    /// starts, so the VM's agent answers sooner); fails if it could not be attached.
    async fn wait_network(&self, vm_id: &str) -> Result<(), BackendError> {
        let _ = vm_id;
        Ok(())
    }
    /// Deletes a golden; only when no VM uses it any more.
    async fn delete_golden(&self, golden_id: &str) -> Result<(), BackendError> {
        let _ = golden_id;
        Ok(())
    }
    /// Ids of the goldens this backend holds.
    async fn list_goldens(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }
    /// The server stops: release what the backend keeps for itself (VMs started ahead of need),
    /// not the VMs, which outlive the server.
    async fn stop(&self) {}
}

#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// Nothing answered (not listening yet, VM gone, network).
    #[error("agent unreachable: {0}")]
    Unreachable(String),
    /// Something answered but refused our token.
    #[error("agent refused the token")]
    Unauthorized,
    #[error("agent answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("agent protocol error: {0}")]
    Protocol(String),
}

/// The control plane's view of one VM's agent.
#[async_trait]
pub trait Agent: Send + Sync {
    async fn health(&self) -> Result<AgentHealth, AgentCallError>;
    /// Runs a command, handing each event (output pieces, then the exit) to `on_event`.
    async fn exec_stream(
        &self,
        req: AgentExecRequest,
        on_event: &mut (dyn FnMut(AgentExecEvent) + Send),
    ) -> Result<(), AgentCallError>;
    /// Runs a command and answers once (also used to start background commands).
    async fn exec(&self, req: AgentExecRequest) -> Result<AgentExecResult, AgentCallError>;
    async fn write_file(&self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), AgentCallError>;
    /// `None` when the file does not exist.
    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, AgentCallError>;
    /// Gives a cloned VM its own identity (and switches the agent to the new token).
    async fn set_identity(&self, identity: &IdentityRequest) -> Result<(), AgentCallError>;
    /// The background commands started in the VM, once each has ended or run for `settle`.
    async fn background(
        &self,
        settle: std::time::Duration,
    ) -> Result<Vec<AgentBackground>, AgentCallError>;
}

/// The last `max_lines` lines of a text, for putting a log's end into an error report.
pub fn tail_lines(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}
