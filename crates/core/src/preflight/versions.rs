//! Version skew between Istio's control plane and its node agents, judged against
//! Istio's support policy: ztunnel and istio-cni at 1.x work with an istiod at 1.x or
//! 1.x+1, so istiod is upgraded first and never more than one minor version ahead.
//!
//! istiod's version is what istiod itself reports (its `/version` endpoint, read by the
//! shell); only when that cannot be read does its image's tag stand in, and the findings
//! say so. The node agents' versions are their DaemonSets' image tags: what every node
//! runs once the rollout is done. Pure: the shell reads, this judges.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::checks::{Finding, Severity};
use crate::labels::REVISION_LABEL;

/// The revision of Istio's objects without an `istio.io/rev` label.
pub const DEFAULT_REVISION: &str = "default";

/// One istiod, as the shell found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// The revision it serves (`default` when it has none).
    pub revision: String,
    /// What findings about it name: its Service (`Service/NAMESPACE/NAME`), or
    /// `istiod/REVISION` for one given by URL.
    pub object: String,
    /// What it reported, e.g. `1.31.0-dev-eed52eb-Clean`, or its image's tag.
    pub version: Option<String>,
    /// Where `version` came from: `http://…/version`, or `image <ref>`.
    pub source: String,
    /// Why istiod's own endpoint could not be read (and what to do about it).
    pub unread: Option<String>,
}

/// `major.minor` of a version: all the support policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Minor {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for Minor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// `1.31` of `1.31.0-dev-…`, `v1.29.2`, `1.28.0-distroless`; `None` for what is not a
/// version (`latest`, a digest).
pub fn minor(version: &str) -> Option<Minor> {
    let v = version.trim().trim_start_matches('v');
    let mut parts = v.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(Minor { major, minor })
}

/// How a node agent at `agent` stands against an istiod at `istiod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    /// The same minor version, or istiod one ahead: supported.
    Supported,
    /// The agent is newer than istiod: istiod must be upgraded first.
    AgentAhead,
    /// istiod is more than one minor version ahead of the agent.
    AgentTooFarBehind { minors: u32 },
    /// istiod is of a later major version.
    MajorVersionBehind,
}

pub fn skew(istiod: Minor, agent: Minor) -> Skew {
    if agent > istiod {
        return Skew::AgentAhead;
    }
    if istiod.major != agent.major {
        return Skew::MajorVersionBehind;
    }
    match istiod.minor - agent.minor {
        0 | 1 => Skew::Supported,
        minors => Skew::AgentTooFarBehind { minors },
    }
}

/// A node agent's DaemonSet: its name in findings (`ztunnel`, `istio-cni`) and object.
pub struct Agent<'a> {
    pub component: &'static str,
    pub daemon_set: &'a DaemonSet,
}

/// The revision an object's `istio.io/rev` label names (`default` without one).
pub fn revision_of(labels: Option<&BTreeMap<String, String>>) -> &str {
    labels
        .and_then(|l| l.get(REVISION_LABEL))
        .map_or(DEFAULT_REVISION, String::as_str)
}

/// The image of a pod template's first container (Istio's own containers come first).
pub fn first_image(template: &PodTemplateSpec) -> Option<&str> {
    template.spec.as_ref()?.containers.first()?.image.as_deref()
}

fn image_of(ds: &DaemonSet) -> Option<&str> {
    first_image(&ds.spec.as_ref()?.template)
}

/// The tag of an image reference (`1.28.0-distroless` of `docker.io/istio/ztunnel:…`);
/// `None` for a reference by digest alone.
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next()?;
    let last = without_digest.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    Some(tag)
}

fn ds_key(ds: &DaemonSet) -> String {
    format!(
        "DaemonSet/{}/{}",
        ds.metadata.namespace.as_deref().unwrap_or_default(),
        ds.metadata.name.as_deref().unwrap_or_default()
    )
}

fn warning(check: &'static str, object: String, message: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        check,
        object,
        message,
    }
}

