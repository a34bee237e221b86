//! What a pass reads, gathered from the watch caches: every node (one map, rebuilt only
//! after a node event), each DaemonSet's ztunnel pods by node (updated pod by pod), pod
//! counts per node, the DaemonSet's revisions and the other rollouts. The pure pass
//! (`ztunnel_rollout_core::rollout::pass`) takes it from here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;
use ztunnel_rollout_core::label_selector::Selector;
use ztunnel_rollout_core::rollout::node_machine::ZtunnelPod;
use ztunnel_rollout_core::rollout::pass::{
    Lookups, NodeMap, OtherRollout, PodCounts, ZtunnelsByNode,
};

use super::observe::Observed;
use super::revisioned_pods::RevisionedPod;
use crate::api::ZtunnelRollout;

/// Pod counts per node only order the next starts: counted at most this often (counting
/// walks every pod of the cluster).
const POD_COUNT_MAX_AGE: Duration = Duration::from_secs(5);

/// What passes derive from the caches, kept while the caches do not change.
pub struct Source {
    pub observed: Arc<Observed>,
    nodes: Option<(u64, Arc<NodeMap>)>,
    ztunnels: HashMap<String, ZtunnelIndex>,
    pod_counts: Option<(Instant, PodCounts)>,
}

impl Source {
    pub fn new(observed: Arc<Observed>) -> Self {
        Self {
            observed,
            nodes: None,
            ztunnels: HashMap::new(),
            pod_counts: None,
        }
    }

    /// Every node by name: a new map only after a node event.
    pub fn nodes(&mut self) -> Arc<NodeMap> {
        let events = *self.observed.node_events.borrow();
        match &self.nodes {
            Some((seen, map)) if *seen == events => map.clone(),
            _ => {
                let map: Arc<NodeMap> = Arc::new(
                    self.observed
                        .nodes
                        .state()
                        .into_iter()
                        .map(|n| (n.name_any(), n))
                        .collect(),
                );
                self.nodes = Some((events, map.clone()));
                map
            }
        }
    }

    /// The DaemonSet `ds_uid`'s ztunnel pods by node.
    pub fn ztunnels(&mut self, ds_uid: &str) -> Arc<ZtunnelsByNode> {
        let events = *self.observed.revisioned_pod_events.borrow();
        let observed = self.observed.clone();
        self.ztunnels
            .entry(ds_uid.to_owned())
            .or_insert_with(|| ZtunnelIndex::new(ds_uid))
            .update(events, || observed.revisioned_pods.values())
    }

    /// Evictable pods per node, counted at most every `POD_COUNT_MAX_AGE`.
    pub fn pod_counts(&mut self) -> PodCounts {
        match &self.pod_counts {
            Some((at, counts)) if at.elapsed() < POD_COUNT_MAX_AGE => counts.clone(),
            _ => {
                let counts = Arc::new(self.observed.all_pods.evictable_per_node());
                self.pod_counts = Some((Instant::now(), counts.clone()));
                counts
            }
        }
    }

    /// The ControllerRevisions of the DaemonSet `ds_uid`.
    pub fn revisions(&self, ds_uid: &str) -> Vec<ControllerRevision> {
        self.observed
            .revisions
            .state()
            .iter()
            .filter(|r| {
                r.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == ds_uid)
            })
            .map(|r| r.as_ref().clone())
            .collect()
    }

    pub fn daemon_set(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<k8s_openapi::api::apps::v1::DaemonSet>> {
        self.observed
            .daemon_sets
            .get(&ObjectRef::new(name).within(namespace))
    }
}

/// The rollouts as the other rollouts see them (overlaps).
pub fn others(rollouts: &[Arc<ZtunnelRollout>]) -> Vec<(String, OtherRollout)> {
    rollouts
        .iter()
        .map(|r| {
            let phase = r.status.as_ref().and_then(|s| s.phase.as_deref());
            let finished = matches!(phase, Some("Complete" | "RolledBack" | "Aborted"));
            (
                r.uid().unwrap_or_default(),
                OtherRollout {
                    name: r.name_any(),
                    created: created(r),
                    active: !finished,
                    daemon_set: r.spec.daemon_set.clone(),
                    nodes: match &r.spec.node_selector {
                        Some(ls) => Selector::from_label_selector(ls).ok(),
                        None => Some(Selector::everything()),
                    },
                },
            )
        })
        .collect()
}

pub fn created(r: &ZtunnelRollout) -> Timestamp {
    r.metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

/// Lookups from the watch caches.
pub struct CacheLookups<'a>(pub &'a Observed);

impl Lookups for CacheLookups<'_> {
    fn waypoint_warnings(&self, selector: &Selector) -> Vec<String> {
        crate::health::gates::waypoint_warnings(&super::verify::waypoints(self.0, selector))
    }
}

/// One DaemonSet's ztunnel pods by node, kept up to date pod by pod: the facts cache gives
/// a changed pod a new `Arc`, so unchanged pods are skipped and deleted ones swept.
struct ZtunnelIndex {
    events: Option<u64>,
    ds_uid: String,
    by_node: Arc<ZtunnelsByNode>,
    /// Every pod of the last update by UID: its facts, the node it is a ztunnel pod of,
    /// and the update that saw it.
    seen: HashMap<String, SeenPod>,
    sweep: u64,
}

