//! VM start-up, measured on the backends themselves (in this process, no HTTP in between): a
//! sandbox's start against a bare `runc run`, and a QEMU cold boot against a copy-on-write clone.
//! Each pair is interleaved so that both sides see the same machine load.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use warmpool_backend::image::{self, GuestImage};
use warmpool_backend::qemu::{Accel, QemuBackend, QemuOptions};
use warmpool_backend::sandbox::SandboxBackend;
use warmpool_backend::{Backend, VmSpec};
use warmpool_types::ids;

use super::{percentile, Report, Row};

fn spec() -> VmSpec {
    VmSpec {
        vm_id: ids::new_vm_id(),
        agent_token: ids::random_secret(40),
        ..VmSpec::default()
    }
}

/// Creates a VM and waits until its agent answers `health`: the moment it can take a command.
async fn start_until_ready<F, Fut>(
    backend: &dyn Backend,
    spec: &VmSpec,
    create: F,
) -> anyhow::Result<Duration>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<
        Output = Result<warmpool_backend::VmHandle, warmpool_backend::BackendError>,
    >,
{
    let t = Instant::now();
    let handle = create().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent = backend.agent(&spec.vm_id, &handle.agent_url, &spec.agent_token);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match agent.health().await {
            Ok(_) => return Ok(t.elapsed()),
            Err(e) if Instant::now() > deadline => bail!("the agent never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

fn guest(cache: &Path, agent_bin: &Path) -> Arc<GuestImage> {
    Arc::new(GuestImage::new(
        cache.to_path_buf(),
        image::DEFAULT_MIRROR.to_string(),
        agent_bin.to_path_buf(),
        None,
    ))
}

/// Sandbox create → agent ready, against the runtime's own start of a bare container running
/// `/bin/true` (runc, new user and network namespaces, memory and pids limits): a VM that takes
/// one started ahead of need (the server keeps one), and a VM started afresh (none is ready: a
/// burst larger than the spares).
pub async fn sandbox_start(report: &mut Report, quick: bool, cache: &Path) -> anyhow::Result<()> {
    let agent_bin = crate::serve::find_agent_bin(None)?;
    let image = guest(cache, &agent_bin);
    // The image is built once; its build is not what this row measures.
    image.rootfs().await.map_err(anyhow::Error::msg)?;
    // Two data dirs: one backend keeps a spare, the other none.
    let (warm_dir, cold_dir) = (
        tempfile::Builder::new()
            .prefix("warmpool-bench-")
            .tempdir()?,
        tempfile::Builder::new()
            .prefix("warmpool-bench-")
            .tempdir()?,
    );
    let backend = |dir: &Path, spares: usize| -> anyhow::Result<Arc<SandboxBackend>> {
        let agent_layer = image::ensure_agent_layer(dir, &agent_bin).map_err(anyhow::Error::msg)?;
        SandboxBackend::new(
            crate::serve::sandbox_options(dir, cache, agent_layer, spares)?,
            image.clone(),
        )
        .map_err(anyhow::Error::msg)
    };
    let warm = backend(warm_dir.path(), 1)?;
    warm.start_spares();
    let cold = backend(cold_dir.path(), 0)?;
    let result = sandbox_rounds(report, quick, &warm, &cold, cold_dir.path()).await;
    warm.stop().await;
    // Nothing of the two backends stays in /run: with their VMs gone, the directory their roots
    // were mounted in is empty (a server's goes with `vms rm --all`; these have no server).
    for dir in [warm_dir.path(), cold_dir.path()] {
        let roots = crate::serve::roots_dir(dir);
        if let Err(e) = std::fs::remove_dir(&roots) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("      cannot remove {}: {e}", roots.display());
            }
        }
    }
    result
}

async fn sandbox_rounds(
    report: &mut Report,
    quick: bool,
    warm: &SandboxBackend,
    cold: &SandboxBackend,
    work: &Path,
) -> anyhow::Result<()> {
    let rounds = if quick { 20 } else { 100 };
    let (mut spared, mut fresh, mut floors, mut networks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let work = work.join("bare");
    // One unmeasured round warms the page cache for all three (and makes the first spare).
    for round in 0..=rounds {
        let floor = cold
            .bare_runtime_start(&work)
            .await
            .map_err(anyhow::Error::msg)?;

        let s = spec();
        let took = start_until_ready(cold, &s, || cold.create(&s)).await;
        // The network attaches while the VM starts; how much later it is up is reported too.
        let t = Instant::now();
        let net = cold.wait_network(&s.vm_id).await;
        let net_took = t.elapsed();
        cold.destroy(&s.vm_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let took = took?;
        net.map_err(|e| anyhow::anyhow!("{e}"))?;

        // The spare taken by the previous round is back (as between a pool's refills).
        if round > 0 && !warm.wait_for_spare(Duration::from_secs(60)).await {
            bail!("no VM was started ahead of need (see the log above)");
        }
        let s = spec();
        let took_spare = start_until_ready(warm, &s, || warm.create(&s)).await;
        let net = warm.wait_network(&s.vm_id).await;
        warm.destroy(&s.vm_id)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let took_spare = took_spare?;
        net.map_err(|e| anyhow::anyhow!("{e}"))?;
        if round > 0 {
            floors.push(floor);
            fresh.push(took);
            networks.push(took + net_took);
            spared.push(took_spare);
        }
    }
    let floor = percentile(&floors, 0.5);
    let (p50, cold_p50) = (percentile(&spared, 0.5), percentile(&fresh, 0.5));
    report.figure("sandbox_start_ms", p50);
    report.figure("sandbox_cold_start_ms", cold_p50);
    report.figure("runc_floor_ms", floor);
    report.rows.push(Row {
        what: format!("sandbox create → agent ready (median of {rounds})"),
        value: p50,
        unit: "ms",
        baseline: floor.map(|f| ("bare runc run".to_string(), f)),
        target: "≤ 50 ms".into(),
        met: p50.map(|v| v <= 50.0),
    });
    report.rows.push(Row {
        what: format!("  … with no VM started ahead (median of {rounds})"),
        value: cold_p50,
        unit: "ms",
        baseline: floor.map(|f| ("bare runc run".to_string(), f)),
        target: "-".into(),
        met: None,
    });
    report.details.insert(
        "sandboxStart".into(),
        json!({
            "p90Ms": percentile(&spared, 0.9),
            "coldP90Ms": percentile(&fresh, 0.9),
            "runcP90Ms": percentile(&floors, 0.9),
            "coldNetworkUpP50Ms": percentile(&networks, 0.5),
            "coldNetworkUpP90Ms": percentile(&networks, 0.9),
        }),
    );
    Ok(())
}

/// Why the QEMU row cannot run here, if it cannot.
pub fn qemu_missing(root: bool) -> Option<String> {
    if !root {
        return Some("needs root (the qemu backend)".into());
    }
    for p in ["qemu-system-x86_64", "qemu-img"] {
        if image::find_program(p).is_none() {
            return Some(format!(
                "{p} is not installed (apt-get install -y qemu-system-x86 qemu-utils)"
            ));
        }
    }
    None
}

/// (RSS, PSS) of a process in MiB, from `smaps_rollup`.
fn rss_pss_mb(pid: i32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let kb: f64 = text
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    };
    Some((field("Rss:")?, field("Pss:")?))
}

/// QEMU cold boot → agent ready vs a clone of the booted base golden → agent ready (on a QEMU
/// process started ahead of need, and on one of its own), then the idle memory of the clones
/// while they all run side by side.
pub async fn qemu(report: &mut Report, quick: bool, cache: &Path) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("warmpool-bench-")
        .tempdir()?;
    let agent_bin = crate::serve::find_agent_bin(None)?;
    let image = guest(cache, &agent_bin);
    image.rootfs().await.map_err(anyhow::Error::msg)?;
    // Two backends on the same base golden: one keeps a process started for clones, one none.
    let backend = |name: &str, spares: usize| {
        QemuBackend::new(
            QemuOptions {
                vms_dir: dir.path().join(name).join("qemu-vms"),
                ready_dir: dir.path().join(name).join("qemu-spares"),
                spares,
                goldens_dir: dir.path().join(name).join("goldens"),
                cache_dir: cache.to_path_buf(),
                agent_bin: agent_bin.clone(),
                accel: Accel::Auto,
                boot_timeout: Duration::from_secs(90),
                boot_attempts: 3,
            },
            image.clone(),
        )
        .map_err(anyhow::Error::msg)
    };
    let (backend, plain) = (backend("ahead", 1)?, backend("plain", 0)?);
    backend.start_spares();
    // Building the base golden is a one-off per guest build: outside the measurement.
    // The size of VMs this row has always measured: 512 MiB, 1 vCPU.
    let small = warmpool_backend::Resources {
        memory_mb: 512,
        cpus: 1,
        ..Default::default()
    };
    let spec = || VmSpec {
        resources: small,
        ..spec()
    };
    let golden = backend
        .prepare_base_golden(&small)
        .await
        .context("the base golden could not be built (see the log above)")?;
    // The other finds the same golden (and its guest files and accelerator) before it is timed.
    plain.prepare_base_golden(&small).await;
    let rounds = if quick { 3 } else { 8 };
    let (mut boots, mut clones, mut fresh, mut kept) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let result: anyhow::Result<()> = async {
        // One unmeasured clone: processes are kept for the goldens clones are made from.
        let s = spec();
        start_until_ready(&*backend, &s, || backend.create(&s)).await?;
        kept.push(s.vm_id.clone());
        for _ in 0..rounds {
            let s = spec();
            let took = start_until_ready(&*plain, &s, || plain.create_cold(&s)).await;
            let _ = plain.destroy(&s.vm_id).await;
            boots.push(took?);
            let s = spec();
            let took = start_until_ready(&*plain, &s, || plain.create(&s)).await;
            let _ = plain.destroy(&s.vm_id).await;
            fresh.push(took?);
            if !backend
                .wait_for_spare_of(&golden, Duration::from_secs(60))
                .await
            {
                bail!("no QEMU process was started ahead of need (see the log above)");
            }
            let s = spec();
            kept.push(s.vm_id.clone());
            clones.push(start_until_ready(&*backend, &s, || backend.create(&s)).await?);
        }
        Ok(())
    }
    .await;
    // Idle memory: every clone made above, running side by side, after they settle.
    let mut mem = Vec::new();
    if result.is_ok() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        for id in &kept {
            if let Some(m) = backend.qemu_pid(id).and_then(rss_pss_mb) {
                mem.push(m);
            }
        }
    }
    for id in &kept {
        let _ = backend.destroy(id).await;
    }
    backend.stop().await;
    result?;
    let (boot, clone) = (percentile(&boots, 0.5), percentile(&clones, 0.5));
    let plain_clone = percentile(&fresh, 0.5);
    let n = mem.len().max(1) as f64;
    let rss = mem.iter().map(|m| m.0).sum::<f64>() / n;
    let pss = mem.iter().map(|m| m.1).sum::<f64>() / n;
    report.figure("qemu_boot_ms", boot);
    report.figure("qemu_clone_ms", clone);
    report.figure("qemu_restore_ms", plain_clone);
    report.figure("qemu_idle_rss_mb", (!mem.is_empty()).then_some(rss));
    report.rows.push(Row {
        what: format!("QEMU cold boot → agent ready (median of {rounds})"),
        value: boot,
        unit: "ms",
        baseline: None,
        target: String::new(),
        met: None,
    });
    report.rows.push(Row {
        what: "QEMU clone (copy-on-write, its process started ahead) → agent ready".into(),
        value: clone,
        unit: "ms",
        baseline: boot.map(|b| ("cold boot".to_string(), b)),
        target: "≤ 100 ms, ≥ 30x faster".into(),
        met: match (boot, clone) {
            (Some(b), Some(c)) if c > 0.0 => Some(c <= 100.0 && b / c >= 30.0),
            _ => None,
        },
    });
    report.rows.push(Row {
        what: "  … on a QEMU process of its own".into(),
        value: plain_clone,
        unit: "ms",
        baseline: boot.map(|b| ("cold boot".to_string(), b)),
        target: String::new(),
        met: None,
    });
    report.rows.push(Row {
        what: format!(
            "QEMU idle RSS per clone ({} side by side; PSS {pss:.1} MiB)",
            mem.len()
        ),
        value: (!mem.is_empty()).then_some(rss),
        unit: "MiB",
        baseline: None,
        target: String::new(),
        met: None,
    });
    report.details.insert(
        "qemu".into(),
        json!({"bootMs": boots.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
               "cloneMs": clones.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
               "ownProcessCloneMs": fresh.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
               "idlePssMb": (!mem.is_empty()).then_some(pss), "guestMemoryMb": 512}),
    );
    Ok(())
}
