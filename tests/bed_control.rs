//! The local cluster's control interface (`control.sock`, `local-cluster ctl`): each
//! component can be killed, stopped, paused, resumed, started and restarted with its
//! own flags and data while the rest runs on, and the cluster stops only when a
//! component exits on its own. Judged from the API server: what was written before etcd
//! was killed is there after it starts again, a paused API server answers nothing until
//! resumed, a restarted controller manager still creates pods, a restarted KWOK plays
//! pods at once (not when its previous instance's node leases expire).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use ztunnel_rollout_testbed::control_plane::client_for;
use ztunnel_rollout_testbed::control_socket::{ControlSocketError, send};

const WITHIN: Duration = Duration::from_secs(60);

async fn readyz(client: &Client) -> Result<String, String> {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5s".into()),
    }
}

/// Polls `probe` until it holds; fails the test after [`WITHIN`].
async fn until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WITHIN;
    while !probe().await {
        assert!(Instant::now() < deadline, "{what}: not within {WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn components_stop_pause_and_start_on_request_and_only_a_crash_stops_the_cluster() {
    let mut sup = support::start_supervisor("control", &["--demo"]).expect("local cluster");
    let kubeconfig: PathBuf = sup.ready["kubeconfig"].as_str().expect("kubeconfig").into();
    let socket: PathBuf = sup.ready["control"]
        .as_str()
        .expect("the control socket in the ready line")
        .into();
    let pids: Vec<u32> = sup.ready["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .filter_map(|p| p.as_u64().map(|p| p as u32))
        .collect();
    let client = client_for(&kubeconfig).await.expect("client");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let kept: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "kept" }, "data": { "written": "before etcd was killed" },
    }))
    .expect("config map");
    config_maps
        .create(&PostParams::default(), &kept)
        .await
        .expect("create");

    // etcd killed: the API server stops being ready; started again with its data.
    send(&socket, "kill", "etcd").await.expect("kill etcd");
    until("the API server unready without etcd", || async {
        readyz(&client).await.map_or(true, |b| b.trim() != "ok")
    })
    .await;
    send(&socket, "start", "etcd").await.expect("start etcd");
    assert_eq!(readyz(&client).await.as_deref(), Ok("ok"));
    let read = config_maps
        .get("kept")
        .await
        .expect("read after etcd's restart");
    assert_eq!(read.data, kept.data);

    // The API server paused: requests hang; resumed: they are answered.
    send(&socket, "pause", "kube-apiserver")
        .await
        .expect("pause");
    let hung = tokio::time::timeout(Duration::from_secs(3), config_maps.get("kept")).await;
    assert!(hung.is_err(), "a paused API server answered: {hung:?}");
    send(&socket, "resume", "kube-apiserver")
        .await
        .expect("resume");
    config_maps
        .get("kept")
        .await
        .expect("answered after resume");

    // The controller manager restarted with its own flags: a Deployment still gets pods.
    send(&socket, "restart", "kube-controller-manager")
        .await
        .expect("restart the controller manager");
    // KWOK restarted, three times: each new instance takes the nodes at once, not when
    // the node leases its previous instance held expire, and ends a pod deleted while it
    // was down or after it started. KWOK draws a new holder identity per process, and
    // whether it then leaves the nodes of a lease it does not hold alone depends on the
    // order its controllers start in (`ztunnel_rollout_testbed::kwok_restart`).
    for action in ["stop, delete, start", "restart", "restart"] {
        kwok_restarted_plays_pods_at_once(&client, &socket, action).await;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "after-restart" },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "after-restart" } },
            "template": { "metadata": { "labels": { "app": "after-restart" } },
                "spec": { "containers": [{ "name": "c", "image": "app:1" }] } } },
    }))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    until(
        "a pod from the restarted controller manager, Ready by the restarted KWOK",
        || async {
            pods.list(&ListParams::default().labels("app=after-restart"))
                .await
                .is_ok_and(|l| l.items.iter().any(support::available))
        },
    )
    .await;

    // Bad requests are refused with the reason, and change nothing.
    for (action, component, reason) in [
        ("start", "etcd", "etcd is running already"),
        ("resume", "kwok", "kwok is not paused"),
        ("restart", "kubelet", "no component \"kubelet\""),
        ("reboot", "etcd", "unknown action \"reboot\""),
    ] {
        match send(&socket, action, component).await {
            Err(ControlSocketError::Refused(e)) => {
                assert!(e.contains(reason), "{action} {component}: {e}")
            }
            other => panic!("{action} {component}: not refused: {other:?}"),
        }
    }
    assert!(
        sup.child.try_wait().expect("supervisor").is_none(),
        "the cluster stopped"
    );

    // A component that exits on its own (the scheduler, never restarted here: its pid
    // is the one of the ready line) still stops the whole cluster.
    let scheduler = pids[3];
    // SAFETY: plain kill(2) of the cluster's scheduler.
    unsafe {
        libc::kill(scheduler as libc::pid_t, libc::SIGKILL);
    }
    // It stops the others first, each given up to 10 s to exit.
    let crashed = Instant::now();
    let deadline = crashed + 2 * WITHIN;
    let status = loop {
        if let Some(status) = sup.child.try_wait().expect("supervisor") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not stop after a crash"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "the cluster stopped {:?} after the crash",
        crashed.elapsed()
    );
    assert!(!status.success(), "a crash is a failure: {status}");
    let log = std::fs::read_to_string(&sup.log).expect("supervisor log");
    assert!(log.contains("kube-scheduler exited"), "{log}");
}

