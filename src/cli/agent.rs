//! `ztunnel-rollout agent`: the leader-elected controller, in a cluster or from a
//! kubeconfig.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::GlobalArgs;
use crate::agent::rollouts::RolloutSettings;
use crate::agent::{self, AgentConfig};
use crate::leader::{LeaderConfig, identity_from_env};
use ztunnel_rollout_core::duration::parse_duration;
use ztunnel_rollout_core::rollout::pass::PassConfig;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Namespace of the leader-election Lease (in a cluster: the agent's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ztunnel-rollout")]
    pub lease_namespace: String,
    #[arg(
        long,
        env = "ZTUNNEL_ROLLOUT_LEASE_NAME",
        default_value = "ztunnel-rollout"
    )]
    pub lease_name: String,
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "ZTUNNEL_ROLLOUT_LEASE_DURATION")]
    pub lease_duration: Duration,
    /// This replica's name in the Lease (default: $POD_NAME, else host and process id).
    #[arg(long, env = "ZTUNNEL_ROLLOUT_IDENTITY")]
    pub identity: Option<String>,
    /// Where /metrics, /livez and /readyz are served (port 0: any free port).
    #[arg(
        long,
        default_value = "0.0.0.0:8080",
        env = "ZTUNNEL_ROLLOUT_METRICS_ADDRESS"
    )]
    pub metrics_address: SocketAddr,
    /// Only handle rollouts whose labels match this selector (e.g. `team=payments`), so
    /// several agents can share a cluster.
    #[arg(long, value_parser = parse_selector, env = "ZTUNNEL_ROLLOUT_SELECTOR")]
    pub rollout_selector: Option<String>,
    /// The node this replica runs on (in a cluster, from the downward API): its node
    /// goes last in its wave, and the lease is handed over before it is drained.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// At most one status write per rollout in this interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "ZTUNNEL_ROLLOUT_STATUS_INTERVAL")]
    pub status_interval: Duration,
    /// How often the leader looks for nodes left cordoned by a rollout that no longer
    /// exists (removed without its finalizer) and releases them.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "ZTUNNEL_ROLLOUT_ORPHAN_SWEEP_INTERVAL")]
    pub orphan_sweep_interval: Duration,
    /// `/livez` fails (503) once the agent's loop has not turned for this long: a pass
    /// stuck on a call that never answers. Passes take milliseconds; the loop also turns
    /// while it waits for the lease or for events, so only a stuck replica fails.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "ZTUNNEL_ROLLOUT_LIVENESS_TIMEOUT")]
    pub liveness_timeout: Duration,
    /// A URL prefix health gates' Prometheus URLs may use (repeat the flag, or separate
    /// with commas in the variable), e.g. `http://prometheus.monitoring:9090`. None by
    /// default: a rollout with Prometheus queries is Blocked until its URL is allowed.
    /// Link-local and cloud metadata addresses and non-http(s) URLs are refused always.
    #[arg(
        long = "allowed-prometheus-url-prefix",
        env = "ZTUNNEL_ROLLOUT_ALLOWED_PROMETHEUS_URL_PREFIXES",
        value_delimiter = ',',
        value_parser = parse_url_prefix
    )]
    pub allowed_prometheus_url_prefixes: Vec<String>,
    /// The ztunnel DaemonSet (`NAMESPACE/NAME`) this agent may replace the pods of, as
    /// its RBAC allows; a rollout naming another is Blocked before any node. Default:
    /// any (the credentials decide).
    #[arg(long = "ztunnel-daemonset", env = "ZTUNNEL_ROLLOUT_ZTUNNEL_DAEMONSET", value_parser = parse_daemon_set)]
    pub ztunnel_daemon_set: Option<(String, String)>,
    /// The istio-cni DaemonSet (`NAMESPACE/NAME`) rollouts' `spec.cni` may name, as the
    /// agent's RBAC allows. Default: any, unless --ztunnel-daemonset is set (then none).
    #[arg(long = "cni-daemonset", env = "ZTUNNEL_ROLLOUT_CNI_DAEMONSET", value_parser = parse_daemon_set)]
    pub cni_daemon_set: Option<(String, String)>,
}

