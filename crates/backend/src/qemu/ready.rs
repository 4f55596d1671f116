//! Clones started ahead of need. For the goldens clones were last made from, a few clones are
//! made before anyone asks — disk overlay, passt, QEMU started with the golden's memory mapped,
//! its device state loaded, run on until its agent answers — and wait, still the golden's twin.
//! A clone of that golden takes one and only gives it its identity (token, hostname, machine id,
//! clock, entropy): no QEMU start, no state load, and none of the first run of the guest's code
//! under TCG, which translates it afresh in every new process (that is most of a clone made on
//! the spot). They belong to no VM until taken: the directory (`<ready-dir>/qs-…`) becomes the
//! VM's. A server destroys those an earlier one left when it starts, and its own when it stops.

use std::path::Path;
use std::time::Duration;

use warmpool_types::ids;

use super::{err, free_port, net, QemuBackend, Ram};
use crate::{process, BackendError};

/// How many clones wait: `warmpool_qemu_vms_started_ahead`.
pub const READY_METRIC: &str = "warmpool_qemu_vms_started_ahead";

const PREFIX: &str = "qs-";

/// A name for a clone started ahead: `qs-` and a VM id's random part.
fn new_name() -> String {
    format!("{PREFIX}{}", &ids::new_vm_id()[ids::VM_PREFIX.len()..])
}

/// Whether `s` names a clone started ahead of need (its directory).
pub fn is_ready_name(s: &str) -> bool {
    s.strip_prefix(PREFIX)
        .is_some_and(|r| ids::is_vm_id(&format!("{}{r}", ids::VM_PREFIX)))
}

/// What a clone started ahead is made for: a golden, and the host ports its guest may reach
/// (they are part of QEMU's command line).
pub(super) type Shape = (String, Vec<u16>);

/// A running clone waiting to be given an identity.
pub(super) struct Ready {
    pub name: String,
    pub shape: Shape,
    /// Its agent's port on the host.
    pub port: u16,
}

#[derive(Default)]
pub(super) struct ReadyState {
    pub ready: Vec<Ready>,
    /// The shapes clones were last made of, the most recent first (as many as clones are
    /// kept).
    pub recent: Vec<Shape>,
    /// A task is making clones.
    pub making: bool,
    /// The server stops: no more are started.
    pub stopped: bool,
    /// Those an earlier server left are gone.
    pub cleared: bool,
}

/// How many clones each recent shape gets out of `total`: one each, the most recent the rest.
pub(super) fn allotment(recent: &[Shape], total: usize) -> Vec<(&Shape, usize)> {
    let mut out: Vec<(&Shape, usize)> = recent.iter().take(total).map(|s| (s, 1)).collect();
    if let Some(first) = out.first_mut() {
        first.1 += total.saturating_sub(recent.len().min(total));
    }
    out
}

