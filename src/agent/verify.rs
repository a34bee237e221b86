//! Runs one node's health gates as a task: every `interval` it measures (waypoints from
//! the watch caches, the node's ztunnel metrics endpoint, the Prometheus queries), asks
//! the pure verdict (`crate::health::gates`) and reports progress and the final verdict
//! to the reconcile loop.
//!
//! Bounded, so that a gate ends when its `timeout` says and the agent's memory does not
//! depend on the endpoints: a round's scrape and queries run concurrently, each within
//! its own (capped) timeout, and all of them end by the gate's deadline
//! (`health::rounds`); at the deadline the last round is judged. Requests take one of
//! the agent-wide slots of the shared HTTP client (`health::http_client`), whose answers
//! are capped in size and read once. Only the scrapes of the soak window are kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use ztunnel_rollout_core::rollout::pass::{GateEvent, GateRequest, Outcome};

use super::executor::Sink;

use super::observe::Observed;
use super::pod_index::PodFacts;
use crate::health::gates::{
    Baselines, CheckResult, GateVerdict, PrometheusSettings, Waypoint, ZtunnelScrape,
    enrolled_in_ambient, prometheus_check, verdict, waypoint_check, ztunnel_checks,
};
use crate::health::http_client::{Bounds, HttpClient};
use crate::health::rounds::{Round, next_round, trim_to_window, verdict_at_deadline};
use crate::health::{credentials, prometheus, ztunnel_metrics};
use ztunnel_rollout_core::label_selector::Selector;
use ztunnel_rollout_core::labels::{DATAPLANE_MODE_LABEL, GATEWAY_NAME_LABEL};

/// Shared by every gate task: one HTTP client, so one limit on the requests in flight
/// across the agent.
pub struct Gates {
    pub observed: Arc<Observed>,
    pub http: HttpClient,
    /// Reads the Prometheus credentials' Secrets.
    pub client: kube::Client,
    /// The agent's namespace: the only one it reads Secrets from.
    pub namespace: String,
}

/// What a node's gate task keeps between rounds.
#[derive(Default)]
struct Memory {
    healthy_since: Option<Timestamp>,
    /// The scrapes of the soak window, oldest first.
    scrapes: Vec<ZtunnelScrape>,
    /// Each `maxIncrease` query's value just before the node was touched.
    baselines: Baselines,
    /// The last round's results, judged when the deadline comes.
    last: Option<Vec<CheckResult>>,
    /// The client for Prometheus, once its credentials were read.
    prometheus: Option<HttpClient>,
}

/// `deadline` on the tokio clock.
fn instant_at(deadline: Timestamp) -> tokio::time::Instant {
    let left = Duration::try_from(deadline.duration_since(Timestamp::now())).unwrap_or_default();
    tokio::time::Instant::now() + left
}

impl Gates {
    /// Runs the node's gates until their verdict: progress (`Waiting`) goes to `sink`,
    /// the verdict is the result.
    pub async fn run(&self, req: GateRequest, sink: Sink<Outcome>) -> Option<Outcome> {
        let event = |event| Outcome::Gate {
            node: req.node.clone(),
            event,
        };
        let s = &req.settings;
        let mut memory = Memory::default();
        let mut last_why = String::new();
        loop {
            let now = Timestamp::now();
            let round = next_round(
                req.ready_since,
                memory.healthy_since,
                now,
                s,
                memory.last.is_some(),
            );
            let verdict = match (round, memory.last.take()) {
                (Round::Measure { deadline }, _) => {
                    let results = self.round(&req, now, deadline, &mut memory).await;
                    let now = Timestamp::now();
                    let v = verdict(&results, req.ready_since, &mut memory.healthy_since, now, s);
                    memory.last = Some(results);
                    v
                }
                (Round::JudgeLast, last) => verdict_at_deadline(
                    &last.unwrap_or_default(),
                    req.ready_since,
                    &mut memory.healthy_since,
                    now,
                    s,
                ),
            };
            match verdict {
                GateVerdict::Passed(note) => return Some(event(GateEvent::Done(Ok(note)))),
                GateVerdict::Failed(why) => return Some(event(GateEvent::Done(Err(why)))),
                GateVerdict::Waiting { until, why } => {
                    if why != last_why {
                        sink.send(event(GateEvent::Waiting(why.clone())));
                        last_why = why;
                    }
                    let now = Timestamp::now();
                    let left = Duration::try_from(until.duration_since(now)).unwrap_or_default();
                    tokio::time::sleep(left.min(s.interval)).await;
                }
            }
        }
    }

