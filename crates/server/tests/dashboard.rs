//! The dashboard in a real headless Chromium (driven over WebDriver) against the real server and
//! real sandboxes: sign in, create a project from a git repository, configure its pool, run a
//! failing test boot and see the failed step, fix it and see the boot become ready, run a command,
//! claim and release. A screenshot of the instance page is saved under `target/`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(names: &[&str]) -> PathBuf {
    for n in names {
        for dir in ["/usr/bin", "/usr/lib/chromium", "/usr/local/bin"] {
            let p = Path::new(dir).join(n);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("none of {names:?} is installed (Debian: apt-get install chromium chromium-driver)");
}

async fn browser() -> (Driver, Client) {
    // The WebDriver client's TLS stack needs a provider chosen (it only speaks plain HTTP here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let driver = Driver(
        Command::new(find(&["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": find(&["chromium", "chromium-browser"]).to_string_lossy(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1400"],
        }),
    );
    // chromedriver listens within a second; the session starts a browser, a few more.
    let client = wait_for("a browser session", SETTLE, async || {
        ClientBuilder::rustls()
            .expect("a TLS setup")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
    })
    .await;
    (driver, client)
}

/// How long the page takes to show the answer to what the user did (a request, a render).
const PAGE: Duration = REQUEST;

/// The element's text. The page re-renders itself as things change, so an element found a moment
/// ago may be gone ("stale") when its text is read: it is found again until a read succeeds.
async fn text_of(c: &Client, css: &str) -> String {
    wait_text(c, css, css, PAGE, |_| true).await
}

/// Waits until the element's text satisfies `ok` (the page refreshes itself as things change),
/// for as long as what it shows takes (`bound`).
async fn wait_text(
    c: &Client,
    css: &str,
    what: &str,
    bound: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    wait_for(what, bound, async || {
        let shown = match c.find(Locator::Css(css)).await {
            Ok(e) => match e.text().await {
                Ok(t) if ok(&t) => return Ok(t),
                Ok(t) => format!("{css} reads {t:?}"),
                Err(e) => format!("{css} could not be read: {e}"),
            },
            Err(e) => format!("no {css}: {e}"),
        };
        // The page says more than the element.
        let page = c.source().await.unwrap_or_default();
        Err(format!("{shown}; the page:\n{page}"))
    })
    .await
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

/// Clicks an element in the middle of the window (at the bottom, the toast may cover it).
async fn click(c: &Client, css: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    let arg = serde_json::to_value(&e).unwrap();
    c.execute("arguments[0].scrollIntoView({block: 'center'})", vec![arg])
        .await
        .unwrap();
    e.click().await.unwrap();
}

async fn set_commands(c: &Client, commands: &str) {
    fill(c, "#pool-commands", commands).await;
    click(c, "#save-pool").await;
    wait_text(c, "#toast", "the pool to be saved", PAGE, |t| {
        t.contains("Pool saved")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "tier root: a browser against sandbox VMs (root, chromium); run every tier with `cargo test -- --include-ignored`"]
async fn a_newcomer_does_the_walkthrough_in_the_browser() {
    let s = TestServer::start(&[]);
    let repo = TestRepo::new(&[("build.sh", "echo \"built with $GREETING\"\n")]);
    let (_driver, c) = browser().await;

    // The page and its assets come from the server itself, with a strict content policy.
    let page = reqwest::get(format!("{}/", s.url)).await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));

    // Sign in: a wrong token is refused with a message, the admin token works.
    c.goto(&format!("{}/", s.url)).await.unwrap();
    fill(&c, "#token", "not-the-token").await;
    click(&c, "button[type=submit]").await;
    wait_text(&c, "#toast", "a refusal", PAGE, |t| {
        t.contains("sign in again")
    })
    .await;
    fill(&c, "#token", &s.token).await;
    click(&c, "button[type=submit]").await;
    wait_text(&c, "h1", "the project list", PAGE, |t| t == "Projects").await;

    // A project from the repository.
    fill(&c, "#new-name", "demo 'ü' $x").await;
    fill(&c, "#new-repo", "acme/app").await;
    fill(&c, "#new-url", &repo.url()).await;
    click(&c, "form button[type=submit]").await;
    wait_text(&c, "h1", "the project page", PAGE, |t| t == "demo 'ü' $x").await;
    let url = c.current_url().await.unwrap();
    let pid = url
        .fragment()
        .unwrap()
        .trim_start_matches("/projects/")
        .to_string();

    // An environment variable; its value never comes back.
    fill(&c, "#env-name", "GREETING").await;
    fill(&c, "#env-value", "hello from warmpool").await;
    click(
        &c,
        "#env-name ~ button, form:has(#env-name) button[type=submit]",
    )
    .await;
    wait_text(&c, "ul", "the variable listed", PAGE, |t| {
        t.contains("GREETING")
    })
    .await;
    assert!(!c.source().await.unwrap().contains("hello from warmpool"));

    // A broken setup command: the test boot fails and the page says where and why.
    set_commands(&c, "build=bash /home/app/missing.sh").await;
    click(&c, "#test-boot").await;
    let err = wait_text(
        &c,
        ".step.failed .error",
        "the failed step",
        s.boot(),
        |t| !t.is_empty(),
    )
    .await;
    assert!(err.contains("exited with status 127"), "{err}");
    let failed = text_of(&c, ".step.failed h3").await;
    assert!(failed.contains("warm_pool_setup"), "{failed}");
    let summary = text_of(&c, "#instance-status").await;
    assert!(summary.contains("failed at warm_pool_setup"), "{summary}");
    assert!(text_of(&c, ".step.failed pre")
        .await
        .contains("No such file or directory"));
    // Destroyed, it still reads as failed, and says when and why it was ended.
    let url = c.current_url().await.unwrap();
    let failed_id = url.as_str().rsplit('/').next().unwrap().to_string();
    s.ok(
        "DELETE",
        &format!("/v1/projects/{pid}/warm-pool/instances/{failed_id}"),
        None,
    )
    .await;
    c.refresh().await.unwrap();
    wait_text(
        &c,
        "#instance-lifecycle",
        "the end of the instance",
        PAGE,
        |t| t.contains("ended") && t.contains("deleted"),
    )
    .await;
    assert!(text_of(&c, "#instance-status")
        .await
        .contains("failed at warm_pool_setup"));

    // Fixed: the next test boot becomes ready, every step shown with its duration and output.
    c.goto(&format!("{}/#/projects/{pid}", s.url))
        .await
        .unwrap();
    wait_text(&c, "h1", "the project page", PAGE, |t| {
        t.starts_with("demo")
    })
    .await;
    set_commands(
        &c,
        "build=echo building now; sleep 3; bash /home/app/build.sh > /home/built.txt",
    )
    .await;
    click(&c, "#test-boot").await;
    // Output streams in while the boot is still running.
    wait_text(&c, "#live-output", "live output", s.boot(), |t| {
        t.contains("building now")
    })
    .await;
    assert!(text_of(&c, "#instance-status")
        .await
        .starts_with("provisioning"));
    wait_text(&c, "#instance-status", "a ready test boot", s.boot(), |t| {
        t.starts_with("ready")
    })
    .await;
    let steps = c.find_all(Locator::Css("article.step")).await.unwrap();
    assert_eq!(steps.len(), 8, "all 8 steps are shown");
    assert!(c
        .find_all(Locator::Css(".step.failed"))
        .await
        .unwrap()
        .is_empty());
    assert!(!c
        .find_all(Locator::Css("#timeline svg rect"))
        .await
        .unwrap()
        .is_empty());

    // A command in the VM, its output redacted as in the API.
    fill(&c, "#exec-command", "cat /home/built.txt").await;
    click(&c, "form:has(#exec-command) button[type=submit]").await;
    let out = wait_text(&c, "#exec-output", "the command's output", EXEC, |t| {
        t.contains("exit")
    })
    .await;
    assert!(out.contains("built with [REDACTED:GREETING]"), "{out}");
    c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    let shot = c.screenshot().await.unwrap();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("dashboard-instance.png"), &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"));

    // Back on the project: the pool filled itself; claim a VM and release it from the list.
    c.goto(&format!("{}/#/projects/{pid}", s.url))
        .await
        .unwrap();
    wait_text(&c, "#pool-counts", "a ready pool VM", s.boot(), |t| {
        t.starts_with("1")
    })
    .await;
    click(&c, "#claim").await;
    wait_text(&c, "#toast", "the claim", PAGE, |t| {
        t.contains("Claimed warm VM")
    })
    .await;
    c.find(Locator::Css("#instance-filter option[value=claimed]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(
        &c,
        "table:last-of-type tbody",
        "the claimed VM listed",
        PAGE,
        |t| t.contains("claimed"),
    )
    .await;
    // Its page shows the lease, and renews it.
    click(&c, "table:last-of-type tbody a").await;
    wait_text(
        &c,
        "#instance-lifecycle",
        "the claimed VM's lease",
        PAGE,
        |t| t.contains("lease until"),
    )
    .await;
    click(&c, "#renew-lease").await;
    wait_text(&c, "#toast", "the renewal", PAGE, |t| {
        t.contains("Lease until")
    })
    .await;
    c.goto(&format!("{}/#/projects/{pid}", s.url))
        .await
        .unwrap();
    wait_text(&c, "#pool-target", "the pool's target", PAGE, |t| {
        t.contains("(fixed)")
    })
    .await;
    // Autoscale on, from the form: the target line says so, and why.
    click(&c, "#autoscale-enabled").await;
    fill(&c, "#autoscale-min", "2").await;
    fill(&c, "#autoscale-max", "3").await;
    click(&c, "#save-autoscale").await;
    wait_text(&c, "#toast", "autoscale saved", PAGE, |t| {
        t.contains("Autoscale saved")
    })
    .await;
    let target = wait_text(&c, "#pool-target", "the autoscaled target", PAGE, |t| {
        t.contains("autoscale 2–3") && t.contains("claims arrived")
    })
    .await;
    assert!(target.starts_with("Target 2"), "{target}");
    c.find(Locator::Css("#instance-filter option[value=claimed]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(
        &c,
        "table:last-of-type tbody",
        "the claimed VM listed again",
        PAGE,
        |t| t.contains("claimed"),
    )
    .await;
    click(&c, "button[aria-label^='Release']").await;
    wait_text(
        &c,
        "table:last-of-type tbody",
        "the VM released",
        PAGE,
        |t| t.contains("No instances"),
    )
    .await;
    // The chart of the pool's size has samples.
    let chart = c
        .find(Locator::Css("#pool-chart svg"))
        .await
        .unwrap()
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(chart.contains("ready"), "{chart}");
    c.close().await.unwrap();
}
