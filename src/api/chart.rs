//! The Helm chart in `manifests/chart/`, generated from the same code as `manifests/`:
//! the CRDs, the RBAC rules and the Deployment come from [`super::manifests`], so the
//! chart and the plain manifests cannot drift apart (CI fails when the files differ from
//! what this module generates; `UPDATE_MANIFESTS=1 cargo test --test manifests`
//! rewrites them).
//!
//! Templates are the objects as JSON (which is YAML), with Helm actions where a value
//! comes from `values.yaml`. An action is written into the JSON as a marker string and
//! turned into `{{ … }}` when the file is written: [`raw`] replaces the whole JSON string
//! (for `toJson` of a structured value), [`interp`] sits inside a string (names).
//!
//! CRDs are templates, not files in `crds/`: Helm installs `crds/` once and never
//! upgrades it, so a new version's schema would never reach the cluster. As templates
//! they are upgraded with the release; `helm.sh/resource-policy: keep` stops `helm
//! uninstall` from deleting them, and with them every rollout (`crds.install: false`
//! leaves CRDs to another tool).

use serde_json::{Map, Value, json};

use super::manifests::{self, Ztunnel};

/// Written as `{{ expr }}` in place of the whole JSON string that holds this marker.
fn raw(expr: &str) -> Value {
    Value::String(format!("<<<!{expr}>>>"))
}

/// Written as `{{ expr }}` inside the JSON string that holds this marker.
fn interp(expr: &str) -> String {
    format!("<<<{expr}>>>")
}

const FULLNAME: &str = "include \"ztunnel-rollout.fullname\" .";

fn name() -> String {
    interp(FULLNAME)
}

fn suffixed(suffix: &str) -> String {
    format!("{}-{suffix}", name())
}

fn namespace() -> String {
    interp(".Release.Namespace")
}

/// A JSON document turned into template text: the markers become actions.
fn template(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("<<<") {
        let Some(len) = rest[start..].find(">>>") else {
            break;
        };
        let inner = &rest[start + 3..start + len];
        let unescaped = inner.replace("\\\"", "\"").replace("\\\\", "\\");
        if let Some(expr) = unescaped.strip_prefix('!') {
            // The marker is the whole string: drop its quotes.
            out.push_str(&rest[..start.saturating_sub(1)]);
            out.push_str(&format!("{{{{ {expr} }}}}"));
            rest = &rest[start + len + 4..];
        } else {
            out.push_str(&rest[..start]);
            out.push_str(&format!("{{{{ {unescaped} }}}}"));
            rest = &rest[start + len + 3..];
        }
    }
    out.push_str(rest);
    out.push('\n');
    out
}

/// Common metadata: the object's name, namespace (when namespaced) and the chart's
/// labels.
fn metadata(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({
        "name": name,
        "labels": raw("include \"ztunnel-rollout.labels\" . | fromYaml | toJson"),
    });
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

fn with_metadata(mut object: Value, name: &str, namespace: Option<&str>) -> Value {
    object["metadata"] = metadata(name, namespace);
    object
}

fn subject() -> Value {
    json!([{ "kind": "ServiceAccount", "name": name(), "namespace": namespace() }])
}

fn binding(kind: &str, name: &str, namespace: Option<&str>, role_kind: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata(name, namespace),
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name },
        "subjects": subject(),
    })
}

/// Several documents in one template file, under an optional condition.
fn documents(condition: Option<&str>, objects: &[Value]) -> String {
    let mut out = String::from("# Generated from src/api/chart.rs; do not edit.\n");
    if let Some(c) = condition {
        out.push_str(&format!("{{{{- if {c} }}}}\n"));
    }
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&template(o));
    }
    if condition.is_some() {
        out.push_str("{{- end }}\n");
    }
    out
}

fn crd_template(mut crd: Value) -> Value {
    crd["metadata"]["annotations"] = json!({
        "helm.sh/resource-policy": raw("ternary \"keep\" \"delete\" .Values.crds.keep | toJson"),
    });
    crd["metadata"]["labels"] = raw("include \"ztunnel-rollout.labels\" . | fromYaml | toJson");
    crd
}

