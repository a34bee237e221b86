//! One pass over a sidecar migration, the same model as the rollouts' pass: [`decide`]
//! takes what the watches show (through [`Lookups`]), what this leader term remembers
//! ([`Memory`]), the outcomes of earlier effects and the time, and returns effects —
//! relabel a namespace, restart workloads, write the status, Events. It never waits.
//!
//! A namespace's step is always recorded before it is acted on: a relabel or restart is
//! asked for only once the status that records the step is written, so a new leader
//! carries on where the last one stopped. A call that fails is retried with backoff
//! (an Event on the first failure and every tenth); a step whose calls keep failing for
//! longer than the rollout timeout fails its namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::expectations::Expectations;
use super::migration::{
    self, MigrationPhase, NamespaceState, NamespaceView, Refusal, target_labels,
};
use super::namespace_machine::{
    NamespaceFacts, NamespacePhase, NamespaceRecord, Step, Target, direction_target, next_step,
    tally,
};
use super::workloads::WorkloadKind;
use crate::api::migration::{
    InjectionLabels, MigrationSpec, NamespaceCounts, NamespaceMigrationStatus,
    SidecarFailurePolicy, SidecarMigrationStatus,
};
use crate::api_errors::ApiFailure;
use crate::duration::parse_duration;
use crate::rollout::pass::memory::Retry;

/// Steps one namespace may take in a pass before waiting for the watches.
const STEPS_PER_PASS: usize = 8;
/// Pod changes do not wake the loop; a verifying namespace looks again this often.
const VERIFY_RECHECK: SignedDuration = SignedDuration::from_secs(1);
/// A call failing this many times in a row gets an Event again.
const EVENT_EVERY: u32 = 10;

/// What the shell's caches answer.
pub trait Lookups {
    /// Every namespace (with its workloads where `wanted` names it, or all when `None`).
    fn namespaces(&self, wanted: Option<&[String]>) -> Vec<NamespaceView>;
    /// What the namespace machine reads of `namespace`, if it exists.
    fn facts(&self, namespace: &str) -> Option<NamespaceFacts>;
    fn webhooks(&self) -> Vec<MutatingWebhookConfiguration>;
    /// The other migrations' statuses (as this term knows them, else as stored).
    fn others(&self) -> Vec<(String, SidecarMigrationStatus)>;
}

pub struct Snapshot<'a> {
    pub name: &'a str,
    pub generation: i64,
    pub spec: &'a MigrationSpec,
    pub lookups: &'a dyn Lookups,
    /// The tag move this migration follows (its `ztunnel-rollout.dev/tag-move`
    /// annotation): the tag's namespaces roll back to the revision it pointed at before.
    pub tag_move: Option<&'a crate::sidecar::tags::TagMoveRecord>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Relabel {
        namespace: String,
        labels: InjectionLabels,
    },
    /// Set the workloads' restart annotation to `at` (as `kubectl rollout restart`).
    Restart {
        namespace: String,
        workloads: Vec<(WorkloadKind, String)>,
        at: Timestamp,
    },
    WriteStatus(Box<SidecarMigrationStatus>),
    Event(Notice),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub at: Timestamp,
    /// About a namespace (related to the migration), or the migration itself.
    pub namespace: Option<String>,
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Relabeled {
        namespace: String,
        labels: InjectionLabels,
        result: Result<(), ApiFailure>,
    },
    Restarted {
        namespace: String,
        workloads: Vec<(WorkloadKind, String)>,
        at: Timestamp,
        result: Result<(), ApiFailure>,
    },
    StatusWritten {
        status: Box<SidecarMigrationStatus>,
        result: Result<(), ApiFailure>,
    },
}

/// A namespace result for the metrics (`migrated`, `failed`, …), and restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counted {
    pub namespaces: Vec<&'static str>,
    pub restarts: u64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub effects: Vec<Effect>,
    pub wake_at: Option<Timestamp>,
    pub counted: Counted,
    /// Finished: passes change nothing more until the migration changes.
    pub finished: bool,
}

