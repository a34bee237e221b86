//! One namespace's move: relabel, restart its workloads a few at a time, wait for each
//! rollout to complete, verify every pod's injected revision; and the same steps back to
//! the previous labels on a rollback. Pure: the agent feeds it what it observes and
//! executes the step it returns.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::workloads::{RolloutProgress, Workload, WorkloadKind, cannot_restart, rollout_progress};
use crate::api::migration::InjectionLabels;

pub use crate::api::migration::NamespacePhase;

/// Where a namespace is; persisted in the migration's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub phase: NamespacePhase,
    pub since: Timestamp,
    /// Workloads whose restart annotation is not older were restarted by this step.
    pub step_started: Option<Timestamp>,
    pub verifying_since: Option<Timestamp>,
    pub previous: InjectionLabels,
    pub previous_revision: String,
}

/// The injected revision of one pod of a restarted workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRevision {
    pub name: String,
    /// `None`: no sidecar although the pod did not opt out.
    pub revision: Option<String>,
}

/// What the agent observes of the namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceFacts {
    pub labels: InjectionLabels,
    pub workloads: Vec<Workload>,
    /// Running pods of Deployments, StatefulSets and DaemonSets that did not opt out.
    pub pods: Vec<PodRevision>,
}

/// Where the namespace is going and how patiently.
#[derive(Debug, Clone)]
pub struct Target {
    pub labels: InjectionLabels,
    pub revision: String,
    pub workloads_at_once: usize,
    pub rollout_timeout: Duration,
    pub verify_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set the namespace's injection labels to these (absent ones removed).
    Relabel(InjectionLabels),
    /// Restart these workloads (set their restart annotation to now).
    Restart(Vec<(WorkloadKind, String)>),
    /// Enter `phase`; `step_started` / `verifying_since` become now where it starts
    /// them.
    Enter {
        phase: NamespacePhase,
        message: String,
    },
    /// Nothing to do until something changes, or `until` at the latest.
    Wait {
        message: String,
        until: Option<Timestamp>,
    },
    /// The step failed (the caller applies the failure policy).
    Fail(String),
    /// Finished.
    Done,
}

/// What this step's pods were counted as, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub workloads: u32,
    pub workloads_restarted: u32,
    pub pods: u32,
    pub pods_verified: u32,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The target of the record's current direction: forward to `forward`, backwards to the
/// previous labels and revision.
pub fn direction_target(record: &NamespaceRecord, forward: &Target) -> Target {
    if record.phase.backwards() {
        Target {
            labels: record.previous.clone(),
            revision: record.previous_revision.clone(),
            ..forward.clone()
        }
    } else {
        forward.clone()
    }
}