fn ztunnel() -> Ztunnel {
    Ztunnel {
        namespace: interp(".Values.ztunnel.namespace"),
        daemon_set: interp(".Values.ztunnel.daemonSet"),
        cni_daemon_set: interp(".Values.ztunnel.cniDaemonSet"),
    }
}

fn deployment() -> Value {
    let mut d = manifests::deployment();
    d["metadata"] = metadata(&name(), Some(&namespace()));
    let spec = &mut d["spec"];
    spec["replicas"] = raw(".Values.replicaCount");
    spec["selector"]["matchLabels"] =
        raw("include \"ztunnel-rollout.selectorLabels\" . | fromYaml | toJson");
    spec["template"]["metadata"]["labels"] =
        raw("include \"ztunnel-rollout.labels\" . | fromYaml | toJson");
    let pod = &mut spec["template"]["spec"];
    pod["serviceAccountName"] = json!(name());
    pod["securityContext"] = raw(".Values.podSecurityContext | toJson");
    pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"] =
        raw("include \"ztunnel-rollout.selectorLabels\" . | fromYaml | toJson");
    pod["nodeSelector"] = raw(".Values.nodeSelector | toJson");
    pod["tolerations"] = raw(".Values.tolerations | toJson");
    pod["affinity"] = raw(".Values.affinity | toJson");
    pod["priorityClassName"] = raw(".Values.priorityClassName | toJson");
    pod["imagePullSecrets"] = raw(".Values.imagePullSecrets | toJson");
    let c = &mut pod["containers"][0];
    c["image"] = raw("include \"ztunnel-rollout.image\" . | toJson");
    c["imagePullPolicy"] = raw(".Values.image.pullPolicy | toJson");
    c["args"] = raw("concat (list \"agent\") .Values.extraArgs | toJson");
    if let Some(env) = c["env"].as_array_mut() {
        for e in env.iter_mut() {
            if e["name"] == "ZTUNNEL_ROLLOUT_METRICS_ADDRESS" {
                e["value"] = json!(format!("0.0.0.0:{}", interp(".Values.metrics.port")));
            }
            if e["name"] == "ZTUNNEL_ROLLOUT_ZTUNNEL_DAEMONSET" {
                e["value"] = json!(format!(
                    "{}/{}",
                    interp(".Values.ztunnel.namespace"),
                    interp(".Values.ztunnel.daemonSet")
                ));
            }
            if e["name"] == "ZTUNNEL_ROLLOUT_CNI_DAEMONSET" {
                e["value"] = json!(format!(
                    "{}/{}",
                    interp(".Values.ztunnel.namespace"),
                    interp(".Values.ztunnel.cniDaemonSet")
                ));
            }
        }
        env.push(json!({ "name": "ZTUNNEL_ROLLOUT_LEASE_NAME", "value": name() }));
        env.push(json!({
            "name": "ZTUNNEL_ROLLOUT_ALLOWED_PROMETHEUS_URL_PREFIXES",
            "value": interp("join \",\" .Values.healthGates.allowedPrometheusUrlPrefixes"),
        }));
    }
    c["ports"][0]["containerPort"] = raw(".Values.metrics.port");
    c["resources"] = raw(".Values.resources | toJson");
    c["securityContext"] = raw(".Values.securityContext | toJson");
    d
}

