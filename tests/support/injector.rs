//! A fake Istio sidecar injector: a mutating admission webhook on 127.0.0.1 over TLS,
//! registered with MutatingWebhookConfigurations named, labelled and selecting namespaces
//! like istiod's, so that pods created through the API server come out stamped with the
//! revision that injected them (`istio.io/rev` and `sidecar.istio.io/status`). No sidecar
//! is added: only the annotations, and, for apps broken at a revision, a KWOK delay that
//! keeps the pod from ever becoming Ready.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use ztunnel_rollout_testbed::fixtures;
use ztunnel_rollout_testbed::kwok_stages::READY_AFTER_ANNOTATION;

pub const REVISION_ANNOTATION: &str = "istio.io/rev";
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// KWOK's delay before Ready for a pod of a broken app: ten years.
pub const NEVER_READY: &str = "87600h";
/// Concurrent tests share the cluster and each has a default revision of its own; unlike
/// istiod's, the default webhook also asks for this namespace label, set to the default
/// revision, so that tests do not inject each other's `istio-injection=enabled`
/// namespaces.
pub const DEFAULT_SCOPE_LABEL: &str = "test.ztunnel-rollout.dev/default-revision";

/// (revision, app) pairs whose pods never become Ready.
type BrokenApps = Arc<Mutex<HashSet<(String, String)>>>;

/// The injector's HTTPS server; stops when dropped, and removes the webhook configurations
/// it installed (a webhook that fails closed would otherwise block pod creation).
pub struct Injector {
    port: u16,
    ca_pem: String,
    broken: BrokenApps,
    installed: Mutex<Vec<String>>,
    server: tokio::task::JoinHandle<()>,
}

/// The CA certificate (PEM) the API server trusts, and the TLS configuration serving a
/// certificate it signed for IP 127.0.0.1.
fn tls_config() -> (String, ServerConfig) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake-istiod-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");

    let serving_key = KeyPair::generate().expect("serving key");
    let mut serving = CertificateParams::default();
    serving
        .distinguished_name
        .push(DnType::CommonName, "istiod.istio-system.svc");
    serving.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &ca)
        .expect("serving certificate");

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![serving_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(serving_key.serialize_der())),
        )
        .expect("TLS configuration");
    (ca.pem(), config)
}

/// Escapes a map key for a JSON pointer (RFC 6901).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch adding `added` to the pod's annotations: the whole object when the pod
/// has none, else one `add` per key (which also replaces an existing value).
fn annotations_patch(pod: &Value, added: &BTreeMap<String, String>) -> Value {
    let has_annotations = pod
        .pointer("/metadata/annotations")
        .is_some_and(Value::is_object);
    if !has_annotations {
        return json!([{ "op": "add", "path": "/metadata/annotations", "value": added }]);
    }
    added
        .iter()
        .map(|(k, v)| {
            json!({
                "op": "add",
                "path": format!("/metadata/annotations/{}", pointer_token(k)),
                "value": v,
            })
        })
        .collect()
}

/// The annotations the injector adds to `pod` at `revision`.
fn injected_annotations(
    pod: &Value,
    revision: &str,
    broken: &BrokenApps,
) -> BTreeMap<String, String> {
    let status = json!({
        "initContainers": ["istio-init"],
        "containers": ["istio-proxy"],
        "volumes": ["istio-envoy"],
        "imagePullSecrets": null,
        "revision": revision,
    });
    let mut added = BTreeMap::from([
        (REVISION_ANNOTATION.to_owned(), revision.to_owned()),
        (STATUS_ANNOTATION.to_owned(), status.to_string()),
    ]);
    let app = pod
        .pointer("/metadata/labels/app")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let is_broken = broken
        .lock()
        .expect("lock")
        .contains(&(revision.to_owned(), app.to_owned()));
    if is_broken {
        added.insert(READY_AFTER_ANNOTATION.to_owned(), NEVER_READY.to_owned());
    }
    added
}

