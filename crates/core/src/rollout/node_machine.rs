//! One node's sequence: from what is recorded about a node and what is observed now, the
//! next step. Pure, with injected time, and the only place a node's phase is decided:
//! the pass records what a step says, and turns the rollout's own events (a target
//! change, a rollback, the end of the rollout) into steps here too.
//!
//! Pending → Cordoned → Drained (→ the istio-cni pod replaced and Ready, with `spec.cni`) →
//! ZtunnelReplaced → ZtunnelReady → Verified → Done, or
//! Failed (with a reason) or Skipped. With a bake, Verified → Baking (uncordoned, its
//! pods coming back) → Done, or, when the bake fails, → Evacuating (cordoned and drained
//! again) → Failed. A step either records a phase now, or runs one call
//! and records its phase once the call succeeded, or runs a task (drain, gates), or waits.
//! Every call is idempotent, so a crash between a call and its record repeats the call
//! safely (a second cordon, a second delete of an already deleted pod) and never loses
//! what the node looked like before the rollout touched it.
//!
//! The safety rules live here:
//! - a node is cordoned only when no other rollout owns it, its ztunnel pod is Ready, and
//!   the DaemonSet runs on it at all;
//! - every phase before ZtunnelReady requires the node to be cordoned: a node someone
//!   uncordoned is cordoned and drained again before its ztunnel (or istio-cni) pod is
//!   deleted;
//! - ztunnel is replaced only once the node's istio-cni pod (with `spec.cni`) is Ready on
//!   its DaemonSet's current revision;
//! - a node is uncordoned only if it was schedulable before this rollout cordoned it;
//! - a baking node is uncordoned, and its ztunnel is never touched: a failed bake
//!   cordons and drains it, and only a later pass (a rollback) replaces ztunnel again,
//!   from Pending, cordoned first.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub use crate::api::rollout::{NodePhase, OpenConnectionsPolicy};

/// What the rollout recorded about the node (persisted in its status and, for
/// `was_unschedulable`, in an annotation on the node before it is cordoned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub phase: NodePhase,
    /// When the node entered `phase`.
    pub since: Timestamp,
    /// Whether the node was already unschedulable before we cordoned it: then we never
    /// uncordon it.
    pub was_unschedulable: Option<bool>,
}

/// A node agent's pod: ztunnel's, or istio-cni's (`spec.cni`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZtunnelPod {
    pub name: String,
    pub uid: String,
    pub revision_hash: String,
    pub ready: bool,
    pub terminating: bool,
    pub created: Timestamp,
}

/// Who owns the node, by the ownership annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Nobody,
    /// This rollout, with `was_unschedulable` as it recorded it.
    Us {
        was_unschedulable: bool,
    },
    /// Another rollout: the node is not ours to touch.
    Other(String),
}

/// Whether the ztunnel DaemonSet runs a pod on the node at all (its node selector,
/// required affinity and tolerations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Runs,
    Excluded(String),
}

/// The node's istio-cni pods and whether the istio-cni DaemonSet runs on the node
/// (with `spec.cni`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniFacts<'a> {
    pub pods: std::borrow::Cow<'a, [ZtunnelPod]>,
    pub placement: Placement,
    /// When the rollout deleted the node's istio-cni pod in this phase, if it knows.
    pub replaced_at: Option<Timestamp>,
}

/// Where the node's drain stands (for the node's current cordon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainProgress {
    NotStarted,
    Running,
    /// The API server was in trouble; drain again at this time (not a node failure).
    RetryAt(Timestamp, String),
    Drained,
    /// A workload verdict: pods left at the deadline, or pods the drain refuses.
    Blocked(String),
}

/// Where the node's health gates stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateProgress {
    NotStarted,
    /// Running; not decided yet, and why (soaking, a waypoint still starting).
    Waiting(String),
    Passed(String),
    Failed(String),
}

/// Where the connections-drained gate stands: the wait, after the drain, for the
/// connections through the old ztunnel to close before its pod is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionsProgress {
    NotStarted,
    /// Running: why it still waits.
    Waiting(String),
    /// Nothing open any more.
    Closed(String),
    /// Connections remain that the replacement resets: whose, with counts.
    Open(String),
}

