//! ztunnel-rollout: upgrades Istio ambient mode's ztunnel node by node without dropping
//! traffic.

pub mod agent;
pub mod api;
pub mod cli;
pub mod drain;
pub mod duration;
pub mod health;
pub mod health_server;
pub mod kube_client;
pub mod label_selector;
pub mod leader;
pub mod metrics;
pub mod preflight;
pub mod rollout;
pub mod sidecar;
pub mod testbed;
pub mod watch_cache;
