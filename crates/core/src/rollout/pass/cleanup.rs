//! The end of a rollout, however it ends — completed, rolled back, aborted or deleted:
//! drains and gates stop, calls in flight are waited for (a cordon may already be
//! applied), every node the rollout may hold is released (read afresh when the watch
//! does not show our cordon), its waiting taints go, and only then is the rollout
//! final and its finalizer removed. Also the finalizer before the first cordon, and the
//! waiting taints while the rollout runs.

use std::collections::BTreeSet;

use k8s_openapi::jiff::SignedDuration;

use super::effects::{CallKind, Effect};
use super::facts::{node_view, unschedulable};
use super::{Pass, View};
use crate::object::ObjectMetaExt;
use crate::rollout::node_machine::NodePhase;
use crate::rollout::ownership::{has_waiting_taint, owner};
use crate::rollout::status::{RolloutPhase, Standing};

impl Pass<'_, '_> {
    /// Stage 3: `spec.abort`, or the rollout is being deleted.
    pub(super) fn abort(&mut self) {
        let deleting = self.snap.rollout.deleting;
        if !deleting && self.finished() {
            // Already finished: an abort changes nothing any more.
            return;
        }
        self.cancel_tasks();
        let why = if deleting {
            "the rollout is being deleted"
        } else {
            "the rollout was aborted"
        };
        let left = self.release_everything(why);
        if left > 0 {
            let standing = Standing {
                phase: RolloutPhase::Aborting,
                reason: "Aborting".into(),
                message: format!(
                    "{why}: releasing {left} node(s) it cordoned or tainted (only nodes it cordoned are uncordoned)"
                ),
            };
            if deleting {
                self.plan.standing = Some(standing);
            } else {
                self.record(standing);
            }
            return;
        }
        if deleting {
            // Everything released: let the object go.
            self.remove_finalizer();
            self.plan.standing = Some(Standing {
                phase: RolloutPhase::Aborted,
                reason: "Deleted".into(),
                message: "the rollout is deleted; every node it cordoned was released".into(),
            });
            return;
        }
        self.finish_terminal();
        self.record(Standing {
            phase: RolloutPhase::Aborted,
            reason: "Aborted".into(),
            message: "spec.abort is set: every node this rollout cordoned was released".into(),
        });
    }

    /// Stage 4: a rollout whose status says Complete, RolledBack or Aborted is final: it
    /// drops its finalizer, is deleted after its retention, and changes nothing else.
    pub(super) fn finished(&mut self) -> bool {
        let phase = self
            .mem
            .status
            .written
            .as_ref()
            .or(self.snap.rollout.status)
            .and_then(|s| s.phase.as_deref());
        let written = matches!(phase, Some("Complete" | "RolledBack" | "Aborted"));
        // Decided this term, its status not written yet: final all the same (a node
        // that appears meanwhile is not started); the write goes on until it lands.
        let decided = self.mem.finished_at.is_some()
            && self
                .mem
                .standing
                .as_ref()
                .is_some_and(|s| s.phase.is_terminal());
        if !written && !decided {
            return false;
        }
        if !written && let Some(standing) = self.mem.standing.clone() {
            self.remove_finalizer();
            self.record(standing);
            return true;
        }
        if self.mem.finished_at.is_none() {
            self.mem.finished_at = self
                .snap
                .rollout
                .status
                .and_then(|s| s.finished_at.as_deref())
                .and_then(|t| t.parse().ok());
        }
        self.remove_finalizer();
        if let (Some(ttl), Some(at)) = (
            self.snap.rollout.spec.ttl_seconds_after_finished,
            self.mem.finished_at,
        ) {
            let due = at + SignedDuration::from_secs(i64::from(ttl));
            if self.now >= due {
                if !self.mem.delete_sent && self.mem.delete_retry.due(self.now) {
                    self.mem.delete_sent = true;
                    self.plan.effects.push(Effect::DeleteRollout);
                } else {
                    self.plan.wake(self.mem.delete_retry.at);
                }
            } else {
                self.plan.wake(Some(due));
            }
        }
        self.plan.finished = !self.finalizer_present() && !self.mem.finalizer.in_flight;
        true
    }

    /// The rollout reached a terminal phase now.
    pub(super) fn finish_terminal(&mut self) {
        self.mem.finished_at.get_or_insert(self.now);
        self.remove_finalizer();
    }

    fn cancel_tasks(&mut self) {
        let mut cancel = Vec::new();
        for (node, s) in self.mem.nodes.iter_mut() {
            if s.drain == crate::rollout::node_machine::DrainProgress::Running {
                s.drain = crate::rollout::node_machine::DrainProgress::NotStarted;
                cancel.push(Effect::CancelDrain { node: node.clone() });
            }
            if matches!(
                s.gates,
                crate::rollout::node_machine::GateProgress::Waiting(_)
            ) {
                s.gates = crate::rollout::node_machine::GateProgress::NotStarted;
                cancel.push(Effect::CancelGates { node: node.clone() });
            }
            if matches!(
                s.connections,
                crate::rollout::node_machine::ConnectionsProgress::Waiting(_)
            ) {
                s.connections = crate::rollout::node_machine::ConnectionsProgress::NotStarted;
                cancel.push(Effect::CancelConnections { node: node.clone() });
            }
        }
        self.plan.effects.extend(cancel);
        self.stop_mesh_breaker();
    }

