//! `preflight` and `plan` on a cluster seeded with each problem of the runbook's list, one
//! test each, and on a clean slice of it: each problem is reported, and nothing is on the
//! clean one. Each test scopes preflight to its own namespace, nodes and ztunnel.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{Patch, PatchParams};
use support::{TestEnv, cli};
use ztunnel_rollout_testbed::fixtures::{self, Budget, NODE_SET_LABEL, UpdateStrategy, ZONE_LABEL};

/// Preflight of the env's slice: exit code and (severity, check) of each finding.
fn preflight(env: &TestEnv) -> (i32, Vec<(String, String)>) {
    let nodes = format!("{NODE_SET_LABEL}={}", env.node_set);
    let (code, out, err) = cli(&[
        "preflight",
        "-o",
        "json",
        "--ztunnel-namespace",
        &env.namespace,
        "--namespace",
        &env.namespace,
        "--node-selector",
        &nodes,
    ]);
    let findings: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let found = findings
        .as_array()
        .expect("a list")
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap_or("").to_owned(),
                f["check"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    (code, found)
}

/// `plan -f` of a rollout over the env's nodes: its blockers.
fn plan_blockers(env: &TestEnv) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rollout.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: ztunnel-rollout.dev/v1alpha1\nkind: ZtunnelRollout\nmetadata:\n  name: preview\nspec:\n  daemonSet: {{ namespace: {ns}, name: ztunnel }}\n  nodeSelector:\n    matchLabels: {{ {NODE_SET_LABEL}: {set} }}\n  waves: {{ groupBy: {ZONE_LABEL}, maxUnavailable: 1 }}\n",
            ns = env.namespace,
            set = env.node_set
        ),
    )
    .expect("write the manifest");
    let (code, out, err) = cli(&["plan", "-f", file.to_str().expect("path"), "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let plan: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    plan["waves"]
        .as_array()
        .expect("waves")
        .iter()
        .flat_map(|w| w["nodes"].as_array().cloned().unwrap_or_default())
        .flat_map(|n| n["blockers"].as_array().cloned().unwrap_or_default())
        .map(|b| b.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A clean slice: 3 Ready nodes, an OnDelete ztunnel Ready on each, an application with
/// two replicas under a PDB that allows one disruption.
async fn clean(name: &str) -> TestEnv {
    let env = TestEnv::new(name, 3).await;
    support::apply_ztunnel(&env, UpdateStrategy::OnDelete).await;
    support::apply_app(
        &env,
        "web",
        2,
        &[("web", Budget::MaxUnavailable(IntOrString::Int(1)))],
        1.0,
    )
    .await;
    env
}

fn has(found: &[(String, String)], severity: &str, check: &str) -> bool {
    found.iter().any(|(s, c)| s == severity && c == check)
}

#[tokio::test]
async fn a_clean_cluster_has_no_findings_and_no_blockers() {
    let env = clean("pf-clean").await;
    let (code, found) = preflight(&env);
    assert_eq!((code, found.as_slice()), (0, &[][..]), "{found:?}");
    assert_eq!(plan_blockers(&env), Vec::<String>::new());
}

#[tokio::test]
async fn a_rolling_update_ztunnel_is_an_error() {
    let env = TestEnv::new("pf-strategy", 2).await;
    support::apply_ztunnel(&env, UpdateStrategy::RollingUpdate).await;
    let (code, found) = preflight(&env);
    assert!(has(&found, "error", "ztunnel-not-ondelete"), "{found:?}");
    assert_eq!(code, 1);
}

#[tokio::test]
async fn a_pdb_allowing_no_disruption_is_reported_and_blocks_the_plan() {
    let env = clean("pf-pdb-zero").await;
    support::apply_app(
        &env,
        "api",
        2,
        &[("api", Budget::MinAvailable(IntOrString::Int(2)))],
        1.0,
    )
    .await;
    let (_, found) = preflight(&env);
    assert!(
        found.iter().any(|(_, c)| c == "pdb-allows-no-disruption"),
        "{found:?}"
    );
    let blockers = plan_blockers(&env);
    assert!(
        blockers
            .iter()
            .any(|b| b.contains(&format!("PDB {}/api allows 0 disruptions", env.namespace))),
        "{blockers:?}"
    );
}

#[tokio::test]
async fn a_pod_under_several_pdbs_is_an_error_and_a_plan_blocker() {
    let env = clean("pf-pdb-two").await;
    support::apply_app(
        &env,
        "cart",
        2,
        &[
            ("cart-a", Budget::MaxUnavailable(IntOrString::Int(1))),
            ("cart-b", Budget::MaxUnavailable(IntOrString::Int(1))),
        ],
        1.0,
    )
    .await;
    let (code, found) = preflight(&env);
    assert!(has(&found, "error", "pod-under-several-pdbs"), "{found:?}");
    assert_eq!(code, 1, "errors fail the preflight");
    let blockers = plan_blockers(&env);
    assert!(
        blockers.iter().any(|b| b.contains("is under several PDBs")),
        "{blockers:?}"
    );
}

#[tokio::test]
async fn a_single_replica_deployment_is_a_warning_and_a_plan_blocker() {
    let env = clean("pf-single").await;
    support::apply_app(&env, "solo", 1, &[], 1.0).await;
    let (code, found) = preflight(&env);
    assert!(has(&found, "warning", "single-replica"), "{found:?}");
    assert_eq!(code, 0, "warnings do not fail the preflight");
    let blockers = plan_blockers(&env);
    assert!(
        blockers
            .iter()
            .any(|b| b.contains("is the only replica of ReplicaSet/")),
        "{blockers:?}"
    );
}

#[tokio::test]
async fn a_deployment_that_cannot_roll_is_refused_by_the_api_server_already() {
    // maxUnavailable 0 with maxSurge 0: the preflight check exists for clusters whose API
    // server let it in (unit-tested in src/preflight/checks.rs); this one refuses it.
    let env = TestEnv::new("pf-noroll", 1).await;
    let mut d = fixtures::AppFixture::new(&env.namespace, "stuck", 2).deployment();
    let strategy = serde_json::json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 0 } });
    d.spec.as_mut().expect("spec").strategy =
        Some(serde_json::from_value(strategy).expect("strategy"));
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    let err = fixtures::apply(&api, &d).await.expect_err("refused");
    assert!(err.to_string().contains("maxUnavailable"), "{err}");
}

