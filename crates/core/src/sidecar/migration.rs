//! A migration as a whole: which namespaces it moves and from where (decided once, before
//! anything changes, or refused with every reason), which namespaces start next (one
//! batch at a time; none after a failure), and where it stands. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use super::namespace_machine::NamespacePhase;
use super::revisions::{
    NamespaceInjection, RevisionError, injecting_revision, namespace_injection, resolve,
};
use super::workloads::{Workload, cannot_restart, downtime_warnings};
use crate::api::migration::{InjectionLabels, MigrationSpec, SidecarMigrationStatus};
use crate::label_selector::Selector;
use crate::labels::{INJECTION_LABEL, REVISION_LABEL};
use crate::rollout::status::condition;

/// A namespace as the planner sees it.
#[derive(Debug, Clone)]
pub struct NamespaceView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub workloads: Vec<Workload>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNamespace {
    pub name: String,
    pub previous: InjectionLabels,
    pub previous_revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationPlan {
    pub target_revision: String,
    pub namespaces: Vec<PlannedNamespace>,
    pub warnings: Vec<String>,
}

/// Why a migration cannot start; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Refusal(pub Vec<String>);

pub fn injection_labels(labels: &BTreeMap<String, String>) -> InjectionLabels {
    InjectionLabels {
        istio_injection: labels.get(INJECTION_LABEL).cloned(),
        rev: labels.get(REVISION_LABEL).cloned(),
    }
}

/// The labels a namespace moved to `to` carries.
pub fn target_labels(to: &str) -> InjectionLabels {
    InjectionLabels {
        istio_injection: None,
        rev: Some(to.to_owned()),
    }
}

/// Decides the namespaces, their previous labels and revisions, and the target revision;
/// or refuses with every problem found. `claimed` maps the namespaces of other
/// unfinished migrations to their migration's name: two migrations never move one
/// namespace.
pub fn plan(
    spec: &MigrationSpec,
    namespaces: &[NamespaceView],
    webhooks: &[MutatingWebhookConfiguration],
    claimed: &BTreeMap<String, String>,
) -> Result<MigrationPlan, Refusal> {
    let mut problems = Vec::new();
    let target_revision = resolve(&spec.to, webhooks)
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    let chosen: Vec<&NamespaceView> = match (&spec.namespaces, &spec.namespace_selector) {
        (Some(names), _) => names
            .iter()
            .filter_map(|name| {
                let found = namespaces.iter().find(|n| &n.name == name);
                if found.is_none() {
                    problems.push(format!("namespace {name} not found"));
                }
                found
            })
            .collect(),
        (None, Some(selector)) => match Selector::from_label_selector(selector) {
            Ok(s) => {
                let mut matching: Vec<&NamespaceView> =
                    namespaces.iter().filter(|n| s.matches(&n.labels)).collect();
                matching.sort_by(|a, b| a.name.cmp(&b.name));
                if matching.is_empty() {
                    problems.push(format!("namespaceSelector {s} matches no namespace"));
                }
                matching
            }
            Err(e) => {
                problems.push(format!("namespaceSelector: {e}"));
                Vec::new()
            }
        },
        (None, None) => {
            problems.push("set namespaces or namespaceSelector".to_owned());
            Vec::new()
        }
    };
    let mut planned = Vec::new();
    let mut warnings = Vec::new();
    for ns in chosen {
        if let Some(other) = claimed.get(&ns.name) {
            problems.push(format!(
                "namespace {} is being moved by sidecarmigration {other}",
                ns.name
            ));
        }
        let injection = match namespace_injection(&namespace_object(ns)) {
            Ok(i) => Some(i),
            // Only an enabled injection is replaced: a namespace with injection disabled
            // would get sidecars it does not have.
            Err(RevisionError::TwoSelectors { injection, .. })
                if spec.replace_injection_label && injection == "enabled" =>
            {
                Some(NamespaceInjection::Default)
            }
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        for w in &ns.workloads {
            if let Some(why) = cannot_restart(w, &ns.name) {
                problems.push(why);
            }
            warnings.extend(downtime_warnings(w, &ns.name));
        }
        let Some(injection) = injection else { continue };
        let fallback = match injection {
            NamespaceInjection::Default => "default".to_owned(),
            NamespaceInjection::Revision(r) => r,
        };
        planned.push(PlannedNamespace {
            name: ns.name.clone(),
            previous: injection_labels(&ns.labels),
            previous_revision: injecting_revision(&ns.labels, webhooks).unwrap_or(fallback),
        });
    }
    match target_revision {
        Some(target_revision) if problems.is_empty() => Ok(MigrationPlan {
            target_revision,
            namespaces: planned,
            warnings,
        }),
        _ => Err(Refusal(problems)),
    }
}

/// The namespaces of unfinished migrations (a stopped one may still be rolled back),
/// each with its migration's name.
pub fn claimed<'a>(
    migrations: impl IntoIterator<Item = (&'a str, &'a SidecarMigrationStatus)>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, status) in migrations {
        let phase = status.phase.as_deref().and_then(MigrationPhase::parse);
        if matches!(
            phase,
            Some(
                MigrationPhase::Refused
                    | MigrationPhase::Succeeded
                    | MigrationPhase::RolledBack
                    | MigrationPhase::RollbackFailed
            )
        ) {
            continue;
        }
        for ns in &status.namespaces {
            out.insert(ns.name.clone(), name.to_owned());
        }
    }
    out
}

