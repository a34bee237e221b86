//! A small cluster and one rollout for tests of single decisions: the test changes the
//! cluster by hand, runs a pass, and looks at the plan.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::api::ApiFault;
use super::cluster::{Actor, Cluster};
use crate::api::rollout::{RolloutSpec, ZtunnelRolloutStatus};
use crate::labels::{CORDON_ID_ANNOTATION, OWNER_ANNOTATION, WAS_UNSCHEDULABLE_ANNOTATION};
use crate::rollout::node_machine::NodePhase;
use crate::rollout::pass::{
    ConnectionsEvent, DrainOutcome, Effect, GateEvent, Memory, NoLookups, OtherRollout, Outcome,
    PassConfig, Plan, RolloutView, Snapshot, decide,
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
    /// Outcomes of effects `drive` carried out, for the next pass.
    pub pending: Vec<Outcome>,
    /// Node copies the watch shows instead of the cluster's (a lagging watch).
    pub lagging: std::collections::BTreeMap<String, k8s_openapi::api::core::v1::Node>,
    /// The API server refuses every DaemonSet restore with this error.
    pub refuse_undo: Option<String>,
    /// ... as an API blip (a 503) rather than a refusal.
    pub undo_blips: bool,
    /// Wall time spent in `decide` itself, and how many passes.
    pub decided: (std::time::Duration, u32),
    /// The rollout's generation (`metadata.generation`).
    pub generation: i64,
    /// What each node's connections-drained gate reports (default: nothing open).
    pub connections: std::collections::BTreeMap<String, ConnectionsEvent>,
    /// Each node's bake verdict; a node without one bakes on (its verdict comes from
    /// the test, as an outcome).
    pub bakes: std::collections::BTreeMap<String, Result<String, String>>,
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
            pending: Vec::new(),
            lagging: Default::default(),
            refuse_undo: None,
            undo_blips: false,
            decided: Default::default(),
            connections: Default::default(),
            bakes: Default::default(),
            generation: 1,
        }
    }

    /// A pass (with the outcomes of what `drive` carried out last, if any).
    pub fn pass(&mut self) -> Plan {
        let pending = std::mem::take(&mut self.pending);
        self.pass_with(pending)
    }

    pub fn pass_with(&mut self, outcomes: Vec<Outcome>) -> Plan {
        self.c.now = self.now;
        let mut nodes = self.c.node_map();
        if !self.lagging.is_empty() {
            let map = std::sync::Arc::make_mut(&mut nodes);
            for (name, n) in &self.lagging {
                map.insert(name.clone(), std::sync::Arc::new(n.clone()));
            }
        }
        let ztunnels = self.c.ztunnels();
        let pod_counts = self.c.pod_counts();
        let ds = self.c.daemon_set();
        let revisions = self.c.revision_objects();
        let created: Timestamp = "2026-12-01T09:00:00Z".parse().expect("time");
        let snapshot = Snapshot {
            rollout: RolloutView {
                name: "r1",
                uid: "uid-r1",
                generation: self.generation,
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
            cni: None,
            pod_counts: &pod_counts,
            others: &self.others,
            lookups: &NoLookups,
            agent_node: None,
        };
        let started = std::time::Instant::now();
        let plan = decide(
            &snapshot,
            &self.config,
            &mut self.memory,
            outcomes,
            self.now,
        );
        self.decided.0 += started.elapsed();
        self.decided.1 += 1;
        plan
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

    /// Runs passes, one simulated second apart, carrying out every effect at once and
    /// without faults (drains drain at once; gates give `verdict(node, revision)`), until `done`
    /// says so or `passes` ran out. Returns every effect decided, in order.
    pub fn drive(
        &mut self,
        passes: usize,
        verdict: impl Fn(&str, &str) -> Result<String, String>,
        done: impl Fn(&Fixture) -> bool,
    ) -> Vec<Effect> {
        let mut log = Vec::new();
        for _ in 0..passes {
            if done(self) {
                break;
            }
            let plan = self.pass();
            if std::env::var("FIXTURE_TRACE").is_ok() {
                eprintln!("{} {:?} {:?}", self.now, plan.transitions, plan.standing);
            }
            for effect in &plan.effects {
                if let Some(o) = self.carry_out(effect, &verdict) {
                    self.pending.push(o);
                }
            }
            log.extend(plan.effects);
            self.next_second();
        }
        log
    }

    /// A simulated second passes, for the passes and the cluster alike.
    pub fn next_second(&mut self) {
        self.now += SignedDuration::from_secs(1);
        self.c.now = self.now;
        self.c.tick();
    }

    /// Carries out `plan`'s effects as `drive` does (gates pass); their outcomes go to
    /// the next pass.
    pub fn carry_out_plan(&mut self, plan: &Plan) {
        for effect in &plan.effects {
            if let Some(o) = self.carry_out(effect, &|_: &str, _: &str| Ok(String::new())) {
                self.pending.push(o);
            }
        }
    }

    fn carry_out(
        &mut self,
        effect: &Effect,
        verdict: &impl Fn(&str, &str) -> Result<String, String>,
    ) -> Option<Outcome> {
        Some(match effect {
            Effect::Call(call) => {
                let (result, _) = super::api::node_call(&mut self.c, "r1", call, ApiFault::None);
                Outcome::Call {
                    call: call.clone(),
                    result,
                }
            }
            Effect::Drain { node, .. } => Outcome::Drain {
                node: node.clone(),
                result: DrainOutcome::Drained,
            },
            Effect::Connections(request) => Outcome::Connections {
                node: request.node.clone(),
                event: self
                    .connections
                    .get(&request.node)
                    .cloned()
                    .unwrap_or_else(|| ConnectionsEvent::Closed("nothing open".into())),
            },
            // The mesh-wide breaker's first round holds (a test trips it itself).
            Effect::Mesh(request) => Outcome::Mesh {
                generation: request.generation,
                event: crate::rollout::pass::MeshEvent::Held,
            },
            Effect::Gates(request) if request.bake => Outcome::Gate {
                node: request.node.clone(),
                event: match self.bakes.get(&request.node) {
                    Some(v) => GateEvent::Done(v.clone()),
                    None => GateEvent::Waiting("baking".into()),
                },
            },
            Effect::Gates(request) => Outcome::Gate {
                node: request.node.clone(),
                event: GateEvent::Done(verdict(&request.node, &request.target_hash)),
            },
            Effect::Finalizer { add } => {
                self.finalizer = *add;
                Outcome::Finalizer {
                    add: *add,
                    result: Ok(()),
                }
            }
            Effect::UndoDaemonSet { revision, cni, .. } => match &self.refuse_undo {
                Some(why) => Outcome::Undo {
                    cni: *cni,
                    result: Err(crate::rollout::pass::UndoFailure {
                        message: why.clone(),
                        transient: self.undo_blips,
                    }),
                },
                None => {
                    self.c.restore_revision(revision);
                    Outcome::Undo {
                        cni: *cni,
                        result: Ok(()),
                    }
                }
            },
            Effect::WriteStatus(status) => {
                self.status = Some((**status).clone());
                Outcome::StatusWritten {
                    status: status.clone(),
                    result: Ok(()),
                }
            }
            _ => return None,
        })
    }

    /// The node's ztunnel revisions now.
    pub fn ztunnel_on(&self, node: &str) -> Vec<String> {
        self.c.ztunnel_hashes(node)
    }

    pub fn cordon_by_operator(&mut self, node: &str) {
        self.c.set_unschedulable(node, true, Actor::Operator);
    }

    /// `node` is cordoned and owned by `rollout`.
    pub fn own_by(&mut self, node: &str, rollout: &str) {
        let over = self.version(node);
        self.c
            .set_unschedulable(node, true, Actor::Rollout(rollout.to_owned()));
        let n = self.c.nodes.get_mut(node).expect("node");
        n.annotations.insert(CORDON_ID_ANNOTATION.into(), over);
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

    /// The node as the API shows it now.
    pub fn node_object(&mut self, node: &str) -> k8s_openapi::api::core::v1::Node {
        (*self.c.node_map()[node]).clone()
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
