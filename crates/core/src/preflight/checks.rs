//! The runbook's guardrails as checks over a snapshot of the cluster. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::drain::budget::{self, pdb_name};
use crate::rollout::revision::{StrategyVerdict, strategy_verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// A stable id for the check, e.g. `pdb-allows-no-disruption`.
    pub check: &'static str,
    /// `kind/namespace/name` of the object concerned.
    pub object: String,
    pub message: String,
}

/// What the checks look at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `namespace/name` of the ztunnel DaemonSet, and the object if it exists.
    pub ztunnel_ref: String,
    pub ztunnel: Option<DaemonSet>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub deployments: Vec<Deployment>,
    pub namespaces: Vec<Namespace>,
    /// The MutatingWebhookConfigurations: Istio's injectors and revision tags.
    pub webhooks: Vec<MutatingWebhookConfiguration>,
    /// The ValidatingWebhookConfigurations: Istio's config validation.
    pub validating_webhooks:
        Vec<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>,
    /// Every istiod and the version it reported (or its image's, when it could not be
    /// asked): the shell reads them.
    pub control_planes: Vec<super::versions::ControlPlane>,
    /// The istio-cni DaemonSet, when the cluster runs one.
    pub cni: Option<DaemonSet>,
}

impl Snapshot {
    /// Keeps the namespaced objects of `namespaces` (all when empty) and the nodes
    /// `nodes` selects: a preflight of one team's slice of the cluster.
    pub fn scoped(
        mut self,
        namespaces: &[String],
        nodes: &crate::label_selector::Selector,
    ) -> Self {
        let keep = |ns: Option<&String>| {
            namespaces.is_empty() || ns.is_some_and(|ns| namespaces.contains(ns))
        };
        self.pods.retain(|p| keep(p.metadata.namespace.as_ref()));
        self.pdbs.retain(|p| keep(p.metadata.namespace.as_ref()));
        self.deployments
            .retain(|d| keep(d.metadata.namespace.as_ref()));
        self.namespaces.retain(|n| keep(n.metadata.name.as_ref()));
        self.nodes
            .retain(|n| nodes.matches(n.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())));
        self
    }
}

fn key(kind: &str, ns: Option<&str>, name: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("{kind}/{ns}/{}", name.unwrap_or_default()),
        None => format!("{kind}/{}", name.unwrap_or_default()),
    }
}

fn finding(severity: Severity, check: &'static str, object: String, message: String) -> Finding {
    Finding {
        severity,
        check,
        object,
        message,
    }
}

fn ready(conditions: Option<&Vec<k8s_openapi::api::core::v1::PodCondition>>) -> bool {
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_zero(v: Option<&IntOrString>) -> bool {
    matches!(v, Some(IntOrString::Int(0)))
        || matches!(v, Some(IntOrString::String(s)) if s == "0%" || s == "0")
}

/// How many nodes a finding names before it counts the rest.
const NAMED_NODES: usize = 5;

fn placement_findings(
    ds: &DaemonSet,
    nodes: &[Node],
    ztunnel_pods: &[&Pod],
    ztunnel_key: &str,
) -> Vec<Finding> {
    use crate::rollout::node_machine::Placement;
    let template = ds.spec.as_ref().and_then(|sp| sp.template.spec.as_ref());
    let mut out = Vec::new();
    let mut excluded = Vec::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        match crate::rollout::placement::placement(template, n) {
            Placement::Excluded(why) => excluded.push(format!("{name} ({why})")),
            Placement::Runs => {
                let has_pod = ztunnel_pods.iter().any(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.spec.as_ref().and_then(|sp| sp.node_name.as_deref())
                            == Some(name.as_str())
                });
                if !has_pod {
                    out.push(finding(
                        Severity::Error,
                        "ztunnel-pod-missing",
                        key("Node", None, Some(&name)),
                        format!(
                            "node {name} should run ztunnel but has no ztunnel pod: a rollout does not cordon it; it waits up to ztunnelReadyTimeout, then fails the node (check the DaemonSet's events: quota, scheduling)"
                        ),
                    ));
                }
            }
        }
    }
    if !excluded.is_empty() {
        let more = excluded.len().saturating_sub(NAMED_NODES);
        let mut named = excluded
            .iter()
            .take(NAMED_NODES)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if more > 0 {
            named.push_str(&format!(" and {more} more"));
        }
        out.push(finding(
            Severity::Info,
            "ztunnel-not-on-node",
            ztunnel_key.to_owned(),
            format!(
                "the DaemonSet does not run on {} node(s); a rollout skips them and never touches them: {named}",
                excluded.len()
            ),
        ));
    }
    out
}