/// The findings:
/// - every version and where it came from (`versions`, info);
/// - an istiod whose own version could not be read (`istiod-version-unread`, warning);
/// - a version that is not one (`version-unknown`, warning: not judged);
/// - each agent against the istiod of its revision — or every istiod when none serves
///   it — outside the policy (`version-skew`, error).
pub fn findings(control_planes: &[ControlPlane], agents: &[Agent<'_>]) -> Vec<Finding> {
    let mut out = Vec::new();
    if control_planes.is_empty() {
        // No istiod to judge against (a cluster without one has other problems; an
        // istiod outside the cluster is named with --istiod-url).
        return out;
    }
    let mut inventory: Vec<String> = control_planes
        .iter()
        .map(|c| {
            format!(
                "istiod (revision {}) {} from {}",
                c.revision,
                c.version.as_deref().unwrap_or("unknown"),
                c.source
            )
        })
        .collect();
    inventory.extend(agents.iter().map(|a| {
        format!(
            "{} (revision {}) {} from its image",
            a.component,
            revision_of(a.daemon_set.metadata.labels.as_ref()),
            image_of(a.daemon_set)
                .and_then(image_tag)
                .unwrap_or("unknown")
        )
    }));
    out.push(Finding {
        severity: Severity::Info,
        check: "versions",
        object: "Istio".to_owned(),
        message: inventory.join("; "),
    });
    for c in control_planes {
        if let Some(why) = &c.unread {
            out.push(warning(
                "istiod-version-unread",
                c.object.clone(),
                format!(
                    "istiod (revision {}) did not report its version: {why}; {}",
                    c.revision,
                    match &c.version {
                        Some(_) => format!("the skew check uses its {} instead", c.source),
                        None => "its skew is not judged".to_owned(),
                    },
                ),
            ));
        }
        if let Some(v) = c.version.as_deref().filter(|v| minor(v).is_none()) {
            out.push(warning(
                "version-unknown",
                c.object.clone(),
                format!(
                    "istiod (revision {})'s version {v:?} (from {}) is not a version: the node agents are not judged against it",
                    c.revision, c.source
                ),
            ));
        }
    }
    for a in agents {
        let Some(tag) = image_of(a.daemon_set).and_then(image_tag) else {
            continue;
        };
        let Some(agent_minor) = minor(tag) else {
            out.push(warning(
                "version-unknown",
                ds_key(a.daemon_set),
                format!(
                    "{}'s image tag {tag} is not a version: its skew against istiod is not judged",
                    a.component
                ),
            ));
            continue;
        };
        let revision = revision_of(a.daemon_set.metadata.labels.as_ref());
        let serving: Vec<&ControlPlane> = control_planes
            .iter()
            .filter(|c| c.revision == revision)
            .collect();
        let (against, unserved) = if serving.is_empty() {
            (control_planes.iter().collect(), true)
        } else {
            (serving, false)
        };
        for c in against {
            let Some(istiod_minor) = c.version.as_deref().and_then(minor) else {
                continue;
            };
            let istiod = format!(
                "istiod {} (revision {}, from {})",
                c.version.as_deref().unwrap_or_default(),
                c.revision,
                c.source
            );
            let mut problem = match skew(istiod_minor, agent_minor) {
                Skew::Supported => continue,
                Skew::AgentAhead => format!(
                    "{} {tag} is newer than {istiod}: Istio supports node agents at istiod's version or one minor version behind it; upgrade istiod first",
                    a.component
                ),
                Skew::AgentTooFarBehind { minors } => format!(
                    "{} {tag} is {minors} minor versions behind {istiod}: Istio supports node agents at most one minor version behind istiod; upgrade one minor version at a time",
                    a.component
                ),
                Skew::MajorVersionBehind => format!(
                    "{} {tag} is a major version behind {istiod}: beyond Istio's support policy",
                    a.component
                ),
            };
            if unserved {
                problem.push_str(&format!(
                    " (no istiod serves its revision {revision}: it is judged against every istiod)"
                ));
            }
            out.push(Finding {
                severity: Severity::Error,
                check: "version-skew",
                object: ds_key(a.daemon_set),
                message: problem,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon_set(name: &str, image: &str, revision: Option<&str>) -> DaemonSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "namespace": "istio-system",
                "labels": revision.map(|r| serde_json::json!({ REVISION_LABEL: r })),
            },
            "spec": {
                "selector": {},
                "template": { "spec": { "containers": [{ "name": "c", "image": image }] } },
            },
        }))
        .expect("daemon set")
    }

    fn istiod(revision: &str, version: &str) -> ControlPlane {
        ControlPlane {
            revision: revision.to_owned(),
            object: format!("istiod/{revision}"),
            version: Some(version.to_owned()),
            source: "http://127.0.0.1:15014/version".to_owned(),
            unread: None,
        }
    }

    /// The findings of ztunnel's DaemonSet `ds` against `planes`.
    fn ztunnel_findings(planes: &[ControlPlane], ds: &DaemonSet) -> Vec<Finding> {
        findings(
            planes,
            &[Agent {
                component: "ztunnel",
                daemon_set: ds,
            }],
        )
    }

    fn checks(findings: &[Finding]) -> Vec<(Severity, &'static str, &str)> {
        findings
            .iter()
            .map(|f| (f.severity, f.check, f.object.as_str()))
            .collect()
    }

    #[test]
    fn versions_read_as_major_and_minor() {
        let m = |major, minor| Some(Minor { major, minor });
        assert_eq!(minor("1.31.0-dev-eed52eb-Clean"), m(1, 31));
        assert_eq!(minor("v1.29.2"), m(1, 29));
        assert_eq!(minor("1.28.0-distroless"), m(1, 28));
        assert_eq!(minor("1.30"), m(1, 30));
        assert_eq!(minor("latest"), None);
        assert_eq!(minor("1"), None);
        assert_eq!(
            image_tag("docker.io/istio/ztunnel:1.28.0-distroless"),
            Some("1.28.0-distroless")
        );
        assert_eq!(
            image_tag("localhost:5000/istio/pilot:1.29.1"),
            Some("1.29.1")
        );
        assert_eq!(image_tag("localhost:5000/istio/pilot"), None);
    }

    #[test]
    fn the_policy_allows_istiod_one_minor_ahead_and_nothing_else() {
        let v = |minor| Minor { major: 1, minor };
        assert_eq!(skew(v(30), v(30)), Skew::Supported);
        assert_eq!(skew(v(31), v(30)), Skew::Supported);
        assert_eq!(skew(v(32), v(30)), Skew::AgentTooFarBehind { minors: 2 });
        assert_eq!(skew(v(30), v(31)), Skew::AgentAhead);
        assert_eq!(
            skew(Minor { major: 2, minor: 0 }, v(30)),
            Skew::MajorVersionBehind
        );
    }

    #[test]
    fn agents_are_judged_against_the_istiod_of_their_revision() {
        let ztunnel = daemon_set("ztunnel", "docker.io/istio/ztunnel:1.29.2-distroless", None);
        let cni = daemon_set("istio-cni-node", "docker.io/istio/install-cni:1.32.0", None);
        let planes = [
            istiod("default", "1.31.0-dev-eed52eb-Clean"),
            istiod("canary", "1.29.0"),
        ];
        let agents = [
            Agent {
                component: "ztunnel",
                daemon_set: &ztunnel,
            },
            Agent {
                component: "istio-cni",
                daemon_set: &cni,
            },
        ];
        let found = findings(&planes, &agents);
        assert_eq!(
            checks(&found),
            [
                (Severity::Info, "versions", "Istio"),
                (
                    Severity::Error,
                    "version-skew",
                    "DaemonSet/istio-system/ztunnel"
                ),
                (
                    Severity::Error,
                    "version-skew",
                    "DaemonSet/istio-system/istio-cni-node"
                ),
            ]
        );
        assert!(found[1].message.contains("2 minor versions behind istiod 1.31.0-dev-eed52eb-Clean (revision default, from http://127.0.0.1:15014/version)"), "{}", found[1].message);
        assert!(
            found[2].message.contains("newer than istiod 1.31.0-dev"),
            "{}",
            found[2].message
        );
        assert!(
            found[0]
                .message
                .contains("ztunnel (revision default) 1.29.2-distroless from its image"),
            "{}",
            found[0].message
        );

        // The same ztunnel, labelled for the canary revision, is within the policy.
        let canary = daemon_set(
            "ztunnel",
            "docker.io/istio/ztunnel:1.29.2-distroless",
            Some("canary"),
        );
        let found = ztunnel_findings(&planes, &canary);
        assert_eq!(checks(&found), [(Severity::Info, "versions", "Istio")]);
    }

    #[test]
    fn an_agent_of_a_revision_no_istiod_serves_is_judged_against_every_istiod() {
        let ztunnel = daemon_set("ztunnel", "istio/ztunnel:1.30.1", Some("gone"));
        let planes = [istiod("default", "1.31.0"), istiod("canary", "1.32.0")];
        let found = ztunnel_findings(&planes, &ztunnel);
        assert_eq!(
            checks(&found),
            [
                (Severity::Info, "versions", "Istio"),
                (
                    Severity::Error,
                    "version-skew",
                    "DaemonSet/istio-system/ztunnel"
                ),
            ]
        );
        assert!(found[1].message.contains("revision canary"));
        assert!(
            found[1]
                .message
                .contains("no istiod serves its revision gone: it is judged against every istiod"),
            "{}",
            found[1].message
        );
    }

    #[test]
    fn an_unread_istiod_is_named_and_its_image_stands_in() {
        let ztunnel = daemon_set("ztunnel", "istio/ztunnel:1.28.0", None);
        let planes = [ControlPlane {
            revision: "default".to_owned(),
            object: "Service/istio-system/istiod".to_owned(),
            version: Some("1.30.1".to_owned()),
            source: "image docker.io/istio/pilot:1.30.1".to_owned(),
            unread: Some("connection refused".to_owned()),
        }];
        let found = ztunnel_findings(&planes, &ztunnel);
        assert_eq!(
            checks(&found),
            [
                (Severity::Info, "versions", "Istio"),
                (
                    Severity::Warning,
                    "istiod-version-unread",
                    "Service/istio-system/istiod"
                ),
                (
                    Severity::Error,
                    "version-skew",
                    "DaemonSet/istio-system/ztunnel"
                ),
            ]
        );
        assert!(found[1].message.contains("connection refused"));
        assert!(
            found[2]
                .message
                .contains("from image docker.io/istio/pilot:1.30.1")
        );
    }

    #[test]
    fn what_is_not_a_version_is_named_not_judged() {
        let latest = daemon_set("ztunnel", "istio/ztunnel:latest", None);
        let found = ztunnel_findings(&[istiod("default", "1.31.0")], &latest);
        assert_eq!(
            checks(&found),
            [
                (Severity::Info, "versions", "Istio"),
                (
                    Severity::Warning,
                    "version-unknown",
                    "DaemonSet/istio-system/ztunnel"
                ),
            ]
        );
        // An image by digest alone has no tag: nothing to judge, and no version named.
        let pinned = daemon_set("ztunnel", "istio/ztunnel@sha256:0123abcd", None);
        assert_eq!(image_tag("istio/ztunnel@sha256:0123abcd"), None);
        assert_eq!(
            image_tag("istio/ztunnel:1.28.0@sha256:0123abcd"),
            Some("1.28.0")
        );
        let found = ztunnel_findings(&[istiod("default", "1.31.0")], &pinned);
        assert_eq!(checks(&found), [(Severity::Info, "versions", "Istio")]);
        // An istiod answering something that is not a version is named, and judges
        // nothing; one that did not answer at all judges nothing either.
        let old = daemon_set("ztunnel", "istio/ztunnel:1.20.0", None);
        let found = ztunnel_findings(&[istiod("default", "unknown-build")], &old);
        assert_eq!(
            checks(&found),
            [
                (Severity::Info, "versions", "Istio"),
                (Severity::Warning, "version-unknown", "istiod/default"),
            ]
        );
        let silent = ControlPlane {
            version: None,
            ..istiod("default", "")
        };
        let found = ztunnel_findings(&[silent], &old);
        assert_eq!(checks(&found), [(Severity::Info, "versions", "Istio")]);
    }

    #[test]
    fn without_an_istiod_nothing_is_judged() {
        let ztunnel = daemon_set("ztunnel", "istio/ztunnel:1.28.0", None);
        assert_eq!(ztunnel_findings(&[], &ztunnel), []);
    }
}
