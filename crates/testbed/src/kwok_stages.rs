//! KWOK stages that simulate the kubelet: how long a pod takes to start, to become
//! Ready, and to exit after deletion. Generated from [`PodTimings`] so tests and the
//! benchmarks state their simulated delays explicitly.

use std::time::Duration;

use serde_json::{Value, json};
use ztunnel_rollout_core::labels::SIDECAR_STATUS_ANNOTATION;

/// Annotation (on a pod or pod template) overriding [`PodTimings::ready_after`] for that
/// pod, as a Go duration (`"3s"`, `"250ms"`).
pub const READY_AFTER_ANNOTATION: &str = "pod-ready.stage.kwok.x-k8s.io/delay";
/// Annotation (on a pod template) naming an Istio revision at which the pod never becomes
/// Ready, as if that revision's sidecar could not start for this workload: a pod whose
/// injected sidecar (`sidecar.istio.io/status`'s `revision`) is of that revision stays
/// Pending with its containers created, never Running and Ready.
pub const NEVER_READY_AT_REVISION_ANNOTATION: &str =
    "local-cluster.ztunnel-rollout.dev/never-ready-at-revision";
/// What "never" is to KWOK: ten years.
const NEVER: &str = "87600h";
/// Annotation overriding [`PodTimings::exit_after_seconds`] for that pod: seconds (a
/// number, fractions allowed) the pod's process takes to exit after SIGTERM.
pub const EXIT_AFTER_ANNOTATION: &str = "local-cluster.ztunnel-rollout.dev/exit-after-seconds";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodTimings {
    /// From scheduled to containers created (pod IP assigned, phase Pending).
    pub created_after: Duration,
    /// From created to Running and Ready.
    pub ready_after: Duration,
    /// From deletion to gone; a pod never outlives its grace period, as with a kubelet
    /// that kills the process when the grace period ends.
    pub exit_after_seconds: f64,
}

impl Default for PodTimings {
    fn default() -> Self {
        Self {
            created_after: Duration::from_millis(100),
            ready_after: Duration::from_millis(500),
            exit_after_seconds: 1.0,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn stage(name: &str, selector: Value, delay: Value, next: Value) -> Value {
    json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": { "name": name },
        "spec": {
            "resourceRef": { "apiGroup": "v1", "kind": "Pod" },
            "selector": { "matchExpressions": selector },
            "delay": delay,
            "next": next,
        },
    })
}

fn expr(key: &str, operator: &str) -> Value {
    json!({ "key": key, "operator": operator })
}

const CREATED_STATUS: &str = r#"{{ $now := Now }}
phase: Pending
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
conditions:
- { type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }} }
- { type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }} }
- { type: ContainersReady, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }} }
- { type: Ready, status: "False", reason: ContainersNotReady, lastTransitionTime: {{ $now | Quote }} }
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state: { waiting: { reason: ContainerCreating } }
{{ end }}
"#;

const READY_STATUS: &str = r#"{{ $now := Now }}
phase: Running
startTime: {{ $now | Quote }}
conditions:
- { type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }} }
- { type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }} }
- { type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }} }
- { type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }} }
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  started: true
  restartCount: 0
  state: { running: { startedAt: {{ $now | Quote }} } }
{{ end }}
"#;

/// The pod's ready delay (jq, for KWOK): never for a pod injected at the revision its
/// [`NEVER_READY_AT_REVISION_ANNOTATION`] names, else its [`READY_AFTER_ANNOTATION`]
/// (none: the stage's default).
fn ready_expression() -> String {
    format!(
        "(.metadata.annotations[\"{NEVER_READY_AT_REVISION_ANNOTATION}\"] // \"\") as $broken \
         | ((.metadata.annotations[\"{SIDECAR_STATUS_ANNOTATION}\"] // \"{{}}\") \
            | (try fromjson catch {{}}) | .revision // \"\") as $injected \
         | if $broken != \"\" and $broken == $injected then \"{NEVER}\" \
           else .metadata.annotations[\"{READY_AFTER_ANNOTATION}\"] end"
    )
}

