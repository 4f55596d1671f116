//! `POST /v1/identity`: makes a VM cloned from a prepared (golden) VM its own — a new token, its
//! hostname, a new machine id, the host's clock, fresh entropy. Until then every clone is the
//! golden's twin.

use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use warmpool_types::agent::IdentityRequest;

fn fail(what: &str, e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(warmpool_types::agent::AgentError {
            error: format!("{what}: {e}"),
        }),
    )
        .into_response()
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

pub async fn set_identity(
    Extension(token): Extension<Arc<RwLock<String>>>,
    Json(req): Json<IdentityRequest>,
) -> Response {
    let bad = |m: &str| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(warmpool_types::agent::AgentError {
                error: m.to_string(),
            }),
        )
            .into_response()
    };
    if req.token.len() < 16 {
        return bad("the token must be at least 16 characters");
    }
    let valid_host = !req.hostname.is_empty()
        && req.hostname.len() <= 63
        && req
            .hostname
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_host {
        return bad("the hostname must be 1-63 lower-case letters, digits or -");
    }
    if hex_bytes(&req.machine_id).is_none_or(|b| b.len() != 16) {
        return bad("machineId must be 32 hex digits");
    }
    let Some(entropy) = hex_bytes(&req.entropy) else {
        return bad("entropy must be hex");
    };
    // The clock first: everything after (file times, TLS, git) wants the right time.
    let secs = req.time_ms.div_euclid(1000);
    let nanos = req.time_ms.rem_euclid(1000) * 1_000_000;
    let ts = nix::sys::time::TimeSpec::new(secs, nanos);
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        return fail("cannot set the clock", e);
    }
    if let Err(e) = nix::unistd::sethostname(&req.hostname) {
        return fail("cannot set the hostname", e);
    }
    let host = &req.hostname;
    let files = [
        ("/etc/hostname", format!("{host}\n")),
        (
            "/etc/hosts",
            format!("127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        ),
        ("/etc/machine-id", format!("{}\n", req.machine_id)),
    ];
    for (path, content) in files {
        if let Err(e) = std::fs::write(path, content) {
            return fail(&format!("cannot write {path}"), e);
        }
    }
    // Mixed into the kernel's pool: clones no longer share the golden's random state.
    if let Err(e) = std::fs::write("/dev/urandom", &entropy) {
        return fail("cannot reseed the RNG", e);
    }
    *token.write().unwrap_or_else(|p| p.into_inner()) = req.token;
    StatusCode::NO_CONTENT.into_response()
}
