//! A rollout's spec turned into the settings the planner, the node machine and the drain
//! use. The API server validates the spec's shape; what it cannot check (selectors that
//! do not parse) is reported here, naming the field.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::planner::{MaxUnavailable, WavePolicy};
use super::windows::{MaintenanceWindow, overlapping};
use crate::api::rollout::{Approval, FailurePolicy, HealthSpec, NoDataPolicy, RolloutSpec};
use crate::drain::DrainOptions;
use crate::drain::filter::FilterOptions;
use crate::duration::{format_duration, parse_duration};
use crate::health::gates::{
    ConnectionDrainSettings, HealthSettings, PrometheusSettings, QueryLimit, QuerySettings,
    ZtunnelMetricsSettings,
};
use crate::health::rounds::{MAX_QUERY_TIMEOUT, MIN_INTERVAL};
use crate::label_selector::Selector;
use crate::labels::{WAYPOINT_MANAGED_LABEL, WAYPOINT_MANAGED_VALUE};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str) -> impl FnOnce(String) -> SpecError {
    move |message| SpecError { field, message }
}

#[derive(Debug, Clone)]
pub struct RolloutSettings {
    pub nodes: Selector,
    pub waves: WavePolicy,
    pub drain: DrainOptions,
    pub ztunnel_ready_timeout: Duration,
    pub health: HealthSettings,
    /// Nodes start only while one is open (any time when empty).
    pub windows: Vec<MaintenanceWindow>,
    /// Each wave waits for its name in `approved_waves`.
    pub manual_approval: bool,
    pub approved_waves: std::collections::BTreeSet<String>,
}

pub fn max_unavailable(value: &IntOrString) -> Result<MaxUnavailable, String> {
    match value {
        IntOrString::Int(n) if *n >= 1 => Ok(MaxUnavailable::Count(n.unsigned_abs())),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|p| (1..=100).contains(p))
            .map(MaxUnavailable::Percent)
            .ok_or_else(|| format!("{s:?} is not a percentage from 1% to 100%")),
        IntOrString::Int(n) => Err(format!("{n} is not a count of at least 1")),
    }
}

pub fn settings(spec: &RolloutSpec) -> Result<RolloutSettings, SpecError> {
    let nodes = match &spec.node_selector {
        Some(ls) => {
            Selector::from_label_selector(ls).map_err(|e| invalid("nodeSelector")(e.to_string()))?
        }
        None => Selector::everything(),
    };
    let skip_selector = spec
        .drain
        .skip_pod_selector
        .as_ref()
        .map(Selector::from_label_selector)
        .transpose()
        .map_err(|e| invalid("drain.skipPodSelector")(e.to_string()))?;
    let timeout = spec
        .drain
        .timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(invalid("drain.timeout"))?;
    let skip_wait = spec
        .drain
        .skip_wait_for_delete_timeout
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(invalid("drain.skipWaitForDeleteTimeout"))?;
    let defaults = DrainOptions::default();
    Ok(RolloutSettings {
        nodes,
        waves: WavePolicy {
            group_by: spec.waves.group_by.clone(),
            order: spec.waves.order.clone(),
            max_unavailable: max_unavailable(&spec.waves.max_unavailable)
                .map_err(invalid("waves.maxUnavailable"))?,
            canary: spec.waves.canary_nodes.map(|c| c as usize),
            max_failed: spec.health.max_failed_nodes as usize,
            reverse: false,
        },
        drain: DrainOptions {
            filter: FilterOptions {
                delete_emptydir_data: spec.drain.delete_empty_dir_data,
                force: spec.drain.force,
                pod_selector: Selector::everything(),
                skip_selector,
                skip_wait_for_delete_timeout: skip_wait.filter(|d| !d.is_zero()),
            },
            timeout: timeout.unwrap_or(defaults.timeout),
            grace_period_seconds: spec.drain.grace_period_seconds,
            ..defaults
        },
        ztunnel_ready_timeout: parse_duration(&spec.ztunnel_ready_timeout)
            .map_err(invalid("ztunnelReadyTimeout"))?,
        health: health(&spec.health)?,
        windows: windows(spec)?,
        manual_approval: spec.waves.approval == Approval::Manual,
        approved_waves: spec.approved_waves.iter().cloned().collect(),
    })
}

