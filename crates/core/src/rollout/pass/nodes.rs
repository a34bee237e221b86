//! Stage 9: every node the rollout started goes through its machine until it must wait
//! for the cluster; pending nodes are skipped, resumed (a crash after our cordon) or
//! held. What a step says is done here: a phase recorded, a call or task started.

use super::effects::{
    About, CallKind, ConnectionsRequest, Effect, GateRequest, NodeCall, Transition,
};
use super::memory::Unconfirmed;
use super::{Pass, View};
use crate::rollout::node_machine::{
    self, Call, ConnectionsProgress, DrainProgress, GateProgress, NodePhase, Step, Task,
};
use crate::rollout::status::TrackedNode;

/// Pure transitions that chain in one pass for one node; a call or a task ends it.
const STEPS_PER_PASS: usize = 8;

impl Pass<'_, '_> {
    /// Stage 9.
    pub(super) fn step_nodes(&mut self, view: &View) {
        self.scan_pending(view);
        self.step_in_flight(view);
    }

    /// Pending nodes: skip those already current or that the DaemonSet does not run on,
    /// resume those a crash left cordoned by us, and hold those that cannot start now.
    fn scan_pending(&mut self, view: &View) {
        let mut apply = Vec::new();
        for ((node, n), marks) in view.nodes.iter().zip(view.marks.iter()) {
            let state = self.mem.nodes.get(node);
            if state.is_some_and(|s| s.phase() != NodePhase::Pending || s.call.is_some()) {
                continue;
            }
            if state.is_some() && !self.confirmed(view, node) {
                continue;
            }
            let state = self.mem.nodes.get(node);
            let record = state.map_or_else(
                || TrackedNode::pending(self.now).record,
                |s| s.tracked.record.clone(),
            );
            let facts = self.facts(view, node, Some(n), Some(*marks));
            let step = node_machine::next_step(&record, &facts, &view.target, self.now);
            // Ours already and still cordoned (a crash after our cordon): carry on
            // without the budget — it is unavailable already. Ours but uncordoned since
            // is the planner's to start again, within the budget. (So is a cordon sent
            // but not confirmed: it counts against the budget meanwhile.)
            let resume =
                matches!(facts.owner, node_machine::Owner::Us { .. }) && facts.unschedulable;
            match &step {
                Step::Now { .. } => apply.push((node.clone(), step)),
                Step::Call { .. } if resume => apply.push((node.clone(), step)),
                Step::Wait { until, message } => {
                    let ztunnel = node_machine::waits_for_ztunnel(&record, &step);
                    if ztunnel || state.is_some() {
                        let now = self.now;
                        let s = self.mem.node(node, now);
                        s.tracked.message = message.clone();
                        if ztunnel {
                            s.waiting_for_ztunnel_since.get_or_insert(now);
                        }
                    }
                    self.plan.wake(*until);
                    self.held.insert(node.clone());
                }
                _ => {
                    if let Some(s) = self.mem.nodes.get_mut(node) {
                        s.waiting_for_ztunnel_since = None;
                    }
                }
            }
        }
        for (node, step) in apply {
            if matches!(step, Step::Call { .. }) {
                // A resume (ours already, no budget needed), through `advance`: it waits
                // for the retry's time and the finalizer.
                self.advance(view, &node, true);
            } else {
                self.apply_step(&node, step);
                self.advance(view, &node, false);
            }
        }
    }

    /// Nodes between their cordon and their release.
    pub(super) fn step_in_flight(&mut self, view: &View) {
        let in_flight: Vec<String> = self
            .mem
            .nodes
            .iter()
            .filter(|(_, s)| s.phase().in_flight())
            .map(|(n, _)| n.clone())
            .collect();
        for node in in_flight {
            self.advance(view, &node, false);
        }
    }

