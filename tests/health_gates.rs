//! The health gates on the local control plane: PromQL checks against a real Prometheus
//! scraping simulated ztunnel endpoints, failing closed on errors; their bounds (one
//! agent-wide limit on requests in flight, rounds cut at the gate's deadline, capped
//! answers, the API server refusing intervals under 1s and query timeouts over 30s);
//! and the ztunnel metrics reader and the gates' HTTP client against real endpoints.

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use support::TestEnv;
use support::agent::{self as agent_support, Agent, node_status};
use support::prometheus::{Prometheus, ZtunnelMetricsServer};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout::health::http_client::{
    Bounds, FETCHES_AT_ONCE, FetchError, HttpClient, MAX_BODY,
};
use ztunnel_rollout::health::ztunnel_metrics;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;

const FAILURES: &str =
    r#"sum(rate(istio_tcp_connections_closed_total{node="$node",response_flags!="-"}[5s]))"#;
/// A Prometheus answer of one number, 0.
const ZERO: &str = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0"]}}"#;

fn agent(env: &TestEnv, dir: &tempfile::TempDir) -> Agent {
    agent_support::start_as_service_account(env, dir.path(), "agent-a")
}

fn condition(r: &ZtunnelRollout, type_: &str) -> (String, String, String) {
    let c = r
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition: {:?}", r.status));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[tokio::test]
async fn the_promql_gate_passes_healthy_nodes_and_pauses_on_a_raised_failure_rate() {
    let mut env = TestEnv::new("gate-prom", 0).await;
    agent_support::install(&env.client).await;
    // Zones a, b, c: nodes 0 and 3, 1 and 4, 2 and 5.
    env.add_nodes(6).await;
    let bad = env.nodes[1].clone();
    let server = ZtunnelMetricsServer::start(&env.nodes).await;
    let prometheus = Prometheus::start(Some(&server), &env.nodes).await;
    prometheus
        .wait_for(r#"count(up{job="ztunnel"} == 1)"#, 6.0)
        .await;
    let ztunnel = support::apply_ztunnel(
        &env,
        ztunnel_rollout_testbed::fixtures::UpdateStrategy::OnDelete,
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    // The new ztunnel drops connections on one node of wave b.
    server.set_failure_rate(&bad, 5.0);
    prometheus
        .wait_for(&FAILURES.replace("$node", &bad), 1.0)
        .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir);
    let name = format!("{}-prom", env.namespace);
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
                    "queries": [
                        { "name": "failures", "query": FAILURES, "max": 0.5 },
                        // Scored against its value before the node was touched.
                        { "name": "targets-up", "query": "count(up{job=\"ztunnel\"} == 1)", "maxIncrease": 0.0 }
                    ]
                }
            }}),
        ),
    )
    .await;
    let paused = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Paused",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let failed = node_status(&paused, &bad).expect("the bad node in the status");
    assert_eq!(failed.phase, NodePhase::Failed, "{failed:?}");
    let (status, reason, message) = condition(&paused, "Paused");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "NodeFailed"));
    let query = FAILURES.replace("$node", &bad);
    assert!(
        message.contains(&query) && message.contains("above the maximum 0.500"),
        "the condition names the query, the value and the threshold: {message}"
    );
    assert_eq!(condition(&paused, "Degraded").0, "True");
    // Wave a passed on healthy series; wave c never started.
    for node in [&env.nodes[0], &env.nodes[3]] {
        assert_eq!(
            node_status(&paused, node).map(|n| n.phase),
            Some(NodePhase::Done),
            "{node}"
        );
        let note =
            support::wait_for_event(&env.client, node, "Verified", "prometheus query failures")
                .await;
        assert!(note.contains("targets-up"), "{note}");
    }
    for node in [&env.nodes[2], &env.nodes[5]] {
        assert!(
            node_status(&paused, node).is_none_or(|n| n.phase == NodePhase::Pending),
            "{node} of wave c must not start"
        );
    }
    assert!(
        support::is_cordoned(&env.client, &bad).await,
        "a failed node stays cordoned by default"
    );
    support::wait_for_event(&env.client, &name, "NodeFailed", "above the maximum 0.500").await;
    let verdicts = |result: &str| {
        format!("ztunnel_rollout_verifications_total{{rollout=\"{name}\",result=\"{result}\"}}")
    };
    assert_eq!(agent.metric(&verdicts("failed")).await, 1.0);
    assert_eq!(agent.metric(&verdicts("passed")).await, 2.0);

    // The circuit breaker: tolerating one failed node lets the rollout go on past it
    // once the node no longer takes the wave's only slot (its operator uncordons it).
    // Until then the rollout says so, and what to do.
    Api::<ZtunnelRollout>::all(env.client.clone())
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "health": { "maxFailedNodes": 1 } } })),
        )
        .await
        .expect("raise maxFailedNodes");
    let waits = support::wait_for(
        &Api::<ZtunnelRollout>::all(env.client.clone()),
        &name,
        "the failed node named as what holds the wave",
        |r: Option<&ZtunnelRollout>| {
            r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Paused" && c.message.contains("left cordoned for inspection")
                })
            })
        },
    )
    .await
    .expect("rollout");
    let (_, reason, message) = condition(&waits, "Paused");
    assert_eq!(reason, "NodeFailed", "{message}");
    assert!(
        message.contains(&format!("{bad} (failed, left cordoned)"))
            && message.contains("uncordon them once inspected"),
        "{message}"
    );
    support::set_unschedulable(&env.client, &bad, false).await;
    let done = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let counts = done.status.as_ref().expect("status").counts.clone();
    assert_eq!((counts.done, counts.failed), (5, 1), "{counts:?}");
    let (_, _, message) = condition(&done, "Complete");
    assert!(message.contains("except 1 failed"), "{message}");
}

