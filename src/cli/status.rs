//! `ztunnel-rollout status [ROLLOUT] [--watch]`: progress per wave, nodes by phase, the
//! nodes in flight with their step (the connections still open through an old ztunnel,
//! a bake's countdown and the gates' current values are in their messages), and what
//! holds the rollout — from the rollout's status, re-rendered on every change of it when
//! watching.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::control::{get_rollout, waves};
use super::{GlobalArgs, Output, print_structured};
use crate::api::ZtunnelRollout;
use ztunnel_rollout_core::rollout::node_machine::NodePhase;
use ztunnel_rollout_core::rollout::planner::Wave;

#[derive(Args)]
pub struct StatusArgs {
    /// The ZtunnelRollout's name; all rollouts when omitted.
    pub rollout: Option<String>,
    /// Keep printing on every change (until the rollout is finished, or Ctrl-C).
    #[arg(long, short = 'w')]
    pub watch: bool,
}

/// One wave's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveProgress {
    pub name: String,
    pub nodes: usize,
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    pub in_flight: usize,
    /// Uncordoned, baking (`health.bake`).
    pub baking: usize,
    pub pending: usize,
}

/// What `status` shows of one rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    pub name: String,
    pub phase: String,
    pub current_wave: Option<String>,
    pub target_revision: Option<String>,
    /// Why it stands where it stands: the message of the condition that explains it.
    pub reason: Option<String>,
    pub next_window: Option<String>,
    pub awaiting_approval: Option<String>,
    pub waves: Vec<WaveProgress>,
    pub in_flight: Vec<crate::api::ztunnel_rollout::NodeStatus>,
    pub failed: Vec<crate::api::ztunnel_rollout::NodeStatus>,
    /// When each baking node's bake ends at the earliest (its uncordon plus
    /// `health.bake`; a check not healthy meanwhile restarts it), RFC 3339, and the
    /// seconds left then.
    pub bake_ends: BTreeMap<String, (String, i64)>,
}

/// Folds the rollout's status over its waves, at `now`. Pure.
pub fn view(r: &ZtunnelRollout, waves: &[Wave], now: Timestamp) -> RolloutView {
    let status = r.status.clone().unwrap_or_default();
    let phase_of: BTreeMap<&str, NodePhase> = status
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.phase))
        .collect();
    let waves = waves
        .iter()
        .map(|w| {
            let mut p = WaveProgress {
                name: w.name.clone(),
                nodes: w.nodes.len(),
                done: 0,
                skipped: 0,
                failed: 0,
                in_flight: 0,
                baking: 0,
                pending: 0,
            };
            for n in &w.nodes {
                match phase_of
                    .get(n.as_str())
                    .copied()
                    .unwrap_or(NodePhase::Pending)
                {
                    NodePhase::Pending => p.pending += 1,
                    NodePhase::Done => p.done += 1,
                    NodePhase::Skipped => p.skipped += 1,
                    NodePhase::Failed => p.failed += 1,
                    NodePhase::Baking => p.baking += 1,
                    _ => p.in_flight += 1,
                }
            }
            p
        })
        .collect();
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
    // The condition that explains the phase.
    let explains = match phase.as_str() {
        "Paused" => "Paused",
        "Blocked" | "RolledBack" => "Degraded",
        "Complete" => "Complete",
        _ => "Progressing",
    };
    let reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == explains)
        .map(|c| format!("{}: {}", c.reason, c.message));
    let pick = |wanted: fn(NodePhase) -> bool| {
        status
            .nodes
            .iter()
            .filter(|n| wanted(n.phase))
            .cloned()
            .collect::<Vec<_>>()
    };
    let bake = r
        .spec
        .health
        .bake
        .as_deref()
        .and_then(|b| ztunnel_rollout_core::duration::parse_duration(b).ok())
        .and_then(|b| k8s_openapi::jiff::SignedDuration::try_from(b).ok());
    let bake_ends = status
        .nodes
        .iter()
        .filter(|n| n.phase == NodePhase::Baking)
        .filter_map(|n| {
            let since: Timestamp = n.since.parse().ok()?;
            let ends = since.checked_add(bake?).ok()?;
            let left = ends.duration_since(now).as_secs().max(0);
            Some((n.name.clone(), (ends.to_string(), left)))
        })
        .collect();
    RolloutView {
        name: r.name_any(),
        phase,
        current_wave: status.current_wave.clone(),
        target_revision: status.target_revision.clone(),
        reason,
        next_window: status.next_window.clone(),
        awaiting_approval: status.awaiting_approval.clone(),
        waves,
        in_flight: pick(|p| !p.is_terminal() && p != NodePhase::Pending),
        failed: pick(|p| p == NodePhase::Failed),
        bake_ends,
    }
}

