//! `manifests/` must be what the code generates. To regenerate after changing the API
//! types: `UPDATE_MANIFESTS=1 cargo test --test manifests`.

use std::path::PathBuf;

#[test]
fn manifests_match_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let update = std::env::var_os("UPDATE_MANIFESTS").is_some();
    for (name, want) in ztunnel_rollout::api::manifests::generated() {
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
