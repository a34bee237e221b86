//! Which pods a drain evicts, waits for, skips or refuses, and why — kubectl drain's
//! rules, decided for every pod before anything is evicted.

use std::time::Duration;

use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Pod, PodSpec, PodStatus, Volume};
use k8s_openapi::jiff::Timestamp;

use crate::label_selector::Selector;
use crate::labels::MIRROR_POD_ANNOTATION;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterOptions {
    /// Evict pods with emptyDir volumes (their data is lost).
    pub delete_emptydir_data: bool,
    /// Evict pods that no controller will recreate.
    pub force: bool,
    /// Only pods matching this are drained (kubectl's `--pod-selector`); the rest are left
    /// alone. `!keep-me` or `app!=db` leave the matching pods alone.
    pub pod_selector: Selector,
    /// Pods matching this are left alone (a rollout's `drain.skipPodSelector`).
    pub skip_selector: Option<Selector>,
    /// Pods terminating for longer than this are not waited for (a dead node never
    /// confirms their exit). `None` waits for every pod.
    pub skip_wait_for_delete_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Evict it; the note says why it is special, if it is.
    Evict {
        note: Option<String>,
    },
    /// Already terminating: wait for it to go.
    AwaitTermination,
    Skip(String),
    Refuse(String),
}

/// One pod of the node and what the drain does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub disposition: Disposition,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DrainPlan {
    pub pods: Vec<PlannedPod>,
}

impl DrainPlan {
    pub fn refused(&self) -> impl Iterator<Item = &PlannedPod> {
        self.pods
            .iter()
            .filter(|p| matches!(p.disposition, Disposition::Refuse(_)))
    }

    pub fn has_refusals(&self) -> bool {
        self.refused().next().is_some()
    }
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn controller_kind_name(pod: &Pod) -> Option<(&str, &str)> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

fn empty_dir_volumes(pod: &Pod) -> Vec<&str> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| v.empty_dir.is_some())
        .map(|v| v.name.as_str())
        .collect()
}

