//! Test harness: starts the real `warmpool` binary on port 0 with a data dir of its own, talks
//! HTTP to it like a user, validates compatible answers against the published schemas, makes real
//! git repositories, and checks that VMs leave nothing behind.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
// What the tests speak in, for every test file to use (each uses some).
pub use warmpool_client::Client;
pub use warmpool_types::api::{
    CreateProjectBody, ExecBody, ExecResponse, ListInstancesQuery, RepoInput, SetupCommand,
    StepRecord, TestWarmPoolBootBody, UpdateWarmPoolBody, WarmPoolInstanceDetail,
};
#[allow(unused_imports)]
pub use warmpool_types::state::StepResult;

pub const BIN: &str = env!("CARGO_BIN_EXE_warmpool");

// --- How long a test waits -------------------------------------------------------------------
//
// Every wait is bounded by what it waits for, measured on a loaded two-core machine (several
// test binaries booting VMs at once) with a margin; a bound exceeded fails the test saying what
// it waited for and what it saw last, so a hang costs the time of the thing awaited, not minutes.

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(50);
/// An answer from the server that waits for nothing slow (a read, a write, a config change).
pub const REQUEST: Duration = Duration::from_secs(30);
/// A command run in a VM: the tests' commands take seconds (a memory hog or a disk filled to
/// its limit a few more).
pub const EXEC: Duration = Duration::from_secs(90);
/// A boot on the sim backend: milliseconds of work.
pub const SIM_BOOT: Duration = Duration::from_secs(15);
/// A sandbox VM's boot with its steps and setup commands: a few seconds alone, up to a minute
/// while other test binaries boot VMs on the same two cores.
pub const SANDBOX_BOOT: Duration = Duration::from_secs(120);
/// A QEMU guest's boot under TCG (no KVM on CI machines) with its steps: about a minute alone.
pub const QEMU_BOOT: Duration = Duration::from_secs(300);
/// Something the server does by itself soon: a reconciler pass (2 s apart by default), an
/// orphan sweep (5 s apart), a destroy, a lease expiring (3 s in the tests that set one).
pub const SETTLE: Duration = Duration::from_secs(30);
/// The first-ever build of the guest image (debootstrap from a Debian mirror, and for QEMU a
/// kernel, an initramfs and a disk): once per machine, and waited for only in
/// [`ensure_guest_image`], before any server that boots VMs starts.
pub const IMAGE_BUILD: Duration = Duration::from_secs(30 * 60);

