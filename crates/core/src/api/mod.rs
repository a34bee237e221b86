//! The data of the custom resources: `ZtunnelRollout` ([`rollout`]) and
//! `SidecarMigration` ([`migration`]) specs and statuses, with their OpenAPI schema and
//! CEL rules. The agent crate wraps the specs into the Kubernetes objects (kube-rs's
//! derive); here they are plain serde values the decisions read and the status they
//! write.

pub mod migration;
pub mod rollout;

pub use migration::{MigrationSpec, SidecarMigrationStatus};
pub use rollout::{RolloutSpec, ZtunnelRolloutStatus};
