//! Preflight findings: the runbook's guardrails, checked against a snapshot of the
//! cluster ([`checks`]). The agent crate's `preflight` module reads the snapshot.

pub mod checks;