impl Plan {
    fn wake(&mut self, at: Option<Timestamp>) {
        self.wake_at = match (self.wake_at, at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// A namespace's call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Relabel,
    Restart,
}

/// What this term knows of one migration.
#[derive(Debug, Default)]
pub struct Memory {
    pub status: SidecarMigrationStatus,
    pub written: Option<SidecarMigrationStatus>,
    pub write_in_flight: bool,
    pub write_retry: Retry,
    pub calls: BTreeMap<String, Call>,
    /// Failed calls per namespace, and since when they fail.
    pub retries: BTreeMap<String, (Retry, Timestamp)>,
    /// Changes made but maybe not in the caches yet.
    pub expected: Expectations,
}

impl Memory {
    /// A new term starts from the stored status (read afresh).
    pub fn resume(stored: Option<SidecarMigrationStatus>) -> Self {
        Memory {
            status: stored.clone().unwrap_or_default(),
            written: stored,
            ..Default::default()
        }
    }
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

pub fn decide(
    snap: &Snapshot<'_>,
    mem: &mut Memory,
    outcomes: Vec<Outcome>,
    now: Timestamp,
) -> Plan {
    let mut pass = Pass {
        snap,
        mem,
        now,
        plan: Plan::default(),
    };
    pass.run(outcomes);
    pass.plan
}

struct Pass<'p, 's> {
    snap: &'p Snapshot<'s>,
    mem: &'p mut Memory,
    now: Timestamp,
    plan: Plan,
}

impl Pass<'_, '_> {
    fn run(&mut self, outcomes: Vec<Outcome>) {
        // 1. Outcomes.
        for o in outcomes {
            self.take(o);
        }
        // 2. A finished migration only makes sure its last status is written.
        let phase = self
            .mem
            .status
            .phase
            .as_deref()
            .and_then(MigrationPhase::parse)
            .unwrap_or(MigrationPhase::Pending);
        let rollback = self.snap.spec.rollback;
        let finished = match phase {
            MigrationPhase::Refused | MigrationPhase::RolledBack => true,
            MigrationPhase::Succeeded | MigrationPhase::Failed => !rollback,
            _ => false,
        };
        if finished {
            self.write_status();
            self.plan.finished = !self.mem.write_in_flight && self.written_current();
            return;
        }
        // 3. The plan, once: every namespace recorded before anything changes.
        let timeouts = parse_duration(&self.snap.spec.rollout_timeout)
            .and_then(|r| parse_duration(&self.snap.spec.verify_timeout).map(|v| (r, v)));
        if self.mem.status.namespaces.is_empty() {
            let refusal = match &timeouts {
                Err(e) => Some(e.clone()),
                Ok(_) => self.start().err().map(|r| r.to_string()),
            };
            if let Some(why) = refusal {
                self.refuse(why);
            }
            self.write_status();
            return;
        }
        let Ok((rollout_timeout, verify_timeout)) = timeouts else {
            return;
        };
        let forward = Target {
            labels: target_labels(&self.snap.spec.to),
            revision: self.mem.status.target_revision.clone().unwrap_or_default(),
            workloads_at_once: usize::try_from(self.snap.spec.workloads_at_once).unwrap_or(1),
            rollout_timeout,
            verify_timeout,
        };
        // 4. Rollbacks the batch decision asks for.
        let decision = self.batch();
        for &i in &decision.roll_back {
            let ns = &self.mem.status.namespaces[i];
            let why = if rollback {
                "rollback requested".to_owned()
            } else {
                ns.message.clone()
            };
            self.enter(
                i,
                NamespacePhase::RollingBack,
                format!("rolling back: {why}"),
            );
        }
        // 5. Namespaces in flight, and the ones the batch starts.
        for i in 0..self.mem.status.namespaces.len() {
            let ns = &self.mem.status.namespaces[i];
            let may_start = ns.phase == NamespacePhase::Pending && decision.start.contains(&i);
            if ns.phase.in_flight() || may_start {
                self.advance(i, &forward);
            }
        }
        // 6. Where the migration stands; the status.
        let decision = self.batch();
        self.stand(&decision);
        self.write_status();
    }

    fn notice(&mut self, namespace: Option<&str>, warning: bool, reason: &str, note: String) {
        self.plan.effects.push(Effect::Event(Notice {
            at: self.now,
            namespace: namespace.map(str::to_owned),
            warning,
            reason: reason.to_owned(),
            note,
        }));
    }

    fn take(&mut self, outcome: Outcome) {
        let (namespace, result) = match outcome {
            Outcome::StatusWritten { status, result } => {
                self.mem.write_in_flight = false;
                match result {
                    Ok(()) => {
                        self.mem.written = Some(*status);
                        self.mem.write_retry.clear();
                    }
                    Err(e) => {
                        self.mem.write_retry.failed(self.now, e.to_string(), None);
                        self.plan.wake(self.mem.write_retry.at);
                    }
                }
                return;
            }
            Outcome::Relabeled {
                namespace,
                labels,
                result,
            } => {
                if result.is_ok() {
                    self.mem.expected.relabelled(&namespace, labels);
                }
                (namespace, result)
            }
            Outcome::Restarted {
                namespace,
                workloads,
                at,
                result,
            } => {
                if result.is_ok() {
                    for (kind, name) in &workloads {
                        self.mem.expected.restarted(&namespace, *kind, name, at);
                    }
                    self.plan.counted.restarts += workloads.len() as u64;
                }
                (namespace, result)
            }
        };
        let call = self.mem.calls.remove(&namespace);
        match result {
            Ok(()) => {
                self.mem.retries.remove(&namespace);
            }
            Err(e) => {
                let now = self.now;
                let (retry, since) = self
                    .mem
                    .retries
                    .entry(namespace.clone())
                    .or_insert_with(|| (Retry::default(), now));
                let _ = since;
                retry.failed(now, e.to_string(), None);
                let failures = retry.failures;
                let at = retry.at;
                self.plan.wake(at);
                if failures == 1 || failures % EVENT_EVERY == 0 {
                    let what = match call {
                        Some(Call::Relabel) => "relabelling",
                        _ => "restarting workloads",
                    };
                    self.notice(
                        Some(&namespace),
                        true,
                        "StepFailed",
                        format!(
                            "namespace {namespace}: {what} failed {failures} time(s), retrying with backoff: {e}"
                        ),
                    );
                }
            }
        }
    }

    fn batch(&self) -> migration::Decision {
        let names: Vec<String> = self
            .mem
            .status
            .namespaces
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let states: Vec<NamespaceState> = self
            .mem
            .status
            .namespaces
            .iter()
            .map(|n| NamespaceState {
                phase: n.phase,
                touched: n.step_started.is_some(),
            })
            .collect();
        migration::decide(
            &names,
            &states,
            usize::try_from(self.snap.spec.batch_size).unwrap_or(1),
            self.snap.spec.rollback,
        )
    }

    /// Plans the migration and records its namespaces, or says why it cannot start.
    fn start(&mut self) -> Result<(), Refusal> {
        let lookups = self.snap.lookups;
        let views = lookups.namespaces(self.snap.spec.namespaces.as_deref());
        let others = lookups.others();
        let claimed = migration::claimed(others.iter().map(|(n, s)| (n.as_str(), s)));
        let mut plan = migration::plan(self.snap.spec, &views, &lookups.webhooks(), &claimed)?;
        if let Some(moved) = self.snap.tag_move {
            crate::sidecar::tags::restore_previous_revision(&mut plan, moved);
        }
        let spec = self.snap.spec;
        self.notice(
            None,
            false,
            "MigrationStarted",
            format!(
                "moving {} namespaces to {} (revision {}), {} at a time: {}",
                plan.namespaces.len(),
                spec.to,
                plan.target_revision,
                spec.batch_size,
                plan.namespaces
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        if !plan.warnings.is_empty() {
            self.notice(None, true, "DowntimeRisk", plan.warnings.join("; "));
        }
        let now = self.now.to_string();
        let s = &mut self.mem.status;
        s.target_revision = Some(plan.target_revision);
        s.warnings = plan.warnings;
        s.phase = Some(MigrationPhase::Progressing.as_str().to_owned());
        s.namespaces = plan
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

    fn refuse(&mut self, why: String) {
        let message = format!("refused, nothing was changed: {why}");
        self.notice(None, true, "MigrationRefused", message.clone());
        let s = &mut self.mem.status;
        s.phase = Some(MigrationPhase::Refused.as_str().to_owned());
        s.conditions = migration::conditions(
            &s.conditions,
            self.snap.generation,
            self.now,
            MigrationPhase::Refused,
            "Refused",
            &message,
        );
    }

    /// The facts of `namespace` with this term's own changes laid over them.
    fn facts(&mut self, namespace: &str) -> Option<NamespaceFacts> {
        let mut facts = self.snap.lookups.facts(namespace)?;
        self.mem.expected.overlay(namespace, &mut facts);
        Some(facts)
    }

    /// Whether the status as it is now is the one written.
    fn written_current(&self) -> bool {
        let mut status = self.mem.status.clone();
        status.observed_generation = Some(self.snap.generation);
        self.mem.written.as_ref() == Some(&status)
    }

    /// Takes namespace `i` through as many steps as it can without waiting.
    fn advance(&mut self, i: usize, forward: &Target) {
        let name = self.mem.status.namespaces[i].name.clone();
        if self.mem.calls.contains_key(&name) {
            return;
        }
        if let Some((retry, since)) = self.mem.retries.get(&name) {
            // A step whose calls keep failing ends at the rollout timeout: the loop wakes
            // then, even when the next retry would come later.
            let timeout =
                SignedDuration::try_from(forward.rollout_timeout).unwrap_or(SignedDuration::MAX);
            let deadline = since.checked_add(timeout).ok();
            if deadline.is_some_and(|d| self.now >= d) {
                let why = format!(
                    "its calls kept failing for {} (rolloutTimeout): {}",
                    crate::duration::format_duration(forward.rollout_timeout),
                    retry.error.clone().unwrap_or_default()
                );
                self.mem.retries.remove(&name);
                self.fail(i, why);
                return;
            }
            if !retry.due(self.now) {
                self.plan.wake(retry.at);
                self.plan.wake(deadline);
                return;
            }
        }
        for _ in 0..STEPS_PER_PASS {
            let record = record_of(&self.mem.status.namespaces[i]);
            let step = match self.facts(&name) {
                Some(facts) => {
                    let target = direction_target(&record, forward);
                    let counts = tally(&record, &facts, &target);
                    let ns = &mut self.mem.status.namespaces[i];
                    ns.workloads = counts.workloads;
                    ns.workloads_restarted = counts.workloads_restarted;
                    ns.pods = counts.pods;
                    ns.pods_verified = counts.pods_verified;
                    next_step(&record, &facts, forward, &name, self.now)
                }
                None => Step::Fail(format!("namespace {name} no longer exists")),
            };
            match step {
                Step::Done => return,
                Step::Enter { phase, message } => self.enter(i, phase, message),
                Step::Relabel(labels) => {
                    // Never act on a step the status does not record yet.
                    if self.recorded(i) {
                        self.mem.calls.insert(name.clone(), Call::Relabel);
                        self.plan.effects.push(Effect::Relabel {
                            namespace: name,
                            labels,
                        });
                    }
                    return;
                }
                Step::Restart(workloads) => {
                    if self.recorded(i) {
                        // Never earlier than the step's recorded start, whatever the clock.
                        let at = self.now.max(record.step_started.unwrap_or(self.now));
                        self.mem.calls.insert(name.clone(), Call::Restart);
                        self.plan.effects.push(Effect::Restart {
                            namespace: name,
                            workloads,
                            at,
                        });
                    }
                    return;
                }
                Step::Wait { message, until } => {
                    let ns = &mut self.mem.status.namespaces[i];
                    ns.message = message;
                    let verifying = matches!(
                        ns.phase,
                        NamespacePhase::Verifying | NamespacePhase::VerifyingRollback
                    );
                    self.plan.wake(until);
                    if verifying {
                        self.plan.wake(Some(self.now + VERIFY_RECHECK));
                    }
                    return;
                }
                Step::Fail(why) => {
                    if !self.fail(i, why) {
                        return;
                    }
                }
            }
        }
        self.plan.wake(Some(self.now));
    }

    /// Namespace `i` failed: the failure policy. Returns whether it goes on (rolling
    /// back).
    fn fail(&mut self, i: usize, why: String) -> bool {
        let spec = self.snap.spec;
        let name = self.mem.status.namespaces[i].name.clone();
        let ns = &self.mem.status.namespaces[i];
        let (phase, message) = if ns.phase.backwards() {
            (
                NamespacePhase::RollbackFailed,
                format!("rollback failed: {why}"),
            )
        } else if spec.on_failure == SidecarFailurePolicy::Rollback && !spec.rollback {
            self.notice(
                Some(&name),
                true,
                "NamespaceFailed",
                format!("namespace {name}: {why}"),
            );
            (NamespacePhase::RollingBack, format!("rolling back: {why}"))
        } else {
            (NamespacePhase::Failed, why)
        };
        self.enter(i, phase, message);
        phase == NamespacePhase::RollingBack
    }

    /// The written status records namespace `i`'s current step (its phase and the
    /// step's start): asks for the write otherwise (the caller waits for it).
    fn recorded(&mut self, i: usize) -> bool {
        let current = &self.mem.status.namespaces[i];
        let step = |n: &NamespaceMigrationStatus| (n.name.clone(), n.phase, n.step_started.clone());
        let written = self
            .mem
            .written
            .as_ref()
            .and_then(|w| w.namespaces.get(i))
            .map(step);
        if written == Some(step(current)) {
            return true;
        }
        self.write_status();
        false
    }

    /// Moves namespace `i` into `phase`, with its Event and metric.
    fn enter(&mut self, i: usize, phase: NamespacePhase, message: String) {
        let now = self.now;
        let ns = &mut self.mem.status.namespaces[i];
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
        let name = ns.name.clone();
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
        if let Some(result) = result {
            self.plan.counted.namespaces.push(result);
        }
        self.notice(
            Some(&name),
            warning,
            reason,
            format!("namespace {name}: {message}"),
        );
    }

    /// The migration's phase, conditions and counts; an Event when its phase or reason
    /// changes.
    fn stand(&mut self, decision: &migration::Decision) {
        let s = &mut self.mem.status;
        let previous = s.conditions.clone();
        let before = (
            s.phase.clone(),
            previous
                .iter()
                .find(|c| c.type_ == migration::PROGRESSING)
                .map(|c| c.reason.clone()),
        );
        let phase = decision.phase.as_str().to_owned();
        let changed = before.0.as_deref() != Some(phase.as_str())
            || before.1.as_deref() != Some(decision.reason);
        s.phase = Some(phase);
        s.conditions = migration::conditions(
            &previous,
            self.snap.generation,
            self.now,
            decision.phase,
            decision.reason,
            &decision.message,
        );
        let count = |f: &dyn Fn(NamespacePhase) -> bool| {
            u32::try_from(s.namespaces.iter().filter(|n| f(n.phase)).count()).unwrap_or(u32::MAX)
        };
        s.counts = NamespaceCounts {
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
            self.notice(None, warning, decision.reason, decision.message.clone());
        }
    }

    fn write_status(&mut self) {
        if self.mem.write_in_flight || self.written_current() {
            return;
        }
        if !self.mem.write_retry.due(self.now) {
            self.plan.wake(self.mem.write_retry.at);
            return;
        }
        let mut status = self.mem.status.clone();
        status.observed_generation = Some(self.snap.generation);
        self.mem.write_in_flight = true;
        self.plan
            .effects
            .push(Effect::WriteStatus(Box::new(status)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    struct Cluster {
        labels: InjectionLabels,
    }

    impl Lookups for Cluster {
        fn namespaces(&self, _: Option<&[String]>) -> Vec<NamespaceView> {
            vec![NamespaceView {
                name: "shop".into(),
                labels: [("istio.io/rev".to_owned(), "1-29".to_owned())].into(),
                workloads: Vec::new(),
            }]
        }
        fn facts(&self, _: &str) -> Option<NamespaceFacts> {
            Some(NamespaceFacts {
                labels: self.labels.clone(),
                ..Default::default()
            })
        }
        fn webhooks(&self) -> Vec<MutatingWebhookConfiguration> {
            ["1-29", "1-30"]
                .iter()
                .map(|rev| MutatingWebhookConfiguration {
                    metadata: ObjectMeta {
                        name: Some(format!("istio-sidecar-injector-{rev}")),
                        labels: Some([("istio.io/rev".to_owned(), rev.to_string())].into()),
                        ..Default::default()
                    },
                    webhooks: None,
                })
                .collect()
        }
        fn others(&self) -> Vec<(String, SidecarMigrationStatus)> {
            Vec::new()
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn spec() -> MigrationSpec {
        serde_json::from_value(serde_json::json!({
            "namespaces": ["shop"], "to": "1-30", "rolloutTimeout": "60s",
        }))
        .unwrap()
    }

    fn written(plan: &Plan) -> Option<Outcome> {
        plan.effects.iter().find_map(|e| match e {
            Effect::WriteStatus(s) => Some(Outcome::StatusWritten {
                status: s.clone(),
                result: Ok(()),
            }),
            _ => None,
        })
    }

    fn relabel(plan: &Plan) -> Option<InjectionLabels> {
        plan.effects.iter().find_map(|e| match e {
            Effect::Relabel { labels, .. } => Some(labels.clone()),
            _ => None,
        })
    }

    #[test]
    fn a_step_is_recorded_in_the_status_before_it_is_acted_on() {
        let cluster = Cluster {
            labels: InjectionLabels {
                rev: Some("1-29".into()),
                istio_injection: None,
            },
        };
        let spec = spec();
        let snap = Snapshot {
            name: "m",
            generation: 1,
            spec: &spec,
            lookups: &cluster,
            tag_move: None,
        };
        let mut mem = Memory::default();
        // Planned and recorded first; nothing changed yet.
        let plan = decide(&snap, &mut mem, vec![], t(0));
        assert!(relabel(&plan).is_none());
        let recorded = written(&plan).expect("the plan is written");
        let plan = decide(&snap, &mut mem, vec![recorded], t(1));
        // The namespace enters Restarting; that is written before the relabel.
        assert!(relabel(&plan).is_none(), "{plan:?}");
        let recorded = written(&plan).expect("Restarting is written");
        let plan = decide(&snap, &mut mem, vec![recorded], t(2));
        assert_eq!(relabel(&plan).and_then(|l| l.rev), Some("1-30".into()));
    }

    #[test]
    fn a_failing_call_is_retried_with_counted_events_until_the_step_deadline() {
        let cluster = Cluster {
            labels: InjectionLabels {
                rev: Some("1-29".into()),
                istio_injection: None,
            },
        };
        let spec = spec();
        let snap = Snapshot {
            name: "m",
            generation: 1,
            spec: &spec,
            lookups: &cluster,
            tag_move: None,
        };
        let mut mem = Memory::default();
        let mut now = t(0);
        let mut outcomes = vec![];
        let mut events = 0;
        let mut relabels = 0;
        for _ in 0..200 {
            let plan = decide(&snap, &mut mem, std::mem::take(&mut outcomes), now);
            events += plan
                .effects
                .iter()
                .filter(|e| matches!(e, Effect::Event(n) if n.reason == "StepFailed"))
                .count();
            if let Some(w) = written(&plan) {
                outcomes.push(w);
            }
            if let Some(labels) = relabel(&plan) {
                relabels += 1;
                outcomes.push(Outcome::Relabeled {
                    namespace: "shop".into(),
                    labels,
                    result: Err(ApiFailure::Transport("connection refused".into())),
                });
            }
            if mem.status.namespaces.first().map(|n| n.phase) == Some(NamespacePhase::Failed) {
                break;
            }
            now = plan
                .wake_at
                .unwrap_or(now + SignedDuration::from_secs(1))
                .max(now);
        }
        let ns = &mem.status.namespaces[0];
        assert_eq!(ns.phase, NamespacePhase::Failed, "{ns:?}");
        assert!(
            ns.message.contains("did not change within") || ns.message.contains("kept failing"),
            "{}",
            ns.message
        );
        assert!(relabels > 3, "retried: {relabels}");
        assert!(
            events >= 1 && events < relabels,
            "an Event on the first failure and every tenth: {events} for {relabels}"
        );
        // The first call failed at 2 s: the namespace fails at 2 s + rolloutTimeout (60 s),
        // not at the next retry after it.
        assert!(now <= t(63), "at the rollout timeout: {now}");
    }
}
