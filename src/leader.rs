//! Leader election on a Lease (its writes conditional, see [`crate::lease_claim`]): only
//! the holder mutates anything.
//! The holder renews every third of the lease duration; it counts as leader only while
//! its last successful renewal is recent enough that no other replica can have taken
//! the lease, so a replica that loses it stops mutating at once — even when it cannot
//! reach the API server to find out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

use crate::lease_claim::{self, LeaseClaimError, Outcome};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not the leader: only the holder of the Lease {lease} may change the cluster")]
pub struct NotLeader {
    pub lease: String,
}

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease: the pod name in a cluster.
    pub identity: String,
    pub lease_duration: Duration,
}

impl LeaderConfig {
    pub fn renew_every(&self) -> Duration {
        self.lease_duration / 3
    }
}

/// `$POD_NAME` when running in a pod, else `<hostname>-<pid>`.
pub fn identity_from_env() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "local".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Whether a holder whose last successful renewal was at `renewed` may still act at
/// `now`: the lease must have a safety margin left (a fifth of its duration) for clock
/// drift and the time the mutation itself takes.
pub fn still_leading(renewed: Option<Instant>, now: Instant, lease_duration: Duration) -> bool {
    renewed.is_some_and(|r| now.saturating_duration_since(r) < lease_duration - lease_duration / 5)
}

/// A replica's view of its leadership, kept up to date by [`spawn`].
#[derive(Clone)]
pub struct Leadership {
    renewed: watch::Receiver<Option<Instant>>,
    config: LeaderConfig,
    hand_over: mpsc::UnboundedSender<Duration>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        still_leading(
            *self.renewed.borrow(),
            Instant::now(),
            self.config.lease_duration,
        )
    }

    /// How often the lease is renewed: leadership can lapse without any event, so a
    /// loop looks again at least this often.
    pub fn renew_every(&self) -> Duration {
        self.config.renew_every()
    }

    /// Call before every mutation.
    pub fn check(&self) -> Result<(), NotLeader> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(NotLeader {
                lease: format!("{}/{}", self.config.namespace, self.config.lease_name),
            })
        }
    }

    /// Releases the lease now and does not try to take it again for `hold_off`, so that
    /// another replica takes over (this one is about to be drained). Leadership ends at
    /// once.
    pub fn hand_over(&self, hold_off: Duration) {
        let _ = self.hand_over.send(hold_off);
    }

    /// Waits until this replica leads.
    pub async fn acquired(&mut self) {
        loop {
            if self.is_leader() {
                return;
            }
            if self.renewed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Starts acquiring and renewing the lease in the background. Dropping the handle's
/// task (abort) stops renewing; [`step_down`] releases the lease for a fast hand-over.
pub fn spawn(client: Client, config: LeaderConfig) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let (hand_over_tx, mut hand_over) = mpsc::unbounded_channel::<Duration>();
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let (name, identity, duration) = (
        config.lease_name.clone(),
        config.identity.clone(),
        config.lease_duration,
    );
    let every = config.renew_every();
    let lease = format!("{}/{}", config.namespace, config.lease_name);
    let task = tokio::spawn(async move {
        let mut leading = false;
        loop {
            let attempt = Instant::now();
            match lease_claim::try_acquire_or_renew(&api, &name, &identity, duration).await {
                Ok(Outcome::Acquired) => {
                    if !leading {
                        info!(lease, "acquired the lease");
                    }
                    leading = true;
                    tx.send_replace(Some(attempt));
                }
                Ok(Outcome::NotAcquired { .. }) => {
                    if leading {
                        warn!(lease, "lost the lease to another replica");
                    }
                    leading = false;
                    tx.send_replace(None);
                }
                // Keep the last renewal: leadership then ends by itself when it ages out.
                Err(e) => warn!(lease, error = %e, "could not renew the lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep_until(attempt + every) => {}
                Some(hold_off) = hand_over.recv() => {
                    tx.send_replace(None);
                    if leading {
                        info!(lease, ?hold_off, "handing the lease over");
                        if let Err(e) = lease_claim::release(&api, &name, &identity).await {
                            warn!(lease, error = %e, "could not release the lease; it expires by itself");
                        }
                    }
                    leading = false;
                    tokio::time::sleep(hold_off).await;
                }
            }
        }
    });
    (
        Leadership {
            renewed: rx,
            config,
            hand_over: hand_over_tx,
        },
        task,
    )
}

/// Releases the lease if this replica holds it (graceful shutdown).
pub async fn step_down(client: Client, config: &LeaderConfig) -> Result<(), LeaseClaimError> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    lease_claim::release(&api, &config.lease_name, &config.identity).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_ends_before_the_lease_could_be_taken() {
        let ttl = Duration::from_secs(15);
        let t0 = Instant::now();
        assert!(!still_leading(None, t0, ttl));
        assert!(still_leading(Some(t0), t0 + Duration::from_secs(11), ttl));
        assert!(
            !still_leading(Some(t0), t0 + Duration::from_secs(12), ttl),
            "a fifth of the lease is kept as margin"
        );
        assert!(!still_leading(Some(t0), t0 + Duration::from_secs(20), ttl));
    }

    #[test]
    fn identity_prefers_the_pod_name() {
        // The variable is only read here; other tests do not set it.
        let id = identity_from_env();
        match std::env::var("POD_NAME") {
            Ok(pod) => assert_eq!(id, pod),
            Err(_) => assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}"),
        }
    }
}
