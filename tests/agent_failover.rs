//! The agent survives what production does to it: its leader SIGKILLed mid-drain, and
//! the API server restarting mid-rollout.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::SignedDuration;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use support::agent::{self as agent_support, TEST_LABEL};
use support::history::NodeHistory;
use support::{TestEnv, daemonset_ready, deployment_available};
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_testbed::control_plane::{
    ControlPlaneOptions, RunningControlPlane, client_for,
};
use ztunnel_rollout_testbed::fixtures::{self, Budget, ZONE_LABEL};

/// Nodes the agent logged entering `phase`.
async fn assert_finished(client: &Client, ns: &str, selector: &ListParams, target: &str) {
    agent_support::assert_nodes_released(client, selector, None).await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app=ztunnel"))
        .await
        .expect("ztunnel pods");
    for p in pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        assert_eq!(
            p.labels()
                .get("controller-revision-hash")
                .map(String::as_str),
            Some(target),
            "{}",
            p.name_any()
        );
    }
}

#[tokio::test]
async fn a_sigkilled_leader_is_replaced_within_the_lease_and_the_rollout_completes() {
    let env = TestEnv::new("failover", 6).await;
    agent_support::install(&env.client).await;
    let ztunnel = support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    // Pods take 6 s to exit: the leader dies while a drain waits for them.
    support::apply_app(
        &env,
        "slow",
        4,
        &[("slow", Budget::MaxUnavailable(IntOrString::Int(1)))],
        6.0,
    )
    .await;
    let target = support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = agent_support::service_account_kubeconfig(dir.path());
    let lease = format!("{}-lease", env.namespace);
    let mut first = agent_support::start(&env, &kubeconfig, &lease, "replica-1");
    first.wait_for_log("leading", Duration::from_secs(60)).await;
    let second = agent_support::start(&env, &kubeconfig, &lease, "replica-2");
    second
        .wait_for_log("waiting for the lease", Duration::from_secs(60))
        .await;

    let history = NodeHistory::start(&env);
    let name = format!("{}-failover", env.namespace);
    let rollout = agent_support::rollout(
        &env,
        &name,
        serde_json::json!({ "waves": { "groupBy": ZONE_LABEL, "maxUnavailable": 1 } }),
    );
    Api::<ZtunnelRollout>::all(env.client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    // Mid-drain: a node of ours has its pods being evicted.
    first
        .wait_for_log("eviction accepted", Duration::from_secs(60))
        .await;
    first.kill();
    // The lease as the killed leader left it, then the standby's take-over, both read
    // from the Lease object: the standby took it only once it had expired.
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "ztunnel-rollout");
    let left = leases.get(&lease).await.expect("lease").spec.expect("spec");
    assert_eq!(left.holder_identity.as_deref(), Some("replica-1"));
    let taken = support::wait_within(
        &leases,
        &lease,
        "replica-2 holds the lease",
        Duration::from_secs(60),
        |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_deref())
                == Some("replica-2")
        },
    )
    .await
    .and_then(|l| l.spec)
    .expect("lease");
    let renewed = left.renew_time.expect("renewTime").0;
    let duration = SignedDuration::from_secs(left.lease_duration_seconds.expect("duration").into());
    let acquired = taken.acquire_time.expect("acquireTime").0;
    assert!(
        acquired >= renewed.checked_add(duration).expect("time"),
        "replica-2 took the lease at {acquired}, before replica-1's (renewed {renewed}, {duration}) expired"
    );
    assert_eq!(
        taken.lease_transitions.unwrap_or(0),
        left.lease_transitions.unwrap_or(0) + 1
    );
    eprintln!(
        "the standby took the lease {} after replica-1's last renewal",
        acquired.duration_since(renewed)
    );

    agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        Duration::from_secs(180),
        &[&first, &second],
    )
    .await;
    assert_finished(
        &env.client,
        &env.namespace,
        &env.node_list_params(),
        &target,
    )
    .await;
    // No node handled twice: from a watch of the nodes started before the rollout, each
    // went from schedulable to cordoned exactly once (a node the first agent finished
    // and the second started again would have been cordoned twice).
    for node in &env.nodes {
        assert_eq!(
            history.cordons(node),
            1,
            "{node} was cordoned {} times: {:?}",
            history.cordons(node),
            history.seen.lock().expect("lock").states.get(node)
        );
    }
}

