//! A cache of a few facts per object, fed by one watch. A reflector store keeps whole
//! objects: a `Pod`, even trimmed, costs kilobytes (the generated structs reserve every
//! field), while what a reader needs of it fits in a few hundred bytes. Here each
//! object is turned into its facts as it arrives and only the facts are kept, by uid.
//! Like [`crate::watch_cache`], the watcher retries with backoff and `on_event` runs
//! after every change so waiters wake instead of polling; a relist replaces the whole
//! map at once when it completes.
//!
//! Facts that a reader compares between reads are best kept behind an `Arc`: each
//! change stores a new one, so an unchanged object is recognised by pointer.
//!
//! The map is a B-tree, not a hash table. Pods come and go by uid: a rollout of 1,000
//! realistic nodes evicts and recreates ~20,000 of its 24,000 pods. In a hash table each
//! removal can leave a tombstone that gives no room back, and once tombstones fill the
//! spare room the table doubles (at 24,000 facts: from 4.7 to 9.4 MB of buckets, with
//! both held during the copy). The realistic bed's whole runs took a step of that size
//! late in the rollout (VmHWM +9.0 MiB, RSS +4.5 MiB), gone with the B-tree. A B-tree grows and shrinks a node
//! at a time: ~6 MB for the same facts, before and after the churn
//! (benches/results/fact-store-churn-2026-12-04/).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::watch_cache::{self, Watched};

type Facts<V> = BTreeMap<String, V>;

/// Facts by object uid, kept current by a watch.
pub struct FactStore<V> {
    facts: Arc<RwLock<Facts<V>>>,
    ready: watch::Receiver<bool>,
}

