//! What a pass asks the shell to do ([`Effect`]), and what comes back ([`Outcome`]):
//! plain values, so that the pass is a function and its tests (and the simulation) can
//! play the cluster's part.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;

use crate::api::rollout::ZtunnelRolloutStatus;
use crate::api_errors::ApiFailure;
use crate::drain::DrainOptions;
use crate::health::gates::HealthSettings;
use crate::rollout::node_machine::NodePhase;

/// One thing the shell does for a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A node API call, run as the node's one call task.
    Call(NodeCall),
    /// Drain the node; runs until it reports an [`Outcome::Drain`].
    Drain {
        node: String,
        options: DrainOptions,
    },
    /// Stop the node's drain (an abort, or the node was uncordoned mid-drain).
    CancelDrain {
        node: String,
    },
    /// Wait for the connections through the node's old ztunnel to close; reports
    /// [`Outcome::Connections`].
    Connections(Box<ConnectionsRequest>),
    /// Stop it (the node left the phase: uncordoned, retargeted, aborted).
    CancelConnections {
        node: String,
    },
    /// Run the mesh-wide breaker until it trips; reports [`Outcome::Mesh`].
    Mesh(Box<MeshRequest>),
    /// Stop it (the rollout ended, its spec changed, a rollback began).
    CancelMesh,
    /// Run the node's health gates; they report [`Outcome::Gate`].
    Gates(Box<GateRequest>),
    CancelGates {
        node: String,
    },
    /// Add (before the first cordon) or remove (once every node is released) the
    /// rollout's finalizer.
    Finalizer {
        add: bool,
    },
    /// Restore the DaemonSet's pod template from this ControllerRevision, as
    /// `kubectl rollout undo` does.
    UndoDaemonSet {
        namespace: String,
        name: String,
        revision: String,
        /// The istio-cni DaemonSet's restore (`spec.cni`), not ztunnel's.
        cni: bool,
    },
    /// Hand the lease over: the agent's own node is next to be drained.
    StepDown {
        node: String,
    },
    Event(Notice),
    WriteStatus(Box<ZtunnelRolloutStatus>),
    /// Delete the finished rollout: its retention (`ttlSecondsAfterFinished`) passed.
    DeleteRollout,
}

/// A node API call. Patches are conditional on `observed` (the node as watched when
/// the call was decided); a delete carries the pod's UID.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCall {
    pub node: String,
    pub kind: CallKind,
    pub observed: Option<Arc<Node>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CallKind {
    /// Annotate the node with the rollout and `was_unschedulable`, and cordon it,
    /// dropping this rollout's waiting taint — refused if another rollout owns it, and,
    /// for a node not started yet (`drain_check`: the drain's filter), if its pods have
    /// blockers no drain gets past.
    Cordon {
        was_unschedulable: bool,
        drain_check: Option<crate::drain::filter::FilterOptions>,
    },
    /// Delete the ztunnel pod with this UID, only if the node is still unschedulable
    /// when the call runs.
    DeleteZtunnelPod {
        namespace: String,
        name: String,
        uid: String,
    },
    /// Delete the istio-cni pod with this UID (`spec.cni`), only if the node is still
    /// unschedulable when the call runs.
    DeleteCniPod {
        namespace: String,
        name: String,
        uid: String,
    },
    /// Remove this rollout's annotations and uncordon the node if `uncordon` and the
    /// node was schedulable before the rollout cordoned it.
    Release { uncordon: bool },
    /// Uncordon the node for its bake; it stays this rollout's (annotation kept, marked
    /// `was-unschedulable=true`: a cordon it gets later is someone else's).
    Uncordon,
    /// Add or remove this rollout's PreferNoSchedule waiting taint.
    WaitingTaint { waiting: bool },
    /// Read the node afresh: does it carry this rollout's annotation? (A cordon's answer
    /// was lost: it may have applied; or a new term's fresh read found the annotation the
    /// watch does not show yet.) `watched` is the node's resourceVersion the watch showed
    /// when the read was decided: a copy at least that old.
    Check { watched: Option<String> },
    /// Mark our annotation `was-unschedulable=true`: someone uncordoned the node after
    /// the rollout cordoned it, so a cordon it has later is not the rollout's to undo.
    /// Only the cordon `cordon` (its id, as on the copy that showed the uncordon): a
    /// lagging watch may show an uncordon the rollout has cordoned the node again since,
    /// and that later cordon stays the rollout's.
    Disown { cordon: Option<String> },
}

impl CallKind {
    pub fn verb(&self) -> &'static str {
        match self {
            CallKind::Cordon { .. } => "cordoning",
            CallKind::DeleteZtunnelPod { .. } => "deleting the ztunnel pod",
            CallKind::DeleteCniPod { .. } => "deleting the istio-cni pod",
            CallKind::Release { .. } => "releasing",
            CallKind::Uncordon => "uncordoning for the bake",
            CallKind::WaitingTaint { waiting: true } => "adding the waiting taint",
            CallKind::WaitingTaint { waiting: false } => "removing the waiting taint",
            CallKind::Check { .. } => "reading",
            CallKind::Disown { .. } => "noting that the node's cordon is not this rollout's",
        }
    }
}