fn rbac() -> String {
    let cluster_role = with_metadata(manifests::cluster_role(), &name(), None);
    let lease_role = with_metadata(manifests::lease_role(), &name(), Some(&namespace()));
    let events_name = suffixed("events");
    let events_role = with_metadata(manifests::events_role(), &events_name, Some("default"));
    let ztunnel_name = suffixed("ztunnel");
    let ztunnel = ztunnel();
    let ztunnel_role = with_metadata(
        manifests::ztunnel_role(&ztunnel),
        &ztunnel_name,
        Some(&ztunnel.namespace),
    );
    let (mut pod_policy, mut pod_policy_binding) = manifests::ztunnel_pod_policy(
        &format!("system:serviceaccount:{}:{}", namespace(), name()),
        &ztunnel,
    );
    let pod_policy_name = suffixed("ztunnel-pods");
    pod_policy["metadata"] = metadata(&pod_policy_name, None);
    pod_policy_binding["metadata"] = metadata(&pod_policy_name, None);
    pod_policy_binding["spec"]["policyName"] = json!(pod_policy_name);
    documents(
        None,
        &[
            pod_policy,
            pod_policy_binding,
            cluster_role,
            binding("ClusterRoleBinding", &name(), None, "ClusterRole"),
            lease_role,
            binding("RoleBinding", &name(), Some(&namespace()), "Role"),
            events_role,
            binding("RoleBinding", &events_name, Some("default"), "Role"),
            ztunnel_role,
            binding(
                "RoleBinding",
                &ztunnel_name,
                Some(&ztunnel.namespace),
                "Role",
            ),
        ],
    )
}

fn user_roles() -> String {
    let mut viewer = manifests::viewer_role();
    viewer["metadata"] = metadata(&suffixed("viewer"), None);
    viewer["metadata"]["labels"] = raw(
        "merge (include \"ztunnel-rollout.labels\" . | fromYaml) (dict \"rbac.authorization.k8s.io/aggregate-to-view\" \"true\") | toJson",
    );
    let mut operator = manifests::operator_role();
    operator["metadata"] = metadata(&suffixed("operator"), None);
    documents(Some(".Values.rbac.userRoles"), &[viewer, operator])
}

fn sidecar_rbac() -> String {
    let role = with_metadata(
        manifests::sidecar_migration_role(),
        &suffixed("sidecar-migrations"),
        None,
    );
    let (mut policy, mut policy_binding) = manifests::sidecar_migration_policy(
        &format!("system:serviceaccount:{}:{}", namespace(), name()),
        &interp("include \"ztunnel-rollout.deniedNamespaces\" ."),
        &ztunnel(),
    );
    policy["metadata"] = metadata(&suffixed("sidecar-migrations"), None);
    policy_binding["metadata"] = metadata(&suffixed("sidecar-migrations"), None);
    policy_binding["spec"]["policyName"] = json!(suffixed("sidecar-migrations"));
    documents(
        Some(".Values.sidecarMigrations.enabled"),
        &[
            role,
            binding(
                "ClusterRoleBinding",
                &suffixed("sidecar-migrations"),
                None,
                "ClusterRole",
            ),
            policy,
            policy_binding,
        ],
    )
}

/// Reading the Secrets named in `healthGates.prometheusCredentialSecrets`, in the
/// release's namespace: only when some are named.
fn prometheus_credentials_rbac() -> String {
    let role_name = suffixed("prometheus-credentials");
    let role = with_metadata(
        manifests::prometheus_credentials_role(raw(
            ".Values.healthGates.prometheusCredentialSecrets | toJson",
        )),
        &role_name,
        Some(&namespace()),
    );
    documents(
        Some(".Values.healthGates.prometheusCredentialSecrets"),
        &[
            role,
            binding("RoleBinding", &role_name, Some(&namespace()), "Role"),
        ],
    )
}

fn service() -> Value {
    let mut s = manifests::metrics_service();
    s["metadata"] = metadata(&suffixed("metrics"), Some(&namespace()));
    s["spec"]["selector"] = raw("include \"ztunnel-rollout.selectorLabels\" . | fromYaml | toJson");
    s["spec"]["ports"][0]["port"] = raw(".Values.metrics.port");
    s
}

fn pdb() -> Value {
    let mut p = manifests::pod_disruption_budget();
    p["metadata"] = metadata(&name(), Some(&namespace()));
    p["spec"]["maxUnavailable"] = raw(".Values.podDisruptionBudget.maxUnavailable");
    p["spec"]["selector"]["matchLabels"] =
        raw("include \"ztunnel-rollout.selectorLabels\" . | fromYaml | toJson");
    p
}

