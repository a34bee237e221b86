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
        rolling_back_from: None,
        connections_gate: None,
        bake: false,
        cni: None,
    }
}

fn pod(hash: &str, ready: bool) -> ZtunnelPod {
    ZtunnelPod {
        name: format!("ztunnel-{hash}"),
        uid: format!("uid-{hash}"),
        revision_hash: hash.into(),
        ready,
        terminating: false,
        created: t("00:00") - SignedDuration::from_hours(1),
    }
}

fn facts(pods: Vec<ZtunnelPod>) -> NodeFacts<'static> {
    NodeFacts::new(pods)
}

/// Facts of a node this rollout cordoned (it was schedulable before).
fn ours(pods: Vec<ZtunnelPod>) -> NodeFacts<'static> {
    NodeFacts {
        unschedulable: true,
        owner: Owner::Us {
            was_unschedulable: false,
        },
        ..facts(pods)
    }
}

fn record(phase: NodePhase) -> NodeRecord {
    NodeRecord {
        phase,
        since: t("00:00"),
        was_unschedulable: Some(false),
    }
}

fn pending() -> NodeRecord {
    NodeRecord {
        phase: NodePhase::Pending,
        since: t("00:00"),
        was_unschedulable: None,
    }
}

/// Runs the machine, applying each step to the facts the way the cluster would.
fn run(facts: NodeFacts, rec: NodeRecord) -> (Vec<NodePhase>, Vec<Call>, NodeFacts) {
    run_with(&target(), facts, rec, GateProgress::Passed(String::new()))
}

/// `run`, with `target`, and the bake (if any) ending in `baked`.
fn run_with<'a>(
    target: &Target,
    mut facts: NodeFacts<'a>,
    mut rec: NodeRecord,
    baked: GateProgress,
) -> (Vec<NodePhase>, Vec<Call>, NodeFacts<'a>) {
    let (mut phases, mut calls) = (vec![rec.phase], vec![]);
    for _ in 0..20 {
        let s = next_step(&rec, &facts, target, t("00:10"));
        match &s {
            Step::Call { call, .. } => {
                match call {
                    Call::Cordon { was_unschedulable } => {
                        facts.owner = Owner::Us {
                            was_unschedulable: *was_unschedulable,
                        };
                        facts.unschedulable = true;
                        rec.was_unschedulable = Some(*was_unschedulable);
                    }
                    Call::DeleteZtunnelPod { .. } => {
                        facts.ztunnel_pods = vec![pod(&target.revision_hash, true)].into()
                    }
                    Call::DeleteCniPod { .. } => {
                        let hash = target.cni.as_ref().map(|c| c.revision_hash.clone());
                        if let (Some(cni), Some(hash)) = (facts.cni.as_mut(), hash) {
                            cni.pods = vec![pod(&hash, true)].into();
                        }
                    }
                    Call::Release { uncordon } => {
                        facts.owner = Owner::Nobody;
                        if *uncordon {
                            facts.unschedulable = false;
                        }
                    }
                    Call::Uncordon => {
                        facts.owner = Owner::Us {
                            was_unschedulable: true,
                        };
                        facts.unschedulable = false;
                    }
                }
                // Each phase's drain and gates are its own (as the pass keeps them).
                if matches!(call, Call::Cordon { .. }) {
                    facts.drain = DrainProgress::NotStarted;
                }
                if matches!(call, Call::Uncordon) {
                    facts.verification = GateProgress::NotStarted;
                }
                calls.push(call.clone());
            }
            Step::Task {
                task: Task::Drain, ..
            } => facts.drain = DrainProgress::Drained,
            Step::Task {
                task: Task::Gates, ..
            } => facts.verification = GateProgress::Passed(String::new()),
            Step::Task {
                task: Task::Bake, ..
            } => facts.verification = baked.clone(),
            Step::Task {
                task: Task::Connections,
                ..
            } => facts.connections = ConnectionsProgress::Closed(String::new()),
            Step::Now { .. } | Step::Wait { .. } => {}
        }
        let phase = s.phase_after(rec.phase);
        if phase != rec.phase {
            rec.phase = phase;
            phases.push(phase);
        }
        if rec.phase.is_terminal() {
            break;
        }
    }
    (phases, calls, facts)
}

