//! What a pass derives from the snapshot (the settings, the rollout's nodes, where the
//! DaemonSet runs, the waves, the planner's observations), kept between passes and
//! rebuilt only when what it was derived from changed. At 1,000 nodes, rebuilding all
//! of it on every pass was half of the agent's CPU (BENCHMARKS.md).
//!
//! The shell gives a new node map after any node event, and during a rollout that is
//! nearly every pass: cordons (with the `node.kubernetes.io/unschedulable` taint the
//! node controller adds), releases, annotations, waiting taints. Those do not change
//! what the placement, the waves and the observations are derived from (which nodes,
//! their labels, the taints placement judges, readiness: their layout), so those are
//! keyed by a layout version that moves only when the layout does; a new map whose
//! layout is the same is checked in one walk, without a lookup.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::facts::{Marks, node_ready};
use super::snapshot::{NodeMap, PodCounts};
use crate::api::rollout::RolloutSpec;
use crate::label_selector::Selector;
use crate::rollout::node_machine::Placement;
use crate::rollout::planner::{NodeObservation, Wave, WavePolicy};
use crate::rollout::settings::{RolloutSettings, SpecError};

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
struct Kept<K, V> {
    from: K,
    value: V,
}

fn derive<K: PartialEq, V: Clone>(
    slot: &mut Option<Kept<K, V>>,
    from: K,
    build: impl FnOnce() -> V,
) -> V {
    if let Some(d) = slot
        && d.from == from
    {
        return d.value.clone();
    }
    let value = build();
    *slot = Some(Kept {
        from,
        value: value.clone(),
    });
    value
}

type Settings = Result<Arc<RolloutSettings>, SpecError>;
/// The node map and the selector.
type SelectedKey = (Same<NodeMap>, Selector);
/// The selection and the started nodes outside it.
type NodesKey = (Same<NodeMap>, Vec<String>);
/// The layout version of the rollout's nodes (see [`Derived::layout`]).
type WavesKey = (u64, WavePolicy);
type ObservationsKey = (u64, Same<HashMap<String, usize>>, String);
/// The layout version and the DaemonSet (uid, generation).
type PlacementKey = (u64, String, i64);

/// Whether `a` and `b` name the same nodes in the same order, each with the same
/// labels, judged taints (`placement::judged_taints`) and readiness: what the
/// selection, the placement, the waves and the planner's observations read of a node.
pub fn same_layout(a: &NodeMap, b: &NodeMap) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, na), (kb, nb))| {
            ka == kb && (Arc::ptr_eq(na, nb) || same_node_layout(na, nb))
        })
}

fn same_node_layout(a: &Node, b: &Node) -> bool {
    use crate::rollout::placement::judged_taints;
    a.metadata.labels == b.metadata.labels
        && judged_taints(a).eq(judged_taints(b))
        && node_ready(a) == node_ready(b)
}

#[derive(Default)]
pub struct Derived {
    settings: Option<Kept<RolloutSpec, Settings>>,
    selected: Option<Kept<SelectedKey, Arc<NodeMap>>>,
    nodes: Option<Kept<NodesKey, Arc<NodeMap>>>,
    /// The rollout's nodes as last seen, and their layout version.
    layout: Option<(Arc<NodeMap>, u64)>,
    /// The marks of the rollout's nodes, in their order, and the nodes they were read
    /// from.
    marks: Option<(Arc<NodeMap>, Arc<Vec<Marks>>)>,
    waves: Option<Kept<WavesKey, Arc<Waves>>>,
    placement: Option<Kept<PlacementKey, Arc<HashMap<String, Placement>>>>,
    /// Lent to one pass at a time (`take_observations`, `keep_observations`): the pass
    /// refreshes what its steps change in place.
    observations: Option<Kept<ObservationsKey, Vec<NodeObservation>>>,
}

impl Derived {
    pub fn settings(&mut self, spec: &RolloutSpec) -> Settings {
        match &self.settings {
            Some(k) if k.from == *spec => k.value.clone(),
            _ => {
                let value = crate::rollout::settings::settings(spec).map(Arc::new);
                self.settings = Some(Kept {
                    from: spec.clone(),
                    value: value.clone(),
                });
                value
            }
        }
    }

