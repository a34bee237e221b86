//! The rollout's status as persisted in the custom resource: per-node records, counts,
//! the rollout's phase and its conditions (each with `observedGeneration`). Pure: the
//! agent computes the status here and only writes it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::node_machine::{NodePhase, NodeRecord};
use crate::api::rollout::{NodeCounts, NodeStatus, ZtunnelRolloutStatus};

/// A node the rollout has started (or decided about), as kept in memory and persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedNode {
    pub record: NodeRecord,
    /// When the rollout cordoned the node.
    pub started: Option<Timestamp>,
    pub message: String,
}

impl TrackedNode {
    pub fn pending(now: Timestamp) -> Self {
        Self {
            record: NodeRecord {
                phase: NodePhase::Pending,
                since: now,
                was_unschedulable: None,
            },
            started: None,
            message: String::new(),
        }
    }
}

/// The node records of a persisted status. Entries with unreadable times are dropped
/// (the node is then re-evaluated from what the cluster shows, which is safe: every
/// step is idempotent and ownership is recorded on the node itself).
pub fn records_from_status(status: Option<&ZtunnelRolloutStatus>) -> BTreeMap<String, TrackedNode> {
    status
        .map(|s| s.nodes.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| {
            let since = n.since.parse().ok()?;
            Some((
                n.name.clone(),
                TrackedNode {
                    record: NodeRecord {
                        phase: n.phase,
                        since,
                        was_unschedulable: n.was_unschedulable,
                    },
                    started: n.started.as_deref().and_then(|s| s.parse().ok()),
                    message: n.message.clone(),
                },
            ))
        })
        .collect()
}

/// A node's message in the status: at most this many bytes.
pub const MAX_NODE_MESSAGE: usize = 256;
/// The nodes' messages together: past this many bytes, the next nodes' messages are
/// left out (the counts, the conditions, the Events and `ztunnel-rollout status` keep
/// the story).
pub const NODE_MESSAGES_BUDGET: usize = 64 * 1024;
/// A condition's message: at most this many bytes.
pub const MAX_CONDITION_MESSAGE: usize = 4096;

/// `s` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The first `max` of `items`, then how many more: `a, b, c and 7 more`.
pub fn some_of(items: &[String], max: usize) -> String {
    let shown = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(max) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// The persisted form: every node that is not Pending, or that is Pending again with a
/// reason (sent round again by a new revision or a rollback), by name. Times are whole
/// seconds; a node done or skipped keeps its phase, when it got there and its message
/// (not when it started, nor whether it was cordoned before); messages
/// are bounded one by one and together — 5,000 nodes stay well under etcd's object size
/// limit.
pub fn node_statuses<'a>(
    records: impl IntoIterator<Item = (&'a String, &'a TrackedNode)>,
) -> Vec<NodeStatus> {
    let fmt = |t: Timestamp| {
        t.round(k8s_openapi::jiff::Unit::Second)
            .unwrap_or(t)
            .to_string()
    };
    let kept: Vec<(&String, &TrackedNode)> = records
        .into_iter()
        .filter(|(_, t)| t.record.phase != NodePhase::Pending || !t.message.is_empty())
        .collect();
    // The message budget goes to failed nodes first, then to those in flight, then to
    // the rest: with many nodes in trouble, the ones an operator must look at keep theirs.
    let rank = |t: &TrackedNode| match t.record.phase {
        NodePhase::Failed => 0,
        NodePhase::Done | NodePhase::Skipped | NodePhase::Pending => 2,
        _ => 1,
    };
    let mut order: Vec<usize> = (0..kept.len()).collect();
    order.sort_by_key(|&i| rank(kept[i].1));
    let mut messages = vec![String::new(); kept.len()];
    let mut budget = NODE_MESSAGES_BUDGET;
    for i in order {
        if budget < MAX_NODE_MESSAGE {
            break;
        }
        let message = truncate(&kept[i].1.message, MAX_NODE_MESSAGE);
        budget = budget.saturating_sub(message.len());
        messages[i] = message;
    }
    kept.into_iter()
        .zip(messages)
        .map(|((name, t), message)| {
            let phase = t.record.phase;
            let finished = matches!(phase, NodePhase::Done | NodePhase::Skipped);
            NodeStatus {
                name: name.clone(),
                phase,
                since: fmt(t.record.since),
                started: if finished { None } else { t.started.map(fmt) },
                was_unschedulable: if finished {
                    None
                } else {
                    t.record.was_unschedulable
                },
                message,
            }
        })
        .collect()
}

