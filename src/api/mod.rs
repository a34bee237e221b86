//! The agent's custom resources and the manifests generated from them.

pub mod manifests;
pub mod ztunnel_rollout;

pub use ztunnel_rollout::{ZtunnelRollout, ZtunnelRolloutSpec, ZtunnelRolloutStatus};
