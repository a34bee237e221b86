//! A trial's parameters, drawn from its seed: the fleet, the rollout's spec, how often
//! the API server fails, how far the watches lag, and the scheduled disturbances —
//! operators, nodes coming and going, new revisions, pauses, aborts, a second rollout,
//! leader changes. Shrinking a failing trial removes disturbances and zeroes rates
//! while it still fails.

use super::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disturbance {
    /// An operator uncordons a node the rollout has cordoned.
    UncordonOurs,
    /// An operator cordons a node (and uncordons it in the quiet phase).
    CordonAny,
    /// A node goes NotReady, or Ready again.
    NotReady,
    Ready,
    AddNode,
    DeleteNode,
    /// The DaemonSet moves to a new revision.
    NewRevision,
    Pause,
    Resume,
    Abort,
    DeleteRollout,
    /// A second rollout over the same DaemonSet and nodes.
    SecondRollout,
    /// The leader dies: its memory and tasks are gone; another replica takes over once
    /// the lease expires.
    KillLeader,
    /// The leader stops (a long pause) beyond the lease, then resumes deposed.
    StopLeader,
    /// A PodDisruptionBudget is tightened: the application allows no disruption for a
    /// while.
    TightenPdb,
    /// Everything the API server answers fails for a few steps.
    ApiOutage,
}

pub const ALL: [Disturbance; 16] = [
    Disturbance::UncordonOurs,
    Disturbance::CordonAny,
    Disturbance::NotReady,
    Disturbance::Ready,
    Disturbance::AddNode,
    Disturbance::DeleteNode,
    Disturbance::NewRevision,
    Disturbance::Pause,
    Disturbance::Resume,
    Disturbance::Abort,
    Disturbance::DeleteRollout,
    Disturbance::SecondRollout,
    Disturbance::KillLeader,
    Disturbance::StopLeader,
    Disturbance::TightenPdb,
    Disturbance::ApiOutage,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheduled {
    pub at: u64,
    pub what: Disturbance,
    /// Picks the target (a node, …) when it happens.
    pub pick: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    pub nodes: usize,
    pub zones: usize,
    /// Nodes without ztunnel (Windows, an untolerated taint).
    pub without_ztunnel: usize,
    pub max_unavailable: u32,
    pub rollback: bool,
    pub max_failed: u32,
    pub uncordon_failed: bool,
    /// Probability that one API request fails (split among the failure kinds).
    pub api_faults: f64,
    /// The watches lag up to this many views.
    pub max_lag: usize,
    pub gate_failures: f64,
    /// An application under a PDB that never allows a disruption.
    pub blocked_app: bool,
    /// The agent runs on one of the rollout's nodes.
    pub agent_on_node: bool,
    /// Steps with disturbances; then a quiet phase until everything settles.
    pub steps: u64,
    pub schedule: Vec<Scheduled>,
    /// Nodes bake after their uncordon (`health.bake`): uncordoned while still the
    /// rollout's, and cordoned and drained again when the bake fails.
    pub bake: bool,
}

impl Knobs {
    pub fn draw(seed: u64) -> Self {
        let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        let nodes = r.between(6, 24) as usize;
        let steps = r.between(150, 900);
        let disturbances = r.between(0, 4);
        let mut schedule: Vec<Scheduled> = (0..disturbances)
            .map(|_| Scheduled {
                at: r.below(steps),
                what: ALL[r.below(ALL.len() as u64) as usize],
                pick: r.next_u64(),
            })
            .collect();
        schedule.sort_by_key(|s| s.at);
        Knobs {
            nodes,
            zones: r.between(1, 3) as usize,
            without_ztunnel: if r.chance(0.2) {
                r.between(1, 2) as usize
            } else {
                0
            },
            max_unavailable: r.between(1, 3) as u32,
            rollback: r.chance(0.3),
            max_failed: if r.chance(0.2) { 1 } else { 0 },
            uncordon_failed: r.chance(0.2),
            api_faults: [0.0, 0.02, 0.1, 0.3][r.below(4) as usize],
            max_lag: r.below(4) as usize,
            gate_failures: [0.0, 0.0, 0.02, 0.1][r.below(4) as usize],
            blocked_app: r.chance(0.1),
            agent_on_node: r.chance(0.15),
            steps,
            schedule,
            // Drawn last: the knobs drawn before keep their values for every seed.
            bake: r.chance(0.4),
        }
    }
}
