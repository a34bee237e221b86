//! `local-cluster` starts beside another cluster, stops leaving nothing behind (also when
//! its parent goes away or it is killed), and fails clearly when the control plane has
//! not been built.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ztunnel_rollout_testbed::supervisor::{self, Supervisor};

fn start_supervisor(tag: &str, extra_args: &[&str]) -> Result<Supervisor, String> {
    supervisor::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_local-cluster")),
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        tag,
        extra_args,
    )
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; it only waits for its (new) parent to reap it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn pids(s: &Supervisor) -> Vec<u32> {
    s.ready["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .map(|p| p.as_u64().expect("pid") as u32)
        .collect()
}

fn wait_all_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "still running after {within:?}: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_cluster_runs_beside_the_first_and_stops_with_its_parent() {
    let first = start_supervisor("first", &[]).expect("first cluster");
    let first_kubeconfig = PathBuf::from(first.ready["kubeconfig"].as_str().expect("kubeconfig"));
    let second = start_supervisor("second", &[]).expect("second cluster");
    let second_pids = pids(&second);
    assert_eq!(
        second_pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok"
    );
    assert!(second_pids.iter().all(|p| alive(*p)));
    let kubeconfig = PathBuf::from(second.ready["kubeconfig"].as_str().expect("kubeconfig"));
    assert_ne!(kubeconfig, first_kubeconfig);
    let state_dir = PathBuf::from(second.ready["stateDir"].as_str().expect("stateDir"));

    // Both answer at once.
    let kubectl = ztunnel_rollout_testbed::binaries::repository_root().join("e2e/bin/kubectl");
    for kc in [&first_kubeconfig, &kubeconfig] {
        let out = Command::new(&kubectl)
            .args(["get", "--raw", "/readyz", "--kubeconfig"])
            .arg(kc)
            .output()
            .expect("kubectl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The parent "exits": its end of the pipe closes.
    let Supervisor {
        mut child, stdin, ..
    } = second;
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "local-cluster did not stop when its stdin closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "local-cluster exited with {status}");
    wait_all_gone(&second_pids, Duration::from_secs(5));
    assert!(
        !state_dir.exists(),
        "temporary state {} left behind",
        state_dir.display()
    );
}

#[test]
fn a_killed_supervisor_takes_its_components_with_it() {
    // A killed supervisor cannot remove its state: keep it where this test removes it.
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir = state.path().join("cluster");
    let s = start_supervisor(
        "killed",
        &["--state-dir", state_dir.to_str().expect("a UTF-8 path")],
    )
    .expect("cluster");
    let component_pids = pids(&s);
    let Supervisor { mut child, .. } = s;
    child.kill().expect("SIGKILL local-cluster");
    child.wait().expect("reap");
    wait_all_gone(&component_pids, Duration::from_secs(10));
}

#[test]
fn a_missing_control_plane_fails_with_how_to_build_it() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_local-cluster"))
        .args(["up", "--exit-on-stdin-eof"])
        .env("ZTUNNEL_ROLLOUT_E2E_BIN", empty.path())
        .output()
        .expect("run local-cluster");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the local control plane is not built"),
        "{stderr}"
    );
    assert!(stderr.contains("kube-apiserver"), "{stderr}");
    assert!(stderr.contains("e2e/build-control-plane.sh"), "{stderr}");
    assert!(out.stdout.is_empty(), "no ready line may be printed");
}
