//! Unit tests of the steps: each runs against the `sim` backend with an in-memory recorder and a
//! fixed repository head, fresh and on a golden's clone, succeeding, failing and run twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use warmpool_backend::sim::{SimBackend, SimOptions};
use warmpool_backend::Backend;
use warmpool_store::{DevboxSpec, EnvVarRow, GoldenRow, ProjectRow, RepoCommit, RepoSpec, StepRow};
use warmpool_types::api::SetupCommand;
use warmpool_types::state::{InstanceKind, StepName, StepResult};

use super::*;
use crate::git::source::RepoSource;
use crate::provision::recorder::memory::MemoryRecorder;
use crate::provision::redact::Redactor;
use crate::provision::repos::{RepoAccess, RepoHead};
use crate::provision::{self, BootPlan, BootTarget, GoldenPlan, Outcome, Services, Timeouts};

const COMMIT: &str = "1111111111111111111111111111111111111111";

/// Every repository is at [`COMMIT`] on its branch (or `main`), unless told to fail.
#[derive(Default)]
struct FixedRepos {
    error: Mutex<Option<String>>,
    asked: Mutex<Vec<Option<String>>>,
}

#[async_trait]
impl RepoAccess for FixedRepos {
    async fn head(
        &self,
        src: &RepoSource,
        branch: Option<&str>,
        _since: std::time::Instant,
        log: &mut (dyn for<'l> FnMut(&'l str) + Send),
    ) -> Result<RepoHead, String> {
        self.asked.lock().unwrap().push(branch.map(str::to_string));
        if let Some(e) = self.error.lock().unwrap().clone() {
            return Err(e);
        }
        log(&format!("mirror of {} is up to date", src.display()));
        Ok(RepoHead {
            branch: branch.unwrap_or("main").to_string(),
            commit: COMMIT.into(),
            url: "git://127.0.0.1:9/m".into(),
            hold: Box::new(()),
        })
    }
}

fn cmd(name: &str, command: &str) -> SetupCommand {
    SetupCommand {
        name: name.into(),
        command: command.into(),
        background: None,
    }
}

fn plan(repos: &[&str]) -> BootPlan {
    let repos: Vec<RepoSpec> = repos
        .iter()
        .map(|r| RepoSpec {
            full_name: r.to_string(),
            url: format!("https://example.com/{r}.git"),
            branch: None,
            credentials: None,
            admin_source: false,
        })
        .collect();
    let sources = repos
        .iter()
        .map(|r| RepoSource {
            key: format!("key-{}", r.full_name),
            url: warmpool_types::repo_url::parse(&r.url).unwrap(),
            admin: false,
        })
        .collect();
    BootPlan {
        project: ProjectRow {
            seq: 1,
            id: "proj_test".into(),
            name: "test".into(),
            description: None,
            task_code: "TEST".into(),
            repos,
            devbox: DevboxSpec::default(),
            resources: Default::default(),
            leases: Default::default(),
            generation: 1,
            created_at: 0,
            updated_at: 0,
        },
        env: vec![EnvVarRow {
            name: "GREETING".into(),
            value: "hello-secret-value".into(),
            version: 1,
            updated_at: 0,
        }],
        pool_branch: None,
        pool_commands: Vec::new(),
        sources,
        golden: None,
    }
}

struct Harness {
    backend: Arc<SimBackend>,
    repos: Arc<FixedRepos>,
    svc: Services,
    target: BootTarget,
    plan: BootPlan,
    recorder: Arc<MemoryRecorder>,
    vm: VmState,
}

impl Harness {
    fn new(plan: BootPlan) -> Self {
        Self::with(plan, SimOptions::default())
    }

