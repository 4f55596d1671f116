//! Instance states and kinds, and the names of the provisioning steps.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an instance is in its life: `provisioning → ready → claimed → destroyed`. A failed boot
/// stays `failed` for good: when it is ended (cleared, deleted, past the retention) its record
/// keeps how the boot ended and says separately when and why it was ended ([`EndReason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    Provisioning,
    Ready,
    Claimed,
    Failed,
    Destroyed,
}

impl InstanceStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Claimed => "claimed",
            Self::Failed => "failed",
            Self::Destroyed => "destroyed",
        }
    }

    /// Statuses a client may filter the instance list by (destroyed instances are never listed).
    pub const LISTABLE: [InstanceStatus; 4] =
        [Self::Ready, Self::Provisioning, Self::Failed, Self::Claimed];
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InstanceStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "provisioning" => Self::Provisioning,
            "ready" => Self::Ready,
            "claimed" => Self::Claimed,
            "failed" => Self::Failed,
            "destroyed" => Self::Destroyed,
            other => return Err(format!("unknown instance status `{other}`")),
        })
    }
}

/// Why an instance was ended: its VM destroyed (a failed boot's VM goes when the boot fails) and
/// the instance no longer counted in its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `DELETE .../instances/{id}` (a claimed VM released, or any other instance removed).
    Deleted,
    /// `POST .../warm-pool/clear`.
    Cleared,
    /// The pool was disabled.
    PoolDisabled,
    /// A boot of a configuration that is no longer the pool's.
    Outdated,
    /// A stale VM (configuration changed, branch moved, older than `maxAgeMinutes`) whose fresh
    /// replacement is ready.
    Replaced,
    /// More fresh VMs than the pool's target.
    ScaledDown,
    /// A test instance past its time to live.
    TestExpired,
    /// A failed record past the time failures are counted.
    Retention,
    /// Its project was deleted.
    ProjectDeleted,
    /// A ready VM that no longer answered when its server restarted.
    Unhealthy,
    /// The boot that built a golden, once that golden is deleted.
    GoldenDeleted,
    /// A claimed VM whose lease ran out.
    Expired,
}

impl EndReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::Cleared => "cleared",
            Self::PoolDisabled => "pool_disabled",
            Self::Outdated => "outdated",
            Self::Replaced => "replaced",
            Self::ScaledDown => "scaled_down",
            Self::TestExpired => "test_expired",
            Self::Retention => "retention",
            Self::ProjectDeleted => "project_deleted",
            Self::Unhealthy => "unhealthy",
            Self::GoldenDeleted => "golden_deleted",
            Self::Expired => "expired",
        }
    }

    pub const ALL: [EndReason; 12] = [
        Self::Deleted,
        Self::Cleared,
        Self::PoolDisabled,
        Self::Outdated,
        Self::Replaced,
        Self::ScaledDown,
        Self::TestExpired,
        Self::Retention,
        Self::ProjectDeleted,
        Self::Unhealthy,
        Self::GoldenDeleted,
        Self::Expired,
    ];
}

impl FromStr for EndReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown end reason `{s}`"))
    }
}

/// Why an autoscaled pool's effective target is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScaleReason {
    /// Raised to (or kept at) what the claims within one boot time ask for.
    Demand,
    /// Less is wanted, but the target changed under a minute ago: it falls one step a minute.
    Holding,
    /// One VM less than before: the peak that called for more is over.
    SteppedDown,
    /// Held up by the pool's `min`.
    Min,
    /// Held down by the pool's `max`.
    Max,
}

impl ScaleReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Demand => "demand",
            Self::Holding => "holding",
            Self::SteppedDown => "stepped_down",
            Self::Min => "min",
            Self::Max => "max",
        }
    }

    pub const ALL: [ScaleReason; 5] = [
        Self::Demand,
        Self::Holding,
        Self::SteppedDown,
        Self::Min,
        Self::Max,
    ];
}

impl fmt::Display for ScaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScaleReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown scale reason `{s}`"))
    }
}

/// Why an instance exists: to sit in the pool, to test the setup, for one claim when the pool was
/// empty, or to become the golden a pool's VMs are cloned from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceKind {
    Pool,
    Test,
    Cold,
    Golden,
}

impl InstanceKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pool => "pool",
            Self::Test => "test",
            Self::Cold => "cold",
            Self::Golden => "golden",
        }
    }
}

impl FromStr for InstanceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pool" => Self::Pool,
            "test" => Self::Test,
            "cold" => Self::Cold,
            "golden" => Self::Golden,
            other => return Err(format!("unknown instance kind `{other}`")),
        })
    }
}

/// The eight kinds of provisioning step, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    CreateVm,
    EnsureServer,
    SetEnvVars,
    CloneRepo,
    InitRepo,
    ProjectSetup,
    RepoSetup,
    WarmPoolSetup,
}

impl StepName {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CreateVm => "create_vm",
            Self::EnsureServer => "ensure_server",
            Self::SetEnvVars => "set_env_vars",
            Self::CloneRepo => "clone_repo",
            Self::InitRepo => "init_repo",
            Self::ProjectSetup => "project_setup",
            Self::RepoSetup => "repo_setup",
            Self::WarmPoolSetup => "warm_pool_setup",
        }
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `totalSteps` for a project with `repos` repositories: five fixed steps plus three per repo.
pub const fn total_steps(repos: usize) -> u32 {
    5 + 3 * repos as u32
}

/// How a finished step ended, as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Success,
    Error,
}

impl StepResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
        }
    }

    pub const fn from_success(success: bool) -> Self {
        if success {
            Self::Success
        } else {
            Self::Error
        }
    }
}

impl fmt::Display for StepResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step is, as the live event stream tells it: started, or ended one way or the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Success,
    Error,
}

impl StepStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Error => "error",
        }
    }
}

impl From<StepResult> for StepStatus {
    fn from(r: StepResult) -> Self {
        match r {
            StepResult::Success => Self::Success,
            StepResult::Error => Self::Error,
        }
    }
}

impl FromStr for StepName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| format!("unknown step `{s}`"))
    }
}

impl StepName {
    /// Every kind of step, in pipeline order.
    pub const ALL: [StepName; 8] = [
        Self::CreateVm,
        Self::EnsureServer,
        Self::SetEnvVars,
        Self::CloneRepo,
        Self::InitRepo,
        Self::ProjectSetup,
        Self::RepoSetup,
        Self::WarmPoolSetup,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire names are the ones `as_str` gives (the store and the API both use them).
    #[test]
    fn serde_names_match_as_str() {
        for n in StepName::ALL {
            assert_eq!(serde_json::to_value(n).unwrap(), n.as_str());
            assert_eq!(n.as_str().parse::<StepName>().unwrap(), n);
        }
        for s in [
            InstanceStatus::Provisioning,
            InstanceStatus::Ready,
            InstanceStatus::Claimed,
            InstanceStatus::Failed,
            InstanceStatus::Destroyed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in [StepResult::Success, StepResult::Error] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(
                serde_json::to_value(StepStatus::from(r)).unwrap(),
                r.as_str()
            );
        }
        assert_eq!(
            serde_json::to_value(StepStatus::Running).unwrap(),
            "running"
        );
    }
}
