//! The agent against Istio's own control plane: `istioctl install` renders Istio's
//! charts into the local cluster (KWOK runs istiod's, istio-cni's and ztunnel's pods), a
//! real istiod on loopback serves each revision's injection webhook and renders
//! waypoints, and `istioctl` upgrades ztunnel. Every outcome is read from the API server.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use support::agent as agent_support;
use support::history::{NodeHistory, PodDeletions};
use support::istio::{self as istio_support, NODES};
use support::{TestEnv, daemonset_ready, deployment_available, wait_for, wait_within};
use ztunnel_rollout_core::labels::{GATEWAY_NAME_LABEL, WAYPOINT_MANAGED_LABEL};
use ztunnel_rollout_core::sidecar::revisions::injected_revision;
use ztunnel_rollout_testbed::fixtures::{self, Budget};

/// The version `e2e/build-istio.sh` stamps into istioctl and istiod.
fn istio_build_version() -> String {
    let versions = std::fs::read_to_string(
        ztunnel_rollout_testbed::binaries::repository_root().join("e2e/versions.env"),
    )
    .expect("read e2e/versions.env");
    versions
        .lines()
        .find_map(|l| l.strip_prefix("ISTIO_BUILD_VERSION="))
        .expect("ISTIO_BUILD_VERSION in e2e/versions.env")
        .trim()
        .to_owned()
}

