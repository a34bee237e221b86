//! Moving sidecar namespaces between Istio revisions (the secondary workflow): the pure
//! rules of revisions and tags ([`revisions`]), workload restarts ([`workloads`]), one
//! namespace's move ([`namespace_machine`]) and the migration's plan and batches
//! ([`migration`]). The agent's shell is `agent::sidecar`.

pub mod migration;
pub mod namespace_machine;
pub mod revisions;
pub mod workloads;