/// What the shell observes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts<'a> {
    pub exists: bool,
    /// Cordoned, as watched (or as our own last write says while the watch lags).
    pub unschedulable: bool,
    pub owner: Owner,
    /// The node's ztunnel pods (usually one; two while one terminates): borrowed from
    /// the snapshot unless the pass knows better.
    pub ztunnel_pods: std::borrow::Cow<'a, [ZtunnelPod]>,
    pub placement: Placement,
    /// The node's istio-cni, with `spec.cni`.
    pub cni: Option<CniFacts<'a>>,
    pub drain: DrainProgress,
    /// The gates of the node's phase: the verification in ZtunnelReady, the bake in
    /// Baking (and, in Evacuating, the bake's failure).
    pub verification: GateProgress,
    pub connections: ConnectionsProgress,
    /// Times the rollout cordoned the node again after someone uncordoned it.
    pub recordons: u32,
    /// Since when this pending node has waited for a Ready ztunnel pod, if it has.
    pub waiting_for_ztunnel_since: Option<Timestamp>,
}

impl NodeFacts<'_> {
    /// A Ready, schedulable node nobody owns, running `pods`.
    pub fn new(pods: Vec<ZtunnelPod>) -> Self {
        Self {
            exists: true,
            unschedulable: false,
            owner: Owner::Nobody,
            ztunnel_pods: pods.into(),
            placement: Placement::Runs,
            cni: None,
            drain: DrainProgress::NotStarted,
            verification: GateProgress::NotStarted,
            connections: ConnectionsProgress::NotStarted,
            recordons: 0,
            waiting_for_ztunnel_since: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The DaemonSet's current ControllerRevision hash.
    pub revision_hash: String,
    /// Replace ztunnel even on nodes already on the current revision.
    pub cycle_current: bool,
    pub ztunnel_ready_timeout: Duration,
    /// Release (uncordon, if we cordoned it) a node when it fails, instead of leaving it
    /// cordoned for inspection.
    pub uncordon_failed: bool,
    /// During a rollback: the failed revision. Only nodes running it go through the
    /// sequence; the others are left as they are.
    pub rolling_back_from: Option<String>,
    /// The connections-drained gate runs before the old ztunnel is deleted, and what
    /// connections still open at its end do; `None`: it does not run.
    pub connections_gate: Option<OpenConnectionsPolicy>,
    /// A node the rollout uncordons bakes before it is released (`health.bake`); never
    /// during a rollback.
    pub bake: bool,
    /// With `spec.cni`: the istio-cni DaemonSet's current revision hash, and, during a
    /// rollback, its failed one.
    pub cni: Option<CniTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniTarget {
    pub revision_hash: String,
    pub rolling_back_from: Option<String>,
}

/// The times a node is cordoned again after someone uncordoned it mid-sequence, before
/// it fails instead (someone keeps uncordoning it).
pub const MAX_RECORDONS: u32 = 3;

/// API calls a step makes on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Annotate the node with the rollout and `was_unschedulable`, and cordon it, in one
    /// patch conditional on the node as observed.
    Cordon { was_unschedulable: bool },
    /// Delete the ztunnel pod with this UID (only while the node is cordoned).
    DeleteZtunnelPod { name: String, uid: String },
    /// Delete the istio-cni pod with this UID (only while the node is cordoned).
    DeleteCniPod { name: String, uid: String },
    /// Remove our annotations; uncordon only if we cordoned the node.
    Release { uncordon: bool },
    /// Uncordon the node for its bake, keeping it this rollout's: the annotation stays,
    /// marked `was-unschedulable=true` (a cordon it gets later is someone else's).
    Uncordon,
}

/// Long-running work a step starts once and waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Drain,
    /// The connections-drained gate.
    Connections,
    Gates,
    /// The gates again, after the uncordon, for `health.bake`.
    Bake,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record `phase` now.
    Now { phase: NodePhase, message: String },
    /// Run `call`; once it succeeded, record `then` (with `message`).
    Call {
        call: Call,
        then: NodePhase,
        message: String,
    },
    /// Stay in the phase while `task` runs (the shell starts it unless it runs).
    Task { task: Task, message: String },
    /// Stay in the phase until a watch event, or `until` at the latest.
    Wait {
        until: Option<Timestamp>,
        message: String,
    },
}

