//! The rollout's pure core, so far: wave planning and node selection ([`planner`]), the
//! per-node state machine ([`node_machine`]) and the ztunnel revision rules
//! ([`revision`]). The agent that feeds them observations and executes their actions is
//! still to come.

pub mod node_actions;
pub mod node_machine;
pub mod planner;
pub mod revision;
