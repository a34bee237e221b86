//! What a pass derives from the snapshot (the settings, the rollout's nodes, where the
//! DaemonSet runs, the waves, the planner's observations), kept between passes and
//! rebuilt only when what it was derived from changed. At 1,000 nodes, rebuilding all
//! of it on every pass was half of the agent's CPU (BENCHMARKS.md). Inputs are compared
//! by value, or for the node map by address: the shell gives a new map when a node
//! changed.

use std::collections::HashMap;
use std::sync::Arc;

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
type WavesKey = (Same<NodeMap>, WavePolicy);
type ObservationsKey = (Same<NodeMap>, Same<HashMap<String, usize>>, String);
/// The node map and the DaemonSet (uid, generation).
type PlacementKey = (Same<NodeMap>, String, i64);

#[derive(Default)]
pub struct Derived {
    settings: Option<Kept<RolloutSpec, Settings>>,
    selected: Option<Kept<SelectedKey, Arc<NodeMap>>>,
    nodes: Option<Kept<NodesKey, Arc<NodeMap>>>,
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

    /// The nodes `selector` matches.
    pub fn selected(&mut self, all: &Arc<NodeMap>, selector: &Selector) -> Arc<NodeMap> {
        derive(
            &mut self.selected,
            (Same(all.clone()), selector.clone()),
            || {
                Arc::new(
                    all.iter()
                        .filter(|(_, n)| {
                            selector.matches(n.metadata.labels.as_ref().unwrap_or(&EMPTY))
                        })
                        .map(|(name, n)| (name.clone(), n.clone()))
                        .collect(),
                )
            },
        )
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

    /// Where the DaemonSet (`ds_uid` at `generation`) runs, by node; `place` judges one.
    pub fn placement(
        &mut self,
        nodes: &Arc<NodeMap>,
        ds_uid: &str,
        generation: i64,
        place: impl Fn(&k8s_openapi::api::core::v1::Node) -> Placement,
    ) -> Arc<HashMap<String, Placement>> {
        derive(
            &mut self.placement,
            (Same(nodes.clone()), ds_uid.to_owned(), generation),
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
        self.observations = Some(Kept {
            from: (Same(nodes.clone()), Same(pods.clone()), group_by.to_owned()),
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

    #[test]
    fn derived_values_are_rebuilt_only_when_their_inputs_change() {
        let mut d = Derived::default();
        let all: Arc<NodeMap> = Arc::new(
            [("a", "blue"), ("b", "green"), ("c", "blue")]
                .into_iter()
                .map(|(n, p)| (n.to_owned(), node(n, p)))
                .collect(),
        );
        let blue = Selector::parse("pool=blue").unwrap();
        let first = d.selected(&all, &blue);
        assert_eq!(first.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert!(Arc::ptr_eq(&first, &d.selected(&all, &blue)), "kept");
        let changed = Arc::new((*all).clone());
        assert!(
            !Arc::ptr_eq(&first, &d.selected(&changed, &blue)),
            "a new node map is derived again"
        );
        let with_b = d.nodes(&first, &all, vec!["b".into()]);
        assert_eq!(with_b.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(Arc::ptr_eq(
            &with_b,
            &d.nodes(&first, &all, vec!["b".into()])
        ));
        assert!(Arc::ptr_eq(&first, &d.nodes(&first, &all, vec![])));

        let pods: PodCounts = Arc::default();
        assert!(d.take_observations(&first, &pods, "zone").is_none());
        d.keep_observations(&first, &pods, "zone", vec![]);
        assert!(
            d.take_observations(&first, &Arc::default(), "zone")
                .is_none(),
            "observations kept for one set of pod counts are not given out for another"
        );
        d.keep_observations(&first, &pods, "zone", vec![]);
        assert!(d.take_observations(&first, &pods, "zone").is_some());
        assert!(
            d.take_observations(&first, &pods, "zone").is_none(),
            "lent once"
        );
    }
}