impl<V> Clone for FactStore<V> {
    fn clone(&self) -> Self {
        Self {
            facts: self.facts.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<V: Clone> FactStore<V> {
    /// Returns once the first list is in.
    pub async fn synced(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Every object's facts.
    pub fn values(&self) -> Vec<V> {
        read(&self.facts).values().cloned().collect()
    }

    /// The facts of the object with this uid.
    pub fn get(&self, uid: &str) -> Option<V> {
        read(&self.facts).get(uid).cloned()
    }

    /// Reads the map in place (a reader that keeps only a few facts copies no others).
    pub fn with<T>(&self, reader: impl FnOnce(&Facts<V>) -> T) -> T {
        reader(&read(&self.facts))
    }
}

// A writer that panicked left a map that is still whole (each write is one insert,
// remove or swap, the facts computed before the lock is taken): keep using it.
fn read<V>(facts: &RwLock<Facts<V>>) -> RwLockReadGuard<'_, Facts<V>> {
    facts
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<V>(facts: &RwLock<Facts<V>>) -> RwLockWriteGuard<'_, Facts<V>> {
    facts
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies one watch event to the shared map; a relist's objects are gathered in
/// `relisted` and swapped in whole when it completes. Returns whether the map changed.
fn apply<K: kube::Resource, V>(
    facts: &RwLock<Facts<V>>,
    relisted: &mut Facts<V>,
    of: &mut impl FnMut(&K) -> V,
    event: watcher::Event<K>,
) -> bool {
    match event {
        watcher::Event::Apply(o) => {
            let Some(uid) = o.meta().uid.clone() else {
                return false;
            };
            let fact = of(&o);
            write(facts).insert(uid, fact);
            true
        }
        watcher::Event::Delete(o) => {
            let Some(uid) = o.meta().uid.as_deref() else {
                return false;
            };
            let gone = write(facts).remove(uid);
            // Dropped after the lock is released.
            gone.is_some()
        }
        watcher::Event::Init => {
            relisted.clear();
            false
        }
        watcher::Event::InitApply(o) => {
            if let Some(uid) = o.meta().uid.clone() {
                relisted.insert(uid, of(&o));
            }
            false
        }
        watcher::Event::InitDone => {
            let old = std::mem::replace(&mut *write(facts), std::mem::take(relisted));
            // The old map (tens of thousands of facts, for every pod) is freed after the
            // lock is released, not while readers wait.
            drop(old);
            true
        }
    }
}

/// Watches `api` and keeps `of(object)` for each object with a uid; `on_event` runs
/// after every change (not after watch errors: the watcher retries them). `of` may keep
/// state between objects (strings many objects share, kept once).
pub fn spawn<K: Watched, V: Send + Sync + 'static>(
    api: Api<K>,
    config: watcher::Config,
    mut of: impl FnMut(&K) -> V + Send + 'static,
    on_event: impl Fn() + Send + 'static,
) -> (FactStore<V>, JoinHandle<()>) {
    let facts: Arc<RwLock<Facts<V>>> = Arc::default();
    let (ready_tx, ready) = watch::channel(false);
    let store = facts.clone();
    let task = tokio::spawn(async move {
        let mut relisted = Facts::new();
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Err(e) => watch_cache::warn_watch_error(&e),
                Ok(event) => {
                    let listed = matches!(event, watcher::Event::InitDone);
                    let changed = apply(&store, &mut relisted, &mut of, event);
                    if listed {
                        let _ = ready_tx.send(true);
                    }
                    if changed {
                        on_event();
                    }
                }
            }
        }
    });
    (FactStore { facts, ready }, task)
}

/// `spawn`, with a count of the changes the cache applied (ticked before `on_event`):
/// a reader that derives something from the cache derives again only when it moved.
pub fn spawn_counted<K: Watched, V: Send + Sync + 'static>(
    api: Api<K>,
    config: watcher::Config,
    of: impl FnMut(&K) -> V + Send + 'static,
    on_event: impl Fn() + Send + 'static,
) -> (FactStore<V>, watch::Receiver<u64>, JoinHandle<()>) {
    let (on_event, changes) = watch_cache::counting(on_event);
    let (store, task) = spawn(api, config, of, on_event);
    (store, changes, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use watcher::Event;

    fn pod(name: &str, uid: Option<&str>, node: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.uid = uid.map(Into::into);
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        p
    }

    fn node_of(p: &Pod) -> String {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    }

    fn contents(facts: &RwLock<Facts<String>>) -> Vec<(String, String)> {
        let mut all: Vec<_> = read(facts)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort();
        all
    }

    fn pair(uid: &str, node: &str) -> (String, String) {
        (uid.to_owned(), node.to_owned())
    }

    #[test]
    fn changes_apply_by_uid_and_objects_without_one_are_ignored() {
        let facts = RwLock::new(Facts::new());
        let mut relisted = Facts::new();
        let mut step = |e| apply(&facts, &mut relisted, &mut node_of, e);
        assert!(step(Event::Apply(pod("a", Some("u1"), "n1"))));
        assert!(step(Event::Apply(pod("b", Some("u2"), "n1"))));
        // The same name under a new uid is another object (a StatefulSet pod recreated).
        assert!(step(Event::Apply(pod("a", Some("u3"), "n2"))));
        assert!(step(Event::Apply(pod("b", Some("u2"), "n3"))));
        assert!(!step(Event::Apply(pod("c", None, "n1"))));
        assert!(step(Event::Delete(pod("a", Some("u1"), "n1"))));
        assert!(!step(Event::Delete(pod("a", Some("u1"), "n1"))));
        assert!(!step(Event::Delete(pod("c", None, "n1"))));
        assert_eq!(contents(&facts), vec![pair("u2", "n3"), pair("u3", "n2")]);
    }

    #[test]
    fn a_relist_replaces_the_map_only_when_it_completes() {
        let facts = RwLock::new(Facts::new());
        let mut relisted = Facts::new();
        assert!(apply(
            &facts,
            &mut relisted,
            &mut node_of,
            Event::Apply(pod("old", Some("u0"), "n0"))
        ));
        // A relist that fails halfway starts over: what it had gathered is dropped.
        let mut step = |e| apply(&facts, &mut relisted, &mut node_of, e);
        assert!(!step(Event::Init));
        assert!(!step(Event::InitApply(pod("lost", Some("u9"), "n9"))));
        assert!(!step(Event::Init));
        assert!(!step(Event::InitApply(pod("a", Some("u1"), "n1"))));
        assert!(!step(Event::InitApply(pod("nameless", None, "n1"))));
        assert!(!step(Event::InitApply(pod("b", Some("u2"), "n2"))));
        // Until the list is done, readers see the map as it was.
        assert_eq!(contents(&facts), vec![pair("u0", "n0")]);
        assert!(step(Event::InitDone));
        assert_eq!(contents(&facts), vec![pair("u1", "n1"), pair("u2", "n2")]);
        // The next relist starts from nothing.
        assert!(relisted.is_empty());
    }
}
