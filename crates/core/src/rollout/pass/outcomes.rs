//! Stage 1: what came back from the effects of earlier passes. A call that succeeded
//! records the phase its step announced; one that failed is retried with backoff —
//! trouble of the API server never fails a node, only a refusal does, and a release is
//! retried for as long as this replica leads.

use k8s_openapi::jiff::SignedDuration;

use super::Pass;
use super::effects::{
    About, CallDone, CallError, CallKind, ConnectionsEvent, DrainOutcome, GateEvent, MeshEvent,
    Outcome,
};
use super::memory::{Expectation, LostCordon, Unconfirmed, Wrote, backoff};
use crate::api_errors::ApiFailure;
use crate::api_errors::Fault;
use crate::rollout::node_machine::{
    self, ConnectionsProgress, DrainProgress, GateProgress, NodePhase,
};

/// Failed attempts of one call after which every further failure is announced by an
/// Event only every this many attempts.
const EVENT_EVERY: u32 = 10;

impl Pass<'_, '_> {
    pub(super) fn take(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Call { call, result } => self.call_done(&call.node, &call.kind, result),
            Outcome::Drain { node, result } => {
                let now = self.now;
                let Some(state) = self.mem.nodes.get_mut(&node) else {
                    return;
                };
                if !matches!(state.phase(), NodePhase::Cordoned | NodePhase::Evacuating)
                    || state.drain != DrainProgress::Running
                {
                    return; // Cancelled meanwhile, or from an earlier cordon.
                }
                state.drain = match result {
                    DrainOutcome::Drained => DrainProgress::Drained,
                    DrainOutcome::Blocked(why) => DrainProgress::Blocked(why),
                    DrainOutcome::ApiTrouble(why) => {
                        state.retry.failures += 1;
                        let at =
                            now + backoff(state.retry.failures).max(SignedDuration::from_secs(1));
                        let note = format!("the drain met API trouble, draining again: {why}");
                        state.tracked.message = note.clone();
                        state.drain = DrainProgress::RetryAt(at, why);
                        self.plan.wake(Some(at));
                        let note = format!("{}: {note}", self.snap.rollout.name);
                        self.notice(About::Node(node.clone()), true, "DrainRetry", note);
                        return;
                    }
                };
            }
            Outcome::Gate { node, event } => {
                let Some(state) = self.mem.nodes.get_mut(&node) else {
                    return;
                };
                let doing = match state.phase() {
                    NodePhase::ZtunnelReady => "verifying",
                    NodePhase::Baking => "baking",
                    _ => return,
                };
                match event {
                    GateEvent::Waiting(why) => {
                        state.tracked.message = format!("{doing}: {why}");
                        state.gates = GateProgress::Waiting(why);
                    }
                    GateEvent::Done(Ok(note)) => state.gates = GateProgress::Passed(note),
                    GateEvent::Done(Err(why)) => state.gates = GateProgress::Failed(why),
                }
            }
            Outcome::Mesh { generation, event } => {
                if generation == self.snap.rollout.generation
                    && self.mem.mesh.running == Some(generation)
                {
                    match event {
                        MeshEvent::Held => self.mem.mesh.held = Some(generation),
                        MeshEvent::Breached(why) => {
                            self.mem.mesh.running = None;
                            self.mem.mesh.breach = Some((generation, why));
                        }
                    }
                }
            }
            Outcome::Connections { node, event } => {
                let Some(state) = self.mem.nodes.get_mut(&node) else {
                    return;
                };
                if state.phase() != NodePhase::Drained
                    || !matches!(state.connections, ConnectionsProgress::Waiting(_))
                {
                    return;
                }
                let open = match &event {
                    ConnectionsEvent::Open(what) => Some(what.clone()),
                    _ => None,
                };
                state.connections = match event {
                    ConnectionsEvent::Waiting(why) => {
                        state.tracked.message = why.clone();
                        ConnectionsProgress::Waiting(why)
                    }
                    ConnectionsEvent::Closed(note) => ConnectionsProgress::Closed(note),
                    ConnectionsEvent::Open(what) => ConnectionsProgress::Open(what),
                };
                if let Some(what) = open {
                    let note = format!(
                        "{}: connections still open through the old ztunnel, reset if it is replaced: {what}",
                        self.snap.rollout.name
                    );
                    self.notice(About::Node(node.clone()), true, "OpenConnections", note);
                    let note = format!(
                        "node {node}: connections still open through the old ztunnel, reset if it is replaced: {what}"
                    );
                    self.notice(About::RolloutNode(node), true, "OpenConnections", note);
                }
            }
            Outcome::Finalizer { add, result } => {
                let f = &mut self.mem.finalizer;
                f.in_flight = false;
                match result {
                    Ok(()) => {
                        f.present = add;
                        f.removed = !add;
                        f.retry.clear();
                    }
                    Err(e) => {
                        let wait = retry_after(&e.fault());
                        f.retry.failed(self.now, e.to_string(), wait);
                        self.plan.wake(f.retry.at);
                    }
                }
            }
            Outcome::Undo { cni, result } => {
                let u = if cni {
                    &mut self.mem.cni_undo
                } else {
                    &mut self.mem.undo
                };
                u.in_flight = false;
                match result {
                    Ok(()) => {
                        u.sent_at = Some(self.now);
                        u.retry.clear();
                    }
                    Err(e) => {
                        let note = if e.transient {
                            // Not the restore's fault: sent again, not counted.
                            u.attempts = u.attempts.saturating_sub(1);
                            u.blips += 1;
                            format!(
                                "restoring the DaemonSet's previous revision met an API error (not counted; {} of at most {}): {e}",
                                u.blips,
                                super::view::MAX_UNDO_BLIPS
                            )
                        } else {
                            format!(
                                "restoring the DaemonSet's previous revision failed (attempt {} of {}): {e}",
                                u.attempts,
                                super::view::MAX_UNDO_ATTEMPTS
                            )
                        };
                        u.retry.failed(self.now, e.message, None);
                        self.plan.wake(u.retry.at);
                        self.notice(About::Rollout, true, "RollbackRestoreFailed", note);
                    }
                }
            }
            Outcome::StatusWritten { status, result } => {
                let s = &mut self.mem.status;
                s.in_flight = false;
                match result {
                    Ok(()) => {
                        s.written = Some(*status);
                        s.written_at = Some(self.now);
                        s.retry.clear();
                    }
                    Err(e) => {
                        let wait = retry_after(&e.fault());
                        s.retry.failed(self.now, e.to_string(), wait);
                        self.plan.wake(s.retry.at);
                    }
                }
            }
            Outcome::Deleted { result } => match result {
                Ok(()) => self.mem.delete_retry.clear(),
                Err(e) => {
                    self.mem.delete_sent = false;
                    let wait = retry_after(&e.fault());
                    self.mem.delete_retry.failed(self.now, e.to_string(), wait);
                    self.plan.wake(self.mem.delete_retry.at);
                }
            },
        }
    }

    fn call_done(&mut self, node: &str, kind: &CallKind, result: Result<CallDone, CallError>) {
        let now = self.now;
        let Some(state) = self.mem.nodes.get_mut(node) else {
            return;
        };
        state.call = None;
        let mut then = state.then.take();
        match result {
            Ok(done) => {
                state.retry.clear();
                let over = match &done {
                    CallDone::Applied { over } | CallDone::LeftCordoned { over, .. } => {
                        over.clone()
                    }
                    CallDone::NotOwned | CallDone::Owned { .. } => Vec::new(),
                };
                match kind {
                    CallKind::Check { watched } => {
                        // Is the node ours? The fresh read says; while the watch shows
                        // the copy it showed when the read was decided (or an older
                        // one), the read's answer stands over it.
                        state.unconfirmed = None;
                        if let CallDone::Owned {
                            was_unschedulable,
                            unschedulable,
                            version,
                        } = done
                        {
                            state.touched = true;
                            if watched.as_ref() != Some(&version) {
                                state.expect = Some(Expectation {
                                    over: watched.iter().cloned().collect(),
                                    wrote: Wrote::Read {
                                        was_unschedulable,
                                        unschedulable,
                                    },
                                });
                            }
                        } else {
                            state.touched = false;
                        }
                    }
                    CallKind::Cordon {
                        was_unschedulable, ..
                    } => {
                        state.unconfirmed = None;
                        state.tracked.record.was_unschedulable = Some(*was_unschedulable);
                        state.tracked.started.get_or_insert(now);
                        state.touched = true;
                        // The cordon's patch, conditional on the version it was decided
                        // on, dropped this rollout's waiting taint if that version had
                        // it: none is left for the rollout's end to remove (which would
                        // read every node afresh to make sure, 1,000 GETs at once at
                        // 1,000 nodes).
                        state.may_have_taint = false;
                        state.expect = Some(Expectation {
                            over,
                            wrote: Wrote::Cordon {
                                was_unschedulable: *was_unschedulable,
                            },
                        });
                        if !matches!(state.phase(), NodePhase::Pending | NodePhase::Baking) {
                            // Cordoned again after someone uncordoned it: drain again.
                            state.recordons += 1;
                        }
                        state.drain = DrainProgress::NotStarted;
                    }
                    CallKind::DeleteZtunnelPod { uid, .. } => {
                        state.deleted_pod = Some(uid.clone());
                    }
                    CallKind::DeleteCniPod { uid, .. } => {
                        state.deleted_pod = Some(uid.clone());
                        state.cni_deleted_at = Some(now);
                    }
                    CallKind::Release { uncordon } => {
                        let uncordoned = *uncordon
                            && matches!(done, CallDone::Applied { .. })
                            && state.tracked.record.was_unschedulable != Some(true);
                        state.touched = false;
                        state.released = true;
                        state.gates = GateProgress::NotStarted;
                        if !over.is_empty() {
                            state.expect = Some(Expectation {
                                over,
                                wrote: Wrote::Release { uncordoned },
                            });
                        }
                        if let CallDone::LeftCordoned { by, .. } = &done {
                            then = then.map(|(phase, _)| {
                                (
                                    phase,
                                    format!("left cordoned: field manager {by:?} cordoned it again after the rollout did; the cordon is theirs to lift"),
                                )
                            });
                        }
                        if matches!(done, CallDone::NotOwned) {
                            // Say what was found: never claim an uncordon that did not happen.
                            then = then.map(|(phase, _)| {
                                (
                                    phase,
                                    "no annotation of this rollout was on the node: nothing was released or uncordoned".to_owned(),
                                )
                            });
                        }
                    }
                    CallKind::Uncordon => match &done {
                        CallDone::Applied { .. } | CallDone::LeftCordoned { .. } => {
                            // Still ours; a cordon it gets from now on is not. Someone
                            // else's cordon set since the rollout's stays: only the mark
                            // was written.
                            let kept = matches!(done, CallDone::LeftCordoned { .. });
                            state.tracked.record.was_unschedulable = Some(true);
                            state.expect = Some(Expectation {
                                over,
                                wrote: if kept { Wrote::Disown } else { Wrote::Uncordon },
                            });
                            if let CallDone::LeftCordoned { by, .. } = &done {
                                then = then.map(|(phase, _)| {
                                    (
                                        phase,
                                        format!("baking, left cordoned: field manager {by:?} cordoned it after the rollout did; the cordon is theirs to lift"),
                                    )
                                });
                            }
                        }
                        CallDone::NotOwned | CallDone::Owned { .. } => {
                            then = then.map(|(phase, _)| {
                                (
                                    phase,
                                    "no annotation of this rollout was on the node: not uncordoned"
                                        .to_owned(),
                                )
                            });
                        }
                    },
                    CallKind::Disown { .. } => {
                        // NotOwned: that cordon is gone (a later one of ours replaced
                        // it, or the node was released).
                        state.disown = None;
                        if matches!(done, CallDone::Applied { .. }) {
                            state.tracked.record.was_unschedulable = Some(true);
                            state.expect = Some(Expectation {
                                over,
                                wrote: Wrote::Disown,
                            });
                        }
                    }
                    CallKind::WaitingTaint { waiting } => {
                        state.may_have_taint = *waiting;
                        state.expect = Some(Expectation {
                            over,
                            wrote: Wrote::WaitingTaint(*waiting),
                        });
                    }
                }
                if let Some((phase, message)) = then {
                    self.transition(node, phase, message);
                }
                self.retarget_after_call(node);
            }
            Err(e) => {
                self.call_failed(node, kind, then, e);
                self.retarget_after_call(node);
            }
        }
    }

    /// A target change that came while the node's call was in flight.
    fn retarget_after_call(&mut self, node: &str) {
        let Some(state) = self.mem.nodes.get_mut(node) else {
            return;
        };
        if !std::mem::take(&mut state.retarget) {
            return;
        }
        if let Some(step) = node_machine::retarget(&state.tracked.record) {
            self.apply_step(node, step);
        }
    }

    fn call_failed(
        &mut self,
        node: &str,
        kind: &CallKind,
        then: Option<(NodePhase, String)>,
        e: CallError,
    ) {
        let now = self.now;
        let name = self.snap.rollout.name.to_owned();
        // Whether the node carries our cordon from before this call (a node going
        // again, or resumed): a failed call does not take it away.
        let ours_before = self.snap.nodes.get(node).is_some_and(|n| {
            super::facts::node_view(&name, n, self.mem.nodes.get(node))
                .ours
                .is_some()
        });
        // The cordon the watch shows: the one lost if the node turns out schedulable.
        let cordon = self
            .snap
            .nodes
            .get(node)
            .and_then(|n| crate::rollout::ownership::cordon_id(n))
            .map(str::to_owned);
        let Some(state) = self.mem.nodes.get_mut(node) else {
            return;
        };
        match &e {
            CallError::OwnedBy(owner) => {
                // Another rollout owns it: never touched; the snapshot shows the owner.
                if state.phase() == NodePhase::Pending {
                    state.touched = false;
                }
                state.tracked.message =
                    format!("owned by rollout {owner}: not touched until it releases the node");
                state
                    .retry
                    .failed(now, e.to_string(), Some(SignedDuration::from_secs(1)));
                self.plan.wake(state.retry.at);
            }
            CallError::Blocked(why) => {
                // Found before the cordon: the node fails untouched.
                state.retry.clear();
                self.apply_step(node, node_machine::refuse(why));
            }
            CallError::Schedulable | CallError::NodeGone => {
                // The next pass sees why (an uncordon: cordon and drain again; a deleted
                // node: skipped). Our cordon is gone: a later one is not ours.
                if e == CallError::Schedulable {
                    state.disown = Some(LostCordon { id: cordon });
                } else {
                    // Nothing of ours is left on a deleted node.
                    state.disown = None;
                    state.touched = false;
                }
                state.retry.failed(now, e.to_string(), None);
                self.plan.wake(state.retry.at);
            }
            CallError::Api(_) | CallError::Unsent(_) => {
                let fault = match &e {
                    CallError::Api(failure) => failure.fault(),
                    // Not the watch's lag (it may never bring a usable copy): a backoff.
                    _ => Fault::Unavailable(e.to_string()),
                };
                if matches!(kind, CallKind::Cordon { .. }) && state.phase() == NodePhase::Pending {
                    if matches!(e, CallError::Api(ApiFailure::Transport(_))) {
                        // No answer: it may have applied. Read before anything else.
                        state.unconfirmed = Some(Unconfirmed::Unknown);
                    } else {
                        // The API server answered, or nothing was sent: not applied.
                        state.touched = ours_before;
                    }
                }
                if let Fault::Refused(why) = &fault
                    && let Some(call) = machine_call(kind)
                    && let Some(step) =
                        node_machine::call_refused(&state.tracked.record, &call, why)
                {
                    state.retry.clear();
                    self.apply_step(node, step);
                    return;
                }
                if fault == Fault::Conflict {
                    // The node changed since it was read: the watch shows it soon.
                    state.retry.failed(now, e.to_string(), None);
                    state.retry.failures = state.retry.failures.min(1);
                } else {
                    state.retry.failed(now, e.to_string(), retry_after(&fault));
                }
                let failures = state.retry.failures;
                let note = format!("{} failed {failures} time(s), retrying: {e}", kind.verb());
                if state.phase() != NodePhase::Pending || then.is_some() {
                    state.tracked.message = note.clone();
                }
                self.plan.wake(state.retry.at);
                if fault != Fault::Conflict && (failures == 1 || failures % EVENT_EVERY == 0) {
                    self.notice(
                        About::Node(node.to_owned()),
                        true,
                        "RetryingCall",
                        format!("{name}: {note}"),
                    );
                }
            }
        }
    }
}

