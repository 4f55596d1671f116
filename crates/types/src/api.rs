//! Request and response bodies of the HTTP API. The compatible layer's shapes match
//! `warm-pool-openapi-2026-06.json` field for field (no extra fields); extensions are new objects.
//! Request bodies reject unknown fields.

use std::collections::BTreeMap;

use crate::state::StepResult;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Deserializes a field that may be absent (outer `None`), `null` (`Some(None)`) or a value.
pub fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// Deserializes an optional field that, when present, must not be `null` (the published schemas
/// type these fields without null).
pub fn non_null<'de, T, D>(de: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(de).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Every error answer: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable machine-readable code: `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `validation_error`, `rate_limited`, `internal_error`, `unavailable`.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<FieldError>>)]
    pub details: Option<serde_json::Value>,
}

/// One validation failure: which field (a JSON path such as `setupCommands[2].name`) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Compatible layer: warm pool
// ---------------------------------------------------------------------------------------------

/// A setup command: run with `bash -c` as root; `background` starts it detached and does not wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetupCommand {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(min_length = 1, max_length = 100000)]
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmPoolConfig {
    pub enabled: bool,
    pub target_size: u32,
    pub max_age_minutes: u32,
    pub branch: Option<String>,
    pub setup_commands: Option<Vec<SetupCommand>>,
    pub created_at: String,
    pub updated_at: String,
}

/// Pool instances by state; test and claimed instances are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolStatus {
    pub ready: u64,
    pub provisioning: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolMetadata {
    pub last_provisioned_at: Option<String>,
    pub last_claimed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetWarmPoolResponse {
    pub allowed: bool,
    pub config: Option<WarmPoolConfig>,
    pub status: PoolStatus,
    pub metadata: Option<PoolMetadata>,
}

/// Partial update: only the fields given change. `branch` and `setupCommands` may be set to null.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWarmPoolBody {
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = bool, required = false)]
    pub enabled: Option<bool>,
    /// 1 to 20.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = f64, required = false, minimum = 1, maximum = 20)]
    pub target_size: Option<f64>,
    /// 30 to 180.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = f64, required = false, minimum = 30, maximum = 180)]
    pub max_age_minutes: Option<f64>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub branch: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Vec<SetupCommand>>, nullable)]
    pub setup_commands: Option<Option<Vec<SetupCommand>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWarmPoolResponse {
    pub config: Option<WarmPoolConfig>,
    pub status: PoolStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestWarmPoolBootBody {
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Vec<SetupCommand>>, nullable)]
    pub setup_commands: Option<Option<Vec<SetupCommand>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestWarmPoolBootResponse {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceListItem {
    /// Warm-pool instance id (`wpi_...`).
    pub id: String,
    /// The VM's id and hostname (`vm-...`).
    pub instance_id: String,
    pub status: String,
    pub is_test: bool,
    pub failure_reason: Option<String>,
    pub provisioned_at: Option<String>,
    pub created_at: String,
}

/// The query of `GET .../warm-pool/instances`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListInstancesQuery {
    /// 1 to 50, default 20.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// ready, provisioning, failed or claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListWarmPoolInstancesResponse {
    pub items: Vec<InstanceListItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSummary {
    pub success: bool,
    pub total_duration_ms: u64,
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub completed_steps: u32,
    pub total_steps: u32,
}

/// One finished provisioning step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepRecord {
    pub name: String,
    pub status: StepResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// When the step finished.
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmPoolInstanceDetail {
    pub id: String,
    pub instance_id: String,
    pub status: String,
    pub is_test: bool,
    pub summary: InstanceSummary,
    pub failure_reason: Option<String>,
    pub steps: Vec<StepRecord>,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClearWarmPoolBody {
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = bool, required = false)]
    pub replenish: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearWarmPoolResponse {
    pub cleared: u64,
    pub status: PoolStatus,
}

// ---------------------------------------------------------------------------------------------
// Extensions: projects
// ---------------------------------------------------------------------------------------------

/// A repository as given when creating or changing a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepoInput {
    /// `owner/name`; cloned to `/home/<name>`.
    #[schema(pattern = r"^[A-Za-z0-9_.][A-Za-z0-9._-]{0,99}/[A-Za-z0-9_.][A-Za-z0-9._-]{0,99}$")]
    pub repo_full_name: String,
    /// Anything `git clone` accepts: https://, ssh://, git://, `user@host:path`; an absolute path
    /// or file:// URL on the server only with the admin token (under `--allow-local-repos`, never
    /// the server's data or cache dir). Credentials in the URL are sealed and shown as `***`;
    /// sending `***` back keeps the ones stored for that URL.
    #[schema(min_length = 1, max_length = 2048, pattern = r"^[^-]")]
    pub url: String,
    /// Defaults to the remote's default branch.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^-./]")]
    pub branch: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProjectBody {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    #[serde(default)]
    pub repos: Vec<RepoInput>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateProjectBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub description: Option<Option<String>>,
    /// Replaces the whole list.
    #[serde(default)]
    pub repos: Option<Vec<RepoInput>>,
}

/// The compatible project shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectRepo {
    pub repo_full_name: String,
    /// The configured branch, or the remote's default branch as last seen (empty if never seen).
    pub branch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub task_code: String,
    pub repos: Vec<ProjectRepo>,
    pub created_at: String,
    pub updated_at: String,
}

