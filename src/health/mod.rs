//! Health gates, the I/O: the HTTP client with the agent-wide bounds on scrapes and
//! queries ([`http_client`]), Prometheus queries ([`prometheus`]) and the credentials
//! they authenticate with ([`credentials`]), and ztunnel's metrics endpoint
//! ([`ztunnel_metrics`]). Their verdicts and bounds are
//! `ztunnel_rollout_core::health` (re-exported here).

pub mod credentials;
pub mod http_client;
pub mod prometheus;
pub mod ztunnel_metrics;

pub use ztunnel_rollout_core::health::{gates, rounds, verdicts};