/// Restarts KWOK and deletes a `reviews` pod from before: with `action` "stop, delete,
/// start" while KWOK is down (the new instance finds it deleted), with "restart" once
/// the restart is answered. Judged from the API server: every node lease has a holder
/// other than before (the new instance took its nodes at once, not when its
/// predecessor's leases expired), the pod is gone and its replacement Ready.
async fn kwok_restarted_plays_pods_at_once(client: &Client, socket: &Path, action: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let holders = || async {
        leases
            .list(&ListParams::default())
            .await
            .expect("leases")
            .items
            .into_iter()
            .map(|l| {
                let holder = l.spec.and_then(|s| s.holder_identity);
                (l.metadata.name.unwrap_or_default(), holder)
            })
            .collect::<Vec<_>>()
    };
    let before_holders = holders().await;
    assert!(
        before_holders.len() >= 6 && before_holders.iter().all(|(_, h)| h.is_some()),
        "KWOK holds the nodes' leases: {before_holders:?}"
    );
    let demo: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let reviews = ListParams::default().labels("app=reviews");
    // The demo's Deployments may still be scaling up (the cluster answers once their
    // objects are applied).
    until("a Ready reviews pod", || async {
        demo.list(&reviews)
            .await
            .is_ok_and(|l| l.items.iter().any(support::available))
    })
    .await;
    let pods = demo.list(&reviews).await.expect("reviews pods").items;
    let gone = pods
        .iter()
        .find(|p| support::available(p))
        .and_then(|p| p.metadata.name.clone())
        .expect("a Ready reviews pod");
    let before: Vec<String> = pods.into_iter().filter_map(|p| p.metadata.name).collect();
    let delete = || async {
        demo.delete(&gone, &Default::default())
            .await
            .expect("delete a reviews pod");
    };
    if action == "restart" {
        send(socket, "restart", "kwok").await.expect("restart kwok");
        delete().await;
    } else {
        send(socket, "stop", "kwok").await.expect("stop kwok");
        delete().await;
        send(socket, "start", "kwok").await.expect("start kwok");
    }
    let after_holders = holders().await;
    for (lease, holder) in &after_holders {
        let old = before_holders
            .iter()
            .find(|(l, _)| l == lease)
            .map(|(_, h)| h);
        assert!(
            holder.is_some() && old != Some(holder),
            "after KWOK's {action}: lease {lease} held by {holder:?}, before by {old:?}"
        );
    }
    assert_eq!(
        after_holders.len(),
        before_holders.len(),
        "a lease per node"
    );
    until(&format!("{gone} gone after KWOK's {action}"), || async {
        demo.get_opt(&gone).await.is_ok_and(|p| p.is_none())
    })
    .await;
    until(
        &format!("{gone}'s replacement Ready after KWOK's {action}"),
        || async {
            demo.list(&reviews).await.is_ok_and(|l| {
                l.items.iter().any(|p| {
                    p.metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| !before.contains(n))
                        && support::available(p)
                })
            })
        },
    )
    .await;
}