    /// Steps one node until it must wait for the cluster. A node that goes (back) to
    /// Pending starts again only when `may_start` (the planner chose it).
    pub(super) fn advance(&mut self, view: &View, node: &str, may_start: bool) {
        let now = self.now;
        self.mem.node(node, now);
        for _ in 0..STEPS_PER_PASS {
            let Some(state) = self.mem.nodes.get(node) else {
                return;
            };
            if state.call.is_some() {
                return;
            }
            if !state.retry.due(self.now) {
                self.plan.wake(state.retry.at);
                return;
            }
            if !self.confirmed(view, node) {
                return;
            }
            let Some(state) = self.mem.nodes.get(node) else {
                return;
            };
            if let Some(lost) = &state.disown {
                // Before anything else: a later cordon is not ours to undo.
                let cordon = lost.id.clone();
                self.send_call(node, CallKind::Disown { cordon }, None);
                return;
            }
            let record = state.tracked.record.clone();
            let n = self.watched(view, node);
            let facts = self.facts(view, node, n.as_ref(), None);
            let step = node_machine::next_step(&record, &facts, &view.target, self.now);
            match step {
                Step::Now { .. } => {
                    if !self.apply_step(node, step) {
                        return;
                    }
                }
                Step::Task { task, message } => {
                    self.set_message(node, message);
                    self.start_task(view, node, task);
                    return;
                }
                Step::Wait { until, message } => {
                    self.set_message(node, message);
                    self.plan.wake(until);
                    return;
                }
                Step::Call { .. } => {
                    if record.phase == NodePhase::Pending && (!may_start || !self.may_cordon(node))
                    {
                        return;
                    }
                    if record.phase == NodePhase::Baking
                        && matches!(
                            step,
                            Step::Call {
                                call: Call::Cordon { .. },
                                ..
                            }
                        )
                        && !self.evacuation_fits(view, node)
                    {
                        let message = format!(
                            "{}; waiting for a slot in its wave's budget (spec.waves.maxUnavailable) to cordon it again",
                            step.message()
                        );
                        self.set_message(node, message);
                        return;
                    }
                    self.apply_step(node, step);
                    return;
                }
            }
        }
    }

    /// Whether the term knows whose the node is, so that it may step it: not while a
    /// cordon's answer was lost (it may have applied), nor while the watch does not show
    /// the annotation the term's fresh read found (the watch lags: its copy would say
    /// the node is not ours). Until then the node is read afresh (its retry permitting):
    /// the answer settles it (see `outcomes`).
    fn confirmed(&mut self, view: &View, node: &str) -> bool {
        let n = self.watched(view, node);
        let name = self.snap.rollout.name;
        let now = self.now;
        let Some(state) = self.mem.nodes.get_mut(node) else {
            return true;
        };
        match state.unconfirmed {
            None => return true,
            Some(Unconfirmed::Owned)
                if n.as_ref()
                    .is_none_or(|n| crate::rollout::ownership::owner(n) == Some(name)) =>
            {
                state.unconfirmed = None;
                return true;
            }
            Some(_) => {}
        }
        if state.call.is_some() {
            return false;
        }
        if !state.retry.due(now) {
            self.plan.wake(state.retry.at);
            return false;
        }
        let watched = n.and_then(|n| n.metadata.resource_version.clone());
        self.send_call(node, CallKind::Check { watched }, None);
        false
    }

    /// Whether this pass may cordon a node: only with the finalizer that guarantees its
    /// release in place (added first otherwise).
    pub(super) fn may_cordon(&mut self, _node: &str) -> bool {
        self.ensure_finalizer()
    }

    /// Does what `step` says for `node`: records a phase, or starts a call. Returns
    /// whether the node's phase changed.
    pub(super) fn apply_step(&mut self, node: &str, step: Step) -> bool {
        match step {
            Step::Now { phase, message } => self.transition(node, phase, message),
            Step::Call {
                call,
                then,
                message,
            } => {
                let now = self.now;
                let state = self.mem.node(node, now);
                // A failed bake's cordon is not a cordon again after someone else's
                // uncordon.
                let recordon = matches!(call, Call::Cordon { .. })
                    && !matches!(state.phase(), NodePhase::Pending | NodePhase::Baking);
                if recordon {
                    // Uncordoned under us: the drain (if any) starts over once cordoned.
                    if state.drain == DrainProgress::Running {
                        state.drain = DrainProgress::NotStarted;
                        self.plan.effects.push(Effect::CancelDrain {
                            node: node.to_owned(),
                        });
                    }
                    let note = format!("{}: {message}", self.name());
                    self.notice(About::Node(node.to_owned()), true, "Uncordoned", note);
                }
                // A node not started yet is checked for drain blockers first; one this
                // rollout cordoned already (a resume, a cordon again) is not.
                let ours = self.snap.nodes.get(node).is_some_and(|n| {
                    crate::rollout::ownership::owner(n) == Some(self.snap.rollout.name)
                });
                let first = !recordon && !ours;
                let kind = match call {
                    Call::Cordon { was_unschedulable } => CallKind::Cordon {
                        was_unschedulable,
                        drain_check: first.then(|| self.drain_filter.clone()).flatten(),
                    },
                    Call::DeleteZtunnelPod { name, uid } => CallKind::DeleteZtunnelPod {
                        namespace: self.snap.rollout.spec.daemon_set.namespace.clone(),
                        name,
                        uid,
                    },
                    Call::DeleteCniPod { name, uid } => CallKind::DeleteCniPod {
                        namespace: self
                            .snap
                            .rollout
                            .spec
                            .cni
                            .as_ref()
                            .map(|c| c.namespace.clone())
                            .unwrap_or_default(),
                        name,
                        uid,
                    },
                    Call::Release { uncordon } => CallKind::Release { uncordon },
                    Call::Uncordon => CallKind::Uncordon,
                };
                self.send_call(node, kind, Some((then, message)));
                false
            }
            Step::Task { message, .. } | Step::Wait { message, .. } => {
                self.set_message(node, message);
                false
            }
        }
    }

