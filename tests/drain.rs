//! The drain engine against the real Eviction API, disruption controller and scheduler.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EmptyDirVolumeSource, Node, Pod, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use support::{
    TestEnv, available, deployment_available, sample_available, set_unschedulable, wait_for,
};
use ztunnel_rollout::drain::filter::FilterOptions;
use ztunnel_rollout::drain::{DrainOptions, DrainReport, Drainer, Outcome, cordon};
use ztunnel_rollout_testbed::fixtures::{self, AppFixture, Budget};

async fn unschedulable(env: &TestEnv, node: &str) -> bool {
    let n = Api::<Node>::all(env.client.clone())
        .get(node)
        .await
        .expect("node");
    n.spec.and_then(|s| s.unschedulable) == Some(true)
}

/// Two nodes; `build` runs while the second is cordoned, so everything lands on the first.
/// Returns (drained node, spare node).
async fn two_nodes_with<F, Fut>(env: &TestEnv, build: F) -> (String, String)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (target, spare) = (env.nodes[0].clone(), env.nodes[1].clone());
    set_unschedulable(&env.client, &spare, true).await;
    build().await;
    set_unschedulable(&env.client, &spare, false).await;
    (target, spare)
}

async fn pods_on(env: &TestEnv, node: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .expect("list")
        .items
}

async fn drain(env: &TestEnv, node: &str, opts: DrainOptions) -> DrainReport {
    Drainer::new(env.client.clone())
        .drain(node, &opts)
        .await
        .expect("drain")
}

/// One pod ("solo") on the first of the env's two nodes, under a PDB that allows no
/// disruption; returns that node.
async fn solo_under_a_full_budget(env: &TestEnv) -> String {
    let (target, _) = two_nodes_with(env, || async {
        support::apply_app(
            env,
            "solo",
            1,
            &[("solo", Budget::MinAvailable(IntOrString::Int(1)))],
            1.0,
        )
        .await;
    })
    .await;
    target
}

fn result<'a>(
    report: &'a DrainReport,
    name_prefix: &str,
) -> Vec<&'a ztunnel_rollout::drain::PodResult> {
    report
        .pods
        .iter()
        .filter(|p| p.name.starts_with(name_prefix))
        .collect()
}

