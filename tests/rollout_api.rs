//! The API server itself refuses invalid `ZtunnelRollout` specs, naming what is wrong.

mod support;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, PostParams};
use kube::runtime::wait::conditions;
use kube::{Api, CustomResourceExt};
use serde_json::json;
use support::wait_for;
use ztunnel_rollout::api::ZtunnelRollout;
use ztunnel_rollout_testbed::fixtures;

fn rollout(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "ztunnel-rollout.dev/v1alpha1",
        "kind": "ZtunnelRollout",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .expect("a DynamicObject")
}

#[tokio::test]
async fn the_api_server_accepts_valid_rollouts_and_refuses_invalid_ones_by_field() {
    let client = support::client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ZtunnelRollout::crd();
    fixtures::apply(&crds, &crd).await.expect("install the CRD");
    let crd_name = crd.metadata.name.clone().expect("name");
    wait_for(
        &crds,
        &crd_name,
        "CRD established",
        conditions::is_crd_established(),
    )
    .await;

    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<ZtunnelRollout>(&()),
    );
    let typed: Api<ZtunnelRollout> = Api::all(client);
    let valid = rollout(
        "zones",
        json!({
            "waves": { "groupBy": "topology.kubernetes.io/zone", "order": ["zone-a"], "maxUnavailable": "10%", "canaryNodes": 1 },
            "drain": { "timeout": "10m", "skipWaitForDeleteTimeout": "30s" },
            "ztunnelReadyTimeout": "2m"
        }),
    );
    let created = api
        .create(&PostParams::default(), &valid)
        .await
        .expect("a valid rollout is accepted");
    assert_eq!(
        created.data["spec"]["daemonSet"],
        json!({ "namespace": "istio-system", "name": "ztunnel" }),
        "defaults applied"
    );
    let read = typed.get("zones").await.expect("typed read");
    assert_eq!(
        read.spec.waves.max_unavailable,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("10%".into())
    );
    // spec.cni cannot change once the rollout exists (what it replaced decides its
    // rollback): adding, changing or removing it is refused; other fields still change.
    use kube::api::{Patch, PatchParams};
    let merge = |spec: serde_json::Value| Patch::Merge(json!({ "spec": spec }));
    let refused = |what: &str, result: Result<DynamicObject, kube::Error>| {
        let err = result.expect_err(what);
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("cni cannot be added, removed or changed")),
            "{what}: {err}"
        );
    };
    let added = json!({ "cni": { "namespace": "istio-system", "name": "istio-cni-node" } });
    refused(
        "added",
        api.patch("zones", &PatchParams::default(), &merge(added))
            .await,
    );
    api.patch(
        "zones",
        &PatchParams::default(),
        &merge(json!({ "paused": true })),
    )
    .await
    .expect("other fields change");
    typed
        .delete("zones", &DeleteParams::default())
        .await
        .expect("delete");
    let with_cni = rollout(
        "with-cni",
        json!({
            "waves": { "groupBy": "pool", "maxUnavailable": 1 },
            "cni": { "namespace": "istio-system", "name": "istio-cni-node" }
        }),
    );
    api.create(&PostParams::default(), &with_cni)
        .await
        .expect("a rollout with spec.cni is accepted");
    for (what, patch) in [
        (
            "changed",
            json!({ "cni": { "namespace": "istio-system", "name": "other" } }),
        ),
        ("removed", json!({ "cni": null })),
    ] {
        refused(
            what,
            api.patch("with-cni", &PatchParams::default(), &merge(patch))
                .await,
        );
    }
    typed
        .delete("with-cni", &DeleteParams::default())
        .await
        .expect("delete");

    let base = || json!({ "waves": { "groupBy": "pool", "maxUnavailable": 1 } });
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "zero-count",
            json!({ "waves": { "groupBy": "pool", "maxUnavailable": 0 } }),
            "maxUnavailable must be a count of at least 1",
        ),
        (
            "zero-percent",
            json!({ "waves": { "groupBy": "pool", "maxUnavailable": "0%" } }),
            "percentage from 1% to 100%",
        ),
        (
            "over-percent",
            json!({ "waves": { "groupBy": "pool", "maxUnavailable": "150%" } }),
            "percentage from 1% to 100%",
        ),
        (
            "empty-group-by",
            json!({ "waves": { "groupBy": "", "maxUnavailable": 1 } }),
            "spec.waves.groupBy",
        ),
        (
            "negative-timeout",
            {
                let mut s = base();
                s["ztunnelReadyTimeout"] = json!("-5m");
                s
            },
            "spec.ztunnelReadyTimeout",
        ),
        (
            "bare-number-timeout",
            {
                let mut s = base();
                s["drain"] = json!({ "timeout": "300" });
                s
            },
            "spec.drain.timeout",
        ),
        (
            "unknown-approval",
            {
                let mut s = base();
                s["waves"]["approval"] = json!("Sometimes");
                s
            },
            "Unsupported value: \"Sometimes\"",
        ),
        (
            "repeated-order",
            {
                let mut s = base();
                s["waves"]["order"] = json!(["a", "a"]);
                s
            },
            "Duplicate value: \"a\"",
        ),
        (
            "zero-canary",
            {
                let mut s = base();
                s["waves"]["canaryNodes"] = json!(0);
                s
            },
            "spec.waves.canaryNodes",
        ),
        ("missing-waves", json!({}), "spec.waves: Required value"),
    ];
    for (name, spec, expected) in cases {
        let err = api
            .create(&PostParams::default(), &rollout(name, spec))
            .await
            .expect_err(name);
        let message = match &err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 422, "{name}: {err}");
                status.message.clone()
            }
            other => panic!("{name}: {other}"),
        };
        assert!(
            message.contains(expected),
            "{name}: {message:?} does not contain {expected:?}"
        );
    }
}
