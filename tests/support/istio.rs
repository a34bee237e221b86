//! Istio's own control plane in a test binary's cluster, set up once on first use:
//! the Gateway API CRDs, `istioctl install` of the `default` revision (profile ambient:
//! istiod, istio-cni, ztunnel, with Istio's `OnDelete` values) and of a `canary` revision
//! (profile minimal), each served by a real istiod on loopback (the testbed's
//! `istio` module), on [`NODES`] nodes of their own.
//!
//! Istio's DaemonSets run on every node of the cluster, so a binary that uses this bed
//! creates no other nodes. The istiod processes belong to a thread of their own that
//! lives as long as the test binary (they die with it), since each test has its own
//! runtime. Tests that change the mesh take [`serial`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::wait::await_condition;
use ztunnel_rollout_testbed::fixtures::{self, NODE_SET_LABEL};
use ztunnel_rollout_testbed::istio::{
    InstallOptions, IstioBinaries, Istioctl, Istiod, IstiodPorts,
};

use super::{WAIT, client, cluster};

/// The node set of the bed's nodes.
pub const NODE_SET: &str = "istio";
/// Nodes in the bed, over zones a, b and c.
pub const NODES: usize = 4;
/// The revisions installed, and their profiles.
pub const REVISIONS: [(&str, &str); 2] = [("default", "ambient"), ("canary", "minimal")];

/// One installed revision: how it was installed and where its istiod listens.
#[derive(Debug, Clone)]
pub struct Revision {
    pub install: InstallOptions,
    pub ports: IstiodPorts,
    pub log: PathBuf,
}

pub struct IstioBed {
    pub istioctl: Istioctl,
    pub revisions: BTreeMap<String, Revision>,
    pub nodes: Vec<String>,
}

impl IstioBed {
    pub fn revision(&self, name: &str) -> &Revision {
        self.revisions
            .get(name)
            .unwrap_or_else(|| panic!("no revision {name} in the bed"))
    }

    /// The selector that places pods on the bed's nodes.
    pub fn node_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(NODE_SET_LABEL.to_owned(), NODE_SET.to_owned())])
    }
}

static BED: OnceLock<Result<IstioBed, String>> = OnceLock::new();
/// Not poisoned by a failed test, and not tied to one test's runtime.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Tests that change the mesh or drain nodes run one at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The bed, set up on first use. Panics (fails the test) with the reason.
pub fn bed() -> &'static IstioBed {
    match BED.get_or_init(start) {
        Ok(bed) => bed,
        Err(e) => panic!("{e}"),
    }
}

fn start() -> Result<IstioBed, String> {
    if std::env::var_os(super::KUBECONFIG_ENV).is_some() {
        return Err(format!(
            "the Istio tests install Istio cluster-wide (its DaemonSets run on every node): run them on a cluster of their own, without {}",
            super::KUBECONFIG_ENV
        ));
    }
    let binaries = IstioBinaries::from_env();
    binaries.check().map_err(|e| e.to_string())?;
    let kubeconfig = cluster().kubeconfig.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("istiod".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("istiod's runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match set_up(binaries, kubeconfig).await {
                    Ok((bed, istiods)) => {
                        let _ = tx.send(Ok(bed));
                        // istiod runs as long as the test binary.
                        let _running = istiods;
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| format!("istiod's thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the istiod thread ended without a word".to_owned())?
}

async fn set_up(
    binaries: IstioBinaries,
    kubeconfig: PathBuf,
) -> Result<(IstioBed, Vec<Istiod>), String> {
    let client = client().await;
    let node_api: Api<Node> = Api::all(client.clone());
    let mut nodes = Vec::new();
    for node in fixtures::zoned_nodes("istio-", NODES, &["a", "b", "c"], NODE_SET) {
        nodes.push(node.metadata.name.clone().unwrap_or_default());
        fixtures::apply(&node_api, &node)
            .await
            .map_err(|e| format!("create node: {e}"))?;
    }
    for name in &nodes {
        tokio::time::timeout(
            WAIT,
            await_condition(node_api.clone(), name, |n: Option<&Node>| {
                super::node_ready(n)
            }),
        )
        .await
        .map_err(|_| format!("node {name} not Ready within {WAIT:?}"))?
        .map_err(|e| format!("watch node {name}: {e}"))?;
    }
    let istioctl = Istioctl::new(binaries.clone(), &kubeconfig);
    istioctl
        .apply_gateway_api_crds()
        .await
        .map_err(|e| e.to_string())?;
    let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("istiod");
    let mut revisions = BTreeMap::new();
    let mut istiods = Vec::new();
    for (revision, profile) in REVISIONS {
        let ports = IstiodPorts::pick().map_err(|e| e.to_string())?;
        let install = InstallOptions {
            profile: profile.to_owned(),
            revision: revision.to_owned(),
            webhook: ports.webhook_address(),
            sets: Vec::new(),
        };
        istioctl
            .install(&install)
            .await
            .map_err(|e| e.to_string())?;
        let istiod = Istiod::start(&binaries, &kubeconfig, revision, ports, &log_dir)
            .await
            .map_err(|e| e.to_string())?;
        revisions.insert(
            revision.to_owned(),
            Revision {
                install,
                ports,
                log: istiod.log.clone(),
            },
        );
        istiods.push(istiod);
    }
    Ok((
        IstioBed {
            istioctl,
            revisions,
            nodes,
        },
        istiods,
    ))
}
