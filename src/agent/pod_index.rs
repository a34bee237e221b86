//! A compact index of every pod — its node, namespace, controller kind, ambient label,
//! host networking and whether it still runs — fed by one watch. The agent needs these
//! few facts of each pod (how many pods a node's drain would evict; which pods ztunnel
//! proxies); a reflector store of `Pod` objects costs ~3 KiB a pod even trimmed (the
//! generated structs reserve every field), the index ~150 bytes. The strings many pods
//! share (namespace, node, controller, DaemonSet, mode, revision) are kept once each: at
//! 24,000 pods a copy per pod was ~2.7 MB of heap and a third of each entry's size.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

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
    pub name: Box<str>,
    pub namespace: Arc<str>,
    pub node: Option<Arc<str>>,
    /// Uid of the controller owning it, and whether that is a DaemonSet.
    pub controller_uid: Option<Arc<str>>,
    pub daemon: bool,
    /// The DaemonSet's name, when a DaemonSet owns it (the workload name Istio gives
    /// its pods).
    pub daemon_set: Option<Arc<str>>,
    /// A static pod (its mirror in the API): the kubelet runs it from a file, no drain
    /// moves it.
    pub static_pod: bool,
    /// `istio.io/dataplane-mode` on the pod.
    pub dataplane_mode: Option<Arc<str>>,
    pub host_network: bool,
    /// Neither finished (Succeeded/Failed) nor being deleted.
    pub active: bool,
    pub running: bool,
    /// The revision its sidecar was injected from, if it has one.
    pub injected_revision: Option<Arc<str>>,
    /// Labelled or annotated `sidecar.istio.io/inject=false`.
    pub injection_opted_out: bool,
    /// Owned by a ReplicaSet, StatefulSet or DaemonSet: a workload restart replaces it.
    pub restartable: bool,
}

impl PodFacts {
    /// The pod's facts, its shared strings taken from (or added to) `strings`.
    pub fn of(p: &Pod, strings: &mut SharedStrings) -> Self {
        let controller = p
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true));
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        let mut shared = |s: &str| strings.get(s);
        Self {
            name: p.name_any().into_boxed_str(),
            namespace: shared(p.metadata.namespace.as_deref().unwrap_or_default()),
            node: p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .map(&mut shared),
            controller_uid: controller.map(|o| shared(&o.uid)),
            daemon: controller.is_some_and(|o| o.kind == "DaemonSet"),
            daemon_set: controller
                .filter(|o| o.kind == "DaemonSet")
                .map(|o| shared(&o.name)),
            static_pod: p.annotations().contains_key(MIRROR_POD_ANNOTATION)
                || controller.is_some_and(|o| o.kind == "Node"),
            dataplane_mode: p.labels().get(DATAPLANE_MODE_LABEL).map(|m| shared(m)),
            host_network: p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            active: p.metadata.deletion_timestamp.is_none()
                && !matches!(phase, Some("Succeeded" | "Failed")),
            running: phase == Some("Running"),
            injected_revision: injected_revision(p).map(|r| shared(&r)),
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

/// Strings many pods' facts share, one copy of each. A string no fact holds any more
/// (a deleted ReplicaSet's uid, a removed node's name) is dropped once the set has
/// doubled since it was last pruned, so it stays within twice the strings in use.
#[derive(Debug, Default)]
pub struct SharedStrings {
    strings: HashSet<Arc<str>>,
    /// Strings kept after the last prune (at least a floor, so small sets never prune).
    pruned_at: usize,
}

/// Below this many strings the set is never pruned.
const PRUNE_FLOOR: usize = 1024;

impl SharedStrings {
    /// The one copy of `s`.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(kept) = self.strings.get(s) {
            return kept.clone();
        }
        if self.strings.len() >= 2 * self.pruned_at.max(PRUNE_FLOOR) {
            // Only the set holds such a string: nothing reads it.
            self.strings.retain(|kept| Arc::strong_count(kept) > 1);
            self.pruned_at = self.strings.len();
        }
        let kept: Arc<str> = Arc::from(s);
        self.strings.insert(kept.clone());
        kept
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.strings.len()
    }
}

/// Pods by uid, kept current by a watch.
#[derive(Clone)]
pub struct PodIndex {
    pods: FactStore<PodFacts>,
}