    /// Whether a node whose bake failed may be cordoned again now: the wave's nodes in
    /// the rollout's sequence (out of service, or a start's cordon in flight) leave room
    /// in its budget. Only those: they finish in bounded time, so the wait is bounded.
    /// Nodes unavailable for good (failed and left cordoned, cordoned by someone else,
    /// NotReady) do not hold it back: the pods on a node whose ztunnel failed its bake
    /// must not wait for a person. Meanwhile the planner counts the node as in flight,
    /// so no node starts into its slot.
    fn evacuation_fits(&self, view: &View, node: &str) -> bool {
        let Some(wave) = view.waves.wave_of.get(node) else {
            return true;
        };
        if view
            .nodes
            .get(node)
            .is_some_and(|n| super::facts::unschedulable(n))
        {
            // Cordoned by someone else meanwhile: unavailable already.
            return true;
        }
        let members: Vec<&String> = view
            .waves
            .wave_of
            .iter()
            .filter(|(_, w)| *w == wave)
            .map(|(n, _)| n)
            .collect();
        let budget = view.policy.max_unavailable.budget(members.len());
        let used = members
            .iter()
            .filter(|n| n.as_str() != node)
            .filter(|n| {
                self.mem.nodes.get(n.as_str()).is_some_and(|s| {
                    s.phase().out_of_service() || matches!(s.call, Some(CallKind::Cordon { .. }))
                })
            })
            .count();
        used < budget
    }

    /// Starts a node API call; its outcome comes back to a later pass.
    pub(super) fn send_call(
        &mut self,
        node: &str,
        kind: CallKind,
        then: Option<(NodePhase, String)>,
    ) {
        let observed = self.snap.nodes.get(node).cloned();
        let now = self.now;
        let state = self.mem.node(node, now);
        if matches!(kind, CallKind::Cordon { .. }) {
            state.touched = true;
        }
        if matches!(kind, CallKind::WaitingTaint { waiting: true }) {
            state.may_have_taint = true;
        }
        state.call = Some(kind.clone());
        state.then = then;
        self.plan.effects.push(Effect::Call(NodeCall {
            node: node.to_owned(),
            kind,
            observed,
        }));
    }

    fn set_message(&mut self, node: &str, message: String) {
        if message.is_empty() {
            return;
        }
        if let Some(s) = self.mem.nodes.get_mut(node) {
            s.tracked.message = message;
        }
    }

    fn start_task(&mut self, view: &View, node: &str, task: Task) {
        let now = self.now;
        match task {
            Task::Drain => {
                if self.snap.agent_node == Some(node) && !self.config.may_drain_own_node {
                    // This replica runs on the node: another one drains it.
                    if self.mem.stepped_down_for.as_deref() != Some(node) {
                        self.mem.stepped_down_for = Some(node.to_owned());
                        self.plan.effects.push(Effect::StepDown {
                            node: node.to_owned(),
                        });
                    }
                    return;
                }
                let state = self.mem.node(node, now);
                if state.drain == DrainProgress::NotStarted
                    || matches!(state.drain, DrainProgress::RetryAt(at, _) if at <= now)
                {
                    state.drain = DrainProgress::Running;
                    self.plan.effects.push(Effect::Drain {
                        node: node.to_owned(),
                        options: view.settings.drain.clone(),
                    });
                }
            }
            Task::Connections => {
                let Some(settings) = view.settings.health.connection_drain else {
                    return;
                };
                // The pod the machine is about to delete: the one not on the target
                // revision, or (cycling) the one that predates the drain.
                let since = self.mem.nodes.get(node).map(|s| s.tracked.record.since);
                let pods = self.snap.ztunnels.get(node);
                let pod = pods.and_then(|pods| {
                    let live = pods.iter().filter(|p| !p.terminating);
                    live.clone()
                        .find(|p| p.revision_hash != view.target.revision_hash)
                        .or_else(|| live.clone().find(|p| since.is_some_and(|s| p.created < s)))
                        .cloned()
                });
                let Some(pod) = pod else {
                    return;
                };
                let interval = view.settings.health.interval;
                let state = self.mem.node(node, now);
                if state.connections == ConnectionsProgress::NotStarted {
                    state.connections = ConnectionsProgress::Waiting(String::new());
                    self.plan
                        .effects
                        .push(Effect::Connections(Box::new(ConnectionsRequest {
                            node: node.to_owned(),
                            pod: pod.name,
                            pod_uid: pod.uid,
                            ds_uid: view.ds_uid.clone(),
                            settings,
                            interval,
                            started: now,
                        })));
                }
            }
            // The gates of the verification, or of the bake (its clock starts at the
            // uncordon, when the node entered Baking).
            Task::Gates | Task::Bake => {
                let bake = task == Task::Bake;
                let settings = if bake {
                    let Some(settings) = view.settings.health.for_bake() else {
                        return;
                    };
                    settings
                } else {
                    view.settings.health.clone()
                };
                let state = self.mem.node(node, now);
                if state.gates == GateProgress::NotStarted {
                    state.gates = GateProgress::Waiting(String::new());
                    let request = GateRequest {
                        node: node.to_owned(),
                        ds_uid: view.ds_uid.clone(),
                        target_hash: view.target.revision_hash.clone(),
                        settings,
                        ready_since: state.tracked.record.since,
                        touched_at: state.tracked.started,
                        bake,
                    };
                    self.plan.effects.push(Effect::Gates(Box::new(request)));
                }
            }
        }
    }