pub fn counts<'a>(total: usize, records: impl Iterator<Item = &'a TrackedNode>) -> NodeCounts {
    let mut c = NodeCounts {
        total: u32::try_from(total).unwrap_or(u32::MAX),
        ..Default::default()
    };
    for t in records {
        match t.record.phase {
            NodePhase::Pending => {}
            NodePhase::Done => c.done += 1,
            NodePhase::Failed => c.failed += 1,
            NodePhase::Skipped => c.skipped += 1,
            NodePhase::Baking => c.baking += 1,
            _ => c.in_flight += 1,
        }
    }
    c
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Nothing started yet.
    Pending,
    Progressing,
    Paused,
    /// A node failed, or the rollout cannot proceed (missing DaemonSet, refused strategy).
    Blocked,
    Complete,
    Aborted,
    /// The failure policy restores the previous revision on the updated nodes.
    RollingBack,
    /// Every node runs the restored previous revision again.
    RolledBack,
    /// The current wave waits for `ztunnel-rollout approve`.
    AwaitingApproval,
    /// No maintenance window is open.
    OutsideWindow,
    /// Aborted or being deleted: releasing the nodes it cordoned.
    Aborting,
}

impl RolloutPhase {
    pub const ALL: [RolloutPhase; 11] = [
        RolloutPhase::Pending,
        RolloutPhase::Progressing,
        RolloutPhase::Paused,
        RolloutPhase::Blocked,
        RolloutPhase::Complete,
        RolloutPhase::Aborted,
        RolloutPhase::RollingBack,
        RolloutPhase::RolledBack,
        RolloutPhase::AwaitingApproval,
        RolloutPhase::OutsideWindow,
        RolloutPhase::Aborting,
    ];

    /// Complete, RolledBack and Aborted are final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RolloutPhase::Complete | RolloutPhase::RolledBack | RolloutPhase::Aborted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Pending => "Pending",
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Blocked => "Blocked",
            RolloutPhase::Complete => "Complete",
            RolloutPhase::Aborted => "Aborted",
            RolloutPhase::RollingBack => "RollingBack",
            RolloutPhase::RolledBack => "RolledBack",
            RolloutPhase::AwaitingApproval => "AwaitingApproval",
            RolloutPhase::OutsideWindow => "OutsideWindow",
            RolloutPhase::Aborting => "Aborting",
        }
    }
}

/// Where the rollout stands after a pass, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub phase: RolloutPhase,
    /// CamelCase reason for the conditions and Events.
    pub reason: String,
    pub message: String,
}

/// The reason of a pause the failure policy made (not `spec.paused`).
pub const NODE_FAILED: &str = "NodeFailed";
/// The mesh-wide breaker tripped.
pub const MESH_QUERY_FAILED: &str = "MeshQueryFailed";
/// Where a failure's message says what happens now (after the failure).
pub const NO_NEW_NODE: &str = ". No new node starts";

impl Standing {
    /// Something failed: the rollout cannot proceed, a failure paused it, or it rolls
    /// (or rolled) back.
    pub fn degraded(&self) -> bool {
        match self.phase {
            RolloutPhase::Blocked | RolloutPhase::RollingBack | RolloutPhase::RolledBack => true,
            RolloutPhase::Paused => self.reason == NODE_FAILED || self.reason == MESH_QUERY_FAILED,
            _ => false,
        }
    }
}

pub const PROGRESSING: &str = "Progressing";
pub const COMPLETE: &str = "Complete";
pub const DEGRADED: &str = "Degraded";
pub const PAUSED: &str = "Paused";

/// The four conditions for `standing`. A condition keeps its `lastTransitionTime` while
/// its status does not change.
pub fn conditions(
    previous: &[Condition],
    generation: i64,
    now: Timestamp,
    standing: &Standing,
) -> Vec<Condition> {
    use RolloutPhase::*;
    let phase = standing.phase;
    let own = (standing.reason.as_str(), standing.message.as_str());
    let fine = |reason: &'static str, message: &'static str| (reason, message);
    let wanted: [(&str, bool, (&str, &str)); 4] = [
        (
            PROGRESSING,
            matches!(phase, Pending | Progressing | RollingBack),
            if matches!(
                phase,
                Pending | Progressing | RollingBack | AwaitingApproval | OutsideWindow
            ) {
                own
            } else {
                (phase.as_str(), "no node is being started")
            },
        ),
        (
            COMPLETE,
            phase == Complete,
            if phase == Complete {
                own
            } else {
                fine("NotComplete", "nodes remain")
            },
        ),
        (
            DEGRADED,
            standing.degraded(),
            if standing.degraded() {
                own
            } else {
                fine("AsExpected", "no failed node or check")
            },
        ),
        (
            PAUSED,
            phase == Paused,
            if phase == Paused {
                own
            } else {
                fine("NotPaused", "spec.paused is false")
            },
        ),
    ];
    wanted
        .into_iter()
        .map(|(type_, on, (reason, message))| {
            condition(previous, generation, now, type_, on, reason, message)
        })
        .collect()
}

