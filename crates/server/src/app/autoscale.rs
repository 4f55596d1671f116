//! Pools that size themselves: their bounds over the API, what `stats` says of their effective
//! target, and the reconciler's part — the claims and boot times a pass sizes a pool from, and
//! recording its decision (the rule itself is `crate::reconcile::autoscale`, pure).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use warmpool_store::{AutoscaleRow, InstanceRow, PoolConfigRow, ScaleRecord};
use warmpool_types::api::{Autoscale, AutoscaleStatus, UpdateAutoscaleBody};
use warmpool_types::state::{InstanceKind, InstanceStatus, ScaleReason};
use warmpool_types::time::fmt_ms;

use super::validation::whole_in_range;
use super::{App, Caller};
use crate::error::{AppError, AppResult, Problems};
use crate::reconcile::autoscale::{self as rule, Bounds, Scale};

/// The most VMs an autoscaled pool keeps: the published API's bound on `targetSize`.
pub const MAX_SIZE: u32 = 20;
/// A pool's boot time until one of its boots has been seen.
pub const DEFAULT_BOOT: Duration = Duration::from_secs(60);
/// Boots a pool's boot time is the median of.
pub(crate) const BOOT_SAMPLES: usize = 16;

fn view(row: &AutoscaleRow) -> Autoscale {
    Autoscale {
        enabled: row.enabled,
        min: row.min_size,
        max: row.max_size,
    }
}

impl App {
    pub async fn get_autoscale(&self, caller: &Caller, project_id: &str) -> AppResult<Autoscale> {
        self.project_for(caller, project_id).await?;
        let row = self.store.get_autoscale(project_id).await?;
        Ok(row.as_ref().map(view).unwrap_or_default())
    }

    pub async fn update_autoscale(
        &self,
        caller: &Caller,
        project_id: &str,
        body: UpdateAutoscaleBody,
    ) -> AppResult<Autoscale> {
        let mut p = Problems::default();
        let min = body
            .min
            .map(|v| whole_in_range(&mut p, "min", v, 0, MAX_SIZE));
        let max = body
            .max
            .map(|v| whole_in_range(&mut p, "max", v, 1, MAX_SIZE));
        p.into_result()?;
        self.project_for(caller, project_id).await?;
        for _ in 0..5 {
            let now = self.now();
            let current = self.store.get_autoscale(project_id).await?;
            let expected = current.as_ref().map(|r| r.generation);
            let defaults = Autoscale::default();
            let mut row = current.unwrap_or(AutoscaleRow {
                project_id: project_id.to_string(),
                enabled: defaults.enabled,
                min_size: defaults.min,
                max_size: defaults.max,
                generation: 0,
                scale: None,
                updated_at: now,
            });
            row.enabled = body.enabled.unwrap_or(row.enabled);
            row.min_size = min.unwrap_or(row.min_size);
            row.max_size = max.unwrap_or(row.max_size);
            if row.min_size > row.max_size {
                let mut p = Problems::default();
                let field = if min.is_some() { "min" } else { "max" };
                p.add(
                    field,
                    format!(
                        "min ({}) must not be more than max ({})",
                        row.min_size, row.max_size
                    ),
                );
                p.into_result()?;
            }
            row.updated_at = now.max(row.updated_at);
            if self.store.put_autoscale(&row, expected).await? {
                self.nudge();
                return Ok(view(&row));
            }
        }
        Err(AppError::Conflict(
            "the autoscale settings kept changing while this update was applied; try again".into(),
        ))
    }

