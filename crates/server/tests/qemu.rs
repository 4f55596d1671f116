//! The `qemu` backend under TCG: real VMs, a pool whose VMs are copy-on-write clones of a golden,
//! clones that are provably distinct, and nothing left behind.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const QEMU: &[&str] = &["--backend", "qemu", "--qemu-accel", "tcg"];

/// Small VMs (384 MiB, 1 vCPU): the project's resources size its QEMU machines.
async fn small_vms(s: &TestServer, pid: &str) {
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/resources"),
        Some(json!({"memoryMb": 384, "cpus": 1})),
    )
    .await;
}

/// Waits until no QEMU or passt process of the server runs and (with `dirs`) no VM directory is
/// left: a VM's directory goes once its processes have. A destroy stops QEMU at once.
async fn wait_no_vms(s: &TestServer, dirs: bool) {
    wait_for(
        "no QEMU or passt process, no VM directory",
        SETTLE,
        async || {
            let (q, p) = (
                qemu_processes(&s.data_dir()),
                passt_processes(&s.data_dir()),
            );
            let d = if dirs {
                std::fs::read_dir(s.data_dir().join("qemu-vms"))
                    .unwrap()
                    .count()
            } else {
                0
            };
            seen(
                q.is_empty() && p.is_empty() && d == 0,
                format!("QEMU {q:?}, passt {p:?}, {d} VM directories"),
            )
        },
    )
    .await;
}

/// QEMU processes of this server's VMs (their command lines mention its data dir), not those
/// started ahead of need.
fn qemu_processes(data: &Path) -> Vec<i32> {
    processes(data, "qemu-system")
}

/// The VMs' passt processes (their command lines name their logs in the data dir), not those
/// of processes started ahead of need.
fn passt_processes(data: &Path) -> Vec<i32> {
    processes(data, "passt")
}

/// The live processes (QEMU and passt) of the clones started ahead of need, in
/// `<data>/qemu-spares`, each by its directory.
fn spare_processes(data: &Path) -> Vec<(String, i32)> {
    let Ok(rd) = std::fs::read_dir(data.join("qemu-spares")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        for f in ["qemu.pid", "passt.pid"] {
            let pid = std::fs::read_to_string(e.path().join(f))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| Path::new(&format!("/proc/{p}")).exists()) {
                out.push((e.file_name().to_string_lossy().into_owned(), pid));
            }
        }
    }
    out
}

/// Clones started ahead of need and ready to be taken (the server's gauge).
async fn spares_ready(s: &TestServer) -> f64 {
    s.metric("warmpool_qemu_vms_started_ahead")
        .await
        .unwrap_or(0.0)
}

