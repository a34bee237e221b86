//! `manifests/` must be what the code generates. To regenerate after changing the API
//! types: `UPDATE_MANIFESTS=1 cargo test --test manifests`.

use std::path::PathBuf;

#[test]
fn manifests_match_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let update = std::env::var_os("UPDATE_MANIFESTS").is_some();
    let generated = ztunnel_rollout::api::manifests::generated();
    // Nothing stale either: every file outside the hand-written ones is generated.
    let names: std::collections::BTreeSet<PathBuf> =
        generated.iter().map(|(n, _)| PathBuf::from(n)).collect();
    let mut stale = Vec::new();
    let mut dirs = vec![dir.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read manifests/") {
            let path = entry.expect("entry").path();
            let relative = path
                .strip_prefix(&dir)
                .expect("under manifests/")
                .to_path_buf();
            let hand_written = ["alerts", "dashboard", "README.md", "image"]
                .iter()
                .any(|h| relative.starts_with(h));
            if path.is_dir() {
                dirs.push(path);
            } else if !hand_written && !names.contains(&relative) {
                stale.push(relative);
            }
        }
    }
    if update {
        for path in &stale {
            std::fs::remove_file(dir.join(path)).expect("remove a stale manifest");
        }
    } else {
        assert!(
            stale.is_empty(),
            "manifests/ has files the code no longer generates: {stale:?}; run `UPDATE_MANIFESTS=1 cargo test --test manifests` and commit the result"
        );
    }
    for (name, want) in generated {
        let path = dir.join(&name);
        if update {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create the manifest's directory");
            }
            std::fs::write(&path, &want).expect("write manifest");
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "manifests/{name} differs from what the code generates; run `UPDATE_MANIFESTS=1 cargo test --test manifests` and commit the result"
        );
    }
}

/// The release workflow installs the Helm the tests pinned (`e2e/versions.env`).
#[test]
fn the_release_workflow_uses_the_pinned_helm() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let pinned = read("e2e/versions.env")
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION=").map(str::to_owned))
        .expect("HELM_VERSION in e2e/versions.env");
    let workflow = read(".github/workflows/release.yml");
    let used = workflow
        .lines()
        .find_map(|l| l.trim().strip_prefix("HELM_VERSION:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("HELM_VERSION in the release workflow");
    assert_eq!(used, pinned);
}