#[test]
fn a_node_goes_through_every_phase_and_ends_uncordoned() {
    use NodePhase::*;
    let (phases, calls, facts) = run(facts(vec![pod("old", true)]), pending());
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
        calls
            .iter()
            .filter(|c| matches!(c, Call::DeleteZtunnelPod { .. }))
            .count(),
        1
    );
    assert!(!facts.unschedulable, "we cordoned it, so we uncordon it");
    assert_eq!(facts.owner, Owner::Nobody, "our annotation is removed");
}

#[test]
fn a_node_cordoned_by_someone_else_stays_cordoned() {
    let mut f = facts(vec![pod("old", true)]);
    f.unschedulable = true;
    let (phases, calls, facts) = run(f, pending());
    assert_eq!(phases.last(), Some(&NodePhase::Done));
    assert!(calls.contains(&Call::Release { uncordon: false }));
    assert!(facts.unschedulable);
}

#[test]
fn a_crash_after_cordoning_does_not_forget_the_node_was_schedulable() {
    // We cordoned (annotation says it was schedulable) but crashed before recording.
    let f = ours(vec![pod("old", true)]);
    let s = next_step(&pending(), &f, &target(), t("00:01"));
    assert!(matches!(
        s,
        Step::Call {
            call: Call::Cordon {
                was_unschedulable: false
            },
            then: NodePhase::Cordoned,
            ..
        }
    ));
    let (_, calls, facts) = run(f, pending());
    assert!(calls.contains(&Call::Release { uncordon: true }));
    assert!(!facts.unschedulable);
}

#[test]
fn a_node_another_rollout_owns_is_never_touched() {
    let mut f = facts(vec![pod("old", true)]);
    f.unschedulable = true;
    f.owner = Owner::Other("other".into());
    let s = next_step(&pending(), &f, &target(), t("00:01"));
    assert!(matches!(&s, Step::Wait { message, .. } if message.contains("owned by rollout other")));
    assert!(!starts(&pending(), &s));
}

#[test]
fn nodes_the_daemonset_does_not_run_on_are_skipped_untouched() {
    let mut f = facts(vec![]);
    f.placement = Placement::Excluded("nodeSelector kubernetes.io/os=linux".into());
    let s = next_step(&pending(), &f, &target(), t("00:01"));
    assert!(
        matches!(&s, Step::Now { phase: NodePhase::Skipped, message } if message.contains("does not run on this node"))
    );
}

#[test]
fn a_node_without_a_ready_ztunnel_pod_waits_uncordoned_then_fails_untouched() {
    let f = facts(vec![pod("old", false)]);
    let s = next_step(&pending(), &f, &target(), t("00:01"));
    assert_eq!(
        s,
        Step::Wait {
            until: Some(t("02:01")),
            message: "not started: ztunnel pod ztunnel-old is not Ready".into()
        }
    );
    assert!(!starts(&pending(), &s));
    let mut f = facts(vec![]);
    f.waiting_for_ztunnel_since = Some(t("00:00"));
    let s = next_step(&pending(), &f, &target(), t("02:00"));
    assert!(
        matches!(&s, Step::Now { phase: NodePhase::Failed, message } if message == "no ztunnel pod on the node for 120s: not cordoned"),
        "{s:?}"
    );
}

