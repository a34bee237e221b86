//! `manifests/` as the code defines it: the CRD, and everything `kubectl apply -k
//! manifests/` installs to run the agent in a cluster. CI fails when the files differ.
//!
//! The RBAC rules are exactly the requests the agent makes (the agent's integration
//! tests run it under them): no wildcards, no Secrets. Writes that could run code are
//! narrowed: deleting pods and patching the DaemonSet only in the ztunnel DaemonSet's
//! namespace, the patch only of that DaemonSet by name ([`ztunnel_role`]); the writes of
//! sidecar migrations (namespaces, workload restarts) are a separate ClusterRole to opt
//! into ([`sidecar_migration_role`]). [`super::chart`] builds the Helm chart from the
//! same functions.

use kube::CustomResourceExt;
use serde_json::{Value, json};

use super::{SidecarMigration, ZtunnelRollout};

pub const NAMESPACE: &str = "ztunnel-rollout";
pub const NAME: &str = "ztunnel-rollout";
pub const IMAGE: &str = concat!(
    "ghcr.io/ztunnel-rollout/ztunnel-rollout:",
    env!("CARGO_PKG_VERSION")
);
const METRICS_PORT: u16 = 8080;
/// The oldest Kubernetes the CRDs' validation rules (CEL, with `reason`) work on.
pub const MIN_KUBERNETES: &str = "1.30.0-0";

/// The ztunnel DaemonSet the agent may patch and whose namespace's pods it may delete,
/// and the istio-cni DaemonSet in the same namespace (`spec.cni`).
pub struct Ztunnel {
    pub namespace: String,
    pub daemon_set: String,
    pub cni_daemon_set: String,
}

impl Default for Ztunnel {
    /// Istio's defaults.
    fn default() -> Self {
        Self {
            namespace: "istio-system".to_owned(),
            daemon_set: "ztunnel".to_owned(),
            cni_daemon_set: "istio-cni-node".to_owned(),
        }
    }
}

/// The ZtunnelRollout CRD.
pub fn crd() -> Value {
    without_unsigned_formats(serde_json::to_value(ZtunnelRollout::crd()).unwrap_or_default())
}

/// The SidecarMigration CRD.
pub fn sidecar_migration_crd() -> Value {
    without_unsigned_formats(serde_json::to_value(SidecarMigration::crd()).unwrap_or_default())
}

/// A CRD without the integer `format`s schemars adds (`uint32`) that the API server
/// does not know and warns about.
fn without_unsigned_formats(mut crd: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.get("format")
                    .and_then(Value::as_str)
                    .is_some_and(|f| f.starts_with("uint"))
                {
                    m.remove("format");
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut crd);
    crd
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> Value {
    json!({ "apiGroups": [group], "resources": resources, "verbs": verbs })
}

/// Cluster-wide permissions: nodes, pods (drain), DaemonSets and their revisions, PDBs,
/// what the gates and sidecar migrations read, and the rollouts.
pub fn cluster_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": NAME },
        "rules": [
            rule("", &["nodes"], &["get", "list", "watch", "patch"]),
            rule("", &["pods"], &["list", "watch"]),
            rule("", &["pods/eviction"], &["create"]),
            rule("", &["namespaces"], &["list", "watch"]),
            rule("apps", &["daemonsets"], &["list", "watch"]),
            rule("apps", &["controllerrevisions"], &["get", "list", "watch"]),
            rule("apps", &["deployments", "statefulsets"], &["list", "watch"]),
            rule("admissionregistration.k8s.io", &["mutatingwebhookconfigurations"], &["list", "watch"]),
            rule("policy", &["poddisruptionbudgets"], &["list", "watch"]),
            rule("gateway.networking.k8s.io", &["gateways"], &["list", "watch"]),
            // delete: a finished rollout after its ttlSecondsAfterFinished.
            rule("ztunnel-rollout.dev", &["ztunnelrollouts"], &["get", "list", "watch", "patch", "delete"]),
            rule("ztunnel-rollout.dev", &["ztunnelrollouts/status"], &["patch"]),
            rule("ztunnel-rollout.dev", &["sidecarmigrations"], &["get", "list", "watch"]),
            rule("ztunnel-rollout.dev", &["sidecarmigrations/status"], &["patch"]),
        ],
    })
}

