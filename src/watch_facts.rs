//! A cache of a few facts per object, fed by one watch. A reflector store keeps whole
//! objects: a `Pod`, even trimmed, costs kilobytes (the generated structs reserve every
//! field), while what a reader needs of it fits in a few hundred bytes. Here each
//! object is turned into its facts as it arrives and only the facts are kept, by uid.
//! Like [`crate::watch_cache`], the watcher retries with backoff and `on_event` runs
//! after every change so waiters wake instead of polling; a relist replaces the whole
//! map at once when it completes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::watch_cache::Watched;

/// Facts by object uid, kept current by a watch.
pub struct FactStore<V> {
    facts: Arc<RwLock<HashMap<String, V>>>,
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
        self.read().values().cloned().collect()
    }

    /// The facts of the object with this uid.
    pub fn get(&self, uid: &str) -> Option<V> {
        self.read().get(uid).cloned()
    }

    /// Reads the map in place (a reader that keeps only a few facts copies no others).
    pub fn with<T>(&self, read: impl FnOnce(&HashMap<String, V>) -> T) -> T {
        read(&self.read())
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, V>> {
        // A writer that panicked left a map that is still whole (each write is one
        // insert, remove or swap): keep reading it.
        self.facts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn write<V>(facts: &RwLock<HashMap<String, V>>) -> RwLockWriteGuard<'_, HashMap<String, V>> {
    facts
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Watches `api` and keeps `of(object)` for each object; `on_event` runs after every
/// change (not after watch errors: the watcher retries them).
pub fn spawn<K: Watched, V: Send + Sync + 'static>(
    api: Api<K>,
    config: watcher::Config,
    of: fn(&K) -> V,
    on_event: impl Fn() + Send + 'static,
) -> (FactStore<V>, JoinHandle<()>) {
    let facts: Arc<RwLock<HashMap<String, V>>> = Arc::default();
    let (ready_tx, ready) = watch::channel(false);
    let store = facts.clone();
    let task = tokio::spawn(async move {
        let mut relisted: HashMap<String, V> = HashMap::new();
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    warn!(
                        error = %crate::kube_client::describe_watch_error(&e),
                        "watch error; the watcher retries with backoff"
                    );
                    continue;
                }
            };
            match event {
                watcher::Event::Apply(o) => {
                    let Some(uid) = o.meta().uid.clone() else {
                        continue;
                    };
                    write(&store).insert(uid, of(&o));
                }
                watcher::Event::Delete(o) => {
                    let Some(uid) = o.meta().uid.as_deref() else {
                        continue;
                    };
                    write(&store).remove(uid);
                }
                watcher::Event::Init => {
                    relisted.clear();
                    continue;
                }
                watcher::Event::InitApply(o) => {
                    if let Some(uid) = o.meta().uid.clone() {
                        relisted.insert(uid, of(&o));
                    }
                    continue;
                }
                watcher::Event::InitDone => {
                    *write(&store) = std::mem::take(&mut relisted);
                    let _ = ready_tx.send(true);
                }
            }
            on_event();
        }
    });
    (FactStore { facts, ready }, task)
}

/// `spawn`, with a count of the changes the cache applied (ticked before `on_event`):
/// a reader that derives something from the cache derives again only when it moved.
pub fn spawn_counted<K: Watched, V: Send + Sync + 'static>(
    api: Api<K>,
    config: watcher::Config,
    of: fn(&K) -> V,
    on_event: impl Fn() + Send + 'static,
) -> (FactStore<V>, watch::Receiver<u64>, JoinHandle<()>) {
    let (tx, changes) = watch::channel(0u64);
    let (store, task) = spawn(api, config, of, move || {
        tx.send_modify(|n| *n += 1);
        on_event();
    });
    (store, changes, task)
}
