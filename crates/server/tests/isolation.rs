//! Every VM of the default backend is a machine of its own, seen from inside as a tenant would
//! try it: its own network and ports, nothing of the host or of other VMs in reach but the git
//! mirror, root that is an unprivileged host id, no host devices, and limits that stop a VM
//! alone while the server and the other VMs carry on.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

/// Answers `text` to every connection, in a thread, for as long as the test runs.
fn serve_text(l: TcpListener, text: &'static str) -> u16 {
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(text.as_bytes());
        }
    });
    port
}

/// From inside a VM: which of `targets` (name, address, port) accept a TCP connection. Each
/// probe is bounded by `timeout`; the names come back with `open` or `closed`.
async fn probe(s: &TestServer, pid: &str, id: &str, targets: &[(&str, String, u16)]) -> Value {
    let mut script = String::new();
    for (name, addr, port) in targets {
        script.push_str(&format!(
            "if timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2>/dev/null; \
             then echo '{name} open'; else echo '{name} closed'; fi\n"
        ));
    }
    let r = s.exec(pid, id, &script).await;
    let mut out = serde_json::Map::new();
    for line in r.output.as_str().lines() {
        if let Some((name, state)) = line.rsplit_once(' ') {
            out.insert(name.to_string(), json!(state));
        }
    }
    Value::Object(out)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn vms_have_their_own_network_and_reach_nothing_of_the_hosts() {
    let s = TestServer::start(&[]);
    let remote = RemoteHost::new();
    let remote_port = serve_text(remote.listen(), "remote\n");
    let lo_port = serve_text(TcpListener::bind("127.0.0.1:0").unwrap(), "host loopback\n");
    let any_port = serve_text(TcpListener::bind("0.0.0.0:0").unwrap(), "host\n");
    let host_ip = non_loopback_ip().expect("this machine needs an address other than loopback");
    let api_port = port_of(&s.url);

    // A pool of two whose setup starts a server on :3000 in the background in each VM.
    let repo = TestRepo::new(&[("README", "hello\n")]);
    let pid = s
        .create_project("own-network", vec![repo_input("acme/app", repo.url())])
        .await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/warm-pool"),
        Some(json!({"targetSize": 2, "setupCommands": [{
            "name": "git daemon",
            "command": "git daemon --port=3000 --base-path=/home --export-all /home",
            "background": true
        }]})),
    )
    .await;
    let ids = wait_ready_ids(&s, &pid, 2, s.boot()).await;
    // Both are claimed (commands run in claimed VMs); each claim answers how to reach its VM.
    let mut claims = Vec::new();
    for _ in 0..2 {
        let (st, claim) = s
            .call(
                "POST",
                &format!("/v1/projects/{pid}/warm-pool/claim"),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, 200, "{claim}");
        assert!(ids.contains(&claim["instance"]["id"].as_str().unwrap().to_string()));
        claims.push(claim);
    }
    // Both serve on the same port, each its own (the git mirror cloned the repo: it is reached).
    for id in &ids {
        let r = s
            .exec(
                &pid,
                id,
                "git ls-remote git://127.0.0.1:3000/app HEAD | head -n1 | cut -c1-40; cat /home/app/README",
            )
            .await;
        assert_eq!(r.output, format!("{}\nhello\n", repo.head()), "{r:?}");
    }

    // B's agent URL works from the server's machine; from A it is closed.
    let claim = &claims[1];
    let b = claim["instance"]["id"].as_str().unwrap().to_string();
    let b_url = claim["vm"]["agentUrl"].as_str().unwrap().to_string();
    let health = s
        .http
        .get(format!("{b_url}/v1/health"))
        .bearer_auth(claim["vm"]["agentToken"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let a = claims[0]["instance"]["id"].as_str().unwrap().to_string();
    assert_ne!(a, b);
    let b_port = port_of(&b_url);
    let gateway = s
        .exec(&pid, &a, "ip route show default | awk '{print $3; exit}'")
        .await
        .output
        .trim()
        .to_string();
    assert!(!gateway.is_empty());
    let h = host_ip.to_string();
    let targets = [
        ("own port", "127.0.0.1".to_string(), 3000),
        ("api", "127.0.0.1".to_string(), api_port),
        ("api at the host address", h.clone(), api_port),
        ("other agent", "127.0.0.1".to_string(), b_port),
        ("other agent at the host address", h.clone(), b_port),
        ("host loopback", "127.0.0.1".to_string(), lo_port),
        ("host service", h.clone(), any_port),
        ("host service at the gateway", gateway.clone(), any_port),
        ("host loopback at the gateway", gateway.clone(), lo_port),
        (
            "host service at another host address",
            remote.host_side.to_string(),
            any_port,
        ),
        ("remote machine", remote.ip.to_string(), remote_port),
    ];
    let seen = probe(&s, &pid, &a, &targets).await;
    let expect = json!({
        "own port": "open",
        "api": "closed",
        "api at the host address": "closed",
        "other agent": "closed",
        "other agent at the host address": "closed",
        "host loopback": "closed",
        "host service": "closed",
        "host service at the gateway": "closed",
        "host loopback at the gateway": "closed",
        "host service at another host address": "closed",
        "remote machine": "open",
    });
    assert_eq!(seen, expect);
    // The remote machine really answered, through the VM's outbound networking.
    let r = s
        .exec(
            &pid,
            &a,
            &format!("exec 3<>/dev/tcp/{}/{remote_port}; head -n1 <&3", remote.ip),
        )
        .await;
    assert_eq!(r.output, "remote\n", "{r:?}");

    // A takes its own loopback down: the host's stays up, the other VM still serves.
    let r = s.exec(&pid, &a, "ip link set lo down && echo down").await;
    assert_eq!(r.output, "down\n", "{r:?}");
    let flags = std::fs::read_to_string("/sys/class/net/lo/flags").unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "the host's lo must stay up");
    assert_eq!(
        s.ok("GET", "/v1/projects", None).await["items"][0]["id"],
        pid
    );
    let r = s
        .exec(
            &pid,
            &b,
            "git ls-remote git://127.0.0.1:3000/app HEAD | head -n1 | cut -c1-40",
        )
        .await;
    assert_eq!(r.output, format!("{}\n", repo.head()), "{r:?}");
}

/// The block device the host's root filesystem is on, as `major:minor`.
fn host_root_device() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == "/")
        .map(|f| f[2].to_string())
        .unwrap()
}

