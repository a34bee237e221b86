//! Moving a revision tag to another revision, with the effect of
//! `istioctl tag set TAG --revision R --overwrite`: the tag's MutatingWebhookConfiguration
//! keeps its name, webhooks and selectors (they select `istio.io/rev=TAG`), and takes the
//! target revision's injector endpoint (URL or Service and path, CA bundle) and its
//! `istio.io/rev` label. Namespaces labelled with the tag then get the target revision's
//! sidecar, but only for pods created afterwards: restarting them is a migration to the
//! tag. Rolling back moves the tag back. Pure: the CLI reads and writes.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::labels::{REVISION_LABEL, TAG_LABEL};
use crate::sidecar::migration::MigrationPlan;

/// On a migration that restarts a tag's namespaces after a tag move: the move, as JSON
/// (`{"tag":…,"from":…,"to":…}`), so that a rollback knows where to move the tag back.
pub const TAG_MOVE_ANNOTATION: &str = "ztunnel-rollout.dev/tag-move";

/// On a tag's webhook configuration that this tool moved: the revision it pointed at
/// before. A command that stopped after the move and runs again still knows where a
/// rollback must return.
pub const MOVED_FROM_ANNOTATION: &str = "ztunnel-rollout.dev/moved-from";

/// Istio's injector webhooks end with this name; the first one is the revision's
/// canonical endpoint (as istioctl reads it).
const INJECTOR_WEBHOOK_SUFFIX: &str = "sidecar-injector.istio.io";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error(
        "no revision tag {tag:?} (tags: {known}); create one with `istioctl tag set {tag} --revision REVISION`"
    )]
    NoSuchTag { tag: String, known: String },
    #[error(
        "the default tag also decides which revision validates Istio's configuration (the default validating webhook): move it with `istioctl tag set default --revision REVISION --overwrite`"
    )]
    DefaultTag,
    #[error(
        "revision tag {tag:?} ({webhook}) has no istio.io/rev label: it points at no revision; fix it with `istioctl tag set {tag} --revision REVISION --overwrite`"
    )]
    TagWithoutRevision { tag: String, webhook: String },
    #[error("{0:?} is a revision tag: a tag points at a revision, not at another tag")]
    TargetIsTag(String),
    #[error(
        "no revision {target:?}: no injector MutatingWebhookConfiguration is labelled istio.io/rev={target} (revisions: {known})"
    )]
    NoSuchRevision { target: String, known: String },
    #[error(
        "revision {revision}'s injector {webhook} has no webhook named *.{INJECTOR_WEBHOOK_SUFFIX}: cannot tell its endpoint"
    )]
    NoInjectorEndpoint { revision: String, webhook: String },
    #[error(
        "revision tag {tag:?} has {count} MutatingWebhookConfigurations ({names}); fix that first"
    )]
    DuplicateTag {
        tag: String,
        count: usize,
        names: String,
    },
}

/// A tag move: from which revision to which, and the tag's webhook configuration as it
/// must be written (with the resourceVersion it was read at: a conditional replace).
#[derive(Debug, Clone, PartialEq)]
pub struct TagMove {
    pub tag: String,
    pub from: String,
    pub to: String,
    /// `None` when the tag points at `to` already.
    pub webhook: Option<MutatingWebhookConfiguration>,
    /// Where a rollback returns the tag: `from` for a move; for a tag already at `to`,
    /// the revision before this tool's last move of it, if it moved it.
    pub rollback_to: Option<String>,
}

impl TagMove {
    /// The record for the migration that follows, unless there is nowhere to go back.
    pub fn record(&self) -> Option<TagMoveRecord> {
        let back = self.rollback_to.as_ref()?;
        (back != &self.to).then(|| TagMoveRecord {
            tag: self.tag.clone(),
            from: back.clone(),
            to: self.to.clone(),
        })
    }
}

/// The record of a move kept on the migration that follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagMoveRecord {
    pub tag: String,
    pub from: String,
    pub to: String,
}

impl TagMoveRecord {
    pub fn annotation(&self) -> String {
        json!({ "tag": self.tag, "from": self.from, "to": self.to }).to_string()
    }

    /// The record in a migration's annotations, if it follows a tag move; an error
    /// naming the annotation when it is not a record.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, String> {
        let Some(text) = annotations.get(TAG_MOVE_ANNOTATION) else {
            return Ok(None);
        };
        serde_json::from_str(text).map(Some).map_err(|e| {
            format!("annotation {TAG_MOVE_ANNOTATION}={text:?} is not a tag move ({{\"tag\",\"from\",\"to\"}}): {e}")
        })
    }
}

