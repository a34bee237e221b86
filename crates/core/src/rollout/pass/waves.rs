//! Stage 10: the planner's decision for the current wave — start nodes (unless a pause,
//! an approval or a maintenance window holds the wave), apply the failure policy, or
//! finish the rollout — and where the rollout stands.

use super::derived::along;
use super::effects::About;
use super::facts::overlay;
use super::{Pass, View};
use crate::rollout::hold::{Hold, hold};
use crate::rollout::node_machine::NodePhase;
use crate::rollout::planner::{self, Decision, NodeProgress};
use crate::rollout::status::{RolloutPhase, Standing, counts};

/// How many nodes a standing's message names before it counts the rest.
const LISTED: usize = 10;

fn progress(phase: NodePhase) -> NodeProgress {
    match phase {
        NodePhase::Pending => NodeProgress::Pending,
        NodePhase::Done | NodePhase::Skipped => NodeProgress::Finished,
        NodePhase::Failed => NodeProgress::Failed,
        NodePhase::Baking => NodeProgress::Baking,
        _ => NodeProgress::InFlight,
    }
}

impl Pass<'_, '_> {
    /// Brings the planner's observations up to date with what the pass's steps changed.
    fn refresh_observations(&mut self, view: &mut View) {
        let agent_node = self.snap.agent_node;
        for ((o, (node, n, state)), marks) in view
            .observations
            .iter_mut()
            .zip(along(view.nodes.iter(), &self.mem.nodes))
            .zip(view.marks.iter())
        {
            let phase = state.map_or(NodePhase::Pending, |s| s.phase());
            // A cordon in flight: the node takes its place in the budget now (a start, or
            // a failed bake's cordon again).
            let cordoning =
                state.is_some_and(|s| matches!(s.call, Some(super::CallKind::Cordon { .. })));
            let v = overlay(*marks, n, state);
            // A failed bake takes its slot back before its cordon again: no node starts
            // into it. A baking node found cordoned (the failed bake's cordon whose
            // record a leader change lost, or someone's) is out of service too, and so
            // is one a new term has not confirmed yet (its watch may not show that
            // cordon).
            let evacuating = phase == NodePhase::Baking
                && (v.unschedulable
                    || state.is_some_and(|s| {
                        s.unconfirmed.is_some()
                            || matches!(
                                s.gates,
                                crate::rollout::node_machine::GateProgress::Failed(_)
                            )
                    }));
            o.progress = if evacuating
                || (cordoning && matches!(phase, NodePhase::Pending | NodePhase::Baking))
            {
                NodeProgress::InFlight
            } else {
                progress(phase)
            };
            o.cordoned = v.unschedulable;
            // Ours while the node carries our annotation (or, in its sequence, by the
            // record while the watch lags); a node released and cordoned again since is
            // someone else's.
            let by_us = v.ours == Some(false)
                || (phase.in_flight()
                    && state.and_then(|s| s.tracked.record.was_unschedulable) == Some(false));
            o.cordoned_by_others = o.cordoned && !by_us;
            o.held = self.held.contains(node);
            // A cordon's answer was lost: it may have applied.
            o.maybe_started =
                phase == NodePhase::Pending && state.is_some_and(|s| s.unconfirmed.is_some());
            o.last = agent_node == Some(node.as_str());
        }
    }

    /// Stage 10.
    pub(super) fn plan_wave(&mut self, view: &mut View) -> Standing {
        self.refresh_observations(view);
        self.remove_done_waiting_taints(view);
        if view.nodes.is_empty() {
            return Standing {
                phase: RolloutPhase::Blocked,
                reason: "NoNodesSelected".into(),
                message: "spec.nodeSelector matches no node".into(),
            };
        }
        // The mesh-wide breaker tripped (not during a rollback: that is the remedy).
        if self.mem.rollback.is_none()
            && let Some((generation, why)) = &self.mem.mesh.breach
            && *generation == self.snap.rollout.generation
        {
            let why = why.clone();
            return self.failure_policy(view, why, crate::rollout::status::MESH_QUERY_FAILED);
        }
        let decision = planner::next_in_waves(&view.observations, &view.waves.waves, &view.policy);
        self.mem.wave = match &decision {
            Decision::Start { wave, .. } | Decision::Blocked { wave, .. } => Some(wave.clone()),
            Decision::Complete => None,
        };
        match decision {
            Decision::Complete => self.complete(view),
            Decision::Blocked { wave, failed } => {
                let tolerated = view.settings.health.max_failed_nodes;
                let listed: Vec<String> = failed
                    .iter()
                    .take(10)
                    .map(|n| {
                        let why = self.mem.nodes.get(n).map(|s| s.tracked.message.as_str());
                        format!("{n}: {}", why.unwrap_or("failed"))
                    })
                    .collect();
                let more = match failed.len().saturating_sub(listed.len()) {
                    0 => String::new(),
                    more => format!("; and {more} more"),
                };
                let why = format!(
                    "wave {wave}: {} failed node(s), {tolerated} tolerated (spec.health.maxFailedNodes): {}{more}",
                    failed.len(),
                    listed.join("; ")
                );
                self.failure_policy(view, why, crate::rollout::status::NODE_FAILED)
            }
            Decision::Start { wave, .. } if self.mesh_breaker_unproven() => Standing {
                phase: RolloutPhase::Progressing,
                reason: "MeshBreakerStarting".into(),
                message: format!(
                    "wave {wave}: no new node starts until the mesh-wide breaker's queries (health.meshQueries) have held once"
                ),
            },
            Decision::Start { wave, nodes } => self.start(view, wave, nodes),
        }
    }

