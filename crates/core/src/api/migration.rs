//! The `SidecarMigration` custom resource: move sidecar namespaces to another Istio
//! revision or revision tag, a batch of namespaces at a time, restarting their workloads
//! and verifying every pod's injected revision. Reconciled by the same leader-elected
//! agent as the ztunnel rollouts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use serde::{Deserialize, Serialize};

/// Moves sidecar namespaces to another revision or tag, in batches, with verification.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.namespaces) != has(self.namespaceSelector)", "message": "set exactly one of namespaces and namespaceSelector"},
    {"rule": "self.to == oldSelf.to", "message": "to is immutable; create another migration"},
    {"rule": "!oldSelf.rollback || self.rollback", "message": "a requested rollback cannot be withdrawn"},
]))]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// The namespaces to move, in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000), extend("x-kubernetes-list-type" = "set"))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "namespaces are immutable; create another migration"}]))]
    pub namespaces: Option<Vec<String>>,
    /// Or the namespaces matching this selector when the migration starts, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The revision or revision tag the namespaces move to (`istio.io/rev`).
    #[schemars(regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"))]
    pub to: String,
    /// Namespaces moved at once; the next batch starts when every namespace of this one
    /// is verified.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub batch_size: u32,
    /// Workloads of one namespace restarted at once.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub workloads_at_once: u32,
    /// How long one workload's restart may take to complete (updated and available).
    #[serde(default = "default_rollout_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub rollout_timeout: String,
    /// How long, after its workloads restarted, a namespace's pods may take to all show
    /// the target revision (old pods still terminating).
    #[serde(default = "default_verify_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub verify_timeout: String,
    /// What a failed namespace does: `Stop` leaves it as it is, `Rollback` moves it
    /// back to its previous labels and revision. Either way no further namespace starts.
    #[serde(default)]
    pub on_failure: SidecarFailurePolicy,
    /// Move namespaces that carry both `istio-injection` and `istio.io/rev` (removing
    /// `istio-injection`); refused otherwise.
    #[serde(default)]
    pub replace_injection_label: bool,
    /// Move every namespace this migration changed back to its previous labels and
    /// revision (`ztunnel-rollout sidecar rollback`). Final.
    #[serde(default)]
    pub rollback: bool,
}

fn default_one() -> u32 {
    1
}

fn default_rollout_timeout() -> String {
    "10m".to_owned()
}

fn default_verify_timeout() -> String {
    "2m".to_owned()
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum SidecarFailurePolicy {
    #[default]
    Stop,
    Rollback,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SidecarMigrationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The revision `spec.to` resolved to when the migration started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub counts: NamespaceCounts,
    /// Restarts that cannot be free of downtime (single replica, no surge).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Every namespace of the migration, in order, once it started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceMigrationStatus>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceCounts {
    pub total: u32,
    pub migrated: u32,
    pub failed: u32,
    pub rolled_back: u32,
    pub in_flight: u32,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceMigrationStatus {
    pub name: String,
    pub phase: NamespacePhase,
    /// The injection labels before the move (restored by a rollback).
    pub previous: InjectionLabels,
    /// The revision the namespace's pods ran before the move.
    pub previous_revision: String,
    /// When the current restart step started (RFC 3339); workloads whose restart
    /// annotation is not older were restarted by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started: Option<String>,
    /// When verification of the current step started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifying_since: Option<String>,
    pub workloads: u32,
    pub workloads_restarted: u32,
    pub pods: u32,
    pub pods_verified: u32,
    /// When the namespace entered its phase (RFC 3339).
    pub since: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A namespace's sidecar injection labels.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InjectionLabels {
    /// `istio-injection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio_injection: Option<String>,
    /// `istio.io/rev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
}

/// Where the namespace is in its move.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum NamespacePhase {
    Pending,
    Restarting,
    Verifying,
    Migrated,
    Failed,
    RollingBack,
    VerifyingRollback,
    RolledBack,
    /// The rollback itself failed; left as it is for an operator.
    RollbackFailed,
}

impl NamespacePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            NamespacePhase::Pending => "Pending",
            NamespacePhase::Restarting => "Restarting",
            NamespacePhase::Verifying => "Verifying",
            NamespacePhase::Migrated => "Migrated",
            NamespacePhase::Failed => "Failed",
            NamespacePhase::RollingBack => "RollingBack",
            NamespacePhase::VerifyingRollback => "VerifyingRollback",
            NamespacePhase::RolledBack => "RolledBack",
            NamespacePhase::RollbackFailed => "RollbackFailed",
        }
    }

    /// Restarting or verifying, either way.
    pub fn in_flight(self) -> bool {
        use NamespacePhase::*;
        matches!(
            self,
            Restarting | Verifying | RollingBack | VerifyingRollback
        )
    }

    pub fn finished(self) -> bool {
        use NamespacePhase::*;
        matches!(self, Migrated | Failed | RolledBack | RollbackFailed)
    }

    /// Going back to the previous labels.
    pub fn backwards(self) -> bool {
        matches!(
            self,
            NamespacePhase::RollingBack | NamespacePhase::VerifyingRollback
        )
    }
}
