//! The drain's I/O: watches the node's pods and the PDBs, evicts what the plan says
//! (bounded in parallel, retrying by the verdicts of [`super::eviction`]), and waits for
//! the pods to be gone — all before one deadline.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::OptionFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, ObjectMeta, Preconditions as K8sPreconditions,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::budget;
use super::eviction::{self, Verdict};
use super::filter::{self, Disposition, DrainPlan, PlannedPod};
use super::options::DrainOptions;
use super::report::{DrainReport, Outcome, PodResult};
use crate::leader::Leadership;
use crate::watch_cache;

/// How long the read that checks an eviction whose answer was lost may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("node {0} not found")]
    NodeNotFound(String),
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the watches on node {node}'s pods and the PodDisruptionBudgets did not sync before the deadline"
    )]
    WatchNotReady { node: String },
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> DrainError {
    let action = action.into();
    move |source| DrainError::Kube { action, source }
}

/// Evicts pod `name` through policy/v1 Eviction, only if it still has `uid`.
///
/// Not kube's `Api::evict`: kube 4.2 sends the delete options as `delete_options`, which
/// the API server ignores, so its UID precondition and grace period are silently lost
/// (a replaced pod under the same name would be evicted). This sends `deleteOptions`.
pub async fn evict(
    pods: &Api<Pod>,
    name: &str,
    uid: &str,
    grace_period_seconds: Option<i64>,
) -> Result<(), kube::Error> {
    let eviction = Eviction {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        delete_options: Some(DeleteOptions {
            preconditions: Some(K8sPreconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            grace_period_seconds,
            ..Default::default()
        }),
    };
    pods.create_subresource::<Eviction, kube::core::Status>(
        "eviction",
        name,
        &PostParams::default(),
        &eviction,
    )
    .await
    .map(|_| ())
}

async fn require_node(client: &Client, node: &str) -> Result<Node, DrainError> {
    Api::<Node>::all(client.clone())
        .get_opt(node)
        .await
        .map_err(kube_err(format!("reading node {node}")))?
        .ok_or_else(|| DrainError::NodeNotFound(node.to_owned()))
}

/// Marks the node unschedulable. Returns false if it already was.
pub async fn cordon(client: &Client, node: &str) -> Result<bool, DrainError> {
    let current = require_node(client, node).await?;
    if current.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Ok(false);
    }
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "unschedulable": true } })),
        )
        .await
        .map_err(kube_err(format!("cordoning node {node}")))?;
    Ok(true)
}

/// Live views of the node's pods and of all PDBs, fed by watches, with a counter that
/// ticks on every change so waiters wake on events instead of polling.
struct Views {
    pods: Store<Pod>,
    pods_changed: watch::Receiver<u64>,
    pdbs: Store<PodDisruptionBudget>,
    pdbs_changed: watch::Receiver<u64>,
    budget_claims: std::sync::Mutex<budget::DisruptionClaims>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Views {
    /// Ends the watches and waits until they are gone, so none reports its connection
    /// closing as a watch error while the process exits after a drain.
    async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // Cancelled is the expected result; a watch task has nothing else to report.
            let _ = t.await;
        }
    }
}

/// The fallback of a drain that ended early with an error: the watches end on their own.
impl Drop for Views {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.abort();
        }
    }
}

fn counted<K: crate::watch_cache::Watched>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> (Store<K>, watch::Receiver<u64>, tokio::task::JoinHandle<()>) {
    watch_cache::spawn_counted(api, config, trim, || {})
}