fn image(pod_spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> String {
    pod_spec
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Deploys `name` (2 replicas) on the bed's nodes in `namespace`; waits until available.
async fn deploy(env: &TestEnv, namespace: &str, name: &str) -> Vec<Pod> {
    let bed = istio_support::bed();
    let mut app = fixtures::AppFixture::new(namespace, name, 2);
    app.node_selector = bed.node_selector();
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), namespace);
    fixtures::apply(&deployments, &app.deployment())
        .await
        .expect("apply deployment");
    wait_for(
        &deployments,
        name,
        &format!("{name} available"),
        deployment_available(2),
    )
    .await;
    Api::<Pod>::namespaced(env.client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .expect("list pods")
        .items
}

#[tokio::test(flavor = "multi_thread")]
async fn istioctl_installs_istio_and_the_real_istiod_injects_each_revision() {
    let bed = istio_support::bed();
    let _serial = istio_support::serial().await;
    let mut env = TestEnv::new("istio-install", 0).await;
    let version = istio_build_version();

    // Istio's own objects, as istioctl rendered them, run on every node.
    let daemonsets: Api<DaemonSet> = Api::namespaced(env.client.clone(), "istio-system");
    for name in ["ztunnel", "istio-cni-node"] {
        let ds = wait_for(
            &daemonsets,
            name,
            &format!("{name} Ready on {NODES} nodes"),
            daemonset_ready(NODES as i32),
        )
        .await
        .expect("the DaemonSet");
        let spec = ds.spec.as_ref().expect("spec");
        assert_eq!(
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref()),
            Some("OnDelete"),
            "{name}: Istio's values set OnDelete"
        );
        // istioctl stamps its own version on the images; ztunnel's and istio-cni's tags
        // are whatever the upgrade test (which may have run first) left.
        let want = if name == "ztunnel" {
            "docker.io/istio/ztunnel:".to_owned()
        } else {
            "docker.io/istio/install-cni:".to_owned()
        };
        assert!(
            image(spec.template.spec.as_ref()).contains(&want),
            "{name} runs {want}: {}",
            image(spec.template.spec.as_ref())
        );
        assert_eq!(
            ds.labels()
                .get("operator.istio.io/component")
                .map(String::as_str),
            Some(if name == "ztunnel" { "Ztunnel" } else { "Cni" }),
            "{name} is labelled by istioctl"
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), "istio-system");
    for name in ["istiod", "istiod-canary"] {
        wait_for(
            &deployments,
            name,
            &format!("{name} available"),
            deployment_available(1),
        )
        .await;
    }

    // Each istiod on loopback says its own version.
    for revision in ["default", "canary"] {
        let ports = bed.revision(revision).ports;
        let (code, body) = ztunnel_rollout_testbed::istio::http_get(ports.monitoring, "/version")
            .await
            .expect("istiod's /version");
        assert_eq!(code, 200);
        assert!(body.starts_with(&version), "istiod {revision}: {body}");
    }

    // Real injection: pods of a namespace come out with the sidecar of the revision it
    // selects, as istiod rendered it.
    for (suffix, label, revision) in [
        ("enabled", ("istio-injection", "enabled"), "default"),
        ("canary", ("istio.io/rev", "canary"), "canary"),
    ] {
        let namespace = env.create_namespace(suffix, &[label]).await;
        let pods = deploy(&env, &namespace, "web").await;
        assert_eq!(pods.len(), 2, "{namespace}: two pods");
        for pod in &pods {
            assert_eq!(
                injected_revision(pod).as_deref(),
                Some(revision),
                "{}: injected by {revision}",
                pod.name_any()
            );
            let containers: Vec<&str> = pod
                .spec
                .as_ref()
                .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
                .unwrap_or_default();
            assert!(
                containers.contains(&"istio-proxy"),
                "{}: istiod added its sidecar: {containers:?}",
                pod.name_any()
            );
            let status = pod
                .annotations()
                .get("sidecar.istio.io/status")
                .cloned()
                .unwrap_or_default();
            assert!(
                status.contains("istio-proxy"),
                "{}: {status}",
                pod.name_any()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_istioctl_upgrade_of_ztunnel_and_istio_cni_completes_once_the_agent_replaced_every_node()
{
    let bed = istio_support::bed();
    let _serial = istio_support::serial().await;
    let env = TestEnv::new("istio-upgrade", 0).await;
    agent_support::install(&env.client).await;
    support::grant_ztunnel_role(&env.client, "istio-system").await;

    // A waypoint rendered by istiod's own controller, and an application under a PDB.
    let waypoint = istiod_waypoint(&env, deployment_available(1)).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    assert_eq!(
        waypoint
            .labels()
            .get(WAYPOINT_MANAGED_LABEL)
            .map(String::as_str),
        Some("istio.io-mesh-controller")
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &env.namespace);
    let selector = std::collections::BTreeMap::from([("app".to_owned(), "reviews".to_owned())]);
    fixtures::apply(
        &pdbs,
        &fixtures::pdb(
            &env.namespace,
            "reviews",
            selector,
            Budget::MaxUnavailable(IntOrString::Int(1)),
        ),
    )
    .await
    .expect("apply the PDB");
    deploy(&env, &env.namespace, "reviews").await;

    // The upgrade as a user runs it: istioctl with new ztunnel and istio-cni tags. With
    // OnDelete, istioctl waits until every node runs the new pods, which is the agent's
    // work; and it applies ztunnel only once istio-cni is done.
    let new_tag = "1.31.1-test";
    let mut upgrade = bed.revision("default").install.clone();
    upgrade.sets.push(format!("values.ztunnel.tag={new_tag}"));
    upgrade.sets.push(format!("values.cni.tag={new_tag}"));
    // Its output goes to a file: a pipe nobody reads for minutes could fill and block it.
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log_path = log_dir.path().join("istioctl.log");
    let log = std::fs::File::create(&log_path).expect("istioctl's log");
    let mut istioctl = bed
        .istioctl
        .install_command(&upgrade)
        .stdout(log.try_clone().expect("istioctl's log"))
        .stderr(log)
        .spawn()
        .expect("start istioctl install");
    let daemonsets: Api<DaemonSet> = Api::namespaced(env.client.clone(), "istio-system");
    let upgraded = |ds: Option<&DaemonSet>| {
        ds.is_some_and(|d| {
            image(d.spec.as_ref().and_then(|s| s.template.spec.as_ref())).contains(new_tag)
                && d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
        })
    };
    wait_for(
        &daemonsets,
        CNI,
        "istioctl changes the istio-cni DaemonSet",
        upgraded,
    )
    .await;
    let ztunnel = daemonsets.get("ztunnel").await.expect("ztunnel");
    assert!(
        !upgraded(Some(&ztunnel)),
        "istioctl applies ztunnel only once every istio-cni pod is replaced"
    );
    // The API server's account of each node agent pod's deletion and each node's cordon,
    // from the first rollout's start.
    let node_set = bed
        .node_selector()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let history = NodeHistory::watch(&env.client, &node_set);
    let cni_deletions = PodDeletions::watch(&env.client, "istio-system", &format!("k8s-app={CNI}"));
    let ztunnel_deletions = PodDeletions::watch(&env.client, "istio-system", "app=ztunnel");

    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-istio");
    // The same spec twice: first for istio-cni (ztunnel is current, so only istio-cni is
    // replaced), then, once istioctl applied it, for ztunnel.
    for name in ["istio-upgrade-cni", "istio-upgrade"] {
        if name == "istio-upgrade" {
            wait_for(
                &daemonsets,
                "ztunnel",
                "istioctl changes the ztunnel DaemonSet once istio-cni is replaced",
                upgraded,
            )
            .await;
        }
        let rollout = agent_support::rollout(
            &env,
            name,
            json!({
                "daemonSet": { "namespace": "istio-system", "name": "ztunnel" },
                "cni": { "namespace": "istio-system", "name": CNI },
                "nodeSelector": { "matchLabels": bed.node_selector() },
                // Istio's istiod pod keeps certificates in an emptyDir, as kubectl drain
                // would refuse too.
                "drain": { "deleteEmptyDirData": true },
                "health": { "soak": "1s", "interval": "1s", "bake": "1s" },
            }),
        );
        agent_support::create(&env.client, &rollout).await;
        agent_support::wait_for_phase(
            &env.client,
            name,
            "Complete",
            Duration::from_secs(300),
            &[&agent],
        )
        .await;
    }

    // istioctl, which waited on the DaemonSet, now says the install is complete.
    let status = tokio::time::timeout(Duration::from_secs(120), istioctl.wait())
        .await
        .expect("istioctl finishes once every node is replaced")
        .expect("istioctl's exit status");
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "istioctl install failed:\n{text}");
    assert!(text.contains("Installation complete"), "{text}");

    // The API server's account: every ztunnel and istio-cni pod runs the new tag and is
    // Ready, every node is schedulable, the waypoint and the application are available.
    for (ds, labels) in [("ztunnel", "app=ztunnel"), (CNI, "k8s-app=istio-cni-node")] {
        let status = daemonsets.get(ds).await.expect(ds).status.expect("status");
        assert_eq!(status.updated_number_scheduled, Some(NODES as i32), "{ds}");
        assert_eq!(status.number_ready, NODES as i32, "{ds}");
        let pods = Api::<Pod>::namespaced(env.client.clone(), "istio-system")
            .list(&ListParams::default().labels(labels))
            .await
            .expect("node agent pods");
        assert_eq!(pods.items.len(), NODES, "{ds}");
        for pod in &pods.items {
            assert!(
                image(pod.spec.as_ref()).contains(new_tag),
                "{} runs {}",
                pod.name_any(),
                image(pod.spec.as_ref())
            );
        }
    }
    // Each node's old istio-cni pod and old ztunnel pod were deleted once each, while the
    // node was cordoned, istio-cni first.
    let on = |deletions: &PodDeletions, node: &str| {
        deletions
            .seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, _, n)| n == node)
            .cloned()
            .collect::<Vec<_>>()
    };
    for node in &bed.nodes {
        let (cni, ztunnel) = (on(&cni_deletions, node), on(&ztunnel_deletions, node));
        assert_eq!(cni.len(), 1, "{node}: one istio-cni pod deleted: {cni:?}");
        assert_eq!(
            ztunnel.len(),
            1,
            "{node}: one ztunnel pod deleted: {ztunnel:?}"
        );
        assert!(
            cni[0].0 < ztunnel[0].0,
            "{node}: istio-cni replaced before ztunnel: {cni:?} {ztunnel:?}"
        );
        for (revision, pod, _) in [&cni[0], &ztunnel[0]] {
            assert_eq!(
                history
                    .state_before(node, *revision)
                    .map(|s| s.unschedulable),
                Some(true),
                "{node}: {pod} deleted while the node was not cordoned"
            );
        }
    }
    for node in &bed.nodes {
        let n = Api::<Node>::all(env.client.clone())
            .get(node)
            .await
            .expect("node");
        assert_ne!(
            n.spec.and_then(|s| s.unschedulable),
            Some(true),
            "{node} left cordoned"
        );
    }
    wait_within(
        &deployments,
        "waypoint",
        "the waypoint available after the rollout",
        Duration::from_secs(60),
        deployment_available(1),
    )
    .await;
    wait_within(
        &deployments,
        "reviews",
        "reviews available after the rollout",
        Duration::from_secs(60),
        deployment_available(2),
    )
    .await;
}

/// Istio's istio-cni DaemonSet.
const CNI: &str = "istio-cni-node";

/// The revision and namespaces `istioctl tag list` shows for `tag`.
async fn istioctl_tag(tag: &str) -> Option<(String, String)> {
    let out = istio_support::bed()
        .istioctl
        .run(&["tag", "list"])
        .await
        .expect("istioctl tag list");
    out.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(tag)).then(|| {
            (
                fields.next().unwrap_or_default().to_owned(),
                fields.next().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// The revision the live pods of `app` in `namespace` were injected by, once there are
/// `count` of them and all agree (by watch, within a minute).
async fn injected_revisions(env: &TestEnv, namespace: &str, app: &str, count: usize) -> String {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher};
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), namespace);
    let (reader, writer) = reflector::store();
    // Every event, the end of the initial list included: the store is filled when
    // that list is done, and pods already settled then send nothing more.
    let stream = reflector(
        writer,
        watcher(
            pods,
            watcher::Config::default().labels(&format!("app={app}")),
        ),
    );
    futures::pin_mut!(stream);
    let settled = || {
        let live: Vec<Option<String>> = reader
            .state()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| injected_revision(p))
            .collect();
        (live.len() == count && live.windows(2).all(|w| w[0] == w[1])).then_some(live)
    };
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = stream.next().await {
            event.expect("watch pods");
            if let Some(live) = settled() {
                return live;
            }
        }
        panic!("the pod watch ended")
    })
    .await;
    match found {
        Ok(live) => live[0].clone().unwrap_or_else(|| "no sidecar".to_owned()),
        Err(_) => panic!(
            "{namespace}/{app}: pods never settled on one revision: {:?}",
            reader
                .state()
                .iter()
                .map(|p| (p.name_any(), injected_revision(p)))
                .collect::<Vec<_>>()
        ),
    }
}

