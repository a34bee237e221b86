//! The alert rules (`manifests/alerts`) and the Grafana dashboard (`manifests/dashboard`)
//! hold up against the agent they watch: promtool accepts the rules and passes their unit
//! tests (each alert firing and not, with its `for:`), a real Prometheus scraping the
//! agent during a rollout that fails on the local control plane fires the Degraded and
//! gate-failure alerts (and none of the agent-down ones), and every dashboard query
//! returns data from that Prometheus. A rename in src/metrics.rs that the rules or the
//! dashboard did not follow fails here.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use support::TestEnv;
use support::agent::{self as agent_support, node_status};
use support::prometheus::{AgentScrape, Prometheus, ZtunnelMetricsServer};
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::{Budget, UpdateStrategy};

const RULES: &str = "manifests/alerts/ztunnel-rollout.rules.yaml";
const RULE_TESTS: &str = "manifests/alerts/ztunnel-rollout.rules.test.yaml";
const DASHBOARD: &str = "manifests/dashboard/ztunnel-rollout.json";
const FAILURES: &str =
    r#"sum(rate(istio_tcp_connections_closed_total{node="$node",response_flags!="-"}[5s]))"#;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `promtool args…`; a missing promtool fails the test with how to install it.
fn promtool(args: &[&str]) -> String {
    let binary = std::env::var("PROMTOOL_BINARY").unwrap_or_else(|_| "promtool".into());
    let output = Command::new(&binary).args(args).output().unwrap_or_else(|e| {
        panic!(
            "{binary} could not run ({e}): the alert rule tests need promtool. Install Debian's \
             `prometheus` package (`apt-get install prometheus`, which has /usr/bin/promtool) or \
             set PROMTOOL_BINARY"
        )
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules() {
    let out = promtool(&["check", "rules", repo_file(RULES).to_str().expect("utf-8")]);
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
}

#[test]
fn promtool_passes_the_rules_unit_tests() {
    let out = promtool(&[
        "test",
        "rules",
        repo_file(RULE_TESTS).to_str().expect("utf-8"),
    ]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_unit_test() {
    let rules = std::fs::read_to_string(repo_file(RULES)).expect("read the rules");
    let tests = std::fs::read_to_string(repo_file(RULE_TESTS)).expect("read the rule tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 10, "{alerts:?}");
    // Each rule's text runs from its `- alert:` line to the next one.
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    for (name, block) in alerts.iter().zip(&blocks) {
        for field in ["severity: ", "summary: ", "description: ", "for: "] {
            assert!(block.contains(field), "{name} has no {field:?}");
        }
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool test"
        );
        let firing = tests
            .split("- eval_time: ")
            .filter(|case| case.contains(&format!("alertname: {name}\n")))
            .any(|case| !case.contains("exp_alerts: []"));
        let silent = tests
            .split("- eval_time: ")
            .filter(|case| case.contains(&format!("alertname: {name}\n")))
            .any(|case| case.contains("exp_alerts: []"));
        assert!(
            firing && silent,
            "{name}: tested firing {firing}, not firing {silent}"
        );
    }
}

/// The rules with every `for:` at 0s: the live test judges what fires, not when
/// (the promtool tests cover the durations).
fn rules_without_durations(dir: &Path) -> PathBuf {
    let rules = std::fs::read_to_string(repo_file(RULES)).expect("read the rules");
    let mut rewritten = 0;
    let text: Vec<String> = rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => {
                rewritten += 1;
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}for: 0s")
            }
            None => line.to_owned(),
        })
        .collect();
    assert_eq!(rewritten, 10, "every rule has a `for:`");
    let path = dir.join("ztunnel-rollout.rules.yaml");
    std::fs::write(&path, text.join("\n") + "\n").expect("write the rules");
    path
}

/// Firing alerts named `name` (with their labels), out of `alerts`.
fn firing<'a>(alerts: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
        .collect()
}

/// The dashboard's panel queries, `(panel title, expression)`, with its variables as
/// Grafana would substitute them for "All".
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file(DASHBOARD)).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title").to_owned();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().expect("an expr");
            queries.push((
                title.clone(),
                expr.replace("$__rate_interval", "5m")
                    .replace("$job", "ztunnel-rollout.*")
                    .replace("$rollout", ".*"),
            ));
        }
    }
    queries
}

#[test]
fn the_dashboard_has_the_panels_and_the_datasource_variable() {
    let text = std::fs::read_to_string(repo_file(DASHBOARD)).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus datasource variable: {variables:?}"
    );
    let queries = dashboard_queries();
    for metric in [
        "ztunnel_rollout_phase",
        "ztunnel_rollout_nodes",
        "ztunnel_rollout_node_duration_seconds_bucket",
        "ztunnel_rollout_step_duration_seconds_bucket",
        "ztunnel_rollout_evictions_total",
        "ztunnel_rollout_verifications_total",
        "ztunnel_rollout_is_leader",
        "ztunnel_rollout_pass_seconds_bucket",
    ] {
        assert!(
            queries.iter().any(|(_, q)| q.contains(metric)),
            "no panel shows {metric}"
        );
    }
    for (title, query) in &queries {
        assert!(!query.contains('$'), "{title}: a variable left in {query}");
    }
}

