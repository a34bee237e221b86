//! `ztunnel-rollout drain NODE`: kubectl drain's flags, without its failure modes.

use std::time::Duration;

use clap::Args;

use super::{GlobalArgs, Output};
use crate::drain::filter::FilterOptions;
use crate::drain::{DrainOptions, DrainReport, Drainer, cordon};
use ztunnel_rollout_core::duration::parse_duration;
use ztunnel_rollout_core::label_selector::Selector;

#[derive(Args)]
pub struct DrainArgs {
    /// The node to drain.
    pub node: String,
    /// Show what would be evicted, refused and skipped; change nothing (not even cordon).
    #[arg(long, env = "ZTUNNEL_ROLLOUT_DRAIN_DRY_RUN")]
    pub dry_run: bool,
    /// Deadline for the whole drain (e.g. 90s, 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "ZTUNNEL_ROLLOUT_DRAIN_TIMEOUT")]
    pub timeout: Duration,
    /// Grace period in seconds for evicted pods; -1 keeps each pod's own.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, env = "ZTUNNEL_ROLLOUT_DRAIN_GRACE_PERIOD")]
    pub grace_period: i64,
    /// Evict pods with emptyDir volumes (their data is deleted).
    #[arg(long, env = "ZTUNNEL_ROLLOUT_DRAIN_DELETE_EMPTYDIR_DATA")]
    pub delete_emptydir_data: bool,
    /// Evict pods that no controller will recreate.
    #[arg(long, env = "ZTUNNEL_ROLLOUT_DRAIN_FORCE")]
    pub force: bool,
    /// Drain only the pods matching this label selector; the others are left alone
    /// (e.g. `app!=batch` leaves the batch pods alone).
    #[arg(long, value_parser = Selector::parse, env = "ZTUNNEL_ROLLOUT_DRAIN_POD_SELECTOR")]
    pub pod_selector: Option<Selector>,
    /// DELETE pods instead of evicting them. This BYPASSES PodDisruptionBudgets.
    #[arg(long, env = "ZTUNNEL_ROLLOUT_DRAIN_DISABLE_EVICTION")]
    pub disable_eviction: bool,
    /// Do not wait for pods terminating longer than this (e.g. 30s; pods on a dead
    /// node never finish). 0 waits for all.
    #[arg(long, default_value = "0s", value_parser = parse_duration, env = "ZTUNNEL_ROLLOUT_DRAIN_SKIP_WAIT_FOR_DELETE_TIMEOUT")]
    pub skip_wait_for_delete_timeout: Duration,
    /// Eviction requests in flight at once (PDBs still decide what may go).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..), env = "ZTUNNEL_ROLLOUT_DRAIN_CONCURRENCY")]
    pub concurrency: u16,
}

impl DrainArgs {
    pub fn options(&self) -> DrainOptions {
        DrainOptions {
            filter: FilterOptions {
                delete_emptydir_data: self.delete_emptydir_data,
                force: self.force,
                pod_selector: self.pod_selector.clone().unwrap_or_default(),
                skip_selector: None,
                skip_wait_for_delete_timeout: (!self.skip_wait_for_delete_timeout.is_zero())
                    .then_some(self.skip_wait_for_delete_timeout),
            },
            timeout: self.timeout,
            grace_period_seconds: (self.grace_period >= 0).then_some(self.grace_period),
            disable_eviction: self.disable_eviction,
            concurrency: usize::from(self.concurrency),
            dry_run: self.dry_run,
            ..Default::default()
        }
    }
}

fn print(report: &DrainReport, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Text => print!("{}", report.render_text()),
        Output::Json | Output::Yaml => super::print_structured(output, report)?,
    }
    Ok(())
}

/// Runs the command; the exit code is non-zero unless the drain completed.
pub async fn run(args: &DrainArgs, global: &GlobalArgs) -> anyhow::Result<std::process::ExitCode> {
    let client =
        crate::kube_client::client(global.kubeconfig.as_deref(), global.context.as_deref()).await?;
    let drainer = Drainer::new(client.clone());
    let mut opts = args.options();
    let node = args.node.as_str();

    // Refusals are found before the node is touched: a refused drain changes nothing.
    if !opts.dry_run && drainer.plan(node, &opts).await?.has_refusals() {
        opts.dry_run = true;
        let report = drainer.drain(node, &opts).await?;
        print(&report, global.output)?;
        eprintln!("drain refused: nothing was cordoned or evicted");
        return Ok(std::process::ExitCode::FAILURE);
    }
    if !opts.dry_run {
        let changed = cordon(&client, node).await?;
        eprintln!(
            "node/{node} {}",
            if changed {
                "cordoned"
            } else {
                "already cordoned"
            }
        );
    }
    let report = drainer.drain(node, &opts).await?;
    print(&report, global.output)?;
    if report.complete {
        if !opts.dry_run {
            eprintln!("node/{node} drained");
        }
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        if !opts.dry_run {
            eprintln!(
                "node/{node} NOT drained; it stays cordoned (kubectl uncordon {node} to undo)"
            );
        }
        Ok(std::process::ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_options() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: DrainArgs,
        }
        let t = T::parse_from([
            "t",
            "n1",
            "--timeout",
            "2m",
            "--grace-period",
            "10",
            "--force",
            "--pod-selector",
            "app!=db",
            "--skip-wait-for-delete-timeout",
            "30s",
        ]);
        let o = t.a.options();
        assert_eq!(o.timeout, Duration::from_secs(120));
        assert_eq!(o.grace_period_seconds, Some(10));
        assert!(o.filter.force && !o.filter.delete_emptydir_data && !o.disable_eviction);
        assert_eq!(
            o.filter.skip_wait_for_delete_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(o.filter.pod_selector.to_string(), "app!=db");
        let d = T::parse_from(["t", "n1"]).a.options();
        assert_eq!(d.grace_period_seconds, None);
        assert_eq!(d.filter.skip_wait_for_delete_timeout, None);
        assert!(T::try_parse_from(["t", "n1", "--pod-selector", "a b=c"]).is_err());
        assert!(T::try_parse_from(["t", "n1", "--concurrency", "0"]).is_err());
    }
}