fn processes(data: &Path, program: &str) -> Vec<i32> {
    let spares: HashSet<i32> = spare_processes(data).into_iter().map(|(_, p)| p).collect();
    let needle = data.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            let argv0 = cmd.split('\0').next().unwrap_or_default();
            let name = argv0.rsplit('/').next().unwrap_or_default();
            !zombie && name.starts_with(program) && cmd.contains(&needle) && !spares.contains(pid)
        })
        .collect()
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier qemu: boots QEMU guests (root, qemu-system-x86); run every tier with `cargo test -- --include-ignored`"]
async fn test_boots_run_every_step_in_a_real_vm() {
    // VMs of a size no other test uses, whose base golden this server builds itself (one left
    // by an earlier run is deleted first): a VM being made into a base golden is the backend's
    // own, never a VM the server would destroy as nobody's.
    const MEMORY_MB: u64 = 352;
    let goldens = cache_dir().join("qemu").join("goldens");
    for g in std::fs::read_dir(&goldens).into_iter().flatten().flatten() {
        let meta = std::fs::read_to_string(g.path().join("golden.json")).unwrap_or_default();
        let meta: serde_json::Value = serde_json::from_str(&meta).unwrap_or_default();
        if meta["machine"]["memory_mb"] == MEMORY_MB {
            std::fs::remove_dir_all(g.path()).unwrap();
        }
    }
    let s = TestServer::start(QEMU);
    let repo = TestRepo::new(&[("README", "from the host\n")]);
    let pid = s
        .create_project("qemu", vec![repo_input("acme/app", repo.url())])
        .await;
    s.ok(
        "PATCH",
        &format!("/v1/projects/{pid}/resources"),
        Some(json!({"memoryMb": MEMORY_MB, "cpus": 1})),
    )
    .await;
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            enabled: Some(false),
            ..Default::default()
        },
    )
    .await;
    let d = s
        .test_boot(
            &pid,
            boot_with(&[("build", "cat /home/app/README > /home/built")]),
        )
        .await;
    assert_eq!(d.status, "ready", "{d:#?}");
    assert_eq!(step_names(&d).len(), 8);
    assert_eq!(meta(&d, "create_vm")["backend"], "qemu");
    assert_eq!(meta(&d, "clone_repo")["commit"], repo.head());
    let id = d.id.as_str();
    let out = s
        .exec(&pid, id, "uname -r; cat /sys/class/dmi/id/sys_vendor; hostname; cat /home/built; git -C /home/app remote get-url origin; nproc; awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo")
        .await;
    let text = out.output.as_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_ne!(lines[0], host_kernel(), "the VM runs its own kernel");
    assert_eq!(lines[1], "QEMU");
    assert_eq!(lines[2], d.instance_id);
    assert_eq!(lines[3], "from the host");
    assert_eq!(lines[4], repo.url());
    // The machine has the project's size.
    assert_eq!(lines[5], "1");
    let mem: u64 = lines[6].parse().unwrap();
    assert!(
        (270..=MEMORY_MB).contains(&mem),
        "MemTotal {mem} MiB for a {MEMORY_MB} MiB VM"
    );
    // It was a clone of the base golden the server built (the server sweeps VMs nobody owns
    // every few seconds while the build takes longer).
    let log = s.log_text();
    assert!(log.contains("built the base golden"), "{log}");
    assert!(!log.contains("cannot build the base golden"), "{log}");

    // The repository came through the git mirror; nothing else of the host is reachable.
    guest_network_reaches_out_but_not_the_host(&s, &pid, id).await;

    // Clones of the base golden are made now: two more are made ahead of need, and the next
    // test boot's VM is one of them — a VM of its own like any clone.
    wait_for("2 clones started ahead", s.boot(), async || {
        let n = spares_ready(&s).await;
        seen(n == 2.0, n)
    })
    .await;
    let waiting: HashSet<i32> = spare_processes(&s.data_dir())
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(waiting.len(), 4, "2 QEMU and 2 passt: {waiting:?}");
    let ahead = s.test_boot(&pid, boot_with(&[("build", "true")])).await;
    assert_eq!(ahead.status, "ready", "{ahead:#?}");
    assert_eq!(
        meta(&ahead, "create_vm")["startedAhead"],
        true,
        "{ahead:#?}"
    );
    assert!(
        output(&ahead, "create_vm")
            .contains("it is a clone started ahead of need, now given its own"),
        "{}",
        output(&ahead, "create_vm")
    );
    let vm_pid = std::fs::read_to_string(
        s.data_dir()
            .join("qemu-vms")
            .join(&ahead.instance_id)
            .join("qemu.pid"),
    )
    .unwrap();
    let vm_pid: i32 = vm_pid.split_whitespace().next().unwrap().parse().unwrap();
    assert!(waiting.contains(&vm_pid), "{vm_pid} was one of {waiting:?}");
    let probe = "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";
    let (one, two) = (
        s.exec(&pid, id, probe).await.output,
        s.exec(&pid, &ahead.id, probe).await.output,
    );
    let (one, two): (Vec<&str>, Vec<&str>) = (one.lines().collect(), two.lines().collect());
    assert_eq!(
        (one[0], two[0]),
        (d.instance_id.as_str(), ahead.instance_id.as_str())
    );
    for i in 1..3 {
        assert_ne!(
            one[i], two[i],
            "line {i} is the same in both: {one:?} {two:?}"
        );
    }
    let now = warmpool_types::time::now_ms() / 1000;
    let clock: i64 = two[3].parse().unwrap();
    assert!(
        (clock - now).abs() <= 30,
        "its clock is off: {clock} vs {now}"
    );

    // A failing setup command names its step.
    let f = s
        .test_boot(&pid, boot_with(&[("broken", "echo about to fail; exit 9")]))
        .await;
    assert_eq!(f.status, "failed", "{f:#?}");
    assert_failed_at(
        &f,
        "warm_pool_setup",
        "command `broken` exited with status 9",
    );
    assert!(output(&f, "warm_pool_setup").contains("about to fail"));

    // Destroying the VMs leaves no QEMU process (but the clones started ahead).
    let (st, _) = s
        .call(
            "DELETE",
            &format!("/v1/projects/{pid}/warm-pool/instances/{}", ahead.id),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = s
        .call(
            "DELETE",
            &format!("/v1/projects/{pid}/warm-pool/instances/{id}"),
            None,
        )
        .await;
    assert_eq!(st, 204);
    wait_no_vms(&s, false).await;
}

