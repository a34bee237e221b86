//! The waypoint gate on the local control plane: a node whose drain took a waypoint down
//! is Verified only once the rescheduled waypoint is Ready again, and fails at the gate's
//! timeout if it never is.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use support::TestEnv;
use support::agent::{self as agent_support, Agent};
use ztunnel_rollout::agent::observe::Gateway;
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_core::labels::OWNER_ANNOTATION;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_testbed::fixtures::{self, GATEWAY_NAME_LABEL, UpdateStrategy};

/// Node label that the test's waypoint requires (so the test decides where it may run).
const HOST_LABEL: &str = "test.ztunnel-rollout.dev/waypoint-host";

async fn allow_waypoint(client: &Client, node: &str, namespace: &str) {
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({ "metadata": { "labels": { HOST_LABEL: namespace } } }),
            ),
        )
        .await
        .expect("label the node");
}

/// A one-replica waypoint without a PDB that may run only on nodes labelled for it; the
/// first of them is `env.nodes[0]`. Returns its name (unique: the gate looks cluster-wide).
async fn waypoint_on_first_node(env: &TestEnv) -> String {
    allow_waypoint(&env.client, &env.nodes[0], &env.namespace).await;
    let name = format!("wp-{}", env.namespace);
    let mut waypoint = fixtures::AppFixture::waypoint(&env.namespace, &name);
    waypoint.node_selector = BTreeMap::from([(HOST_LABEL.to_owned(), env.namespace.clone())]);
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&api, &waypoint.deployment())
        .await
        .expect("apply the waypoint");
    support::wait_for(
        &api,
        &name,
        "waypoint available",
        support::deployment_available(1),
    )
    .await;
    name
}

/// The Gateway API's Gateway kind, as far as the gate reads it (a stand-in for the
/// upstream CRD: same group, version, kind and status subresource).
async fn install_gateway_api(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "gateways.gateway.networking.k8s.io",
            "annotations": { "api-approved.kubernetes.io": "unapproved, a test stand-in for the Gateway API CRD" }
        },
        "spec": {
            "group": "gateway.networking.k8s.io",
            "scope": "Namespaced",
            "names": { "kind": "Gateway", "plural": "gateways", "singular": "gateway", "listKind": "GatewayList" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } }
            }]
        }
    }))
    .expect("a CRD");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    fixtures::apply(&api, &crd)
        .await
        .expect("install the Gateway CRD");
    support::wait_for(
        &api,
        "gateways.gateway.networking.k8s.io",
        "Gateway CRD established",
        |c: Option<&CustomResourceDefinition>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        },
    )
    .await;
}

async fn set_programmed(api: &Api<Gateway>, name: &str, status: &str, reason: &str) {
    let patch = serde_json::json!({ "status": { "conditions": [{
        "type": "Programmed", "status": status, "reason": reason, "message": "",
        "lastTransitionTime": "2026-11-29T00:00:00Z", "observedGeneration": 1
    }] } });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("set the Gateway's Programmed condition");
}

async fn start(env: &TestEnv, dir: &tempfile::TempDir) -> Agent {
    let ztunnel = support::apply_ztunnel(env, UpdateStrategy::OnDelete).await;
    support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;
    agent_support::start_as_service_account(env, dir.path(), "agent-a")
}

fn rollout(env: &TestEnv, name: &str, waypoint: &str, health: serde_json::Value) -> ZtunnelRollout {
    let mut health = health;
    health["interval"] = "1s".into();
    health["waypoints"] = serde_json::json!({
        "selector": { "matchLabels": { GATEWAY_NAME_LABEL: waypoint } }
    });
    agent_support::rollout(env, name, serde_json::json!({ "health": health }))
}

fn phase_of(r: &ZtunnelRollout, node: &str) -> Option<(NodePhase, String)> {
    agent_support::node_status(r, node).map(|n| (n.phase, n.message.clone()))
}