    fn with(plan: BootPlan, opts: SimOptions) -> Self {
        let backend = Arc::new(SimBackend::new(opts));
        let repos = Arc::new(FixedRepos::default());
        Self {
            svc: Services {
                backend: backend.clone(),
                repos: repos.clone(),
                timeouts: Timeouts {
                    command: Duration::from_secs(60),
                    server_wait: Duration::from_millis(50),
                },
                host_ports: vec![9],
                host_paths: Vec::new(),
            },
            backend,
            repos,
            target: BootTarget {
                instance_id: "wpi_test".into(),
                vm_id: "vm-steptest0000000".into(),
                kind: InstanceKind::Test,
            },
            plan,
            recorder: Arc::new(MemoryRecorder::default()),
            vm: VmState::default(),
        }
    }

    /// Runs one step as the pipeline would (on a clone when the plan has a golden): its result,
    /// output and metadata.
    async fn step(&mut self, step: &dyn Step) -> (Result<(), String>, String, Map<String, Value>) {
        let redactor = Arc::new(Redactor::new(
            self.plan
                .env
                .iter()
                .map(|v| (v.name.as_str(), v.value.as_str())),
        ));
        let mut log = crate::provision::steplog::StepLog::new(redactor, None);
        let mut meta = Map::new();
        let golden = self.plan.golden.clone();
        let mut cx = StepCx {
            began: std::time::Instant::now(),
            target: &self.target,
            plan: &self.plan,
            svc: &self.svc,
            recorder: &*self.recorder,
            vm: &mut self.vm,
            log: &mut log,
            meta: &mut meta,
        };
        let res = match &golden {
            Some(g) => step.on_clone(&mut cx, g).await,
            None => step.run(&mut cx).await,
        };
        (res, log.finish(), meta)
    }

    /// Runs steps in order, each expected to pass.
    async fn through(&mut self, steps: &[&dyn Step]) {
        for s in steps {
            let (res, out, _) = self.step(*s).await;
            assert_eq!(res, Ok(()), "{} failed; output:\n{out}", s.name());
        }
    }

    fn files(&self) -> Arc<dyn warmpool_backend::Agent> {
        self.vm.agent.clone().expect("a VM")
    }

    async fn run(&self) -> Outcome {
        let cancel = CancellationToken::new();
        provision::run(
            &self.svc,
            &self.target,
            &self.plan,
            self.recorder.clone(),
            &cancel,
        )
        .await
    }
}

#[tokio::test]
async fn a_whole_boot_records_every_step_in_order() {
    let mut p = plan(&["acme/app", "acme/lib"]);
    p.project.devbox.setup_commands = vec![cmd("hello", "echo hello-secret-value")];
    p.pool_commands = vec![cmd("", "echo pool")];
    let h = Harness::new(p);
    let outcome = h.run().await;
    let Outcome::Ready { commits } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(commits.len(), 2);
    assert_eq!(commits["acme/lib"].commit, COMMIT);
    let done = h.recorder.finished();
    let names: Vec<StepName> = done.iter().map(|s| s.name).collect();
    let expected: Vec<StepName> = pipeline(2).iter().map(|s| s.name()).collect();
    assert_eq!(names, expected);
    assert_eq!(*h.recorder.started.lock().unwrap(), expected);
    for (i, s) in done.iter().enumerate() {
        assert_eq!(s.seq, i as u32);
        assert_eq!(s.result, StepResult::Success, "{s:?}");
    }
    // Output is redacted before anyone sees it, live or recorded.
    let project = &done[7];
    assert!(
        project.output.contains("[REDACTED:GREETING]"),
        "{project:?}"
    );
    assert!(!h
        .recorder
        .output
        .lock()
        .unwrap()
        .contains("hello-secret-value"));
    let (url, token) = h.recorder.vm.lock().unwrap().clone().unwrap();
    assert_eq!(url, "sim://vm-steptest0000000");
    assert_eq!(token.len(), 40);
}

