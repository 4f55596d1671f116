//! The OCI runtime configuration (`config.json`) of one sandbox VM, written with `oci-spec`:
//! its own user, network, mount, pid, ipc, uts and cgroup namespaces, root mapped to an
//! unprivileged range of host ids, the capabilities of a machine's root (acting only on the VM's
//! own namespaces), the shipped seccomp profile, and the project's resource limits as cgroups.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccomp, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use warmpool_types::agent::TOKEN_ENV;

use crate::image::AGENT_GUEST_PATH;
use crate::Resources;

/// What root in a VM may do — inside its own namespaces only, since the VM's user namespace owns
/// them: what a container engine grants by default, plus network administration (its own
/// interfaces, routes and firewall) and raw sockets (ping).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// The host ids a VM's ids 0..size map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub base: u32,
    pub size: u32,
}

pub struct SpecInput<'a> {
    pub hostname: &'a str,
    pub token: &'a str,
    pub ids: IdRange,
    pub resources: &'a Resources,
    pub seccomp: Option<LinuxSeccomp>,
    /// `<vm-dir>/ns/{user,net}`: namespaces made before runc runs, so the network is set up
    /// while the VM starts.
    pub userns: &'a Path,
    pub netns: &'a Path,
    /// Whether the host's memory cgroup also limits swap (cgroup v2, or v1 with swap accounting).
    pub limit_swap: bool,
    pub cgroups_path: &'a str,
    /// The mounted root, reachable by the VM's ids (runc binds it from inside the VM's user
    /// namespace).
    pub root: &'a Path,
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, String> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| e.to_string())
}

fn caps() -> Result<Vec<Capability>, String> {
    CAPABILITIES
        .iter()
        .map(|c| {
            serde_json::from_value(serde_json::Value::String(c.to_string()))
                .map_err(|e| format!("{c}: {e}"))
        })
        .collect()
}

pub fn build(i: &SpecInput) -> Result<Spec, String> {
    let e = |e: oci_spec::OciSpecError| e.to_string();
    let caps = caps()?;
    let caps_set: oci_spec::runtime::Capabilities = caps.iter().copied().collect();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(e)?,
        )
        .args(vec![
            AGENT_GUEST_PATH.to_string(),
            "--init".into(),
            "--listen-fd".into(),
            "3".into(),
        ])
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "HOME=/root".into(),
            "LANG=C.UTF-8".into(),
            format!("{TOKEN_ENV}={}", i.token),
        ])
        .cwd("/")
        .capabilities(
            oci_spec::runtime::LinuxCapabilitiesBuilder::default()
                .bounding(caps_set.clone())
                .effective(caps_set.clone())
                .permitted(caps_set.clone())
                .inheritable(oci_spec::runtime::Capabilities::new())
                .ambient(oci_spec::runtime::Capabilities::new())
                .build()
                .map_err(e)?,
        )
        // sudo and setuid programs must work inside, as on a machine of one's own.
        .no_new_privileges(false)
        .build()
        .map_err(e)?;

    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        // The VM owns its network namespace, so it may mount a sysfs of its own (read-only).
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"])?,
        mount("/run", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=755"])?,
    ];

    let ns = |t: LinuxNamespaceType, path: Option<&Path>| {
        let b = LinuxNamespaceBuilder::default().typ(t);
        match path {
            Some(p) => b.path(p).build(),
            None => b.build(),
        }
        .map_err(e)
    };
    let namespaces = vec![
        ns(LinuxNamespaceType::User, Some(i.userns))?,
        ns(LinuxNamespaceType::Network, Some(i.netns))?,
        ns(LinuxNamespaceType::Pid, None)?,
        ns(LinuxNamespaceType::Ipc, None)?,
        ns(LinuxNamespaceType::Uts, None)?,
        ns(LinuxNamespaceType::Mount, None)?,
        ns(LinuxNamespaceType::Cgroup, None)?,
    ];
    let map = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(i.ids.base)
        .size(i.ids.size)
        .build()
        .map_err(e)?;

    let r = i.resources;
    let mem = (r.memory_mb as i64) * 1024 * 1024;
    let mut memory = LinuxMemoryBuilder::default().limit(mem);
    if i.limit_swap {
        // memory+swap = memory: a VM cannot go past its limit by swapping.
        memory = memory.swap(mem);
    }
    let period: u64 = 100_000;
    let resources = LinuxResourcesBuilder::default()
        .memory(memory.build().map_err(e)?)
        .pids(
            LinuxPidsBuilder::default()
                .limit(r.pids_max as i64)
                .build()
                .map_err(e)?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota(period as i64 * r.cpus as i64)
                .build()
                .map_err(e)?,
        )
        .build()
        .map_err(e)?;

    let mut linux = LinuxBuilder::default()
        .uid_mappings(vec![map])
        .gid_mappings(vec![map])
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(i.cgroups_path)
        .masked_paths(oci_spec::runtime::get_default_maskedpaths())
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .sysctl(HashMap::from([(
            // Pings from root and from users, as on a stock Debian machine.
            "net.ipv4.ping_group_range".to_string(),
            format!("0 {}", i.ids.size - 1),
        )]));
    if let Some(s) = &i.seccomp {
        linux = linux.seccomp(s.clone());
    }
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(i.root)
                .readonly(false)
                .build()
                .map_err(e)?,
        )
        .hostname(i.hostname)
        .process(process)
        .mounts(mounts)
        .linux(linux.build().map_err(e)?)
        .build()
        .map_err(e)
}