/// The query of `GET /v1/projects`: one page of projects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListProjectsQuery {
    /// 1 to 100, default 20.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListProjectsResponse {
    pub items: Vec<Project>,
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// A repository with its URL (the compatible project shape has no URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepoDetail {
    pub repo_full_name: String,
    /// The URL, credentials shown as `***`.
    pub url: String,
    /// The configured branch, null when the remote's default is used.
    pub branch: Option<String>,
    /// The remote's default branch as last seen, null if never seen.
    pub default_branch: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListReposResponse {
    pub items: Vec<RepoDetail>,
}

// ---------------------------------------------------------------------------------------------
// Extensions: environment variables
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVarInput {
    /// A shell identifier, not one bash or the loader reads for every command (`BASH_ENV`, `ENV`,
    /// `SHELLOPTS`, `BASHOPTS`, `IFS`, `LD_PRELOAD`, `LD_AUDIT`, `BASH_XTRACEFD`, `UID`, `EUID`,
    /// `PPID`, `BASHPID`, `BASH_VERSINFO`).
    #[schema(
        pattern = r"^[A-Za-z_][A-Za-z0-9_]*$",
        min_length = 1,
        max_length = 191
    )]
    pub name: String,
    #[schema(max_length = 100000)]
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutEnvVarsBody {
    /// 1 to 100 variables; names not given are kept.
    #[schema(min_items = 1, max_items = 100)]
    pub variables: Vec<EnvVarInput>,
}

/// A variable's name and when it was set. Values are never returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVarItem {
    pub name: String,
    pub configured: bool,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVarsResponse {
    pub items: Vec<EnvVarItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteEnvVarResponse {
    pub deleted: bool,
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// Extensions: devbox settings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DevboxRepo {
    pub repo_full_name: String,
    pub setup_commands: Vec<SetupCommand>,
}

/// Setup commands of `project_setup` (from `/home`) and of each repo's `repo_setup` (from `/home/<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Devbox {
    pub setup_commands: Vec<SetupCommand>,
    pub repos: Vec<DevboxRepo>,
}

/// Partial update: `setupCommands` replaces the project list; each repo listed has its list replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateDevboxBody {
    #[serde(default)]
    pub setup_commands: Option<Vec<SetupCommand>>,
    #[serde(default)]
    pub repos: Option<Vec<DevboxRepo>>,
}

/// What each VM of a project may use. Enforced by cgroups on `sandbox` (memory, processes and
/// threads, CPU time) and by the machine's size on `qemu` (memory, vCPUs); see the README for
/// `diskMb`. A change applies to VMs booted after it: ready VMs built before it are stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// CPUs (a CPU-time quota on `sandbox`, vCPUs on `qemu`), 1–64. Default 2.
    #[schema(minimum = 1, maximum = 64)]
    pub cpus: u32,
    /// Memory in MiB, 128–262144. A VM that goes past it has its largest process killed inside
    /// it; the server and the other VMs are not touched. Default 2048.
    #[schema(minimum = 128, maximum = 262144)]
    pub memory_mb: u64,
    /// Processes and threads at once, 64–4194304: a fork flood stops here. Default 4096.
    #[schema(minimum = 64, maximum = 4194304)]
    pub pids_max: u64,
    /// What the VM may write to its disk, in MiB, 256–1048576, where the backend and the host's
    /// filesystem can enforce it (see the README). Default 10240.
    #[schema(minimum = 256, maximum = 1048576)]
    pub disk_mb: u64,
}