#[test]
fn a_node_uncordoned_mid_sequence_is_cordoned_and_drained_again_before_ztunnel_goes() {
    for phase in [
        NodePhase::Cordoned,
        NodePhase::Drained,
        NodePhase::ZtunnelReplaced,
    ] {
        let mut f = ours(vec![pod("old", true)]);
        f.unschedulable = false;
        f.drain = DrainProgress::Drained;
        let s = next_step(&record(phase), &f, &target(), t("00:01"));
        assert!(
            matches!(
                &s,
                Step::Call {
                    call: Call::Cordon {
                        was_unschedulable: false
                    },
                    then: NodePhase::Cordoned,
                    message,
                } if message.contains("uncordoned by someone else")
            ),
            "{phase:?}: {s:?}"
        );
    }
    // Drained and uncordoned: the pod is never deleted on the schedulable node.
    let mut f = ours(vec![pod("old", true)]);
    f.unschedulable = false;
    let s = next_step(&record(NodePhase::Drained), &f, &target(), t("00:01"));
    assert!(!matches!(
        s,
        Step::Call {
            call: Call::DeleteZtunnelPod { .. },
            ..
        }
    ));
    // Someone keeps uncordoning it: fail, releasing our annotation, ztunnel untouched.
    f.recordons = MAX_RECORDONS;
    let s = next_step(&record(NodePhase::Drained), &f, &target(), t("00:01"));
    assert!(matches!(
        s,
        Step::Call {
            call: Call::Release { uncordon: false },
            then: NodePhase::Failed,
            ..
        }
    ));
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
    let s = next_step(&rec, &ours(vec![old_current.clone()]), &cycle, t("00:06"));
    assert!(
        matches!(s, Step::Call { call: Call::DeleteZtunnelPod { ref uid, .. }, .. } if *uid == old_current.uid)
    );
    let mut replacement = pod("new", false);
    replacement.uid = "uid-replacement".into();
    replacement.created = t("00:07");
    let s = next_step(&rec, &ours(vec![replacement]), &cycle, t("00:08"));
    assert!(matches!(
        s,
        Step::Now {
            phase: NodePhase::ZtunnelReplaced,
            ..
        }
    ));
}

#[test]
fn nodes_on_the_current_revision_are_skipped_unless_cycled() {
    let f = facts(vec![pod("new", true)]);
    let s = next_step(&pending(), &f, &target(), t("00:01"));
    assert_eq!(s.phase_after(NodePhase::Pending), NodePhase::Skipped);
    assert!(s.message().contains("already on revision new"));
    let cycle = Target {
        cycle_current: true,
        ..target()
    };
    assert!(starts(
        &pending(),
        &next_step(&pending(), &f, &cycle, t("00:01"))
    ));
}

#[test]
fn resuming_after_a_crash_never_deletes_the_new_pod() {
    // Crash after deleting the old pod but before recording ZtunnelReplaced.
    let rec = NodeRecord {
        phase: NodePhase::Drained,
        since: t("00:05"),
        was_unschedulable: Some(false),
    };
    let s = next_step(&rec, &ours(vec![pod("new", false)]), &target(), t("00:06"));
    assert!(matches!(
        s,
        Step::Now {
            phase: NodePhase::ZtunnelReplaced,
            ..
        }
    ));
    // And a lost delete is repeated.
    let rec = NodeRecord {
        phase: NodePhase::ZtunnelReplaced,
        ..rec
    };
    assert!(matches!(
        next_step(&rec, &ours(vec![pod("old", true)]), &target(), t("00:06")),
        Step::Call {
            call: Call::DeleteZtunnelPod { .. },
            ..
        }
    ));
}

#[test]
fn api_trouble_during_a_drain_waits_and_drains_again() {
    let mut f = ours(vec![pod("old", true)]);
    f.drain = DrainProgress::RetryAt(t("00:30"), "503 from the API server".into());
    let s = next_step(&record(NodePhase::Cordoned), &f, &target(), t("00:01"));
    assert!(matches!(s, Step::Wait { until: Some(u), .. } if u == t("00:30")));
}

#[test]
fn failures_carry_their_reason() {
    let mut f = ours(vec![pod("old", true)]);
    f.drain =
        DrainProgress::Blocked("PDB shop/api allows 0 disruptions (needs 1 healthy, has 1)".into());
    let s = next_step(&record(NodePhase::Cordoned), &f, &target(), t("00:01"));
    assert_eq!(s.phase_after(NodePhase::Cordoned), NodePhase::Failed);
    assert!(s.message().contains("PDB shop/api"));

    let rec = record(NodePhase::ZtunnelReplaced);
    let waiting = next_step(&rec, &ours(vec![pod("new", false)]), &target(), t("01:59"));
    assert!(matches!(waiting, Step::Wait { until: Some(u), .. } if u == t("02:00")));
    let late = next_step(&rec, &ours(vec![pod("new", false)]), &target(), t("02:00"));
    assert_eq!(late.phase_after(rec.phase), NodePhase::Failed);
    assert!(late.message().contains("within 120s"), "{late:?}");

    let mut f = ours(vec![pod("new", true)]);
    f.verification =
        GateProgress::Failed("istio_tcp_connections_failed_total rate 3.1/s > 0.5/s".into());
    let s = next_step(&record(NodePhase::ZtunnelReady), &f, &target(), t("00:01"));
    assert!(
        matches!(&s, Step::Now { phase: NodePhase::Failed, message } if message.contains("verification failed: istio_tcp")),
        "a failed node stays cordoned by default: {s:?}"
    );
}

