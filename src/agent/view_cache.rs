//! What a reconcile pass derives from the watched nodes and ztunnel pods (the rollout's
//! nodes, their ztunnel pods, the waves, the planner's observations), kept between
//! passes and rebuilt only when what it was derived from changed. At 1,000 nodes,
//! rebuilding all of it on every pass was half of the agent's CPU (BENCHMARKS.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::label_selector::Selector;
use crate::rollout::node_machine::ZtunnelPod;
use crate::rollout::planner::{NodeObservation, Wave, WavePolicy};

/// Nodes by name.
pub type NodeMap = BTreeMap<String, Arc<Node>>;
/// A DaemonSet's ztunnel pods by node name.
pub type ZtunnelsByNode = HashMap<String, Vec<ZtunnelPod>>;
/// Evictable pods by node name.
pub type PodCounts = Arc<HashMap<String, usize>>;

/// The waves of a rollout's nodes, and each node's wave.
#[derive(Debug, Default)]
pub struct Waves {
    pub waves: Vec<Wave>,
    pub wave_of: HashMap<String, String>,
}

/// An `Arc` compared by address: "derived from this very value".
#[derive(Debug)]
struct Same<T>(Arc<T>);

impl<T> PartialEq for Same<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A value and what it was derived from.
struct Derived<K, V> {
    from: K,
    value: V,
}

fn derive<K: PartialEq, V: Clone>(
    slot: &mut Option<Derived<K, V>>,
    from: K,
    build: impl FnOnce() -> V,
) -> V {
    if let Some(d) = slot
        && d.from == from
    {
        return d.value.clone();
    }
    let value = build();
    *slot = Some(Derived {
        from,
        value: value.clone(),
    });
    value
}

/// The selection and the started nodes outside it.
type NodesKey = (Same<NodeMap>, Vec<String>);
type WavesKey = (Same<NodeMap>, WavePolicy);
type ObservationsKey = (Same<NodeMap>, Same<HashMap<String, usize>>, String);

#[derive(Default)]
pub struct ViewCache {
    selected: Option<Derived<(u64, Selector), Arc<NodeMap>>>,
    nodes: Option<Derived<NodesKey, Arc<NodeMap>>>,
    ztunnels: Option<ZtunnelIndex>,
    waves: Option<Derived<WavesKey, Arc<Waves>>>,
    /// Lent to one pass at a time (`take_observations`, `keep_observations`): the pass
    /// refreshes what its steps change in place.
    observations: Option<Derived<ObservationsKey, Vec<NodeObservation>>>,
}

impl ViewCache {
    /// The nodes `selector` matches, from the node cache after `node_events` events.
    pub fn selected(
        &mut self,
        node_events: u64,
        selector: &Selector,
        build: impl FnOnce() -> NodeMap,
    ) -> Arc<NodeMap> {
        derive(&mut self.selected, (node_events, selector.clone()), || {
            Arc::new(build())
        })
    }

    /// `selected` plus the nodes named in `extra`: the same map as long as both are.
    pub fn nodes(
        &mut self,
        selected: &Arc<NodeMap>,
        extra: Vec<String>,
        add: impl FnOnce(&mut NodeMap, &[String]),
    ) -> Arc<NodeMap> {
        let base = selected.clone();
        derive(
            &mut self.nodes,
            (Same(selected.clone()), extra.clone()),
            || {
                if extra.is_empty() {
                    return base;
                }
                let mut nodes = (*base).clone();
                add(&mut nodes, &extra);
                Arc::new(nodes)
            },
        )
    }

    /// The DaemonSet `ds_uid`'s ztunnel pods, from `pods` (the pod cache after
    /// `pod_events` events); `ztunnel` tells a pod's node and what the node machine sees
    /// of it, if it is one of the DaemonSet's. Only pods whose object changed since the
    /// last call are looked at again.
    pub fn ztunnels(
        &mut self,
        pod_events: u64,
        ds_uid: &str,
        pods: impl FnOnce() -> Vec<Arc<Pod>>,
        ztunnel: impl Fn(&Pod) -> Option<(String, ZtunnelPod)>,
    ) -> Arc<ZtunnelsByNode> {
        let index = match &mut self.ztunnels {
            Some(index) if index.ds_uid == ds_uid => index,
            slot => slot.insert(ZtunnelIndex {
                events: None,
                ds_uid: ds_uid.to_owned(),
                by_node: Arc::default(),
                seen: HashMap::new(),
                sweep: 0,
            }),
        };
        if index.events != Some(pod_events) {
            index.update(pods(), ztunnel);
            index.events = Some(pod_events);
        }
        index.by_node.clone()
    }

