//! The fake sidecar injector in the test bed: pods created through the API server's
//! admission path come out stamped with the revision their namespace selects (by
//! revision, by tag, or as the default), and pods of an app broken at a revision never
//! become Ready.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use support::TestEnv;
use support::injector::{
    DEFAULT_SCOPE_LABEL, Injector, NEVER_READY, REVISION_ANNOTATION, STATUS_ANNOTATION,
};
use ztunnel_rollout_testbed::fixtures;
use ztunnel_rollout_testbed::kwok_stages::READY_AFTER_ANNOTATION;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Creates namespace `name` with `labels`.
async fn namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    fixtures::apply(
        &Api::<Namespace>::all(client.clone()),
        &fixtures::namespace(name, map(labels)),
    )
    .await
    .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

async fn delete_namespaces(client: &Client, names: &[&str]) {
    let api: Api<Namespace> = Api::all(client.clone());
    for name in names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
}

/// Creates a one-container pod on `node` and returns it as admitted.
async fn create_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> Pod {
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(map(labels)),
            annotations: (!annotations.is_empty()).then(|| map(annotations)),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            containers: vec![Container {
                name: "app".into(),
                image: Some("example.com/app:1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {namespace}/{name}: {e}"))
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The revision in the pod's `sidecar.istio.io/status`, checking the rest of it.
fn status_revision(pod: &Pod) -> Option<String> {
    let status: serde_json::Value = serde_json::from_str(annotation(pod, STATUS_ANNOTATION)?)
        .expect("the sidecar status is JSON");
    assert_eq!(status["containers"], serde_json::json!(["istio-proxy"]));
    assert_eq!(status["initContainers"], serde_json::json!(["istio-init"]));
    status["revision"].as_str().map(str::to_owned)
}

fn assert_injected(pod: &Pod, rev: &str) {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    assert_eq!(
        annotation(pod, REVISION_ANNOTATION),
        Some(rev),
        "{name}: {:?}",
        pod.metadata.annotations
    );
    assert_eq!(status_revision(pod).as_deref(), Some(rev), "{name}");
}

#[tokio::test]
async fn pods_are_injected_at_the_revision_their_namespace_selects() {
    let env = TestEnv::new("inj-select", 1).await;
    let client = &env.client;
    let node = &env.nodes[0];
    let (rev_a, rev_b, tag) = ("inj-a-1", "inj-b-1", "inj-canary-1");
    let injector = Injector::start().await;
    injector.install_revision(client, rev_a, true).await;
    injector.install_revision(client, rev_b, false).await;
    injector.install_tag(client, tag, rev_b).await;

    let by_revision = format!("{}-rev", env.namespace);
    let by_tag = format!("{}-tag", env.namespace);
    let by_default = format!("{}-default", env.namespace);
    let both_labels = format!("{}-both", env.namespace);
    namespace(client, &by_revision, &[("istio.io/rev", rev_a)]).await;
    namespace(client, &by_tag, &[("istio.io/rev", tag)]).await;
    let scope = (DEFAULT_SCOPE_LABEL, rev_a);
    namespace(
        client,
        &by_default,
        &[("istio-injection", "enabled"), scope],
    )
    .await;
    // As with istiod, `istio-injection` wins over `istio.io/rev`.
    namespace(
        client,
        &both_labels,
        &[
            ("istio-injection", "enabled"),
            ("istio.io/rev", rev_b),
            scope,
        ],
    )
    .await;
    for (ns, rev) in [
        (&by_revision, rev_a),
        (&by_tag, rev_b),
        (&by_default, rev_a),
        (&both_labels, rev_a),
    ] {
        Injector::wait_until_injecting(client, ns, rev).await;
    }

    let pod = create_pod(client, &by_revision, "plain", node, &[("app", "a")], &[]).await;
    assert_injected(&pod, rev_a);
    // Existing annotations stay; the injected keys (with `/`) are added beside them.
    let pod = create_pod(
        client,
        &by_revision,
        "annotated",
        node,
        &[("app", "a")],
        &[("example.com/owner", "payments")],
    )
    .await;
    assert_injected(&pod, rev_a);
    assert_eq!(annotation(&pod, "example.com/owner"), Some("payments"));
    let pod = create_pod(client, &by_tag, "tagged", node, &[("app", "a")], &[]).await;
    assert_injected(&pod, rev_b);
    let pod = create_pod(client, &by_default, "default", node, &[("app", "a")], &[]).await;
    assert_injected(&pod, rev_a);
    let pod = create_pod(client, &both_labels, "both", node, &[("app", "a")], &[]).await;
    assert_injected(&pod, rev_a);
    let pod = create_pod(
        client,
        &by_revision,
        "opted-out",
        node,
        &[("app", "a"), ("sidecar.istio.io/inject", "false")],
        &[],
    )
    .await;
    assert_eq!(pod.metadata.annotations, None, "opted-out pod was injected");
    // The test's own namespace has no injection label.
    let pod = create_pod(
        client,
        &env.namespace,
        "outside",
        node,
        &[("app", "a")],
        &[],
    )
    .await;
    assert_eq!(
        pod.metadata.annotations, None,
        "pod outside the mesh was injected"
    );

    for name in [
        format!("istio-sidecar-injector-{rev_a}"),
        format!("istio-sidecar-injector-{rev_b}"),
        format!("istio-revision-tag-{tag}"),
    ] {
        Injector::remove(client, &name).await;
    }
    delete_namespaces(client, &[&by_revision, &by_tag, &by_default, &both_labels]).await;
}

#[tokio::test]
async fn an_app_broken_at_a_revision_never_becomes_ready_there() {
    let env = TestEnv::new("inj-broken", 1).await;
    let client = &env.client;
    let node = &env.nodes[0];
    let (old, new) = ("inj-c-1", "inj-c-2");
    let injector = Injector::start().await;
    injector.install_revision(client, old, false).await;
    injector.install_revision(client, new, false).await;
    injector.break_app(new, "reviews");

    let at_old = format!("{}-old", env.namespace);
    let at_new = format!("{}-new", env.namespace);
    namespace(client, &at_old, &[("istio.io/rev", old)]).await;
    namespace(client, &at_new, &[("istio.io/rev", new)]).await;
    Injector::wait_until_injecting(client, &at_old, old).await;
    Injector::wait_until_injecting(client, &at_new, new).await;

    let broken = create_pod(client, &at_new, "reviews", node, &[("app", "reviews")], &[]).await;
    assert_injected(&broken, new);
    assert_eq!(
        annotation(&broken, READY_AFTER_ANNOTATION),
        Some(NEVER_READY)
    );
    let other_app = create_pod(client, &at_new, "ratings", node, &[("app", "ratings")], &[]).await;
    assert_injected(&other_app, new);
    assert_eq!(annotation(&other_app, READY_AFTER_ANNOTATION), None);
    let old_revision =
        create_pod(client, &at_old, "reviews", node, &[("app", "reviews")], &[]).await;
    assert_injected(&old_revision, old);
    assert_eq!(annotation(&old_revision, READY_AFTER_ANNOTATION), None);

    // KWOK honours the delay: the other pods become Ready, the broken one does not.
    let pods_new: Api<Pod> = Api::namespaced(client.clone(), &at_new);
    let pods_old: Api<Pod> = Api::namespaced(client.clone(), &at_old);
    let ready = |p: Option<&Pod>| p.is_some_and(support::available);
    support::wait_for(&pods_new, "ratings", "ratings Ready", ready).await;
    support::wait_for(
        &pods_old,
        "reviews",
        "reviews at the old revision Ready",
        ready,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broken = pods_new.get("reviews").await.expect("get reviews");
    assert!(
        !support::available(&broken),
        "the broken pod became Ready: {:?}",
        broken.status
    );

    for rev in [old, new] {
        Injector::remove(client, &format!("istio-sidecar-injector-{rev}")).await;
    }
    delete_namespaces(client, &[&at_old, &at_new]).await;
}