impl PodIndex {
    pub fn start(api: Api<Pod>) -> (Self, JoinHandle<()>) {
        let mut strings = SharedStrings::default();
        let (pods, task) = watch_facts::spawn(
            api,
            watch_cache::config(),
            move |p: &Pod| PodFacts::of(p, &mut strings),
            || {},
        );
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
                    *counts.entry(node.to_string()).or_default() += 1;
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
                .filter(|p| &*p.namespace == namespace && p.active && p.restartable)
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
        let mut strings = SharedStrings::default();
        let f = PodFacts::of(&p, &mut strings);
        assert_eq!(&*f.namespace, "shop");
        assert_eq!(f.node.as_deref(), Some("n1"));
        assert_eq!(f.controller_uid.as_deref(), Some("rs"));
        assert!(!f.daemon && f.active && f.running && !f.host_network);
        assert_eq!(f.dataplane_mode.as_deref(), Some("ambient"));
        assert_eq!(&*f.name, "web-1");
        assert!(f.restartable && !f.injection_opted_out);
        assert_eq!(f.injected_revision, None);
        let mut done = p.clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!PodFacts::of(&done, &mut strings).active);
    }

    fn pod_on(name: &str, namespace: &str, node: &str, controller_uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": controller_uid, "controller": true }]
            },
            "spec": { "nodeName": node, "containers": [] },
            "status": { "phase": "Running" }
        }))
        .unwrap()
    }

    #[test]
    fn pods_share_one_copy_of_their_namespace_node_and_controller() {
        let mut strings = SharedStrings::default();
        let a = PodFacts::of(&pod_on("a", "shop", "n1", "rs-1"), &mut strings);
        let b = PodFacts::of(&pod_on("b", "shop", "n1", "rs-1"), &mut strings);
        let c = PodFacts::of(&pod_on("c", "bank", "n2", "rs-2"), &mut strings);
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(Arc::ptr_eq(
            a.node.as_ref().unwrap(),
            b.node.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            a.controller_uid.as_ref().unwrap(),
            b.controller_uid.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            a.daemon_set.as_ref().unwrap(),
            c.daemon_set.as_ref().unwrap()
        ));
        assert_eq!(&*c.namespace, "bank");
        assert_eq!(c.node.as_deref(), Some("n2"));
        // shop, n1, rs-1, ds, bank, n2, rs-2: names are not shared.
        assert_eq!(strings.len(), 7);
    }

    #[test]
    fn strings_no_pod_holds_are_dropped_and_the_set_stays_bounded() {
        let mut strings = SharedStrings::default();
        let kept = PodFacts::of(&pod_on("kept", "shop", "n-kept", "rs-kept"), &mut strings);
        // Pods come and go, each on its own node under its own controller: 20,000
        // strings, none held for long.
        for i in 0..10_000 {
            let gone = PodFacts::of(
                &pod_on(
                    &format!("p{i}"),
                    "shop",
                    &format!("n{i}"),
                    &format!("rs{i}"),
                ),
                &mut strings,
            );
            drop(gone);
            assert!(
                strings.len() <= 2 * PRUNE_FLOOR + 1,
                "{} strings",
                strings.len()
            );
        }
        // What a live pod holds survived every prune, and is still the one copy.
        let again = PodFacts::of(&pod_on("again", "shop", "n-kept", "rs-kept"), &mut strings);
        assert!(Arc::ptr_eq(
            kept.node.as_ref().unwrap(),
            again.node.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            kept.controller_uid.as_ref().unwrap(),
            again.controller_uid.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&kept.namespace, &again.namespace));
    }

    #[test]
    fn strings_in_use_are_never_pruned_and_the_set_grows_with_them() {
        let mut strings = SharedStrings::default();
        let held: Vec<PodFacts> = (0..3 * PRUNE_FLOOR)
            .map(|i| {
                PodFacts::of(
                    &pod_on(&format!("p{i}"), "shop", &format!("n{i}"), "rs"),
                    &mut strings,
                )
            })
            .collect();
        // shop, rs, ds and a node per pod: all in use.
        assert_eq!(strings.len(), 3 * PRUNE_FLOOR + 3);
        for (i, f) in held.iter().enumerate() {
            let again = strings.get(&format!("n{i}"));
            assert!(Arc::ptr_eq(f.node.as_ref().unwrap(), &again));
        }
    }
}
