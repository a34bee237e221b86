//! What the rollouts' passes decide, done: each effect becomes a task of the executor
//! (node calls, drains, gates, calls on the rollout object) whose outcome comes back to
//! the next pass, or is done at once (Events, cancellations, the lease hand-over).

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::{Instrument, debug, info_span, warn};
use ztunnel_rollout_core::drain::budget::permanent_blockers;
use ztunnel_rollout_core::rollout::pass::{
    About, CallError, CallKind, DrainOutcome, Effect, NodeCall, Notice, Outcome, Plan, UndoFailure,
};

use super::events::EventSink;
use super::executor::{Executor, OwnerCall, TaskKey, TaskKind};
use super::node_actions::NodeActions;
use super::observe::Observed;
use super::verify::Gates;
use crate::drain::report::Outcome as PodOutcome;
use crate::drain::{DrainOptions, Drainer, SharedPdbs};
use crate::health::http_client::HttpClient;
use crate::kube_client::api_failure;
use crate::leader::Leadership;
use crate::metrics::{EvictionLabels, Metrics};

/// Node API calls in flight at once: enough that a wave's nodes do not queue behind
/// each other's round trips, few enough not to flood the API server.
pub const CALLS_AT_ONCE: usize = 32;

/// Eviction requests in flight at once across all the agent's drains: as many as the
/// node calls; a refused eviction returns at once and waits without its permit.
pub const EVICTIONS_AT_ONCE: usize = 32;

pub struct EffectRunner {
    client: Client,
    observed: Arc<Observed>,
    leadership: Leadership,
    events: EventSink,
    metrics: Arc<Metrics>,
    actions: Arc<NodeActions>,
    drainer: Arc<Drainer>,
    gates: Arc<Gates>,
    /// A pass asked to hand the lease over before this node (the agent's own) is
    /// drained.
    step_down: Mutex<Option<String>>,
}

pub fn core_reference(kind: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some(kind.into()),
        name: Some(name.to_owned()),
        uid,
        ..Default::default()
    }
}

impl EffectRunner {
    pub fn new(
        client: Client,
        observed: Arc<Observed>,
        leadership: Leadership,
        events: EventSink,
        metrics: Arc<Metrics>,
        namespace: String,
    ) -> Self {
        Self {
            actions: Arc::new(NodeActions::new(client.clone(), leadership.clone())),
            drainer: Arc::new(
                Drainer::new(client.clone())
                    .guarded_by(leadership.clone())
                    .sharing_request_permits(EVICTIONS_AT_ONCE)
                    .sharing_pdbs(SharedPdbs {
                        store: observed.pdbs.clone(),
                        changed: observed.pdbs_changed.clone(),
                    }),
            ),
            gates: Arc::new(Gates {
                observed: observed.clone(),
                http: HttpClient::new(),
                client: client.clone(),
                namespace,
            }),
            client,
            observed,
            leadership,
            events,
            metrics,
            step_down: Mutex::new(None),
        }
    }

    /// The node a pass asked to hand the lease over for, once.
    pub fn take_step_down(&self) -> Option<String> {
        self.step_down.lock().ok()?.take()
    }

    /// Runs the effects of `plan`, a pass over the rollout `name` (`uid`).
    pub fn run(
        &self,
        executor: &mut Executor<Outcome>,
        rollout: &ObjectReference,
        uid: &str,
        name: &str,
        plan: Plan,
    ) {
        let key = |object: &str, kind: TaskKind| TaskKey {
            owner: uid.to_owned(),
            object: object.to_owned(),
            kind,
        };
        for effect in plan.effects {
            match effect {
                Effect::Call(call) => {
                    let span = info_span!("node", node = %call.node);
                    let task = self.call(name, call.clone());
                    executor.spawn(key(&call.node, TaskKind::Call), span, task);
                }
                Effect::Drain { node, options } => {
                    let span = info_span!("node", node = %node);
                    let task = self.drain(node.clone(), options);
                    executor.spawn(key(&node, TaskKind::Drain), span, task);
                }
                Effect::CancelDrain { node } => executor.cancel(&key(&node, TaskKind::Drain)),
                Effect::Gates(request) => {
                    let span = info_span!("node", node = %request.node);
                    let gates = self.gates.clone();
                    let node = request.node.clone();
                    executor.spawn_with(
                        key(&node, TaskKind::Gates),
                        span,
                        move |sink| async move { gates.run(*request, sink).await },
                    );
                }
                Effect::CancelGates { node } => executor.cancel(&key(&node, TaskKind::Gates)),
                Effect::Connections(request) => {
                    let span = info_span!("node", node = %request.node);
                    let gates = self.gates.clone();
                    let node = request.node.clone();
                    executor.spawn_with(
                        key(&node, TaskKind::Connections),
                        span,
                        move |sink| async move { gates.connections(*request, sink).await },
                    );
                }
                Effect::CancelConnections { node } => {
                    executor.cancel(&key(&node, TaskKind::Connections))
                }
                Effect::Mesh(request) => {
                    let gates = self.gates.clone();
                    executor.spawn_with(
                        key(uid, TaskKind::Mesh),
                        tracing::Span::current(),
                        move |sink| async move { gates.mesh(*request, sink).await },
                    );
                }
                Effect::CancelMesh => executor.cancel(&key(uid, TaskKind::Mesh)),
                Effect::StepDown { node } => {
                    if let Ok(mut s) = self.step_down.lock() {
                        *s = Some(node);
                    }
                }
                Effect::Event(notice) => self.notice(rollout, notice),
                owner_call => self.owner_call(executor, uid, name, owner_call),
            }
        }
    }