/// Polls `poll` every [`POLL`] until it answers `Ok`, and returns what it answered. After `bound`
/// the test fails with `what` it waited for and what the last poll saw (its `Err`).
pub async fn wait_for<T, E: std::fmt::Display>(
    what: &str,
    bound: Duration,
    mut poll: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let started = Instant::now();
    loop {
        match poll().await {
            Ok(v) => return v,
            Err(seen) if started.elapsed() >= bound => {
                panic!("waited {bound:?} for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`wait_for`] outside async code (it blocks the thread between polls).
pub fn wait_for_blocking<T, E: std::fmt::Display>(
    what: &str,
    bound: Duration,
    mut poll: impl FnMut() -> Result<T, E>,
) -> T {
    let started = Instant::now();
    loop {
        match poll() {
            Ok(v) => return v,
            Err(seen) if started.elapsed() >= bound => {
                panic!("waited {bound:?} for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// `seen` as a poll's answer: `Ok` when `done`, else `Err` (what [`wait_for`] reports).
pub fn seen<S>(done: bool, seen: S) -> Result<S, S> {
    if done {
        Ok(seen)
    } else {
        Err(seen)
    }
}

/// Runs `cmd` to its end and answers its output; a command still running after `bound` is
/// killed and fails the test with what it printed until then.
pub fn output_within(cmd: &mut Command, what: &str, bound: Duration) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            // The waiting thread then gets the output of the killed process.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = rx.recv().ok().and_then(Result::ok);
            panic!(
                "{what} did not finish within {bound:?}; its output until then:\n{}\n{}",
                out.as_ref()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default(),
                out.as_ref()
                    .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
                    .unwrap_or_default(),
            )
        }
    }
}

/// Makes sure the guest image is built (for QEMU also its kernel, initramfs and disk), once per
/// test binary, before a server that boots VMs starts. This is the one place where the first
/// build on a new machine can happen, so only here may a wait take [`IMAGE_BUILD`]; every boot
/// after it is bounded by what a boot takes. Parallel test binaries build it once: the build
/// holds a lock, and a built image makes this a quick check.
pub fn ensure_guest_image(qemu: bool) {
    static SANDBOX: OnceLock<()> = OnceLock::new();
    static QEMU: OnceLock<()> = OnceLock::new();
    (if qemu { &QEMU } else { &SANDBOX }).get_or_init(|| {
        let mut cmd = Command::new(BIN);
        cmd.args(["image", "build", "--cache-dir"])
            .arg(cache_dir())
            .env("NO_COLOR", "1");
        if qemu {
            cmd.arg("--qemu");
        }
        let out = output_within(&mut cmd, "warmpool image build", IMAGE_BUILD);
        assert!(
            out.status.success(),
            "cannot build the guest image:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Where tests keep the guest image between runs (built once per machine, shared by all tests).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("WARMPOOL_TEST_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/root".into());
            home.join(".cache").join("warmpool")
        })
}

pub struct TestServer {
    child: Option<Child>,
    pub url: String,
    pub token: String,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<String>>,
    /// Where the log of the server's current run starts in `log` (it spans its restarts).
    run_log_start: usize,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    pub http: reqwest::Client,
}

impl TestServer {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `warmpool serve` on the sandbox backend with `extra` flags.
    pub fn start(extra: &[&str]) -> TestServer {
        Self::start_with_env(extra, &[])
    }

    /// [`TestServer::start`] with these environment variables set for the server.
    pub fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("wp-test-")
            .tempdir()
            .unwrap();
        Self::start_in_dir(dir, extra, envs)
    }

    /// [`TestServer::start`] with its data dir under `parent` (a filesystem of the test's own).
    pub fn start_under(parent: &Path, extra: &[&str]) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("wp-test-")
            .tempdir_in(parent)
            .unwrap();
        Self::start_in_dir(dir, extra, &[])
    }

    fn start_in_dir(dir: tempfile::TempDir, extra: &[&str], envs: &[(&str, &str)]) -> TestServer {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut s = TestServer {
            child: None,
            url: String::new(),
            token: String::new(),
            dir,
            log: Arc::new(Mutex::new(String::new())),
            run_log_start: 0,
            args,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            // Requests made through `call` get a bound of their own (see `request_bound`);
            // this one bounds those a test makes with the client directly.
            http: reqwest::Client::builder().timeout(REQUEST).build().unwrap(),
        };
        match s.backend() {
            "sandbox" => ensure_guest_image(false),
            "qemu" => ensure_guest_image(true),
            _ => {}
        }
        s.launch();
        s
    }

    /// The backend the server runs (`sandbox` unless its flags name another).
    pub fn backend(&self) -> &str {
        self.args
            .iter()
            .position(|a| a == "--backend")
            .map(|i| self.args[i + 1].as_str())
            .unwrap_or("sandbox")
    }

    /// How long one boot of this server's backend takes at most (boots running at once
    /// included: the server runs a pool's boots in parallel).
    pub fn boot(&self) -> Duration {
        match self.backend() {
            "sim" => SIM_BOOT,
            "qemu" => QEMU_BOOT,
            _ => SANDBOX_BOOT,
        }
    }

    fn launch(&mut self) {
        // This run's lines come after those of the runs before (a killed run has written all of
        // its own: `kill9` waits for it).
        self.run_log_start = self.log.lock().unwrap().len();
        let data = self.data_dir();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data)
            .arg("--cache-dir")
            .arg(cache_dir())
            .args(&self.args)
            .env_remove("WARMPOOL_ADMIN_TOKEN")
            .env("WARMPOOL_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start warmpool serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let plain = strip_ansi(&line);
                if let Some(rest) = plain.split("listening on ").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
                let mut l = log.lock().unwrap();
                l.push_str(&plain);
                l.push('\n');
            }
        });
        // Starting takes a second or two: opening the store, recovering VMs left running.
        let url = rx.recv_timeout(REQUEST).unwrap_or_else(|_| {
            panic!(
                "the server did not start listening within {REQUEST:?}; its log:\n{}",
                self.log.lock().unwrap()
            )
        });
        self.url = url;
        let given = self
            .args
            .iter()
            .position(|a| a == "--admin-token")
            .map(|i| self.args[i + 1].clone());
        self.token = given.unwrap_or_else(|| {
            std::fs::read_to_string(data.join("admin-token"))
                .unwrap()
                .trim()
                .to_string()
        });
        self.child = Some(child);
    }

    /// `kill -9` the server (its VMs keep running), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server as an operator would (SIGTERM) and waits until it has exited; true when
    /// it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().is_ok_and(|st| st.success())
    }

    /// Starts the server again on the same data dir (after `kill9`).
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// [`TestServer::restart`] with these flags added (a later flag wins over an earlier one).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self.restart();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log of the server's current run (since its last start).
    pub fn run_log(&self) -> String {
        self.log.lock().unwrap()[self.run_log_start..].to_string()
    }

    /// Waits until the current run has logged a line containing `needle`; answers the line.
    pub async fn wait_log_line(&self, needle: &str, bound: Duration) -> String {
        wait_for(&format!("a log line with `{needle}`"), bound, async || {
            let log = self.run_log();
            log.lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
                .ok_or_else(|| {
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!("the run's last log lines:\n{}", tail.join("\n"))
                })
        })
        .await
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// The value of the sample `series` (a metric's name with its labels, as exported), if the
    /// server exports it.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().await.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The reconciler's completed passes so far.
    pub async fn reconciler_passes(&self) -> u64 {
        self.metric("warmpool_loop_activations_total{loop=\"reconciler\",result=\"ok\"}")
            .await
            .unwrap_or(0.0) as u64
    }

    /// Waits until the reconciler has run a whole pass that began after this call: what it
    /// would do about a change made before the call, it has done. (The pass running at the call
    /// may have read the state from before the change, so the one after it is awaited.)
    pub async fn wait_reconciler_pass(&self) {
        let at_call = self.reconciler_passes().await;
        wait_for(
            "a reconciler pass that began after the change",
            SETTLE,
            async || {
                let n = self.reconciler_passes().await;
                seen(
                    n >= at_call + 2,
                    format!("{n} passes, {at_call} at the change"),
                )
            },
        )
        .await;
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(&self.token.clone()), method, path, body)
            .await
    }

    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let bound = self.request_bound(path, body.as_ref());
        let mut req = self
            .http
            .request(m, format!("{}{}", self.url, path))
            .timeout(bound);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no answer within {bound:?}: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no whole answer within {bound:?}: {e}"));
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
        };
        if status >= 400 {
            assert_valid("ErrorResponse", &v);
        }
        (status, v)
    }

    /// How long a request may take: a claim as long as it may wait for a VM to boot (its
    /// `waitSeconds`, 60 s unless it says) and then a request; a command in a VM as long as its
    /// `timeoutSeconds` — unless it says, [`EXEC`], or [`QEMU_BOOT`] on QEMU, whose emulated
    /// guests run commands many times slower — and then a request; anything else [`REQUEST`].
    fn request_bound(&self, path: &str, body: Option<&Value>) -> Duration {
        let secs = |key: &str| body.and_then(|b| b[key].as_u64()).map(Duration::from_secs);
        if path.ends_with("/claim") {
            secs("waitSeconds").unwrap_or(Duration::from_secs(60)) + REQUEST
        } else if path.ends_with("/exec") {
            let command = match self.backend() {
                "qemu" => QEMU_BOOT,
                _ => EXEC,
            };
            secs("timeoutSeconds").unwrap_or(command) + REQUEST
        } else {
            REQUEST
        }
    }

    /// Sends raw bytes with a content type, for malformed-input tests.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{}", self.url, path))
            .bearer_auth(&self.token)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: no answer within {REQUEST:?}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert!((200..300).contains(&s), "{method} {path} answered {s}: {v}");
        v
    }

    /// The typed client, with the admin token. Every answer it receives is checked against the
    /// published schema of its shape where the published API has one, as `call` checks raw
    /// answers. A request may take as long as the longest of this backend's: a claim waiting for
    /// a boot (60 s unless it says), a command in a VM.
    pub fn client(&self) -> Client {
        let command = match self.backend() {
            "qemu" => QEMU_BOOT,
            _ => EXEC,
        };
        let http = reqwest::Client::builder()
            .timeout(command.max(Duration::from_secs(60)) + REQUEST)
            .build()
            .unwrap();
        let observer: warmpool_client::Observer = Arc::new(|a: &warmpool_client::Answer<'_>| {
            let v: Value = serde_json::from_slice(a.body).unwrap_or_else(|e| {
                panic!(
                    "{} {} answered {} with a body that is not JSON ({e}): {}",
                    a.method,
                    a.url,
                    a.status,
                    String::from_utf8_lossy(a.body)
                )
            });
            assert_valid_shape(a.shape, &v);
        });
        Client::with_http(http, &self.url, &self.token)
            .unwrap()
            .observed(observer)
    }

    pub async fn create_project(&self, name: &str, repos: Vec<RepoInput>) -> String {
        let body = CreateProjectBody {
            name: name.to_string(),
            description: None,
            repos,
        };
        let project = self.client().create_project(&body).await;
        project
            .unwrap_or_else(|e| panic!("creating project {name}: {e}"))
            .id
    }

    /// Starts a test boot and waits until it is no longer provisioning; returns the detail.
    pub async fn test_boot(
        &self,
        project: &str,
        body: TestWarmPoolBootBody,
    ) -> WarmPoolInstanceDetail {
        let started = self.client().test_boot(project, &body).await;
        let id = started
            .unwrap_or_else(|e| panic!("a test boot of {project}: {e}"))
            .id;
        self.wait_instance(project, &id).await
    }

    /// Waits until the instance is no longer provisioning (a boot: [`TestServer::boot`]).
    pub async fn wait_instance(&self, project: &str, id: &str) -> WarmPoolInstanceDetail {
        let c = self.client();
        wait_for(
            &format!("instance {id} to finish its boot"),
            self.boot(),
            async || {
                let d = c.get_instance(project, id).await;
                let d = d.unwrap_or_else(|e| panic!("instance {id}: {e}"));
                if d.status == "provisioning" {
                    Err(format!("{d:#?}"))
                } else {
                    Ok(d)
                }
            },
        )
        .await
    }

    /// Runs `command` in the VM of instance `id` (its exit code is the caller's to check).
    pub async fn exec(&self, project: &str, id: &str, command: &str) -> ExecResponse {
        let body = ExecBody {
            command: command.to_string(),
            ..ExecBody::default()
        };
        let r = self.client().exec(project, id, &body).await;
        r.unwrap_or_else(|e| panic!("running {command:?} in {id}: {e}"))
    }

    /// Changes the project's pool configuration.
    pub async fn configure_pool(&self, project: &str, body: UpdateWarmPoolBody) {
        let r = self.client().update_warm_pool(project, &body).await;
        r.unwrap_or_else(|e| panic!("configuring the pool of {project}: {e}"));
    }

    /// The host pid of a VM's init, from its pid file.
    pub fn vm_init_pid(&self, vm_id: &str) -> Option<i32> {
        let text =
            std::fs::read_to_string(self.data_dir().join("vms").join(vm_id).join("init.pid"))
                .ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// The runc container a VM runs as (`sp-...`: VMs may have been started ahead of need).
    pub fn vm_container(&self, vm_id: &str) -> String {
        std::fs::read_to_string(self.data_dir().join("vms").join(vm_id).join("container"))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|_| vm_id.to_string())
    }

    /// Waits until the server reports a sandbox VM started ahead of need and ready to be taken
    /// (it starts one after a VM is made: a runc start, seconds).
    pub async fn wait_spare_ready(&self) {
        wait_for("a VM started ahead of need", self.boot(), async || {
            let n = self.metric("warmpool_sandbox_vms_started_ahead").await;
            seen(n.is_some_and(|n| n > 0.0), format!("{n:?} started ahead"))
        })
        .await;
    }

    /// The VMs started ahead of need (`sp-...`) in the data dir.
    pub fn spare_dirs(&self) -> Vec<String> {
        self.names_in("vm-spares")
    }

    pub fn vm_dirs(&self) -> Vec<String> {
        self.names_in("vms")
    }

    /// The entries of a directory of the data dir (none when it does not exist).
    fn names_in(&self, dir: &str) -> Vec<String> {
        match std::fs::read_dir(self.data_dir().join(dir)) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect(),
            Err(_) => vec![],
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        // Tests end their VMs through the API; whatever is left is killed here so runs never leak.
        // runc's delete also removes the VM's cgroups; the namespace pins and the root mount go
        // with their directories.
        let dirs = self
            .vm_dirs()
            .into_iter()
            .map(|vm| (self.vm_container(&vm), self.data_dir().join("vms").join(vm)))
            .chain(
                self.spare_dirs()
                    .into_iter()
                    .map(|c| (c.clone(), self.data_dir().join("vm-spares").join(c))),
            );
        for (container, dir) in dirs.collect::<Vec<_>>() {
            kill_from_pid_files(&dir, &["init.pid", "pasta.pid"]);
            let _ = std::process::Command::new("runc")
                .arg("--root")
                .arg(self.data_dir().join("runc"))
                .args(["delete", "--force", &container])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            let _ = nix::mount::umount2(&dir.join("ns/user"), nix::mount::MntFlags::MNT_DETACH);
            let _ = nix::mount::umount2(&dir.join("ns/net"), nix::mount::MntFlags::MNT_DETACH);
            // The VM's disk, a filesystem of its own on a loop device (detached with it).
            let _ = nix::mount::umount2(&dir.join("rw"), nix::mount::MntFlags::MNT_DETACH);
            // The VM's root is mounted outside the data dir, under /run/warmpool.
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
                if point.starts_with("/run/warmpool/") && point.ends_with(&format!("/{container}"))
                {
                    let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
                    let _ = std::fs::remove_dir(point).or_else(|_| std::fs::remove_file(point));
                }
            }
        }
        // And the directory the roots were mounted in: a test leaves nothing in /run. A root
        // made for a VM killed before it was mounted is an empty directory (`remove_dir` takes
        // only those, never a mount).
        let roots = warmpool::serve::roots_dir(&self.data_dir());
        if let Ok(rd) = std::fs::read_dir(&roots) {
            for e in rd.flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(roots);
        // QEMU VMs and the clones started ahead of need: their QEMU and passt.
        for sub in ["qemu-vms", "qemu-spares"] {
            let Ok(rd) = std::fs::read_dir(self.data_dir().join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                kill_from_pid_files(&e.path(), &["qemu.pid", "passt.pid"]);
            }
        }
    }
}