/// The text form. Pure.
pub fn render(v: &RolloutView) -> String {
    let mut out = format!(
        "ztunnelrollout {}: {}{}{}\n",
        v.name,
        v.phase,
        v.current_wave
            .as_ref()
            .map(|w| format!(", wave {w}"))
            .unwrap_or_default(),
        v.target_revision
            .as_ref()
            .map(|t| format!(", target revision {t}"))
            .unwrap_or_default()
    );
    if let Some(reason) = &v.reason {
        out.push_str(&format!("  {reason}\n"));
    }
    if let Some(w) = &v.awaiting_approval {
        out.push_str(&format!(
            "  waiting for approval: ztunnel-rollout approve {} --wave {w}\n",
            v.name
        ));
    }
    if let Some(t) = &v.next_window {
        out.push_str(&format!("  next maintenance window: {t}\n"));
    }
    out.push_str(&format!(
        "\n{:<24} {:>5} {:>5} {:>8} {:>7} {:>10} {:>7} {:>8}\n",
        "WAVE", "NODES", "DONE", "SKIPPED", "FAILED", "IN FLIGHT", "BAKING", "PENDING"
    ));
    for w in &v.waves {
        out.push_str(&format!(
            "{:<24} {:>5} {:>5} {:>8} {:>7} {:>10} {:>7} {:>8}\n",
            w.name, w.nodes, w.done, w.skipped, w.failed, w.in_flight, w.baking, w.pending
        ));
    }
    for (title, nodes) in [("IN FLIGHT", &v.in_flight), ("FAILED", &v.failed)] {
        if nodes.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n{title}\n{:<32} {:<16} {:<22} MESSAGE\n",
            "NODE", "PHASE", "SINCE"
        ));
        for n in nodes.iter() {
            let countdown = match v.bake_ends.get(&n.name) {
                Some((at, left)) => format!("bake ends at {at} at the earliest ({left}s left); "),
                None => String::new(),
            };
            out.push_str(&format!(
                "{:<32} {:<16} {:<22} {countdown}{}\n",
                n.name,
                n.phase.as_str(),
                n.since,
                n.message
            ));
        }
    }
    out
}

fn finished(phase: &str) -> bool {
    matches!(phase, "Complete" | "Aborted" | "RolledBack")
}