impl Step {
    /// The phase the node is in once the step is done.
    pub fn phase_after(&self, current: NodePhase) -> NodePhase {
        match self {
            Step::Now { phase, .. } => *phase,
            Step::Call { then, .. } => *then,
            Step::Task { .. } | Step::Wait { .. } => current,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Step::Now { message, .. }
            | Step::Call { message, .. }
            | Step::Task { message, .. }
            | Step::Wait { message, .. } => message,
        }
    }
}

fn now(phase: NodePhase, message: impl Into<String>) -> Step {
    Step::Now {
        phase,
        message: message.into(),
    }
}

fn call(call: Call, then: NodePhase, message: impl Into<String>) -> Step {
    Step::Call {
        call,
        then,
        message: message.into(),
    }
}

fn wait(until: Option<Timestamp>, message: impl Into<String>) -> Step {
    Step::Wait {
        until,
        message: message.into(),
    }
}

fn task(task: Task, message: impl Into<String>) -> Step {
    Step::Task {
        task,
        message: message.into(),
    }
}

/// Delete `pod` (by UID), entering ZtunnelReplaced.
fn delete_pod(pod: &ZtunnelPod, verb: &str) -> Step {
    call(
        Call::DeleteZtunnelPod {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        },
        NodePhase::ZtunnelReplaced,
        format!("{verb} ztunnel pod {}", pod.name),
    )
}

/// Delete `pod` once the connections-drained gate (if it runs) has its verdict: at once
/// when nothing is open; with what is still open named, or failing the node, as the
/// policy says.
fn replace_once_closed(
    record: &NodeRecord,
    facts: &NodeFacts,
    target: &Target,
    pod: &ZtunnelPod,
    verb: &str,
) -> Step {
    let Some(policy) = target.connections_gate else {
        return delete_pod(pod, verb);
    };
    match &facts.connections {
        ConnectionsProgress::NotStarted => task(
            Task::Connections,
            format!(
                "waiting for the connections through ztunnel pod {} to close",
                pod.name
            ),
        ),
        ConnectionsProgress::Waiting(why) => task(
            Task::Connections,
            format!("waiting before deleting ztunnel pod {}: {why}", pod.name),
        ),
        ConnectionsProgress::Closed(_) => delete_pod(pod, verb),
        ConnectionsProgress::Open(what) => match policy {
            OpenConnectionsPolicy::Proceed => call(
                Call::DeleteZtunnelPod {
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                },
                NodePhase::ZtunnelReplaced,
                format!(
                    "{verb} ztunnel pod {}, resetting the connections still open: {what}",
                    pod.name
                ),
            ),
            OpenConnectionsPolicy::Fail => fail(
                record,
                facts,
                target,
                format!(
                    "connections still open through ztunnel pod {}: {what}; not replaced (onOpenConnections: Fail)",
                    pod.name
                ),
            ),
        },
    }
}

fn current<'a>(facts: &'a NodeFacts, target: &Target) -> Option<&'a ZtunnelPod> {
    facts
        .ztunnel_pods
        .iter()
        .find(|p| !p.terminating && p.revision_hash == target.revision_hash)
}

fn outdated<'a>(facts: &'a NodeFacts, target: &Target) -> Option<&'a ZtunnelPod> {
    facts
        .ztunnel_pods
        .iter()
        .find(|p| !p.terminating && p.revision_hash != target.revision_hash)
}

/// Whether the node runs a ztunnel pod on `hash` (its ztunnel was replaced to it).
pub fn runs_revision(facts: &NodeFacts, hash: &str) -> bool {
    facts
        .ztunnel_pods
        .iter()
        .any(|p| !p.terminating && p.revision_hash == hash)
}

/// With `spec.cni`: whether the node runs an istio-cni pod not on the DaemonSet's
/// current revision (its sequence replaces it).
pub fn cni_outdated(facts: &NodeFacts, target: &Target) -> bool {
    match (&target.cni, &facts.cni) {
        (Some(t), Some(c)) => c
            .pods
            .iter()
            .any(|p| !p.terminating && p.revision_hash != t.revision_hash),
        _ => false,
    }
}

