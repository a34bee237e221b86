//! The rollouts' loop, one pass at a time: take the outcomes that came back, build each
//! rollout's snapshot from the watch caches, ask the pure pass what to do
//! (`ztunnel_rollout_core::rollout::pass::decide`), and hand its effects to the executor
//! ([`super::effects`]). Only the lease holder runs passes; every mutation checks the
//! lease again. What a term remembers of each rollout is its [`Memory`]; a new term
//! starts from the stored status.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::{Client, Resource, ResourceExt};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};
use ztunnel_rollout_core::labels::FINALIZER;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_core::rollout::pass::{
    CallError, CallKind, CniSnapshot, Effect, Memory, Outcome, PassConfig, Plan, RolloutView,
    Snapshot, decide, held_back_status,
};
use ztunnel_rollout_core::rollout::status::RolloutPhase;

use super::effects::EffectRunner;
use super::events::EventSink;
use super::executor::Executor;
use super::observe::Observed;
use super::orphans::OrphanSweep;
use super::snapshot::{CacheLookups, Source, created, others};
use crate::api::ZtunnelRollout;
use crate::leader::{Leadership, NotLeader};
use crate::metrics::{Metrics, PhaseLabels, RolloutLabels, StepLabels, VerdictLabels};

#[derive(Debug, Clone)]
pub struct RolloutSettings {
    pub config: PassConfig,
    /// The node this replica runs on (the downward API's `NODE_NAME`).
    pub agent_node: Option<String>,
    /// How often the leader sweeps for nodes of rollouts that no longer exist.
    pub orphan_sweep_interval: std::time::Duration,
    /// The agent's namespace (its Lease's): health gates read Secrets there only.
    pub namespace: String,
}

/// Why a pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
}

/// One rollout as this term knows it.
struct Term {
    memory: Memory,
    /// The rollout was finished and cleaned at this resourceVersion: passes skip it
    /// until the object changes, or until `wake` (its retention's end).
    finished_at_version: Option<String>,
    /// When each node in flight entered its phase, as this term saw it (step durations).
    entered: HashMap<String, Timestamp>,
    /// When the last pass asked to look again.
    wake: Option<Instant>,
}

pub struct Rollouts {
    client: Client,
    source: Source,
    leadership: Leadership,
    metrics: Arc<Metrics>,
    settings: RolloutSettings,
    effects: EffectRunner,
    executor: Executor<Outcome>,
    terms: HashMap<String, Term>,
    /// Names of the rollouts by uid, to forget a deleted one's metrics.
    names: HashMap<String, String>,
    /// The lease was handed over for this node (the agent's own) during an earlier term.
    handed_over_for: Option<String>,
    orphans: OrphanSweep,
}

/// How long a replica that handed the lease over waits before it competes for it again.
const HAND_OVER_HOLD_OFF: std::time::Duration = std::time::Duration::from_secs(60);

impl Rollouts {
    pub fn new(
        client: Client,
        observed: Arc<Observed>,
        leadership: Leadership,
        events: EventSink,
        metrics: Arc<Metrics>,
        settings: RolloutSettings,
    ) -> Self {
        let executor = Executor::new(super::effects::CALLS_AT_ONCE, observed.changed.clone());
        let orphans = OrphanSweep::new(
            client.clone(),
            Arc::new(super::node_actions::NodeActions::new(
                client.clone(),
                leadership.clone(),
            )),
            events.clone(),
            settings.orphan_sweep_interval,
        );
        Self {
            effects: EffectRunner::new(
                client.clone(),
                observed.clone(),
                leadership.clone(),
                events,
                metrics.clone(),
                settings.namespace.clone(),
            ),
            source: Source::new(observed),
            client,
            leadership,
            metrics,
            settings,
            executor,
            terms: HashMap::new(),
            names: HashMap::new(),
            handed_over_for: None,
            orphans,
        }
    }

    /// Forgets everything held in memory and cancels every task: after losing the lease,
    /// the next term starts again from the stored status.
    pub fn reset(&mut self) {
        self.executor.cancel_all();
        self.terms.clear();
        self.orphans.reset();
        // A replica that does not lead exports no rollout's series: the leader's are the
        // truth, and a rollout deleted meanwhile would keep stale ones here.
        for (_, name) in self.names.drain() {
            self.metrics.forget_rollout(&name);
        }
    }

