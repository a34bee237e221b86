//! The simulated cluster: nodes, the ztunnel DaemonSet and its pods, applications under
//! PodDisruptionBudgets, and the rollout objects — the ground truth the invariants are
//! checked against. Its controllers (DaemonSet, ReplicaSet, scheduler, kubelet, PDB
//! accounting) are deliberately simple and independent of the code under test.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetSpec, DaemonSetStatus, DaemonSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeSpec, NodeStatus, PodSpec, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::rollout::{RolloutSpec, ZtunnelRolloutStatus};
use crate::labels::{
    OWNER_ANNOTATION, REVISION_HASH_LABEL, WAITING_TAINT, WAS_UNSCHEDULABLE_ANNOTATION,
};
use crate::rollout::node_machine::ZtunnelPod;
use crate::rollout::pass::{NodeMap, PodCounts, ZtunnelsByNode};

pub const DS_NAMESPACE: &str = "istio-system";
pub const DS_NAME: &str = "ztunnel";
pub const DS_UID: &str = "ds-uid";
pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const OS: &str = "kubernetes.io/os";
/// A NoSchedule taint ztunnel does not tolerate: nodes carrying it run no ztunnel pod.
pub const NO_ZTUNNEL_TAINT: &str = "sim.ztunnel-rollout.dev/no-ztunnel";

/// Who changed a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Operator,
    Rollout(String),
}

#[derive(Debug, Clone)]
pub struct SimNode {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    pub ready: bool,
    pub rv: u64,
    /// Who last made the node unschedulable.
    pub cordoned_by: Option<Actor>,
    /// The step since which its schedulability and readiness are as they are.
    pub stable_since: u64,
    pub created_step: u64,
}

impl SimNode {
    pub fn owner(&self) -> Option<&str> {
        self.annotations.get(OWNER_ANNOTATION).map(String::as_str)
    }

    pub fn waiting_taint(&self) -> Option<&str> {
        self.taints
            .iter()
            .find(|t| t.key == WAITING_TAINT)
            .and_then(|t| t.value.as_deref())
    }

    /// Whether the simulated DaemonSet controller runs ztunnel here (its own rule, the
    /// same as the template's selector and tolerations).
    pub fn runs_ztunnel(&self) -> bool {
        self.labels.get(OS).map(String::as_str) == Some("linux")
            && !self.taints.iter().any(|t| t.key == NO_ZTUNNEL_TAINT)
    }
}

#[derive(Debug, Clone)]
pub struct SimPod {
    pub name: String,
    pub node: Option<String>,
    /// Index of its application, or `None` for a ztunnel pod.
    pub app: Option<usize>,
    /// Revision hash (ztunnel pods).
    pub hash: String,
    pub created: Timestamp,
    /// Ready from then on (scheduled and started).
    pub ready_at: Option<Timestamp>,
    pub terminating_since: Option<Timestamp>,
}

impl SimPod {
    pub fn ready(&self, now: Timestamp) -> bool {
        self.terminating_since.is_none() && self.ready_at.is_some_and(|t| t <= now)
    }
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub replicas: usize,
    /// The PDB's `minAvailable`, if it has a PDB.
    pub min_available: Option<usize>,
    /// Under two PDBs: the Eviction API answers 500 for its pods.
    pub two_pdbs: bool,
}

#[derive(Debug, Clone)]
pub struct RolloutObject {
    pub name: String,
    pub uid: String,
    pub created: Timestamp,
    pub generation: i64,
    pub spec: RolloutSpec,
    pub status: Option<ZtunnelRolloutStatus>,
    pub finalizer: bool,
    pub deleting: bool,
}

#[derive(Debug, Clone)]
pub struct Timings {
    pub ztunnel_create: (i64, i64),
    pub ztunnel_ready: (i64, i64),
    pub pod_exit: (i64, i64),
    pub pod_ready: (i64, i64),
}

impl Default for Timings {
    /// Milliseconds, min and max.
    fn default() -> Self {
        Timings {
            ztunnel_create: (100, 1_500),
            ztunnel_ready: (200, 3_000),
            pod_exit: (200, 3_000),
            pod_ready: (300, 4_000),
        }
    }
}

pub struct Cluster {
    pub now: Timestamp,
    pub step: u64,
    rv: u64,
    uids: u64,
    pub nodes: BTreeMap<String, SimNode>,
    pub pods: BTreeMap<String, SimPod>,
    pub apps: Vec<App>,
    /// The DaemonSet's revisions (hash, number); the highest number is current.
    pub revisions: Vec<(String, i64)>,
    pub ds_generation: i64,
    pub rollouts: BTreeMap<String, RolloutObject>,
    pub timings: Timings,
    /// Pod creations waiting for their time (controllers react after a delay).
    pending_ztunnels: BTreeMap<String, Timestamp>,
    built: HashMap<String, (u64, Arc<Node>)>,
}