fn service_monitor() -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {
            "name": name(),
            "namespace": namespace(),
            "labels": raw("merge (include \"ztunnel-rollout.labels\" . | fromYaml) .Values.serviceMonitor.labels | toJson"),
        },
        "spec": {
            "selector": { "matchLabels": raw("include \"ztunnel-rollout.selectorLabels\" . | fromYaml | toJson") },
            "namespaceSelector": { "matchNames": [namespace()] },
            // The alert rules select job=~"ztunnel-rollout.*", whatever the release's name.
            "endpoints": [{
                "port": "metrics",
                "path": "/metrics",
                "interval": raw(".Values.serviceMonitor.interval | toJson"),
                "relabelings": [{ "targetLabel": "job", "replacement": "ztunnel-rollout" }],
            }],
        },
    })
}

fn prometheus_rule() -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name(),
            "namespace": namespace(),
            "labels": raw("merge (include \"ztunnel-rollout.labels\" . | fromYaml) .Values.prometheusRule.labels | toJson"),
        },
        "spec": raw(".Files.Get \"files/ztunnel-rollout.rules.yaml\" | fromYaml | toJson"),
    })
}

fn dashboard() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": suffixed("dashboard"),
            "namespace": raw("default .Release.Namespace .Values.grafanaDashboard.namespace | toJson"),
            "labels": raw("merge (include \"ztunnel-rollout.labels\" . | fromYaml) .Values.grafanaDashboard.labels | toJson"),
        },
        "data": {
            "ztunnel-rollout.json": raw(".Files.Get \"files/ztunnel-rollout-dashboard.json\" | toJson"),
        },
    })
}

/// Egress only to the API server, the ztunnel metrics port, Prometheus and DNS; ingress
/// only to the metrics port.
fn network_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(&name(), Some(&namespace())),
        "spec": {
            "podSelector": { "matchLabels": raw("include \"ztunnel-rollout.selectorLabels\" . | fromYaml | toJson") },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": raw(".Values.networkPolicy.metricsFrom | toJson"),
                "ports": [{ "protocol": "TCP", "port": raw(".Values.metrics.port") }],
            }],
            "egress": [
                {
                    "to": raw("include \"ztunnel-rollout.apiServerPeers\" . | fromYamlArray | toJson"),
                    "ports": raw("include \"ztunnel-rollout.ports\" .Values.networkPolicy.apiServer.ports | fromYamlArray | toJson"),
                },
                {
                    "to": [{
                        "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": interp(".Values.ztunnel.namespace") } },
                        "podSelector": raw(".Values.networkPolicy.ztunnelPodSelector | toJson"),
                    }],
                    "ports": [{ "protocol": "TCP", "port": raw(".Values.networkPolicy.ztunnelMetricsPort") }],
                },
                {
                    "to": raw(".Values.networkPolicy.prometheus.to | toJson"),
                    "ports": raw("include \"ztunnel-rollout.ports\" .Values.networkPolicy.prometheus.ports | fromYamlArray | toJson"),
                },
                {
                    "to": [{ "namespaceSelector": {}, "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } } }],
                    "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
                },
            ],
        },
    })
}