/// Each rollout covers one node of the env (by hostname).
fn one_node_rollout(
    env: &TestEnv,
    name: &str,
    node: &str,
    url: &str,
    query: &str,
) -> ZtunnelRollout {
    agent_support::rollout(
        env,
        name,
        serde_json::json!({
            "nodeSelector": { "matchLabels": { "kubernetes.io/hostname": node } },
            "health": {
                "interval": "1s",
                "waypoints": { "disabled": true },
                "prometheus": {
                    "url": url,
                    "queryTimeout": "2s",
                    "queries": [{ "name": "check", "query": query, "max": 1.0 }]
                }
            }
        }),
    )
}

#[tokio::test]
async fn an_unreachable_or_broken_prometheus_or_a_query_without_data_fails_closed() {
    let env = TestEnv::new("gate-errors", 5).await;
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(
        &env,
        ztunnel_rollout_testbed::fixtures::UpdateStrategy::OnDelete,
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let server = ZtunnelMetricsServer::start(&[]).await;
    server.set_body("broken", "<html>502 Bad Gateway</html>");
    let prometheus = Prometheus::start(None, &[]).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address").port()
    };
    // Answers whose text must not reach the rollout's status or Events.
    let error_page = answer_always(
        "500 Internal Server Error",
        &format!(r#"{{"status":"error","errorType":"{SECRET}","error":"{SECRET}"}}"#),
    )
    .await;
    let garbage = answer_always(
        "200 OK",
        &format!(
            r#"{{"status":"success","data":{{"resultType":"scalar","result":[1,"{SECRET}"]}}}}"#
        ),
    )
    .await;
    let cases = [
        (
            "unreachable",
            format!("http://127.0.0.1:{closed}"),
            "up",
            "unreachable",
        ),
        (
            "malformed",
            format!("http://{}/metrics/broken", server.address),
            "up",
            "not Prometheus API JSON",
        ),
        (
            "nodata",
            prometheus.url.clone(),
            "no_such_metric_total",
            "returned no data (failing closed: noData is Fail)",
        ),
        ("errorbody", error_page, "up", "HTTP 500"),
        ("garbage", garbage, "up", "malformed answer"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir);
    // One after the other: rollouts over one DaemonSet never overlap.
    for ((case, url, query, expected), node) in cases.iter().zip(&env.nodes) {
        let name = format!("{}-{case}", env.namespace);
        agent_support::create(
            &env.client,
            &one_node_rollout(&env, &name, node, url, query),
        )
        .await;
        let paused = agent_support::wait_for_phase(
            &env.client,
            &name,
            "Paused",
            Duration::from_secs(90),
            &[&agent],
        )
        .await;
        let n = node_status(&paused, node).expect("node status");
        assert_eq!(n.phase, NodePhase::Failed, "{case}: {n:?}");
        assert!(
            n.message.contains("verification failed") && n.message.contains(expected),
            "{case}: {}",
            n.message
        );
        let (_, reason, message) = condition(&paused, "Degraded");
        assert_eq!(reason, "NodeFailed", "{case}");
        assert!(message.contains(expected), "{case}: {message}");
        // Done with it: an abort releases the failed node and ends the rollout.
        assert!(
            !format!("{:?}", paused.status).contains(SECRET),
            "{case}: {:?}",
            paused.status
        );
        agent_support::abort(&env.client, &name, &agent).await;
        assert!(
            !support::is_cordoned(&env.client, node).await,
            "{case}: the abort released the failed node"
        );
    }
    // Nothing of the answers' text in any Event (the failures were told: NodeFailed).
    let events = Api::<k8s_openapi::api::core::v1::Event>::all(env.client.clone())
        .list(&Default::default())
        .await
        .expect("list Events");
    let ours: Vec<_> = events
        .items
        .iter()
        .filter(|e| {
            let involved = e.involved_object.name.as_deref().unwrap_or_default();
            involved.starts_with(&env.namespace) || env.nodes.iter().any(|n| n == involved)
        })
        .collect();
    assert!(
        ours.iter()
            .any(|e| e.reason.as_deref() == Some("NodeFailed")),
        "no NodeFailed Event: {ours:?}"
    );
    for e in ours {
        assert!(
            !format!("{e:?}").contains(SECRET),
            "an Event repeats an answer's text: {e:?}"
        );
    }
}

/// Prometheus behind mutual TLS and a bearer token, its CA, client certificate and token
/// in a Secret in the agent's namespace (the one the optional Role names): a rollout
/// naming them completes, and the server saw the client certificate and the token on
/// every query; a wrong token, a key the Secret does not have, a CA that did not sign
/// the server's certificate, and no client certificate each fail the node's gate with
/// a reason naming what is wrong, and the token is in no status or Event.
#[tokio::test]
async fn prometheus_credentials_from_a_secret_authenticate_the_gate_and_failures_name_what_is_wrong()
 {
    use k8s_openapi::api::core::v1::Secret;
    use support::tls_prometheus::{TlsPrometheus, unrelated_ca_pem};
    use ztunnel_rollout::api::manifests::{NAMESPACE, PROMETHEUS_CREDENTIALS_SECRET};
    let env = TestEnv::new("gate-credentials", 5).await;
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(
        &env,
        ztunnel_rollout_testbed::fixtures::UpdateStrategy::OnDelete,
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    const TOKEN: &str = "t0ken-that-must-stay-secret";
    let prometheus = TlsPrometheus::start(TOKEN).await;
    let secrets = Api::<Secret>::namespaced(env.client.clone(), NAMESPACE);
    let put_secret = |token: &str| {
        serde_json::from_value::<Secret>(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": PROMETHEUS_CREDENTIALS_SECRET, "namespace": NAMESPACE },
            "stringData": {
                "ca.crt": prometheus.ca_pem,
                "tls.crt": prometheus.client_cert_pem,
                "tls.key": prometheus.client_key_pem,
                // As `kubectl create secret --from-file` stores it: a trailing newline.
                "token": format!("{token}\n"),
                "unrelated-ca.crt": unrelated_ca_pem(),
            },
        }))
        .expect("Secret")
    };
    ztunnel_rollout_testbed::fixtures::apply(&secrets, &put_secret(TOKEN))
        .await
        .expect("the credentials Secret");
    let credentials = |tls: serde_json::Value, token_key: &str| {
        serde_json::json!({
            "bearerToken": { "name": PROMETHEUS_CREDENTIALS_SECRET, "key": token_key },
            "tls": tls,
        })
    };
    let full_tls = serde_json::json!({
        "ca": { "name": PROMETHEUS_CREDENTIALS_SECRET },
        "clientCertificate": { "name": PROMETHEUS_CREDENTIALS_SECRET },
    });
    let rollout = |name: &str, node: &str, auth: serde_json::Value| {
        let mut r = one_node_rollout(&env, name, node, &prometheus.url, "vector(0)");
        let p = r.spec.health.prometheus.as_mut().expect("prometheus");
        let mut v = serde_json::to_value(&*p).expect("json");
        for (k, val) in auth.as_object().expect("object") {
            v[k] = val.clone();
        }
        *p = serde_json::from_value(v).expect("prometheus spec");
        r
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir);

    // Authenticated: the rollout completes, every query carried the client
    // certificate and the token.
    let name = format!("{}-ok", env.namespace);
    agent_support::create(
        &env.client,
        &rollout(&name, &env.nodes[0], credentials(full_tls.clone(), "token")),
    )
    .await;
    agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        Duration::from_secs(90),
        &[&agent],
    )
    .await;
    let seen = prometheus.seen();
    assert!(
        !seen.is_empty()
            && seen.iter().all(|s| s.authorized
                && s.client == "ztunnel-rollout"
                && s.path == "/api/v1/query"),
        "{seen:?}"
    );
    assert!(!support::is_cordoned(&env.client, &env.nodes[0]).await);

    // What fails, and what the node's status must say.
    let no_client_cert = serde_json::json!({ "ca": { "name": PROMETHEUS_CREDENTIALS_SECRET } });
    let wrong_ca = serde_json::json!({
        "ca": { "name": PROMETHEUS_CREDENTIALS_SECRET, "key": "unrelated-ca.crt" },
        "clientCertificate": { "name": PROMETHEUS_CREDENTIALS_SECRET },
    });
    let cases = [
        (
            "nokey",
            credentials(full_tls.clone(), "missing"),
            format!(
                "Prometheus credentials: Secret {NAMESPACE}/{PROMETHEUS_CREDENTIALS_SECRET} has no key missing"
            ),
        ),
        (
            "wrongca",
            credentials(wrong_ca, "token"),
            "TLS failed".to_owned(),
        ),
        (
            "noclientcert",
            credentials(no_client_cert, "token"),
            "TLS failed".to_owned(),
        ),
        (
            "wrongtoken",
            credentials(full_tls, "token"),
            "HTTP 401".to_owned(),
        ),
    ];
    for ((case, auth, expected), node) in cases.into_iter().zip(&env.nodes[1..]) {
        if case == "wrongtoken" {
            ztunnel_rollout_testbed::fixtures::apply(&secrets, &put_secret("not-the-token"))
                .await
                .expect("the credentials Secret");
        }
        let refused_before = prometheus.refused_handshakes();
        let name = format!("{}-{case}", env.namespace);
        agent_support::create(&env.client, &rollout(&name, node, auth)).await;
        let paused = agent_support::wait_for_phase(
            &env.client,
            &name,
            "Paused",
            Duration::from_secs(90),
            &[&agent],
        )
        .await;
        let n = node_status(&paused, node).expect("node status");
        assert_eq!(n.phase, NodePhase::Failed, "{case}: {n:?}");
        assert!(
            n.message.contains("verification failed") && n.message.contains(&expected),
            "{case}: {}",
            n.message
        );
        if case == "wrongca" || case == "noclientcert" {
            assert!(
                prometheus.refused_handshakes() > refused_before,
                "{case}: the server refused no handshake"
            );
        }
        if case == "wrongtoken" {
            assert!(
                prometheus.seen().iter().any(|s| !s.authorized),
                "the server saw no query with the wrong token"
            );
        }
        assert!(
            !format!("{:?}", paused.status).contains(TOKEN)
                && !format!("{:?}", paused.status).contains("not-the-token"),
            "{case}: a token in the status"
        );
        agent_support::abort(&env.client, &name, &agent).await;
        assert!(!support::is_cordoned(&env.client, node).await, "{case}");
    }
    let events = Api::<k8s_openapi::api::core::v1::Event>::all(env.client.clone())
        .list(&Default::default())
        .await
        .expect("list Events");
    for e in &events.items {
        let text = format!("{e:?}");
        assert!(
            !text.contains(TOKEN) && !text.contains("not-the-token"),
            "an Event carries a token: {e:?}"
        );
    }
}