impl QemuBackend {
    fn ready_lock(&self) -> std::sync::MutexGuard<'_, ReadyState> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_ready(st: &ReadyState) {
        metrics::gauge!(READY_METRIC).set(st.ready.len() as f64);
    }

    /// For the server: destroys the clones an earlier server left ahead, then keeps clones
    /// ready for the goldens clones are made from, in the background. Needs a tokio runtime.
    pub fn start_spares(&self) {
        self.refill_ready();
    }

    /// Takes a clone of `shape` started ahead, if one is ready and still running.
    pub(super) async fn take_ready(&self, shape: &Shape) -> Option<Ready> {
        loop {
            let r = {
                let mut st = self.ready_lock();
                let i = st.ready.iter().position(|r| &r.shape == shape)?;
                let r = st.ready.swap_remove(i);
                Self::count_ready(&st);
                r
            };
            if Self::qemu_alive(&self.opts.ready_dir.join(&r.name)) {
                return Some(r);
            }
            tracing::warn!(clone = %r.name, "a clone started ahead of need had exited");
            Self::kill_and_remove(&self.opts.ready_dir.join(&r.name)).await;
        }
    }

    /// A clone of `shape` was made: clones are kept ahead for it from now on.
    pub(super) fn cloned(&self, shape: Shape) {
        if self.opts.spares == 0 {
            return;
        }
        {
            let mut st = self.ready_lock();
            st.recent.retain(|s| s != &shape);
            st.recent.insert(0, shape);
            st.recent.truncate(self.opts.spares);
        }
        self.refill_ready();
    }

    /// Golden `golden` goes: no clone of it waits any more. Answers when they are gone.
    pub(super) async fn forget_ready(&self, golden: &str) {
        let gone: Vec<Ready> = {
            let mut st = self.ready_lock();
            st.recent.retain(|s| s.0 != golden);
            let (gone, keep) = std::mem::take(&mut st.ready)
                .into_iter()
                .partition(|r| r.shape.0 == golden);
            st.ready = keep;
            Self::count_ready(&st);
            gone
        };
        for r in gone {
            Self::kill_and_remove(&self.opts.ready_dir.join(&r.name)).await;
        }
    }

    /// Starts the background task that brings the clones to their number, unless it runs.
    fn refill_ready(&self) {
        let Some(me) = self.me.upgrade() else { return };
        {
            let mut st = self.ready_lock();
            if st.making || st.stopped {
                return;
            }
            st.making = true;
        }
        tokio::spawn(async move { me.fill_ready().await });
    }

    async fn fill_ready(&self) {
        /// However the task ends (a panic included), the next clone may start another.
        struct Done<'a>(&'a QemuBackend);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.ready_lock().making = false;
                self.0.ready_changed.notify_waiters();
            }
        }
        let _done = Done(self);
        if !self.ready_lock().cleared {
            self.clear_ready().await;
            self.ready_lock().cleared = true;
        }
        loop {
            let (stale, want) = {
                let mut st = self.ready_lock();
                let recent = st.recent.clone();
                let (keep, stale): (Vec<Ready>, Vec<Ready>) = std::mem::take(&mut st.ready)
                    .into_iter()
                    .partition(|r| recent.contains(&r.shape));
                st.ready = keep;
                Self::count_ready(&st);
                let want = if st.stopped {
                    None
                } else {
                    allotment(&recent, self.opts.spares)
                        .into_iter()
                        .find(|(shape, n)| {
                            st.ready.iter().filter(|r| &&r.shape == shape).count() < *n
                        })
                        .map(|(shape, _)| shape.clone())
                };
                (stale, want)
            };
            for r in stale {
                Self::kill_and_remove(&self.opts.ready_dir.join(&r.name)).await;
            }
            let Some(shape) = want else { return };
            match self.make_ready(&shape).await {
                Ok(r) => {
                    let late = {
                        let mut st = self.ready_lock();
                        // Its golden may have gone meanwhile.
                        if st.stopped || !st.recent.contains(&r.shape) {
                            Some(r)
                        } else {
                            st.ready.push(r);
                            Self::count_ready(&st);
                            None
                        }
                    };
                    if let Some(r) = late {
                        Self::kill_and_remove(&self.opts.ready_dir.join(&r.name)).await;
                    }
                    self.ready_changed.notify_waiters();
                }
                Err(e) => {
                    tracing::warn!(
                        golden = %shape.0,
                        "could not make a clone ahead of need (the next VM is a clone made then): {e}"
                    );
                    // Not retried for this golden until a clone of it is made again.
                    self.ready_lock().recent.retain(|s| s != &shape);
                }
            }
        }
    }

    /// Makes a clone of `shape`'s golden and waits until its agent answers (the golden's token).
    async fn make_ready(&self, shape: &Shape) -> Result<Ready, BackendError> {
        let (gdir, meta) = self.read_golden(&shape.0)?;
        if meta.machine.net != net::LAYOUT {
            return Err(err("the golden was made with another network layout"));
        }
        let name = new_name();
        let dir = self.opts.ready_dir.join(&name);
        let made = async {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| err(e.to_string()))?;
            Self::overlay(&dir.join("disk.qcow2"), &gdir.join("disk.qcow2"), "qcow2").await?;
            let port = free_port()?;
            let ram = gdir.join("ram");
            self.spawn(
                &dir,
                &meta.machine,
                Ram::Private(&ram),
                port,
                &shape.1,
                true,
            )
            .await?;
            Self::load_state(Self::qmp_ignoring_shared(&dir).await?, &gdir).await?;
            // Its agent answering is the guest's code having run once in this process.
            self.wait_agent(&dir, port, &meta.token, Duration::from_secs(30))
                .await?;
            Ok::<_, BackendError>(port)
        }
        .await;
        match made {
            Ok(port) => Ok(Ready {
                name,
                shape: shape.clone(),
                port,
            }),
            Err(e) => {
                Self::kill_and_remove(&dir).await;
                Err(e)
            }
        }
    }

    /// Destroys every clone started ahead (those of an earlier server included).
    async fn clear_ready(&self) {
        let Ok(mut rd) = tokio::fs::read_dir(&self.opts.ready_dir).await else {
            return;
        };
        while let Ok(Some(e)) = rd.next_entry().await {
            if e.file_name().to_str().is_some_and(is_ready_name) {
                Self::kill_and_remove(&e.path()).await;
            }
        }
    }

    /// Destroys one clone started ahead of need: `warmpool vms rm`.
    pub async fn destroy_spare(&self, name: &str) -> Result<(), BackendError> {
        if !is_ready_name(name) {
            return Err(err(format!("`{name}` is not a clone started ahead")));
        }
        let dir = self.opts.ready_dir.join(name);
        Self::kill_and_remove(&dir).await;
        if dir.exists() {
            return Err(err(format!("cannot remove {}", dir.display())));
        }
        Ok(())
    }

    /// Kills a directory's QEMU and passt, then removes it.
    pub(super) async fn kill_and_remove(dir: &Path) {
        process::kill_from_pid_file(&dir.join("qemu.pid")).await;
        process::kill_from_pid_file(&dir.join("passt.pid")).await;
        let _ = tokio::fs::remove_dir_all(dir).await;
    }

    /// Waits until a clone of `golden` started ahead is ready, or none is being made; true when
    /// one is ready. For the benchmark, which measures a VM that takes one.
    pub async fn wait_for_spare_of(&self, golden: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.ready_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = self.ready_lock();
                if st.ready.iter().any(|r| r.shape.0 == golden) {
                    return true;
                }
                if !st.making {
                    return false;
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// The server stops: the clones started ahead go (one being made is let finish).
    pub(super) async fn stop_ready(&self) {
        self.ready_lock().stopped = true;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let changed = self.ready_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.ready_lock().making {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                break;
            }
        }
        let ready = {
            let mut st = self.ready_lock();
            let r = std::mem::take(&mut st.ready);
            Self::count_ready(&st);
            r
        };
        for r in ready {
            Self::kill_and_remove(&self.opts.ready_dir.join(&r.name)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(g: &str) -> Shape {
        (g.to_string(), vec![9418])
    }

    /// Recent shapes, clones kept, and what each golden gets.
    type Case<'a> = (&'a [Shape], usize, &'a [(&'a str, usize)]);

    #[test]
    fn the_most_recent_golden_gets_what_is_left() {
        let (a, b, c) = (shape("a"), shape("b"), shape("c"));
        let cases: &[Case] = &[
            (&[], 2, &[]),
            (std::slice::from_ref(&a), 2, &[("a", 2)]),
            (&[a.clone(), b.clone()], 2, &[("a", 1), ("b", 1)]),
            (&[a.clone(), b.clone()], 3, &[("a", 2), ("b", 1)]),
            (&[a.clone(), b.clone(), c.clone()], 2, &[("a", 1), ("b", 1)]),
            (std::slice::from_ref(&a), 0, &[]),
        ];
        for (recent, total, want) in cases {
            let got: Vec<(&str, usize)> = allotment(recent, *total)
                .into_iter()
                .map(|(s, n)| (s.0.as_str(), n))
                .collect();
            assert_eq!(got, *want, "{recent:?} with {total}");
        }
    }

    #[test]
    fn names_of_processes_started_ahead() {
        let n = new_name();
        assert!(is_ready_name(&n), "{n}");
        for bad in ["", "qs-", "qs-../x", "vm-abc", &format!("x{n}")] {
            assert!(!is_ready_name(bad), "{bad}");
        }
    }
}
