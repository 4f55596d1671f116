//! Rows as the store keeps them. Times are epoch milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warmpool_types::api::SetupCommand;
use warmpool_types::state::{EndReason, InstanceKind, InstanceStatus, ScaleReason};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoSpec {
    pub full_name: String,
    /// The URL without the credentials it was given with (those are in `credentials`).
    pub url: String,
    #[serde(default)]
    pub branch: Option<String>,
    /// The user info of the URL as given, when it held a secret: sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SealedCredentials>,
    /// Whether the admin token gave this source: only such a source may be on the server's own
    /// disk, and only such a source is fetched with the server's own git credentials.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin_source: bool,
}

/// Credentials taken out of a repository URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedCredentials {
    /// The user info (`user:password`, or a token), sealed with the server's secrets key.
    pub sealed: String,
    /// A keyed digest of the user info: the same credentials give the same digest, and it
    /// reveals nothing of them (it tells configurations apart and names mirrors).
    pub digest: String,
}

impl std::fmt::Debug for SealedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCredentials")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl RepoSpec {
    /// The directory name under `/home`: the last segment of `owner/name`.
    pub fn dir_name(&self) -> &str {
        self.full_name.rsplit('/').next().unwrap_or(&self.full_name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevboxSpec {
    #[serde(default)]
    pub setup_commands: Vec<SetupCommand>,
    /// Per-repo setup commands, by `owner/name`.
    #[serde(default)]
    pub repos: BTreeMap<String, Vec<SetupCommand>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    /// Creation order; the pagination cursor.
    pub seq: i64,
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub task_code: String,
    pub repos: Vec<RepoSpec>,
    pub devbox: DevboxSpec,
    /// What each of its VMs may use.
    pub resources: warmpool_types::api::Resources,
    /// How long its claimed VMs live unless renewed.
    pub leases: warmpool_types::api::Leases,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVarRow {
    pub name: String,
    pub value: String,
    pub version: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfigRow {
    pub project_id: String,
    pub enabled: bool,
    pub target_size: u32,
    pub max_age_minutes: u32,
    pub branch: Option<String>,
    pub setup_commands: Option<Vec<SetupCommand>>,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub seq: i64,
    pub id: String,
    pub vm_id: String,
    pub project_id: String,
    pub kind: InstanceKind,
    pub status: InstanceStatus,
    pub total_steps: u32,
    pub failed_step: Option<String>,
    pub failure_reason: Option<String>,
    pub backend: String,
    pub agent_url: Option<String>,
    pub agent_token: Option<String>,
    pub config_hash: Option<String>,
    pub task_id: Option<String>,
    pub created_at: i64,
    pub provisioned_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub claimed_at: Option<i64>,
    /// When it was ended: its VM destroyed (a failed boot's went when the boot failed) and no
    /// longer counted in its pool. A failed instance keeps its status when it is ended.
    pub destroyed_at: Option<i64>,
    /// Why it was ended.
    pub end_reason: Option<EndReason>,
    /// The lease its claim asked for (one booted for a claim starts it when ready).
    pub lease_ms: Option<i64>,
    /// When its claim's lease runs out (claimed instances).
    pub expires_at: Option<i64>,
    /// When the reconciler found it stale; stale instances are claimed last and replaced.
    pub stale_at: Option<i64>,
    /// What each repo was cloned at, by `owner/name`.
    pub commits: BTreeMap<String, RepoCommit>,
    /// The golden it was cloned from, if any.
    pub golden_id: Option<String>,
    /// The node whose backend hosts its VM (`None`: rows from before nodes, the only node's).
    pub node: Option<String>,
}

impl InstanceRow {
    /// Whether it was ended ([`crate::Store::mark_destroyed`]): destroyed, or failed and ended.
    pub fn is_ended(&self) -> bool {
        self.status == InstanceStatus::Destroyed || self.destroyed_at.is_some()
    }
}

/// A prepared VM saved by the backend, from which a pool's VMs are cloned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenRow {
    /// The id of the instance that built it, whose step log tells how.
    pub id: String,
    pub project_id: String,
    pub config_hash: String,
    pub backend: String,
    pub commits: BTreeMap<String, RepoCommit>,
    pub ready: bool,
    pub created_at: i64,
    /// The node whose backend keeps it (`None`: from before nodes); clones come from a golden
    /// on their own node.
    pub node: Option<String>,
}

/// A server node, as its lease row says. Nodes share one database and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    /// The node's data dir's own random id: a restart on the same data dir is the same node and
    /// takes its row over at once; another process claiming the name must wait for the lease.
    pub node_id: String,
    /// Where other nodes reach this node's API (to forward `exec` and events of its VMs).
    pub url: String,
    /// The most VMs (provisioning, ready or claimed) this node hosts.
    pub capacity: u32,
    /// The node is dead once this passes without a renewal.
    pub lease_until: i64,
    pub started_at: i64,
    pub renewed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoCommit {
    pub branch: String,
    pub commit: String,
}

/// A pool's failure bookkeeping: drives the backoff and the degraded stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolState {
    pub consecutive_failures: u32,
    /// Consecutive failures at the same step with the same configuration.
    pub identical_failures: u32,
    pub last_failed_step: Option<String>,
    pub last_failed_config: Option<String>,
    pub last_error: Option<String>,
    pub degraded_since: Option<i64>,
    pub next_attempt_at: Option<i64>,
}

/// A pool's autoscale bounds, and the effective target its reconcilers last decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoscaleRow {
    pub project_id: String,
    pub enabled: bool,
    pub min_size: u32,
    pub max_size: u32,
    /// Moves on with each change of the bounds (see [`crate::Store::put_autoscale`]).
    pub generation: i64,
    /// The last decision (none before the first pass with autoscale on).
    pub scale: Option<ScaleRecord>,
    pub updated_at: i64,
}

/// One decision of a pool's effective target, and what it was made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleRecord {
    pub target: u32,
    /// When the target last changed (the slow fall counts from it).
    pub changed_at: i64,
    pub reason: ScaleReason,
    /// The most claims seen within one boot time in the remembered window.
    pub peak: u32,
    /// The pool's measured boot time.
    pub boot_ms: i64,
}