/// Kills (SIGKILL) the processes named by the pid files `files` in `dir` (a VM's), where they
/// exist: the first word of each is the pid.
fn kill_from_pid_files(dir: &Path, files: &[&str]) {
    for f in files {
        let pid = std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// --- The published schemas -------------------------------------------------------------------

fn schemas() -> &'static (Value, Value) {
    static S: OnceLock<(Value, Value)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
        let wp: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("warm-pool-openapi-2026-06.json")).unwrap(),
        )
        .unwrap();
        let pr: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("projects-setup-openapi-2026-06.json")).unwrap(),
        )
        .unwrap();
        (wp, pr)
    })
}

fn check(schema: &Value, name: &str, v: &Value) {
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} does not match the published schema: {errors:?}\n{v:#}"
    );
}

/// Validates `v` against the warm-pool reference schema `name`.
pub fn assert_valid(name: &str, v: &Value) {
    let schema = &schemas().0["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    check(schema, name, v);
}

/// Validates an answer read as the API type `shape` against the published schema of that name,
/// if the published API has one (its extensions do not).
pub fn assert_valid_shape(shape: &str, v: &Value) {
    let (wp, pr) = schemas();
    if wp["schemas"][shape].is_object() {
        check(&wp["schemas"][shape], shape, v);
    } else if pr["schemas"][shape].is_object() {
        check(&pr["schemas"][shape], shape, v);
    }
}

pub fn assert_valid_project(v: &Value) {
    check(&schemas().1["schemas"]["Project"], "Project", v);
}

pub fn assert_valid_project_list(v: &Value) {
    check(
        &schemas().1["schemas"]["ListProjectsResponse"],
        "ListProjectsResponse",
        v,
    );
}

// --- Git repositories made by the test ----------------------------------------------------

pub struct TestRepo {
    pub dir: tempfile::TempDir,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl TestRepo {
    /// A repository on branch `main` with `files` committed.
    pub fn new(files: &[(&str, &str)]) -> TestRepo {
        let dir = tempfile::Builder::new()
            .prefix("wp-repo-")
            .tempdir()
            .unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        let r = TestRepo { dir };
        r.commit(files, "initial");
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        self.path().display().to_string()
    }

    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, content) in files {
            let p = self.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        git(self.path(), &["add", "-A"]);
        git(
            self.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        git(self.path(), &["rev-parse", "HEAD"])
    }

    pub fn branch(&self, name: &str, files: &[(&str, &str)]) -> String {
        git(self.path(), &["checkout", "-q", "-b", name]);
        let c = self.commit(files, &format!("on {name}"));
        git(self.path(), &["checkout", "-q", "main"]);
        c
    }
}

/// The ready pool VMs of a project (test boots left out), validated against the schema.
/// A project whose pool boot failed (its setup command `build` exits with status 3), waited
/// for: `(project id, the pool's path, the failed instance's id)`.
pub async fn failed_pool_boot(s: &TestServer, name: &str) -> (String, String, String) {
    let pid = s.create_project(name, vec![]).await;
    let pool = format!("/v1/projects/{pid}/warm-pool");
    let failing = serde_json::json!({
        "targetSize": 1,
        "setupCommands": [{"name": "build", "command": "exit 3"}]
    });
    s.ok("PATCH", &pool, Some(failing)).await;
    wait_for("a failed pool boot", s.boot(), async || {
        let v = s.ok("GET", &pool, None).await;
        seen(v["status"]["failed"].as_u64() >= Some(1), v)
    })
    .await;
    let failed = s
        .ok("GET", &format!("{pool}/instances?status=failed"), None)
        .await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    (pid, pool, failed)
}

/// An instance's lifecycle (`GET .../instances/{id}/lifecycle`), `pool` being its pool's path.
pub async fn lifecycle(s: &TestServer, pool: &str, id: &str) -> Value {
    s.ok("GET", &format!("{pool}/instances/{id}/lifecycle"), None)
        .await
}

pub async fn ready_ids(s: &TestServer, pid: &str) -> Vec<String> {
    let query = ListInstancesQuery {
        limit: Some(50.0),
        status: Some("ready".into()),
    };
    let list = s.client().list_instances(pid, &query).await;
    list.unwrap_or_else(|e| panic!("the instances of {pid}: {e}"))
        .items
        .into_iter()
        .filter(|i| !i.is_test)
        .map(|i| i.id)
        .collect()
}

/// Waits until the project's pool has `n` ready VMs (test boots left out); answers their ids.
pub async fn wait_ready_ids(s: &TestServer, pid: &str, n: usize, bound: Duration) -> Vec<String> {
    wait_for(&format!("{n} ready pool VMs"), bound, async || {
        let ids = ready_ids(s, pid).await;
        if ids.len() == n {
            Ok(ids)
        } else {
            Err(format!("ready {ids:?}"))
        }
    })
    .await
}

pub fn step_names(detail: &WarmPoolInstanceDetail) -> Vec<String> {
    detail.steps.iter().map(|s| s.name.clone()).collect()
}

pub fn step<'a>(detail: &'a WarmPoolInstanceDetail, name: &str) -> &'a StepRecord {
    detail
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {detail:#?}"))
}

/// The boot failed at `step`, its summary saying `error`.
pub fn assert_failed_at(d: &WarmPoolInstanceDetail, step: &str, error: &str) {
    assert_eq!(
        (d.summary.failed_step.as_deref(), d.summary.error.as_deref()),
        (Some(step), Some(error)),
        "{d:#?}"
    );
}

/// A step's metadata, as JSON (null when it has none).
pub fn meta(detail: &WarmPoolInstanceDetail, name: &str) -> Value {
    serde_json::to_value(&step(detail, name).metadata).unwrap()
}

/// A step's output ("" when it has none).
pub fn output<'a>(detail: &'a WarmPoolInstanceDetail, name: &str) -> &'a str {
    step(detail, name).output.as_deref().unwrap_or_default()
}

