//! Real Helm (`e2e/build-helm.sh`, pinned in `e2e/versions.env`) on this repository's
//! chart (`manifests/chart`) against the test cluster.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use ztunnel_rollout_testbed::binaries::ControlPlaneBinaries;

pub fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/chart")
}

/// The Kubernetes version of the local control plane, from `e2e/versions.env`.
pub fn kube_version() -> String {
    let pins =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("e2e/versions.env"))
            .expect("read e2e/versions.env");
    pins.lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .expect("KUBERNETES_VERSION in e2e/versions.env")
        .trim_start_matches('v')
        .to_owned()
}

/// Runs Helm (from `e2e/bin`; `e2e/test.sh` builds it) against the test cluster, with
/// its own configuration and cache directories under `home`. Returns (success, stdout,
/// stderr).
pub fn helm(home: &Path, args: &[&str]) -> (bool, String, String) {
    let bin = ControlPlaneBinaries::from_env().dir.join("helm");
    assert!(
        bin.exists(),
        "{} is missing: run ./e2e/build-helm.sh (./e2e/test.sh does)",
        bin.display()
    );
    let out = Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", &super::cluster().kubeconfig)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn helm_ok(home: &Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = helm(home, args);
    assert!(ok, "helm {args:?} failed:\n{stderr}\n{stdout}");
    stdout
}

/// The documents `helm template` wrote (JSON objects separated by `---`).
pub fn documents(rendered: &str) -> Vec<Value> {
    rendered
        .split("\n---")
        .map(|d| {
            d.lines()
                .filter(|l| !l.starts_with("#") && !l.starts_with("---"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_json::from_str(&d).unwrap_or_else(|e| panic!("{e}:\n{d}")))
        .collect()
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}