/// Accepts connections on `addr`, greeting each with `marker`; answers the port.
fn greeter(addr: &str, marker: &'static str) -> u16 {
    let l = std::net::TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut c = c;
                let _ = c.write_all(marker.as_bytes());
                // Read the request before closing: a reset could drop the marker unread.
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = c.read(&mut [0u8; 512]);
            });
        }
    });
    port
}

/// A network namespace joined to the host by a veth pair: a machine other than the host, which
/// guests must reach. Removed on drop, also when the test fails.
struct OtherMachine {
    name: String,
}

impl OtherMachine {
    const HOST: &str = "198.51.100.1";
    const ADDR: &str = "198.51.100.2";

    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn new() -> OtherMachine {
        let m = OtherMachine {
            name: format!("wpt{}", std::process::id()),
        };
        let (ns, host_if, ns_if) = (&m.name, m.host_if(), format!("{}n", m.name));
        // Left over by an earlier run that was killed with the same process id.
        m.remove();
        Self::ip(&["netns", "add", ns]);
        Self::ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", ns,
        ]);
        Self::ip(&[
            "addr",
            "add",
            &format!("{}/30", Self::HOST),
            "dev",
            &host_if,
        ]);
        Self::ip(&["link", "set", &host_if, "up"]);
        Self::ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/30", Self::ADDR),
            "dev",
            &ns_if,
        ]);
        Self::ip(&["-n", ns, "link", "set", &ns_if, "up"]);
        m
    }

    fn remove(&self) {
        // The greeter's thread keeps the namespace alive until the test ends: remove the link too.
        for args in [
            vec!["link", "del", &self.host_if()],
            vec!["netns", "del", &self.name],
        ] {
            let _ = std::process::Command::new("ip").args(&args).output();
        }
    }

    fn host_if(&self) -> String {
        format!("{}h", self.name)
    }

    /// A greeter listening inside the namespace; its port.
    fn greeter(&self, marker: &'static str) -> u16 {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Only this thread enters the namespace.
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            tx.send(greeter("0.0.0.0:0", marker)).unwrap();
        });
        rx.recv_timeout(REQUEST)
            .expect("the greeter in the namespace did not start")
    }
}

impl Drop for OtherMachine {
    fn drop(&mut self) {
        self.remove();
    }
}

