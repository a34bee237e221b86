//! The health gates' decisions: each check's outcome from what was measured, and the
//! node's verdict from the outcomes, the soak and the deadline. Pure, with injected time;
//! the agent's `verify` shell measures and feeds them, within the bounds of
//! [`super::rounds`].

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use std::collections::BTreeMap;

pub use super::query_answer::parse_query_answer;
use super::verdicts::{Sample, Threshold, check, increase, rate};

/// What a check needs from the gate settings (`spec.health`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub soak: Duration,
    pub interval: Duration,
    pub timeout: Duration,
    pub rollback: bool,
    pub max_failed_nodes: usize,
    pub uncordon_failed_nodes: bool,
    /// A check without data passes (`noData: Pass`) instead of failing.
    pub pass_without_data: bool,
    /// Which Deployments are waypoints; `None`: the waypoint gate is off.
    pub waypoint_selector: Option<crate::label_selector::Selector>,
    pub ztunnel_metrics: Option<ZtunnelMetricsSettings>,
    /// The connections-drained gate before the old ztunnel is deleted; `None`: off (no
    /// ztunnel metrics, or a zero timeout).
    pub connection_drain: Option<ConnectionDrainSettings>,
    pub prometheus: Option<PrometheusSettings>,
    /// The mesh-wide breaker's queries (against `prometheus`'s URL).
    pub mesh_queries: Vec<QuerySettings>,
    /// The bake after uncordon; `None`: no bake (unset or zero).
    pub bake: Option<Duration>,
}