    /// A call on the rollout object (finalizer, status, DaemonSet restore, delete) as a
    /// task; no outcome once this replica lost the lease.
    fn owner_call(&self, executor: &mut Executor<Outcome>, uid: &str, name: &str, effect: Effect) {
        use super::rollout_object as object;
        let (client, leadership, name, uid2) = (
            self.client.clone(),
            self.leadership.clone(),
            name.to_owned(),
            uid.to_owned(),
        );
        let key = |call: OwnerCall| TaskKey {
            owner: uid.to_owned(),
            object: uid.to_owned(),
            kind: TaskKind::Owner(call),
        };
        let span = tracing::Span::current();
        match effect {
            Effect::Finalizer { add } => executor.spawn(key(OwnerCall::Finalizer), span, async move {
                let result = object::set_finalizer(&client, &leadership, &name, add).await;
                owner_result(result).map(|result| Outcome::Finalizer { add, result })
            }),
            Effect::UndoDaemonSet {
                namespace,
                name: ds,
                revision,
                cni,
            } => executor.spawn(key(if cni { OwnerCall::UndoCni } else { OwnerCall::Undo }), span, async move {
                match super::rollback::undo(&client, &leadership, &namespace, &ds, &revision).await {
                    Ok(()) => Some(Outcome::Undo { cni, result: Ok(()) }),
                    Err(super::rollback::UndoError::NotLeader(_)) => None,
                    Err(e) => {
                        warn!(error = %e, "could not restore the previous DaemonSet revision; retrying");
                        Some(Outcome::Undo {
                            cni,
                            result: Err(UndoFailure {
                                message: e.to_string(),
                                transient: e.is_transient(),
                            }),
                        })
                    }
                }
            }),
            Effect::WriteStatus(status) => executor.spawn(key(OwnerCall::Status), span, async move {
                let result = object::write_status(&client, &leadership, &name, &status).await;
                if let Err(e) = &result {
                    warn!(error = %e, "could not write the status; retrying");
                }
                owner_result(result).map(|result| Outcome::StatusWritten { status, result })
            }),
            Effect::DeleteRollout => executor.spawn(key(OwnerCall::Delete), span, async move {
                let result = object::delete(&client, &leadership, &name, &uid2).await;
                owner_result(result).map(|result| Outcome::Deleted { result })
            }),
            _ => {}
        }
    }

    fn notice(&self, rollout: &ObjectReference, n: Notice) {
        let node_ref = |node: &str| {
            let uid = self
                .observed
                .nodes
                .get(&kube::runtime::reflector::ObjectRef::new(node))
                .and_then(|n| n.metadata.uid.clone());
            core_reference("Node", node, uid)
        };
        let (regarding, related) = match &n.about {
            About::Rollout => (rollout.clone(), None),
            About::RolloutNode(node) => (rollout.clone(), Some(node_ref(node))),
            About::Node(node) => (node_ref(node), Some(rollout.clone())),
        };
        self.events.send(super::events::Notice {
            at: n.at,
            warning: n.warning,
            reason: n.reason,
            action: "Rollout".into(),
            note: n.note,
            regarding,
            related,
        });
    }