fn restarted_in_step(w: &Workload, step_started: Option<Timestamp>) -> Option<Timestamp> {
    let started = step_started?;
    w.restarted_at.filter(|at| *at >= started)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// Counts for the status.
pub fn tally(record: &NamespaceRecord, facts: &NamespaceFacts, target: &Target) -> Tally {
    let workloads: Vec<&Workload> = facts.workloads.iter().filter(|w| !w.opted_out).collect();
    let restarted = workloads
        .iter()
        .filter(|w| {
            restarted_in_step(w, record.step_started).is_some()
                && rollout_progress(w) == RolloutProgress::Complete
        })
        .count();
    Tally {
        workloads: count(workloads.len()),
        workloads_restarted: count(restarted),
        pods: count(facts.pods.len()),
        pods_verified: count(
            facts
                .pods
                .iter()
                .filter(|p| p.revision.as_deref() == Some(target.revision.as_str()))
                .count(),
        ),
    }
}

/// Pods the restarted workloads should have (their desired counts) but the agent does
/// not see yet: verification waits for them rather than passing on a partial list.
fn missing_pods(facts: &NamespaceFacts) -> usize {
    let desired: i64 = facts
        .workloads
        .iter()
        .filter(|w| !w.opted_out)
        .map(|w| i64::from(w.desired.max(0)))
        .sum();
    usize::try_from(desired)
        .unwrap_or(0)
        .saturating_sub(facts.pods.len())
}

/// Pods not on the target revision, described: `api-7d9 (1-29), web-1 (no sidecar)`.
fn strays(facts: &NamespaceFacts, revision: &str) -> (usize, String) {
    let wrong: Vec<String> = facts
        .pods
        .iter()
        .filter(|p| p.revision.as_deref() != Some(revision))
        .map(|p| {
            format!(
                "{} ({})",
                p.name,
                p.revision.as_deref().unwrap_or("no sidecar")
            )
        })
        .collect();
    let mut shown = wrong.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if wrong.len() > 5 {
        shown.push_str(&format!(" and {} more", wrong.len() - 5));
    }
    (wrong.len(), shown)
}

/// The next step of a namespace. `forward` is the migration's target; a record going
/// backwards heads for its previous labels and revision instead.
pub fn next_step(
    record: &NamespaceRecord,
    facts: &NamespaceFacts,
    forward: &Target,
    namespace: &str,
    now: Timestamp,
) -> Step {
    use NamespacePhase::*;
    let target = direction_target(record, forward);
    match record.phase {
        Migrated | Failed | RolledBack | RollbackFailed => Step::Done,
        Pending => {
            if facts.labels == target.labels
                && strays(facts, &target.revision).0 == 0
                && missing_pods(facts) == 0
            {
                Step::Enter {
                    phase: Migrated,
                    message: format!(
                        "already on revision {}: {} pods verified",
                        target.revision,
                        facts.pods.len()
                    ),
                }
            } else {
                Step::Enter {
                    phase: Restarting,
                    message: format!("moving to revision {}", target.revision),
                }
            }
        }
        Restarting | RollingBack => restart_step(record, facts, &target, namespace, now),
        Verifying | VerifyingRollback => {
            let (wrong, mut shown) = strays(facts, &target.revision);
            let missing = missing_pods(facts);
            if missing > 0 {
                if !shown.is_empty() {
                    shown.push_str("; ");
                }
                shown.push_str(&format!("{missing} pods of its workloads not seen yet"));
            }
            let done = if record.phase == Verifying {
                Migrated
            } else {
                RolledBack
            };
            if wrong == 0 && missing == 0 {
                return Step::Enter {
                    phase: done,
                    message: format!(
                        "{} pods verified on revision {}",
                        facts.pods.len(),
                        target.revision
                    ),
                };
            }
            let deadline = plus(record.verifying_since.unwrap_or(now), target.verify_timeout);
            let wrong = wrong + missing;
            if now >= deadline {
                Step::Fail(format!(
                    "{wrong} pods not on revision {} after {}: {shown}",
                    target.revision,
                    crate::duration::format_duration(target.verify_timeout)
                ))
            } else {
                Step::Wait {
                    message: format!(
                        "verifying: {wrong} pods not on revision {} yet: {shown}",
                        target.revision
                    ),
                    until: Some(deadline),
                }
            }
        }
    }
}

fn restart_step(
    record: &NamespaceRecord,
    facts: &NamespaceFacts,
    target: &Target,
    namespace: &str,
    now: Timestamp,
) -> Step {
    let workloads: Vec<&Workload> = facts.workloads.iter().filter(|w| !w.opted_out).collect();
    if let Some(why) = workloads.iter().find_map(|w| cannot_restart(w, namespace)) {
        return Step::Fail(why);
    }
    if facts.labels != target.labels {
        let deadline = plus(record.step_started.unwrap_or(now), target.rollout_timeout);
        if now >= deadline {
            return Step::Fail(format!(
                "the namespace's labels did not change within {}",
                crate::duration::format_duration(target.rollout_timeout)
            ));
        }
        return Step::Relabel(target.labels.clone());
    }
    let mut done = 0;
    let mut waiting: Vec<String> = Vec::new();
    let mut not_started: Vec<(WorkloadKind, String)> = Vec::new();
    let mut earliest_deadline: Option<Timestamp> = None;
    for w in &workloads {
        let Some(at) = restarted_in_step(w, record.step_started) else {
            not_started.push((w.kind, w.name.clone()));
            continue;
        };
        match rollout_progress(w) {
            RolloutProgress::Complete => done += 1,
            RolloutProgress::InProgress(why) => {
                let deadline = plus(at, target.rollout_timeout);
                if now >= deadline {
                    return Step::Fail(format!(
                        "{} did not complete its restart within {}: {why}",
                        w.describe(namespace),
                        crate::duration::format_duration(target.rollout_timeout)
                    ));
                }
                earliest_deadline = Some(earliest_deadline.map_or(deadline, |d| d.min(deadline)));
                waiting.push(format!("{} {}: {why}", w.kind, w.name));
            }
        }
    }
    let room = target.workloads_at_once.saturating_sub(waiting.len());
    if !not_started.is_empty() && room > 0 {
        not_started.sort();
        not_started.truncate(room);
        return Step::Restart(not_started);
    }
    if waiting.is_empty() && not_started.is_empty() {
        let phase = if record.phase == NamespacePhase::RollingBack {
            NamespacePhase::VerifyingRollback
        } else {
            NamespacePhase::Verifying
        };
        return Step::Enter {
            phase,
            message: format!(
                "{done} workloads restarted; verifying pods on revision {}",
                target.revision
            ),
        };
    }
    Step::Wait {
        message: format!(
            "restarting: {done}/{} workloads done; {}",
            workloads.len(),
            waiting.join("; ")
        ),
        until: earliest_deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::workloads::Strategy;

    fn t(s: &str) -> Timestamp {
        format!("2026-11-29T10:{s}Z").parse().unwrap()
    }

    fn rev(r: &str) -> InjectionLabels {
        InjectionLabels {
            istio_injection: None,
            rev: Some(r.into()),
        }
    }

    fn enabled() -> InjectionLabels {
        InjectionLabels {
            istio_injection: Some("enabled".into()),
            rev: None,
        }
    }

    fn target() -> Target {
        Target {
            labels: rev("prod-canary"),
            revision: "1-30".into(),
            workloads_at_once: 2,
            rollout_timeout: Duration::from_secs(60),
            verify_timeout: Duration::from_secs(30),
        }
    }

    fn record(phase: NamespacePhase) -> NamespaceRecord {
        NamespaceRecord {
            phase,
            since: t("00:00"),
            step_started: Some(t("00:00")),
            verifying_since: None,
            previous: enabled(),
            previous_revision: "1-29".into(),
        }
    }

    fn workload(name: &str, restarted_at: Option<&str>, complete: bool) -> Workload {
        Workload {
            kind: WorkloadKind::Deployment,
            name: name.into(),
            generation: 2,
            observed_generation: 2,
            desired: 2,
            updated: if complete { 2 } else { 1 },
            available: 2,
            total: if complete { 2 } else { 3 },
            revision_pending: false,
            strategy: Strategy::Rolling {
                max_surge: 1,
                max_unavailable: 0,
            },
            restarted_at: restarted_at.map(t),
            opted_out: false,
            paused: false,
        }
    }

    fn pod(name: &str, revision: Option<&str>) -> PodRevision {
        PodRevision {
            name: name.into(),
            revision: revision.map(str::to_owned),
        }
    }

    fn facts(
        labels: InjectionLabels,
        workloads: Vec<Workload>,
        pods: Vec<PodRevision>,
    ) -> NamespaceFacts {
        NamespaceFacts {
            labels,
            workloads,
            pods,
        }
    }

    #[test]
    fn a_pending_namespace_starts_restarting_unless_it_is_already_there() {
        let f = facts(enabled(), vec![], vec![pod("a", Some("1-29"))]);
        assert!(matches!(
            next_step(
                &record(NamespacePhase::Pending),
                &f,
                &target(),
                "p",
                t("00:01")
            ),
            Step::Enter {
                phase: NamespacePhase::Restarting,
                ..
            }
        ));
        let there = facts(rev("prod-canary"), vec![], vec![pod("a", Some("1-30"))]);
        assert!(matches!(
            next_step(&record(NamespacePhase::Pending), &there, &target(), "p", t("00:01")),
            Step::Enter { phase: NamespacePhase::Migrated, ref message } if message.starts_with("already on revision 1-30")
        ));
    }

    #[test]
    fn labels_change_before_any_restart() {
        let f = facts(enabled(), vec![workload("api", None, true)], vec![]);
        assert_eq!(
            next_step(
                &record(NamespacePhase::Restarting),
                &f,
                &target(),
                "p",
                t("00:01")
            ),
            Step::Relabel(rev("prod-canary"))
        );
    }

    #[test]
    fn workloads_restart_a_few_at_a_time_and_only_once_per_step() {
        let ws = vec![
            workload("c", None, true),
            workload("a", None, true),
            workload("b", None, true),
            // Restarted before this step (by someone else): restarted again.
            workload("old", Some("00:00"), true),
        ];
        let mut r = record(NamespacePhase::Restarting);
        r.step_started = Some(t("00:00.500"));
        let f = facts(rev("prod-canary"), ws, vec![]);
        assert_eq!(
            next_step(&r, &f, &target(), "p", t("00:01")),
            Step::Restart(vec![
                (WorkloadKind::Deployment, "a".into()),
                (WorkloadKind::Deployment, "b".into())
            ])
        );
        let ws = vec![
            workload("a", Some("00:01"), false),
            workload("b", Some("00:01"), true),
            workload("c", None, true),
        ];
        let f = facts(rev("prod-canary"), ws, vec![]);
        // One in progress, room for one more.
        assert_eq!(
            next_step(&r, &f, &target(), "p", t("00:02")),
            Step::Restart(vec![(WorkloadKind::Deployment, "c".into())])
        );
        let ws = vec![
            workload("a", Some("00:01"), false),
            workload("b", Some("00:01"), false),
            workload("c", None, true),
        ];
        let f = facts(rev("prod-canary"), ws, vec![]);
        match next_step(&r, &f, &target(), "p", t("00:02")) {
            Step::Wait { message, until } => {
                assert!(message.contains("0/3 workloads done"), "{message}");
                assert!(
                    message.contains("Deployment a: 1 of 2 pods updated"),
                    "{message}"
                );
                assert_eq!(until, Some(t("01:01")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_restart_that_does_not_complete_in_time_fails_naming_the_workload() {
        let f = facts(
            rev("prod-canary"),
            vec![workload("api", Some("00:01"), false)],
            vec![],
        );
        match next_step(
            &record(NamespacePhase::Restarting),
            &f,
            &target(),
            "payments",
            t("01:01"),
        ) {
            Step::Fail(why) => assert_eq!(
                why,
                "Deployment payments/api did not complete its restart within 1m: 1 of 2 pods updated"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn opted_out_workloads_are_neither_restarted_nor_waited_for() {
        let mut skip = workload("skip", None, false);
        skip.opted_out = true;
        let f = facts(
            rev("prod-canary"),
            vec![skip, workload("api", Some("00:01"), true)],
            vec![],
        );
        assert!(matches!(
            next_step(
                &record(NamespacePhase::Restarting),
                &f,
                &target(),
                "p",
                t("00:02")
            ),
            Step::Enter {
                phase: NamespacePhase::Verifying,
                ..
            }
        ));
    }

    #[test]
    fn verification_needs_every_pod_on_the_target_revision_before_its_deadline() {
        let mut r = record(NamespacePhase::Verifying);
        r.verifying_since = Some(t("00:10"));
        let f = facts(
            rev("prod-canary"),
            vec![],
            vec![
                pod("a", Some("1-30")),
                pod("b", Some("1-29")),
                pod("c", None),
            ],
        );
        match next_step(&r, &f, &target(), "p", t("00:20")) {
            Step::Wait { message, until } => {
                assert_eq!(
                    message,
                    "verifying: 2 pods not on revision 1-30 yet: b (1-29), c (no sidecar)"
                );
                assert_eq!(until, Some(t("00:40")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            next_step(&r, &f, &target(), "p", t("00:40")),
            Step::Fail("2 pods not on revision 1-30 after 30s: b (1-29), c (no sidecar)".into())
        );
        let ok = facts(rev("prod-canary"), vec![], vec![pod("a", Some("1-30"))]);
        assert_eq!(
            next_step(&r, &ok, &target(), "p", t("00:20")),
            Step::Enter {
                phase: NamespacePhase::Migrated,
                message: "1 pods verified on revision 1-30".into()
            }
        );
    }

    #[test]
    fn verification_waits_for_pods_the_cache_does_not_show_yet() {
        let mut r = record(NamespacePhase::Verifying);
        r.verifying_since = Some(t("00:10"));
        // Two desired pods, one seen: not verified, however right the one is.
        let f = facts(
            rev("prod-canary"),
            vec![workload("api", Some("00:01"), true)],
            vec![pod("a", Some("1-30"))],
        );
        match next_step(&r, &f, &target(), "p", t("00:20")) {
            Step::Wait { message, .. } => {
                assert!(
                    message.ends_with("1 pods of its workloads not seen yet"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            next_step(&r, &f, &target(), "p", t("00:40")),
            Step::Fail(why) if why.starts_with("1 pods not on revision 1-30 after 30s")
        ));
    }

    #[test]
    fn labels_that_do_not_change_fail_the_namespace_at_the_rollout_timeout() {
        let f = facts(enabled(), vec![workload("api", None, true)], vec![]);
        assert!(matches!(
            next_step(&record(NamespacePhase::Restarting), &f, &target(), "p", t("01:00")),
            Step::Fail(why) if why == "the namespace's labels did not change within 1m"
        ));
    }

    #[test]
    fn a_rollback_heads_for_the_previous_labels_and_revision() {
        let r = record(NamespacePhase::RollingBack);
        let f = facts(
            rev("prod-canary"),
            vec![workload("api", None, true)],
            vec![],
        );
        assert_eq!(
            next_step(&r, &f, &target(), "p", t("00:01")),
            Step::Relabel(enabled())
        );
        let f = facts(
            enabled(),
            vec![workload("api", Some("00:01"), true)],
            vec![],
        );
        assert!(matches!(
            next_step(&r, &f, &target(), "p", t("00:02")),
            Step::Enter {
                phase: NamespacePhase::VerifyingRollback,
                ..
            }
        ));
        let mut v = record(NamespacePhase::VerifyingRollback);
        v.verifying_since = Some(t("00:02"));
        let f = facts(enabled(), vec![], vec![pod("a", Some("1-29"))]);
        assert!(matches!(
            next_step(&v, &f, &target(), "p", t("00:03")),
            Step::Enter {
                phase: NamespacePhase::RolledBack,
                ..
            }
        ));
    }

    #[test]
    fn tally_counts_restarted_workloads_and_verified_pods() {
        let f = facts(
            rev("prod-canary"),
            vec![
                workload("a", Some("00:01"), true),
                workload("b", None, true),
            ],
            vec![pod("x", Some("1-30")), pod("y", Some("1-29"))],
        );
        assert_eq!(
            tally(&record(NamespacePhase::Restarting), &f, &target()),
            Tally {
                workloads: 2,
                workloads_restarted: 1,
                pods: 2,
                pods_verified: 1
            }
        );
    }
}
