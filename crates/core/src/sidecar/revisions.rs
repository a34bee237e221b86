//! Sidecar injection revisions: which revision a namespace asks for, which one a pod was
//! injected with, what a revision tag points to, and the label change that moves a
//! namespace. Pure.

use std::collections::BTreeMap;

use crate::labels::{
    INJECTION_LABEL, REVISION_ANNOTATION, REVISION_LABEL, SIDECAR_STATUS_ANNOTATION, TAG_LABEL,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error(
        "namespace {namespace} has both istio-injection={injection} and istio.io/rev={revision}; istio-injection wins, so the move is ambiguous — remove one label first, or let the move replace istio-injection (--replace-injection-label, spec.replaceInjectionLabel)"
    )]
    TwoSelectors {
        namespace: String,
        injection: String,
        revision: String,
    },
    #[error("namespace {0} has no sidecar injection label (istio-injection or istio.io/rev)")]
    NotInjected(String),
    #[error(
        "no injector for revision or tag {0:?}: no MutatingWebhookConfiguration serves it (known: {1})"
    )]
    UnknownTarget(String, String),
}

/// What a namespace's labels select for injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceInjection {
    /// `istio-injection=enabled`: the default revision.
    Default,
    /// `istio.io/rev=<revision or tag>`.
    Revision(String),
}

fn labels(ns: &Namespace) -> BTreeMap<String, String> {
    ns.metadata.labels.clone().unwrap_or_default()
}

/// The one injection selector of a namespace, or why there is not exactly one.
pub fn namespace_injection(ns: &Namespace) -> Result<NamespaceInjection, RevisionError> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let l = labels(ns);
    match (l.get(INJECTION_LABEL), l.get(REVISION_LABEL)) {
        (Some(injection), Some(revision)) => Err(RevisionError::TwoSelectors {
            namespace: name,
            injection: injection.clone(),
            revision: revision.clone(),
        }),
        (Some(v), None) if v == "enabled" => Ok(NamespaceInjection::Default),
        (None, Some(rev)) => Ok(NamespaceInjection::Revision(rev.clone())),
        _ => Err(RevisionError::NotInjected(name)),
    }
}

/// The merge patch that moves a namespace to `target`: set `istio.io/rev`, remove
/// `istio-injection`.
pub fn move_patch(target: &str) -> Value {
    json!({ "metadata": { "labels": { REVISION_LABEL: target, INJECTION_LABEL: null } } })
}

/// The revision a pod's sidecar was injected from: the `istio.io/rev` annotation, else
/// `revision` in the `sidecar.istio.io/status` JSON annotation.
pub fn injected_revision(pod: &Pod) -> Option<String> {
    let annotations = pod.metadata.annotations.as_ref()?;
    if let Some(rev) = annotations.get(REVISION_ANNOTATION) {
        return Some(rev.clone());
    }
    let status: Value = serde_json::from_str(annotations.get(SIDECAR_STATUS_ANNOTATION)?).ok()?;
    status.get("revision")?.as_str().map(str::to_owned)
}

/// Resolves a revision or tag to the revision whose injector serves it: a tag is a
/// MutatingWebhookConfiguration labelled `istio.io/tag=<tag>` whose `istio.io/rev` label
/// names the revision; a revision is served when some injector carries `istio.io/rev`.
pub fn resolve(
    target: &str,
    webhooks: &[MutatingWebhookConfiguration],
) -> Result<String, RevisionError> {
    let label = |w: &MutatingWebhookConfiguration, key: &str| {
        w.metadata.labels.as_ref().and_then(|l| l.get(key).cloned())
    };
    if let Some(rev) = webhooks
        .iter()
        .find(|w| label(w, TAG_LABEL).as_deref() == Some(target))
        .and_then(|w| label(w, REVISION_LABEL))
    {
        return Ok(rev);
    }
    if webhooks.iter().any(|w| {
        label(w, TAG_LABEL).is_none() && label(w, REVISION_LABEL).as_deref() == Some(target)
    }) {
        return Ok(target.to_owned());
    }
    let mut known: Vec<String> = webhooks
        .iter()
        .filter_map(|w| label(w, TAG_LABEL).or_else(|| label(w, REVISION_LABEL)))
        .collect();
    known.sort();
    known.dedup();
    Err(RevisionError::UnknownTarget(
        target.to_owned(),
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        },
    ))
}

