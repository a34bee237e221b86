//! `decide`'s rollout-level rules, each on a small hand-made cluster with injected time.
//! The simulation (`crate::sim`) drives the same function through whole rollouts with
//! faults; these pin single decisions.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::rollout::node_machine::NodePhase;

use super::*;
use crate::sim::fixture::Fixture;

fn calls(plan: &Plan) -> Vec<(String, CallKind)> {
    plan.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Call(c) => Some((c.node.clone(), c.kind.clone())),
            _ => None,
        })
        .collect()
}

fn cordons(plan: &Plan) -> Vec<String> {
    calls(plan)
        .into_iter()
        .filter(|(_, k)| matches!(k, CallKind::Cordon { .. }))
        .map(|(n, _)| n)
        .collect()
}

#[test]
fn the_finalizer_comes_before_the_first_cordon() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a")]);
    let plan = f.pass();
    assert!(plan.effects.contains(&Effect::Finalizer { add: true }));
    assert!(cordons(&plan).is_empty(), "no cordon without the finalizer");
    f.finalizer = true;
    let plan = f.pass_with(vec![Outcome::Finalizer {
        add: true,
        result: Ok(()),
    }]);
    assert_eq!(
        cordons(&plan),
        ["a1"],
        "budget 1: one node of the first wave"
    );
}

#[test]
fn a_wave_never_has_more_nodes_out_than_its_budget_and_waves_go_in_order() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]);
    f.finalizer = true;
    f.spec.waves.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2);
    let plan = f.pass();
    assert_eq!(cordons(&plan), ["a1", "a2"]);
    // The others get the waiting taint.
    let tainted = f.run_calls(&plan, |c| matches!(c.kind, CallKind::WaitingTaint { .. }));
    assert_eq!(tainted.len(), 2, "a3 and b1");
    // While the cordons are in flight, nothing else starts.
    let plan = f.pass_with(tainted);
    assert!(cordons(&plan).is_empty());
    // Someone cordons a3: it counts against the budget too, and may start (it costs
    // nothing more); b1 waits for wave a to finish.
    f.cordon_by_operator("a3");
    let plan = f.pass();
    assert_eq!(cordons(&plan), ["a3"]);
}

#[test]
fn a_node_another_rollout_owns_is_not_started_and_an_older_overlapping_rollout_goes_first() {
    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    f.own_by("a1", "other");
    let plan = f.pass();
    assert!(cordons(&plan).is_empty());
    let standing = plan.standing.expect("standing");
    assert_eq!(standing.reason, "BudgetUsedByUnavailableNodes");
    assert!(
        standing.message.contains("a1 (cordoned by someone else)"),
        "{}",
        standing.message
    );

    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    f.add_other_rollout("older", -60, true);
    let plan = f.pass();
    assert!(cordons(&plan).is_empty());
    assert_eq!(
        plan.standing.as_ref().map(|s| s.reason.as_str()),
        Some("OverlapsRollout")
    );
    // A newer one does not hold this one back.
    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    f.add_other_rollout("newer", 60, true);
    assert_eq!(cordons(&f.pass()), ["a1"]);
}

#[test]
fn a_finished_rollout_is_final() {
    let mut f = Fixture::new(&[("a1", "a")]);
    f.stored_phase("Complete");
    let plan = f.pass();
    assert!(plan.finished, "{plan:?}");
    assert!(plan.effects.is_empty());
    // Even when the DaemonSet moves on.
    f.new_revision("next");
    let plan = f.pass();
    assert!(plan.effects.is_empty() && plan.finished);
}

#[test]
fn an_abort_waits_for_calls_in_flight_and_releases_what_they_cordoned() {
    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    let plan = f.pass();
    let cordon = plan
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Call(c) => Some(c.clone()),
            _ => None,
        })
        .expect("a cordon");
    f.spec.abort = true;
    // The cordon is in flight: no finalizer removal, no terminal phase yet.
    let plan = f.pass();
    assert_eq!(
        plan.standing.as_ref().map(|s| s.phase),
        Some(crate::rollout::status::RolloutPhase::Aborting)
    );
    assert!(!plan.effects.contains(&Effect::Finalizer { add: false }));
    // The cordon was applied, but the watch does not show it: released anyway.
    let plan = f.pass_with(vec![Outcome::Call {
        call: cordon,
        result: Ok(CallDone::Applied {
            over: vec![f.version("a1")],
        }),
    }]);
    assert!(
        calls(&plan)
            .iter()
            .any(|(n, k)| n == "a1" && matches!(k, CallKind::Release { .. })),
        "{plan:?}"
    );
}

#[test]
fn a_release_that_keeps_failing_is_retried_with_backoff_never_given_up() {
    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    f.start_node_at("a1", crate::rollout::node_machine::NodePhase::Verified);
    let plan = f.pass();
    let release = plan
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Call(c) if matches!(c.kind, CallKind::Release { .. }) => Some(c.clone()),
            _ => None,
        })
        .expect("a release");
    let mut delays = Vec::new();
    for _ in 0..30 {
        let plan = f.pass_with(vec![Outcome::Call {
            call: release.clone(),
            result: Err(CallError::Api(crate::api_errors::ApiFailure::Transport(
                "connection refused".into(),
            ))),
        }]);
        let at = plan.wake_at.expect("a retry time");
        delays.push(at.duration_since(f.now));
        f.now = at;
        let plan = f.pass();
        assert!(
            calls(&plan)
                .iter()
                .any(|(n, k)| n == "a1" && matches!(k, CallKind::Release { .. })),
            "retried"
        );
    }
    assert!(delays[1] > delays[0], "backoff grows: {delays:?}");
    assert!(
        delays.iter().all(|d| *d <= SignedDuration::from_secs(30)),
        "capped: {delays:?}"
    );
    assert_eq!(
        f.memory.phase("a1"),
        crate::rollout::node_machine::NodePhase::Verified
    );
}

