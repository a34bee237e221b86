//! The workloads a namespace move restarts (Deployments, StatefulSets, DaemonSets): how
//! a restart is requested (the pod-template annotation `kubectl rollout restart` sets),
//! whether it has completed (as `kubectl rollout status` judges it), and which restarts
//! cannot be free of downtime. Pure.

use std::fmt;

use crate::labels::{INJECT_LABEL, RESTARTED_AT_ANNOTATION};
use crate::object::ObjectMetaExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        })
    }
}

/// How a workload replaces its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// New pods may exceed the desired count by `max_surge`; at most `max_unavailable`
    /// may be unavailable (both resolved against the replica count).
    Rolling {
        max_surge: i32,
        max_unavailable: i32,
    },
    /// Every old pod stops before new ones start (Deployment `Recreate`).
    Recreate,
    /// A template change replaces nothing (`OnDelete`).
    OnDelete,
    /// A StatefulSet replacing only the pods with an ordinal at or above `partition`.
    Partitioned { partition: i32 },
}

/// What a namespace move reads of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    pub generation: i64,
    pub observed_generation: i64,
    /// Desired pods (a DaemonSet: nodes that should run one).
    pub desired: i32,
    /// Pods of the current template.
    pub updated: i32,
    /// Available pods of any template.
    pub available: i32,
    /// All pods, old templates included (a Deployment's old replicas still running).
    pub total: i32,
    /// A StatefulSet whose current revision is not yet its update revision.
    pub revision_pending: bool,
    pub strategy: Strategy,
    /// The template's restart annotation, when it parses as a time.
    pub restarted_at: Option<Timestamp>,
    /// The template opts its pods out of injection (or runs them on the host network,
    /// where Istio injects nothing): nothing to restart.
    pub opted_out: bool,
    /// A paused Deployment: a template change rolls nothing until it is resumed.
    pub paused: bool,
}

/// Resolves a surge/unavailability value against `replicas` the way the controllers
/// do: a percentage rounds up for surge, down for unavailability.
fn resolve(value: Option<&IntOrString>, replicas: i32, default: &str, round_up: bool) -> i32 {
    let text = match value {
        Some(IntOrString::Int(n)) => return *n,
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let percent: i64 = text.trim_end_matches('%').parse().unwrap_or(0);
    let scaled = percent * i64::from(replicas);
    let count = if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    };
    i32::try_from(count).unwrap_or(i32::MAX)
}

fn template_facts(template: &PodTemplateSpec) -> (Option<Timestamp>, bool) {
    let meta = template.metadata.as_ref();
    let restarted_at = meta
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(RESTARTED_AT_ANNOTATION))
        .and_then(|t| t.parse().ok());
    let says_false = |m: Option<&std::collections::BTreeMap<String, String>>| {
        m.and_then(|m| m.get(INJECT_LABEL))
            .is_some_and(|v| v == "false")
    };
    let host_network = template
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let opted_out = host_network
        || meta
            .is_some_and(|m| says_false(m.labels.as_ref()) || says_false(m.annotations.as_ref()));
    (restarted_at, opted_out)
}

