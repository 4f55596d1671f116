//! Supervision, end to end on the real binary (`sim` backend, no root): a panic inside a boot
//! fails that boot with a clear reason and the server carries on, and the background loops say in
//! the metrics when they last ran and what happened.

mod common;

use std::time::Duration;

use common::*;

/// The value of the metric line that starts with `series` (name and labels), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics(s: &TestServer) -> String {
    let (status, body) = s.raw("GET", "/metrics", None, Vec::new()).await;
    assert_eq!(status, 200);
    body.as_str().expect("metrics are text").to_string()
}

#[tokio::test]
async fn a_panic_in_a_step_fails_its_boot_and_the_server_carries_on() {
    let s = TestServer::start(&["--backend", "sim", "--sim-panic-command"]);
    let pid = s.create_project("panics", vec![]).await;
    // The sim backend panics (inside the server) when a setup command says `panic`.
    let d = s.test_boot(&pid, boot_with(&[("boom", "panic")])).await;
    assert_eq!(d.status, "failed", "{d:#?}");
    assert_eq!(
        d.summary.failed_step.as_deref(),
        Some("warm_pool_setup"),
        "{d:#?}"
    );
    let reason = d.failure_reason.as_deref().unwrap();
    assert!(
        reason.starts_with("internal error: the step stopped unexpectedly"),
        "{reason}"
    );
    let text = metrics(&s).await;
    assert!(
        metric(&text, r#"warmpool_task_panics_total{task="step"}"#).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    // The server carries on: the next boot works.
    let d = s.test_boot(&pid, boot_with(&[("fine", "true")])).await;
    assert_eq!(d.status, "ready", "{d:#?}");
}

#[tokio::test]
async fn loops_report_their_last_activation() {
    let s = TestServer::start(&["--backend", "sim", "--reconcile-interval-ms", "50"]);
    let ok = r#"warmpool_loop_activations_total{loop="reconciler",result="ok"}"#;
    let text = wait_for(
        "the reconciler's passes to show in the metrics",
        Duration::from_secs(30),
        async || {
            let text = metrics(&s).await;
            match metric(&text, ok) {
                Some(n) if n >= 2.0 => Ok(text),
                other => Err(format!("{ok} = {other:?}")),
            }
        },
    )
    .await;
    let last = metric(
        &text,
        r#"warmpool_loop_last_activation_seconds{loop="reconciler"}"#,
    )
    .expect("the last activation's time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - last).abs() < 60.0,
        "last activation {last}, now {now}"
    );
    assert!(
        metric(
            &text,
            r#"warmpool_loop_last_did{loop="reconciler",what="launched"}"#
        )
        .is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn no_input_panics_a_server_that_was_not_asked_to() {
    let s = TestServer::start(&["--backend", "sim"]);
    let pid = s.create_project("calm", vec![]).await;
    let d = s.test_boot(&pid, boot_with(&[("boom", "panic")])).await;
    assert_eq!(d.status, "ready", "{d:#?}");
    assert!(!s.log_text().contains("panicked"), "{}", s.log_text());
}
