//! Every decision ztunnel-rollout makes, with no Kubernetes client, no async runtime and
//! no HTTP: what the watches show comes in as plain data (k8s-openapi types where they
//! are the data), what to do goes out as plain values, and time is a parameter. The
//! agent (the `ztunnel-rollout` crate) is the shell that feeds these functions and
//! executes what they return; the compiler keeps the layering.
//!
//! Start reading at [`rollout::pass`]: one pass over a rollout, `decide`, which calls the
//! [`rollout::planner`] (waves, budget) and the [`rollout::node_machine`] (one node's
//! sequence). The rest: the custom resources' data ([`api`]), drain verdicts ([`drain`]),
//! health-gate verdicts ([`health`]), preflight findings ([`preflight`]) and the sidecar
//! migrations' rules ([`sidecar`]).

pub mod api;
pub mod api_errors;
pub mod drain;
pub mod duration;
pub mod health;
pub mod label_selector;
pub mod labels;
pub mod object;
pub mod preflight;
pub mod rollout;
pub mod sidecar;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