fn status_field(pid: i32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn vm_root_is_an_unprivileged_host_id_without_the_hosts_devices() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("own-root", vec![]).await;
    let d = s.test_boot(&pid, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let id = d.id.as_str();
    let vm = d.instance_id.as_str();
    let dev = host_root_device();
    let (major, minor) = dev.split_once(':').unwrap();
    let r = s
        .exec(
            &pid,
            id,
            &format!(
                "id -u; touch /root/made-here; sudo -n id -u; \
                 grep CapEff /proc/self/status | awk '{{print $2}}'; \
                 mknod /tmp/disk b {major} {minor} 2>/dev/null || echo no-mknod; \
                 head -c 1 /tmp/disk >/dev/null 2>&1 && echo READ-THE-DISK || echo no-disk; \
                 ls /dev/vda /dev/sda /dev/nvme0n1 /dev/mem /dev/kmsg 2>/dev/null | wc -l; \
                 mount -t tmpfs none /mnt 2>/dev/null && echo mounted-here; \
                 (echo 0 > /proc/sys/vm/overcommit_memory) 2>/dev/null && echo SYSCTL-WRITTEN || echo no-sysctl"
            ),
        )
        .await;
    let out = r.output.as_str();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    assert_eq!(
        lines[1], "0",
        "sudo works as on a machine of one's own: {out}"
    );
    let cap = u64::from_str_radix(lines[2], 16).unwrap();
    assert_eq!(cap & (1 << 21), 0, "no CAP_SYS_ADMIN: {out}");
    assert_ne!(cap, 0x1fffeffffff, "{out}");
    assert!(!out.contains("READ-THE-DISK"), "{out}");
    assert!(out.contains("no-disk"), "{out}");
    assert_eq!(lines[lines.len() - 2..].join(" "), "0 no-sysctl", "{out}");

    // On the host: the VM's processes and files belong to an id far from root and from users.
    let init = s.vm_init_pid(vm).unwrap();
    let uid: u32 = status_field(init, "Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(uid >= 1_000_000_000, "the VM's root is host uid {uid}");
    let made = s
        .data_dir()
        .join("vms")
        .join(vm)
        .join("rw/upper/root/made-here");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap());
    assert_eq!(owner, uid);
}

/// The VM's cgroup directory of a controller, v1 (`memory`, `pids`, `cpu,cpuacct`) or v2.
fn cgroup_file(vm: &str, v1: &str, file_v1: &str, file_v2: &str) -> Option<String> {
    let candidates: [PathBuf; 2] = [
        Path::new("/sys/fs/cgroup")
            .join(v1)
            .join("warmpool")
            .join(vm)
            .join(file_v1),
        Path::new("/sys/fs/cgroup/warmpool").join(vm).join(file_v2),
    ];
    candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn limits_stop_the_vm_alone_and_the_server_answers_throughout() {
    let s = TestServer::start(&[]);
    let pid = s.create_project("limits", vec![]).await;
    let path = format!("/v1/projects/{pid}/resources");
    assert_eq!(
        s.ok("GET", &path, None).await,
        json!({"cpus": 2, "memoryMb": 2048, "pidsMax": 4096, "diskMb": 10240})
    );
    // A ready pool VM made with the old limits is replaced by one with the new.
    s.configure_pool(&pid, target(1)).await;
    let old = wait_ready_ids(&s, &pid, 1, s.boot()).await[0].clone();

    // Bad bodies: 422 naming the field, and nothing changes.
    for (body, field) in [
        (json!({"memoryMb": 5}), "memoryMb"),
        (json!({"cpus": 0}), "cpus"),
        (json!({"cpus": "two"}), "cpus"),
        (json!({"pidsMax": -1}), "pidsMax"),
        (json!({"diskMb": 1e12}), "diskMb"),
        (json!({"memoryMB": 512}), "memoryMB"),
    ] {
        let (st, v) = s.call("PATCH", &path, Some(body.clone())).await;
        assert_eq!(st, 422, "{body}: {v}");
        assert_eq!(v["error"]["details"][0]["field"], field, "{body}: {v}");
    }
    // A project's own token reads its limits but cannot raise them.
    let tok = s
        .ok(
            "POST",
            &format!("/v1/projects/{pid}/tokens"),
            Some(json!({})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) = s.call_as(Some(&tok), "GET", &path, None).await;
    assert_eq!(st, 200);
    let (st, v) = s
        .call_as(
            Some(&tok),
            "PATCH",
            &path,
            Some(json!({"memoryMb": 262144})),
        )
        .await;
    assert_eq!(st, 403, "{v}");

    let set = s
        .ok(
            "PATCH",
            &path,
            Some(json!({"memoryMb": 256, "pidsMax": 100, "cpus": 1})),
        )
        .await;
    assert_eq!(
        set,
        json!({"cpus": 1, "memoryMb": 256, "pidsMax": 100, "diskMb": 10240})
    );
    wait_for(
        "the VM with the old limits replaced",
        s.boot(),
        async || {
            let ids = ready_ids(&s, &pid).await;
            seen(
                ids.len() == 1 && ids[0] != old,
                format!("ready {ids:?}, with the old limits {old}"),
            )
        },
    )
    .await;

    let a = s.test_boot(&pid, Default::default()).await;
    let other = s.test_boot(&pid, Default::default()).await;
    assert_eq!(
        (a.status.as_str(), other.status.as_str()),
        ("ready", "ready")
    );
    let (a_id, a_vm) = (a.id.as_str(), a.instance_id.as_str());
    let create = output(&a, "create_vm").to_string();
    assert!(
        create.contains("limits: 1 CPUs, 256 MiB of memory, 100 processes and threads"),
        "{create:?}"
    );
    let a_container = s.vm_container(a_vm);
    let mem = cgroup_file(
        &a_container,
        "memory",
        "memory.limit_in_bytes",
        "memory.max",
    )
    .unwrap();
    assert_eq!(mem, (256u64 << 20).to_string());
    let pids = cgroup_file(&a_container, "pids", "pids.max", "pids.max").unwrap();
    assert_eq!(pids, "100");

    // A memory hog is killed inside the VM; the server answers all the while.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (http, url, w) = (s.http.clone(), s.url.clone(), watching.clone());
        tokio::spawn(async move {
            let mut answers = 0;
            while w.load(std::sync::atomic::Ordering::SeqCst) {
                let r = http.get(format!("{url}/healthz")).send().await.unwrap();
                assert!(r.status().is_success());
                answers += 1;
            }
            answers
        })
    };
    let r = s
        .exec(
            &pid,
            a_id,
            "head -c 1000m /dev/zero | tail > /dev/null; echo \"status ${PIPESTATUS[1]}\"",
        )
        .await;
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(watcher.await.unwrap() > 0);
    let out = r.output.as_str();
    assert!(out.ends_with("status 137\n"), "{r:?}");

    // A fork flood stops at pidsMax.
    let r = s
        .exec(
            &pid,
            a_id,
            "perl -e 'my @k; for (1..300) { my $p = fork; last unless defined $p; \
             if (!$p) { sleep 60; exit 0 } push @k, $p } print scalar(@k), qq(\\n); kill 9, @k'",
        )
        .await;
    let forked: u32 = r.output.as_str().trim().parse().unwrap();
    assert!((10..100).contains(&forked), "forked {forked}: {r:?}");

    // The VM itself and the other VM carry on.
    for inst in [&a, &other] {
        let r = s.exec(&pid, &inst.id, "echo alive").await;
        assert_eq!(r.output, "alive\n");
    }
}

/// A btrfs filesystem of the test's own, with quotas on: where a data dir keeps `diskMb`.
struct Btrfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Btrfs {
    fn new() -> Btrfs {
        let dir = tempfile::Builder::new()
            .prefix("wp-btrfs-")
            .tempdir()
            .unwrap();
        let img = dir.path().join("fs.img");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new(cmd).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run("mkfs.btrfs", &["-q".as_ref(), img.as_os_str()]);
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                img.as_os_str(),
                path.as_os_str(),
            ],
        );
        run(
            "btrfs",
            &["quota".as_ref(), "enable".as_ref(), path.as_os_str()],
        );
        Btrfs { path, _dir: dir }
    }

    fn subvolumes(&self) -> String {
        let out = std::process::Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Btrfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A VM of `pid` (whose `diskMb` is 256) cannot write more than that: writing fails with
/// `error` inside it, and what it frees is its own again.
async fn disk_limit_holds(s: &TestServer, pid: &str, id: &str, error: &str) {
    let r = s
        .exec(
            pid,
            id,
            "head -c 400m /dev/zero > /root/big; echo status=$?; sync; du -sm /root/big | cut -f1",
        )
        .await;
    let out = r.output.as_str();
    assert!(out.contains(error), "{out}");
    assert!(out.contains("status=1"), "{out}");
    let written: u64 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        written <= 256,
        "wrote {written} MiB past a 256 MiB limit: {out}"
    );
    // The VM carries on, and space it frees is its own again.
    let r = s
        .exec(
            pid,
            id,
            "rm /root/big && echo freed && head -c 10m /dev/zero > /root/small && echo wrote",
        )
        .await;
    assert_eq!(r.output, "freed\nwrote\n", "{r:?}");
}

/// Destroys the instance whose detail is `d`.
async fn destroy(s: &TestServer, pid: &str, d: &WarmPoolInstanceDetail) {
    let path = format!("/v1/projects/{pid}/warm-pool/instances/{}", d.id.as_str());
    let (st, v) = s.call("DELETE", &path, None).await;
    assert_eq!(st, 204, "{v}");
}

/// Two VMs of a project whose `diskMb` is 256: one started afresh, one started ahead of need
/// after a VM with `spare_for` MiB, and given the limit when taken.
async fn two_limited_vms(s: &TestServer, spare_for: u64) -> (String, [WarmPoolInstanceDetail; 2]) {
    let pid = s.create_project("disk", vec![]).await;
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await;
    let disk = async |mb: u64| {
        s.ok(
            "PATCH",
            &format!("/v1/projects/{pid}/resources"),
            Some(json!({ "diskMb": mb })),
        )
        .await
    };
    // A server's first VM starts afresh.
    disk(256).await;
    let fresh = s.test_boot(&pid, Default::default()).await;
    // The spare is made for VMs like the last one.
    disk(spare_for).await;
    let other = s.test_boot(&pid, Default::default()).await;
    assert_eq!(other.status, "ready", "{other:#?}");
    s.wait_spare_ready().await;
    disk(256).await;
    let ahead = s.test_boot(&pid, Default::default()).await;
    for (d, taken) in [(&fresh, false), (&ahead, true)] {
        assert_eq!(d.status, "ready", "{d:#?}");
        assert_eq!(
            meta(d, "create_vm")["startedAhead"].as_bool() == Some(true),
            taken,
            "{d:#?}"
        );
    }
    (pid, [fresh, ahead])
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn disk_mb_holds_on_a_filesystem_of_the_vms_own() {
    let mut s = TestServer::start(&[]);
    // An image's size is its limit for good: a VM takes only a spare of its own size (a larger
    // one would show it another VM's limit), and the spare is made again for it.
    let (pid, vms) = two_limited_vms(&s, 256).await;
    for d in &vms {
        let id = d.id.as_str();
        disk_limit_holds(&s, &pid, id, "No space left on device").await;
    }
    let r = s
        .exec(&pid, &vms[1].id, "df -m --output=size / | tail -1")
        .await;
    let size: u64 = r.output.as_str().trim().parse().unwrap();
    assert!((200..=256).contains(&size), "{r:?}");
    // Each VM's disk is an image of its own that takes only what the VM wrote.
    let vm = vms[0].instance_id.as_str();
    let image = s.data_dir().join("vms").join(vm).join("rw.img");
    let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&image).unwrap()) * 512;
    assert!(used < 64 << 20, "the image takes {used} bytes");
    // Destroying a VM takes its filesystem, loop device and image with it; so does stopping
    // the server for the spare.
    destroy(&s, &pid, &vms[0]).await;
    wait_for("the VM destroyed", SETTLE, async || {
        let dirs = s.vm_dirs();
        seen(
            !dirs.iter().any(|v| v == vm),
            format!("VM directories {dirs:?}"),
        )
    })
    .await;
    let loops = || {
        std::process::Command::new("losetup")
            .arg("-a")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    wait_for("its loop device detached", SETTLE, async || {
        let l = loops();
        seen(!l.contains(vm), format!("loop devices:\n{l}"))
    })
    .await;
    // The spare's goes when the server stops (the test boots' when they are destroyed).
    assert!(s.terminate());
    let spares = s.data_dir().join("vm-spares").display().to_string();
    wait_for("the spare's loop device detached", SETTLE, async || {
        let l = loops();
        seen(!l.contains(&spares), format!("loop devices:\n{l}"))
    })
    .await;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&spares), "a mount of the spare is left");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn disk_mb_holds_on_btrfs_with_quotas() {
    let fs = Btrfs::new();
    let mut s = TestServer::start_under(&fs.path, &[]);
    // A subvolume's limit is anything: the spare, made after a VM with 1 GiB (or before it, for
    // 256 MiB), takes whichever it is given.
    let (pid, vms) = two_limited_vms(&s, 1024).await;
    for d in &vms {
        let id = d.id.as_str();
        disk_limit_holds(&s, &pid, id, "Disk quota exceeded").await;
    }
    // A subvolume per VM, no image. Destroying the VM takes its subvolume with it.
    let vm = vms[0].instance_id.as_str();
    assert!(!s.data_dir().join("vms").join(vm).join("rw.img").exists());
    assert!(fs.subvolumes().contains(vm));
    destroy(&s, &pid, &vms[0]).await;
    wait_for("the VM destroyed", SETTLE, async || {
        let v = fs.subvolumes();
        seen(!v.contains(vm), format!("subvolumes:\n{v}"))
    })
    .await;
    // The rest go with the server (the test boots when their time runs out, the spare when
    // the server stops): here, destroyed by the harness after the server stopped.
    assert!(s.terminate());
    assert!(
        !fs.subvolumes().contains("vm-spares"),
        "{}",
        fs.subvolumes()
    );
}

