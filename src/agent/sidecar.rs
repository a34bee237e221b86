//! The shell of the sidecar migrations: reads the watch caches, asks the pure rules in
//! `crate::sidecar` what to do, relabels namespaces and restarts workloads, and records
//! every namespace's phase in the migration's status before acting on it, so a new
//! leader carries on where the last one stopped. Runs beside the rollout loop under the
//! same lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::effects::core_reference;
use super::events::EventSink;
use super::observe::Observed;
use super::rollouts::{PassError, earliest, retry_delay, wake_at};
use super::status_patch::apply_status;
use crate::api::sidecar_migration::{
    InjectionLabels, NamespaceCounts, NamespaceMigrationStatus, SidecarFailurePolicy,
    SidecarMigration, SidecarMigrationStatus,
};
use crate::leader::{Leadership, NotLeader};
use crate::metrics::{Metrics, MigrationLabels, NamespaceResultLabels};
use ztunnel_rollout_core::duration::parse_duration;
use ztunnel_rollout_core::labels::{INJECTION_LABEL, REVISION_LABEL};
use ztunnel_rollout_core::sidecar::expectations::Expectations;
use ztunnel_rollout_core::sidecar::migration::{
    self, MigrationPhase, NamespaceState, NamespaceView, injection_labels, target_labels,
};
use ztunnel_rollout_core::sidecar::namespace_machine::{
    NamespaceFacts, NamespacePhase, NamespaceRecord, PodRevision, Step, Target, direction_target,
    next_step, tally,
};
use ztunnel_rollout_core::sidecar::workloads::{Workload, WorkloadKind, restart_patch};

/// Steps one namespace may take in a pass before waiting for the watches.
const STEPS_PER_PASS: usize = 8;
/// Pod changes do not wake the loop; a verifying namespace looks again this often.
const VERIFY_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum ActionError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    #[error("{action}: {source}")]
    Kube { action: String, source: kube::Error },
}

fn kube_error(action: String) -> impl FnOnce(kube::Error) -> ActionError {
    move |source| ActionError::Kube { action, source }
}

/// One migration as this leader term knows it.
struct Run {
    uid: String,
    status: SidecarMigrationStatus,
    written: Option<SidecarMigrationStatus>,
    failures: u32,
    /// After a failed step, nothing is tried again before this.
    retry_at: Option<Instant>,
}

pub struct SidecarMigrations {
    client: Client,
    observed: Arc<Observed>,
    leadership: Leadership,
    events: EventSink,
    metrics: Arc<Metrics>,
    runs: HashMap<String, Run>,
    /// Changes made but maybe not in the caches yet (the passes run one at a time).
    expected: std::sync::Mutex<Expectations>,
}

fn parse_time(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|t| t.parse().ok())
}

