//! Wave planning and node selection: which nodes form which wave, in which order, and
//! which nodes may start now without exceeding the wave's disruption budget. Pure and
//! deterministic: the same observations always give the same decision.
//!
//! Rules (documented for users in the README):
//! - Nodes are grouped by the value of the `groupBy` label. Groups listed in `order` come
//!   first, in that order; the other groups follow, sorted by value. Nodes without the
//!   label form one last wave, named `(no <groupBy> label)`, so nothing is silently left
//!   out and nothing unlabelled goes first.
//! - An optional canary wave takes the first `canary` nodes of that order and runs before
//!   everything else.
//! - Within a wave, nodes with the fewest application pods start first (then by name):
//!   the first nodes done cost few evictions, and the pods evicted later land on them.
//! - The budget of a wave is `maxUnavailable`: a count, or a percentage of the wave's
//!   nodes rounded down, at least 1. In-flight nodes and the wave's nodes that are
//!   unavailable for other reasons count against it: NotReady, cordoned by someone else
//!   (also after the rollout is done with them), or still cordoned by the rollout while
//!   failed or going again. A node cordoned by someone else may start at any time (it is
//!   unavailable already); a NotReady node waits until it is Ready again.
//! - A wave starts only when every node of the previous waves is done or skipped: a
//!   node baking after its uncordon (`health.bake`) holds the next wave back, but is
//!   back in service and does not count against its own wave's budget.
//! - A node that cannot start now (`held`) waits without using the budget; the node the
//!   agent runs on goes last in its wave.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u32),
}

