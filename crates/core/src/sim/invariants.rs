//! The invariants a trial checks, against the simulated cluster's ground truth (and,
//! for decisions, against what the pass itself believed):
//! - a rollout never starts a node (its first cordon) while the node's wave has as many
//!   nodes unavailable as its budget;
//! - a rollout never uncordons a node it did not cordon;
//! - a ztunnel pod is never deleted on a schedulable node, and never decided for a node
//!   the pass believes schedulable;
//! - no rollout cordons a node another rollout owns (nor decides to);
//! - no mutation without the lease (checked where effects run: [`super::trial`]);
//! - when a rollout is finished (Complete, RolledBack, Aborted) or gone, no node is
//!   owned, cordoned or tainted by it;
//! - a Complete rollout covered every selected node the DaemonSet runs on (Done on the
//!   target revision, or Skipped or Failed with a reason);
//! - a RolledBack rollout left every node it finished on the restored revision;
//! - at the end of a trial nothing is left cordoned, annotated or tainted, and every
//!   rollout settled.

use crate::label_selector::Selector;
use crate::rollout::node_machine::NodePhase;
use crate::rollout::ownership::owner;
use crate::rollout::pass::facts::node_view;
use crate::rollout::pass::{CallKind, Effect, Memory, Plan, Snapshot};
use crate::rollout::planner::MaxUnavailable;
use crate::rollout::settings::max_unavailable;

use super::api::Applied;
use super::cluster::{Actor, ZONE};
use super::trial::Trial;

/// What a pass decided, against what it believed (its snapshot and its memory).
pub fn decisions(snap: &Snapshot<'_>, mem: &Memory, plan: &Plan) -> Vec<String> {
    let name = snap.rollout.name;
    let mut out = Vec::new();
    for e in &plan.effects {
        let Effect::Call(call) = e else { continue };
        let Some(n) = snap.nodes.get(&call.node) else {
            continue;
        };
        let view = node_view(name, n, mem.nodes.get(&call.node));
        match &call.kind {
            CallKind::Cordon { .. } => {
                if let Some(other) = owner(n).filter(|o| *o != name)
                    && view.ours.is_none()
                {
                    out.push(format!(
                        "{name} decided to cordon {} which rollout {other} owns",
                        call.node
                    ));
                }
            }
            CallKind::DeleteZtunnelPod { .. } if !view.unschedulable => {
                out.push(format!(
                    "{name} decided to delete the ztunnel pod of {} while it believes the node schedulable",
                    call.node
                ));
            }
            CallKind::DeleteCniPod { .. } if !view.unschedulable => {
                out.push(format!(
                    "{name} decided to delete the istio-cni pod of {} while it believes the node schedulable",
                    call.node
                ));
            }
            _ => {}
        }
    }
    out
}

/// A change a rollout's call made to the cluster.
pub fn applied(t: &mut Trial, rollout: &str, applied: &Applied, decided_at: u64) {
    match applied {
        // Only a start takes a budget slot: a node in the rollout's sequence holds its
        // slot until it is released, also when someone uncordons it meanwhile.
        Applied::Cordon {
            node,
            was_schedulable: true,
            start: true,
        } => budget(t, rollout, node, decided_at),
        Applied::DeletedZtunnel {
            node,
            node_schedulable: true,
        } => t.violation(format!(
            "{rollout} deleted the ztunnel pod of {node} while the node was schedulable"
        )),
        Applied::Released {
            node,
            uncordoned: true,
            cordoned_by,
        } if *cordoned_by != Some(Actor::Rollout(rollout.to_owned())) => t.violation(format!(
            "{rollout} uncordoned {node}, which {cordoned_by:?} had cordoned"
        )),
        _ => {}
    }
}

/// `rollout` just made `node` unavailable: its wave (by zone) must have had fewer
/// unavailable nodes than the budget, counting what the rollout could know when it
/// decided (`decided_at`): its own nodes, and others' cordons and NotReady nodes older
/// than its view.
fn budget(t: &mut Trial, rollout: &str, node: &str, decided_at: u64) {
    let Some(r) = t.c.rollouts.get(rollout) else {
        return;
    };
    let Ok(max) = max_unavailable(&r.spec.waves.max_unavailable) else {
        return;
    };
    let selector = match &r.spec.node_selector {
        Some(ls) => Selector::from_label_selector(ls).ok(),
        None => Some(Selector::everything()),
    };
    let Some(selector) = selector else { return };
    let Some(zone) =
        t.c.nodes
            .get(node)
            .and_then(|n| n.labels.get(ZONE))
            .cloned()
    else {
        return;
    };
    let wave: Vec<(&String, &super::cluster::SimNode)> =
        t.c.nodes
            .iter()
            .filter(|(_, n)| n.labels.get(ZONE) == Some(&zone) && selector.matches(&n.labels))
            .collect();
    let budget = match max {
        MaxUnavailable::Count(_) => max.budget(wave.len()),
        MaxUnavailable::Percent(_) => max.budget(wave.len()),
    };
    let unavailable: Vec<String> = wave
        .iter()
        .filter(|(name, _)| name.as_str() != node)
        .filter(|(_, n)| {
            // Made unavailable by this rollout: it always knows. By anyone else: if it
            // happened before the view the rollout decided on.
            let ours = n.cordoned_by == Some(Actor::Rollout(rollout.to_owned()));
            let known = n.stable_since <= decided_at;
            (n.unschedulable && (ours || known)) || (!n.ready && known)
        })
        .map(|(name, _)| (*name).clone())
        .collect();
    if unavailable.len() >= budget {
        t.violation(format!(
            "{rollout} cordoned {node} while {} node(s) of its wave {zone} were unavailable ({}), budget {budget}",
            unavailable.len(),
            unavailable.join(", ")
        ));
    }
}