    /// The observations of `nodes` with `pods`, if the last pass left them; their
    /// progress and cordons are the last pass's and need refreshing.
    pub fn take_observations(
        &mut self,
        nodes: &Arc<NodeMap>,
        pods: &PodCounts,
        group_by: &str,
    ) -> Option<Vec<NodeObservation>> {
        let key = (Same(nodes.clone()), Same(pods.clone()), group_by.to_owned());
        match self.observations.take() {
            Some(d) if d.from == key => Some(d.value),
            _ => None,
        }
    }

    pub fn keep_observations(
        &mut self,
        nodes: &Arc<NodeMap>,
        pods: &PodCounts,
        group_by: &str,
        observations: Vec<NodeObservation>,
    ) {
        self.observations = Some(Derived {
            from: (Same(nodes.clone()), Same(pods.clone()), group_by.to_owned()),
            value: observations,
        });
    }

    pub fn waves(
        &mut self,
        nodes: &Arc<NodeMap>,
        policy: &WavePolicy,
        build: impl FnOnce() -> Waves,
    ) -> Arc<Waves> {
        derive(
            &mut self.waves,
            (Same(nodes.clone()), policy.clone()),
            || Arc::new(build()),
        )
    }
}

/// One DaemonSet's ztunnel pods by node, kept up to date pod by pod.
struct ZtunnelIndex {
    events: Option<u64>,
    ds_uid: String,
    by_node: Arc<ZtunnelsByNode>,
    /// Every pod of the last update by UID: its object (the watch replaces the `Arc` of a
    /// pod that changed), the node it is a ztunnel pod of, and the update that saw it.
    seen: HashMap<String, SeenPod>,
    sweep: u64,
}

struct SeenPod {
    pod: Arc<Pod>,
    ztunnel_of: Option<String>,
    sweep: u64,
}

