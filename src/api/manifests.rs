//! `manifests/` as the code defines it: CI fails when the files differ from this.

use kube::CustomResourceExt;

use super::ZtunnelRollout;

/// (path under `manifests/`, contents) of every generated manifest.
pub fn generated() -> Vec<(&'static str, String)> {
    let crd = serde_json::to_string_pretty(&ZtunnelRollout::crd()).unwrap_or_default();
    vec![("crd-ztunnelrollouts.json", format!("{crd}\n"))]
}