    /// A node call as a task; `None` when this replica lost the lease meanwhile.
    fn call(
        &self,
        rollout: &str,
        call: NodeCall,
    ) -> impl std::future::Future<Output = Option<Outcome>> + Send + 'static {
        let actions = self.actions.clone();
        let client = self.client.clone();
        // Read when the call runs, not when it is queued: a pass may queue a call for
        // every node at once.
        let observed = self.observed.clone();
        let rollout = rollout.to_owned();
        async move {
            let node = call.node.clone();
            let result = match (&call.kind, call.observed.as_deref()) {
                (
                    CallKind::Cordon {
                        was_unschedulable,
                        drain_check,
                    },
                    Some(n),
                ) => {
                    let blockers = match drain_check {
                        Some(filter) => blockers(&client, &node, &observed, filter).await,
                        None => Ok(Vec::new()),
                    };
                    match blockers {
                        Err(e) => Err(Some(CallError::Api(api_failure(&e)))),
                        Ok(b) if !b.is_empty() => Err(Some(CallError::Blocked(b.join("; ")))),
                        Ok(_) => actions
                            .record_and_cordon(&rollout, n, *was_unschedulable)
                            .await
                            .map_err(|e| e.call_error()),
                    }
                }
                (CallKind::Cordon { .. }, None) => Err(Some(CallError::NodeGone)),
                (
                    CallKind::DeleteZtunnelPod {
                        namespace,
                        name,
                        uid,
                    },
                    _,
                ) => actions
                    .delete_node_agent_pod(&node, "ztunnel", namespace, name, uid)
                    .await
                    .map_err(|e| e.call_error()),
                (
                    CallKind::DeleteCniPod {
                        namespace,
                        name,
                        uid,
                    },
                    _,
                ) => actions
                    .delete_node_agent_pod(&node, "istio-cni", namespace, name, uid)
                    .await
                    .map_err(|e| e.call_error()),
                (CallKind::Release { uncordon }, n) => actions
                    .release(&rollout, &node, *uncordon, n)
                    .await
                    .map_err(|e| e.call_error()),
                (CallKind::Uncordon, _) => actions
                    .uncordon_for_bake(&rollout, &node)
                    .await
                    .map_err(|e| e.call_error()),
                (CallKind::WaitingTaint { waiting }, Some(n)) => actions
                    .set_waiting_taint(&rollout, n, *waiting)
                    .await
                    .map_err(|e| e.call_error()),
                (CallKind::WaitingTaint { .. }, None) => Err(Some(CallError::NodeGone)),
                (CallKind::Disown { cordon }, _) => actions
                    .disown(&rollout, &node, cordon.as_deref())
                    .await
                    .map_err(|e| e.call_error()),
                (CallKind::Check { .. }, _) => actions
                    .check(&rollout, &node)
                    .await
                    .map_err(|e| e.call_error()),
            };
            let result = match result {
                Ok(done) => {
                    debug!(?done, "{} done", call.kind.verb());
                    Ok(done)
                }
                Err(Some(e)) => {
                    warn!(error = %e, "{} failed", call.kind.verb());
                    Err(e)
                }
                Err(None) => return None, // Not the leader any more.
            };
            Some(Outcome::Call { call, result })
        }
    }

    /// A drain as a task: its report becomes a drained node, a workload verdict, or API
    /// trouble (drained again later, never a node failure).
    fn drain(
        &self,
        node: String,
        options: DrainOptions,
    ) -> impl std::future::Future<Output = Option<Outcome>> + Send + 'static {
        let drainer = self.drainer.clone();
        let metrics = self.metrics.clone();
        let leadership = self.leadership.clone();
        async move {
            let result = match drainer.drain(&node, &options).await {
                Ok(report) => {
                    count_evictions(&metrics, &report);
                    if report.complete {
                        DrainOutcome::Drained
                    } else {
                        let reasons: Vec<String> = report
                            .pods
                            .iter()
                            .filter(|p| {
                                !matches!(p.outcome, PodOutcome::Evicted | PodOutcome::Skipped)
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
                        let why = format!("{} ({})", report.summary(), reasons.join("; "));
                        if leadership.check().is_err() {
                            return None;
                        }
                        if report.failed_on_api_trouble() {
                            DrainOutcome::ApiTrouble(why)
                        } else {
                            DrainOutcome::Blocked(why)
                        }
                    }
                }
                // The node's read, the pod list or the watches failed: the API's trouble.
                Err(e) => DrainOutcome::ApiTrouble(e.to_string()),
            };
            Some(Outcome::Drain { node, result })
        }
        .in_current_span()
    }
}

/// Permanent drain blockers of `node`'s pods (one pod list; the PDBs from the cache).
async fn blockers(
    client: &Client,
    node: &str,
    observed: &Observed,
    filter: &crate::drain::filter::FilterOptions,
) -> Result<Vec<String>, kube::Error> {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?
        .items;
    // Only the budgets of the namespaces this node's pods are in.
    let namespaces: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.metadata.namespace.as_deref())
        .collect();
    let pdbs: Vec<PodDisruptionBudget> = observed
        .pdbs
        .state()
        .iter()
        .filter(|b| {
            b.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| namespaces.contains(ns))
        })
        .map(|b| b.as_ref().clone())
        .collect();
    Ok(permanent_blockers(&pods, &pdbs, filter, Timestamp::now()))
}

fn count_evictions(metrics: &Metrics, report: &crate::drain::DrainReport) {
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
            PodOutcome::Evicted => count("accepted", 1),
            PodOutcome::Failed => count("failed", 1),
            _ => {}
        }
    }
}

/// A call on the rollout object: its outcome, or `None` when not the leader any more.
fn owner_result(
    result: Result<(), super::rollout_object::ObjectError>,
) -> Option<Result<(), ztunnel_rollout_core::api_errors::ApiFailure>> {
    match result {
        Ok(()) => Some(Ok(())),
        Err(super::rollout_object::ObjectError::NotLeader(_)) => None,
        Err(super::rollout_object::ObjectError::Api(e)) => Some(Err(e)),
    }
}