/// `sidecar retag TAG --to canary --name NAME --labels LABELS --wait`, bounded.
async fn retag_to_canary(tag: &str, name: &str, labels: &str) -> (i32, String, String) {
    support::cli_async(&[
        "sidecar",
        "retag",
        tag,
        "--to",
        "canary",
        "--name",
        name,
        "--labels",
        labels,
        "--wait",
        "--timeout",
        "5m",
    ])
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runbooks_sidecar_flow_moves_a_tag_rolls_back_by_the_tag_and_goes_forward_again() {
    let bed = istio_support::bed();
    let _serial = istio_support::serial().await;
    let mut env = TestEnv::new("istio-tags", 0).await;
    agent_support::install(&env.client).await;
    let tag = format!("stable-{}", env.namespace);
    let labels = format!("{}={}", agent_support::TEST_LABEL, env.namespace);

    // The runbook's set-up: a tag on the current revision, a namespace selecting it.
    bed.istioctl
        .run(&["tag", "set", &tag, "--revision", "default"])
        .await
        .expect("istioctl tag set");
    let shop = env
        .create_namespace("shop", &[("istio.io/rev", &tag)])
        .await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &shop);
    fixtures::apply(
        &pdbs,
        &fixtures::pdb(
            &shop,
            "api",
            std::collections::BTreeMap::from([("app".to_owned(), "api".to_owned())]),
            Budget::MaxUnavailable(IntOrString::Int(1)),
        ),
    )
    .await
    .expect("apply the PDB");
    deploy(&env, &shop, "api").await;
    assert_eq!(injected_revisions(&env, &shop, "api", 2).await, "default");
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent_support::start_as_service_account(&env, dir.path(), "agent-tags");

    // Bad moves are refused by name and change nothing.
    let (code, _, err) =
        support::cli_async(&["sidecar", "retag", &tag, "--to", "no-such-rev"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no revision \"no-such-rev\""), "{err}");
    assert!(
        err.contains("canary"),
        "the revisions there are named: {err}"
    );
    let (code, _, err) =
        support::cli_async(&["sidecar", "retag", "default", "--to", "canary"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("istioctl tag set default"), "{err}");
    assert_eq!(
        istioctl_tag(&tag).await,
        Some(("default".to_owned(), shop.clone())),
        "nothing moved"
    );

    // Forward: the tag moves to the canary, the namespace restarts onto it.
    let forward = format!("fwd-{}", env.namespace);
    let (code, out, err) = retag_to_canary(&tag, &forward, &labels).await;
    assert_eq!(code, 0, "{out}\n{err}\n{}", agent.log_text());
    assert!(out.contains("moved from default to canary"), "{out}");
    assert_eq!(
        istioctl_tag(&tag).await,
        Some(("canary".to_owned(), shop.clone()))
    );
    assert_eq!(injected_revisions(&env, &shop, "api", 2).await, "canary");

    // Rollback by the tag: it moves back, the namespace restarts onto the old revision.
    let (code, out, err) =
        support::cli_async(&["sidecar", "rollback", &forward, "--wait", "--timeout", "5m"]).await;
    assert_eq!(code, 0, "{out}\n{err}\n{}", agent.log_text());
    assert!(out.contains("moved back from canary to default"), "{out}");
    assert_eq!(
        istioctl_tag(&tag).await,
        Some(("default".to_owned(), shop.clone()))
    );
    assert_eq!(injected_revisions(&env, &shop, "api", 2).await, "default");

    // And forward again.
    let again = format!("fwd2-{}", env.namespace);
    let (code, out, err) = retag_to_canary(&tag, &again, &labels).await;
    assert_eq!(code, 0, "{out}\n{err}\n{}", agent.log_text());
    assert_eq!(
        istioctl_tag(&tag).await,
        Some(("canary".to_owned(), shop.clone()))
    );
    assert_eq!(injected_revisions(&env, &shop, "api", 2).await, "canary");
    let (code, out, _) = support::cli_async(&["sidecar", "tags"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [tag.as_str(), "canary", shop.as_str()]),
        "{out}"
    );

    // Preflight reads the same webhooks: the tag inventory, and a namespace asking for
    // a revision no injector serves (its pods would get no sidecar) is an error.
    let orphan = env
        .create_namespace("orphan", &[("istio.io/rev", "no-such-rev")])
        .await;
    // A workload of the mesh without a PDB or a readiness probe (warnings; `api` in the
    // shop has a PDB).
    let mut unguarded = fixtures::AppFixture::new(&orphan, "unguarded", 2).deployment();
    for c in unguarded
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .map(|s| s.containers.iter_mut())
        .into_iter()
        .flatten()
    {
        c.readiness_probe = None;
    }
    fixtures::apply(
        &Api::<Deployment>::namespaced(env.client.clone(), &orphan),
        &unguarded,
    )
    .await
    .expect("apply the unguarded Deployment");
    let (code, out, err) =
        support::cli_async(&["preflight", "-n", &shop, "-n", &orphan, "-o", "json"]).await;
    assert_eq!(code, 1, "an error finding exits 1: {out}\n{err}");
    let findings: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON findings");
    let has = |check: &str, object: &str| {
        findings
            .iter()
            .find(|f| f["check"] == check && f["object"] == object)
            .map(|f| {
                (
                    f["severity"].as_str().unwrap_or_default().to_owned(),
                    f["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
    };
    let (severity, message) = has("injection-target-missing", &format!("Namespace/{orphan}"))
        .unwrap_or_else(|| panic!("no injection-target-missing for {orphan}: {out}"));
    assert_eq!(severity, "error");
    assert!(message.contains("istio.io/rev=no-such-rev"), "{message}");
    assert_eq!(
        has("injection-target-missing", &format!("Namespace/{shop}")),
        None,
        "{shop} is served by the tag: {out}"
    );
    let (severity, message) = has(
        "revision-tag",
        &format!("MutatingWebhookConfiguration/istio-revision-tag-{tag}"),
    )
    .unwrap_or_else(|| panic!("no revision-tag finding for {tag}: {out}"));
    assert_eq!(severity, "info");
    assert_eq!(
        message,
        format!("tag {tag} → revision canary; namespaces: {shop}")
    );
    for check in ["workload-without-pdb", "workload-without-readiness-probe"] {
        let (severity, _) = has(check, &format!("Deployment/{orphan}/unguarded"))
            .unwrap_or_else(|| panic!("no {check} for the unguarded Deployment: {out}"));
        assert_eq!(severity, "warning");
    }
    assert_eq!(
        has("workload-without-pdb", &format!("Deployment/{shop}/api")),
        None,
        "api has a PDB: {out}"
    );
    let validator = "ValidatingWebhookConfiguration/istio-validator";
    assert_eq!(
        has("validating-webhook-missing", validator),
        None,
        "istioctl installed istiod's validating webhook: {out}"
    );

    // Without istiod's validating webhook (removed, then put back as it was), preflight
    // warns.
    {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
        let istiod = vwcs
            .list(&ListParams::default().labels("app=istiod"))
            .await
            .expect("validating webhooks")
            .items;
        assert!(
            !istiod.is_empty(),
            "istioctl installs istiod's validating webhook"
        );
        for w in &istiod {
            vwcs.delete(&w.name_any(), &Default::default())
                .await
                .expect("delete the validating webhook");
        }
        let (_, out, err) = support::cli_async(&["preflight", "-n", &shop, "-o", "json"]).await;
        for w in istiod {
            let mut w = w.clone();
            w.metadata.resource_version = None;
            w.metadata.uid = None;
            w.metadata.creation_timestamp = None;
            w.metadata.managed_fields = None;
            vwcs.create(&Default::default(), &w)
                .await
                .expect("put the validating webhook back");
        }
        let findings: Vec<serde_json::Value> =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
        assert!(
            findings
                .iter()
                .any(|f| f["check"] == "validating-webhook-missing"
                    && f["severity"] == "warning"
                    && f["object"] == validator),
            "{out}"
        );
    }

    bed.istioctl
        .run(&["tag", "remove", &tag, "--skip-confirmation"])
        .await
        .expect("istioctl tag remove");
}

/// Preflight's version skew comes from istiod itself: each istiod's `/version` (asked at
/// the URL of its monitoring port: the API server cannot reach an istiod outside the
/// cluster, and says so when asked), judged against Istio's policy for the node agents.
#[tokio::test(flavor = "multi_thread")]
async fn preflight_judges_the_node_agents_against_the_versions_istiod_reports() {
    let bed = istio_support::bed();
    let _serial = istio_support::serial().await;
    let env = TestEnv::new("istio-versions", 0).await;
    let mut urls = Vec::new();
    let mut reported = std::collections::BTreeMap::new();
    for (revision, _) in istio_support::REVISIONS {
        let port = bed.revision(revision).ports.monitoring;
        let (code, body) = ztunnel_rollout_testbed::istio::http_get(port, "/version")
            .await
            .expect("istiod's /version");
        assert_eq!(code, 200, "{body}");
        assert!(
            body.trim().starts_with(&istio_build_version()),
            "istiod reports the version it was built with: {body}"
        );
        reported.insert(revision, body.trim().to_owned());
        urls.push(format!("{revision}=http://127.0.0.1:{port}"));
    }
    let url_args: Vec<&str> = urls
        .iter()
        .flat_map(|u| ["--istiod-url", u.as_str()])
        .collect();
    let preflight = |extra: Vec<&str>| {
        let args: Vec<String> = ["preflight", "-n", &env.namespace, "-o", "json"]
            .into_iter()
            .chain(["--node-selector", "kubernetes.io/hostname=none-such"])
            .chain(extra)
            .map(str::to_owned)
            .collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = support::cli_async(&args).await;
            let findings: Vec<serde_json::Value> =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
            (code, findings)
        }
    };
    let named = |findings: &[serde_json::Value], check: &str| -> Vec<(String, String, String)> {
        findings
            .iter()
            .filter(|f| f["check"] == check)
            .map(|f| {
                let s = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
                (s("severity"), s("object"), s("message"))
            })
            .collect()
    };

    // Istio's own install, asked at its istiods' URLs: every version named with where it
    // came from, and ztunnel and istio-cni within the policy.
    let (code, findings) = preflight(url_args.clone()).await;
    assert_eq!(code, 0, "{findings:?}");
    let versions = named(&findings, "versions");
    assert_eq!(versions.len(), 1, "{findings:?}");
    let (severity, _, inventory) = &versions[0];
    assert_eq!(severity, "info");
    for (revision, version) in &reported {
        let port = bed.revision(revision).ports.monitoring;
        let entry =
            format!("istiod (revision {revision}) {version} from http://127.0.0.1:{port}/version");
        assert!(inventory.contains(&entry), "{entry} in {inventory}");
    }
    // istioctl stamps its own minor version on the node agents' images (the upgrade
    // test moves them to another patch of it).
    let build = istio_build_version();
    let minor: Vec<&str> = build.splitn(3, '.').take(2).collect();
    let minor = minor.join(".");
    for agent in ["ztunnel", "istio-cni"] {
        let entry = format!("{agent} (revision default) {minor}.");
        assert!(inventory.contains(&entry), "{entry} in {inventory}");
    }
    assert_eq!(named(&findings, "version-skew"), [], "{inventory}");
    assert_eq!(named(&findings, "istiod-version-unread"), [], "{inventory}");

    // A ztunnel two minor versions behind istiod (a DaemonSet on no node, seeded here)
    // is an error naming the version istiod reported.
    let old: DaemonSet = serde_json::from_value(json!({
        "metadata": { "name": "ztunnel-old", "namespace": env.namespace },
        "spec": {
            "selector": { "matchLabels": { "app": "ztunnel-old" } },
            "updateStrategy": { "type": "OnDelete" },
            "template": {
                "metadata": { "labels": { "app": "ztunnel-old" } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/hostname": "none-such" },
                    "containers": [{
                        "name": "istio-proxy",
                        "image": "docker.io/istio/ztunnel:1.29.3-distroless",
                    }],
                },
            },
        },
    }))
    .expect("DaemonSet");
    fixtures::apply(&Api::namespaced(env.client.clone(), &env.namespace), &old)
        .await
        .expect("apply the old ztunnel");
    let mut old_args = url_args.clone();
    old_args.extend([
        "--ztunnel-namespace",
        &env.namespace,
        "--ztunnel-daemonset",
        "ztunnel-old",
    ]);
    let (code, findings) = preflight(old_args).await;
    assert_eq!(code, 1, "an error finding exits 1: {findings:?}");
    let skew = named(&findings, "version-skew");
    assert_eq!(skew.len(), 1, "{findings:?}");
    let (severity, object, message) = &skew[0];
    assert_eq!(severity, "error");
    assert_eq!(object, &format!("DaemonSet/{}/ztunnel-old", env.namespace));
    let port = bed.revision("default").ports.monitoring;
    let expected = format!(
        "ztunnel 1.29.3-distroless is 2 minor versions behind istiod {} (revision default, from http://127.0.0.1:{port}/version)",
        reported["default"]
    );
    assert!(message.contains(&expected), "{expected} in {message}");

    // Without the URLs, istiod's in-cluster Services are asked through the API server;
    // their pods are KWOK's (no process behind them), so no version comes back: each
    // istiod is named, and its Deployment's image stands in.
    let (_, findings) = preflight(Vec::new()).await;
    let unread = named(&findings, "istiod-version-unread");
    let objects: Vec<&str> = unread.iter().map(|(_, o, _)| o.as_str()).collect();
    assert_eq!(
        objects,
        [
            "Service/istio-system/istiod",
            "Service/istio-system/istiod-canary"
        ],
        "{findings:?}"
    );
    for (severity, _, message) in &unread {
        assert_eq!(severity, "warning");
        assert!(
            message.contains("the skew check uses its image docker.io/istio/pilot:"),
            "{message}"
        );
        assert!(message.contains("pass --istiod-url"), "{message}");
    }
}

/// `istioctl waypoint apply` in the env's namespace, and the Deployment istiod renders
/// for it once `ready` holds.
async fn istiod_waypoint(
    env: &TestEnv,
    ready: impl kube::runtime::wait::Condition<Deployment>,
) -> Deployment {
    istio_support::bed()
        .istioctl
        .run(&["waypoint", "apply", "--namespace", &env.namespace])
        .await
        .expect("istioctl waypoint apply");
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    wait_for(
        &deployments,
        "waypoint",
        "istiod renders the waypoint",
        ready,
    )
    .await
    .expect("the waypoint")
}

/// A pod template's labels (none without one).
fn template_labels(
    t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> std::collections::BTreeMap<String, String> {
    t.and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// What a pod spec looks like to the agent: placement (tolerations as a set, priority
/// class, node affinity), the first container's name, ports and readiness probe.
fn as_the_agent_reads(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> serde_json::Value {
    let spec = spec.expect("a pod spec");
    let mut tolerations: Vec<String> = spec
        .tolerations
        .iter()
        .flatten()
        .map(|t| {
            format!(
                "{}:{}:{}",
                t.key.as_deref().unwrap_or_default(),
                t.operator.as_deref().unwrap_or("Equal"),
                t.effect.as_deref().unwrap_or_default()
            )
        })
        .collect();
    tolerations.sort();
    let container = spec.containers.first().expect("a container");
    let mut ports: Vec<(String, i32)> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    ports.sort();
    let probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|h| (h.path.clone(), h.port.clone()));
    json!({
        "tolerations": tolerations,
        "affinity": spec.affinity,
        "priorityClassName": spec.priority_class_name,
        "container": container.name,
        "ports": ports,
        "readiness": probe,
    })
}

/// The fixtures the other test binaries use stand for Istio's objects: where the agent
/// reads them, they must be Istio's. Compared with what istioctl and istiod render here.
#[tokio::test(flavor = "multi_thread")]
async fn the_fixtures_other_tests_use_match_istios_objects_where_the_agent_reads_them() {
    istio_support::bed();
    let _serial = istio_support::serial().await;
    let env = TestEnv::new("istio-fixtures", 0).await;

    // ztunnel: the DaemonSet istioctl installed against the fixture's.
    let istio: DaemonSet = Api::namespaced(env.client.clone(), "istio-system")
        .get("ztunnel")
        .await
        .expect("Istio's ztunnel DaemonSet");
    let fixture = fixtures::ZtunnelFixture::new("istio-system", "1.28.0").daemonset();
    let (istio, fixture) = (
        istio.spec.expect("spec"),
        fixture.spec.expect("fixture spec"),
    );
    assert_eq!(fixture.selector, istio.selector, "the pods' selector");
    assert_eq!(
        fixture.update_strategy.and_then(|s| s.type_),
        istio.update_strategy.and_then(|s| s.type_),
        "the update strategy (Istio's values set OnDelete)"
    );
    assert_eq!(
        as_the_agent_reads(fixture.template.spec.as_ref()),
        as_the_agent_reads(istio.template.spec.as_ref()),
        "ztunnel's pod spec"
    );
    let (fixture_labels, istio_labels) = (
        template_labels(Some(&fixture.template)),
        template_labels(Some(&istio.template)),
    );
    for key in ["app", "sidecar.istio.io/inject", "istio.io/dataplane-mode"] {
        assert_eq!(
            fixture_labels.get(key),
            istio_labels.get(key),
            "ztunnel's pod label {key}"
        );
    }

    // A waypoint: istiod's rendering against the fixture's.
    let istio = istiod_waypoint(&env, |d: Option<&Deployment>| d.is_some()).await;
    let fixture = fixtures::AppFixture::waypoint(&env.namespace, "waypoint").deployment();
    let pod_labels = |d: &Deployment| template_labels(d.spec.as_ref().map(|s| &s.template));
    for key in [WAYPOINT_MANAGED_LABEL, GATEWAY_NAME_LABEL] {
        assert!(istio.labels().contains_key(key), "istiod labels {key}");
        assert!(
            pod_labels(&istio).contains_key(key),
            "istiod labels the pods {key}"
        );
        assert_eq!(
            fixture.labels().get(key),
            istio.labels().get(key),
            "the waypoint Deployment's label {key}"
        );
        assert_eq!(
            pod_labels(&fixture).get(key),
            pod_labels(&istio).get(key),
            "the waypoint pods' label {key}"
        );
    }
}