impl Resources {
    pub const CPUS: (u32, u32) = (1, 64);
    pub const MEMORY_MB: (u64, u64) = (128, 262_144);
    pub const PIDS_MAX: (u64, u64) = (64, 4_194_304);
    pub const DISK_MB: (u64, u64) = (256, 1_048_576);
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 2,
            memory_mb: 2048,
            pids_max: 4096,
            disk_mb: 10240,
        }
    }
}

/// Partial update of [`Resources`]: the fields given are replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateResourcesBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Extensions: running commands in a VM
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecBody {
    /// Run with `bash -c` as root, `/home/.env` loaded.
    #[schema(min_length = 1, max_length = 100000)]
    pub command: String,
    /// Working directory (absolute); defaults to `/home`.
    #[serde(default)]
    #[schema(pattern = "^/")]
    pub cwd: Option<String>,
    /// Extra environment, applied over `/home/.env`.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// 1 to 3600; defaults to 600.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecResponse {
    /// The exit status; 124 when the command timed out, 128+N when killed by signal N.
    pub exit_code: i32,
    /// Combined stdout and stderr, capped at 64 KiB (first 16 KiB and last 48 KiB).
    pub output: String,
    pub duration_ms: u64,
    pub truncated: bool,
    pub timed_out: bool,
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthResponse {
    pub status: String,
    pub version: String,
}

// ---------------------------------------------------------------------------------------------
// Extensions: claiming VMs, pool stats
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimBody {
    /// Your id for the task the VM is for (kept with the instance).
    #[serde(default)]
    pub task_id: Option<String>,
    /// How long to wait for a VM booted for this claim when none is ready: 0 to 600, default 60.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = f64, required = false, minimum = 0, maximum = 600)]
    pub wait_seconds: Option<f64>,
    /// How long the VM lives unless renewed, in whole seconds: 1 to the project's
    /// `maxTtlSeconds`; default its `defaultTtlSeconds` (see `GET /v1/projects/{id}/leases`).
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = f64, required = false, minimum = 1)]
    pub ttl_seconds: Option<f64>,
}

/// Partial update of [`Leases`]: the fields given are replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateLeasesBody {
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = u64, required = false, minimum = 1)]
    pub default_ttl_seconds: Option<u64>,
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = u64, required = false, minimum = 1)]
    pub max_ttl_seconds: Option<u64>,
}

/// `POST .../instances/{id}/renew`: the claimed VM's lease, from now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewBody {
    /// Whole seconds from now, 1 to the project's `maxTtlSeconds`; default its
    /// `defaultTtlSeconds`.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = f64, required = false, minimum = 1)]
    pub ttl_seconds: Option<f64>,
}

/// Claim leases of a project's VMs: a claimed VM is destroyed when its lease runs out, unless
/// renewed (`POST .../instances/{id}/renew`), so a VM whose task died does not live forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Leases {
    /// A claim's lease when it asks for none (`ttlSeconds`). Default 86,400 (a day).
    pub default_ttl_seconds: u64,
    /// The longest lease a claim or a renewal may ask for. Default 604,800 (a week).
    pub max_ttl_seconds: u64,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            default_ttl_seconds: 24 * 3600,
            max_ttl_seconds: 7 * 24 * 3600,
        }
    }
}

/// A pool that sizes itself (extension; the published pool configuration keeps its shape):
/// while `enabled`, the reconciler keeps as many VMs as the claims it saw arrive within one of
/// the pool's boot times ask for, with a quarter more as headroom, within `min..=max` — rising
/// at once, falling one VM a minute once a peak is half an hour old. `targetSize` is then not
/// used. `GET .../warm-pool/stats` shows the effective target and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscale {
    pub enabled: bool,
    /// The fewest VMs kept, 0 to 20. Default 1.
    pub min: u32,
    /// The most VMs kept, 1 to 20 and at least `min`. Default 20.
    pub max: u32,
}

impl Default for Autoscale {
    fn default() -> Self {
        Self {
            enabled: false,
            min: 1,
            max: 20,
        }
    }
}