/// With `spec.cni`, in the drained window before ztunnel: replace the node's istio-cni
/// pod if it is not on the current revision, then wait (until the node's deadline in
/// Drained) for one Ready on it. `None`: nothing (more) to do for istio-cni.
fn replace_cni(
    record: &NodeRecord,
    facts: &NodeFacts,
    target: &Target,
    at: Timestamp,
) -> Option<Step> {
    let (Some(t), Some(cni)) = (&target.cni, &facts.cni) else {
        return None;
    };
    let live: Vec<&ZtunnelPod> = cni.pods.iter().filter(|p| !p.terminating).collect();
    if let Some(old) = live.iter().find(|p| p.revision_hash != t.revision_hash) {
        return Some(call(
            Call::DeleteCniPod {
                name: old.name.clone(),
                uid: old.uid.clone(),
            },
            NodePhase::Drained,
            format!("replacing istio-cni pod {}", old.name),
        ));
    }
    if live.iter().any(|p| p.ready) {
        return None;
    }
    if cni.pods.is_empty()
        && let Placement::Excluded(_) = cni.placement
    {
        // istio-cni does not run here: nothing to replace.
        return None;
    }
    // From the delete (a node may wait in Drained long before it, e.g. for connections to
    // close, when istio-cni's revision changes), else from the drain.
    let since = cni
        .replaced_at
        .map_or(record.since, |d| d.max(record.since));
    let deadline = deadline(since, target.ztunnel_ready_timeout);
    if at >= deadline {
        return Some(fail(
            record,
            facts,
            target,
            format!(
                "no Ready istio-cni pod on revision {} within {}s: ztunnel not replaced",
                t.revision_hash,
                target.ztunnel_ready_timeout.as_secs()
            ),
        ));
    }
    Some(wait(
        Some(deadline),
        format!(
            "waiting for the new istio-cni pod on revision {} to be Ready before ztunnel is replaced",
            t.revision_hash
        ),
    ))
}

/// Whether the node's cordon is someone else's (then the rollout never uncordons it): our
/// annotation on the node, written with our cordon (and set when our cordon was lost),
/// else the record.
fn prior(record: &NodeRecord, facts: &NodeFacts) -> Option<bool> {
    match facts.owner {
        Owner::Us { was_unschedulable } => Some(was_unschedulable),
        _ => record.was_unschedulable,
    }
}

fn owned(facts: &NodeFacts) -> bool {
    matches!(facts.owner, Owner::Us { .. })
}

/// Release the node (uncordoning it only if we cordoned it), then record `then`.
fn release(record: &NodeRecord, facts: &NodeFacts, then: NodePhase, message: String) -> Step {
    let uncordon = prior(record, facts) == Some(false);
    call(Call::Release { uncordon }, then, message)
}

/// Enter Failed: the node stays as it is, or is released if the settings say so.
fn fail(record: &NodeRecord, facts: &NodeFacts, target: &Target, message: String) -> Step {
    if target.uncordon_failed && owned(facts) {
        release(record, facts, NodePhase::Failed, message)
    } else {
        now(NodePhase::Failed, message)
    }
}

/// The node is schedulable in a phase that needs it cordoned: someone uncordoned it.
/// Cordon it again (and drain it again) before its ztunnel pod is deleted, or fail it
/// once that happened too often, without touching ztunnel.
///
/// The node was schedulable when we cordon it again (someone uncordoned it), so the
/// record says so: it is uncordoned when the rollout releases it, whoever had cordoned
/// it before the rollout.
fn cordon_again(record: &NodeRecord, facts: &NodeFacts) -> Step {
    cordon_again_into(
        record,
        facts,
        NodePhase::Cordoned,
        "draining again before ztunnel is replaced",
    )
}

/// `cordon_again`, into `then` (Cordoned; or Evacuating, whose drain starts over).
fn cordon_again_into(record: &NodeRecord, facts: &NodeFacts, then: NodePhase, next: &str) -> Step {
    if facts.recordons >= MAX_RECORDONS {
        let message = format!(
            "uncordoned by someone else {} times while the rollout had it cordoned ({}); failed without replacing ztunnel again",
            facts.recordons + 1,
            record.phase.as_str()
        );
        return if owned(facts) {
            // Already schedulable: just drop our annotations.
            call(
                Call::Release { uncordon: false },
                NodePhase::Failed,
                message,
            )
        } else {
            now(NodePhase::Failed, message)
        };
    }
    call(
        Call::Cordon {
            was_unschedulable: false,
        },
        then,
        format!(
            "uncordoned by someone else while {}: cordoned again, {next}",
            record.phase.as_str()
        ),
    )
}