const HELPERS: &str = r#"{{/* Generated from src/api/chart.rs; do not edit. */}}
{{- define "ztunnel-rollout.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- end }}

{{- define "ztunnel-rollout.selectorLabels" -}}
app.kubernetes.io/name: ztunnel-rollout
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ztunnel-rollout.labels" -}}
{{ include "ztunnel-rollout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "ztunnel-rollout.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end }}

{{- define "ztunnel-rollout.deniedNamespaces" -}}
[{{- range $i, $n := concat .Values.sidecarMigrations.deniedNamespaces (list .Values.ztunnel.namespace) | uniq }}{{ if $i }}, {{ end }}'{{ $n }}'{{- end }}]
{{- end }}

{{- define "ztunnel-rollout.ports" -}}
{{- range . }}
- protocol: TCP
  port: {{ . }}
{{- end }}
{{- end }}

{{- define "ztunnel-rollout.apiServerPeers" -}}
{{- range .Values.networkPolicy.apiServer.cidrs }}
- ipBlock:
    cidr: {{ . }}
{{- end }}
{{- end }}
"#;

const VALUES: &str = r#"# Values of the ztunnel-rollout chart. Generated from src/api/chart.rs; do not edit.
# values.schema.json validates them: Helm refuses unknown keys and wrong types.

# Names every object of the release (default: the release name).
fullnameOverride: ""

image:
  repository: ghcr.io/ztunnel-rollout/ztunnel-rollout
  # Default: the chart's appVersion.
  tag: ""
  # sha256:...; when set, it is used instead of the tag.
  digest: ""
  pullPolicy: IfNotPresent
imagePullSecrets: []

# Two replicas: the standby takes the lease when the leader's node is drained.
replicaCount: 2
resources:
  requests:
    cpu: 50m
    memory: 64Mi
  limits:
    memory: 256Mi
nodeSelector: {}
tolerations: []
affinity: {}
priorityClassName: ""
podSecurityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  privileged: false
  capabilities:
    drop: [ALL]
# Appended to `ztunnel-rollout agent`, e.g. ["--rollout-selector", "team=payments"].
extraArgs: []

# The ztunnel DaemonSet the agent may patch (rollback) and whose pods it may delete: a
# Role in its namespace, limited to that DaemonSet by name. cniDaemonSet: the istio-cni
# DaemonSet in the same namespace that rollouts' spec.cni may name (Istio's name).
ztunnel:
  namespace: istio-system
  daemonSet: ztunnel
  cniDaemonSet: istio-cni-node

crds:
  # Install and upgrade the CRDs with the release.
  install: true
  # Keep them (and every rollout) when the release is uninstalled.
  keep: true

rbac:
  # ClusterRoles for people: ztunnel-rollout-viewer (aggregated to the built-in view)
  # and ztunnel-rollout-operator (bind it by name: creating a rollout is privileged).
  userRoles: true

sidecarMigrations:
  # The permissions sidecar migrations need (patch namespaces, restart Deployments,
  # StatefulSets and DaemonSets anywhere): off unless you use SidecarMigrations.
  enabled: false
  # Never changed by a migration (an admission policy refuses the agent's writes there),
  # with the ztunnel namespace (Istio's) always added.
  deniedNamespaces: [kube-system]

healthGates:
  # The Prometheus URLs rollouts' gates may query, as prefixes (e.g.
  # http://prometheus.monitoring:9090); a rollout naming any other URL is Blocked.
  allowedPrometheusUrlPrefixes: []
  # Secrets in the release's namespace the agent may read (get, by name) for rollouts'
  # Prometheus credentials (health.prometheus.bearerToken and .tls); none by default.
  prometheusCredentialSecrets: []

metrics:
  port: 8080
  service:
    enabled: true

podDisruptionBudget:
  enabled: true
  maxUnavailable: 1

# Scrapes as job "ztunnel-rollout", which the alert rules and the dashboard select.
serviceMonitor:
  enabled: false
  interval: 30s
  labels: {}

prometheusRule:
  enabled: false
  labels: {}

grafanaDashboard:
  # A ConfigMap with the dashboard, for Grafana's dashboard sidecar.
  enabled: false
  # Default: the release's namespace.
  namespace: ""
  labels:
    grafana_dashboard: "1"

networkPolicy:
  enabled: false
  # Who may scrape the metrics port (NetworkPolicyPeers; empty: anyone).
  metricsFrom: []
  apiServer:
    # The API server's addresses, e.g. [10.0.0.1/32] (kubectl get endpoints kubernetes);
    # empty: any address on these ports.
    cidrs: []
    ports: [443, 6443]
  ztunnelPodSelector:
    matchLabels:
      app: ztunnel
  ztunnelMetricsPort: 15020
  prometheus:
    # NetworkPolicyPeers of the Prometheus the health gates query; empty: any address
    # on these ports.
    to: []
    ports: [9090]
"#;

fn object_schema(properties: Value) -> Value {
    json!({ "type": "object", "additionalProperties": false, "properties": properties })
}

fn any_object() -> Value {
    json!({ "type": "object" })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn ports() -> Value {
    json!({ "type": "array", "items": { "type": "integer", "minimum": 1, "maximum": 65535 } })
}

fn schema() -> Value {
    let name_re = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$";
    let mut top = Map::new();
    top.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft-07/schema#"),
    );
    top.insert("title".into(), json!("ztunnel-rollout chart values"));
    let properties = json!({
        "fullnameOverride": { "type": "string", "pattern": name_re, "maxLength": 52 },
        "image": object_schema(json!({
            "repository": { "type": "string", "minLength": 1 },
            "tag": string(),
            "digest": { "type": "string", "pattern": "^(sha256:[a-f0-9]{64})?$" },
            "pullPolicy": { "enum": ["Always", "IfNotPresent", "Never"] },
        })),
        "imagePullSecrets": { "type": "array", "items": any_object() },
        "replicaCount": { "type": "integer", "minimum": 1 },
        "resources": any_object(),
        "nodeSelector": { "type": "object", "additionalProperties": { "type": "string" } },
        "tolerations": { "type": "array", "items": any_object() },
        "affinity": any_object(),
        "priorityClassName": string(),
        "podSecurityContext": any_object(),
        "securityContext": any_object(),
        "extraArgs": { "type": "array", "items": string() },
        "ztunnel": object_schema(json!({
            "namespace": { "type": "string", "minLength": 1, "pattern": name_re },
            "daemonSet": { "type": "string", "minLength": 1, "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" },
            "cniDaemonSet": { "type": "string", "minLength": 1, "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" },
        })),
        "crds": object_schema(json!({ "install": { "type": "boolean" }, "keep": { "type": "boolean" } })),
        "rbac": object_schema(json!({ "userRoles": { "type": "boolean" } })),
        "sidecarMigrations": object_schema(json!({
            "enabled": { "type": "boolean" },
            "deniedNamespaces": { "type": "array", "items": { "type": "string", "minLength": 1, "pattern": name_re } },
        })),
        "healthGates": object_schema(json!({
            "allowedPrometheusUrlPrefixes": {
                "type": "array",
                "items": { "type": "string", "pattern": "^https?://[^,]+$" },
            },
            "prometheusCredentialSecrets": {
                "type": "array",
                "uniqueItems": true,
                "items": { "type": "string", "minLength": 1, "maxLength": 253, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" },
            },
        })),
        "metrics": object_schema(json!({
            "port": { "type": "integer", "minimum": 1, "maximum": 65535 },
            "service": object_schema(json!({ "enabled": { "type": "boolean" } })),
        })),
        "podDisruptionBudget": object_schema(json!({
            "enabled": { "type": "boolean" },
            "maxUnavailable": { "type": ["integer", "string"] },
        })),
        "serviceMonitor": object_schema(json!({
            "enabled": { "type": "boolean" },
            "interval": { "type": "string", "pattern": "^[0-9]+(ms|s|m|h)$" },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
        })),
        "prometheusRule": object_schema(json!({
            "enabled": { "type": "boolean" },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
        })),
        "grafanaDashboard": object_schema(json!({
            "enabled": { "type": "boolean" },
            "namespace": string(),
            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
        })),
        "networkPolicy": object_schema(json!({
            "enabled": { "type": "boolean" },
            "metricsFrom": { "type": "array", "items": any_object() },
            "apiServer": object_schema(json!({
                "cidrs": { "type": "array", "items": string() },
                "ports": ports(),
            })),
            "ztunnelPodSelector": any_object(),
            "ztunnelMetricsPort": { "type": "integer", "minimum": 1, "maximum": 65535 },
            "prometheus": object_schema(json!({
                "to": { "type": "array", "items": any_object() },
                "ports": ports(),
            })),
        })),
    });
    let mut schema = Value::Object(top);
    schema["type"] = json!("object");
    schema["additionalProperties"] = json!(false);
    schema["properties"] = properties;
    schema
}

fn chart_yaml() -> String {
    let version = env!("CARGO_PKG_VERSION");
    format!(
        "# Generated from src/api/chart.rs; do not edit.\n\
         apiVersion: v2\n\
         name: ztunnel-rollout\n\
         description: Upgrades Istio ambient mode's ztunnel node by node without dropping traffic\n\
         type: application\n\
         version: {version}\n\
         appVersion: \"{version}\"\n\
         kubeVersion: \">={}\"\n",
        manifests::MIN_KUBERNETES
    )
}

/// (path under `manifests/chart/`, contents) of every generated file of the chart.
pub fn files() -> Vec<(&'static str, String)> {
    let crds = documents(
        Some(".Values.crds.install"),
        &[
            crd_template(manifests::crd()),
            crd_template(manifests::sidecar_migration_crd()),
        ],
    );
    vec![
        ("Chart.yaml", chart_yaml()),
        (
            "files/ztunnel-rollout.rules.yaml",
            include_str!("../../manifests/alerts/ztunnel-rollout.rules.yaml").to_owned(),
        ),
        (
            "files/ztunnel-rollout-dashboard.json",
            include_str!("../../manifests/dashboard/ztunnel-rollout.json").to_owned(),
        ),
        ("values.yaml", VALUES.to_owned()),
        (
            "values.schema.json",
            format!(
                "{}\n",
                serde_json::to_string_pretty(&schema()).unwrap_or_default()
            ),
        ),
        ("templates/_helpers.tpl", HELPERS.to_owned()),
        ("templates/crds.yaml", crds),
        (
            "templates/serviceaccount.yaml",
            documents(
                None,
                &[json!({
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": metadata(&name(), Some(&namespace())),
                })],
            ),
        ),
        ("templates/rbac.yaml", rbac()),
        ("templates/rbac-users.yaml", user_roles()),
        ("templates/rbac-sidecar-migrations.yaml", sidecar_rbac()),
        (
            "templates/rbac-prometheus-credentials.yaml",
            prometheus_credentials_rbac(),
        ),
        (
            "templates/deployment.yaml",
            documents(None, &[deployment()]),
        ),
        (
            "templates/poddisruptionbudget.yaml",
            documents(Some(".Values.podDisruptionBudget.enabled"), &[pdb()]),
        ),
        (
            "templates/service.yaml",
            documents(Some(".Values.metrics.service.enabled"), &[service()]),
        ),
        (
            "templates/servicemonitor.yaml",
            documents(Some(".Values.serviceMonitor.enabled"), &[service_monitor()]),
        ),
        (
            "templates/prometheusrule.yaml",
            documents(Some(".Values.prometheusRule.enabled"), &[prometheus_rule()]),
        ),
        (
            "templates/dashboard.yaml",
            documents(Some(".Values.grafanaDashboard.enabled"), &[dashboard()]),
        ),
        (
            "templates/networkpolicy.yaml",
            documents(Some(".Values.networkPolicy.enabled"), &[network_policy()]),
        ),
        (
            ".helmignore",
            "# Generated from src/api/chart.rs.\n*.orig\n*.tgz\n".to_owned(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_become_actions() {
        let v = json!({ "a": raw(".Values.x | toJson"), "b": format!("{}-y", interp("include \"n\" .")) });
        let t = template(&v);
        assert!(t.contains("\"a\": {{ .Values.x | toJson }}"), "{t}");
        assert!(t.contains("\"b\": \"{{ include \"n\" . }}-y\""), "{t}");
        assert!(!t.contains("<<<"), "{t}");
    }

    #[test]
    fn every_marker_is_turned_into_an_action_and_no_crd_text_looks_like_one() {
        for (path, text) in files() {
            assert!(!text.contains("<<<") && !text.contains(">>>"), "{path}");
        }
        // `}}` closes nested JSON objects; `{{` can only come from text in a string.
        for crd in [manifests::crd(), manifests::sidecar_migration_crd()] {
            assert!(!crd.to_string().contains("{{"), "a CRD holds template text");
        }
    }
}