impl Workload {
    pub fn from_deployment(d: &Deployment) -> Self {
        let spec = d.spec.clone().unwrap_or_default();
        let status = d.status.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1);
        let strategy = spec.strategy.unwrap_or_default();
        let strategy = if strategy.type_.as_deref() == Some("Recreate") {
            Strategy::Recreate
        } else {
            let rolling = strategy.rolling_update.unwrap_or_default();
            Strategy::Rolling {
                max_surge: resolve(rolling.max_surge.as_ref(), desired, "25%", true),
                max_unavailable: resolve(rolling.max_unavailable.as_ref(), desired, "25%", false),
            }
        };
        let (restarted_at, opted_out) = template_facts(&spec.template);
        Self {
            kind: WorkloadKind::Deployment,
            name: d.name_any(),
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: status.observed_generation.unwrap_or(0),
            desired,
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            total: status.replicas.unwrap_or(0),
            revision_pending: false,
            strategy,
            restarted_at,
            opted_out,
            paused: spec.paused.unwrap_or(false),
        }
    }

    pub fn from_stateful_set(s: &StatefulSet) -> Self {
        let spec = s.spec.clone().unwrap_or_default();
        let status = s.status.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1);
        let update = spec.update_strategy.unwrap_or_default();
        let strategy = if update.type_.as_deref() == Some("OnDelete") {
            Strategy::OnDelete
        } else {
            let rolling = update.rolling_update.unwrap_or_default();
            match rolling.partition {
                Some(partition) if partition > 0 => Strategy::Partitioned { partition },
                _ => Strategy::Rolling {
                    max_surge: 0,
                    max_unavailable: resolve(rolling.max_unavailable.as_ref(), desired, "1", false)
                        .max(1),
                },
            }
        };
        let (restarted_at, opted_out) = template_facts(&spec.template);
        Self {
            kind: WorkloadKind::StatefulSet,
            name: s.name_any(),
            generation: s.metadata.generation.unwrap_or(0),
            observed_generation: status.observed_generation.unwrap_or(0),
            desired,
            updated: status.updated_replicas.unwrap_or(0),
            available: status
                .available_replicas
                .unwrap_or(status.ready_replicas.unwrap_or(0)),
            total: status.replicas,
            revision_pending: status.update_revision.is_some()
                && status.current_revision != status.update_revision,
            strategy,
            restarted_at,
            opted_out,
            paused: false,
        }
    }

    pub fn from_daemon_set(d: &DaemonSet) -> Self {
        let spec = d.spec.clone().unwrap_or_default();
        let status = d.status.clone().unwrap_or_default();
        let desired = status.desired_number_scheduled;
        let update = spec.update_strategy.unwrap_or_default();
        let strategy = if update.type_.as_deref() == Some("OnDelete") {
            Strategy::OnDelete
        } else {
            let rolling = update.rolling_update.unwrap_or_default();
            Strategy::Rolling {
                max_surge: resolve(rolling.max_surge.as_ref(), desired, "0", true),
                max_unavailable: resolve(rolling.max_unavailable.as_ref(), desired, "1", false),
            }
        };
        let (restarted_at, opted_out) = template_facts(&spec.template);
        Self {
            kind: WorkloadKind::DaemonSet,
            name: d.name_any(),
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: status.observed_generation.unwrap_or(0),
            desired,
            updated: status.updated_number_scheduled.unwrap_or(0),
            available: status.number_available.unwrap_or(0),
            total: status.current_number_scheduled,
            revision_pending: false,
            strategy,
            restarted_at,
            opted_out,
            paused: false,
        }
    }

    /// `Deployment payments/api`.
    pub fn describe(&self, namespace: &str) -> String {
        format!("{} {namespace}/{}", self.kind, self.name)
    }
}

/// The merge patch `kubectl rollout restart` sends: a new restart time on the template.
pub fn restart_patch(at: Timestamp) -> Value {
    json!({ "spec": { "template": { "metadata": { "annotations": {
        RESTARTED_AT_ANNOTATION: at.to_string(),
    } } } } })
}

/// Whether a workload's rollout has completed, and if not, what it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutProgress {
    Complete,
    InProgress(String),
}

pub fn rollout_progress(w: &Workload) -> RolloutProgress {
    use RolloutProgress::*;
    if w.observed_generation < w.generation {
        return InProgress(format!(
            "waiting for its controller to observe generation {}",
            w.generation
        ));
    }
    if w.updated < w.desired {
        return InProgress(format!("{} of {} pods updated", w.updated, w.desired));
    }
    if w.total > w.updated {
        return InProgress(format!(
            "{} old pods still terminating",
            w.total - w.updated
        ));
    }
    if w.available < w.desired {
        return InProgress(format!("{} of {} pods available", w.available, w.desired));
    }
    if w.revision_pending {
        return InProgress("its current revision is not the update revision yet".to_owned());
    }
    Complete
}

/// Why a template change would not restart all the workload's pods.
pub fn cannot_restart(w: &Workload, namespace: &str) -> Option<String> {
    if w.opted_out {
        return None;
    }
    let who = w.describe(namespace);
    match w.strategy {
        Strategy::OnDelete => Some(format!(
            "{who} has updateStrategy OnDelete: a template change replaces no pod; restart it by hand or change its strategy"
        )),
        Strategy::Partitioned { partition } => Some(format!(
            "{who} has rollingUpdate.partition {partition}: pods below that ordinal would keep their revision"
        )),
        _ if w.paused => Some(format!(
            "{who} is paused: a template change rolls nothing until it is resumed"
        )),
        _ => None,
    }
}