fn label<'a>(w: &'a MutatingWebhookConfiguration, key: &str) -> Option<&'a str> {
    w.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn listed(mut names: Vec<String>) -> String {
    names.sort();
    names.dedup();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Plans moving `tag` to revision `to`, from the cluster's MutatingWebhookConfigurations.
pub fn plan_move(
    tag: &str,
    to: &str,
    webhooks: &[MutatingWebhookConfiguration],
) -> Result<TagMove, TagError> {
    if tag == "default" {
        return Err(TagError::DefaultTag);
    }
    let tags: Vec<&MutatingWebhookConfiguration> = webhooks
        .iter()
        .filter(|w| label(w, TAG_LABEL) == Some(tag))
        .collect();
    let current = match tags.as_slice() {
        [one] => *one,
        [] => {
            return Err(TagError::NoSuchTag {
                tag: tag.to_owned(),
                known: listed(
                    webhooks
                        .iter()
                        .filter_map(|w| label(w, TAG_LABEL).map(str::to_owned))
                        .collect(),
                ),
            });
        }
        many => {
            return Err(TagError::DuplicateTag {
                tag: tag.to_owned(),
                count: many.len(),
                names: listed(
                    many.iter()
                        .filter_map(|w| w.metadata.name.clone())
                        .collect(),
                ),
            });
        }
    };
    // A revision's own injector carries no tag label. (`default` is both a revision
    // and, once `istioctl tag set default` ran, a tag: the revision wins.)
    let target = webhooks
        .iter()
        .filter(|w| label(w, TAG_LABEL).is_none() && label(w, REVISION_LABEL) == Some(to))
        .min_by_key(|w| w.metadata.name.clone());
    if target.is_none() && webhooks.iter().any(|w| label(w, TAG_LABEL) == Some(to)) {
        return Err(TagError::TargetIsTag(to.to_owned()));
    }
    let target = target.ok_or_else(|| TagError::NoSuchRevision {
        target: to.to_owned(),
        known: listed(
            webhooks
                .iter()
                .filter(|w| label(w, TAG_LABEL).is_none())
                .filter_map(|w| label(w, REVISION_LABEL).map(str::to_owned))
                .collect(),
        ),
    })?;
    let from = label(current, REVISION_LABEL)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| TagError::TagWithoutRevision {
            tag: tag.to_owned(),
            webhook: current.metadata.name.clone().unwrap_or_default(),
        })?
        .to_owned();
    if from == to {
        let moved_from = current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MOVED_FROM_ANNOTATION))
            .cloned();
        return Ok(TagMove {
            tag: tag.to_owned(),
            from,
            to: to.to_owned(),
            webhook: None,
            rollback_to: moved_from,
        });
    }
    let endpoint = target
        .webhooks
        .iter()
        .flatten()
        .find(|h| h.name.ends_with(INJECTOR_WEBHOOK_SUFFIX))
        .ok_or_else(|| TagError::NoInjectorEndpoint {
            revision: to.to_owned(),
            webhook: target.metadata.name.clone().unwrap_or_default(),
        })?;
    let mut moved = current.clone();
    moved
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_LABEL.to_owned(), to.to_owned());
    moved
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MOVED_FROM_ANNOTATION.to_owned(), from.clone());
    for hook in moved.webhooks.iter_mut().flatten() {
        hook.client_config = endpoint.client_config.clone();
        hook.reinvocation_policy = endpoint.reinvocation_policy.clone();
    }
    // Written as read: the managed fields are the server's.
    moved.metadata.managed_fields = None;
    Ok(TagMove {
        tag: tag.to_owned(),
        rollback_to: Some(from.clone()),
        from,
        to: to.to_owned(),
        webhook: Some(moved),
    })
}

/// After a tag move, the namespaces that select the tag were injected by the revision
/// the tag pointed at before: that is where a rollback returns them (the migration's
/// plan, made after the move, would see the new one).
pub fn restore_previous_revision(plan: &mut MigrationPlan, moved: &TagMoveRecord) {
    for ns in &mut plan.namespaces {
        if ns.previous.rev.as_deref() == Some(moved.tag.as_str()) {
            ns.previous_revision = moved.from.clone();
        }
    }
}

/// The Service `istioctl tag set` creates beside a tag (`istiod-revision-tag-TAG` in the
/// Istio namespace), which proxies use to reach the tag's istiod.
pub fn tag_service_name(tag: &str) -> String {
    format!("istiod-revision-tag-{tag}")
}

