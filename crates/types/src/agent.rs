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

use crate::validate;

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

impl AgentExecRequest {
    /// Everything a request can get wrong by itself, found before anything is started (or a
    /// background log made) and answered as the client's mistake. What depends on the VM — that
    /// the working directory or the program exists — is only known when starting it.
    pub fn check(&self) -> Result<(), String> {
        match (&self.command, &self.argv) {
            (Some(command), None) => no_nul("`command`", command)?,
            (None, Some(argv)) if argv.is_empty() => return Err("`argv` must not be empty".into()),
            (None, Some(argv)) => {
                for a in argv {
                    no_nul("`argv`", a)?;
                }
            }
            _ => return Err("give exactly one of `command` and `argv`".into()),
        }
        if let Some(cwd) = &self.cwd {
            absolute("`cwd`", cwd)?;
        }
        for (name, value) in &self.env {
            validate::env_name(name).map_err(|m| format!("env name `{name}` {m}"))?;
            no_nul(&format!("env `{name}`"), value)?;
        }
        if let Some(log) = &self.background_log {
            absolute("`backgroundLog`", log)?;
        }
        Ok(())
    }
}

/// A program's arguments, environment and paths are C strings: a NUL would cut them short.
fn no_nul(what: &str, s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err(format!("{what} must not contain NUL bytes"));
    }
    Ok(())
}

/// The agent's working directory is nothing a client should depend on: paths are absolute.
fn absolute(what: &str, s: &str) -> Result<(), String> {
    no_nul(what, s)?;
    if !s.starts_with('/') {
        return Err(format!("{what} must be absolute"));
    }
    Ok(())
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

/// The query of `GET` and `PUT /v1/files`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileQuery {
    pub path: String,
    /// Octal, for `PUT`; 644 when absent.
    #[serde(default)]
    pub mode: Option<String>,
}

/// Linux's longest name of one path component (`NAME_MAX`) and of a whole path (`PATH_MAX` less
/// its NUL): longer ones fail in the filesystem, so they are refused as the client's mistake.
pub const MAX_NAME_BYTES: usize = 255;
pub const MAX_PATH_BYTES: usize = 4095;

/// The file a `/v1/files` request names: an absolute path of normal components only — no `..`,
/// no `.`, no empty component (`//`, a trailing `/`) — so that what is written is exactly the
/// file named, and not the root directory.
pub fn file_path(p: &str) -> Result<&std::path::Path, String> {
    let bad = |why: &str| Err(format!("path must be absolute and normalised: {why}"));
    let Some(rest) = p.strip_prefix('/') else {
        return bad("it does not start with `/`");
    };
    if p.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if p.len() > MAX_PATH_BYTES {
        return Err(format!("path must be at most {MAX_PATH_BYTES} bytes"));
    }
    for part in rest.split('/') {
        match part {
            "" => return bad("it names no file, or has an empty component"),
            "." | ".." => return bad("it has a `.` or `..` component"),
            _ if part.len() > MAX_NAME_BYTES => {
                return Err(format!(
                    "each component of path must be at most {MAX_NAME_BYTES} bytes"
                ))
            }
            _ => {}
        }
    }
    Ok(std::path::Path::new(p))
}

/// A `PUT /v1/files` mode: 1 to 4 octal digits (`600`, `0755`, `4755`); 644 when none is given.
pub fn file_mode(mode: Option<&str>) -> Result<u32, String> {
    let Some(m) = mode else {
        return Ok(0o644);
    };
    // Digits only: `u32::from_str_radix` would also take a sign.
    if (1..=4).contains(&m.len()) && m.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        u32::from_str_radix(m, 8).map_err(|e| e.to_string())
    } else {
        Err("mode must be 1 to 4 octal digits, e.g. 600".into())
    }
}

/// The query of `GET /v1/background`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundQuery {
    /// Capped at [`MAX_SETTLE_MS`].
    #[serde(default)]
    pub settle_ms: u64,
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

/// Latest clock `POST /v1/identity` sets (2200-01-01): the kernel refuses clocks past 2262, and a
/// host's clock is nowhere near either end.
pub const MAX_IDENTITY_TIME_MS: i64 = 7_258_118_400_000;

impl IdentityRequest {
    /// Everything the request can get wrong, checked before any of it is applied (a half-applied
    /// identity would leave a VM nobody can reach or name); the entropy's bytes when it is valid.
    pub fn check(&self) -> Result<Option<Vec<u8>>, String> {
        if self.token.len() < 16 {
            return Err("the token must be at least 16 characters".into());
        }
        // It is presented as `Authorization: Bearer <token>`: one a header cannot carry would lock
        // every client out of the VM for good.
        if !self.token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        let valid_host = !self.hostname.is_empty()
            && self.hostname.len() <= 63
            && self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_host {
            return Err("the hostname must be 1-63 lower-case letters, digits or -".into());
        }
        if hex_bytes(&self.machine_id).is_none_or(|b| b.len() != 16) {
            return Err("machineId must be 32 hex digits".into());
        }
        if let Some(ms) = self.time_ms {
            if !(0..=MAX_IDENTITY_TIME_MS).contains(&ms) {
                return Err(format!(
                    "timeMs must be between 0 and {MAX_IDENTITY_TIME_MS} (epoch milliseconds)"
                ));
            }
        }
        match self.entropy.as_deref().map(hex_bytes) {
            None => Ok(None),
            Some(Some(e)) => Ok(Some(e)),
            Some(None) => Err("entropy must be hex".into()),
        }
    }
}

/// The bytes `s` spells in hex, if it is hex (any other character, ASCII or not, is refused).
pub fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| (b as char).to_digit(16);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_read_and_anything_else_refused() {
        assert_eq!(hex_bytes("00ff7A"), Some(vec![0, 255, 122]));
        assert_eq!(hex_bytes(""), Some(vec![]));
        for bad in ["0", "0g", "+1", "é1", "1é", "ééé", "€0", " 00"] {
            assert_eq!(hex_bytes(bad), None, "{bad:?}");
        }
    }
}
