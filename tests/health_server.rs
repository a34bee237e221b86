//! The metrics and health endpoint, served for real on loopback; and `/livez` of real
//! agents on the test cluster, one whose pass is stuck and one that waits for the lease.

mod support;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use support::TestEnv;
use support::agent::{self as agent_support, Agent};
use support::fault_proxy::{Fault, FaultProxy, Rule};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel_rollout::health_server::{self, HEADER_READ_TIMEOUT, Liveness, Readiness};
use ztunnel_rollout::metrics::{EvictionLabels, Metrics, PhaseLabels, RolloutLabels};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn serves_liveness_readiness_and_metrics() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let (addr, serve) = health_server::bind(
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(registry),
        readiness.clone(),
        Liveness::new(Duration::from_secs(300)),
    )
    .await
    .expect("bind");
    let server = tokio::spawn(serve);

    assert_eq!(get(addr, "/livez").await, (200, "ok".to_owned()));
    assert_eq!(
        get(addr, "/readyz").await.0,
        503,
        "not ready before the watches synced"
    );
    readiness.set(true);
    assert_eq!(get(addr, "/readyz").await, (200, "ok".to_owned()));
    assert_eq!(get(addr, "/nope").await.0, 404);

    metrics.is_leader.set(1);
    metrics
        .nodes
        .get_or_create(&PhaseLabels {
            rollout: "r1".into(),
            phase: "Done".into(),
        })
        .set(3);
    metrics
        .evictions
        .get_or_create(&EvictionLabels {
            result: "refused_by_budget".into(),
        })
        .inc_by(2);
    metrics
        .node_duration_seconds
        .get_or_create(&RolloutLabels {
            rollout: "r1".into(),
        })
        .observe(42.0);
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("ztunnel_rollout_is_leader 1"), "{body}");
    assert!(
        body.contains(r#"ztunnel_rollout_nodes{rollout="r1",phase="Done"} 3"#),
        "{body}"
    );
    assert!(
        body.contains(r#"ztunnel_rollout_evictions_total{result="refused_by_budget"} 2"#),
        "{body}"
    );
    assert!(
        body.contains("# TYPE ztunnel_rollout_node_duration_seconds histogram"),
        "{body}"
    );
    server.abort();
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = health_server::bind(
        addr,
        Arc::new(Registry::default()),
        Readiness::default(),
        Liveness::new(Duration::from_secs(300)),
    )
    .await
    .err()
    .expect("the port is taken");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

async fn serve_loopback(liveness: Liveness) -> std::net::SocketAddr {
    let (addr, serve) = health_server::bind(
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(Registry::default()),
        Readiness::default(),
        liveness,
    )
    .await
    .expect("bind");
    tokio::spawn(serve);
    addr
}

#[tokio::test]
async fn livez_fails_with_a_reason_once_the_loop_stops_ticking() {
    let liveness = Liveness::new(Duration::from_millis(300));
    let addr = serve_loopback(liveness.clone()).await;
    assert_eq!(get(addr, "/livez").await, (200, "ok".to_owned()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let answer = get(addr, "/livez").await;
        if answer.0 != 200 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("has not turned"), "{body}");
    assert_eq!(body.lines().count(), 1, "one line: {body}");
    liveness.tick();
    assert_eq!(get(addr, "/livez").await, (200, "ok".to_owned()));
}

/// A client that sends half a request head and stalls is cut off at the header read
/// timeout, not held open.
#[tokio::test]
async fn a_client_that_stalls_in_its_request_head_is_cut_off() {
    let addr = serve_loopback(Liveness::new(Duration::from_secs(300))).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        HEADER_READ_TIMEOUT + Duration::from_secs(5),
        stream.read_to_end(&mut rest),
    )
    .await;
    assert!(
        read.is_ok(),
        "the connection was still open {:?} after the half request",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "cut after {:?}, before the timeout",
        started.elapsed()
    );
}

const WITHIN: Duration = Duration::from_secs(90);
/// The agents' liveness bound in the test below.
const BOUND: &str = "4s";
/// How long the proxy holds the request the stuck pass awaits.
const STUCK: Duration = Duration::from_secs(20);

/// The raw answer to a GET, or `None` while the agent does not listen yet.
async fn try_get(address: &str, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.ok()?;
    Some(raw)
}

async fn livez(agent: &Agent) -> (u16, String) {
    let raw = agent_support::http_get(&agent.metrics, "/livez").await;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `agent`'s `/livez` until it answers `want`, asserting meanwhile that `other`
/// stays live; returns the answer's body.
async fn livez_until(agent: &Agent, want: u16, other: &Agent, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = livez(agent).await;
        if status == want {
            return body;
        }
        let (other_status, other_body) = livez(other).await;
        assert_eq!(
            other_status,
            200,
            "{} is not live: {other_body}\n{}",
            other.identity,
            other.log_text()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}'s /livez did not answer {want} within {within:?} (last {status} {body})\n{}",
            agent.identity,
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A leader whose pass awaits an API call that does not answer (held at the fault
/// proxy) stops being live once the bound has passed, and is live again when the call
/// returns; a replica waiting for the lease meanwhile runs no pass and stays live.
#[tokio::test]
async fn a_stuck_pass_fails_livez_and_a_replica_waiting_for_the_lease_stays_live() {
    let env = TestEnv::new("livez", 1).await;
    agent_support::install(&env.client).await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let proxy = FaultProxy::start().await;
    let name = format!("{}-stuck", env.namespace);
    // A new term's first pass over a rollout reads it afresh, and waits for the answer.
    let held = proxy.add(
        Rule::new(
            http::Method::GET,
            &format!("/ztunnelrollouts/{name}"),
            Fault::Delay(STUCK),
        )
        .times(1),
    );
    let vars = [("ZTUNNEL_ROLLOUT_LIVENESS_TIMEOUT", BOUND)];
    let a = agent_support::start_with_env(
        &env,
        &proxy.agent_kubeconfig(dir_a.path()),
        "agent-a",
        &vars,
    );
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !try_get(&a.metrics, "/metrics")
        .await
        .is_some_and(|m| m.contains("ztunnel_rollout_is_leader 1"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent-a did not lead\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = agent_support::start_with_env(
        &env,
        &agent_support::service_account_kubeconfig(dir_b.path()),
        "agent-b",
        &vars,
    );
    b.wait_for_log("waiting for the lease", WITHIN).await;

    // Twice the bound with nothing to do: both live, the leader idle, the other waiting.
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        for agent in [&a, &b] {
            let (status, body) = livez(agent).await;
            assert_eq!(
                status,
                200,
                "{} idle: {body}\n{}",
                agent.identity,
                agent.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    agent_support::create(
        &env.client,
        &agent_support::rollout(&env, &name, serde_json::json!({})),
    )
    .await;
    if let Err(seen) = proxy.wait_seen(held, 1, WITHIN).await {
        panic!("{seen} fresh reads of the rollout\n{}", a.log_text());
    }
    let held_at = tokio::time::Instant::now();
    let reason = livez_until(&a, 503, &b, STUCK).await;
    assert!(
        reason.contains("has not turned") && reason.lines().count() == 1,
        "{reason:?}"
    );
    assert!(
        held_at.elapsed() < STUCK,
        "the stall was seen only after the call returned"
    );
    assert_eq!(proxy.fired(held), 1, "{}", proxy.report());
    // The held read is forwarded after STUCK: the pass ends and the loop turns again.
    livez_until(&a, 200, &b, STUCK + WITHIN).await;
    assert_eq!(livez(&b).await.0, 200);
}
