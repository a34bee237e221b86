//! The local test bed: a real Kubernetes control plane on loopback, with nodes and pod
//! lifecycles simulated by KWOK, and the fixtures the tests and the demo put into it.
//! Used by `local-cluster` and the integration tests (a dev-dependency of the agent
//! crate); the shipped binary never contains it.

pub mod binaries;
pub mod control_plane;
pub mod control_socket;
pub mod critical_path;
pub mod fixtures;
pub mod invariants;
pub mod istio;
pub mod kubeconfig;
pub mod kwok_restart;
pub mod kwok_stages;
pub mod pki;
pub mod rbac_audit;
pub mod run_record;
pub mod supervisor;
