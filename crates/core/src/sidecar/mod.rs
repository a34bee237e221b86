//! Moving sidecar namespaces between Istio revisions (the secondary workflow): the pure
//! rules of revisions and tags ([`revisions`]), moving a tag ([`tags`]), workload restarts ([`workloads`]), one
//! namespace's move ([`namespace_machine`]), the migration's plan and batches
//! ([`migration`]), and the agent's own changes its caches may not show yet
//! ([`expectations`]), and one pass over a migration ([`pass`]). The agent's shell is
//! `agent::sidecar`.

pub mod expectations;
pub mod migration;
pub mod namespace_machine;
pub mod pass;
pub mod revisions;
pub mod tags;
pub mod workloads;
