//! Health gates: what proves a node's data plane healthy before it is uncordoned. The
//! decisions are pure ([`verdicts`], [`gates`]); [`prometheus`] and [`ztunnel_metrics`]
//! fetch what they judge.

pub mod gates;
pub mod http_client;
pub mod prometheus;
pub mod verdicts;
pub mod ztunnel_metrics;