#[tokio::test]
async fn a_drain_under_pdbs_never_violates_them_and_waits_for_the_originals() {
    let env = TestEnv::new("drain-pdb", 2).await;
    support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    let (target, spare) = two_nodes_with(&env, || async {
        support::apply_app(
            &env,
            "api",
            3,
            &[("api", Budget::MinAvailable(IntOrString::Int(2)))],
            2.0,
        )
        .await;
        support::apply_app(
            &env,
            "web",
            4,
            &[("web", Budget::MaxUnavailable(IntOrString::Int(1)))],
            1.0,
        )
        .await;
        support::apply_app(
            &env,
            "worker",
            2,
            &[(
                "worker",
                Budget::MaxUnavailable(IntOrString::String("50%".into())),
            )],
            1.0,
        )
        .await;
    })
    .await;
    let before = pods_on(&env, &target).await;
    let ztunnel_before = before
        .iter()
        .find(|p| p.name_any().starts_with("ztunnel"))
        .expect("ztunnel pod")
        .uid();
    assert_eq!(
        before.len(),
        10,
        "9 application pods and ztunnel on {target}"
    );

    let (minimum, sampler) = sample_available(&env);
    cordon(&env.client, &target).await.expect("cordon");
    let report = drain(
        &env,
        &target,
        DrainOptions {
            timeout: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await;
    sampler.abort();

    assert!(report.complete, "{}", report.render_text());
    assert_eq!(
        report.count(Outcome::Evicted),
        9,
        "{}",
        report.render_text()
    );
    let min = minimum.lock().expect("lock").clone();
    assert!(
        min["api"] >= 2,
        "api dropped to {} available (minAvailable 2)",
        min["api"]
    );
    assert!(
        min["web"] >= 3,
        "web dropped to {} available (maxUnavailable 1 of 4)",
        min["web"]
    );
    assert!(
        min["worker"] >= 1,
        "worker dropped to {} available (maxUnavailable 50% of 2)",
        min["worker"]
    );
    let refusals: u32 = result(&report, "api")
        .iter()
        .map(|p| p.refused_by_budget)
        .sum();
    assert!(
        refusals >= 1,
        "three api pods evicted at once without a single 429: {}",
        report.render_text()
    );

    // The originals are gone (by UID), their replacements run on the spare node, and the
    // ztunnel pod was left alone.
    let after = pods_on(&env, &target).await;
    assert_eq!(
        after.iter().map(|p| p.uid()).collect::<Vec<_>>(),
        vec![ztunnel_before.clone()]
    );
    let ds_result = result(&report, "ztunnel");
    assert_eq!(ds_result[0].outcome, Outcome::Skipped);
    assert!(
        ds_result[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("DaemonSet")
    );
    for (name, n) in [("api", 3), ("web", 4), ("worker", 2)] {
        let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
        wait_for(
            &deployments,
            name,
            &format!("{name} back"),
            deployment_available(n),
        )
        .await;
    }
    let spare_apps = pods_on(&env, &spare)
        .await
        .into_iter()
        .filter(|p| !p.name_any().starts_with("ztunnel"))
        .count();
    assert_eq!(spare_apps, 9);
    for r in report.pods.iter().filter(|p| p.outcome == Outcome::Evicted) {
        let (evicted, gone) = (
            r.evicted_after_ms.expect("evicted at"),
            r.gone_after_ms.expect("gone at"),
        );
        assert!(gone >= evicted, "{r:?}");
    }
}

#[tokio::test]
async fn a_budget_that_allows_nothing_ends_the_drain_at_its_deadline() {
    let env = TestEnv::new("drain-stuck", 2).await;
    let target = solo_under_a_full_budget(&env).await;
    let pod = pods_on(&env, &target).await.remove(0);
    cordon(&env.client, &target).await.expect("cordon");
    let report = drain(
        &env,
        &target,
        DrainOptions {
            timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .await;

    assert!(
        !report.complete,
        "a blocked drain must never report success"
    );
    let r = &report.pods[0];
    assert_eq!(r.outcome, Outcome::NotGone);
    let expected = format!(
        "PDB {}/solo allows 0 disruptions (needs 1 healthy, has 1)",
        env.namespace
    );
    assert_eq!(
        r.reason.as_deref(),
        Some(expected.as_str()),
        "{}",
        report.render_text()
    );
    assert!(r.refused_by_budget >= 1 && r.attempts >= r.refused_by_budget);
    assert!(
        unschedulable(&env, &target).await,
        "the node must stay cordoned"
    );
    let still = Api::<Pod>::namespaced(env.client.clone(), &env.namespace)
        .get(&pod.name_any())
        .await
        .expect("pod");
    assert_eq!(still.uid(), pod.uid());
    assert!(still.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn a_pod_under_two_budgets_fails_at_once_naming_both() {
    let env = TestEnv::new("drain-two", 2).await;
    let (target, _) = two_nodes_with(&env, || async {
        support::apply_app(
            &env,
            "dual",
            2,
            &[
                ("dual-a", Budget::MaxUnavailable(IntOrString::Int(1))),
                ("dual-b", Budget::MaxUnavailable(IntOrString::Int(1))),
            ],
            1.0,
        )
        .await;
    })
    .await;
    cordon(&env.client, &target).await.expect("cordon");
    let timeout = Duration::from_secs(60);
    let report = drain(
        &env,
        &target,
        DrainOptions {
            timeout,
            ..Default::default()
        },
    )
    .await;
    assert!(!report.complete);
    for r in &report.pods {
        assert_eq!(r.outcome, Outcome::Failed, "{}", report.render_text());
        assert_eq!(
            r.attempts, 1,
            "no retry loop for a pod the API will never evict"
        );
        let reason = r.reason.as_deref().unwrap_or("");
        let (a, b) = (
            format!("{}/dual-a", env.namespace),
            format!("{}/dual-b", env.namespace),
        );
        assert!(reason.contains(&a) && reason.contains(&b), "{reason}");
    }
    assert!(
        u128::from(report.elapsed_ms) < timeout.as_millis(),
        "it waited for the deadline"
    );
}

fn bare_pod(env: &TestEnv, name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(env.namespace.clone()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_selector: Some(env.node_selector()),
            containers: vec![Container {
                name: "c".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn unmanaged_and_emptydir_pods_are_refused_before_anything_is_evicted() {
    let env = TestEnv::new("drain-refuse", 2).await;
    let pods_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let (target, _) = two_nodes_with(&env, || async {
        support::apply_app(&env, "web", 2, &[], 1.0).await;
        let mut cache = AppFixture::new(&env.namespace, "cache", 1);
        cache.node_selector = env.node_selector();
        let mut d = cache.deployment();
        let pod_spec = d
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .expect("spec");
        pod_spec.volumes = Some(vec![Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]);
        let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
        fixtures::apply(&deployments, &d).await.expect("cache");
        wait_for(
            &deployments,
            "cache",
            "cache available",
            deployment_available(1),
        )
        .await;
        pods_api
            .create(&PostParams::default(), &bare_pod(&env, "bare"))
            .await
            .expect("bare pod");
        wait_for(&pods_api, "bare", "bare running", |p: Option<&Pod>| {
            p.is_some_and(available)
        })
        .await;
    })
    .await;
    let before: BTreeMap<String, String> = pods_on(&env, &target)
        .await
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    assert_eq!(before.len(), 4);

    // The CLI refuses without touching the node.
    let kubeconfig = support::cluster().kubeconfig.clone();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"))
        .args(["drain", &target, "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .expect("run ztunnel-rollout drain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("bare") && stdout.contains("--force"),
        "{stdout}"
    );
    // Its log says what happened once: no watch error at the end, the node named once a
    // line.
    assert!(!stderr.contains("watch error"), "{stderr}");
    assert!(stderr.contains("drain refused"), "{stderr}");
    assert!(
        stderr.lines().all(|l| l.matches("node=").count() <= 1),
        "{stderr}"
    );
    assert!(
        stdout.contains("scratch") && stdout.contains("--delete-emptydir-data"),
        "{stdout}"
    );
    assert!(
        !unschedulable(&env, &target).await,
        "a refused drain must not cordon"
    );

    // So does the library, for every pod at once, evicting nothing.
    cordon(&env.client, &target).await.expect("cordon");
    let report = drain(&env, &target, DrainOptions::default()).await;
    assert!(!report.complete);
    let mut refused: Vec<&str> = report
        .pods
        .iter()
        .filter(|p| p.outcome == Outcome::Refused)
        .map(|p| p.name.as_str())
        .collect();
    refused.sort();
    assert_eq!(refused.len(), 2, "{}", report.render_text());
    assert!(
        refused[0] == "bare" && refused[1].starts_with("cache-"),
        "{refused:?}"
    );
    assert!(report.pods.iter().all(|p| p.attempts == 0));
    let after: BTreeMap<String, String> = pods_on(&env, &target)
        .await
        .iter()
        .filter(|p| available(p))
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    assert_eq!(after, before, "a refused drain evicted something");

    // With both allowed, everything goes; the bare pod is not recreated.
    let opts = DrainOptions {
        filter: FilterOptions {
            force: true,
            delete_emptydir_data: true,
            ..Default::default()
        },
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let report = drain(&env, &target, opts).await;
    assert!(report.complete, "{}", report.render_text());
    assert_eq!(report.count(Outcome::Evicted), 4);
    assert!(pods_api.get_opt("bare").await.expect("get").is_none());
}

#[tokio::test]
async fn daemonset_and_mirror_pods_are_left_alone_and_dry_run_changes_nothing() {
    let env = TestEnv::new("drain-skip", 2).await;
    support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    let target = env.nodes[0].clone();
    let node_uid = Api::<Node>::all(env.client.clone())
        .get(&target)
        .await
        .expect("node")
        .uid()
        .expect("uid");
    let pods_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    // A mirror pod as the kubelet creates it for a static pod: annotated and owned by
    // the Node, bound to it.
    let mut mirror = bare_pod(&env, "static-web");
    mirror.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/config.mirror".to_owned(),
        "hash".to_owned(),
    )]));
    mirror.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: target.clone(),
        uid: node_uid,
        controller: Some(true),
        ..Default::default()
    }]);
    let spec = mirror.spec.as_mut().expect("spec");
    spec.node_selector = None;
    spec.node_name = Some(target.clone());
    pods_api
        .create(&PostParams::default(), &mirror)
        .await
        .expect("mirror pod");
    wait_for(
        &pods_api,
        "static-web",
        "mirror pod running",
        |p: Option<&Pod>| p.is_some_and(available),
    )
    .await;
    let (_, _) = two_nodes_with(&env, || async {
        support::apply_app(&env, "web", 2, &[], 1.0).await
    })
    .await;
    let before: BTreeMap<String, String> = pods_on(&env, &target)
        .await
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();

    let dry = drain(
        &env,
        &target,
        DrainOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await;
    assert!(dry.dry_run && dry.complete);
    assert_eq!(dry.count(Outcome::WouldEvict), 2, "{}", dry.render_text());
    assert_eq!(dry.count(Outcome::Skipped), 2);
    assert!(dry.pods.iter().all(|p| p.attempts == 0));
    assert!(!unschedulable(&env, &target).await);
    let unchanged: BTreeMap<String, String> = pods_on(&env, &target)
        .await
        .iter()
        .filter(|p| available(p))
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    assert_eq!(unchanged, before);

    cordon(&env.client, &target).await.expect("cordon");
    let report = drain(
        &env,
        &target,
        DrainOptions {
            timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .await;
    assert!(report.complete, "{}", report.render_text());
    let skipped: BTreeMap<&str, &str> = report
        .pods
        .iter()
        .filter(|p| p.outcome == Outcome::Skipped)
        .map(|p| (p.name.as_str(), p.reason.as_deref().unwrap_or("")))
        .collect();
    assert!(skipped["static-web"].contains("mirror"), "{skipped:?}");
    assert!(
        skipped
            .iter()
            .any(|(n, r)| n.starts_with("ztunnel") && r.contains("DaemonSet")),
        "{skipped:?}"
    );
    let left: Vec<String> = pods_on(&env, &target)
        .await
        .iter()
        .map(|p| p.uid().unwrap_or_default())
        .collect();
    let kept: Vec<&String> = before
        .iter()
        .filter(|(n, _)| *n == "static-web" || n.starts_with("ztunnel"))
        .map(|(_, u)| u)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(
        kept.iter().all(|u| left.contains(u)),
        "a skipped pod was touched"
    );
}

#[tokio::test]
async fn pods_stuck_terminating_are_skipped_after_the_skip_wait_timeout_only() {
    let env = TestEnv::new("drain-stuck-term", 2).await;
    let pods_api: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let target = env.nodes[0].clone();
    // A finalizer nobody removes keeps the pod terminating, as on a dead node.
    let mut held = bare_pod(&env, "held");
    held.metadata.finalizers = Some(vec!["local-cluster.ztunnel-rollout.dev/hold".into()]);
    let spec = held.spec.as_mut().expect("spec");
    spec.node_selector = None;
    spec.node_name = Some(target.clone());
    pods_api
        .create(&PostParams::default(), &held)
        .await
        .expect("held pod");
    wait_for(&pods_api, "held", "held running", |p: Option<&Pod>| {
        p.is_some_and(available)
    })
    .await;
    pods_api
        .delete("held", &Default::default())
        .await
        .expect("delete held");
    cordon(&env.client, &target).await.expect("cordon");

    let waiting = drain(
        &env,
        &target,
        DrainOptions {
            timeout: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .await;
    assert!(!waiting.complete);
    assert_eq!(waiting.pods[0].outcome, Outcome::NotGone);
    assert_eq!(
        waiting.pods[0].reason.as_deref(),
        Some("still terminating at the deadline")
    );

    let opts = DrainOptions {
        timeout: Duration::from_secs(60),
        filter: FilterOptions {
            skip_wait_for_delete_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        ..Default::default()
    };
    let report = drain(&env, &target, opts).await;
    assert!(report.complete, "{}", report.render_text());
    assert_eq!(report.pods[0].outcome, Outcome::Skipped);
    assert!(
        report.pods[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("skip-wait-for-delete")
    );

    pods_api
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .expect("release the finalizer");
}

#[tokio::test]
async fn the_cli_reports_as_json_and_exits_non_zero_when_not_drained() {
    let env = TestEnv::new("drain-cli", 2).await;
    let target = solo_under_a_full_budget(&env).await;
    let kubeconfig = support::cluster().kubeconfig.clone();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"))
            .args(["drain", &target, "-o", "json", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(extra)
            .output()
            .expect("run ztunnel-rollout drain")
    };
    let dry = run(&["--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert_eq!(report["dryRun"], true);
    assert_eq!(report["pods"][0]["outcome"], "wouldEvict");
    let blocked = format!("PDB {}/solo allows 0 disruptions", env.namespace);
    assert!(
        report["pods"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains(&blocked),
        "{report}"
    );
    assert!(
        !unschedulable(&env, &target).await,
        "a dry run must not cordon"
    );

    let real = run(&["--timeout", "3s"]);
    assert_eq!(real.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&real.stdout).expect("json");
    assert_eq!(report["complete"], false);
    assert_eq!(report["pods"][0]["outcome"], "notGone");
    assert!(String::from_utf8_lossy(&real.stderr).contains("stays cordoned"));
    assert!(unschedulable(&env, &target).await);

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"))
        .args(["drain", "no-such-node", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("node no-such-node not found"));
}

#[tokio::test]
async fn the_grace_period_option_reaches_the_evicted_pods() {
    let env = TestEnv::new("drain-grace", 2).await;
    let (target, _) = two_nodes_with(&env, || async {
        // Would take 60 s to exit, and its own grace period is 30 s.
        support::apply_app(&env, "slow", 1, &[], 60.0).await;
    })
    .await;
    cordon(&env.client, &target).await.expect("cordon");
    let opts = DrainOptions {
        timeout: Duration::from_secs(20),
        grace_period_seconds: Some(1),
        ..Default::default()
    };
    let report = drain(&env, &target, opts).await;
    assert!(report.complete, "{}", report.render_text());
    let r = &report.pods[0];
    let terminating_ms = r.gone_after_ms.expect("gone") - r.evicted_after_ms.expect("evicted");
    assert!(
        terminating_ms < 10_000,
        "terminated in {terminating_ms} ms: the 1 s grace period was not applied"
    );
}

/// A drain cancelled mid-way (the agent aborts its task on an abort or an operator's
/// uncordon) sends no eviction after that, even once the budget would allow one. Counted
/// at a proxy in front of the API server; the pod is judged from the API server.
#[tokio::test]
async fn a_cancelled_drain_sends_no_eviction_after_it_is_cancelled() {
    use http::Method;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use support::fault_proxy::{Fault, FaultProxy, Rule};

    let env = TestEnv::new("drain-cancel", 2).await;
    support::agent::install(&env.client).await;
    let target = solo_under_a_full_budget(&env).await;
    let pod = pods_on(&env, &target).await.remove(0);
    cordon(&env.client, &target).await.expect("cordon");

    // The drain's requests go through a proxy that counts its evictions (a zero delay
    // changes nothing).
    let proxy = FaultProxy::start().await;
    let evictions = proxy.add(Rule::new(
        Method::POST,
        "/eviction",
        Fault::Delay(Duration::ZERO),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let client =
        ztunnel_rollout::kube_client::client(Some(&proxy.agent_kubeconfig(dir.path())), None)
            .await
            .expect("a client through the proxy");
    let mut opts = DrainOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    opts.retry.min_delay = Duration::from_millis(100);
    opts.retry.max_delay = Duration::from_millis(200);
    let node = target.clone();
    let running = tokio::spawn(async move { Drainer::new(client).drain(&node, &opts).await });
    // Refused by the budget and sent again: the pod's task is in its retry loop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while proxy.seen(evictions) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no eviction retried within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    let sent = proxy.seen(evictions);

    // The budget now allows the eviction.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &env.namespace);
    pdbs.patch(
        "solo",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "spec": { "minAvailable": 0 } })),
    )
    .await
    .expect("relax the PDB");
    wait_for(
        &pdbs,
        "solo",
        "the PDB allows a disruption",
        |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.disruptions_allowed.unwrap_or(0) >= 1)
        },
    )
    .await;

    // For 15 times the longest retry delay, the pod stays: nothing evicts it.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let deleted = |p: Option<&Pod>| p.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
    let gone = tokio::time::timeout(
        Duration::from_secs(3),
        kube::runtime::wait::await_condition(pods.clone(), &pod.name_any(), deleted),
    )
    .await;
    assert!(
        gone.is_err(),
        "the pod was evicted after the drain was cancelled"
    );
    assert_eq!(
        proxy.seen(evictions),
        sent,
        "evictions sent after the cancel"
    );
    let still = pods.get(&pod.name_any()).await.expect("pod");
    assert_eq!(still.uid(), pod.uid());
    assert!(!deleted(Some(&still)));

    // Control: a drain now evicts it at once (the window above could have seen it).
    let report = drain(
        &env,
        &target,
        DrainOptions {
            timeout: Duration::from_secs(60),
            ..Default::default()
        },
    )
    .await;
    assert!(report.complete, "{}", report.render_text());
    assert_eq!(result(&report, "solo")[0].outcome, Outcome::Evicted);
}