#[tokio::test]
async fn create_vm_fails_with_the_backends_reason() {
    let mut h = Harness::with(
        plan(&[]),
        SimOptions {
            create_error: Some("no room for another VM".into()),
            ..Default::default()
        },
    );
    let (res, _, meta) = h.step(&CreateVm).await;
    assert_eq!(
        res,
        Err("could not create the VM: no room for another VM".into())
    );
    assert_eq!(meta["backend"], "sim");
    // Through the pipeline: the boot fails at create_vm, and nothing runs after it.
    let outcome = h.run().await;
    assert_eq!(
        outcome,
        Outcome::Failed {
            step: StepName::CreateVm,
            error: "could not create the VM: no room for another VM".into()
        }
    );
    assert_eq!(h.recorder.finished().len(), 1);
    assert_eq!(h.recorder.finished()[0].result, StepResult::Error);
}

#[tokio::test]
async fn ensure_server_waits_only_as_long_as_configured() {
    let mut h = Harness::new(plan(&[]));
    h.through(&[&CreateVm, &EnsureServer]).await;
    // A server that knows another token refuses at once.
    h.vm.agent = Some(h.backend.agent(&h.target.vm_id, "sim://", "not-the-token"));
    let (res, _, _) = h.step(&EnsureServer).await;
    assert_eq!(res, Err("the VM's server refused this VM's token".into()));
    // A VM that is gone never answers: the step gives up at its bound.
    h.vm.agent = Some(h.backend.agent("vm-gone", "sim://", "t"));
    let (res, out, meta) = h.step(&EnsureServer).await;
    assert_eq!(res, Err("the VM's server did not answer within 0 s".into()));
    assert!(out.contains("last attempt:"), "{out}");
    assert!(meta.contains_key("waitedMs"));
    // Without a VM at all, the step says so rather than waiting.
    h.vm.agent = None;
    let (res, _, _) = h.step(&EnsureServer).await;
    assert_eq!(res, Err("the VM's server is not available".into()));
}

#[tokio::test]
async fn set_env_vars_writes_a_private_env_file_and_names_no_value() {
    let mut h = Harness::new(plan(&[]));
    h.through(&[&CreateVm, &EnsureServer]).await;
    let (res, out, meta) = h.step(&SetEnvVars).await;
    assert_eq!(res, Ok(()));
    assert_eq!(meta["count"], 1);
    assert!(
        out.contains("GREETING") && !out.contains("hello-secret-value"),
        "{out}"
    );
    let env = h.files().read_file("/home/.env").await.unwrap().unwrap();
    let env = String::from_utf8(env).unwrap();
    assert!(
        env.contains("\nexport GREETING='hello-secret-value'\n"),
        "{env}"
    );
    h.vm.agent = Some(h.backend.agent("vm-gone", "sim://", "t"));
    let (res, _, _) = h.step(&SetEnvVars).await;
    assert!(res.unwrap_err().starts_with("could not write /home/.env"));
}

#[tokio::test]
async fn clone_repo_uses_the_pool_branch_and_names_the_repo_when_it_fails() {
    let mut p = plan(&["acme/app"]);
    p.pool_branch = Some("release".into());
    let mut h = Harness::new(p);
    h.through(&[&CreateVm, &EnsureServer]).await;
    let (res, out, meta) = h.step(&CloneRepo(0)).await;
    assert_eq!(res, Ok(()), "{out}");
    assert_eq!(meta["repo"], "acme/app");
    assert_eq!(meta["branch"], "release");
    assert_eq!(meta["commit"], COMMIT);
    assert_eq!(
        h.repos.asked.lock().unwrap().clone(),
        [Some("release".to_string())]
    );
    assert_eq!(
        h.vm.commits["acme/app"],
        RepoCommit {
            branch: "release".into(),
            commit: COMMIT.into()
        }
    );
    assert!(
        out.contains("cloned acme/app into /home/app at release"),
        "{out}"
    );
    *h.repos.error.lock().unwrap() = Some("branch `release` not found".into());
    let (res, _, _) = h.step(&CloneRepo(0)).await;
    assert_eq!(
        res,
        Err("git clone of acme/app failed: branch `release` not found".into())
    );
}