    /// The nodes `selector` matches. A new map with the layout of the one the last
    /// selection was made from selects the same nodes; when that is every node, the
    /// selection is the map itself.
    pub fn selected(&mut self, all: &Arc<NodeMap>, selector: &Selector) -> Arc<NodeMap> {
        let key = (Same(all.clone()), selector.clone());
        let value = match &self.selected {
            Some(k) if k.from == key => return k.value.clone(),
            Some(k) if k.from.1 == *selector && same_layout(&k.from.0.0, all) => {
                if k.value.len() == all.len() {
                    all.clone()
                } else {
                    Arc::new(
                        along(all.iter(), &k.value)
                            .filter(|(_, _, was)| was.is_some())
                            .map(|(name, n, _)| (name.clone(), n.clone()))
                            .collect(),
                    )
                }
            }
            _ => {
                let matches =
                    |n: &Node| selector.matches(n.metadata.labels.as_ref().unwrap_or(&EMPTY));
                if all.values().all(|n| matches(n)) {
                    all.clone()
                } else {
                    Arc::new(
                        all.iter()
                            .filter(|(_, n)| matches(n))
                            .map(|(name, n)| (name.clone(), n.clone()))
                            .collect(),
                    )
                }
            }
        };
        self.selected = Some(Kept {
            from: key,
            value: value.clone(),
        });
        value
    }

    /// The layout version of the rollout's nodes `nodes`: the same as long as the nodes
    /// and their layout are (see [`same_layout`]).
    pub fn layout(&mut self, nodes: &Arc<NodeMap>) -> u64 {
        match &mut self.layout {
            Some((seen, version)) if Arc::ptr_eq(seen, nodes) => *version,
            Some((seen, version)) if same_layout(seen, nodes) => {
                *seen = nodes.clone();
                *version
            }
            other => {
                let version = other.as_ref().map_or(0, |(_, v)| v + 1);
                *other = Some((nodes.clone(), version));
                version
            }
        }
    }

    /// `selected` plus the nodes named in `extra` that exist in `all`: the same map as
    /// long as both are.
    pub fn nodes(
        &mut self,
        selected: &Arc<NodeMap>,
        all: &NodeMap,
        extra: Vec<String>,
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
                for name in extra {
                    if let Some(n) = all.get(&name) {
                        nodes.insert(name, n.clone());
                    }
                }
                Arc::new(nodes)
            },
        )
    }

    /// The marks of `nodes` for `rollout`, in their order: a node's are read again only
    /// when its copy changed.
    pub fn marks(&mut self, nodes: &Arc<NodeMap>, rollout: &str) -> Arc<Vec<Marks>> {
        let marks: Arc<Vec<Marks>> = match &self.marks {
            Some((seen, marks)) if Arc::ptr_eq(seen, nodes) => return marks.clone(),
            Some((seen, marks)) if seen.len() == nodes.len() && seen.keys().eq(nodes.keys()) => {
                Arc::new(
                    seen.values()
                        .zip(nodes.values())
                        .zip(marks.iter())
                        .map(|((was, n), m)| {
                            if Arc::ptr_eq(was, n) {
                                *m
                            } else {
                                Marks::of(rollout, n)
                            }
                        })
                        .collect(),
                )
            }
            _ => Arc::new(nodes.values().map(|n| Marks::of(rollout, n)).collect()),
        };
        self.marks = Some((nodes.clone(), marks.clone()));
        marks
    }

    /// Where the DaemonSet (`ds_uid` at `generation`) runs, by node of `nodes` (at
    /// layout version `layout`); `place` judges one.
    pub fn placement(
        &mut self,
        nodes: &NodeMap,
        layout: u64,
        ds_uid: &str,
        generation: i64,
        place: impl Fn(&Node) -> Placement,
    ) -> Arc<HashMap<String, Placement>> {
        derive(
            &mut self.placement,
            (layout, ds_uid.to_owned(), generation),
            || {
                Arc::new(
                    nodes
                        .iter()
                        .map(|(name, n)| (name.clone(), place(n)))
                        .collect(),
                )
            },
        )
    }

    pub fn waves(
        &mut self,
        layout: u64,
        policy: &WavePolicy,
        build: impl FnOnce() -> Waves,
    ) -> Arc<Waves> {
        derive(&mut self.waves, (layout, policy.clone()), || {
            Arc::new(build())
        })
    }

    /// The observations of the nodes at layout version `layout` with `pods`, if the
    /// last pass left them; their progress and cordons are the last pass's and need
    /// refreshing.
    pub fn take_observations(
        &mut self,
        layout: u64,
        pods: &PodCounts,
        group_by: &str,
    ) -> Option<Vec<NodeObservation>> {
        let key = (layout, Same(pods.clone()), group_by.to_owned());
        match self.observations.take() {
            Some(d) if d.from == key => Some(d.value),
            _ => None,
        }
    }

    pub fn keep_observations(
        &mut self,
        layout: u64,
        pods: &PodCounts,
        group_by: &str,
        observations: Vec<NodeObservation>,
    ) {
        self.observations = Some(Kept {
            from: (layout, Same(pods.clone()), group_by.to_owned()),
            value: observations,
        });
    }
}

