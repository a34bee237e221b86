//! One simulated trial: a fleet, a rollout, two agent replicas sharing a lease, and a
//! seeded sequence of steps — time passing (controllers, drains, gates), effects run by
//! the leader's executor (with the API server's failures), the leader's passes over
//! lagging watches, and scheduled disturbances — followed by a quiet phase until every
//! rollout settles. The invariants are checked on every decision and every change the
//! cluster takes ([`super::invariants`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::agent::{Agent, DrainRun, GateRun, Life, Queued};
use super::api::{self, ApiFault};
use super::chaos::{Disturbance, Knobs};
use super::cluster::{Actor, Cluster, NO_ZTUNNEL_TAINT, OS, RolloutObject};
use super::invariants;
use super::rng::Rng;
use crate::api::rollout::RolloutSpec;
use crate::rollout::pass::{
    ConnectionsEvent, DrainOutcome, Effect, GateEvent, Memory, NoLookups, NodeMap, OtherRollout,
    Outcome, PassConfig, PodCounts, RolloutView, Snapshot, ZtunnelsByNode, decide,
};

const LEASE: SignedDuration = SignedDuration::from_secs(15);
/// The quiet phase lasts at most this many steps.
const QUIET_STEPS: u64 = 20_000;
/// Trace lines kept (the last ones); `SIM_TRACE_LINES` changes it for a replay.
fn trace_lines() -> usize {
    std::env::var("SIM_TRACE_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// What the watches show at one moment.
pub struct View {
    pub step: u64,
    pub nodes: Arc<NodeMap>,
    pub ztunnels: Arc<ZtunnelsByNode>,
    pub pod_counts: PodCounts,
    pub ds: DaemonSet,
    pub revisions: Vec<ControllerRevision>,
    pub rollouts: Vec<RolloutObject>,
}

struct Lease {
    holder: usize,
    expires: Timestamp,
}

/// Faults re-introduced on purpose, to show the simulation finds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mutations {
    /// The sim's executor skips the lease check before a mutation.
    pub skip_lease_check: bool,
}

pub struct Report {
    pub seed: u64,
    pub steps: u64,
    pub passes: u64,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
}

pub struct Trial {
    pub seed: u64,
    pub knobs: Knobs,
    pub c: Cluster,
    pub agents: Vec<Agent>,
    lease: Option<Lease>,
    rng: Rng,
    views: VecDeque<(usize, Arc<View>)>,
    next_view: usize,
    config: PassConfig,
    pub violations: Vec<String>,
    trace: VecDeque<String>,
    operator_cordons: BTreeSet<String>,
    outage_until: u64,
    tightened: Vec<(usize, Option<usize>)>,
    pub passes: u64,
    quiet: bool,
    mutations: Mutations,
    trace_limit: usize,
    /// The view step on which each rollout first decided its terminal phase.
    pub terminal_decided_at: std::collections::BTreeMap<String, u64>,
}

pub fn spec(knobs: &Knobs) -> RolloutSpec {
    serde_json::from_value(serde_json::json!({
        "waves": { "groupBy": super::cluster::ZONE, "maxUnavailable": knobs.max_unavailable },
        "drain": { "timeout": "60s" },
        "ztunnelReadyTimeout": "30s",
        "health": {
            "onFailure": if knobs.rollback { "Rollback" } else { "Pause" },
            "maxFailedNodes": knobs.max_failed,
            "uncordonFailedNodes": knobs.uncordon_failed,
            "waypoints": { "disabled": true },
            "bake": if knobs.bake { "3s" } else { "0s" },
        },
    }))
    .expect("spec")
}

impl Trial {
    pub fn new(seed: u64, knobs: Knobs, mutations: Mutations) -> Self {
        let start: Timestamp = "2026-12-01T10:00:00Z".parse().expect("time");
        let mut c = Cluster::new(start);
        for i in 0..knobs.nodes {
            let zone = format!("zone-{}", i % knobs.zones.max(1));
            c.add_node(&format!("n{i:02}"), &zone, Some("old"));
        }
        for i in 0..knobs.without_ztunnel.min(knobs.nodes) {
            let name = format!("n{i:02}");
            // No ztunnel: a Windows node, or an untolerated taint.
            c.pods
                .retain(|_, p| p.node.as_deref() != Some(name.as_str()) || p.app.is_some());
            let n = c.nodes.get_mut(&name).expect("node");
            if i % 2 == 0 {
                n.labels.insert(OS.into(), "windows".into());
            } else {
                n.taints.push(k8s_openapi::api::core::v1::Taint {
                    key: NO_ZTUNNEL_TAINT.into(),
                    effect: "NoSchedule".into(),
                    value: None,
                    time_added: None,
                });
            }
        }
        c.add_app(
            "web",
            knobs.nodes,
            Some(knobs.nodes.saturating_sub(2).max(1)),
        );
        c.add_app("api", knobs.nodes / 2 + 1, Some(1));
        if knobs.blocked_app {
            c.add_app("db", 1, Some(1));
        }
        // The new version: the rollout's target.
        c.revisions.push(("new".into(), 2));
        c.ds_generation += 1;
        let created = c.now;
        c.rollouts.insert(
            "r1".into(),
            RolloutObject {
                name: "r1".into(),
                uid: "uid-r1".into(),
                created,
                generation: 1,
                spec: spec(&knobs),
                status: None,
                finalizer: false,
                deleting: false,
            },
        );
        let mut agents = vec![Agent::new(0), Agent::new(1)];
        if knobs.agent_on_node {
            agents[0].node = Some(format!("n{:02}", knobs.nodes - 1));
            agents[1].node = Some("n00".into());
        }
        let mut t = Trial {
            seed,
            rng: Rng::new(seed),
            knobs,
            c,
            agents,
            lease: None,
            views: VecDeque::new(),
            next_view: 0,
            config: PassConfig::default(),
            violations: Vec::new(),
            trace: VecDeque::new(),
            operator_cordons: BTreeSet::new(),
            outage_until: 0,
            tightened: Vec::new(),
            passes: 0,
            quiet: false,
            mutations,
            trace_limit: trace_lines(),
            terminal_decided_at: Default::default(),
        };
        t.acquire(0);
        t
    }

    pub fn note(&mut self, text: impl FnOnce() -> String) {
        if self.trace.len() >= self.trace_limit {
            self.trace.pop_front();
        }
        let line = format!(
            "[{:>5} {}] {}",
            self.c.step,
            self.c.now.strftime("%H:%M:%S%.3f"),
            text()
        );
        self.trace.push_back(line);
    }

    pub fn violation(&mut self, what: String) {
        self.note(|| format!("VIOLATION: {what}"));
        if self.violations.len() < 20 {
            self.violations
                .push(format!("step {}: {what}", self.c.step));
        }
    }

    /// Runs the trial to its end.
    pub fn run(mut self) -> Report {
        let chaos_steps = self.knobs.steps;
        let mut step = 0;
        loop {
            self.c.step = step;
            if step == chaos_steps {
                self.begin_quiet();
            }
            if !self.quiet {
                let due: Vec<_> = self
                    .knobs
                    .schedule
                    .iter()
                    .filter(|s| s.at == step)
                    .copied()
                    .collect();
                for d in due {
                    self.disturb(d.what, d.pick);
                }
            } else if step % 200 == 0 {
                self.unstick();
            }
            self.one_step();
            if !self.violations.is_empty() {
                break;
            }
            if self.quiet && self.settled() {
                break;
            }
            if step > chaos_steps + QUIET_STEPS {
                let stuck = self.describe_rollouts();
                self.violation(format!(
                    "did not settle within {QUIET_STEPS} quiet steps: {stuck}"
                ));
                break;
            }
            step += 1;
        }
        if self.violations.is_empty() {
            invariants::at_the_end(&mut self);
        }
        Report {
            seed: self.seed,
            steps: step + 1,
            passes: self.passes,
            violations: self.violations,
            trace: self.trace.into_iter().collect(),
        }
    }

    fn one_step(&mut self) {
        let roll = self.rng.below(100);
        match roll {
            0..=29 => self.time_passes(),
            30..=64 => {
                for _ in 0..self.rng.between(1, 4) {
                    self.run_one_effect();
                }
            }
            65..=94 => self.leader_pass(),
            _ => self.lease_round(),
        }
    }

    fn time_passes(&mut self) {
        let ms = self.rng.between(50, 1_500) as i64;
        self.c.now += SignedDuration::from_millis(ms);
        self.c.tick();
        self.progress_drains();
        self.progress_gates();
        for a in &mut self.agents {
            if let Life::Paused(until) = a.life
                && self.c.step >= until
            {
                a.life = Life::Running;
            }
        }
        for (app, min) in std::mem::take(&mut self.tightened) {
            if self.rng.chance(0.05) || self.quiet {
                self.c.apps[app].min_available = min;
            } else {
                self.tightened.push((app, min));
            }
        }
    }

    fn fault(&mut self) -> ApiFault {
        let rate = if self.c.step < self.outage_until {
            1.0
        } else if self.quiet {
            0.0
        } else {
            self.knobs.api_faults
        };
        if !self.rng.chance(rate) {
            return ApiFault::None;
        }
        match self.rng.below(4) {
            0 => ApiFault::NoAnswer,
            1 => ApiFault::AnswerLost,
            2 => ApiFault::Unavailable,
            _ => ApiFault::Throttled,
        }
    }

    fn holds_lease(&self, agent: usize) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.holder == agent && self.c.now < l.expires)
    }

    fn acquire(&mut self, agent: usize) {
        self.lease = Some(Lease {
            holder: agent,
            expires: self.c.now + LEASE,
        });
        self.agents[agent].leading = true;
        self.note(|| format!("agent {agent} takes the lease"));
    }

    /// Lease maintenance: the holder renews while it runs; a free or expired lease goes
    /// to a running replica.
    fn lease_round(&mut self) {
        let now = self.c.now;
        if let Some(l) = &mut self.lease
            && self.agents[l.holder].life == Life::Running
            && self.agents[l.holder].leading
            && now < l.expires
        {
            l.expires = now + LEASE;
            return;
        }
        let free = self.lease.as_ref().is_none_or(|l| now >= l.expires);
        if !free {
            return;
        }
        let step = self.c.step;
        let candidates: Vec<usize> = self
            .agents
            .iter()
            .filter(|a| a.life == Life::Running && a.hold_off_until <= step)
            .map(|a| a.id)
            .collect();
        if let Some(&a) = self.rng.pick(&candidates) {
            if let Some(old) = self.lease.as_ref().map(|l| l.holder)
                && old != a
            {
                self.agents[old].leading = false;
            }
            self.agents[a].reset();
            self.acquire(a);
        }
    }

    fn capture_view(&mut self) {
        let view = View {
            step: self.c.step,
            nodes: self.c.node_map(),
            ztunnels: self.c.ztunnels(),
            pod_counts: self.c.pod_counts(),
            ds: self.c.daemon_set(),
            revisions: self.c.revision_objects(),
            rollouts: self.c.rollouts.values().cloned().collect(),
        };
        self.views.push_back((self.next_view, Arc::new(view)));
        self.next_view += 1;
        while self.views.len() > 8 {
            self.views.pop_front();
        }
    }

    /// The view the agent's watches show: at most `max_lag` behind, never older than
    /// what it saw before.
    fn lagged_view(&mut self, agent: usize) -> Arc<View> {
        let lag = if self.quiet {
            0
        } else {
            self.rng.below(self.knobs.max_lag as u64 + 1) as usize
        };
        let latest = self.next_view - 1;
        let want = latest
            .saturating_sub(lag)
            .max(self.agents[agent].seen_view)
            .max(self.views.front().map_or(0, |(i, _)| *i));
        self.agents[agent].seen_view = want;
        self.views
            .iter()
            .find(|(i, _)| *i == want)
            .map(|(_, v)| v.clone())
            .expect("view")
    }

    fn leader_pass(&mut self) {
        let Some(holder) = self.lease.as_ref().map(|l| l.holder) else {
            return;
        };
        // A replica that thinks it leads but does not any more notices now.
        for a in 0..self.agents.len() {
            if self.agents[a].leading
                && self.agents[a].life == Life::Running
                && !self.holds_lease(a)
            {
                self.note(|| format!("agent {a} notices it lost the lease"));
                self.agents[a].reset();
            }
        }
        if !self.agents[holder].leading || self.agents[holder].life != Life::Running {
            return;
        }
        if !self.holds_lease(holder) {
            return;
        }
        // The lease task renews every third of the lease.
        if let Some(l) = &mut self.lease {
            l.expires = self.c.now + LEASE;
        }
        self.capture_view();
        let view = self.lagged_view(holder);
        self.passes += 1;
        let names: Vec<String> = view.rollouts.iter().map(|r| r.name.clone()).collect();
        self.agents[holder]
            .memories
            .retain(|name, _| names.contains(name));
        for r in &view.rollouts {
            self.pass_over(holder, &view, r);
        }
    }

    fn pass_over(&mut self, agent: usize, view: &View, r: &RolloutObject) {
        let others: Vec<OtherRollout> = view
            .rollouts
            .iter()
            .filter(|o| o.name != r.name)
            .map(|o| OtherRollout {
                name: o.name.clone(),
                created: o.created,
                active: !matches!(
                    o.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Complete" | "RolledBack" | "Aborted")
                ),
                daemon_set: o.spec.daemon_set.clone(),
                nodes: Some(crate::label_selector::Selector::everything()),
            })
            .collect();
        let outcomes = self.agents[agent]
            .outcomes
            .remove(&r.name)
            .unwrap_or_default();
        let agent_node = self.agents[agent].node.clone();
        let mut config = self.config.clone();
        config.may_drain_own_node =
            agent_node.is_some() && self.agents[agent].handed_over_for == agent_node;
        let fresh = self.c.rollouts.get(&r.name);
        let owned: Vec<String> = self
            .c
            .nodes
            .iter()
            .filter(|(_, n)| n.owner() == Some(r.name.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        let memory = self.agents[agent]
            .memories
            .entry(r.name.clone())
            .or_insert_with(|| {
                // A new term reads the rollout and the nodes it owns afresh.
                let stored = fresh.map_or(r.status.as_ref(), |f| f.status.as_ref());
                Memory::resume(stored, fresh.map_or(r.finalizer, |f| f.finalizer), &owned)
            });
        let snapshot = Snapshot {
            rollout: RolloutView {
                name: &r.name,
                uid: &r.uid,
                generation: r.generation,
                created: r.created,
                spec: &r.spec,
                deleting: r.deleting,
                finalizer: r.finalizer,
                status: r.status.as_ref(),
            },
            daemon_set: Some(&view.ds),
            revisions: &view.revisions,
            nodes: &view.nodes,
            ztunnels: &view.ztunnels,
            cni: None,
            pod_counts: &view.pod_counts,
            others: &others,
            lookups: &NoLookups,
            agent_node: agent_node.as_deref(),
        };
        let now = self.c.now;
        let plan = decide(&snapshot, &config, memory, outcomes, now);
        let checks = invariants::decisions(&snapshot, memory, &plan);
        for v in checks {
            self.violation(v);
        }
        for t in &plan.transitions {
            let (node, from, to, msg) = (t.node.clone(), t.from, t.to, t.message.clone());
            self.note(|| format!("{}: {node} {from:?} -> {to:?}: {msg}", r.name));
        }
        if plan
            .standing
            .as_ref()
            .is_some_and(|s| s.phase.is_terminal())
        {
            self.terminal_decided_at
                .entry(r.name.clone())
                .or_insert(view.step);
        }
        if let Some(s) = &plan.standing
            && !plan.effects.is_empty()
        {
            let (phase, reason) = (s.phase, s.reason.clone());
            self.note(|| format!("{}: {phase:?} {reason}", r.name));
        }
        for effect in plan.effects {
            self.dispatch(agent, &r.name, effect, view.step);
        }
    }

    /// What the shell does with an effect: tasks are queued for the executor; drains and
    /// gates start; cancellations and the hand-over happen at once.
    fn dispatch(&mut self, agent: usize, rollout: &str, effect: Effect, decided_at: u64) {
        let now = self.c.now;
        match effect {
            Effect::Event(_) => {}
            Effect::Drain { node, options } => {
                let deadline = now + SignedDuration::try_from(options.timeout).unwrap_or(LEASE);
                self.agents[agent].drains.insert(
                    (rollout.to_owned(), node),
                    DrainRun {
                        deadline,
                        api_trouble: false,
                        blocked: false,
                    },
                );
            }
            Effect::CancelDrain { node } => {
                self.agents[agent]
                    .drains
                    .remove(&(rollout.to_owned(), node));
            }
            Effect::Gates(req) => {
                let done_at =
                    now + SignedDuration::from_millis(self.rng.between(300, 5_000) as i64);
                let pass = !self.rng.chance(if self.quiet {
                    0.0
                } else {
                    self.knobs.gate_failures
                });
                self.agents[agent]
                    .gates
                    .insert((rollout.to_owned(), req.node), GateRun { done_at, pass });
            }
            Effect::CancelGates { node } => {
                self.agents[agent].gates.remove(&(rollout.to_owned(), node));
            }
            Effect::StepDown { node } => {
                self.note(|| {
                    format!("agent {agent} hands the lease over before its node {node} is drained")
                });
                self.agents[agent].reset();
                self.agents[agent].handed_over_for = Some(node);
                self.agents[agent].hold_off_until = self.c.step + 150;
                self.lease = None;
            }
            // The trials' rollouts read no ztunnel metrics; were one to, its old
            // ztunnel would have nothing open.
            Effect::Connections(req) => self.agents[agent].deliver(
                rollout,
                Outcome::Connections {
                    node: req.node,
                    event: ConnectionsEvent::Closed(String::new()),
                },
            ),
            Effect::CancelConnections { .. } | Effect::Mesh(_) | Effect::CancelMesh => {}
            other => self.agents[agent].queue.push_back(Queued {
                rollout: rollout.to_owned(),
                effect: other,
                decided_at,
            }),
        }
    }

    fn run_one_effect(&mut self) {
        let running: Vec<usize> = self
            .agents
            .iter()
            .filter(|a| a.life == Life::Running && !a.queue.is_empty())
            .map(|a| a.id)
            .collect();
        let Some(&agent) = self.rng.pick(&running) else {
            return;
        };
        let i = self.rng.below(self.agents[agent].queue.len() as u64) as usize;
        let Some(q) = self.agents[agent].queue.remove(i) else {
            return;
        };
        // Every mutation checks the lease first.
        if !self.holds_lease(agent) {
            if !self.mutations.skip_lease_check {
                self.note(|| {
                    format!(
                        "agent {agent} does not lead: {:?} refused by its lease check",
                        kind(&q.effect)
                    )
                });
                return;
            }
            let what = format!(
                "agent {agent} runs {:?} without holding the lease",
                kind(&q.effect)
            );
            self.violation(what);
        }
        let fault = self.fault();
        let outcome = match q.effect {
            Effect::Call(call) => {
                let (result, applied) = api::node_call(&mut self.c, &q.rollout, &call, fault);
                let node = call.node.clone();
                let verb = call.kind.verb();
                let shown = format!("{result:?}");
                self.note(|| format!("{}: {verb} {node}: {shown} ({fault:?})", q.rollout));
                invariants::applied(self, &q.rollout, &applied, q.decided_at);
                Some(Outcome::Call { call, result })
            }
            Effect::Finalizer { add } => {
                let gone = !self.c.rollouts.contains_key(&q.rollout);
                let failure = if add && gone && fault.applies() {
                    // Nothing to add a finalizer to: the API server answers 404.
                    Some(crate::api_errors::ApiFailure::Status(
                        crate::api_errors::ApiStatus {
                            code: 404,
                            reason: "NotFound".into(),
                            ..Default::default()
                        },
                    ))
                } else {
                    fault.failure()
                };
                if fault.applies() {
                    self.set_finalizer(&q.rollout, add);
                }
                Some(Outcome::Finalizer {
                    add,
                    result: failure.map_or(Ok(()), Err),
                })
            }
            Effect::UndoDaemonSet { revision, cni, .. } => {
                let failure = fault.failure();
                if fault.applies() {
                    let hash = self.c.restore_revision(&revision);
                    self.note(|| format!("{}: DaemonSet restored to {hash}", q.rollout));
                }
                Some(Outcome::Undo {
                    cni,
                    result: failure.map_or(Ok(()), |f| {
                        Err(crate::rollout::pass::UndoFailure {
                            message: f.to_string(),
                            transient: f.fault().is_transient(),
                        })
                    }),
                })
            }
            Effect::WriteStatus(status) => {
                let failure = fault.failure();
                if fault.applies() {
                    let phase = status.phase.clone();
                    if let Some(r) = self.c.rollouts.get_mut(&q.rollout) {
                        r.status = Some((*status).clone());
                    }
                    let name = q.rollout.clone();
                    self.note(|| format!("{name}: status {phase:?} written"));
                    let decided_at = self
                        .terminal_decided_at
                        .get(&q.rollout)
                        .copied()
                        .unwrap_or(q.decided_at);
                    invariants::status_written(self, &q.rollout, decided_at);
                }
                Some(Outcome::StatusWritten {
                    status,
                    result: failure.map_or(Ok(()), Err),
                })
            }
            Effect::DeleteRollout => {
                let failure = fault.failure();
                if fault.applies() {
                    self.delete_rollout(&q.rollout);
                }
                Some(Outcome::Deleted {
                    result: failure.map_or(Ok(()), Err),
                })
            }
            _ => None,
        };
        if let Some(o) = outcome
            && self.holds_lease(agent)
        {
            self.agents[agent].deliver(&q.rollout, o);
        }
    }

    fn set_finalizer(&mut self, rollout: &str, add: bool) {
        let Some(r) = self.c.rollouts.get_mut(rollout) else {
            return;
        };
        r.finalizer = add;
        let gone = r.deleting && !add;
        if gone {
            invariants::released_everything(self, rollout, "its finalizer was removed");
            self.c.rollouts.remove(rollout);
            let name = rollout.to_owned();
            self.note(|| format!("{name} is gone"));
        }
    }

    fn delete_rollout(&mut self, rollout: &str) {
        let Some(r) = self.c.rollouts.get_mut(rollout) else {
            return;
        };
        if r.finalizer {
            r.deleting = true;
        } else {
            invariants::released_everything(self, rollout, "it was deleted without a finalizer");
            self.c.rollouts.remove(rollout);
        }
    }

    fn progress_drains(&mut self) {
        let now = self.c.now;
        for a in 0..self.agents.len() {
            let keys: Vec<(String, String)> = self.agents[a].drains.keys().cloned().collect();
            for key in keys {
                let (rollout, node) = key.clone();
                let done = if !self.c.nodes.contains_key(&node) {
                    Some(DrainOutcome::ApiTrouble(format!("node {node} not found")))
                } else {
                    let mut run = self.agents[a].drains[&key].clone();
                    for uid in self.c.app_pods_on(&node) {
                        let app = self.c.pods[&uid].app.expect("app pod");
                        if self.rng.chance(if self.quiet {
                            0.0
                        } else {
                            self.knobs.api_faults
                        }) {
                            run.api_trouble = true;
                            continue;
                        }
                        if self.c.apps[app].two_pdbs || self.c.disruptions_allowed(app) <= 0 {
                            run.blocked = true;
                            continue;
                        }
                        if let Some(p) = self.c.pods.get_mut(&uid) {
                            p.terminating_since = Some(now);
                        }
                    }
                    let outcome = if !self.c.any_app_pod_on(&node) {
                        Some(DrainOutcome::Drained)
                    } else if now >= run.deadline {
                        Some(if run.blocked || !run.api_trouble {
                            DrainOutcome::Blocked(format!("pods left on {node} at the deadline"))
                        } else {
                            DrainOutcome::ApiTrouble("evictions failed on API errors".into())
                        })
                    } else {
                        None
                    };
                    if let Some(r) = self.agents[a].drains.get_mut(&key) {
                        *r = run;
                    }
                    outcome
                };
                if let Some(result) = done {
                    self.agents[a].drains.remove(&key);
                    let shown = format!("{result:?}");
                    self.note(|| format!("{rollout}: drain of {node}: {shown}"));
                    self.agents[a].deliver(&rollout, Outcome::Drain { node, result });
                }
            }
        }
    }

    fn progress_gates(&mut self) {
        let now = self.c.now;
        for a in 0..self.agents.len() {
            let done: Vec<((String, String), bool)> = self.agents[a]
                .gates
                .iter()
                .filter(|(_, g)| g.done_at <= now)
                .map(|(k, g)| (k.clone(), g.pass))
                .collect();
            for ((rollout, node), pass) in done {
                self.agents[a]
                    .gates
                    .remove(&(rollout.clone(), node.clone()));
                let verdict = if pass {
                    Ok(String::new())
                } else {
                    Err("istio_tcp_connections_failed_total rate 3/s > 0.5/s".into())
                };
                self.agents[a].deliver(
                    &rollout,
                    Outcome::Gate {
                        node,
                        event: GateEvent::Done(verdict),
                    },
                );
            }
        }
    }

    fn pick_node(
        &self,
        pick: u64,
        filter: impl Fn(&str, &super::cluster::SimNode) -> bool,
    ) -> Option<String> {
        let nodes: Vec<&String> = self
            .c
            .nodes
            .iter()
            .filter(|(n, s)| filter(n, s))
            .map(|(n, _)| n)
            .collect();
        (!nodes.is_empty()).then(|| nodes[(pick % nodes.len() as u64) as usize].clone())
    }

    fn disturb(&mut self, what: Disturbance, pick: u64) {
        self.note(|| format!("disturbance: {what:?}"));
        match what {
            Disturbance::UncordonOurs => {
                if let Some(node) =
                    self.pick_node(pick, |_, n| n.unschedulable && n.owner().is_some())
                {
                    self.c.set_unschedulable(&node, false, Actor::Operator);
                    self.note(|| format!("operator uncordons {node}"));
                }
            }
            Disturbance::CordonAny => {
                if let Some(node) = self.pick_node(pick, |_, n| !n.unschedulable) {
                    self.c.set_unschedulable(&node, true, Actor::Operator);
                    self.operator_cordons.insert(node.clone());
                    self.note(|| format!("operator cordons {node}"));
                }
            }
            Disturbance::NotReady | Disturbance::Ready => {
                let ready = what == Disturbance::Ready;
                if let Some(node) = self.pick_node(pick, |_, n| n.ready != ready) {
                    let step = self.c.step;
                    let n = self.c.nodes.get_mut(&node).expect("node");
                    n.ready = ready;
                    n.stable_since = step;
                    self.c.touch(&node);
                }
            }
            Disturbance::AddNode => {
                let name = format!("x{:02}", pick % 100);
                if !self.c.nodes.contains_key(&name) {
                    let zone = format!("zone-{}", pick % self.knobs.zones.max(1) as u64);
                    self.c.add_node(&name, &zone, Some("old"));
                }
            }
            Disturbance::DeleteNode => {
                let keep = self
                    .agents
                    .iter()
                    .filter_map(|a| a.node.clone())
                    .collect::<Vec<_>>();
                if let Some(node) = self.pick_node(pick, |name, _| !keep.iter().any(|k| k == name))
                {
                    self.c.nodes.remove(&node);
                    self.operator_cordons.remove(&node);
                    self.note(|| format!("node {node} deleted"));
                }
            }
            Disturbance::NewRevision => {
                let top = self.c.revisions.iter().map(|(_, n)| *n).max().unwrap_or(0);
                let hash = format!("v{}", top + 1);
                self.c.revisions.push((hash, top + 1));
                self.c.ds_generation += 1;
            }
            Disturbance::Pause | Disturbance::Resume => {
                let paused = what == Disturbance::Pause;
                for r in self.c.rollouts.values_mut() {
                    if r.spec.paused != paused {
                        r.spec.paused = paused;
                        r.generation += 1;
                    }
                }
            }
            Disturbance::Abort => {
                if let Some(r) = self.c.rollouts.get_mut("r1") {
                    r.spec.abort = true;
                    r.generation += 1;
                }
            }
            Disturbance::DeleteRollout => self.delete_rollout("r1"),
            Disturbance::SecondRollout => {
                if !self.c.rollouts.contains_key("r2") {
                    let created = self.c.now;
                    let spec = spec(&self.knobs);
                    self.c.rollouts.insert(
                        "r2".into(),
                        RolloutObject {
                            name: "r2".into(),
                            uid: "uid-r2".into(),
                            created,
                            generation: 1,
                            spec,
                            status: None,
                            finalizer: false,
                            deleting: false,
                        },
                    );
                }
            }
            Disturbance::KillLeader => {
                if let Some(l) = &self.lease {
                    let a = l.holder;
                    self.agents[a].reset();
                    self.note(|| format!("agent {a} killed (it restarts as a follower)"));
                }
            }
            Disturbance::StopLeader => {
                if let Some(l) = &self.lease {
                    let a = l.holder;
                    self.agents[a].life = Life::Paused(self.c.step + 150 + pick % 150);
                    self.note(|| format!("agent {a} stopped"));
                }
            }
            Disturbance::TightenPdb => {
                let app = (pick % self.c.apps.len() as u64) as usize;
                let min = self.c.apps[app].min_available;
                self.tightened.push((app, min));
                self.c.apps[app].min_available = Some(self.c.apps[app].replicas);
            }
            Disturbance::ApiOutage => self.outage_until = self.c.step + 20 + pick % 60,
        }
    }

    /// The quiet phase: disturbances end, operators undo what they did, the API server
    /// and the watches are healthy, every replica runs.
    fn begin_quiet(&mut self) {
        self.quiet = true;
        self.note(|| "quiet phase".into());
        for node in std::mem::take(&mut self.operator_cordons) {
            if self
                .c
                .nodes
                .get(&node)
                .is_some_and(|n| n.cordoned_by == Some(Actor::Operator))
            {
                self.c.set_unschedulable(&node, false, Actor::Operator);
            }
        }
        let names: Vec<String> = self.c.nodes.keys().cloned().collect();
        for node in names {
            if !self.c.nodes[&node].ready {
                self.c.nodes.get_mut(&node).expect("node").ready = true;
                self.c.touch(&node);
            }
        }
        for r in self.c.rollouts.values_mut() {
            if r.spec.paused {
                r.spec.paused = false;
                r.generation += 1;
            }
        }
        for a in &mut self.agents {
            a.life = Life::Running;
            a.hold_off_until = 0;
        }
        self.outage_until = 0;
    }

    /// In the quiet phase, an operator aborts a rollout the failure policy paused or a
    /// blocker holds (what a person does: it releases every node).
    fn unstick(&mut self) {
        for r in self.c.rollouts.values_mut() {
            let Some(s) = &r.status else { continue };
            let stuck = matches!(s.phase.as_deref(), Some("Paused" | "Blocked"))
                && !s.conditions.iter().any(|c| c.reason == "OverlapsRollout");
            if stuck && !r.spec.abort {
                r.spec.abort = true;
                r.generation += 1;
            }
        }
    }

    fn settled(&self) -> bool {
        let finished = self.c.rollouts.values().all(|r| {
            matches!(
                r.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Complete" | "RolledBack" | "Aborted")
            ) && !r.finalizer
        });
        finished
            && self
                .agents
                .iter()
                .all(|a| a.queue.is_empty() && a.drains.is_empty() && a.gates.is_empty())
    }

    fn describe_rollouts(&self) -> String {
        self.c
            .rollouts
            .values()
            .map(|r| {
                let s = r.status.as_ref();
                let reason = s
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Progressing"))
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                format!(
                    "{} {:?} finalizer={} ({reason})",
                    r.name,
                    s.and_then(|s| s.phase.clone()),
                    r.finalizer
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn kind(e: &Effect) -> &'static str {
    match e {
        Effect::Call(_) => "a node call",
        Effect::Finalizer { .. } => "a finalizer change",
        Effect::UndoDaemonSet { .. } => "a DaemonSet restore",
        Effect::WriteStatus(_) => "a status write",
        Effect::DeleteRollout => "a rollout delete",
        _ => "an effect",
    }
}