/// One condition; it keeps its `lastTransitionTime` from `previous` while its status
/// does not change.
pub fn condition(
    previous: &[Condition],
    generation: i64,
    now: Timestamp,
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let status = if on { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: truncate(message, MAX_CONDITION_MESSAGE),
        last_transition_time: since,
        observed_generation: Some(generation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        format!("2026-11-29T10:{s}Z").parse().unwrap()
    }

    fn tracked(phase: NodePhase) -> TrackedNode {
        TrackedNode {
            record: NodeRecord {
                phase,
                since: t("01:02.345"),
                was_unschedulable: Some(false),
            },
            started: Some(t("00:30")),
            message: "m".into(),
        }
    }

    #[test]
    fn records_survive_a_round_trip_through_the_status_except_untouched_pending_ones() {
        let mut again = tracked(NodePhase::Pending);
        again.message = "the rollback: goes through the sequence again".into();
        let records = BTreeMap::from([
            ("a".to_owned(), tracked(NodePhase::Drained)),
            ("b".to_owned(), TrackedNode::pending(t("00:10"))),
            ("c".to_owned(), tracked(NodePhase::Done)),
            ("d".to_owned(), again),
        ]);
        let status = ZtunnelRolloutStatus {
            nodes: node_statuses(&records),
            ..Default::default()
        };
        let names: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["a", "c", "d"],
            "untouched Pending nodes are not persisted"
        );
        let back = records_from_status(Some(&status));
        assert_eq!(back.len(), 3);
        assert_eq!(back["d"].record.phase, NodePhase::Pending);
        assert!(back["d"].message.contains("again"));
        assert_eq!(back["a"].record.phase, NodePhase::Drained);
        assert_eq!(back["a"].record.since, t("01:02"), "whole seconds");
        assert_eq!(back["a"].started, Some(t("00:30")));
        assert_eq!(back["a"].record.was_unschedulable, Some(false));
        assert_eq!(
            back["c"].record.was_unschedulable, None,
            "a node done keeps only its phase, time and message"
        );
    }

    #[test]
    fn failed_nodes_keep_their_messages_when_the_budget_runs_out() {
        let long = "x".repeat(1000);
        let mut records = BTreeMap::new();
        for i in 0..1000 {
            let mut t = tracked(NodePhase::Done);
            t.message = long.clone();
            records.insert(format!("a-{i:04}"), t);
        }
        for i in 0..5 {
            let mut t = tracked(NodePhase::Failed);
            t.message = format!("z-{i} failed: {long}");
            records.insert(format!("z-{i}"), t);
        }
        let nodes = node_statuses(&records);
        let failed: Vec<&NodeStatus> = nodes
            .iter()
            .filter(|n| n.phase == NodePhase::Failed)
            .collect();
        assert_eq!(failed.len(), 5);
        assert!(
            failed.iter().all(|n| n.message.contains("failed")),
            "{failed:?}"
        );
        let total: usize = nodes.iter().map(|n| n.message.len()).sum();
        assert!(total <= NODE_MESSAGES_BUDGET, "{total}");
        assert!(
            nodes.iter().any(|n| n.message.is_empty()),
            "the budget ran out"
        );
    }

    #[test]
    fn counts_put_every_phase_in_one_bucket() {
        let records = [
            tracked(NodePhase::Pending),
            tracked(NodePhase::Cordoned),
            tracked(NodePhase::ZtunnelReady),
            tracked(NodePhase::Done),
            tracked(NodePhase::Skipped),
            tracked(NodePhase::Failed),
        ];
        let c = counts(7, records.iter());
        assert_eq!(
            (c.total, c.done, c.skipped, c.failed, c.in_flight),
            (7, 1, 1, 1, 2)
        );
    }

    fn standing(phase: RolloutPhase) -> Standing {
        Standing {
            phase,
            reason: "Why".into(),
            message: "because".into(),
        }
    }

    fn find<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
        cs.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn each_phase_sets_its_condition_with_the_observed_generation() {
        for (phase, on) in [
            (RolloutPhase::Progressing, PROGRESSING),
            (RolloutPhase::Complete, COMPLETE),
            (RolloutPhase::Blocked, DEGRADED),
            (RolloutPhase::Paused, PAUSED),
        ] {
            let cs = conditions(&[], 7, t("00:00"), &standing(phase));
            assert_eq!(cs.len(), 4);
            for c in &cs {
                assert_eq!(c.observed_generation, Some(7));
                let expected = if c.type_ == on { "True" } else { "False" };
                assert_eq!(c.status, expected, "{phase:?} {}", c.type_);
            }
            assert_eq!(find(&cs, on).reason, "Why");
            assert_eq!(find(&cs, on).message, "because");
        }
        let aborted = conditions(&[], 1, t("00:00"), &standing(RolloutPhase::Aborted));
        assert!(aborted.iter().all(|c| c.status == "False"));
        assert_eq!(find(&aborted, PROGRESSING).reason, "Aborted");
    }

    #[test]
    fn failures_mark_the_rollout_degraded_whatever_the_policy_did() {
        let on = |cs: &[Condition], t: &str| find(cs, t).status == "True";
        // The failure policy paused it: Paused and Degraded, both with the failure.
        let failed = Standing {
            phase: RolloutPhase::Paused,
            reason: NODE_FAILED.into(),
            message: "node n1: verification failed: value is 3.000, above the maximum 0.500".into(),
        };
        let cs = conditions(&[], 1, t("00:00"), &failed);
        assert!(on(&cs, PAUSED) && on(&cs, DEGRADED) && !on(&cs, PROGRESSING));
        assert_eq!(find(&cs, DEGRADED).message, failed.message);
        // The operator paused it: not degraded.
        let cs = conditions(&[], 1, t("00:00"), &standing(RolloutPhase::Paused));
        assert!(on(&cs, PAUSED) && !on(&cs, DEGRADED));
        // Rolling back progresses and is degraded; rolled back is degraded, not complete.
        let cs = conditions(&[], 1, t("00:00"), &standing(RolloutPhase::RollingBack));
        assert!(on(&cs, PROGRESSING) && on(&cs, DEGRADED));
        let cs = conditions(&[], 1, t("00:00"), &standing(RolloutPhase::RolledBack));
        assert!(on(&cs, DEGRADED) && !on(&cs, COMPLETE) && !on(&cs, PROGRESSING));
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_changes() {
        let first = conditions(&[], 1, t("00:00"), &standing(RolloutPhase::Progressing));
        let same = conditions(&first, 2, t("05:00"), &standing(RolloutPhase::Progressing));
        assert_eq!(
            find(&same, PROGRESSING).last_transition_time,
            Time(t("00:00"))
        );
        assert_eq!(find(&same, PROGRESSING).observed_generation, Some(2));
        let done = conditions(&same, 2, t("09:00"), &standing(RolloutPhase::Complete));
        assert_eq!(
            find(&done, PROGRESSING).last_transition_time,
            Time(t("09:00"))
        );
        assert_eq!(find(&done, COMPLETE).last_transition_time, Time(t("09:00")));
        assert_eq!(find(&done, DEGRADED).last_transition_time, Time(t("00:00")));
    }

    #[test]
    fn a_status_of_five_thousand_nodes_in_trouble_stays_well_under_a_mebibyte() {
        let at: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let long = "drain failed: pods left at the deadline: ".to_owned()
            + &"shop/web-0123456789 (PDB shop/web allows 0 disruptions); ".repeat(40);
        // Most nodes done, a thousand failed and a hundred in flight (a budget of 2 %), every
        // message long, and long node names.
        let records: BTreeMap<String, TrackedNode> = (0..5_000)
            .map(|i| {
                let mut t = TrackedNode::pending(at);
                t.record.phase = match i % 50 {
                    0 => NodePhase::Drained,
                    1..=10 => NodePhase::Failed,
                    _ => NodePhase::Done,
                };
                t.record.was_unschedulable = Some(false);
                t.started = Some(at);
                t.message = long.clone();
                (
                    format!(
                        "ip-10-{}-{}-{}.eu-west-1.compute.internal",
                        i / 65536,
                        (i / 256) % 256,
                        i % 256
                    ),
                    t,
                )
            })
            .collect();
        let nodes = node_statuses(&records);
        let status = ZtunnelRolloutStatus {
            nodes,
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&status).unwrap().len();
        assert!(bytes < 640 * 1024, "{bytes} bytes");
        assert!(
            status
                .nodes
                .iter()
                .all(|n| n.message.len() <= MAX_NODE_MESSAGE)
        );
        let first_failed = status
            .nodes
            .iter()
            .find(|n| n.phase == NodePhase::Failed)
            .unwrap();
        assert!(first_failed.message.ends_with('…'), "failed nodes first");
        assert!(
            status
                .nodes
                .iter()
                .filter(|n| n.phase == NodePhase::Done)
                .all(|n| n.message.is_empty()),
            "past the budget, messages are left out, done nodes' first"
        );
    }

    #[test]
    fn long_lists_and_messages_are_cut_with_a_count_or_an_ellipsis() {
        let names: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
        assert_eq!(some_of(&names, 3), "n0, n1, n2 and 9 more");
        assert_eq!(some_of(&names[..2], 3), "n0, n1");
        assert_eq!(truncate("héllo wörld", 8), "héll…", "8 bytes, é is two");
        assert_eq!(truncate("short", 8), "short");
    }
}