static EMPTY: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();

/// Walks `sorted` (ascending by key, no key twice) and `map` together: each entry of
/// `sorted` with `map`'s value under the same key. One comparison per step instead of a
/// lookup per entry.
pub fn along<'a, V, W: 'a>(
    sorted: impl IntoIterator<Item = (&'a String, V)>,
    map: &'a std::collections::BTreeMap<String, W>,
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
    use std::collections::BTreeMap;

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
    }

    fn node(name: &str, pool: &str) -> Arc<k8s_openapi::api::core::v1::Node> {
        let mut n = k8s_openapi::api::core::v1::Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(BTreeMap::from([("pool".to_owned(), pool.to_owned())]));
        Arc::new(n)
    }

    fn nodes(pools: &[(&str, &str)]) -> Arc<NodeMap> {
        Arc::new(
            pools
                .iter()
                .map(|(n, p)| (n.to_string(), node(n, p)))
                .collect(),
        )
    }

    /// `all` again as a new map, with node `name` changed by `change`.
    fn with(all: &NodeMap, name: &str, change: impl FnOnce(&mut Node)) -> Arc<NodeMap> {
        let mut all = all.clone();
        let n = all.get_mut(name).unwrap();
        let mut copy = (**n).clone();
        change(&mut copy);
        *n = Arc::new(copy);
        Arc::new(all)
    }

    #[test]
    fn derived_values_are_rebuilt_only_when_their_inputs_change() {
        let mut d = Derived::default();
        let all = nodes(&[("a", "blue"), ("b", "green"), ("c", "blue")]);
        let blue = Selector::parse("pool=blue").unwrap();
        let first = d.selected(&all, &blue);
        assert_eq!(first.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert!(Arc::ptr_eq(&first, &d.selected(&all, &blue)), "kept");
        // A node cordoned: the same nodes are selected, with the new copies.
        let cordoned = with(&all, "a", |n| {
            n.spec.get_or_insert_default().unschedulable = Some(true)
        });
        let again = d.selected(&cordoned, &blue);
        assert!(
            !Arc::ptr_eq(&first, &again),
            "a new node map is derived again"
        );
        assert_eq!(again.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert!(Arc::ptr_eq(&again["a"], &cordoned["a"]), "the new copy");
        // A node relabelled: selected again.
        let relabelled = with(&cordoned, "b", |n| {
            n.metadata.labels = Some(BTreeMap::from([("pool".into(), "blue".into())]))
        });
        assert_eq!(
            d.selected(&relabelled, &blue).keys().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        // Every node selected: the selection is the map itself.
        let everything = Selector::everything();
        assert!(Arc::ptr_eq(&all, &d.selected(&all, &everything)));
        assert!(Arc::ptr_eq(&cordoned, &d.selected(&cordoned, &everything)));

        let with_b = d.nodes(&first, &all, vec!["b".into()]);
        assert_eq!(with_b.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(Arc::ptr_eq(
            &with_b,
            &d.nodes(&first, &all, vec!["b".into()])
        ));
        assert!(Arc::ptr_eq(&first, &d.nodes(&first, &all, vec![])));

        let pods: PodCounts = Arc::default();
        assert!(d.take_observations(0, &pods, "zone").is_none());
        d.keep_observations(0, &pods, "zone", vec![]);
        assert!(
            d.take_observations(0, &Arc::default(), "zone").is_none(),
            "observations kept for one set of pod counts are not given out for another"
        );
        d.keep_observations(0, &pods, "zone", vec![]);
        assert!(
            d.take_observations(1, &pods, "zone").is_none(),
            "nor for another layout"
        );
        d.keep_observations(0, &pods, "zone", vec![]);
        assert!(d.take_observations(0, &pods, "zone").is_some());
        assert!(d.take_observations(0, &pods, "zone").is_none(), "lent once");
    }

    #[test]
    fn the_layout_version_moves_with_labels_taints_readiness_and_membership_only() {
        let mut d = Derived::default();
        let all = nodes(&[("a", "blue"), ("b", "green")]);
        let v = d.layout(&all);
        assert_eq!(d.layout(&all), v);
        let judged = std::cell::Cell::new(0);
        let place = |_: &Node| {
            judged.set(judged.get() + 1);
            Placement::Runs
        };
        d.placement(&all, v, "ds", 1, place);
        let cordoned = with(&all, "a", |n| {
            let spec = n.spec.get_or_insert_default();
            spec.unschedulable = Some(true);
            // As the node controller does on a cordon; and a waiting taint.
            spec.taints = Some(vec![
                k8s_openapi::api::core::v1::Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::Taint {
                    key: crate::labels::WAITING_TAINT.into(),
                    value: Some("r".into()),
                    effect: "PreferNoSchedule".into(),
                    ..Default::default()
                },
            ]);
            n.metadata.annotations = Some(BTreeMap::from([("x".into(), "y".into())]));
            n.metadata.resource_version = Some("2".into());
        });
        assert_eq!(
            d.layout(&cordoned),
            v,
            "a cordon (with its taint), a waiting taint and an annotation"
        );
        let before = d.marks(&all, "r");
        let after = d.marks(&cordoned, "r");
        assert!(
            !before[0].unschedulable && after[0].unschedulable,
            "read again"
        );
        assert_eq!(before[1], after[1]);
        let same = d.layout(&cordoned);
        d.placement(&cordoned, same, "ds", 1, place);
        assert_eq!(
            judged.get(),
            2,
            "placement judged once per node, kept over a cordon"
        );
        let mut changes: Vec<(&str, Arc<NodeMap>)> = vec![
            (
                "relabelled",
                with(&cordoned, "a", |n| {
                    n.metadata.labels = Some(BTreeMap::from([("pool".into(), "red".into())]))
                }),
            ),
            (
                "tainted",
                with(&cordoned, "b", |n| {
                    n.spec.get_or_insert_default().taints =
                        Some(vec![k8s_openapi::api::core::v1::Taint {
                            key: "k".into(),
                            effect: "NoSchedule".into(),
                            ..Default::default()
                        }])
                }),
            ),
            (
                "not ready",
                with(&cordoned, "b", |n| {
                    n.status = Some(k8s_openapi::api::core::v1::NodeStatus {
                        conditions: Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                            type_: "Ready".into(),
                            status: "False".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    })
                }),
            ),
        ];
        let mut removed = (*cordoned).clone();
        removed.remove("b");
        changes.push(("removed", Arc::new(removed)));
        let mut last = v;
        for (what, map) in changes {
            let next = d.layout(&map);
            assert_ne!(next, last, "{what}");
            last = next;
        }
    }
}