impl ZtunnelIndex {
    fn update(
        &mut self,
        pods: Vec<Arc<Pod>>,
        ztunnel: impl Fn(&Pod) -> Option<(String, ZtunnelPod)>,
    ) {
        self.sweep += 1;
        let sweep = self.sweep;
        // The previous pass's view is gone by now: the map is changed in place.
        let by_node = Arc::make_mut(&mut self.by_node);
        for pod in pods {
            let Some(uid) = pod.metadata.uid.as_deref() else {
                continue;
            };
            if let Some(seen) = self.seen.get_mut(uid)
                && Arc::ptr_eq(&seen.pod, &pod)
            {
                seen.sweep = sweep;
                continue;
            }
            let uid = uid.to_owned();
            if let Some(old) = self.seen.remove(&uid) {
                unlist(by_node, old.ztunnel_of.as_deref(), &uid);
            }
            let ztunnel_of = ztunnel(&pod).map(|(node, z)| {
                by_node.entry(node.clone()).or_default().push(z);
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
                unlist(by_node, seen.ztunnel_of.as_deref(), uid);
            }
            still
        });
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

/// Walks `sorted` (ascending by key, no key twice) and `map` together: each entry of
/// `sorted` with `map`'s value under the same key. One comparison per step instead of a
/// lookup per entry.
pub fn along<'a, V, W: 'a>(
    sorted: impl IntoIterator<Item = (&'a String, V)>,
    map: &'a BTreeMap<String, W>,
) -> impl Iterator<Item = (&'a String, V, Option<&'a W>)> {
    let mut others = map.iter().peekable();
    sorted.into_iter().map(move |(key, value)| {
        while others.next_if(|(k, _)| *k < key).is_some() {}
        let other = others.next_if(|(k, _)| *k == key).map(|(_, w)| w);
        (key, value, other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(keys: &[&str]) -> BTreeMap<String, usize> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), i))
            .collect()
    }

    #[test]
    fn along_pairs_equal_keys_and_misses_the_rest() {
        let sorted = map(&["a", "c", "d", "f"]);
        let other = map(&["b", "c", "f", "g"]);
        let joined: Vec<(String, Option<usize>)> = along(sorted.iter(), &other)
            .map(|(k, _, w)| (k.clone(), w.copied()))
            .collect();
        assert_eq!(
            joined,
            vec![
                ("a".into(), None),
                ("c".into(), Some(1)),
                ("d".into(), None),
                ("f".into(), Some(2)),
            ]
        );
        assert_eq!(
            along(sorted.iter(), &BTreeMap::<String, ()>::new())
                .filter(|(_, _, w)| w.is_some())
                .count(),
            0
        );
    }

    fn pod(uid: &str, node: Option<&str>, ds: &str, ready: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("pod-{uid}")),
                uid: Some(uid.into()),
                labels: Some([("ds".to_string(), ds.to_string())].into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: node.map(Into::into),
                ..Default::default()
            }),
            status: Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some(if ready { "Running" } else { "Pending" }.into()),
                ..Default::default()
            }),
        })
    }

    /// This test's stand-in for the agent's ownership check: the `ds` label.
    fn ztunnel_of(ds: &str) -> impl Fn(&Pod) -> Option<(String, ZtunnelPod)> {
        move |p: &Pod| {
            let labels = p.metadata.labels.as_ref()?;
            (labels.get("ds")? == ds).then_some(())?;
            Some((
                p.spec.as_ref()?.node_name.clone()?,
                ZtunnelPod {
                    name: p.metadata.name.clone()?,
                    uid: p.metadata.uid.clone()?,
                    revision_hash: "h".into(),
                    ready: p.status.as_ref()?.phase.as_deref() == Some("Running"),
                    terminating: false,
                    created: k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                },
            ))
        }
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
        let mut cache = ViewCache::default();
        let a = pod("a", Some("n1"), "ds1", false);
        let b = pod("b", None, "ds1", false);
        let other = pod("o", Some("n1"), "ds2", true);
        let first = cache.ztunnels(
            1,
            "ds1",
            || vec![a.clone(), b.clone(), other.clone()],
            ztunnel_of("ds1"),
        );
        assert_eq!(
            summary(&first),
            [("n1".to_string(), vec![("a".to_string(), false)])].into()
        );
        drop(first);

        // The same event count: not looked at again, whatever the cache holds.
        let same = cache.ztunnels(1, "ds1", || panic!("not read"), ztunnel_of("ds1"));
        assert_eq!(same.len(), 1);
        drop(same);

        // a is Ready (a new object), b got its node, a third pod appears on n1.
        let a2 = pod("a", Some("n1"), "ds1", true);
        let b2 = pod("b", Some("n2"), "ds1", false);
        let c = pod("c", Some("n1"), "ds1", false);
        let second = cache.ztunnels(
            2,
            "ds1",
            || vec![a2.clone(), b2.clone(), c.clone(), other.clone()],
            ztunnel_of("ds1"),
        );
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
        // A view still holding the last map keeps it as it was.
        let held = second.clone();
        drop(second);

        // a and b are gone: n2 has no ztunnel pod left.
        let third = cache.ztunnels(
            3,
            "ds1",
            || vec![c.clone(), other.clone()],
            ztunnel_of("ds1"),
        );
        assert_eq!(
            summary(&third),
            [("n1".to_string(), vec![("c".to_string(), false)])].into()
        );
        assert_eq!(held.len(), 2);

        // Another DaemonSet: built afresh.
        let fourth = cache.ztunnels(
            3,
            "ds2",
            || vec![c.clone(), other.clone()],
            ztunnel_of("ds2"),
        );
        assert_eq!(
            summary(&fourth),
            [("n1".to_string(), vec![("o".to_string(), true)])].into()
        );
    }

    #[test]
    fn derived_values_are_rebuilt_only_when_their_inputs_change() {
        let mut cache = ViewCache::default();
        let selector = Selector::default();
        let built = std::cell::Cell::new(0);
        let build = || {
            built.set(built.get() + 1);
            NodeMap::new()
        };
        let first = cache.selected(1, &selector, build);
        let again = cache.selected(1, &selector, build);
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(built.get(), 1);
        let later = cache.selected(2, &selector, build);
        assert!(!Arc::ptr_eq(&first, &later));
        assert_eq!(built.get(), 2);

        // No extra node: the selection itself; an extra one: a new map, kept while the
        // same extra nodes are asked for.
        let nodes = cache.nodes(&later, vec![], |_, _| panic!("nothing to add"));
        assert!(Arc::ptr_eq(&nodes, &later));
        let added = std::cell::Cell::new(0);
        let add = |m: &mut NodeMap, extra: &[String]| {
            added.set(added.get() + 1);
            for e in extra {
                m.insert(e.clone(), Arc::new(Node::default()));
            }
        };
        let with_extra = cache.nodes(&later, vec!["n1".into()], add);
        assert_eq!(with_extra.len(), 1);
        let same = cache.nodes(&later, vec!["n1".into()], add);
        assert!(Arc::ptr_eq(&with_extra, &same));
        assert_eq!(added.get(), 1);

        // Observations are lent: taken once, gone until kept again, and only for the
        // same nodes and pod counts.
        let pods = PodCounts::default();
        assert!(cache.take_observations(&nodes, &pods, "zone").is_none());
        cache.keep_observations(&nodes, &pods, "zone", vec![]);
        assert!(
            cache
                .take_observations(&with_extra, &pods, "zone")
                .is_none()
        );
        cache.keep_observations(&nodes, &pods, "zone", vec![]);
        assert!(cache.take_observations(&nodes, &pods, "rack").is_none());
        cache.keep_observations(&nodes, &pods, "zone", vec![]);
        assert_eq!(cache.take_observations(&nodes, &pods, "zone"), Some(vec![]));
        assert!(cache.take_observations(&nodes, &pods, "zone").is_none());
        cache.keep_observations(&nodes, &pods, "zone", vec![]);
        assert!(
            cache
                .take_observations(&nodes, &PodCounts::default(), "zone")
                .is_none()
        );
    }
}