/// A cordon the shell could not send (the copy it was decided on has no
/// resourceVersion, so the patch could not be conditional) changes nothing and is
/// retried with a growing backoff and Events: not at once, as after a Conflict, since the
/// watch may never bring a usable copy.
#[test]
fn a_cordon_that_could_not_be_sent_backs_off_with_events_and_touches_nothing() {
    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    let cordon_of = |plan: &Plan| {
        plan.effects.iter().find_map(|e| match e {
            Effect::Call(c) if matches!(c.kind, CallKind::Cordon { .. }) => Some(c.clone()),
            _ => None,
        })
    };
    let mut cordon = cordon_of(&f.pass()).expect("a cordon");
    let (mut delays, mut events) = (Vec::new(), 0);
    for _ in 0..6 {
        let plan = f.pass_with(vec![Outcome::Call {
            call: cordon.clone(),
            result: Err(CallError::Unsent(
                "node a1 as read has no resourceVersion".into(),
            )),
        }]);
        events += plan
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Event(n) if n.reason == "RetryingCall"))
            .count();
        let at = plan.wake_at.expect("a retry time");
        delays.push(at.duration_since(f.now));
        f.now = at;
        cordon = cordon_of(&f.pass()).expect("the cordon retried");
    }
    assert!(
        delays.windows(2).all(|d| d[1] >= d[0]) && delays[5] > delays[1],
        "backoff grows: {delays:?}"
    );
    assert!(events >= 1, "a RetryingCall Event");
    assert!(!f.c.nodes["a1"].unschedulable, "nothing was sent");
    assert_eq!(f.c.nodes["a1"].owner(), None);
    assert_eq!(
        f.memory.phase("a1"),
        crate::rollout::node_machine::NodePhase::Pending
    );
}

fn cordon_order(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Call(c) if matches!(c.kind, CallKind::Cordon { .. }) => Some(c.node.clone()),
            _ => None,
        })
        .collect()
}

fn phase_of(plan: &Plan) -> Option<crate::rollout::status::RolloutPhase> {
    plan.standing.as_ref().map(|s| s.phase)
}

fn passes(_: &str, _: &str) -> Result<String, String> {
    Ok(String::new())
}

#[test]
fn a_manual_wave_starts_only_once_approved_and_the_next_waits_again() {
    use crate::rollout::status::RolloutPhase;
    let mut f = Fixture::new(&[("a1", "a"), ("b1", "b")]);
    f.finalizer = true;
    f.spec.waves.approval = crate::api::rollout::Approval::Manual;
    let plan = f.pass();
    assert!(cordons(&plan).is_empty());
    assert_eq!(phase_of(&plan), Some(RolloutPhase::AwaitingApproval));
    assert_eq!(f.memory.awaiting_approval.as_deref(), Some("a"));

    f.spec.approved_waves = vec!["a".into()];
    let effects = f.drive(60, passes, |f| f.memory.phase("a1") == NodePhase::Done);
    assert_eq!(cordon_order(&effects), ["a1"], "only the approved wave");
    assert_eq!(f.ztunnel_on("a1"), ["new"]);
    let plan = f.pass();
    assert!(cordons(&plan).is_empty(), "wave b waits for its approval");
    assert_eq!(phase_of(&plan), Some(RolloutPhase::AwaitingApproval));
    assert_eq!(f.memory.awaiting_approval.as_deref(), Some("b"));
}

#[test]
fn nodes_start_only_inside_a_window_and_one_in_flight_finishes_after_it_closes() {
    use crate::rollout::status::RolloutPhase;
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a")]);
    f.finalizer = true;
    // 2026-12-01 (now, 10:00 UTC) is a Tuesday: the window opens at 22:00.
    f.spec.maintenance_windows = vec![crate::api::rollout::MaintenanceWindowSpec {
        days: vec!["Tue".into()],
        start: "22:00".into(),
        end: "22:01".into(),
        time_zone: "UTC".into(),
    }];
    let plan = f.pass();
    assert!(cordons(&plan).is_empty());
    assert_eq!(phase_of(&plan), Some(RolloutPhase::OutsideWindow));
    let opens: Timestamp = "2026-12-01T22:00:00Z".parse().expect("time");
    assert_eq!(plan.wake_at, Some(opens), "wakes when the window opens");

    f.now = opens;
    let mut effects = f.drive(60, passes, |f| f.memory.phase("a1") == NodePhase::Cordoned);
    // The window closes while a1 is in flight: it finishes; a2 does not start.
    f.now = opens + SignedDuration::from_secs(120);
    effects.extend(f.drive(60, passes, |f| f.memory.phase("a1") == NodePhase::Done));
    assert_eq!(f.memory.phase("a1"), NodePhase::Done);
    assert_eq!(cordon_order(&effects), ["a1"]);
    let plan = f.pass();
    assert!(cordons(&plan).is_empty());
    assert_eq!(phase_of(&plan), Some(RolloutPhase::OutsideWindow));
}

#[test]
fn failures_within_max_failed_nodes_are_tolerated_and_the_next_one_pauses_the_rollout() {
    use crate::rollout::status::RolloutPhase;
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a"), ("a3", "a")]);
    f.finalizer = true;
    f.spec.health.max_failed_nodes = 1;
    f.spec.health.uncordon_failed_nodes = true;
    let fails = |node: &str, _: &str| {
        if node == "a3" {
            Ok(String::new())
        } else {
            Err("connections failed".to_owned())
        }
    };
    f.drive(200, fails, |f| f.memory.phase("a2") == NodePhase::Failed);
    assert_eq!(f.memory.phase("a1"), NodePhase::Failed);
    assert_eq!(f.memory.phase("a2"), NodePhase::Failed);
    let plan = f.pass();
    assert_eq!(phase_of(&plan), Some(RolloutPhase::Paused), "{plan:?}");
    assert!(cordons(&plan).is_empty(), "a3 does not start");
    assert_eq!(f.memory.phase("a3"), NodePhase::Pending);
    // uncordonFailedNodes: the failed nodes are released.
    assert!(!f.c.nodes["a1"].unschedulable && !f.c.nodes["a2"].unschedulable);
}

