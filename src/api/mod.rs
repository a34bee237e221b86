//! The agent's custom resources and the manifests generated from them.

pub mod chart;
pub mod manifests;
pub mod sidecar_migration;
pub mod ztunnel_rollout;

pub use sidecar_migration::{SidecarMigration, SidecarMigrationSpec, SidecarMigrationStatus};
pub use ztunnel_rollout::{ZtunnelRollout, ZtunnelRolloutSpec, ZtunnelRolloutStatus};