/// The next step for a node.
pub fn next_step(record: &NodeRecord, facts: &NodeFacts, target: &Target, at: Timestamp) -> Step {
    use NodePhase::*;
    if record.phase.is_terminal() {
        return wait(None, "");
    }
    if !facts.exists {
        return now(Skipped, "the node was deleted");
    }
    if record.phase == Verified && !owned(facts) {
        // Verified, then released by a leader whose last status write did not land.
        return now(
            Done,
            "verified, then released before the leader changed (no annotation of this rollout is left on the node)",
        );
    }
    if record.phase.in_flight() && !owned(facts) {
        // Our annotation is gone: the rollout released the node before a restart lost
        // that step (a stale status), or someone removed the annotation. Either way it
        // is not ours: start over (a node already current is then skipped).
        return now(
            Pending,
            "this rollout's annotation is no longer on the node (released before a restart, or removed): starting over",
        );
    }
    match record.phase {
        Pending => pending(facts, target, at),
        Cordoned => {
            if !facts.unschedulable {
                return cordon_again(record, facts);
            }
            match &facts.drain {
                DrainProgress::NotStarted | DrainProgress::Running => task(Task::Drain, "draining"),
                DrainProgress::RetryAt(when, why) => wait(
                    Some(*when),
                    format!("draining again: the last drain met API trouble ({why})"),
                ),
                DrainProgress::Drained => now(Drained, "drained"),
                DrainProgress::Blocked(reason) => {
                    fail(record, facts, target, format!("drain failed: {reason}"))
                }
            }
        }
        Drained => {
            if !facts.unschedulable {
                return cordon_again(record, facts);
            }
            if let Some(step) = replace_cni(record, facts, target, at) {
                return step;
            }
            if let Some(old) = outdated(facts, target) {
                return replace_once_closed(record, facts, target, old, "replacing");
            }
            // Cycling: replace the pod that predates the drain, never one created since
            // (after a crash between the delete and recording it, that is the new one).
            if target.cycle_current
                && let Some(pod) = current(facts, target)
                && pod.created < record.since
            {
                return replace_once_closed(record, facts, target, pod, "cycling");
            }
            now(ZtunnelReplaced, "waiting for the new ztunnel pod")
        }
        ZtunnelReplaced => {
            if !facts.unschedulable {
                return cordon_again(record, facts);
            }
            if let Some(old) = outdated(facts, target) {
                // The delete was lost (or a crash came before it): delete again.
                return delete_pod(old, "replacing");
            }
            if current(facts, target).is_some_and(|p| p.ready) {
                return now(
                    ZtunnelReady,
                    format!("ztunnel Ready on revision {}", target.revision_hash),
                );
            }
            let deadline = deadline(record.since, target.ztunnel_ready_timeout);
            if at >= deadline {
                return fail(
                    record,
                    facts,
                    target,
                    format!(
                        "no Ready ztunnel pod on revision {} within {}s",
                        target.revision_hash,
                        target.ztunnel_ready_timeout.as_secs()
                    ),
                );
            }
            wait(
                Some(deadline),
                "waiting for the new ztunnel pod to be Ready",
            )
        }
        ZtunnelReady => match &facts.verification {
            GateProgress::NotStarted => task(Task::Gates, "verifying"),
            GateProgress::Waiting(why) => task(Task::Gates, format!("verifying: {why}")),
            GateProgress::Passed(note) if note.is_empty() => now(Verified, "verified"),
            GateProgress::Passed(note) => now(Verified, format!("verified: {note}")),
            GateProgress::Failed(check) => fail(
                record,
                facts,
                target,
                format!("verification failed: {check}"),
            ),
        },
        Verified => {
            let uncordon = prior(record, facts) == Some(false);
            let bakes = target.bake && target.rolling_back_from.is_none();
            if bakes && uncordon {
                return call(
                    Call::Uncordon,
                    Baking,
                    "uncordoned, baking: its pods come back and the new ztunnel is judged on their traffic",
                );
            }
            if bakes && !facts.unschedulable {
                // Schedulable and still ours: the bake's uncordon applied, but its answer
                // or its record was lost (or someone uncordoned the node meanwhile).
                return now(
                    Baking,
                    "found uncordoned, still this rollout's: baking: its pods come back and the new ztunnel is judged on their traffic",
                );
            }
            release(
                record,
                facts,
                Done,
                if uncordon {
                    "uncordoned".into()
                } else {
                    "left cordoned: it was cordoned before the rollout".into()
                },
            )
        }
        Baking => bake(facts, target),
        Evacuating => evacuate(record, facts, target),
        Done | Failed | Skipped => wait(None, ""),
    }
}

