//! The rollout's core. Pure: wave planning and node selection ([`planner`]), the per-node
//! state machine ([`node_machine`]), the ztunnel revision rules ([`revision`]) and
//! maintenance windows ([`windows`]). The shell: [`node_actions`], which executes the
//! state machine's actions. The agent loop that ties them together is still to come.

pub mod node_actions;
pub mod node_machine;
pub mod planner;
pub mod revision;
pub mod windows;