/// A repository to create a project with, on its default branch.
pub fn repo_input(full_name: &str, url: impl AsRef<str>) -> RepoInput {
    RepoInput {
        repo_full_name: full_name.to_string(),
        url: url.as_ref().to_string(),
        branch: None,
    }
}

/// A setup command that is waited for.
pub fn command(name: &str, command: &str) -> SetupCommand {
    SetupCommand {
        name: name.to_string(),
        command: command.to_string(),
        background: None,
    }
}

/// A setup command started in the background.
pub fn background(name: &str, command: &str) -> SetupCommand {
    SetupCommand {
        background: Some(true),
        ..self::command(name, command)
    }
}

/// Setup commands from (name, command) pairs.
pub fn commands(list: &[(&str, &str)]) -> Vec<SetupCommand> {
    list.iter().map(|(name, cmd)| command(name, cmd)).collect()
}

/// A test boot with these setup commands instead of the pool's.
pub fn boot_with(list: &[(&str, &str)]) -> TestWarmPoolBootBody {
    boot_running(commands(list))
}

/// A test boot with these setup commands instead of the pool's.
pub fn boot_running(commands: Vec<SetupCommand>) -> TestWarmPoolBootBody {
    TestWarmPoolBootBody {
        setup_commands: Some(Some(commands)),
    }
}

