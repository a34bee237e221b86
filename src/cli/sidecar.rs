//! `ztunnel-rollout sidecar move|rollback|status`: the command-line fronts of the
//! SidecarMigration resource. `move` checks everything the agent would check first and
//! creates nothing when the migration would be refused.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::{GlobalArgs, Output, print_structured};
use crate::api::sidecar_migration::{SidecarMigration, SidecarMigrationSpec};
use ztunnel_rollout_core::label_selector::Selector;
use ztunnel_rollout_core::labels::REVISION_LABEL;
use ztunnel_rollout_core::sidecar::migration::{self, MigrationPhase, NamespaceView};
use ztunnel_rollout_core::sidecar::tags::{self, TAG_MOVE_ANNOTATION, TagMove, TagMoveRecord};
use ztunnel_rollout_core::sidecar::workloads::Workload;

#[derive(Subcommand)]
pub enum SidecarCommand {
    /// Move namespaces to another revision or tag: relabel, restart their workloads a
    /// batch at a time, verify every pod's injected revision.
    Move(MoveArgs),
    /// Move every namespace a migration changed back to its previous labels and revision.
    Rollback(MigrationArg),
    /// Show a migration's namespaces, their phase, restarted workloads and verified pods.
    Status(StatusArgs),
    /// Move a revision tag to another revision (as `istioctl tag set TAG --revision R
    /// --overwrite`), then restart and verify the namespaces that use the tag. Roll back
    /// with `sidecar rollback MIGRATION`, which moves the tag back first.
    Retag(RetagArgs),
    /// List the revision tags, the revision each points at and the namespaces using it.
    Tags,
}

#[derive(Args)]
pub struct RetagArgs {
    /// The revision tag to move (an `istio.io/tag` webhook configuration).
    pub tag: String,
    /// The revision it moves to.
    #[arg(long)]
    pub to: String,
    /// Move the tag only: the namespaces' pods keep their sidecars until restarted.
    #[arg(long)]
    pub no_restart: bool,
    /// Name of the migration that restarts the tag's namespaces (default: the tag and
    /// the time).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub pace: Pace,
    /// Labels for the migration, k=v[,k=v].
    #[arg(long)]
    pub labels: Option<String>,
    /// Say what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the migration until it finishes; exit 1 unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` follows the migration (it goes on afterwards).
    #[arg(long, default_value = "1h")]
    pub timeout: String,
}

/// How fast a migration restarts namespaces, and how long it waits for them.
#[derive(Args, Clone)]
pub struct Pace {
    /// Namespaces moved at once.
    #[arg(long, default_value_t = 1)]
    pub batch_size: u32,
    /// Workloads of a namespace restarted at once.
    #[arg(long, default_value_t = 1)]
    pub workloads_at_once: u32,
    /// How long one workload's restart may take.
    #[arg(long, default_value = "10m")]
    pub rollout_timeout: String,
    /// How long a namespace's pods may take to all show the target revision.
    #[arg(long, default_value = "2m")]
    pub verify_timeout: String,
}

#[derive(Args)]
pub struct SidecarArgs {
    #[command(subcommand)]
    pub command: SidecarCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnFailure {
    Stop,
    Rollback,
}

#[derive(Args)]
pub struct MoveArgs {
    /// A namespace to move (repeat for several, moved in this order).
    #[arg(long = "namespace", short = 'n', required_unless_present = "selector")]
    pub namespaces: Vec<String>,
    /// Or the namespaces matching this label selector, by name.
    #[arg(long, short = 'l', conflicts_with = "namespaces")]
    pub selector: Option<String>,
    /// The target revision or revision tag.
    #[arg(long)]
    pub to: String,
    /// Name of the migration (default: `<to>-` and the time).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub pace: Pace,
    /// What a failed namespace does (no further namespace starts either way).
    #[arg(long, value_enum, default_value_t = OnFailure::Stop)]
    pub on_failure: OnFailure,
    /// Move namespaces carrying both istio-injection and istio.io/rev, removing
    /// istio-injection.
    #[arg(long)]
    pub replace_injection_label: bool,
    /// Labels for the migration, k=v[,k=v] (e.g. to match an agent's `--rollout-selector`).
    #[arg(long)]
    pub labels: Option<String>,
    /// Print the migration that would be created, create nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the migration until it finishes; exit 1 unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` follows the migration (it goes on afterwards).
    #[arg(long, default_value = "1h")]
    pub timeout: String,
}

#[derive(Args)]
pub struct MigrationArg {
    /// The SidecarMigration's name.
    pub migration: String,
    /// Follow the migration until it finishes; exit 1 unless it rolled back.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` follows the migration (it goes on afterwards).
    #[arg(long, default_value = "1h")]
    pub timeout: String,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The SidecarMigration's name (all when omitted).
    pub migration: Option<String>,
    /// Keep printing changes until the migration finishes.
    #[arg(long, short = 'w', requires = "migration")]
    pub watch: bool,
}

pub async fn run(args: &SidecarArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        SidecarCommand::Move(a) => move_namespaces(a, global).await,
        SidecarCommand::Rollback(a) => rollback(a, global).await,
        SidecarCommand::Status(a) => status(a, global).await,
        SidecarCommand::Retag(a) => retag(a, global).await,
        SidecarCommand::Tags => tags(global).await,
    }
}

