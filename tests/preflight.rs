//! `ztunnel-rollout preflight` on the demo cluster: warnings only, then an error once a
//! pod is under two PDBs.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use ztunnel_rollout_testbed::control_plane::client_for;
use ztunnel_rollout_testbed::fixtures::{self, Budget};

fn preflight(kubeconfig: &PathBuf) -> (Option<i32>, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"))
        .args(["preflight", "-o", "json", "--kubeconfig"])
        .arg(kubeconfig)
        .output()
        .expect("run preflight");
    let findings = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), findings)
}

fn checks(findings: &serde_json::Value) -> Vec<(String, String)> {
    findings
        .as_array()
        .expect("array")
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().unwrap_or("").to_owned(),
                f["check"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn preflight_passes_with_warnings_and_fails_on_errors() {
    // The demo writes fixed names, so it gets a cluster of its own.
    let demo =
        support::start_supervisor("preflight", &["--demo", "--nodes", "3"]).expect("demo cluster");
    let kubeconfig = PathBuf::from(demo.ready["kubeconfig"].as_str().expect("kubeconfig"));
    let client = client_for(&kubeconfig).await.expect("client");
    let ds: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), "istio-system");
    support::wait_for(
        &ds,
        "ztunnel",
        "ztunnel ready",
        |d: Option<&k8s_openapi::api::apps::v1::DaemonSet>| {
            d.and_then(|d| d.status.as_ref())
                .is_some_and(|s| s.number_ready == 3)
        },
    )
    .await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "demo");
    support::wait_for(
        &pdbs,
        "reviews",
        "reviews PDB counted",
        |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.disruptions_allowed == Some(1))
        },
    )
    .await;

    let (code, findings) = preflight(&kubeconfig);
    assert_eq!(code, Some(0), "{findings:#}");
    let found = checks(&findings);
    assert!(
        found.contains(&("warning".into(), "waypoint-unprotected".into())),
        "{found:?}"
    );
    assert!(
        found.iter().all(|(severity, _)| severity != "error"),
        "{found:?}"
    );

    let selector = BTreeMap::from([("app".to_owned(), "reviews".to_owned())]);
    fixtures::apply(
        &pdbs,
        &fixtures::pdb(
            "demo",
            "reviews-extra",
            selector,
            Budget::MaxUnavailable(IntOrString::Int(1)),
        ),
    )
    .await
    .expect("second PDB");
    let (code, findings) = preflight(&kubeconfig);
    assert_eq!(code, Some(1), "{findings:#}");
    assert!(
        checks(&findings).contains(&("error".into(), "pod-under-several-pdbs".into())),
        "{findings:#}"
    );
}
