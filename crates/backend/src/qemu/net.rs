//! A QEMU guest's network: two NICs, so that no guest reaches the host itself.
//!
//! - `local`: QEMU's user-mode networking (slirp) with `restrict=on`. The guest reaches nothing
//!   through it but what is forwarded explicitly: the host's agent port on [`super::AGENT_HOST`]
//!   leads to the guest's agent, and [`MIRROR_ADDR`]`:<port>` leads to the host's
//!   `127.0.0.1:<port>` for each of the VM's `host_ports` (the git mirror). Unrestricted, slirp
//!   would map the gateway to the host's loopback.
//! - `out`: passt, one process per VM, for everything else (the default route). passt makes
//!   outbound connections with ordinary host sockets; `--no-map-gw` keeps it from mapping the
//!   gateway to the host, and the firewall rule of [`ensure_firewall`] keeps its sockets from
//!   any of the host's own addresses (loopback, the host's IPs), which a host socket could
//!   otherwise reach.
//!
//! The layout is fixed (addresses, MACs): it lives in a golden's memory and device state, so a
//! golden and its clones must have the same. What differs per VM (the agent's host port, the
//! mirror's port) is in forwarding rules, which are no part of the device model.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use crate::{process, BackendError};

/// The host id passt runs as: the firewall rule refuses this id any of the host's addresses.
/// Just below the sandbox backend's id range, and not the id its pasta uses.
pub const NET_ID: u32 = 999_999_998;

/// Where the guest finds the host's forwarded ports (the git mirror), on the `local` NIC.
pub const MIRROR_ADDR: &str = "10.0.2.100";
/// MAC of the `local` NIC (the init script finds it by it).
pub const LOCAL_MAC: &str = "52:54:00:12:34:56";
/// MAC of the `out` NIC.
pub const OUT_MAC: &str = "52:54:00:12:34:57";
/// The guest's address on the `out` NIC, its gateway and the DNS address passt forwards to the
/// host's resolver.
pub const OUT_ADDR: &str = "10.0.3.15";
pub const OUT_GATEWAY: &str = "10.0.3.2";
pub const OUT_DNS: &str = "10.0.3.3";
/// passt's own MAC: fixed, because a golden's guest keeps it in its ARP cache.
const PASST_MAC: &str = "9a:55:9a:55:9a:55";
/// The fd QEMU and passt find their ends of the socket pair that links them.
const LINK_FD: i32 = 3;

/// A version of this layout, part of a golden's machine: a golden made with another layout
/// cannot be cloned (migration needs the same devices).
pub const LAYOUT: u32 = 2;

fn err(m: impl Into<String>) -> BackendError {
    BackendError::new(m)
}

/// Makes sure passt's sockets cannot reach the host's own addresses. Blocking. Answers whether
/// guests get IPv6 too (only when `ip6tables` took the rule as well); fails when IPv4 cannot be
/// guarded.
pub fn ensure_firewall() -> Result<bool, String> {
    if crate::image::find_program("iptables").is_none() {
        return Err("iptables is not installed; install it with `apt-get install -y iptables` (the qemu backend keeps guests from the host's addresses with it)".into());
    }
    let owner = crate::firewall::Owner::Uid(NET_ID);
    crate::firewall::ensure("iptables", owner, false)?;
    match crate::firewall::ensure("ip6tables", owner, false) {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::warn!("guests get no IPv6: {e}");
            Ok(false)
        }
    }
}

/// `-netdev`/`-device` arguments of both NICs. `port`: the agent's port on the host.
pub fn qemu_args(agent_host: &str, port: u16, agent_port: u16, host_ports: &[u16]) -> Vec<String> {
    let mut local =
        format!("user,id=local,restrict=on,ipv6=off,hostfwd=tcp:{agent_host}:{port}-:{agent_port}");
    for p in host_ports {
        // A relay per connection (`cmd:`); a `tcp:` chardev would be one connection for all.
        local.push_str(&format!(
            ",guestfwd=tcp:{MIRROR_ADDR}:{p}-cmd:{} nc 127.0.0.1 {p}",
            busybox().display()
        ));
    }
    vec![
        "-netdev".into(),
        local,
        "-device".into(),
        format!("virtio-net-pci,netdev=local,mac={LOCAL_MAC}"),
        "-netdev".into(),
        format!("stream,id=out,server=off,addr.type=fd,addr.str={LINK_FD}"),
        "-device".into(),
        format!("virtio-net-pci,netdev=out,mac={OUT_MAC}"),
    ]
}

/// The busybox whose `nc` relays the guest's connections to forwarded host ports.
pub fn busybox() -> std::path::PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "busybox".into())
}

/// Makes the socket pair that links a VM's QEMU and its passt: `(qemu's end, passt's end)`.
pub fn link() -> Result<(OwnedFd, OwnedFd), BackendError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| err(format!("cannot make the VM's network link: {e}")))
}

/// Makes `fd` the child's [`LINK_FD`], inherited across exec. Only async-signal-safe calls.
///
/// # Safety
/// For `pre_exec`: runs between fork and exec.
pub unsafe fn inherit_as_link(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on plain descriptors are async-signal-safe and touch no memory of
    // ours; the caller guarantees we are between fork and exec.
    let failed = unsafe {
        if fd == LINK_FD {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
        } else {
            libc::dup2(fd, LINK_FD) < 0
        }
    };
    if failed {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts the VM's passt on its end of the link; its pid goes to `<dir>/passt.pid`. passt ends
/// by itself when QEMU closes the other end.
pub fn spawn_passt(passt: &Path, dir: &Path, end: OwnedFd, ipv6: bool) -> Result<(), BackendError> {
    let mut cmd = tokio::process::Command::new(passt);
    cmd.args(["-f", "-q", "--no-map-gw"])
        .arg("--runas")
        .arg(format!("{NET_ID}:{NET_ID}"))
        .args(["-a", OUT_ADDR, "-n", "24", "-g", OUT_GATEWAY])
        .args(["--dns-forward", OUT_DNS, "-M", PASST_MAC])
        .args(["-t", "none", "-u", "none"])
        .arg("-F")
        .arg(LINK_FD.to_string())
        // Its log, named here also so that the VM's passt is found by its command line.
        .arg("-l")
        .arg(dir.join("passt.log"));
    if !ipv6 {
        cmd.arg("-4");
    }
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false);
    let raw = end.as_raw_fd();
    // SAFETY: setsid, fcntl and dup2 are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            inherit_as_link(raw)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| err(format!("cannot start passt: {e}")))?;
    drop(end);
    let pid = child.id().unwrap_or(0) as i32;
    process::write_pid_file(&dir.join("passt.pid"), pid).map_err(|e| err(e.to_string()))?;
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(())
}