/// A namespace that asks for sidecar injection (`istio-injection=enabled` or
/// `istio.io/rev`) no injector webhook selects gets pods without sidecars: an error. Judged
/// only where some Istio injector exists (without one, there is no control plane to
/// check against). And the revision tag inventory, as `istioctl tag list` shows it.
fn injection_findings(s: &Snapshot) -> Vec<Finding> {
    use crate::labels::{INJECTION_LABEL, REVISION_LABEL};
    let mut out = Vec::new();
    let injectors = s.webhooks.iter().any(|w| {
        w.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(REVISION_LABEL))
    });
    if !injectors {
        return out;
    }
    for ns in &s.namespaces {
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        let asks = labels.get(INJECTION_LABEL).map(String::as_str) == Some("enabled")
            || labels.contains_key(REVISION_LABEL);
        if asks && crate::sidecar::revisions::injecting_revision(&labels, &s.webhooks).is_none() {
            let wanted = labels
                .get(REVISION_LABEL)
                .map(|r| format!("istio.io/rev={r}"))
                .unwrap_or_else(|| "istio-injection=enabled".to_owned());
            out.push(finding(
                Severity::Error,
                "injection-target-missing",
                key("Namespace", None, ns.metadata.name.as_deref()),
                format!(
                    "{wanted}, but no injector webhook selects it (no such revision or tag, or its istiod was uninstalled): pods created there get no sidecar"
                ),
            ));
        }
    }
    let namespaces: Vec<(String, BTreeMap<String, String>)> = s
        .namespaces
        .iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                n.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    for row in crate::sidecar::tags::inventory(&s.webhooks, &namespaces) {
        out.push(finding(
            Severity::Info,
            "revision-tag",
            format!(
                "MutatingWebhookConfiguration/istio-revision-tag-{}",
                row.tag
            ),
            format!(
                "tag {} → revision {}; namespaces: {}",
                row.tag,
                row.revision,
                if row.namespaces.is_empty() {
                    "none".to_owned()
                } else {
                    row.namespaces.join(", ")
                }
            ),
        ));
    }
    out
}

/// Istio installed (an injector of some revision exists) without its validating
/// webhook (`app=istiod`): Istio resources with mistakes are accepted and break traffic
/// later, e.g. during the rollout. A warning.
fn validation_findings(s: &Snapshot) -> Vec<Finding> {
    use crate::labels::REVISION_LABEL;
    let istio = s.webhooks.iter().any(|w| {
        w.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(REVISION_LABEL))
    });
    let validating = s.validating_webhooks.iter().any(|w| {
        w.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .is_some_and(|a| a == "istiod")
    });
    if !istio || validating {
        return Vec::new();
    }
    vec![finding(
        Severity::Warning,
        "validating-webhook-missing",
        "ValidatingWebhookConfiguration/istio-validator".to_owned(),
        "Istio's injectors are installed but no validating webhook of istiod's (label app=istiod): invalid Istio configuration is accepted unchecked; reinstall istiod's base with its validation (istioctl install, or the base/istiod charts)".to_owned(),
    )]
}

/// Whether pods of namespace `labels` are in the mesh: ambient, or asking for sidecars.
fn in_mesh(labels: &BTreeMap<String, String>) -> bool {
    use crate::labels::{DATAPLANE_MODE_LABEL, INJECTION_LABEL, REVISION_LABEL};
    labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some("ambient")
        || labels.get(INJECTION_LABEL).map(String::as_str) == Some("enabled")
        || labels.contains_key(REVISION_LABEL)
}

