//! Invariant checkers that do not trust the agent: each reads what the API server
//! recorded (its audit log, see [`audit`]) or the cluster's state read by the harness,
//! never the agent's logs, metrics or status, and names every breach it finds.
//!
//! The promises checked (README, "Safety"):
//! - nothing is left cordoned ([`cordons::left_cordoned`]);
//! - ztunnel is replaced only on a cordoned node ([`cordons::ztunnel_deleted_on_schedulable`]);
//! - no pod covered by a PodDisruptionBudget is evicted or deleted while its budget
//!   allows no disruption ([`budgets::disruptions_beyond_budget`]);
//! - no agent replica writes while another holds the Lease ([`leadership::writes_without_lease`]);
//! - each pod is evicted at most once ([`evictions::evicted_twice`]);
//! - the agent's memory stays bounded ([`memory`]).
//!
//! Each takes the actors it judges (users, or replicas by source address), so a test can
//! point it at a deliberately wrong actor and show that it catches the breach.

pub mod audit;
pub mod budgets;
pub mod cordons;
pub mod evictions;
pub mod leadership;
pub mod memory;

use std::collections::BTreeSet;

/// Which promise a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    NothingLeftCordoned,
    ZtunnelOnlyOnCordoned,
    PdbRespected,
    NoSplitBrain,
    NoDoubleEviction,
    Termination,
    BoundedMemory,
    /// The checkers had something to judge (e.g. the audit log holds the agent's
    /// deletions): a check over nothing proves nothing.
    Evidence,
}

impl Invariant {
    pub const ALL: [Invariant; 8] = [
        Invariant::NothingLeftCordoned,
        Invariant::ZtunnelOnlyOnCordoned,
        Invariant::PdbRespected,
        Invariant::NoSplitBrain,
        Invariant::NoDoubleEviction,
        Invariant::Termination,
        Invariant::BoundedMemory,
        Invariant::Evidence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Invariant::NothingLeftCordoned => "nothing left cordoned",
            Invariant::ZtunnelOnlyOnCordoned => "ztunnel only on cordoned nodes",
            Invariant::PdbRespected => "PDBs respected",
            Invariant::NoSplitBrain => "no split brain",
            Invariant::NoDoubleEviction => "no double eviction",
            Invariant::Termination => "termination",
            Invariant::BoundedMemory => "bounded memory",
            Invariant::Evidence => "evidence to judge",
        }
    }
}

/// A breach, with what the checker saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

impl Violation {
    pub fn new(invariant: Invariant, detail: impl Into<String>) -> Violation {
        Violation {
            invariant,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant.name(), self.detail)
    }
}

/// The users whose requests a checker judges (as the API server authenticated or
/// impersonated them).
pub type Actors = BTreeSet<String>;

/// The user a ServiceAccount authenticates as.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}
