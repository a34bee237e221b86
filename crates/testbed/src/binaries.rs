//! Where the control plane's binaries are, and a clear error when they are not there.

use std::path::{Path, PathBuf};

/// Overrides the directory holding the binaries built by `e2e/build-control-plane.sh`.
pub const BIN_DIR_ENV: &str = "ZTUNNEL_ROLLOUT_E2E_BIN";

#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error(
        "the local control plane is not built: {missing} not found in {dir}.\n\
         Build it with `e2e/build-control-plane.sh` (needs Go; `e2e/test.sh` does it for you), \
         or point {BIN_DIR_ENV} at a directory holding etcd, kube-apiserver, \
         kube-controller-manager, kube-scheduler, kubectl, kwok and kwok-stages/."
    )]
    Missing { missing: String, dir: String },
}

#[derive(Debug, Clone)]
pub struct ControlPlaneBinaries {
    pub dir: PathBuf,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub kwok: PathBuf,
    /// KWOK's own stage files, copied from its module by the build script.
    pub kwok_stages: PathBuf,
}

impl ControlPlaneBinaries {
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            kube_scheduler: dir.join("kube-scheduler"),
            kubectl: dir.join("kubectl"),
            kwok: dir.join("kwok"),
            kwok_stages: dir.join("kwok-stages"),
            dir,
        }
    }

    /// `$ZTUNNEL_ROLLOUT_E2E_BIN`, else `e2e/bin` of this source tree.
    pub fn from_env() -> Self {
        match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => Self::in_dir(dir),
            None => Self::in_dir(repository_root().join("e2e/bin")),
        }
    }

    /// The node stages this test bed takes from KWOK unchanged: initialisation and
    /// Lease-based heartbeats (so the node lifecycle controller sees live nodes).
    pub fn kwok_node_stages(&self) -> [PathBuf; 2] {
        [
            self.kwok_stages.join("node/fast/node-initialize.yaml"),
            self.kwok_stages
                .join("node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"),
        ]
    }

    pub fn check(&self) -> Result<(), BinariesError> {
        let mut needed = vec![
            self.etcd.clone(),
            self.kube_apiserver.clone(),
            self.kube_controller_manager.clone(),
            self.kube_scheduler.clone(),
            self.kubectl.clone(),
            self.kwok.clone(),
        ];
        needed.extend(self.kwok_node_stages());
        let missing: Vec<String> = needed
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.strip_prefix(&self.dir).unwrap_or(p).display().to_string())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(BinariesError::Missing {
                missing: missing.join(", "),
                dir: self.dir.display().to_string(),
            })
        }
    }
}

/// The repository this crate was built from (two levels above `crates/testbed`).
pub fn repository_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_named_with_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etcd"), "").unwrap();
        let err = ControlPlaneBinaries::in_dir(dir.path())
            .check()
            .unwrap_err();
        let BinariesError::Missing { missing, .. } = &err;
        assert!(missing.starts_with("kube-apiserver, "), "{missing}");
        assert!(
            !missing.contains("etcd"),
            "etcd exists and must not be listed: {missing}"
        );
        assert!(
            missing.contains("kwok-stages/node/fast/node-initialize.yaml"),
            "{missing}"
        );
        assert!(
            err.to_string().contains("e2e/build-control-plane.sh"),
            "{err}"
        );
    }
}