fn windows(spec: &RolloutSpec) -> Result<Vec<MaintenanceWindow>, SpecError> {
    let windows = spec
        .maintenance_windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            MaintenanceWindow::parse(&w.days, &w.start, &w.end, &w.time_zone)
                .map_err(|e| invalid("maintenanceWindows")(format!("window {}: {e}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((a, b)) = overlapping(&windows) {
        return Err(invalid("maintenanceWindows")(format!(
            "windows {} and {} overlap; merge them into one",
            a + 1,
            b + 1
        )));
    }
    Ok(windows)
}

/// An `http://` or `https://` URL with a host (and a numeric port, if any).
fn check_http_url(url: &str) -> Result<(), String> {
    let not_url = || format!("{url:?} is not an http:// or https:// URL");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(not_url)?;
    if url.chars().any(char::is_whitespace) {
        return Err(format!("{url:?} contains white space"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_port.strip_prefix('[') {
        // [IPv6]:port
        Some(v6) => match v6.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':')),
            None => return Err(not_url()),
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{url:?} has an invalid port {port:?}"));
    }
    Ok(())
}

fn health(spec: &HealthSpec) -> Result<HealthSettings, SpecError> {
    let interval = parse_duration(&spec.interval).map_err(invalid("health.interval"))?;
    if interval < MIN_INTERVAL {
        return Err(invalid("health.interval")(format!(
            "{:?} is shorter than {}: each round scrapes and queries for every node being verified",
            spec.interval,
            format_duration(MIN_INTERVAL)
        )));
    }
    let waypoint_selector = if spec.waypoints.disabled {
        None
    } else {
        Some(match &spec.waypoints.selector {
            Some(ls) => Selector::from_label_selector(ls)
                .map_err(|e| invalid("health.waypoints.selector")(e.to_string()))?,
            None => Selector::parse(&format!(
                "{WAYPOINT_MANAGED_LABEL}={WAYPOINT_MANAGED_VALUE}"
            ))
            .map_err(|e| invalid("health.waypoints.selector")(e.to_string()))?,
        })
    };
    let prometheus = match &spec.prometheus {
        None => None,
        Some(p) => {
            check_http_url(&p.url).map_err(invalid("health.prometheus.url"))?;
            let queries = query_settings("health.prometheus.queries", &p.queries)?;
            if queries.is_empty() && spec.mesh_queries.is_empty() {
                return Err(invalid("health.prometheus.queries")(
                    "at least one query is needed (here or in health.meshQueries)".into(),
                ));
            }
            let credentials = crate::health::credentials::PrometheusCredentials::from_spec(p)
                .map_err(|e| invalid("health.prometheus")(e.to_string()))?;
            Some(PrometheusSettings {
                url: p.url.trim_end_matches('/').to_owned(),
                credentials,
                // The schema refuses more; a rollout stored before it said so is clamped.
                query_timeout: parse_duration(&p.query_timeout)
                    .map_err(invalid("health.prometheus.queryTimeout"))?
                    .min(MAX_QUERY_TIMEOUT),
                queries,
            })
        }
    };
    let mesh_queries = query_settings("health.meshQueries", &spec.mesh_queries)?;
    if !mesh_queries.is_empty() && prometheus.is_none() {
        return Err(invalid("health.meshQueries")(
            "meshQueries need health.prometheus (its url)".into(),
        ));
    }
    if let Some(q) = mesh_queries.iter().find(|q| q.query.contains("$node")) {
        return Err(invalid("health.meshQueries")(format!(
            "query {:?}: a mesh-wide query has no node ($node is for health.prometheus.queries)",
            q.name
        )));
    }
    Ok(HealthSettings {
        soak: parse_duration(&spec.soak).map_err(invalid("health.soak"))?,
        interval,
        timeout: parse_duration(&spec.timeout).map_err(invalid("health.timeout"))?,
        rollback: spec.on_failure == FailurePolicy::Rollback,
        max_failed_nodes: spec.max_failed_nodes as usize,
        uncordon_failed_nodes: spec.uncordon_failed_nodes,
        pass_without_data: spec.no_data == NoDataPolicy::Pass,
        waypoint_selector,
        connection_drain: {
            let timeout = parse_duration(&spec.connection_drain_timeout)
                .map_err(invalid("health.connectionDrainTimeout"))?;
            spec.ztunnel_metrics
                .as_ref()
                .filter(|_| !timeout.is_zero())
                .map(|z| ConnectionDrainSettings {
                    port: z.port,
                    timeout,
                    policy: spec.on_open_connections,
                })
        },
        ztunnel_metrics: spec
            .ztunnel_metrics
            .as_ref()
            .map(|z| ZtunnelMetricsSettings {
                port: z.port,
                check_proxies: z.check_proxies,
                max_failed_connections_per_second: z.max_failed_connections_per_second,
                max_closed_per_opened: z.max_closed_per_opened,
            }),
        prometheus,
        mesh_queries,
        bake: match &spec.bake {
            None => None,
            Some(b) => {
                Some(parse_duration(b).map_err(invalid("health.bake"))?).filter(|b| !b.is_zero())
            }
        },
    })
}

/// The queries of `field`: names distinct, exactly one of `max` and `maxIncrease` each.
fn query_settings(
    field: &'static str,
    queries: &[crate::api::rollout::PrometheusQuery],
) -> Result<Vec<QuerySettings>, SpecError> {
    let mut names = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for q in queries {
        if !names.insert(q.name.as_str()) {
            return Err(invalid(field)(format!(
                "the name {:?} is used twice",
                q.name
            )));
        }
        let limit = match (q.max, q.max_increase) {
            (Some(max), None) => QueryLimit::Max(max),
            (None, Some(by)) => QueryLimit::MaxIncrease(by),
            _ => {
                return Err(invalid(field)(format!(
                    "query {:?}: set exactly one of max and maxIncrease",
                    q.name
                )));
            }
        };
        out.push(QuerySettings {
            name: q.name.clone(),
            query: q.query.clone(),
            limit,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rollout::{DrainSpec, WavesSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    fn spec() -> RolloutSpec {
        serde_json::from_value(serde_json::json!({
            "waves": { "groupBy": "topology.kubernetes.io/zone", "maxUnavailable": "10%" }
        }))
        .unwrap()
    }

    #[test]
    fn defaults_give_every_node_five_minute_timeouts_and_a_percentage_budget() {
        let s = settings(&spec()).unwrap();
        assert!(s.nodes.matches(&BTreeMap::new()));
        assert_eq!(s.waves.max_unavailable, MaxUnavailable::Percent(10));
        assert_eq!(s.ztunnel_ready_timeout, Duration::from_secs(300));
        assert_eq!(s.drain.timeout, Duration::from_secs(300));
        assert_eq!(s.drain.grace_period_seconds, None);
    }

    #[test]
    fn max_unavailable_takes_counts_and_percentages_only_in_range() {
        assert_eq!(
            max_unavailable(&IntOrString::Int(3)),
            Ok(MaxUnavailable::Count(3))
        );
        assert_eq!(
            max_unavailable(&IntOrString::String("100%".into())),
            Ok(MaxUnavailable::Percent(100))
        );
        for bad in ["0%", "101%", "ten", "5"] {
            assert!(max_unavailable(&IntOrString::String(bad.into())).is_err());
        }
        assert!(max_unavailable(&IntOrString::Int(0)).is_err());
    }

    #[test]
    fn the_skip_selector_leaves_matching_pods_alone() {
        let mut s = spec();
        s.drain = DrainSpec {
            skip_pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("keep".into(), "yes".into())])),
                ..Default::default()
            }),
            timeout: Some("90s".into()),
            ..Default::default()
        };
        let d = settings(&s).unwrap().drain;
        let keep = BTreeMap::from([("keep".to_owned(), "yes".to_owned())]);
        let skip = d.filter.skip_selector.unwrap();
        assert!(skip.matches(&keep));
        assert!(!skip.matches(&BTreeMap::new()));
        assert_eq!(d.timeout, Duration::from_secs(90));
    }

    #[test]
    fn a_bad_selector_names_its_field() {
        let mut s = spec();
        s.waves = WavesSpec {
            max_unavailable: IntOrString::Int(1),
            ..s.waves
        };
        s.node_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("bad key!".into(), "x".into())])),
            ..Default::default()
        });
        let e = settings(&s).unwrap_err();
        assert_eq!(e.field, "nodeSelector");
        assert!(e.to_string().starts_with("spec.nodeSelector: "), "{e}");
    }

    #[test]
    fn health_settings_default_to_waypoints_only_failing_closed() {
        let h = settings(&spec()).unwrap().health;
        assert_eq!(h.soak, Duration::ZERO);
        assert_eq!(h.timeout, Duration::from_secs(300));
        assert!(!h.rollback && !h.pass_without_data && !h.uncordon_failed_nodes);
        assert_eq!(h.max_failed_nodes, 0);
        let waypoints = h.waypoint_selector.unwrap();
        assert!(waypoints.matches(&BTreeMap::from([(
            WAYPOINT_MANAGED_LABEL.to_owned(),
            WAYPOINT_MANAGED_VALUE.to_owned()
        )])));
        assert!(!waypoints.matches(&BTreeMap::new()));
        assert!(h.prometheus.is_none() && h.ztunnel_metrics.is_none());
        assert_eq!(h.bake, None);
        let bake = |b: &str| {
            let mut s = spec();
            s.health.bake = Some(b.into());
            settings(&s).unwrap().health.bake
        };
        assert_eq!(bake("2m"), Some(Duration::from_secs(120)));
        assert_eq!(bake("0s"), None);
    }

    #[test]
    fn bad_health_settings_name_their_field() {
        let with = |health: serde_json::Value| {
            let mut s = spec();
            s.health = serde_json::from_value(health).unwrap();
            settings(&s).unwrap_err()
        };
        assert_eq!(
            with(serde_json::json!({"interval": "0s"})).field,
            "health.interval"
        );
        assert_eq!(
            with(serde_json::json!({"bake": "soon"})).field,
            "health.bake"
        );
        let q = |name: &str| serde_json::json!({"name": name, "query": "up", "max": 1.0});
        let e = with(
            serde_json::json!({"prometheus": {"url": "http://p:9090", "queries": [q("a"), q("a")]}}),
        );
        assert_eq!(e.field, "health.prometheus.queries");
        assert!(e.message.contains("\"a\" is used twice"), "{e}");
        let e = with(serde_json::json!({"prometheus": {"url": "http://", "queries": [q("a")]}}));
        assert_eq!(e.field, "health.prometheus.url");
        let e = with(serde_json::json!({"prometheus": {
            "url": "http://p:9090", "queries": [q("a")], "bearerToken": {"name": "t"}
        }}));
        assert_eq!(e.field, "health.prometheus");
        assert!(e.message.contains("https://"), "{e}");
        let both = serde_json::json!({"name": "b", "query": "up", "max": 1.0, "maxIncrease": 1.0});
        let e =
            with(serde_json::json!({"prometheus": {"url": "http://p:9090", "queries": [both]}}));
        assert!(
            e.message.contains("exactly one of max and maxIncrease"),
            "{e}"
        );
    }

    #[test]
    fn the_interval_is_at_least_a_second() {
        let with = |interval: &str| {
            let mut s = spec();
            s.health = serde_json::from_value(serde_json::json!({ "interval": interval })).unwrap();
            settings(&s)
        };
        for short in ["1ms", "999ms", "0.5s", "0s"] {
            let e = with(short).unwrap_err();
            assert_eq!(e.field, "health.interval", "{short}");
            assert_eq!(
                e.to_string(),
                format!(
                    "spec.health.interval: {short:?} is shorter than 1s: each round scrapes and queries for every node being verified"
                )
            );
        }
        assert_eq!(with("1s").unwrap().health.interval, MIN_INTERVAL);
        assert_eq!(
            with("1m30s").unwrap().health.interval,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn a_query_timeout_above_the_cap_is_clamped() {
        let with = |timeout: &str| {
            let mut s = spec();
            s.health = serde_json::from_value(serde_json::json!({ "prometheus": {
                "url": "http://p:9090",
                "queryTimeout": timeout,
                "queries": [{ "name": "q", "query": "up", "max": 1.0 }]
            }}))
            .unwrap();
            settings(&s)
                .unwrap()
                .health
                .prometheus
                .unwrap()
                .query_timeout
        };
        assert_eq!(with("2s"), Duration::from_secs(2));
        assert_eq!(with("30s"), MAX_QUERY_TIMEOUT);
        // Stored before the schema refused it.
        assert_eq!(with("1h"), MAX_QUERY_TIMEOUT);
    }

    #[test]
    fn bad_maintenance_windows_name_the_window() {
        let with = |windows: serde_json::Value| {
            let mut s = spec();
            s.maintenance_windows = serde_json::from_value(windows).unwrap();
            settings(&s)
        };
        let e = with(serde_json::json!([{ "days": ["Sat"], "start": "22:00", "end": "04:00", "timeZone": "Mars/Olympus" }]))
            .unwrap_err();
        assert_eq!(e.field, "maintenanceWindows");
        assert!(
            e.message
                .contains("window 1: unknown time zone \"Mars/Olympus\""),
            "{e}"
        );
        let e = with(serde_json::json!([{ "days": ["Sat"], "start": "22:00", "end": "22:00" }]))
            .unwrap_err();
        assert!(
            e.message.contains("cannot start and end at the same time"),
            "{e}"
        );
        let e = with(serde_json::json!([{ "days": [], "start": "22:00", "end": "23:00" }]))
            .unwrap_err();
        assert!(e.message.contains("at least one day"), "{e}");
        let e = with(serde_json::json!([
            { "days": ["Sat"], "start": "22:00", "end": "04:00" },
            { "days": ["Sun"], "start": "03:00", "end": "05:00" }
        ]))
        .unwrap_err();
        assert!(e.message.contains("windows 1 and 2 overlap"), "{e}");
        let ok = with(serde_json::json!([{ "days": ["Sat", "Sun"], "start": "22:00", "end": "04:00", "timeZone": "Europe/Berlin" }]))
            .unwrap();
        assert_eq!(ok.windows.len(), 1);
    }
}
