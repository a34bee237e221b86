//! The sidecar migrations' loop, the same model as the rollouts': take the outcomes that
//! came back, ask the pure pass (`ztunnel_rollout_core::sidecar::pass::decide`) what to
//! do with each migration, and hand its effects — relabels, restarts, status writes — to
//! the executor as tasks. Runs beside the rollout loop under the same lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};
use ztunnel_rollout_core::api::migration::{InjectionLabels, SidecarMigrationStatus};
use ztunnel_rollout_core::api_errors::ApiFailure;
use ztunnel_rollout_core::labels::{INJECTION_LABEL, REVISION_LABEL};
use ztunnel_rollout_core::sidecar::migration::{NamespaceView, injection_labels};
use ztunnel_rollout_core::sidecar::namespace_machine::{NamespaceFacts, PodRevision};
use ztunnel_rollout_core::sidecar::pass::{
    Counted, Effect, Lookups, Memory, Notice, Outcome, Plan, Snapshot, decide,
};
use ztunnel_rollout_core::sidecar::tags::TagMoveRecord;
use ztunnel_rollout_core::sidecar::workloads::{Workload, WorkloadKind, restart_patch};

use super::effects::core_reference;
use super::events::EventSink;
use super::executor::{Executor, OwnerCall, TaskKey, TaskKind};
use super::observe::Observed;
use super::rollouts::{earliest, wake_at};
use super::status_patch::apply_status;
use crate::api::SidecarMigration;
use crate::kube_client::api_failure;
use crate::leader::Leadership;
use crate::metrics::{Metrics, MigrationLabels, NamespaceResultLabels};

/// Namespace calls in flight at once across migrations.
const CALLS_AT_ONCE: usize = 8;

/// One migration as this term knows it.
struct Term {
    memory: Memory,
    /// Finished and written at this resourceVersion: skipped until it changes.
    finished_at_version: Option<String>,
}

pub struct SidecarMigrations {
    client: Client,
    observed: Arc<Observed>,
    leadership: Leadership,
    events: EventSink,
    metrics: Arc<Metrics>,
    executor: Executor<Outcome>,
    terms: HashMap<String, Term>,
}

impl SidecarMigrations {
    pub fn new(
        client: Client,
        observed: Arc<Observed>,
        leadership: Leadership,
        events: EventSink,
        metrics: Arc<Metrics>,
    ) -> Self {
        let executor = Executor::new(CALLS_AT_ONCE, observed.sidecar_changed.clone());
        Self {
            client,
            observed,
            leadership,
            events,
            metrics,
            executor,
            terms: HashMap::new(),
        }
    }

    /// Forgets what this term knew and cancels its tasks; the next term starts from the
    /// stored status.
    pub fn reset(&mut self) {
        self.executor.cancel_all();
        self.terms.clear();
    }

    /// Runs the migrations while this replica leads, until the task is aborted.
    pub async fn run(mut self, resync: Duration) {
        let observed = self.observed.clone();
        observed.sidecar_synced().await;
        info!("sidecar migration watches synced");
        let mut leadership = self.leadership.clone();
        loop {
            if !leadership.is_leader() {
                self.reset();
                leadership.acquired().await;
            }
            let wake = self.pass().await;
            let deadline = wake
                .unwrap_or_else(|| Instant::now() + resync)
                .min(Instant::now() + resync);
            tokio::select! {
                _ = observed.sidecar_changed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                // Leadership can lapse without any event: look again before it would.
                _ = tokio::time::sleep(leadership.renew_every()) => {}
            }
        }
    }

    /// One pass over every migration; when to look again at the latest.
    pub async fn pass(&mut self) -> Option<Instant> {
        if self.leadership.check().is_err() {
            return None;
        }
        let mut outcomes: HashMap<String, Vec<Outcome>> = HashMap::new();
        for (key, outcome) in self.executor.outcomes() {
            outcomes.entry(key.owner).or_default().push(outcome);
        }
        let mut migrations = self.observed.migrations.state();
        migrations.sort_by_key(|m| m.name_any());
        let present: Vec<String> = migrations.iter().filter_map(|m| m.uid()).collect();
        for uid in self
            .terms
            .keys()
            .filter(|u| !present.contains(u))
            .cloned()
            .collect::<Vec<_>>()
        {
            self.executor.cancel_owner(&uid);
            self.terms.remove(&uid);
        }
        let mut wake = None;
        for m in migrations {
            let Some(uid) = m.uid() else { continue };
            let span = info_span!("migration", migration = %m.name_any());
            let outcomes = outcomes.remove(&uid).unwrap_or_default();
            let next = self.reconcile(&m, uid, outcomes).instrument(span).await;
            wake = earliest(wake, next);
        }
        wake
    }