    /// Records `phase` for `node` (and its Events); returns whether it changed.
    pub(super) fn transition(&mut self, node: &str, phase: NodePhase, message: String) -> bool {
        let now = self.now;
        let state = self.mem.node(node, now);
        let t = &mut state.tracked;
        if t.record.phase == phase {
            if !message.is_empty() {
                t.message = message;
            }
            return false;
        }
        let from = t.record.phase;
        if from == NodePhase::Drained
            && matches!(state.connections, ConnectionsProgress::Waiting(_))
        {
            // Leaving the wait before the delete (uncordoned, retargeted): it stops.
            state.connections = ConnectionsProgress::NotStarted;
            self.plan.effects.push(Effect::CancelConnections {
                node: node.to_owned(),
            });
        }
        let state = self.mem.node(node, now);
        if matches!(from, NodePhase::ZtunnelReady | NodePhase::Baking)
            && matches!(state.gates, GateProgress::Waiting(_))
        {
            // Leaving verification or the bake (a target change): its gates stop.
            state.gates = GateProgress::NotStarted;
            self.plan.effects.push(Effect::CancelGates {
                node: node.to_owned(),
            });
        }
        let state = self.mem.node(node, now);
        state.cni_deleted_at = None;
        let t = &mut state.tracked;
        t.record.phase = phase;
        t.record.since = now;
        t.message = message.clone();
        match phase {
            NodePhase::Pending => {
                // Going again from the start: read everything afresh.
                t.record.was_unschedulable = None;
                t.started = None;
                state.recordons = 0;
                state.released = false;
                state.waiting_for_ztunnel_since = None;
                state.drain = DrainProgress::NotStarted;
                state.gates = GateProgress::NotStarted;
            }
            // The same cordon as the evacuation's (a retarget): its drain goes on.
            NodePhase::Cordoned if from == NodePhase::Evacuating => {}
            NodePhase::Cordoned => state.drain = DrainProgress::NotStarted,
            // Each time the node is (again) drained, its old ztunnel's connections are
            // read afresh.
            NodePhase::Drained => state.connections = ConnectionsProgress::NotStarted,
            NodePhase::ZtunnelReady | NodePhase::Baking => state.gates = GateProgress::NotStarted,
            // The bake's failure stays (the node's final message names it); the drain
            // is for this cordon.
            NodePhase::Evacuating => state.drain = DrainProgress::NotStarted,
            _ => {}
        }
        let started = state.tracked.started;
        self.plan.transitions.push(Transition {
            node: node.to_owned(),
            from,
            to: phase,
            message: message.clone(),
            started,
            at: now,
        });
        let warning = matches!(phase, NodePhase::Failed | NodePhase::Evacuating);
        let note = format!("{}: {message}", self.name());
        self.notice(About::Node(node.to_owned()), warning, phase.as_str(), note);
        if phase.is_terminal() {
            self.notice(
                About::RolloutNode(node.to_owned()),
                warning,
                &format!("Node{}", phase.as_str()),
                format!("node {node}: {message}"),
            );
        }
        true
    }
}
