//! What the leader knows of one rollout during its term, beyond what the cluster shows:
//! each node's record and the work in flight for it, the writes the watches do not show
//! yet, and the rollout's own bookkeeping (rollback, finalizer, status writes). A new
//! term starts from the rollout's stored status ([`Memory::resume`]).

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::derived::Derived;
use crate::api::rollout::{RollbackStatus, ZtunnelRolloutStatus};
use crate::rollout::node_machine::{ConnectionsProgress, DrainProgress, GateProgress, NodePhase};
use crate::rollout::status::{Standing, TrackedNode, records_from_status};

#[derive(Default)]
pub struct Memory {
    /// Every node this term knows something about (nodes not in it are Pending).
    pub nodes: BTreeMap<String, NodeState>,
    pub rollback: Option<RollbackStatus>,
    pub undo: Undo,
    /// istio-cni's restore during a rollback (`spec.cni`), after ztunnel's.
    pub cni_undo: Undo,
    /// The DaemonSet revision the rollout rolls out, as last seen.
    pub target: Option<String>,
    /// With `spec.cni`: istio-cni's revision as last seen, and the one the rollout
    /// replaced pods from.
    pub cni: crate::api::rollout::CniStatus,
    /// Nodes the rollout covers, as last seen.
    pub total: usize,
    pub wave: Option<String>,
    pub standing: Option<Standing>,
    /// The last wave a `WaveStarted` Event was sent for.
    pub announced_wave: Option<String>,
    pub awaiting_approval: Option<String>,
    pub next_window: Option<Timestamp>,
    pub warned_waypoints: bool,
    pub warned_rolling_update: bool,
    pub finalizer: Finalizer,
    pub status: StatusWrites,
    /// A failed waiting-taint change is tried again from then on.
    pub taints_retry_at: Option<Timestamp>,
    /// The lease was handed over for this node (the agent's own).
    pub stepped_down_for: Option<String>,
    /// When the rollout reached a terminal phase (for its retention).
    pub finished_at: Option<Timestamp>,
    pub mesh: MeshBreaker,
    pub delete_sent: bool,
    /// A failed delete (after the retention) is tried again from then on.
    pub delete_retry: Retry,
    /// What passes derive from the snapshot, kept while its inputs do not change.
    pub derived: Derived,
}

/// One node, as this term knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub tracked: TrackedNode,
    /// The node's API call in flight (at most one at a time).
    pub call: Option<super::effects::CallKind>,
    /// Failed calls since the last success, for backoff and the status.
    pub retry: Retry,
    pub drain: DrainProgress,
    pub gates: GateProgress,
    pub connections: ConnectionsProgress,
    /// This term's last write to the node, while the watch does not show it yet.
    pub expect: Option<Expectation>,
    /// The ztunnel pod this term deleted, while the watch still shows it running.
    pub deleted_pod: Option<String>,
    /// When this term deleted the node's istio-cni pod (`spec.cni`), in its current
    /// phase: the wait for the new one runs from then.
    pub cni_deleted_at: Option<Timestamp>,
    pub recordons: u32,
    pub waiting_for_ztunnel_since: Option<Timestamp>,
    /// The phase (and its message) the node enters once its call in flight succeeds.
    pub then: Option<(NodePhase, String)>,
    /// A cordon of this rollout may be on the node (a cordon was sent, no release
    /// confirmed since): an abort releases it even if the watch does not show it.
    pub touched: bool,
    /// A node whose cordon may have applied (its answer was lost), or did (a new term's
    /// fresh read found our annotation) while the watch may not show it yet: it is not
    /// stepped until a read settles it, and counts against its wave's budget meanwhile.
    pub unconfirmed: Option<Unconfirmed>,
    /// A release was confirmed this term.
    pub released: bool,
    /// A waiting taint of this rollout may be on the node.
    pub may_have_taint: bool,
    /// The DaemonSet's revision changed while a call was in flight: the change applies
    /// once the call's outcome is recorded.
    pub retarget: bool,
    /// Our cordon is gone (someone uncordoned the node): the annotation must say so
    /// before anything else happens to the node.
    pub disown: Option<LostCordon>,
}