    /// Releases every node the rollout may hold and removes its waiting taints; returns
    /// how many nodes are not done yet (a call in flight, a release or taint removal not
    /// confirmed). Zero: nothing of the rollout is left on any node.
    pub(super) fn release_everything(&mut self, why: &str) -> usize {
        let name = self.snap.rollout.name;
        let mut candidates: BTreeSet<String> = self
            .mem
            .nodes
            .iter()
            .filter(|(_, s)| s.touched || s.may_have_taint || s.call.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        candidates.extend(
            self.snap
                .nodes
                .iter()
                .filter(|(_, n)| owner(n) == Some(name) || has_waiting_taint(n, name))
                .map(|(n, _)| n.clone()),
        );
        let mut left = 0;
        for node in candidates {
            let n = self.snap.nodes.get(&node).cloned();
            let state = self.mem.nodes.get(&node);
            if state.is_some_and(|s| s.call.is_some()) {
                left += 1;
                continue;
            }
            if let Some(s) = state
                && !s.retry.due(self.now)
            {
                self.plan.wake(s.retry.at);
                left += 1;
                continue;
            }
            let Some(n) = n else {
                // The node is gone: nothing of ours is left on it.
                if let Some(s) = self.mem.nodes.get_mut(&node) {
                    s.touched = false;
                    s.may_have_taint = false;
                }
                continue;
            };
            let v = node_view(name, &n, state);
            let touched = state.is_some_and(|s| s.touched);
            if v.ours.is_some() || touched {
                // Uncordoned only if the annotation (read afresh if need be) says the
                // node was schedulable before the rollout cordoned it.
                let phase = state.map_or(NodePhase::Pending, |s| s.phase());
                let message = match phase {
                    NodePhase::Done | NodePhase::Skipped | NodePhase::Pending => None,
                    _ => Some((phase, format!("{why}: released"))),
                };
                // Uncordoned only if our annotation (read afresh if need be) says the
                // cordon is ours; a lost one is disowned first.
                if let Some(lost) = state.and_then(|s| s.disown.as_ref()) {
                    let cordon = lost.id.clone();
                    self.send_call(&node, CallKind::Disown { cordon }, None);
                } else {
                    self.send_call(&node, CallKind::Release { uncordon: true }, message);
                }
                left += 1;
                continue;
            }
            if v.waiting_taint || state.is_some_and(|s| s.may_have_taint) {
                self.send_call(&node, CallKind::WaitingTaint { waiting: false }, None);
                left += 1;
            }
        }
        left
    }

    fn finalizer_present(&self) -> bool {
        !self.mem.finalizer.removed && (self.mem.finalizer.present || self.snap.rollout.finalizer)
    }

    /// Whether the finalizer that guarantees every node's release is in place; asks for
    /// it otherwise.
    pub(super) fn ensure_finalizer(&mut self) -> bool {
        if self.finalizer_present() {
            self.mem.finalizer.present = true;
            return true;
        }
        let f = &mut self.mem.finalizer;
        if !f.in_flight && f.retry.due(self.now) {
            f.in_flight = true;
            f.removed = false;
            self.plan.effects.push(Effect::Finalizer { add: true });
        } else {
            self.plan.wake(f.retry.at);
        }
        false
    }

    fn remove_finalizer(&mut self) {
        if !self.finalizer_present() {
            return;
        }
        let f = &mut self.mem.finalizer;
        if !f.in_flight && f.retry.due(self.now) {
            f.in_flight = true;
            self.plan.effects.push(Effect::Finalizer { add: false });
        } else {
            self.plan.wake(f.retry.at);
        }
    }

    /// Nodes that stopped waiting without a cordon (skipped, or failed untouched) lose
    /// the waiting taint now, not when the rollout ends (it may be paused for long).
    pub(super) fn remove_done_waiting_taints(&mut self, view: &View) {
        let name = self.snap.rollout.name;
        let now = self.now;
        let done_waiting: Vec<String> = super::derived::along(view.nodes.iter(), &self.mem.nodes)
            .filter(|(_, n, state)| {
                state.is_some_and(|s| {
                    matches!(s.phase(), NodePhase::Skipped | NodePhase::Failed)
                        && s.call.is_none()
                        && s.retry.due(now)
                }) && node_view(name, n, *state).waiting_taint
            })
            .map(|(node, _, _)| node.clone())
            .collect();
        for node in done_waiting {
            self.send_call(&node, CallKind::WaitingTaint { waiting: false }, None);
        }
    }

    /// Nodes still waiting for their turn get the rollout's PreferNoSchedule taint, so
    /// evicted pods land on nodes already done and are not disrupted twice. Nodes
    /// starting now are cordoned instead (a taint first would only make their cordon's
    /// conditional patch conflict).
    pub(super) fn add_waiting_taints(&mut self, view: &View, starting: &[String]) {
        let name = self.snap.rollout.name;
        let starting: BTreeSet<&str> = starting.iter().map(String::as_str).collect();
        let now = self.now;
        // Cheapest tests first: this runs over every node on every pass.
        let waiting: Vec<String> = super::derived::along(view.nodes.iter(), &self.mem.nodes)
            .filter(|(node, n, state)| {
                state.is_none_or(|s| {
                    s.phase() == NodePhase::Pending && s.call.is_none() && s.retry.due(now)
                }) && !unschedulable(n)
                    && !starting.contains(node.as_str())
                    && !node_view(name, n, *state).waiting_taint
                    && view.settings.nodes.matches(n.labels())
            })
            .map(|(node, _, _)| node.clone())
            .collect();
        if waiting.is_empty() || !self.ensure_finalizer() {
            return;
        }
        for node in waiting {
            self.send_call(&node, CallKind::WaitingTaint { waiting: true }, None);
        }
    }
}