fn record_of(ns: &NamespaceMigrationStatus) -> NamespaceRecord {
    NamespaceRecord {
        phase: ns.phase,
        since: parse_time(Some(&ns.since)).unwrap_or(Timestamp::UNIX_EPOCH),
        step_started: parse_time(ns.step_started.as_deref()),
        verifying_since: parse_time(ns.verifying_since.as_deref()),
        previous: ns.previous.clone(),
        previous_revision: ns.previous_revision.clone(),
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

fn namespace_reference(name: &str, ns: Option<&Namespace>) -> ObjectReference {
    core_reference("Namespace", name, ns.and_then(|n| n.metadata.uid.clone()))
}

impl SidecarMigrations {
    pub fn new(
        client: Client,
        observed: Arc<Observed>,
        leadership: Leadership,
        events: EventSink,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            observed,
            leadership,
            events,
            metrics,
            runs: HashMap::new(),
            expected: Default::default(),
        }
    }

    /// Forgets what this term knew; the next term starts from the stored status.
    pub fn reset(&mut self) {
        self.runs.clear();
        if let Ok(mut e) = self.expected.lock() {
            e.clear();
        }
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
            let wake = match self.pass().await {
                Ok(wake) => wake,
                Err(PassError::NotLeader(e)) => {
                    warn!(error = %e, "stopped mid-pass");
                    continue;
                }
            };
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

    pub async fn pass(&mut self) -> Result<Option<Instant>, PassError> {
        let mut migrations = self.observed.migrations.state();
        migrations.sort_by_key(|m| m.name_any());
        self.runs
            .retain(|name, _| migrations.iter().any(|m| &m.name_any() == name));
        let mut wake = None;
        for m in migrations {
            let span = info_span!("migration", migration = %m.name_any());
            let next = self.reconcile(&m).instrument(span).await?;
            wake = earliest(wake, next);
        }
        Ok(wake)
    }

    async fn reconcile(&mut self, m: &SidecarMigration) -> Result<Option<Instant>, PassError> {
        let name = m.name_any();
        let uid = m.uid().unwrap_or_default();
        let mut run = match self.runs.remove(&name) {
            Some(run) if run.uid == uid => run,
            _ => {
                // A new term starts from the stored status, read afresh: the cache may
                // lag behind the last leader's final writes.
                let stored = match self.read_status(&name).await {
                    Ok(status) => status,
                    Err(e) => {
                        warn!(error = %e, "could not read the migration; retrying");
                        return Ok(Some(Instant::now() + retry_delay(1)));
                    }
                };
                Run {
                    uid,
                    status: stored.clone().unwrap_or_default(),
                    written: stored,
                    failures: 0,
                    retry_at: None,
                }
            }
        };
        if let Some(at) = run.retry_at.filter(|at| *at > Instant::now()) {
            self.runs.insert(name, run);
            return Ok(Some(at));
        }
        let result = self.reconcile_run(m, &mut run).await;
        let wake = match result {
            Ok(wake) => {
                run.failures = 0;
                run.retry_at = None;
                Ok(wake)
            }
            Err(ActionError::NotLeader(e)) => Err(e.into()),
            Err(e) => {
                run.failures += 1;
                let at = Instant::now() + retry_delay(run.failures);
                run.retry_at = Some(at);
                warn!(error = %e, failures = run.failures, "a migration step failed; retrying");
                if run.failures == 1 {
                    self.notice(
                        &m.object_ref(&()),
                        None,
                        true,
                        "StepFailed",
                        format!("{e}; retrying with backoff"),
                    );
                }
                Ok(Some(at))
            }
        };
        self.runs.insert(name, run);
        wake
    }

    async fn reconcile_run(
        &self,
        m: &SidecarMigration,
        run: &mut Run,
    ) -> Result<Option<Instant>, ActionError> {
        let phase = run
            .status
            .phase
            .as_deref()
            .and_then(MigrationPhase::parse)
            .unwrap_or(MigrationPhase::Pending);
        let finished = match phase {
            MigrationPhase::Refused | MigrationPhase::RolledBack => true,
            MigrationPhase::Succeeded | MigrationPhase::Failed => !m.spec.rollback,
            _ => false,
        };
        if finished {
            return self.write_status(m, run).await.map(|()| None);
        }
        let timeouts = parse_duration(&m.spec.rollout_timeout)
            .and_then(|r| parse_duration(&m.spec.verify_timeout).map(|v| (r, v)));
        if run.status.namespaces.is_empty() {
            let refusal = match &timeouts {
                Err(e) => Some(e.clone()),
                Ok(_) => self.start(m, run).err().map(|r| r.to_string()),
            };
            if let Some(why) = refusal {
                self.refuse(m, run, why);
                return self.write_status(m, run).await.map(|()| None);
            }
            self.write_status(m, run).await?;
        }
        let Ok((rollout_timeout, verify_timeout)) = timeouts else {
            return Ok(None);
        };
        let forward = Target {
            labels: target_labels(&m.spec.to),
            revision: run.status.target_revision.clone().unwrap_or_default(),
            workloads_at_once: usize::try_from(m.spec.workloads_at_once).unwrap_or(1),
            rollout_timeout,
            verify_timeout,
        };
        let batch = usize::try_from(m.spec.batch_size).unwrap_or(1);

        let decision = self.decide(m, run, batch);
        let now = Timestamp::now();
        for &i in &decision.roll_back {
            let ns = &mut run.status.namespaces[i];
            let why = if m.spec.rollback {
                "rollback requested".to_owned()
            } else {
                ns.message.clone()
            };
            self.enter(
                m,
                ns,
                NamespacePhase::RollingBack,
                format!("rolling back: {why}"),
                now,
            );
        }
        if !decision.roll_back.is_empty() {
            self.write_status(m, run).await?;
        }

        let mut wake = None;
        for i in 0..run.status.namespaces.len() {
            let ns = &run.status.namespaces[i];
            let may_start = ns.phase == NamespacePhase::Pending && decision.start.contains(&i);
            if !ns.phase.in_flight() && !may_start {
                continue;
            }
            let span = info_span!("namespace", namespace = %ns.name);
            let next = self.advance(m, run, i, &forward).instrument(span).await?;
            wake = earliest(wake, next);
        }

        let decision = self.decide(m, run, batch);
        self.stand(m, run, &decision);
        self.write_status(m, run).await?;
        Ok(wake)
    }

    fn decide(&self, m: &SidecarMigration, run: &Run, batch: usize) -> migration::Decision {
        let names: Vec<String> = run
            .status
            .namespaces
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let states: Vec<NamespaceState> = run
            .status
            .namespaces
            .iter()
            .map(|n| NamespaceState {
                phase: n.phase,
                touched: n.step_started.is_some(),
            })
            .collect();
        migration::decide(&names, &states, batch, m.spec.rollback)
    }

    /// Plans the migration and records its namespaces, or says why it cannot start.
    fn start(&self, m: &SidecarMigration, run: &mut Run) -> Result<(), migration::Refusal> {
        let candidates: Option<&Vec<String>> = m.spec.namespaces.as_ref();
        let views: Vec<NamespaceView> = self
            .observed
            .namespaces
            .state()
            .iter()
            .map(|n| {
                let name = n.name_any();
                let labels = n.labels().clone();
                let wanted = candidates.is_none_or(|c| c.contains(&name));
                NamespaceView {
                    workloads: if wanted {
                        self.workloads(&name)
                    } else {
                        Vec::new()
                    },
                    name,
                    labels,
                }
            })
            .collect();
        let webhooks: Vec<_> = self
            .observed
            .webhooks
            .state()
            .iter()
            .map(|w| (**w).clone())
            .collect();
        // Other migrations as this term knows them, else as stored.
        let others: Vec<(String, SidecarMigrationStatus)> = self
            .observed
            .migrations
            .state()
            .iter()
            .filter(|o| o.name_any() != m.name_any())
            .filter_map(|o| {
                let name = o.name_any();
                let status = match self.runs.get(&name) {
                    Some(run) => run.status.clone(),
                    None => o.status.clone()?,
                };
                Some((name, status))
            })
            .collect();
        let claimed = migration::claimed(others.iter().map(|(n, s)| (n.as_str(), s)));
        let plan = migration::plan(&m.spec, &views, &webhooks, &claimed)?;
        let now = Timestamp::now().to_string();
        info!(
            target_revision = %plan.target_revision,
            namespaces = plan.namespaces.len(),
            "migration planned"
        );
        self.notice(
            &m.object_ref(&()),
            None,
            false,
            "MigrationStarted",
            format!(
                "moving {} namespaces to {} (revision {}), {} at a time: {}",
                plan.namespaces.len(),
                m.spec.to,
                plan.target_revision,
                m.spec.batch_size,
                plan.namespaces
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        if !plan.warnings.is_empty() {
            warn!(warnings = ?plan.warnings, "restarts that cannot be free of downtime");
            self.notice(
                &m.object_ref(&()),
                None,
                true,
                "DowntimeRisk",
                plan.warnings.join("; "),
            );
        }
        run.status.target_revision = Some(plan.target_revision);
        run.status.warnings = plan.warnings;
        run.status.phase = Some(MigrationPhase::Progressing.as_str().to_owned());
        run.status.namespaces = plan
            .namespaces
            .into_iter()
            .map(|p| NamespaceMigrationStatus {
                name: p.name,
                phase: NamespacePhase::Pending,
                previous: p.previous,
                previous_revision: p.previous_revision,
                step_started: None,
                verifying_since: None,
                workloads: 0,
                workloads_restarted: 0,
                pods: 0,
                pods_verified: 0,
                since: now.clone(),
                message: String::new(),
            })
            .collect();
        Ok(())
    }

    fn refuse(&self, m: &SidecarMigration, run: &mut Run, why: String) {
        warn!(reason = %why, "migration refused; nothing was changed");
        let message = format!("refused, nothing was changed: {why}");
        self.notice(
            &m.object_ref(&()),
            None,
            true,
            "MigrationRefused",
            message.clone(),
        );
        run.status.phase = Some(MigrationPhase::Refused.as_str().to_owned());
        run.status.conditions = migration::conditions(
            &run.status.conditions,
            m.metadata.generation.unwrap_or(0),
            Timestamp::now(),
            MigrationPhase::Refused,
            "Refused",
            &message,
        );
    }

    /// The migration's phase, conditions and counts after a pass; an Event when its
    /// phase or reason changes.
    fn stand(&self, m: &SidecarMigration, run: &mut Run, decision: &migration::Decision) {
        let previous = run.status.conditions.clone();
        let before = (
            run.status.phase.clone(),
            previous
                .iter()
                .find(|c| c.type_ == migration::PROGRESSING)
                .map(|c| c.reason.clone()),
        );
        let phase = decision.phase.as_str().to_owned();
        let changed = before.0.as_deref() != Some(phase.as_str())
            || before.1.as_deref() != Some(decision.reason);
        run.status.phase = Some(phase);
        run.status.conditions = migration::conditions(
            &previous,
            m.metadata.generation.unwrap_or(0),
            Timestamp::now(),
            decision.phase,
            decision.reason,
            &decision.message,
        );
        let count = |f: &dyn Fn(NamespacePhase) -> bool| {
            u32::try_from(run.status.namespaces.iter().filter(|n| f(n.phase)).count())
                .unwrap_or(u32::MAX)
        };
        run.status.counts = NamespaceCounts {
            total: count(&|_| true),
            migrated: count(&|p| p == NamespacePhase::Migrated),
            failed: count(&|p| {
                matches!(p, NamespacePhase::Failed | NamespacePhase::RollbackFailed)
            }),
            rolled_back: count(&|p| p == NamespacePhase::RolledBack),
            in_flight: count(&|p| p.in_flight()),
        };
        if changed {
            let warning = matches!(
                decision.phase,
                MigrationPhase::Failed | MigrationPhase::RollingBack
            ) || decision.reason == "NamespaceFailed"
                || decision.reason == "RollbackFailed";
            if warning {
                warn!(reason = decision.reason, "{}", decision.message);
            } else {
                info!(phase = decision.phase.as_str(), "{}", decision.message);
            }
            self.notice(
                &m.object_ref(&()),
                None,
                warning,
                decision.reason,
                decision.message.clone(),
            );
        }
    }

    fn workloads(&self, namespace: &str) -> Vec<Workload> {
        let in_ns = |n: Option<String>| n.as_deref() == Some(namespace);
        let mut all: Vec<Workload> = self
            .observed
            .deployments
            .state()
            .iter()
            .filter(|d| in_ns(d.namespace()))
            .map(|d| Workload::from_deployment(d))
            .collect();
        all.extend(
            self.observed
                .stateful_sets
                .state()
                .iter()
                .filter(|s| in_ns(s.namespace()))
                .map(|s| Workload::from_stateful_set(s)),
        );
        all.extend(
            self.observed
                .daemon_sets
                .state()
                .iter()
                .filter(|d| in_ns(d.namespace()))
                .map(|d| Workload::from_daemon_set(d)),
        );
        all.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        all
    }

    fn facts(&self, namespace: &str) -> Option<NamespaceFacts> {
        let ns = self.observed.namespaces.get(&ObjectRef::new(namespace))?;
        let mut pods: Vec<PodRevision> = self
            .observed
            .all_pods
            .restartable_in(namespace)
            .into_iter()
            .map(|p| PodRevision {
                name: p.name,
                revision: p.injected_revision,
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        let mut facts = NamespaceFacts {
            labels: injection_labels(ns.labels()),
            workloads: self.workloads(namespace),
            pods,
        };
        if let Ok(mut e) = self.expected.lock() {
            e.overlay(namespace, &mut facts);
        }
        Some(facts)
    }

    /// Takes namespace `i` through as many steps as it can without waiting.
    async fn advance(
        &self,
        m: &SidecarMigration,
        run: &mut Run,
        i: usize,
        forward: &Target,
    ) -> Result<Option<Instant>, ActionError> {
        for _ in 0..STEPS_PER_PASS {
            let name = run.status.namespaces[i].name.clone();
            let now = Timestamp::now();
            let record = record_of(&run.status.namespaces[i]);
            let step = match self.facts(&name) {
                Some(facts) => {
                    let target = direction_target(&record, forward);
                    let counts = tally(&record, &facts, &target);
                    let ns = &mut run.status.namespaces[i];
                    ns.workloads = counts.workloads;
                    ns.workloads_restarted = counts.workloads_restarted;
                    ns.pods = counts.pods;
                    ns.pods_verified = counts.pods_verified;
                    next_step(&record, &facts, forward, &name, now)
                }
                None => Step::Fail(format!("namespace {name} no longer exists")),
            };
            match step {
                Step::Done => return Ok(None),
                Step::Enter { phase, message } => {
                    let ns = &mut run.status.namespaces[i];
                    self.enter(m, ns, phase, message, now);
                    if matches!(
                        phase,
                        NamespacePhase::Restarting | NamespacePhase::RollingBack
                    ) {
                        // Recorded before any label or workload changes.
                        self.write_status(m, run).await?;
                    }
                }
                Step::Relabel(labels) => {
                    // Never act on a step the status does not record yet.
                    self.write_status(m, run).await?;
                    self.relabel(m, &name, &labels).await?;
                    return Ok(None);
                }
                Step::Restart(workloads) => {
                    self.write_status(m, run).await?;
                    // Never earlier than the step's recorded start, whatever this clock says.
                    let at = now.max(record.step_started.unwrap_or(now));
                    self.restart(m, &name, &workloads, at).await?;
                    return Ok(None);
                }
                Step::Wait { message, until } => {
                    let ns = &mut run.status.namespaces[i];
                    ns.message = message;
                    let mut wake = until.map(wake_at);
                    if matches!(
                        ns.phase,
                        NamespacePhase::Verifying | NamespacePhase::VerifyingRollback
                    ) {
                        wake = earliest(wake, Some(Instant::now() + VERIFY_RECHECK));
                    }
                    return Ok(wake);
                }
                Step::Fail(why) => {
                    let ns = &mut run.status.namespaces[i];
                    let (phase, message) = if ns.phase.backwards() {
                        (
                            NamespacePhase::RollbackFailed,
                            format!("rollback failed: {why}"),
                        )
                    } else if m.spec.on_failure == SidecarFailurePolicy::Rollback
                        && !m.spec.rollback
                    {
                        self.notice(
                            &namespace_reference(&name, None),
                            Some(m.object_ref(&())),
                            true,
                            "NamespaceFailed",
                            format!("namespace {name}: {why}"),
                        );
                        (NamespacePhase::RollingBack, format!("rolling back: {why}"))
                    } else {
                        (NamespacePhase::Failed, why)
                    };
                    self.enter(m, ns, phase, message, now);
                    if phase == NamespacePhase::RollingBack {
                        self.write_status(m, run).await?;
                    } else {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(Instant::now()))
    }

    /// Moves a namespace record into `phase`, with its Event and metric.
    fn enter(
        &self,
        m: &SidecarMigration,
        ns: &mut NamespaceMigrationStatus,
        phase: NamespacePhase,
        message: String,
        now: Timestamp,
    ) {
        ns.phase = phase;
        ns.since = now.to_string();
        ns.message = message.clone();
        match phase {
            NamespacePhase::Restarting | NamespacePhase::RollingBack => {
                ns.step_started = Some(now.to_string());
                ns.verifying_since = None;
            }
            NamespacePhase::Verifying | NamespacePhase::VerifyingRollback => {
                ns.verifying_since = Some(now.to_string());
            }
            _ => {}
        }
        let (reason, warning, result) = match phase {
            NamespacePhase::Restarting => ("NamespaceMoving", false, None),
            NamespacePhase::Verifying | NamespacePhase::VerifyingRollback => {
                ("NamespaceVerifying", false, None)
            }
            NamespacePhase::Migrated => ("NamespaceMigrated", false, Some("migrated")),
            NamespacePhase::Failed => ("NamespaceFailed", true, Some("failed")),
            NamespacePhase::RollingBack => ("NamespaceRollingBack", true, None),
            NamespacePhase::RolledBack => ("NamespaceRolledBack", false, Some("rolled_back")),
            NamespacePhase::RollbackFailed => {
                ("NamespaceRollbackFailed", true, Some("rollback_failed"))
            }
            NamespacePhase::Pending => return,
        };
        if warning {
            warn!(namespace = %ns.name, phase = phase.as_str(), "{message}");
        } else {
            info!(namespace = %ns.name, phase = phase.as_str(), "{message}");
        }
        if let Some(result) = result {
            self.metrics
                .sidecar_namespaces
                .get_or_create(&NamespaceResultLabels {
                    migration: m.name_any(),
                    result: result.to_owned(),
                })
                .inc();
        }
        let namespace = self.observed.namespaces.get(&ObjectRef::new(&ns.name));
        self.notice(
            &namespace_reference(&ns.name, namespace.as_deref()),
            Some(m.object_ref(&())),
            warning,
            reason,
            format!("namespace {}: {message}", ns.name),
        );
    }

    async fn relabel(
        &self,
        m: &SidecarMigration,
        namespace: &str,
        labels: &InjectionLabels,
    ) -> Result<(), ActionError> {
        self.leadership.check()?;
        let patch = json!({ "metadata": { "labels": {
            REVISION_LABEL: labels.rev,
            INJECTION_LABEL: labels.istio_injection,
        } } });
        Api::<Namespace>::all(self.client.clone())
            .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_error(format!("relabelling namespace {namespace}")))?;
        if let Ok(mut e) = self.expected.lock() {
            e.relabelled(namespace, labels.clone());
        }
        let described = describe_labels(labels);
        info!(labels = %described, "namespace relabelled");
        let ns = self.observed.namespaces.get(&ObjectRef::new(namespace));
        self.notice(
            &namespace_reference(namespace, ns.as_deref()),
            Some(m.object_ref(&())),
            false,
            "NamespaceRelabeled",
            format!("namespace {namespace}: {described}"),
        );
        Ok(())
    }

    async fn restart(
        &self,
        m: &SidecarMigration,
        namespace: &str,
        workloads: &[(WorkloadKind, String)],
        now: Timestamp,
    ) -> Result<(), ActionError> {
        let patch = restart_patch(now);
        let params = PatchParams::default();
        for (kind, name) in workloads {
            self.leadership.check()?;
            let action = format!("restarting {kind} {namespace}/{name}");
            let c = self.client.clone();
            match kind {
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
            }
            .map_err(kube_error(action))?;
            if let Ok(mut e) = self.expected.lock() {
                e.restarted(namespace, *kind, name, now);
            }
            self.metrics
                .sidecar_workload_restarts
                .get_or_create(&MigrationLabels {
                    migration: m.name_any(),
                })
                .inc();
        }
        let names: Vec<String> = workloads.iter().map(|(k, n)| format!("{k} {n}")).collect();
        info!(workloads = %names.join(", "), "restarted");
        let ns = self.observed.namespaces.get(&ObjectRef::new(namespace));
        self.notice(
            &namespace_reference(namespace, ns.as_deref()),
            Some(m.object_ref(&())),
            false,
            "WorkloadsRestarted",
            format!("namespace {namespace}: restarted {}", names.join(", ")),
        );
        Ok(())
    }

    async fn read_status(&self, name: &str) -> Result<Option<SidecarMigrationStatus>, ActionError> {
        Api::<SidecarMigration>::all(self.client.clone())
            .get_opt(name)
            .await
            .map(|m| m.and_then(|m| m.status))
            .map_err(kube_error(format!("reading migration {name}")))
    }

    async fn write_status(&self, m: &SidecarMigration, run: &mut Run) -> Result<(), ActionError> {
        let mut status = run.status.clone();
        status.observed_generation = m.metadata.generation;
        if run.written.as_ref() == Some(&status) {
            return Ok(());
        }
        self.leadership.check()?;
        apply_status::<SidecarMigration>(&self.client, &m.name_any(), &status)
            .await
            .map_err(kube_error(format!(
                "writing the status of migration {}",
                m.name_any()
            )))?;
        run.written = Some(status);
        Ok(())
    }

    fn notice(
        &self,
        regarding: &ObjectReference,
        related: Option<ObjectReference>,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.events.notice(
            "SidecarMigration",
            regarding,
            related,
            warning,
            reason,
            note,
        );
    }
}