#[test]
fn a_rollback_restores_the_previous_revision_on_updated_nodes_waves_in_reverse() {
    let mut f = Fixture::new(&[("a1", "a"), ("b1", "b"), ("c1", "c")]);
    f.finalizer = true;
    f.spec.health.on_failure = crate::api::rollout::FailurePolicy::Rollback;
    // a1 and b1 update; c1 fails its gates (only on the new revision).
    let effects = f.drive(
        400,
        |node, revision| {
            if node == "c1" && revision == "new" {
                Err("connections failed".to_owned())
            } else {
                Ok(String::new())
            }
        },
        |f| {
            f.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "RolledBack")
        },
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::UndoDaemonSet { .. })),
        "the DaemonSet is undone"
    );
    assert_eq!(
        cordon_order(&effects),
        ["a1", "b1", "c1", "c1", "b1", "a1"],
        "the rollback goes back through the waves in reverse"
    );
    for node in ["a1", "b1", "c1"] {
        assert_eq!(f.ztunnel_on(node), ["old"], "{node}");
        assert!(!f.c.nodes[node].unschedulable, "{node} uncordoned");
    }
    let status = f.status.clone().expect("a status");
    assert_eq!(status.rollback.map(|r| r.to), Some("old".to_owned()));
    assert!(f.pass().finished, "final");
}

#[test]
fn a_new_daemonset_revision_mid_rollout_sends_done_nodes_round_again() {
    let mut f = Fixture::new(&[("a1", "a"), ("b1", "b")]);
    f.finalizer = true;
    f.drive(60, passes, |f| f.memory.phase("a1") == NodePhase::Done);
    assert_eq!(f.ztunnel_on("a1"), ["new"]);
    // b1 is on its way when the DaemonSet moves on.
    f.drive(60, passes, |f| f.memory.phase("b1") == NodePhase::Drained);
    f.new_revision("newer");
    let mut effects = f.drive(1, passes, |_| false);
    assert_eq!(f.memory.phase("a1"), NodePhase::Pending);
    effects.extend(f.drive(200, passes, |f| {
        f.memory.phase("a1") == NodePhase::Done && f.memory.phase("b1") == NodePhase::Done
    }));
    assert_eq!(f.ztunnel_on("a1"), ["newer"]);
    assert_eq!(f.ztunnel_on("b1"), ["newer"]);
    assert_eq!(
        cordon_order(&effects),
        ["a1"],
        "b1 was retargeted in flight (it never left its cordon), a1 went again"
    );
}

#[test]
fn a_new_term_whose_watch_lags_reads_a_node_it_owns_before_stepping_it() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a")]);
    f.finalizer = true;
    let before = f.node_object("a1");
    f.start_node_at("a1", NodePhase::Cordoned);
    // The last leader's status and a fresh read of the owned nodes start the term; the
    // watch still shows a1 before the cordon.
    let status = crate::api::rollout::ZtunnelRolloutStatus {
        phase: Some("Progressing".into()),
        target_revision: Some("new".into()),
        nodes: vec![crate::api::rollout::NodeStatus {
            name: "a1".into(),
            phase: NodePhase::Cordoned,
            since: f.now.to_string(),
            started: Some(f.now.to_string()),
            was_unschedulable: Some(false),
            message: String::new(),
        }],
        ..Default::default()
    };
    f.memory = Memory::resume(Some(&status), true, &["a1".to_owned()]);
    f.lagging.insert("a1".into(), before.clone());
    let plan = f.pass();
    assert!(
        plan.transitions.is_empty(),
        "a1 does not start over: {:?}",
        plan.transitions
    );
    let read = calls(&plan)
        .into_iter()
        .find(|(n, k)| n == "a1" && matches!(k, CallKind::Check { .. }));
    assert!(read.is_some(), "a1 is read afresh: {plan:?}");
    assert!(cordons(&plan).is_empty(), "a1 uses the budget meanwhile");
    // The read finds the annotation: a1 carries on although the watch still lags.
    let outcomes = f.run_calls(&plan, |c| matches!(c.kind, CallKind::Check { .. }));
    let plan = f.pass_with(outcomes);
    assert!(
        plan.effects
            .iter()
            .any(|e| matches!(e, Effect::Drain { node, .. } if node == "a1")),
        "{plan:?}"
    );
    assert_eq!(f.memory.phase("a1"), NodePhase::Cordoned);
    assert!(cordons(&plan).is_empty());
}