    /// One pass over every rollout. Returns when the loop must run again at the latest
    /// (watch events and outcomes wake it sooner).
    pub async fn pass(&mut self) -> Result<Option<Instant>, PassError> {
        self.leadership.check()?;
        let mut outcomes: HashMap<String, Vec<Outcome>> = HashMap::new();
        for (key, outcome) in self.executor.outcomes() {
            outcomes.entry(key.owner).or_default().push(outcome);
        }
        let rollouts = self.source.observed.rollouts.state();
        self.forget_gone(&rollouts);
        let others = others(&rollouts);
        let mut wake = None;
        for r in &rollouts {
            let Some(uid) = r.uid() else { continue };
            let span = info_span!("rollout", rollout = %r.name_any());
            let outcomes = outcomes.remove(&uid).unwrap_or_default();
            let next = self
                .reconcile(r, &uid, outcomes, &others)
                .instrument(span)
                .await?;
            wake = earliest(wake, next);
        }
        let sweep = self
            .orphans
            .maybe_sweep(&self.source.observed, &rollouts, &mut self.executor);
        wake = earliest(wake, Some(sweep));
        if let Some(node) = self.effects.take_step_down() {
            info!(
                node,
                "this replica runs on the node drained next: handing the lease over"
            );
            // The next leader resumes from the status: write what is held back first.
            self.flush().await;
            self.handed_over_for = Some(node);
            self.leadership.hand_over(HAND_OVER_HOLD_OFF);
        }
        Ok(wake)
    }

    fn forget_gone(&mut self, rollouts: &[Arc<ZtunnelRollout>]) {
        let present: std::collections::HashSet<String> =
            rollouts.iter().filter_map(|r| r.uid()).collect();
        let gone: Vec<String> = self
            .names
            .keys()
            .filter(|uid| !present.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.executor.cancel_owner(&uid);
            self.terms.remove(&uid);
            if let Some(name) = self.names.remove(&uid) {
                self.metrics.forget_rollout(&name);
            }
        }
    }

    async fn reconcile(
        &mut self,
        r: &ZtunnelRollout,
        uid: &str,
        outcomes: Vec<Outcome>,
        others: &[(String, ztunnel_rollout_core::rollout::pass::OtherRollout)],
    ) -> Result<Option<Instant>, PassError> {
        let name = r.name_any();
        self.names.insert(uid.to_owned(), name.clone());
        if let Some(term) = self.terms.get(uid)
            && outcomes.is_empty()
            && term.finished_at_version.is_some()
            && term.finished_at_version == r.resource_version()
            && term.wake.is_none_or(|at| at > Instant::now())
        {
            return Ok(term.wake); // Finished and unchanged: costs nothing until then.
        }
        if !self.terms.contains_key(uid) {
            let term = self.start_term(r, &name).await;
            self.terms.insert(uid.to_owned(), term);
            self.start_series(&name);
        }
        self.count_release_failures(&name, &outcomes);
        let spec = &r.spec;
        let ds = self
            .source
            .daemon_set(&spec.daemon_set.namespace, &spec.daemon_set.name);
        let ds_uid = ds
            .as_ref()
            .and_then(|d| d.metadata.uid.clone())
            .unwrap_or_default();
        let nodes = self.source.nodes();
        let ztunnels = self.source.ztunnels(&ds_uid);
        let pod_counts = self.source.pod_counts();
        let revisions = self.source.revisions(&ds_uid);
        let cni_ds = spec
            .cni
            .as_ref()
            .and_then(|c| self.source.daemon_set(&c.namespace, &c.name));
        // Indexed only for rollouts with spec.cni (a pass without it reads nothing more).
        let cni_index = spec.cni.as_ref().map(|_| {
            let uid = cni_ds
                .as_ref()
                .and_then(|d| d.metadata.uid.clone())
                .unwrap_or_default();
            (self.source.ztunnels(&uid), self.source.revisions(&uid))
        });
        let others: Vec<_> = others
            .iter()
            .filter(|(u, _)| u != uid)
            .map(|(_, o)| o.clone())
            .collect();
        let lookups = CacheLookups(&self.source.observed);
        let mut config = self.settings.config.clone();
        config.may_drain_own_node =
            self.handed_over_for.is_some() && self.handed_over_for == self.settings.agent_node;
        let snapshot = Snapshot {
            rollout: RolloutView {
                name: &name,
                uid,
                generation: r.metadata.generation.unwrap_or(0),
                created: created(r),
                spec,
                deleting: r.metadata.deletion_timestamp.is_some(),
                finalizer: r.finalizers().iter().any(|f| f == FINALIZER),
                status: r.status.as_ref(),
            },
            daemon_set: ds.as_deref(),
            revisions: &revisions,
            nodes: &nodes,
            ztunnels: &ztunnels,
            cni: cni_index.as_ref().map(|(pods, revisions)| CniSnapshot {
                daemon_set: cni_ds.as_deref(),
                revisions,
                pods,
            }),
            pod_counts: &pod_counts,
            others: &others,
            lookups: &lookups,
            agent_node: self.settings.agent_node.as_deref(),
        };
        let Some(term) = self.terms.get_mut(uid) else {
            return Ok(None);
        };
        let plan = decide(
            &snapshot,
            &config,
            &mut term.memory,
            outcomes,
            Timestamp::now(),
        );
        term.finished_at_version = plan.finished.then(|| r.resource_version()).flatten();
        term.wake = plan.wake_at.map(wake_at);
        let oldest_cordon = oldest_cordon(&term.memory);
        let steps = step_durations(&mut term.entered, &plan.transitions);
        if tracing::enabled!(tracing::Level::DEBUG) && !plan.effects.is_empty() {
            let effects: Vec<String> = plan
                .effects
                .iter()
                .map(|e| match e {
                    Effect::Call(c) => format!("{} {}", c.kind.verb(), c.node),
                    other => format!("{other:?}").chars().take(60).collect(),
                })
                .collect();
            debug!(standing = ?plan.standing.as_ref().map(|s| &s.reason), deleting = r.metadata.deletion_timestamp.is_some(), "pass: {}", effects.join("; "));
        }
        self.record_metrics(&name, &plan, oldest_cordon, &steps);
        let reference = r.object_ref(&());
        let wake = plan.wake_at.map(wake_at);
        self.effects
            .run(&mut self.executor, &reference, uid, &name, plan);
        Ok(wake)
    }