pub async fn run(args: &AgentArgs, global: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.lease_duration < Duration::from_secs(3) {
        anyhow::bail!(
            "--lease-duration {:?} is too short: at least 3s",
            args.lease_duration
        );
    }
    if args.orphan_sweep_interval < Duration::from_secs(1) {
        anyhow::bail!(
            "--orphan-sweep-interval {:?} is too short: at least 1s",
            args.orphan_sweep_interval
        );
    }
    if args.liveness_timeout < Duration::from_secs(1) {
        anyhow::bail!(
            "--liveness-timeout {:?} is too short: at least 1s",
            args.liveness_timeout
        );
    }
    let client =
        crate::kube_client::client(global.kubeconfig.as_deref(), global.context.as_deref()).await?;
    let config = AgentConfig {
        leader: LeaderConfig {
            namespace: args.lease_namespace.clone(),
            lease_name: args.lease_name.clone(),
            identity: args.identity.clone().unwrap_or_else(identity_from_env),
            lease_duration: args.lease_duration,
        },
        metrics_address: args.metrics_address,
        rollouts: RolloutSettings {
            config: PassConfig {
                status_interval: k8s_openapi::jiff::SignedDuration::try_from(args.status_interval)
                    .unwrap_or(k8s_openapi::jiff::SignedDuration::from_secs(1)),
                allowed_prometheus_url_prefixes: args
                    .allowed_prometheus_url_prefixes
                    .iter()
                    .filter(|p| !p.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .into(),
                ztunnel_daemon_set: args.ztunnel_daemon_set.clone(),
                cni_daemon_set: args.cni_daemon_set.clone(),
                ..Default::default()
            },
            agent_node: args.node_name.clone(),
            orphan_sweep_interval: args.orphan_sweep_interval,
            namespace: args.lease_namespace.clone(),
        },
        resync: Duration::from_secs(30),
        rollout_selector: args.rollout_selector.clone(),
        liveness_bound: args.liveness_timeout,
    };
    agent::run(client, config, shutdown_signal())
        .await
        .context("agent")?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn parse_selector(text: &str) -> Result<String, String> {
    ztunnel_rollout_core::label_selector::Selector::parse(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// `NAMESPACE/NAME`.
fn parse_daemon_set(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

/// An allowed URL prefix; empty (an empty environment variable, as the chart sets with
/// no prefixes) allows nothing and is dropped.
fn parse_url_prefix(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Ok(String::new());
    }
    ztunnel_rollout_core::health::url_policy::check_target(text).map(|()| text.to_owned())
}

/// Ctrl-C or SIGTERM (what the kubelet sends).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn an_empty_prefix_list_allows_nothing_and_a_bad_prefix_is_refused() {
        // As the chart's empty `healthGates.allowedPrometheusUrlPrefixes` sets it.
        let cli = Cli::try_parse_from(["agent", "--allowed-prometheus-url-prefix", ""])
            .expect("an empty list parses");
        assert_eq!(cli.agent.allowed_prometheus_url_prefixes, [""]);
        let cli = Cli::try_parse_from([
            "agent",
            "--allowed-prometheus-url-prefix",
            "http://prometheus.monitoring:9090,https://thanos",
        ])
        .expect("two prefixes");
        assert_eq!(cli.agent.allowed_prometheus_url_prefixes.len(), 2);
        let refused = Cli::try_parse_from([
            "agent",
            "--allowed-prometheus-url-prefix",
            "http://169.254.169.254",
        ]);
        assert!(refused.is_err());
    }

    #[test]
    fn the_ztunnel_daemonset_is_namespace_slash_name() {
        let cli = Cli::try_parse_from(["agent", "--ztunnel-daemonset", "istio-system/ztunnel"])
            .expect("parses");
        assert_eq!(
            cli.agent.ztunnel_daemon_set,
            Some(("istio-system".to_owned(), "ztunnel".to_owned()))
        );
        for bad in ["ztunnel", "/ztunnel", "istio-system/", "a/b/c"] {
            assert!(
                Cli::try_parse_from(["agent", "--ztunnel-daemonset", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