/// From inside a VM: a machine other than the host answers; services on the host's loopback and
/// on all its addresses (and the API) answer at none of the addresses a guest could try.
async fn guest_network_reaches_out_but_not_the_host(s: &TestServer, pid: &str, id: &str) {
    // The tests of this file run at once in one process, and the other machine's name and
    // addresses are the process's: one probe at a time.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let other = OtherMachine::new();
    let other_port = other.greeter("other-machine");
    let lo = greeter("127.0.0.1:0", "host-loopback");
    let any = greeter("0.0.0.0:0", "host-any");
    let api = s.url.rsplit(':').next().unwrap().trim_end_matches('/');
    let host_ip = non_loopback_ip()
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let script = format!(
        r#"probe() {{ timeout 4 bash -c 'exec 3<>/dev/tcp/$0/$1 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && head -c 300 <&3' "$1" "$2" 2>/dev/null | tr -d '\r\n'; }}
gw=$(ip -4 route show default | cut -d' ' -f3)
echo "gateway $gw"
for a in 127.0.0.1 10.0.2.2 10.0.2.3 10.0.2.100 "$gw" {host_ip}; do
  for p in {lo} {any} {api}; do echo "$a:$p $(probe "$a" "$p")" & done
done
echo "other $(probe {other_addr} {other_port})" &
wait"#,
        other_addr = OtherMachine::ADDR,
    );
    let started = Instant::now();
    let out = s.exec(pid, id, &script).await;
    let text = out.output.as_str().to_string();
    eprintln!(
        "network probes ({} ms):
{text}",
        started.elapsed().as_millis()
    );
    let gateway = text
        .lines()
        .find_map(|l| l.strip_prefix("gateway "))
        .unwrap_or_default();
    assert!(
        !gateway.is_empty(),
        "the guest has no default route:
{text}"
    );
    let probes: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("gateway "))
        .collect();
    let hosts = 5 + usize::from(!host_ip.is_empty());
    assert_eq!(probes.len(), hosts * 3 + 1, "{text}");
    for l in &probes {
        for leak in ["host-loopback", "host-any", "\"status\":\"ok\""] {
            assert!(!l.contains(leak), "the guest reached the host: {l}\n{text}");
        }
    }
    assert!(
        probes.contains(&"other other-machine"),
        "the guest does not reach another machine:\n{text}"
    );
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