    fn start(&mut self, view: &View, wave: String, nodes: Vec<String>) -> Standing {
        let s = &view.settings;
        let held = hold(
            self.snap.rollout.spec.paused,
            s.manual_approval,
            &s.approved_waves,
            &wave,
            &s.windows,
            self.now,
        );
        if held.is_none() && self.mem.announced_wave.as_ref() != Some(&wave) {
            self.notice(
                About::Rollout,
                false,
                "WaveStarted",
                format!("wave {wave} started"),
            );
            self.mem.announced_wave = Some(wave.clone());
        }
        self.mem.awaiting_approval = None;
        self.mem.next_window = None;
        if held.is_none() {
            self.add_waiting_taints(view, &nodes);
            for node in &nodes {
                self.advance(view, node, true);
            }
        }
        let c = counts(self.mem.total, self.mem.records().map(|(_, t)| t));
        let in_flight = match (c.in_flight, c.baking) {
            (0, 0) => String::new(),
            (n, 0) => format!(" ({n} in flight finish their sequence)"),
            (0, b) => format!(" ({b} baking finish their bake)"),
            (n, b) => format!(" ({n} in flight and {b} baking finish their sequence)"),
        };
        match held {
            Some(Hold::Paused) => Standing {
                phase: RolloutPhase::Paused,
                reason: "Paused".into(),
                message: format!("spec.paused is set: no new node starts{in_flight}"),
            },
            Some(Hold::AwaitingApproval { wave }) => {
                let standing = Standing {
                    phase: RolloutPhase::AwaitingApproval,
                    reason: "AwaitingApproval".into(),
                    message: format!(
                        "wave {wave} waits for approval: ztunnel-rollout approve {} --wave {wave}{in_flight}",
                        self.name()
                    ),
                };
                self.mem.awaiting_approval = Some(wave);
                standing
            }
            Some(Hold::OutsideWindow { next }) => {
                self.mem.next_window = next;
                self.plan.wake(next);
                Standing {
                    phase: RolloutPhase::OutsideWindow,
                    reason: "OutsideMaintenanceWindow".into(),
                    message: match next {
                        Some(next) => format!(
                            "no maintenance window is open: the next opens at {next}{in_flight}"
                        ),
                        None => format!("no maintenance window opens within a week{in_flight}"),
                    },
                }
            }
            None if nodes.is_empty() && c.in_flight == 0 && c.baking == 0 => {
                self.waiting_wave(view, &wave)
            }
            None if nodes.is_empty() && c.in_flight == 0 => {
                let baking: Vec<String> = self
                    .mem
                    .nodes
                    .iter()
                    .filter(|(_, s)| s.phase() == NodePhase::Baking)
                    .map(|(n, _)| n.clone())
                    .collect();
                Standing {
                    phase: RolloutPhase::Progressing,
                    reason: "NodesBaking".into(),
                    message: format!(
                        "wave {wave}: {} baking (health.bake): {}; the next wave starts once their bake passed; {} done, {} skipped of {}",
                        baking.len(),
                        crate::rollout::status::some_of(&baking, LISTED),
                        c.done,
                        c.skipped,
                        c.total
                    ),
                }
            }
            None => {
                let caveat = if view.rolling_update {
                    " (RollingUpdate DaemonSet: its controller may replace pods outside the waves)"
                } else {
                    ""
                };
                Standing {
                    phase: RolloutPhase::Progressing,
                    reason: "NodesInProgress".into(),
                    message: format!(
                        "wave {wave}: {} in flight{}; {} done, {} skipped of {}{caveat}",
                        c.in_flight,
                        if c.baking > 0 {
                            format!(", {} baking", c.baking)
                        } else {
                            String::new()
                        },
                        c.done,
                        c.skipped,
                        c.total
                    ),
                }
            }
        }
    }