/// The AdmissionReview answering `review` (a pod CREATE) with the injection patch.
fn admission_response(review: &Value, revision: &str, broken: &BrokenApps) -> Value {
    let request = &review["request"];
    let pod = &request["object"];
    let patch = annotations_patch(pod, &injected_annotations(pod, revision, broken));
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": request["uid"],
            "allowed": true,
            "patchType": "JSONPatch",
            "patch": BASE64.encode(patch.to_string()),
        },
    })
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

/// Serves `POST /inject/<revision>` (the API server appends `?timeout=…`).
async fn handle(request: Request<Incoming>, broken: BrokenApps) -> Response<Full<Bytes>> {
    let Some(revision) = request.uri().path().strip_prefix("/inject/") else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found".into());
    };
    let revision = revision.to_owned();
    if request.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "POST only".into(),
        );
    }
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(review) => reply(
            StatusCode::OK,
            "application/json",
            admission_response(&review, &revision, &broken).to_string(),
        ),
        Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, broken: BrokenApps) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let (acceptor, broken) = (acceptor.clone(), broken.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |request| {
                let broken = broken.clone();
                async move { Ok::<_, Infallible>(handle(request, broken).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then(|| strings(values)),
    }
}

fn selector(requirements: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(requirements),
        ..Default::default()
    }
}

/// Namespaces labelled `istio.io/rev=<value>` and not `istio-injection`.
fn revision_namespaces(value: &str) -> LabelSelector {
    selector(vec![
        requirement("istio.io/rev", "In", &[value]),
        requirement("istio-injection", "DoesNotExist", &[]),
    ])
}

impl Injector {
    /// Starts the HTTPS server on 127.0.0.1 with a CA and serving certificate of its own.
    pub async fn start() -> Injector {
        let (ca_pem, config) = tls_config();
        let port = ztunnel_rollout_testbed::control_plane::free_port().expect("a free port");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        let broken = BrokenApps::default();
        let server = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            broken.clone(),
        ));
        Injector {
            port,
            ca_pem,
            broken,
            installed: Mutex::new(Vec::new()),
            server,
        }
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A webhook injecting `revision` into pods of the namespaces `namespaces` selects,
    /// as istiod configures them.
    fn webhook(&self, name: &str, revision: &str, namespaces: LabelSelector) -> MutatingWebhook {
        MutatingWebhook {
            name: name.to_owned(),
            admission_review_versions: strings(&["v1"]),
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            timeout_seconds: Some(5),
            reinvocation_policy: Some("Never".into()),
            rules: Some(vec![RuleWithOperations {
                operations: Some(strings(&["CREATE"])),
                api_groups: Some(strings(&[""])),
                api_versions: Some(strings(&["v1"])),
                resources: Some(strings(&["pods"])),
                scope: Some("Namespaced".into()),
            }]),
            namespace_selector: Some(namespaces),
            object_selector: Some(selector(vec![requirement(
                "sidecar.istio.io/inject",
                "NotIn",
                &["false"],
            )])),
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{}/inject/{revision}", self.port)),
                ca_bundle: Some(ByteString(self.ca_pem.clone().into_bytes())),
                service: None,
            },
            ..Default::default()
        }
    }

    async fn apply(
        &self,
        client: &Client,
        name: &str,
        labels: &[(&str, &str)],
        webhooks: Vec<MutatingWebhook>,
    ) {
        let configuration = MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            webhooks: Some(webhooks),
        };
        fixtures::apply(&Api::all(client.clone()), &configuration)
            .await
            .unwrap_or_else(|e| panic!("apply MutatingWebhookConfiguration {name}: {e}"));
        let mut installed = self.installed.lock().expect("lock");
        if !installed.iter().any(|n| n == name) {
            installed.push(name.to_owned());
        }
    }

    /// Applies `istio-sidecar-injector-<rev>` (labels `istio.io/rev=<rev>`,
    /// `app=sidecar-injector`): namespaces labelled `istio.io/rev=<rev>`, and when
    /// `default`, also those labelled `istio-injection=enabled` (and
    /// [`DEFAULT_SCOPE_LABEL`]`=<rev>`).
    pub async fn install_revision(&self, client: &Client, rev: &str, default: bool) {
        let mut webhooks = vec![self.webhook(
            "rev.namespace.sidecar-injector.istio.io",
            rev,
            revision_namespaces(rev),
        )];
        if default {
            webhooks.push(self.webhook(
                "namespace.sidecar-injector.istio.io",
                rev,
                selector(vec![
                    requirement("istio-injection", "In", &["enabled"]),
                    requirement(DEFAULT_SCOPE_LABEL, "In", &[rev]),
                ]),
            ));
        }
        self.apply(
            client,
            &format!("istio-sidecar-injector-{rev}"),
            &[("istio.io/rev", rev), ("app", "sidecar-injector")],
            webhooks,
        )
        .await;
    }

    /// Applies `istio-revision-tag-<tag>` (labels `istio.io/tag=<tag>`, `istio.io/rev=<rev>`):
    /// namespaces labelled `istio.io/rev=<tag>` get revision `rev`.
    pub async fn install_tag(&self, client: &Client, tag: &str, rev: &str) {
        let webhook = self.webhook(
            "rev.namespace.sidecar-injector.istio.io",
            rev,
            revision_namespaces(tag),
        );
        self.apply(
            client,
            &format!("istio-revision-tag-{tag}"),
            &[
                ("istio.io/tag", tag),
                ("istio.io/rev", rev),
                ("app", "sidecar-injector"),
            ],
            vec![webhook],
        )
        .await;
    }

    /// Deletes MutatingWebhookConfiguration `name`, if it exists.
    pub async fn remove(client: &Client, name: &str) {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("delete MutatingWebhookConfiguration {name}: {e}"),
        }
    }

    /// From now on, pods of app `app` (label `app`) injected at `rev` never become Ready:
    /// they get KWOK's ready delay of [`NEVER_READY`], as if their sidecar could not start.
    pub fn break_app(&self, rev: &str, app: &str) {
        self.broken
            .lock()
            .expect("lock")
            .insert((rev.to_owned(), app.to_owned()));
    }

    /// Waits until the API server calls the webhook for pods of `namespace` and they come
    /// out injected at `rev`, by dry-run creating a pod there. A new or changed webhook
    /// configuration takes effect once the API server's informer has seen it, a moment
    /// after it was applied.
    pub async fn wait_until_injecting(client: &Client, namespace: &str, rev: &str) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let probe = Pod {
            metadata: ObjectMeta {
                name: Some("sidecar-injector-probe".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "probe".into(),
                    image: Some("probe".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // The revision the probe came out with, or why it was not admitted (a webhook
            // the API server cannot call fails the request, as failurePolicy is Fail).
            let outcome = match pods.create(&dry_run, &probe).await {
                Ok(pod) => Ok(pod
                    .metadata
                    .annotations
                    .and_then(|a| a.get(REVISION_ANNOTATION).cloned())),
                Err(e) => Err(e.to_string()),
            };
            if outcome.as_ref().is_ok_and(|r| r.as_deref() == Some(rev)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pods of {namespace} not injected at {rev} within 30s; last probe: {outcome:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.server.abort();
        let names = std::mem::take(&mut *self.installed.lock().unwrap_or_else(|e| e.into_inner()));
        if names.is_empty() {
            return;
        }
        let kubeconfig = super::cluster().kubeconfig.clone();
        // Drop cannot await; remove them on a thread with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = ztunnel_rollout_testbed::control_plane::client_for(&kubeconfig)
                    .await
                    .map_err(std::io::Error::other)?;
                let api: Api<MutatingWebhookConfiguration> = Api::all(client);
                for name in names {
                    let _ = api.delete(&name, &DeleteParams::default()).await;
                }
                Ok::<_, std::io::Error>(())
            })
        });
        let _ = cleanup.join();
    }
}
