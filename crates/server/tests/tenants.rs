//! A project token never reaches beyond its project, on the default backend: repository sources
//! on the server's disk are the admin's alone (and never the server's own dirs), git is never led
//! out of a repository, the server's own git credentials serve the admin's sources only, VMs
//! learn no host path, and credentials written in URLs are sealed and never shown.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

const SECRET: &str = "wp_topsecret_file_content_4711";
const PASS: &str = "s3cret-pass-0815";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir` (not following symlinks), except under the directories named `skip`.
fn files_under(dir: &Path, skip: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name().to_string_lossy().to_string();
            if ft.is_dir() && !skip.contains(&name.as_str()) {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// A repository on branch `main` at `dir` with one commit.
fn repo_at(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README"), "hello\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "first"]);
}

async fn project_token(s: &TestServer, project: &str) -> String {
    let v = s
        .ok(
            "POST",
            &format!("/v1/projects/{project}/tokens"),
            Some(json!({})),
        )
        .await;
    v["token"].as_str().unwrap().to_string()
}

async fn set_repo(s: &TestServer, token: &str, project: &str, url: &str) -> (u16, Value) {
    s.call_as(
        Some(token),
        "PATCH",
        &format!("/v1/projects/{project}"),
        Some(json!({"repos": [{"repoFullName": "acme/app", "url": url}]})),
    )
    .await
}

/// A finished boot failed at cloning, saying `why`.
fn assert_failed_with(d: &WarmPoolInstanceDetail, why: &str) {
    assert_eq!(d.status, "failed", "{d:#?}");
    assert_eq!(
        d.summary.failed_step.as_deref(),
        Some("clone_repo"),
        "{d:#?}"
    );
    let error = d.summary.error.as_deref().unwrap_or_default();
    assert!(error.contains(why), "expected `{why}` in: {d:#?}");
}

/// Every step output and error of every instance of `project`, as one text.
async fn all_step_text(s: &TestServer, project: &str) -> String {
    let list = s
        .ok(
            "GET",
            &format!("/v1/projects/{project}/warm-pool/instances?limit=50"),
            None,
        )
        .await;
    let mut text = String::new();
    for item in list["items"].as_array().unwrap() {
        let d = s
            .ok(
                "GET",
                &format!(
                    "/v1/projects/{project}/warm-pool/instances/{}",
                    item["id"].as_str().unwrap()
                ),
                None,
            )
            .await;
        text.push_str(&d.to_string());
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn sources_on_the_server_are_the_admins_alone_and_lead_nowhere_else() {
    let root = tempfile::Builder::new()
        .prefix("wp-allowed-")
        .tempdir()
        .unwrap();
    let outside = tempfile::Builder::new()
        .prefix("wp-outside-")
        .tempdir()
        .unwrap();
    std::fs::write(outside.path().join("secret.txt"), format!("{SECRET}\n")).unwrap();
    repo_at(&root.path().join("app"));
    let root_arg = root.path().display().to_string();
    let s = TestServer::start(&["--allow-local-repos", &root_arg]);
    let data = s.data_dir();
    let cache = cache_dir();
    let admin_token = s.token.clone();

    // The admin configures a repository on the server's disk, as the README's walkthrough does.
    let app = root.path().join("app").display().to_string();
    let p = s
        .create_project("tenant", vec![repo_input("acme/app", &app)])
        .await;
    let tok = project_token(&s, &p).await;
    let d = s.test_boot(&p, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let id = d.id.clone();
    let vm = d.instance_id.clone();

    // What the VM can read names no host path of the data or cache dir.
    let seen = s
        .exec(
            &p,
            &id,
            "cat /proc/self/mountinfo /proc/mounts /proc/1/mountinfo; tr '\\0' ' ' < /proc/1/cmdline; \
             tr '\\0' '\\n' < /proc/1/environ; env; readlink /proc/1/cwd /proc/1/root /proc/1/exe; \
             cat /proc/self/cgroup; ls -la / /home /root",
        )
        .await;
    let out = seen.output.as_str();
    assert!(out.contains("overlay"), "{out}");
    for host in [&data, &cache] {
        let h = host.display().to_string();
        assert!(!out.contains(&h), "the VM sees {h}:\n{out}");
    }

    // The tenant's attack: a repository in its VM whose packed-refs is the admin token.
    let r = s
        .exec(
            &p,
            &id,
            &format!(
                "set -e; git init -q --bare /home/evil.git; ln -sf {}/admin-token /home/evil.git/packed-refs; echo made",
                data.display()
            ),
        )
        .await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    let evil = data.join("vms").join(&vm).join("rw/upper/home/evil.git");
    assert!(
        evil.is_dir(),
        "{} should be the VM's repository",
        evil.display()
    );
    let evil = evil.display().to_string();
    let before = s.ok("GET", &format!("/v1/projects/{p}/repos"), None).await;

    // Refused to a project token: every source on the server's disk, and this machine's own
    // network addresses.
    let forbidden = [
        evil.clone(),
        format!("file://{evil}"),
        data.display().to_string(),
        format!("file://{}/admin-token", data.display()),
        app.clone() + "/.git",
        "file:///etc".to_string(),
        "http://127.0.0.1:7070/x.git".to_string(),
        "git://localhost/x".to_string(),
        "http://[::1]:8080/x.git".to_string(),
        "http://2130706433/x.git".to_string(),
        "ssh://git@127.0.0.2/x.git".to_string(),
        "https://169.254.169.254/latest".to_string(),
    ];
    for url in &forbidden {
        let (st, v) = set_repo(&s, &tok, &p, url).await;
        assert_eq!(st, 403, "{url}: {v}");
        assert_eq!(v["error"]["code"], "forbidden");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("admin token")
                || v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("own machine"),
            "{v}"
        );
    }
    // Not a source at all, whoever asks.
    for token in [&tok, &admin_token] {
        let (st, v) = set_repo(&s, token, &p, "evil.git").await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["error"]["details"][0]["field"], "repos[0].url");
    }
    // Refused to the admin too: the server's own dirs, and anything outside the allowed roots.
    let link = root.path().join("link-to-data");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    for url in [
        evil.clone(),
        format!("file://{}", data.display()),
        format!("{}/mirrors", data.display()),
        cache.display().to_string(),
        link.display().to_string(),
        outside.path().display().to_string(),
        format!(
            "{}/../{}",
            root_arg,
            outside.path().file_name().unwrap().to_string_lossy()
        ),
    ] {
        let (st, v) = set_repo(&s, &admin_token, &p, &url).await;
        assert_eq!(st, 422, "{url}: {v}");
        assert_eq!(v["error"]["details"][0]["field"], "repos[0].url", "{v}");
    }
    let after = s.ok("GET", &format!("/v1/projects/{p}/repos"), None).await;
    assert_eq!(before, after, "refused changes change nothing");
    // A project token may send back the source the admin gave, as it reads it.
    let (st, v) = set_repo(&s, &tok, &p, &app).await;
    assert_eq!(st, 200, "{v}");

    // Sources the admin may give, under the allowed root, that would lead git outside them.
    let linked = root.path().join("linked");
    repo_at(&linked);
    git(&linked, &["pack-refs", "--all"]);
    std::fs::remove_file(linked.join(".git/packed-refs")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        linked.join(".git/packed-refs"),
    )
    .unwrap();
    let borrowing = root.path().join("borrowing");
    repo_at(&outside.path().join("lender"));
    git(
        root.path(),
        &[
            "clone",
            "-q",
            "--shared",
            &outside.path().join("lender").display().to_string(),
            "borrowing",
        ],
    );
    let hard = root.path().join("hardlinked");
    repo_at(&hard);
    git(&hard, &["pack-refs", "--all"]);
    std::fs::remove_file(hard.join(".git/packed-refs")).unwrap();
    std::fs::hard_link(
        outside.path().join("secret.txt"),
        hard.join(".git/packed-refs"),
    )
    .unwrap();
    let worktree = root.path().join("worktree");
    git(
        &root.path().join("app"),
        &["worktree", "add", "-q", &worktree.display().to_string()],
    );
    let p2 = s.create_project("sources", vec![]).await;
    for (repo, why) in [
        (&linked, "symlink to outside"),
        (&borrowing, "alternates"),
        (&hard, ""),
        (&worktree, ".git is a file"),
    ] {
        let url = repo.display().to_string();
        let (st, v) = set_repo(&s, &admin_token, &p2, &url).await;
        assert_eq!(st, 200, "{url}: {v}");
        let d = s.test_boot(&p2, Default::default()).await;
        assert_eq!(d.status, "failed", "{url}: {d:#?}");
        assert_eq!(
            d.summary.failed_step.as_deref(),
            Some("clone_repo"),
            "{d:#?}"
        );
        let text = serde_json::to_string(&d).unwrap();
        assert!(
            text.contains("git clone of acme/app failed"),
            "{url}: {d:#?}"
        );
        assert!(text.contains(why), "{url}: expected `{why}` in {d:#?}");
        assert!(!text.contains(SECRET), "{url} showed the file: {d:#?}");
    }

    // A source that was fine when configured and is swapped for a link to the data dir later
    // is refused when it is fetched.
    let swap = root.path().join("swap");
    repo_at(&swap);
    let (st, v) = set_repo(&s, &admin_token, &p2, &swap.display().to_string()).await;
    assert_eq!(st, 200, "{v}");
    std::fs::rename(&swap, root.path().join("swapped-out")).unwrap();
    std::os::unix::fs::symlink(&data, &swap).unwrap();
    let d = s.test_boot(&p2, Default::default()).await;
    assert_failed_with(&d, "the server's own data or cache dir");

    // Nothing anywhere showed the admin token or the file, or named the data dir.
    for project in [&p, &p2] {
        let text = all_step_text(&s, project).await;
        assert!(
            !text.contains(&admin_token) && !text.contains(SECRET),
            "{text}"
        );
        assert!(!text.contains(&data.display().to_string()), "{text}");
    }
    let log = s.log_text();
    assert!(!log.contains(SECRET), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: runs sandbox VMs, so it needs root; run every tier with `cargo test -- --include-ignored`"]
async fn credentials_in_urls_are_sealed_and_the_servers_own_serve_the_admin_only() {
    let repos = tempfile::Builder::new()
        .prefix("wp-remote-")
        .tempdir()
        .unwrap();
    repo_at(&repos.path().join("app.git"));
    // Another machine: VMs reach it through their outbound networking, as the server does.
    let host = RemoteHost::new();
    let remote = AuthGitServer::start(repos.path(), host.listen(), "alice", PASS).await;
    let port = remote.port;
    let ip = host.ip;
    // The server's own git credentials: a credential store in its home, for both addresses.
    let home = tempfile::Builder::new()
        .prefix("wp-home-")
        .tempdir()
        .unwrap();
    std::fs::write(
        home.path().join(".git-credentials"),
        format!("http://alice:{PASS}@{ip}:{port}\n"),
    )
    .unwrap();
    std::fs::write(
        home.path().join(".gitconfig"),
        "[credential]\n\thelper = store\n",
    )
    .unwrap();
    let home_dir = home.path().display().to_string();
    let s = TestServer::start_with_env(&[], &[("HOME", home_dir.as_str())]);

    // The admin's source with no credentials of its own is fetched with the server's.
    let plain = format!("http://{ip}:{port}/app.git");
    let p = s
        .create_project("creds", vec![repo_input("acme/app", &plain)])
        .await;
    let d = s.test_boot(&p, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");

    // Credentials in the URL: sealed, shown as ***, never printed.
    let url = format!("http://alice:{PASS}@{ip}:{port}/app.git");
    let shown = format!("http://alice:***@{ip}:{port}/app.git");
    let (st, v) = set_repo(&s, &s.token, &p, &url).await;
    assert_eq!(st, 200, "{v}");
    assert!(!v.to_string().contains(PASS));
    let r = s.ok("GET", &format!("/v1/projects/{p}/repos"), None).await;
    assert_eq!(r["items"][0]["url"], shown.as_str(), "{r:?}");
    let d = s.test_boot(&p, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let id = d.id.clone();
    let clone = step(&d, "clone_repo");
    assert!(
        clone.output.as_deref().unwrap_or_default().contains(&shown),
        "{clone:#?}"
    );
    // In the VM: origin has no credentials; root fetches with them; nobody else reads them.
    let cfg = s.exec(&p, &id, "cat /home/app/.git/config").await;
    let cfg = cfg.output.as_str();
    assert!(cfg.contains(&plain) && !cfg.contains(PASS), "{cfg:?}");
    let fetch = s
        .exec(&p, &id, "git -C /home/app fetch origin && echo fetched")
        .await;
    assert_eq!(fetch.exit_code, 0, "{fetch:?}");
    let file = "/root/.config/git/warmpool/app.credentials";
    let cat = s
        .exec(&p, &id, &format!("stat -c %a {file}; cat {file}"))
        .await;
    let cat_out = cat.output.as_str();
    assert!(cat_out.starts_with("600"), "{cat:?}");
    assert!(!cat_out.contains(PASS), "exec output is redacted: {cat:?}");
    assert!(
        cat_out.contains("[REDACTED:credentials of acme/app]"),
        "{cat:?}"
    );
    let other = s
        .exec(&p, &id, &format!("su nobody -s /bin/sh -c 'cat {file}'"))
        .await;
    assert_ne!(other.exit_code, 0, "{other:?}");

    // Sending back what was shown keeps the credentials; `***` for credentials the project
    // does not have is refused.
    let (st, v) = set_repo(&s, &s.token, &p, &shown).await;
    assert_eq!(st, 200, "{v}");
    let d = s.test_boot(&p, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    let (st, v) = set_repo(
        &s,
        &s.token,
        &p,
        &format!("http://bob:***@{ip}:{port}/app.git"),
    )
    .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["details"][0]["field"], "repos[0].url");

    // A wrong password fails in our words, and shows no password either.
    let (st, _) = set_repo(
        &s,
        &s.token,
        &p,
        &format!("http://alice:wrong-pass-999@{ip}:{port}/app.git"),
    )
    .await;
    assert_eq!(st, 200);
    let d = s.test_boot(&p, Default::default()).await;
    assert_failed_with(&d, "authentication failed");
    assert!(
        !serde_json::to_string(&d)
            .unwrap()
            .contains("wrong-pass-999"),
        "{d:#?}"
    );

    // A project token's network source is fetched with nothing of the server's: without
    // credentials of its own it is refused by the remote, with them it works.
    let tok = project_token(&s, &p).await;
    let (st, v) = set_repo(&s, &tok, &p, &format!("http://{ip}:{port}/app.git")).await;
    assert_eq!(st, 200, "{v}");
    let refused = remote.refused.load(std::sync::atomic::Ordering::SeqCst);
    let d = s.test_boot(&p, Default::default()).await;
    assert_failed_with(&d, "authentication failed");
    assert!(remote.refused.load(std::sync::atomic::Ordering::SeqCst) > refused);
    let (st, v) = set_repo(
        &s,
        &tok,
        &p,
        &format!("http://alice:{PASS}@{ip}:{port}/app.git"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let d = s.test_boot(&p, Default::default()).await;
    assert_eq!(d.status, "ready", "{d:#?}");

    // Nowhere at rest or in any answer or log: the database, the mirrors, the server's log.
    // (Not in the VMs' own disks, where the VM keeps them, nor in the disks of VMs started
    // ahead of need, which no project has used: sparse images of gigabytes.)
    for f in files_under(&s.data_dir(), &["vms", "vm-spares"]) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !contains(&bytes, PASS),
            "{} holds the password",
            f.display()
        );
    }
    assert!(!all_step_text(&s, &p).await.contains(PASS));
    assert!(!s.log_text().contains(PASS), "{}", s.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_an_older_version_stored_in_urls_are_sealed_at_start() {
    use warmpool_store::Store;
    let mut s = TestServer::start(&["--backend", "sim"]);
    let p = s.create_project("legacy", vec![]).await;
    s.kill9();
    // As an older version stored it: the URL as given, credentials and all.
    let db = s.data_dir().join("warmpool.db");
    {
        let store = warmpool_store::SqliteStore::open(&db).unwrap();
        let mut row = store.get_project(&p).await.unwrap().unwrap();
        row.repos = vec![warmpool_store::RepoSpec {
            full_name: "acme/app".into(),
            url: format!("https://bob:{PASS}@example.com/app.git"),
            branch: Some("main".into()),
            credentials: None,
            admin_source: false,
        }];
        assert!(store.update_project(&row).await.unwrap());
    }
    s.restart();
    let r = s.ok("GET", &format!("/v1/projects/{p}/repos"), None).await;
    assert_eq!(
        r["items"][0]["url"], "https://bob:***@example.com/app.git",
        "{r:?}"
    );
    // What is stored now: the URL without them, and them sealed.
    s.kill9();
    {
        let store = warmpool_store::SqliteStore::open(&db).unwrap();
        let row = store.get_project(&p).await.unwrap().unwrap();
        assert_eq!(row.repos[0].url, "https://example.com/app.git");
        assert!(row.repos[0].credentials.is_some());
    }
}