/// The processes in a spare's (or VM's) pid files, its init and its pasta, as (pid, start time).
fn dir_pids(dir: &Path) -> Vec<(i32, u64)> {
    ["init.pid", "pasta.pid"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .filter_map(|t| {
            let mut w = t.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// A VM started ahead of need, taken by a new VM, is that VM's own — its hostname, machine id,
/// token, limits and network — and no spare outlives its server: a stopped server destroys
/// its own, a restarted one those a killed one left.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn a_vm_started_ahead_becomes_the_new_vms_own() {
    let mut s = TestServer::start(&[]);
    let repo = TestRepo::new(&[("README", "ahead\n")]);
    let pid = s
        .create_project("ahead", vec![repo_input("acme/app", repo.url())])
        .await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/resources"),
        Some(json!({"memoryMb": 256, "pidsMax": 100, "cpus": 1})),
    )
    .await;
    let probe = "hostname; cat /etc/hostname /etc/machine-id; git -C /home/app log --format=%s; \
                 head -c 1000m /dev/zero | tail > /dev/null; echo \"status ${PIPESTATUS[1]}\"";

    // The first VM of a server starts afresh; it leaves a spare behind.
    let first = s.test_boot(&pid, Default::default()).await;
    assert_eq!(first.status, "ready", "{first:#?}");
    assert!(meta(&first, "create_vm")["startedAhead"].is_null());
    s.wait_spare_ready().await;

    // A pool builds its golden (which takes that spare), then makes its VM on the golden's
    // files; a spare on the golden follows, and the VM replacing a claimed one takes it.
    s.configure_pool(&pid, target(1)).await;
    wait_ready_ids(&s, &pid, 1, s.boot() * 2).await;
    let spare = wait_for(
        "a VM started ahead on the pool's golden",
        s.boot(),
        async || {
            let dirs = s.spare_dirs();
            let on_golden = |d: &String| {
                let dir = s.data_dir().join("vm-spares").join(d);
                let lower = std::fs::read_link(dir.join("lower1")).unwrap_or_default();
                lower.to_string_lossy().contains("sandbox-goldens") && dir.join("init.pid").exists()
            };
            if dirs.len() == 1 && dirs.iter().all(on_golden) {
                Ok(dirs)
            } else {
                Err(format!("spares {dirs:?}"))
            }
        },
    )
    .await;
    // Its directory and init come before it is ready to be taken (network, agent): a boot that
    // came now would start afresh.
    s.wait_spare_ready().await;
    let spare_dir = s.data_dir().join("vm-spares").join(&spare[0]);
    let spare_token = std::fs::read_to_string(spare_dir.join("config.json")).unwrap();
    let spare_token = spare_token
        .split("WARMPOOL_AGENT_TOKEN=")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_string();
    let claim_path = format!("/v1/projects/{pid}/warm-pool/claim");
    let made = s.ok("POST", &claim_path, Some(json!({}))).await;
    let made = made["instance"]["id"].as_str().unwrap();
    let made = s.wait_instance(&pid, made).await;
    assert!(
        meta(&made, "create_vm")["startedAhead"].is_null(),
        "{made:#?}"
    );
    wait_ready_ids(&s, &pid, 1, s.boot()).await;
    let claim = s.ok("POST", &claim_path, Some(json!({}))).await;
    let id = claim["instance"]["id"].as_str().unwrap();
    let second = s.wait_instance(&pid, id).await;
    let create = step(&second, "create_vm");
    assert_eq!(json!(create.metadata)["startedAhead"], true, "{create:?}");
    assert!(
        create
            .output
            .as_deref()
            .unwrap()
            .contains("started ahead of need"),
        "{create:?}"
    );
    let vm = second.instance_id.as_str();
    assert_eq!(s.vm_container(vm), spare[0]);
    assert!(!spare_dir.exists(), "the spare's directory became the VM's");

    // Its agent answers the VM's token, and no longer the spare's.
    let agent = format!("{}/v1/health", claim["vm"]["agentUrl"].as_str().unwrap());
    for (token, want) in [
        (claim["vm"]["agentToken"].as_str().unwrap(), 200),
        (spare_token.as_str(), 401),
    ] {
        let r = s.http.get(&agent).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want);
    }

    let mut ids = Vec::new();
    for inst in [&first, &second] {
        let r = s.exec(&pid, &inst.id, probe).await;
        let out = r.output.as_str().to_string();
        let lines: Vec<&str> = out.lines().collect();
        let name = inst.instance_id.as_str();
        assert_eq!(&lines[..2], &[name, name], "{out}");
        assert_eq!(lines[2].len(), 32, "{out}");
        assert_eq!(lines[3], "initial", "cloned through the mirror: {out}");
        assert!(
            out.ends_with("status 137\n"),
            "the memory limit holds: {out}"
        );
        ids.push(lines[2].to_string());
    }
    assert_ne!(ids[0], ids[1], "each VM has its own machine id");
    let container = s.vm_container(vm);
    for (ctl, file, v2, want) in [
        (
            "memory",
            "memory.limit_in_bytes",
            "memory.max",
            (256u64 << 20).to_string(),
        ),
        ("pids", "pids.max", "pids.max", "100".to_string()),
    ] {
        assert_eq!(cgroup_file(&container, ctl, file, v2).unwrap(), want);
    }

    // A server that stops destroys its spares; one killed leaves them to the next, which
    // destroys them when it starts.
    s.wait_spare_ready().await;
    let left = s.spare_dirs();
    let left_pids = dir_pids(&s.data_dir().join("vm-spares").join(&left[0]));
    assert_eq!(left_pids.len(), 2, "{left_pids:?}");
    s.kill9();
    assert!(any_alive(&left_pids));
    s.restart();
    // The restarted server destroys it as it starts.
    wait_for("the killed server's spare destroyed", SETTLE, async || {
        let (alive, dirs) = (any_alive(&left_pids), s.spare_dirs());
        seen(
            !alive && !dirs.contains(&left[0]),
            format!("processes alive: {alive}, spares {dirs:?}"),
        )
    })
    .await;
    // The next server makes one after its first VM.
    let third = s.test_boot(&pid, Default::default()).await;
    assert_eq!(third.status, "ready", "{third:#?}");
    s.wait_spare_ready().await;
    let left = s.spare_dirs();
    assert_eq!(left.len(), 1, "{left:?}");
    let left_pids = dir_pids(&s.data_dir().join("vm-spares").join(&left[0]));
    assert!(s.terminate(), "the server stops cleanly");
    assert!(
        !any_alive(&left_pids),
        "a stopped server's spare still runs"
    );
    assert!(s.spare_dirs().is_empty(), "{:?}", s.spare_dirs());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&left[0]), "a mount of the spare is left");
}