#[test]
fn failed_nodes_are_released_when_the_settings_say_so() {
    let release = Target {
        uncordon_failed: true,
        ..target()
    };
    let mut f = ours(vec![pod("new", true)]);
    f.verification = GateProgress::Failed("waypoints: not Ready".into());
    let s = next_step(&record(NodePhase::ZtunnelReady), &f, &release, t("00:01"));
    assert!(matches!(
        s,
        Step::Call {
            call: Call::Release { uncordon: true },
            then: NodePhase::Failed,
            ..
        }
    ));
    // Never uncordon a node someone else had cordoned before us (as our annotation says).
    let mut rec = record(NodePhase::Cordoned);
    rec.was_unschedulable = Some(true);
    let mut f = ours(vec![pod("old", true)]);
    f.owner = Owner::Us {
        was_unschedulable: true,
    };
    f.drain = DrainProgress::Blocked("timed out".into());
    let s = next_step(&rec, &f, &release, t("00:01"));
    assert!(matches!(
        s,
        Step::Call {
            call: Call::Release { uncordon: false },
            then: NodePhase::Failed,
            ..
        }
    ));
}

#[test]
fn the_verified_message_says_what_the_gates_saw() {
    let mut f = ours(vec![pod("new", true)]);
    f.verification = GateProgress::Passed("waypoints: 2 Ready".into());
    let s = next_step(&record(NodePhase::ZtunnelReady), &f, &target(), t("00:01"));
    assert_eq!(
        s,
        Step::Now {
            phase: NodePhase::Verified,
            message: "verified: waypoints: 2 Ready".into()
        }
    );
    f.verification = GateProgress::Waiting("soaking until 10:05".into());
    let s = next_step(&record(NodePhase::ZtunnelReady), &f, &target(), t("00:01"));
    assert_eq!(
        s,
        Step::Task {
            task: Task::Gates,
            message: "verifying: soaking until 10:05".into()
        }
    );
}

#[test]
fn deleted_nodes_are_skipped_and_terminal_phases_stay() {
    let mut f = facts(vec![]);
    f.exists = false;
    assert_eq!(
        next_step(&record(NodePhase::Cordoned), &f, &target(), t("00:01"))
            .phase_after(NodePhase::Cordoned),
        NodePhase::Skipped
    );
    for phase in [NodePhase::Done, NodePhase::Failed, NodePhase::Skipped] {
        let s = next_step(
            &record(phase),
            &facts(vec![pod("old", true)]),
            &target(),
            t("00:01"),
        );
        assert_eq!(s.phase_after(phase), phase);
        assert!(matches!(s, Step::Wait { until: None, .. }));
    }
}

