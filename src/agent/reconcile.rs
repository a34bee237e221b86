//! One pass over every rollout: read the watched state, ask the planner and the node
//! machine what to do, do it, record it. The decisions are pure (`crate::rollout`); this
//! is the shell that feeds them observations and executes their actions. Only the lease
//! holder runs passes, and every mutation checks the lease again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::events::EventSink;
use super::observe::Observed;
use super::status_patch::apply_status;
use super::verify::{GateEvent, GateMessage, GateRequest, Gates};
use super::view_cache::{NodeMap, PodCounts, ViewCache, Waves, ZtunnelsByNode, along};
use crate::api::ztunnel_rollout::{RollbackStatus, ZtunnelRollout, ZtunnelRolloutStatus};
use crate::drain::report::Outcome;
use crate::drain::{DrainOptions, Drainer, SharedPdbs};
use crate::health::http_client::HttpClient;
use crate::leader::{Leadership, NotLeader};
use crate::metrics::{EvictionLabels, Metrics, PhaseLabels, RolloutLabels, VerdictLabels};
use crate::rollout::hold::{Hold, hold};
use crate::rollout::node_actions::{
    ActionError, NodeActions, OWNER_ANNOTATION, has_waiting_taint, recorded_was_unschedulable,
};
use crate::rollout::node_machine::{
    Action, NodeFacts, NodePhase, Step, Target, ZtunnelPod, next_step,
};
use crate::rollout::planner::{self, Decision, NodeObservation, NodeProgress};
use crate::rollout::revision::{
    REVISION_HASH_LABEL, StrategyVerdict, current_revision_hash, previous_revision, revision_name,
    strategy_verdict,
};
use crate::rollout::settings::{RolloutSettings, settings};
use crate::rollout::status::{
    RolloutPhase, Standing, TrackedNode, conditions, counts, node_statuses, records_from_status,
};

/// Removed only after an abort has released every node the rollout touched.
pub const FINALIZER: &str = "ztunnel-rollout.dev/cleanup";

#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// At most one status write per rollout in this interval (phase changes excepted): a
    /// 1,000-node status is ~150 kB, and steps are idempotent, so a crash that loses the
    /// last interval repeats a step at worst.
    pub status_interval: Duration,
    /// Failed API calls on one node before the node is marked Failed.
    pub max_action_failures: u32,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            status_interval: Duration::from_secs(1),
            max_action_failures: 10,
        }
    }
}

/// The outcome of a node's API call, for the pass to record.
struct CallDone {
    rollout_uid: String,
    call: NodeCall,
    result: Result<(), ActionError>,
}

struct DrainDone {
    rollout_uid: String,
    node: String,
    result: Result<(), String>,
}

/// What the leader knows of one rollout during its term.
#[derive(Default)]
struct Run {
    records: BTreeMap<String, TrackedNode>,
    drains: Tasks,
    drain_results: HashMap<String, Result<(), String>>,
    /// Health gate tasks by node, and their verdicts.
    gates: Tasks,
    /// What a running gate waits for (soaking, a waypoint starting), by node.
    gate_notes: HashMap<String, String>,
    verifications: HashMap<String, Result<String, String>>,
    /// Set when the failure policy rolled the DaemonSet back (persisted in the status).
    rollback: Option<RollbackStatus>,
    /// When the rollback's DaemonSet patch was last sent (the watch shows it later).
    undo_sent: Option<Instant>,
    warned_waypoints: bool,
    /// The last wave a `WaveStarted` Event was sent for.
    announced_wave: Option<String>,
    awaiting_approval: Option<String>,
    next_window: Option<Timestamp>,
    failures: HashMap<String, u32>,
    written: Option<ZtunnelRolloutStatus>,
    written_at: Option<Instant>,
    target: Option<String>,
    /// Nodes the rollout covers, as last seen.
    total: usize,
    wave: Option<String>,
    standing: Option<Standing>,
    status_failures: u32,
    warned_rolling_update: bool,
    has_finalizer: bool,
    /// Node API calls in flight (at most one per node); their outcomes come back on
    /// the reconciler's `call_rx` and wait in `call_results` for the pass to record.
    calls: Tasks,
    call_results: Vec<CallDone>,
    /// ztunnel pods this term deleted that the watch still shows running, by UID: not
    /// deleted again meanwhile: UID → node.
    deleted_ztunnels: HashMap<String, String>,
    /// Nodes whose waiting taint this term changed while the watch still shows them as
    /// before: name → the resourceVersion the change was conditional on.
    unseen_taints: HashMap<String, String>,
    /// What passes derive from the watched nodes and pods, kept while they do not change.
    cache: ViewCache,
}

/// Drain or gate tasks by node; dropping cancels them.
#[derive(Default)]
struct Tasks(HashMap<String, JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}

/// Everything a pass over one rollout reads, gathered once.
struct View {
    name: String,
    ds_namespace: String,
    ds_name: String,
    ds_uid: String,
    /// The DaemonSet is RollingUpdate and the spec allows it.
    rolling_update: bool,
    reference: ObjectReference,
    settings: RolloutSettings,
    target: Target,
    nodes: Arc<NodeMap>,
    /// What the planner sees of `nodes` (in the same order); lent by `run.cache` and
    /// given back at the end of the pass.
    observations: Vec<NodeObservation>,
    pod_counts: PodCounts,
    ztunnels: Arc<ZtunnelsByNode>,
    waves: Arc<Waves>,
    now: Timestamp,
}

pub struct Reconciler {
    client: Client,
    observed: Arc<Observed>,
    actions: Arc<NodeActions>,
    drainer: Arc<Drainer>,
    events: EventSink,
    metrics: Arc<Metrics>,
    leadership: Leadership,
    settings: ReconcileSettings,
    runs: HashMap<String, Run>,
    drain_tx: mpsc::UnboundedSender<DrainDone>,
    drain_rx: mpsc::UnboundedReceiver<DrainDone>,
    call_tx: mpsc::UnboundedSender<CallDone>,
    call_rx: mpsc::UnboundedReceiver<CallDone>,
    /// Bounds the node API calls in flight across rollouts.
    call_permits: Arc<Semaphore>,
    pod_counts: std::sync::Mutex<Option<(Instant, PodCounts)>>,
    gates: Arc<Gates>,
    gate_rx: mpsc::UnboundedReceiver<GateMessage>,
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
}

pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The loop's wake-up for wall-clock time `t` (a little after it).
pub(super) fn wake_at(t: Timestamp) -> Instant {
    let d = Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or_default();
    Instant::now() + d + Duration::from_millis(10)
}

pub(super) fn retry_delay(failures: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(usize::MAX)
        .build()
        .nth(failures.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(10))
}

