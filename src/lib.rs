//! ztunnel-rollout: upgrades Istio ambient mode's ztunnel node by node without dropping
//! traffic.

pub mod testbed;