impl Views {
    async fn start(
        client: &Client,
        node: &str,
        deadline: Instant,
        shared: Option<&SharedPdbs>,
    ) -> Result<Self, DrainError> {
        let (pods, pods_changed, pod_task) = counted(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            // Each drain in flight holds its node's pods: the fields it reads only.
            filter::keep_what_the_drain_reads,
        );
        let mut tasks = vec![pod_task];
        let (pdbs, pdbs_changed) = match shared {
            Some(shared) => (shared.store.clone(), shared.changed.clone()),
            None => {
                let (pdbs, pdbs_changed, pdb_task) = counted(
                    Api::<PodDisruptionBudget>::all(client.clone()),
                    watcher::Config::default(),
                    watch_cache::keep_all,
                );
                tasks.push(pdb_task);
                (pdbs, pdbs_changed)
            }
        };
        let views = Views {
            pods,
            pods_changed,
            pdbs,
            pdbs_changed,
            budget_claims: std::sync::Mutex::new(budget::DisruptionClaims::default()),
            tasks: std::sync::Mutex::new(tasks),
        };
        let ready = async {
            let _ = views.pods.wait_until_ready().await;
            // A shared cache is synced by its owner (and a store's readiness wakes only
            // one of several concurrent waiters).
            if shared.is_none() {
                let _ = views.pdbs.wait_until_ready().await;
            }
        };
        tokio::time::timeout_at(deadline, ready)
            .await
            .map_err(|_| DrainError::WatchNotReady {
                node: node.to_owned(),
            })?;
        Ok(views)
    }

    /// The pod as the watch sees it now, if it still exists with this UID.
    fn current(&self, p: &PlannedPod) -> Option<Arc<Pod>> {
        self.pods
            .get(&ObjectRef::new(&p.name).within(&p.namespace))
            .filter(|pod| pod.metadata.uid.as_deref() == Some(p.uid.as_str()))
    }

    fn claim_disruption(&self, covering: &[PodDisruptionBudget]) -> bool {
        let mut claims = self.budget_claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.claim(&covering.iter().collect::<Vec<_>>())
    }

    fn covering_pdbs(&self, pod: &Pod) -> Vec<PodDisruptionBudget> {
        let all = self.pdbs.state();
        budget::covering(pod, all.iter().map(|p| p.as_ref()))
            .into_iter()
            .cloned()
            .collect()
    }
}

fn since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn result_for(p: &PlannedPod, outcome: Outcome, reason: Option<String>) -> PodResult {
    PodResult {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
        outcome,
        reason,
        attempts: 0,
        refused_by_budget: 0,
        api_trouble: false,
        evicted_after_ms: None,
        gone_after_ms: None,
    }
}

pub struct Drainer {
    client: Client,
    leadership: Option<Leadership>,
    pdbs: Option<SharedPdbs>,
    /// Eviction (or delete) requests in flight across all of this drainer's drains.
    shared_permits: Option<Arc<Semaphore>>,
}

/// A PodDisruptionBudget cache the caller keeps (status included), with a counter that
/// ticks on every change: its drains read it instead of each watching every PDB.
#[derive(Clone)]
pub struct SharedPdbs {
    pub store: Store<PodDisruptionBudget>,
    pub changed: watch::Receiver<u64>,
}