impl HealthSettings {
    /// The gates of a node's bake: the same checks, judged by the same verdict, with
    /// the bake as the soak (every check healthy for the whole bake, without a break)
    /// and `timeout` counted from when the bake could have ended at the earliest (the
    /// pods coming back may take that long to start and be enrolled). `None`: no bake.
    pub fn for_bake(&self) -> Option<HealthSettings> {
        let bake = self.bake?;
        Some(HealthSettings {
            soak: bake,
            timeout: bake.saturating_add(self.timeout),
            bake: None,
            ..self.clone()
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionDrainSettings {
    /// ztunnel's metrics port.
    pub port: u16,
    pub timeout: Duration,
    /// What connections still open at the end do.
    pub policy: crate::api::rollout::OpenConnectionsPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZtunnelMetricsSettings {
    pub port: u16,
    pub check_proxies: bool,
    pub max_failed_connections_per_second: Option<f64>,
    pub max_closed_per_opened: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusSettings {
    pub url: String,
    /// What the queries authenticate with (Secrets in the agent's namespace).
    pub credentials: super::credentials::PrometheusCredentials,
    pub query_timeout: Duration,
    pub queries: Vec<QuerySettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuerySettings {
    pub name: String,
    pub query: String,
    pub limit: QueryLimit,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueryLimit {
    Max(f64),
    MaxIncrease(f64),
}

impl QuerySettings {
    /// The query for one node: `$node` replaced by its name.
    pub fn for_node(&self, node: &str) -> String {
        self.query.replace("$node", node)
    }

    pub fn needs_baseline(&self) -> bool {
        matches!(self.limit, QueryLimit::MaxIncrease(_))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Passed; the note says what was seen.
    Healthy(String),
    /// Not healthy yet (e.g. a waypoint still starting): the soak waits, and the node
    /// fails only if it lasts past the gate's timeout.
    NotYet(String),
    Failed(String),
}

/// One check's outcome, named for the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub outcome: Outcome,
}

impl CheckResult {
    fn new(name: impl Into<String>, outcome: Outcome) -> Self {
        Self {
            name: name.into(),
            outcome,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum GateVerdict {
    Passed(String),
    /// Decide again at `until` at the latest.
    Waiting {
        until: Timestamp,
        why: String,
    },
    Failed(String),
}

/// The verdict over one round of checks. `started` is when the node's ztunnel became
/// Ready (the gate's clock); `healthy_since` is updated in place: the soak restarts
/// whenever a check is not healthy.
pub fn verdict(
    results: &[CheckResult],
    started: Timestamp,
    healthy_since: &mut Option<Timestamp>,
    now: Timestamp,
    settings: &HealthSettings,
) -> GateVerdict {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Failed(why) => Some(format!("{}: {why}", r.name)),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        return GateVerdict::Failed(failed.join("; "));
    }
    let not_yet: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::NotYet(why) => Some(format!("{}: {why}", r.name)),
            _ => None,
        })
        .collect();
    let deadline = add(started, settings.timeout);
    if !not_yet.is_empty() {
        *healthy_since = None;
        let why = not_yet.join("; ");
        if now >= deadline {
            return GateVerdict::Failed(format!(
                "not healthy within {}: {why}",
                crate::duration::format_duration(settings.timeout)
            ));
        }
        return GateVerdict::Waiting {
            until: deadline,
            why,
        };
    }
    let since = *healthy_since.get_or_insert(now);
    let soaked = add(since, settings.soak);
    // What the checks see now: the verdict's note, and the soak's current values.
    let notes: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Healthy(note) if !note.is_empty() => Some(format!("{}: {note}", r.name)),
            _ => None,
        })
        .collect();
    if now >= soaked {
        return GateVerdict::Passed(notes.join("; "));
    }
    let values = if notes.is_empty() {
        String::new()
    } else {
        format!(": {}", notes.join("; "))
    };
    GateVerdict::Waiting {
        until: soaked,
        why: format!(
            "soaking until {soaked} ({} healthy so far){values}",
            crate::duration::format_duration(
                Duration::try_from(now.duration_since(since)).unwrap_or_default()
            )
        ),
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

fn no_data(what: String, settings: &HealthSettings) -> Outcome {
    if settings.pass_without_data {
        Outcome::Healthy(format!("{what} (passed: noData is Pass)"))
    } else {
        Outcome::Failed(format!("{what} (failing closed: noData is Fail)"))
    }
}

/// A waypoint Deployment as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    pub desired: i32,
    pub available: i32,
    /// Its Gateway's `Programmed` condition, where the Gateway API is installed:
    /// `Some(Ok(()))` True, `Some(Err(why))` not (or the Gateway is missing).
    pub programmed: Option<Result<(), String>>,
    /// Whether a PodDisruptionBudget covers its pods.
    pub has_pdb: bool,
}

/// Every waypoint must have all its replicas available and its Gateway programmed.
pub fn waypoint_check(waypoints: &[Waypoint]) -> CheckResult {
    if waypoints.is_empty() {
        return CheckResult::new(
            "waypoints",
            Outcome::Healthy("no waypoints in the cluster: the gate passes".into()),
        );
    }
    let mut problems = Vec::new();
    for w in waypoints {
        if w.available < w.desired {
            problems.push(format!(
                "{}/{} has {}/{} replicas available",
                w.namespace, w.name, w.available, w.desired
            ));
        }
        if let Some(Err(why)) = &w.programmed {
            problems.push(format!("Gateway {}/{} {why}", w.namespace, w.name));
        }
    }
    let outcome = if problems.is_empty() {
        Outcome::Healthy(format!("{} Ready", waypoints.len()))
    } else {
        Outcome::NotYet(problems.join(", "))
    };
    CheckResult::new("waypoints", outcome)
}

/// Waypoints that draining a node interrupts: one replica, or no PodDisruptionBudget.
pub fn waypoint_warnings(waypoints: &[Waypoint]) -> Vec<String> {
    let mut out = Vec::new();
    for w in waypoints {
        if w.desired <= 1 {
            out.push(format!(
                "waypoint {}/{} has {} replica: draining its node interrupts the traffic through it",
                w.namespace, w.name, w.desired
            ));
        }
        if !w.has_pdb {
            out.push(format!(
                "waypoint {}/{} has no PodDisruptionBudget: a drain may evict all its replicas at once",
                w.namespace, w.name
            ));
        }
    }
    out
}

/// Whether ztunnel proxies a pod: its own `istio.io/dataplane-mode` label decides
/// (`ambient` enrolls, any other value such as `none` opts out), else its namespace's.
pub fn enrolled_in_ambient(pod_mode: Option<&str>, namespace_ambient: bool) -> bool {
    match pod_mode {
        Some(mode) => mode == "ambient",
        None => namespace_ambient,
    }
}

/// One scrape of the node's ztunnel metrics endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ZtunnelScrape {
    /// Seconds on the gate's clock.
    pub at: f64,
    pub pending_proxies: Option<f64>,
    pub active_proxies: Option<f64>,
    /// Failed connections, summed over the series: `istio_tcp_connections_failed_total`
    /// (ztunnel 1.29 and later), else the connections closed with a failure flag
    /// (`response_flags` DENY or CONNECT; ztunnel 1.24–1.28, which counts an inbound
    /// failure as a connection opened and closed).
    pub failed_connections: Option<f64>,
    /// The same, by `response_flags`.
    pub failed_by_flags: BTreeMap<String, f64>,
    /// `istio_tcp_connections_opened_total` and `…_closed_total`, summed.
    pub opened_connections: Option<f64>,
    pub closed_connections: Option<f64>,
}

fn samples(
    history: &[ZtunnelScrape],
    value: impl Fn(&ZtunnelScrape) -> Option<f64>,
) -> Vec<Sample> {
    history
        .iter()
        .filter_map(|s| value(s).map(|value| Sample { at: s.at, value }))
        .collect()
}

/// Failures over the scrapes by `response_flags`, largest first: "CONNECT 12, - 3".
fn failures_by_flag(history: &[ZtunnelScrape]) -> String {
    let flags: BTreeSet<&String> = history
        .iter()
        .flat_map(|s| s.failed_by_flags.keys())
        .collect();
    let mut grown: Vec<(f64, &String)> = flags
        .into_iter()
        .map(|f| {
            let series = samples(history, |s| {
                Some(s.failed_by_flags.get(f).copied().unwrap_or(0.0))
            });
            (increase(&series), f)
        })
        .filter(|(n, _)| *n > 0.0)
        .collect();
    grown.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    grown
        .iter()
        .map(|(n, f)| format!("{f} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ztunnel checks over the scrapes so far (oldest first), or the scrape error.
pub fn ztunnel_checks(
    latest: Result<&ZtunnelScrape, &str>,
    history: &[ZtunnelScrape],
    ambient_pods: usize,
    metrics: &ZtunnelMetricsSettings,
    settings: &HealthSettings,
) -> Vec<CheckResult> {
    let latest = match latest {
        Ok(s) => s,
        Err(e) => {
            return vec![CheckResult::new(
                "ztunnel metrics",
                Outcome::Failed(e.to_owned()),
            )];
        }
    };
    let mut out = Vec::new();
    if metrics.check_proxies {
        let outcome = match (latest.pending_proxies, latest.active_proxies) {
            (Some(p), _) if p > 0.0 => Outcome::NotYet(format!("{p} proxies pending")),
            (Some(_), Some(a)) if (a - ambient_pods as f64).abs() > f64::EPSILON => {
                Outcome::NotYet(format!(
                    "{a} active proxies, but {ambient_pods} ambient pods on the node"
                ))
            }
            (Some(_), Some(a)) => Outcome::Healthy(format!("{a} active proxies, none pending")),
            _ => no_data(
                "workload_manager_pending_proxy_count or workload_manager_active_proxy_count missing".into(),
                settings,
            ),
        };
        out.push(CheckResult::new("ztunnel proxies", outcome));
    }
    if let Some(max) = metrics.max_failed_connections_per_second {
        let name = "failed connections rate (/s)";
        let outcome = if latest.failed_connections.is_none() {
            no_data(
                "istio_tcp_connections_failed_total and istio_tcp_connections_closed_total missing"
                    .into(),
                settings,
            )
        } else {
            match rate(&samples(history, |s| s.failed_connections)) {
                None => Outcome::NotYet("waiting for a second scrape".into()),
                Some(r) => match check(name, r, Threshold::Max(max)) {
                    Ok(()) => Outcome::Healthy(format!("{r:.3}/s")),
                    Err(e) => Outcome::Failed(format!(
                        "{e} (by response_flags: {})",
                        failures_by_flag(history)
                    )),
                },
            }
        };
        out.push(CheckResult::new("ztunnel connections", outcome));
    }
    if let Some(max) = metrics.max_closed_per_opened {
        let name = "connections closed per connection opened";
        let outcome = match (latest.opened_connections, latest.closed_connections) {
            (Some(_), Some(_)) if history.len() < 2 => {
                Outcome::NotYet("waiting for a second scrape".into())
            }
            (Some(_), Some(_)) => {
                let opened = increase(&samples(history, |s| s.opened_connections));
                let closed = increase(&samples(history, |s| s.closed_connections));
                if opened == 0.0 && closed == 0.0 {
                    Outcome::Healthy("no connections opened or closed".into())
                } else {
                    // Closing connections while opening none is the worst case.
                    let ratio = if opened == 0.0 {
                        f64::INFINITY
                    } else {
                        closed / opened
                    };
                    match check(name, ratio, Threshold::Max(max)) {
                        Ok(()) => Outcome::Healthy(format!("{closed} closed / {opened} opened")),
                        Err(e) => {
                            Outcome::Failed(format!("{e} ({closed} closed, {opened} opened)"))
                        }
                    }
                }
            }
            _ => no_data(
                "istio_tcp_connections_opened_total or istio_tcp_connections_closed_total missing"
                    .into(),
                settings,
            ),
        };
        out.push(CheckResult::new("ztunnel connection churn", outcome));
    }
    out
}

/// The answer to one PromQL query: a number, no data, or an error.
pub type QueryAnswer = Result<Option<f64>, String>;

/// The `maxIncrease` baselines of one node's gate: each query's value just before the
/// node was touched. Only a successful read is kept. A failed read (Prometheus briefly
/// unreachable) fails that round's check and is read again at the next round, instead of
/// failing every round until the gate's timeout.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Baselines(BTreeMap<String, Option<f64>>);

impl Baselines {
    /// Whether this round must read `q`'s baseline.
    pub fn needed(&self, q: &QuerySettings) -> bool {
        q.needs_baseline() && !self.0.contains_key(&q.name)
    }

    /// The baseline to judge this round's answer to `q` by: the read of this round
    /// (`fresh`, kept if it succeeded), else the one kept earlier.
    pub fn for_round(
        &mut self,
        q: &QuerySettings,
        fresh: Option<QueryAnswer>,
    ) -> Option<QueryAnswer> {
        match fresh {
            Some(Ok(value)) => {
                self.0.insert(q.name.clone(), value);
                Some(Ok(value))
            }
            Some(Err(e)) => Some(Err(e)),
            None => self.0.get(&q.name).map(|v| Ok(*v)),
        }
    }
}

/// A query's outcome from its answer now and, for `maxIncrease`, its baseline.
pub fn prometheus_check(
    q: &QuerySettings,
    node: &str,
    answer: &QueryAnswer,
    baseline: Option<&QueryAnswer>,
    settings: &HealthSettings,
) -> CheckResult {
    let name = format!("prometheus query {} ({})", q.name, q.for_node(node));
    let value = match answer {
        Err(e) => return CheckResult::new(name, Outcome::Failed(e.clone())),
        Ok(None) => return CheckResult::new(name, no_data("returned no data".into(), settings)),
        Ok(Some(v)) => *v,
    };
    let threshold = match q.limit {
        QueryLimit::Max(max) => Threshold::Max(max),
        QueryLimit::MaxIncrease(by) => match baseline {
            Some(Ok(Some(b))) => Threshold::MaxIncrease { baseline: *b, by },
            Some(Err(e)) => {
                return CheckResult::new(name, Outcome::Failed(format!("baseline: {e}")));
            }
            // Without data before the node was touched, the value itself is the increase.
            Some(Ok(None)) | None => Threshold::MaxIncrease { baseline: 0.0, by },
        },
    };
    let outcome = match check("value", value, threshold) {
        Ok(()) => Outcome::Healthy(format!("{value:.3}")),
        Err(e) => Outcome::Failed(e),
    };
    CheckResult::new(name, outcome)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// Gates with the default timings and no check configured.
    pub(crate) fn settings() -> HealthSettings {
        HealthSettings {
            soak: Duration::from_secs(30),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(120),
            rollback: false,
            max_failed_nodes: 0,
            uncordon_failed_nodes: false,
            pass_without_data: false,
            connection_drain: None,
            mesh_queries: Vec::new(),
            bake: None,
            waypoint_selector: None,
            ztunnel_metrics: None,
            prometheus: None,
        }
    }

    fn healthy(name: &str) -> CheckResult {
        CheckResult::new(name, Outcome::Healthy("ok".into()))
    }

    #[test]
    fn a_node_passes_only_after_an_unbroken_soak() {
        let s = settings();
        let mut since = None;
        let r = [healthy("a")];
        assert_eq!(
            verdict(&r, t(0), &mut since, t(0), &s),
            GateVerdict::Waiting {
                until: t(30),
                why: format!("soaking until {} (0s healthy so far): a: ok", t(30)),
            }
        );
        assert!(matches!(
            verdict(&r, t(0), &mut since, t(20), &s),
            GateVerdict::Waiting { until, .. } if until == t(30)
        ));
        // A check not yet healthy restarts the soak.
        let wobble = [CheckResult::new(
            "w",
            Outcome::NotYet("1/2 available".into()),
        )];
        assert!(matches!(
            verdict(&wobble, t(0), &mut since, t(25), &s),
            GateVerdict::Waiting { until, ref why } if until == t(120) && why == "w: 1/2 available"
        ));
        assert_eq!(since, None);
        assert!(matches!(
            verdict(&r, t(0), &mut since, t(40), &s),
            GateVerdict::Waiting { until, .. } if until == t(70)
        ));
        assert_eq!(
            verdict(&r, t(0), &mut since, t(70), &s),
            GateVerdict::Passed("a: ok".into())
        );
    }

    #[test]
    fn a_check_not_healthy_by_the_timeout_fails_the_node_with_its_reason() {
        let s = settings();
        let mut since = None;
        let r = [CheckResult::new(
            "waypoints",
            Outcome::NotYet("apps/waypoint has 0/1 replicas available".into()),
        )];
        assert_eq!(
            verdict(&r, t(0), &mut since, t(120), &s),
            GateVerdict::Failed(
                "not healthy within 2m: waypoints: apps/waypoint has 0/1 replicas available".into()
            )
        );
    }

    #[test]
    fn a_failed_check_fails_at_once_even_while_others_wait() {
        let s = settings();
        let mut since = Some(t(0));
        let r = [
            CheckResult::new("w", Outcome::NotYet("starting".into())),
            CheckResult::new(
                "q",
                Outcome::Failed("value is 3.000, above the maximum 1.000".into()),
            ),
        ];
        assert_eq!(
            verdict(&r, t(0), &mut since, t(1), &s),
            GateVerdict::Failed("q: value is 3.000, above the maximum 1.000".into())
        );
    }

    #[test]
    fn a_bake_passes_after_the_whole_bake_healthy_and_fails_when_enrolment_never_comes() {
        assert_eq!(settings().for_bake(), None);
        let s = HealthSettings {
            bake: Some(Duration::from_secs(60)),
            ..settings()
        }
        .for_bake()
        .unwrap();
        assert_eq!(
            (s.soak, s.timeout, s.bake),
            (Duration::from_secs(60), Duration::from_secs(180), None)
        );
        let pending = [CheckResult::new(
            "ztunnel proxies",
            Outcome::NotYet("3 proxies pending".into()),
        )];
        let enrolled = [healthy("ztunnel proxies")];
        // The pods come back during the first 20s: not yet enrolled, then healthy.
        let mut since = None;
        assert!(matches!(
            verdict(&pending, t(0), &mut since, t(10), &s),
            GateVerdict::Waiting { until, .. } if until == t(180)
        ));
        assert!(matches!(
            verdict(&enrolled, t(0), &mut since, t(20), &s),
            GateVerdict::Waiting { until, .. } if until == t(80)
        ));
        assert!(matches!(
            verdict(&enrolled, t(0), &mut since, t(80), &s),
            GateVerdict::Passed(_)
        ));
        // A new ztunnel that never enrols them fails once the bake's timeout is over.
        let mut since = None;
        assert!(matches!(
            verdict(&pending, t(0), &mut since, t(179), &s),
            GateVerdict::Waiting { .. }
        ));
        assert_eq!(
            verdict(&pending, t(0), &mut since, t(180), &s),
            GateVerdict::Failed("not healthy within 3m: ztunnel proxies: 3 proxies pending".into())
        );
        // A failed check fails the bake at once.
        let failed = [CheckResult::new(
            "ztunnel connections",
            Outcome::Failed("2.000/s".into()),
        )];
        assert_eq!(
            verdict(&failed, t(0), &mut Some(t(0)), t(5), &s),
            GateVerdict::Failed("ztunnel connections: 2.000/s".into())
        );
    }

    #[test]
    fn zero_soak_passes_on_the_first_healthy_round() {
        let s = HealthSettings {
            soak: Duration::ZERO,
            ..settings()
        };
        assert_eq!(
            verdict(&[], t(0), &mut None, t(0), &s),
            GateVerdict::Passed(String::new())
        );
    }

    fn waypoint(available: i32, desired: i32) -> Waypoint {
        Waypoint {
            namespace: "apps".into(),
            name: "waypoint".into(),
            desired,
            available,
            programmed: None,
            has_pdb: true,
        }
    }

    #[test]
    fn waypoints_must_be_fully_available_and_programmed() {
        assert!(matches!(
            waypoint_check(&[]).outcome,
            Outcome::Healthy(ref note) if note.contains("no waypoints")
        ));
        assert_eq!(
            waypoint_check(&[waypoint(2, 2)]).outcome,
            Outcome::Healthy("1 Ready".into())
        );
        assert_eq!(
            waypoint_check(&[waypoint(1, 2)]).outcome,
            Outcome::NotYet("apps/waypoint has 1/2 replicas available".into())
        );
        let mut w = waypoint(2, 2);
        w.programmed = Some(Err("is not Programmed: AddressNotAssigned".into()));
        assert_eq!(
            waypoint_check(&[w]).outcome,
            Outcome::NotYet("Gateway apps/waypoint is not Programmed: AddressNotAssigned".into())
        );
    }

    #[test]
    fn single_replica_and_unprotected_waypoints_are_warned_about() {
        assert!(waypoint_warnings(&[waypoint(2, 2)]).is_empty());
        let mut w = waypoint(1, 1);
        w.has_pdb = false;
        let warnings = waypoint_warnings(&[w]);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("has 1 replica"), "{warnings:?}");
        assert!(
            warnings[1].contains("no PodDisruptionBudget"),
            "{warnings:?}"
        );
    }

    #[test]
    fn pods_enroll_by_their_label_or_their_namespace() {
        assert!(enrolled_in_ambient(None, true));
        assert!(!enrolled_in_ambient(None, false));
        assert!(enrolled_in_ambient(Some("ambient"), false));
        assert!(!enrolled_in_ambient(Some("none"), true), "a pod opts out");
    }

    fn scrape(at: f64, failed: f64) -> ZtunnelScrape {
        ZtunnelScrape {
            at,
            pending_proxies: Some(0.0),
            active_proxies: Some(3.0),
            failed_connections: Some(failed),
            failed_by_flags: BTreeMap::from([("CONNECT".to_owned(), failed)]),
            opened_connections: Some(0.0),
            closed_connections: Some(0.0),
        }
    }

    #[test]
    fn ztunnel_proxies_must_match_the_ambient_pods_with_none_pending() {
        let m = ZtunnelMetricsSettings {
            port: 15020,
            check_proxies: true,
            max_failed_connections_per_second: None,
            max_closed_per_opened: None,
        };
        let s = settings();
        let ok = scrape(0.0, 0.0);
        assert!(matches!(
            ztunnel_checks(Ok(&ok), std::slice::from_ref(&ok), 3, &m, &s)[0].outcome,
            Outcome::Healthy(_)
        ));
        assert_eq!(
            ztunnel_checks(Ok(&ok), std::slice::from_ref(&ok), 4, &m, &s)[0].outcome,
            Outcome::NotYet("3 active proxies, but 4 ambient pods on the node".into())
        );
        let mut pending = ok.clone();
        pending.pending_proxies = Some(2.0);
        assert_eq!(
            ztunnel_checks(Ok(&pending), &[], 3, &m, &s)[0].outcome,
            Outcome::NotYet("2 proxies pending".into())
        );
        let mut missing = ok.clone();
        missing.active_proxies = None;
        assert!(matches!(
            ztunnel_checks(Ok(&missing), &[], 3, &m, &s)[0].outcome,
            Outcome::Failed(ref why) if why.contains("failing closed")
        ));
        assert_eq!(
            ztunnel_checks(Err("connection refused"), &[], 3, &m, &s)[0].outcome,
            Outcome::Failed("connection refused".into())
        );
    }

    #[test]
    fn failed_connection_rates_survive_a_ztunnel_restart() {
        let m = ZtunnelMetricsSettings {
            port: 15020,
            check_proxies: false,
            max_failed_connections_per_second: Some(0.5),
            max_closed_per_opened: None,
        };
        let s = settings();
        let first = scrape(0.0, 100.0);
        assert_eq!(
            ztunnel_checks(Ok(&first), std::slice::from_ref(&first), 0, &m, &s)[0].outcome,
            Outcome::NotYet("waiting for a second scrape".into())
        );
        // The counter restarts at 2 (a new pod): 2 failures in 10 s is 0.2/s.
        let h = [first.clone(), scrape(10.0, 2.0)];
        assert_eq!(
            ztunnel_checks(Ok(&h[1]), &h, 0, &m, &s)[0].outcome,
            Outcome::Healthy("0.200/s".into())
        );
        let h = [first, scrape(10.0, 150.0)];
        assert!(matches!(
            ztunnel_checks(Ok(&h[1]), &h, 0, &m, &s)[0].outcome,
            Outcome::Failed(ref why) if why.contains("5.000, above the maximum 0.500")
                && why.ends_with("(by response_flags: CONNECT 50)")
        ));
    }

    #[test]
    fn connection_churn_compares_closed_with_opened_connections() {
        let m = ZtunnelMetricsSettings {
            port: 15020,
            check_proxies: false,
            max_failed_connections_per_second: None,
            max_closed_per_opened: Some(1.5),
        };
        let s = settings();
        let at = |t: f64, opened: f64, closed: f64| ZtunnelScrape {
            opened_connections: Some(opened),
            closed_connections: Some(closed),
            ..scrape(t, 0.0)
        };
        let first = at(0.0, 100.0, 90.0);
        assert_eq!(
            ztunnel_checks(Ok(&first), std::slice::from_ref(&first), 0, &m, &s)[0].outcome,
            Outcome::NotYet("waiting for a second scrape".into())
        );
        let calm = [first.clone(), at(10.0, 120.0, 110.0)];
        assert_eq!(
            ztunnel_checks(Ok(&calm[1]), &calm, 0, &m, &s)[0].outcome,
            Outcome::Healthy("20 closed / 20 opened".into())
        );
        let torn = [first.clone(), at(10.0, 110.0, 150.0)];
        assert!(matches!(
            ztunnel_checks(Ok(&torn[1]), &torn, 0, &m, &s)[0].outcome,
            Outcome::Failed(ref why) if why.contains("6.000, above the maximum 1.500")
        ));
        let idle = [first.clone(), at(10.0, 100.0, 90.0)];
        assert!(matches!(
            ztunnel_checks(Ok(&idle[1]), &idle, 0, &m, &s)[0].outcome,
            Outcome::Healthy(_)
        ));
    }

    fn query(limit: QueryLimit) -> QuerySettings {
        QuerySettings {
            name: "resets".into(),
            query: "sum(rate(resets{node=\"$node\"}[1m]))".into(),
            limit,
        }
    }

    #[test]
    fn query_checks_name_the_query_the_value_and_the_threshold() {
        let s = settings();
        let q = query(QueryLimit::Max(0.5));
        let r = prometheus_check(&q, "n1", &Ok(Some(0.9)), None, &s);
        assert_eq!(
            r.name,
            "prometheus query resets (sum(rate(resets{node=\"n1\"}[1m])))"
        );
        assert_eq!(
            r.outcome,
            Outcome::Failed("value is 0.900, above the maximum 0.500".into())
        );
        assert_eq!(
            prometheus_check(&q, "n1", &Ok(Some(0.1)), None, &s).outcome,
            Outcome::Healthy("0.100".into())
        );
        let q = query(QueryLimit::MaxIncrease(0.1));
        assert!(matches!(
            prometheus_check(&q, "n1", &Ok(Some(0.35)), Some(&Ok(Some(0.2))), &s).outcome,
            Outcome::Failed(ref why) if why.contains("above its baseline 0.200 (allowed: 0.100)")
        ));
        assert!(matches!(
            prometheus_check(&q, "n1", &Ok(Some(0.25)), Some(&Ok(Some(0.2))), &s).outcome,
            Outcome::Healthy(_)
        ));
    }

    #[test]
    fn a_failed_baseline_read_fails_its_round_only_and_is_read_again() {
        let s = settings();
        let q = query(QueryLimit::MaxIncrease(0.1));
        let mut baselines = Baselines::default();
        assert!(baselines.needed(&q));
        assert!(!baselines.needed(&query(QueryLimit::Max(1.0))));
        // Round 1: Prometheus did not answer the baseline read.
        let b = baselines.for_round(&q, Some(Err("connection refused".into())));
        assert_eq!(
            prometheus_check(&q, "n1", &Ok(Some(0.25)), b.as_ref(), &s).outcome,
            Outcome::Failed("baseline: connection refused".into())
        );
        // Round 2 reads it again, and keeps it.
        assert!(baselines.needed(&q));
        let b = baselines.for_round(&q, Some(Ok(Some(0.2))));
        assert!(matches!(
            prometheus_check(&q, "n1", &Ok(Some(0.25)), b.as_ref(), &s).outcome,
            Outcome::Healthy(_)
        ));
        // Round 3 judges by the kept one without reading it.
        assert!(!baselines.needed(&q));
        let b = baselines.for_round(&q, None);
        assert_eq!(b, Some(Ok(Some(0.2))));
        assert!(matches!(
            prometheus_check(&q, "n1", &Ok(Some(0.35)), b.as_ref(), &s).outcome,
            Outcome::Failed(ref why) if why.contains("above its baseline 0.200")
        ));
        // No data before the node was touched is a baseline too (of zero), kept.
        let other = QuerySettings {
            name: "other".into(),
            ..q.clone()
        };
        assert_eq!(baselines.for_round(&other, Some(Ok(None))), Some(Ok(None)));
        assert!(!baselines.needed(&other));
    }

    #[test]
    fn queries_without_data_or_with_errors_fail_closed_by_default() {
        let q = query(QueryLimit::Max(0.5));
        let s = settings();
        assert!(matches!(
            prometheus_check(&q, "n", &Ok(None), None, &s).outcome,
            Outcome::Failed(ref why) if why == "returned no data (failing closed: noData is Fail)"
        ));
        let lenient = HealthSettings {
            pass_without_data: true,
            ..settings()
        };
        assert!(matches!(
            prometheus_check(&q, "n", &Ok(None), None, &lenient).outcome,
            Outcome::Healthy(_)
        ));
        // Errors fail whatever noData says.
        assert_eq!(
            prometheus_check(&q, "n", &Err("connection refused".into()), None, &lenient).outcome,
            Outcome::Failed("connection refused".into())
        );
    }
}
