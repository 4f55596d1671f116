//! The seccomp profile of sandbox VMs: the default profile Debian's container packages ship
//! (`/usr/share/containers/seccomp.json`, the format Docker and Podman read), turned into the OCI
//! form runc takes. Rules that apply only on other architectures, or only with capabilities a VM
//! does not have, are dropped — the same choice a container engine makes for its containers —
//! and only the native ABI is allowed (no 32-bit system calls).

use std::path::Path;

use oci_spec::runtime::LinuxSeccomp;
use serde::Deserialize;
use serde_json::{json, Value};

/// Where Debian's `golang-github-containers-common` puts the profile.
pub const DEFAULT_PROFILE: &str = "/usr/share/containers/seccomp.json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: String,
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default, rename = "minKernel")]
    min_kernel: Option<String>,
}

/// The profile's name for this machine's architecture.
fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Reads a profile file and turns it into the OCI form for a process holding `caps`.
pub fn load(path: &Path, caps: &[&str]) -> Result<LinuxSeccomp, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the seccomp profile {}: {e} (on Debian: apt-get install golang-github-containers-common)",
            path.display()
        )
    })?;
    from_profile(&text, caps).map_err(|e| format!("{}: {e}", path.display()))
}

/// The OCI seccomp section for a process holding `caps`, from a profile in the engines' format.
pub fn from_profile(text: &str, caps: &[&str]) -> Result<LinuxSeccomp, String> {
    let p: Profile =
        serde_json::from_str(text).map_err(|e| format!("not a seccomp profile: {e}"))?;
    let arch = this_arch();
    let has = |c: &String| caps.contains(&c.as_str());
    let mut syscalls = Vec::new();
    for r in p.syscalls {
        if !r.includes.arches.is_empty() && !r.includes.arches.iter().any(|a| a == arch) {
            continue;
        }
        if r.excludes.arches.iter().any(|a| a == arch) {
            continue;
        }
        if !r.includes.caps.iter().all(has) {
            continue;
        }
        if r.excludes.caps.iter().any(has) {
            continue;
        }
        // A rule for newer kernels only: this host's kernel is newer than any such bound the
        // shipped profile uses, and a runc that does not know a syscall name skips it.
        let _ = r.includes.min_kernel;
        let mut rule = json!({"names": r.names, "action": r.action});
        if let Some(args) = r.args.filter(|a| !a.is_empty()) {
            rule["args"] = json!(args);
        }
        if let Some(e) = r.errno_ret {
            rule["errnoRet"] = json!(e);
        }
        syscalls.push(rule);
    }
    // The native architecture only: a VM runs 64-bit programs, and each compatibility ABI (x86
    // and x32 next to x86_64) would make runc compile the whole filter again for it — most of
    // what a VM's start spends on seccomp. System calls of other ABIs are refused.
    let native = match arch {
        "amd64" => "SCMP_ARCH_X86_64",
        "arm64" => "SCMP_ARCH_AARCH64",
        _ => "",
    };
    let arches: Vec<String> = p
        .arch_map
        .iter()
        .find(|m| m.architecture == native)
        .map(|m| vec![m.architecture.clone()])
        .unwrap_or_default();
    let mut out = json!({
        "defaultAction": p.default_action,
        "syscalls": syscalls,
    });
    if let Some(e) = p.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    if !arches.is_empty() {
        out["architectures"] = json!(arches);
    }
    serde_json::from_value(out).map_err(|e| format!("cannot use the profile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
      "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                  {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
      "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "comment": "", "includes": {}, "excludes": {}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}], "includes": {}, "excludes": {}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["s390_runtime_instr"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}}
      ]}"#;

    fn names(s: &LinuxSeccomp) -> Vec<(String, String)> {
        s.syscalls()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let v = serde_json::to_value(r).unwrap();
                (
                    r.names().join(","),
                    v["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn keeps_what_applies_to_this_machine_and_these_capabilities() {
        let s = from_profile(SAMPLE, &["CAP_SYS_CHROOT"]).unwrap();
        let got = names(&s);
        assert!(got.contains(&("read,write".into(), "SCMP_ACT_ALLOW".into())));
        assert!(got.contains(&("personality".into(), "SCMP_ACT_ALLOW".into())));
        assert!(got.contains(&("chroot".into(), "SCMP_ACT_ALLOW".into())));
        // Without CAP_SYS_ADMIN, bpf is refused with EPERM, never allowed.
        assert!(got.contains(&("bpf".into(), "SCMP_ACT_ERRNO".into())));
        assert!(!got.contains(&("bpf".into(), "SCMP_ACT_ALLOW".into())));
        assert!(!got.iter().any(|(n, _)| n == "s390_runtime_instr"));
        if std::env::consts::ARCH == "x86_64" {
            assert!(got.iter().any(|(n, _)| n == "arch_prctl"));
            let v = serde_json::to_value(&s).unwrap();
            assert_eq!(v["architectures"], json!(["SCMP_ARCH_X86_64"]));
        }
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["defaultErrnoRet"], 38);
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn with_the_capability_the_allow_rule_applies() {
        let got = names(&from_profile(SAMPLE, &["CAP_SYS_ADMIN"]).unwrap());
        assert!(got.contains(&("bpf".into(), "SCMP_ACT_ALLOW".into())));
        assert!(!got.contains(&("bpf".into(), "SCMP_ACT_ERRNO".into())));
        assert!(!got.iter().any(|(n, _)| n == "chroot"));
    }

    #[test]
    fn a_broken_profile_is_an_error() {
        assert!(from_profile("{}", &[]).is_err());
        assert!(from_profile("not json", &[]).is_err());
    }

    #[test]
    fn the_shipped_profile_loads_when_installed() {
        if !Path::new(DEFAULT_PROFILE).exists() {
            eprintln!("skipped: {DEFAULT_PROFILE} is not installed");
            return;
        }
        let s = load(Path::new(DEFAULT_PROFILE), &["CAP_CHOWN"]).unwrap();
        assert!(names(&s).len() > 10);
    }
}
