//! Preflight findings: the runbook's guardrails, checked against a snapshot of the
//! cluster ([`checks`]; istiod against its node agents in [`versions`]). The agent crate's `preflight` module reads the snapshot.

pub mod checks;
pub mod versions;
