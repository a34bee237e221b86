//! Runs the effects of the passes as tasks and brings their outcomes back on one
//! channel. One task table, keyed by owner (a rollout or migration), object (a node, a
//! namespace, or the owner itself) and kind, guarantees one task per key: a node never
//! has two calls, two drains or two gate runs at once. Both loops (rollouts and sidecar
//! migrations) use it; a pass never waits for a round trip.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, warn};

/// What a task is, for one owner and object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// An API call (node patch, pod delete, namespace relabel, workload restart).
    Call,
    Drain,
    /// The connections-drained gate.
    Connections,
    /// The rollout's mesh-wide breaker.
    Mesh,
    Gates,
    /// Finalizer, status write, DaemonSet restore, delete: calls on the owner itself.
    Owner(OwnerCall),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnerCall {
    Finalizer,
    Status,
    Undo,
    /// istio-cni's restore (`spec.cni`).
    UndoCni,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    /// The rollout's or migration's uid.
    pub owner: String,
    /// The node or namespace; the owner's name for owner calls.
    pub object: String,
    pub kind: TaskKind,
}

/// Where a task sends its outcomes (a gate task sends progress before its verdict).
pub struct Sink<O> {
    key: TaskKey,
    run: u64,
    tx: mpsc::UnboundedSender<Message<O>>,
    wake: Arc<Notify>,
}

/// An outcome of the task `key` started as `run`, or (`last`) the end of that task with
/// its result.
struct Message<O> {
    key: TaskKey,
    run: u64,
    outcome: Option<O>,
    last: bool,
}

impl<O> Sink<O> {
    pub fn send(&self, outcome: O) {
        let _ = self.tx.send(Message {
            key: self.key.clone(),
            run: self.run,
            outcome: Some(outcome),
            last: false,
        });
        self.wake.notify_one();
    }
}

/// Tasks by key, and the one channel their outcomes come back on.
pub struct Executor<O> {
    /// Running tasks, with the number of their start: a message of a cancelled (or
    /// earlier) run of a key is dropped, never taken for the current run's.
    tasks: HashMap<TaskKey, (u64, JoinHandle<()>)>,
    runs: u64,
    tx: mpsc::UnboundedSender<Message<O>>,
    rx: mpsc::UnboundedReceiver<Message<O>>,
    /// Notified when an outcome arrives (the loop's wake-up).
    pub wake: Arc<Notify>,
    /// Bounds the API calls in flight across owners.
    permits: Arc<Semaphore>,
}

impl<O: Send + 'static> Executor<O> {
    pub fn new(calls_at_once: usize, wake: Arc<Notify>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tasks: HashMap::new(),
            runs: 0,
            tx,
            rx,
            wake,
            permits: Arc::new(Semaphore::new(calls_at_once)),
        }
    }

    pub fn running(&self, key: &TaskKey) -> bool {
        self.tasks.contains_key(key)
    }

    /// Starts `task`, whose result is its last outcome; `Call` tasks wait for one of the
    /// executor's call permits first. Refused (and logged) if a task with that key runs:
    /// the passes never ask for that.
    pub fn spawn<F>(&mut self, key: TaskKey, span: tracing::Span, task: F)
    where
        F: Future<Output = Option<O>> + Send + 'static,
    {
        self.spawn_with(key, span, move |_| task);
    }

    /// Starts a task that sends outcomes through its sink while it runs; its result is its
    /// last outcome.
    pub fn spawn_with<F, T>(&mut self, key: TaskKey, span: tracing::Span, task: T)
    where
        T: FnOnce(Sink<O>) -> F,
        F: Future<Output = Option<O>> + Send + 'static,
    {
        if self.tasks.contains_key(&key) {
            warn!(?key, "a task with this key runs already; not started again");
            return;
        }
        self.runs += 1;
        let run = self.runs;
        let sink = Sink {
            key: key.clone(),
            run,
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        };
        let tx = self.tx.clone();
        let wake = self.wake.clone();
        let permits = (key.kind == TaskKind::Call).then(|| self.permits.clone());
        let done_key = key.clone();
        let fut = task(sink);
        let handle = tokio::spawn(
            async move {
                let _permit = match permits {
                    Some(p) => p.acquire_owned().await.ok(),
                    None => None,
                };
                let outcome = fut.await;
                let _ = tx.send(Message {
                    key: done_key,
                    run,
                    outcome,
                    last: true,
                });
                wake.notify_one();
            }
            .instrument(span),
        );
        self.tasks.insert(key, (run, handle));
    }

    pub fn cancel(&mut self, key: &TaskKey) {
        if let Some((_, t)) = self.tasks.remove(key) {
            t.abort();
        }
    }

    /// Whether a call on an owner object (a status write, a finalizer) is in flight.
    pub fn has_owner_calls(&self) -> bool {
        self.tasks
            .keys()
            .any(|k| matches!(k.kind, TaskKind::Owner(_)))
    }

    /// Cancels every task of `owner` (its object is gone).
    pub fn cancel_owner(&mut self, owner: &str) {
        self.tasks.retain(|k, (_, t)| {
            let keep = k.owner != owner;
            if !keep {
                t.abort();
            }
            keep
        });
    }

    /// Cancels everything and drops the outcomes not taken yet (the lease is lost).
    pub fn cancel_all(&mut self) {
        for (_, (_, t)) in self.tasks.drain() {
            t.abort();
        }
        while self.rx.try_recv().is_ok() {}
    }

    /// The outcomes that arrived since the last call, in order. A task's last outcome
    /// also ends its entry in the table.
    pub fn outcomes(&mut self) -> Vec<(TaskKey, O)> {
        let mut out = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            if self.tasks.get(&m.key).is_none_or(|(run, _)| *run != m.run) {
                continue; // Cancelled, or an earlier run of the key.
            }
            if m.last {
                self.tasks.remove(&m.key);
            }
            if let Some(o) = m.outcome {
                out.push((m.key, o));
            }
        }
        out
    }
}

impl<O> Drop for Executor<O> {
    fn drop(&mut self) {
        for (_, t) in self.tasks.values() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(object: &str, kind: TaskKind) -> TaskKey {
        TaskKey {
            owner: "r".into(),
            object: object.into(),
            kind,
        }
    }

    #[tokio::test]
    async fn one_task_per_key_and_every_outcome_comes_back_once() {
        let wake = Arc::new(Notify::new());
        let mut ex: Executor<u32> = Executor::new(2, wake.clone());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        ex.spawn(
            key("n1", TaskKind::Drain),
            tracing::Span::none(),
            async move {
                let _ = go_rx.await;
                Some(1)
            },
        );
        // A second drain of n1 while the first runs is refused.
        ex.spawn(key("n1", TaskKind::Drain), tracing::Span::none(), async {
            Some(99)
        });
        ex.spawn_with(
            key("n2", TaskKind::Gates),
            tracing::Span::none(),
            |sink| async move {
                sink.send(7);
                Some(8)
            },
        );
        assert!(ex.running(&key("n1", TaskKind::Drain)));
        let _ = go_tx.send(());
        let mut got = Vec::new();
        while got.len() < 3 {
            wake.notified().await;
            got.extend(ex.outcomes().into_iter().map(|(k, o)| (k.object, o)));
        }
        got.sort();
        assert_eq!(
            got,
            [
                ("n1".to_owned(), 1),
                ("n2".to_owned(), 7),
                ("n2".to_owned(), 8)
            ]
        );
        assert!(
            !ex.running(&key("n1", TaskKind::Drain)),
            "finished tasks leave the table"
        );
    }
}