/// The runtime's own floor, for the benchmark: `/bin/true` in `rootfs` (read-only) with new
/// user (mapped like a VM), network, pid, ipc, uts and mount namespaces and a memory and pids
/// limit — no overlay, no seccomp profile, no networking, no agent.
pub fn bare(rootfs: &Path, ids: IdRange, cgroups_path: &str) -> Result<Spec, String> {
    let e = |x: oci_spec::OciSpecError| x.to_string();
    let ns = |t: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(t).build().map_err(e);
    let map = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(ids.base)
        .size(ids.size)
        .build()
        .map_err(e)?;
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(256 << 20)
                .build()
                .map_err(e)?,
        )
        .pids(LinuxPidsBuilder::default().limit(64).build().map_err(e)?)
        .build()
        .map_err(e)?;
    let linux = LinuxBuilder::default()
        .uid_mappings(vec![map])
        .gid_mappings(vec![map])
        .namespaces(vec![
            ns(LinuxNamespaceType::User)?,
            ns(LinuxNamespaceType::Network)?,
            ns(LinuxNamespaceType::Pid)?,
            ns(LinuxNamespaceType::Ipc)?,
            ns(LinuxNamespaceType::Uts)?,
            ns(LinuxNamespaceType::Mount)?,
        ])
        .resources(resources)
        .cgroups_path(cgroups_path)
        .build()
        .map_err(e)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(vec!["/bin/true".to_string()])
        .cwd("/")
        .build()
        .map_err(e)?;
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(true)
                .build()
                .map_err(e)?,
        )
        .process(process)
        .mounts(vec![
            mount("/proc", "proc", "proc", &[])?,
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "mode=755", "size=65536k"],
            )?,
        ])
        .linux(linux)
        .build()
        .map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(res: &Resources) -> SpecInput<'_> {
        SpecInput {
            hostname: "vm-abc",
            token: "tok",
            ids: IdRange {
                base: 1_000_000_000,
                size: 65536,
            },
            resources: res,
            seccomp: None,
            userns: Path::new("/x/ns/user"),
            netns: Path::new("/x/ns/net"),
            limit_swap: true,
            cgroups_path: "/warmpool/vm-abc",
            root: Path::new("/run/x/vm-abc"),
        }
    }

    #[test]
    fn limits_namespaces_and_ids_are_in_the_config() {
        let res = Resources {
            cpus: 2,
            memory_mb: 512,
            pids_max: 300,
            disk_mb: 1024,
        };
        let v = serde_json::to_value(build(&input(&res)).unwrap()).unwrap();
        let l = &v["linux"];
        assert_eq!(l["resources"]["memory"]["limit"], 512 * 1024 * 1024);
        assert_eq!(l["resources"]["memory"]["swap"], 512 * 1024 * 1024);
        assert_eq!(l["resources"]["pids"]["limit"], 300);
        assert_eq!(l["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(l["resources"]["cpu"]["period"], 100_000);
        assert_eq!(l["uidMappings"][0]["hostID"], 1_000_000_000u32);
        assert_eq!(l["uidMappings"][0]["containerID"], 0);
        let types: Vec<&str> = l["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for t in ["user", "network", "pid", "ipc", "uts", "mount", "cgroup"] {
            assert!(types.contains(&t), "{t} missing from {types:?}");
        }
        assert_eq!(l["namespaces"][1]["path"], "/x/ns/net");
        assert_eq!(v["hostname"], "vm-abc");
        assert_eq!(v["process"]["args"][0], AGENT_GUEST_PATH);
        let bounding = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!bounding
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN" || c == "CAP_SYS_MODULE"));
        assert!(bounding.iter().any(|c| c == "CAP_NET_ADMIN"));
    }
}
