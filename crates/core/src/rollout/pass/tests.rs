//! `decide`'s rollout-level rules, each on a small hand-made cluster with injected time.
//! The simulation (`crate::sim`) drives the same function through whole rollouts with
//! faults; these pin single decisions.

use k8s_openapi::jiff::SignedDuration;

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