/// In the ztunnel DaemonSet's namespace: delete its pods (the replacement), and patch
/// that DaemonSet and istio-cni's alone (the failure policy's rollback restores their
/// previous revisions).
pub fn ztunnel_role(z: &Ztunnel) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": { "name": format!("{NAME}-ztunnel"), "namespace": z.namespace },
        "rules": [
            rule("", &["pods"], &["delete"]),
            {
                "apiGroups": ["apps"],
                "resources": ["daemonsets"],
                "resourceNames": [z.daemon_set, z.cni_daemon_set],
                "verbs": ["patch"],
            },
        ],
    })
}

/// RBAC cannot name pods a DaemonSet creates: this ValidatingAdmissionPolicy (and its
/// binding) lets the agent (`user`) delete only pods the ztunnel DaemonSet or the
/// istio-cni DaemonSet (`z`) controls; the Role above keeps it to their namespace.
/// Evictions (drains) are another request (`pods/eviction`) and are not affected.
pub fn ztunnel_pod_policy(user: &str, z: &Ztunnel) -> (Value, Value) {
    agent_policy(
        &format!("{NAME}-ztunnel-pods"),
        user,
        json!([
            { "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["DELETE"] },
        ]),
        json!([]),
        json!({
            "expression": format!(
                "has(oldObject.metadata.ownerReferences) && oldObject.metadata.ownerReferences.exists(r, r.kind == 'DaemonSet' && (r.name == '{}' || r.name == '{}') && has(r.controller) && r.controller)",
                z.daemon_set, z.cni_daemon_set
            ),
            "messageExpression": "'ztunnel-rollout may delete only the pods of the ztunnel and istio-cni DaemonSets, not ' + oldObject.metadata.name",
            "reason": "Forbidden",
        }),
    )
}

/// A ValidatingAdmissionPolicy named `name` for the requests of `user` (the agent's
/// ServiceAccount) matching `resource_rules`, denying what fails `validation`, and its
/// binding.
fn agent_policy(
    name: &str,
    user: &str,
    resource_rules: Value,
    variables: Value,
    validation: Value,
) -> (Value, Value) {
    let mut policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": { "name": name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": resource_rules },
            "matchConditions": [{
                "name": "by-the-agent",
                "expression": format!("request.userInfo.username == '{user}'"),
            }],
            "validations": [validation],
        },
    });
    if variables.as_array().is_some_and(|v| !v.is_empty()) {
        policy["spec"]["variables"] = variables;
    }
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": name },
        "spec": { "policyName": name, "validationActions": ["Deny"] },
    });
    (policy, binding)
}

/// Opt-in: what sidecar migrations write — namespace labels, and restarts of
/// Deployments, StatefulSets and DaemonSets in the namespaces they move.
pub fn sidecar_migration_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": format!("{NAME}-sidecar-migrations") },
        "rules": [
            rule("", &["namespaces"], &["patch"]),
            rule("apps", &["deployments", "statefulsets", "daemonsets"], &["patch"]),
        ],
    })
}

/// The namespaces sidecar migrations may never change, whoever asks: the system's and
/// Istio's own.
pub const SIDECAR_DENIED_NAMESPACES: [&str; 2] = ["kube-system", "istio-system"];