/// Text that a health check's answer carries and nothing may repeat.
const SECRET: &str = "s3cr3t-answer-text";

/// A server on loopback answering every request with `status` and `body` (JSON); its URL.
async fn answer_always(status: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

/// A rollout whose Prometheus URL the agent does not allow (another host than the
/// allowed prefix's, a cloud metadata address) is Blocked naming the URL, the allowed
/// prefixes and the flag, and no node is cordoned; another agent allowing the URL runs
/// it.
#[tokio::test]
async fn a_prometheus_url_the_agent_does_not_allow_blocks_the_rollout_before_any_node() {
    let env = TestEnv::new("gate-url", 2).await;
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(
        &env,
        ztunnel_rollout_testbed::fixtures::UpdateStrategy::OnDelete,
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir);
    let cases = [
        (
            "otherhost",
            "http://localhost:9090".to_owned(),
            "only URLs under",
        ),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "always refused",
        ),
    ];
    for ((case, url, expected), node) in cases.iter().zip(&env.nodes) {
        let name = format!("{}-{case}", env.namespace);
        agent_support::create(
            &env.client,
            &one_node_rollout(&env, &name, node, url, "vector(0)"),
        )
        .await;
        let blocked = agent_support::wait_for_phase(
            &env.client,
            &name,
            "Blocked",
            Duration::from_secs(60),
            &[&agent],
        )
        .await;
        let (_, reason, message) = condition(&blocked, "Degraded");
        assert_eq!(reason, "PrometheusURLNotAllowed", "{case}: {message}");
        assert!(
            message.contains(url.as_str())
                && message.contains(expected)
                && message.contains("--allowed-prometheus-url-prefix"),
            "{case}: {message}"
        );
        if *case == "otherhost" {
            assert!(
                message.contains(agent_support::ALLOWED_PROMETHEUS),
                "{case}: names the allowed prefixes: {message}"
            );
        }
        assert!(
            !support::is_cordoned(&env.client, node).await,
            "{case}: {node} was cordoned"
        );
        let n = Api::<k8s_openapi::api::core::v1::Node>::all(env.client.clone())
            .get(node)
            .await
            .expect("node");
        assert!(
            !n.metadata
                .annotations
                .unwrap_or_default()
                .contains_key(ztunnel_rollout_core::labels::OWNER_ANNOTATION),
            "{case}: {node} is owned"
        );
        assert!(
            blocked
                .status
                .as_ref()
                .is_none_or(|s| s.nodes.iter().all(|n| n.phase == NodePhase::Pending)),
            "{case}: {:?}",
            blocked.status
        );
    }
}