/// A baking node: uncordoned, judged on the traffic of the pods coming back. Passed: the
/// node is released as it is (never uncordoned again: a cordon it has now is someone
/// else's). Failed: cordoned again — as it was schedulable, or not, just before — and
/// drained, so its pods move to nodes known good.
fn bake(facts: &NodeFacts, target: &Target) -> Step {
    if facts.unschedulable
        && matches!(
            facts.owner,
            Owner::Us {
                was_unschedulable: false
            }
        )
    {
        // Cordoned by the rollout since the uncordon: only a failed bake does that; its
        // record was lost (a new leader). The evacuation goes on.
        return now(
            NodePhase::Evacuating,
            "bake failed (found cordoned again by this rollout after a leader change): draining, so its pods move to nodes known good",
        );
    }
    if !target.bake {
        // `health.bake` was turned off meanwhile.
        return call(
            Call::Release { uncordon: false },
            NodePhase::Done,
            "released: health.bake was turned off while it baked",
        );
    }
    match &facts.verification {
        GateProgress::NotStarted => task(Task::Bake, "baking"),
        GateProgress::Waiting(why) => task(Task::Bake, format!("baking: {why}")),
        GateProgress::Passed(note) => call(
            Call::Release { uncordon: false },
            NodePhase::Done,
            if note.is_empty() {
                "baked".to_owned()
            } else {
                format!("baked: {note}")
            },
        ),
        GateProgress::Failed(why) => call(
            Call::Cordon {
                // Cordoned by someone else during the bake (our annotation still says
                // `was-unschedulable=true`, as the uncordon left it): theirs stays. A
                // cordon of ours whose answer was lost rewrote it to false: ours.
                was_unschedulable: facts.unschedulable
                    && matches!(
                        facts.owner,
                        Owner::Us {
                            was_unschedulable: true
                        }
                    ),
            },
            NodePhase::Evacuating,
            format!(
                "bake failed: {why}; cordoned again and draining, so its pods move to nodes known good"
            ),
        ),
    }
}

/// The bake failed: the node is drained again, then fails (the failure policy decides
/// what comes next; a rollback takes it through the sequence again).
fn evacuate(record: &NodeRecord, facts: &NodeFacts, target: &Target) -> Step {
    if !facts.unschedulable {
        return cordon_again_into(record, facts, NodePhase::Evacuating, "draining it again");
    }
    let why = match &facts.verification {
        GateProgress::Failed(why) => format!("bake failed: {why}"),
        _ => "bake failed".to_owned(),
    };
    match &facts.drain {
        DrainProgress::NotStarted | DrainProgress::Running => task(
            Task::Drain,
            format!("{why}; draining, so its pods move to nodes known good"),
        ),
        DrainProgress::RetryAt(when, trouble) => wait(
            Some(*when),
            format!("{why}; draining again: the last drain met API trouble ({trouble})"),
        ),
        DrainProgress::Drained => fail(
            record,
            facts,
            target,
            format!("{why}; cordoned again and drained: its pods moved to other nodes"),
        ),
        DrainProgress::Blocked(reason) => fail(
            record,
            facts,
            target,
            format!("{why}; cordoned again, but its drain failed: {reason}"),
        ),
    }
}

fn deadline(since: Timestamp, timeout: Duration) -> Timestamp {
    let timeout = SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX);
    since.checked_add(timeout).unwrap_or(Timestamp::MAX)
}