/// Partial update of [`Autoscale`]: the fields given are replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateAutoscaleBody {
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = bool, required = false)]
    pub enabled: Option<bool>,
    /// 0 to 20, whole.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = f64, required = false, minimum = 0, maximum = 20)]
    pub min: Option<f64>,
    /// 1 to 20, whole, at least `min`.
    #[serde(
        default,
        deserialize_with = "non_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = f64, required = false, minimum = 1, maximum = 20)]
    pub max: Option<f64>,
}

/// An autoscaled pool's effective target, and why it is that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscaleStatus {
    pub min: u32,
    pub max: u32,
    /// The target the reconciler keeps; null until its first decision.
    pub target: Option<u32>,
    pub reason: Option<crate::state::ScaleReason>,
    /// The reason in words, with the numbers it was decided from.
    pub why: String,
    /// The most claims seen within one boot time in the last 30 minutes, at the decision.
    pub peak_claims: Option<u32>,
    /// The pool's measured boot time at the decision.
    pub boot_ms: Option<u64>,
    /// When the target last changed.
    pub changed_at: Option<String>,
}

/// What happened to an instance beyond its boot (whose record is the instance detail's
/// `summary` and `steps`): what it was for, who claimed it, and when and why it was ended — its
/// VM destroyed (a failed boot's VM goes when the boot fails) and no longer counted in its pool.
/// A failed boot stays `failed` when it is ended: clearing or deleting it never rewrites how it
/// ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceLifecycle {
    pub id: String,
    pub instance_id: String,
    pub status: String,
    /// `pool`, `test`, `cold` (booted for a claim when none was ready) or `golden`.
    pub kind: String,
    pub task_id: Option<String>,
    pub created_at: String,
    pub provisioned_at: Option<String>,
    pub claimed_at: Option<String>,
    /// When a claimed VM's lease runs out, unless renewed.
    pub expires_at: Option<String>,
    /// When it was ended; null while it lives (or, for a failed boot, still counts as a failure).
    pub ended_at: Option<String>,
    pub end_reason: Option<crate::state::EndReason>,
}

/// How to reach a claimed VM's server directly (same exec and file API as through warmpool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmAccess {
    pub instance_id: String,
    pub agent_url: String,
    pub agent_token: String,
}

/// A claimed VM (200), or — when none was ready and the one booted for the claim was not ready in
/// time — the instance to poll (202, `vm` null); it becomes `claimed` by itself when ready.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimResponse {
    pub instance: InstanceListItem,
    /// Whether the VM came ready from the pool.
    pub warm: bool,
    pub vm: Option<VmAccess>,
    /// When the VM's lease runs out (it is then destroyed) unless renewed; null while a VM
    /// booted for the claim is not ready (its lease starts then).
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DegradedInfo {
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub since: String,
}

/// One sample of a pool's size (taken by the reconciler at most every 15 s, kept for an hour).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSample {
    /// When (RFC 3339).
    pub at: String,
    pub ready: u64,
    pub provisioning: u64,
    pub claimed: u64,
    pub failed: u64,
}

/// The pool's size over the last hour, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolHistory {
    pub samples: Vec<PoolSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolStats {
    pub ready: u64,
    pub provisioning: u64,
    pub failed: u64,
    /// Claimed and not yet released (from the pool or booted for a claim).
    pub claimed: u64,
    /// Ready but built from an old configuration or commit, or too old; claimable until replaced.
    pub stale: u64,
    /// Null until the pool is configured.
    pub target_size: Option<u32>,
    /// What the reconciler keeps: `targetSize`, or with autoscale on its decided target; 0 while
    /// the pool is disabled.
    pub effective_target: Option<u32>,
    /// Null while autoscale is off.
    pub autoscale: Option<AutoscaleStatus>,
    /// Set when the pool stopped booting after repeated identical failures.
    pub degraded: Option<DegradedInfo>,
    /// When the pool boots again after a failure (null when it is not backing off).
    pub next_attempt_at: Option<String>,
    pub warm_claims: u64,
    pub cold_claims: u64,
    /// Boot durations over the latest boots (null before the first).
    pub provisioning_p50_ms: Option<u64>,
    pub provisioning_p95_ms: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Extensions: project tokens
// ---------------------------------------------------------------------------------------------

/// A new project token; the secret is shown here only.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreatedToken {
    pub id: String,
    /// `wp_...`: send it as `Authorization: Bearer <token>`. It acts on this project only.
    pub token: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenItem {
    pub id: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListTokensResponse {
    pub items: Vec<TokenItem>,
}

/// Creating a token takes no parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenBody {}