/// Restarts that cannot be free of downtime.
pub fn downtime_warnings(w: &Workload, namespace: &str) -> Vec<String> {
    if w.opted_out || w.desired == 0 {
        return Vec::new();
    }
    let who = w.describe(namespace);
    match &w.strategy {
        Strategy::Recreate => vec![format!(
            "{who} uses strategy Recreate: all its pods stop before the new ones start"
        )],
        Strategy::Rolling { max_surge: 0, .. } if w.desired == 1 => vec![format!(
            "{who} has a single replica and maxSurge 0: it is down until its replacement is Ready"
        )],
        Strategy::Rolling { .. } if w.desired == 1 => vec![format!(
            "{who} has a single replica: its connections are cut when it restarts"
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStatus, DeploymentStrategy, RollingUpdateDeployment,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(replicas: i32, strategy: DeploymentStrategy) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("api".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(strategy),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(3),
                replicas: Some(replicas),
                updated_replicas: Some(replicas),
                available_replicas: Some(replicas),
                ..Default::default()
            }),
        }
    }

    fn rolling(surge: IntOrString, unavailable: IntOrString) -> DeploymentStrategy {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(surge),
                max_unavailable: Some(unavailable),
            }),
        }
    }

    #[test]
    fn percentages_resolve_like_the_controllers() {
        let w = Workload::from_deployment(&deployment(
            3,
            rolling(
                IntOrString::String("25%".into()),
                IntOrString::String("25%".into()),
            ),
        ));
        assert_eq!(
            w.strategy,
            Strategy::Rolling {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        let defaults = Workload::from_deployment(&deployment(8, DeploymentStrategy::default()));
        assert_eq!(
            defaults.strategy,
            Strategy::Rolling {
                max_surge: 2,
                max_unavailable: 2
            }
        );
    }

    #[test]
    fn a_rollout_completes_when_every_pod_is_updated_and_available_and_no_old_one_remains() {
        let mut w = Workload::from_deployment(&deployment(3, DeploymentStrategy::default()));
        assert_eq!(rollout_progress(&w), RolloutProgress::Complete);
        w.generation = 4;
        assert!(
            matches!(rollout_progress(&w), RolloutProgress::InProgress(m) if m.contains("generation 4"))
        );
        w.observed_generation = 4;
        w.updated = 1;
        w.total = 4;
        assert_eq!(
            rollout_progress(&w),
            RolloutProgress::InProgress("1 of 3 pods updated".into())
        );
        w.updated = 3;
        assert_eq!(
            rollout_progress(&w),
            RolloutProgress::InProgress("1 old pods still terminating".into())
        );
        w.total = 3;
        w.available = 2;
        assert_eq!(
            rollout_progress(&w),
            RolloutProgress::InProgress("2 of 3 pods available".into())
        );
        w.available = 3;
        w.revision_pending = true;
        assert!(matches!(
            rollout_progress(&w),
            RolloutProgress::InProgress(_)
        ));
    }

    #[test]
    fn the_restart_annotation_is_read_back_as_a_time() {
        let at: Timestamp = "2026-11-29T10:00:00.250Z".parse().unwrap();
        let patch = restart_patch(at);
        let mut d = deployment(2, DeploymentStrategy::default());
        let template: PodTemplateSpec =
            serde_json::from_value(patch["spec"]["template"].clone()).unwrap();
        d.spec.as_mut().unwrap().template = template;
        assert_eq!(Workload::from_deployment(&d).restarted_at, Some(at));
    }

    #[test]
    fn downtime_is_warned_for_single_replicas_recreate_and_no_surge() {
        let ns = "payments";
        let single = Workload::from_deployment(&deployment(
            1,
            rolling(IntOrString::Int(1), IntOrString::Int(0)),
        ));
        assert!(downtime_warnings(&single, ns)[0].contains("single replica: its connections"));
        let no_surge = Workload::from_deployment(&deployment(
            1,
            rolling(IntOrString::Int(0), IntOrString::Int(1)),
        ));
        assert!(downtime_warnings(&no_surge, ns)[0].contains("maxSurge 0"));
        let recreate = Workload::from_deployment(&deployment(
            3,
            DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            },
        ));
        assert!(downtime_warnings(&recreate, ns)[0].contains("Recreate"));
        let fine = Workload::from_deployment(&deployment(
            3,
            rolling(IntOrString::Int(1), IntOrString::Int(0)),
        ));
        assert!(downtime_warnings(&fine, ns).is_empty());
        assert_eq!(cannot_restart(&fine, ns), None);
    }

    #[test]
    fn on_delete_cannot_be_restarted_by_a_template_change() {
        let mut w = Workload::from_deployment(&deployment(3, DeploymentStrategy::default()));
        w.kind = WorkloadKind::StatefulSet;
        w.strategy = Strategy::OnDelete;
        assert!(
            cannot_restart(&w, "db")
                .unwrap()
                .starts_with("StatefulSet db/api has updateStrategy OnDelete")
        );
        w.strategy = Strategy::Partitioned { partition: 2 };
        assert!(
            cannot_restart(&w, "db")
                .unwrap()
                .contains("rollingUpdate.partition 2")
        );
        w.strategy = Strategy::Rolling {
            max_surge: 1,
            max_unavailable: 0,
        };
        assert_eq!(cannot_restart(&w, "db"), None);
        w.paused = true;
        assert!(
            cannot_restart(&w, "db")
                .unwrap()
                .ends_with("is paused: a template change rolls nothing until it is resumed")
        );
        w.opted_out = true;
        assert_eq!(cannot_restart(&w, "db"), None);
    }
}