#[tokio::test]
async fn the_ztunnel_metrics_reader_reads_a_real_endpoint_and_refuses_broken_ones() {
    let server = ZtunnelMetricsServer::start(&[String::new()]).await;
    server.set_failure_rate("", 100.0);
    let client = HttpClient::new();
    let ip = server.address.ip().to_string();
    let port = server.address.port();
    let first =
        ztunnel_metrics::scrape(&client, "ztunnel-x", &ip, port, 0.0, Duration::from_secs(2))
            .await
            .expect("a scrape");
    assert_eq!(first.active_proxies, Some(0.0));
    assert_eq!(first.pending_proxies, Some(0.0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second =
        ztunnel_metrics::scrape(&client, "ztunnel-x", &ip, port, 0.3, Duration::from_secs(2))
            .await
            .expect("a scrape");
    assert!(
        second.failed_connections > first.failed_connections,
        "{first:?} then {second:?}"
    );

    server.set_body(
        "",
        "workload_manager_active_proxy_count 1\nthis is not a sample\n",
    );
    let err = ztunnel_metrics::scrape(&client, "ztunnel-x", &ip, port, 1.0, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(err.contains("malformed") && err.contains("line 2"), "{err}");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address").port()
    };
    let err = ztunnel_metrics::scrape(
        &client,
        "ztunnel-x",
        "127.0.0.1",
        closed,
        1.0,
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert!(err.contains("unreachable"), "{err}");
}

#[tokio::test]
async fn the_api_server_refuses_gate_settings_outside_their_bounds() {
    let env = TestEnv::new("gate-bounds-schema", 0).await;
    agent_support::install(&env.client).await;
    let api = Api::<ZtunnelRollout>::all(env.client.clone());
    let cases = [
        (
            "interval",
            serde_json::json!({ "interval": "1ms", "waypoints": { "disabled": true } }),
            "interval must be at least 1s",
        ),
        (
            "meshwithoutprometheus",
            serde_json::json!({
                "waypoints": { "disabled": true },
                "meshQueries": [{ "name": "q", "query": "up", "max": 1.0 }]
            }),
            "meshQueries need prometheus (its url)",
        ),
        (
            "tokenoverhttp",
            serde_json::json!({
                "waypoints": { "disabled": true },
                "prometheus": {
                    "url": "http://127.0.0.1:9",
                    "bearerToken": { "name": "prometheus-credentials" },
                    "queries": [{ "name": "q", "query": "up", "max": 1.0 }]
                }
            }),
            "bearerToken needs an https:// url",
        ),
        (
            "tlsoverhttp",
            serde_json::json!({
                "waypoints": { "disabled": true },
                "prometheus": {
                    "url": "http://127.0.0.1:9",
                    "tls": { "ca": { "name": "prometheus-credentials" } },
                    "queries": [{ "name": "q", "query": "up", "max": 1.0 }]
                }
            }),
            "tls applies to an https:// url only",
        ),
        (
            "querytimeout",
            serde_json::json!({
                "waypoints": { "disabled": true },
                "prometheus": {
                    "url": "http://127.0.0.1:9",
                    "queryTimeout": "5m",
                    "queries": [{ "name": "q", "query": "up", "max": 1.0 }]
                }
            }),
            "queryTimeout must be at most 30s",
        ),
    ];
    for (case, health, expected) in cases {
        let name = format!("{}-{case}", env.namespace);
        let r = agent_support::rollout(&env, &name, serde_json::json!({ "health": health }));
        let err = api
            .create(&PostParams::default(), &r)
            .await
            .expect_err(case);
        let kube::Error::Api(status) = err else {
            panic!("{case}: not an API refusal: {err}");
        };
        assert_eq!(status.code, 422, "{case}: {status:?}");
        assert!(
            status.message.contains(expected),
            "{case}: {}",
            status.message
        );
        assert!(
            api.get_opt(&name).await.expect("get").is_none(),
            "{case}: nothing was stored"
        );
    }
}

#[tokio::test]
async fn the_gates_http_client_holds_its_slots_deadline_and_size_cap() {
    let server = ZtunnelMetricsServer::start(&[]).await;
    let url = |key: &str| format!("http://{}/metrics/{key}/", server.address);
    // Slots: 3 × FETCHES_AT_ONCE slow answers through one client; the endpoint never
    // sees more than FETCHES_AT_ONCE at once, and every one is answered.
    server.set_body("slow", "ok");
    server.set_delay("slow", Duration::from_millis(300));
    let client = HttpClient::new();
    let slow = url("slow");
    let fetches = (0..3 * FETCHES_AT_ONCE).map(|_| client.get(&slow, Duration::from_secs(10)));
    let answers = futures::future::join_all(fetches).await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|b| &b[..] == b"ok"))
    );
    assert_eq!(
        server.peak_in_flight(),
        FETCHES_AT_ONCE,
        "the limit was reached, not passed"
    );

    // Deadline: a request given a 10 s timeout ends at its earlier deadline, and one
    // waiting for the slot it holds ends at its own (earlier) deadline, without being
    // sent.
    server.set_delay("slow", Duration::from_secs(30));
    let one = HttpClient::with_slots(1);
    let at = |ms| Bounds {
        timeout: Duration::from_secs(10),
        deadline: Some(tokio::time::Instant::now() + Duration::from_millis(ms)),
    };
    let (first, second) = futures::join!(one.get(&slow, at(1000)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        one.get(&slow, at(300)).await
    });
    assert!(
        matches!(first, Err(FetchError::Deadline { .. })),
        "{first:?}"
    );
    assert!(
        matches!(second, Err(FetchError::NoSlot { slots: 1, .. })),
        "{second:?}"
    );

    // Size: an answer over MAX_BODY fails, announced or not.
    let big = "x".repeat(MAX_BODY + 1);
    server.set_body("big", &big);
    server.set_body_without_length("hidden", &big);
    for key in ["big", "hidden"] {
        let err = client
            .get(&url(key), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::TooLarge { .. }), "{key}: {err:?}");
        assert!(
            err.to_string().contains("larger than 4 MiB"),
            "{key}: {err}"
        );
    }
    // At the cap it is read whole.
    server.set_body_without_length("fits", &"y".repeat(MAX_BODY));
    let body = client
        .get(&url("fits"), Duration::from_secs(10))
        .await
        .expect("fits");
    assert_eq!(body.len(), MAX_BODY);
}

