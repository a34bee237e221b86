//! A compact index of every pod — its node, namespace, controller kind, ambient label,
//! host networking and whether it still runs — fed by one watch. The agent needs these
//! few facts of each pod (how many pods a node's drain would evict; which pods ztunnel
//! proxies); a reflector store of `Pod` objects costs ~3 KiB a pod even trimmed (the
//! generated structs reserve every field), the index ~150 bytes. The strings many pods
//! share (namespace, node, controller, DaemonSet, mode, revision) are kept once each, as
//! `Arc<str>`: a map entry (key and facts) went from 200 to 144 bytes, and at 24,000 pods
//! the index's strings had been ~2 MB of heap, most of them these copies
//! (benches/results/heap-profile-1000-2026-12-04-f61cbd8/).

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
/// (a deleted ReplicaSet's uid, a removed node's name) is dropped by the next prune; a
/// prune runs when a new string would take the set to twice what the last prune kept
/// (and at least twice [`PRUNE_FLOOR`]), so the set holds at most about twice the
/// strings in use at its largest, and each prune is paid for by as many new strings.
#[derive(Debug, Default)]
pub struct SharedStrings {
    strings: HashSet<Arc<str>>,
    /// Strings the last prune kept.
    pruned_at: usize,
    #[cfg(test)]
    prunes: usize,
}

/// A set under twice this many strings is not pruned.
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
            #[cfg(test)]
            {
                self.prunes += 1;
            }
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
                let Some(node) = p.node.as_deref() else {
                    continue;
                };
                // A key is allocated once per node, not once per pod.
                match counts.get_mut(node) {
                    Some(count) => *count += 1,
                    None => {
                        counts.insert(node.to_owned(), 1);
                    }
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

    /// A running pod of DaemonSet `ds` (uid `ds_uid`) on `node`, in ambient mode, its
    /// sidecar injected from revision `canary`.
    fn pod_on(name: &str, namespace: &str, node: &str, ds_uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                "labels": { "istio.io/dataplane-mode": "ambient" },
                "annotations": { "sidecar.istio.io/status": "{\"revision\":\"canary\"}" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": ds_uid, "controller": true }]
            },
            "spec": { "nodeName": node, "containers": [] },
            "status": { "phase": "Running" }
        }))
        .unwrap()
    }

    fn same(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
        Arc::ptr_eq(a.as_ref().unwrap(), b.as_ref().unwrap())
    }

    #[test]
    fn pods_share_one_copy_of_each_string_but_their_names() {
        let mut strings = SharedStrings::default();
        let a = PodFacts::of(&pod_on("a", "shop", "n1", "ds-1"), &mut strings);
        let b = PodFacts::of(&pod_on("b", "shop", "n1", "ds-1"), &mut strings);
        let c = PodFacts::of(&pod_on("c", "bank", "n2", "ds-2"), &mut strings);
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
        assert!(same(&a.node, &b.node));
        assert!(same(&a.controller_uid, &b.controller_uid));
        assert!(same(&a.daemon_set, &c.daemon_set));
        assert!(same(&a.dataplane_mode, &c.dataplane_mode));
        assert!(same(&a.injected_revision, &c.injected_revision));
        assert_eq!(a.injected_revision.as_deref(), Some("canary"));
        assert_eq!(&*c.namespace, "bank");
        assert_eq!(c.node.as_deref(), Some("n2"));
        assert_eq!(c.controller_uid.as_deref(), Some("ds-2"));
        // shop, n1, ds-1, ds, ambient, canary, bank, n2, ds-2: no name.
        assert_eq!(strings.len(), 9);
    }

    #[test]
    fn strings_no_pod_holds_are_dropped_and_the_set_stays_bounded() {
        let mut strings = SharedStrings::default();
        let kept = PodFacts::of(&pod_on("kept", "shop", "n-kept", "ds-kept"), &mut strings);
        // Pods come and go, each on its own node under its own DaemonSet: 20,000 new
        // strings, none held for long.
        let churn = 10_000;
        for i in 0..churn {
            let gone = PodFacts::of(
                &pod_on(
                    &format!("p{i}"),
                    "shop",
                    &format!("n{i}"),
                    &format!("ds{i}"),
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
        // Each prune is paid for by as many new strings: not one per string.
        assert!(strings.prunes >= 1);
        assert!(
            strings.prunes <= 2 * churn / PRUNE_FLOOR,
            "{} prunes",
            strings.prunes
        );
        // What a live pod holds survived every prune, and is still the one copy.
        let again = PodFacts::of(&pod_on("again", "shop", "n-kept", "ds-kept"), &mut strings);
        assert!(same(&kept.node, &again.node));
        assert!(same(&kept.controller_uid, &again.controller_uid));
        assert!(same(&kept.injected_revision, &again.injected_revision));
        assert!(Arc::ptr_eq(&kept.namespace, &again.namespace));
    }

    #[test]
    fn strings_in_use_are_never_pruned_and_the_set_grows_with_them() {
        let mut strings = SharedStrings::default();
        let held: Vec<PodFacts> = (0..3 * PRUNE_FLOOR)
            .map(|i| {
                PodFacts::of(
                    &pod_on(&format!("p{i}"), "shop", &format!("n{i}"), "ds-1"),
                    &mut strings,
                )
            })
            .collect();
        // shop, ds-1, ds, ambient, canary and a node per pod: all in use.
        assert_eq!(strings.len(), 3 * PRUNE_FLOOR + 5);
        assert!(strings.prunes >= 1);
        for (i, f) in held.iter().enumerate() {
            let again = strings.get(&format!("n{i}"));
            assert!(Arc::ptr_eq(f.node.as_ref().unwrap(), &again));
        }
    }
}