impl Drainer {
    /// `client` must not retry 429s by itself (kube's default client does: set
    /// `Config::default_retry = false`); the drain counts and paces its own retries.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            leadership: None,
            pdbs: None,
            shared_permits: None,
        }
    }

    /// At most `n` eviction (or delete) requests in flight across every drain this
    /// drainer runs at once, besides each drain's own `concurrency`. An agent draining
    /// 33 nodes of 24 pods otherwise sends ~800 requests at once, and each in-flight
    /// HTTP/1.1 request holds a connection of its own (TLS state and buffers, then idle
    /// in the pool): ~25 MB at the realistic 1,000-node bed's peak.
    pub fn sharing_request_permits(mut self, n: usize) -> Self {
        self.shared_permits = Some(Arc::new(Semaphore::new(n.max(1))));
        self
    }

    /// Reads PDBs from `pdbs` (synced) instead of a watch per drain: an agent draining
    /// 100 nodes at once keeps one PDB watch, not 100.
    pub fn sharing_pdbs(mut self, pdbs: SharedPdbs) -> Self {
        self.pdbs = Some(pdbs);
        self
    }

    /// Evicts only while `leadership` holds: a replica that loses the lease stops at once.
    pub fn guarded_by(mut self, leadership: Leadership) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// What a drain of `node` would do now, changing nothing.
    pub async fn plan(&self, node: &str, opts: &DrainOptions) -> Result<DrainPlan, DrainError> {
        require_node(&self.client, node).await?;
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(kube_err(format!("listing the pods of node {node}")))?;
        Ok(filter::plan(&pods.items, &opts.filter, Timestamp::now()))
    }

    /// Drains `node` (which the caller has cordoned). Refusals end the drain before any
    /// eviction. The report is `complete` only when every pod to drain is gone.
    // The caller's span names the node (the agent's node span; the CLI drains one node).
    #[tracing::instrument(name = "drain", skip_all)]
    pub async fn drain(&self, node: &str, opts: &DrainOptions) -> Result<DrainReport, DrainError> {
        let start = Instant::now();
        let deadline = start + opts.timeout;
        require_node(&self.client, node).await?;
        let views = Arc::new(Views::start(&self.client, node, deadline, self.pdbs.as_ref()).await?);
        // Planned from the cache's own objects: no copy outlives this line.
        let plan = filter::plan(
            views.pods.state().iter().map(|p| p.as_ref()),
            &opts.filter,
            Timestamp::now(),
        );

        if opts.dry_run || plan.has_refusals() {
            let report = what_it_would_do(node, opts, &plan, &views, start);
            views.stop().await;
            return Ok(report);
        }

        let report = self
            .evict_all(node, opts, &plan, Arc::clone(&views), start, deadline)
            .await;
        views.stop().await;
        debug!(complete = report.complete, "{}", report.summary());
        Ok(report)
    }

    /// Evicts (or waits out) every pod of `plan`, `opts.concurrency` at a time, each
    /// until its eviction is accepted and the pod is gone or the deadline passes.
    async fn evict_all(
        &self,
        node: &str,
        opts: &DrainOptions,
        plan: &filter::DrainPlan,
        views: Arc<Views>,
        start: Instant,
        deadline: Instant,
    ) -> DrainReport {
        let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        let mut tasks = PodTasks(Vec::new());
        for p in plan.pods.iter().cloned() {
            match &p.disposition {
                // A plan with refusals returned above; neither kind needs a task.
                Disposition::Skip(r) | Disposition::Refuse(r) => {
                    let outcome = if matches!(p.disposition, Disposition::Skip(_)) {
                        Outcome::Skipped
                    } else {
                        Outcome::Refused
                    };
                    tasks.0.push(tokio::spawn(std::future::ready(result_for(
                        &p,
                        outcome,
                        Some(r.clone()),
                    ))));
                }
                Disposition::Evict { .. } | Disposition::AwaitTermination => {
                    let ctx = PodDrain {
                        client: self.client.clone(),
                        leadership: self.leadership.clone(),
                        views: views.clone(),
                        permits: permits.clone(),
                        shared_permits: self.shared_permits.clone(),
                        opts: opts.clone(),
                        start,
                        deadline,
                    };
                    tasks.0.push(tokio::spawn(
                        async move { ctx.run(p).await }.in_current_span(),
                    ));
                }
            }
        }
        let mut results = Vec::new();
        for t in tasks.0.iter_mut() {
            match t.await {
                Ok(r) => results.push(r),
                Err(e) => warn!(error = %e, "a pod's drain task ended abnormally"),
            }
        }
        let complete = results.len() == plan.pods.len()
            && results
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Evicted | Outcome::Skipped));
        DrainReport {
            node: node.to_owned(),
            dry_run: false,
            complete,
            elapsed_ms: since(start),
            pods: results,
        }
    }
}

/// The pods' tasks of one drain, aborted when the drain is dropped: a drain the agent
/// cancels (an abort, an operator's uncordon mid-drain) sends no eviction after that.
struct PodTasks(Vec<tokio::task::JoinHandle<PodResult>>);

