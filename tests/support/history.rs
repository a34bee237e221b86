//! What a watch of a test's nodes saw, change by change: who owned each node (our
//! annotation) and whether it was cordoned, to judge a run from the API server's state
//! over its whole course rather than only at its end.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use ztunnel_rollout_core::labels::OWNER_ANNOTATION;
use ztunnel_rollout_testbed::fixtures::NODE_SET_LABEL;

use super::TestEnv;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub unschedulable: bool,
    pub owner: Option<String>,
}

/// A change as the API server ordered it: its resourceVersion (one etcd revision
/// counter for every object of this test cluster, so changes of a node and of a pod
/// compare).
pub type Revision = u64;

fn revision(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Revision {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Every state each node of the env was seen in, in order.
#[derive(Default, Debug)]
pub struct Seen {
    pub states: BTreeMap<String, Vec<NodeState>>,
}

impl Seen {
    /// Every rollout that owned a node at some point.
    pub fn owners(&self) -> BTreeSet<String> {
        self.states
            .values()
            .flatten()
            .filter_map(|s| s.owner.clone())
            .collect()
    }

    /// Whether `node` was ever cordoned.
    pub fn ever_cordoned(&self, node: &str) -> bool {
        self.states
            .get(node)
            .is_some_and(|v| v.iter().any(|s| s.unschedulable))
    }
}

/// A watch of `env`'s nodes recording every change until dropped.
pub struct NodeHistory {
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
    /// Changes seen so far, in order across nodes: (node, state).
    pub log: Arc<Mutex<Vec<(String, NodeState)>>>,
    /// The same changes with their revisions.
    pub revisions: Arc<Mutex<Vec<(Revision, String, NodeState)>>>,
}

impl Drop for NodeHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NodeHistory {
    pub fn start(env: &TestEnv) -> NodeHistory {
        Self::watch(&env.client, &format!("{NODE_SET_LABEL}={}", env.node_set))
    }

    /// The nodes `selector` (a label selector) picks, of any test's.
    pub fn watch(client: &kube::Client, selector: &str) -> NodeHistory {
        let api: Api<Node> = Api::all(client.clone());
        let config = watcher::Config::default().labels(selector);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let revisions = Arc::new(Mutex::new(Vec::new()));
        let (s, l, r) = (seen.clone(), log.clone(), revisions.clone());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(api, config).applied_objects());
            while let Some(n) = stream.next().await {
                let Ok(n) = n else { continue };
                let state = NodeState {
                    unschedulable: n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
                    owner: n.annotations().get(OWNER_ANNOTATION).cloned(),
                };
                let name = n.name_any();
                let mut seen = s.lock().expect("lock");
                let states = seen.states.entry(name.clone()).or_default();
                if states.last() != Some(&state) {
                    states.push(state.clone());
                    r.lock().expect("lock").push((
                        revision(&n.metadata),
                        name.clone(),
                        state.clone(),
                    ));
                    l.lock().expect("lock").push((name, state));
                }
            }
        });
        NodeHistory {
            seen,
            task,
            log,
            revisions,
        }
    }

    pub fn owners(&self) -> BTreeSet<String> {
        self.seen.lock().expect("lock").owners()
    }

    pub fn ever_cordoned(&self, node: &str) -> bool {
        self.seen.lock().expect("lock").ever_cordoned(node)
    }

    /// Nodes in the order the rollout `owner` first owned them (by the API server's
    /// order of the changes).
    pub fn owned_order(&self, owner: &str) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        let mut changes = self.revisions.lock().expect("lock").clone();
        changes.sort_by_key(|(rv, _, _)| *rv);
        for (_, node, state) in changes {
            if state.owner.as_deref() == Some(owner) && !order.contains(&node) {
                order.push(node);
            }
        }
        order
    }

    /// The revision at which a rollout last took `node` (its ownership annotation
    /// appeared).
    pub fn last_taken(&self, node: &str) -> Option<Revision> {
        let mut changes: Vec<(Revision, NodeState)> = self
            .revisions
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, n, _)| n == node)
            .map(|(rv, _, s)| (*rv, s.clone()))
            .collect();
        changes.sort_by_key(|(rv, _)| *rv);
        let mut owned = false;
        let mut last = None;
        for (rv, s) in changes {
            if s.owner.is_some() && !owned {
                last = Some(rv);
            }
            owned = s.owner.is_some();
        }
        last
    }

    /// How many times `node` went from schedulable to cordoned, in the API server's
    /// order of its changes.
    pub fn cordons(&self, node: &str) -> usize {
        let mut changes: Vec<(Revision, bool)> = self
            .revisions
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, n, _)| n == node)
            .map(|(rv, _, s)| (*rv, s.unschedulable))
            .collect();
        changes.sort_by_key(|(rv, _)| *rv);
        let mut before = false;
        let mut count = 0;
        for (_, cordoned) in changes {
            if cordoned && !before {
                count += 1;
            }
            before = cordoned;
        }
        count
    }

    /// `node`'s state just before revision `at` (its last change at an earlier one).
    pub fn state_before(&self, node: &str, at: Revision) -> Option<NodeState> {
        self.revisions
            .lock()
            .expect("lock")
            .iter()
            .filter(|(rv, n, _)| n == node && *rv < at)
            .max_by_key(|(rv, _, _)| *rv)
            .map(|(_, _, s)| s.clone())
    }
}

/// The pods of `deletions` marked for deletion while their node was not cordoned by
/// rollout `owner` (by the API server's order of the node's and the pod's changes), with
/// the node's state then: what must never happen to a ztunnel pod.
pub fn deleted_off_a_cordon(
    history: &NodeHistory,
    deletions: &PodDeletions,
    owner: &str,
) -> Vec<(String, String, Option<NodeState>)> {
    let deleted = deletions.seen.lock().expect("lock").clone();
    deleted
        .into_iter()
        .filter_map(|(rv, pod, node)| {
            let state = history.state_before(&node, rv);
            let cordoned = state
                .as_ref()
                .is_some_and(|s| s.unschedulable && s.owner.as_deref() == Some(owner));
            (!cordoned).then_some((pod, node, state))
        })
        .collect()
}

/// The revisions at which pods of `env`'s namespace matching a label selector were
/// marked for deletion (deleted or evicted), by pod name, with their node.
pub struct PodDeletions {
    pub seen: Arc<Mutex<Vec<(Revision, String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodDeletions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodDeletions {
    pub fn start(env: &TestEnv, labels: &str) -> PodDeletions {
        Self::watch(&env.client, &env.namespace, labels)
    }

    /// The pods of `namespace` matching `labels`, of any test's.
    pub fn watch(client: &kube::Client, namespace: &str, labels: &str) -> PodDeletions {
        use k8s_openapi::api::core::v1::Pod;
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default().labels(labels);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let mut marked = BTreeSet::new();
            let mut stream = std::pin::pin!(watcher(api, config).applied_objects());
            while let Some(p) = stream.next().await {
                let Ok(p) = p else { continue };
                if p.metadata.deletion_timestamp.is_some() && marked.insert(p.name_any()) {
                    let node = p
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default();
                    s.lock()
                        .expect("lock")
                        .push((revision(&p.metadata), p.name_any(), node));
                }
            }
        });
        PodDeletions { seen, task }
    }
}