/// Waits until Prometheus has firing alerts named `names` for `rollout`; returns all
/// alerts as they were then.
async fn wait_for_alerts(
    prometheus: &Prometheus,
    names: &[&str],
    rollout: &str,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let alerts = prometheus.alerts().await;
        let missing: Vec<&&str> = names
            .iter()
            .filter(|name| {
                !firing(&alerts, name)
                    .iter()
                    .any(|a| a["labels"]["rollout"] == rollout)
            })
            .collect();
        if missing.is_empty() {
            return alerts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing:?} not firing for {rollout} within {within:?}; alerts: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_failing_rollout_fires_its_alerts_and_fills_every_dashboard_panel() {
    let mut env = TestEnv::new("obs", 0).await;
    agent_support::install(&env.client).await;
    // Zones a, b, c: one node each. Wave a passes; wave b's node fails its gate.
    env.add_nodes(3).await;
    let bad = env.nodes[1].clone();
    let server = ZtunnelMetricsServer::start(&env.nodes).await;
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    // Pods to evict: the drains' evictions feed the dashboard.
    support::apply_app(
        &env,
        "web",
        6,
        &[("web", Budget::MaxUnavailable(IntOrString::Int(1)))],
        0.5,
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    server.set_failure_rate(&bad, 5.0);

    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let rules = rules_without_durations(dir.path());
    let prometheus = Prometheus::start_with(
        Some(&server),
        &env.nodes,
        &AgentScrape {
            agent_metrics: Some(&agent.metrics),
            rule_files: std::slice::from_ref(&rules),
        },
    )
    .await;
    let bad_failures = FAILURES.replace("$node", &bad);
    prometheus.wait_for(&bad_failures, 1.0).await;
    prometheus
        .wait_for(r#"ztunnel_rollout_is_leader{job="ztunnel-rollout"}"#, 1.0)
        .await;
    let rule_groups = prometheus.api("/api/v1/rules").await;
    let loaded = rule_groups["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 10, "Prometheus loaded the rules: {rule_groups}");

    let name = format!("{}-obs", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(
            &env,
            &name,
            serde_json::json!({ "health": {
                "interval": "1s",
                "soak": "2s",
                "waypoints": { "disabled": true },
                "prometheus": {
                    "url": prometheus.url,
                    "queries": [{ "name": "failures", "query": FAILURES, "max": 0.5 }]
                }
            }}),
        ),
    )
    .await;
    let paused = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Paused",
        Duration::from_secs(180),
        &[&agent],
    )
    .await;
    assert_eq!(
        node_status(&paused, &bad).map(|n| n.phase),
        Some(NodePhase::Failed),
        "{:?}",
        paused.status
    );
    assert_eq!(
        node_status(&paused, &env.nodes[0]).map(|n| n.phase),
        Some(NodePhase::Done),
        "{:?}",
        paused.status
    );

    let alerts = wait_for_alerts(
        &prometheus,
        &["ZtunnelRolloutDegraded", "ZtunnelRolloutGateFailures"],
        &name,
        Duration::from_secs(60),
    )
    .await;
    let degraded = firing(&alerts, "ZtunnelRolloutDegraded");
    assert!(
        degraded.iter().any(|a| a["labels"]["phase"] == "Paused"
            && a["labels"]["severity"] == "critical"
            && a["annotations"]["description"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("kubectl describe ztr {name}")))),
        "{degraded:#?}"
    );
    // The agent answers and leads; the paused rollout is not "paused without failures",
    // nor Progressing (stalled), and no release failed.
    for quiet in [
        "ZtunnelRolloutAgentDown",
        "ZtunnelRolloutAgentAbsent",
        "ZtunnelRolloutNoLeader",
        "ZtunnelRolloutSeveralLeaders",
        "ZtunnelRolloutStalled",
        "ZtunnelRolloutPaused",
        "ZtunnelRolloutReleaseRetries",
    ] {
        assert!(
            alerts.iter().all(|a| a["labels"]["alertname"] != quiet),
            "{quiet} is up: {alerts:#?}"
        );
    }

    // Every dashboard query returns at least one number (NaN, e.g. a quantile of a
    // histogram without observations, is no data).
    prometheus
        .wait_for(
            "sum(ztunnel_rollout_evictions_total{job=\"ztunnel-rollout\"})",
            1.0,
        )
        .await;
    let mut empty = Vec::new();
    for (title, query) in dashboard_queries() {
        let samples = prometheus.vector(&query).await;
        if !samples.iter().any(|(_, v)| v.is_finite()) {
            empty.push(format!("{title}: {query} → {samples:?}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}\nagent metrics:\n{}",
        empty.join("\n"),
        agent_support::http_get(&agent.metrics, "/metrics").await
    );
}
