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
use ztunnel_rollout_core::preflight::versions::{
    ControlPlane, DEFAULT_REVISION, first_image, image_tag, revision_of,
};

use crate::health::http_client::HttpClient;

/// How long one istiod may take to say its version.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest version answer read (istiod's is a line).
const MAX_ANSWER: usize = 256;
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
    #[error(
        "{0:?}: name istiod's monitoring server only (scheme, host, port, path): no user, query or fragment"
    )]
    Extra(String),
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
        if url.contains(['#', '?']) {
            return Err(IstiodUrlError::Extra(text.to_owned()));
        }
        let uri: http::Uri = url
            .parse()
            .map_err(|_| IstiodUrlError::NotAUrl(text.to_owned()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(IstiodUrlError::NotAUrl(text.to_owned()));
        };
        if !matches!(scheme, "http" | "https") || authority.host().is_empty() {
            return Err(IstiodUrlError::NotAUrl(text.to_owned()));
        }
        if authority.as_str().contains('@') {
            return Err(IstiodUrlError::Extra(text.to_owned()));
        }
        Ok(Self {
            revision: revision.to_owned(),
            url: format!("{scheme}://{authority}{}", uri.path().trim_end_matches('/')),
        })
    }
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
        let object = format!("istiod/{}", u.revision);
        out.push(match asked {
            Ok(version) if !version.is_empty() => ControlPlane {
                revision: u.revision.clone(),
                object,
                version: Some(version),
                source: url,
                unread: None,
            },
            Ok(_) => unread(&u.revision, object, &url, format!("{url}: an empty answer")),
            Err(e) => unread(&u.revision, object, &url, e.to_string()),
        });
    }
    let selector = ListParams::default().labels(ISTIOD_SELECTOR);
    let services = Api::<Service>::all(client.clone()).list(&selector).await?;
    let deployments = Api::<Deployment>::all(client.clone())
        .list(&selector)
        .await?;
    for svc in services.items {
        let revision = revision_of(svc.metadata.labels.as_ref()).to_owned();
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
        let object = format!("Service/{namespace}/{name}");
        let why = match asked.map(|v| v.trim().to_owned()) {
            Ok(version) if !version.is_empty() && version.len() <= MAX_ANSWER => {
                out.push(ControlPlane {
                    revision,
                    object,
                    version: Some(version),
                    source,
                    unread: None,
                });
                continue;
            }
            Ok(_) => "an empty or oversized answer".to_owned(),
            Err(why) => why,
        };
        let why = format!(
            "{source}: {why} (for an istiod the API server cannot reach, pass --istiod-url {revision}=URL)"
        );
        out.push(from_image(
            &deployments.items,
            (&namespace, &revision),
            object,
            &source,
            why,
        ));
    }
    Ok(out)
}

/// How much of a refusal's message is shown: through the service proxy it may be the
/// pod's own answer, which is not trusted to be short or harmless.
const MESSAGE_SHOWN: usize = 120;

/// The refusal in a few words: its status code and the start of its message, printable
/// characters only (not the error's chain).
fn short(e: kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let message: String = status
                .message
                .chars()
                .filter(|c| !c.is_control())
                .take(MESSAGE_SHOWN)
                .collect();
            format!("HTTP {}: {message}", status.code)
        }
        other => other.to_string(),
    }
}

fn unread(revision: &str, object: String, source: &str, why: String) -> ControlPlane {
    ControlPlane {
        revision: revision.to_owned(),
        object,
        version: None,
        source: source.to_owned(),
        unread: Some(why),
    }
}

/// The revision's istiod Deployment's image tag, for an istiod that did not answer.
fn from_image(
    deployments: &[Deployment],
    (namespace, revision): (&str, &str),
    object: String,
    asked: &str,
    why: String,
) -> ControlPlane {
    let image = deployments
        .iter()
        .filter(|d| d.metadata.namespace.as_deref() == Some(namespace))
        .filter(|d| revision_of(d.metadata.labels.as_ref()) == revision)
        .find_map(|d| first_image(&d.spec.as_ref()?.template));
    let tag = image.and_then(image_tag);
    match (tag, image) {
        (Some(tag), Some(image)) => ControlPlane {
            revision: revision.to_owned(),
            object,
            version: Some(tag.to_owned()),
            source: format!("image {image}"),
            unread: Some(why),
        },
        _ => unread(revision, object, asked, why),
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
        for refused in [
            "http://istiod:15014/?a=b",
            "http://istiod:15014/#x",
            "canary=http://user:secret@istiod:15014",
        ] {
            assert_eq!(
                refused.parse::<IstiodUrl>(),
                Err(IstiodUrlError::Extra(refused.into()))
            );
        }
        assert_eq!(
            "ftp://istiod:15014".parse::<IstiodUrl>(),
            Err(IstiodUrlError::NotAUrl("ftp://istiod:15014".into()))
        );
        assert_eq!(
            "https://istiod.example:15014/base/"
                .parse::<IstiodUrl>()
                .map(|u| u.url),
            Ok("https://istiod.example:15014/base".into())
        );
        assert_eq!(
            "canary=http://".parse::<IstiodUrl>(),
            Err(IstiodUrlError::NotAUrl("canary=http://".into()))
        );
    }
}
