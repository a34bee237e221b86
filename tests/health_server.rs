//! The metrics and health endpoint, served for real on loopback.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel_rollout::health_server::{self, Readiness};
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
    let err = health_server::bind(addr, Arc::new(Registry::default()), Readiness::default())
        .await
        .err()
        .expect("the port is taken");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