#[test]
fn the_rollouts_own_events_become_steps() {
    // A target change sends finished nodes again, not failed or in-flight ones.
    assert!(retarget(&record(NodePhase::Done)).is_some());
    assert!(retarget(&record(NodePhase::Skipped)).is_some());
    assert!(retarget(&record(NodePhase::Failed)).is_none());
    assert!(retarget(&record(NodePhase::Drained)).is_none());
    // A node replaced towards the previous revision has it replaced again.
    assert_eq!(
        retarget(&record(NodePhase::ZtunnelReady)).map(|s| s.phase_after(NodePhase::ZtunnelReady)),
        Some(NodePhase::Drained)
    );
    // A rollback sends a failed node whose ztunnel was replaced through the sequence,
    // and only releases one whose ztunnel never was.
    let failed = record(NodePhase::Failed);
    assert_eq!(
        roll_back(&failed, &ours(vec![pod("new", true)]), Some("new"), None)
            .map(|s| s.phase_after(failed.phase)),
        Some(NodePhase::Pending)
    );
    assert_eq!(
        roll_back(&failed, &ours(vec![pod("old", true)]), Some("new"), None)
            .map(|s| s.phase_after(failed.phase)),
        Some(NodePhase::Verified)
    );
    // The end of the rollout releases what it still owns, and nothing else.
    assert!(matches!(
        finish(&failed, &ours(vec![]), "the rollout completed"),
        Some(Step::Call {
            call: Call::Release { uncordon: true },
            then: NodePhase::Failed,
            ..
        })
    ));
    assert_eq!(
        finish(&failed, &facts(vec![]), "the rollout completed"),
        None
    );
    // Blockers found before the cordon fail the node untouched.
    assert!(matches!(
        refuse("pod shop/api-0 is covered by 2 PDBs"),
        Step::Now {
            phase: NodePhase::Failed,
            ..
        }
    ));
}

#[test]
fn a_rollback_takes_only_the_nodes_on_the_failed_revision() {
    let back = Target {
        revision_hash: "old".into(),
        rolling_back_from: Some("new".into()),
        ..target()
    };
    let s = next_step(
        &pending(),
        &facts(vec![pod("new", true)]),
        &back,
        t("00:01"),
    );
    assert!(starts(&pending(), &s), "on the failed revision: goes back");
    let s = next_step(
        &pending(),
        &facts(vec![pod("older", true)]),
        &back,
        t("00:01"),
    );
    assert!(
        matches!(&s, Step::Now { phase: NodePhase::Skipped, message } if message.contains("not on the failed revision new")),
        "{s:?}"
    );
}

#[test]
fn a_node_no_longer_carrying_our_annotation_starts_over() {
    // A restart resumed from a status written before the node's release.
    let mut f = facts(vec![pod("new", true)]);
    f.unschedulable = false;
    let s = next_step(
        &record(NodePhase::ZtunnelReplaced),
        &f,
        &target(),
        t("00:01"),
    );
    assert_eq!(
        s.phase_after(NodePhase::ZtunnelReplaced),
        NodePhase::Pending
    );
    // Then it is found current, and skipped.
    let s = next_step(&pending(), &f, &target(), t("00:01"));
    assert_eq!(s.phase_after(NodePhase::Pending), NodePhase::Skipped);
}

#[test]
fn a_node_whose_annotation_is_gone_mid_sequence_starts_over_unless_it_was_verified() {
    // A new leader's status says Drained, but the annotation is gone: start over.
    let gone = facts(vec![pod("new", true)]);
    let step = next_step(&record(NodePhase::Drained), &gone, &target(), t("00:10"));
    assert!(
        matches!(
            &step,
            Step::Now {
                phase: NodePhase::Pending,
                ..
            }
        ),
        "{step:?}"
    );
    // Verified, then released by the last leader before its status write landed: done.
    let step = next_step(&record(NodePhase::Verified), &gone, &target(), t("00:10"));
    assert!(
        matches!(&step, Step::Now { phase: NodePhase::Done, message } if message.contains("released before the leader changed")),
        "{step:?}"
    );
}

fn gated(policy: OpenConnectionsPolicy) -> Target {
    Target {
        connections_gate: Some(policy),
        ..target()
    }
}

/// The old ztunnel is deleted only once the connections-drained gate has its verdict:
/// never while it runs, at once when nothing is open.
#[test]
fn the_old_ztunnel_waits_for_its_connections_then_is_deleted() {
    let mut f = ours(vec![pod("old", true)]);
    let gate = gated(OpenConnectionsPolicy::Proceed);
    for progress in [
        ConnectionsProgress::NotStarted,
        ConnectionsProgress::Waiting("3 connection(s) of shop/cart still closing".into()),
    ] {
        f.connections = progress;
        let s = next_step(&record(NodePhase::Drained), &f, &gate, t("00:10"));
        assert!(
            matches!(
                s,
                Step::Task {
                    task: Task::Connections,
                    ..
                }
            ),
            "{s:?}"
        );
    }
    f.connections = ConnectionsProgress::Closed("nothing open".into());
    let s = next_step(&record(NodePhase::Drained), &f, &gate, t("00:10"));
    assert!(
        matches!(
            &s,
            Step::Call {
                call: Call::DeleteZtunnelPod { uid, .. },
                then: NodePhase::ZtunnelReplaced,
                ..
            } if uid == "uid-old"
        ),
        "{s:?}"
    );
    // Without the gate the delete comes at once.
    f.connections = ConnectionsProgress::NotStarted;
    let s = next_step(&record(NodePhase::Drained), &f, &target(), t("00:10"));
    assert!(matches!(s, Step::Call { .. }), "{s:?}");
}

