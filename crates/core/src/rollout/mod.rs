//! A rollout's decisions: one pass over a whole rollout ([`pass`]); wave planning and node
//! selection ([`planner`]); one node's sequence ([`node_machine`]); holds — pause,
//! approval, maintenance windows ([`hold`], [`windows`]); the ztunnel revision rules
//! ([`revision`]); overlapping rollouts ([`overlap`]); the spec's settings ([`settings`]); the persisted status
//! ([`status`]); and the plan preview (`ztunnel-rollout plan`, [`plan_preview`]).

pub mod hold;
pub mod node_machine;
pub mod overlap;
pub mod ownership;
pub mod pass;
pub mod placement;
pub mod plan_preview;
pub mod planner;
pub mod revision;
pub mod settings;
pub mod status;
pub mod windows;
