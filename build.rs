//! Records the git commit the binary is built from, for `--version` (and the image's
//! labels). `ZTUNNEL_ROLLOUT_COMMIT` overrides it, e.g. in a container build whose
//! context has no `.git`; without either the commit is "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ZTUNNEL_ROLLOUT_COMMIT");
    let commit = std::env::var("ZTUNNEL_ROLLOUT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ZTUNNEL_ROLLOUT_COMMIT={commit}");
}

/// The checked-out commit, watching the files that move when it changes.
fn git_commit() -> Option<String> {
    let git = Path::new(".git");
    if !git.exists() {
        return None;
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/packed-refs");
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed=.git/{reference}");
    }
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
}
