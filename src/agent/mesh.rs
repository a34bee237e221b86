//! Runs a rollout's mesh-wide breaker as a task: every `interval` it evaluates the
//! rollout's `meshQueries` against its Prometheus (with its credentials), the
//! `maxIncrease` ones also at the time just before the first cordon, and asks the core's
//! verdict (`health::mesh`). It ends only when the breaker trips — the reconcile loop
//! then stops new nodes — or when it is cancelled (the rollout ended, its spec changed).
//! Requests take the shared HTTP client's slots, each within `queryTimeout`.

use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use ztunnel_rollout_core::health::gates::Baselines;
use ztunnel_rollout_core::health::mesh::{Verdict, verdict};
use ztunnel_rollout_core::rollout::pass::{MeshEvent, MeshRequest, Outcome};

use super::executor::Sink;

use super::verify::Gates;
use crate::health::http_client::Bounds;
use crate::health::prometheus;

/// Rounds between reads of the credentials' Secrets.
const REREAD: u32 = 60;

impl Gates {
    /// Evaluates the mesh queries until one breaches; the breach is the result.
    pub async fn mesh(&self, req: MeshRequest, sink: Sink<Outcome>) -> Option<Outcome> {
        let s = &req.settings;
        let p = s.prometheus.as_ref()?;
        let before = req
            .baseline_at
            .checked_sub(SignedDuration::from_secs(1))
            .ok();
        let mut baselines = Baselines::default();
        let mut failing_since: Option<Timestamp> = None;
        let mut held = false;
        let mut rounds: u32 = 0;
        let mut http: Result<crate::health::http_client::HttpClient, String> = Err(String::new());
        loop {
            let deadline = tokio::time::Instant::now() + s.interval.max(s.query_timeout());
            let bounds = Bounds {
                timeout: s.query_timeout(),
                deadline: Some(deadline),
            };
            // The credentials are read again every REREAD rounds (a rotated Secret is
            // used within minutes) and each round after a failed one (until they are
            // read: the interval is the backoff, the gates' timeout the bound, then the
            // breaker trips); each read by the round's deadline.
            if http.is_err() || failing_since.is_some() || rounds.is_multiple_of(REREAD) {
                http = self.prometheus_http(p, deadline).await;
            }
            rounds = rounds.wrapping_add(1);
            let answers = join_all(s.mesh_queries.iter().map(|q| {
                let (http, then) = (&http, baselines.needed(q).then_some(before));
                async move {
                    let (now, baseline) =
                        prometheus::now_and_then(http, &p.url, &q.query, then, bounds).await;
                    (q, now, baseline)
                }
            }))
            .await;
            let round: Vec<_> = answers
                .into_iter()
                .map(|(q, now, fresh)| (q, now, baselines.for_round(q, fresh)))
                .collect();
            let now = Timestamp::now();
            match verdict(&round, failing_since, now, s) {
                Verdict::Breached(breach) => {
                    return Some(Outcome::Mesh {
                        generation: req.generation,
                        event: MeshEvent::Breached(breach),
                    });
                }
                Verdict::Failing { since, why } => {
                    if failing_since.is_none() {
                        tracing::warn!(%why, "mesh breaker: queries cannot be evaluated");
                    }
                    failing_since = Some(since);
                }
                Verdict::Holds => {
                    failing_since = None;
                    if !held {
                        held = true;
                        sink.send(Outcome::Mesh {
                            generation: req.generation,
                            event: MeshEvent::Held,
                        });
                    }
                }
            }
            tokio::time::sleep(s.interval.max(Duration::from_secs(1))).await;
        }
    }
}
