//! `ensure_server`: waits, with growing pauses up to the configured bound, for the VM's agent to
//! answer with this VM's token, then for its network.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use warmpool_backend::AgentCallError;
use warmpool_types::state::StepName;

use super::{Step, StepCx};
use crate::provision::GoldenPlan;

pub struct EnsureServer;

#[async_trait]
impl Step for EnsureServer {
    fn name(&self) -> StepName {
        StepName::EnsureServer
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        let agent = cx.agent()?;
        let started = Instant::now();
        let limit = cx.svc.timeouts.server_wait;
        let mut delay = Duration::from_millis(5);
        let mut last_err;
        loop {
            match agent.health().await {
                Ok(h) => {
                    let waited = started.elapsed().as_millis() as u64;
                    cx.meta.insert("agentVersion".into(), json!(h.version));
                    cx.meta.insert("waitedMs".into(), json!(waited));
                    cx.log.line(&format!(
                        "the VM's server (warmpool-agent {}) answered on {} after {waited} ms",
                        h.version, h.hostname
                    ));
                    // The network may still be attaching; every later step may need it.
                    let t = Instant::now();
                    cx.svc
                        .backend
                        .wait_network(&cx.target.vm_id)
                        .await
                        .map_err(|e| e.to_string())?;
                    let net = t.elapsed().as_millis() as u64;
                    if net > 0 {
                        cx.log.line(&format!("its network was up {net} ms later"));
                    }
                    return Ok(());
                }
                Err(AgentCallError::Unauthorized) => {
                    return Err("the VM's server refused this VM's token".into());
                }
                Err(e) => last_err = e.to_string(),
            }
            if started.elapsed() >= limit {
                cx.meta.insert(
                    "waitedMs".into(),
                    json!(started.elapsed().as_millis() as u64),
                );
                cx.log.line(&format!("last attempt: {last_err}"));
                if let Some(tail) = cx.svc.backend.log_tail(&cx.target.vm_id).await {
                    cx.log.line("--- the end of the VM's console log ---");
                    cx.log.push(&tail);
                    cx.log.line("");
                }
                return Err(format!(
                    "the VM's server did not answer within {} s",
                    limit.as_secs()
                ));
            }
            // Bounded by `limit` above: the agent is polled until it answers or the bound passes.
            tokio::time::sleep(delay.min(limit.saturating_sub(started.elapsed()))).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// A clone's agent is its own process: it must answer like any VM's.
    async fn on_clone(&self, cx: &mut StepCx<'_>, _golden: &GoldenPlan) -> Result<(), String> {
        self.run(cx).await
    }
}