impl MaxUnavailable {
    /// The number of nodes of a wave of `size` that may be unavailable at once.
    pub fn budget(self, size: usize) -> usize {
        let n = match self {
            MaxUnavailable::Count(c) => c as usize,
            MaxUnavailable::Percent(p) => size * (p as usize) / 100,
        };
        n.max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePolicy {
    pub group_by: String,
    pub order: Vec<String>,
    pub max_unavailable: MaxUnavailable,
    /// Nodes in a first, canary wave.
    pub canary: Option<usize>,
    /// Failed nodes tolerated before the rollout stops (the circuit breaker): below it a
    /// failed node is left as it is and its wave goes on.
    pub max_failed: usize,
    /// Waves in reverse order (a rollback).
    pub reverse: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeProgress {
    Pending,
    InFlight,
    /// Uncordoned and baking: not finished (the next wave waits), not unavailable (the
    /// wave's budget does not count it).
    Baking,
    /// Done or skipped: the node needs nothing more.
    Finished,
    /// Failed: the failure policy decides; the node keeps counting against the budget.
    Failed,
}

/// What the planner needs to know of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeObservation {
    pub name: String,
    /// The node's value of the wave label (`WavePolicy::group_by`); none: unlabelled.
    pub group: Option<String>,
    pub progress: NodeProgress,
    /// The node is NotReady: it cannot start (its ztunnel pod could not be replaced) and
    /// counts against the budget.
    pub not_ready: bool,
    /// Someone else cordoned the node: it counts against the budget, starting it costs
    /// nothing more, and it stays cordoned afterwards.
    pub cordoned_by_others: bool,
    /// Application pods on the node (what its drain will evict).
    pub pods: usize,
    /// The node is cordoned (by anyone): a failed node left cordoned still counts
    /// against the budget.
    pub cordoned: bool,
    /// A pending node that cannot start now (another rollout owns it, its ztunnel pod
    /// is not Ready): not started, and not counted against the budget.
    pub held: bool,
    /// Goes last in its wave (the node the agent itself runs on).
    pub last: bool,
    /// A pending node whose cordon's answer was lost: it may be cordoned, so it counts
    /// against the budget (and does not start) until a fresh read tells.
    pub maybe_started: bool,
}

impl NodeObservation {
    /// A Ready, schedulable node not started yet, with `pods` to evict.
    pub fn pending(name: String, group: Option<String>, pods: usize) -> Self {
        Self {
            name,
            group,
            progress: NodeProgress::Pending,
            not_ready: false,
            cordoned_by_others: false,
            pods,
            cordoned: false,
            held: false,
            last: false,
            maybe_started: false,
        }
    }

    fn unavailable(&self) -> bool {
        self.unavailable_because().is_some()
    }

    /// Why the node counts against its wave's budget without being in flight.
    pub fn unavailable_because(&self) -> Option<&'static str> {
        if self.maybe_started && self.progress == NodeProgress::Pending {
            Some("its cordon's answer was lost; reading it again")
        } else if self.not_ready {
            Some("NotReady")
        } else if self.cordoned_by_others {
            Some("cordoned by someone else")
        } else if self.progress == NodeProgress::Failed && self.cordoned {
            Some("failed, left cordoned")
        } else if self.progress == NodeProgress::Pending && self.cordoned {
            // Still cordoned by this rollout (going again: a rollback, a revision
            // change), until it resumes.
            Some("cordoned by this rollout, going again")
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    pub name: String,
    pub nodes: Vec<String>,
}

pub const CANARY_WAVE: &str = "canary";

pub fn unlabelled_wave_name(group_by: &str) -> String {
    format!("(no {group_by} label)")
}

/// Groups the nodes into waves, in order.
pub fn plan_waves(nodes: &[NodeObservation], policy: &WavePolicy) -> Vec<Wave> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unlabelled = Vec::new();
    for n in nodes {
        match &n.group {
            Some(v) => groups.entry(v.clone()).or_default().push(n.name.clone()),
            None => unlabelled.push(n.name.clone()),
        }
    }
    let mut waves = Vec::new();
    for name in &policy.order {
        if let Some(members) = groups.remove(name) {
            waves.push(Wave {
                name: name.clone(),
                nodes: members,
            });
        }
    }
    waves.extend(groups.into_iter().map(|(name, nodes)| Wave { name, nodes }));
    if !unlabelled.is_empty() {
        waves.push(Wave {
            name: unlabelled_wave_name(&policy.group_by),
            nodes: unlabelled,
        });
    }
    for w in &mut waves {
        w.nodes.sort();
    }
    if let Some(count) = policy.canary.filter(|c| *c > 0) {
        let canary: Vec<String> = waves
            .iter()
            .flat_map(|w| w.nodes.iter().cloned())
            .take(count)
            .collect();
        let taken: BTreeSet<&String> = canary.iter().collect();
        for w in &mut waves {
            w.nodes.retain(|n| !taken.contains(n));
        }
        waves.retain(|w| !w.nodes.is_empty());
        waves.insert(
            0,
            Wave {
                name: CANARY_WAVE.to_owned(),
                nodes: canary,
            },
        );
    }
    waves
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start these nodes now (possibly none: the budget is used up; wait).
    Start { wave: String, nodes: Vec<String> },
    /// More nodes failed than `max_failed` allows; the failure policy decides.
    Blocked { wave: String, failed: Vec<String> },
    /// Every node is finished.
    Complete,
}

/// Which nodes may start now.
pub fn next(nodes: &[NodeObservation], policy: &WavePolicy) -> Decision {
    next_in_waves(nodes, &plan_waves(nodes, policy), policy)
}

/// `next`, with `waves` the `plan_waves` of `nodes` (planned once while the nodes stay).
pub fn next_in_waves(nodes: &[NodeObservation], waves: &[Wave], policy: &WavePolicy) -> Decision {
    let by_name: BTreeMap<&str, &NodeObservation> =
        nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let failed: Vec<String> = nodes
        .iter()
        .filter(|n| n.progress == NodeProgress::Failed)
        .map(|n| n.name.clone())
        .collect();
    let in_order: Vec<&Wave> = if policy.reverse {
        waves.iter().rev().collect()
    } else {
        waves.iter().collect()
    };
    for wave in in_order {
        let members: Vec<&NodeObservation> = wave
            .nodes
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).copied())
            .collect();
        if failed.len() > policy.max_failed
            && members.iter().any(|n| n.progress == NodeProgress::Failed)
        {
            return Decision::Blocked {
                wave: wave.name.clone(),
                failed,
            };
        }
        if members
            .iter()
            .all(|n| matches!(n.progress, NodeProgress::Finished | NodeProgress::Failed))
        {
            continue;
        }
        let budget = policy.max_unavailable.budget(members.len());
        let used = members
            .iter()
            .filter(|n| n.progress == NodeProgress::InFlight || n.unavailable())
            .count();
        let pending_ready = || {
            members.iter().filter(|n| {
                n.progress == NodeProgress::Pending && !n.not_ready && !n.held && !n.maybe_started
            })
        };
        // Already unavailable through someone else's cordon: starting costs nothing.
        let mut start: Vec<String> = pending_ready()
            .filter(|n| n.cordoned_by_others)
            .map(|n| n.name.clone())
            .collect();
        // Fewest pods first: the first nodes done cost few evictions and then take in
        // the pods evicted from the others (which prefer nodes without our taint).
        let mut candidates: Vec<&&NodeObservation> =
            pending_ready().filter(|n| !n.cordoned_by_others).collect();
        // The agent's own node goes last: its replica hands over the lease before it is
        // drained.
        candidates.sort_by(|a, b| (a.last, a.pods, &a.name).cmp(&(b.last, b.pods, &b.name)));
        start.extend(
            candidates
                .into_iter()
                .map(|n| n.name.clone())
                .take(budget.saturating_sub(used)),
        );
        start.sort();
        return Decision::Start {
            wave: wave.name.clone(),
            nodes: start,
        };
    }
    Decision::Complete
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ZONE: &str = "topology.kubernetes.io/zone";

