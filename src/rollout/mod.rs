//! The rollout's pure core. So far: wave planning and node selection ([`planner`]).

pub mod planner;
