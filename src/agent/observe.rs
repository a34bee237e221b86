//! What the agent watches: nodes, DaemonSet pods, DaemonSets, their ControllerRevisions
//! and the rollouts — each a reflector store fed by one watch, trimmed to the fields the
//! decisions read. Every change wakes the reconcile loop; nothing is polled.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::api::ztunnel_rollout::ZtunnelRollout;
use crate::rollout::revision::REVISION_HASH_LABEL;
use crate::watch_cache;

pub struct Observed {
    pub nodes: Store<Node>,
    /// Pods carrying a `controller-revision-hash` label: DaemonSet (and StatefulSet)
    /// pods, among them every ztunnel pod, but not the applications' Deployment pods.
    pub revisioned_pods: Store<Pod>,
    /// Every pod, trimmed to its node and owner: how many pods each node's drain would
    /// evict. Its events do not wake the loop (the counts only order the next starts).
    pub all_pods: Store<Pod>,
    pub daemon_sets: Store<DaemonSet>,
    pub revisions: Store<ControllerRevision>,
    pub rollouts: Store<ZtunnelRollout>,
    /// Notified on every watch event.
    pub changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Observed {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A cache whose events wake the reconcile loop (`changed`), or nobody.
fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    changed: Option<Arc<Notify>>,
) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watch_cache::spawn(api, config, trim, move || {
        if let Some(c) = &changed {
            c.notify_one();
        }
    })
}

fn trim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    if let Some(s) = n.status.as_mut() {
        s.images = None;
        s.volumes_attached = None;
        s.volumes_in_use = None;
    }
}

/// Keeps what the node machine reads: owner, node, revision label, readiness, deletion.
fn trim_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.spec = p.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        ..Default::default()
    });
    p.status = p.status.take().map(|s| PodStatus {
        conditions: s.conditions,
        phase: s.phase,
        ..Default::default()
    });
}

/// Keeps the node, owners and phase.
fn trim_any_pod(p: &mut Pod) {
    trim_pod(p);
    p.metadata.labels = None;
    p.status = p.status.take().map(|s| PodStatus {
        phase: s.phase,
        ..Default::default()
    });
}

fn trim_daemon_set(d: &mut DaemonSet) {
    d.metadata.managed_fields = None;
}

/// A revision's `data` is the whole pod template; only its number, owner and hash count.
fn trim_revision(r: &mut ControllerRevision) {
    r.metadata.managed_fields = None;
    r.data = None;
}

fn trim_rollout(r: &mut ZtunnelRollout) {
    r.metadata.managed_fields = None;
}

impl Observed {
    /// `rollout_selector` limits the agent to the rollouts it matches (a label selector),
    /// so several agents can share a cluster.
    pub fn start(client: &Client, rollout_selector: Option<&str>) -> Self {
        let changed = Arc::new(Notify::new());
        let (nodes, t1) = spawn(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            trim_node,
            Some(changed.clone()),
        );
        let (revisioned_pods, t2) = spawn(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(REVISION_HASH_LABEL),
            trim_pod,
            Some(changed.clone()),
        );
        let (all_pods, t6) = spawn(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            trim_any_pod,
            None,
        );
        let (daemon_sets, t3) = spawn(
            Api::<DaemonSet>::all(client.clone()),
            watcher::Config::default(),
            trim_daemon_set,
            Some(changed.clone()),
        );
        let (revisions, t4) = spawn(
            Api::<ControllerRevision>::all(client.clone()),
            watcher::Config::default(),
            trim_revision,
            Some(changed.clone()),
        );
        let rollout_config = match rollout_selector {
            Some(s) => watcher::Config::default().labels(s),
            None => watcher::Config::default(),
        };
        let (rollouts, t5) = spawn(
            Api::<ZtunnelRollout>::all(client.clone()),
            rollout_config,
            trim_rollout,
            Some(changed.clone()),
        );
        Self {
            nodes,
            revisioned_pods,
            all_pods,
            daemon_sets,
            revisions,
            rollouts,
            changed,
            tasks: vec![t1, t2, t3, t4, t5, t6],
        }
    }

    /// Returns once every watch has listed its objects.
    pub async fn synced(&self) {
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.revisioned_pods.wait_until_ready().await;
        let _ = self.all_pods.wait_until_ready().await;
        let _ = self.daemon_sets.wait_until_ready().await;
        let _ = self.revisions.wait_until_ready().await;
        let _ = self.rollouts.wait_until_ready().await;
    }
}
