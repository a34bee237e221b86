//! The ztunnel gate end to end: the agent scrapes each node's new ztunnel pod at its pod
//! IP. The simulated nodes get pod CIDRs in 127.0.0.0/8 (KWOK gives pods IPs from their
//! node's podCIDR), and the test serves ztunnel metrics on every address of those ranges.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use support::TestEnv;
use support::agent as agent_support;
use support::prometheus::ZtunnelMetricsServer;
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::UpdateStrategy;

/// Addresses 1–14 of 127.88.`k`.0/28.
fn pod_addresses(k: u8) -> Vec<SocketAddr> {
    (1..15)
        .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 88, k, i)), 15020))
        .collect()
}

#[tokio::test]
async fn the_agent_scrapes_each_new_ztunnel_at_its_pod_ip_and_checks_its_proxies() {
    let env = TestEnv::new("gate-zt", 2).await;
    agent_support::install(&env.client).await;
    // Zone a: healthy ztunnel; zone b: a ztunnel proxying workloads the node does not run.
    let (good, bad) = (env.nodes[0].clone(), env.nodes[1].clone());
    let nodes: Api<Node> = Api::all(env.client.clone());
    let mut addresses = Vec::new();
    for (k, node) in [(0u8, &good), (1u8, &bad)] {
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({ "spec": { "podCIDR": format!("127.88.{k}.0/28") } }),
                ),
            )
            .await
            .expect("set the node's pod CIDR");
        addresses.extend(pod_addresses(k).into_iter().map(|a| (a, node.clone())));
    }
    let server = ZtunnelMetricsServer::start_at(&addresses).await;
    server.set_active_proxies(&bad, 2.0);
    // The test namespace is enrolled in ambient mode; ztunnel's own pods do not count.
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.namespace,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "metadata": { "labels": { "istio.io/dataplane-mode": "ambient" } } })),
        )
        .await
        .expect("label the namespace");

    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let name = format!("{}-zt", env.namespace);
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({ "health": {
            "interval": "1s",
            "timeout": "5s",
            "waypoints": { "disabled": true },
            "ztunnelMetrics": { "maxFailedConnectionsPerSecond": 0.5, "maxClosedPerOpened": 1.5 }
        }}),
    );
    Api::<ZtunnelRollout>::all(env.client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    let paused = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Paused",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let status = paused.status.expect("status");
    let phase = |node: &str| status.nodes.iter().find(|n| n.name == node).cloned();
    assert_eq!(phase(&good).map(|n| n.phase), Some(NodePhase::Done));
    let note = support::wait_for_event(&env.client, &good, "Verified", "ztunnel proxies").await;
    assert!(
        note.contains("0 active proxies, none pending")
            && note.contains("ztunnel connections: 0.000/s")
            && note.contains("ztunnel connection churn: "),
        "{note}"
    );
    let failed = phase(&bad).expect("the bad node's status");
    assert_eq!(failed.phase, NodePhase::Failed);
    assert!(
        failed.message.contains("not healthy within 5s")
            && failed
                .message
                .contains("2 active proxies, but 0 ambient pods on the node"),
        "{}",
        failed.message
    );
}