/// In the mesh's namespaces, Deployments whose pods no PodDisruptionBudget covers (a
/// drain may evict all of a node's replicas at once) or without readiness probes (a
/// replacement counts as available before it serves, so PDBs protect nothing): warnings.
/// Waypoints have their own check.
fn mesh_workload_findings(s: &Snapshot) -> Vec<Finding> {
    let mesh: std::collections::BTreeSet<&str> = s
        .namespaces
        .iter()
        .filter(|n| n.metadata.labels.as_ref().is_some_and(in_mesh))
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let mut out = Vec::new();
    for d in &s.deployments {
        let Some(ns) = d.metadata.namespace.as_deref() else {
            continue;
        };
        let waypoint = d
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::labels::WAYPOINT_MANAGED_LABEL))
            .is_some();
        if !mesh.contains(ns) || waypoint {
            continue;
        }
        let object = key("Deployment", Some(ns), d.metadata.name.as_deref());
        let template = d.spec.as_ref().map(|sp| &sp.template);
        let probe = Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                namespace: Some(ns.to_owned()),
                labels: template.and_then(|t| t.metadata.as_ref()?.labels.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        if budget::covering(&probe, &s.pdbs).is_empty() {
            out.push(finding(
                Severity::Warning,
                "workload-without-pdb",
                object.clone(),
                "no PodDisruptionBudget covers its pods: a drain evicts every replica on a node at once".into(),
            ));
        }
        let unprobed: Vec<&str> = template
            .and_then(|t| t.spec.as_ref())
            .map(|sp| {
                sp.containers
                    .iter()
                    .filter(|c| c.readiness_probe.is_none())
                    .map(|c| c.name.as_str())
                    .collect()
            })
            .unwrap_or_default();
        if !unprobed.is_empty() {
            out.push(finding(
                Severity::Warning,
                "workload-without-readiness-probe",
                object,
                format!(
                    "container(s) {} have no readiness probe: a replacement pod counts as Ready before it serves, so its PodDisruptionBudget lets the next eviction go too early",
                    unprobed.join(", ")
                ),
            ));
        }
    }
    out
}