/// A pool configuration change: this target size, nothing else.
pub fn target(n: u32) -> UpdateWarmPoolBody {
    UpdateWarmPoolBody {
        target_size: Some(n.into()),
        ..UpdateWarmPoolBody::default()
    }
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Every process of the VM whose init is `init_pid`, as (pid, start time) so that a later reuse of
/// a pid — or of the namespace's inode number by another VM — is never mistaken for it.
pub fn vm_processes(init_pid: i32) -> Vec<(i32, u64)> {
    let ns = std::fs::read_link(format!("/proc/{init_pid}/ns/pid")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l == ns))
        .filter_map(|pid| Some((pid, start_time(pid)?)))
        .collect()
}

/// Whether any of these processes still runs. A zombie does not: a VM's init, once killed,
/// waits for the host's init to reap it (the VM's launcher, runc, is long gone).
pub fn any_alive(procs: &[(i32, u64)]) -> bool {
    procs.iter().any(|(pid, start)| {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rfind(')')
                .and_then(|i| {
                    s[i + 1..]
                        .split_whitespace()
                        .next()
                        .map(|st| st == "Z" || st == "X")
                })
                .unwrap_or(false)
        });
        start_time(*pid) == Some(*start) && !zombie
    })
}

// --- A git server over HTTP that wants a password -------------------------------------------

