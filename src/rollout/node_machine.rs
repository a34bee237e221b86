//! The per-node state machine: from what is recorded about a node and what is observed
//! now, the next phase and the one action that gets there. Pure, with injected time.
//!
//! Pending → Cordoned → Drained → ZtunnelReplaced → ZtunnelReady → Verified → Done, or
//! Failed (with a reason) or Skipped. The shell executes the action, then records the
//! phase; every step is idempotent, so a crash between the two repeats the action safely
//! (a second cordon, a second delete of an already deleted pod) and never loses what the
//! node looked like before we touched it.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum NodePhase {
    Pending,
    Cordoned,
    Drained,
    ZtunnelReplaced,
    ZtunnelReady,
    Verified,
    Done,
    Failed,
    Skipped,
}

impl NodePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            NodePhase::Pending => "Pending",
            NodePhase::Cordoned => "Cordoned",
            NodePhase::Drained => "Drained",
            NodePhase::ZtunnelReplaced => "ZtunnelReplaced",
            NodePhase::ZtunnelReady => "ZtunnelReady",
            NodePhase::Verified => "Verified",
            NodePhase::Done => "Done",
            NodePhase::Failed => "Failed",
            NodePhase::Skipped => "Skipped",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            NodePhase::Done | NodePhase::Failed | NodePhase::Skipped
        )
    }
}

/// What the rollout recorded about the node (persisted in its status and, for
/// `was_unschedulable`, in an annotation on the node before it is cordoned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub phase: NodePhase,
    /// When the node entered `phase`.
    pub since: Timestamp,
    /// Whether the node was already unschedulable before we cordoned it: then we never
    /// uncordon it.
    pub was_unschedulable: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZtunnelPod {
    pub name: String,
    pub uid: String,
    pub revision_hash: String,
    pub ready: bool,
    pub terminating: bool,
    pub created: Timestamp,
}

/// What the shell observes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub exists: bool,
    pub unschedulable: bool,
    /// `was_unschedulable` from our ownership annotation, if the node carries it.
    pub annotated_was_unschedulable: Option<bool>,
    /// The node's ztunnel pods (usually one; two while one terminates).
    pub ztunnel_pods: Vec<ZtunnelPod>,
    /// The outcome of this node's drain, once it ended: Ok, or Err with the reason.
    pub drain: Option<Result<(), String>>,
    /// The verdict of the health gates, once taken: Ok with what was seen, or Err with
    /// the failed check, its value and its threshold.
    pub verification: Option<Result<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The DaemonSet's current ControllerRevision hash.
    pub revision_hash: String,
    /// Replace ztunnel even on nodes already on the current revision.
    pub cycle_current: bool,
    pub ztunnel_ready_timeout: Duration,
    /// Release (uncordon, if we cordoned it) a node when it fails, instead of leaving it
    /// cordoned for inspection.
    pub uncordon_failed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Annotate the node with the rollout and `was_unschedulable`, then cordon it.
    RecordAndCordon {
        was_unschedulable: bool,
    },
    Drain,
    DeleteZtunnelPod {
        name: String,
        uid: String,
    },
    /// Nothing to do until a watch event, or `until` at the latest.
    Wait {
        until: Option<Timestamp>,
    },
    /// Run the health gates.
    Verify,
    /// Remove our annotation; uncordon only if we cordoned the node.
    Release {
        uncordon: bool,
    },
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub phase: NodePhase,
    pub action: Action,
    pub message: String,
}

fn step(phase: NodePhase, action: Action, message: impl Into<String>) -> Step {
    Step {
        phase,
        action,
        message: message.into(),
    }
}

/// Delete `pod` (by UID), entering ZtunnelReplaced.
fn delete_pod(pod: &ZtunnelPod, verb: &str) -> Step {
    step(
        NodePhase::ZtunnelReplaced,
        Action::DeleteZtunnelPod {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        },
        format!("{verb} ztunnel pod {}", pod.name),
    )
}