#[tokio::test]
async fn a_slow_prometheus_cannot_stretch_the_gate_past_its_timeout() {
    let env = TestEnv::new("gate-slow", 1).await;
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(
        &env,
        ztunnel_rollout_testbed::fixtures::UpdateStrategy::OnDelete,
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    // Each answer takes longer than the largest queryTimeout.
    let server = ZtunnelMetricsServer::start(&[]).await;
    server.set_body("slow", ZERO);
    server.set_delay("slow", Duration::from_secs(120));
    let node = env.nodes[0].clone();
    let name = env.namespace.clone();
    // A round's queries would take 30 s each; the gate's deadline comes at 3 s.
    let r = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({
            "nodeSelector": { "matchLabels": { "kubernetes.io/hostname": node } },
            "health": {
                "interval": "1s",
                "timeout": "3s",
                "waypoints": { "disabled": true },
                "prometheus": {
                    "url": format!("http://{}/metrics/slow", server.address),
                    "queryTimeout": "30s",
                    "queries": [
                        { "name": "a", "query": "up", "max": 1.0 },
                        { "name": "b", "query": "up", "max": 1.0 }
                    ]
                }
            }
        }),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&env, &dir);
    agent_support::create(&env.client, &r).await;
    let paused = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Paused",
        Duration::from_secs(90),
        &[&agent],
    )
    .await;
    let n = node_status(&paused, &node).expect("node status");
    assert_eq!(n.phase, NodePhase::Failed, "{n:?}");
    // Cut at the gate's deadline, not after the 30 s queryTimeout.
    assert!(
        n.message
            .contains("no answer by the health gate's deadline"),
        "{}",
        n.message
    );
    assert!(!n.message.contains("no answer within"), "{}", n.message);
    // Both queries were sent in the same round, side by side.
    assert_eq!(server.peak_in_flight(), 2);
}