/// The pod stages, as KWOK `Stage` documents.
pub fn pod_stages(timings: &PodTimings) -> Vec<Value> {
    let created = stage(
        "local-cluster-pod-created",
        json!([
            expr(".metadata.deletionTimestamp", "DoesNotExist"),
            expr(".status.podIP", "DoesNotExist"),
        ]),
        json!({ "durationMilliseconds": millis(timings.created_after) }),
        json!({ "statusTemplate": CREATED_STATUS }),
    );
    let ready = stage(
        "local-cluster-pod-ready",
        json!([
            expr(".metadata.deletionTimestamp", "DoesNotExist"),
            expr(".status.podIP", "Exists"),
            { "key": ".status.phase", "operator": "In", "values": ["Pending"] },
        ]),
        json!({
            "durationMilliseconds": millis(timings.ready_after),
            "durationFrom": { "expressionFrom": ready_expression() },
        }),
        json!({ "statusTemplate": READY_STATUS }),
    );
    // The delay is the pod's exit time, or what is left of its grace period when that is
    // shorter: a timestamp answer is read by KWOK as "at that time".
    let exit_expression = format!(
        "(.metadata.annotations[\"{EXIT_AFTER_ANNOTATION}\"] // \"{default}\" | tonumber) as $exit \
         | if ((.metadata.deletionTimestamp | fromdateiso8601) - now) < $exit \
           then .metadata.deletionTimestamp else \"\\($exit)s\" end",
        default = timings.exit_after_seconds,
    );
    let deleted = stage(
        "local-cluster-pod-deleted",
        json!([
            expr(".metadata.deletionTimestamp", "Exists"),
            expr(".metadata.finalizers", "DoesNotExist"),
        ]),
        json!({ "durationMilliseconds": 0, "durationFrom": { "expressionFrom": exit_expression } }),
        json!({ "delete": true }),
    );
    vec![created, ready, deleted]
}

/// KWOK's own settings: how many pod and node stage transitions it plays at once. Its
/// default of 4 makes KWOK, not the simulated delays, the bottleneck when a drain moves
/// a hundred pods at once.
pub fn kwok_configuration(parallelism: u32) -> Value {
    json!({
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {
            "podPlayStageParallelism": parallelism,
            "nodePlayStageParallelism": parallelism,
            "nodeLeaseParallelism": parallelism,
        },
    })
}

/// Renders stage documents as one multi-document file for `kwok --config`.
pub fn render(stages: &[Value]) -> String {
    stages
        .iter()
        .map(|s| serde_json::to_string_pretty(s).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_carry_the_configured_delays() {
        let timings = PodTimings {
            created_after: Duration::from_millis(20),
            ready_after: Duration::from_secs(3),
            exit_after_seconds: 2.5,
        };
        let stages = pod_stages(&timings);
        assert_eq!(stages.len(), 3);
        assert_eq!(stages[0]["spec"]["delay"]["durationMilliseconds"], 20);
        assert_eq!(stages[1]["spec"]["delay"]["durationMilliseconds"], 3000);
        let ready = stages[1]["spec"]["delay"]["durationFrom"]["expressionFrom"]
            .as_str()
            .unwrap();
        for read in [
            READY_AFTER_ANNOTATION,
            NEVER_READY_AT_REVISION_ANNOTATION,
            SIDECAR_STATUS_ANNOTATION,
        ] {
            assert!(ready.contains(read), "{ready}");
        }
        let exit = stages[2]["spec"]["delay"]["durationFrom"]["expressionFrom"]
            .as_str()
            .unwrap();
        assert!(exit.contains("// \"2.5\""), "{exit}");
        assert!(exit.contains(EXIT_AFTER_ANNOTATION));
    }

    #[test]
    fn rendered_file_separates_documents() {
        let text = render(&pod_stages(&PodTimings::default()));
        assert_eq!(text.matches("\n---\n").count(), 2);
        for doc in text.split("\n---\n") {
            let v: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(v["kind"], "Stage");
        }
    }
}
