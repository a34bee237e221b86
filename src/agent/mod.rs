//! The agent, the shell around `ztunnel_rollout_core`: leader election and the loop that
//! runs while this replica leads (here), the watches ([`observe`]) and the snapshots
//! built from them ([`snapshot`]), the rollouts' passes ([`rollouts`]) whose effects
//! ([`effects`]) run as tasks of one [`executor`] — node calls ([`node_actions`]),
//! the sweep of nodes whose rollout is gone ([`orphans`]),
//! drains, health gates ([`verify`]), calls on the rollout object ([`rollout_object`],
//! [`rollback`]) —, the sidecar migrations' loop ([`sidecar`]), Events ([`events`]) and
//! the health/metrics endpoint, with a graceful shutdown that records the current step
//! and hands the lease over.

pub mod connections;
pub mod effects;
pub mod events;
pub mod executor;
pub mod mesh;
pub mod node_actions;
pub mod observe;
pub mod orphans;
pub mod pod_index;
pub mod revisioned_pods;
pub mod rollback;
pub mod rollout_object;
pub mod rollouts;
pub mod sidecar;
pub mod snapshot;
pub mod status_patch;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::health_server::{self, HealthServerError, Liveness, Readiness};
use crate::leader::{self, LeaderConfig};
use crate::metrics::Metrics;
use events::EventSink;
use observe::Observed;
use rollouts::{PassError, RolloutSettings, Rollouts};

/// The shortest time between the starts of two reconcile passes. At 1,000 nodes events
/// arrive faster than passes complete; without a floor every event costs a pass over
/// all nodes, for at most this much less reaction time. At 1,000 nodes 10 ms gave a
/// reaction p50 of 70 ms for 10 % more agent CPU than 20 ms (BENCHMARKS.md).
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub leader: LeaderConfig,
    pub metrics_address: SocketAddr,
    pub rollouts: RolloutSettings,
    /// Re-evaluate everything at least this often even without watch events (time-based
    /// decisions have their own wake-ups; this is a safety net, not polling the API).
    pub resync: Duration,
    /// Only rollouts matching this label selector.
    pub rollout_selector: Option<String>,
    /// `/livez` fails once the loop has not turned for this long (see [`lead`]).
    pub liveness_bound: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    HealthServer(#[from] HealthServerError),
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    client: Client,
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let readiness = Readiness::default();
    let liveness = Liveness::new(config.liveness_bound);
    let (address, serve) = health_server::bind(
        config.metrics_address,
        Arc::new(registry),
        readiness.clone(),
        liveness.clone(),
    )
    .await?;
    info!(%address, "serving /metrics, /livez and /readyz");
    let server = tokio::spawn(serve);
    let _trims = AbortOnDrop(tokio::spawn(crate::malloc_trim::every(
        crate::malloc_trim::TRIM_EVERY,
    )));

    let (mut leadership, lease_task) = leader::spawn(client.clone(), config.leader.clone());
    let observed = Arc::new(Observed::start(&client, config.rollout_selector.as_deref()));
    let (events, events_task) = EventSink::start(client.clone(), config.leader.identity.clone());
    let migrations = sidecar::SidecarMigrations::new(
        client.clone(),
        observed.clone(),
        leadership.clone(),
        events.clone(),
        metrics.clone(),
    );
    let mut reconciler = Rollouts::new(
        client.clone(),
        observed.clone(),
        leadership.clone(),
        events,
        metrics.clone(),
        config.rollouts.clone(),
    );

    let mut shutdown = std::pin::pin!(shutdown);
    // Waiting for the watches is a turn of the loop too: the watchers retry on their own
    // (readiness says whether they synced), liveness only that this task still runs.
    let mut synced = std::pin::pin!(observed.synced());
    loop {
        liveness.tick();
        tokio::select! {
            _ = &mut synced => break,
            _ = tokio::time::sleep(tick_every(config.liveness_bound)) => {}
            _ = &mut shutdown => {
                drop(reconciler);
                drop(migrations);
                return finish(client, &config, lease_task, server, events_task).await;
            }
        }
    }
    readiness.set(true);
    info!("watches synced");
    // The first lists leave their pages and JSON buffers free inside malloc's arenas;
    // hand them back before the first pass adds its own, rather than at the next tick.
    crate::malloc_trim::now().await;
    // Started only now: a store's readiness wakes one waiter at a time (kube-runtime),
    // so the two loops must not wait for the same stores at once.
    let migrations_task = AbortOnDrop(tokio::spawn(migrations.run(config.resync)));

    lead(
        &mut reconciler,
        &mut leadership,
        &observed,
        &metrics,
        &config,
        &liveness,
        shutdown.as_mut(),
    )
    .await;
    if leadership.is_leader() {
        reconciler.flush().await;
    }
    drop(reconciler);
    drop(migrations_task);
    finish(client, &config, lease_task, server, events_task).await
}

