//! The command line: kubectl-like global flags and one module per subcommand.

pub mod agent;
pub mod control;
pub mod drain;
pub mod errors;
pub mod plan;
pub mod preflight;
pub mod sidecar;
pub mod status;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `--version`: the crate's version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ZTUNNEL_ROLLOUT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "ztunnel-rollout",
    version = VERSION,
    about = "Upgrades Istio ambient mode's ztunnel node by node without dropping traffic"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true, env = "ZTUNNEL_ROLLOUT_CONTEXT")]
    pub context: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text, env = "ZTUNNEL_ROLLOUT_OUTPUT")]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

impl GlobalArgs {
    /// A client for the kubeconfig and context these flags name.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(crate::kube_client::client(self.kubeconfig.as_deref(), self.context.as_deref()).await?)
    }
}

/// `--labels k=v[,k=v]`: labels to put on a created object, each checked as a selector
/// term would be.
pub fn parse_labels(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    use anyhow::Context;
    let mut map = std::collections::BTreeMap::new();
    for pair in text.split(',') {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--labels: {pair:?} is not k=v"))?;
        ztunnel_rollout_core::label_selector::Selector::parse(&format!("{k}={v}"))
            .with_context(|| format!("--labels: {pair:?}"))?;
        map.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(map)
}

/// Prints `value` as JSON or YAML (`-o json|yaml`).
pub fn print_structured<T: serde::Serialize>(output: Output, value: &T) -> anyhow::Result<()> {
    match output {
        Output::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        _ => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the rollout agent: leader-elected, it rolls every ZtunnelRollout's DaemonSet
    /// revision out node by node.
    Agent(agent::AgentArgs),
    /// Cordon a node and drain it through the Eviction API, respecting PodDisruptionBudgets.
    Drain(drain::DrainArgs),
    /// Check the cluster against the upgrade runbook's guardrails; exit 1 on errors.
    Preflight(preflight::PreflightArgs),
    /// Show what a rollout would do — waves, node order, evictions, blockers — changing
    /// nothing.
    Plan(plan::PlanArgs),
    /// Show a rollout's progress per wave, its nodes in flight and what holds it.
    Status(status::StatusArgs),
    /// Start no new node of a rollout; nodes in flight finish their sequence.
    Pause(control::RolloutArg),
    /// Let a paused rollout go on.
    Resume(control::RolloutArg),
    /// Stop a rollout for good: drains stop, the nodes it cordoned are uncordoned.
    Abort(control::RolloutArg),
    /// Let a wave of a rollout with `approval: Manual` start.
    Approve(control::ApproveArgs),
    /// Create a rollout limited to the nodes a label selector picks.
    Trigger(control::TriggerArgs),
    /// Move sidecar namespaces between Istio revisions or tags, roll them back, follow
    /// the migrations.
    Sidecar(sidecar::SidecarArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(CompletionArgs),
}

#[derive(Args)]
pub struct CompletionArgs {
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `shell` to stdout.
pub fn completion(args: &CompletionArgs) -> anyhow::Result<std::process::ExitCode> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "ztunnel-rollout",
        &mut std::io::stdout(),
    );
    Ok(std::process::ExitCode::SUCCESS)
}
