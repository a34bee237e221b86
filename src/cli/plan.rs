//! `ztunnel-rollout plan -f rollout.yaml | ROLLOUT`: what the rollout would do — waves,
//! nodes in order, what each drain would evict and what would block it — changing
//! nothing.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::api::ListParams;

use super::control::get_rollout;
use super::{GlobalArgs, Output, print_structured};
use crate::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::plan_preview::{preview, render};
use ztunnel_rollout_core::rollout::settings::settings;

#[derive(Args)]
pub struct PlanArgs {
    /// An existing ZtunnelRollout to preview.
    pub rollout: Option<String>,
    /// A ZtunnelRollout manifest (YAML or JSON; `-` reads standard input).
    #[arg(short = 'f', long = "filename", conflicts_with = "rollout")]
    pub file: Option<std::path::PathBuf>,
}

/// Reads a ZtunnelRollout manifest, naming the file and what is wrong with it.
pub fn read_manifest(path: &std::path::Path) -> anyhow::Result<ZtunnelRollout> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let rollout: ZtunnelRollout = serde_saphyr::from_str(&text)
        .with_context(|| format!("{} is not a valid ZtunnelRollout", path.display()))?;
    Ok(rollout)
}

pub async fn run(args: &PlanArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let from_file = args.file.as_deref().map(read_manifest).transpose()?;
    // Check the spec before touching the cluster.
    if let Some(r) = &from_file {
        settings(&r.spec)?;
    }
    let client =
        crate::kube_client::client(global.kubeconfig.as_deref(), global.context.as_deref()).await?;
    let rollout = match (from_file, &args.rollout) {
        (Some(r), _) => r,
        (None, Some(name)) => get_rollout(&client, name).await?,
        (None, None) => bail!("name a rollout, or give one with -f FILE"),
    };
    let s = settings(&rollout.spec)?;
    let lp = ListParams::default();
    let nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .context("listing nodes")?
        .items;
    let pods = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .context("listing pods")?
        .items;
    let pdbs = Api::<PodDisruptionBudget>::all(client.clone())
        .list(&lp)
        .await
        .context("listing PodDisruptionBudgets")?
        .items;
    let ds_ref = &rollout.spec.daemon_set;
    let ztunnel = Api::<DaemonSet>::namespaced(client.clone(), &ds_ref.namespace)
        .get_opt(&ds_ref.name)
        .await
        .with_context(|| format!("reading DaemonSet {}/{}", ds_ref.namespace, ds_ref.name))?;
    if ztunnel.is_none() {
        eprintln!(
            "warning: DaemonSet {}/{} not found: the rollout would be Blocked until it exists",
            ds_ref.namespace, ds_ref.name
        );
    }
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .list(&lp)
        .await
        .context("listing namespaces")?
        .items;
    let ambient = ztunnel_rollout_core::health::connections::ambient_namespaces(&namespaces);
    let plan = preview(
        &s,
        &nodes,
        &pods,
        &pdbs,
        &ambient,
        ztunnel.as_ref(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    if plan.waves.is_empty() && plan.skipped.is_empty() {
        bail!("the rollout's nodeSelector matches no node");
    }
    match global.output {
        Output::Text => print!("{}", render(&plan)),
        _ => print_structured(global.output, &plan)?,
    }
    Ok(ExitCode::SUCCESS)
}
