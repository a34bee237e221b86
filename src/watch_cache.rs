//! A reflector cache fed by one watch, the building block of every view the drain and
//! the agent keep: the watcher retries with backoff, `trim` drops what nobody reads
//! before it is stored, and `on_event` runs after every event so waiters wake on
//! changes instead of polling.

use futures::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

/// Objects per page of a watch's initial list. kube's default is 500: at 1,000 nodes
/// and thousands of pods, several such pages (the response body and every object
/// decoded before trimming) at once were the agent's peak memory, right at its start.
pub const LIST_PAGE_SIZE: u32 = 100;

/// A watch configuration with the initial list in pages of [`LIST_PAGE_SIZE`].
pub fn config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// What a watch cache can hold: everything kube's watcher and reflector need.
pub trait Watched:
    kube::Resource<DynamicType: Default + Eq + std::hash::Hash + Clone>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType: Default + Eq + std::hash::Hash + Clone>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

pub fn spawn<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    on_event: impl Fn() + Send + 'static,
) -> (Store<K>, JoinHandle<()>) {
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
                warn_watch_error(&e);
            }
            on_event();
        }
    });
    (reader, task)
}

/// `spawn`, with a count of the events the cache applied (ticked before `on_event`):
/// waiters wake on its `changed()`, and a reader that derives something from the cache
/// reads it first and derives again only when it moved.
pub fn spawn_counted<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    on_event: impl Fn() + Send + 'static,
) -> (Store<K>, watch::Receiver<u64>, JoinHandle<()>) {
    let (on_event, events) = counting(on_event);
    let (store, task) = spawn(api, config, trim, on_event);
    (store, events, task)
}

/// `on_event`, ticking a count of the events before it runs, and that count.
pub fn counting(
    on_event: impl Fn() + Send + 'static,
) -> (impl Fn() + Send + 'static, watch::Receiver<u64>) {
    let (tx, events) = watch::channel(0u64);
    let counted = move || {
        tx.send_modify(|n| *n += 1);
        on_event();
    };
    (counted, events)
}

/// Logs a watch's error (the watcher retries it with backoff).
pub fn warn_watch_error(e: &watcher::Error) {
    warn!(
        error = %crate::kube_client::describe_watch_error(e),
        "watch error; the watcher retries with backoff"
    );
}

/// For caches that keep whole objects.
pub fn keep_all<K>(_: &mut K) {}