fn spec_of(args: &MoveArgs) -> anyhow::Result<SidecarMigrationSpec> {
    for (flag, value) in [
        ("--rollout-timeout", &args.pace.rollout_timeout),
        ("--verify-timeout", &args.pace.verify_timeout),
    ] {
        ztunnel_rollout_core::duration::parse_duration(value)
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    }
    if args.pace.batch_size == 0 || args.pace.workloads_at_once == 0 {
        bail!("--batch-size and --workloads-at-once must be at least 1");
    }
    let mut spec = json!({
        "to": args.to,
        "batchSize": args.pace.batch_size,
        "workloadsAtOnce": args.pace.workloads_at_once,
        "rolloutTimeout": args.pace.rollout_timeout,
        "verifyTimeout": args.pace.verify_timeout,
        "onFailure": match args.on_failure { OnFailure::Stop => "Stop", OnFailure::Rollback => "Rollback" },
        "replaceInjectionLabel": args.replace_injection_label,
    });
    match &args.selector {
        Some(s) => {
            let selector = Selector::parse(s).with_context(|| format!("--selector {s:?}"))?;
            spec["namespaceSelector"] = serde_json::to_value(selector.to_label_selector())?;
        }
        None => spec["namespaces"] = json!(args.namespaces),
    }
    Ok(serde_json::from_value(spec)?)
}

/// The workloads of one kind in `namespace`.
async fn list<K>(
    client: &Client,
    namespace: &str,
    plural: &str,
    workload: fn(&K) -> Workload,
) -> anyhow::Result<Vec<Workload>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {plural} in namespace {namespace}"))?
        .iter()
        .map(workload)
        .collect())
}

/// What the agent would see: namespaces with the workloads of the chosen ones, and the
/// injector webhooks.
async fn views(
    client: &Client,
    spec: &SidecarMigrationSpec,
) -> anyhow::Result<(Vec<NamespaceView>, Vec<MutatingWebhookConfiguration>)> {
    let selector = spec
        .namespace_selector
        .as_ref()
        .map(Selector::from_label_selector)
        .transpose()?;
    let lp = ListParams::default();
    let mut views = Vec::new();
    for ns in Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .context("listing namespaces")?
    {
        let name = ns.name_any();
        let labels = ns.labels().clone();
        let chosen = match (&spec.namespaces, &selector) {
            (Some(names), _) => names.contains(&name),
            (None, Some(s)) => s.matches(&labels),
            (None, None) => false,
        };
        let mut workloads = Vec::new();
        if chosen {
            workloads.extend(
                list::<Deployment>(client, &name, "deployments", Workload::from_deployment).await?,
            );
            workloads.extend(
                list::<StatefulSet>(client, &name, "statefulsets", Workload::from_stateful_set)
                    .await?,
            );
            workloads.extend(
                list::<DaemonSet>(client, &name, "daemonsets", Workload::from_daemon_set).await?,
            );
        }
        views.push(NamespaceView {
            name,
            labels,
            workloads,
        });
    }
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&lp)
        .await
        .context("listing mutatingwebhookconfigurations")?
        .items;
    Ok((views, webhooks))
}

