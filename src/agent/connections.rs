//! Runs one node's connections-drained gate as a task: after the drain, every
//! `interval` it reads the old ztunnel pod's metrics (at its pod IP), counts the
//! connections still open through it by workload, and asks the core's verdict
//! (`health::connections`) whether to keep waiting; the verdict goes back to the
//! reconcile loop, which deletes the pod or fails the node. The workloads the drain
//! leaves on the node (ambient-enrolled DaemonSet and static pods) come from the watch
//! caches: their connections never close before ztunnel goes, so they are not waited
//! for.
//!
//! Bounded like the other gates: each read takes one of the shared HTTP client's slots,
//! within the scrape timeout and by the gate's deadline; only the per-workload counts
//! of the last read are kept.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use ztunnel_rollout_core::health::connections::{Verdict, Workload, read_open, verdict};
use ztunnel_rollout_core::rollout::pass::{ConnectionsEvent, ConnectionsRequest, Outcome};

use super::executor::Sink;
use super::verify::{Gates, enrolled_pods};
use crate::health::http_client::Bounds;

/// One read's timeout, within the gate's deadline.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Gates {
    /// Waits until the old ztunnel's connections closed, or only those of pods that
    /// stay remain, or the timeout: the verdict is the result; progress goes to `sink`.
    pub async fn connections(
        &self,
        req: ConnectionsRequest,
        sink: Sink<Outcome>,
    ) -> Option<Outcome> {
        let outcome = |event| Outcome::Connections {
            node: req.node.clone(),
            event,
        };
        let timeout = req.settings.timeout;
        let mut last_why = String::new();
        loop {
            let now = Timestamp::now();
            let Some(ip) = self.pod_ip(&req.pod_uid) else {
                return Some(outcome(ConnectionsEvent::Closed(format!(
                    "ztunnel pod {} is gone",
                    req.pod
                ))));
            };
            let left = deadline_left(req.started, timeout, now);
            let read = match ip {
                None => Err(format!("ztunnel pod {} has no IP", req.pod)),
                Some(ip) => self.read(&req, &ip, left).await,
            };
            let staying = staying(&enrolled_pods(&self.observed, &req.node, &req.ds_uid));
            let now = Timestamp::now();
            match verdict(
                read.as_ref().map_err(String::as_str),
                &staying,
                req.started,
                now,
                timeout,
            ) {
                Verdict::Closed(note) => return Some(outcome(ConnectionsEvent::Closed(note))),
                Verdict::Open(what) => return Some(outcome(ConnectionsEvent::Open(what))),
                Verdict::Waiting { until, why } => {
                    if why != last_why {
                        sink.send(outcome(ConnectionsEvent::Waiting(why.clone())));
                        last_why = why;
                    }
                    let left = Duration::try_from(until.duration_since(now)).unwrap_or_default();
                    tokio::time::sleep(left.min(req.interval)).await;
                }
            }
        }
    }

    /// The pod's IP (`Some(None)` before it has one); `None` once the pod is gone.
    fn pod_ip(&self, uid: &str) -> Option<Option<String>> {
        self.observed.revisioned_pods.get(uid).map(|p| p.ip.clone())
    }

    async fn read(
        &self,
        req: &ConnectionsRequest,
        ip: &str,
        left: Duration,
    ) -> Result<ztunnel_rollout_core::health::connections::OpenConnections, String> {
        let url = crate::health::ztunnel_metrics::metrics_url(ip, req.settings.port);
        let bounds = Bounds {
            timeout: READ_TIMEOUT.min(req.interval.max(Duration::from_secs(1))),
            deadline: Some(tokio::time::Instant::now() + left.max(Duration::from_secs(1))),
        };
        self.http
            .fetch(&url, bounds, |body| match std::str::from_utf8(body) {
                Ok(text) => read_open(text),
                Err(_) => Err("the metrics are not UTF-8 text".to_owned()),
            })
            .await
            .map_err(|e| format!("ztunnel pod {} metrics {e}", req.pod))?
            .map_err(|e| format!("ztunnel pod {} metrics at {url}: {e}", req.pod))
    }
}

/// Time left until the gate's timeout.
fn deadline_left(started: Timestamp, timeout: Duration, now: Timestamp) -> Duration {
    let elapsed = Duration::try_from(now.duration_since(started)).unwrap_or_default();
    timeout.saturating_sub(elapsed)
}

/// The workloads of enrolled pods no drain moves, as ztunnel's metrics name them: a
/// DaemonSet's pods by the DaemonSet's name, a static pod by its own.
pub fn staying(pods: &[super::pod_index::PodFacts]) -> BTreeSet<Workload> {
    pods.iter()
        .filter_map(|p| {
            let name = match (&p.daemon_set, p.static_pod) {
                (Some(ds), _) => ds.to_string(),
                (None, true) => p.name.to_string(),
                (None, false) => return None,
            };
            Some(Workload {
                namespace: p.namespace.to_string(),
                name,
            })
        })
        .collect()
}