fn ztunnel_pod(p: &Pod) -> Option<ZtunnelPod> {
    Some(ZtunnelPod {
        name: p.metadata.name.clone()?,
        uid: p.metadata.uid.clone()?,
        revision_hash: p.labels().get(REVISION_HASH_LABEL)?.clone(),
        ready: p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        terminating: p.metadata.deletion_timestamp.is_some(),
        created: p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    })
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn unschedulable(n: &Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// Brings the parts of the observations that the rollout's own steps change up to date
/// (`observations` are of `nodes`, in the same order).
fn refresh_all(observations: &mut [NodeObservation], nodes: &NodeMap, run: &Run, rollout: &str) {
    for (o, (_, n, tracked)) in observations
        .iter_mut()
        .zip(along(nodes.iter(), &run.records))
    {
        refresh(o, tracked, run.calls.0.contains_key(&o.name), n, rollout);
    }
}

/// The parts of a node's observation that the rollout's own steps change.
fn refresh(
    o: &mut NodeObservation,
    tracked: Option<&TrackedNode>,
    calling: bool,
    n: &Node,
    rollout: &str,
) {
    o.progress = if calling {
        // A cordon in flight: the node takes its place in the budget now.
        NodeProgress::InFlight
    } else {
        tracked.map_or(NodeProgress::Pending, |t| progress(t.record.phase))
    };
    o.cordoned = unschedulable(n);
    o.cordoned_by_others = o.cordoned && !cordoned_by_us(tracked, n, rollout);
}

/// Whether the node's cordon is ours: by the record (the watch may not show our last
/// write yet), else by our annotation.
fn cordoned_by_us(tracked: Option<&TrackedNode>, n: &Node, rollout: &str) -> bool {
    let was_unschedulable = tracked
        .and_then(|t| t.record.was_unschedulable)
        .or_else(|| recorded_was_unschedulable(n, rollout));
    was_unschedulable == Some(false)
}

fn node_reference(name: &str, node: Option<&Node>) -> ObjectReference {
    core_reference("Node", name, node.and_then(|n| n.metadata.uid.clone()))
}

/// A reference to a cluster-scoped core (`v1`) object, for Events about it.
pub(super) fn core_reference(kind: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some(kind.into()),
        name: Some(name.to_owned()),
        uid,
        ..Default::default()
    }
}

fn progress(phase: NodePhase) -> NodeProgress {
    match phase {
        NodePhase::Pending => NodeProgress::Pending,
        NodePhase::Done | NodePhase::Skipped => NodeProgress::Finished,
        NodePhase::Failed => NodeProgress::Failed,
        _ => NodeProgress::InFlight,
    }
}

impl Reconciler {
    pub fn new(
        client: Client,
        observed: Arc<Observed>,
        leadership: Leadership,
        events: EventSink,
        metrics: Arc<Metrics>,
        settings: ReconcileSettings,
    ) -> Self {
        let (drain_tx, drain_rx) = mpsc::unbounded_channel();
        let (call_tx, call_rx) = mpsc::unbounded_channel();
        let (gate_tx, gate_rx) = mpsc::unbounded_channel();
        let gates = Arc::new(Gates {
            observed: observed.clone(),
            http: HttpClient::new(),
            tx: gate_tx,
        });
        Self {
            actions: Arc::new(NodeActions::new(client.clone(), leadership.clone())),
            drainer: Arc::new(
                Drainer::new(client.clone())
                    .guarded_by(leadership.clone())
                    .sharing_pdbs(SharedPdbs {
                        store: observed.pdbs.clone(),
                        changed: observed.pdbs_changed.clone(),
                    }),
            ),
            client,
            observed,
            events,
            metrics,
            leadership,
            settings,
            runs: HashMap::new(),
            drain_tx,
            drain_rx,
            call_tx,
            call_rx,
            call_permits: Arc::new(Semaphore::new(CALLS_AT_ONCE)),
            pod_counts: std::sync::Mutex::default(),
            gates,
            gate_rx,
        }
    }

    /// Forgets everything held in memory (drains are cancelled): after losing the lease,
    /// the next term starts again from the persisted status.
    pub fn reset(&mut self) {
        self.runs.clear();
        while self.drain_rx.try_recv().is_ok() {}
        while self.call_rx.try_recv().is_ok() {}
        while self.gate_rx.try_recv().is_ok() {}
    }

    /// One pass over every rollout. Returns when the loop must run again at the latest
    /// (watch events wake it sooner).
    pub async fn pass(&mut self) -> Result<Option<Instant>, PassError> {
        self.leadership.check()?;
        while let Ok(done) = self.call_rx.try_recv() {
            if let Some(run) = self.runs.get_mut(&done.rollout_uid) {
                run.calls.0.remove(&done.call.node);
                run.call_results.push(done);
            }
        }
        while let Ok(done) = self.drain_rx.try_recv() {
            if let Some(run) = self.runs.get_mut(&done.rollout_uid) {
                run.drains.0.remove(&done.node);
                run.drain_results.insert(done.node, done.result);
            }
        }
        while let Ok(m) = self.gate_rx.try_recv() {
            let Some(run) = self.runs.get_mut(&m.rollout_uid) else {
                continue;
            };
            match m.event {
                GateEvent::Waiting(why) => {
                    if let Some(t) = run.records.get_mut(&m.node)
                        && t.record.phase == NodePhase::ZtunnelReady
                    {
                        t.message = format!("verifying: {why}");
                    }
                    run.gate_notes.insert(m.node, why);
                }
                GateEvent::Done(result) => {
                    run.gates.0.remove(&m.node);
                    run.gate_notes.remove(&m.node);
                    run.verifications.insert(m.node, result);
                }
            }
        }
        let rollouts = self.observed.rollouts.state();
        self.runs
            .retain(|uid, _| rollouts.iter().any(|r| r.uid().as_deref() == Some(uid)));
        let mut wake = None;
        for r in rollouts {
            let span = info_span!("rollout", rollout = %r.name_any());
            wake = earliest(wake, self.reconcile(&r).instrument(span).await?);
        }
        Ok(wake)
    }

    /// Writes the status of every rollout held back by the write interval (shutdown).
    pub async fn flush(&mut self) {
        for r in self.observed.rollouts.state() {
            let Some(uid) = r.uid() else { continue };
            if let Some(mut run) = self.runs.remove(&uid) {
                for t in run.drains.0.drain().chain(run.gates.0.drain()) {
                    t.1.abort();
                }
                if let Some(standing) = run.standing.clone()
                    && let Err(e) = self.write_status(&r, &mut run, &standing, true).await
                {
                    warn!(rollout = %r.name_any(), error = %e, "could not record the status at shutdown");
                }
            }
        }
    }

    async fn reconcile(&mut self, r: &ZtunnelRollout) -> Result<Option<Instant>, PassError> {
        let Some(uid) = r.uid() else { return Ok(None) };
        let name = r.name_any();
        let mut run = match self.runs.remove(&uid) {
            Some(run) => run,
            None => self.start_term(r).await?,
        };
        let result = self.reconcile_run(r, &name, &mut run).await;
        if r.metadata.deletion_timestamp.is_none() || run.has_finalizer {
            self.runs.insert(uid, run);
        }
        result
    }

    /// The first pass of this term over `r`: resume from its persisted status, read
    /// fresh (the watch may not have delivered the previous leader's last write).
    async fn start_term(&self, r: &ZtunnelRollout) -> Result<Run, PassError> {
        let fresh = Api::<ZtunnelRollout>::all(self.client.clone())
            .get_opt(&r.name_any())
            .await
            .ok()
            .flatten();
        let current = fresh.as_ref().unwrap_or(r);
        Ok(Run {
            records: records_from_status(current.status.as_ref()),
            target: current
                .status
                .as_ref()
                .and_then(|s| s.target_revision.clone()),
            total: current
                .status
                .as_ref()
                .map_or(0, |s| s.counts.total as usize),
            rollback: current.status.as_ref().and_then(|s| s.rollback.clone()),
            written: current.status.clone(),
            has_finalizer: current.finalizers().iter().any(|f| f == FINALIZER),
            ..Default::default()
        })
    }

    async fn reconcile_run(
        &mut self,
        r: &ZtunnelRollout,
        name: &str,
        run: &mut Run,
    ) -> Result<Option<Instant>, PassError> {
        if r.metadata.deletion_timestamp.is_some() || r.spec.abort {
            let deleting = r.metadata.deletion_timestamp.is_some();
            let wake = self.abort(r, name, run, deleting).await?;
            if !deleting {
                let standing = Standing {
                    phase: RolloutPhase::Aborted,
                    reason: "Aborted".into(),
                    message: "spec.abort is set: the nodes this rollout cordoned were released"
                        .into(),
                };
                return Ok(earliest(wake, self.record(r, run, standing).await?));
            }
            return Ok(wake);
        }
        let mut view = match self.view(r, name, run) {
            Ok(view) => view,
            Err(standing) => return self.record(r, run, standing).await,
        };
        if let Some(rollback) = run.rollback.clone()
            && view.target.revision_hash == rollback.from
        {
            // The undo is sent (or a crash came before it): wait until the DaemonSet
            // shows the restored revision, sending it again if it never arrives.
            let resend = run
                .undo_sent
                .is_none_or(|at| at.elapsed() > Duration::from_secs(10));
            let mut wake = Some(Instant::now() + Duration::from_secs(10));
            if resend {
                let result = match self.revision_named(&view, &rollback.to) {
                    Some(revision) => {
                        super::rollback::undo(
                            &self.client,
                            &self.leadership,
                            &view.ds_namespace,
                            &view.ds_name,
                            &revision,
                        )
                        .await
                    }
                    None => Err(super::rollback::UndoError::NoData {
                        namespace: view.ds_namespace.clone(),
                        name: format!("(revision {} is gone)", rollback.to),
                    }),
                };
                match result {
                    Ok(()) => run.undo_sent = Some(Instant::now()),
                    Err(super::rollback::UndoError::NotLeader(e)) => return Err(e.into()),
                    Err(e) => {
                        warn!(error = %e, "could not restore the previous DaemonSet revision; retrying");
                        wake = Some(Instant::now() + retry_delay(3));
                    }
                }
            }
            let standing = Standing {
                phase: RolloutPhase::RollingBack,
                reason: "RollingBack".into(),
                message: format!(
                    "restoring DaemonSet revision {} (after: {})",
                    rollback.to, rollback.reason
                ),
            };
            return Ok(earliest(wake, self.record(r, run, standing).await?));
        }
        if !run.warned_waypoints {
            run.warned_waypoints = true;
            if let Some(selector) = &view.settings.health.waypoint_selector {
                let found = super::verify::waypoints(&self.observed, selector);
                let warnings = crate::health::gates::waypoint_warnings(&found);
                if !warnings.is_empty() {
                    // One Event for all of them, not one per waypoint.
                    self.notice(
                        &view.reference,
                        None,
                        true,
                        "WaypointAtRisk",
                        warnings.join("; "),
                    );
                }
            }
        }
        if let Some(previous) = run
            .target
            .as_ref()
            .filter(|t| **t != view.target.revision_hash)
        {
            // The DaemonSet changed again: nodes finished on the old revision go again.
            self.notice(
                &view.reference,
                None,
                false,
                "TargetRevisionChanged",
                format!(
                    "DaemonSet revision changed from {previous} to {}: finished nodes are rolled again",
                    view.target.revision_hash
                ),
            );
            run.records
                .retain(|_, t| !matches!(t.record.phase, NodePhase::Done | NodePhase::Skipped));
        }
        if view.rolling_update && !run.warned_rolling_update {
            run.warned_rolling_update = true;
            self.notice(
                &view.reference,
                None,
                true,
                "RollingUpdateAllowed",
                "the DaemonSet's update strategy is RollingUpdate: its controller replaces ztunnel pods itself, ignoring waves and drains (allowed by spec.allowRollingUpdate)".into(),
            );
        }
        run.target = Some(view.target.revision_hash.clone());
        run.total = view.nodes.len();
        self.forget_seen_writes(&view, run);
        let mut wake = self.record_calls(&view, run)?;

        let mut calls = Vec::new();
        // Pending nodes: skip those already current; resume those a crash left cordoned.
        let fresh = TrackedNode::pending(view.now);
        let to_step: Vec<String> = along(view.nodes.iter(), &run.records)
            .filter(|(node, n, tracked)| {
                let tracked = match tracked {
                    Some(t) if t.record.phase != NodePhase::Pending => return false,
                    Some(t) => t,
                    None => &fresh,
                };
                let facts = self.facts(&view, run, node, Some(n));
                let step = next_step(&tracked.record, &facts, &view.target, view.now);
                step.phase == NodePhase::Skipped || facts.annotated_was_unschedulable.is_some()
            })
            .map(|(node, _, _)| node.clone())
            .collect();
        for node in to_step {
            run.records
                .entry(node.clone())
                .or_insert_with(|| fresh.clone());
            wake = earliest(wake, self.advance(&view, run, &node, &mut calls));
        }
        // Nodes in flight.
        let in_flight: Vec<String> = run
            .records
            .iter()
            .filter(|(_, t)| !t.record.phase.is_terminal() && t.record.phase != NodePhase::Pending)
            .map(|(n, _)| n.clone())
            .collect();
        for node in in_flight {
            wake = earliest(wake, self.advance(&view, run, &node, &mut calls));
        }
        wake = earliest(wake, self.start_calls(&view, run, calls).await?);

        // The steps above changed phases and cordons: bring the planner's view up to date.
        refresh_all(&mut view.observations, &view.nodes, run, name);
        let observations = &view.observations;
        let decision =
            planner::next_in_waves(observations, &view.waves.waves, &view.settings.waves);
        let standing = match &decision {
            _ if view.nodes.is_empty() => Standing {
                phase: RolloutPhase::Blocked,
                reason: "NoNodesSelected".into(),
                message: "spec.nodeSelector matches no node".into(),
            },
            Decision::Complete => {
                wake = earliest(wake, self.remove_waiting_taints(&view, run).await?);
                match &run.rollback {
                    Some(rb) => Standing {
                        phase: RolloutPhase::RolledBack,
                        reason: "RolledBack".into(),
                        message: format!(
                            "every node runs the restored ztunnel revision {} again; revision {} failed: {}",
                            view.target.revision_hash, rb.from, rb.reason
                        ),
                    },
                    None => {
                        let c = counts(view.nodes.len(), run.records.values());
                        let except = if c.failed > 0 {
                            format!(" except {} failed (tolerated by maxFailedNodes)", c.failed)
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
                }
            }
            Decision::Blocked { wave, failed } => {
                let why = format!(
                    "wave {wave}: {} of at most {} tolerated node failures: {}",
                    failed.len(),
                    view.settings.health.max_failed_nodes,
                    failed
                        .iter()
                        .map(|n| {
                            let why = run.records.get(n).map(|t| t.message.as_str());
                            format!("{n}: {}", why.unwrap_or("failed"))
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                let (standing, now) = self.failure_policy(&view, run, why);
                if now {
                    wake = Some(Instant::now());
                }
                standing
            }
            Decision::Start { wave, nodes } => {
                let held = hold(
                    r.spec.paused,
                    view.settings.manual_approval,
                    &view.settings.approved_waves,
                    wave,
                    &view.settings.windows,
                    view.now,
                );
                if held.is_none() && run.announced_wave.as_ref() != Some(wave) {
                    self.notice(
                        &view.reference,
                        None,
                        false,
                        "WaveStarted",
                        format!("wave {wave} started"),
                    );
                    run.announced_wave = Some(wave.clone());
                }
                run.awaiting_approval = None;
                run.next_window = None;
                if held.is_none() {
                    wake = earliest(wake, self.add_waiting_taints(&view, run, nodes).await?);
                    let mut calls = Vec::new();
                    for node in nodes {
                        run.records
                            .entry(node.clone())
                            .or_insert_with(|| TrackedNode::pending(view.now));
                        wake = earliest(wake, self.advance(&view, run, node, &mut calls));
                    }
                    wake = earliest(wake, self.start_calls(&view, run, calls).await?);
                }
                let c = counts(view.nodes.len(), run.records.values());
                if let Some(held) = held {
                    let in_flight = if c.in_flight > 0 {
                        format!(" ({} in flight finish their sequence)", c.in_flight)
                    } else {
                        String::new()
                    };
                    match held {
                        Hold::Paused => Standing {
                            phase: RolloutPhase::Paused,
                            reason: "Paused".into(),
                            message: format!("spec.paused is set: no new node starts{in_flight}"),
                        },
                        Hold::AwaitingApproval { wave } => {
                            let standing = Standing {
                                phase: RolloutPhase::AwaitingApproval,
                                reason: "AwaitingApproval".into(),
                                message: format!(
                                    "wave {wave} waits for approval: ztunnel-rollout approve {} --wave {wave}{in_flight}",
                                    view.name
                                ),
                            };
                            run.awaiting_approval = Some(wave);
                            standing
                        }
                        Hold::OutsideWindow { next } => {
                            run.next_window = next;
                            if let Some(next) = next {
                                wake = earliest(wake, Some(wake_at(next)));
                            }
                            Standing {
                                phase: RolloutPhase::OutsideWindow,
                                reason: "OutsideMaintenanceWindow".into(),
                                message: match next {
                                    Some(next) => format!(
                                        "no maintenance window is open: the next opens at {next}{in_flight}"
                                    ),
                                    None => format!(
                                        "no maintenance window opens within a week{in_flight}"
                                    ),
                                },
                            }
                        }
                    }
                } else if nodes.is_empty() && c.in_flight == 0 {
                    let unavailable: Vec<String> = observations
                        .iter()
                        .filter(|o| view.waves.wave_of.get(&o.name) == Some(wave))
                        .filter_map(|o| {
                            o.unavailable_because()
                                .map(|why| format!("{} ({why})", o.name))
                        })
                        .collect();
                    Standing {
                        phase: RolloutPhase::Progressing,
                        reason: "BudgetUsedByUnavailableNodes".into(),
                        message: format!(
                            "wave {wave} waits: its maxUnavailable budget is used by nodes unavailable for other reasons: {}",
                            unavailable.join(", ")
                        ),
                    }
                } else {
                    let caveat = if view.rolling_update {
                        " (RollingUpdate DaemonSet: its controller may replace pods outside the waves)"
                    } else {
                        ""
                    };
                    Standing {
                        phase: RolloutPhase::Progressing,
                        reason: "NodesInProgress".into(),
                        message: format!(
                            "wave {wave}: {} in flight; {} done, {} skipped of {}{caveat}",
                            c.in_flight, c.done, c.skipped, c.total
                        ),
                    }
                }
            }
        };
        let mut phases: BTreeMap<&'static str, i64> = BTreeMap::new();
        for (_, _, tracked) in along(view.nodes.iter(), &run.records) {
            let phase = tracked.map_or(NodePhase::Pending, |t| t.record.phase);
            *phases.entry(NodePhase::as_str(phase)).or_default() += 1;
        }
        for phase in ALL_PHASES {
            self.metrics
                .nodes
                .get_or_create(&PhaseLabels {
                    rollout: name.to_owned(),
                    phase: NodePhase::as_str(phase).to_owned(),
                })
                .set(phases.get(NodePhase::as_str(phase)).copied().unwrap_or(0));
        }
        run.wave = match &decision {
            Decision::Start { wave, .. } | Decision::Blocked { wave, .. } => Some(wave.clone()),
            Decision::Complete => None,
        };
        run.cache.keep_observations(
            &view.nodes,
            &view.pod_counts,
            &view.settings.waves.group_by,
            std::mem::take(&mut view.observations),
        );
        Ok(earliest(wake, self.record(r, run, standing).await?))
    }

    /// More nodes failed than tolerated: pause, or start the rollback (once nothing is
    /// in flight). Returns the standing, and whether to run again at once.
    fn failure_policy(&self, view: &View, run: &mut Run, why: String) -> (Standing, bool) {
        let pause = |extra: &str| Standing {
            phase: RolloutPhase::Paused,
            reason: crate::rollout::status::NODE_FAILED.into(),
            message: format!(
                "{why}. No new node starts{extra}; raise spec.health.maxFailedNodes to go on past the failed nodes, or abort the rollout"
            ),
        };
        if !view.settings.health.rollback {
            return (pause(""), false);
        }
        if run.rollback.is_some() {
            return (pause(" (the rollback itself failed)"), false);
        }
        let revisions = self.revisions();
        let Some((_, to)) = previous_revision(
            &view.ds_name,
            &view.ds_uid,
            &view.target.revision_hash,
            &revisions,
        ) else {
            return (
                pause(" (onFailure is Rollback, but the DaemonSet has no previous revision)"),
                false,
            );
        };
        let in_flight = counts(run.total, run.records.values()).in_flight;
        if in_flight > 0 {
            let standing = Standing {
                phase: RolloutPhase::RollingBack,
                reason: "RollbackPending".into(),
                message: format!(
                    "{why}. Rolling back to revision {to} once the {in_flight} node(s) in flight finish"
                ),
            };
            return (standing, false);
        }
        self.notice(
            &view.reference,
            None,
            true,
            "RollbackStarted",
            format!(
                "restoring DaemonSet revision {to} and rolling the updated nodes back, waves in reverse: {why}"
            ),
        );
        // Failed nodes whose ztunnel was replaced go through the sequence again, towards
        // the restored revision; the others (a failed drain) still run it: release them.
        for (node, t) in run.records.iter_mut() {
            if t.record.phase != NodePhase::Failed {
                continue;
            }
            let replaced = view.ztunnels.get(node).is_some_and(|pods| {
                pods.iter()
                    .any(|p| !p.terminating && p.revision_hash == view.target.revision_hash)
            });
            if replaced {
                *t = TrackedNode::pending(view.now);
            } else {
                t.record.phase = NodePhase::Verified;
                t.record.since = view.now;
                t.message = "rolling back: its ztunnel was never replaced".into();
            }
        }
        run.verifications.clear();
        run.gate_notes.clear();
        run.drain_results.clear();
        run.undo_sent = None;
        let rollback = RollbackStatus {
            from: view.target.revision_hash.clone(),
            to: to.clone(),
            reason: why,
        };
        let standing = Standing {
            phase: RolloutPhase::RollingBack,
            reason: "RollingBack".into(),
            message: format!(
                "restoring DaemonSet revision {to} (after: {})",
                rollback.reason
            ),
        };
        run.rollback = Some(rollback);
        (standing, true)
    }

    fn revisions(&self) -> Vec<k8s_openapi::api::apps::v1::ControllerRevision> {
        self.observed
            .revisions
            .state()
            .iter()
            .map(|r| r.as_ref().clone())
            .collect()
    }

    /// The name of the DaemonSet's ControllerRevision with `hash`.
    fn revision_named(&self, view: &View, hash: &str) -> Option<String> {
        revision_name(&view.ds_name, &view.ds_uid, hash, &self.revisions())
    }

    /// Gathers what a pass needs, or the reason the rollout cannot proceed.
    fn view(&self, r: &ZtunnelRollout, name: &str, run: &mut Run) -> Result<View, Standing> {
        let blocked = |reason: &str, message: String| Standing {
            phase: RolloutPhase::Blocked,
            reason: reason.to_owned(),
            message,
        };
        let mut settings = settings(&r.spec).map_err(|e| blocked("InvalidSpec", e.to_string()))?;
        settings.waves.reverse = run.rollback.is_some();
        let ds_ref = &r.spec.daemon_set;
        let ds = self
            .observed
            .daemon_sets
            .get(&ObjectRef::new(&ds_ref.name).within(&ds_ref.namespace))
            .ok_or_else(|| {
                blocked(
                    "DaemonSetNotFound",
                    format!(
                        "DaemonSet {}/{} not found: nothing is changed until it exists",
                        ds_ref.namespace, ds_ref.name
                    ),
                )
            })?;
        let rolling_update = match strategy_verdict(&ds, r.spec.allow_rolling_update) {
            StrategyVerdict::OnDelete => false,
            StrategyVerdict::RollingUpdateAllowed => true,
            StrategyVerdict::RollingUpdateRefused(message) => {
                return Err(blocked("RollingUpdateStrategy", message));
            }
        };
        let revisions = self.revisions();
        let hash = current_revision_hash(&ds, &revisions).map_err(|e| Standing {
            phase: RolloutPhase::Pending,
            reason: "WaitingForDaemonSet".into(),
            message: e.to_string(),
        })?;
        let ds_uid = ds.metadata.uid.clone().unwrap_or_default();
        // Event counts first: a cache that changes meanwhile is derived again next pass.
        let pod_events = *self.observed.revisioned_pod_events.borrow();
        let node_events = *self.observed.node_events.borrow();
        let ztunnels = run.cache.ztunnels(
            pod_events,
            &ds_uid,
            || self.observed.revisioned_pods.state(),
            |p| {
                let owned = p
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == ds_uid);
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone())?;
                owned.then(|| ztunnel_pod(p).map(|z| (node, z))).flatten()
            },
        );
        let selected = run.cache.selected(node_events, &settings.nodes, || {
            self.observed
                .nodes
                .state()
                .into_iter()
                .filter(|n| settings.nodes.matches(n.labels()))
                .map(|n| (n.name_any(), n))
                .collect()
        });
        // Nodes this rollout already started stay in even if their labels changed.
        let started_elsewhere: Vec<String> = along(run.records.iter(), &selected)
            .filter(|(_, t, n)| n.is_none() && t.record.phase != NodePhase::Pending)
            .map(|(node, _, _)| node.clone())
            .collect();
        let nodes = run
            .cache
            .nodes(&selected, started_elsewhere, |nodes, extra| {
                for node in extra {
                    if let Some(n) = self.observed.nodes.get(&ObjectRef::new(node)) {
                        nodes.insert(node.clone(), n);
                    }
                }
            });
        // Pod counts only order the next starts: skip the scan when nothing is pending.
        let pending = along(nodes.iter(), &run.records)
            .any(|(_, _, t)| t.is_none_or(|t| t.record.phase == NodePhase::Pending));
        let pod_counts = self.pods_per_node(pending);
        let group_by = &settings.waves.group_by;
        let mut observations = run
            .cache
            .take_observations(&nodes, &pod_counts, group_by)
            .unwrap_or_else(|| {
                nodes
                    .iter()
                    .map(|(node, n)| {
                        let mut o = NodeObservation::pending(
                            node.clone(),
                            n.labels().get(group_by).cloned(),
                            pod_counts.get(node).copied().unwrap_or(0),
                        );
                        o.not_ready = !node_ready(n);
                        o
                    })
                    .collect()
            });
        refresh_all(&mut observations, &nodes, run, name);
        let waves = run.cache.waves(&nodes, &settings.waves, || {
            let waves = planner::plan_waves(&observations, &settings.waves);
            let wave_of = waves
                .iter()
                .flat_map(|w| w.nodes.iter().map(|n| (n.clone(), w.name.clone())))
                .collect();
            Waves { waves, wave_of }
        });
        Ok(View {
            name: name.to_owned(),
            ds_namespace: ds_ref.namespace.clone(),
            ds_name: ds_ref.name.clone(),
            ds_uid,
            rolling_update,
            reference: r.object_ref(&()),
            target: Target {
                revision_hash: hash,
                cycle_current: r.spec.cycle_current,
                ztunnel_ready_timeout: settings.ztunnel_ready_timeout,
                uncordon_failed: settings.health.uncordon_failed_nodes,
            },
            settings,
            nodes,
            observations,
            pod_counts,
            ztunnels,
            waves,
            now: Timestamp::now(),
        })
    }

    /// Running pods per node that a drain would evict (not DaemonSet pods), counted at
    /// most every `POD_COUNT_MAX_AGE`, and only when `needed` (some node is pending):
    /// they only order the next starts, and counting walks every pod of the cluster.
    /// Otherwise the last counts, so that the observations built on them are kept.
    fn pods_per_node(&self, needed: bool) -> PodCounts {
        let mut cached = self.pod_counts.lock().unwrap_or_else(|e| e.into_inner());
        match &*cached {
            Some((at, counts)) if !needed || at.elapsed() < POD_COUNT_MAX_AGE => counts.clone(),
            _ => {
                let counts = Arc::new(self.observed.all_pods.evictable_per_node());
                *cached = Some((Instant::now(), counts.clone()));
                counts
            }
        }
    }

    fn facts(&self, view: &View, run: &Run, node: &str, n: Option<&Arc<Node>>) -> NodeFacts {
        NodeFacts {
            exists: n.is_some(),
            unschedulable: n.is_some_and(|n| unschedulable(n)),
            annotated_was_unschedulable: n.and_then(|n| recorded_was_unschedulable(n, &view.name)),
            ztunnel_pods: view
                .ztunnels
                .get(node)
                .map(|pods| {
                    pods.iter()
                        .map(|p| ZtunnelPod {
                            terminating: p.terminating || run.deleted_ztunnels.contains_key(&p.uid),
                            ..p.clone()
                        })
                        .collect()
                })
                .unwrap_or_default(),
            drain: run.drain_results.get(node).cloned(),
            verification: run.verifications.get(node).cloned(),
        }
    }

    /// Steps one node through its machine until it must wait for the cluster. A step
    /// that calls the API server is queued in `calls` for `start_calls`.
    fn advance(
        &self,
        view: &View,
        run: &mut Run,
        node: &str,
        calls: &mut Vec<NodeCall>,
    ) -> Option<Instant> {
        if run.calls.0.contains_key(node) {
            return None;
        }
        let _span = node_span(view, node).entered();
        let n = view
            .nodes
            .get(node)
            .cloned()
            .or_else(|| self.observed.nodes.get(&ObjectRef::new(node)));
        // Pure transitions chain; a call to the API server ends the pass for this node,
        // since the watched state does not show its effect yet.
        for _ in 0..8 {
            let tracked = run.records.get(node)?.clone();
            let facts = self.facts(view, run, node, n.as_ref());
            let step = next_step(&tracked.record, &facts, &view.target, view.now);
            let waiting = match &step.action {
                Action::RecordAndCordon { .. } if n.is_none() => None,
                Action::RecordAndCordon { .. }
                | Action::DeleteZtunnelPod { .. }
                | Action::Release { .. } => {
                    calls.push(NodeCall {
                        node: node.to_owned(),
                        n,
                        step,
                    });
                    return None;
                }
                Action::None => None,
                Action::Wait { until } => Some(*until),
                Action::Drain => {
                    if !run.drains.0.contains_key(node) {
                        let task = self.spawn_drain(view, node);
                        run.drains.0.insert(node.to_owned(), task);
                    }
                    Some(None)
                }
                Action::Verify => {
                    if !run.gates.0.contains_key(node) {
                        let tracked = run.records.get(node);
                        let request = GateRequest {
                            rollout_uid: view.reference.uid.clone().unwrap_or_default(),
                            node: node.to_owned(),
                            ds_uid: view.ds_uid.clone(),
                            target_hash: view.target.revision_hash.clone(),
                            settings: view.settings.health.clone(),
                            ready_since: tracked.map_or(view.now, |t| t.record.since),
                            touched_at: tracked.and_then(|t| t.started),
                        };
                        run.gates
                            .0
                            .insert(node.to_owned(), self.gates.spawn(request));
                    }
                    Some(None)
                }
            };
            run.failures.remove(node);
            let changed = self.transition(view, run, node, n.as_deref(), &step);
            if let Some(until) = waiting {
                return until.map(wake_at);
            }
            if !changed {
                return None;
            }
        }
        None
    }

    /// Starts the queued API calls of one pass as tasks (at most `CALLS_AT_ONCE` run at
    /// once): a pass never waits for a round trip, so one node's step does not hold up
    /// another's. The outcomes are recorded by the pass after they arrive.
    async fn start_calls(
        &mut self,
        view: &View,
        run: &mut Run,
        calls: Vec<NodeCall>,
    ) -> Result<Option<Instant>, PassError> {
        let cordons_new_node = calls.iter().any(|c| {
            matches!(c.step.action, Action::RecordAndCordon { .. })
                && c.n
                    .as_ref()
                    .is_some_and(|n| recorded_was_unschedulable(n, &view.name).is_none())
        });
        let mut calls = calls;
        let mut wake = None;
        if cordons_new_node && let Err(e) = self.ensure_finalizer(&view.name, run).await {
            if let ActionError::NotLeader(e) = e {
                return Err(e.into());
            }
            // No cordon without the finalizer that guarantees its release.
            let (cordons, others): (Vec<_>, Vec<_>) = calls
                .into_iter()
                .partition(|c| matches!(c.step.action, Action::RecordAndCordon { .. }));
            for c in cordons {
                let _span = node_span(view, &c.node).entered();
                wake = earliest(wake, self.step_failed(view, run, &c, &e));
            }
            calls = others;
        }
        let rollout_uid = view.reference.uid.clone().unwrap_or_default();
        for c in calls {
            let actions = self.actions.clone();
            let permits = self.call_permits.clone();
            let tx = self.call_tx.clone();
            let changed = self.observed.changed.clone();
            let rollout = view.name.clone();
            let namespace = view.ds_namespace.clone();
            let rollout_uid = rollout_uid.clone();
            let node = c.node.clone();
            let task = tokio::spawn(
                async move {
                    let _permit = permits.acquire_owned().await;
                    let result = match (&c.step.action, c.n.as_deref()) {
                        (Action::RecordAndCordon { was_unschedulable }, Some(n))
                            if recorded_was_unschedulable(n, &rollout).is_none() =>
                        {
                            actions
                                .record_and_cordon(&rollout, n, *was_unschedulable)
                                .await
                        }
                        (Action::DeleteZtunnelPod { name, uid }, _) => {
                            actions.delete_ztunnel_pod(&namespace, name, uid).await
                        }
                        (Action::Release { uncordon }, _) => {
                            actions
                                .release(&rollout, &c.node, *uncordon, c.n.as_deref())
                                .await
                        }
                        _ => Ok(()),
                    };
                    let _ = tx.send(CallDone {
                        rollout_uid,
                        call: c,
                        result,
                    });
                    changed.notify_one();
                }
                .instrument(node_span(view, &node)),
            );
            run.calls.0.insert(node, task);
        }
        Ok(wake)
    }

    /// Records the outcomes of the node calls that finished since the last pass.
    fn record_calls(&self, view: &View, run: &mut Run) -> Result<Option<Instant>, PassError> {
        let mut wake = None;
        for done in std::mem::take(&mut run.call_results) {
            let c = done.call;
            let _span = node_span(view, &c.node).entered();
            match done.result {
                Ok(()) => {
                    match &c.step.action {
                        Action::RecordAndCordon { was_unschedulable } => {
                            let t = run
                                .records
                                .entry(c.node.clone())
                                .or_insert_with(|| TrackedNode::pending(view.now));
                            t.record.was_unschedulable = Some(*was_unschedulable);
                            t.started.get_or_insert(view.now);
                        }
                        Action::DeleteZtunnelPod { uid, .. } => {
                            run.drain_results.remove(&c.node);
                            run.deleted_ztunnels.insert(uid.clone(), c.node.clone());
                        }
                        Action::Release { .. } => {
                            run.verifications.remove(&c.node);
                            run.gate_notes.remove(&c.node);
                        }
                        _ => {}
                    }
                    run.failures.remove(&c.node);
                    self.transition(view, run, &c.node, c.n.as_deref(), &c.step);
                }
                Err(ActionError::NotLeader(e)) => return Err(e.into()),
                Err(e) => wake = earliest(wake, self.step_failed(view, run, &c, &e)),
            }
        }
        Ok(wake)
    }

    /// A node's call failed: retry with backoff, and give up on the node after
    /// `max_action_failures`.
    fn step_failed(
        &self,
        view: &View,
        run: &mut Run,
        c: &NodeCall,
        e: &ActionError,
    ) -> Option<Instant> {
        if let ActionError::Conflict { .. } = e {
            // The watch shows the node's newer version soon: retry then.
            return Some(Instant::now() + Duration::from_millis(200));
        }
        let failures = run.failures.entry(c.node.clone()).or_default();
        *failures += 1;
        let failures = *failures;
        warn!(error = %e, failures, "a step failed; retrying with backoff");
        if failures >= self.settings.max_action_failures {
            let failed = Step {
                phase: NodePhase::Failed,
                action: Action::None,
                message: format!("gave up after {failures} attempts: {e}"),
            };
            self.transition(view, run, &c.node, c.n.as_deref(), &failed);
            return None;
        }
        Some(Instant::now() + retry_delay(failures))
    }

    /// Records `step`'s phase if it changed; returns whether it did.
    fn transition(
        &self,
        view: &View,
        run: &mut Run,
        node: &str,
        n: Option<&Node>,
        step: &Step,
    ) -> bool {
        let message = match run.gate_notes.get(node) {
            Some(why) if step.phase == NodePhase::ZtunnelReady => format!("verifying: {why}"),
            _ => step.message.clone(),
        };
        let Some(t) = run.records.get_mut(node) else {
            return false;
        };
        if t.record.phase == step.phase {
            if !message.is_empty() && t.message != message {
                t.message = message;
            }
            return false;
        }
        let from = t.record.phase;
        t.record.phase = step.phase;
        t.record.since = Timestamp::now();
        t.message = step.message.clone();
        let labels = RolloutLabels {
            rollout: view.name.clone(),
        };
        match step.phase {
            NodePhase::Done => {
                if let Some(started) = t.started {
                    let secs = t.record.since.duration_since(started).as_secs_f64();
                    self.metrics
                        .node_duration_seconds
                        .get_or_create(&labels)
                        .observe(secs);
                }
            }
            NodePhase::Failed => {
                self.metrics.node_failures.get_or_create(&labels).inc();
                if from == NodePhase::ZtunnelReady {
                    self.verdict(&view.name, "failed");
                }
            }
            NodePhase::Verified => self.verdict(&view.name, "passed"),
            _ => {}
        }
        if step.phase == NodePhase::Failed {
            warn!(from = NodePhase::as_str(from), "{}", step.message);
        } else {
            info!(phase = NodePhase::as_str(step.phase), "{}", step.message);
        }
        let warning = step.phase == NodePhase::Failed;
        let note = format!("{}: {}", view.name, step.message);
        self.notice(
            &node_reference(node, n),
            Some(view.reference.clone()),
            warning,
            NodePhase::as_str(step.phase),
            note.clone(),
        );
        if step.phase.is_terminal() {
            self.notice(
                &view.reference,
                Some(node_reference(node, n)),
                warning,
                &format!("Node{}", NodePhase::as_str(step.phase)),
                format!("node {node}: {}", step.message),
            );
        }
        true
    }

    fn spawn_drain(&self, view: &View, node: &str) -> JoinHandle<()> {
        let drainer = self.drainer.clone();
        let opts: DrainOptions = view.settings.drain.clone();
        let tx = self.drain_tx.clone();
        let changed = self.observed.changed.clone();
        let metrics = self.metrics.clone();
        let rollout_uid = view.reference.uid.clone().unwrap_or_default();
        let node = node.to_owned();
        tokio::spawn(
            async move {
                let result = match drainer.drain(&node, &opts).await {
                    Ok(report) => {
                        for p in &report.pods {
                            let count = |result: &str, n: u64| {
                                if n > 0 {
                                    metrics
                                        .evictions
                                        .get_or_create(&EvictionLabels {
                                            result: result.to_owned(),
                                        })
                                        .inc_by(n);
                                }
                            };
                            count("refused_by_budget", u64::from(p.refused_by_budget));
                            match p.outcome {
                                Outcome::Evicted => count("accepted", 1),
                                Outcome::Failed => count("failed", 1),
                                _ => {}
                            }
                        }
                        if report.complete {
                            Ok(())
                        } else {
                            let reasons: Vec<String> = report
                                .pods
                                .iter()
                                .filter(|p| {
                                    !matches!(p.outcome, Outcome::Evicted | Outcome::Skipped)
                                })
                                .take(3)
                                .map(|p| {
                                    format!(
                                        "{}/{}: {}",
                                        p.namespace,
                                        p.name,
                                        p.reason.as_deref().unwrap_or("not gone")
                                    )
                                })
                                .collect();
                            Err(format!("{} ({})", report.summary(), reasons.join("; ")))
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(DrainDone {
                    rollout_uid,
                    node,
                    result,
                });
                changed.notify_one();
            }
            .in_current_span(),
        )
    }

    async fn ensure_finalizer(&self, name: &str, run: &mut Run) -> Result<(), ActionError> {
        if run.has_finalizer {
            return Ok(());
        }
        self.leadership.check()?;
        let api = Api::<ZtunnelRollout>::all(self.client.clone());
        let kube = |action: &str| {
            let action = format!("{action} rollout {name}");
            move |source| ActionError::Kube { action, source }
        };
        let current = api.get(name).await.map_err(kube("reading"))?;
        let mut finalizers = current.finalizers().to_vec();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            finalizers.push(FINALIZER.to_owned());
            let patch = json!({ "metadata": {
                "resourceVersion": current.metadata.resource_version,
                "finalizers": finalizers,
            }});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube("adding the finalizer to"))?;
        }
        run.has_finalizer = true;
        Ok(())
    }

    async fn remove_finalizer(&self, name: &str) -> Result<(), ActionError> {
        self.leadership.check()?;
        let api = Api::<ZtunnelRollout>::all(self.client.clone());
        let kube = |source| ActionError::Kube {
            action: format!("removing the finalizer of rollout {name}"),
            source,
        };
        let Some(current) = api.get_opt(name).await.map_err(kube)? else {
            return Ok(());
        };
        let finalizers: Vec<&String> = current
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        let patch = json!({ "metadata": {
            "resourceVersion": current.metadata.resource_version,
            "finalizers": finalizers,
        }});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube)?;
        Ok(())
    }

    /// Nodes still waiting for their turn get our PreferNoSchedule taint, so evicted pods
    /// land on nodes already done and are not disrupted twice.
    async fn add_waiting_taints(
        &mut self,
        view: &View,
        run: &mut Run,
        starting: &[String],
    ) -> Result<Option<Instant>, PassError> {
        // Nodes starting now are cordoned instead (a taint first would only make their
        // cordon's conditional patch conflict).
        let starting: HashSet<&str> = starting.iter().map(String::as_str).collect();
        // Cheapest tests first: this runs over every node on every pass.
        let waiting: Vec<Arc<Node>> = along(view.nodes.iter(), &run.records)
            .filter(|(node, n, tracked)| {
                tracked.is_none_or(|t| t.record.phase == NodePhase::Pending)
                    && !unschedulable(n)
                    && !has_waiting_taint(n, &view.name)
                    && !starting.contains(node.as_str())
                    && !run.unseen_taints.contains_key(*node)
                    && !run.calls.0.contains_key(*node)
                    && view.settings.nodes.matches(n.labels())
            })
            .map(|(_, n, _)| n.clone())
            .collect();
        if waiting.is_empty() {
            return Ok(None);
        }
        match self.ensure_finalizer(&view.name, run).await {
            Ok(()) => {}
            Err(ActionError::NotLeader(e)) => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, "could not add the finalizer; retrying");
                return Ok(Some(Instant::now() + retry_delay(1)));
            }
        }
        self.set_waiting_taints(&view.name, run, waiting, true)
            .await
    }

    /// Adds or removes the waiting taint on `nodes`, `CALLS_AT_ONCE` at a time (at the
    /// first wave that is every node of the rollout).
    async fn set_waiting_taints(
        &self,
        rollout: &str,
        run: &mut Run,
        nodes: Vec<Arc<Node>>,
        waiting: bool,
    ) -> Result<Option<Instant>, PassError> {
        let actions = &self.actions;
        let results: Vec<(Arc<Node>, Result<(), ActionError>)> = stream::iter(nodes)
            .map(|n| async move {
                let result = actions.set_waiting_taint(rollout, &n, waiting).await;
                (n, result)
            })
            .buffer_unordered(CALLS_AT_ONCE)
            .collect()
            .await;
        let mut retry = None;
        for (n, result) in results {
            match result {
                Ok(()) => {
                    if let Some(version) = &n.metadata.resource_version {
                        run.unseen_taints.insert(n.name_any(), version.clone());
                    }
                }
                Err(ActionError::NotLeader(e)) => return Err(e.into()),
                Err(e) => {
                    warn!(node = %n.name_any(), error = %e, waiting, "could not change the waiting taint; retrying");
                    retry = Some(Instant::now() + retry_delay(1));
                }
            }
        }
        Ok(retry)
    }

    async fn remove_waiting_taints(
        &mut self,
        view: &View,
        run: &mut Run,
    ) -> Result<Option<Instant>, PassError> {
        let tainted: Vec<Arc<Node>> = self
            .observed
            .nodes
            .state()
            .into_iter()
            .filter(|n| {
                has_waiting_taint(n, &view.name) && !run.unseen_taints.contains_key(&n.name_any())
            })
            .collect();
        self.set_waiting_taints(&view.name, run, tainted, false)
            .await
    }

    /// Forgets the writes the watch shows now (or whose object is gone).
    fn forget_seen_writes(&self, view: &View, run: &mut Run) {
        run.deleted_ztunnels.retain(|uid, node| {
            view.ztunnels
                .get(node)
                .is_some_and(|pods| pods.iter().any(|p| p.uid == *uid && !p.terminating))
        });
        run.unseen_taints.retain(|node, version| {
            self.observed
                .nodes
                .get(&ObjectRef::new(node))
                .is_some_and(|n| n.metadata.resource_version.as_ref() == Some(version))
        });
    }

    /// Cancels drains, releases every node this rollout cordoned (uncordoning only those
    /// that were schedulable before) and removes its taints; when `deleting`, then lets
    /// the object go.
    async fn abort(
        &mut self,
        r: &ZtunnelRollout,
        name: &str,
        run: &mut Run,
        deleting: bool,
    ) -> Result<Option<Instant>, PassError> {
        for (_, t) in run
            .drains
            .0
            .drain()
            .chain(run.gates.0.drain())
            .chain(run.calls.0.drain())
        {
            t.abort();
        }
        let mut retry = None;
        let owned =
            |n: &Node| n.annotations().get(OWNER_ANNOTATION).map(String::as_str) == Some(name);
        let touched: Vec<Arc<Node>> = self
            .observed
            .nodes
            .state()
            .into_iter()
            .filter(|n| owned(n) || has_waiting_taint(n, name))
            .collect();
        let released = touched.iter().filter(|n| owned(n)).count();
        let actions = &self.actions;
        let results: Vec<(String, Result<(), ActionError>)> = stream::iter(touched)
            .map(|n| async move {
                let node = n.name_any();
                let result = if owned(&n) {
                    actions.release(name, &node, true, Some(&n)).await
                } else {
                    actions.set_waiting_taint(name, &n, false).await
                };
                (node, result)
            })
            .buffer_unordered(CALLS_AT_ONCE)
            .collect()
            .await;
        for (node, result) in results {
            match result {
                Ok(()) => {
                    if let Some(t) = run.records.get_mut(&node)
                        && !t.record.phase.is_terminal()
                    {
                        t.message = "aborted: released".into();
                    }
                }
                Err(ActionError::NotLeader(e)) => return Err(e.into()),
                Err(e) => {
                    warn!(node, error = %e, "could not release the node; retrying");
                    retry = Some(Instant::now() + retry_delay(1));
                }
            }
        }
        if released > 0 {
            self.notice(
                &r.object_ref(&()),
                None,
                false,
                "Aborting",
                format!("released {released} node(s) this rollout had cordoned"),
            );
        }
        if deleting && retry.is_none() && run.has_finalizer {
            match self.remove_finalizer(name).await {
                Ok(()) => run.has_finalizer = false,
                Err(ActionError::NotLeader(e)) => return Err(e.into()),
                Err(e) => {
                    warn!(error = %e, "could not remove the finalizer; retrying");
                    retry = Some(Instant::now() + retry_delay(1));
                }
            }
        }
        Ok(retry)
    }

    /// Updates the status (and Events when the standing changes).
    async fn record(
        &self,
        r: &ZtunnelRollout,
        run: &mut Run,
        standing: Standing,
    ) -> Result<Option<Instant>, PassError> {
        let warning = standing.degraded();
        if run.standing.as_ref() != Some(&standing) {
            if warning {
                warn!(reason = %standing.reason, "{}", standing.message);
            } else {
                info!(phase = standing.phase.as_str(), "{}", standing.message);
            }
        }
        // An Event when the reason changes; progress counts only update the status.
        let changed = run
            .standing
            .as_ref()
            .is_none_or(|s| s.phase != standing.phase || s.reason != standing.reason);
        if changed {
            self.notice(
                &r.object_ref(&()),
                None,
                warning,
                &standing.reason,
                standing.message.clone(),
            );
        }
        let phase_changed = run.standing.as_ref().map(|s| s.phase) != Some(standing.phase);
        run.standing = Some(standing.clone());
        match self.write_status(r, run, &standing, phase_changed).await {
            Ok(wake) => {
                run.status_failures = 0;
                Ok(wake)
            }
            Err(ActionError::NotLeader(e)) => Err(e.into()),
            Err(e) => {
                run.status_failures += 1;
                warn!(error = %e, failures = run.status_failures, "could not write the status; retrying");
                Ok(Some(Instant::now() + retry_delay(run.status_failures)))
            }
        }
    }

    async fn write_status(
        &self,
        r: &ZtunnelRollout,
        run: &mut Run,
        standing: &Standing,
        now_anyway: bool,
    ) -> Result<Option<Instant>, ActionError> {
        // Checked before building the status: at 1,000 nodes that is ~150 kB of copies,
        // and passes come many times a second.
        if !now_anyway
            && let Some(at) = run.written_at
            && at.elapsed() < self.settings.status_interval
        {
            return Ok(Some(at + self.settings.status_interval));
        }
        let previous = run
            .written
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let status = ZtunnelRolloutStatus {
            observed_generation: r.metadata.generation,
            phase: Some(standing.phase.as_str().to_owned()),
            current_wave: run.wave.clone(),
            target_revision: run.target.clone(),
            conditions: conditions(
                &previous,
                r.metadata.generation.unwrap_or(0),
                Timestamp::now(),
                standing,
            ),
            counts: counts(run.total, run.records.values()),
            rollback: run.rollback.clone(),
            next_window: run.next_window.map(|t| t.to_string()),
            awaiting_approval: run.awaiting_approval.clone(),
            nodes: node_statuses(&run.records),
        };
        if run.written.as_ref() == Some(&status) {
            return Ok(None);
        }
        self.leadership.check()?;
        apply_status::<ZtunnelRollout>(&self.client, &r.name_any(), &status)
            .await
            .map_err(|source| ActionError::Kube {
                action: format!("writing the status of rollout {}", r.name_any()),
                source,
            })?;
        run.written = Some(status);
        run.written_at = Some(Instant::now());
        Ok(None)
    }

    fn verdict(&self, rollout: &str, result: &str) {
        self.metrics
            .verifications
            .get_or_create(&VerdictLabels {
                rollout: rollout.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    fn notice(
        &self,
        regarding: &ObjectReference,
        related: Option<ObjectReference>,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.events
            .notice("Rollout", regarding, related, warning, reason, note);
    }
}

/// A node step that calls the API server, queued by `advance` for `start_calls`.
struct NodeCall {
    node: String,
    n: Option<Arc<Node>>,
    step: Step,
}

/// Node API calls in flight at once: enough that a wave's nodes do not queue behind
/// each other's round trips, few enough not to flood the API server.
const CALLS_AT_ONCE: usize = 32;

const POD_COUNT_MAX_AGE: Duration = Duration::from_secs(5);

fn node_span(view: &View, node: &str) -> tracing::Span {
    let wave = view.waves.wave_of.get(node).map_or("", String::as_str);
    info_span!("node", wave = %wave, node = %node)
}

const ALL_PHASES: [NodePhase; 9] = [
    NodePhase::Pending,
    NodePhase::Cordoned,
    NodePhase::Drained,
    NodePhase::ZtunnelReplaced,
    NodePhase::ZtunnelReady,
    NodePhase::Verified,
    NodePhase::Done,
    NodePhase::Failed,
    NodePhase::Skipped,
];