/// The agent's plan for `spec` on the cluster as it is, or with `webhooks` instead of
/// the cluster's (as they will be after a tag move); the outer error is the API's.
async fn checked_plan(
    client: &Client,
    spec: &SidecarMigrationSpec,
    webhooks: Option<&[MutatingWebhookConfiguration]>,
) -> anyhow::Result<Result<migration::MigrationPlan, migration::Refusal>> {
    let (views, current) = views(client, spec).await?;
    let others = Api::<SidecarMigration>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing sidecarmigrations")?;
    let claimed = migration::claimed(
        others
            .iter()
            .filter_map(|m| Some((m.metadata.name.as_deref()?, m.status.as_ref()?))),
    );
    Ok(migration::plan(
        spec,
        &views,
        webhooks.unwrap_or(&current),
        &claimed,
    ))
}

async fn move_namespaces(args: &MoveArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    create_migration(args, BTreeMap::new(), global).await
}

/// Checks the migration as the agent would, creates it (with `annotations`) and, with
/// `--wait`, follows it.
async fn create_migration(
    args: &MoveArgs,
    annotations: BTreeMap<String, String>,
    global: &GlobalArgs,
) -> anyhow::Result<ExitCode> {
    let spec = spec_of(args)?;
    let timeout = wait_timeout(&args.timeout)?;
    let client = global.client().await?;
    let plan = checked_plan(&client, &spec, None)
        .await?
        .map_err(|e| anyhow::anyhow!("refused, nothing created: {e}"))?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            args.to.to_lowercase().replace(['_', '.'], "-"),
            k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S")
        )
    });
    let mut migration = SidecarMigration::new(&name, spec);
    if !annotations.is_empty() {
        migration.metadata.annotations = Some(annotations);
    }
    if let Some(labels) = &args.labels {
        migration.metadata.labels = Some(super::parse_labels(labels)?);
    }
    let names: Vec<&str> = plan.namespaces.iter().map(|n| n.name.as_str()).collect();
    if args.dry_run {
        print_structured(
            if global.output == Output::Yaml {
                Output::Yaml
            } else {
                Output::Json
            },
            &migration,
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    Api::<SidecarMigration>::all(client.clone())
        .create(&PostParams::default(), &migration)
        .await
        .with_context(|| format!("creating sidecarmigration {name}"))?;
    println!(
        "sidecarmigration {name} created: moving {} namespace(s) to {} (revision {}), {} at a time: {}",
        names.len(),
        args.to,
        plan.target_revision,
        args.pace.batch_size,
        names.join(", ")
    );
    if args.wait {
        return follow(
            &client,
            &name,
            global.output,
            MigrationPhase::Succeeded,
            timeout,
        )
        .await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(client: &Client, name: &str) -> anyhow::Result<SidecarMigration> {
    Api::<SidecarMigration>::all(client.clone())
        .get_opt(name)
        .await
        .with_context(|| format!("reading sidecarmigration {name}"))?
        .with_context(|| {
            format!(
                "sidecarmigration {name:?} not found (list them with `kubectl get sidecarmigrations`)"
            )
        })
}

async fn rollback(args: &MigrationArg, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let timeout = wait_timeout(&args.timeout)?;
    let client = global.client().await?;
    let m = get(&client, &args.migration).await?;
    let phase = m.status.as_ref().and_then(|s| s.phase.clone());
    match phase.as_deref() {
        Some("Refused") => bail!(
            "sidecarmigration {} was refused and changed nothing: nothing to roll back",
            args.migration
        ),
        Some("RolledBack") => {
            println!("sidecarmigration {} is rolled back already", args.migration);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let record = TagMoveRecord::from_annotations(m.annotations())
        .map_err(|e| anyhow::anyhow!("sidecarmigration {}: {e}", args.migration))?;
    if let Some(moved) = record {
        // The tag's namespaces can only get their old sidecars back from the revision
        // the tag pointed at: move it back before the agent restarts them; but only from
        // where this migration left it (a later move would be undone silently).
        let webhooks = list_webhooks(&client).await?;
        let now = tags::plan_move(&moved.tag, &moved.to, &webhooks)
            .map(|m| m.from)
            .map_err(|e| {
                anyhow::anyhow!("cannot roll back sidecarmigration {}: {e}", args.migration)
            })?;
        if now != moved.to && now != moved.from {
            bail!(
                "revision tag {} points at {now} now, not at {} where sidecarmigration {} moved it: rolling it back would move the tag from {now}; nothing changed (move it yourself with `ztunnel-rollout sidecar retag {} --to REVISION`)",
                moved.tag,
                moved.to,
                args.migration,
                moved.tag
            );
        }
        let back = tags::plan_move(&moved.tag, &moved.from, &webhooks).map_err(|e| {
            anyhow::anyhow!(
                "cannot move revision tag {} back to {}: {e}",
                moved.tag,
                moved.from
            )
        })?;
        apply_tag_move(&client, &back).await?;
        if back.webhook.is_some() {
            println!(
                "revision tag {} moved back from {} to {}",
                back.tag, back.from, back.to
            );
        } else {
            println!("revision tag {} points at {} already", back.tag, back.to);
        }
    }
    if !m.spec.rollback {
        Api::<SidecarMigration>::all(client.clone())
            .patch(
                &args.migration,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "rollback": true } })),
            )
            .await
            .with_context(|| format!("requesting the rollback of {}", args.migration))?;
    }
    println!(
        "sidecarmigration {}: rollback requested; every namespace it changed moves back to its previous labels",
        args.migration
    );
    if args.wait {
        return follow(
            &client,
            &args.migration,
            global.output,
            MigrationPhase::RolledBack,
            timeout,
        )
        .await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_webhooks(client: &Client) -> anyhow::Result<Vec<MutatingWebhookConfiguration>> {
    Ok(Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing mutatingwebhookconfigurations")?
        .items)
}

/// Writes a planned tag move: the tag's webhook configuration (a replace at the
/// resourceVersion it was read at), then the tag's Service, if `istioctl tag set` made
/// one. Running the same move again finishes one that stopped half-way.
async fn apply_tag_move(client: &Client, planned: &TagMove) -> anyhow::Result<()> {
    if let Some(webhook) = &planned.webhook {
        let name = webhook.name_any();
        match Api::<MutatingWebhookConfiguration>::all(client.clone())
            .replace(&name, &PostParams::default(), webhook)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => bail!(
                "revision tag {} changed while this ran ({name} was written by someone else); nothing was written: run it again",
                planned.tag
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("moving revision tag {}: updating {name}", planned.tag)
                });
            }
        }
    }
    let service = tags::tag_service_name(&planned.tag);
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default().fields(&format!("metadata.name={service}")))
        .await
        .with_context(|| format!("listing Services named {service}"))?;
    for svc in services {
        let namespace = svc.namespace().unwrap_or_default();
        Api::<Service>::namespaced(client.clone(), &namespace)
            .patch(
                &service,
                &PatchParams::default(),
                &Patch::Merge(tags::tag_service_patch(&planned.to)),
            )
            .await
            .with_context(|| {
                format!(
                    "revision tag {} points at {} but its Service {namespace}/{service} may still select another revision: run the same command again to finish",
                    planned.tag, planned.to
                )
            })?;
    }
    Ok(())
}