impl Drop for PodTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// One pod's way out: evict (with retries) until accepted, then wait until gone.
struct PodDrain {
    client: Client,
    leadership: Option<Leadership>,
    views: Arc<Views>,
    permits: Arc<Semaphore>,
    shared_permits: Option<Arc<Semaphore>>,
    opts: DrainOptions,
    start: Instant,
    deadline: Instant,
}

impl PodDrain {
    async fn run(self, p: PlannedPod) -> PodResult {
        let pod = format!("{}/{}", p.namespace, p.name);
        let mut result = result_for(&p, Outcome::NotGone, None);
        if matches!(p.disposition, Disposition::Evict { .. }) {
            if let Err(failure) = self.evict_until_accepted(&p, &mut result).await {
                warn!(%pod, reason = failure.reason.as_deref().unwrap_or(""), "not evicted");
                return failure;
            }
            result
                .evicted_after_ms
                .get_or_insert_with(|| since(self.start));
            info!(%pod, "eviction accepted");
        }
        let result = self.wait_until_gone(&p, result).await;
        match result.outcome {
            Outcome::Evicted => {
                info!(%pod, after = %format!("{:.1}s", result.gone_after_ms.unwrap_or(0) as f64 / 1000.0), "gone")
            }
            _ => warn!(%pod, reason = result.reason.as_deref().unwrap_or(""), "not gone"),
        }
        result
    }

