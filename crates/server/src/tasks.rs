//! Supervised background work. Tasks whose loss would leave state wrong — boots (through
//! [`catch`]), the reconciler, the lease keeper, head checks, re-adoption — go through [`spawn`] or
//! [`catch`], so a panic is logged and counted (`warmpool_task_panics_total{task}`) rather than
//! lost with its task (per-connection tasks and timers that only tidy up are plain spawns); loops
//! report each activation through [`Activation`] — when it last ran, what it did, whether it
//! failed — as metrics (`warmpool_loop_*{loop}`).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tokio::task::JoinHandle;

use crate::metrics as m;

/// The message a panic carried.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Runs `fut` to its end, catching a panic: `Err(message)` then, logged and counted under `task`.
pub async fn catch<F: Future>(task: &'static str, fut: F) -> Result<F::Output, String> {
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|p| {
        let msg = panic_message(&*p);
        tracing::error!(task, "a background task panicked: {msg}");
        metrics::counter!(m::TASK_PANICS, "task" => task).increment(1);
        msg
    })
}

/// Spawns `fut` as a supervised task named `task` (see [`catch`]).
pub fn spawn<F>(task: &'static str, fut: F) -> JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(async move { catch(task, fut).await.ok() })
}

/// How one activation of a loop went.
pub enum Activation<'a> {
    /// It ran; `did` counts what it did, by kind (zeros included, so a gauge drops back).
    Done(&'a [(&'static str, usize)]),
    /// It returned an error.
    Failed(&'a str),
    /// It panicked (already logged by [`catch`]).
    Panicked,
}

/// Records an activation of `name`: `warmpool_loop_last_activation_seconds` (Unix time),
/// `warmpool_loop_activations_total{result}`, and for a completed one
/// `warmpool_loop_last_did{what}`.
pub fn record(name: &'static str, activation: Activation<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    metrics::gauge!(m::LOOP_LAST_ACTIVATION, "loop" => name).set(now);
    let result = match activation {
        Activation::Done(did) => {
            for (what, n) in did {
                metrics::gauge!(m::LOOP_LAST_DID, "loop" => name, "what" => *what).set(*n as f64);
            }
            "ok"
        }
        Activation::Failed(e) => {
            tracing::warn!(r#loop = name, "a pass failed: {e}");
            "error"
        }
        Activation::Panicked => "panic",
    };
    metrics::counter!(m::LOOP_ACTIVATIONS, "loop" => name, "result" => result).increment(1);
}
