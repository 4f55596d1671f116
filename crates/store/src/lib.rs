//! The store: every piece of warmpool state, behind one [`Store`] API that engines implement
//! (SQLite, embedded and zero-setup; PostgreSQL, shared by many nodes). Every state change is a
//! conditional update — on the current status or a generation number — so two actors can never
//! both win, and a crash at any point leaves rows another run can reason about.

mod engine;
mod migrations;
mod model;
mod postgres;
mod rows;
mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use warmpool_types::api::PoolStatus;
use warmpool_types::state::{EndReason, InstanceStatus};

pub use model::*;
pub use postgres::PgStore;
pub use sqlite::{durable_commit_times, SqliteStore};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is locked for too long; safe to retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was broken (the caller chose ids, so this is a race or a bug).
    #[error("duplicate: {0}")]
    Duplicate(String),
    #[error("store error: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A change to a pool's state, applied atomically by [`Store::update_pool_state`].
pub type PoolStateChange = Box<dyn for<'a> FnOnce(&'a mut PoolState) + Send + 'static>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn engine(&self) -> &'static str;
    /// Succeeds when the store answers a trivial query.
    async fn ping(&self) -> Result<()>;

    // Projects ---------------------------------------------------------------------------------
    async fn insert_project(&self, p: &ProjectRow) -> Result<()>;
    async fn get_project(&self, id: &str) -> Result<Option<ProjectRow>>;
    /// Projects in creation order, after `after_seq`, at most `limit`; only `only` if given.
    async fn list_projects(
        &self,
        after_seq: Option<i64>,
        limit: u32,
        only: Option<&str>,
    ) -> Result<Vec<ProjectRow>>;
    /// Writes `p` if its stored generation is still `p.generation`, bumping it; false otherwise.
    async fn update_project(&self, p: &ProjectRow) -> Result<bool>;
    /// Deletes the project and, with it, its pool, variables, instances and step logs.
    async fn delete_project(&self, id: &str) -> Result<bool>;

    async fn get_default_branch(&self, url: &str) -> Result<Option<String>>;
    async fn set_default_branch(&self, url: &str, branch: &str, now: i64) -> Result<()>;

    // Environment variables --------------------------------------------------------------------
    /// Inserts or replaces each variable, bumping its version.
    async fn upsert_env_vars(
        &self,
        project_id: &str,
        vars: &[(String, String)],
        now: i64,
    ) -> Result<()>;
    async fn list_env_vars(&self, project_id: &str) -> Result<Vec<EnvVarRow>>;
    async fn delete_env_var(&self, project_id: &str, name: &str) -> Result<bool>;

    // Warm-pool configuration ------------------------------------------------------------------
    async fn get_pool_config(&self, project_id: &str) -> Result<Option<PoolConfigRow>>;
    /// Inserts `cfg` when `expected_generation` is `None` and there is none yet, or updates it when
    /// the stored generation equals `expected_generation`; bumps the generation. False if it lost.
    async fn put_pool_config(
        &self,
        cfg: &PoolConfigRow,
        expected_generation: Option<i64>,
    ) -> Result<bool>;

    // Instances --------------------------------------------------------------------------------
    async fn insert_instance(&self, i: &InstanceRow) -> Result<()>;
    async fn get_instance(&self, id: &str) -> Result<Option<InstanceRow>>;
    /// Newest first, never destroyed ones.
    async fn list_instances(
        &self,
        project_id: &str,
        status: Option<InstanceStatus>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>>;
    /// Every instance, of every project, in one of `statuses` and not ended (a failed instance
    /// that was ended is not listed).
    async fn instances_in(&self, statuses: &[InstanceStatus]) -> Result<Vec<InstanceRow>>;
    /// Records where the VM's agent answers; only while provisioning.
    async fn set_instance_agent(
        &self,
        id: &str,
        agent_url: &str,
        agent_token: &str,
    ) -> Result<bool>;
    /// `provisioning → ready` (or straight to `claimed` for an instance booted for a claim, whose
    /// lease starts then), recording what each repo was cloned at.
    async fn mark_ready(
        &self,
        id: &str,
        now: i64,
        commits: &BTreeMap<String, RepoCommit>,
        claimed: bool,
    ) -> Result<bool>;
    /// Hands one ready pool instance of the project to a caller — fresh ones first, newest first —
    /// in one conditional statement: no instance is ever claimed twice.
    /// The claim's lease starts now: `lease_ms`, or the project's default; none is handed out
    /// for a lease longer than the project allows (the caller tells why).
    async fn claim_ready(
        &self,
        project_id: &str,
        task_id: Option<&str>,
        lease_ms: Option<i64>,
        now: i64,
    ) -> Result<Option<InstanceRow>>;
    /// A claimed instance of the project whose lease has not run out gets `lease_ms` from now
    /// (conditional: a lease that ran out is not brought back).
    async fn renew_lease(
        &self,
        id: &str,
        project_id: &str,
        lease_ms: i64,
        now: i64,
    ) -> Result<Option<InstanceRow>>;
    /// Ends every claimed instance whose lease ran out by `now` (`destroyed`, `expired`), each
    /// once whichever node asks: the instances it ended (their VMs are to be destroyed).
    async fn expire_leases(&self, now: i64) -> Result<Vec<InstanceRow>>;
    /// Marks a ready instance stale (once).
    async fn set_stale(&self, id: &str, now: i64) -> Result<bool>;
    /// `provisioning → failed`, with the failed step and its one-line error.
    async fn mark_failed(
        &self,
        id: &str,
        failed_step: Option<&str>,
        reason: &str,
        now: i64,
    ) -> Result<bool>;
    /// `provisioning → failed` for a boot its server stopped running (a crash, a lost node):
    /// records `step` — the step it was in, failed — with the instance, in one step. False (and
    /// nothing recorded) if the instance was no longer provisioning.
    async fn fail_interrupted(&self, step: &StepRow, reason: &str, now: i64) -> Result<bool>;
    /// Ends an instance in any of `from` not ended yet, for `why`: `→ destroyed`, except that a
    /// failed one stays `failed` (its record keeps how the boot ended); either way
    /// `destroyed_at` and `end_reason` say when and why, and it no longer counts anywhere.
    async fn mark_destroyed(
        &self,
        id: &str,
        from: &[InstanceStatus],
        why: EndReason,
        now: i64,
    ) -> Result<bool>;
    /// Non-test, unclaimed pool instances by state.
    async fn pool_status(&self, project_id: &str) -> Result<PoolStatus>;
    /// Latest `provisioned_at` and `claimed_at` over the project's pool instances.
    async fn pool_times(&self, project_id: &str) -> Result<(Option<i64>, Option<i64>)>;
    async fn pool_counts(&self, project_id: &str) -> Result<PoolCounts>;
    /// Boot durations (ready time minus creation) of the project's latest `limit` boots.
    async fn provisioning_durations(&self, project_id: &str, limit: u32) -> Result<Vec<i64>>;
    /// Everything a reconciler pass reads, from one consistent snapshot (separate reads could
    /// disagree). With `changed_since: None` its instances are every live one (provisioning,
    /// ready, failed, claimed), oldest first; with `Some(rev)` (a `rev` of an earlier snapshot)
    /// they are every one changed since that snapshot, in any status — what a reader that keeps
    /// the rows between passes needs (at 10,000 VMs, re-reading every row was most of a pass).
    /// An engine may also return rows that had not changed (PostgreSQL's revision is a cursor
    /// over transaction ids, not an exact counter), never miss a changed one, and its `rev`
    /// never goes back.
    async fn pool_snapshot(&self, changed_since: Option<i64>) -> Result<PoolSnapshot>;

    /// Inserts as many of `rows` (pool instances of one project, provisioning, all with the same
    /// config hash and node) as fit, in order, and says how many: the project's instances that
    /// count toward its pool target — pool instances with that config hash, provisioning or
    /// ready and not stale, on any node — stay at most `target`, and the node's live instances
    /// (provisioning, ready, claimed, any kind) at most `capacity`. Atomic per project across
    /// servers: on PostgreSQL the pool's row is taken `FOR UPDATE SKIP LOCKED`, and when another
    /// node is placing boots for the same pool at that moment, nothing is inserted (its next pass
    /// tries again).
    async fn place_pool_boots(
        &self,
        rows: &[InstanceRow],
        target: u32,
        capacity: u32,
    ) -> Result<usize>;

    // Nodes ------------------------------------------------------------------------------------
    /// The value of setting `name`, recording `value` first if it has none (atomically: of
    /// servers starting together, the first one's value is everyone's).
    async fn setting(&self, name: &str, value: &str) -> Result<String>;
    /// Registers `n`, or takes its row over when the row is the same node's (same `node_id`) or
    /// its lease has expired by `now`; false while another live node holds the name.
    async fn register_node(&self, n: &NodeRow, now: i64) -> Result<bool>;
    /// Extends the lease of node `name` if its row is still `node_id`'s; false otherwise.
    async fn renew_node(
        &self,
        name: &str,
        node_id: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<bool>;
    /// Every node, by name.
    async fn list_nodes(&self) -> Result<Vec<NodeRow>>;
    /// Fails the live instances (provisioning, ready, claimed) on `node` with `reason` — only if
    /// its lease has expired by `now`, checked in the same statement, so a node that renewed in
    /// time keeps them. The ids of the instances failed.
    async fn fail_instances_of_lost_node(
        &self,
        node: &str,
        now: i64,
        reason: &str,
    ) -> Result<Vec<String>>;

    // Pool failure state ---------------------------------------------------------------------
    async fn get_pool_state(&self, project_id: &str) -> Result<PoolState>;
    /// Reads, changes and writes a pool's state atomically (concurrent failures all count).
    async fn update_pool_state(
        &self,
        project_id: &str,
        now: i64,
        change: PoolStateChange,
    ) -> Result<PoolState>;

    // Steps ------------------------------------------------------------------------------------
    /// A pool's autoscale row, if it ever had one.
    async fn get_autoscale(&self, project_id: &str) -> Result<Option<AutoscaleRow>>;
    /// Writes a pool's autoscale bounds (`enabled`, `min_size`, `max_size`, `updated_at`): creates
    /// the row when `expected_generation` is `None` (false if one exists), else changes it if
    /// its generation is still that (false if not: someone changed it meanwhile).
    async fn put_autoscale(
        &self,
        row: &AutoscaleRow,
        expected_generation: Option<i64>,
    ) -> Result<bool>;
    /// Records a decision of the pool's effective target if the last one recorded changed the
    /// target at `prev_changed_at` (false if another node recorded one since).
    async fn record_scale(
        &self,
        project_id: &str,
        prev_changed_at: Option<i64>,
        scale: &ScaleRecord,
    ) -> Result<bool>;
    /// `(instance, when)` of every claim of a project asked for after `since`, oldest first: when
    /// a ready VM was claimed, or when a VM was booted for a claim (`cold`; asked at its
    /// creation).
    async fn claims_since(&self, project_id: &str, since: i64) -> Result<Vec<(String, i64)>>;

    async fn insert_step(&self, s: &StepRow) -> Result<()>;
    async fn list_steps(&self, instance_id: &str) -> Result<Vec<StepRow>>;

    // Goldens -----------------------------------------------------------------------------------
    async fn insert_golden(&self, g: &GoldenRow) -> Result<()>;
    /// Every golden that is ready (not deleted).
    async fn ready_goldens(&self) -> Result<Vec<GoldenRow>>;
    async fn get_golden(&self, id: &str) -> Result<Option<GoldenRow>>;
    async fn mark_golden_deleted(&self, id: &str, now: i64) -> Result<bool>;

    // Project tokens -----------------------------------------------------------------------------
    async fn insert_token(&self, t: &TokenRow) -> Result<()>;
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>>;
    async fn list_tokens(&self, project_id: &str) -> Result<Vec<TokenRow>>;
    async fn delete_token(&self, project_id: &str, id: &str) -> Result<bool>;
    async fn touch_token(&self, id: &str, now: i64) -> Result<()>;
}