fn golden_files(data: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for g in std::fs::read_dir(data.join("goldens")).unwrap().flatten() {
        for f in ["ram", "state", "disk.qcow2"] {
            let p = g.path().join(f);
            out.push((p.clone(), sha256_file(&p)));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier qemu: boots QEMU guests (root, qemu-system-x86); run every tier with `cargo test -- --include-ignored`"]
async fn pool_vms_are_distinct_copy_on_write_clones_of_a_golden() {
    let mut s = TestServer::start(QEMU);
    let repo = TestRepo::new(&[("README", "v1\n")]);
    let pid = s
        .create_project("clones", vec![repo_input("acme/app", repo.url())])
        .await;
    small_vms(&s, &pid).await;
    let pool = format!("/v1/projects/{pid}/warm-pool");
    s.ok("PATCH", &pool, Some(json!({"targetSize": 2, "setupCommands": [{"name": "prepare", "command": "echo prepared > /home/prepared"}]})))
        .await;
    // The golden boots first, then its clones.
    wait_for("2 ready clones", 2 * s.boot(), async || {
        let v = s.ok("GET", &pool, None).await;
        seen(v["status"]["ready"] == 2, v)
    })
    .await;
    let before = golden_files(&s.data_dir());
    assert_eq!(before.len(), 3, "one golden: {before:?}");

    // Both pool VMs are clones of the golden, with the golden's steps recorded as such.
    let mut claimed = Vec::new();
    for _ in 0..2 {
        let (st, v) = s
            .call("POST", &format!("{pool}/claim"), Some(json!({})))
            .await;
        assert_eq!((st, v["warm"].as_bool()), (200, Some(true)), "{v}");
        let id = v["instance"]["id"].as_str().unwrap().to_string();
        let d = s.client().get_instance(&pid, &id).await.unwrap();
        assert_eq!(step_names(&d).len(), 8);
        let golden = meta(&d, "create_vm")["fromGolden"]
            .as_str()
            .unwrap()
            .to_string();
        for name in ["init_repo", "project_setup", "warm_pool_setup"] {
            assert_eq!(meta(&d, name)["fromGolden"], golden.as_str(), "{name}");
        }
        // The variables are written for real, as they are now.
        assert!(meta(&d, "set_env_vars")["fromGolden"].is_null());
        assert!(output(&d, "set_env_vars").contains("/home/.env"));
        assert_eq!(meta(&d, "warm_pool_setup")["commands"], 1);
        // The golden's own step log is reachable through its id.
        let g = s.client().get_instance(&pid, &golden).await.unwrap();
        assert_eq!(output(&g, "warm_pool_setup"), "$ prepare\n");
        claimed.push((id, v["vm"].clone()));
    }
    let (a, b) = (&claimed[0], &claimed[1]);
    assert_ne!(a.1["agentToken"], b.1["agentToken"]);

    // Distinct identities, entropy and a correct clock.
    let probe = "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; cat /home/prepared";
    let out_a = s.exec(&pid, &a.0, probe).await.output;
    let out_b = s.exec(&pid, &b.0, probe).await.output;
    let (la, lb): (Vec<&str>, Vec<&str>) = (out_a.lines().collect(), out_b.lines().collect());
    assert_eq!(la[0], a.1["instanceId"]);
    assert_eq!(lb[0], b.1["instanceId"]);
    for i in 0..3 {
        assert_ne!(
            la[i], lb[i],
            "line {i} is the same in both clones:\n{out_a:?}\n{out_b:?}"
        );
    }
    let now = warmpool_types::time::now_ms() / 1000;
    for clock in [la[3], lb[3]] {
        let t: i64 = clock.parse().unwrap();
        assert!(
            (t - now).abs() <= 30,
            "a clone's clock is off: {t} vs {now}"
        );
    }
    assert_eq!((la[4], lb[4]), ("prepared", "prepared"));

    // A clone's network (its own passt, the golden's NICs) is the same as a booted VM's.
    guest_network_reaches_out_but_not_the_host(&s, &pid, &a.0).await;

    // Each sees only its own disk and memory writes.
    s.exec(
        &pid,
        &a.0,
        "echo a > /home/disk-a; echo a > /dev/shm/mem-a; sync",
    )
    .await;
    s.exec(
        &pid,
        &b.0,
        "echo b > /home/disk-b; echo b > /dev/shm/mem-b; sync",
    )
    .await;
    let written = |id: String| {
        let s = &s;
        let pid = pid.clone();
        async move {
            s.exec(&pid, &id, "ls /home/disk-* /dev/shm/mem-* 2>/dev/null")
                .await
                .output
        }
    };
    assert_eq!(written(a.0.clone()).await, "/dev/shm/mem-a\n/home/disk-a\n");
    assert_eq!(written(b.0.clone()).await, "/dev/shm/mem-b\n/home/disk-b\n");

    // A VM's agent refuses another VM's token; the agents are not reachable on the host's
    // 127.0.0.1, which every guest can reach.
    let url_a = a.1["agentUrl"].as_str().unwrap();
    assert!(url_a.starts_with("http://127.0.0.2:"));
    let refused = s
        .http
        .post(format!("{url_a}/v1/exec"))
        .bearer_auth(b.1["agentToken"].as_str().unwrap())
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // The golden's files are byte-identical after all that.
    assert_eq!(golden_files(&s.data_dir()), before);

    // Release both; the pool refills with clones; kill -9 leaves nothing behind.
    for (id, _) in &claimed {
        let (st, _) = s
            .call("DELETE", &format!("{pool}/instances/{id}"), None)
            .await;
        assert_eq!(st, 204);
    }
    wait_for("refilled", s.boot(), async || {
        let v = s.ok("GET", &pool, None).await;
        seen(v["status"]["ready"] == 2, v)
    })
    .await;
    let ready_before: HashSet<String> = ready_ids(&s, &pid).await.into_iter().collect();
    let qemu_before: HashSet<i32> = qemu_processes(&s.data_dir()).into_iter().collect();
    assert_eq!(qemu_before.len(), 2, "{qemu_before:?}");
    // The refills were clones: two more are made ahead of need.
    wait_for("clones started ahead", s.boot(), async || {
        let n = spares_ready(&s).await;
        seen(n == 2.0, n)
    })
    .await;
    let spares_before = spare_processes(&s.data_dir());
    assert_eq!(spares_before.len(), 4, "{spares_before:?}");
    s.kill9();
    s.restart();
    // Those the dead server started ahead are destroyed by the new one.
    wait_for("the old clones started ahead gone", SETTLE, async || {
        let left: Vec<_> = spares_before
            .iter()
            .filter(|(_, p)| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        seen(left.is_empty(), format!("{left:?}"))
    })
    .await;
    // The restarted server checks that each running VM answers and keeps it; its report proves
    // the check ran (the same ids listed right after the start would not).
    let line = s
        .wait_log_line("re-adopted the ready VMs that survived", SETTLE)
        .await;
    assert!(line.contains("adopted=2 replaced=0"), "{line}");
    let ready_after: HashSet<String> = ready_ids(&s, &pid).await.into_iter().collect();
    assert_eq!(
        ready_before, ready_after,
        "the running VMs were adopted again"
    );
    // The very QEMU processes that ran before the crash, each handed out warm and running
    // commands.
    let qemu_after: HashSet<i32> = qemu_processes(&s.data_dir()).into_iter().collect();
    assert_eq!(qemu_after, qemu_before, "the same QEMU processes");
    assert_eq!(passt_processes(&s.data_dir()).len(), 2);
    // Both claimed back to back: a claim takes the newest ready VM, and the refill the first
    // claim starts would be newer than both.
    let mut adopted = Vec::new();
    for _ in 0..2 {
        let (st, v) = s
            .call(
                "POST",
                &format!("{pool}/claim"),
                Some(json!({"waitSeconds": 0})),
            )
            .await;
        assert_eq!((st, v["warm"].as_bool()), (200, Some(true)), "{v}");
        let id = v["instance"]["id"].as_str().unwrap();
        assert!(ready_before.contains(id), "{id} was ready before the crash");
        adopted.push(id.to_string());
    }
    for id in &adopted {
        let out = s.exec(&pid, id, "cat /home/prepared").await;
        assert_eq!(out.output, "prepared\n", "{out:?}");
    }
    // Releasing the claimed VMs and disabling the pool destroys them all: no QEMU process
    // remains.
    for id in &adopted {
        let (st, _) = s
            .call("DELETE", &format!("{pool}/instances/{id}"), None)
            .await;
        assert_eq!(st, 204);
    }
    s.ok("PATCH", &pool, Some(json!({"enabled": false}))).await;
    wait_no_vms(&s, true).await;
    // The golden goes once no pool wants it, and so do the clones of it started ahead.
    wait_for("no golden, no clone started ahead", SETTLE, async || {
        let g = std::fs::read_dir(s.data_dir().join("goldens"))
            .unwrap()
            .count();
        let p = spare_processes(&s.data_dir());
        seen(g == 0 && p.is_empty(), format!("{g} goldens, {p:?}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier qemu: boots QEMU guests (root, qemu-system-x86); run every tier with `cargo test -- --include-ignored`"]
async fn kill_9_during_a_boot_leaves_no_qemu_behind() {
    let mut s = TestServer::start(QEMU);
    let pid = s.create_project("crash", vec![]).await;
    small_vms(&s, &pid).await;
    let pool = format!("/v1/projects/{pid}/warm-pool");
    s.ok(
        "PATCH",
        &pool,
        Some(json!({"targetSize": 1, "setupCommands": [{"name": "hang", "command": "sleep 600"}]})),
    )
    .await;
    // The golden's boot (not listed with the pool's instances, but named in the log) gets to its
    // setup command, the 4 steps before it recorded; then the server dies.
    let line = s.wait_log_line("building the pool's golden", SETTLE).await;
    let golden = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("instance="))
        .unwrap_or_else(|| panic!("no instance in {line}"))
        .to_string();
    wait_for("the golden's boot is in its setup", s.boot(), async || {
        let d = s
            .ok("GET", &format!("{pool}/instances/{golden}"), None)
            .await;
        seen(
            d["steps"].as_array().unwrap().len() == 4 && qemu_processes(&s.data_dir()).len() == 1,
            d,
        )
    })
    .await;
    let before = qemu_processes(&s.data_dir());
    assert_eq!(before.len(), 1);
    s.kill9();
    s.restart();
    // The interrupted boot's VM is gone; the pool tries again (and would hang again): disable it.
    s.ok("PATCH", &pool, Some(json!({"enabled": false}))).await;
    wait_no_vms(&s, true).await;
    let st = s.ok("GET", &format!("{pool}/stats"), None).await;
    assert!(st["failed"].as_u64().unwrap() >= 1, "{st}");
}
