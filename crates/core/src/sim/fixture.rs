//! A small cluster and one rollout for tests of single decisions: the test changes the
//! cluster by hand, runs a pass, and looks at the plan.

use k8s_openapi::jiff::Timestamp;

use super::cluster::{Actor, Cluster};
use crate::api::rollout::{RolloutSpec, ZtunnelRolloutStatus};
use crate::labels::{OWNER_ANNOTATION, WAS_UNSCHEDULABLE_ANNOTATION};
use crate::rollout::node_machine::NodePhase;
use crate::rollout::pass::{
    Memory, NoLookups, OtherRollout, Outcome, PassConfig, Plan, RolloutView, Snapshot, decide,
};
use crate::rollout::status::TrackedNode;

pub struct Fixture {
    pub c: Cluster,
    pub spec: RolloutSpec,
    pub finalizer: bool,
    pub status: Option<ZtunnelRolloutStatus>,
    pub memory: Memory,
    pub now: Timestamp,
    pub others: Vec<OtherRollout>,
    pub config: PassConfig,
}

impl Fixture {
    /// Nodes (name, zone) running ztunnel "old"; the DaemonSet's current revision is
    /// "new"; the rollout `r1` groups waves by zone, one node at a time.
    pub fn new(nodes: &[(&str, &str)]) -> Self {
        let now: Timestamp = "2026-12-01T10:00:00Z".parse().expect("time");
        let mut c = Cluster::new(now);
        for (name, zone) in nodes {
            c.add_node(name, zone, Some("old"));
        }
        c.revisions.push(("new".into(), 2));
        let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
            "waves": { "groupBy": super::cluster::ZONE, "maxUnavailable": 1 },
            "health": { "waypoints": { "disabled": true } },
        }))
        .expect("spec");
        Fixture {
            c,
            spec,
            finalizer: false,
            status: None,
            memory: Memory::default(),
            now,
            others: Vec::new(),
            config: PassConfig::default(),
        }
    }

    pub fn pass(&mut self) -> Plan {
        self.pass_with(Vec::new())
    }

    pub fn pass_with(&mut self, outcomes: Vec<Outcome>) -> Plan {
        self.c.now = self.now;
        let nodes = self.c.node_map();
        let ztunnels = self.c.ztunnels();
        let pod_counts = self.c.pod_counts();
        let ds = self.c.daemon_set();
        let revisions = self.c.revision_objects();
        let created: Timestamp = "2026-12-01T09:00:00Z".parse().expect("time");
        let snapshot = Snapshot {
            rollout: RolloutView {
                name: "r1",
                uid: "uid-r1",
                generation: 1,
                created,
                spec: &self.spec,
                deleting: false,
                finalizer: self.finalizer,
                status: self.status.as_ref(),
            },
            daemon_set: Some(&ds),
            revisions: &revisions,
            nodes: &nodes,
            ztunnels: &ztunnels,
            pod_counts: &pod_counts,
            others: &self.others,
            lookups: &NoLookups,
            agent_node: None,
        };
        decide(
            &snapshot,
            &self.config,
            &mut self.memory,
            outcomes,
            self.now,
        )
    }

    /// Runs the calls of `plan` that `which` picks on the cluster (no faults) and
    /// returns their outcomes.
    pub fn run_calls(
        &mut self,
        plan: &Plan,
        which: impl Fn(&crate::rollout::pass::NodeCall) -> bool,
    ) -> Vec<Outcome> {
        plan.effects
            .iter()
            .filter_map(|e| match e {
                crate::rollout::pass::Effect::Call(call) if which(call) => {
                    let (result, _) =
                        super::api::node_call(&mut self.c, "r1", call, super::api::ApiFault::None);
                    Some(Outcome::Call {
                        call: call.clone(),
                        result,
                    })
                }
                _ => None,
            })
            .collect()
    }

    pub fn cordon_by_operator(&mut self, node: &str) {
        self.c.set_unschedulable(node, true, Actor::Operator);
    }

    /// `node` is cordoned and owned by `rollout`.
    pub fn own_by(&mut self, node: &str, rollout: &str) {
        self.c
            .set_unschedulable(node, true, Actor::Rollout(rollout.to_owned()));
        let n = self.c.nodes.get_mut(node).expect("node");
        n.annotations
            .insert(OWNER_ANNOTATION.into(), rollout.to_owned());
        n.annotations
            .insert(WAS_UNSCHEDULABLE_ANNOTATION.into(), "false".into());
    }

    /// Another active (or finished) rollout over the same DaemonSet, created
    /// `offset_secs` from this one.
    pub fn add_other_rollout(&mut self, name: &str, offset_secs: i64, active: bool) {
        let created: Timestamp = "2026-12-01T09:00:00Z".parse().expect("time");
        self.others.push(OtherRollout {
            name: name.to_owned(),
            created: created + k8s_openapi::jiff::SignedDuration::from_secs(offset_secs),
            active,
            daemon_set: self.spec.daemon_set.clone(),
            nodes: Some(crate::label_selector::Selector::everything()),
        });
    }

    /// The stored status says `phase`, and the term starts from it.
    pub fn stored_phase(&mut self, phase: &str) {
        let status = ZtunnelRolloutStatus {
            phase: Some(phase.to_owned()),
            target_revision: Some("new".into()),
            ..Default::default()
        };
        self.memory = Memory::resume(Some(&status), self.finalizer, &[]);
        self.status = Some(status);
    }

    /// The DaemonSet moves to a new revision.
    pub fn new_revision(&mut self, hash: &str) {
        let top = self.c.revisions.iter().map(|(_, n)| *n).max().unwrap_or(0);
        self.c.revisions.push((hash.to_owned(), top + 1));
        self.c.ds_generation += 1;
    }

    /// The node's resourceVersion now.
    pub fn version(&self, node: &str) -> String {
        self.c.nodes[node].rv.to_string()
    }

    /// The rollout has `node` at `phase`, cordoned by it (the node was schedulable).
    pub fn start_node_at(&mut self, node: &str, phase: NodePhase) {
        self.own_by(node, "r1");
        let mut t = TrackedNode::pending(self.now);
        t.record.phase = phase;
        t.record.was_unschedulable = Some(false);
        t.started = Some(self.now);
        let mut state = crate::rollout::pass::memory::NodeState::new(t);
        state.touched = true;
        self.memory.nodes.insert(node.to_owned(), state);
    }
}
