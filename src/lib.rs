//! ztunnel-rollout: upgrades Istio ambient mode's ztunnel node by node without dropping
//! traffic. This crate is the shell: the leader-elected agent ([`agent`]), the CLI
//! ([`cli`]), the custom resources as Kubernetes objects ([`api`]), and the I/O of the
//! drain, the health gates and preflight. Every decision is in `ztunnel_rollout_core`.

pub mod agent;
pub mod api;
pub mod cli;
pub mod drain;
pub mod health;
pub mod health_server;
pub mod kube_client;
pub mod leader;
pub mod lease_claim;
pub mod malloc_arenas;
pub mod malloc_trim;
pub mod metrics;
pub mod preflight;
pub mod watch_cache;
pub mod watch_facts;
