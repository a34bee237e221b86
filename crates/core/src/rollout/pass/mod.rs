//! One pass over a rollout: [`decide`] takes what the watches show ([`Snapshot`]), what
//! this leader term remembers ([`Memory`]), what came back from earlier effects
//! ([`Outcome`]s) and the time, and returns what to do ([`Plan`]: effects, where the
//! rollout stands, when to look again). It never waits and never calls anything; the
//! agent's shell executes the effects and feeds the outcomes back, and the simulation in
//! this crate's tests does the same with a model of the cluster.
//!
//! A pass runs in numbered stages:
//! 1. take the outcomes ([`outcomes`]);
//! 2. forget the writes the watches show now ([`facts`]);
//! 3. an abort or a delete releases everything, then ends the rollout ([`cleanup`]);
//! 4. a finished rollout is final: nothing more;
//! 5. read the spec and the DaemonSet, or say why the rollout cannot proceed;
//! 6. wait while an older active rollout overlaps this one;
//! 7. a rollback restores the DaemonSet's revision first ([`failure_policy`]);
//! 8. one-time warnings, and a target change;
//! 9. step every started node through its machine ([`nodes`]);
//! 10. plan the wave: start nodes, hold, apply the failure policy, or finish ([`waves`]);
//! 11. record the standing and the status ([`record`]).

pub mod derived;
pub mod effects;
pub mod memory;
pub mod snapshot;

mod cleanup;
pub(crate) mod facts;
mod failure_policy;
mod nodes;
mod outcomes;
mod record;
mod view;
mod waves;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub use effects::{
    About, CallDone, CallError, CallKind, ConnectionsEvent, ConnectionsRequest, DrainOutcome,
    Effect, GateEvent, GateRequest, MeshEvent, MeshRequest, NodeCall, Notice, Outcome, Transition,
    UndoFailure,
};
pub use memory::Memory;
pub use record::held_back_status;
pub use snapshot::{
    CniSnapshot, Lookups, NoLookups, NodeMap, OtherRollout, PodCounts, RolloutView, Snapshot,
    ZtunnelsByNode,
};

use crate::rollout::node_machine::NodePhase;
use crate::rollout::status::Standing;

/// The agent's settings a pass reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassConfig {
    /// At most one status write per rollout in this interval (phase changes excepted): a
    /// 1,000-node status is ~150 kB, and steps are idempotent, so a crash that loses the
    /// last interval repeats a step at worst.
    pub status_interval: SignedDuration,
    /// The agent may drain the node it runs on without handing the lease over first
    /// (it handed it over once and got it back: no other replica took it).
    pub may_drain_own_node: bool,
    /// The URL prefixes a rollout's Prometheus URL may use (`health::url_policy`); a
    /// rollout whose URL is under none is Blocked.
    pub allowed_prometheus_url_prefixes: std::sync::Arc<[String]>,
    /// The one DaemonSet (namespace, name) whose pods the agent's RBAC lets it delete
    /// (`--ztunnel-daemonset`, set by the manifests and the chart); a rollout naming
    /// another is Blocked before any node. `None`: any (the agent's credentials decide).
    pub ztunnel_daemon_set: Option<(String, String)>,
    /// The one istio-cni DaemonSet (namespace, name) whose pods and revision the agent's
    /// RBAC lets it delete and restore (`--cni-daemonset`); a rollout's `spec.cni`
    /// naming another is Blocked. `None`: any, unless `ztunnel_daemon_set` restricts the
    /// agent (then none).
    pub cni_daemon_set: Option<(String, String)>,
}

impl Default for PassConfig {
    fn default() -> Self {
        Self {
            status_interval: SignedDuration::from_secs(1),
            may_drain_own_node: false,
            allowed_prometheus_url_prefixes: std::sync::Arc::from([]),
            ztunnel_daemon_set: None,
            cni_daemon_set: None,
        }
    }
}

/// What a pass decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub effects: Vec<Effect>,
    /// Where the rollout stands (`None`: the pass ended before deciding it, e.g. the
    /// rollout is finished).
    pub standing: Option<Standing>,
    /// Look again then at the latest (watch events and outcomes wake the loop sooner).
    pub wake_at: Option<Timestamp>,
    /// Node phase changes, for metrics and logs.
    pub transitions: Vec<Transition>,
    /// The rollout's nodes per phase (metrics), when the pass got that far.
    pub phases: Option<BTreeMap<NodePhase, i64>>,
    /// The rollout is finished and cleaned: passes over it change nothing any more
    /// until it changes.
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

/// One pass over one rollout.
pub fn decide(
    snap: &Snapshot<'_>,
    config: &PassConfig,
    mem: &mut Memory,
    outcomes: Vec<Outcome>,
    now: Timestamp,
) -> Plan {
    let mut pass = Pass {
        snap,
        config,
        mem,
        now,
        plan: Plan::default(),
        held: Default::default(),
        drain_filter: None,
        mesh_seen: false,
    };
    pass.run(outcomes);
    pass.plan
}

/// The state of one pass.
struct Pass<'p, 's> {
    snap: &'p Snapshot<'s>,
    config: &'p PassConfig,
    mem: &'p mut Memory,
    now: Timestamp,
    plan: Plan,
    /// Pending nodes that cannot start now (the planner passes over them).
    held: std::collections::HashSet<String>,
    /// The drain's filter (once the spec is read): a node about to be cordoned is
    /// checked with it for pods no drain gets past.
    drain_filter: Option<crate::drain::filter::FilterOptions>,
    /// This pass decided about the mesh-wide breaker (else it stops: an early return).
    mesh_seen: bool,
}

impl Pass<'_, '_> {
    fn name(&self) -> &str {
        self.snap.rollout.name
    }

    fn run(&mut self, outcomes: Vec<Outcome>) {
        // 1.
        for o in outcomes {
            self.take(o);
        }
        // 2.
        self.forget_seen_writes();
        // 3.
        if self.snap.rollout.deleting || self.snap.rollout.spec.abort {
            return self.abort();
        }
        // 4.
        if self.finished() {
            return;
        }
        // 5.
        let mut view = match self.view() {
            Ok(view) => view,
            Err(standing) => return self.record(standing),
        };
        self.drain_filter = Some(view.settings.drain.filter.clone());
        // 6.
        if let Some(standing) = self.overlap(&view) {
            return self.record(standing);
        }
        // 7.
        if let Some(standing) = self.undo(&view) {
            return self.record(standing);
        }
        // 8.
        self.warn_once(&view);
        self.retarget(&view);
        // 9.
        self.step_nodes(&view);
        self.mesh_breaker(&view);
        // 10.
        let standing = self.plan_wave(&mut view);
        // 11.
        self.count_phases(&view);
        self.mem.derived.keep_observations(
            view.layout,
            self.snap.pod_counts,
            &view.settings.waves.group_by,
            std::mem::take(&mut view.observations),
        );
        self.record(standing);
    }

    fn notice(&mut self, about: effects::About, warning: bool, reason: &str, note: String) {
        self.plan.effects.push(Effect::Event(Notice {
            at: self.now,
            about,
            warning,
            reason: reason.to_owned(),
            note,
        }));
    }
}

use view::View;