struct SeenPod {
    pod: Arc<RevisionedPod>,
    ztunnel_of: Option<String>,
    sweep: u64,
}

impl ZtunnelIndex {
    fn new(ds_uid: &str) -> Self {
        Self {
            events: None,
            ds_uid: ds_uid.to_owned(),
            by_node: Arc::default(),
            seen: HashMap::new(),
            sweep: 0,
        }
    }

    /// The pod's node, if it is one of the DaemonSet's ztunnel pods.
    fn ztunnel_of(&self, p: &RevisionedPod) -> Option<(String, ZtunnelPod)> {
        if !p.owned_by(&self.ds_uid) {
            return None;
        }
        Some((p.node.clone()?, p.ztunnel_pod()?))
    }

    /// The index after `events` pod events (`pods`: the pod cache then).
    fn update(
        &mut self,
        events: u64,
        pods: impl FnOnce() -> Vec<Arc<RevisionedPod>>,
    ) -> Arc<ZtunnelsByNode> {
        if self.events == Some(events) {
            return self.by_node.clone();
        }
        self.events = Some(events);
        self.sweep += 1;
        let sweep = self.sweep;
        let mut by_node = std::mem::take(&mut self.by_node);
        // The previous pass's snapshot may still hold the map: then it is copied.
        let map = Arc::make_mut(&mut by_node);
        for pod in pods() {
            let uid = pod.uid.clone();
            if let Some(seen) = self.seen.get_mut(&uid)
                && Arc::ptr_eq(&seen.pod, &pod)
            {
                seen.sweep = sweep;
                continue;
            }
            if let Some(old) = self.seen.remove(&uid) {
                unlist(map, old.ztunnel_of.as_deref(), &uid);
            }
            let ztunnel_of = self.ztunnel_of(&pod).map(|(node, z)| {
                map.entry(node.clone()).or_default().push(z);
                node
            });
            self.seen.insert(
                uid,
                SeenPod {
                    pod,
                    ztunnel_of,
                    sweep,
                },
            );
        }
        self.seen.retain(|uid, seen| {
            let still = seen.sweep == sweep;
            if !still {
                unlist(map, seen.ztunnel_of.as_deref(), uid);
            }
            still
        });
        self.by_node = by_node;
        self.by_node.clone()
    }
}

fn unlist(by_node: &mut ZtunnelsByNode, node: Option<&str>, uid: &str) {
    if let Some(node) = node
        && let Some(pods) = by_node.get_mut(node)
    {
        pods.retain(|p| p.uid != uid);
        if pods.is_empty() {
            by_node.remove(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(uid: &str, node: Option<&str>, ds: &str, ready: bool) -> Arc<RevisionedPod> {
        Arc::new(RevisionedPod {
            name: format!("pod-{uid}"),
            uid: uid.into(),
            controller_uid: Some(ds.into()),
            node: node.map(Into::into),
            revision_hash: Some("h".into()),
            ready,
            terminating: false,
            created: Timestamp::UNIX_EPOCH,
            ip: None,
        })
    }

    fn summary(by_node: &ZtunnelsByNode) -> BTreeMap<String, Vec<(String, bool)>> {
        by_node
            .iter()
            .map(|(node, pods)| {
                let mut pods: Vec<(String, bool)> =
                    pods.iter().map(|p| (p.uid.clone(), p.ready)).collect();
                pods.sort();
                (node.clone(), pods)
            })
            .collect()
    }

    #[test]
    fn the_ztunnel_index_follows_changed_new_and_deleted_pods() {
        let mut index = ZtunnelIndex::new("ds1");
        let a = pod("a", Some("n1"), "ds1", false);
        let b = pod("b", None, "ds1", false);
        let other = pod("o", Some("n1"), "ds2", true);
        let first = index.update(1, || vec![a.clone(), b.clone(), other.clone()]);
        assert_eq!(
            summary(&first),
            [("n1".to_string(), vec![("a".to_string(), false)])].into()
        );
        drop(first);

        // The same event count: not looked at again, whatever the cache holds.
        let same = index.update(1, || panic!("not read"));
        assert_eq!(same.len(), 1);
        drop(same);

        // a is Ready (a new object), b got its node, a third pod appears on n1.
        let a2 = pod("a", Some("n1"), "ds1", true);
        let b2 = pod("b", Some("n2"), "ds1", false);
        let c = pod("c", Some("n1"), "ds1", false);
        let second = index.update(2, || vec![a2.clone(), b2.clone(), c.clone(), other.clone()]);
        assert_eq!(
            summary(&second),
            [
                (
                    "n1".to_string(),
                    vec![("a".to_string(), true), ("c".to_string(), false)]
                ),
                ("n2".to_string(), vec![("b".to_string(), false)]),
            ]
            .into()
        );
        // A snapshot still holding the last map keeps it as it was.
        let held = second.clone();
        drop(second);

        // a and b are gone: n2 has no ztunnel pod left.
        let third = index.update(3, || vec![c.clone(), other.clone()]);
        assert_eq!(
            summary(&third),
            [("n1".to_string(), vec![("c".to_string(), false)])].into()
        );
        assert_eq!(held.len(), 2);
    }
}