impl NodeState {
    pub fn new(tracked: TrackedNode) -> Self {
        Self {
            tracked,
            call: None,
            retry: Retry::default(),
            drain: DrainProgress::NotStarted,
            gates: GateProgress::NotStarted,
            connections: ConnectionsProgress::NotStarted,
            expect: None,
            deleted_pod: None,
            cni_deleted_at: None,
            recordons: 0,
            waiting_for_ztunnel_since: None,
            then: None,
            touched: false,
            unconfirmed: None,
            released: false,
            may_have_taint: false,
            retarget: false,
            disown: None,
        }
    }

    pub fn phase(&self) -> NodePhase {
        self.tracked.record.phase
    }
}

/// A cordon of ours someone lifted: its id (`cordon-id` annotation) as the copy that
/// showed the uncordon had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostCordon {
    pub id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unconfirmed {
    /// Read the node to know.
    Unknown,
    /// A fresh read found our annotation: the watch may not show it yet.
    Owned,
}

/// A node write the watch does not show yet: it showed one of `over` when the write
/// applied; once it shows another version, it shows the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub over: Vec<String>,
    pub wrote: Wrote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    Cordon {
        was_unschedulable: bool,
    },
    Release {
        uncordoned: bool,
    },
    WaitingTaint(bool),
    Disown,
    /// The bake's uncordon: still ours, marked `was-unschedulable=true`.
    Uncordon,
    /// Not a write: a fresh read newer than the watch's copy found our annotation.
    Read {
        was_unschedulable: bool,
        unschedulable: bool,
    },
}

/// Retries of something that failed: how often, the next try, why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retry {
    pub failures: u32,
    pub at: Option<Timestamp>,
    pub error: Option<String>,
}

impl Retry {
    /// Records a failure; the next try is after an exponential backoff from 200 ms,
    /// capped at `cap`, or after `at_least` if the server asked for longer.
    pub fn failed(&mut self, now: Timestamp, error: String, at_least: Option<SignedDuration>) {
        self.failures += 1;
        let delay = backoff(self.failures).max(at_least.unwrap_or(SignedDuration::ZERO));
        self.at = now.checked_add(delay).ok();
        self.error = Some(error);
    }

    pub fn due(&self, now: Timestamp) -> bool {
        self.at.is_none_or(|at| at <= now)
    }

    pub fn clear(&mut self) {
        *self = Retry::default();
    }
}