/// The revision whose injector the API server calls for pods of a namespace with these
/// labels: the revision label of a MutatingWebhookConfiguration (tag, else injector) with
/// a webhook whose namespace selector matches them.
pub fn injecting_revision(
    namespace_labels: &BTreeMap<String, String>,
    webhooks: &[MutatingWebhookConfiguration],
) -> Option<String> {
    // Tags first (a `default` tag overrides the legacy default injector), then by name:
    // the same answer whatever order the webhooks were listed in.
    let mut ordered: Vec<&MutatingWebhookConfiguration> = webhooks.iter().collect();
    ordered.sort_by_key(|w| {
        let is_tag = w
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(TAG_LABEL));
        (!is_tag, w.metadata.name.clone())
    });
    ordered.into_iter().find_map(|w| {
        let revision = w.metadata.labels.as_ref()?.get(REVISION_LABEL)?;
        let matches = w.webhooks.iter().flatten().any(|hook| {
            hook.namespace_selector.as_ref().is_some_and(|s| {
                crate::label_selector::Selector::from_label_selector(s)
                    .is_ok_and(|s| s.matches(namespace_labels))
            })
        });
        matches.then(|| revision.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ns(pairs: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("payments".into()),
                labels: Some(
                    pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn webhook(name: &str, pairs: &[(&str, &str)]) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            webhooks: None,
        }
    }

    #[test]
    fn a_namespace_needs_exactly_one_injection_selector() {
        assert_eq!(
            namespace_injection(&ns(&[("istio-injection", "enabled")])),
            Ok(NamespaceInjection::Default)
        );
        assert_eq!(
            namespace_injection(&ns(&[("istio.io/rev", "1-28")])),
            Ok(NamespaceInjection::Revision("1-28".into()))
        );
        let err = namespace_injection(&ns(&[
            ("istio-injection", "enabled"),
            ("istio.io/rev", "1-28"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("istio-injection wins"), "{err}");
        assert_eq!(
            namespace_injection(&ns(&[])),
            Err(RevisionError::NotInjected("payments".into()))
        );
        assert_eq!(
            namespace_injection(&ns(&[("istio-injection", "disabled")])),
            Err(RevisionError::NotInjected("payments".into()))
        );
    }

    #[test]
    fn moving_sets_the_revision_and_drops_the_old_label() {
        assert_eq!(
            move_patch("prod-canary"),
            json!({ "metadata": { "labels": { "istio.io/rev": "prod-canary", "istio-injection": null } } })
        );
    }

    #[test]
    fn the_injected_revision_comes_from_the_annotation_or_the_status() {
        let mut pod = Pod::default();
        assert_eq!(injected_revision(&pod), None);
        pod.metadata.annotations = Some(BTreeMap::from([(
            SIDECAR_STATUS_ANNOTATION.to_owned(),
            r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"revision":"1-29"}"#
                .to_owned(),
        )]));
        assert_eq!(injected_revision(&pod), Some("1-29".into()));
        pod.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(REVISION_ANNOTATION.into(), "1-28".into());
        assert_eq!(
            injected_revision(&pod),
            Some("1-28".into()),
            "the annotation wins"
        );
    }

    #[test]
    fn tags_resolve_through_their_webhook_and_unknown_targets_are_refused() {
        let hooks = [
            webhook("istio-sidecar-injector-1-28", &[("istio.io/rev", "1-28")]),
            webhook("istio-sidecar-injector-1-29", &[("istio.io/rev", "1-29")]),
            webhook(
                "istio-revision-tag-prod-canary",
                &[("istio.io/tag", "prod-canary"), ("istio.io/rev", "1-29")],
            ),
        ];
        assert_eq!(resolve("prod-canary", &hooks), Ok("1-29".into()));
        assert_eq!(resolve("1-28", &hooks), Ok("1-28".into()));
        assert_eq!(
            resolve("1-30", &hooks),
            Err(RevisionError::UnknownTarget(
                "1-30".into(),
                "1-28, 1-29, prod-canary".into()
            ))
        );
        assert!(
            resolve("x", &[])
                .unwrap_err()
                .to_string()
                .contains("known: none")
        );
    }

    #[test]
    fn the_injecting_revision_is_the_one_whose_webhook_selects_the_namespace() {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhook;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement,
        };
        let selecting = |name: &str, key: &str, value: &str, labels: &[(&str, &str)]| {
            let mut w = webhook(name, labels);
            w.webhooks = Some(vec![MutatingWebhook {
                name: "sidecar-injector.istio.io".into(),
                namespace_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: key.into(),
                        operator: "In".into(),
                        values: Some(vec![value.into()]),
                    }]),
                    match_labels: None,
                }),
                ..Default::default()
            }]);
            w
        };
        let hooks = [
            selecting(
                "istio-sidecar-injector-1-28",
                "istio-injection",
                "enabled",
                &[("istio.io/rev", "1-28")],
            ),
            selecting(
                "istio-revision-tag-prod-canary",
                "istio.io/rev",
                "prod-canary",
                &[("istio.io/tag", "prod-canary"), ("istio.io/rev", "1-29")],
            ),
        ];
        let labels = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(
            injecting_revision(&labels("istio-injection", "enabled"), &hooks),
            Some("1-28".into())
        );
        assert_eq!(
            injecting_revision(&labels("istio.io/rev", "prod-canary"), &hooks),
            Some("1-29".into())
        );
        assert_eq!(
            injecting_revision(&labels("istio.io/rev", "1-30"), &hooks),
            None
        );
    }
}