#[test]
fn an_uncordon_seen_late_disowns_only_the_cordon_it_lifted() {
    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    f.start_node_at("a1", NodePhase::Drained);
    // Someone uncordoned a1: the rollout gives up that cordon (by its id)...
    f.c.set_unschedulable("a1", false, crate::sim::cluster::Actor::Operator);
    let lifted = f.node_object("a1");
    let plan = f.pass();
    let disown = calls(&plan)
        .into_iter()
        .find_map(|(n, k)| match k {
            CallKind::Disown { cordon } if n == "a1" => Some(cordon),
            _ => None,
        })
        .expect("a disown");
    assert_eq!(
        disown.as_deref(),
        crate::rollout::ownership::cordon_id(&lifted)
    );
    // ...but by the time it runs, the rollout has cordoned a1 again (a later cordon):
    // that one stays the rollout's, to be lifted at the end.
    let recordon = crate::rollout::pass::NodeCall {
        node: "a1".into(),
        kind: CallKind::Cordon {
            was_unschedulable: false,
            drain_check: None,
        },
        observed: Some(std::sync::Arc::new(lifted)),
    };
    let (cordoned, _) =
        crate::sim::api::node_call(&mut f.c, "r1", &recordon, crate::sim::api::ApiFault::None);
    assert!(cordoned.is_ok());
    let outcomes = f.run_calls(&plan, |c| matches!(c.kind, CallKind::Disown { .. }));
    assert!(
        matches!(
            &outcomes[..],
            [Outcome::Call {
                result: Ok(CallDone::NotOwned),
                ..
            }]
        ),
        "{outcomes:?}"
    );
    let n = f.node_object("a1");
    assert_eq!(
        crate::rollout::ownership::recorded_was_unschedulable(&n, "r1"),
        Some(false),
        "the later cordon is still the rollout's"
    );
}

#[test]
fn a_node_deleted_mid_drain_is_counted_once_in_the_total() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a"), ("b1", "b")]);
    f.finalizer = true;
    f.drive(10, passes, |f| f.memory.phase("a1") == NodePhase::Cordoned);
    // The node goes away while its drain runs (an autoscaler, an operator).
    f.c.nodes.remove("a1");
    f.drive(200, passes, |f| {
        phase_of_status(f) == Some("Complete".to_owned())
    });
    let status = f.status.as_ref().expect("a status");
    assert_eq!(status.phase.as_deref(), Some("Complete"), "{status:?}");
    let c = &status.counts;
    assert_eq!(
        (c.total, c.done, c.skipped, c.failed, c.in_flight),
        (3, 2, 1, 0, 0),
        "the deleted node stays in the total it is counted in: {c:?}"
    );
}

fn phase_of_status(f: &Fixture) -> Option<String> {
    f.status.as_ref().and_then(|s| s.phase.clone())
}

#[test]
fn a_refused_restore_is_sent_a_bounded_number_of_times_each_failure_told() {
    let (mut f, effects) =
        roll_back_while_restores_fail("admission webhook denied the request", false);
    let sent = count_undos(&effects);
    let told = restore_failures(&effects);
    assert_eq!(sent, 5, "bounded");
    assert_eq!(told.len(), 5, "{told:?}");
    assert!(
        told[4].contains("attempt 5 of 5") && told[4].contains("denied"),
        "{told:?}"
    );
    let status = f.status.clone().expect("a status");
    assert_eq!(status.phase.as_deref(), Some("Paused"));
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(degraded.contains("after 5 restores"), "{degraded}");
    // The updated node is released; the failed one stays cordoned for investigation
    // (uncordonFailedNodes is false), as without the refusal. Further passes send
    // nothing more.
    assert!(!f.c.nodes["a1"].unschedulable, "a1 uncordoned");
    // The failed node waits, still cordoned, to go through the sequence on the restored
    // revision: the status says so.
    let b1 = status
        .nodes
        .iter()
        .find(|n| n.name == "b1")
        .expect("b1 in the status");
    assert_eq!(b1.phase, NodePhase::Pending, "{b1:?}");
    assert!(!b1.message.is_empty(), "{b1:?}");
    let more = f.drive(100, passes, |_| false);
    assert_eq!(count_undos(&more), 0);
}

#[test]
fn api_blips_on_the_restore_are_not_counted_as_refusals_but_are_bounded_too() {
    let (f, effects) = roll_back_while_restores_fail("connection reset", true);
    let sent = count_undos(&effects);
    assert_eq!(sent, 30, "more than the 5 refusals allowed, and bounded");
    let status = f.status.clone().expect("a status");
    assert_eq!(status.phase.as_deref(), Some("Paused"));
    let told = restore_failures(&effects);
    assert!(told.iter().all(|n| n.contains("not counted")), "{told:?}");
}

/// b1 fails its gates on the new revision with `onFailure: Rollback`, and the API server
/// answers every DaemonSet restore with `error` (an API blip when `blip`); driven until
/// the rollout is Paused. Returns the fixture and every effect decided.
fn roll_back_while_restores_fail(error: &str, blip: bool) -> (Fixture, Vec<Effect>) {
    let mut f = Fixture::new(&[("a1", "a"), ("b1", "b")]);
    f.finalizer = true;
    f.spec.health.on_failure = crate::api::rollout::FailurePolicy::Rollback;
    f.refuse_undo = Some(error.into());
    f.undo_blips = blip;
    let effects = f.drive(
        5000,
        |node, revision| {
            if node == "b1" && revision == "new" {
                Err("connections failed".to_owned())
            } else {
                Ok(String::new())
            }
        },
        |f| phase_of_status(f).as_deref() == Some("Paused"),
    );
    (f, effects)
}

fn count_undos(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::UndoDaemonSet { .. }))
        .count()
}

