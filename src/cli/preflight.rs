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
    /// The ztunnel DaemonSet: NAME (in --ztunnel-namespace) or NAMESPACE/NAME (the
    /// agent's form of the same variable).
    #[arg(
        long,
        default_value = "ztunnel",
        env = "ZTUNNEL_ROLLOUT_ZTUNNEL_DAEMONSET",
        value_parser = parse_daemon_set
    )]
    pub ztunnel_daemonset: DaemonSetArg,
    /// The istio-cni DaemonSet, whose version is judged when it exists: NAME (in
    /// --ztunnel-namespace) or NAMESPACE/NAME.
    #[arg(
        long,
        default_value = "istio-cni-node",
        env = "ZTUNNEL_ROLLOUT_CNI_DAEMONSET",
        value_parser = parse_daemon_set
    )]
    pub cni_daemonset: DaemonSetArg,
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

/// `NAME` or `NAMESPACE/NAME`.
#[derive(Debug, Clone)]
pub struct DaemonSetArg {
    pub namespace: Option<String>,
    pub name: String,
}

impl DaemonSetArg {
    fn in_namespace<'a>(&'a self, default: &'a str) -> (&'a str, &'a str) {
        (self.namespace.as_deref().unwrap_or(default), &self.name)
    }
}

fn parse_daemon_set(text: &str) -> Result<DaemonSetArg, String> {
    let bad = || format!("{text:?} is not NAME or NAMESPACE/NAME");
    match text.split_once('/') {
        None if !text.is_empty() => Ok(DaemonSetArg {
            namespace: None,
            name: text.to_owned(),
        }),
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(DaemonSetArg {
                namespace: Some(ns.to_owned()),
                name: name.to_owned(),
            })
        }
        _ => Err(bad()),
    }
}

pub async fn run(args: &PreflightArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client =
        crate::kube_client::client(global.kubeconfig.as_deref(), global.context.as_deref()).await?;
    let nodes = match &args.node_selector {
        Some(text) => ztunnel_rollout_core::label_selector::Selector::parse(text)
            .map_err(|e| anyhow::anyhow!("--node-selector: {e}"))?,
        None => ztunnel_rollout_core::label_selector::Selector::everything(),
    };
    let mut snapshot = crate::preflight::snapshot(
        &client,
        args.ztunnel_daemonset.in_namespace(&args.ztunnel_namespace),
        args.cni_daemonset.in_namespace(&args.ztunnel_namespace),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_sets_are_named_alone_or_with_their_namespace() {
        let parsed = |t: &str| parse_daemon_set(t).map(|d| (d.namespace, d.name));
        assert_eq!(parsed("ztunnel"), Ok((None, "ztunnel".into())));
        assert_eq!(
            parsed("istio-system/istio-cni-node"),
            Ok((Some("istio-system".into()), "istio-cni-node".into()))
        );
        let arg = parse_daemon_set("kube-system/ztunnel").expect("parsed");
        assert_eq!(arg.in_namespace("istio-system"), ("kube-system", "ztunnel"));
        let arg = parse_daemon_set("ztunnel").expect("parsed");
        assert_eq!(
            arg.in_namespace("istio-system"),
            ("istio-system", "ztunnel")
        );
        for bad in ["", "/ztunnel", "istio-system/", "a/b/c"] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
    }
}