/// Serves the repositories under a directory over smart HTTP (`git upload-pack`), to clients
/// that send `user:password` with HTTP basic auth; counts the requests it refused.
pub struct AuthGitServer {
    pub port: u16,
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl AuthGitServer {
    /// Serves `root` in the background on `listener`.
    pub async fn start(
        root: &Path,
        listener: std::net::TcpListener,
        user: &str,
        password: &str,
    ) -> AuthGitServer {
        use axum::extract::{Path as UrlPath, Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::{IntoResponse, Response};
        use base64::Engine;

        #[derive(Clone)]
        struct St {
            root: PathBuf,
            auth: String,
            refused: Arc<std::sync::atomic::AtomicUsize>,
        }
        fn allowed(st: &St, h: &HeaderMap) -> bool {
            let ok = h
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == st.auth);
            if !ok {
                st.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            ok
        }
        fn unauthorized() -> Response {
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Basic realm=\"test\"")],
                "who are you?\n",
            )
                .into_response()
        }
        async fn refs(
            State(st): State<St>,
            UrlPath(repo): UrlPath<String>,
            Query(_q): Query<std::collections::HashMap<String, String>>,
            h: HeaderMap,
        ) -> Response {
            if !allowed(&st, &h) {
                return unauthorized();
            }
            let out = tokio::process::Command::new("git")
                .args(["upload-pack", "--stateless-rpc", "--advertise-refs"])
                .arg(st.root.join(&repo))
                .output()
                .await
                .unwrap();
            let mut body = b"001e# service=git-upload-pack\n0000".to_vec();
            body.extend_from_slice(&out.stdout);
            (
                [(
                    "content-type",
                    "application/x-git-upload-pack-advertisement",
                )],
                body,
            )
                .into_response()
        }
        async fn pack(
            State(st): State<St>,
            UrlPath(repo): UrlPath<String>,
            h: HeaderMap,
            body: axum::body::Bytes,
        ) -> Response {
            if !allowed(&st, &h) {
                return unauthorized();
            }
            use tokio::io::AsyncWriteExt;
            let mut child = tokio::process::Command::new("git")
                .args(["upload-pack", "--stateless-rpc"])
                .arg(st.root.join(&repo))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&body).await.unwrap();
            drop(stdin);
            let out = child.wait_with_output().await.unwrap();
            (
                [("content-type", "application/x-git-upload-pack-result")],
                out.stdout,
            )
                .into_response()
        }
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let st = St {
            root: root.to_path_buf(),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            refused: refused.clone(),
        };
        let app = axum::Router::new()
            .route("/{repo}/info/refs", axum::routing::get(refs))
            .route("/{repo}/git-upload-pack", axum::routing::post(pack))
            .layer(tower_http::decompression::RequestDecompressionLayer::new())
            .with_state(st);
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        AuthGitServer { port, refused }
    }
}