/// The merge patch that points the tag's Service at revision `to`'s istiod pods.
pub fn tag_service_patch(to: &str) -> Value {
    json!({ "spec": { "selector": { REVISION_LABEL: to } } })
}

/// One row of the tag inventory, as `istioctl tag list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagRow {
    pub tag: String,
    pub revision: String,
    /// Namespaces labelled `istio.io/rev=TAG`.
    pub namespaces: Vec<String>,
}

/// Every revision tag, the revision it points at and the namespaces that select it.
pub fn inventory(
    webhooks: &[MutatingWebhookConfiguration],
    namespace_labels: &[(String, BTreeMap<String, String>)],
) -> Vec<TagRow> {
    let mut rows: Vec<TagRow> = webhooks
        .iter()
        .filter_map(|w| {
            let tag = label(w, TAG_LABEL)?.to_owned();
            let namespaces = namespace_labels
                .iter()
                .filter(|(_, l)| l.get(REVISION_LABEL) == Some(&tag))
                .map(|(n, _)| n.clone())
                .collect();
            Some(TagRow {
                revision: label(w, REVISION_LABEL).unwrap_or_default().to_owned(),
                tag,
                namespaces,
            })
        })
        .collect();
    rows.sort_by(|a, b| a.tag.cmp(&b.tag));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhook, ServiceReference, WebhookClientConfig,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn hook(name: &str, url: Option<&str>, service: Option<&str>, ca: &str) -> MutatingWebhook {
        MutatingWebhook {
            name: name.to_owned(),
            client_config: WebhookClientConfig {
                url: url.map(str::to_owned),
                service: service.map(|s| ServiceReference {
                    namespace: "istio-system".to_owned(),
                    name: s.to_owned(),
                    path: Some("/inject".to_owned()),
                    port: Some(443),
                }),
                ca_bundle: Some(ByteString(ca.as_bytes().to_vec())),
            },
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "istio.io/rev".to_owned(),
                    name.to_owned(),
                )])),
                ..Default::default()
            }),
            admission_review_versions: vec!["v1".to_owned()],
            side_effects: "None".to_owned(),
            ..Default::default()
        }
    }

    fn config(
        name: &str,
        labels: &[(&str, &str)],
        hooks: Vec<MutatingWebhook>,
    ) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                resource_version: Some("42".to_owned()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            webhooks: Some(hooks),
        }
    }

    /// Revisions 1-30 (by URL) and 1-31 (by Service), tag prod-stable → 1-30.
    fn cluster() -> Vec<MutatingWebhookConfiguration> {
        vec![
            config(
                "istio-sidecar-injector-1-30",
                &[("istio.io/rev", "1-30")],
                vec![
                    hook(
                        "rev.namespace.sidecar-injector.istio.io",
                        Some("https://10.0.0.1:15017/inject"),
                        None,
                        "ca-30",
                    ),
                    hook(
                        "rev.object.sidecar-injector.istio.io",
                        Some("https://10.0.0.1:15017/inject"),
                        None,
                        "ca-30",
                    ),
                ],
            ),
            config(
                "istio-sidecar-injector-1-31",
                &[("istio.io/rev", "1-31")],
                vec![hook(
                    "rev.namespace.sidecar-injector.istio.io",
                    None,
                    Some("istiod-1-31"),
                    "ca-31",
                )],
            ),
            config(
                "istio-revision-tag-prod-stable",
                &[
                    ("istio.io/rev", "1-30"),
                    ("istio.io/tag", "prod-stable"),
                    ("app", "sidecar-injector"),
                ],
                vec![
                    hook(
                        "rev.namespace.sidecar-injector.istio.io",
                        Some("https://10.0.0.1:15017/inject"),
                        None,
                        "ca-30",
                    ),
                    hook(
                        "rev.object.sidecar-injector.istio.io",
                        Some("https://10.0.0.1:15017/inject"),
                        None,
                        "ca-30",
                    ),
                ],
            ),
            config(
                "other-webhook",
                &[],
                vec![hook(
                    "something.example.com",
                    Some("https://x"),
                    None,
                    "other",
                )],
            ),
        ]
    }

    #[test]
    fn a_move_takes_the_target_revisions_endpoint_and_keeps_the_tags_selectors() {
        let before = cluster();
        let m = plan_move("prod-stable", "1-31", &before).expect("a move");
        assert_eq!((m.from.as_str(), m.to.as_str()), ("1-30", "1-31"));
        let w = m.webhook.expect("a change");
        let old = &before[2];
        assert_eq!(w.metadata.name, old.metadata.name);
        assert_eq!(
            w.metadata.resource_version.as_deref(),
            Some("42"),
            "a conditional write"
        );
        let labels = w.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("istio.io/rev").map(String::as_str), Some("1-31"));
        assert_eq!(
            labels.get("istio.io/tag").map(String::as_str),
            Some("prod-stable")
        );
        assert_eq!(
            labels.get("app").map(String::as_str),
            Some("sidecar-injector")
        );
        let hooks = w.webhooks.clone().unwrap_or_default();
        assert_eq!(hooks.len(), 2, "every webhook of the tag stays");
        for (new, old) in hooks.iter().zip(old.webhooks.iter().flatten()) {
            assert_eq!(new.name, old.name);
            assert_eq!(
                new.namespace_selector, old.namespace_selector,
                "the tag's selectors stay"
            );
            assert_eq!(new.client_config.url, None);
            assert_eq!(
                new.client_config.service.as_ref().map(|s| s.name.as_str()),
                Some("istiod-1-31")
            );
            assert_eq!(
                new.client_config.ca_bundle,
                Some(ByteString(b"ca-31".to_vec()))
            );
        }
        assert_eq!(
            w.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MOVED_FROM_ANNOTATION))
                .map(String::as_str),
            Some("1-30"),
            "the tag remembers where it came from"
        );
        let record = plan_move("prod-stable", "1-31", &before)
            .expect("a move")
            .record()
            .expect("a record");
        assert_eq!((record.from.as_str(), record.to.as_str()), ("1-30", "1-31"));
        let annotations = BTreeMap::from([(TAG_MOVE_ANNOTATION.to_owned(), record.annotation())]);
        assert_eq!(
            TagMoveRecord::from_annotations(&annotations),
            Ok(Some(record.clone()))
        );
        assert_eq!(TagMoveRecord::from_annotations(&BTreeMap::new()), Ok(None));
        let garbled = BTreeMap::from([(TAG_MOVE_ANNOTATION.to_owned(), "prod".to_owned())]);
        let e = TagMoveRecord::from_annotations(&garbled).expect_err("not a record");
        assert!(e.contains(TAG_MOVE_ANNOTATION), "{e}");

        // Run again after the move (a command that stopped half-way): nothing to write,
        // and the rollback still knows where to go.
        let mut after = before.clone();
        after[2] = w;
        let again = plan_move("prod-stable", "1-31", &after).expect("no error");
        assert_eq!(again.webhook, None);
        assert_eq!(again.record(), Some(record));
    }

    #[test]
    fn moving_back_restores_the_previous_endpoint() {
        let mut webhooks = cluster();
        let forward = plan_move("prod-stable", "1-31", &webhooks).expect("forward");
        webhooks[2] = forward.webhook.expect("changed");
        let back = plan_move("prod-stable", "1-30", &webhooks).expect("back");
        assert_eq!((back.from.as_str(), back.to.as_str()), ("1-31", "1-30"));
        let hooks = back.webhook.expect("changed").webhooks.unwrap_or_default();
        assert!(hooks.iter().all(|h| h.client_config.url.as_deref()
            == Some("https://10.0.0.1:15017/inject")
            && h.client_config.service.is_none()
            && h.client_config.ca_bundle == Some(ByteString(b"ca-30".to_vec()))));
    }

    #[test]
    fn a_revision_named_like_a_tag_is_still_a_revision() {
        let mut webhooks = cluster();
        // Revision `default` and the `default` tag that istioctl makes beside it.
        webhooks.push(config(
            "istio-sidecar-injector",
            &[("istio.io/rev", "default")],
            vec![hook(
                "rev.namespace.sidecar-injector.istio.io",
                Some("https://10.0.0.9:15017/inject"),
                None,
                "ca-default",
            )],
        ));
        webhooks.push(config(
            "istio-revision-tag-default",
            &[("istio.io/rev", "default"), ("istio.io/tag", "default")],
            vec![hook(
                "rev.namespace.sidecar-injector.istio.io",
                Some("https://10.0.0.9:15017/inject"),
                None,
                "ca-default",
            )],
        ));
        let m = plan_move("prod-stable", "default", &webhooks).expect("a revision");
        assert_eq!(m.to, "default");
        let hooks = m.webhook.expect("a change").webhooks.unwrap_or_default();
        assert!(
            hooks
                .iter()
                .all(|h| h.client_config.url.as_deref() == Some("https://10.0.0.9:15017/inject"))
        );
    }

    #[test]
    fn a_tag_already_there_is_not_rewritten() {
        let m = plan_move("prod-stable", "1-30", &cluster()).expect("no error");
        assert_eq!(m.webhook, None);
        assert_eq!(m.from, "1-30");
        assert_eq!(
            m.record(),
            None,
            "never moved by this tool: nothing to go back to"
        );
    }

    #[test]
    fn bad_moves_are_refused_with_what_exists() {
        let webhooks = cluster();
        let e = plan_move("prod", "1-31", &webhooks).expect_err("no such tag");
        assert!(e.to_string().contains("tags: prod-stable"), "{e}");
        assert!(
            e.to_string().contains("istioctl tag set prod --revision"),
            "{e}"
        );
        let e = plan_move("prod-stable", "1-32", &webhooks).expect_err("no such revision");
        assert!(e.to_string().contains("revisions: 1-30, 1-31"), "{e}");
        assert_eq!(
            plan_move("default", "1-31", &webhooks),
            Err(TagError::DefaultTag),
            "the default tag carries the default validator: istioctl's job"
        );
        let e = plan_move("prod-stable", "prod-stable", &webhooks).expect_err("a tag");
        assert_eq!(e, TagError::TargetIsTag("prod-stable".to_owned()));
        let mut duplicated = webhooks.clone();
        let mut copy = webhooks[2].clone();
        copy.metadata.name = Some("istio-revision-tag-prod-stable-2".to_owned());
        duplicated.push(copy);
        assert!(matches!(
            plan_move("prod-stable", "1-31", &duplicated),
            Err(TagError::DuplicateTag { count: 2, .. })
        ));
        let mut unlabelled = webhooks.clone();
        if let Some(l) = unlabelled[2].metadata.labels.as_mut() {
            l.remove("istio.io/rev");
        }
        assert!(matches!(
            plan_move("prod-stable", "1-31", &unlabelled),
            Err(TagError::TagWithoutRevision { .. })
        ));
        let mut no_endpoint = webhooks;
        no_endpoint[1].webhooks = Some(vec![hook("x.example.com", Some("https://x"), None, "c")]);
        assert!(matches!(
            plan_move("prod-stable", "1-31", &no_endpoint),
            Err(TagError::NoInjectorEndpoint { .. })
        ));
    }

    #[test]
    fn after_a_move_the_tags_namespaces_roll_back_to_the_revision_it_left() {
        use crate::api::migration::InjectionLabels;
        use crate::sidecar::migration::PlannedNamespace;
        let planned = |name: &str, rev: &str, previous: &str| PlannedNamespace {
            name: name.to_owned(),
            previous: InjectionLabels {
                rev: Some(rev.to_owned()),
                istio_injection: None,
            },
            previous_revision: previous.to_owned(),
        };
        let mut plan = MigrationPlan {
            target_revision: "1-31".to_owned(),
            namespaces: vec![
                planned("shop", "prod-stable", "1-31"),
                planned("web", "1-29", "1-29"),
            ],
            warnings: vec![],
        };
        restore_previous_revision(
            &mut plan,
            &TagMoveRecord {
                tag: "prod-stable".to_owned(),
                from: "1-30".to_owned(),
                to: "1-31".to_owned(),
            },
        );
        assert_eq!(plan.namespaces[0].previous_revision, "1-30");
        assert_eq!(
            plan.namespaces[1].previous_revision, "1-29",
            "not the tag's"
        );
    }

    #[test]
    fn the_inventory_lists_each_tag_its_revision_and_namespaces() {
        let namespaces = vec![
            (
                "shop".to_owned(),
                BTreeMap::from([("istio.io/rev".to_owned(), "prod-stable".to_owned())]),
            ),
            (
                "web".to_owned(),
                BTreeMap::from([("istio.io/rev".to_owned(), "1-31".to_owned())]),
            ),
            (
                "db".to_owned(),
                BTreeMap::from([("istio.io/rev".to_owned(), "prod-stable".to_owned())]),
            ),
        ];
        assert_eq!(
            inventory(&cluster(), &namespaces),
            vec![TagRow {
                tag: "prod-stable".to_owned(),
                revision: "1-30".to_owned(),
                namespaces: vec!["shop".to_owned(), "db".to_owned()],
            }]
        );
        assert_eq!(
            tag_service_name("prod-stable"),
            "istiod-revision-tag-prod-stable"
        );
        assert_eq!(
            tag_service_patch("1-31"),
            json!({ "spec": { "selector": { "istio.io/rev": "1-31" } } })
        );
    }
}
