//! Operating a rollout from the command line: `pause`, `resume`, `abort`, `approve` and
//! `trigger`. Each changes the rollout object only (the agent acts on it), checks its
//! input first, and changes nothing when the input is wrong.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::GlobalArgs;
use crate::api::ZtunnelRollout;
use crate::api::ztunnel_rollout::{DaemonSetRef, ZtunnelRolloutSpec};
use ztunnel_rollout_core::label_selector::Selector;
use ztunnel_rollout_core::rollout::overlap::{Overlap, overlap};
use ztunnel_rollout_core::rollout::planner::{NodeObservation, Wave, plan_waves};
use ztunnel_rollout_core::rollout::settings::settings;

#[derive(Args)]
pub struct RolloutArg {
    /// The ZtunnelRollout's name.
    pub rollout: String,
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The ZtunnelRollout's name.
    pub rollout: String,
    /// The wave to let start (see `ztunnel-rollout status`).
    #[arg(long)]
    pub wave: String,
}

#[derive(Args)]
pub struct TriggerArgs {
    /// Which nodes to roll, as a label selector (`pool=blue`, `zone in (a,b)`).
    #[arg(long, short = 'l')]
    pub selector: String,
    /// Name of the rollout to create (default: `trigger-` and the time).
    #[arg(long)]
    pub name: Option<String>,
    /// Node label whose values name the waves.
    #[arg(long, default_value = "topology.kubernetes.io/zone")]
    pub group_by: String,
    /// Nodes of a wave disrupted at once: a count or a percentage.
    #[arg(long, default_value = "1")]
    pub max_unavailable: String,
    /// The ztunnel DaemonSet, NAMESPACE/NAME.
    #[arg(long, default_value = "istio-system/ztunnel")]
    pub daemonset: String,
    /// Labels for the created rollout, k=v[,k=v] (e.g. to match an agent's
    /// `--rollout-selector`).
    #[arg(long)]
    pub labels: Option<String>,
    /// Print the rollout that would be created, create nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The rollout, or an error that names it and says how to list the others.
pub async fn get_rollout(client: &Client, name: &str) -> anyhow::Result<ZtunnelRollout> {
    Api::<ZtunnelRollout>::all(client.clone())
        .get_opt(name)
        .await
        .with_context(|| format!("reading ztunnelrollout {name}"))?
        .with_context(|| {
            format!(
                "ztunnelrollout {name:?} not found (list them with `kubectl get ztunnelrollouts`)"
            )
        })
}

/// The rollout's waves over the cluster's nodes now, in order.
pub async fn waves(client: &Client, spec: &ZtunnelRolloutSpec) -> anyhow::Result<Vec<Wave>> {
    let s = settings(spec)?;
    let nodes: Vec<NodeObservation> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing nodes")?
        .into_iter()
        .filter(|n| s.nodes.matches(n.labels()))
        .map(|n| {
            let group = n.labels().get(&s.waves.group_by).cloned();
            NodeObservation::pending(n.name_any(), group, 0)
        })
        .collect();
    Ok(plan_waves(&nodes, &s.waves))
}

async fn patch_spec(client: &Client, name: &str, spec: serde_json::Value) -> anyhow::Result<()> {
    Api::<ZtunnelRollout>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .with_context(|| format!("updating ztunnelrollout {name}"))?;
    Ok(())
}

pub async fn pause(args: &RolloutArg, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client = global.client().await?;
    let r = get_rollout(&client, &args.rollout).await?;
    if r.spec.paused {
        println!("ztunnelrollout {} is already paused", args.rollout);
        return Ok(ExitCode::SUCCESS);
    }
    patch_spec(&client, &args.rollout, json!({ "paused": true })).await?;
    println!(
        "ztunnelrollout {} paused: no new node starts; nodes in flight finish their sequence",
        args.rollout
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(args: &RolloutArg, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client = global.client().await?;
    let r = get_rollout(&client, &args.rollout).await?;
    if r.spec.abort {
        bail!(
            "ztunnelrollout {} was aborted; an abort is final (create a new rollout)",
            args.rollout
        );
    }
    if !r.spec.paused {
        println!("ztunnelrollout {} is not paused", args.rollout);
        return Ok(ExitCode::SUCCESS);
    }
    patch_spec(&client, &args.rollout, json!({ "paused": false })).await?;
    println!("ztunnelrollout {} resumed", args.rollout);
    Ok(ExitCode::SUCCESS)
}

pub async fn abort(args: &RolloutArg, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client = global.client().await?;
    let r = get_rollout(&client, &args.rollout).await?;
    if r.spec.abort {
        println!("ztunnelrollout {} is already aborted", args.rollout);
        return Ok(ExitCode::SUCCESS);
    }
    patch_spec(&client, &args.rollout, json!({ "abort": true })).await?;
    println!(
        "ztunnelrollout {} aborted: drains stop, the nodes it cordoned are uncordoned (never others)",
        args.rollout
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn approve(args: &ApproveArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client = global.client().await?;
    let r = get_rollout(&client, &args.rollout).await?;
    let waves = waves(&client, &r.spec).await?;
    if !waves.iter().any(|w| w.name == args.wave) {
        let names: Vec<&str> = waves.iter().map(|w| w.name.as_str()).collect();
        bail!(
            "ztunnelrollout {} has no wave {:?}; its waves: {}",
            args.rollout,
            args.wave,
            if names.is_empty() {
                "none (its nodeSelector matches no node)".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    if r.spec.approved_waves.contains(&args.wave) {
        println!(
            "wave {} of ztunnelrollout {} is already approved",
            args.wave, args.rollout
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut approved = r.spec.approved_waves.clone();
    approved.push(args.wave.clone());
    // Conditional on the version read: a concurrent approval is not lost.
    Api::<ZtunnelRollout>::all(client.clone())
        .patch(
            &args.rollout,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": { "resourceVersion": r.resource_version() },
                "spec": { "approvedWaves": approved },
            })),
        )
        .await
        .with_context(|| {
            format!(
                "approving wave {} of ztunnelrollout {}",
                args.wave, args.rollout
            )
        })?;
    println!(
        "wave {} of ztunnelrollout {} approved",
        args.wave, args.rollout
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn trigger(args: &TriggerArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let selector = Selector::parse(&args.selector)
        .with_context(|| format!("--selector {:?}", args.selector))?;
    let (namespace, name) = args
        .daemonset
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .with_context(|| format!("--daemonset {:?}: want NAMESPACE/NAME", args.daemonset))?;
    let max_unavailable = match args.max_unavailable.parse::<i32>() {
        Ok(n) => IntOrString::Int(n),
        Err(_) => IntOrString::String(args.max_unavailable.clone()),
    };
    ztunnel_rollout_core::rollout::settings::max_unavailable(&max_unavailable)
        .map_err(|e| anyhow::anyhow!("--max-unavailable: {e}"))?;
    let spec: ZtunnelRolloutSpec = serde_json::from_value(json!({
        "daemonSet": DaemonSetRef { namespace: namespace.to_owned(), name: name.to_owned() },
        "nodeSelector": selector.to_label_selector(),
        "waves": { "groupBy": args.group_by, "maxUnavailable": max_unavailable },
    }))?;
    settings(&spec)?;
    let rollout_name = args.name.clone().unwrap_or_else(|| {
        format!(
            "trigger-{}",
            k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S")
        )
    });
    let mut rollout = ZtunnelRollout::new(&rollout_name, spec);
    if let Some(labels) = &args.labels {
        rollout.metadata.labels = Some(super::parse_labels(labels)?);
    }
    let client = global.client().await?;
    let nodes = waves(&client, &rollout.spec).await?;
    let count: usize = nodes.iter().map(|w| w.nodes.len()).sum();
    if count == 0 {
        bail!(
            "--selector {:?} matches no node: nothing created",
            args.selector
        );
    }
    let waits_for = overlapping_rollouts(&client, &rollout.spec, &args.selector).await?;
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&rollout)?);
        return Ok(ExitCode::SUCCESS);
    }
    Api::<ZtunnelRollout>::all(client.clone())
        .create(&PostParams::default(), &rollout)
        .await
        .with_context(|| format!("creating ztunnelrollout {rollout_name}"))?;
    println!(
        "ztunnelrollout {rollout_name} created for {count} node(s) matching {:?} in {} wave(s)",
        args.selector,
        nodes.len()
    );
    for other in waits_for {
        println!(
            "it waits until ztunnelrollout {other} (the same DaemonSet) is finished: one rollout of a DaemonSet at a time"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses a selector that covers nodes of an active rollout (two rollouts on one node
/// would each count the other's cordons as someone else's); returns the active rollouts
/// of the same DaemonSet the new one will wait for.
async fn overlapping_rollouts(
    client: &Client,
    spec: &ZtunnelRolloutSpec,
    selector: &str,
) -> anyhow::Result<Vec<String>> {
    let s = settings(spec)?;
    let nodes: Vec<(String, Node)> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing nodes")?
        .into_iter()
        .filter(|n| s.nodes.matches(n.labels()))
        .map(|n| (n.name_any(), n))
        .collect();
    let rollouts: Vec<std::sync::Arc<ZtunnelRollout>> = Api::<ZtunnelRollout>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing ztunnelrollouts")?
        .into_iter()
        .map(std::sync::Arc::new)
        .collect();
    let mut waits_for = Vec::new();
    for (_, other) in crate::agent::snapshot::others(&rollouts) {
        if !other.active {
            continue;
        }
        match overlap(&other, &spec.daemon_set, nodes.iter().map(|(n, o)| (n, o))) {
            Some(Overlap::Nodes(shared)) => bail!(
                "--selector {selector:?} covers nodes of the active ztunnelrollout {} ({}): nothing created; wait until it is finished (ztunnel-rollout status {}) or abort it (ztunnel-rollout abort {})",
                other.name,
                shared.join(", "),
                other.name,
                other.name
            ),
            Some(Overlap::SameDaemonSet) => waits_for.push(other.name),
            None => {}
        }
    }
    Ok(waits_for)
}