/// The notes of the `RollbackRestoreFailed` Events among `effects`.
fn restore_failures(effects: &[Effect]) -> Vec<&str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(n) if n.reason == "RollbackRestoreFailed" => Some(n.note.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_prometheus_url_the_agent_does_not_allow_blocks_the_rollout_before_any_cordon() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a")]);
    f.finalizer = true;
    f.spec.health = serde_json::from_value(serde_json::json!({ "prometheus": {
        "url": "http://169.254.169.254/latest",
        "queries": [{ "name": "q", "query": "up", "max": 1.0 }],
    }}))
    .unwrap();
    f.config.allowed_prometheus_url_prefixes =
        std::sync::Arc::from(["http://169.254.169.254".to_owned()]);
    let plan = f.pass();
    let standing = plan.standing.clone().expect("standing");
    assert_eq!(
        (standing.phase, standing.reason.as_str()),
        (
            crate::rollout::status::RolloutPhase::Blocked,
            "PrometheusURLNotAllowed"
        )
    );
    assert!(
        standing.message.contains("http://169.254.169.254/latest"),
        "{}",
        standing.message
    );
    assert!(cordons(&plan).is_empty());

    f.spec.health.prometheus.as_mut().unwrap().url = "http://prometheus.monitoring:9090".into();
    f.config.allowed_prometheus_url_prefixes = std::sync::Arc::from([]);
    let plan = f.pass();
    let standing = plan.standing.clone().expect("standing");
    assert_eq!(standing.reason, "PrometheusURLNotAllowed");
    assert!(
        standing.message.contains(crate::health::url_policy::FLAG),
        "{}",
        standing.message
    );
    assert!(cordons(&plan).is_empty());

    f.config.allowed_prometheus_url_prefixes =
        std::sync::Arc::from(["http://prometheus.monitoring:9090/".to_owned()]);
    assert_eq!(cordons(&f.pass()), ["a1"], "allowed: the rollout goes on");
}

#[test]
fn a_daemonset_the_agent_may_not_replace_blocks_the_rollout_before_any_cordon() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a")]);
    f.finalizer = true;
    let asked = (
        f.spec.daemon_set.namespace.clone(),
        f.spec.daemon_set.name.clone(),
    );
    f.config.ztunnel_daemon_set = Some(("istio-system".into(), "other".into()));
    let plan = f.pass();
    let standing = plan.standing.clone().expect("standing");
    assert_eq!(
        (standing.phase, standing.reason.as_str()),
        (
            crate::rollout::status::RolloutPhase::Blocked,
            "DaemonSetNotAllowed"
        )
    );
    assert!(
        standing.message.contains("istio-system/other"),
        "{}",
        standing.message
    );
    assert!(cordons(&plan).is_empty());
    f.config.ztunnel_daemon_set = Some(asked);
    assert_eq!(cordons(&f.pass()), ["a1"], "its own: the rollout goes on");
}

fn with_ztunnel_metrics(f: &mut Fixture, policy: crate::api::rollout::OpenConnectionsPolicy) {
    f.spec.health.ztunnel_metrics = Some(
        serde_json::from_value(serde_json::json!({ "checkProxies": false }))
            .expect("ztunnelMetrics"),
    );
    f.spec.health.on_open_connections = policy;
}

/// The connections-drained gate runs between the drain and the delete; what it finds
/// open is reset with a Warning Event naming it (Proceed), or fails the node with its
/// ztunnel not replaced (Fail).
#[test]
fn connections_still_open_are_named_then_reset_or_fail_the_node() {
    use crate::api::rollout::OpenConnectionsPolicy;
    let open =
        ConnectionsEvent::Open("2 connection(s) of infra/log-agent (stays on the node)".into());

    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    with_ztunnel_metrics(&mut f, OpenConnectionsPolicy::Proceed);
    f.connections.insert("a1".into(), open.clone());
    let effects = f.drive(60, passes, |f| f.memory.phase("a1") == NodePhase::Done);
    let gate = effects
        .iter()
        .position(
            |e| matches!(e, Effect::Connections(r) if r.node == "a1" && !r.pod_uid.is_empty()),
        )
        .expect("the gate ran");
    let delete = effects
        .iter()
        .position(
            |e| matches!(e, Effect::Call(c) if matches!(c.kind, CallKind::DeleteZtunnelPod { .. })),
        )
        .expect("the delete");
    assert!(gate < delete, "the gate runs before the delete");
    assert!(
        effects.iter().any(|e| matches!(e, Effect::Event(n)
            if n.reason == "OpenConnections" && n.warning && n.note.contains("infra/log-agent"))),
        "a Warning Event names the workload"
    );
    assert_eq!(f.ztunnel_on("a1"), ["new"]);

    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    with_ztunnel_metrics(&mut f, OpenConnectionsPolicy::Fail);
    f.connections.insert("a1".into(), open);
    f.drive(60, passes, |f| f.memory.phase("a1") == NodePhase::Failed);
    assert_eq!(f.memory.phase("a1"), NodePhase::Failed);
    assert_eq!(f.ztunnel_on("a1"), ["old"], "not replaced");
    let node = f.node_object("a1");
    assert_eq!(
        node.spec.and_then(|s| s.unschedulable),
        Some(true),
        "left cordoned for inspection (uncordonFailedNodes is off)"
    );
}

fn with_mesh_query(f: &mut Fixture) {
    f.config.allowed_prometheus_url_prefixes =
        std::sync::Arc::from(["http://prometheus:9090".to_owned()]);
    f.spec.health = serde_json::from_value(serde_json::json!({
        "waypoints": { "disabled": true },
        "prometheus": { "url": "http://prometheus:9090" },
        "meshQueries": [{ "name": "errors", "query": "sum(rate(errors_total[1m]))", "max": 1.0 }],
    }))
    .expect("health");
}

