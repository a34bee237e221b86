//! The rollout's pure core. So far: wave planning and node selection ([`planner`]) and
//! the per-node state machine ([`node_machine`]).

pub mod node_machine;
pub mod planner;