#[test]
fn open_connections_are_reset_and_named_or_fail_the_node_as_the_policy_says() {
    let mut f = ours(vec![pod("old", true)]);
    f.connections = ConnectionsProgress::Open("2 connection(s) of infra/log-agent".into());
    let s = next_step(
        &record(NodePhase::Drained),
        &f,
        &gated(OpenConnectionsPolicy::Proceed),
        t("00:10"),
    );
    match &s {
        Step::Call {
            call: Call::DeleteZtunnelPod { .. },
            message,
            ..
        } => assert!(
            message.contains("2 connection(s) of infra/log-agent"),
            "{message}"
        ),
        s => panic!("{s:?}"),
    }
    let s = next_step(
        &record(NodePhase::Drained),
        &f,
        &gated(OpenConnectionsPolicy::Fail),
        t("00:10"),
    );
    match &s {
        Step::Now {
            phase: NodePhase::Failed,
            message,
        } => assert!(
            message.contains("infra/log-agent") && message.contains("not replaced"),
            "{message}"
        ),
        s => panic!("{s:?}"),
    }
    // Failing with uncordonFailedNodes releases the node, still without a delete.
    let s = next_step(
        &record(NodePhase::Drained),
        &f,
        &Target {
            uncordon_failed: true,
            ..gated(OpenConnectionsPolicy::Fail)
        },
        t("00:10"),
    );
    assert!(
        matches!(
            s,
            Step::Call {
                call: Call::Release { uncordon: true },
                then: NodePhase::Failed,
                ..
            }
        ),
        "{s:?}"
    );
}

/// Whatever the gate said, a node someone uncordoned during the wait is cordoned (and
/// drained) again before its ztunnel is deleted.
#[test]
fn a_node_uncordoned_during_the_wait_is_cordoned_again_never_replaced_while_schedulable() {
    for progress in [
        ConnectionsProgress::Waiting("closing".into()),
        ConnectionsProgress::Closed(String::new()),
        ConnectionsProgress::Open("1 connection(s) of a/b".into()),
    ] {
        let mut f = ours(vec![pod("old", true)]);
        f.unschedulable = false;
        f.connections = progress.clone();
        let s = next_step(
            &record(NodePhase::Drained),
            &f,
            &gated(OpenConnectionsPolicy::Proceed),
            t("00:10"),
        );
        assert!(
            matches!(
                s,
                Step::Call {
                    call: Call::Cordon { .. },
                    then: NodePhase::Cordoned,
                    ..
                }
            ),
            "{progress:?}: {s:?}"
        );
    }
}

/// Cycling (same revision): the gate runs before the pod that predates the drain goes.
#[test]
fn cycling_waits_for_the_connections_too() {
    let mut f = ours(vec![pod("new", true)]);
    let target = Target {
        cycle_current: true,
        ..gated(OpenConnectionsPolicy::Proceed)
    };
    let s = next_step(&record(NodePhase::Drained), &f, &target, t("00:10"));
    assert!(
        matches!(
            s,
            Step::Task {
                task: Task::Connections,
                ..
            }
        ),
        "{s:?}"
    );
    f.connections = ConnectionsProgress::Closed(String::new());
    let s = next_step(&record(NodePhase::Drained), &f, &target, t("00:10"));
    assert!(
        matches!(
            &s,
            Step::Call { call: Call::DeleteZtunnelPod { uid, .. }, .. } if uid == "uid-new"
        ),
        "{s:?}"
    );
}

