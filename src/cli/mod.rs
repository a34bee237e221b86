//! The command line: kubectl-like global flags and one module per subcommand.

pub mod agent;
pub mod drain;
pub mod preflight;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ztunnel-rollout",
    version,
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
}