    /// `stats`' effective target and, with autoscale on, what it was decided from.
    pub(crate) async fn autoscale_status(
        &self,
        project_id: &str,
        cfg: Option<&PoolConfigRow>,
    ) -> AppResult<(Option<u32>, Option<AutoscaleStatus>)> {
        // A disabled pool keeps nothing, whatever its size.
        let on = cfg.filter(|c| c.enabled && self.cfg.warm_pool_allowed);
        let keeps = |t: u32| Some(if on.is_some() { t } else { 0 });
        let row = self.store.get_autoscale(project_id).await?;
        let Some(row) = row.filter(|r| r.enabled) else {
            return Ok((cfg.and_then(|c| keeps(c.target_size)), None));
        };
        let effective = match (&row.scale, cfg) {
            (_, None) => None,
            (Some(s), Some(_)) => keeps(s.target.clamp(row.min_size, row.max_size)),
            (None, Some(c)) => keeps(c.target_size.clamp(row.min_size, row.max_size)),
        };
        let status = AutoscaleStatus {
            min: row.min_size,
            max: row.max_size,
            target: row.scale.map(|s| s.target),
            reason: row.scale.map(|s| s.reason),
            why: explain(&row),
            peak_claims: row.scale.map(|s| s.peak),
            boot_ms: row.scale.map(|s| s.boot_ms.max(0) as u64),
            changed_at: row.scale.map(|s| fmt_ms(s.changed_at)),
        };
        Ok((effective, Some(status)))
    }

    /// An autoscaled pool's target this pass: decided from the claims and boot times `seen`
    /// has, and recorded when it changed (conditionally: of several nodes deciding at once,
    /// one record is kept, and each node acts on its own decision until it reads that one).
    pub(crate) async fn autoscaled_target(
        &self,
        row: &AutoscaleRow,
        cfg: &PoolConfigRow,
        seen: &Demand,
        now: i64,
    ) -> AppResult<usize> {
        let project = row.project_id.as_str();
        let bounds = Bounds {
            min: row.min_size as usize,
            max: row.max_size as usize,
        };
        let prev = match row.scale {
            Some(s) => Scale {
                target: s.target as usize,
                changed_at: s.changed_at,
            },
            // The first decision starts from the size the pool was given.
            None => Scale {
                target: cfg.target_size as usize,
                changed_at: now,
            },
        };
        let boot_ms = seen.boot_ms(project);
        let claims = seen.claims(project);
        let d = rule::decide(bounds, prev, &claims, boot_ms, now);
        let record = ScaleRecord {
            target: d.scale.target as u32,
            changed_at: d.scale.changed_at,
            reason: d.why,
            peak: d.peak as u32,
            boot_ms,
        };
        let same = row.scale.is_some_and(|s| {
            (s.target, s.changed_at, s.reason, s.peak)
                == (record.target, record.changed_at, record.reason, record.peak)
        });
        if !same {
            let prev_changed = row.scale.map(|s| s.changed_at);
            let recorded = self
                .store
                .record_scale(project, prev_changed, &record)
                .await?;
            if recorded && row.scale.is_none_or(|s| s.target != record.target) {
                tracing::info!(project, target = record.target, reason = %record.reason,
                    peak = record.peak, boot_ms, "autoscale: the pool's target changed");
            }
        }
        Ok(d.scale.target)
    }
}

/// A decision in words.
fn explain(row: &AutoscaleRow) -> String {
    let Some(s) = row.scale else {
        return "not decided yet: the reconciler decides on its next pass".into();
    };
    let wanted = (f64::from(s.peak) * rule::HEADROOM).ceil() as u32;
    let asks = format!(
        "at most {} claims arrived within one boot time ({:.1} s) in the last 30 minutes, \
         which with a quarter more as headroom asks for {wanted}",
        s.peak,
        s.boot_ms as f64 / 1000.0
    );
    match s.reason {
        ScaleReason::Demand => asks,
        ScaleReason::Holding => {
            format!("{asks}; the target falls one VM a minute, and changed under a minute ago")
        }
        ScaleReason::SteppedDown => format!("{asks}; the target fell by one"),
        ScaleReason::Min => format!("{asks}; held at the minimum, {}", row.min_size),
        ScaleReason::Max => format!("{asks}; held at the maximum, {}", row.max_size),
    }
}

/// What the reconciler has seen of the demand on the pools it follows (those with autoscale
/// on; others cost nothing): claim times of the last [`rule::MEMORY`] and the latest boot times.
/// Kept between passes and fed from the rows each pass reads (every node sees every row, so
/// every node sizes a pool alike); a pool's claims are read from the store when it starts being
/// followed (also when the reconciler starts).
#[derive(Default)]
pub(crate) struct Demand {
    pools: HashMap<String, PoolDemand>,
}

