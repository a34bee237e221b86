//! The failure policy `Rollback` on the local control plane: a drain that fails in wave 2
//! restores the DaemonSet's previous revision and returns every updated node to it,
//! through the same PDB-respecting sequence, waves in reverse.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::PostParams;
use support::agent as agent_support;
use support::{TestEnv, sample_available};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::{Budget, UpdateStrategy};

#[tokio::test]
async fn a_failure_in_wave_two_rolls_every_updated_node_back_within_the_pdbs() {
    let env = TestEnv::new("rollback", 6).await;
    agent_support::install(&env.client).await;
    // Zones a, b, c: nodes 0 and 3, 1 and 4, 2 and 5.
    let ztunnel = support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    let old = support::ztunnel_hashes(&env)
        .await
        .into_values()
        .next()
        .expect("a ztunnel pod");
    support::apply_app(
        &env,
        "web",
        6,
        &[("web", Budget::MaxUnavailable(IntOrString::Int(1)))],
        1.0,
    )
    .await;
    // A pod on a wave-b node whose PDB can never allow a disruption: that node fails,
    // found before it is cordoned.
    let blocked = env.nodes[1].clone();
    support::pin_unevictable_pod(&env, &blocked).await;
    let new = support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    assert_ne!(old, new);

    let (pods_seen, pod_sampler) = sample_available(&env);
    let history = support::history::NodeHistory::start(&env);
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-a");
    let name = format!("{}-rb", env.namespace);
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({
            "drain": { "timeout": "3s" },
            "health": { "onFailure": "Rollback", "waypoints": { "disabled": true } }
        }),
    );
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    api.create(&PostParams::default(), &rollout)
        .await
        .expect("create");

    let rolling_back = agent_support::wait_for_phase(
        &env.client,
        &name,
        "RollingBack",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    let status = rolling_back.status.clone().expect("status");
    let rb = status
        .rollback
        .clone()
        .expect("rollback recorded in the status");
    assert_eq!(
        (rb.from.as_str(), rb.to.as_str()),
        (new.as_str(), old.as_str())
    );
    assert!(
        rb.reason.contains(&blocked) && rb.reason.contains("no drain can evict its pods"),
        "{}",
        rb.reason
    );
    assert!(
        !support::is_cordoned(&env.client, &blocked).await,
        "a node refused before its cordon is never cordoned"
    );
    // Which nodes the forward pass had updated (wave a, perhaps a node of wave b).
    let updated: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| n.phase == NodePhase::Done)
        .map(|n| n.name.clone())
        .collect();
    assert!(
        updated.contains(&env.nodes[0]) && updated.contains(&env.nodes[3]),
        "{updated:?}"
    );
    support::wait_for_event(&env.client, &name, "RollbackStarted", &old).await;

    let done = agent_support::wait_for_phase(
        &env.client,
        &name,
        "RolledBack",
        Duration::from_secs(180),
        &[&agent],
    )
    .await;
    pod_sampler.abort();

    // The DaemonSet is back on the previous revision, and so is every ztunnel pod.
    let ds = Api::<DaemonSet>::namespaced(env.client.clone(), &env.namespace)
        .get("ztunnel")
        .await
        .expect("ds");
    let image = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers[0].image.clone());
    assert!(
        image
            .flatten()
            .is_some_and(|i| i.ends_with(":1.28.0-distroless")),
        "the DaemonSet template is restored"
    );
    let hashes = support::ztunnel_hashes(&env).await;
    assert_eq!(hashes.len(), 6);
    assert!(
        hashes.values().all(|h| *h == old),
        "every ztunnel back on {old}: {hashes:?}"
    );
    let status = done.status.expect("status");
    assert_eq!(status.target_revision.as_deref(), Some(old.as_str()));
    assert_eq!(status.counts.failed, 0, "{:?}", status.nodes);
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "RolledBack")
    );

    // Waves in reverse: a rolled-back node of wave b was cordoned (its last cordon, by
    // the API server's order of changes) before those of wave a.
    if updated.contains(&env.nodes[4]) {
        let b = history
            .last_taken(&env.nodes[4])
            .expect("wave b node cordoned");
        for a in [&env.nodes[0], &env.nodes[3]] {
            let a_taken = history.last_taken(a).expect("wave a node cordoned");
            assert!(b < a_taken, "wave b before wave a ({b} vs {a_taken})");
        }
    }

    // No PDB was ever violated: web never below 5 of 6, the blocker never evicted.
    let pods_seen = std::mem::take(&mut *pods_seen.lock().expect("lock"));
    assert!(
        pods_seen.get("web").is_some_and(|min| *min >= 5),
        "web never below its PDB: {pods_seen:?}"
    );
    assert_eq!(
        pods_seen.get("blocker"),
        Some(&1),
        "the blocker was never evicted"
    );
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
}