/// What the health gates of one node need.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRequest {
    pub node: String,
    pub ds_uid: String,
    pub target_hash: String,
    pub settings: HealthSettings,
    /// When the node's new ztunnel became Ready: the gate's clock.
    pub ready_since: Timestamp,
    /// When the rollout cordoned the node: baselines are read just before it.
    pub touched_at: Option<Timestamp>,
    /// The bake after the uncordon (`settings` are the bake's), not the verification.
    pub bake: bool,
}

/// What the mesh-wide breaker needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshRequest {
    pub settings: HealthSettings,
    /// `maxIncrease` baselines are read at this time: just before the first cordon.
    pub baseline_at: Timestamp,
    /// The rollout generation it runs for.
    pub generation: i64,
}

/// What the mesh-wide breaker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    /// A round held (sent once, after the first): nodes may start.
    Held,
    Breached(String),
}

/// What the connections-drained gate of one node needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionsRequest {
    pub node: String,
    /// The ztunnel pod to be deleted (its metrics are read).
    pub pod: String,
    pub pod_uid: String,
    pub ds_uid: String,
    pub settings: crate::health::gates::ConnectionDrainSettings,
    /// How often its metrics are read.
    pub interval: std::time::Duration,
    /// When the gate started: its timeout counts from then.
    pub started: Timestamp,
}

/// What the connections-drained gate reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionsEvent {
    Waiting(String),
    Closed(String),
    Open(String),
}

/// An Event the shell publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// When it happened.
    pub at: Timestamp,
    /// About the rollout, or about a node (then related to the rollout).
    pub about: About,
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum About {
    Rollout,
    /// The rollout, with a node as the related object.
    RolloutNode(String),
    Node(String),
}

/// A node's phase changed (for metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub from: NodePhase,
    pub to: NodePhase,
    pub message: String,
    /// When the rollout cordoned the node (node durations).
    pub started: Option<Timestamp>,
    pub at: Timestamp,
}

/// What comes back to the pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Call {
        call: NodeCall,
        result: Result<CallDone, CallError>,
    },
    Drain {
        node: String,
        result: DrainOutcome,
    },
    Gate {
        node: String,
        event: GateEvent,
    },
    Connections {
        node: String,
        event: ConnectionsEvent,
    },
    /// The mesh-wide breaker of `generation`: its first round held, or it tripped.
    Mesh {
        generation: i64,
        event: MeshEvent,
    },
    Finalizer {
        add: bool,
        result: Result<(), ApiFailure>,
    },
    Undo {
        /// istio-cni's restore, not ztunnel's.
        cni: bool,
        result: Result<(), UndoFailure>,
    },
    StatusWritten {
        status: Box<ZtunnelRolloutStatus>,
        result: Result<(), ApiFailure>,
    },
    Deleted {
        result: Result<(), ApiFailure>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallDone {
    /// Applied. A patch went over the node at these resourceVersions: while the watch
    /// shows one of them, it does not show the patch yet.
    Applied { over: Vec<String> },
    /// A release found no annotation of this rollout: nothing to release. (A check:
    /// the cordon did not apply.)
    NotOwned,
    /// A release removed the rollout's annotations but left the node cordoned: `by`
    /// cordoned it again since the rollout did, so the cordon is theirs.
    LeftCordoned { over: Vec<String>, by: String },
    /// A check found the rollout's annotation (at resourceVersion `version`, on a node
    /// `unschedulable` or not): the cordon applied.
    Owned {
        was_unschedulable: bool,
        unschedulable: bool,
        version: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The API server refused or failed the request (see [`ApiFailure::fault`]).
    Api(ApiFailure),
    /// The node is owned by another rollout.
    OwnedBy(String),
    /// The node was schedulable when the call ran: its ztunnel pod was not deleted.
    Schedulable,
    /// The node is gone.
    NodeGone,
    /// Not cordoned: no drain could ever evict some of its pods (checked right before
    /// the cordon: several PDBs, a PDB that never allows a disruption, refused pods).
    Blocked(String),
    /// Not sent: the copy the call was decided on cannot make it conditional (a node
    /// without a resourceVersion). Nothing changed; retried with backoff.
    Unsent(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api(e) => e.fmt(f),
            CallError::OwnedBy(owner) => write!(f, "the node is owned by rollout {owner}"),
            CallError::Schedulable => write!(f, "the node is schedulable"),
            CallError::NodeGone => write!(f, "the node is gone"),
            CallError::Blocked(why) => write!(f, "no drain could evict its pods: {why}"),
            CallError::Unsent(why) => write!(f, "not sent: {why}"),
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainOutcome {
    Drained,
    /// A workload verdict: pods left at the deadline (PDBs), or pods the drain refuses.
    Blocked(String),
    /// The API server was in trouble (errors, throttling, watches that did not sync):
    /// not the node's fault; drained again later.
    ApiTrouble(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEvent {
    /// Not decided yet, and why (soaking, a waypoint still starting).
    Waiting(String),
    /// The verdict: what was seen, or the failed check with its value and threshold.
    Done(Result<String, String>),
}

/// Why a DaemonSet restore failed: a refusal (admission, validation, permissions) counts
/// against the rollback's bound on restores; an API blip (connection, 5xx, throttling)
/// is retried with its own, larger bound.
#[derive(Debug, Clone, PartialEq)]
pub struct UndoFailure {
    pub message: String,
    pub transient: bool,
}

impl std::fmt::Display for UndoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