/// The mesh-wide breaker runs once per generation; when it trips mid-rollout the node in
/// flight finishes, no new node starts, the rollout pauses naming the query (and says so
/// in an Event); a new term keeps the trip; a spec change restarts the breaker.
#[test]
fn a_mesh_breach_stops_new_nodes_while_nodes_in_flight_finish() {
    use crate::rollout::status::{MESH_QUERY_FAILED, RolloutPhase};
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a"), ("b1", "b")]);
    f.finalizer = true;
    with_mesh_query(&mut f);
    // No node starts before the breaker's first round held.
    let plan = f.pass();
    assert!(cordons(&plan).is_empty());
    assert_eq!(
        plan.standing.as_ref().map(|s| s.reason.as_str()),
        Some("MeshBreakerStarting")
    );
    // The breaker's first round holds (the fixture says so).
    f.carry_out_plan(&plan);
    let effects = f.drive(10, passes, |f| f.memory.phase("a1") == NodePhase::Drained);
    let meshes = |effects: &[Effect]| {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Mesh(_)))
            .count()
    };
    assert_eq!(
        meshes(&effects),
        0,
        "one breaker task (started by the first pass)"
    );
    assert_eq!(f.memory.phase("a1"), NodePhase::Drained, "a1 in flight");
    // It trips.
    f.pending.push(Outcome::Mesh {
        generation: 1,
        event: MeshEvent::Breached(
            "mesh query errors (sum(rate(errors_total[1m]))): value 3.000 > max 1.000".into(),
        ),
    });
    let effects = f.drive(60, passes, |f| f.memory.phase("a1") == NodePhase::Done);
    assert_eq!(
        f.memory.phase("a1"),
        NodePhase::Done,
        "the node in flight finished"
    );
    assert!(
        cordon_order(&effects).is_empty(),
        "no node started after the breach: {:?}",
        cordon_order(&effects)
    );
    assert!(effects.iter().any(|e| matches!(e, Effect::Event(n)
        if n.reason == MESH_QUERY_FAILED && n.warning && n.note.contains("errors_total"))));
    let plan = f.pass();
    let standing = plan.standing.expect("standing");
    assert_eq!(
        (standing.phase, standing.reason.as_str()),
        (RolloutPhase::Paused, MESH_QUERY_FAILED)
    );
    assert!(standing.degraded());
    assert!(
        standing.message.contains("value 3.000 > max 1.000"),
        "{}",
        standing.message
    );
    assert_eq!(
        meshes(&f.drive(5, passes, |_| false)),
        0,
        "not restarted for the same generation"
    );

    // A new term (leader change) keeps the trip from the stored status.
    let stored = f.status.clone().expect("status");
    f.memory = Memory::resume(Some(&stored), true, &[]);
    let breaker = stored
        .mesh_breaker
        .clone()
        .expect("the breaker in the status");
    assert_eq!(breaker.tripped_generation, Some(1));
    let effects = f.drive(5, passes, |_| false);
    assert!(
        cordon_order(&effects).is_empty(),
        "still stopped after a leader change"
    );
    assert_eq!(meshes(&effects), 0);
    assert_eq!(
        f.memory.mesh.breach.as_ref().map(|(_, why)| why.as_str()),
        Some("mesh query errors (sum(rate(errors_total[1m]))): value 3.000 > max 1.000"),
        "the reason as first recorded, not nested"
    );

    // The spec changes: the breaker restarts and the rollout goes on.
    f.generation = 2;
    let effects = f.drive(200, passes, |f| {
        phase_of_status(f) == Some("Complete".to_owned())
    });
    assert_eq!(meshes(&effects), 1, "restarted for generation 2");
    let baseline = effects.iter().find_map(|e| match e {
        Effect::Mesh(r) => Some(r.baseline_at.to_string()),
        _ => None,
    });
    assert_eq!(
        baseline,
        Some(breaker.baseline_at.clone()),
        "the baseline time kept"
    );
    assert!(
        effects.contains(&Effect::CancelMesh),
        "stopped when the rollout completed"
    );
    assert_eq!(phase_of_status(&f), Some("Complete".to_owned()));
}

#[test]
fn mesh_queries_need_prometheus_and_no_node() {
    let mut f = Fixture::new(&[("a1", "a")]);
    f.finalizer = true;
    with_mesh_query(&mut f);
    f.spec.health.prometheus = None;
    let plan = f.pass();
    let s = plan.standing.expect("standing");
    assert_eq!(s.reason, "InvalidSpec");
    assert!(s.message.contains("health.meshQueries"), "{}", s.message);
    with_mesh_query(&mut f);
    f.spec.health.mesh_queries[0].query = "up{node=\"$node\"}".into();
    let s = f.pass().standing.expect("standing");
    assert!(
        s.message.contains("a mesh-wide query has no node"),
        "{}",
        s.message
    );
}

fn owned_by_r1(f: &Fixture, node: &str) -> bool {
    f.c.nodes[node]
        .annotations
        .get(crate::labels::OWNER_ANNOTATION)
        == Some(&"r1".to_owned())
}

/// A baking node is uncordoned (and still the rollout's), out of its wave's budget —
/// the wave's next node starts meanwhile — but the next wave waits for its bake.
#[test]
fn a_baking_node_leaves_the_budget_but_holds_the_next_wave_back() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a"), ("b1", "b")]);
    f.finalizer = true;
    f.spec.health.bake = Some("60s".into());
    let mut effects = f.drive(200, passes, |f| {
        f.memory.phase("a1") == NodePhase::Baking && f.memory.phase("a2") == NodePhase::Baking
    });
    assert_eq!(
        f.memory.phase("a2"),
        NodePhase::Baking,
        "a2 started while a1 baked"
    );
    for node in ["a1", "a2"] {
        assert!(!f.c.nodes[node].unschedulable, "{node} is back in service");
        assert!(owned_by_r1(&f, node), "{node} is still the rollout's");
        assert_eq!(f.ztunnel_on(node), ["new"]);
    }
    effects.extend(f.drive(30, passes, |_| false));
    assert_eq!(
        f.memory.phase("b1"),
        NodePhase::Pending,
        "wave b waits for the bakes"
    );
    assert!(!cordon_order(&effects).contains(&"b1".to_owned()));
    let counts = f.status.clone().expect("a status").counts;
    assert_eq!((counts.baking, counts.in_flight, counts.done), (2, 0, 0));
    // The bakes pass: the nodes are released without being uncordoned again, and b1 goes.
    f.pending = ["a1", "a2"]
        .iter()
        .map(|n| Outcome::Gate {
            node: (*n).to_owned(),
            event: GateEvent::Done(Ok("2 active proxies".into())),
        })
        .collect();
    let effects = f.drive(200, passes, |f| f.memory.phase("b1") == NodePhase::Baking);
    assert_eq!(cordon_order(&effects), ["b1"]);
    for node in ["a1", "a2"] {
        assert_eq!(f.memory.phase(node), NodePhase::Done);
        assert!(!owned_by_r1(&f, node) && !f.c.nodes[node].unschedulable);
    }
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::Call(c) if c.node.starts_with('a') && c.kind == CallKind::Release { uncordon: true }
        )),
        "a baked node is released as it is"
    );
}