// --- Another machine on the network ----------------------------------------------------------

/// A network namespace behind a veth pair: an address that is not the host's, reached through
/// the host's routing as a machine on the LAN would be (VMs reach it through their outbound
/// networking, while the host's own addresses stay closed to them). Removed on drop.
pub struct RemoteHost {
    pub ip: std::net::Ipv4Addr,
    /// The host's own address on the link to it.
    pub host_side: std::net::Ipv4Addr,
    ns: String,
}

impl RemoteHost {
    pub fn new() -> RemoteHost {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("cannot run ip");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let mut last = String::new();
        for _ in 0..8 {
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let tag = format!("{}{n}", std::process::id() % 100_000);
            let (ns, host_if, ns_if) = (
                format!("wpr{tag}"),
                format!("wprh{tag}"),
                format!("wprn{tag}"),
            );
            // A random /30 in 10.213/16: parallel tests and runs do not meet.
            let r = rand_u32();
            let (a, b) = ((r >> 8) as u8, ((r & 0x3f) * 4) as u8);
            let host_side = std::net::Ipv4Addr::new(10, 213, a, b + 1);
            let host_ip = host_side.to_string();
            let ns_ip = std::net::Ipv4Addr::new(10, 213, a, b + 2);
            let _ = ip(&["netns", "del", &ns]);
            let steps: Vec<Vec<String>> = vec![
                vec!["netns".into(), "add".into(), ns.clone()],
                vec![
                    "link".into(),
                    "add".into(),
                    host_if.clone(),
                    "type".into(),
                    "veth".into(),
                    "peer".into(),
                    "name".into(),
                    ns_if.clone(),
                    "netns".into(),
                    ns.clone(),
                ],
                vec![
                    "addr".into(),
                    "add".into(),
                    format!("{host_ip}/30"),
                    "dev".into(),
                    host_if.clone(),
                ],
                vec!["link".into(), "set".into(), host_if.clone(), "up".into()],
                vec![
                    "-n".into(),
                    ns.clone(),
                    "addr".into(),
                    "add".into(),
                    format!("{ns_ip}/30"),
                    "dev".into(),
                    ns_if.clone(),
                ],
                vec![
                    "-n".into(),
                    ns.clone(),
                    "link".into(),
                    "set".into(),
                    ns_if.clone(),
                    "up".into(),
                ],
                vec![
                    "-n".into(),
                    ns.clone(),
                    "link".into(),
                    "set".into(),
                    "lo".into(),
                    "up".into(),
                ],
                vec![
                    "-n".into(),
                    ns.clone(),
                    "route".into(),
                    "add".into(),
                    "default".into(),
                    "via".into(),
                    host_ip.clone(),
                ],
            ];
            let failed = steps.iter().find_map(|a| {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let (ok, e) = ip(&a);
                (!ok).then(|| format!("ip {}: {e}", a.join(" ")))
            });
            match failed {
                None => {
                    return RemoteHost {
                        ip: ns_ip,
                        host_side,
                        ns,
                    }
                }
                Some(e) => {
                    let _ = ip(&["link", "del", &host_if]);
                    let _ = ip(&["netns", "del", &ns]);
                    last = e;
                }
            }
        }
        panic!("cannot make a network namespace for a remote host: {last}");
    }

    /// A listening socket on this host's address (port 0: any free port).
    pub fn listen(&self) -> std::net::TcpListener {
        let (path, ip) = (format!("/run/netns/{}", self.ns), self.ip);
        std::thread::spawn(move || {
            // This thread alone moves into the namespace; the socket stays in it.
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind((ip, 0)).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for RemoteHost {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ std::process::id() as u128);
    h.finish() as u32
}

/// An address of this machine that is not loopback (where a project token's network URL can
/// point in a test), if it has one.
pub fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route and its source address.
    s.connect("192.0.2.200:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