    /// Measures every configured check once; the scrape and the queries run at once,
    /// and all of them end by `deadline`.
    async fn round(
        &self,
        req: &GateRequest,
        now: Timestamp,
        deadline: Timestamp,
        memory: &mut Memory,
    ) -> Vec<CheckResult> {
        let s = &req.settings;
        let until = instant_at(deadline);
        let mut results = Vec::new();
        if let Some(selector) = &s.waypoint_selector {
            results.push(waypoint_check(&waypoints(&self.observed, selector)));
        }
        let at = now.duration_since(req.ready_since).as_secs_f64();
        let scrape = async {
            let m = s.ztunnel_metrics.as_ref()?;
            let bounds = Bounds {
                timeout: s.scrape_timeout(),
                deadline: Some(until),
            };
            Some(match self.ztunnel_endpoint(req) {
                None => Err(format!(
                    "no Ready ztunnel pod with an IP on node {} on revision {}",
                    req.node, req.target_hash
                )),
                Some((pod, ip)) => {
                    ztunnel_metrics::scrape(&self.http, &pod, &ip, m.port, at, bounds).await
                }
            })
        };
        let http = match (&s.prometheus, &memory.prometheus) {
            (None, _) => Ok(self.http.clone()),
            (Some(_), Some(client)) => Ok(client.clone()),
            (Some(p), None) => {
                let client = self.prometheus_http(p, until).await;
                memory.prometheus = client.as_ref().ok().cloned();
                client
            }
        };
        let baselines = &memory.baselines;
        let http = &http;
        let queries = async {
            let Some(p) = &s.prometheus else {
                return Vec::new();
            };
            let bounds = Bounds {
                timeout: s.query_timeout(),
                deadline: Some(until),
            };
            let before = req
                .touched_at
                .unwrap_or(req.ready_since)
                .checked_sub(SignedDuration::from_secs(1))
                .ok();
            join_all(p.queries.iter().map(|q| async move {
                let text = q.for_node(&req.node);
                let then = baselines.needed(q).then_some(before);
                let (now, baseline) =
                    prometheus::now_and_then(http, &p.url, &text, then, bounds).await;
                (q, baseline, now)
            }))
            .await
        };
        let (latest, answers) = futures::join!(scrape, queries);
        if let (Some(m), Some(latest)) = (&s.ztunnel_metrics, latest) {
            if let Ok(scrape) = &latest {
                memory.scrapes.push(scrape.clone());
                trim_to_window(&mut memory.scrapes, at, s.soak);
            }
            let ambient = ambient_pods(&self.observed, &req.node, &req.ds_uid);
            results.extend(ztunnel_checks(
                latest.as_ref().map_err(String::as_str),
                &memory.scrapes,
                ambient,
                m,
                s,
            ));
        }
        for (q, fresh, answer) in answers {
            let baseline = memory.baselines.for_round(q, fresh);
            results.push(prometheus_check(
                q,
                &req.node,
                &answer,
                baseline.as_ref(),
                s,
            ));
        }
        results
    }