/// What the drain does with `pod`, at time `now`. Reads only what
/// [`keep_what_the_drain_reads`] keeps (the drain classifies trimmed pods).
pub fn classify(pod: &Pod, opts: &FilterOptions, now: Timestamp) -> Disposition {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if !opts.pod_selector.matches(&labels) {
        return Disposition::Skip(format!(
            "not selected by --pod-selector {}",
            opts.pod_selector
        ));
    }
    if let Some(skip) = opts.skip_selector.as_ref().filter(|s| s.matches(&labels)) {
        return Disposition::Skip(format!("matches the skip selector {skip}"));
    }
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        let terminating_for = now.duration_since(deleted.0);
        return match opts.skip_wait_for_delete_timeout {
            Some(limit) if terminating_for.as_secs_f64() > limit.as_secs_f64() => {
                Disposition::Skip(format!(
                    "terminating for {}s, longer than the skip-wait-for-delete timeout",
                    terminating_for.as_secs()
                ))
            }
            _ => Disposition::AwaitTermination,
        };
    }
    if let Some(("DaemonSet", name)) = controller_kind_name(pod) {
        return Disposition::Skip(format!("managed by DaemonSet {name}"));
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION))
    {
        return Disposition::Skip("mirror pod of a static pod".to_owned());
    }
    if finished(pod) {
        return Disposition::Evict {
            note: Some("finished".to_owned()),
        };
    }
    let mut notes = Vec::new();
    let empty_dirs = empty_dir_volumes(pod);
    if !empty_dirs.is_empty() {
        if !opts.delete_emptydir_data {
            return Disposition::Refuse(format!(
                "has emptyDir volumes ({}) whose data would be lost; allow with --delete-emptydir-data",
                empty_dirs.join(", ")
            ));
        }
        notes.push(format!("emptyDir data deleted ({})", empty_dirs.join(", ")));
    }
    if controller_kind_name(pod).is_none() {
        if !opts.force {
            return Disposition::Refuse(
                "has no controller to recreate it; allow with --force".to_owned(),
            );
        }
        notes.push("no controller: it will not be recreated".to_owned());
    }
    Disposition::Evict {
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// Cuts `pod` down to what [`classify`], the budgets' selectors and the drain's waits
/// read: name, namespace, UID, labels, owners, deletion time, the mirror-pod annotation,
/// the names of emptyDir volumes and the phase. A drain holds its node's pods for as
/// long as it runs, and the containers, the other volumes, the status and the write
/// history are most of a pod (pod specs, the drains' caches with the Deployments'
/// templates, were 5.9 MB of the agent's heap at 1,000 realistic nodes). A field that
/// [`classify`] or [`super::budget::covering`] starts to read must be kept here too.
pub fn keep_what_the_drain_reads(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == MIRROR_POD_ANNOTATION);
    }
    pod.spec = pod.spec.take().map(|s| PodSpec {
        volumes: s.volumes.map(|vs| {
            vs.into_iter()
                .filter(|v| v.empty_dir.is_some())
                .map(|v| Volume {
                    name: v.name,
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        ..Default::default()
    });
}

/// Decides for every pod of the node at once, so all refusals are known before anything
/// is evicted.
pub fn plan<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    opts: &FilterOptions,
    now: Timestamp,
) -> DrainPlan {
    let mut planned: Vec<PlannedPod> = pods
        .into_iter()
        .map(|p| PlannedPod {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            disposition: classify(p, opts, now),
        })
        .collect();
    planned.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    DrainPlan { pods: planned }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, Container, ContainerStatus, EnvVar};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
    };
    use std::collections::BTreeMap;

    fn pod(name: &str, owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".into(), name.into())])),
                owner_references: owner.map(|kind| {
                    vec![OwnerReference {
                        kind: kind.into(),
                        name: format!("{name}-owner"),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    fn with_empty_dir(mut p: Pod) -> Pod {
        p.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "cache".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]);
        p
    }

    fn now() -> Timestamp {
        "2026-11-29T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn replicated_pods_are_evicted() {
        let d = classify(
            &pod("web", Some("ReplicaSet")),
            &FilterOptions::default(),
            now(),
        );
        assert_eq!(d, Disposition::Evict { note: None });
    }

    #[test]
    fn daemonset_and_mirror_pods_are_skipped() {
        let opts = FilterOptions::default();
        let d = classify(&pod("ztunnel", Some("DaemonSet")), &opts, now());
        assert_eq!(
            d,
            Disposition::Skip("managed by DaemonSet ztunnel-owner".into())
        );
        let mut mirror = pod("etcd", Some("Node"));
        mirror.metadata.annotations =
            Some(BTreeMap::from([(MIRROR_POD_ANNOTATION.into(), "x".into())]));
        assert!(
            matches!(classify(&mirror, &opts, now()), Disposition::Skip(r) if r.contains("mirror"))
        );
    }

    #[test]
    fn unmanaged_and_empty_dir_pods_are_refused_unless_allowed() {
        let opts = FilterOptions::default();
        let bare = pod("bare", None);
        assert!(
            matches!(classify(&bare, &opts, now()), Disposition::Refuse(r) if r.contains("--force"))
        );
        let cache = with_empty_dir(pod("cache", Some("ReplicaSet")));
        assert!(
            matches!(classify(&cache, &opts, now()), Disposition::Refuse(r) if r.contains("cache") && r.contains("--delete-emptydir-data"))
        );
        let allowed = FilterOptions {
            force: true,
            delete_emptydir_data: true,
            ..Default::default()
        };
        assert!(
            matches!(classify(&bare, &allowed, now()), Disposition::Evict { note: Some(n) } if n.contains("no controller"))
        );
        assert!(
            matches!(classify(&cache, &allowed, now()), Disposition::Evict { note: Some(n) } if n.contains("emptyDir"))
        );
        let both = with_empty_dir(pod("both", None));
        let only_force = FilterOptions {
            force: true,
            ..Default::default()
        };
        assert!(
            matches!(classify(&both, &only_force, now()), Disposition::Refuse(r) if r.contains("emptyDir"))
        );
    }

    #[test]
    fn finished_pods_are_removed_even_when_unmanaged() {
        let mut done = with_empty_dir(pod("job", None));
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(
            classify(&done, &FilterOptions::default(), now()),
            Disposition::Evict {
                note: Some("finished".into())
            }
        );
    }

    #[test]
    fn pod_selector_leaves_unselected_pods_alone() {
        let opts = FilterOptions {
            pod_selector: Selector::parse("app!=db").unwrap(),
            ..Default::default()
        };
        assert!(
            matches!(classify(&pod("db", None), &opts, now()), Disposition::Skip(r) if r.contains("app!=db"))
        );
        assert_eq!(
            classify(&pod("web", Some("ReplicaSet")), &opts, now()),
            Disposition::Evict { note: None }
        );
        let skipping = FilterOptions {
            skip_selector: Some(Selector::parse("app=db").unwrap()),
            ..Default::default()
        };
        assert!(
            matches!(classify(&pod("db", None), &skipping, now()), Disposition::Skip(r) if r.contains("app=db"))
        );
        assert_eq!(
            classify(&pod("web", Some("ReplicaSet")), &skipping, now()),
            Disposition::Evict { note: None }
        );
    }

    #[test]
    fn terminating_pods_are_awaited_until_the_skip_timeout() {
        let mut p = pod("old", Some("ReplicaSet"));
        p.metadata.deletion_timestamp = Some(Time("2026-11-29T09:59:00Z".parse().unwrap()));
        assert_eq!(
            classify(&p, &FilterOptions::default(), now()),
            Disposition::AwaitTermination
        );
        let opts = FilterOptions {
            skip_wait_for_delete_timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        assert!(matches!(classify(&p, &opts, now()), Disposition::Skip(r) if r.contains("60s")));
        let patient = FilterOptions {
            skip_wait_for_delete_timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        };
        assert_eq!(classify(&p, &patient, now()), Disposition::AwaitTermination);
    }

    #[test]
    fn the_plan_reports_every_refusal_at_once() {
        let pods = vec![
            pod("a-web", Some("ReplicaSet")),
            pod("b-bare", None),
            with_empty_dir(pod("c-cache", Some("StatefulSet"))),
            pod("d-ztunnel", Some("DaemonSet")),
        ];
        let plan = plan(&pods, &FilterOptions::default(), now());
        let refused: Vec<&str> = plan.refused().map(|p| p.name.as_str()).collect();
        assert_eq!(refused, ["b-bare", "c-cache"]);
        assert!(plan.has_refusals());
        assert_eq!(plan.pods.len(), 4);
    }

    /// A pod as the API server sends it: containers, a ConfigMap volume beside its
    /// emptyDir, statuses, annotations and its write history.
    fn as_served(mut p: Pod) -> Pod {
        let spec = p.spec.get_or_insert_with(PodSpec::default);
        spec.containers = vec![Container {
            name: "app".into(),
            image: Some("registry.example/app:1.2.3".into()),
            env: Some(vec![EnvVar {
                name: "MODE".into(),
                value: Some("production".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }];
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "settings".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "settings".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        spec.node_name = Some("node-1".into());
        let status = p.status.get_or_insert_with(PodStatus::default);
        status.container_statuses = Some(vec![ContainerStatus {
            name: "app".into(),
            image: "registry.example/app:1.2.3".into(),
            ready: true,
            ..Default::default()
        }]);
        status.pod_ip = Some("10.0.0.7".into());
        p.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("sidecar.istio.io/status".into(), "x".repeat(500));
        p.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kube-controller-manager".into()),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn a_trimmed_pod_is_classified_and_budgeted_as_the_whole_one() {
        let mut mirror = pod("etcd", Some("Node"));
        mirror.metadata.annotations =
            Some(BTreeMap::from([(MIRROR_POD_ANNOTATION.into(), "x".into())]));
        let mut finished = with_empty_dir(pod("job", None));
        finished.status.as_mut().unwrap().phase = Some("Failed".into());
        let mut terminating = pod("old", Some("ReplicaSet"));
        terminating.metadata.deletion_timestamp =
            Some(Time("2026-11-29T09:59:00Z".parse().unwrap()));
        let pods = [
            pod("web", Some("ReplicaSet")),
            pod("bare", None),
            with_empty_dir(pod("cache", Some("StatefulSet"))),
            pod("ztunnel", Some("DaemonSet")),
            mirror,
            finished,
            terminating,
        ]
        .map(as_served);
        let options = [
            FilterOptions::default(),
            FilterOptions {
                force: true,
                delete_emptydir_data: true,
                skip_wait_for_delete_timeout: Some(Duration::from_secs(30)),
                ..Default::default()
            },
            FilterOptions {
                pod_selector: Selector::parse("app!=web").unwrap(),
                skip_selector: Some(Selector::parse("app=cache").unwrap()),
                ..Default::default()
            },
        ];
        let budget = k8s_openapi::api::policy::v1::PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec {
                selector: Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                        match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                        ..Default::default()
                    },
                ),
                ..Default::default()
            }),
            status: None,
        };
        for whole in &pods {
            let mut trimmed = whole.clone();
            keep_what_the_drain_reads(&mut trimmed);
            let name = whole.metadata.name.as_deref().unwrap();
            for opts in &options {
                assert_eq!(
                    classify(&trimmed, opts, now()),
                    classify(whole, opts, now()),
                    "{name} under {opts:?}"
                );
            }
            assert_eq!(
                super::super::budget::covering(&trimmed, [&budget]).len(),
                super::super::budget::covering(whole, [&budget]).len(),
                "{name}"
            );
            assert_eq!(trimmed.metadata.uid, whole.metadata.uid);
            assert_eq!(
                trimmed.metadata.deletion_timestamp,
                whole.metadata.deletion_timestamp
            );
            assert!(
                trimmed.spec.as_ref().unwrap().containers.is_empty(),
                "{name}"
            );
            assert_eq!(
                trimmed.status,
                Some(PodStatus {
                    phase: whole.status.as_ref().unwrap().phase.clone(),
                    ..Default::default()
                }),
                "{name}"
            );
            let size = |p: &Pod| serde_json::to_vec(p).unwrap().len();
            assert!(
                size(&trimmed) * 2 < size(whole),
                "{name}: {} of {} bytes kept",
                size(&trimmed),
                size(whole)
            );
        }
        let trimmed: Vec<Pod> = pods
            .iter()
            .cloned()
            .map(|mut p| {
                keep_what_the_drain_reads(&mut p);
                p
            })
            .collect();
        for opts in &options {
            assert_eq!(
                plan(&trimmed, opts, now()),
                plan(&pods, opts, now()),
                "{opts:?}"
            );
        }
    }
}
