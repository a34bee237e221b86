//! Draining a node: the I/O that evicts and waits ([`executor`]), by the decisions of
//! `ztunnel_rollout_core::drain` (re-exported here: filters, budgets, eviction verdicts,
//! options, the report).

pub mod executor;

pub use executor::{DrainError, Drainer, SharedPdbs, cordon};
pub use ztunnel_rollout_core::drain::*;
