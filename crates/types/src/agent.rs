//! The protocol between the control plane and the agent inside each VM (`warmpool-agent`).
//! Every request carries `Authorization: Bearer <the VM's token>`.
//!
//! - `GET  /v1/health` → [`AgentHealth`]
//! - `POST /v1/exec` [`AgentExecRequest`] → [`AgentExecResult`], or with `stream: true` an
//!   `application/x-ndjson` stream of [`AgentExecEvent`]
//! - `PUT  /v1/files?path=&mode=` (body = content) → 204; `GET /v1/files?path=` → content or 404
//! - `GET  /v1/background?settleMs=` → `[`[`AgentBackground`]`]`: the background commands started
//!   so far, once each has ended or run for `settleMs` (at most [`MAX_SETTLE_MS`])

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the agent listens inside a VM that has its own network (QEMU guests).
pub const AGENT_GUEST_PORT: u16 = 7071;

/// Environment variable that hands the agent its token at boot; the agent removes it from its
/// environment before running anything.
pub const TOKEN_ENV: &str = "WARMPOOL_AGENT_TOKEN";

/// Default per-request exec timeout when a request gives none.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 30 * 60 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentHealth {
    pub version: String,
    pub hostname: String,
}

/// How to run: a shell command (`bash -c`, with `/home/.env` loaded) or a plain argv.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentExecRequest {
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Applied over `/home/.env` (for `command`) and the agent's base environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Start detached (own session), output to this file, and answer at once with its pid.
    #[serde(default)]
    pub background_log: Option<String>,
    /// Answer with an NDJSON stream of [`AgentExecEvent`] instead of one [`AgentExecResult`].
    #[serde(default)]
    pub stream: bool,
}

/// One line of a streamed exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AgentExecEvent {
    /// Combined stdout/stderr, valid UTF-8 (invalid bytes replaced), in arrival order.
    Output { data: String },
    #[serde(rename_all = "camelCase")]
    Exit {
        exit_code: i32,
        timed_out: bool,
        duration_ms: u64,
    },
    /// A background command was started.
    Started { pid: u32 },
    /// The command could not be started at all (bad cwd, missing program).
    SpawnError { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentExecResult {
    pub exit_code: i32,
    pub output: String,
    pub duration_ms: u64,
    pub truncated: bool,
    pub timed_out: bool,
    /// Set for background commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// The longest `settleMs` the agent waits for.
pub const MAX_SETTLE_MS: u64 = 5_000;

/// A background command the agent started, and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentBackground {
    pub pid: u32,
    /// Where its output goes.
    pub log: String,
    /// Its status once it has ended (128 + the signal's number when killed); `None` while it runs.
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentError {
    pub error: String,
}

/// `POST /v1/identity`: what makes a cloned (or started-ahead) VM its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityRequest {
    /// The VM's new token; the old one stops working.
    pub token: String,
    pub hostname: String,
    /// 32 hex digits.
    pub machine_id: String,
    /// The host's clock, epoch milliseconds: for a VM with a kernel (and clock) of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<i64>,
    /// Random bytes (hex) to mix into the guest's RNG: for a VM with a kernel of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<String>,
}