/// With the sidecar migrations' ClusterRole: a ValidatingAdmissionPolicy (and its
/// binding) that refuses the agent's writes to the denied namespaces and to the
/// workloads in them, which RBAC alone cannot except — but the ztunnel DaemonSet, which
/// the failure policy's rollback patches. `user` is the agent's ServiceAccount user
/// name, `denied` a CEL list of namespace names.
pub fn sidecar_migration_policy(user: &str, denied: &str, ztunnel: &Ztunnel) -> (Value, Value) {
    agent_policy(
        &format!("{NAME}-sidecar-migrations"),
        user,
        json!([
            { "apiGroups": [""], "apiVersions": ["v1"], "resources": ["namespaces"], "operations": ["UPDATE"] },
            { "apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments", "statefulsets", "daemonsets"], "operations": ["UPDATE"] },
        ]),
        json!([{
            "name": "target",
            "expression": "request.resource.resource == 'namespaces' ? request.name : request.namespace",
        }]),
        json!({
            "expression": format!(
                "!(variables.target in {denied}) || (request.resource.resource == 'daemonsets' && request.namespace == '{}' && request.name == '{}')",
                ztunnel.namespace, ztunnel.daemon_set
            ),
            "messageExpression": "'ztunnel-rollout may not change namespace ' + variables.target + ' or its workloads: it is on the sidecar migrations denylist'",
            "reason": "Forbidden",
        }),
    )
}

/// `['a', 'b']`: a CEL list of strings.
fn cel_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// For people who watch rollouts: read them and the migrations (aggregated to `view`).
pub fn viewer_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": format!("{NAME}-viewer"),
            "labels": { "rbac.authorization.k8s.io/aggregate-to-view": "true" },
        },
        "rules": [rule(
            "ztunnel-rollout.dev",
            &["ztunnelrollouts", "ztunnelrollouts/status", "sidecarmigrations", "sidecarmigrations/status"],
            &["get", "list", "watch"],
        )],
    })
}

/// For people who run rollouts: create them, and patch their spec to pause, resume,
/// abort or approve. Not aggregated to `edit`: creating a rollout or a migration is a
/// privileged act (the agent then cordons, drains and restarts on its creator's
/// behalf), to be granted by name.
pub fn operator_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": { "name": format!("{NAME}-operator") },
        "rules": [
            rule(
                "ztunnel-rollout.dev",
                &["ztunnelrollouts", "sidecarmigrations"],
                &["get", "list", "watch", "create", "patch", "delete"],
            ),
            rule(
                "ztunnel-rollout.dev",
                &["ztunnelrollouts/status", "sidecarmigrations/status"],
                &["get"],
            ),
        ],
    })
}

fn binding(kind: &str, namespace: Option<&str>, role_kind: &str, name: &str) -> Value {
    let mut metadata = json!({ "name": name });
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name },
        "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE }],
    })
}

/// The leader-election Lease, in the agent's namespace.
pub fn lease_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": { "name": NAME, "namespace": NAMESPACE },
        "rules": [rule("coordination.k8s.io", &["leases"], &["get", "create", "update"])],
    })
}

/// The Secret `manifests/optional/prometheus-credentials/` lets the agent read for health gates' Prometheus
/// credentials (the chart takes a list: `healthGates.prometheusCredentialSecrets`).
pub const PROMETHEUS_CREDENTIALS_SECRET: &str = "prometheus-credentials";

/// Opt-in: reading the named Secrets in the agent's namespace — the Prometheus CA
/// bundle, client certificate and bearer token health gates may name. Only `get`, only
/// these names: the agent never lists Secrets, and reads none elsewhere.
pub fn prometheus_credentials_role(secrets: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": { "name": format!("{NAME}-prometheus-credentials"), "namespace": NAMESPACE },
        "rules": [{
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": secrets,
            "verbs": ["get"],
        }],
    })
}

/// Events about cluster-scoped objects (Nodes, rollouts) live in `default`.
pub fn events_role() -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": { "name": format!("{NAME}-events"), "namespace": "default" },
        "rules": [rule("events.k8s.io", &["events"], &["create"])],
    })
}

fn labels() -> Value {
    json!({ "app.kubernetes.io/name": NAME })
}

