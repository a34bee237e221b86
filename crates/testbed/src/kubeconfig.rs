//! Kubeconfig files for the local control plane's clients (JSON, which kubectl and
//! every client-go component read as YAML).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::pki::{ClientIdentity, PkiFiles};

pub const CONTEXT: &str = "local-cluster";

pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    pki: &PkiFiles,
    id: ClientIdentity,
) -> std::io::Result<PathBuf> {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT,
            "cluster": { "server": server, "certificate-authority": pki.ca_cert },
        }],
        "users": [{
            "name": id.user,
            "user": {
                "client-certificate": pki.client_cert(id),
                "client-key": pki.client_key(id),
            },
        }],
        "contexts": [{
            "name": CONTEXT,
            "context": { "cluster": CONTEXT, "user": id.user },
        }],
        "current-context": CONTEXT,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
    std::fs::write(path, text)?;
    Ok(path.to_owned())
}