/// A bake fails: the node is cordoned again and drained (its ztunnel is not touched
/// again), fails, and the failure policy pauses the rollout; with Rollback, the node
/// goes back to the previous revision and ends uncordoned.
#[test]
fn a_failed_bake_cordons_and_drains_the_node_again_then_the_policy_applies() {
    use crate::rollout::status::RolloutPhase;
    for rollback in [false, true] {
        let mut f = Fixture::new(&[("a1", "a"), ("b1", "b")]);
        f.finalizer = true;
        f.spec.health.bake = Some("60s".into());
        if rollback {
            f.spec.health.on_failure = crate::api::rollout::FailurePolicy::Rollback;
        }
        f.bakes.insert(
            "a1".into(),
            Err("ztunnel proxies: 3 proxies pending".into()),
        );
        let rolled_back = |f: &Fixture| {
            f.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "RolledBack")
        };
        let effects = f.drive(400, passes, |f| {
            if rollback {
                rolled_back(f)
            } else {
                f.memory.phase("a1") == NodePhase::Failed
            }
        });
        let a1: Vec<&CallKind> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Call(c) if c.node == "a1" => Some(&c.kind),
                _ => None,
            })
            .collect();
        let uncordon = a1
            .iter()
            .position(|k| **k == CallKind::Uncordon)
            .expect("uncordoned for the bake");
        assert!(
            matches!(
                a1[uncordon + 1],
                CallKind::Cordon {
                    was_unschedulable: false,
                    ..
                }
            ),
            "{a1:?}"
        );
        // Until the rollback's own cordon, if any.
        let until = a1[uncordon + 2..]
            .iter()
            .position(|k| matches!(k, CallKind::Cordon { .. }))
            .map_or(a1.len(), |i| uncordon + 2 + i);
        assert!(
            !a1[uncordon..until]
                .iter()
                .any(|k| matches!(k, CallKind::DeleteZtunnelPod { .. })),
            "ztunnel is not touched after the uncordon: {a1:?}"
        );
        assert_eq!(until < a1.len(), rollback, "{a1:?}");
        let drains = effects
            .iter()
            .filter(|e| matches!(e, Effect::Drain { node, .. } if node == "a1"))
            .count();
        assert_eq!(
            drains,
            if rollback { 3 } else { 2 },
            "drained before the replacement, after the bake (and for the rollback)"
        );
        if !rollback {
            assert_eq!(f.memory.phase("a1"), NodePhase::Failed);
            let message = &f.memory.nodes["a1"].tracked.message;
            assert!(
                message.starts_with(
                    "bake failed: ztunnel proxies: 3 proxies pending; cordoned again and drained"
                ),
                "{message}"
            );
            let plan = f.pass();
            assert_eq!(phase_of(&plan), Some(RolloutPhase::Paused), "{plan:?}");
            assert!(
                f.c.nodes["a1"].unschedulable,
                "left cordoned, its pods elsewhere"
            );
            assert_eq!(f.memory.phase("b1"), NodePhase::Pending);
            continue;
        }
        assert!(rolled_back(&f), "{:?}", f.status);
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::UndoDaemonSet { .. }))
        );
        assert_eq!(
            f.ztunnel_on("a1"),
            ["old"],
            "the failed node is rolled back too"
        );
        assert!(!f.c.nodes["a1"].unschedulable && !owned_by_r1(&f, "a1"));
        assert_eq!(
            f.memory.phase("b1"),
            NodePhase::Skipped,
            "never on the failed revision"
        );
        assert_eq!(f.ztunnel_on("b1"), ["old"]);
        assert!(!cordon_order(&effects).contains(&"b1".to_owned()));
    }
}

/// A failed bake takes its slot back: while the wave's budget is used by a node in
/// flight (started while the first one baked), the failed node is not cordoned again
/// and no node starts; once that node is back in service, it is.
#[test]
fn a_failed_bake_waits_for_a_slot_and_no_node_starts_into_it() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a"), ("a3", "a")]);
    f.finalizer = true;
    f.spec.health.bake = Some("60s".into());
    f.drive(200, passes, |f| f.memory.phase("a2") == NodePhase::Cordoned);
    assert_eq!(f.memory.phase("a1"), NodePhase::Baking);
    // a1's bake fails while a2 is out of service.
    f.pending.push(Outcome::Gate {
        node: "a1".into(),
        event: GateEvent::Done(Err("ztunnel proxies: 1 proxies pending".into())),
    });
    let plan = f.pass();
    assert!(cordons(&plan).is_empty(), "{:?}", calls(&plan));
    assert!(
        f.memory.nodes["a1"]
            .tracked
            .message
            .contains("waiting for a slot in its wave's budget"),
        "{}",
        f.memory.nodes["a1"].tracked.message
    );
    f.carry_out_plan(&plan);
    let effects = f.drive(200, passes, |f| {
        f.memory.phase("a1") == NodePhase::Evacuating
    });
    assert_eq!(f.memory.phase("a1"), NodePhase::Evacuating);
    assert_eq!(
        cordon_order(&effects),
        ["a1"],
        "a3 never started into the slot"
    );
    assert_eq!(
        f.memory.phase("a2"),
        NodePhase::Baking,
        "a2 back in service first"
    );
    assert_eq!(f.memory.phase("a3"), NodePhase::Pending);
}