    /// Nothing in flight and nothing may start: say what the wave waits for.
    fn waiting_wave(&self, view: &View, wave: &str) -> Standing {
        let members = || {
            view.observations
                .iter()
                .filter(|o| view.waves.wave_of.get(&o.name).map(String::as_str) == Some(wave))
        };
        let unavailable: Vec<String> = members()
            .filter_map(|o| {
                o.unavailable_because()
                    .map(|why| format!("{} ({why})", o.name))
            })
            .collect();
        let failed_only = members()
            .filter(|o| o.unavailable_because().is_some())
            .all(|o| o.progress == NodeProgress::Failed && !o.not_ready && !o.cordoned_by_others);
        if !unavailable.is_empty() && failed_only {
            // Only failed nodes left cordoned for inspection hold the wave: a person
            // must act, so say it as a pause.
            return Standing {
                phase: RolloutPhase::Paused,
                reason: crate::rollout::status::NODE_FAILED.into(),
                message: format!(
                    "wave {wave} waits: its maxUnavailable budget is used by failed nodes left cordoned for inspection: {}; uncordon them once inspected and the wave goes on, or set spec.health.uncordonFailedNodes, raise spec.waves.maxUnavailable, or abort the rollout",
                    crate::rollout::status::some_of(&unavailable, LISTED)
                ),
            };
        }
        if !unavailable.is_empty() {
            let by_others = members().any(|o| o.cordoned_by_others);
            let way_out = if by_others {
                "; uncordon the nodes cordoned by someone else, or raise spec.waves.maxUnavailable"
            } else {
                "; it goes on once they are available again, or raise spec.waves.maxUnavailable"
            };
            return Standing {
                phase: RolloutPhase::Progressing,
                reason: "BudgetUsedByUnavailableNodes".into(),
                message: format!(
                    "wave {wave} waits: its maxUnavailable budget is used by nodes unavailable for other reasons: {}{way_out}",
                    crate::rollout::status::some_of(&unavailable, LISTED)
                ),
            };
        }
        // Held by their machine (a ztunnel not Ready, a window), or waiting to retry a
        // failed call.
        let held: Vec<String> = members()
            .filter(|o| o.progress == NodeProgress::Pending)
            .filter_map(|o| {
                let state = self.mem.nodes.get(&o.name);
                let retrying = state.and_then(|s| s.retry.error.as_deref());
                let why = match (o.held, retrying) {
                    (_, Some(error)) => format!("retrying: {error}"),
                    (true, None) => state.map(|s| s.tracked.message.clone()).unwrap_or_default(),
                    (false, None) => return None,
                };
                Some(format!("{} ({why})", o.name))
            })
            .collect();
        Standing {
            phase: RolloutPhase::Progressing,
            reason: "NodesHeld".into(),
            message: format!(
                "wave {wave} waits for nodes that cannot start yet: {}",
                crate::rollout::status::some_of(&held, 5)
            ),
        }
    }

    /// Every node is finished: release what the rollout still owns (failed nodes left
    /// cordoned), remove the waiting taints; then the rollout is final.
    fn complete(&mut self, view: &View) -> Standing {
        let rolled_back = self.mem.rollback.clone();
        let why = if rolled_back.is_some() {
            "the rollout rolled back"
        } else {
            "the rollout completed"
        };
        let left = self.release_everything(why);
        if left > 0 {
            return Standing {
                phase: RolloutPhase::Progressing,
                reason: "Finishing".into(),
                message: format!(
                    "every node is finished; releasing {left} node(s) (cordons, annotations, waiting taints) before the rollout completes"
                ),
            };
        }
        let standing = match rolled_back {
            Some(rb) => Standing {
                phase: RolloutPhase::RolledBack,
                reason: "RolledBack".into(),
                message: format!(
                    "every node runs the restored ztunnel revision {} again; revision {} failed: {}",
                    view.target.revision_hash, rb.from, rb.reason
                ),
            },
            None => {
                let c = counts(self.mem.total, self.mem.records().map(|(_, t)| t));
                let except = if c.failed > 0 {
                    format!(
                        " except {} failed (tolerated by maxFailedNodes; released)",
                        c.failed
                    )
                } else {
                    String::new()
                };
                Standing {
                    phase: RolloutPhase::Complete,
                    reason: "AllNodesDone".into(),
                    message: format!(
                        "every node{except} runs ztunnel revision {}",
                        view.target.revision_hash
                    ),
                }
            }
        };
        self.finish_terminal();
        standing
    }
}