fn baking() -> Target {
    Target {
        bake: true,
        ..target()
    }
}

/// With a bake, the node is uncordoned first and released (never uncordoned again) once
/// the bake passed; its ztunnel is replaced once.
#[test]
fn a_node_bakes_uncordoned_before_it_is_released() {
    use NodePhase::*;
    let (phases, calls, facts) = run_with(
        &baking(),
        facts(vec![pod("old", true)]),
        pending(),
        GateProgress::Passed("3 active proxies".into()),
    );
    assert_eq!(
        phases,
        [
            Pending,
            Cordoned,
            Drained,
            ZtunnelReplaced,
            ZtunnelReady,
            Verified,
            Baking,
            Done
        ]
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::DeleteZtunnelPod { .. }))
            .count(),
        1
    );
    assert!(calls.contains(&Call::Uncordon));
    assert_eq!(calls.last(), Some(&Call::Release { uncordon: false }));
    assert!(!facts.unschedulable);
    assert_eq!(facts.owner, Owner::Nobody);
}

/// A failed bake cordons the node again, drains it and fails it, leaving it cordoned
/// (its pods on nodes known good) with ztunnel untouched after the uncordon.
#[test]
fn a_failed_bake_cordons_and_drains_the_node_again_then_fails_it() {
    use NodePhase::*;
    let (phases, calls, facts) = run_with(
        &baking(),
        facts(vec![pod("old", true)]),
        pending(),
        GateProgress::Failed("ztunnel proxies: 4 proxies pending".into()),
    );
    assert_eq!(
        phases,
        [
            Pending,
            Cordoned,
            Drained,
            ZtunnelReplaced,
            ZtunnelReady,
            Verified,
            Baking,
            Evacuating,
            Failed
        ]
    );
    let uncordon_at = calls.iter().position(|c| *c == Call::Uncordon).unwrap();
    assert_eq!(
        calls[uncordon_at + 1..],
        [Call::Cordon {
            was_unschedulable: false
        }],
        "after the uncordon: only the cordon again, no ztunnel delete, no release"
    );
    assert!(facts.unschedulable, "left cordoned for the failure policy");
    assert_eq!(
        facts.owner,
        Owner::Us {
            was_unschedulable: false
        }
    );
    // The reason reaches the failure.
    let mut f = facts.clone();
    f.drain = DrainProgress::Drained;
    let s = next_step(&record(Evacuating), &f, &baking(), t("00:10"));
    assert!(
        s.message().starts_with(
            "bake failed: ztunnel proxies: 4 proxies pending; cordoned again and drained"
        ),
        "{s:?}"
    );
}

/// Someone uncordons the node while it is evacuated: cordoned again (the drain starts
/// over), at most MAX_RECORDONS times; ztunnel is never touched.
#[test]
fn an_evacuating_node_uncordoned_by_someone_is_cordoned_again() {
    let mut f = ours(vec![pod("new", true)]);
    f.unschedulable = false;
    f.verification = GateProgress::Failed("x".into());
    let s = next_step(&record(NodePhase::Evacuating), &f, &baking(), t("00:10"));
    assert!(
        matches!(
            &s,
            Step::Call {
                call: Call::Cordon {
                    was_unschedulable: false
                },
                then: NodePhase::Evacuating,
                ..
            }
        ),
        "{s:?}"
    );
    f.recordons = MAX_RECORDONS;
    let s = next_step(&record(NodePhase::Evacuating), &f, &baking(), t("00:10"));
    assert_eq!(
        s.phase_after(NodePhase::Evacuating),
        NodePhase::Failed,
        "{s:?}"
    );
    assert!(!matches!(
        s,
        Step::Call {
            call: Call::DeleteZtunnelPod { .. },
            ..
        }
    ));
}

