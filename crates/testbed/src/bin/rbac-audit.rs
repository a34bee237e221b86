//! `rbac-audit [DIR]`: the agent's requests in every audit log in DIR (default
//! `target/tmp/rbac-audit`, where the integration tests' clusters write them) against
//! the RBAC rules in `manifests/` for the agent's ServiceAccount. Exits non-zero when a
//! rule was never used or a request was not granted. `e2e/test.sh` runs it after a
//! full test run.

use std::path::PathBuf;

use anyhow::Context;
use ztunnel_rollout_testbed::binaries::repository_root;
use ztunnel_rollout_testbed::rbac_audit::{self, Grant, Request, Scope};

/// The agent's roles in `manifests/`: everything its ServiceAccount is bound to, and
/// where each applies (the ztunnel Role: in each test's own namespace).
fn roles() -> [(&'static str, Scope); 6] {
    [
        ("clusterrole.json", Scope::Cluster),
        (
            "role-lease.json",
            Scope::Namespace("ztunnel-rollout".into()),
        ),
        ("role-events.json", Scope::Namespace("default".into())),
        ("role-ztunnel.json", Scope::AnyNamespace),
        (
            "optional/sidecar-migrations/clusterrole.json",
            Scope::Cluster,
        ),
        (
            "optional/prometheus-credentials/role.json",
            Scope::Namespace("ztunnel-rollout".into()),
        ),
    ]
}

/// The ServiceAccount `manifests/` binds them to.
const AGENT: &str = "system:serviceaccount:ztunnel-rollout:ztunnel-rollout";

fn main() -> anyhow::Result<std::process::ExitCode> {
    let root = repository_root();
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/tmp").join(rbac_audit::DIR));
    let mut grants: Vec<Grant> = Vec::new();
    let roles = roles();
    for (role, scope) in &roles {
        let path = root.join("manifests").join(role);
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        grants.extend(rbac_audit::grants(&value, role, scope)?);
    }
    let mut requests: std::collections::BTreeMap<Request, usize> = Default::default();
    let mut logs = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| {
        format!(
            "{}: no audit logs (run the integration tests first: ./e2e/test.sh)",
            dir.display()
        )
    })? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        logs += 1;
        let file = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
        for (r, n) in rbac_audit::requests(std::io::BufReader::new(file), AGENT)? {
            *requests.entry(r).or_insert(0) += n;
        }
    }
    let verdict = rbac_audit::audit(&grants, &requests);
    println!(
        "rbac-audit: {} requests by {AGENT} in {logs} audit logs, against {} grants of {}",
        verdict.requests,
        grants.len(),
        roles.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(", ")
    );
    for g in &verdict.unused {
        println!("  never used: {g}");
    }
    for (r, n) in &verdict.ungranted {
        let group = if r.group.is_empty() { "core" } else { &r.group };
        println!(
            "  not granted ({n}x): {} {group}/{}{}",
            r.verb,
            r.resource,
            r.name
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default()
        );
    }
    if verdict.passed() {
        println!("rbac-audit: every rule used, every request granted");
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        println!("rbac-audit: FAILED");
        Ok(std::process::ExitCode::FAILURE)
    }
}