/// Every finding, errors first.
pub fn run(s: &Snapshot) -> Vec<Finding> {
    use Severity::*;
    let mut out = Vec::new();

    // ztunnel DaemonSet and its pods.
    let ztunnel_key = format!("DaemonSet/{}", s.ztunnel_ref);
    match &s.ztunnel {
        None => out.push(finding(
            Error,
            "ztunnel-missing",
            ztunnel_key.clone(),
            format!("DaemonSet {} not found", s.ztunnel_ref),
        )),
        Some(ds) => {
            if let StrategyVerdict::RollingUpdateRefused(m) = strategy_verdict(ds, false) {
                out.push(finding(
                    Error,
                    "ztunnel-not-ondelete",
                    ztunnel_key.clone(),
                    m,
                ));
            }
        }
    }
    let ztunnel_pods: Vec<&Pod> = s
        .pods
        .iter()
        .filter(|p| {
            p.metadata.owner_references.iter().flatten().any(|o| {
                o.kind == "DaemonSet"
                    && s.ztunnel.as_ref().and_then(|d| d.metadata.uid.as_ref()) == Some(&o.uid)
            })
        })
        .collect();
    for p in &ztunnel_pods {
        if !ready(p.status.as_ref().and_then(|st| st.conditions.as_ref())) {
            let node = p
                .spec
                .as_ref()
                .and_then(|sp| sp.node_name.clone())
                .unwrap_or_default();
            out.push(finding(
                Error,
                "ztunnel-pod-not-ready",
                key(
                    "Pod",
                    p.metadata.namespace.as_deref(),
                    p.metadata.name.as_deref(),
                ),
                format!("ztunnel pod on node {node} is not Ready"),
            ));
        }
    }

    // Nodes the DaemonSet does not run on (skipped by a rollout), and nodes it should
    // run on that have no ztunnel pod (a rollout waits on them, never cordons them).
    if let Some(ds) = &s.ztunnel {
        out.extend(placement_findings(
            ds,
            &s.nodes,
            &ztunnel_pods,
            &ztunnel_key,
        ));
    }

    // Pods the drain leaves that ztunnel proxies: their connections reset.
    let selected: std::collections::BTreeSet<&str> = s
        .nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let resets = crate::health::connections::resets_by_node(
        &s.pods,
        &crate::health::connections::ambient_namespaces(&s.namespaces),
        s.ztunnel.as_ref().and_then(|d| d.metadata.uid.as_deref()),
    );
    for (node, pods) in resets {
        if !selected.contains(node.as_str()) {
            continue;
        }
        out.push(finding(
            Info,
            "connections-reset-on-replace",
            key("Node", None, Some(&node)),
            format!(
                "the drain leaves {} pod(s) ztunnel proxies on node {node}: their connections reset when ztunnel is replaced (the rollout names them when it does): {}",
                pods.len(),
                pods.join(", ")
            ),
        ));
    }

    // Version skew between istiod and the node agents, against Istio's policy.
    let agents: Vec<super::versions::Agent<'_>> = [("ztunnel", &s.ztunnel), ("istio-cni", &s.cni)]
        .into_iter()
        .filter_map(|(component, ds)| {
            ds.as_ref().map(|daemon_set| super::versions::Agent {
                component,
                daemon_set,
            })
        })
        .collect();
    out.extend(super::versions::findings(&s.control_planes, &agents));

    // PodDisruptionBudgets.
    for pdb in &s.pdbs {
        let st = pdb.status.as_ref();
        let expected = st.and_then(|x| x.expected_pods).unwrap_or(0);
        let allowed = st.and_then(|x| x.disruptions_allowed).unwrap_or(0);
        if expected > 0 && allowed == 0 {
            let (severity, why) = if budget::never_allows(pdb) {
                (
                    Error,
                    "it can never allow one: every drain of its pods' nodes will stop at its deadline",
                )
            } else {
                (
                    Warning,
                    "not now (pods not healthy); drains of its pods' nodes wait",
                )
            };
            out.push(finding(
                severity,
                "pdb-allows-no-disruption",
                format!("PodDisruptionBudget/{}", pdb_name(pdb)),
                format!("{}; {why}", budget::describe(pdb)),
            ));
        }
    }
    let mut several: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for p in &s.pods {
        let covering: Vec<String> = budget::covering(p, &s.pdbs)
            .into_iter()
            .map(pdb_name)
            .collect();
        if covering.len() > 1 {
            several
                .entry(covering)
                .or_default()
                .push(p.metadata.name.clone().unwrap_or_default());
        }
    }
    for (pdbs, pods) in several {
        out.push(finding(
            Error,
            "pod-under-several-pdbs",
            format!("PodDisruptionBudget/{}", pdbs.join(",")),
            format!(
                "{} pod(s) ({}) are covered by {}: the Eviction API refuses to evict them (HTTP 500)",
                pods.len(),
                pods.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                pdbs.join(" and ")
            ),
        ));
    }

    // Deployments and waypoints.
    for d in &s.deployments {
        let object = key(
            "Deployment",
            d.metadata.namespace.as_deref(),
            d.metadata.name.as_deref(),
        );
        let spec = d.spec.as_ref();
        let replicas = spec.and_then(|sp| sp.replicas).unwrap_or(1);
        let rolling = spec
            .and_then(|sp| sp.strategy.as_ref())
            .and_then(|st| st.rolling_update.as_ref());
        if rolling
            .is_some_and(|r| is_zero(r.max_unavailable.as_ref()) && is_zero(r.max_surge.as_ref()))
        {
            out.push(finding(
                Error,
                "deployment-cannot-roll",
                object.clone(),
                "maxUnavailable 0 and maxSurge 0: it can never replace a pod".into(),
            ));
        }
        let labels = d.metadata.labels.clone().unwrap_or_default();
        let is_waypoint = labels
            .get(crate::labels::WAYPOINT_MANAGED_LABEL)
            .map(String::as_str)
            == Some("istio.io-mesh-controller");
        if is_waypoint {
            let template_labels = spec
                .and_then(|sp| sp.template.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            let probe = Pod {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    namespace: d.metadata.namespace.clone(),
                    labels: Some(template_labels),
                    ..Default::default()
                },
                ..Default::default()
            };
            let has_pdb = !budget::covering(&probe, &s.pdbs).is_empty();
            if replicas <= 1 || !has_pdb {
                out.push(finding(
                    Warning,
                    "waypoint-unprotected",
                    object.clone(),
                    format!(
                        "waypoint with {replicas} replica(s){}: draining its node interrupts the traffic it serves",
                        if has_pdb { "" } else { " and no PodDisruptionBudget" }
                    ),
                ));
            }
        } else if replicas == 1 {
            out.push(finding(
                Warning,
                "single-replica",
                object,
                "one replica: draining its node makes it unavailable until the pod is rescheduled"
                    .into(),
            ));
        }
    }

    // Namespaces with both injection labels.
    for ns in &s.namespaces {
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        if let (Some(inj), Some(rev)) = (labels.get("istio-injection"), labels.get("istio.io/rev"))
        {
            out.push(finding(
                Warning,
                "namespace-two-injection-labels",
                key("Namespace", None, ns.metadata.name.as_deref()),
                format!(
                    "istio-injection={inj} and istio.io/rev={rev}: istio-injection wins; remove one"
                ),
            ));
        }
    }

    // Sidecar injection: every namespace that asks for it has an injector, and the tags.
    out.extend(injection_findings(s));
    out.extend(validation_findings(s));
    out.extend(mesh_workload_findings(s));

    // Nodes.
    for n in &s.nodes {
        let object = key("Node", None, n.metadata.name.as_deref());
        if n.spec.as_ref().and_then(|sp| sp.unschedulable) == Some(true) {
            out.push(finding(
                Info,
                "node-cordoned",
                object.clone(),
                "already cordoned: it stays cordoned after the rollout".into(),
            ));
        }
        let node_ready = n
            .status
            .as_ref()
            .and_then(|st| st.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !node_ready {
            out.push(finding(
                Warning,
                "node-not-ready",
                object,
                "NotReady: the rollout waits for it".into(),
            ));
        }
    }

    out.sort_by(|a, b| (a.severity, a.check, &a.object).cmp(&(b.severity, b.check, &b.object)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        NodeCondition, NodeSpec, NodeStatus, PodCondition, PodStatus,
    };
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use ztunnel_rollout_testbed::fixtures::{
        AppFixture, Budget, UpdateStrategy, ZtunnelFixture, pdb,
    };

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ztunnel(strategy: UpdateStrategy) -> DaemonSet {
        let mut f = ZtunnelFixture::new("istio-system", "1.28.0");
        f.strategy = strategy;
        let mut ds = f.daemonset();
        ds.metadata.uid = Some("ds".into());
        ds
    }

    fn pod(ns: &str, name: &str, app: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn budget_with(
        ns: &str,
        name: &str,
        app: &str,
        allowed: i32,
        desired: i32,
        expected: i32,
    ) -> PodDisruptionBudget {
        let mut p = pdb(
            ns,
            name,
            labels(&[("app", app)]),
            Budget::MinAvailable(IntOrString::Int(desired)),
        );
        p.status = Some(PodDisruptionBudgetStatus {
            disruptions_allowed: Some(allowed),
            desired_healthy: Some(desired),
            current_healthy: Some(expected),
            expected_pods: Some(expected),
            ..Default::default()
        });
        p
    }

    fn ns(name: &str, l: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(l)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn healthy() -> Snapshot {
        Snapshot {
            ztunnel_ref: "istio-system/ztunnel".into(),
            ztunnel: Some(ztunnel(UpdateStrategy::OnDelete)),
            ..Default::default()
        }
    }

    fn checks(s: &Snapshot) -> Vec<(Severity, &'static str)> {
        run(s).into_iter().map(|f| (f.severity, f.check)).collect()
    }

    #[test]
    fn a_healthy_cluster_has_no_findings() {
        assert_eq!(checks(&healthy()), vec![]);
    }

    #[test]
    fn the_ztunnel_daemonset_must_exist_be_ondelete_and_ready() {
        let mut s = healthy();
        s.ztunnel = None;
        assert_eq!(checks(&s), vec![(Severity::Error, "ztunnel-missing")]);
        s.ztunnel = Some(ztunnel(UpdateStrategy::RollingUpdate));
        let mut z = pod("istio-system", "ztunnel-1", "ztunnel", false);
        z.metadata.owner_references = Some(vec![OwnerReference {
            kind: "DaemonSet".into(),
            uid: "ds".into(),
            ..Default::default()
        }]);
        s.pods.push(z);
        assert_eq!(
            checks(&s),
            vec![
                (Severity::Error, "ztunnel-not-ondelete"),
                (Severity::Error, "ztunnel-pod-not-ready")
            ]
        );
    }

    #[test]
    fn nodes_ztunnel_skips_are_noted_and_a_node_missing_its_pod_is_an_error() {
        let mut s = healthy();
        let mut ds = ZtunnelFixture::new("istio-system", "1.28.0");
        ds.node_selector = labels(&[("kubernetes.io/os", "linux")]);
        let mut ds = ds.daemonset();
        ds.metadata.uid = Some("ds".into());
        s.ztunnel = Some(ds);
        let node = |name: &str, os: &str| Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(&[("kubernetes.io/os", os)])),
                ..Default::default()
            },
            ..Default::default()
        };
        s.nodes = vec![
            node("linux-1", "linux"),
            node("linux-2", "linux"),
            node("win-1", "windows"),
        ];
        let mut z = pod("istio-system", "ztunnel-1", "ztunnel", true);
        z.metadata.owner_references = Some(vec![OwnerReference {
            kind: "DaemonSet".into(),
            uid: "ds".into(),
            ..Default::default()
        }]);
        z.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("linux-1".into()),
            ..Default::default()
        });
        s.pods.push(z);
        let found: Vec<Finding> = run(&s)
            .into_iter()
            .filter(|f| f.check.starts_with("ztunnel"))
            .collect();
        let ids: Vec<(Severity, &str, &str)> = found
            .iter()
            .map(|f| (f.severity, f.check, f.object.as_str()))
            .collect();
        assert_eq!(
            ids,
            vec![
                (Severity::Error, "ztunnel-pod-missing", "Node/linux-2"),
                (
                    Severity::Info,
                    "ztunnel-not-on-node",
                    "DaemonSet/istio-system/ztunnel"
                ),
            ]
        );
        assert!(
            found[1]
                .message
                .contains("win-1 (its nodeSelector kubernetes.io/os=linux does not match)"),
            "{}",
            found[1].message
        );
    }

    #[test]
    fn budgets_that_block_or_overlap_are_reported() {
        let mut s = healthy();
        s.pdbs = vec![
            budget_with("shop", "api", "api", 0, 3, 3),
            budget_with("shop", "web", "web", 0, 1, 2),
            budget_with("shop", "cart-a", "cart", 1, 1, 2),
            budget_with("shop", "cart-b", "cart", 1, 1, 2),
        ];
        s.pods = vec![
            pod("shop", "cart-1", "cart", true),
            pod("shop", "cart-2", "cart", true),
        ];
        let found = run(&s);
        let ids: Vec<(Severity, &str)> = found.iter().map(|f| (f.severity, f.check)).collect();
        assert_eq!(
            ids,
            vec![
                (Severity::Error, "pdb-allows-no-disruption"),
                (Severity::Error, "pod-under-several-pdbs"),
                (Severity::Warning, "pdb-allows-no-disruption"),
            ]
        );
        assert!(
            found[0]
                .message
                .contains("PDB shop/api allows 0 disruptions (needs 3 healthy, has 3)"),
            "{}",
            found[0].message
        );
        assert!(
            found[1].message.contains("shop/cart-a and shop/cart-b"),
            "{}",
            found[1].message
        );
    }

    #[test]
    fn workloads_waypoints_namespaces_and_nodes() {
        let mut s = healthy();
        s.deployments = vec![
            AppFixture::new("shop", "solo", 1).deployment(),
            AppFixture::waypoint("shop", "waypoint").deployment(),
            AppFixture::new("shop", "fine", 3).deployment(),
        ];
        s.namespaces = vec![Namespace {
            metadata: ObjectMeta {
                name: Some("legacy".into()),
                labels: Some(labels(&[
                    ("istio-injection", "enabled"),
                    ("istio.io/rev", "canary"),
                ])),
                ..Default::default()
            },
            ..Default::default()
        }];
        s.nodes = vec![Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                unschedulable: Some(true),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }];
        let mut istiod = AppFixture::new("istio-system", "istiod", 1).deployment();
        istiod.metadata.labels = Some(labels(&[("app", "istiod")]));
        istiod
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("docker.io/istio/pilot:1.29.1".into());
        s.deployments.push(istiod);
        // istiod reports 1.30: two minor versions ahead of ztunnel's 1.28.
        s.control_planes = vec![crate::preflight::versions::ControlPlane {
            revision: "default".into(),
            object: "Service/istio-system/istiod".into(),
            version: Some("1.30.1-abc-Clean".into()),
            source: "http://istiod:15014/version".into(),
            unread: None,
        }];
        assert_eq!(
            checks(&s),
            vec![
                (Severity::Error, "version-skew"),
                // n1 has no ztunnel pod in this snapshot.
                (Severity::Error, "ztunnel-pod-missing"),
                (Severity::Warning, "namespace-two-injection-labels"),
                (Severity::Warning, "node-not-ready"),
                (Severity::Warning, "single-replica"),
                (Severity::Warning, "single-replica"),
                (Severity::Warning, "waypoint-unprotected"),
                (Severity::Info, "node-cordoned"),
                (Severity::Info, "versions"),
            ]
        );
    }

    #[test]
    fn enrolled_pods_the_drain_leaves_are_named_per_selected_node() {
        let mut s = healthy();
        s.nodes = vec![ztunnel_rollout_testbed::fixtures::node(
            "n1",
            &BTreeMap::new(),
        )];
        s.namespaces =
            vec![serde_json::from_value(serde_json::json!({
            "metadata": { "name": "infra", "labels": { "istio.io/dataplane-mode": "ambient" } }
        }))
        .unwrap()];
        let on = |node: &str, name: &str, owner: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": name, "namespace": "infra", "ownerReferences": [
                    { "apiVersion": "apps/v1", "kind": owner, "name": "log-agent", "uid": "u", "controller": true }
                ] },
                "spec": { "nodeName": node, "containers": [] },
            }))
            .unwrap()
        };
        s.pods = vec![
            on("n1", "log-agent-1", "DaemonSet"),
            on("n1", "cart-1", "ReplicaSet"),
            on("n2", "log-agent-2", "DaemonSet"),
        ];
        let found: Vec<Finding> = run(&s)
            .into_iter()
            .filter(|f| f.check == "connections-reset-on-replace")
            .collect();
        assert_eq!(found.len(), 1, "n2 is not selected: {found:?}");
        assert_eq!(found[0].severity, Severity::Info);
        assert_eq!(found[0].object, "Node/n1");
        assert!(
            found[0]
                .message
                .contains("infra/log-agent-1 (DaemonSet log-agent)")
                && !found[0].message.contains("cart-1"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn namespaces_without_an_injector_are_errors_and_tags_are_listed() {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let selecting = |name: &str, rev_labels: &[(&str, &str)], selects: &[(&str, &str)]| {
            MutatingWebhookConfiguration {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels(rev_labels)),
                    ..Default::default()
                },
                webhooks: Some(vec![MutatingWebhook {
                    name: "rev.namespace.sidecar-injector.istio.io".into(),
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(labels(selects)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
            }
        };
        let namespaces = vec![
            ns("shop", &[("istio.io/rev", "prod-stable")]),
            ns("web", &[("istio.io/rev", "1-30")]),
            ns("gone", &[("istio.io/rev", "1-28")]),
            ns("legacy", &[("istio-injection", "enabled")]),
            ns("plain", &[]),
        ];
        let mut s = Snapshot {
            ztunnel_ref: "istio-system/ztunnel".into(),
            ztunnel: Some(ztunnel(UpdateStrategy::OnDelete)),
            namespaces: namespaces.clone(),
            ..Default::default()
        };
        assert!(
            injection_findings(&s).is_empty(),
            "no injector at all: no control plane to judge against"
        );
        s.webhooks = vec![
            selecting(
                "istio-sidecar-injector-1-30",
                &[("istio.io/rev", "1-30")],
                &[("istio.io/rev", "1-30")],
            ),
            selecting(
                "istio-revision-tag-prod-stable",
                &[("istio.io/rev", "1-30"), ("istio.io/tag", "prod-stable")],
                &[("istio.io/rev", "prod-stable")],
            ),
        ];
        let found = injection_findings(&s);
        let summary: Vec<(Severity, &str, &str)> = found
            .iter()
            .map(|f| (f.severity, f.check, f.object.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    Severity::Error,
                    "injection-target-missing",
                    "Namespace/gone"
                ),
                (
                    Severity::Error,
                    "injection-target-missing",
                    "Namespace/legacy"
                ),
                (
                    Severity::Info,
                    "revision-tag",
                    "MutatingWebhookConfiguration/istio-revision-tag-prod-stable"
                ),
            ]
        );
        assert!(
            found[0].message.contains("istio.io/rev=1-28"),
            "{}",
            found[0].message
        );
        assert!(
            found[1].message.contains("istio-injection=enabled"),
            "{}",
            found[1].message
        );
        assert_eq!(
            found[2].message,
            "tag prod-stable → revision 1-30; namespaces: shop"
        );
        assert!(
            run(&s)
                .iter()
                .any(|f| f.check == "injection-target-missing"),
            "run includes them"
        );
    }

    #[test]
    fn istio_without_its_validating_webhook_is_a_warning() {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        let mut s = healthy();
        s.validating_webhooks = vec![];
        assert!(
            validation_findings(&s).is_empty(),
            "no Istio: nothing to judge"
        );
        s.webhooks = vec![MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some("istio-sidecar-injector".into()),
                labels: Some(labels(&[("istio.io/rev", "default")])),
                ..Default::default()
            },
            webhooks: None,
        }];
        assert_eq!(
            checks(&s),
            vec![(Severity::Warning, "validating-webhook-missing")]
        );
        // Another product's validating webhook does not count.
        let webhook = |app: &str| ValidatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(format!("{app}-validator")),
                labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            webhooks: None,
        };
        s.validating_webhooks = vec![webhook("cert-manager")];
        assert_eq!(validation_findings(&s).len(), 1);
        s.validating_webhooks.push(webhook("istiod"));
        assert!(validation_findings(&s).is_empty());
    }

    #[test]
    fn mesh_workloads_without_a_pdb_or_readiness_probes_are_warnings() {
        let mut s = healthy();
        s.namespaces = vec![
            ns("ambient", &[("istio.io/dataplane-mode", "ambient")]),
            ns("sidecars", &[("istio.io/rev", "canary")]),
            ns("outside", &[]),
        ];
        let app = |ns: &str, name: &str, probed: bool| {
            let mut d = AppFixture::new(ns, name, 2).deployment();
            if let Some(c) = d
                .spec
                .as_mut()
                .and_then(|sp| sp.template.spec.as_mut())
                .and_then(|ps| ps.containers.first_mut())
            {
                c.readiness_probe = probed.then(Default::default);
            }
            d
        };
        s.deployments = vec![
            app("ambient", "covered", true),
            app("ambient", "bare", true),
            app("sidecars", "unprobed", false),
            app("outside", "ignored", false),
        ];
        s.pdbs = vec![
            budget_with("ambient", "covered", "covered", 1, 1, 2),
            budget_with("sidecars", "unprobed", "unprobed", 1, 1, 2),
        ];
        let found: Vec<(&str, String)> = mesh_workload_findings(&s)
            .into_iter()
            .map(|f| (f.check, f.object))
            .collect();
        assert_eq!(
            found,
            vec![
                ("workload-without-pdb", "Deployment/ambient/bare".to_owned()),
                (
                    "workload-without-readiness-probe",
                    "Deployment/sidecars/unprobed".to_owned()
                ),
            ]
        );
    }
}