fn ms(d: i64) -> SignedDuration {
    SignedDuration::from_millis(d)
}

impl Cluster {
    pub fn new(now: Timestamp) -> Self {
        Cluster {
            now,
            step: 0,
            rv: 100,
            uids: 0,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            apps: Vec::new(),
            revisions: vec![("old".into(), 1)],
            ds_generation: 1,
            rollouts: BTreeMap::new(),
            timings: Timings::default(),
            pending_ztunnels: BTreeMap::new(),
            built: HashMap::new(),
        }
    }

    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn uid(&mut self, prefix: &str) -> String {
        self.uids += 1;
        format!("{prefix}-{}", self.uids)
    }

    /// The DaemonSet's current revision hash.
    pub fn current_hash(&self) -> String {
        self.revisions
            .iter()
            .max_by_key(|(_, n)| *n)
            .map(|(h, _)| h.clone())
            .unwrap_or_default()
    }

    /// A new node (Linux, Ready, schedulable) with a Ready ztunnel pod on `hash`.
    pub fn add_node(&mut self, name: &str, zone: &str, hash: Option<&str>) {
        let rv = self.next_rv();
        self.nodes.insert(
            name.to_owned(),
            SimNode {
                labels: BTreeMap::from([
                    (ZONE.to_owned(), zone.to_owned()),
                    (OS.to_owned(), "linux".to_owned()),
                    ("kubernetes.io/hostname".to_owned(), name.to_owned()),
                ]),
                annotations: BTreeMap::new(),
                unschedulable: false,
                taints: Vec::new(),
                ready: true,
                rv,
                cordoned_by: None,
                stable_since: self.step,
                created_step: self.step,
            },
        );
        if let Some(hash) = hash {
            let uid = self.uid("zt");
            let at = self.now - SignedDuration::from_hours(1);
            self.pods.insert(
                uid,
                SimPod {
                    name: format!("ztunnel-{name}-{hash}"),
                    node: Some(name.to_owned()),
                    app: None,
                    hash: hash.to_owned(),
                    created: at,
                    ready_at: Some(at),
                    terminating_since: None,
                },
            );
        }
    }

    /// An application with `replicas` pods spread over the schedulable nodes.
    pub fn add_app(&mut self, name: &str, replicas: usize, min_available: Option<usize>) {
        self.apps.push(App {
            name: name.to_owned(),
            replicas,
            min_available,
            two_pdbs: false,
        });
        let app = self.apps.len() - 1;
        let nodes: Vec<String> = self.nodes.keys().cloned().collect();
        for i in 0..replicas {
            let uid = self.uid("pod");
            let node = nodes.get(i % nodes.len().max(1)).cloned();
            let at = self.now - SignedDuration::from_hours(1);
            self.pods.insert(
                uid.clone(),
                SimPod {
                    name: format!("{name}-{uid}"),
                    node,
                    app: Some(app),
                    hash: String::new(),
                    created: at,
                    ready_at: Some(at),
                    terminating_since: None,
                },
            );
        }
    }

    pub fn touch(&mut self, node: &str) {
        let rv = self.next_rv();
        let step = self.step;
        if let Some(n) = self.nodes.get_mut(node) {
            n.rv = rv;
            let _ = step;
        }
    }

    /// Sets the node's schedulability as `actor` (the ground truth of who cordoned it).
    pub fn set_unschedulable(&mut self, node: &str, value: bool, actor: Actor) {
        let step = self.step;
        let rv = self.next_rv();
        if let Some(n) = self.nodes.get_mut(node) {
            if n.unschedulable != value {
                n.stable_since = step;
                n.cordoned_by = value.then_some(actor);
            }
            n.unschedulable = value;
            n.rv = rv;
        }
    }

    /// Healthy pods of `app` and the disruptions its PDB allows now.
    pub fn disruptions_allowed(&self, app: usize) -> i64 {
        let a = &self.apps[app];
        let Some(min) = a.min_available else {
            return i64::MAX;
        };
        let healthy = self
            .pods
            .values()
            .filter(|p| p.app == Some(app) && p.ready(self.now))
            .count();
        healthy as i64 - min as i64
    }

    /// A PDB that can never allow a disruption (minAvailable ≥ replicas).
    pub fn pdb_never_allows(&self, app: usize) -> bool {
        let a = &self.apps[app];
        a.min_available.is_some_and(|m| m >= a.replicas)
    }

