//! A reflector cache fed by one watch, the building block of every view the drain and
//! the agent keep: the watcher retries with backoff, `trim` drops what nobody reads
//! before it is stored, and `on_event` runs after every event so waiters wake on
//! changes instead of polling.

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;
use tracing::warn;

pub fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    on_event: impl Fn() + Send + 'static,
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
    let (reader, writer) = reflector::store();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(
            watcher(api, config)
                .default_backoff()
                .modify(trim)
                .reflect(writer)
        );
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                warn!(error = %e, "watch error; the watcher retries with backoff");
            }
            on_event();
        }
    });
    (reader, task)
}

/// For caches that keep whole objects.
pub fn keep_all<K>(_: &mut K) {}