async fn retag(args: &RetagArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            args.tag.to_lowercase().replace(['_', '.'], "-"),
            k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%d-%H%M%S")
        )
    });
    // The tag's namespaces restart through a migration to the tag itself; it only
    // stops on failure (the agent cannot move the tag back by itself).
    let restart = MoveArgs {
        namespaces: Vec::new(),
        selector: Some(format!("{REVISION_LABEL}={}", args.tag)),
        to: args.tag.clone(),
        name: Some(name),
        pace: args.pace.clone(),
        on_failure: OnFailure::Stop,
        replace_injection_label: false,
        labels: args.labels.clone(),
        dry_run: false,
        wait: args.wait,
        timeout: args.timeout.clone(),
    };
    let spec = spec_of(&restart)?;
    let timeout = wait_timeout(&args.timeout)?;
    if let Some(labels) = &args.labels {
        super::parse_labels(labels).context("--labels")?;
    }
    let name = restart.name.clone().unwrap_or_default();
    if !is_object_name(&name) {
        bail!(
            "--name {name:?}: not a valid object name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"
        );
    }
    let client = global.client().await?;
    if Api::<SidecarMigration>::all(client.clone())
        .get_opt(&name)
        .await
        .with_context(|| format!("reading sidecarmigration {name}"))?
        .is_some()
    {
        bail!(
            "refused, nothing changed: sidecarmigration {name} exists already; choose another --name"
        );
    }
    let webhooks = list_webhooks(&client).await?;
    let planned = tags::plan_move(&args.tag, &args.to, &webhooks)
        .map_err(|e| anyhow::anyhow!("refused, nothing changed: {e}"))?;
    let using: Vec<String> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{REVISION_LABEL}={}", args.tag)))
        .await
        .context("listing namespaces")?
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let restarting = !args.no_restart && !using.is_empty();
    if restarting {
        // Everything the migration would refuse is refused before the tag moves.
        let after: Vec<MutatingWebhookConfiguration> = webhooks
            .iter()
            .map(|w| match &planned.webhook {
                Some(moved) if moved.metadata.name == w.metadata.name => moved.clone(),
                _ => w.clone(),
            })
            .collect();
        checked_plan(&client, &spec, Some(&after))
            .await?
            .map_err(|e| anyhow::anyhow!("refused, nothing changed: restarting the tag's namespaces would be refused: {e}"))?;
    }
    let shown = if using.is_empty() {
        "none".to_owned()
    } else {
        using.join(", ")
    };
    if args.dry_run {
        println!(
            "would move revision tag {} from {} to {}; namespaces using it: {shown}{}",
            planned.tag,
            planned.from,
            planned.to,
            if restarting {
                " (restarted and verified)"
            } else {
                ""
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    apply_tag_move(&client, &planned).await?;
    if planned.webhook.is_some() {
        println!(
            "revision tag {} moved from {} to {}; namespaces using it: {shown}",
            planned.tag, planned.from, planned.to
        );
    } else {
        println!(
            "revision tag {} points at {} already; namespaces using it: {shown}",
            planned.tag, planned.to
        );
    }
    if !restarting {
        if !using.is_empty() {
            println!(
                "not restarted: their pods keep the sidecars of {} until they restart",
                planned.from
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let annotations = match planned.record() {
        Some(record) => BTreeMap::from([(TAG_MOVE_ANNOTATION.to_owned(), record.annotation())]),
        None => {
            println!(
                "no earlier revision recorded for tag {}: `sidecar rollback` of this migration cannot move it back (use istioctl tag set)",
                planned.tag
            );
            BTreeMap::new()
        }
    };
    let created = create_migration(
        &MoveArgs {
            wait: false,
            ..restart
        },
        annotations,
        global,
    )
    .await;
    if let Err(e) = created {
        if planned.webhook.is_none() {
            return Err(e);
        }
        // The tag moved but its namespaces will not restart: put it back, so that the
        // command changed nothing.
        let undone = async {
            let webhooks = list_webhooks(&client).await?;
            let back = tags::plan_move(&planned.tag, &planned.from, &webhooks)?;
            apply_tag_move(&client, &back).await
        }
        .await;
        return match undone {
            Ok(()) => Err(e.context(format!(
                "the migration was not created; revision tag {} moved back to {}: nothing changed",
                planned.tag, planned.from
            ))),
            Err(undo) => Err(e.context(format!(
                "the migration was not created, and revision tag {} could not be moved back to {} ({undo:#}): it points at {}; move it back with `ztunnel-rollout sidecar retag {} --to {} --no-restart`",
                planned.tag, planned.from, planned.to, planned.tag, planned.from
            ))),
        };
    }
    if args.wait {
        return follow(
            &client,
            &name,
            global.output,
            MigrationPhase::Succeeded,
            timeout,
        )
        .await;
    }
    Ok(ExitCode::SUCCESS)
}

/// A Kubernetes object name (DNS-1123 subdomain).
fn is_object_name(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(ok_char)
        && alnum(name.chars().next())
        && alnum(name.chars().last())
}

/// `sidecar tags`: the tag inventory.
async fn tags(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client = global.client().await?;
    let webhooks = list_webhooks(&client).await?;
    let namespaces: Vec<(String, BTreeMap<String, String>)> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing namespaces")?
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    let rows = tags::inventory(&webhooks, &namespaces);
    if global.output != Output::Text {
        print_structured(global.output, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows.iter().map(|r| r.tag.len()).max().unwrap_or(0).max(3);
    let rev_width = rows
        .iter()
        .map(|r| r.revision.len())
        .max()
        .unwrap_or(0)
        .max(8);
    println!("{:width$} {:rev_width$} NAMESPACES", "TAG", "REVISION");
    for r in rows {
        println!(
            "{:width$} {:rev_width$} {}",
            r.tag,
            r.revision,
            r.namespaces.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A migration as `sidecar status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationView {
    pub name: String,
    pub phase: String,
    pub to: String,
    pub target_revision: String,
    pub message: String,
    pub warnings: Vec<String>,
    pub namespaces: Vec<NamespaceRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRow {
    pub name: String,
    pub phase: String,
    pub previous_revision: String,
    pub workloads: String,
    pub pods: String,
    pub message: String,
}

pub fn view(m: &SidecarMigration) -> MigrationView {
    let status = m.status.clone().unwrap_or_default();
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == migration::PROGRESSING)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    MigrationView {
        name: m.name_any(),
        phase: status.phase.unwrap_or_else(|| "Pending".to_owned()),
        to: m.spec.to.clone(),
        target_revision: status.target_revision.unwrap_or_default(),
        message,
        warnings: status.warnings,
        namespaces: status
            .namespaces
            .into_iter()
            .map(|n| {
                let started = n.step_started.is_some();
                NamespaceRow {
                    workloads: if started {
                        format!("{}/{}", n.workloads_restarted, n.workloads)
                    } else {
                        "-".to_owned()
                    },
                    pods: if started || n.pods > 0 {
                        format!("{}/{}", n.pods_verified, n.pods)
                    } else {
                        "-".to_owned()
                    },
                    name: n.name,
                    phase: n.phase.as_str().to_owned(),
                    previous_revision: n.previous_revision,
                    message: n.message,
                }
            })
            .collect(),
    }
}

pub fn render(v: &MigrationView) -> String {
    let mut out = format!(
        "sidecarmigration {}: {} — to {} (revision {})",
        v.name,
        v.phase,
        v.to,
        if v.target_revision.is_empty() {
            "?"
        } else {
            &v.target_revision
        }
    );
    if !v.message.is_empty() {
        out.push_str(&format!("\n  {}", v.message));
    }
    for w in &v.warnings {
        out.push_str(&format!("\n  warning: {w}"));
    }
    if v.namespaces.is_empty() {
        return out;
    }
    let width = v
        .namespaces
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(0)
        .max("NAMESPACE".len());
    out.push_str(&format!(
        "\n  {:<width$}  {:<17}  {:<9}  {:<9}  {:<9}  MESSAGE",
        "NAMESPACE", "PHASE", "FROM", "WORKLOADS", "PODS"
    ));
    for n in &v.namespaces {
        out.push_str(&format!(
            "\n  {:<width$}  {:<17}  {:<9}  {:<9}  {:<9}  {}",
            n.name, n.phase, n.previous_revision, n.workloads, n.pods, n.message
        ));
    }
    out
}

fn finished(phase: &str) -> bool {
    matches!(
        phase,
        "Refused" | "Succeeded" | "Failed" | "RolledBack" | "RollbackFailed"
    )
}

fn print(output: Output, views: &[MigrationView]) -> anyhow::Result<()> {
    match output {
        Output::Text => {
            for v in views {
                println!("{}", render(v));
            }
            Ok(())
        }
        _ => print_structured(output, &views),
    }
}

fn wait_timeout(text: &str) -> anyhow::Result<std::time::Duration> {
    ztunnel_rollout_core::duration::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))
}

/// Prints the migration's changes until it finishes or `timeout` passes; success when
/// it ends in `wanted`.
async fn follow(
    client: &Client,
    name: &str,
    output: Output,
    wanted: MigrationPhase,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    match tokio::time::timeout(timeout, follow_until_finished(client, name, output, wanted)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "sidecarmigration {name} did not finish within {}; it goes on (follow it with `sidecar status {name} --watch`)",
            ztunnel_rollout_core::duration::format_duration(timeout)
        ),
    }
}

async fn follow_until_finished(
    client: &Client,
    name: &str,
    output: Output,
    wanted: MigrationPhase,
) -> anyhow::Result<ExitCode> {
    let api: Api<SidecarMigration> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut last: Option<MigrationView> = None;
    while let Some(m) = changes.next().await {
        // The watcher retries with backoff; say so and go on.
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                eprintln!("watching sidecarmigration {name}: {e}; retrying");
                continue;
            }
        };
        let v = view(&m);
        if last.as_ref() == Some(&v) {
            continue;
        }
        print(output, std::slice::from_ref(&v))?;
        // A finished rollback request ends only in RolledBack.
        let done = finished(&v.phase)
            && (wanted != MigrationPhase::RolledBack
                || !m.spec.rollback
                || matches!(v.phase.as_str(), "RolledBack" | "RollbackFailed"));
        if done {
            return Ok(if v.phase == wanted.as_str() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        last = Some(v);
    }
    bail!("the watch of sidecarmigration {name} ended")
}

async fn status(args: &StatusArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let client = global.client().await?;
    let Some(name) = &args.migration else {
        let list = Api::<SidecarMigration>::all(client.clone())
            .list(&ListParams::default())
            .await
            .context("listing sidecarmigrations")?;
        let views: Vec<MigrationView> = list.iter().map(view).collect();
        if views.is_empty() && global.output == Output::Text {
            println!("no sidecarmigrations");
        }
        print(global.output, &views)?;
        return Ok(ExitCode::SUCCESS);
    };
    let m = get(&client, name).await?;
    if !args.watch || finished(&view(&m).phase) {
        print(global.output, &[view(&m)])?;
        return Ok(ExitCode::SUCCESS);
    }
    follow_until_finished(&client, name, global.output, MigrationPhase::Succeeded)
        .await
        .map(|_| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sidecar_migration::{
        InjectionLabels, NamespaceMigrationStatus, SidecarMigrationStatus,
    };

    #[test]
    fn migration_names_are_checked_before_a_tag_moves() {
        for good in ["prod-stable-20261203-001500", "a", "a.b-c"] {
            assert!(is_object_name(good), "{good}");
        }
        for bad in ["", "Prod", "-a", "a-", "a_b", &"a".repeat(254)] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }
    use ztunnel_rollout_core::sidecar::namespace_machine::NamespacePhase;

    fn migration() -> SidecarMigration {
        let mut m = SidecarMigration::new(
            "canary",
            serde_json::from_value(json!({ "namespaces": ["a", "b"], "to": "prod-canary" }))
                .unwrap(),
        );
        let ns = |name: &str, phase, started: bool, message: &str| NamespaceMigrationStatus {
            name: name.into(),
            phase,
            previous: InjectionLabels {
                istio_injection: Some("enabled".into()),
                rev: None,
            },
            previous_revision: "1-29".into(),
            step_started: started.then(|| "2026-11-29T10:00:00Z".into()),
            verifying_since: None,
            workloads: 2,
            workloads_restarted: 1,
            pods: 4,
            pods_verified: 2,
            since: "2026-11-29T10:00:00Z".into(),
            message: message.into(),
        };
        m.status = Some(SidecarMigrationStatus {
            phase: Some("Progressing".into()),
            target_revision: Some("1-30".into()),
            warnings: vec!["Deployment a/db has a single replica".into()],
            namespaces: vec![
                ns(
                    "a",
                    NamespacePhase::Restarting,
                    true,
                    "restarting: 1/2 workloads done",
                ),
                ns("b", NamespacePhase::Pending, false, ""),
            ],
            ..Default::default()
        });
        m
    }

    #[test]
    fn status_lists_each_namespace_with_its_progress() {
        let text = render(&view(&migration()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "sidecarmigration canary: Progressing — to prod-canary (revision 1-30)"
        );
        assert_eq!(lines[1], "  warning: Deployment a/db has a single replica");
        assert!(lines[2].starts_with("  NAMESPACE  PHASE"), "{text}");
        assert!(
            lines[3].contains("Restarting") && lines[3].contains("1/2") && lines[3].contains("2/4"),
            "{text}"
        );
        assert!(
            lines[3].ends_with("restarting: 1/2 workloads done"),
            "{text}"
        );
        assert!(
            lines[4].contains("Pending") && lines[4].contains(" - "),
            "{text}"
        );
    }

    #[test]
    fn move_refuses_bad_flags_before_asking_the_cluster() {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: MoveArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["x", "--to", "prod-canary", "-n", "a"];
            argv.extend_from_slice(extra);
            spec_of(&Wrapper::try_parse_from(argv).unwrap().args)
        };
        assert!(
            parse(&["--rollout-timeout", "ten"])
                .unwrap_err()
                .to_string()
                .starts_with("--rollout-timeout: \"ten\" is not a duration")
        );
        assert!(parse(&["--batch-size", "0"]).is_err());
        let spec = parse(&["--on-failure", "rollback", "-n", "b"]).unwrap();
        assert_eq!(spec.namespaces, Some(vec!["a".into(), "b".into()]));
        assert_eq!(
            spec.on_failure,
            crate::api::sidecar_migration::SidecarFailurePolicy::Rollback
        );
        assert!(
            Wrapper::try_parse_from(["x", "--to", "t"]).is_err(),
            "a namespace or a selector is required"
        );
    }
}
