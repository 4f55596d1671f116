//! `create_vm`: asks the backend for a VM (a clone of the golden when the pool has one) with the
//! project's limits and a token of its own, and keeps where its agent answers.

use async_trait::async_trait;
use serde_json::json;
use warmpool_backend::VmSpec;
use warmpool_types::ids;
use warmpool_types::state::{InstanceKind, StepName};

use super::{Step, StepCx};
use crate::provision::GoldenPlan;

pub struct CreateVm;

#[async_trait]
impl Step for CreateVm {
    fn name(&self) -> StepName {
        StepName::CreateVm
    }

    async fn run(&self, cx: &mut StepCx<'_>) -> Result<(), String> {
        create(cx, None).await
    }

    /// A clone is a VM of its own: made for real, from the golden.
    async fn on_clone(&self, cx: &mut StepCx<'_>, golden: &GoldenPlan) -> Result<(), String> {
        create(cx, Some(&golden.golden.id)).await
    }
}

async fn create(cx: &mut StepCx<'_>, golden: Option<&str>) -> Result<(), String> {
    let backend = cx.svc.backend.clone();
    let vm_id = cx.target.vm_id.clone();
    cx.meta.insert("backend".into(), json!(backend.name()));
    cx.meta.insert("instanceId".into(), json!(vm_id));
    // A golden is a memory snapshot where clones keep its processes, a filesystem layer where
    // they do not: the log says which this VM gets.
    let snapshot = backend.clones_keep_processes();
    match golden {
        Some(g) if snapshot => {
            cx.meta.insert("fromGolden".into(), json!(g));
            cx.log.line(&format!(
                "cloning golden {g} into a {} VM named {vm_id} (memory shared copy-on-write)",
                backend.name(),
            ));
        }
        Some(g) => {
            cx.meta.insert("fromGolden".into(), json!(g));
            cx.log.line(&format!(
                "creating a {} VM named {vm_id} on golden {g}'s files (the image, with what the \
                 golden's setup changed; this VM's own changes go to a layer of its own)",
                backend.name(),
            ));
        }
        None => cx
            .log
            .line(&format!("creating a {} VM named {vm_id}", backend.name())),
    }
    let r = cx.plan.project.resources;
    cx.log.line(&format!(
        "limits: {} CPUs, {} MiB of memory, {} processes and threads",
        r.cpus, r.memory_mb, r.pids_max
    ));
    let token = ids::random_secret(40);
    let spec = VmSpec {
        vm_id: vm_id.clone(),
        agent_token: token.clone(),
        from_golden: golden.map(str::to_string),
        golden_builder: cx.target.kind == InstanceKind::Golden,
        resources: r,
        host_ports: cx.svc.host_ports.clone(),
    };
    let handle = backend.create(&spec).await.map_err(|e| {
        if let Some(tail) = &e.log_tail {
            cx.log.line("--- the end of the VM's console log ---");
            cx.log.push(tail);
            cx.log.line("");
        }
        format!("could not create the VM: {}", e.message)
    })?;
    cx.recorder
        .vm_created(&handle.agent_url, &token)
        .await
        .map_err(|e| format!("internal error: could not record the VM: {e}"))?;
    cx.vm.agent = Some(backend.agent(&vm_id, &handle.agent_url, &token));
    if handle.started_ahead {
        cx.meta.insert("startedAhead".into(), json!(true));
    }
    cx.log.line(match (snapshot, handle.started_ahead) {
        // A clone made and run on before anyone asked (of the pool's golden or of the base one).
        (true, true) => {
            "the VM is running: it is a clone started ahead of need, now given its own token, \
             hostname, machine id, clock and entropy"
        }
        _ if golden.is_some() && snapshot => {
            "the VM is running with its own token, hostname, machine id, clock and entropy"
        }
        (false, true) => {
            "the VM is running: it was started ahead of need and is now this VM, with its own \
             hostname, machine id, limits and token"
        }
        _ => "the VM is running",
    });
    Ok(())
}