    async fn reconcile(
        &mut self,
        m: &SidecarMigration,
        uid: String,
        outcomes: Vec<Outcome>,
    ) -> Option<Instant> {
        let name = m.name_any();
        if let Some(term) = self.terms.get(&uid)
            && outcomes.is_empty()
            && term.finished_at_version.is_some()
            && term.finished_at_version == m.resource_version()
        {
            return None;
        }
        if !self.terms.contains_key(&uid) {
            // A new term starts from the stored status, read afresh: the cache may lag
            // behind the last leader's final writes.
            let stored = match Api::<SidecarMigration>::all(self.client.clone())
                .get_opt(&name)
                .await
            {
                Ok(m) => m.and_then(|m| m.status),
                Err(e) => {
                    warn!(error = %e, "could not read the migration; retrying");
                    return Some(Instant::now() + Duration::from_secs(1));
                }
            };
            self.terms.insert(
                uid.clone(),
                Term {
                    memory: Memory::resume(stored),
                    finished_at_version: None,
                },
            );
        }
        let others: Vec<(String, SidecarMigrationStatus)> = self
            .observed
            .migrations
            .state()
            .iter()
            .filter(|o| o.uid().as_deref() != Some(uid.as_str()))
            .filter_map(|o| {
                let status = match o.uid().and_then(|u| self.terms.get(&u)) {
                    Some(term) => term.memory.status.clone(),
                    None => o.status.clone()?,
                };
                Some((o.name_any(), status))
            })
            .collect();
        let lookups = CacheLookups {
            observed: &self.observed,
            others,
        };
        let term = self.terms.get_mut(&uid)?;
        let tag_move = TagMoveRecord::from_annotations(m.annotations()).unwrap_or_else(|e| {
            // Someone edited it: the migration goes on as one without a tag move.
            tracing::warn!(migration = %name, "{e}");
            None
        });
        let snapshot = Snapshot {
            name: &name,
            generation: m.metadata.generation.unwrap_or(0),
            spec: &m.spec,
            lookups: &lookups,
            tag_move: tag_move.as_ref(),
        };
        let plan = decide(&snapshot, &mut term.memory, outcomes, Timestamp::now());
        term.finished_at_version = plan.finished.then(|| m.resource_version()).flatten();
        let wake = plan.wake_at.map(wake_at);
        self.execute(m, &uid, plan);
        wake
    }

    /// The pass's counted results, as metrics.
    fn count(&self, name: &str, counted: &Counted) {
        for result in &counted.namespaces {
            self.metrics
                .sidecar_namespaces
                .get_or_create(&NamespaceResultLabels {
                    migration: name.to_owned(),
                    result: (*result).to_owned(),
                })
                .inc();
        }
        if counted.restarts > 0 {
            self.metrics
                .sidecar_workload_restarts
                .get_or_create(&MigrationLabels {
                    migration: name.to_owned(),
                })
                .inc_by(counted.restarts);
        }
    }

    fn execute(&mut self, m: &SidecarMigration, uid: &str, plan: Plan) {
        let name = m.name_any();
        self.count(&name, &plan.counted);
        let reference = m.object_ref(&());
        let key = |object: &str, kind: TaskKind| TaskKey {
            owner: uid.to_owned(),
            object: object.to_owned(),
            kind,
        };
        for effect in plan.effects {
            match effect {
                Effect::Event(n) => self.notice(&reference, n),
                Effect::Relabel { namespace, labels } => {
                    let (client, leadership) = (self.client.clone(), self.leadership.clone());
                    let span = info_span!("namespace", namespace = %namespace);
                    let ns = namespace.clone();
                    self.executor
                        .spawn(key(&namespace, TaskKind::Call), span, async move {
                            leadership.check().ok()?;
                            let result = relabel(&client, &ns, &labels).await;
                            if result.is_ok() {
                                info!(labels = %describe_labels(&labels), "namespace relabelled");
                            }
                            Some(Outcome::Relabeled {
                                namespace: ns,
                                labels,
                                result,
                            })
                        });
                }
                Effect::Restart {
                    namespace,
                    workloads,
                    at,
                } => {
                    let (client, leadership) = (self.client.clone(), self.leadership.clone());
                    let span = info_span!("namespace", namespace = %namespace);
                    let ns = namespace.clone();
                    self.executor
                        .spawn(key(&namespace, TaskKind::Call), span, async move {
                            let result = restart(&client, &leadership, &ns, &workloads, at).await?;
                            Some(Outcome::Restarted {
                                namespace: ns,
                                workloads,
                                at,
                                result,
                            })
                        });
                }
                Effect::WriteStatus(status) => {
                    let (client, leadership, name) =
                        (self.client.clone(), self.leadership.clone(), name.clone());
                    self.executor.spawn(
                        key(uid, TaskKind::Owner(OwnerCall::Status)),
                        tracing::Span::current(),
                        async move {
                            leadership.check().ok()?;
                            let result = apply_status::<SidecarMigration>(&client, &name, &status)
                                .await
                                .map_err(|e| api_failure(&e));
                            if let Err(e) = &result {
                                warn!(error = %e, "could not write the migration's status; retrying");
                            }
                            Some(Outcome::StatusWritten { status, result })
                        },
                    );
                }
            }
        }
    }