    /// `kubectl rollout undo --to-revision`: the ControllerRevision `revision` becomes
    /// the DaemonSet's current one again. Returns its hash.
    pub fn restore_revision(&mut self, revision: &str) -> String {
        let hash = revision
            .strip_prefix(&format!("{DS_NAME}-"))
            .unwrap_or(revision)
            .to_owned();
        let top = self.revisions.iter().map(|(_, n)| *n).max().unwrap_or(0);
        if let Some(r) = self.revisions.iter_mut().find(|(h, _)| *h == hash) {
            r.1 = top + 1;
        }
        self.ds_generation += 1;
        hash
    }

    /// One tick of the controllers: pods exit, are created, scheduled and become Ready.
    pub fn tick(&mut self) {
        let now = self.now;
        // The kubelet: terminating pods go after their exit delay.
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| {
                p.terminating_since
                    .is_some_and(|t| now >= t + ms(self.timings.pod_exit.1 / 2))
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.pods.remove(&uid);
        }
        // Pods on deleted nodes go.
        let orphaned: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.node.as_ref().is_some_and(|n| !self.nodes.contains_key(n)))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in orphaned {
            self.pods.remove(&uid);
        }
        // The DaemonSet controller (OnDelete): a node that runs ztunnel and has no live
        // pod gets one on the current revision, after a delay.
        let hash = self.current_hash();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let n = &self.nodes[&name];
            let has = self.pods.values().any(|p| {
                p.app.is_none() && p.node.as_deref() == Some(&name) && p.terminating_since.is_none()
            });
            let terminating = self.pods.values().any(|p| {
                p.app.is_none() && p.node.as_deref() == Some(&name) && p.terminating_since.is_some()
            });
            if !n.runs_ztunnel() || has || terminating {
                self.pending_ztunnels.remove(&name);
                continue;
            }
            match self.pending_ztunnels.get(&name) {
                None => {
                    self.pending_ztunnels
                        .insert(name.clone(), now + ms(self.timings.ztunnel_create.0));
                }
                Some(at) if *at <= now => {
                    self.pending_ztunnels.remove(&name);
                    let uid = self.uid("zt");
                    let ready = now + ms(self.timings.ztunnel_ready.0 + 500);
                    self.pods.insert(
                        uid,
                        SimPod {
                            name: format!("ztunnel-{name}-{hash}-{}", self.uids),
                            node: Some(name.clone()),
                            app: None,
                            hash: hash.clone(),
                            created: now,
                            ready_at: Some(ready),
                            terminating_since: None,
                        },
                    );
                }
                Some(_) => {}
            }
        }
        // The ReplicaSet controllers keep their replicas; the scheduler places new pods
        // on Ready, schedulable nodes, preferring nodes without a waiting taint.
        for app in 0..self.apps.len() {
            let live = self
                .pods
                .values()
                .filter(|p| p.app == Some(app) && p.terminating_since.is_none())
                .count();
            for _ in live..self.apps[app].replicas {
                let uid = self.uid("pod");
                self.pods.insert(
                    uid.clone(),
                    SimPod {
                        name: format!("{}-{uid}", self.apps[app].name),
                        node: None,
                        app: Some(app),
                        hash: String::new(),
                        created: now,
                        ready_at: None,
                        terminating_since: None,
                    },
                );
            }
        }
        let unscheduled: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.node.is_none())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in unscheduled {
            let candidates: Vec<&String> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.ready && !n.unschedulable)
                .map(|(name, _)| name)
                .collect();
            let preferred: Vec<&String> = candidates
                .iter()
                .filter(|n| self.nodes[**n].waiting_taint().is_none())
                .copied()
                .collect();
            let pool = if preferred.is_empty() {
                &candidates
            } else {
                &preferred
            };
            if pool.is_empty() {
                continue;
            }
            // Spread: the node with the fewest pods.
            let node = pool
                .iter()
                .min_by_key(|n| {
                    self.pods
                        .values()
                        .filter(|p| p.node.as_deref() == Some(n.as_str()))
                        .count()
                })
                .map(|n| (*n).clone());
            let ready = now + ms(self.timings.pod_ready.0 + 400);
            if let Some(p) = self.pods.get_mut(&uid) {
                p.node = node;
                p.ready_at = Some(ready);
            }
        }
    }

    /// The ControllerRevisions as the API shows them.
    pub fn revision_objects(&self) -> Vec<ControllerRevision> {
        self.revisions
            .iter()
            .map(|(hash, number)| ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(format!("{DS_NAME}-{hash}")),
                    namespace: Some(DS_NAMESPACE.to_owned()),
                    labels: Some(BTreeMap::from([(
                        REVISION_HASH_LABEL.to_owned(),
                        hash.clone(),
                    )])),
                    owner_references: Some(vec![OwnerReference {
                        kind: "DaemonSet".into(),
                        name: DS_NAME.into(),
                        uid: DS_UID.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                revision: *number,
                data: None,
            })
            .collect()
    }

    /// The DaemonSet as the API shows it: OnDelete, Linux nodes only, tolerating what
    /// Istio's chart tolerates except the simulation's no-ztunnel taint.
    pub fn daemon_set(&self) -> DaemonSet {
        let exists = |key: Option<&str>, effect: Option<&str>| Toleration {
            key: key.map(str::to_owned),
            operator: Some("Exists".into()),
            effect: effect.map(str::to_owned),
            ..Default::default()
        };
        DaemonSet {
            metadata: ObjectMeta {
                name: Some(DS_NAME.into()),
                namespace: Some(DS_NAMESPACE.into()),
                uid: Some(DS_UID.into()),
                generation: Some(self.ds_generation),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("OnDelete".into()),
                    ..Default::default()
                }),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        node_selector: Some(BTreeMap::from([(OS.to_owned(), "linux".to_owned())])),
                        tolerations: Some(vec![
                            exists(Some("CriticalAddonsOnly"), None),
                            exists(None, Some("NoExecute")),
                            exists(Some("dedicated"), Some("NoSchedule")),
                        ]),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: Some(DaemonSetStatus {
                observed_generation: Some(self.ds_generation),
                ..Default::default()
            }),
        }
    }

    /// Every node as a Kubernetes object (objects of unchanged nodes are reused).
    pub fn node_map(&mut self) -> Arc<NodeMap> {
        self.built.retain(|name, _| self.nodes.contains_key(name));
        let mut map = NodeMap::new();
        for (name, n) in &self.nodes {
            let obj = match self.built.get(name) {
                Some((rv, obj)) if *rv == n.rv => obj.clone(),
                _ => {
                    let obj = Arc::new(node_object(name, n));
                    self.built.insert(name.clone(), (n.rv, obj.clone()));
                    obj
                }
            };
            map.insert(name.clone(), obj);
        }
        Arc::new(map)
    }

    pub fn ztunnels(&self) -> Arc<ZtunnelsByNode> {
        let mut by_node = ZtunnelsByNode::new();
        for (uid, p) in &self.pods {
            if p.app.is_some() {
                continue;
            }
            let Some(node) = &p.node else { continue };
            by_node.entry(node.clone()).or_default().push(ZtunnelPod {
                name: p.name.clone(),
                uid: uid.clone(),
                revision_hash: p.hash.clone(),
                ready: p.ready(self.now),
                terminating: p.terminating_since.is_some(),
                created: p.created,
            });
        }
        Arc::new(by_node)
    }

    pub fn pod_counts(&self) -> PodCounts {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for p in self.pods.values() {
            if p.app.is_some()
                && p.terminating_since.is_none()
                && let Some(node) = &p.node
            {
                *counts.entry(node.clone()).or_default() += 1;
            }
        }
        Arc::new(counts)
    }

    /// The ztunnel pods (not terminating) on `node`: their hashes.
    pub fn ztunnel_hashes(&self, node: &str) -> Vec<String> {
        self.pods
            .values()
            .filter(|p| {
                p.app.is_none() && p.node.as_deref() == Some(node) && p.terminating_since.is_none()
            })
            .map(|p| p.hash.clone())
            .collect()
    }

    /// Application pods on `node` not terminating.
    pub fn app_pods_on(&self, node: &str) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, p)| {
                p.app.is_some() && p.node.as_deref() == Some(node) && p.terminating_since.is_none()
            })
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    /// Any application pod still on `node` (terminating ones included).
    pub fn any_app_pod_on(&self, node: &str) -> bool {
        self.pods
            .values()
            .any(|p| p.app.is_some() && p.node.as_deref() == Some(node))
    }
}

fn node_object(name: &str, n: &SimNode) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some(n.rv.to_string()),
            labels: Some(n.labels.clone()),
            annotations: Some(n.annotations.clone()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            unschedulable: Some(n.unschedulable),
            taints: Some(n.taints.clone()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if n.ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// What our annotations say of a node: its owner and whether it was unschedulable.
pub fn was_unschedulable(n: &SimNode) -> Option<bool> {
    n.annotations
        .get(WAS_UNSCHEDULABLE_ANNOTATION)
        .map(|v| v == "true")
}