/// How long the server asked us to wait, if it did.
fn retry_after(fault: &Fault) -> Option<SignedDuration> {
    match fault {
        Fault::Throttled { retry_after } => {
            retry_after.and_then(|d| SignedDuration::try_from(d).ok())
        }
        _ => None,
    }
}

/// The node machine's call for a pass's call kind (waiting taints are the pass's own).
fn machine_call(kind: &CallKind) -> Option<node_machine::Call> {
    Some(match kind {
        CallKind::Cordon {
            was_unschedulable, ..
        } => node_machine::Call::Cordon {
            was_unschedulable: *was_unschedulable,
        },
        CallKind::DeleteZtunnelPod { name, uid, .. } => node_machine::Call::DeleteZtunnelPod {
            name: name.clone(),
            uid: uid.clone(),
        },
        CallKind::DeleteCniPod { name, uid, .. } => node_machine::Call::DeleteCniPod {
            name: name.clone(),
            uid: uid.clone(),
        },
        CallKind::Release { uncordon } => node_machine::Call::Release {
            uncordon: *uncordon,
        },
        CallKind::Uncordon => node_machine::Call::Uncordon,
        CallKind::WaitingTaint { .. } | CallKind::Check { .. } | CallKind::Disown { .. } => {
            return None;
        }
    })
}