fn current<'a>(facts: &'a NodeFacts, target: &Target) -> Option<&'a ZtunnelPod> {
    facts
        .ztunnel_pods
        .iter()
        .find(|p| !p.terminating && p.revision_hash == target.revision_hash)
}

fn outdated<'a>(facts: &'a NodeFacts, target: &Target) -> Option<&'a ZtunnelPod> {
    facts
        .ztunnel_pods
        .iter()
        .find(|p| !p.terminating && p.revision_hash != target.revision_hash)
}

/// `was_unschedulable` as first recorded: the record, else our annotation on the node.
fn prior(record: &NodeRecord, facts: &NodeFacts) -> Option<bool> {
    record
        .was_unschedulable
        .or(facts.annotated_was_unschedulable)
}

/// Enter Failed: the node stays as it is, or is released if the settings say so.
fn fail(record: &NodeRecord, facts: &NodeFacts, target: &Target, message: String) -> Step {
    let action = if target.uncordon_failed {
        Action::Release {
            uncordon: prior(record, facts) == Some(false),
        }
    } else {
        Action::None
    };
    step(NodePhase::Failed, action, message)
}

/// The next phase and action for a node.
pub fn next_step(record: &NodeRecord, facts: &NodeFacts, target: &Target, now: Timestamp) -> Step {
    use NodePhase::*;
    if record.phase.is_terminal() {
        return step(record.phase, Action::None, "");
    }
    if !facts.exists {
        return step(Skipped, Action::None, "the node was deleted");
    }
    match record.phase {
        Pending => {
            // A crash after cordoning but before recording leaves our annotation: trust it,
            // not the node's current (cordoned by us) state.
            if let Some(was) = facts.annotated_was_unschedulable {
                return step(
                    Cordoned,
                    Action::RecordAndCordon {
                        was_unschedulable: was,
                    },
                    "cordoned",
                );
            }
            if !target.cycle_current
                && current(facts, target).is_some()
                && outdated(facts, target).is_none()
            {
                return step(
                    Skipped,
                    Action::None,
                    format!("ztunnel already on revision {}", target.revision_hash),
                );
            }
            step(
                Cordoned,
                Action::RecordAndCordon {
                    was_unschedulable: facts.unschedulable,
                },
                if facts.unschedulable {
                    "already cordoned by someone else; it will stay cordoned"
                } else {
                    "cordoned"
                },
            )
        }
        Cordoned => match &facts.drain {
            None => step(Cordoned, Action::Drain, "draining"),
            Some(Ok(())) => step(Drained, Action::None, "drained"),
            Some(Err(reason)) => fail(record, facts, target, format!("drain failed: {reason}")),
        },
        Drained => {
            if let Some(old) = outdated(facts, target) {
                return delete_pod(old, "replacing");
            }
            // Cycling: replace the pod that predates the drain, never one created since
            // (after a crash between the delete and recording it, that is the new one).
            if target.cycle_current
                && let Some(pod) = current(facts, target)
                && pod.created < record.since
            {
                return delete_pod(pod, "cycling");
            }
            step(
                ZtunnelReplaced,
                Action::None,
                "waiting for the new ztunnel pod",
            )
        }
        ZtunnelReplaced => {
            if let Some(old) = outdated(facts, target) {
                // The delete was lost (or a crash came before it): delete again.
                return delete_pod(old, "replacing");
            }
            if current(facts, target).is_some_and(|p| p.ready) {
                return step(
                    ZtunnelReady,
                    Action::None,
                    format!("ztunnel Ready on revision {}", target.revision_hash),
                );
            }
            let timeout = k8s_openapi::jiff::SignedDuration::try_from(target.ztunnel_ready_timeout)
                .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
            let deadline = record.since.checked_add(timeout).unwrap_or(Timestamp::MAX);
            if now >= deadline {
                return fail(
                    record,
                    facts,
                    target,
                    format!(
                        "no Ready ztunnel pod on revision {} within {}s",
                        target.revision_hash,
                        target.ztunnel_ready_timeout.as_secs()
                    ),
                );
            }
            step(
                ZtunnelReplaced,
                Action::Wait {
                    until: Some(deadline),
                },
                "waiting for the new ztunnel pod to be Ready",
            )
        }
        ZtunnelReady => match &facts.verification {
            None => step(ZtunnelReady, Action::Verify, "verifying"),
            Some(Ok(note)) if note.is_empty() => step(Verified, Action::None, "verified"),
            Some(Ok(note)) => step(Verified, Action::None, format!("verified: {note}")),
            Some(Err(check)) => fail(
                record,
                facts,
                target,
                format!("verification failed: {check}"),
            ),
        },
        Verified => {
            let uncordon = prior(record, facts) == Some(false);
            step(
                Done,
                Action::Release { uncordon },
                if uncordon {
                    "uncordoned"
                } else {
                    "left cordoned: it was cordoned before the rollout"
                },
            )
        }
        Done | Failed | Skipped => step(record.phase, Action::None, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        format!("2026-11-29T10:{s}Z").parse().unwrap()
    }

    fn target() -> Target {
        Target {
            revision_hash: "new".into(),
            cycle_current: false,
            ztunnel_ready_timeout: Duration::from_secs(120),
            uncordon_failed: false,
        }
    }

    fn pod(hash: &str, ready: bool) -> ZtunnelPod {
        ZtunnelPod {
            name: format!("ztunnel-{hash}"),
            uid: format!("uid-{hash}"),
            revision_hash: hash.into(),
            ready,
            terminating: false,
            created: t("00:00") - k8s_openapi::jiff::SignedDuration::from_hours(1),
        }
    }

    fn facts(pods: Vec<ZtunnelPod>) -> NodeFacts {
        NodeFacts {
            exists: true,
            unschedulable: false,
            annotated_was_unschedulable: None,
            ztunnel_pods: pods,
            drain: None,
            verification: None,
        }
    }

    fn record(phase: NodePhase) -> NodeRecord {
        NodeRecord {
            phase,
            since: t("00:00"),
            was_unschedulable: Some(false),
        }
    }

    /// Runs the machine, applying each action to the facts the way the cluster would.
    fn run(
        mut facts: NodeFacts,
        pending: NodeRecord,
    ) -> (Vec<NodePhase>, Vec<Action>, NodeFacts, NodeRecord) {
        let mut rec = pending;
        let (mut phases, mut actions) = (vec![rec.phase], vec![]);
        for _ in 0..20 {
            let s = next_step(&rec, &facts, &target(), t("00:10"));
            match &s.action {
                Action::RecordAndCordon { was_unschedulable } => {
                    facts.annotated_was_unschedulable = Some(*was_unschedulable);
                    facts.unschedulable = true;
                    rec.was_unschedulable = Some(*was_unschedulable);
                }
                Action::Drain => facts.drain = Some(Ok(())),
                Action::DeleteZtunnelPod { .. } => facts.ztunnel_pods = vec![pod("new", true)],
                Action::Verify => facts.verification = Some(Ok(String::new())),
                Action::Release { uncordon } => {
                    facts.annotated_was_unschedulable = None;
                    if *uncordon {
                        facts.unschedulable = false;
                    }
                }
                Action::Wait { .. } | Action::None => {}
            }
            if s.action != Action::None {
                actions.push(s.action.clone());
            }
            if s.phase != rec.phase {
                rec.phase = s.phase;
                phases.push(s.phase);
            }
            if rec.phase.is_terminal() {
                break;
            }
        }
        (phases, actions, facts, rec)
    }

    #[test]
    fn a_node_goes_through_every_phase_and_ends_uncordoned() {
        use NodePhase::*;
        let pending = NodeRecord {
            phase: Pending,
            since: t("00:00"),
            was_unschedulable: None,
        };
        let (phases, actions, facts, _) = run(facts(vec![pod("old", true)]), pending);
        assert_eq!(
            phases,
            [
                Pending,
                Cordoned,
                Drained,
                ZtunnelReplaced,
                ZtunnelReady,
                Verified,
                Done
            ]
        );
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::DeleteZtunnelPod { .. }))
                .count(),
            1
        );
        assert!(!facts.unschedulable, "we cordoned it, so we uncordon it");
        assert_eq!(
            facts.annotated_was_unschedulable, None,
            "our annotation is removed"
        );
    }

    #[test]
    fn a_node_cordoned_by_someone_else_stays_cordoned() {
        let mut f = facts(vec![pod("old", true)]);
        f.unschedulable = true;
        let pending = NodeRecord {
            phase: NodePhase::Pending,
            since: t("00:00"),
            was_unschedulable: None,
        };
        let (phases, actions, facts, _) = run(f, pending);
        assert_eq!(phases.last(), Some(&NodePhase::Done));
        assert!(actions.contains(&Action::Release { uncordon: false }));
        assert!(facts.unschedulable);
    }

    #[test]
    fn a_crash_after_cordoning_does_not_forget_the_node_was_schedulable() {
        // We cordoned (annotation says it was schedulable) but crashed before recording.
        let mut f = facts(vec![pod("old", true)]);
        f.unschedulable = true;
        f.annotated_was_unschedulable = Some(false);
        let pending = NodeRecord {
            phase: NodePhase::Pending,
            since: t("00:00"),
            was_unschedulable: None,
        };
        let s = next_step(&pending, &f, &target(), t("00:01"));
        assert_eq!(
            s.action,
            Action::RecordAndCordon {
                was_unschedulable: false
            }
        );
        let (_, actions, facts, _) = run(f, pending);
        assert!(actions.contains(&Action::Release { uncordon: true }));
        assert!(!facts.unschedulable);
    }

    #[test]
    fn cycling_replaces_the_pod_that_predates_the_drain_once() {
        let cycle = Target {
            cycle_current: true,
            ..target()
        };
        let rec = NodeRecord {
            phase: NodePhase::Drained,
            since: t("00:05"),
            was_unschedulable: Some(false),
        };
        let old_current = pod("new", true);
        let s = next_step(&rec, &facts(vec![old_current.clone()]), &cycle, t("00:06"));
        assert!(
            matches!(s.action, Action::DeleteZtunnelPod { ref uid, .. } if *uid == old_current.uid)
        );
        let mut replacement = pod("new", false);
        replacement.uid = "uid-replacement".into();
        replacement.created = t("00:07");
        let s = next_step(&rec, &facts(vec![replacement]), &cycle, t("00:08"));
        assert_eq!(
            (s.phase, s.action),
            (NodePhase::ZtunnelReplaced, Action::None)
        );
    }

    #[test]
    fn nodes_on_the_current_revision_are_skipped_unless_cycled() {
        let f = facts(vec![pod("new", true)]);
        let pending = NodeRecord {
            phase: NodePhase::Pending,
            since: t("00:00"),
            was_unschedulable: None,
        };
        let s = next_step(&pending, &f, &target(), t("00:01"));
        assert_eq!(s.phase, NodePhase::Skipped);
        assert!(s.message.contains("already on revision new"));
        let cycle = Target {
            cycle_current: true,
            ..target()
        };
        assert_eq!(
            next_step(&pending, &f, &cycle, t("00:01")).phase,
            NodePhase::Cordoned
        );
    }

    #[test]
    fn resuming_after_a_crash_never_deletes_the_new_pod() {
        // Crash after deleting the old pod but before recording ZtunnelReplaced.
        let rec = NodeRecord {
            phase: NodePhase::Drained,
            since: t("00:05"),
            was_unschedulable: Some(false),
        };
        let mut f = facts(vec![pod("new", false)]);
        f.unschedulable = true;
        let s = next_step(&rec, &f, &target(), t("00:06"));
        assert_eq!(s.phase, NodePhase::ZtunnelReplaced);
        assert_eq!(s.action, Action::None);
        // And a lost delete is repeated.
        let rec = NodeRecord {
            phase: NodePhase::ZtunnelReplaced,
            ..rec
        };
        let f = facts(vec![pod("old", true)]);
        assert!(matches!(
            next_step(&rec, &f, &target(), t("00:06")).action,
            Action::DeleteZtunnelPod { .. }
        ));
    }

    #[test]
    fn failures_carry_their_reason() {
        let mut f = facts(vec![pod("old", true)]);
        f.drain = Some(Err(
            "PDB shop/api allows 0 disruptions (needs 1 healthy, has 1)".into(),
        ));
        let s = next_step(&record(NodePhase::Cordoned), &f, &target(), t("00:01"));
        assert_eq!(s.phase, NodePhase::Failed);
        assert!(s.message.contains("PDB shop/api"));

        let rec = NodeRecord {
            phase: NodePhase::ZtunnelReplaced,
            since: t("00:00"),
            was_unschedulable: Some(false),
        };
        let waiting = next_step(&rec, &facts(vec![pod("new", false)]), &target(), t("01:59"));
        assert_eq!(
            waiting.action,
            Action::Wait {
                until: Some(t("02:00"))
            }
        );
        let late = next_step(&rec, &facts(vec![pod("new", false)]), &target(), t("02:00"));
        assert_eq!(late.phase, NodePhase::Failed);
        assert!(late.message.contains("within 120s"), "{}", late.message);

        let mut f = facts(vec![pod("new", true)]);
        f.verification = Some(Err(
            "istio_tcp_connections_failed_total rate 3.1/s > 0.5/s".into()
        ));
        let s = next_step(&record(NodePhase::ZtunnelReady), &f, &target(), t("00:01"));
        assert_eq!(s.phase, NodePhase::Failed);
        assert!(s.message.contains("verification failed: istio_tcp"));
        assert_eq!(
            s.action,
            Action::None,
            "a failed node stays cordoned by default"
        );
    }

    #[test]
    fn failed_nodes_are_released_when_the_settings_say_so() {
        let release = Target {
            uncordon_failed: true,
            ..target()
        };
        let mut f = facts(vec![pod("new", true)]);
        f.verification = Some(Err("waypoints: not Ready".into()));
        let s = next_step(&record(NodePhase::ZtunnelReady), &f, &release, t("00:01"));
        assert_eq!(
            (s.phase, s.action),
            (NodePhase::Failed, Action::Release { uncordon: true })
        );
        // Never uncordon a node someone else had cordoned before us.
        let mut rec = record(NodePhase::Cordoned);
        rec.was_unschedulable = Some(true);
        let mut f = facts(vec![pod("old", true)]);
        f.drain = Some(Err("timed out".into()));
        let s = next_step(&rec, &f, &release, t("00:01"));
        assert_eq!(
            (s.phase, s.action),
            (NodePhase::Failed, Action::Release { uncordon: false })
        );
    }

    #[test]
    fn the_verified_message_says_what_the_gates_saw() {
        let mut f = facts(vec![pod("new", true)]);
        f.verification = Some(Ok("waypoints: 2 Ready".into()));
        let s = next_step(&record(NodePhase::ZtunnelReady), &f, &target(), t("00:01"));
        assert_eq!(s.phase, NodePhase::Verified);
        assert_eq!(s.message, "verified: waypoints: 2 Ready");
    }

    #[test]
    fn deleted_nodes_are_skipped_and_terminal_phases_stay() {
        let mut f = facts(vec![]);
        f.exists = false;
        assert_eq!(
            next_step(&record(NodePhase::Cordoned), &f, &target(), t("00:01")).phase,
            NodePhase::Skipped
        );
        for phase in [NodePhase::Done, NodePhase::Failed, NodePhase::Skipped] {
            let s = next_step(
                &record(phase),
                &facts(vec![pod("old", true)]),
                &target(),
                t("00:01"),
            );
            assert_eq!((s.phase, s.action), (phase, Action::None));
        }
    }
}