pub fn deployment() -> Value {
    let field = |path: &str| json!({ "fieldRef": { "fieldPath": path } });
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": NAME, "namespace": NAMESPACE, "labels": labels() },
        "spec": {
            // Two replicas: the standby takes the lease when the leader's node is drained.
            "replicas": 2,
            "selector": { "matchLabels": labels() },
            "template": {
                "metadata": { "labels": labels() },
                "spec": {
                    "serviceAccountName": NAME,
                    "automountServiceAccountToken": true,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": { "matchLabels": labels() },
                    }],
                    "containers": [{
                        "name": "agent",
                        "image": IMAGE,
                        "args": ["agent"],
                        "env": [
                            { "name": "POD_NAME", "valueFrom": field("metadata.name") },
                            { "name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace") },
                            // Its own node goes last, the lease handed over before it drains.
                            { "name": "NODE_NAME", "valueFrom": field("spec.nodeName") },
                            { "name": "ZTUNNEL_ROLLOUT_METRICS_ADDRESS", "value": format!("0.0.0.0:{METRICS_PORT}") },
                            // What the ztunnel Role and the pod-delete policy are for.
                            { "name": "ZTUNNEL_ROLLOUT_ZTUNNEL_DAEMONSET", "value": format!("{}/{}", Ztunnel::default().namespace, Ztunnel::default().daemon_set) },
                            { "name": "ZTUNNEL_ROLLOUT_CNI_DAEMONSET", "value": format!("{}/{}", Ztunnel::default().namespace, Ztunnel::default().cni_daemon_set) },
                        ],
                        "ports": [{ "name": "metrics", "containerPort": METRICS_PORT }],
                        // /livez fails once the loop has not turned for --liveness-timeout
                        // (5m); three misses 10s apart restart the agent.
                        "livenessProbe": { "httpGet": { "path": "/livez", "port": "metrics" }, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3 },
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "metrics" } },
                        // The initial sync (every watch listed) may take minutes on a
                        // large cluster: liveness starts once it is done.
                        "startupProbe": { "httpGet": { "path": "/readyz", "port": "metrics" }, "periodSeconds": 5, "failureThreshold": 60 },
                        "resources": {
                            "requests": { "cpu": "50m", "memory": "64Mi" },
                            "limits": { "memory": "256Mi" },
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "privileged": false,
                            "capabilities": { "drop": ["ALL"] },
                        },
                    }],
                },
            },
        },
    })
}

/// All Kubernetes objects, in apply order, with their file names.
pub fn objects() -> Vec<(&'static str, Value)> {
    let (pod_policy, pod_policy_binding) = ztunnel_pod_policy(
        &format!("system:serviceaccount:{NAMESPACE}:{NAME}"),
        &Ztunnel::default(),
    );
    vec![
        ("crd-ztunnelrollouts.json", crd()),
        ("crd-sidecarmigrations.json", sidecar_migration_crd()),
        (
            "namespace.json",
            json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE } }),
        ),
        (
            "serviceaccount.json",
            json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": NAME, "namespace": NAMESPACE },
            }),
        ),
        ("clusterrole.json", cluster_role()),
        (
            "clusterrolebinding.json",
            binding("ClusterRoleBinding", None, "ClusterRole", NAME),
        ),
        ("role-lease.json", lease_role()),
        (
            "rolebinding-lease.json",
            binding("RoleBinding", Some(NAMESPACE), "Role", NAME),
        ),
        ("role-events.json", events_role()),
        (
            "rolebinding-events.json",
            binding(
                "RoleBinding",
                Some("default"),
                "Role",
                &format!("{NAME}-events"),
            ),
        ),
        ("deployment.json", deployment()),
        ("poddisruptionbudget.json", pod_disruption_budget()),
        ("service.json", metrics_service()),
        ("clusterrole-viewer.json", viewer_role()),
        ("clusterrole-operator.json", operator_role()),
        ("role-ztunnel.json", ztunnel_role(&Ztunnel::default())),
        ("validatingadmissionpolicy-ztunnel-pods.json", pod_policy),
        (
            "validatingadmissionpolicybinding-ztunnel-pods.json",
            pod_policy_binding,
        ),
        (
            "rolebinding-ztunnel.json",
            binding(
                "RoleBinding",
                Some(&Ztunnel::default().namespace),
                "Role",
                &format!("{NAME}-ztunnel"),
            ),
        ),
    ]
}