/// A node not started yet: skip it, resume it (a crash after our cordon), wait, or —
/// the `Call` — start it. The planner decides when a startable node starts.
fn pending(facts: &NodeFacts, target: &Target, at: Timestamp) -> Step {
    use NodePhase::*;
    match &facts.owner {
        // A crash after cordoning but before recording leaves our annotation: trust it,
        // not the node's current (cordoned by us) state — unless the node is schedulable
        // now (someone uncordoned it since): then nobody else holds a cordon on it.
        Owner::Us { was_unschedulable } => {
            return call(
                Call::Cordon {
                    was_unschedulable: *was_unschedulable && facts.unschedulable,
                },
                Cordoned,
                "cordoned",
            );
        }
        Owner::Other(rollout) => {
            return wait(
                None,
                format!("owned by rollout {rollout}: not touched until it releases the node"),
            );
        }
        Owner::Nobody => {}
    }
    if let Placement::Excluded(why) = &facts.placement {
        return now(
            Skipped,
            format!("the ztunnel DaemonSet does not run on this node: {why}"),
        );
    }
    if let Some(failed) = &target.rolling_back_from
        && !runs_revision(facts, failed)
        && !runs_failed_cni(facts, target)
    {
        return now(
            Skipped,
            format!("rolling back: its ztunnel is not on the failed revision {failed}"),
        );
    }
    if !target.cycle_current
        && current(facts, target).is_some()
        && outdated(facts, target).is_none()
        && !cni_outdated(facts, target)
    {
        return now(
            Skipped,
            format!("ztunnel already on revision {}", target.revision_hash),
        );
    }
    let live = facts.ztunnel_pods.iter().find(|p| !p.terminating);
    if !live.is_some_and(|p| p.ready) {
        // Draining a node whose ztunnel is not serving would change nothing for the
        // better: wait (bounded) instead of cordoning it.
        let why = match live {
            None => "no ztunnel pod on the node".to_owned(),
            Some(p) => format!("ztunnel pod {} is not Ready", p.name),
        };
        let since = facts.waiting_for_ztunnel_since.unwrap_or(at);
        let until = deadline(since, target.ztunnel_ready_timeout);
        if at >= until {
            return now(
                Failed,
                format!(
                    "{why} for {}s: not cordoned",
                    target.ztunnel_ready_timeout.as_secs()
                ),
            );
        }
        return wait(Some(until), format!("not started: {why}"));
    }
    call(
        Call::Cordon {
            was_unschedulable: facts.unschedulable,
        },
        Cordoned,
        if facts.unschedulable {
            "already cordoned by someone else; it will stay cordoned"
        } else {
            "cordoned"
        },
    )
}

/// Whether `step`, for a Pending node, starts it (the planner's to allow).
pub fn starts(record: &NodeRecord, step: &Step) -> bool {
    record.phase == NodePhase::Pending
        && matches!(
            step,
            Step::Call {
                call: Call::Cordon { .. },
                ..
            }
        )
}

/// The API server refused a call for good (403, 422, …): what becomes of the node. A
/// refused cordon fails the node without touching it further; a refused delete fails it
/// (it stays cordoned for inspection); a refused release is retried (`None`): a release
/// never gives up.
pub fn call_refused(record: &NodeRecord, call: &Call, why: &str) -> Option<Step> {
    match call {
        Call::Cordon { .. } if record.phase == NodePhase::Pending => Some(now(
            NodePhase::Failed,
            format!("cordon refused by the API server ({why}): not started"),
        )),
        Call::Cordon { .. } if record.phase == NodePhase::Baking => Some(now(
            NodePhase::Failed,
            format!(
                "the bake failed, and cordoning it again was refused by the API server ({why}): its pods stay on it"
            ),
        )),
        Call::Cordon { .. } => Some(now(
            NodePhase::Failed,
            format!(
                "could not cordon it again after someone uncordoned it ({why}): ztunnel is not replaced"
            ),
        )),
        Call::DeleteZtunnelPod { name, .. } => Some(now(
            NodePhase::Failed,
            format!("deleting ztunnel pod {name} was refused by the API server: {why}"),
        )),
        Call::DeleteCniPod { name, .. } => Some(now(
            NodePhase::Failed,
            format!("deleting istio-cni pod {name} was refused by the API server: {why}"),
        )),
        // A release or the bake's uncordon never gives up.
        Call::Release { .. } | Call::Uncordon => None,
    }
}

