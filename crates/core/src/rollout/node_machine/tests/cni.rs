//! `spec.cni`: the node's istio-cni pod is replaced in the drained window, before
//! ztunnel, and ztunnel waits for it Ready on the current revision.

use super::*;

fn cni_target() -> Target {
    Target {
        cni: Some(CniTarget {
            revision_hash: "cni-new".into(),
            rolling_back_from: None,
        }),
        ..target()
    }
}

fn with_cni<'a>(mut f: NodeFacts<'a>, pods: Vec<ZtunnelPod>) -> NodeFacts<'a> {
    f.cni = Some(CniFacts {
        pods: pods.into(),
        placement: Placement::Runs,
        replaced_at: None,
    });
    f
}

#[test]
fn istio_cni_is_replaced_after_the_drain_and_before_ztunnel() {
    let facts = with_cni(facts(vec![pod("old", true)]), vec![pod("cni-old", true)]);
    let (phases, calls, end) = run_with(
        &cni_target(),
        facts,
        pending(),
        GateProgress::Passed(String::new()),
    );
    assert_eq!(phases.last(), Some(&NodePhase::Done), "{phases:?}");
    let kinds: Vec<&str> = calls
        .iter()
        .map(|c| match c {
            Call::Cordon { .. } => "cordon",
            Call::DeleteCniPod { .. } => "cni",
            Call::DeleteZtunnelPod { .. } => "ztunnel",
            Call::Release { .. } => "release",
            Call::Uncordon => "uncordon",
        })
        .collect();
    assert_eq!(kinds, ["cordon", "cni", "ztunnel", "release"]);
    assert!(!end.unschedulable);
    assert_eq!(
        end.cni.expect("cni").pods[0].revision_hash,
        "cni-new",
        "istio-cni on the current revision"
    );
}

#[test]
fn a_node_whose_ztunnel_is_current_still_goes_when_its_istio_cni_is_not() {
    let f = with_cni(facts(vec![pod("new", true)]), vec![pod("cni-old", true)]);
    let (phases, calls, _) = run_with(
        &cni_target(),
        f,
        pending(),
        GateProgress::Passed(String::new()),
    );
    assert_eq!(phases.last(), Some(&NodePhase::Done), "{phases:?}");
    assert!(calls.iter().any(|c| matches!(c, Call::DeleteCniPod { .. })));
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::DeleteZtunnelPod { .. })),
        "its current ztunnel is left alone: {calls:?}"
    );
    // Both current: skipped, as without spec.cni.
    let both = with_cni(facts(vec![pod("new", true)]), vec![pod("cni-new", true)]);
    assert_eq!(
        next_step(&pending(), &both, &cni_target(), t("00:10")).phase_after(NodePhase::Pending),
        NodePhase::Skipped
    );
}

#[test]
fn ztunnel_waits_for_a_ready_istio_cni_pod_and_the_node_fails_at_the_deadline() {
    let target = cni_target();
    let drained = record(NodePhase::Drained);
    for cni_pods in [
        vec![pod("cni-new", false)],
        vec![ZtunnelPod {
            terminating: true,
            ..pod("cni-old", true)
        }],
        vec![],
    ] {
        let f = with_cni(ours(vec![pod("old", true)]), cni_pods.clone());
        let step = next_step(&drained, &f, &target, t("00:10"));
        assert!(
            matches!(step, Step::Wait { until: Some(u), .. } if u == t("02:00")),
            "{cni_pods:?}: {step:?}"
        );
        let late = next_step(&drained, &f, &target, t("02:00"));
        assert_eq!(late.phase_after(NodePhase::Drained), NodePhase::Failed);
        assert!(late.message().contains("istio-cni"), "{late:?}");
        assert!(
            !matches!(
                late,
                Step::Call {
                    call: Call::DeleteZtunnelPod { .. },
                    ..
                }
            ),
            "ztunnel is never replaced without a Ready istio-cni"
        );
    }
    // Where istio-cni does not run at all, ztunnel goes on without it.
    let mut excluded = with_cni(ours(vec![pod("old", true)]), vec![]);
    if let Some(c) = excluded.cni.as_mut() {
        c.placement = Placement::Excluded("node selector".into());
    }
    assert!(matches!(
        next_step(&drained, &excluded, &target, t("00:10")),
        Step::Call {
            call: Call::DeleteZtunnelPod { .. },
            ..
        }
    ));
}