    /// The first pass of this term over `r`: resume from its status, read afresh (the
    /// watch may not have delivered the previous leader's last write).
    async fn start_term(&self, r: &ZtunnelRollout, name: &str) -> Term {
        let fresh = match super::rollout_object::read(&self.client, name).await {
            Ok(fresh) => fresh,
            Err(e) => {
                warn!(error = %e, "could not read the rollout afresh; resuming from the watched copy");
                None
            }
        };
        let current = fresh.as_ref().unwrap_or(r);
        let owned = match owned_nodes(&self.client, name).await {
            Ok(owned) => owned,
            Err(e) => {
                warn!(error = %e, "could not list the nodes this rollout owns; resuming from the watched nodes");
                Vec::new()
            }
        };
        Term {
            memory: Memory::resume(
                current.status.as_ref(),
                current.finalizers().iter().any(|f| f == FINALIZER),
                &owned,
            ),
            finished_at_version: None,
            entered: HashMap::new(),
            wake: None,
        }
    }

    fn record_metrics(
        &self,
        rollout: &str,
        plan: &Plan,
        oldest_cordon: Option<Timestamp>,
        steps: &[(NodePhase, f64)],
    ) {
        let labels = RolloutLabels {
            rollout: rollout.to_owned(),
        };
        for (step, secs) in steps {
            self.metrics
                .step_duration_seconds
                .get_or_create(&StepLabels {
                    rollout: rollout.to_owned(),
                    step: step.as_str().to_owned(),
                })
                .observe(*secs);
        }
        if let Some(at) = plan.transitions.iter().map(|t| t.at).max() {
            self.metrics
                .last_progress
                .get_or_create(&labels)
                .set(unix_seconds(at));
        }
        match oldest_cordon {
            Some(at) => {
                self.metrics
                    .oldest_cordon
                    .get_or_create(&labels)
                    .set(unix_seconds(at));
            }
            None => {
                self.metrics.oldest_cordon.remove(&labels);
            }
        }
        if let Some(standing) = &plan.standing {
            for phase in RolloutPhase::ALL {
                self.metrics
                    .rollout_phase
                    .get_or_create(&PhaseLabels {
                        rollout: rollout.to_owned(),
                        phase: phase.as_str().to_owned(),
                    })
                    .set(i64::from(phase == standing.phase));
            }
        }
        for t in &plan.transitions {
            match t.to {
                NodePhase::Done => {
                    if let Some(started) = t.started {
                        let secs = t.at.duration_since(started).as_secs_f64();
                        self.metrics
                            .node_duration_seconds
                            .get_or_create(&labels)
                            .observe(secs);
                    }
                }
                NodePhase::Failed => {
                    self.metrics.node_failures.get_or_create(&labels).inc();
                    if t.from == NodePhase::ZtunnelReady {
                        self.verdict(rollout, "failed");
                    }
                }
                NodePhase::Verified => self.verdict(rollout, "passed"),
                // A bake is a verdict of the gates too: on the node's returning traffic.
                NodePhase::Evacuating => self.verdict(rollout, "failed"),
                _ => {}
            }
            if t.from == NodePhase::Baking && t.to == NodePhase::Done {
                self.verdict(rollout, "passed");
            }
            let _span = info_span!("node", node = %t.node).entered();
            if t.to == NodePhase::Failed {
                warn!(from = t.from.as_str(), "{}", t.message);
            } else {
                info!(phase = t.to.as_str(), "{}", t.message);
            }
        }
        if let Some(phases) = &plan.phases {
            for (phase, count) in phases {
                self.metrics
                    .nodes
                    .get_or_create(&PhaseLabels {
                        rollout: rollout.to_owned(),
                        phase: phase.as_str().to_owned(),
                    })
                    .set(*count);
            }
        }
    }