    fn node(name: &str, zone: Option<&str>) -> NodeObservation {
        NodeObservation {
            name: name.into(),
            group: zone.map(str::to_owned),
            progress: NodeProgress::Pending,
            not_ready: false,
            cordoned_by_others: false,
            pods: 0,
            cordoned: false,
            held: false,
            last: false,
            maybe_started: false,
        }
    }

    fn policy(order: &[&str], max: MaxUnavailable, canary: Option<usize>) -> WavePolicy {
        WavePolicy {
            group_by: ZONE.into(),
            order: order.iter().map(|s| s.to_string()).collect(),
            max_unavailable: max,
            canary,
            max_failed: 0,
            reverse: false,
        }
    }

    fn names(waves: &[Wave]) -> Vec<(String, Vec<String>)> {
        waves
            .iter()
            .map(|w| (w.name.clone(), w.nodes.clone()))
            .collect()
    }

    #[test]
    fn baking_nodes_leave_the_budget_but_hold_the_next_wave_back() {
        let p = policy(&["a", "b"], MaxUnavailable::Count(1), None);
        let mut nodes = vec![
            node("a1", Some("a")),
            node("a2", Some("a")),
            node("b1", Some("b")),
        ];
        nodes[0].progress = NodeProgress::Baking;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec!["a2".into()]
            },
            "a1 bakes uncordoned: a2 takes the slot"
        );
        nodes[1].progress = NodeProgress::Finished;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec![]
            },
            "wave b waits for a1's bake"
        );
        nodes[0].progress = NodeProgress::Finished;
        assert!(
            matches!(next(&nodes, &p), Decision::Start { wave, nodes } if wave == "b" && nodes == ["b1"])
        );
    }

    #[test]
    fn waves_follow_the_explicit_order_then_sorted_groups_then_unlabelled() {
        let nodes = [
            node("n4", Some("c")),
            node("n1", Some("b")),
            node("n3", None),
            node("n2", Some("a")),
            node("n0", Some("b")),
        ];
        let waves = plan_waves(&nodes, &policy(&["b"], MaxUnavailable::Count(1), None));
        assert_eq!(
            names(&waves),
            [
                ("b".to_string(), vec!["n0".to_string(), "n1".to_string()]),
                ("a".to_string(), vec!["n2".to_string()]),
                ("c".to_string(), vec!["n4".to_string()]),
                (
                    "(no topology.kubernetes.io/zone label)".to_string(),
                    vec!["n3".to_string()]
                ),
            ]
        );
        let with_canary = plan_waves(&nodes, &policy(&["b"], MaxUnavailable::Count(1), Some(1)));
        assert_eq!(
            with_canary[0],
            Wave {
                name: CANARY_WAVE.into(),
                nodes: vec!["n0".into()]
            }
        );
        assert_eq!(with_canary[1].nodes, ["n1"]);
    }

    #[test]
    fn budgets_round_percentages_down_but_allow_one() {
        assert_eq!(MaxUnavailable::Percent(10).budget(100), 10);
        assert_eq!(MaxUnavailable::Percent(10).budget(19), 1);
        assert_eq!(MaxUnavailable::Percent(50).budget(5), 2);
        assert_eq!(MaxUnavailable::Count(3).budget(2), 3);
    }

    #[test]
    fn in_flight_and_unavailable_nodes_use_the_budget() {
        let mut nodes: Vec<NodeObservation> =
            (0..6).map(|i| node(&format!("n{i}"), Some("a"))).collect();
        let p = policy(&[], MaxUnavailable::Count(2), None);
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec!["n0".into(), "n1".into()]
            }
        );
        nodes[3].progress = NodeProgress::InFlight;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec!["n0".into()]
            }
        );
        nodes[4].not_ready = true;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec![]
            },
            "budget used by n3 and NotReady n4"
        );
        nodes[5].cordoned_by_others = true;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec!["n5".into()]
            },
            "a node someone else cordoned may start: it is unavailable already"
        );
    }

    #[test]
    fn a_pending_node_still_cordoned_by_the_rollout_uses_the_budget() {
        // Going again (a rollback, a new revision) with the rollout's cordon still on it.
        let mut nodes = vec![node("a1", Some("a")), node("a2", Some("a"))];
        let p = policy(&[], MaxUnavailable::Count(1), None);
        nodes[0].cordoned = true;
        assert_eq!(
            nodes[0].unavailable_because(),
            Some("cordoned by this rollout, going again")
        );
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec![]
            },
            "a2 may not start beside it"
        );
    }

    #[test]
    fn failures_block_and_finished_waves_give_way() {
        let mut nodes = vec![node("a1", Some("a")), node("b1", Some("b"))];
        let p = policy(&[], MaxUnavailable::Count(1), None);
        nodes[0].progress = NodeProgress::Failed;
        assert_eq!(
            next(&nodes, &p),
            Decision::Blocked {
                wave: "a".into(),
                failed: vec!["a1".into()]
            }
        );
        nodes[0].progress = NodeProgress::Finished;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "b".into(),
                nodes: vec!["b1".into()]
            }
        );
        nodes[1].progress = NodeProgress::Finished;
        assert_eq!(next(&nodes, &p), Decision::Complete);
    }

    #[test]
    fn tolerated_failures_let_the_wave_go_on_until_the_circuit_breaker_trips() {
        let mut nodes = vec![
            node("a1", Some("a")),
            node("a2", Some("a")),
            node("a3", Some("a")),
            node("b1", Some("b")),
        ];
        let mut p = policy(&[], MaxUnavailable::Count(1), None);
        p.max_failed = 1;
        nodes[0].progress = NodeProgress::Failed;
        nodes[0].cordoned = true;
        // The failed node, left cordoned, uses the wave's only slot.
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec![]
            }
        );
        nodes[0].cordoned = false;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "a".into(),
                nodes: vec!["a2".into()]
            }
        );
        nodes[1].progress = NodeProgress::Failed;
        assert_eq!(
            next(&nodes, &p),
            Decision::Blocked {
                wave: "a".into(),
                failed: vec!["a1".into(), "a2".into()]
            }
        );
        // Within the limit, a wave of finished and failed nodes gives way to the next.
        p.max_failed = 2;
        nodes[2].progress = NodeProgress::Finished;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "b".into(),
                nodes: vec!["b1".into()]
            }
        );
    }

    #[test]
    fn a_rollback_goes_through_the_waves_in_reverse() {
        let nodes = [
            node("a1", Some("a")),
            node("b1", Some("b")),
            node("c1", Some("c")),
        ];
        let mut p = policy(&[], MaxUnavailable::Count(1), None);
        p.reverse = true;
        assert_eq!(
            next(&nodes, &p),
            Decision::Start {
                wave: "c".into(),
                nodes: vec!["c1".into()]
            }
        );
    }

    /// A tiny deterministic generator for the simulation's choices.
    struct Lcg(u64);
    impl Lcg {
        fn coin(&mut self) -> bool {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33).is_multiple_of(2)
        }
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeObservation>> {
        prop::collection::vec(
            (prop::option::of(0u8..4), any::<bool>(), any::<bool>()),
            1..40,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (zone, not_ready, cordoned))| {
                    let zone = zone.map(|z| ["a", "b", "c", "d"][z as usize].to_string());
                    let mut n = node(&format!("node-{i:02}"), zone.as_deref());
                    // Few nodes are unavailable; most are not.
                    n.not_ready = not_ready && i % 5 == 0;
                    n.cordoned_by_others = cordoned && i % 3 == 0;
                    n
                })
                .collect()
        })
    }

    fn arb_policy() -> impl Strategy<Value = WavePolicy> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d", "x"]), 0..3),
            prop_oneof![
                (1u32..5).prop_map(MaxUnavailable::Count),
                (1u32..=100).prop_map(MaxUnavailable::Percent)
            ],
            prop::option::of(0usize..4),
        )
            .prop_map(|(order, max, canary)| policy(&order, max, canary))
    }

    #[test]
    fn a_node_left_cordoned_by_its_operator_keeps_using_the_budget() {
        let mut kept = node("n1", Some("a"));
        kept.progress = NodeProgress::Finished;
        kept.cordoned_by_others = true;
        let nodes = vec![kept, node("n2", Some("a")), node("n3", Some("a"))];
        assert_eq!(
            next(&nodes, &policy(&[], MaxUnavailable::Count(1), None)),
            Decision::Start {
                wave: "a".into(),
                nodes: vec![]
            },
            "the wave waits rather than exceed its budget"
        );
        assert_eq!(
            next(&nodes, &policy(&[], MaxUnavailable::Count(2), None)),
            Decision::Start {
                wave: "a".into(),
                nodes: vec!["n2".into()]
            }
        );
    }

    #[test]
    fn nodes_with_fewer_pods_start_first() {
        let mut busy = node("n1", Some("a"));
        busy.pods = 5;
        let nodes = vec![busy, node("n2", Some("a")), node("n3", Some("a"))];
        assert_eq!(
            next(&nodes, &policy(&[], MaxUnavailable::Count(2), None)),
            Decision::Start {
                wave: "a".into(),
                nodes: vec!["n2".into(), "n3".into()]
            }
        );
    }

    proptest! {
        #[test]
        fn rollouts_stay_within_budget_visit_every_node_once_and_keep_wave_order(
            mut nodes in arb_nodes(), p in arb_policy(), seed in any::<u64>()
        ) {
            let waves = plan_waves(&nodes, &p);
            let wave_of: BTreeMap<String, usize> = waves.iter().enumerate()
                .flat_map(|(i, w)| w.nodes.iter().map(move |n| (n.clone(), i))).collect();
            prop_assert_eq!(wave_of.len(), nodes.len(), "every node in exactly one wave");
            let mut rng = Lcg(seed);
            let mut started = BTreeSet::new();
            let mut last_wave = 0usize;
            for step in 0..10_000 {
                if step == 200 {
                    for n in nodes.iter_mut() { n.not_ready = false; }
                }
                // Nodes cordoned by others use the budget for good, which can stall a
                // wave; operators uncordon them eventually.
                if step == 400 {
                    for n in nodes.iter_mut() { n.cordoned_by_others = false; }
                }
                match next(&nodes, &p) {
                    Decision::Complete => break,
                    Decision::Blocked { .. } => prop_assert!(false, "nothing fails in this simulation"),
                    Decision::Start { wave, nodes: to_start } => {
                        let w = waves.iter().position(|x| x.name == wave).expect("a planned wave");
                        prop_assert!(w >= last_wave, "wave order went back from {} to {}", last_wave, w);
                        last_wave = w;
                        for earlier in &waves[..w] {
                            for n in &earlier.nodes {
                                let obs = nodes.iter().find(|o| &o.name == n).expect("node");
                                prop_assert_eq!(obs.progress, NodeProgress::Finished, "wave {} started before {} finished", &wave, n);
                            }
                        }
                        let members: Vec<&String> = waves[w].nodes.iter().collect();
                        let unavailable = |nodes: &[NodeObservation]| nodes.iter()
                            .filter(|o| members.contains(&&o.name))
                            .filter(|o| o.progress == NodeProgress::InFlight || o.not_ready || o.cordoned_by_others)
                            .count();
                        let before = unavailable(&nodes);
                        for name in &to_start {
                            prop_assert!(started.insert(name.clone()), "{} started twice", name);
                            let obs = nodes.iter_mut().find(|o| &o.name == name).expect("node");
                            prop_assert_eq!(obs.progress, NodeProgress::Pending);
                            prop_assert!(!obs.not_ready, "a NotReady node started");
                            obs.progress = NodeProgress::InFlight;
                        }
                        let budget = p.max_unavailable.budget(members.len());
                        prop_assert!(unavailable(&nodes) <= budget.max(before), "over budget: {} > {}", unavailable(&nodes), budget);
                        for n in nodes.iter_mut().filter(|o| o.progress == NodeProgress::InFlight) {
                            if rng.coin() { n.progress = NodeProgress::Finished; }
                        }
                    }
                }
            }
            prop_assert_eq!(next(&nodes, &p), Decision::Complete);
            prop_assert_eq!(started.len(), nodes.len(), "every node exactly once");
        }
    }
}
