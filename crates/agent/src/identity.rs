//! `POST /v1/identity`: makes a VM cloned from a prepared (golden) VM, or started ahead of need,
//! its own — a new token, its hostname, a new machine id, and for a VM with a kernel of its own
//! the host's clock and fresh entropy. Until then every clone is the golden's twin.

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

/// `RNDADDENTROPY` and `RNDRESEEDCRNG` of `<linux/random.h>`: `_IOW('R', 0x03, int[2])` and
/// `_IO('R', 0x07)`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Adds `entropy` (fresh randomness from the host) to the kernel's input pool, credited as the
/// entropy it is, and reseeds the kernel's generator from the pool at once. A plain write to
/// `/dev/urandom` would neither count nor reach the generator before its next scheduled reseed
/// (up to a minute away): until then every clone would read the golden's random numbers.
fn reseed(entropy: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + entropy.len() + 4);
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    info.resize(info.len().next_multiple_of(4), 0);
    // SAFETY: `info` is a complete rand_pool_info of `entropy.len()` bytes, alive for the call;
    // the descriptor is this function's own.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: an ioctl without argument on a descriptor this function owns.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) } < 0 {
        let e = std::io::Error::last_os_error();
        // ENODATA: the generator is not seeded yet, so it takes the pool as it fills anyway.
        if e.raw_os_error() != Some(libc::ENODATA) {
            return Err(e);
        }
    }
    Ok(())
}

pub async fn set_identity(
    Extension(token): Extension<Arc<RwLock<String>>>,
    Json(req): Json<IdentityRequest>,
) -> Response {
    let entropy = match req.check() {
        Ok(entropy) => entropy,
        Err(m) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(warmpool_types::agent::AgentError { error: m }),
            )
                .into_response()
        }
    };
    // The clock first: everything after (file times, TLS, git) wants the right time. A VM
    // sharing the host's kernel (the sandbox) shares its clock and is sent none.
    if let Some(ms) = req.time_ms {
        let ts =
            nix::sys::time::TimeSpec::new(ms.div_euclid(1000), ms.rem_euclid(1000) * 1_000_000);
        if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
            return fail("cannot set the clock", e);
        }
    }
    // A sandbox VM's root may not name its machine: the host has done it already.
    let current = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if current.trim() != req.hostname {
        if let Err(e) = nix::unistd::sethostname(&req.hostname) {
            return fail("cannot set the hostname", e);
        }
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
    // Mixed into the kernel's pool, then the kernel's generator reseeded from it at once: a
    // write alone only reaches the generator at its next scheduled reseed (up to a minute away),
    // and until then every clone would read the golden's random numbers. (A VM sharing the
    // host's kernel shares its generator too, and is sent none.)
    if let Some(entropy) = entropy {
        if let Err(e) = reseed(&entropy) {
            return fail("cannot reseed the RNG", e);
        }
    }
    *token.write().unwrap_or_else(|p| p.into_inner()) = req.token;
    StatusCode::NO_CONTENT.into_response()
}