    /// A new term's series: the stall clock starts afresh (the term knows nothing older),
    /// and the counters and histograms exist at 0, so that `increase()` and `rate()` see
    /// their first event.
    fn start_series(&self, rollout: &str) {
        let labels = RolloutLabels {
            rollout: rollout.to_owned(),
        };
        self.metrics
            .last_progress
            .get_or_create(&labels)
            .set(unix_seconds(Timestamp::now()));
        self.metrics
            .release_failures
            .get_or_create(&labels)
            .inc_by(0);
        self.metrics.node_failures.get_or_create(&labels).inc_by(0);
        drop(self.metrics.node_duration_seconds.get_or_create(&labels));
        for step in NodePhase::ALL.into_iter().filter(|p| p.in_flight()) {
            drop(
                self.metrics
                    .step_duration_seconds
                    .get_or_create(&StepLabels {
                        rollout: rollout.to_owned(),
                        step: step.as_str().to_owned(),
                    }),
            );
        }
        for result in ["passed", "failed"] {
            self.metrics
                .verifications
                .get_or_create(&VerdictLabels {
                    rollout: rollout.to_owned(),
                    result: result.to_owned(),
                })
                .inc_by(0);
        }
    }

    /// Counts the release (uncordon) calls that came back failed: each is retried.
    fn count_release_failures(&self, rollout: &str, outcomes: &[Outcome]) {
        let failed = outcomes
            .iter()
            .filter(|o| {
                matches!(o, Outcome::Call { call, result: Err(CallError::Api(_) | CallError::Unsent(_)) }
                    if matches!(call.kind, CallKind::Release { .. }))
            })
            .count();
        if failed > 0 {
            self.metrics
                .release_failures
                .get_or_create(&RolloutLabels {
                    rollout: rollout.to_owned(),
                })
                .inc_by(u64::try_from(failed).unwrap_or(u64::MAX));
        }
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

    /// Shutdown: writes every status the write interval held back, and gives the writes
    /// a moment to land.
    pub async fn flush(&mut self) {
        let rollouts = self.source.observed.rollouts.state();
        for r in &rollouts {
            let (Some(uid), name) = (r.uid(), r.name_any()) else {
                continue;
            };
            let Some(term) = self.terms.get(&uid) else {
                continue;
            };
            let generation = r.metadata.generation.unwrap_or(0);
            if let Some(status) = held_back_status(&term.memory, generation, Timestamp::now()) {
                let plan = Plan {
                    effects: vec![Effect::WriteStatus(Box::new(status))],
                    ..Default::default()
                };
                self.effects
                    .run(&mut self.executor, &r.object_ref(&()), &uid, &name, plan);
            }
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        while self.executor.has_owner_calls() && Instant::now() < deadline {
            tokio::select! {
                _ = self.executor.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let _ = self.executor.outcomes();
        }
    }
}

/// The nodes carrying `rollout`'s ownership annotation, read afresh (metadata only, in
/// pages): the last leader's last cordons may not be in the watch cache yet.
async fn owned_nodes(client: &Client, rollout: &str) -> Result<Vec<String>, kube::Error> {
    let api = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    let mut owned = Vec::new();
    let mut params = kube::api::ListParams::default().limit(200);
    loop {
        let page = api.list_metadata(&params).await?;
        owned.extend(page.items.iter().filter_map(|n| {
            let annotations = n.metadata.annotations.as_ref()?;
            (annotations
                .get(ztunnel_rollout_core::labels::OWNER_ANNOTATION)?
                .as_str()
                == rollout)
                .then(|| n.metadata.name.clone())
                .flatten()
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(owned),
        }
    }
}

pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The loop's wake-up for wall-clock time `t` (a little after it).
pub(super) fn wake_at(t: Timestamp) -> Instant {
    let d = std::time::Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or_default();
    Instant::now() + d + std::time::Duration::from_millis(10)
}

/// When the rollout cordoned the longest-held node a cordon of it may still be on.
fn oldest_cordon(memory: &Memory) -> Option<Timestamp> {
    memory
        .nodes
        .values()
        .filter(|n| n.touched)
        .filter_map(|n| n.tracked.started)
        .min()
}

/// The time each transition's node spent in the phase it left, for the phases of a
/// node's sequence (from its cordon to its release); `entered` follows the nodes in
/// flight. A step this term did not see start (a new leader's first) is not measured,
/// except the drain, whose start is the cordon's.
fn step_durations(
    entered: &mut HashMap<String, Timestamp>,
    transitions: &[ztunnel_rollout_core::rollout::pass::Transition],
) -> Vec<(NodePhase, f64)> {
    let mut steps = Vec::new();
    for t in transitions {
        let since = entered
            .remove(&t.node)
            .or_else(|| t.started.filter(|_| t.from == NodePhase::Cordoned));
        if let Some(since) = since
            && t.from.in_flight()
        {
            steps.push((t.from, t.at.duration_since(since).as_secs_f64().max(0.0)));
        }
        if t.to.in_flight() {
            entered.insert(t.node.clone(), t.at);
        }
    }
    steps
}

/// `at` as Unix seconds, for timestamp gauges.
fn unix_seconds(at: Timestamp) -> f64 {
    at.as_millisecond() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ztunnel_rollout_core::rollout::pass::Transition;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("a timestamp")
    }

    fn transition(node: &str, from: NodePhase, to: NodePhase, secs: i64) -> Transition {
        Transition {
            node: node.to_owned(),
            from,
            to,
            message: String::new(),
            started: Some(at(0)),
            at: at(secs),
        }
    }

    #[test]
    fn each_step_lasts_from_entering_its_phase_to_leaving_it() {
        use NodePhase::*;
        let mut entered = HashMap::new();
        let steps = step_durations(
            &mut entered,
            &[
                transition("n1", Pending, Cordoned, 0),
                transition("n1", Cordoned, Drained, 30),
                transition("n2", Pending, Cordoned, 31),
            ],
        );
        assert_eq!(steps, vec![(Cordoned, 30.0)]);
        let steps = step_durations(
            &mut entered,
            &[
                transition("n1", Drained, ZtunnelReplaced, 32),
                transition("n1", ZtunnelReplaced, ZtunnelReady, 40),
                transition("n1", ZtunnelReady, Failed, 45),
            ],
        );
        assert_eq!(
            steps,
            vec![(Drained, 2.0), (ZtunnelReplaced, 8.0), (ZtunnelReady, 5.0)]
        );
        assert_eq!(entered.keys().collect::<Vec<_>>(), vec!["n2"], "n1 is done");
    }

    #[test]
    fn a_new_term_measures_only_the_steps_it_saw_start_and_the_drain_from_the_cordon() {
        use NodePhase::*;
        let mut entered = HashMap::new();
        let steps = step_durations(
            &mut entered,
            &[
                transition("n1", Cordoned, Drained, 20),
                transition("n2", ZtunnelReady, Verified, 25),
            ],
        );
        assert_eq!(steps, vec![(Cordoned, 20.0)]);
        assert_eq!(entered.len(), 2);
    }
}