#[tokio::test]
async fn a_namespace_with_both_injection_labels_is_reported() {
    let env = clean("pf-inject").await;
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.namespace,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "metadata": { "labels": { "istio-injection": "enabled", "istio.io/rev": "canary" } } })),
        )
        .await
        .expect("label");
    let (_, found) = preflight(&env);
    assert!(
        found
            .iter()
            .any(|(_, c)| c == "namespace-two-injection-labels"),
        "{found:?}"
    );
}

#[tokio::test]
async fn an_unprotected_waypoint_is_reported() {
    let env = clean("pf-waypoint").await;
    let mut waypoint = fixtures::AppFixture::waypoint(&env.namespace, "waypoint");
    waypoint.node_selector = env.node_selector();
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&api, &waypoint.deployment())
        .await
        .expect("waypoint");
    let (_, found) = preflight(&env);
    assert!(has(&found, "warning", "waypoint-unprotected"), "{found:?}");
}

#[tokio::test]
async fn a_cordoned_node_is_reported() {
    let env = clean("pf-cordoned").await;
    support::set_unschedulable(&env.client, &env.nodes[0], true).await;
    let (_, found) = preflight(&env);
    assert!(found.iter().any(|(_, c)| c == "node-cordoned"), "{found:?}");
}

#[tokio::test]
async fn a_not_ready_node_is_reported() {
    let env = clean("pf-notready").await;
    // A node no kubelet (nor KWOK) reports for: it never becomes Ready.
    let mut node = fixtures::node(
        &format!("{}-dead", env.node_set),
        &BTreeMap::from([(NODE_SET_LABEL.to_owned(), env.node_set.clone())]),
    );
    node.metadata.annotations = None;
    let api: Api<Node> = Api::all(env.client.clone());
    fixtures::apply(&api, &node).await.expect("node");
    let (_, found) = preflight(&env);
    assert!(
        found.iter().any(|(_, c)| c == "node-not-ready"),
        "{found:?}"
    );
    api.delete(&format!("{}-dead", env.node_set), &Default::default())
        .await
        .expect("delete the node");
}

#[tokio::test]
async fn a_ztunnel_pod_that_is_not_ready_is_an_error() {
    let env = TestEnv::new("pf-zt-unready", 2).await;
    let mut ztunnel = fixtures::ZtunnelFixture::new(&env.namespace, "1.28.0");
    ztunnel.node_selector = env.node_selector();
    ztunnel.ready_after = "1h".into();
    let api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.namespace);
    fixtures::apply(&api, &ztunnel.daemonset())
        .await
        .expect("ztunnel");
    support::wait_for(
        &api,
        "ztunnel",
        "ztunnel pods scheduled",
        |d: Option<&DaemonSet>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.current_number_scheduled == 2)
        },
    )
    .await;
    let (code, found) = preflight(&env);
    assert!(has(&found, "error", "ztunnel-pod-not-ready"), "{found:?}");
    assert_eq!(code, 1);
}
