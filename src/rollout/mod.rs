//! The rollout's core. Pure: wave planning and node selection ([`planner`]), the per-node
//! state machine ([`node_machine`]), the ztunnel revision rules ([`revision`]), the spec's
//! settings ([`settings`]), the persisted status ([`status`]) and maintenance windows
//! ([`windows`]). The shell: [`node_actions`], which executes the state machine's
//! actions; the agent loop in `crate::agent` ties them together.

pub mod hold;
pub mod node_actions;
pub mod node_machine;
pub mod plan_preview;
pub mod planner;
pub mod revision;
pub mod settings;
pub mod status;
pub mod windows;