    fn notice(&self, migration: &ObjectReference, n: Notice) {
        let (regarding, related) = match &n.namespace {
            Some(ns) => {
                let uid = self
                    .observed
                    .namespaces
                    .get(&ObjectRef::new(ns))
                    .and_then(|o| o.metadata.uid.clone());
                (
                    core_reference("Namespace", ns, uid),
                    Some(migration.clone()),
                )
            }
            None => (migration.clone(), None),
        };
        if n.warning {
            warn!(reason = %n.reason, "{}", n.note);
        } else {
            info!(reason = %n.reason, "{}", n.note);
        }
        self.events.send(super::events::Notice {
            at: n.at,
            warning: n.warning,
            reason: n.reason,
            action: "SidecarMigration".into(),
            note: n.note,
            regarding,
            related,
        });
    }
}

fn describe_labels(l: &InjectionLabels) -> String {
    let part = |key: &str, v: &Option<String>| match v {
        Some(v) => format!("{key}={v}"),
        None => format!("{key}-"),
    };
    format!(
        "{} {}",
        part(REVISION_LABEL, &l.rev),
        part(INJECTION_LABEL, &l.istio_injection)
    )
}

async fn relabel(
    client: &Client,
    namespace: &str,
    labels: &InjectionLabels,
) -> Result<(), ApiFailure> {
    let patch = json!({ "metadata": { "labels": {
        REVISION_LABEL: labels.rev,
        INJECTION_LABEL: labels.istio_injection,
    } } });
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|e| api_failure(&e))
}

/// Restarts `workloads` (their restart annotation set to `at`); `None` when this
/// replica lost the lease on the way.
async fn restart(
    client: &Client,
    leadership: &Leadership,
    namespace: &str,
    workloads: &[(WorkloadKind, String)],
    at: Timestamp,
) -> Option<Result<(), ApiFailure>> {
    let patch = restart_patch(at);
    let params = PatchParams::default();
    for (kind, name) in workloads {
        leadership.check().ok()?;
        let c = client.clone();
        let result = match kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(c, namespace)
                .patch(name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
            WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(c, namespace)
                .patch(name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
            WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(c, namespace)
                .patch(name, &params, &Patch::Merge(&patch))
                .await
                .map(drop),
        };
        if let Err(e) = result {
            warn!(error = %e, workload = %format!("{kind} {namespace}/{name}"), "restart failed");
            return Some(Err(api_failure(&e)));
        }
    }
    let names: Vec<String> = workloads.iter().map(|(k, n)| format!("{k} {n}")).collect();
    info!(workloads = %names.join(", "), "restarted");
    Some(Ok(()))
}

/// The pass's view of the watch caches.
struct CacheLookups<'a> {
    observed: &'a Observed,
    others: Vec<(String, SidecarMigrationStatus)>,
}

impl CacheLookups<'_> {
    fn workloads(&self, namespace: &str) -> Vec<Workload> {
        let in_ns = |n: Option<String>| n.as_deref() == Some(namespace);
        let o = self.observed;
        let mut all: Vec<Workload> = o
            .deployments
            .state()
            .iter()
            .filter(|d| in_ns(d.namespace()))
            .map(|d| Workload::from_deployment(d))
            .collect();
        all.extend(
            o.stateful_sets
                .state()
                .iter()
                .filter(|s| in_ns(s.namespace()))
                .map(|s| Workload::from_stateful_set(s)),
        );
        all.extend(
            o.daemon_sets
                .state()
                .iter()
                .filter(|d| in_ns(d.namespace()))
                .map(|d| Workload::from_daemon_set(d)),
        );
        all.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        all
    }
}

impl Lookups for CacheLookups<'_> {
    fn namespaces(&self, wanted: Option<&[String]>) -> Vec<NamespaceView> {
        self.observed
            .namespaces
            .state()
            .iter()
            .map(|n| {
                let name = n.name_any();
                let workloads = if wanted.is_none_or(|w| w.contains(&name)) {
                    self.workloads(&name)
                } else {
                    Vec::new()
                };
                NamespaceView {
                    workloads,
                    labels: n.labels().clone(),
                    name,
                }
            })
            .collect()
    }

    fn facts(&self, namespace: &str) -> Option<NamespaceFacts> {
        let ns = self.observed.namespaces.get(&ObjectRef::new(namespace))?;
        let mut pods: Vec<PodRevision> = self
            .observed
            .all_pods
            .restartable_in(namespace)
            .into_iter()
            .map(|p| PodRevision {
                name: p.name.into(),
                revision: p.injected_revision.map(|r| r.to_string()),
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        Some(NamespaceFacts {
            labels: injection_labels(ns.labels()),
            workloads: self.workloads(namespace),
            pods,
        })
    }

    fn webhooks(&self) -> Vec<MutatingWebhookConfiguration> {
        self.observed
            .webhooks
            .state()
            .iter()
            .map(|w| (**w).clone())
            .collect()
    }

    fn others(&self) -> Vec<(String, SidecarMigrationStatus)> {
        self.others.clone()
    }
}