#[tokio::test]
async fn init_repo_runs_the_repos_hooks_and_rejects_broken_settings() {
    let mut h = Harness::new(plan(&["acme/app"]));
    h.through(&[&CreateVm, &EnsureServer, &CloneRepo(0)]).await;
    let (res, out, meta) = h.step(&InitRepo(0)).await;
    assert_eq!(res, Ok(()));
    assert_eq!(meta["hooks"], 0);
    assert!(out.contains("no .capy/settings.json"), "{out}");
    let settings = "/home/app/.capy/settings.json";
    let agent = h.files();
    agent
        .write_file(
            settings,
            br#"{"hooks":{"setup":["echo one","echo two"]}}"#.to_vec(),
            0o644,
        )
        .await
        .unwrap();
    let (res, out, meta) = h.step(&InitRepo(0)).await;
    assert_eq!(res, Ok(()), "{out}");
    assert_eq!(meta["hooks"], 2);
    assert!(out.contains("one\n") && out.contains("two\n"), "{out}");
    agent
        .write_file(settings, b"{not json".to_vec(), 0o644)
        .await
        .unwrap();
    let (res, _, _) = h.step(&InitRepo(0)).await;
    assert!(
        res.as_ref()
            .unwrap_err()
            .ends_with("in .capy/settings.json of acme/app"),
        "{res:?}"
    );
}

#[tokio::test]
async fn setup_steps_fail_on_the_first_failing_command() {
    let mut p = plan(&["acme/app"]);
    p.project.devbox.setup_commands = vec![
        cmd("ok", "echo fine"),
        cmd("", "exit 3"),
        cmd("never", "exit 9"),
    ];
    p.project
        .devbox
        .repos
        .insert("acme/app".into(), vec![cmd("repo", "exit 4")]);
    p.pool_commands = vec![cmd("pool", "exit 5")];
    let mut h = Harness::new(p);
    h.through(&[&CreateVm, &EnsureServer, &CloneRepo(0)]).await;
    let (res, out, meta) = h.step(&ProjectSetup).await;
    assert_eq!(res, Err("command `exit 3` exited with status 3".into()));
    assert!(out.contains("$ ok\nfine\n$ exit 3\n"), "{out}");
    assert!(!out.contains("never"), "{out}");
    assert_eq!(meta["commands"], 3);
    let (res, _, meta) = h.step(&RepoSetup(0)).await;
    assert_eq!(res, Err("command `repo` exited with status 4".into()));
    assert_eq!(meta["repo"], "acme/app");
    let (res, _, _) = h.step(&WarmPoolSetup).await;
    assert_eq!(res, Err("command `pool` exited with status 5".into()));
}

#[tokio::test]
async fn a_background_service_that_died_fails_the_last_step() {
    let mut p = plan(&[]);
    p.project.devbox.setup_commands = vec![SetupCommand {
        name: "web server".into(),
        command: "sleep 100".into(),
        background: Some(true),
    }];
    p.pool_commands = vec![SetupCommand {
        name: "worker".into(),
        command: "exit 2".into(),
        background: Some(true),
    }];
    let mut h = Harness::new(p);
    h.through(&[&CreateVm, &EnsureServer, &ProjectSetup]).await;
    assert_eq!(h.vm.background.len(), 1);
    let (res, out, meta) = h.step(&WarmPoolSetup).await;
    assert_eq!(
        res,
        Err("background command `worker` exited with status 2".into())
    );
    assert!(
        out.contains("--- the end of /var/log/warmpool/worker.log ---"),
        "{out}"
    );
    // Checked by the step that started it, before the last look counts who still runs.
    assert!(!meta.contains_key("backgroundRunning"));
}

