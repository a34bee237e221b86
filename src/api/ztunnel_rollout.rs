//! The `ZtunnelRollout` custom resource: the object kube-rs derives around the spec and
//! status data of `ztunnel_rollout_core::api::rollout` (where the fields, their schema
//! and their CEL rules are). The API server validates it, so an invalid spec is refused
//! at `kubectl apply` time with a message naming the field.

use std::ops::{Deref, DerefMut};

use kube::CustomResource;
use serde::{Deserialize, Serialize};
pub use ztunnel_rollout_core::api::rollout::*;

/// Rolls the ztunnel DaemonSet's current revision out node by node, in waves.
#[derive(CustomResource, schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ztunnel-rollout.dev",
    version = "v1alpha1",
    kind = "ZtunnelRollout",
    plural = "ztunnelrollouts",
    shortname = "ztr",
    status = "ZtunnelRolloutStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Wave","type":"string","jsonPath":".status.currentWave"}"#,
    printcolumn = r#"{"name":"Done","type":"integer","jsonPath":".status.counts.done"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.counts.total"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.counts.failed"}"#,
    printcolumn = r#"{"name":"In Flight","type":"integer","priority":1,"jsonPath":".status.counts.inFlight"}"#,
    printcolumn = r#"{"name":"Baking","type":"integer","priority":1,"jsonPath":".status.counts.baking"}"#,
    printcolumn = r#"{"name":"Awaiting","type":"string","jsonPath":".status.awaitingApproval"}"#,
    printcolumn = r#"{"name":"Next Window","type":"string","priority":1,"jsonPath":".status.nextWindow"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Progressing\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct ZtunnelRolloutSpec(pub RolloutSpec);

impl Deref for ZtunnelRolloutSpec {
    type Target = RolloutSpec;
    fn deref(&self) -> &RolloutSpec {
        &self.0
    }
}

impl DerefMut for ZtunnelRolloutSpec {
    fn deref_mut(&mut self) -> &mut RolloutSpec {
        &mut self.0
    }
}

impl From<RolloutSpec> for ZtunnelRolloutSpec {
    fn from(spec: RolloutSpec) -> Self {
        Self(spec)
    }
}
