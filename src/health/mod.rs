//! Health gates, the I/O: the HTTP client ([`http_client`]), Prometheus queries
//! ([`prometheus`]) and ztunnel's metrics endpoint ([`ztunnel_metrics`]). Their verdicts
//! are `ztunnel_rollout_core::health` (re-exported here).

pub mod http_client;
pub mod prometheus;
pub mod ztunnel_metrics;

pub use ztunnel_rollout_core::health::{gates, verdicts};
