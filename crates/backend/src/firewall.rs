//! The host firewall rules that keep VMs' outbound traffic — made for them by pasta (`sandbox`)
//! or passt (`qemu`) with ordinary host sockets — from every address of the host itself. Each
//! rule matches only the sockets of one id that nothing else on the host uses.

use std::process::Stdio;

/// Whose sockets a rule matches.
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    Uid(u32),
    Gid(u32),
}

fn rule(program: &str, op: &str, owner: Owner, allow_loopback: bool) -> Vec<String> {
    let mut v: Vec<String> = vec!["-w".into(), "5".into(), op.into(), "OUTPUT".into()];
    if op == "-I" {
        v.push("1".into());
    }
    let (flag, id) = match owner {
        Owner::Uid(u) => ("--uid-owner", u),
        Owner::Gid(g) => ("--gid-owner", g),
    };
    v.extend(["-m", "owner", flag].map(String::from));
    v.push(id.to_string());
    if allow_loopback {
        let lo = if program == "ip6tables" {
            "::1/128"
        } else {
            "127.0.0.0/8"
        };
        v.extend(["!", "-d", lo].map(String::from));
    }
    v.extend(["-m", "addrtype", "--dst-type", "LOCAL", "-j", "REJECT"].map(String::from));
    v
}

/// Makes sure `program` (`iptables` or `ip6tables`) rejects `owner`'s traffic to any local
/// address (but loopback when `allow_loopback`), first in `OUTPUT`. Idempotent; the rule stays
/// when the server stops (it matches only that id).
pub fn ensure(program: &str, owner: Owner, allow_loopback: bool) -> Result<(), String> {
    let run = |op: &str| {
        std::process::Command::new(program)
            .args(rule(program, op, owner, allow_loopback))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))
    };
    if run("-C")?.status.success() {
        return Ok(());
    }
    let out = run("-I")?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} could not add the rule that keeps VMs from the host's own addresses: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_one_id_and_local_addresses() {
        assert_eq!(
            rule("iptables", "-C", Owner::Gid(7), true).join(" "),
            "-w 5 -C OUTPUT -m owner --gid-owner 7 ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j REJECT"
        );
        assert_eq!(
            rule("ip6tables", "-I", Owner::Uid(8), false).join(" "),
            "-w 5 -I OUTPUT 1 -m owner --uid-owner 8 -m addrtype --dst-type LOCAL -j REJECT"
        );
    }
}