/// Whether `step` is a pending node's wait for a Ready ztunnel pod (the only wait of a
/// pending node with a deadline).
pub fn waits_for_ztunnel(record: &NodeRecord, step: &Step) -> bool {
    record.phase == NodePhase::Pending && matches!(step, Step::Wait { until: Some(_), .. })
}

/// A node about to start whose pods no drain can ever evict (several PDBs, a PDB that
/// never allows a disruption): fail it without touching it.
pub fn refuse(blockers: &str) -> Step {
    now(
        NodePhase::Failed,
        format!("not started, no drain can evict its pods: {blockers}"),
    )
}

/// The DaemonSet moved to another revision while the rollout runs: finished nodes go
/// again; a node whose ztunnel was replaced towards the previous revision (still
/// cordoned and drained) has it replaced again; nodes before that carry on towards the
/// new revision.
pub fn retarget(record: &NodeRecord) -> Option<Step> {
    match record.phase {
        NodePhase::Done | NodePhase::Skipped | NodePhase::Baking => Some(now(
            NodePhase::Pending,
            "the DaemonSet's revision changed: going again",
        )),
        NodePhase::ZtunnelReplaced | NodePhase::ZtunnelReady | NodePhase::Verified => Some(now(
            NodePhase::Drained,
            "the DaemonSet's revision changed: its ztunnel is replaced again",
        )),
        // Cordoned again after a failed bake (a rollback restoring the previous revision,
        // most often): its drain goes on, then its ztunnel is replaced again.
        NodePhase::Evacuating => Some(now(
            NodePhase::Cordoned,
            "the DaemonSet's revision changed while it was drained after its failed bake: its ztunnel is replaced again once drained",
        )),
        _ => None,
    }
}

/// With `spec.cni`: whether the node runs a live istio-cni pod on `hash`.
fn runs_cni_revision(facts: &NodeFacts, hash: &str) -> bool {
    facts.cni.as_ref().is_some_and(|c| {
        c.pods
            .iter()
            .any(|p| !p.terminating && p.revision_hash == hash)
    })
}

/// During a rollback, with `spec.cni`: whether the node runs an istio-cni pod on the
/// failed revision.
fn runs_failed_cni(facts: &NodeFacts, target: &Target) -> bool {
    target
        .cni
        .as_ref()
        .and_then(|t| t.rolling_back_from.as_deref())
        .is_some_and(|failed| runs_cni_revision(facts, failed))
}

/// The rollback starts, from `failed_hash` (`None`: ztunnel is not rolled back) and, with
/// `spec.cni`, istio-cni's `failed_cni`, back to the previous revisions: a failed node whose ztunnel or istio-cni
/// was replaced goes through the sequence again; one whose pods were never replaced is
/// only released (its old pods are the restored revisions).
pub fn roll_back(
    record: &NodeRecord,
    facts: &NodeFacts,
    failed_hash: Option<&str>,
    failed_cni: Option<&str>,
) -> Option<Step> {
    if record.phase != NodePhase::Failed {
        return None;
    }
    let cni_replaced = failed_cni.is_some_and(|failed| runs_cni_revision(facts, failed));
    let ztunnel_replaced = failed_hash.is_some_and(|h| runs_revision(facts, h));
    Some(if ztunnel_replaced || cni_replaced {
        now(NodePhase::Pending, "rolling back")
    } else {
        now(
            NodePhase::Verified,
            "rolling back: its ztunnel was never replaced",
        )
    })
}

/// The rollout ends (complete, rolled back or aborted): a node the rollout still owns —
/// a failed node left cordoned for inspection, a node in flight when it aborted — is
/// released; its phase stays.
pub fn finish(record: &NodeRecord, facts: &NodeFacts, why: &str) -> Option<Step> {
    if !owned(facts) || !facts.exists {
        return None;
    }
    // A baking node is uncordoned already: a cordon it has now is someone else's.
    let uncordon = prior(record, facts) == Some(false) && record.phase != NodePhase::Baking;
    Some(call(
        Call::Release { uncordon },
        record.phase,
        format!(
            "{why}: {}",
            if uncordon {
                "uncordoned"
            } else {
                "released, left cordoned as it was before the rollout"
            }
        ),
    ))
}

#[cfg(test)]
mod tests;