/// `rollout` is finished or gone: nothing of it may be left on any node.
pub fn released_everything(t: &mut Trial, rollout: &str, why: &str) {
    let mut left = Vec::new();
    for (name, n) in &t.c.nodes {
        if n.owner() == Some(rollout) {
            left.push(format!("{name} owned"));
        }
        if n.unschedulable && n.cordoned_by == Some(Actor::Rollout(rollout.to_owned())) {
            left.push(format!("{name} cordoned"));
        }
        if n.waiting_taint() == Some(rollout) {
            left.push(format!("{name} tainted"));
        }
    }
    if !left.is_empty() {
        t.violation(format!(
            "{rollout} {why} with nodes left: {}",
            left.join(", ")
        ));
    }
}

/// A status was written (decided on the view of step `decided_at`): a terminal phase
/// must hold its promises.
pub fn status_written(t: &mut Trial, rollout: &str, decided_at: u64) {
    let Some(r) = t.c.rollouts.get(rollout) else {
        return;
    };
    let Some(status) = r.status.clone() else {
        return;
    };
    let c = &status.counts;
    if c.done + c.skipped + c.failed + c.in_flight > c.total {
        t.violation(format!(
            "{rollout}'s counts add up to more than its total: {c:?}"
        ));
    }
    let phase = status.phase.clone().unwrap_or_default();
    if !matches!(phase.as_str(), "Complete" | "RolledBack" | "Aborted") {
        return;
    }
    released_everything(t, rollout, &format!("reached {phase}"));
    let current = t.c.current_hash();
    let target = status.target_revision.clone().unwrap_or_default();
    let mut problems = Vec::new();
    for (name, n) in &t.c.nodes {
        let in_status = status.nodes.iter().find(|s| &s.name == name);
        let hashes = t.c.ztunnel_hashes(name);
        match phase.as_str() {
            "Complete" => {
                // Nodes the rollout could see when it decided, that run ztunnel.
                if n.created_step > decided_at || !n.runs_ztunnel() {
                    continue;
                }
                match in_status {
                    None => problems.push(format!("{name} is not in the status")),
                    Some(s)
                        if s.phase == NodePhase::Done && !hashes.iter().all(|h| *h == target) =>
                    {
                        problems.push(format!("{name} is Done but runs {hashes:?}, not {target}"))
                    }
                    Some(s)
                        if matches!(s.phase, NodePhase::Skipped | NodePhase::Failed)
                            && s.message.is_empty() =>
                    {
                        problems.push(format!("{name} is {:?} without a reason", s.phase))
                    }
                    Some(s) if !s.phase.is_terminal() => {
                        problems.push(format!("{name} is still {:?}", s.phase))
                    }
                    _ => {}
                }
            }
            "RolledBack" => {
                // No node is left on the failed revision.
                let failed = status.rollback.as_ref().map(|r| r.from.clone());
                if let Some(failed) = failed
                    && hashes.contains(&failed)
                    && n.created_step <= decided_at
                {
                    let phase = in_status.map(|s| s.phase);
                    problems.push(format!(
                        "{name} still runs the failed revision {failed} ({phase:?}); the DaemonSet is on {current}"
                    ));
                }
            }
            _ => {}
        }
    }
    if !problems.is_empty() {
        t.violation(format!(
            "{rollout} reached {phase}: {}",
            problems.join("; ")
        ));
    }
}

/// After the quiet phase: every rollout settled, and nothing is left on any node.
pub fn at_the_end(t: &mut Trial) {
    let mut left = Vec::new();
    for (name, n) in &t.c.nodes {
        if n.unschedulable {
            left.push(format!("{name} cordoned by {:?}", n.cordoned_by));
        }
        if let Some(o) = n.owner() {
            left.push(format!("{name} owned by {o}"));
        }
        if let Some(o) = n.waiting_taint() {
            left.push(format!("{name} tainted by {o}"));
        }
    }
    if !left.is_empty() {
        t.violation(format!("left at the end: {}", left.join(", ")));
    }
}