#[derive(Default)]
struct PoolDemand {
    /// Each claim once, by instance.
    by_id: HashMap<String, i64>,
    /// How many claims at each millisecond.
    times: BTreeMap<i64, u32>,
    boots: VecDeque<(String, i64)>,
}

/// Claims kept per pool, at most: far more than a pool of [`MAX_SIZE`] needs to reach its max
/// (a few dozen within a boot time), few enough to read each pass.
const MAX_CLAIMS: usize = 20_000;

impl PoolDemand {
    fn claim(&mut self, id: &str, at: i64) {
        if self.by_id.contains_key(id) {
            return;
        }
        self.by_id.insert(id.to_string(), at);
        *self.times.entry(at).or_default() += 1;
        if self.by_id.len() > MAX_CLAIMS {
            if let Some(&oldest) = self.times.keys().next() {
                self.forget_until(oldest);
            }
        }
    }

    /// Forgets the claims made at or before `until`.
    fn forget_until(&mut self, until: i64) {
        if self
            .times
            .first_key_value()
            .is_some_and(|(&t, _)| t <= until)
        {
            self.times = self.times.split_off(&(until + 1));
            self.by_id.retain(|_, at| *at > until);
        }
    }
}

impl Demand {
    /// Forgets the pools not among `pools`; answers those of `pools` not followed yet, whose
    /// claims so far are to be read from the store and given to [`Demand::load`], which starts
    /// following them (a pool whose read failed is answered again next pass).
    pub fn follow(&mut self, pools: &[&str]) -> Vec<String> {
        self.pools.retain(|p, _| pools.contains(&p.as_str()));
        pools
            .iter()
            .filter(|p| !self.pools.contains_key(**p))
            .map(|p| p.to_string())
            .collect()
    }

    /// Follows a pool from its claims and latest boot times as the store has them.
    pub fn load(&mut self, project: &str, claims: Vec<(String, i64)>, boots: Vec<i64>) {
        let d = self.pools.entry(project.to_string()).or_default();
        for (id, at) in claims {
            d.claim(&id, at);
        }
        // Newest first from the store; kept oldest first. The rows the passes read from now on
        // (with their ids) push these out.
        if d.boots.is_empty() {
            for ms in boots.into_iter().take(BOOT_SAMPLES).rev() {
                d.boots.push_back((String::new(), ms.max(1)));
            }
        }
    }

    /// Takes what a row says: a claim, or how long a boot of its pool took. A VM booted for a
    /// claim (`cold`) was asked for when it was created: demand is when claims come, not when
    /// they are served.
    pub fn see(&mut self, i: &InstanceRow) {
        let Some(d) = self.pools.get_mut(&i.project_id) else {
            return;
        };
        let asked = match i.kind {
            InstanceKind::Cold => Some(i.created_at),
            InstanceKind::Pool => i.claimed_at,
            InstanceKind::Test | InstanceKind::Golden => None,
        };
        if let Some(at) = asked {
            d.claim(&i.id, at);
        }
        let booted = matches!(i.kind, InstanceKind::Pool | InstanceKind::Cold)
            && i.status != InstanceStatus::Failed;
        if let (true, Some(done)) = (booted, i.provisioned_at) {
            if !d.boots.iter().any(|(id, _)| *id == i.id) {
                if d.boots.len() == BOOT_SAMPLES {
                    d.boots.pop_front();
                }
                d.boots
                    .push_back((i.id.clone(), (done - i.created_at).max(1)));
            }
        }
    }

    /// Forgets claims made at or before `until`.
    pub fn prune(&mut self, until: i64) {
        for d in self.pools.values_mut() {
            d.forget_until(until);
        }
    }

    /// A pool's claim times, in order.
    pub fn claims(&self, project: &str) -> Vec<i64> {
        let Some(d) = self.pools.get(project) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(d.by_id.len());
        for (&at, &n) in &d.times {
            out.extend(std::iter::repeat_n(at, n as usize));
        }
        out
    }

