//! The `SidecarMigration` custom resource: the object kube-rs derives around the spec
//! and status data of `ztunnel_rollout_core::api::migration`. Reconciled by the same
//! leader-elected agent as the ztunnel rollouts.

use std::ops::{Deref, DerefMut};

use kube::CustomResource;
use serde::{Deserialize, Serialize};
pub use ztunnel_rollout_core::api::migration::*;

/// Moves sidecar namespaces to another revision or tag, in batches, with verification.
#[derive(CustomResource, schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ztunnel-rollout.dev",
    version = "v1alpha1",
    kind = "SidecarMigration",
    plural = "sidecarmigrations",
    shortname = "scm",
    status = "SidecarMigrationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"To","type":"string","jsonPath":".spec.to"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.targetRevision"}"#,
    printcolumn = r#"{"name":"Migrated","type":"integer","jsonPath":".status.counts.migrated"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.counts.total"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.counts.failed"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Progressing\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct SidecarMigrationSpec(pub MigrationSpec);

impl Deref for SidecarMigrationSpec {
    type Target = MigrationSpec;
    fn deref(&self) -> &MigrationSpec {
        &self.0
    }
}

impl DerefMut for SidecarMigrationSpec {
    fn deref_mut(&mut self) -> &mut MigrationSpec {
        &mut self.0
    }
}

impl From<MigrationSpec> for SidecarMigrationSpec {
    fn from(spec: MigrationSpec) -> Self {
        Self(spec)
    }
}
