//! Prometheus metrics: what the pool holds, how claims are served, how steps go, how the
//! reconciler runs. Rendered at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const POOL_INSTANCES: &str = "warmpool_pool_instances";
pub const CLAIMS: &str = "warmpool_claims_total";
pub const CLAIM_SECONDS: &str = "warmpool_claim_duration_seconds";
pub const STEP_SECONDS: &str = "warmpool_step_duration_seconds";
pub const STEP_FAILURES: &str = "warmpool_step_failures_total";
pub const BOOTS: &str = "warmpool_boots_total";
pub const RECONCILE_RUNS: &str = "warmpool_reconcile_runs_total";
pub const RECONCILE_ERRORS: &str = "warmpool_reconcile_errors_total";
pub const RECONCILE_SECONDS: &str = "warmpool_reconcile_duration_seconds";
pub const TASK_PANICS: &str = "warmpool_task_panics_total";
pub const LOOP_LAST_ACTIVATION: &str = "warmpool_loop_last_activation_seconds";
pub const LOOP_ACTIVATIONS: &str = "warmpool_loop_activations_total";
pub const LOOP_LAST_DID: &str = "warmpool_loop_last_did";

/// The process-wide recorder (installed on first use).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(CLAIM_SECONDS.into()),
                &[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    &[
                        0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0,
                    ],
                )
            })
            .expect("valid buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (several apps in one test process): then the
        // first one's handle serves; metrics are process-wide either way.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Installs the recorder (if not yet) and describes the metrics. Metrics recorded before this are
/// lost, so the app calls it first thing.
pub fn init() {
    handle();
    describe();
}

fn describe() {
    metrics::describe_gauge!(
        warmpool_backend::sandbox::SPARES_READY_METRIC,
        "Sandbox VMs started ahead of need, ready for the next VM to take"
    );
    metrics::describe_gauge!(
        warmpool_backend::qemu::ready::READY_METRIC,
        "QEMU clones started ahead of need, waiting to be taken by a new VM of their golden"
    );
    metrics::describe_gauge!(
        POOL_INSTANCES,
        "Pool instances by project and state (ready, provisioning, failed, stale, claimed)"
    );
    metrics::describe_counter!(
        CLAIMS,
        "Claims served, by project and kind (warm: from the pool, cold: booted for the claim)"
    );
    metrics::describe_histogram!(
        CLAIM_SECONDS,
        metrics::Unit::Seconds,
        "Time to answer a claim, by kind"
    );
    metrics::describe_histogram!(
        STEP_SECONDS,
        metrics::Unit::Seconds,
        "Provisioning step durations, by step and result"
    );
    metrics::describe_counter!(STEP_FAILURES, "Failed provisioning steps, by step");
    metrics::describe_counter!(BOOTS, "Finished boots, by kind and result");
    metrics::describe_counter!(RECONCILE_RUNS, "Reconciler passes");
    metrics::describe_counter!(RECONCILE_ERRORS, "Reconciler passes that failed");
    metrics::describe_counter!(
        TASK_PANICS,
        "Background tasks (a boot, a loop's pass) that panicked; the server carried on"
    );
    metrics::describe_gauge!(
        LOOP_LAST_ACTIVATION,
        "When each background loop last ran (Unix time, seconds)"
    );
    metrics::describe_counter!(
        LOOP_ACTIVATIONS,
        "Activations of each background loop, by result (ok, error, panic)"
    );
    metrics::describe_gauge!(
        LOOP_LAST_DID,
        "What each background loop's last completed activation did, by kind"
    );
    metrics::describe_histogram!(
        RECONCILE_SECONDS,
        metrics::Unit::Seconds,
        "Reconciler pass durations"
    );
}