/// No bake for a node the rollout found cordoned (it stays cordoned: nothing comes
/// back to judge), nor during a rollback; a baking node someone cordons meanwhile is
/// cordoned "as it was" when its bake fails, and released without an uncordon.
#[test]
fn only_nodes_the_rollout_uncordons_bake_and_someone_elses_cordon_is_kept() {
    use NodePhase::*;
    let mut cordoned = facts(vec![pod("old", true)]);
    cordoned.unschedulable = true;
    let (phases, _, f) = run_with(&baking(), cordoned, pending(), GateProgress::NotStarted);
    assert_eq!(phases.last(), Some(&Done));
    assert!(!phases.contains(&Baking) && f.unschedulable);
    let rolling_back = Target {
        rolling_back_from: Some("new".into()),
        revision_hash: "old".into(),
        ..baking()
    };
    let (phases, _, _) = run_with(
        &rolling_back,
        facts(vec![pod("new", true)]),
        pending(),
        GateProgress::NotStarted,
    );
    assert!(
        !phases.contains(&Baking) && phases.last() == Some(&Done),
        "{phases:?}"
    );

    let mut f = ours(vec![pod("new", true)]);
    f.owner = Owner::Us {
        was_unschedulable: true,
    };
    f.unschedulable = true; // Someone cordoned it during the bake.
    f.verification = GateProgress::Failed("x".into());
    let s = next_step(&record(Baking), &f, &baking(), t("00:10"));
    assert!(
        matches!(
            &s,
            Step::Call {
                call: Call::Cordon {
                    was_unschedulable: true
                },
                ..
            }
        ),
        "{s:?}"
    );
    f.verification = GateProgress::Passed(String::new());
    let s = next_step(&record(Baking), &f, &baking(), t("00:10"));
    assert!(
        matches!(
            &s,
            Step::Call {
                call: Call::Release { uncordon: false },
                ..
            }
        ),
        "{s:?}"
    );
    let end = finish(&record(Baking), &f, "aborted").unwrap();
    assert!(
        matches!(
            end,
            Step::Call {
                call: Call::Release { uncordon: false },
                ..
            }
        ),
        "{end:?}"
    );
}

/// After a leader change: a baking node found cordoned by the rollout (its failed
/// bake's cordon, whose record was lost) is evacuated, never released cordoned; a
/// verified node found uncordoned and still ours (the bake's uncordon, record lost)
/// bakes; a bake turned off meanwhile releases the node as it is; a revision change
/// while evacuating drains on, then replaces ztunnel again.
#[test]
fn a_bake_resumes_from_what_the_node_shows() {
    let mut f = ours(vec![pod("new", true)]);
    f.verification = GateProgress::Passed(String::new());
    let s = next_step(&record(NodePhase::Baking), &f, &baking(), t("00:10"));
    assert_eq!(
        s.phase_after(NodePhase::Baking),
        NodePhase::Evacuating,
        "{s:?}"
    );
    assert!(matches!(s, Step::Now { .. }), "{s:?}");

    let mut f = ours(vec![pod("new", true)]);
    f.unschedulable = false;
    f.owner = Owner::Us {
        was_unschedulable: true,
    };
    let s = next_step(&record(NodePhase::Verified), &f, &baking(), t("00:10"));
    assert_eq!(
        s.phase_after(NodePhase::Verified),
        NodePhase::Baking,
        "{s:?}"
    );
    assert!(matches!(s, Step::Now { .. }), "no second uncordon: {s:?}");
    // Without a bake, that node is released as it is.
    let s = next_step(&record(NodePhase::Verified), &f, &target(), t("00:10"));
    assert!(
        matches!(
            &s,
            Step::Call {
                call: Call::Release { uncordon: false },
                then: NodePhase::Done,
                ..
            }
        ),
        "{s:?}"
    );

    f.verification = GateProgress::Waiting("soaking".into());
    let s = next_step(&record(NodePhase::Baking), &f, &target(), t("00:10"));
    assert!(
        matches!(
            &s,
            Step::Call {
                call: Call::Release { uncordon: false },
                then: NodePhase::Done,
                ..
            }
        ),
        "{s:?}"
    );

    let s = retarget(&record(NodePhase::Evacuating)).expect("a step");
    assert_eq!(s.phase_after(NodePhase::Evacuating), NodePhase::Cordoned);
    let s = retarget(&record(NodePhase::Baking)).expect("a step");
    assert_eq!(s.phase_after(NodePhase::Baking), NodePhase::Pending);
}

mod cni;