pub async fn run(args: &StatusArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client =
        crate::kube_client::client(global.kubeconfig.as_deref(), global.context.as_deref()).await?;
    let api: Api<ZtunnelRollout> = Api::all(client.clone());
    let print = |views: &[RolloutView]| -> anyhow::Result<()> {
        match global.output {
            Output::Text => {
                for v in views {
                    println!("{}", render(v));
                }
            }
            _ => print_structured(global.output, &views)?,
        }
        Ok(())
    };
    let Some(name) = &args.rollout else {
        let mut views = Vec::new();
        for r in api
            .list(&Default::default())
            .await
            .context("listing ztunnelrollouts")?
        {
            let w = waves(&client, &r.spec).await.unwrap_or_default();
            views.push(view(&r, &w, Timestamp::now()));
        }
        if views.is_empty() && global.output == Output::Text {
            println!("no ztunnelrollouts");
        }
        print(&views)?;
        return Ok(ExitCode::SUCCESS);
    };
    let r = get_rollout(&client, name).await?;
    let w = waves(&client, &r.spec).await?;
    print(&[view(&r, &w, Timestamp::now())])?;
    if !args.watch || finished(&view(&r, &w, Timestamp::now()).phase) {
        return Ok(ExitCode::SUCCESS);
    }
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = std::pin::pin!(watcher(api, config).applied_objects());
    let mut last = view(&r, &w, Timestamp::now());
    while let Some(r) = changes.next().await {
        let r = r.context("watching the rollout")?;
        let v = view(&r, &w, Timestamp::now());
        if v != last {
            print(std::slice::from_ref(&v))?;
            if finished(&v.phase) {
                break;
            }
            last = v;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ztunnel_rollout::{NodeStatus, ZtunnelRolloutStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn node(name: &str, phase: NodePhase, message: &str) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            phase,
            since: "2026-11-29T10:00:00Z".into(),
            started: None,
            was_unschedulable: Some(false),
            message: message.into(),
        }
    }

    fn rollout(
        phase: &str,
        nodes: Vec<NodeStatus>,
        condition: (&str, &str, &str),
    ) -> ZtunnelRollout {
        let mut r: ZtunnelRollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "ztunnel-rollout.dev/v1alpha1", "kind": "ZtunnelRollout",
            "metadata": { "name": "demo" },
            "spec": { "waves": { "groupBy": "zone", "maxUnavailable": 1 } }
        }))
        .unwrap();
        r.status = Some(ZtunnelRolloutStatus {
            phase: Some(phase.into()),
            current_wave: Some("b".into()),
            nodes,
            conditions: vec![Condition {
                type_: condition.0.into(),
                status: "True".into(),
                reason: condition.1.into(),
                message: condition.2.into(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: Some(1),
            }],
            ..Default::default()
        });
        r
    }

    fn waves() -> Vec<Wave> {
        vec![
            Wave {
                name: "a".into(),
                nodes: vec!["a1".into(), "a2".into()],
            },
            Wave {
                name: "b".into(),
                nodes: vec!["b1".into(), "b2".into(), "b3".into()],
            },
        ]
    }

    fn at() -> Timestamp {
        "2026-11-29T10:00:30Z".parse().unwrap()
    }

    #[test]
    fn a_baking_node_shows_its_countdown_and_the_gates_values() {
        let mut r = rollout(
            "Progressing",
            vec![
                node(
                    "a1",
                    NodePhase::Baking,
                    "baking: soaking until 2026-11-29T10:02:00Z (20s healthy so far): ztunnel proxies: 3 active proxies, none pending",
                ),
                node(
                    "a2",
                    NodePhase::Drained,
                    "waiting before deleting ztunnel pod ztunnel-x: 3 connection(s) of shop/web, 1 of shop/db",
                ),
            ],
            (
                "Progressing",
                "NodesInProgress",
                "wave a: 1 in flight, 1 baking",
            ),
        );
        r.spec.0.health.bake = Some("2m".into());
        let v = view(&r, &waves(), at());
        assert_eq!((v.waves[0].baking, v.waves[0].in_flight), (1, 1));
        assert_eq!(
            v.bake_ends.get("a1"),
            Some(&("2026-11-29T10:02:00Z".to_owned(), 90))
        );
        let text = render(&v);
        assert!(
            text.contains(
                "bake ends at 2026-11-29T10:02:00Z at the earliest (90s left); baking: soaking"
            ) && text.contains("3 active proxies, none pending"),
            "{text}"
        );
        assert!(
            text.contains("3 connection(s) of shop/web, 1 of shop/db"),
            "{text}"
        );
    }

    #[test]
    fn nodes_are_counted_per_wave_and_the_ones_in_flight_listed_with_their_step() {
        let r = rollout(
            "Progressing",
            vec![
                node("a1", NodePhase::Done, "uncordoned"),
                node("a2", NodePhase::Skipped, "already current"),
                node("b1", NodePhase::ZtunnelReady, "verifying: soaking"),
            ],
            ("Progressing", "NodesInProgress", "wave b: 1 in flight"),
        );
        let v = view(&r, &waves(), at());
        assert_eq!(
            v.waves[0],
            WaveProgress {
                name: "a".into(),
                nodes: 2,
                done: 1,
                skipped: 1,
                failed: 0,
                in_flight: 0,
                baking: 0,
                pending: 0
            }
        );
        assert_eq!((v.waves[1].in_flight, v.waves[1].pending), (1, 2));
        assert_eq!(v.in_flight.len(), 1);
        let text = render(&v);
        assert!(
            text.contains("NodesInProgress: wave b: 1 in flight"),
            "{text}"
        );
        assert!(
            text.contains("b1")
                && text.contains("ZtunnelReady")
                && text.contains("verifying: soaking"),
            "{text}"
        );
    }

    #[test]
    fn a_held_rollout_says_what_holds_it() {
        let mut r = rollout(
            "Paused",
            vec![node(
                "a1",
                NodePhase::Failed,
                "verification failed: value is 3.000, above the maximum 0.500",
            )],
            (
                "Paused",
                "NodeFailed",
                "wave a: 1 of at most 0 tolerated node failures",
            ),
        );
        let text = render(&view(&r, &waves(), at()));
        assert!(text.contains("NodeFailed: wave a"), "{text}");
        assert!(
            text.contains("FAILED") && text.contains("above the maximum 0.500"),
            "{text}"
        );
        r.status.as_mut().unwrap().awaiting_approval = Some("b".into());
        r.status.as_mut().unwrap().phase = Some("AwaitingApproval".into());
        let text = render(&view(&r, &waves(), at()));
        assert!(
            text.contains("ztunnel-rollout approve demo --wave b"),
            "{text}"
        );
    }
}