#[tokio::test]
async fn the_agent_recovers_from_an_api_server_restart_mid_rollout() {
    let mut cluster = RunningControlPlane::start(ControlPlaneOptions {
        binaries: ztunnel_rollout_testbed::binaries::ControlPlaneBinaries::from_env(),
        state_dir: None,
        pod_timings: Default::default(),
        start_timeout: Duration::from_secs(120),
        audit_log: false,
        audit_log_path: None,
        audit_policy: None,
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let client = client_for(&cluster.kubeconfig).await.expect("client");
    agent_support::install(&client).await;
    let ns = "restart";
    support::node_set(&client, "restart-", 6, ns).await;
    let node_selector =
        std::collections::BTreeMap::from([(fixtures::NODE_SET_LABEL.to_owned(), ns.to_owned())]);
    let mut ztunnel = fixtures::ZtunnelFixture::new(ns, "1.28.0");
    ztunnel.node_selector = node_selector.clone();
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    fixtures::apply(&ds_api, &ztunnel.daemonset())
        .await
        .expect("ztunnel");
    support::wait_within(
        &ds_api,
        "ztunnel",
        "ztunnel Ready",
        Duration::from_secs(120),
        daemonset_ready(6),
    )
    .await;
    let mut app = fixtures::AppFixture::new(ns, "slow", 4);
    app.node_selector = node_selector.clone();
    app.exit_after_seconds = 3.0;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    fixtures::apply(&deployments, &app.deployment())
        .await
        .expect("app");
    fixtures::apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        &fixtures::pdb(
            ns,
            "slow",
            std::collections::BTreeMap::from([("app".to_owned(), "slow".to_owned())]),
            Budget::MaxUnavailable(IntOrString::Int(1)),
        ),
    )
    .await
    .expect("pdb");
    support::wait_within(
        &deployments,
        "slow",
        "slow available",
        Duration::from_secs(120),
        deployment_available(4),
    )
    .await;
    let target = support::upgrade_ztunnel(&client, ns, ztunnel).await;

    let agent = agent_support::start_tagged(ns, &cluster.kubeconfig, "restart-lease", "replica-1");
    let name = "restart";
    let rollout: ZtunnelRollout = serde_json::from_value(serde_json::json!({
        "apiVersion": "ztunnel-rollout.dev/v1alpha1",
        "kind": "ZtunnelRollout",
        "metadata": { "name": name, "labels": { TEST_LABEL: ns } },
        "spec": {
            "daemonSet": { "namespace": ns, "name": "ztunnel" },
            "nodeSelector": { "matchLabels": node_selector },
            "waves": { "groupBy": ZONE_LABEL, "maxUnavailable": 1 },
        },
    }))
    .expect("rollout");
    Api::<ZtunnelRollout>::all(client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    agent
        .wait_for_log("eviction accepted", Duration::from_secs(60))
        .await;
    cluster
        .restart_apiserver(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("restarting the API server: {e}"));
    let client = client_for(&cluster.kubeconfig).await.expect("client");
    agent_support::wait_for_phase(
        &client,
        name,
        "Complete",
        Duration::from_secs(180),
        &[&agent],
    )
    .await;
    let selector = ListParams::default().labels(&format!("{}={ns}", fixtures::NODE_SET_LABEL));
    assert_finished(&client, ns, &selector, &target).await;
    drop(agent);
    cluster.stop(Duration::from_secs(5)).await;
}
