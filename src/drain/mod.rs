//! Draining a node: the pure decisions ([`filter`], [`budget`], [`eviction`]), the shared
//! result ([`report`]) and the I/O that evicts and waits ([`executor`]).

pub mod budget;
pub mod eviction;
pub mod executor;
pub mod filter;
pub mod report;

pub use executor::{DrainError, DrainOptions, Drainer, RetrySettings, SharedPdbs, cordon};
pub use report::{DrainReport, Outcome, PodResult};
