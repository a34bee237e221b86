//! A compact index of every pod — its node, namespace, controller kind, ambient label,
//! host networking and whether it still runs — fed by one watch. The agent needs these
//! few facts of each pod (how many pods a node's drain would evict; which pods ztunnel
//! proxies); a reflector store of `Pod` objects costs ~3 KiB a pod even trimmed (the
//! generated structs reserve every field), the index ~150 bytes.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use tokio::task::JoinHandle;

use crate::watch_cache;
use crate::watch_facts::{self, FactStore};
use ztunnel_rollout_core::labels::{DATAPLANE_MODE_LABEL, INJECT_LABEL, MIRROR_POD_ANNOTATION};
use ztunnel_rollout_core::sidecar::revisions::injected_revision;

/// What the agent keeps of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    pub namespace: String,
    pub node: Option<String>,
    /// Uid of the controller owning it, and whether that is a DaemonSet.
    pub controller_uid: Option<String>,
    pub daemon: bool,
    /// The DaemonSet's name, when a DaemonSet owns it (the workload name Istio gives
    /// its pods).
    pub daemon_set: Option<String>,
    /// A static pod (its mirror in the API): the kubelet runs it from a file, no drain
    /// moves it.
    pub static_pod: bool,
    /// `istio.io/dataplane-mode` on the pod.
    pub dataplane_mode: Option<String>,
    pub host_network: bool,
    /// Neither finished (Succeeded/Failed) nor being deleted.
    pub active: bool,
    pub running: bool,
    /// The revision its sidecar was injected from, if it has one.
    pub injected_revision: Option<String>,
    /// Labelled or annotated `sidecar.istio.io/inject=false`.
    pub injection_opted_out: bool,
    /// Owned by a ReplicaSet, StatefulSet or DaemonSet: a workload restart replaces it.
    pub restartable: bool,
}

impl PodFacts {
    pub fn of(p: &Pod) -> Self {
        let controller = p
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true));
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        Self {
            name: p.name_any(),
            namespace: p.namespace().unwrap_or_default(),
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            controller_uid: controller.map(|o| o.uid.clone()),
            daemon: controller.is_some_and(|o| o.kind == "DaemonSet"),
            daemon_set: controller
                .filter(|o| o.kind == "DaemonSet")
                .map(|o| o.name.clone()),
            static_pod: p.annotations().contains_key(MIRROR_POD_ANNOTATION)
                || controller.is_some_and(|o| o.kind == "Node"),
            dataplane_mode: p.labels().get(DATAPLANE_MODE_LABEL).cloned(),
            host_network: p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            active: p.metadata.deletion_timestamp.is_none()
                && !matches!(phase, Some("Succeeded" | "Failed")),
            running: phase == Some("Running"),
            injected_revision: injected_revision(p),
            injection_opted_out: p.labels().get(INJECT_LABEL).is_some_and(|v| v == "false")
                || p.annotations()
                    .get(INJECT_LABEL)
                    .is_some_and(|v| v == "false"),
            restartable: controller.is_some_and(|o| {
                matches!(o.kind.as_str(), "ReplicaSet" | "StatefulSet" | "DaemonSet")
            }),
        }
    }
}

/// Pods by uid, kept current by a watch.
#[derive(Clone)]
pub struct PodIndex {
    pods: FactStore<PodFacts>,
}

impl PodIndex {
    pub fn start(api: Api<Pod>) -> (Self, JoinHandle<()>) {
        let (pods, task) = watch_facts::spawn(api, watch_cache::config(), PodFacts::of, || {});
        (Self { pods }, task)
    }

    /// Returns once the first list is in.
    pub async fn synced(&self) {
        self.pods.synced().await;
    }

    /// Pods a drain of each node would evict: active, not DaemonSet pods.
    pub fn evictable_per_node(&self) -> HashMap<String, usize> {
        self.pods.with(|all| {
            let mut counts = HashMap::new();
            for p in all.values().filter(|p| p.active && !p.daemon) {
                if let Some(node) = &p.node {
                    *counts.entry(node.clone()).or_default() += 1;
                }
            }
            counts
        })
    }

    /// The active pods of `namespace` that a restart of their workload replaces, that
    /// did not opt out of injection and are not on the host network.
    pub fn restartable_in(&self, namespace: &str) -> Vec<PodFacts> {
        self.pods.with(|all| {
            all.values()
                .filter(|p| p.namespace == namespace && p.active && p.restartable)
                .filter(|p| !p.injection_opted_out && !p.host_network)
                .cloned()
                .collect()
        })
    }

    /// The running pods on `node`, excluding those of the controller `except_uid`.
    pub fn running_on(&self, node: &str, except_uid: &str) -> Vec<PodFacts> {
        self.pods.with(|all| {
            all.values()
                .filter(|p| p.node.as_deref() == Some(node) && p.running && p.active)
                .filter(|p| p.controller_uid.as_deref() != Some(except_uid))
                .cloned()
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_facts_of_a_pod() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": { "istio.io/dataplane-mode": "ambient", "app": "web" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-x", "uid": "rs", "controller": true }]
            },
            "spec": { "nodeName": "n1", "containers": [] },
            "status": { "phase": "Running" }
        }))
        .unwrap();
        let f = PodFacts::of(&p);
        assert_eq!(f.node.as_deref(), Some("n1"));
        assert_eq!(f.controller_uid.as_deref(), Some("rs"));
        assert!(!f.daemon && f.active && f.running && !f.host_network);
        assert_eq!(f.dataplane_mode.as_deref(), Some("ambient"));
        assert_eq!(f.name, "web-1");
        assert!(f.restartable && !f.injection_opted_out);
        assert_eq!(f.injected_revision, None);
        let mut done = p.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!PodFacts::of(&done).active);
    }
}