/// The backoff before try `failures + 1`: 200 ms doubling up to 30 s (backon's
/// exponential schedule, without jitter so that a replayed simulation is the same).
pub fn backoff(failures: u32) -> SignedDuration {
    use backon::BackoffBuilder;
    let delay = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(30))
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1) as usize)
        .unwrap_or(std::time::Duration::from_secs(30));
    // Whole milliseconds (the float schedule leaves nanoseconds).
    SignedDuration::from_millis(i64::try_from(delay.as_millis()).unwrap_or(30_000))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Undo {
    pub sent_at: Option<Timestamp>,
    pub in_flight: bool,
    /// Restores sent that were refused or did not show (an API blip does not count).
    pub attempts: u32,
    /// Restores that met an API blip.
    pub blips: u32,
    pub retry: Retry,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Finalizer {
    pub present: bool,
    /// Removed by this term (the watch may still show it).
    pub removed: bool,
    pub in_flight: bool,
    pub retry: Retry,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusWrites {
    pub written: Option<ZtunnelRolloutStatus>,
    pub written_at: Option<Timestamp>,
    pub in_flight: bool,
    /// The phase changed: write without waiting for the interval.
    pub urgent: bool,
    pub retry: Retry,
}

/// The mesh-wide breaker of the rollout.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MeshBreaker {
    /// Its task runs, for this generation.
    pub running: Option<i64>,
    /// A round of this generation held (nodes start only after one did).
    pub held: Option<i64>,
    /// It tripped, for this generation: why.
    pub breach: Option<(i64, String)>,
    /// Its `maxIncrease` baselines are read at this time (just before the first cordon),
    /// whichever leader reads them.
    pub baseline_at: Option<Timestamp>,
}

impl MeshBreaker {
    /// As the stored status left it: a new term keeps the trip and the baseline time.
    fn stored(stored: Option<&ZtunnelRolloutStatus>) -> Self {
        let Some(m) = stored.and_then(|s| s.mesh_breaker.as_ref()) else {
            return Self::default();
        };
        Self {
            running: None,
            held: None,
            breach: m.tripped_generation.zip(m.tripped.clone()),
            baseline_at: m.baseline_at.parse().ok(),
        }
    }
}

impl Memory {
    /// A new term's memory: the records and rollback of the stored status, and the
    /// nodes carrying the rollout's annotation — both read afresh: the watches may not
    /// show the last leader's last writes yet. An owned node is stepped only once the
    /// watch shows the annotation or a read confirms it (the status may not know it: its
    /// record was lost with the last leader); it counts against its wave's budget
    /// meanwhile.
    pub fn resume(
        stored: Option<&ZtunnelRolloutStatus>,
        finalizer: bool,
        owned: &[String],
    ) -> Self {
        let mut nodes: BTreeMap<String, NodeState> = records_from_status(stored)
            .into_iter()
            .map(|(name, tracked)| {
                let mut state = NodeState::new(tracked);
                // A node in flight or failed may carry our cordon.
                state.touched = state.phase().in_flight() || state.phase() == NodePhase::Failed;
                (name, state)
            })
            .collect();
        for node in owned {
            let state = nodes
                .entry(node.clone())
                .or_insert_with(|| NodeState::new(TrackedNode::pending(Timestamp::UNIX_EPOCH)));
            state.touched = true;
            if state.phase() == NodePhase::Baking {
                // Uncordoned while ours, so the annotation a lagging watch shows does not
                // tell whether the last leader cordoned it again (a failed bake): read it.
                state.unconfirmed = Some(Unconfirmed::Unknown);
            } else if state.phase() == NodePhase::Pending || state.phase().in_flight() {
                state.unconfirmed = Some(Unconfirmed::Owned);
            }
        }
        Memory {
            nodes,
            target: stored.and_then(|s| s.target_revision.clone()),
            cni: stored.and_then(|s| s.cni.clone()).unwrap_or_default(),
            total: stored.map_or(0, |s| s.counts.total as usize),
            rollback: stored.and_then(|s| s.rollback.clone()),
            status: StatusWrites {
                written: stored.cloned(),
                ..Default::default()
            },
            finalizer: Finalizer {
                present: finalizer,
                ..Default::default()
            },
            finished_at: stored
                .and_then(|s| s.finished_at.as_deref())
                .and_then(|t| t.parse().ok()),
            mesh: MeshBreaker::stored(stored),
            ..Default::default()
        }
    }

    pub fn records(&self) -> impl Iterator<Item = (&String, &TrackedNode)> {
        self.nodes.iter().map(|(n, s)| (n, &s.tracked))
    }

    /// The node's state, created Pending if the term knows nothing of it yet.
    pub fn node(&mut self, node: &str, now: Timestamp) -> &mut NodeState {
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeState::new(TrackedNode::pending(now)))
    }

    pub fn phase(&self, node: &str) -> NodePhase {
        self.nodes
            .get(node)
            .map_or(NodePhase::Pending, |s| s.phase())
    }

    /// Any API call of the rollout in flight.
    pub fn calls_in_flight(&self) -> bool {
        self.nodes.values().any(|s| s.call.is_some())
            || self.finalizer.in_flight
            || self.undo.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_200ms_to_30s() {
        assert_eq!(backoff(1), SignedDuration::from_millis(200));
        assert_eq!(backoff(2), SignedDuration::from_millis(400));
        assert_eq!(backoff(8), SignedDuration::from_millis(25_600));
        assert_eq!(backoff(9), SignedDuration::from_secs(30));
        assert_eq!(backoff(1_000), SignedDuration::from_secs(30));
    }

    #[test]
    fn a_retry_waits_for_the_server_when_it_asks_longer() {
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let mut r = Retry::default();
        r.failed(now, "429".into(), Some(SignedDuration::from_secs(5)));
        assert_eq!(r.at, Some(now + SignedDuration::from_secs(5)));
        assert!(!r.due(now));
        assert!(r.due(now + SignedDuration::from_secs(5)));
        r.clear();
        assert!(r.due(now));
    }
}
