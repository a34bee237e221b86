//! Draining a node, the decisions: which pods go ([`filter`]), what the
//! PodDisruptionBudgets allow ([`budget`]), what an answer of the Eviction API means
//! ([`eviction`]), the options ([`options`]) and the shared result ([`report`]). The
//! agent crate's `drain::executor` evicts and waits.

pub mod budget;
pub mod eviction;
pub mod filter;
pub mod options;
pub mod report;

pub use options::{DrainOptions, RetrySettings};
pub use report::{DrainReport, Outcome, PodResult};
