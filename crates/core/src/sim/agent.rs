//! A simulated agent replica: what it remembers of each rollout during its term, the
//! effects it queued and not yet run (its executor's tasks), the drains and gate runs in
//! flight, and the outcomes waiting for its next pass.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::jiff::Timestamp;

use crate::rollout::pass::{Effect, Memory, Outcome};

/// An effect the agent's executor has not run yet.
#[derive(Debug, Clone)]
pub struct Queued {
    pub rollout: String,
    pub effect: Effect,
    /// The step of the view the pass decided on.
    pub decided_at: u64,
}

#[derive(Debug, Clone)]
pub struct DrainRun {
    pub deadline: Timestamp,
    /// An API failure met on the way (the drain reports API trouble at its deadline
    /// if only that held it up).
    pub api_trouble: bool,
    pub blocked: bool,
}

#[derive(Debug, Clone)]
pub struct GateRun {
    pub done_at: Timestamp,
    pub pass: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    Running,
    /// Stopped (SIGSTOP, a long GC pause) until this step: it neither renews nor acts.
    Paused(u64),
}

pub struct Agent {
    pub id: usize,
    pub life: Life,
    /// Leads as far as it knows (it learns otherwise when it next looks).
    pub leading: bool,
    pub memories: BTreeMap<String, Memory>,
    pub queue: VecDeque<Queued>,
    pub outcomes: BTreeMap<String, Vec<Outcome>>,
    pub drains: BTreeMap<(String, String), DrainRun>,
    pub gates: BTreeMap<(String, String), GateRun>,
    /// The view index its watches had reached (they never go back).
    pub seen_view: usize,
    /// The node this replica runs on.
    pub node: Option<String>,
    pub handed_over_for: Option<String>,
    /// It handed the lease over: it does not compete for it before this step.
    pub hold_off_until: u64,
}

impl Agent {
    pub fn new(id: usize) -> Self {
        Agent {
            id,
            life: Life::Running,
            leading: false,
            memories: BTreeMap::new(),
            queue: VecDeque::new(),
            outcomes: BTreeMap::new(),
            drains: BTreeMap::new(),
            gates: BTreeMap::new(),
            seen_view: 0,
            node: None,
            handed_over_for: None,
            hold_off_until: 0,
        }
    }

    /// The lease is lost (noticed): memory and every task go, as the shell's reset.
    pub fn reset(&mut self) {
        self.leading = false;
        self.memories.clear();
        self.queue.clear();
        self.outcomes.clear();
        self.drains.clear();
        self.gates.clear();
    }

    pub fn deliver(&mut self, rollout: &str, outcome: Outcome) {
        self.outcomes
            .entry(rollout.to_owned())
            .or_default()
            .push(outcome);
    }
}