fn namespace_object(ns: &NamespaceView) -> k8s_openapi::api::core::v1::Namespace {
    k8s_openapi::api::core::v1::Namespace {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(ns.name.clone()),
            labels: Some(ns.labels.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationPhase {
    Pending,
    /// The spec cannot be carried out; nothing was changed.
    Refused,
    Progressing,
    Succeeded,
    /// A namespace failed; no further namespace starts.
    Failed,
    RollingBack,
    RolledBack,
    /// The rollback failed for some namespace.
    RollbackFailed,
}

impl MigrationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Pending => "Pending",
            MigrationPhase::Refused => "Refused",
            MigrationPhase::Progressing => "Progressing",
            MigrationPhase::Succeeded => "Succeeded",
            MigrationPhase::Failed => "Failed",
            MigrationPhase::RollingBack => "RollingBack",
            MigrationPhase::RolledBack => "RolledBack",
            MigrationPhase::RollbackFailed => "RollbackFailed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        use MigrationPhase::*;
        [
            Pending,
            Refused,
            Progressing,
            Succeeded,
            Failed,
            RollingBack,
            RolledBack,
            RollbackFailed,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

/// What to do next, and where the migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Namespaces (indices) to start moving.
    pub start: Vec<usize>,
    /// Namespaces (indices) to start moving back.
    pub roll_back: Vec<usize>,
    pub phase: MigrationPhase,
    pub reason: &'static str,
    pub message: String,
}

/// One namespace as the batch decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceState {
    pub phase: NamespacePhase,
    /// It was changed (labels or restarts) by this migration.
    pub touched: bool,
}

pub fn decide(
    names: &[String],
    states: &[NamespaceState],
    batch_size: usize,
    rollback_requested: bool,
) -> Decision {
    use NamespacePhase::*;
    let batch_size = batch_size.max(1);
    let in_flight =
        |phases: &[NamespaceState]| phases.iter().filter(|s| s.phase.in_flight()).count();
    if rollback_requested {
        let mut backwards = states.iter().filter(|s| s.phase.backwards()).count();
        let mut roll_back = Vec::new();
        // Namespaces mid-move go back at once (they are disrupted already); moved ones
        // a batch at a time, the last moved first.
        for (i, s) in states.iter().enumerate().rev() {
            let mid_move = matches!(s.phase, Restarting | Verifying);
            let moved = s.touched && matches!(s.phase, Migrated | Failed);
            if mid_move || (moved && backwards < batch_size) {
                roll_back.push(i);
                backwards += 1;
            }
        }
        let remaining = states
            .iter()
            .any(|s| s.phase.in_flight() || (s.touched && matches!(s.phase, Migrated | Failed)));
        let failed: Vec<&str> = names
            .iter()
            .zip(states)
            .filter(|(_, s)| s.phase == RollbackFailed)
            .map(|(n, _)| n.as_str())
            .collect();
        return if remaining || !roll_back.is_empty() {
            Decision {
                start: Vec::new(),
                roll_back,
                phase: MigrationPhase::RollingBack,
                reason: "RollbackRequested",
                message: "moving every namespace this migration changed back".to_owned(),
            }
        } else if failed.is_empty() {
            Decision {
                start: Vec::new(),
                roll_back,
                phase: MigrationPhase::RolledBack,
                reason: "RolledBack",
                message: "every namespace this migration changed is back on its previous revision"
                    .to_owned(),
            }
        } else {
            Decision {
                start: Vec::new(),
                roll_back,
                phase: MigrationPhase::RollbackFailed,
                reason: "RollbackFailed",
                message: format!("the rollback failed for {}", failed.join(", ")),
            }
        };
    }
    let failed: Vec<&str> = names
        .iter()
        .zip(states)
        .filter(|(_, s)| matches!(s.phase, Failed | RolledBack | RollbackFailed))
        .map(|(n, _)| n.as_str())
        .collect();
    if !failed.is_empty() {
        let message = format!(
            "namespace {} failed; no further namespace starts",
            failed.join(", ")
        );
        return Decision {
            start: Vec::new(),
            roll_back: Vec::new(),
            phase: if in_flight(states) > 0 {
                MigrationPhase::Progressing
            } else {
                MigrationPhase::Failed
            },
            reason: "NamespaceFailed",
            message,
        };
    }
    let batches = states.len().div_ceil(batch_size);
    for (b, chunk) in states.chunks(batch_size).enumerate() {
        if chunk.iter().all(|s| s.phase == Migrated) {
            continue;
        }
        let first = b * batch_size;
        let start = chunk
            .iter()
            .enumerate()
            .filter(|(_, s)| s.phase == Pending)
            .map(|(i, _)| first + i)
            .collect();
        let members = names[first..first + chunk.len()].join(", ");
        return Decision {
            start,
            roll_back: Vec::new(),
            phase: MigrationPhase::Progressing,
            reason: "Progressing",
            message: format!("batch {}/{batches}: {members}", b + 1),
        };
    }
    Decision {
        start: Vec::new(),
        roll_back: Vec::new(),
        phase: MigrationPhase::Succeeded,
        reason: "Succeeded",
        message: format!("{} namespaces moved and verified", states.len()),
    }
}

pub const PROGRESSING: &str = "Progressing";
pub const COMPLETE: &str = "Complete";
pub const DEGRADED: &str = "Degraded";

/// Progressing, Complete and Degraded for where the migration stands.
pub fn conditions(
    previous: &[Condition],
    generation: i64,
    now: Timestamp,
    phase: MigrationPhase,
    reason: &str,
    message: &str,
) -> Vec<Condition> {
    use MigrationPhase::*;
    let degraded = matches!(
        phase,
        Refused | Failed | RollingBack | RolledBack | RollbackFailed
    ) || reason == "NamespaceFailed";
    let progressing = matches!(phase, Pending | Progressing | RollingBack);
    vec![
        condition(
            previous,
            generation,
            now,
            PROGRESSING,
            progressing,
            reason,
            message,
        ),
        if phase == Succeeded {
            condition(previous, generation, now, COMPLETE, true, reason, message)
        } else {
            condition(
                previous,
                generation,
                now,
                COMPLETE,
                false,
                "NotComplete",
                "namespaces remain",
            )
        },
        if degraded {
            condition(previous, generation, now, DEGRADED, true, reason, message)
        } else {
            condition(
                previous,
                generation,
                now,
                DEGRADED,
                false,
                "AsExpected",
                "no namespace failed",
            )
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::workloads::{Strategy, WorkloadKind};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn spec(namespaces: &[&str], to: &str) -> MigrationSpec {
        serde_json::from_value(serde_json::json!({
            "namespaces": namespaces, "to": to,
        }))
        .unwrap()
    }

    fn view(name: &str, labels: &[(&str, &str)]) -> NamespaceView {
        NamespaceView {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            workloads: Vec::new(),
        }
    }

    fn hooks() -> Vec<MutatingWebhookConfiguration> {
        let hook = |name: &str, labels: &[(&str, &str)]| MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            webhooks: None,
        };
        vec![
            hook("istio-sidecar-injector-1-29", &[("istio.io/rev", "1-29")]),
            hook("istio-sidecar-injector-1-30", &[("istio.io/rev", "1-30")]),
            hook(
                "istio-revision-tag-prod-canary",
                &[("istio.io/tag", "prod-canary"), ("istio.io/rev", "1-30")],
            ),
        ]
    }

    #[test]
    fn a_plan_records_each_namespace_s_previous_labels_and_the_resolved_target() {
        let nss = [
            view("a", &[("istio.io/rev", "1-29")]),
            view("b", &[("istio-injection", "enabled")]),
        ];
        let p = plan(
            &spec(&["b", "a"], "prod-canary"),
            &nss,
            &hooks(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(p.target_revision, "1-30");
        assert_eq!(
            p.namespaces,
            vec![
                PlannedNamespace {
                    name: "b".into(),
                    previous: InjectionLabels {
                        istio_injection: Some("enabled".into()),
                        rev: None
                    },
                    previous_revision: "default".into(),
                },
                PlannedNamespace {
                    name: "a".into(),
                    previous: InjectionLabels {
                        istio_injection: None,
                        rev: Some("1-29".into())
                    },
                    previous_revision: "1-29".into(),
                },
            ]
        );
    }

    #[test]
    fn a_selector_picks_matching_namespaces_by_name_and_must_match_one() {
        let nss = [
            view("z", &[("istio.io/rev", "1-29"), ("team", "pay")]),
            view("y", &[("istio.io/rev", "1-29"), ("team", "pay")]),
            view("x", &[("istio.io/rev", "1-29")]),
        ];
        let mut s = spec(&[], "1-30");
        s.namespaces = None;
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("team".into(), "pay".into())])),
            match_expressions: None,
        });
        let p = plan(&s, &nss, &hooks(), &BTreeMap::new()).unwrap();
        let names: Vec<&str> = p.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["y", "z"]);
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("team".into(), "none".into())])),
            match_expressions: None,
        });
        assert_eq!(
            plan(&s, &nss, &hooks(), &BTreeMap::new())
                .unwrap_err()
                .to_string(),
            "namespaceSelector team=none matches no namespace"
        );
    }

    #[test]
    fn every_problem_is_reported_and_nothing_is_planned() {
        let nss = [
            view(
                "both",
                &[("istio-injection", "enabled"), ("istio.io/rev", "1-29")],
            ),
            view("plain", &[]),
        ];
        let err = plan(
            &spec(&["both", "plain", "gone"], "1-31"),
            &nss,
            &hooks(),
            &BTreeMap::new(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        assert!(
            text.contains("no injector for revision or tag \"1-31\""),
            "{text}"
        );
        assert!(
            text.contains("namespace both has both istio-injection=enabled and istio.io/rev=1-29"),
            "{text}"
        );
        assert!(
            text.contains("namespace plain has no sidecar injection label"),
            "{text}"
        );
        assert!(text.contains("namespace gone not found"), "{text}");
    }

    #[test]
    fn a_namespace_another_migration_moves_is_refused() {
        let nss = [view("a", &[("istio.io/rev", "1-29")])];
        let claimed = BTreeMap::from([("a".to_owned(), "earlier".to_owned())]);
        assert_eq!(
            plan(&spec(&["a"], "1-30"), &nss, &hooks(), &claimed)
                .unwrap_err()
                .to_string(),
            "namespace a is being moved by sidecarmigration earlier"
        );
    }

    #[test]
    fn both_labels_are_replaced_only_when_asked() {
        let nss = [view(
            "both",
            &[("istio-injection", "enabled"), ("istio.io/rev", "1-29")],
        )];
        let mut s = spec(&["both"], "1-30");
        assert!(plan(&s, &nss, &hooks(), &BTreeMap::new()).is_err());
        s.replace_injection_label = true;
        let disabled = [view(
            "both",
            &[("istio-injection", "disabled"), ("istio.io/rev", "1-29")],
        )];
        assert!(
            plan(&s, &disabled, &hooks(), &BTreeMap::new()).is_err(),
            "a disabled injection is never replaced"
        );
        let p = plan(&s, &nss, &hooks(), &BTreeMap::new()).unwrap();
        assert_eq!(
            p.namespaces[0].previous,
            InjectionLabels {
                istio_injection: Some("enabled".into()),
                rev: Some("1-29".into())
            }
        );
    }

    #[test]
    fn workloads_that_cannot_restart_refuse_and_risky_ones_warn() {
        let w = |name: &str, strategy: Strategy, desired: i32| Workload {
            kind: WorkloadKind::StatefulSet,
            name: name.into(),
            generation: 1,
            observed_generation: 1,
            desired,
            updated: desired,
            available: desired,
            total: desired,
            revision_pending: false,
            strategy,
            restarted_at: None,
            opted_out: false,
            paused: false,
        };
        let mut ns = view("db", &[("istio.io/rev", "1-29")]);
        ns.workloads = vec![w(
            "single",
            Strategy::Rolling {
                max_surge: 0,
                max_unavailable: 1,
            },
            1,
        )];
        let p = plan(
            &spec(&["db"], "1-30"),
            std::slice::from_ref(&ns),
            &hooks(),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            p.warnings,
            [
                "StatefulSet db/single has a single replica and maxSurge 0: it is down until its replacement is Ready"
            ]
        );
        ns.workloads.push(w("manual", Strategy::OnDelete, 3));
        let err = plan(&spec(&["db"], "1-30"), &[ns], &hooks(), &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("StatefulSet db/manual has updateStrategy OnDelete")
        );
    }

    fn states(phases: &[NamespacePhase]) -> Vec<NamespaceState> {
        phases
            .iter()
            .map(|&phase| NamespaceState {
                phase,
                touched: phase != NamespacePhase::Pending,
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ns{i}")).collect()
    }

    #[test]
    fn one_batch_at_a_time() {
        use NamespacePhase::*;
        let d = decide(&names(3), &states(&[Pending, Pending, Pending]), 2, false);
        assert_eq!(d.start, [0, 1]);
        assert_eq!(d.message, "batch 1/2: ns0, ns1");
        let d = decide(
            &names(3),
            &states(&[Migrated, Verifying, Pending]),
            2,
            false,
        );
        assert!(d.start.is_empty(), "the next batch waits for this one");
        let d = decide(&names(3), &states(&[Migrated, Migrated, Pending]), 2, false);
        assert_eq!(d.start, [2]);
        let d = decide(
            &names(3),
            &states(&[Migrated, Migrated, Migrated]),
            2,
            false,
        );
        assert_eq!(d.phase, MigrationPhase::Succeeded);
    }

    #[test]
    fn a_failure_stops_new_starts_and_fails_once_nothing_is_in_flight() {
        use NamespacePhase::*;
        let d = decide(&names(3), &states(&[Failed, Restarting, Pending]), 2, false);
        assert!(d.start.is_empty());
        assert_eq!(d.phase, MigrationPhase::Progressing);
        assert_eq!(d.reason, "NamespaceFailed");
        let d = decide(
            &names(3),
            &states(&[RolledBack, Migrated, Pending]),
            2,
            false,
        );
        assert_eq!(d.phase, MigrationPhase::Failed);
        assert_eq!(
            d.message,
            "namespace ns0 failed; no further namespace starts"
        );
    }

    #[test]
    fn a_requested_rollback_moves_changed_namespaces_back_last_first() {
        use NamespacePhase::*;
        let d = decide(
            &names(4),
            &states(&[Migrated, Migrated, Verifying, Pending]),
            1,
            true,
        );
        assert_eq!(d.roll_back, [2], "the one mid-move goes back first, alone");
        assert_eq!(d.phase, MigrationPhase::RollingBack);
        let d = decide(
            &names(4),
            &states(&[Migrated, Migrated, RolledBack, Pending]),
            1,
            true,
        );
        assert_eq!(d.roll_back, [1]);
        let d = decide(
            &names(4),
            &states(&[RolledBack, RolledBack, RolledBack, Pending]),
            1,
            true,
        );
        assert_eq!(d.phase, MigrationPhase::RolledBack);
        assert_eq!(d.reason, "RolledBack");
        let d = decide(&names(2), &states(&[RolledBack, RollbackFailed]), 1, true);
        assert_eq!(d.phase, MigrationPhase::RollbackFailed);
        assert_eq!(d.message, "the rollback failed for ns1");
    }

    #[test]
    fn conditions_say_degraded_when_a_namespace_failed() {
        let now: Timestamp = "2026-11-29T10:00:00Z".parse().unwrap();
        let c = conditions(
            &[],
            2,
            now,
            MigrationPhase::Progressing,
            "NamespaceFailed",
            "x",
        );
        assert_eq!(c[0].status, "True");
        assert_eq!(c[2].type_, DEGRADED);
        assert_eq!(c[2].status, "True");
        assert!(c.iter().all(|c| c.observed_generation == Some(2)));
        let c = conditions(&c, 3, now, MigrationPhase::Succeeded, "Succeeded", "done");
        assert_eq!(
            (c[1].type_.as_str(), c[1].status.as_str()),
            (COMPLETE, "True")
        );
        assert_eq!(c[2].status, "False");
    }
}