/// An abort while nodes bake: every node is released, none left cordoned by the
/// rollout; a cordon someone put on a baking node stays theirs.
#[test]
fn an_abort_during_the_bake_releases_the_nodes_and_keeps_someone_elses_cordon() {
    let mut f = Fixture::new(&[("a1", "a"), ("a2", "a")]);
    f.finalizer = true;
    f.spec.waves.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2);
    f.spec.health.bake = Some("60s".into());
    f.drive(200, passes, |f| {
        f.memory.phase("a1") == NodePhase::Baking && f.memory.phase("a2") == NodePhase::Baking
    });
    assert!(!f.c.nodes["a1"].unschedulable && !f.c.nodes["a2"].unschedulable);
    f.cordon_by_operator("a2");
    f.spec.abort = true;
    f.drive(60, passes, |f| {
        f.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Aborted")
    });
    assert_eq!(
        f.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Aborted")
    );
    assert!(!f.c.nodes["a1"].unschedulable, "a1 left schedulable");
    assert!(f.c.nodes["a2"].unschedulable, "the operator's cordon stays");
    for node in ["a1", "a2"] {
        assert!(!owned_by_r1(&f, node), "{node} released");
    }
}

/// What a rollout driven to its end did with waiting taints.
struct ToTheEnd {
    finished: bool,
    taints_added: usize,
    /// The nodes the passes asked to lose the waiting taint.
    taints_removed: Vec<String>,
    /// Each cordon asked for: the node, and the resourceVersion of the copy it was
    /// decided on.
    cordons: Vec<(String, Option<String>)>,
}

/// Drives `f` to the rollout's end, a pass a simulated second, every effect carried out;
/// `before(f, pass)` runs ahead of each pass.
fn drive_to_the_end(f: &mut Fixture, mut before: impl FnMut(&mut Fixture, usize)) -> ToTheEnd {
    let mut end = ToTheEnd {
        finished: false,
        taints_added: 0,
        taints_removed: Vec::new(),
        cordons: Vec::new(),
    };
    for pass in 0..300 {
        before(f, pass);
        let plan = f.pass();
        for e in &plan.effects {
            if let Effect::Call(c) = e {
                match c.kind {
                    CallKind::WaitingTaint { waiting: true } => end.taints_added += 1,
                    CallKind::WaitingTaint { waiting: false } => {
                        end.taints_removed.push(c.node.clone())
                    }
                    CallKind::Cordon { .. } => end.cordons.push((
                        c.node.clone(),
                        c.observed
                            .as_ref()
                            .and_then(|n| n.metadata.resource_version.clone()),
                    )),
                    _ => {}
                }
            }
        }
        f.carry_out_plan(&plan);
        f.next_second();
        if plan.finished {
            end.finished = true;
            break;
        }
    }
    end
}

/// No node cordoned, owned or tainted by the rollout.
fn assert_nothing_left(f: &Fixture) {
    for (name, n) in &f.c.nodes {
        assert_eq!(n.waiting_taint(), None, "{name} keeps a waiting taint");
        assert!(!n.unschedulable, "{name} left cordoned");
        assert_eq!(n.owner(), None, "{name} still annotated as the rollout's");
    }
}

fn twelve_nodes_three_at_a_time() -> Fixture {
    let names: Vec<String> = (0..12).map(|i| format!("a{i:02}")).collect();
    let nodes: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "a")).collect();
    let mut f = Fixture::new(&nodes);
    f.spec.waves.max_unavailable =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(3);
    f
}

/// Nodes wait under the rollout's taint until their turn; their cordon's patch drops it.
/// The rollout's end then has no taint of those nodes to remove: it sends no call for
/// them (each would read its node afresh, every node of the rollout at once), and no
/// node is left with the taint.
#[test]
fn the_end_of_a_rollout_removes_no_waiting_taint_a_cordon_already_dropped() {
    let mut f = twelve_nodes_three_at_a_time();
    let end = drive_to_the_end(&mut f, |_, _| {});
    assert!(end.finished, "the rollout finished");
    assert!(
        end.taints_added >= 9,
        "the nodes after the first batch waited under the taint"
    );
    assert_eq!(
        end.taints_removed,
        Vec::<String>::new(),
        "no removal left for the end"
    );
    assert_nothing_left(&f);
}

/// The watch still shows a node as it was before its waiting taint when its turn comes:
/// the cordon decided on that copy is refused (Conflict), nothing marks the taint gone,
/// and the rollout ends with no taint, cordon or annotation left.
#[test]
fn a_cordon_decided_on_a_copy_from_before_the_taint_leaves_no_taint_at_the_end() {
    let mut f = twelve_nodes_three_at_a_time();
    let untainted = f.node_object("a05");
    let stale = untainted.metadata.resource_version.clone();
    let mut lag_from = None;
    let end = drive_to_the_end(&mut f, |f, pass| {
        // Once the taint is on, for 20 passes, the watch shows a05's copy from before
        // it; then it catches up.
        if lag_from.is_none() && f.c.nodes["a05"].waiting_taint().is_some() {
            lag_from = Some(pass);
            f.lagging.insert("a05".into(), untainted.clone());
        }
        if lag_from.is_some_and(|from| pass == from + 20) {
            f.lagging.clear();
        }
    });
    assert!(
        end.cordons.contains(&("a05".to_owned(), stale)),
        "a05's cordon was decided on the copy without the taint: {:?}",
        end.cordons
    );
    assert!(end.finished, "the rollout finished");
    assert_nothing_left(&f);
}