/// How often a waiting loop ticks [`Liveness`]: well inside its bound.
fn tick_every(bound: Duration) -> Duration {
    bound / 4
}

/// The rollouts' loop, until `shutdown`: waits for the lease, then runs passes — one at
/// most every `MIN_PASS_INTERVAL`, and again when a watch changes, a pass's wake-up
/// time comes, or the lease is due for a look.
///
/// Every turn ticks `liveness`, and so does the wait for the lease (at `tick_every`): a
/// replica that does not lead stays live, a pass that never returns stops the ticks.
async fn lead(
    reconciler: &mut Rollouts,
    leadership: &mut crate::leader::Leadership,
    observed: &Observed,
    metrics: &Metrics,
    config: &AgentConfig,
    liveness: &Liveness,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    let mut leading = false;
    let mut last_pass = Instant::now();
    let tick = tick_every(liveness.bound());
    loop {
        liveness.tick();
        if !leadership.is_leader() {
            metrics.is_leader.set(0);
            reconciler.reset();
            leading = false;
            info!(lease = %format!("{}/{}", config.leader.namespace, config.leader.lease_name), "waiting for the lease");
            let mut acquired = std::pin::pin!(leadership.acquired());
            loop {
                tokio::select! {
                    _ = &mut acquired => break,
                    _ = tokio::time::sleep(tick) => liveness.tick(),
                    _ = shutdown.as_mut() => return,
                }
            }
        }
        if !leading {
            info!(identity = %config.leader.identity, "leading");
            leading = true;
        }
        metrics.is_leader.set(1);
        // Passes walk every node: under a stream of events, one at most every
        // MIN_PASS_INTERVAL, so that one pass covers many events.
        tokio::time::sleep_until(last_pass + MIN_PASS_INTERVAL).await;
        let started = Instant::now();
        last_pass = started;
        let passed = reconciler.pass().await;
        metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
        let wake = match passed {
            Ok(wake) => wake,
            Err(PassError::NotLeader(e)) => {
                warn!(error = %e, "stopped mid-pass");
                continue;
            }
        };
        let deadline = wake
            .unwrap_or_else(|| Instant::now() + config.resync)
            .min(Instant::now() + config.resync);
        tokio::select! {
            _ = observed.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            // Leadership can lapse without any event: look again before it would.
            _ = tokio::time::sleep(config.leader.renew_every()) => {}
            // An idle loop turns too, or it would not be live.
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.as_mut() => break,
        }
    }
}

/// Aborts the task when dropped: the sidecar migrations and the trims stop with the agent.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn finish(
    client: Client,
    config: &AgentConfig,
    lease_task: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
    mut events_task: tokio::task::JoinHandle<()>,
) -> Result<(), AgentError> {
    info!("shutting down");
    lease_task.abort();
    server.abort();
    // The Event queue ends once every sender is gone: give it a moment to drain.
    if tokio::time::timeout(Duration::from_secs(2), &mut events_task)
        .await
        .is_err()
    {
        events_task.abort();
    }
    if let Err(e) = leader::step_down(client, &config.leader).await {
        warn!(error = %e, "could not release the lease; another replica takes it when it expires");
    }
    Ok(())
}