#[tokio::test]
async fn a_node_is_verified_only_once_its_rescheduled_waypoint_is_ready_and_programmed() {
    let env = TestEnv::new("gate-wp", 3).await;
    agent_support::install(&env.client).await;
    let waypoint = waypoint_on_first_node(&env).await;
    // The Gateway API is installed (before the agent starts) and the waypoint's Gateway
    // is not Programmed yet.
    install_gateway_api(&env.client).await;
    let gateways: Api<Gateway> = Api::namespaced(env.client.clone(), &env.namespace);
    let gateway: Gateway = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": { "name": waypoint, "namespace": env.namespace },
        "spec": { "gatewayClassName": "istio-waypoint" }
    }))
    .expect("a Gateway");
    gateways
        .create(&PostParams::default(), &gateway)
        .await
        .expect("create the Gateway");
    set_programmed(&gateways, &waypoint, "False", "Pending").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start(&env, &dir).await;
    let name = format!("{}-wp", env.namespace);
    agent_support::create(
        &env.client,
        &rollout(
            &env,
            &name,
            &waypoint,
            serde_json::json!({ "timeout": "2m" }),
        ),
    )
    .await;

    // The first node's drain evicted the waypoint, which has nowhere else to run: the
    // node's new ztunnel is Ready, but the gate holds it.
    let first = env.nodes[0].clone();
    let unavailable = format!("{}/{waypoint} has 0/1 replicas available", env.namespace);
    let api: Api<ZtunnelRollout> = Api::all(env.client.clone());
    let held = {
        let (first, unavailable) = (first.clone(), unavailable.clone());
        let cond = move |r: Option<&ZtunnelRollout>| {
            r.and_then(|r| phase_of(r, &first))
                .is_some_and(|(phase, message)| {
                    phase == NodePhase::ZtunnelReady && message.contains(&unavailable)
                })
        };
        let wait = kube::runtime::wait::await_condition(api.clone(), &name, cond);
        match tokio::time::timeout(Duration::from_secs(90), wait).await {
            Ok(Ok(Some(r))) => r,
            other => panic!(
                "the gate did not hold the node ({other:?}); now: {:?}\n{}",
                api.get(&name).await.ok().and_then(|r| r.status),
                agent.log_text()
            ),
        }
    };
    eprintln!("held: {:?}", phase_of(&held, &first));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = api.get(&name).await.expect("rollout");
    assert_eq!(
        phase_of(&still, &first).map(|p| p.0),
        Some(NodePhase::ZtunnelReady),
        "not Verified while its waypoint is down"
    );

    // Let the waypoint run on the second node: it becomes Ready, but its Gateway is
    // still not Programmed.
    allow_waypoint(&env.client, &env.nodes[1], &env.namespace).await;
    {
        let first = first.clone();
        let cond = move |r: Option<&ZtunnelRollout>| {
            r.and_then(|r| phase_of(r, &first))
                .is_some_and(|(phase, message)| {
                    phase == NodePhase::ZtunnelReady
                        && message.contains("is not Programmed: Pending")
                        && !message.contains("replicas available")
                })
        };
        support::wait_within(
            &api,
            &name,
            "held for the Gateway",
            Duration::from_secs(60),
            cond,
        )
        .await;
    }
    // Programmed: the node passes.
    set_programmed(&gateways, &waypoint, "True", "Programmed").await;
    let done = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        Duration::from_secs(120),
        &[&agent],
    )
    .await;
    assert_eq!(done.status.expect("status").counts.done, 3);
    let note = support::wait_for_event(&env.client, &first, "Verified", "waypoints: 1 Ready").await;
    eprintln!("verified: {note}");
    let warning = support::wait_for_event(&env.client, &name, "WaypointAtRisk", &waypoint).await;
    assert!(
        warning.contains("has 1 replica") && warning.contains("no PodDisruptionBudget"),
        "{warning}"
    );
}

#[tokio::test]
async fn a_waypoint_that_never_recovers_fails_the_node_at_the_gate_timeout() {
    let env = TestEnv::new("gate-wp-timeout", 2).await;
    agent_support::install(&env.client).await;
    let waypoint = waypoint_on_first_node(&env).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = start(&env, &dir).await;
    let name = format!("{}-wpt", env.namespace);
    agent_support::create(
        &env.client,
        &rollout(
            &env,
            &name,
            &waypoint,
            serde_json::json!({ "timeout": "3s", "uncordonFailedNodes": true }),
        ),
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
    let first = &env.nodes[0];
    let (phase, message) = phase_of(&paused, first).expect("the first node's status");
    assert_eq!(phase, NodePhase::Failed);
    assert!(
        message.contains("not healthy within 3s")
            && message.contains(&format!(
                "{}/{waypoint} has 0/1 replicas available",
                env.namespace
            )),
        "{message}"
    );
    assert!(
        phase_of(&paused, &env.nodes[1]).is_none_or(|(p, _)| p == NodePhase::Pending),
        "no further node starts"
    );
    // uncordonFailedNodes: the failed node is released.
    let node = Api::<Node>::all(env.client.clone())
        .get(first)
        .await
        .expect("node");
    assert_ne!(node.spec.and_then(|s| s.unschedulable), Some(true));
    assert!(
        !node
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(OWNER_ANNOTATION)
    );
}