    /// A pool's boot time: the median of its latest boots.
    pub fn boot_ms(&self, project: &str) -> i64 {
        let mut took: Vec<i64> = self
            .pools
            .get(project)
            .map(|d| d.boots.iter().map(|(_, ms)| *ms).collect())
            .unwrap_or_default();
        if took.is_empty() {
            return DEFAULT_BOOT.as_millis() as i64;
        }
        took.sort_unstable();
        took[took.len() / 2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        id: &str,
        project: &str,
        created: i64,
        done: Option<i64>,
        claimed: Option<i64>,
    ) -> InstanceRow {
        let mut i = crate::reconcile::tests::inst(id, InstanceKind::Pool, InstanceStatus::Ready);
        i.project_id = project.into();
        (i.created_at, i.provisioned_at, i.claimed_at) = (created, done, claimed);
        i
    }

    #[test]
    fn demand_counts_each_claim_and_boot_once() {
        let mut d = Demand::default();
        assert_eq!(d.follow(&["p", "q"]), ["p", "q"]);
        d.load("p", vec![], vec![]);
        assert_eq!(d.follow(&["p", "q"]), ["q"], "q's claims were not read");
        d.load("q", vec![], vec![900, 700, 800]);
        assert_eq!(d.boot_ms("q"), 800, "the boots the store had");
        assert!(d.follow(&["p", "q"]).is_empty());
        assert_eq!(d.boot_ms("p"), DEFAULT_BOOT.as_millis() as i64);
        d.see(&row("a", "p", 0, Some(100), None));
        // The same instance again, claimed: its claim counts, its boot does not twice.
        d.see(&row("a", "p", 0, Some(100), Some(500)));
        d.see(&row("b", "p", 0, Some(300), Some(400)));
        d.see(&row("c", "p", 0, Some(200), None));
        d.see(&row("x", "q", 0, None, Some(450)));
        d.see(&row("z", "other", 0, Some(9), Some(450)));
        assert!(d.claims("other").is_empty(), "a pool not followed");
        let mut cold = row("y", "p", 480, None, None);
        cold.kind = InstanceKind::Cold;
        d.see(&cold);
        assert_eq!(d.claims("p"), [400, 480, 500], "asked for at its creation");
        cold.claimed_at = Some(900);
        d.see(&cold);
        assert_eq!(
            d.claims("p"),
            [400, 480, 500],
            "once, when it was asked for"
        );
        assert_eq!(d.boot_ms("p"), 200, "the median of 100, 200, 300");
        d.prune(450);
        assert_eq!(d.claims("p"), [480, 500]);
        assert!(d.claims("q").is_empty());
        for i in 0..40 {
            d.see(&row(&format!("n{i}"), "p", 0, Some(1000), None));
        }
        assert_eq!(d.boot_ms("p"), 1000, "only the latest boots count");
        // Two claims in the same millisecond are two claims.
        let twice = vec![("s1".into(), 7), ("s2".into(), 7), ("s1".into(), 7)];
        d.load("p", twice, vec![5]);
        assert_eq!(d.claims("p"), [7, 7, 480, 500]);
        assert_eq!(
            d.boot_ms("p"),
            1000,
            "boots are read when a pool is followed only"
        );
        // Followed no more: forgotten; followed again: new.
        assert!(d.follow(&["q"]).is_empty());
        assert!(d.claims("p").is_empty());
        assert_eq!(d.follow(&["p", "q"]), ["p"]);
    }

    #[test]
    fn a_pool_keeps_its_latest_claims_only() {
        let mut d = Demand::default();
        for i in 0..MAX_CLAIMS as i64 + 10 {
            d.load("p", vec![(format!("c{i}"), i)], vec![]);
        }
        let claims = d.claims("p");
        assert!(claims.len() <= MAX_CLAIMS, "{}", claims.len());
        assert_eq!(claims.last(), Some(&(MAX_CLAIMS as i64 + 9)));
    }
}