/// The rule: no pod of a node agent is deleted on a schedulable node, whatever the
/// phase, the pods and who owns the node.
#[test]
fn no_istio_cni_or_ztunnel_pod_is_deleted_on_a_schedulable_node() {
    let cni_sets = [
        vec![pod("cni-old", true)],
        vec![pod("cni-new", false)],
        vec![pod("cni-new", true)],
        vec![],
    ];
    let owners = [
        Owner::Nobody,
        Owner::Us {
            was_unschedulable: false,
        },
        Owner::Us {
            was_unschedulable: true,
        },
        Owner::Other("other".into()),
    ];
    let mut checked = 0;
    for phase in NodePhase::ALL.into_iter().filter(|p| !p.is_terminal()) {
        for cni in &cni_sets {
            for owner in &owners {
                for zt in [pod("old", true), pod("new", true)] {
                    let mut f = with_cni(facts(vec![zt]), cni.clone());
                    f.owner = owner.clone();
                    f.drain = DrainProgress::Drained;
                    f.connections = ConnectionsProgress::Closed(String::new());
                    let rec = record(phase);
                    let mut target = cni_target();
                    target.cycle_current = true;
                    let step = next_step(&rec, &f, &target, t("00:10"));
                    assert!(
                        !matches!(
                            step,
                            Step::Call {
                                call: Call::DeleteCniPod { .. } | Call::DeleteZtunnelPod { .. },
                                ..
                            }
                        ),
                        "{phase:?} {owner:?} {cni:?}: {step:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 8 * 4 * 4 * 2);
}

#[test]
fn a_refused_istio_cni_delete_fails_the_node() {
    let step = call_refused(
        &record(NodePhase::Drained),
        &Call::DeleteCniPod {
            name: "istio-cni-node-x".into(),
            uid: "u".into(),
        },
        "forbidden",
    )
    .expect("a step");
    assert_eq!(step.phase_after(NodePhase::Drained), NodePhase::Failed);
    assert!(step.message().contains("istio-cni-node-x"));
}

#[test]
fn a_rollback_takes_back_a_node_whose_istio_cni_was_replaced() {
    let failed = record(NodePhase::Failed);
    // ztunnel never replaced, istio-cni replaced: through the sequence again.
    let f = with_cni(ours(vec![pod("old", true)]), vec![pod("cni-new", true)]);
    assert_eq!(
        roll_back(&failed, &f, Some("new"), Some("cni-new")).map(|s| s.phase_after(failed.phase)),
        Some(NodePhase::Pending)
    );
    // Neither replaced: only released.
    let g = with_cni(ours(vec![pod("old", true)]), vec![pod("cni-old", true)]);
    assert_eq!(
        roll_back(&failed, &g, Some("new"), Some("cni-new")).map(|s| s.phase_after(failed.phase)),
        Some(NodePhase::Verified)
    );
    // During the rollback (targets: the restored revisions), a node whose ztunnel is on
    // the restored revision but whose istio-cni is on the failed one goes through the
    // sequence, and only istio-cni is replaced.
    let back = Target {
        revision_hash: "old".into(),
        rolling_back_from: Some("new".into()),
        cni: Some(CniTarget {
            revision_hash: "cni-old".into(),
            rolling_back_from: Some("cni-new".into()),
        }),
        ..target()
    };
    let h = with_cni(facts(vec![pod("old", true)]), vec![pod("cni-new", true)]);
    let (phases, calls, end) = run_with(&back, h, pending(), GateProgress::Passed(String::new()));
    assert_eq!(phases.last(), Some(&NodePhase::Done), "{phases:?}");
    assert!(calls.iter().any(|c| matches!(c, Call::DeleteCniPod { .. })));
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::DeleteZtunnelPod { .. }))
    );
    assert_eq!(end.cni.expect("cni").pods[0].revision_hash, "cni-old");
}

#[test]
fn the_wait_for_istio_cni_runs_from_its_delete_not_from_the_drain() {
    // Drained at 00:00 (waiting long, e.g. for connections), istio-cni deleted at 05:00:
    // the new pod has until 07:00, not 02:00.
    let drained = record(NodePhase::Drained);
    let mut f = with_cni(ours(vec![pod("old", true)]), vec![pod("cni-new", false)]);
    if let Some(c) = f.cni.as_mut() {
        c.replaced_at = Some(t("05:00"));
    }
    let step = next_step(&drained, &f, &cni_target(), t("06:00"));
    assert!(
        matches!(step, Step::Wait { until: Some(u), .. } if u == t("07:00")),
        "{step:?}"
    );
    assert_eq!(
        next_step(&drained, &f, &cni_target(), t("07:00")).phase_after(NodePhase::Drained),
        NodePhase::Failed
    );
}