/// What a reconciler pass works from.
#[derive(Debug, Clone, Default)]
pub struct PoolSnapshot {
    /// Every pool configuration.
    pub configs: Vec<PoolConfigRow>,
    /// Every project.
    pub projects: Vec<ProjectRow>,
    /// `(project, name, version)` of every environment variable.
    pub env_versions: Vec<(String, String, i64)>,
    /// Failure bookkeeping of the pools that have any (others are at the default).
    pub states: std::collections::HashMap<String, PoolState>,
    /// The autoscale rows of the pools that have one.
    pub autoscale: std::collections::HashMap<String, AutoscaleRow>,
    /// The instance revision this snapshot is at: every change to an instance row moves it on.
    pub rev: i64,
    /// Live instances oldest first, or those changed since the asked revision (see
    /// [`crate::Store::pool_snapshot`]).
    pub instances: Vec<InstanceRow>,
    /// Ready goldens, oldest first.
    pub goldens: Vec<GoldenRow>,
}

/// Instance counts of one project, for the pool's stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub ready: u64,
    pub provisioning: u64,
    pub failed: u64,
    /// Claimed and not released, pool and cold alike.
    pub claimed: u64,
    /// Ready pool instances found stale.
    pub stale: u64,
    /// Claims ever served from the pool / by a cold boot.
    pub warm_claims: u64,
    pub cold_claims: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub instance_id: String,
    /// Position in the pipeline, from 0.
    pub seq: u32,
    pub name: String,
    pub success: bool,
    pub output: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub finished_at: i64,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A project token: only the SHA-256 (hex) of the secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub project_id: String,
    pub hash: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}
