//! `ztunnel-rollout preflight`: checks the cluster against the runbook's guardrails;
//! exits non-zero when any check found an error (usable as a CI gate).

use std::process::ExitCode;

use clap::Args;

use super::{GlobalArgs, Output};
use crate::preflight::checks::{self, Severity};

#[derive(Args)]
pub struct PreflightArgs {
    /// Namespace of the ztunnel DaemonSet.
    #[arg(
        long,
        default_value = "istio-system",
        env = "ZTUNNEL_ROLLOUT_ZTUNNEL_NAMESPACE"
    )]
    pub ztunnel_namespace: String,
    /// Name of the ztunnel DaemonSet.
    #[arg(
        long,
        default_value = "ztunnel",
        env = "ZTUNNEL_ROLLOUT_ZTUNNEL_DAEMONSET"
    )]
    pub ztunnel_daemonset: String,
    /// Namespace of the istio-cni DaemonSet (that of ztunnel when omitted).
    #[arg(long, env = "ZTUNNEL_ROLLOUT_CNI_NAMESPACE")]
    pub cni_namespace: Option<String>,
    /// Name of the istio-cni DaemonSet (its versions are checked when it exists).
    #[arg(
        long,
        default_value = "istio-cni-node",
        env = "ZTUNNEL_ROLLOUT_CNI_DAEMONSET"
    )]
    pub cni_daemonset: String,
    /// Where an istiod's monitoring server answers, as `[REVISION=]URL` (repeatable), for
    /// an istiod the API server cannot reach (an external control plane); every other
    /// istiod Service is asked its `/version` through the API server.
    #[arg(long = "istiod-url", value_name = "[REVISION=]URL")]
    pub istiod_urls: Vec<crate::preflight::IstiodUrl>,
    /// Check only these namespaces' pods, PDBs and Deployments (repeatable; all when
    /// omitted).
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// Check only the nodes this label selector picks.
    #[arg(long)]
    pub node_selector: Option<String>,
}

pub async fn run(args: &PreflightArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client =
        crate::kube_client::client(global.kubeconfig.as_deref(), global.context.as_deref()).await?;
    let nodes = match &args.node_selector {
        Some(text) => ztunnel_rollout_core::label_selector::Selector::parse(text)
            .map_err(|e| anyhow::anyhow!("--node-selector: {e}"))?,
        None => ztunnel_rollout_core::label_selector::Selector::everything(),
    };
    let cni_namespace = args
        .cni_namespace
        .as_deref()
        .unwrap_or(&args.ztunnel_namespace);
    let mut snapshot = crate::preflight::snapshot(
        &client,
        (&args.ztunnel_namespace, &args.ztunnel_daemonset),
        (cni_namespace, &args.cni_daemonset),
    )
    .await?
    .scoped(&args.namespaces, &nodes);
    snapshot.control_planes = crate::preflight::istiod_versions(&client, &args.istiod_urls).await?;
    let findings = checks::run(&snapshot);
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    match global.output {
        Output::Json | Output::Yaml => super::print_structured(global.output, &findings)?,
        Output::Text => {
            println!("{:<8} {:<32} {:<48} MESSAGE", "SEVERITY", "CHECK", "OBJECT");
            for f in &findings {
                let severity = serde_json::to_value(f.severity)?
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                println!(
                    "{severity:<8} {:<32} {:<48} {}",
                    f.check, f.object, f.message
                );
            }
            let warnings = findings
                .iter()
                .filter(|f| f.severity == Severity::Warning)
                .count();
            println!("{errors} error(s), {warnings} warning(s)");
        }
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