    async fn request(&self, p: &PlannedPod) -> Result<(), kube::Error> {
        let _permit = self.permits.acquire().await;
        let _shared_permit =
            OptionFuture::from(self.shared_permits.as_ref().map(|s| s.acquire())).await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace);
        let delete = DeleteParams {
            grace_period_seconds: self
                .opts
                .grace_period_seconds
                .and_then(|g| u32::try_from(g).ok()),
            preconditions: Some(Preconditions {
                uid: Some(p.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        if self.opts.disable_eviction {
            pods.delete(&p.name, &delete).await.map(|_| ())
        } else {
            evict(&pods, &p.name, &p.uid, self.opts.grace_period_seconds).await
        }
    }

    /// Ok once the eviction is accepted (or the pod is gone); Err with the final result
    /// when it failed for good or the deadline came.
    /// A PodDisruptionBudget refused the eviction (429): noted, and the pod waits for
    /// the budget to change (or `delay`).
    async fn blocked_by_budget(
        &self,
        p: &PlannedPod,
        result: &mut PodResult,
        message: String,
        delay: Duration,
    ) {
        result.refused_by_budget += 1;
        result.api_trouble = false;
        if result.refused_by_budget == 1 {
            info!(pod = %format!("{}/{}", p.namespace, p.name), reason = %message, "waiting for a PodDisruptionBudget");
        }
        result.reason = Some(message);
        debug!(pod = %p.name, ?delay, "eviction refused by a PodDisruptionBudget");
        self.wait_for_budget(p, delay).await;
    }

    /// The Eviction API refuses pods covered by several PDBs (500): the pod fails, naming
    /// them.
    fn several_budgets(&self, p: &PlannedPod, result: &PodResult) -> PodResult {
        let names = self
            .views
            .current(p)
            .map(|pod| {
                self.views
                    .covering_pdbs(&pod)
                    .iter()
                    .map(budget::pdb_name)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mut failed = result.clone();
        failed.outcome = Outcome::Failed;
        failed.reason = Some(format!(
            "covered by several PodDisruptionBudgets ({}); the Eviction API refuses such pods — fix the PDBs",
            names.join(", ")
        ));
        failed
    }

    async fn evict_until_accepted(
        &self,
        p: &PlannedPod,
        result: &mut PodResult,
    ) -> Result<(), PodResult> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.opts.retry.min_delay)
            .with_max_delay(self.opts.retry.max_delay)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            // Gone, or terminating (an eviction of ours whose answer was lost, or someone
            // else's deletion): evicting it again would disrupt nothing, only count twice.
            if self
                .views
                .current(p)
                .is_none_or(|pod| pod.metadata.deletion_timestamp.is_some())
            {
                return Ok(());
            }
            if Instant::now() >= self.deadline {
                return Err(self.not_gone(
                    p,
                    result,
                    "the eviction was not accepted before the deadline",
                ));
            }
            if self.leadership.as_ref().is_some_and(|l| l.check().is_err()) {
                return Err(self.not_gone(
                    p,
                    result,
                    "this replica lost the lease; the new leader resumes the drain",
                ));
            }
            let answer = self.request(p).await;
            result.attempts += 1;
            let next = backoff.next().unwrap_or(self.opts.retry.max_delay);
            match Verdict::of(&answer.map_err(|e| crate::kube_client::api_failure(&e))) {
                Verdict::Accepted | Verdict::Gone => return Ok(()),
                Verdict::Blocked {
                    retry_after,
                    message,
                } => {
                    let delay = next.max(retry_after.unwrap_or_default());
                    self.blocked_by_budget(p, result, message, delay).await;
                }
                Verdict::SeveralBudgets => return Err(self.several_budgets(p, result)),
                Verdict::Throttled { retry_after } => {
                    // The API server sheds load: not the budget, and not a failure.
                    result.api_trouble = true;
                    result.reason = Some("the API server is throttling requests".to_owned());
                    self.sleep_before_retry(next.max(retry_after.unwrap_or_default()))
                        .await;
                }
                Verdict::NamespaceTerminating => {
                    result.api_trouble = false;
                    result.reason = Some("its namespace is terminating".to_owned());
                    self.sleep_before_retry(next).await;
                }
                Verdict::Retryable(message) => {
                    // No answer or 5xx: retried until the deadline, like a budget's 429.
                    result.api_trouble = true;
                    result.reason = Some(format!("the API server failed the eviction: {message}"));
                    self.sleep_before_retry(next).await;
                    // It may have been applied with its answer lost: read the pod before
                    // sending it again.
                    if self.took_effect(p).await {
                        return Ok(());
                    }
                }
                Verdict::Fatal(message) => {
                    let mut failed = result.clone();
                    failed.outcome = Outcome::Failed;
                    failed.reason = Some(message);
                    return Err(failed);
                }
            }
        }
    }

    /// Sleeps `delay` (the backoff, at least the server's Retry-After), but retries at once
    /// when the PDBs covering the pod allow a disruption again and this pod claimed it, or
    /// the pod is gone.
    async fn wait_for_budget(&self, p: &PlannedPod, delay: Duration) {
        let until = (Instant::now() + delay).min(self.deadline);
        let mut pdbs = self.views.pdbs_changed.clone();
        let mut pods = self.views.pods_changed.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                r = pdbs.changed() => if r.is_err() { tokio::time::sleep_until(until).await; return; },
                r = pods.changed() => if r.is_err() { tokio::time::sleep_until(until).await; return; },
            }
            let Some(pod) = self.views.current(p) else {
                return;
            };
            if self.views.claim_disruption(&self.views.covering_pdbs(&pod)) {
                return;
            }
        }
    }