/// Opt-in objects: generated next to the others, not in `kustomization.yaml`.
pub fn optional_objects() -> Vec<(&'static str, Value)> {
    let (policy, policy_binding) = sidecar_migration_policy(
        &format!("system:serviceaccount:{NAMESPACE}:{NAME}"),
        &cel_list(&SIDECAR_DENIED_NAMESPACES),
        &Ztunnel::default(),
    );
    vec![
        (
            "optional/sidecar-migrations/validatingadmissionpolicy.json",
            policy,
        ),
        (
            "optional/sidecar-migrations/validatingadmissionpolicybinding.json",
            policy_binding,
        ),
        (
            "optional/sidecar-migrations/clusterrole.json",
            sidecar_migration_role(),
        ),
        (
            "optional/prometheus-credentials/role.json",
            prometheus_credentials_role(json!([PROMETHEUS_CREDENTIALS_SECRET])),
        ),
        (
            "optional/prometheus-credentials/rolebinding.json",
            binding(
                "RoleBinding",
                Some(NAMESPACE),
                "Role",
                &format!("{NAME}-prometheus-credentials"),
            ),
        ),
        (
            "optional/sidecar-migrations/clusterrolebinding.json",
            binding(
                "ClusterRoleBinding",
                None,
                "ClusterRole",
                &format!("{NAME}-sidecar-migrations"),
            ),
        ),
    ]
}

pub fn pod_disruption_budget() -> Value {
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": { "name": NAME, "namespace": NAMESPACE },
        "spec": { "maxUnavailable": 1, "selector": { "matchLabels": labels() } },
    })
}

pub fn metrics_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": format!("{NAME}-metrics"), "namespace": NAMESPACE, "labels": labels() },
        "spec": {
            "selector": labels(),
            "ports": [{ "name": "metrics", "port": METRICS_PORT, "targetPort": "metrics" }],
        },
    })
}

/// (path under `manifests/`, contents) of every generated file.
pub fn generated() -> Vec<(String, String)> {
    let objects = objects();
    let mut kustomization = String::from(
        "# Generated by `UPDATE_MANIFESTS=1 cargo test --test manifests`; do not edit.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    let mut files: Vec<(String, String)> = objects
        .into_iter()
        .map(|(name, v)| {
            kustomization.push_str(&format!("  - {name}\n"));
            (
                name.to_owned(),
                format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
            )
        })
        .collect();
    files.push(("kustomization.yaml".to_owned(), kustomization));
    for (name, v) in optional_objects() {
        files.push((
            name.to_owned(),
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
        ));
    }
    for (name, text) in super::chart::files() {
        files.push((format!("chart/{name}"), text));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_has_no_wildcards_and_no_secrets() {
        for role in [
            cluster_role(),
            lease_role(),
            events_role(),
            ztunnel_role(&Ztunnel::default()),
            sidecar_migration_role(),
            viewer_role(),
            operator_role(),
        ] {
            for rule in role["rules"].as_array().unwrap() {
                for key in ["apiGroups", "resources", "verbs"] {
                    for v in rule[key].as_array().unwrap() {
                        let v = v.as_str().unwrap();
                        assert_ne!(v, "*", "{role}");
                        assert_ne!(v, "secrets", "{role}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_deployment_is_hardened() {
        let d = deployment();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0]["securityContext"];
        assert_eq!(c["readOnlyRootFilesystem"], true);
        assert_eq!(c["allowPrivilegeEscalation"], false);
        assert_eq!(c["capabilities"]["drop"], json!(["ALL"]));
    }

    #[test]
    fn the_crd_has_no_formats_the_api_server_does_not_know() {
        let text = crd().to_string();
        assert!(!text.contains("uint"), "{text}");
    }
}
