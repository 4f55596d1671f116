//! Repositories from everywhere a user keeps them: paths and file:// URLs on the server, network
//! URLs (a `git daemon` the test runs), and the branch rules: pool branch, repo branch, remote default.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::json;

/// A `git daemon` serving the bare repositories under a directory, killed on drop.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git_daemon(base: &std::path::Path) -> GitDaemon {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("git")
        .arg("daemon")
        .arg("--reuseaddr")
        .arg("--export-all")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // git daemon listens within a moment of its start.
    wait_for_blocking("git daemon to listen", REQUEST, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connecting: {e}"))
    });
    GitDaemon { child, port }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn network_urls_and_remote_default_branches() {
    let s = TestServer::start(&[]);
    // A repository whose default branch is `develop`, served over git://.
    let work = TestRepo::new(&[("README", "network\n")]);
    git(work.path(), &["branch", "-m", "main", "develop"]);
    let served = tempfile::tempdir().unwrap();
    let bare = served.path().join("net.git");
    let out = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(work.path())
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    let daemon = git_daemon(served.path());
    let url = format!("git://127.0.0.1:{}/net.git", daemon.port);
    let pid = s
        .create_project("network", vec![repo_input("acme/my.repo-2", &url)])
        .await;
    let p = s.ok("GET", &format!("/v1/projects/{pid}"), None).await;
    assert_valid_project(&p);
    let d = s.test_boot(&pid, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    assert_eq!(
        meta(&d, "clone_repo"),
        json!({"repo": "acme/my.repo-2", "branch": "develop", "commit": work.head()})
    );
    let r = s
        .exec(&pid, d.id.as_str(), "cd /home/my.repo-2 && git remote get-url origin && git branch --show-current && cat README")
        .await;
    assert_eq!(r.output, format!("{url}\ndevelop\nnetwork\n"));
    // The project now knows the remote's default branch.
    let p = s.ok("GET", &format!("/v1/projects/{pid}"), None).await;
    assert_eq!(p["repos"][0]["branch"], "develop");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn the_pool_branch_wins_and_new_commits_are_picked_up() {
    let s = TestServer::start(&[]);
    let a = TestRepo::new(&[("a", "1\n")]);
    let a_feature = a.branch("feature", &[("a", "feature\n")]);
    let b = TestRepo::new(&[("b", "1\n")]);
    let b_feature = b.branch("feature", &[("b", "feature\n")]);
    let pid = s
        .create_project(
            "branches",
            vec![
                RepoInput {
                    branch: Some("main".into()),
                    ..repo_input("acme/a", a.url())
                },
                repo_input("acme/b", format!("file://{}", b.url())),
            ],
        )
        .await;
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            branch: Some(Some("feature".into())),
            ..Default::default()
        },
    )
    .await;
    let d = s.test_boot(&pid, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let clones: Vec<_> = d
        .steps
        .iter()
        .filter(|s| s.name == "clone_repo")
        .map(|s| json!(s.metadata))
        .collect();
    assert_eq!(
        clones,
        [
            json!({"repo": "acme/a", "branch": "feature", "commit": a_feature}),
            json!({"repo": "acme/b", "branch": "feature", "commit": b_feature}),
        ]
    );

    // Without the pool branch: each repo's own branch, else the remote default; and the mirror
    // brings in commits made since the last boot.
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            branch: Some(None),
            ..Default::default()
        },
    )
    .await;
    let newer = a.commit(&[("a", "2\n")], "second");
    let d = s.test_boot(&pid, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let steps: Vec<_> = d.steps.iter().map(|s| json!(s.metadata)).collect();
    assert_eq!(
        steps[3],
        json!({"repo": "acme/a", "branch": "main", "commit": newer})
    );
    assert_eq!(
        steps[4],
        json!({"repo": "acme/b", "branch": "main", "commit": b.head()})
    );

    // A pool branch that one repo lacks fails that repo's clone with a clear error.
    s.configure_pool(
        &pid,
        UpdateWarmPoolBody {
            branch: Some(Some("only-in-a".into())),
            ..Default::default()
        },
    )
    .await;
    git(a.path(), &["branch", "only-in-a"]);
    let d = s.test_boot(&pid, Default::default()).await;
    assert_eq!(d.status, "failed", "{d:#?}");
    assert_failed_at(
        &d,
        "clone_repo",
        "git clone of acme/b failed: branch `only-in-a` not found",
    );
    assert_eq!(d.summary.completed_steps, 4);
}