    /// The client for `p`'s URL with its credentials (read from their Secrets by
    /// `deadline`), or why there is none, for the gate's reasons.
    pub async fn prometheus_http(
        &self,
        p: &PrometheusSettings,
        deadline: tokio::time::Instant,
    ) -> Result<HttpClient, String> {
        let read = credentials::prometheus_client(
            &self.client,
            &self.namespace,
            &p.credentials,
            &self.http,
        );
        match tokio::time::timeout_at(deadline, read).await {
            Ok(read) => read.map_err(|e| format!("Prometheus credentials: {e}")),
            Err(_) => {
                Err("Prometheus credentials: not read by the health gate's deadline".to_owned())
            }
        }
    }

    /// The node's ztunnel pod on the target revision, not being deleted, and its IP (the
    /// gates run once the node machine saw it Ready).
    fn ztunnel_endpoint(&self, req: &GateRequest) -> Option<(String, String)> {
        self.observed.revisioned_pods.with(|pods| {
            pods.values()
                .filter(|p| {
                    p.owned_by(&req.ds_uid)
                        && p.node.as_deref() == Some(req.node.as_str())
                        && p.revision_hash.as_deref() == Some(req.target_hash.as_str())
                        && !p.terminating
                })
                .find_map(|p| Some((p.name.clone(), p.ip.clone()?)))
        })
    }
}

/// Pods on `node` that ztunnel proxies: running, not host-networked, enrolled in ambient
/// mode by their own label or their namespace's, not opted out, and not ztunnel itself
/// (DaemonSet `ds_uid`).
pub fn ambient_pods(observed: &Observed, node: &str, ds_uid: &str) -> usize {
    enrolled_pods(observed, node, ds_uid).len()
}

/// Those pods.
pub fn enrolled_pods(observed: &Observed, node: &str, ds_uid: &str) -> Vec<PodFacts> {
    let namespaces: HashMap<String, bool> = observed
        .namespaces
        .state()
        .iter()
        .map(|n| {
            (
                n.name_any(),
                n.labels().get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some("ambient"),
            )
        })
        .collect();
    observed
        .all_pods
        .running_on(node, ds_uid)
        .into_iter()
        .filter(|p| !p.host_network)
        .filter(|p| {
            enrolled_in_ambient(
                p.dataplane_mode.as_deref(),
                namespaces.get(&*p.namespace).copied().unwrap_or(false),
            )
        })
        .collect()
}

/// The waypoint Deployments `selector` picks, with their Gateways and PDB coverage.
pub fn waypoints(observed: &Observed, selector: &Selector) -> Vec<Waypoint> {
    let pdbs = observed.pdbs.state();
    let gateways = observed.gateways.get();
    let mut out: Vec<Waypoint> = observed
        .deployments
        .state()
        .iter()
        .filter(|d| selector.matches(d.labels()))
        .map(|d| waypoint(d, &pdbs, gateways))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

fn waypoint(
    d: &Deployment,
    pdbs: &[Arc<k8s_openapi::api::policy::v1::PodDisruptionBudget>],
    gateways: Option<&kube::runtime::reflector::Store<super::observe::Gateway>>,
) -> Waypoint {
    let namespace = d.namespace().unwrap_or_default();
    let template_labels = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let has_pdb = pdbs.iter().any(|p| {
        p.namespace().as_deref() == Some(namespace.as_str())
            && p.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|ls| Selector::from_label_selector(ls).ok())
                .is_some_and(|sel| sel.matches(&template_labels))
    });
    let programmed = match (gateways, d.labels().get(GATEWAY_NAME_LABEL)) {
        (Some(store), Some(gw)) => Some(
            match store.get(&kube::runtime::reflector::ObjectRef::new(gw).within(&namespace)) {
                None => Err("not found".to_owned()),
                Some(g) => {
                    let programmed = g
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Programmed"));
                    match programmed {
                        Some(c) if c.status == "True" => Ok(()),
                        Some(c) => Err(format!("is not Programmed: {}", c.reason)),
                        None => Err("has no Programmed condition yet".to_owned()),
                    }
                }
            },
        ),
        _ => None,
    };
    Waypoint {
        name: d.name_any(),
        namespace,
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        available: d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
        programmed,
        has_pdb,
    }
}