/// The mesh-wide breaker against the real Prometheus: while the first node's drain is
/// held, failures rise somewhere in the mesh; the rollout pauses (MeshQueryFailed, the
/// query and threshold in its conditions and an Event), the node in flight finishes once
/// its drain is let go, and no other node is ever cordoned (a watch started before the
/// rollout).
#[tokio::test]
async fn a_mesh_query_that_breaches_mid_rollout_stops_new_nodes_and_lets_the_node_in_flight_finish()
{
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::runtime::{WatchStreamExt, watcher};
    const MESH_FAILURES: &str =
        r#"sum(rate(istio_tcp_connections_closed_total{response_flags!="-"}[5s]))"#;
    let mut env = TestEnv::new("gate-mesh", 0).await;
    agent_support::install(&env.client).await;
    // Zones a, b, c.
    env.add_nodes(3).await;
    let (first, others) = (env.nodes[0].clone(), env.nodes[1..].to_vec());
    let server = ZtunnelMetricsServer::start(&env.nodes).await;
    let prometheus = Prometheus::start(Some(&server), &env.nodes).await;
    prometheus
        .wait_for(r#"count(up{job="ztunnel"} == 1)"#, 3.0)
        .await;
    let ztunnel = support::apply_ztunnel(
        &env,
        ztunnel_rollout_testbed::fixtures::UpdateStrategy::OnDelete,
    )
    .await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    support::hold_drain_on(&env, &first).await;

    // Any cordon of the other nodes, from before the rollout exists.
    let nodes: Api<Node> = Api::all(env.client.clone());
    let mut stream = Box::pin(
        watcher(
            nodes.clone(),
            watcher::Config::default().labels(
                &env.node_list_params()
                    .label_selector
                    .clone()
                    .unwrap_or_default(),
            ),
        )
        .applied_objects(),
    );
    let _ = stream.next().await;
    let cordoned_others = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = cordoned_others.clone();
    let watched = others.clone();
    let watch = tokio::spawn(async move {
        while let Some(Ok(n)) = stream.next().await {
            let name = n.metadata.name.clone().unwrap_or_default();
            if watched.contains(&name) && n.spec.and_then(|s| s.unschedulable) == Some(true) {
                record.lock().expect("lock").push(name);
            }
        }
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let _agent = agent(&env, &dir);
    let name = format!("{}-mesh", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(
            &env,
            &name,
            serde_json::json!({ "health": {
                "interval": "1s",
                "waypoints": { "disabled": true },
                "prometheus": { "url": prometheus.url },
                "meshQueries": [{ "name": "mesh-failures", "query": MESH_FAILURES, "max": 0.5 }]
            }}),
        ),
    )
    .await;
    support::wait_for(
        &nodes,
        &first,
        "the first node cordoned",
        |n: Option<&Node>| {
            n.and_then(|n| n.spec.as_ref())
                .and_then(|s| s.unschedulable)
                == Some(true)
        },
    )
    .await;
    // Failures rise in the mesh (on a node the rollout has not touched).
    server.set_failure_rate(&others[1], 5.0);
    let rollouts = Api::<ZtunnelRollout>::all(env.client.clone());
    let paused = support::wait_for(
        &rollouts,
        &name,
        "paused by the mesh breaker",
        |r: Option<&ZtunnelRollout>| {
            r.and_then(|r| r.status.as_ref()).is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Paused" && c.status == "True" && c.reason == "MeshQueryFailed"
                })
            })
        },
    )
    .await
    .expect("rollout");
    let (_, _, message) = condition(&paused, "Paused");
    assert!(
        message.contains("mesh query mesh-failures")
            && message.contains(MESH_FAILURES)
            && message.contains("above the maximum 0.500"),
        "the condition names the query, the value and the threshold: {message}"
    );
    assert_eq!(condition(&paused, "Degraded").0, "True");
    support::wait_for_event(&env.client, &name, "MeshQueryFailed", "mesh-failures").await;
    assert!(
        node_status(&paused, &first).is_some_and(|n| n.phase != NodePhase::Done),
        "the first node is still in flight when the breaker trips"
    );

    // Let the first node's drain go: it finishes its sequence.
    Api::<PodDisruptionBudget>::namespaced(env.client.clone(), &env.namespace)
        .delete("held", &Default::default())
        .await
        .expect("delete the held PDB");
    let done = support::wait_for(
        &rollouts,
        &name,
        "the node in flight done",
        |r: Option<&ZtunnelRollout>| {
            r.is_some_and(|r| node_status(r, &first).is_some_and(|n| n.phase == NodePhase::Done))
        },
    )
    .await
    .expect("rollout");
    assert!(!support::is_cordoned(&env.client, &first).await, "released");
    assert_eq!(
        condition(&done, "Paused").1,
        "MeshQueryFailed",
        "still stopped"
    );
    for node in &others {
        assert!(
            node_status(&done, node).is_none_or(|n| n.phase == NodePhase::Pending),
            "{node} must not start"
        );
    }
    watch.abort();
    assert!(
        cordoned_others.lock().expect("lock").is_empty(),
        "no other node was ever cordoned: {:?}",
        cordoned_others.lock().expect("lock")
    );
}
