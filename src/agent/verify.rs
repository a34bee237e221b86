//! Runs one node's health gates as a task: every `interval` it measures (waypoints from
//! the watch caches, the node's ztunnel metrics endpoint, the Prometheus queries), asks
//! the pure verdict (`crate::health::gates`) and reports progress and the final verdict
//! to the reconcile loop. Every wait is bounded by the gate's timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use ztunnel_rollout_core::rollout::pass::{GateEvent, GateRequest, Outcome};

use super::executor::Sink;

use super::observe::Observed;
use crate::health::gates::{
    CheckResult, GateVerdict, QueryAnswer, Waypoint, ZtunnelScrape, enrolled_in_ambient,
    prometheus_check, verdict, waypoint_check, ztunnel_checks,
};
use crate::health::http_client::HttpClient;
use crate::health::{prometheus, ztunnel_metrics};
use ztunnel_rollout_core::label_selector::Selector;
use ztunnel_rollout_core::labels::{DATAPLANE_MODE_LABEL, GATEWAY_NAME_LABEL, REVISION_HASH_LABEL};

/// Shared by every gate task.
pub struct Gates {
    pub observed: Arc<Observed>,
    pub http: HttpClient,
}

impl Gates {
    /// Runs the node's gates until their verdict: progress (`Waiting`) goes to `sink`,
    /// the verdict is the result.
    pub async fn run(&self, req: GateRequest, sink: Sink<Outcome>) -> Option<Outcome> {
        let event = |event| Outcome::Gate {
            node: req.node.clone(),
            event,
        };
        let mut healthy_since = None;
        let mut scrapes: Vec<ZtunnelScrape> = Vec::new();
        let mut baselines: HashMap<String, QueryAnswer> = HashMap::new();
        let mut last_why = String::new();
        loop {
            let now = Timestamp::now();
            let results = self.round(&req, now, &mut scrapes, &mut baselines).await;
            let now = Timestamp::now();
            match verdict(
                &results,
                req.ready_since,
                &mut healthy_since,
                now,
                &req.settings,
            ) {
                GateVerdict::Passed(note) => return Some(event(GateEvent::Done(Ok(note)))),
                GateVerdict::Failed(why) => return Some(event(GateEvent::Done(Err(why)))),
                GateVerdict::Waiting { until, why } => {
                    if why != last_why {
                        sink.send(event(GateEvent::Waiting(why.clone())));
                        last_why = why;
                    }
                    let left = Duration::try_from(until.duration_since(now)).unwrap_or_default();
                    tokio::time::sleep(left.min(req.settings.interval)).await;
                }
            }
        }
    }

    /// Measures every configured check once.
    async fn round(
        &self,
        req: &GateRequest,
        now: Timestamp,
        scrapes: &mut Vec<ZtunnelScrape>,
        baselines: &mut HashMap<String, QueryAnswer>,
    ) -> Vec<CheckResult> {
        let s = &req.settings;
        let mut results = Vec::new();
        if let Some(selector) = &s.waypoint_selector {
            results.push(waypoint_check(&waypoints(&self.observed, selector)));
        }
        if let Some(m) = &s.ztunnel_metrics {
            let at = now.duration_since(req.ready_since).as_secs_f64();
            let latest = match self.ztunnel_endpoint(req) {
                None => Err(format!(
                    "no Ready ztunnel pod with an IP on node {} on revision {}",
                    req.node, req.target_hash
                )),
                Some((pod, ip)) => {
                    let timeout = s
                        .interval
                        .clamp(Duration::from_secs(1), Duration::from_secs(10));
                    ztunnel_metrics::scrape(&self.http, &pod, &ip, m.port, at, timeout).await
                }
            };
            if let Ok(scrape) = &latest {
                scrapes.push(scrape.clone());
            }
            let ambient = ambient_pods(&self.observed, &req.node, &req.ds_uid);
            results.extend(ztunnel_checks(
                latest.as_ref().map_err(String::as_str),
                scrapes,
                ambient,
                m,
                s,
            ));
        }
        if let Some(p) = &s.prometheus {
            for q in &p.queries {
                let text = q.for_node(&req.node);
                if q.needs_baseline() && !baselines.contains_key(&q.name) {
                    let before = req
                        .touched_at
                        .unwrap_or(req.ready_since)
                        .checked_sub(SignedDuration::from_secs(1))
                        .ok();
                    let answer =
                        prometheus::query(&self.http, &p.url, &text, before, p.query_timeout).await;
                    baselines.insert(q.name.clone(), answer);
                }
                let answer =
                    prometheus::query(&self.http, &p.url, &text, None, p.query_timeout).await;
                results.push(prometheus_check(
                    q,
                    &req.node,
                    &answer,
                    baselines.get(&q.name),
                    s,
                ));
            }
        }
        results
    }

    /// The node's Ready ztunnel pod on the target revision, and its IP.
    fn ztunnel_endpoint(&self, req: &GateRequest) -> Option<(String, String)> {
        self.observed
            .revisioned_pods
            .state()
            .into_iter()
            .filter(|p| {
                p.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == req.ds_uid)
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&req.node)
                    && p.labels().get(REVISION_HASH_LABEL) == Some(&req.target_hash)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .find_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some((p.name_any(), ip))
            })
    }
}

/// Pods on `node` that ztunnel proxies: running, not host-networked, enrolled in ambient
/// mode by their own label or their namespace's, not opted out, and not ztunnel itself
/// (DaemonSet `ds_uid`).
pub fn ambient_pods(observed: &Observed, node: &str, ds_uid: &str) -> usize {
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
        .iter()
        .filter(|p| !p.host_network)
        .filter(|p| {
            enrolled_in_ambient(
                p.dataplane_mode.as_deref(),
                namespaces.get(&p.namespace).copied().unwrap_or(false),
            )
        })
        .count()
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