#[tokio::test]
async fn every_step_fails_the_boot_at_that_step() {
    // One boot per step, made to fail there; the records stop at that step.
    type Breaks = fn(&mut BootPlan);
    let failing: [(StepName, Breaks); 5] = [
        (StepName::ProjectSetup, |p| {
            p.project.devbox.setup_commands = vec![cmd("", "false")]
        }),
        (StepName::RepoSetup, |p| {
            p.project
                .devbox
                .repos
                .insert("acme/app".into(), vec![cmd("", "false")]);
        }),
        (StepName::WarmPoolSetup, |p| {
            p.pool_commands = vec![cmd("", "false")]
        }),
        (StepName::CloneRepo, |_| {}),
        (StepName::CreateVm, |_| {}),
    ];
    for (step, break_it) in failing {
        let mut p = plan(&["acme/app"]);
        break_it(&mut p);
        let opts = SimOptions {
            create_error: (step == StepName::CreateVm).then(|| "full".to_string()),
            ..Default::default()
        };
        let h = Harness::with(p, opts);
        if step == StepName::CloneRepo {
            *h.repos.error.lock().unwrap() = Some("unreachable".into());
        }
        let Outcome::Failed { step: at, error } = h.run().await else {
            panic!("{step} did not fail")
        };
        assert_eq!(at, step, "{error}");
        let done = h.recorder.finished();
        assert_eq!(done.last().unwrap().name, step);
        assert_eq!(done.last().unwrap().result, StepResult::Error);
        assert_eq!(done.last().unwrap().error.as_deref(), Some(error.as_str()));
        assert!(done[..done.len() - 1]
            .iter()
            .all(|s| s.result == StepResult::Success));
    }
}

#[tokio::test]
async fn every_step_can_run_twice() {
    let mut p = plan(&["acme/app"]);
    p.project.devbox.setup_commands = vec![cmd("", "echo a")];
    p.pool_commands = vec![SetupCommand {
        name: "svc".into(),
        command: "sleep 100".into(),
        background: Some(true),
    }];
    let mut h = Harness::new(p);
    for s in pipeline(1) {
        for round in 0..2 {
            let (res, out, _) = h.step(s.as_ref()).await;
            assert_eq!(res, Ok(()), "{} round {round}:\n{out}", s.name());
        }
    }
}

#[tokio::test]
async fn a_step_that_cannot_be_recorded_fails_the_boot() {
    let h = Harness::new(plan(&[]));
    let recorder = Arc::new(MemoryRecorder {
        fail_records: true,
        ..Default::default()
    });
    let cancel = CancellationToken::new();
    let outcome = provision::run(&h.svc, &h.target, &h.plan, recorder, &cancel).await;
    assert_eq!(
        outcome,
        Outcome::Failed {
            step: StepName::CreateVm,
            error: "internal error: could not record the step".into()
        }
    );
}

