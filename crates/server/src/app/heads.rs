//! Where each remote branch points, learned with `git ls-remote` at most once per interval per
//! (source, branch), in the background: the reconciler reads the cache and never waits on a
//! remote.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::clock::Clock;
use crate::git;
use crate::git::source::RepoSource;

#[derive(Default)]
struct Entry {
    /// The head, and when (by the app's clock) it was seen.
    head: Option<(String, i64)>,
    checked: Option<Instant>,
    in_flight: bool,
}

pub struct Heads {
    interval: Duration,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl Heads {
    pub fn new(interval: Duration, clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(Self {
            interval,
            clock,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The last known head of `branch` in the source whose key is `key` and when it was seen;
    /// starts a refresh when the value is older than the interval (`source` opens the source
    /// then, and only then). `None` until first learned.
    pub fn get(
        self: &Arc<Self>,
        key: &str,
        branch: &str,
        source: impl FnOnce() -> Option<RepoSource>,
    ) -> Option<(String, i64)> {
        let key = (key.to_string(), branch.to_string());
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.entry(key.clone()).or_default();
        let due = e.checked.is_none_or(|t| t.elapsed() >= self.interval);
        if due && !e.in_flight {
            if let Some(src) = source() {
                e.in_flight = true;
                let me = self.clone();
                crate::tasks::spawn("head check", async move {
                    // A check that panics must not leave its branch never checked again.
                    let done = InFlight(me.clone(), key.clone());
                    me.refresh(key, src).await;
                    drop(done);
                });
            }
        }
        e.head.clone()
    }

    async fn refresh(&self, key: (String, String), src: RepoSource) {
        let branch = &key.1;
        let reference = format!("refs/heads/{branch}");
        let out = git::git_remote(
            &src,
            None,
            ["ls-remote", "--", src.fetch_url(), reference.as_str()],
            Duration::from_secs(30),
        )
        .await;
        let commit = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.ends_with(&reference))
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string),
            _ => None,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.entry(key).or_default();
        e.checked = Some(Instant::now());
        // A remote that cannot be reached says nothing about staleness: keep what we knew.
        if let Some(c) = commit {
            e.head = Some((c, self.clock.now_ms()));
        }
    }
}

/// Marks a branch's check over when dropped, however the check ended.
struct InFlight(Arc<Heads>, (String, String));

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut entries = self.0.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get_mut(&self.1) {
            e.in_flight = false;
        }
    }
}
