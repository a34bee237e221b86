//! Asks each istiod its version, for the skew check
//! (`ztunnel_rollout_core::preflight::versions`): through the API server's service proxy
//! to every istiod Service's monitoring port (`/version`), or at a URL the user names for
//! an istiod the API server cannot reach (an external control plane). An istiod that
//! does not answer is reported as such, with its Deployment's image tag standing in.

use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::{Api, Client};
use ztunnel_rollout_core::preflight::versions::ControlPlane;

use crate::health::http_client::HttpClient;

/// How long one istiod may take to say its version.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest version answer read (istiod's is a line).
const MAX_ANSWER: usize = 256;
const REVISION_LABEL: &str = "istio.io/rev";
const DEFAULT_REVISION: &str = "default";
/// istiod's Services and Deployments, as Istio's chart labels them.
const ISTIOD_SELECTOR: &str = "app=istiod";
/// The Service port of istiod's monitoring server, which serves `/version`.
const MONITORING_PORT: &str = "http-monitoring";

/// `--istiod-url [REVISION=]URL`: where istiod's monitoring server answers (its
/// `/version` is asked), for the revision named (`default` when none is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstiodUrl {
    pub revision: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IstiodUrlError {
    #[error("{0:?}: expected [REVISION=]URL with an http:// or https:// URL")]
    NotAUrl(String),
    #[error("{0:?}: the revision before '=' is empty")]
    EmptyRevision(String),
}

impl FromStr for IstiodUrl {
    type Err = IstiodUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bare = text.starts_with("http://") || text.starts_with("https://");
        let (revision, url) = match text.split_once('=') {
            Some((revision, url)) if !bare => (revision, url),
            _ => (DEFAULT_REVISION, text),
        };
        if revision.is_empty() {
            return Err(IstiodUrlError::EmptyRevision(text.to_owned()));
        }
        let valid = (url.starts_with("http://") || url.starts_with("https://"))
            && url
                .split_once("//")
                .is_some_and(|(_, host)| !host.is_empty());
        if !valid {
            return Err(IstiodUrlError::NotAUrl(text.to_owned()));
        }
        Ok(Self {
            revision: revision.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
        })
    }
}

fn revision_of(labels: Option<&std::collections::BTreeMap<String, String>>) -> String {
    labels
        .and_then(|l| l.get(REVISION_LABEL))
        .cloned()
        .unwrap_or_else(|| DEFAULT_REVISION.to_owned())
}

/// Every istiod's version: those at `urls` asked there, every other revision's istiod
/// Service through the API server. Listing the Services or Deployments failing is an
/// error; an istiod not answering is a `ControlPlane` with `unread` set.
pub async fn istiod_versions(
    client: &Client,
    urls: &[IstiodUrl],
) -> Result<Vec<ControlPlane>, kube::Error> {
    let http = HttpClient::with_slots(1);
    let mut out = Vec::new();
    for u in urls {
        let url = format!("{}/version", u.url);
        let asked = http
            .fetch(&url, ASK_TIMEOUT, |body| {
                String::from_utf8_lossy(&body[..body.len().min(MAX_ANSWER)])
                    .trim()
                    .to_owned()
            })
            .await;
        out.push(match asked {
            Ok(version) if !version.is_empty() => ControlPlane {
                revision: u.revision.clone(),
                version: Some(version),
                source: url,
                unread: None,
            },
            Ok(_) => unread(&u.revision, &url, "an empty answer".to_owned()),
            Err(e) => unread(&u.revision, &url, e.to_string()),
        });
    }
    let selector = ListParams::default().labels(ISTIOD_SELECTOR);
    let services = Api::<Service>::all(client.clone()).list(&selector).await?;
    let deployments = Api::<Deployment>::all(client.clone())
        .list(&selector)
        .await?;
    for svc in services.items {
        let revision = revision_of(svc.metadata.labels.as_ref());
        if out.iter().any(|c| c.revision == revision) {
            continue;
        }
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let path = format!(
            "/api/v1/namespaces/{namespace}/services/{name}:{MONITORING_PORT}/proxy/version"
        );
        let asked = match http::Request::get(&path).body(Vec::new()) {
            Ok(request) => tokio::time::timeout(ASK_TIMEOUT, client.request_text(request))
                .await
                .map_err(|_| format!("no answer within {ASK_TIMEOUT:?}"))
                .and_then(|r| r.map_err(short)),
            Err(e) => Err(e.to_string()),
        };
        let source = format!("service {namespace}/{name} /version");
        match asked.map(|v| v.trim().to_owned()) {
            Ok(version) if !version.is_empty() && version.len() <= MAX_ANSWER => {
                out.push(ControlPlane {
                    revision,
                    version: Some(version),
                    source,
                    unread: None,
                });
            }
            Ok(_) => out.push(from_image(
                &deployments.items,
                &namespace,
                &revision,
                &source,
                "an empty or oversized answer".to_owned(),
            )),
            Err(why) => out.push(from_image(
                &deployments.items,
                &namespace,
                &revision,
                &source,
                why,
            )),
        }
    }
    Ok(out)
}

/// The API server's refusal in a few words (its status line, not the error's chain).
fn short(e: kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("HTTP {}: {}", status.code, status.message),
        other => other.to_string(),
    }
}

fn unread(revision: &str, source: &str, why: String) -> ControlPlane {
    ControlPlane {
        revision: revision.to_owned(),
        version: None,
        source: source.to_owned(),
        unread: Some(why),
    }
}

/// The revision's istiod Deployment's image tag, for an istiod that did not answer.
fn from_image(
    deployments: &[Deployment],
    namespace: &str,
    revision: &str,
    asked: &str,
    why: String,
) -> ControlPlane {
    let image = deployments
        .iter()
        .filter(|d| d.metadata.namespace.as_deref() == Some(namespace))
        .filter(|d| revision_of(d.metadata.labels.as_ref()) == revision)
        .find_map(|d| {
            d.spec
                .as_ref()?
                .template
                .spec
                .as_ref()?
                .containers
                .first()?
                .image
                .clone()
        });
    let tag = image
        .as_deref()
        .and_then(ztunnel_rollout_core::preflight::versions::image_tag);
    match (tag, &image) {
        (Some(tag), Some(image)) => ControlPlane {
            revision: revision.to_owned(),
            version: Some(tag.to_owned()),
            source: format!("image {image}"),
            unread: Some(format!("{asked}: {why}")),
        },
        _ => unread(revision, asked, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istiod_urls_name_their_revision_or_the_default_one() {
        assert_eq!(
            "http://127.0.0.1:15014/".parse(),
            Ok(IstiodUrl {
                revision: "default".into(),
                url: "http://127.0.0.1:15014".into()
            })
        );
        assert_eq!(
            "canary=https://istiod.example:15014".parse(),
            Ok(IstiodUrl {
                revision: "canary".into(),
                url: "https://istiod.example:15014".into()
            })
        );
        assert_eq!(
            "127.0.0.1:15014".parse::<IstiodUrl>(),
            Err(IstiodUrlError::NotAUrl("127.0.0.1:15014".into()))
        );
        assert_eq!(
            "=http://x".parse::<IstiodUrl>(),
            Err(IstiodUrlError::EmptyRevision("=http://x".into()))
        );
        assert_eq!(
            "http://istiod:15014/?a=b"
                .parse::<IstiodUrl>()
                .map(|u| u.revision),
            Ok("default".into())
        );
        assert_eq!(
            "canary=http://".parse::<IstiodUrl>(),
            Err(IstiodUrlError::NotAUrl("canary=http://".into()))
        );
    }
}