    /// Whether an eviction whose answer was lost took effect, from the pod as the API
    /// server has it now (a list by name: the watch may lag behind the write). No answer
    /// counts as no.
    async fn took_effect(&self, p: &PlannedPod) -> bool {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace);
        let by_name = ListParams::default().fields(&format!("metadata.name={}", p.name));
        let within = self
            .deadline
            .saturating_duration_since(Instant::now())
            .min(READ_TIMEOUT);
        match tokio::time::timeout(within, pods.list(&by_name)).await {
            Ok(Ok(list)) => eviction::took_effect(list.items.first(), &p.uid),
            _ => false,
        }
    }

    /// Sleeps `delay`, but not past the deadline.
    async fn sleep_before_retry(&self, delay: Duration) {
        let until = (Instant::now() + delay).min(self.deadline);
        tokio::time::sleep_until(until).await;
    }

    async fn wait_until_gone(&self, p: &PlannedPod, mut result: PodResult) -> PodResult {
        let mut changed = self.views.pods_changed.clone();
        loop {
            let Some(pod) = self.views.current(p) else {
                result.outcome = Outcome::Evicted;
                result.reason = None;
                result.gone_after_ms = Some(since(self.start));
                return result;
            };
            let mut wake_at = self.deadline;
            if let (Some(limit), Some(deleted)) = (
                self.opts.filter.skip_wait_for_delete_timeout,
                pod.metadata.deletion_timestamp.as_ref(),
            ) {
                let terminating_for = Timestamp::now().duration_since(deleted.0);
                let left = limit.as_secs_f64() - terminating_for.as_secs_f64();
                if left <= 0.0 {
                    result.outcome = Outcome::Skipped;
                    result.reason = Some(format!(
                        "still terminating after the skip-wait-for-delete timeout ({}s)",
                        limit.as_secs()
                    ));
                    return result;
                }
                wake_at = wake_at.min(Instant::now() + Duration::from_secs_f64(left));
            }
            self.wait_for_change(&mut changed, wake_at).await;
            if Instant::now() >= self.deadline {
                let why = if pod.metadata.deletion_timestamp.is_some() {
                    "still terminating at the deadline"
                } else {
                    "not evicted before the deadline"
                };
                return self.not_gone(p, &result, why);
            }
        }
    }

    /// Until the pods change or `wake_at`, whichever comes first.
    async fn wait_for_change(&self, changed: &mut watch::Receiver<u64>, wake_at: Instant) {
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at) => {}
            r = changed.changed() => if r.is_err() { tokio::time::sleep_until(wake_at).await },
        }
    }

    /// The pod is still there at the deadline: say why, naming the blocking PDBs.
    fn not_gone(&self, p: &PlannedPod, result: &PodResult, fallback: &str) -> PodResult {
        let mut out = result.clone();
        out.outcome = Outcome::NotGone;
        let blocking: Vec<String> = self
            .views
            .current(p)
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .map(|pod| {
                self.views
                    .covering_pdbs(&pod)
                    .iter()
                    .filter(|b| !budget::allows_disruption(&[b]))
                    .map(budget::describe)
                    .collect()
            })
            .unwrap_or_default();
        out.reason = Some(if blocking.is_empty() {
            fallback.to_owned()
        } else {
            blocking.join("; ")
        });
        out
    }
}

/// The report of a dry run, or of a drain refused before anything was evicted: what
/// each pod would see, with the PDBs that block an eviction now.
fn what_it_would_do(
    node: &str,
    opts: &DrainOptions,
    plan: &filter::DrainPlan,
    views: &Views,
    start: Instant,
) -> DrainReport {
    let pods = plan
        .pods
        .iter()
        .map(|p| match &p.disposition {
            Disposition::Refuse(r) => result_for(p, Outcome::Refused, Some(r.clone())),
            Disposition::Skip(r) => result_for(p, Outcome::Skipped, Some(r.clone())),
            Disposition::Evict { .. } | Disposition::AwaitTermination if plan.has_refusals() => {
                result_for(
                    p,
                    Outcome::NotGone,
                    Some("not evicted: the drain was refused".to_owned()),
                )
            }
            Disposition::Evict { note } => {
                let blocked = views
                    .current(p)
                    .map(|pod| views.covering_pdbs(&pod))
                    .unwrap_or_default();
                let refs: Vec<&PodDisruptionBudget> = blocked.iter().collect();
                let reason = if !budget::allows_disruption(&refs) {
                    Some(
                        refs.iter()
                            .map(|b| budget::describe(b))
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                } else {
                    note.clone()
                };
                result_for(p, Outcome::WouldEvict, reason)
            }
            Disposition::AwaitTermination => result_for(
                p,
                Outcome::WouldEvict,
                Some("already terminating".to_owned()),
            ),
        })
        .collect();
    let refused = plan.has_refusals();
    if refused {
        warn!("drain refused: pods the options do not allow to evict");
    }
    DrainReport {
        node: node.to_owned(),
        dry_run: opts.dry_run,
        complete: !refused,
        elapsed_ms: since(start),
        pods,
    }
}
