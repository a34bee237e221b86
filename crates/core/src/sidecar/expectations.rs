//! What the agent has just changed but its watch caches may not show yet: a namespace's
//! new labels and workloads' restarts. Overlaid on the observed facts until the cache
//! catches up, so a pass woken by some other event neither relabels nor restarts twice,
//! nor mistakes a just-restarted workload for a finished rollout. Pure.

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;

use super::namespace_machine::NamespaceFacts;
use super::workloads::WorkloadKind;
use crate::api::migration::InjectionLabels;

#[derive(Debug, Default)]
pub struct Expectations {
    labels: HashMap<String, InjectionLabels>,
    restarts: HashMap<(String, WorkloadKind, String), Timestamp>,
}

impl Expectations {
    pub fn relabelled(&mut self, namespace: &str, labels: InjectionLabels) {
        self.labels.insert(namespace.to_owned(), labels);
    }

    pub fn restarted(&mut self, namespace: &str, kind: WorkloadKind, name: &str, at: Timestamp) {
        self.restarts
            .insert((namespace.to_owned(), kind, name.to_owned()), at);
    }

    pub fn clear(&mut self) {
        self.labels.clear();
        self.restarts.clear();
    }

    /// Overlays what the cache does not show yet on `facts`, and forgets what it shows.
    pub fn overlay(&mut self, namespace: &str, facts: &mut NamespaceFacts) {
        if let Some(labels) = self.labels.get(namespace) {
            if &facts.labels == labels {
                self.labels.remove(namespace);
            } else {
                facts.labels = labels.clone();
            }
        }
        for w in &mut facts.workloads {
            let key = (namespace.to_owned(), w.kind, w.name.clone());
            let Some(&at) = self.restarts.get(&key) else {
                continue;
            };
            if w.restarted_at.is_some_and(|seen| seen >= at) {
                self.restarts.remove(&key);
            } else {
                // Restarted, its controller has not even seen the new template yet.
                w.restarted_at = Some(at);
                w.generation = w.observed_generation + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::workloads::{RolloutProgress, Strategy, Workload, rollout_progress};

    fn facts(labels: InjectionLabels, restarted_at: Option<Timestamp>) -> NamespaceFacts {
        NamespaceFacts {
            labels,
            workloads: vec![Workload {
                kind: WorkloadKind::Deployment,
                name: "api".into(),
                generation: 1,
                observed_generation: 1,
                desired: 2,
                updated: 2,
                available: 2,
                total: 2,
                revision_pending: false,
                strategy: Strategy::Rolling {
                    max_surge: 1,
                    max_unavailable: 0,
                },
                restarted_at,
                opted_out: false,
                paused: false,
            }],
            pods: Vec::new(),
        }
    }

    #[test]
    fn what_the_cache_does_not_show_yet_is_overlaid_until_it_does() {
        let moved = InjectionLabels {
            istio_injection: None,
            rev: Some("canary".into()),
        };
        let at: Timestamp = "2026-11-29T10:00:00Z".parse().unwrap();
        let mut e = Expectations::default();
        e.relabelled("p", moved.clone());
        e.restarted("p", WorkloadKind::Deployment, "api", at);

        let mut stale = facts(InjectionLabels::default(), None);
        e.overlay("p", &mut stale);
        assert_eq!(stale.labels, moved);
        assert_eq!(stale.workloads[0].restarted_at, Some(at));
        assert_ne!(
            rollout_progress(&stale.workloads[0]),
            RolloutProgress::Complete,
            "a stale cache must not look like a finished rollout"
        );

        let mut fresh = facts(moved.clone(), Some(at));
        e.overlay("p", &mut fresh);
        assert_eq!(
            fresh.workloads[0].generation, 1,
            "the cache is believed again"
        );
        let mut later = facts(InjectionLabels::default(), None);
        e.overlay("p", &mut later);
        assert_eq!(
            later.labels,
            InjectionLabels::default(),
            "forgotten once seen"
        );
        assert_eq!(later.workloads[0].restarted_at, None);
    }
}