#[tokio::test]
async fn a_cancelled_boot_stops_in_its_step_and_records_nothing_of_it() {
    let mut p = plan(&["acme/app"]);
    p.pool_commands = vec![cmd("long", "sleep 600")];
    let h = Harness::new(p);
    let cancel = CancellationToken::new();
    let run = provision::run(&h.svc, &h.target, &h.plan, h.recorder.clone(), &cancel);
    let cancel_in_setup = async {
        // Bounded by the steps before it: each is milliseconds on the sim backend.
        let in_setup =
            || h.recorder.started.lock().unwrap().last() == Some(&StepName::WarmPoolSetup);
        tokio::time::timeout(Duration::from_secs(30), async {
            while !in_setup() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the boot reached warm_pool_setup");
        cancel.cancel();
    };
    let (outcome, ()) = tokio::join!(run, cancel_in_setup);
    assert_eq!(
        outcome,
        Outcome::Cancelled {
            step: StepName::WarmPoolSetup
        }
    );
    let recorded: Vec<_> = h.recorder.finished().iter().map(|s| s.name).collect();
    assert_eq!(recorded.len(), 7, "{recorded:?}");
    assert!(!recorded.contains(&StepName::WarmPoolSetup));
}

struct Panics;

#[async_trait]
impl Step for Panics {
    fn name(&self) -> StepName {
        StepName::ProjectSetup
    }
    async fn run(&self, _cx: &mut StepCx<'_>) -> Result<(), String> {
        panic!("index out of range")
    }
}

#[tokio::test]
async fn a_panicking_step_fails_with_an_internal_error() {
    let mut h = Harness::new(plan(&[]));
    let redactor = Arc::new(Redactor::new(std::iter::empty::<(&str, &str)>()));
    let mut log = crate::provision::steplog::StepLog::new(redactor, None);
    let mut meta = Map::new();
    let mut cx = StepCx {
        began: std::time::Instant::now(),
        target: &h.target,
        plan: &h.plan,
        svc: &h.svc,
        recorder: &*h.recorder,
        vm: &mut h.vm,
        log: &mut log,
        meta: &mut meta,
    };
    let res = provision::run_one(&Panics, &mut cx, None).await;
    assert_eq!(
        res,
        Err("internal error: the step stopped unexpectedly (index out of range)".into())
    );
}

fn golden(commit: &str, p: &BootPlan) -> GoldenPlan {
    let step = |seq: u32, name: StepName, meta: Value| StepRow {
        instance_id: "wpi_golden".into(),
        seq,
        name: name.as_str().into(),
        success: true,
        output: Some(String::new()),
        error: None,
        duration_ms: 1,
        finished_at: 0,
        metadata: meta.as_object().cloned(),
    };
    let _ = p;
    GoldenPlan {
        golden: GoldenRow {
            id: "wpi_golden".into(),
            project_id: "proj_test".into(),
            config_hash: "h".into(),
            backend: "sim".into(),
            commits: [(
                "acme/app".to_string(),
                RepoCommit {
                    branch: "main".into(),
                    commit: commit.into(),
                },
            )]
            .into(),
            ready: true,
            created_at: 0,
            node: None,
        },
        steps: vec![
            step(0, StepName::CreateVm, json!({})),
            step(1, StepName::EnsureServer, json!({})),
            step(2, StepName::SetEnvVars, json!({"count": 1})),
            step(3, StepName::CloneRepo, json!({"repo": "acme/app"})),
            step(4, StepName::CloneRepo, json!({"repo": "acme/lib"})),
            step(
                5,
                StepName::InitRepo,
                json!({"repo": "acme/lib", "hooks": 7}),
            ),
            step(
                6,
                StepName::InitRepo,
                json!({"repo": "acme/app", "hooks": 2}),
            ),
            step(7, StepName::ProjectSetup, json!({"commands": 3})),
        ],
    }
}

#[tokio::test]
async fn a_golden_clone_runs_only_what_a_clone_needs() {
    let mut p = plan(&["acme/app"]);
    p.project.devbox.setup_commands = vec![cmd("", "exit 3")];
    p.golden = Some(golden(COMMIT, &p));
    let h = Harness::new(p);
    // The failing setup command is not run again: the golden ran it (with the setup it had).
    let outcome = h.run().await;
    assert!(matches!(outcome, Outcome::Ready { .. }), "{outcome:?}");
    let done = h.recorder.finished();
    assert_eq!(done[0].metadata["fromGolden"], "wpi_golden");
    assert!(
        done[1].metadata.get("fromGolden").is_none(),
        "ensure_server runs for real"
    );
    assert_eq!(done[2].metadata["count"], 1);
    let clone = &done[3];
    assert!(clone.output.contains("still the head of main"), "{clone:?}");
    // A repository's step takes the golden's record of the same repository, wherever it was.
    assert_eq!(done[4].metadata["repo"], "acme/app");
    assert_eq!(done[4].metadata["hooks"], 2);
    assert_eq!(done[5].metadata["commands"], 3);
    assert!(done[5].output.contains("done in golden wpi_golden"));
}

#[tokio::test]
async fn a_golden_clone_fetches_a_branch_that_moved() {
    let mut p = plan(&["acme/app"]);
    p.golden = Some(golden("2222222222222222222222222222222222222222", &p));
    let mut h = Harness::new(p);
    h.through(&[&CreateVm, &EnsureServer]).await;
    let (res, out, meta) = h.step(&CloneRepo(0)).await;
    assert_eq!(res, Ok(()), "{out}");
    assert_eq!(
        meta["goldenCommit"],
        "2222222222222222222222222222222222222222"
    );
    assert_eq!(meta["commit"], COMMIT);
    assert!(out.contains("$ git fetch"), "{out}");
    assert!(out.contains(&format!("now at {COMMIT} (main)")), "{out}");
    *h.repos.error.lock().unwrap() = Some("unreachable".into());
    let (res, _, _) = h.step(&CloneRepo(0)).await;
    assert_eq!(res, Err("git fetch of acme/app failed: unreachable".into()));
}

/// A plan on a golden whose setup left background services in each of the three setup steps.
fn golden_with_services() -> BootPlan {
    let bg = |name: &str, command: &str| SetupCommand {
        background: Some(true),
        ..cmd(name, command)
    };
    let mut p = plan(&["acme/app"]);
    p.project.devbox.setup_commands = vec![cmd("", "exit 3"), bg("db", "sleep 100")];
    p.project
        .devbox
        .repos
        .insert("acme/app".into(), vec![bg("watch", "sleep 100")]);
    p.pool_commands = vec![bg("web", "sleep 100"), cmd("", "exit 4")];
    p.golden = Some(golden(COMMIT, &p));
    p
}

#[tokio::test]
async fn clones_without_the_goldens_processes_start_its_services_again() {
    let opts = SimOptions {
        clones_lose_processes: true,
        ..SimOptions::default()
    };
    let h = Harness::with(golden_with_services(), opts);
    let outcome = h.run().await;
    assert!(matches!(outcome, Outcome::Ready { .. }), "{outcome:?}");
    let done = h.recorder.finished();
    let by_name = |n: StepName| done.iter().find(|s| s.name == n).unwrap();
    for (step, service) in [
        (StepName::ProjectSetup, "db"),
        (StepName::RepoSetup, "watch"),
        (StepName::WarmPoolSetup, "web"),
    ] {
        let s = by_name(step);
        assert!(s.output.contains("done in golden wpi_golden"), "{s:?}");
        // Only the services run again, not the commands that ran once in the golden.
        assert!(
            s.output
                .contains(&format!("$ {service} (started again in this VM")),
            "{s:?}"
        );
        assert!(!s.output.contains("exit"), "{s:?}");
    }
    // The last look counts every service, whichever step started it again.
    assert_eq!(
        by_name(StepName::WarmPoolSetup).metadata["backgroundRunning"],
        3
    );
}

#[tokio::test]
async fn clones_with_the_goldens_processes_start_nothing_again() {
    let h = Harness::new(golden_with_services());
    let outcome = h.run().await;
    assert!(matches!(outcome, Outcome::Ready { .. }), "{outcome:?}");
    for s in h.recorder.finished() {
        assert!(!s.output.contains("started again"), "{s:?}");
    }
}

#[tokio::test]
async fn a_service_that_cannot_start_again_fails_the_clone_at_its_step() {
    let mut p = golden_with_services();
    p.project.devbox.setup_commands = vec![SetupCommand {
        background: Some(true),
        ..cmd("db", "exit 7")
    }];
    let opts = SimOptions {
        clones_lose_processes: true,
        ..SimOptions::default()
    };
    let h = Harness::with(p, opts);
    assert_eq!(
        h.run().await,
        Outcome::Failed {
            step: StepName::ProjectSetup,
            error: "background command `db` exited with status 7".into()
        }
    );
}
