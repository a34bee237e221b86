//! The agent's container image, as e2e/build-image.sh writes it (e2e/test.sh builds it
//! before the tests): an OCI archive whose layer holds a static binary, CA certificates
//! and a passwd entry for UID 65532 and nothing else, and whose entrypoint runs from the
//! unpacked root filesystem as that user — as the agent too, against the local cluster
//! with the ServiceAccount token a pod of the Helm chart's Deployment gets (the chart
//! installed by real Helm).

mod support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::TestEnv;
use support::agent::{self as agent_support, Agent};
use ztunnel_rollout_testbed::fixtures;

const UID: u32 = 65532;

fn archive() -> PathBuf {
    let path = std::env::var_os("ZTUNNEL_ROLLOUT_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image/ztunnel-rollout.oci.tar")
        });
    assert!(
        path.is_file(),
        "{} is missing: build it with e2e/build-image.sh (e2e/test.sh does)",
        path.display()
    );
    path
}

/// A blob of the layout in `dir`, checked against its digest.
fn blob(dir: &Path, descriptor: &Value) -> Vec<u8> {
    let digest = descriptor["digest"].as_str().expect("a digest");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let data = std::fs::read(dir.join("blobs/sha256").join(hex)).expect("the blob");
    assert_eq!(format!("{:x}", Sha256::digest(&data)), hex, "blob {digest}");
    assert_eq!(
        descriptor["size"].as_u64(),
        Some(data.len() as u64),
        "size of {digest}"
    );
    data
}

fn json(data: &[u8]) -> Value {
    serde_json::from_slice(data).expect("JSON")
}

/// Whether the ELF file has no program interpreter (is statically linked).
fn is_static(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!(elf[4], 2, "64-bit");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    // PT_INTERP (3) names the dynamic loader.
    (0..count).all(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) != 3
    })
}

/// The image unpacked in `dir`: its config (checked against every digest) and its root
/// filesystem.
struct Unpacked {
    config: Value,
    rootfs: PathBuf,
    entries: Vec<String>,
}

fn unpack(dir: &Path) -> Unpacked {
    let layout = dir.join("layout");
    tar::Archive::new(std::fs::File::open(archive()).unwrap())
        .unpack(&layout)
        .unwrap();
    let oci_layout = json(&std::fs::read(layout.join("oci-layout")).unwrap());
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");

    // index → manifest → config and the one layer, every blob as its digest says.
    let index = json(&std::fs::read(layout.join("index.json")).unwrap());
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(
        manifests[0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest = json(&blob(&layout, &manifests[0]));
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config = json(&blob(&layout, &manifest["config"]));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    // The layer: these files and directories (named with a slash), and nothing else: no
    // shell, no libc.
    let rootfs = dir.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let layer = blob(&layout, &layers[0]);
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(layer.as_slice())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    // The config names the uncompressed layer by its digest.
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([format!("sha256:{:x}", Sha256::digest(&tar_bytes))])
    );
    let mut entries: Vec<String> = Vec::new();
    let mut unpacked = tar::Archive::new(tar_bytes.as_slice());
    unpacked.set_preserve_ownerships(true);
    for entry in unpacked.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        // Root's, but for the user's own home.
        let owner = if path == "home/nonroot/" {
            UID as u64
        } else {
            0
        };
        assert_eq!(entry.header().uid().unwrap(), owner, "{path}");
        assert_eq!(entry.header().gid().unwrap(), owner, "{path}");
        entries.push(path);
        entry.unpack_in(&rootfs).unwrap();
    }
    entries.sort();
    Unpacked {
        config,
        rootfs,
        entries,
    }
}

/// A command that runs `program` chrooted into `rootfs` as UID/GID 65532 (and dies with
/// the test process), with an empty environment, the root filesystem read-only (a bind
/// mount of `rootfs`, read-only, in a mount namespace of its own), as the chart's
/// `readOnlyRootFilesystem: true` runs it.
fn in_image(rootfs: &Path, program: &str) -> Command {
    let root = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()).unwrap();
    let mut cmd = Command::new(program);
    cmd.env_clear();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let ok = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            ok(libc::unshare(libc::CLONE_NEWNS))?;
            let none = std::ptr::null::<libc::c_char>();
            ok(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            ok(libc::mount(
                root.as_ptr(),
                root.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            ok(libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
            ok(libc::chroot(root.as_ptr()))?;
            ok(libc::chdir(c"/".as_ptr()))?;
            ok(libc::setgroups(0, std::ptr::null()))?;
            ok(libc::setgid(UID))?;
            ok(libc::setuid(UID))?;
            // After setuid, which clears it.
            ok(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            Ok(())
        });
    }
    cmd
}

#[test]
fn the_image_runs_the_static_binary_as_uid_65532_with_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let Unpacked {
        config,
        rootfs,
        entries,
    } = unpack(dir.path());
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    let c = &config["config"];
    assert_eq!(c["User"], format!("{UID}:{UID}"), "not root: {c}");
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/usr/local/bin/ztunnel-rollout"])
    );
    assert_eq!(c["Cmd"], serde_json::json!(["agent"]));
    assert_eq!(
        entries,
        [
            "etc/",
            "etc/group",
            "etc/passwd",
            "etc/ssl/",
            "etc/ssl/certs/",
            "etc/ssl/certs/ca-certificates.crt",
            "home/",
            "home/nonroot/",
            "tmp/",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/ztunnel-rollout",
        ],
        "only what the agent needs"
    );
    let binary = rootfs.join("usr/local/bin/ztunnel-rollout");
    assert_eq!(
        std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let mut elf = Vec::new();
    std::fs::File::open(&binary)
        .unwrap()
        .read_to_end(&mut elf)
        .unwrap();
    assert!(is_static(&elf), "the binary is statically linked");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains(&format!("nonroot:x:{UID}:{UID}:")),
        "{passwd}"
    );
    let cas = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(cas.contains("BEGIN CERTIFICATE"));

    // The entrypoint runs inside the root filesystem as UID 65532, with an empty
    // environment, and is the binary of this commit.
    let out = in_image(&rootfs, "/usr/local/bin/ztunnel-rollout")
        .arg("--version")
        .output()
        .expect("run the entrypoint in the image's root filesystem");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{version}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = Command::new(env!("CARGO_BIN_EXE_ztunnel-rollout"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(version, String::from_utf8_lossy(&host.stdout));
    assert!(!version.contains("unknown"), "{version}");
    assert_eq!(
        c["Labels"]["org.opencontainers.image.revision"].as_str(),
        version
            .trim()
            .rsplit(' ')
            .next()
            .map(|c| c.trim_end_matches(')')),
        "the image's revision label is the binary's commit"
    );
}

/// The files a pod of ServiceAccount `namespace/name` finds at
/// /var/run/secrets/kubernetes.io/serviceaccount, written into `rootfs` (readable by
/// UID 65532): a bound token from the TokenRequest API, the cluster's CA, the namespace.
/// Returns the API server's port (KUBERNETES_SERVICE_PORT; the host is 127.0.0.1).
async fn mount_service_account(
    env: &TestEnv,
    rootfs: &Path,
    namespace: &str,
    name: &str,
) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let token = kube::Api::<ServiceAccount>::namespaced(env.client.clone(), namespace)
        .create_token_request(
            name,
            &kube::api::PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("a token for the agent's ServiceAccount")
        .status
        .and_then(|s| s.token)
        .expect("the token");
    let kubeconfig: Value = serde_json::from_str(
        &std::fs::read_to_string(&support::cluster().kubeconfig).expect("the kubeconfig"),
    )
    .expect("a JSON kubeconfig");
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let ca = std::fs::read(
        cluster["certificate-authority"]
            .as_str()
            .expect("a CA file"),
    )
    .expect("the cluster's CA");
    let server = cluster["server"].as_str().expect("a server");
    let port = server
        .strip_prefix("https://127.0.0.1:")
        .unwrap_or_else(|| panic!("a loopback API server: {server}"))
        .to_owned();
    let dir = rootfs.join("var/run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&dir).unwrap();
    for d in [
        "var",
        "var/run",
        "var/run/secrets",
        "var/run/secrets/kubernetes.io",
    ] {
        std::fs::set_permissions(rootfs.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (file, data) in [
        ("token", token.as_bytes()),
        ("ca.crt", ca.as_slice()),
        ("namespace", namespace.as_bytes()),
    ] {
        std::fs::write(dir.join(file), data).unwrap();
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    port
}

/// The device nodes an OCI runtime gives every container (the runtime spec's defaults
/// but the tty), made in `rootfs`: the image has no /dev of its own, and the agent's
/// random seeds read /dev/urandom.
fn runtime_devices(rootfs: &Path) {
    let dev = rootfs.join("dev");
    std::fs::create_dir(&dev).unwrap();
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, minor) in [
        ("null", 3),
        ("zero", 5),
        ("full", 7),
        ("random", 8),
        ("urandom", 9),
    ] {
        let path = std::ffi::CString::new(dev.join(name).as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path; character device major 1 (mem) as on every Linux.
        let made = unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(1, minor),
            )
        };
        assert_eq!(
            made,
            0,
            "mknod /dev/{name}: {}",
            std::io::Error::last_os_error()
        );
        std::fs::set_permissions(dev.join(name), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
}

/// The image's entrypoint as the agent: UID 65532 in the image's root filesystem, no
/// kubeconfig, the in-cluster configuration a pod of the Deployment gets.
#[tokio::test]
async fn the_image_runs_as_the_agent_with_its_service_account_token_and_completes_a_rollout() {
    let mut env = TestEnv::new("image-agent", 0).await;
    // The chart, installed by Helm: its ServiceAccount, RBAC and admission policy for
    // this test's ztunnel DaemonSet. Its own pods stay Pending (their image is in no
    // registry here); the image's agent runs below as one of them would.
    let release_ns = env.create_namespace("release", &[]).await;
    let home = tempfile::tempdir().expect("tempdir");
    let ztunnel_ns = format!("ztunnel.namespace={}", env.namespace);
    support::helm::helm_ok(
        home.path(),
        &[
            "install",
            "zr",
            support::helm::chart_dir().to_str().expect("UTF-8 path"),
            "--namespace",
            &release_ns,
            "--set",
            &ztunnel_ns,
            "--set",
            "nodeSelector.nowhere=yes-please",
        ],
    );
    env.add_nodes(3).await;
    let ztunnel = support::apply_ztunnel(&env, fixtures::UpdateStrategy::OnDelete).await;
    let target = support::upgrade_ztunnel(&env.client, &env.namespace, ztunnel).await;

    let dir = tempfile::tempdir().unwrap();
    let Unpacked { rootfs, .. } = unpack(dir.path());
    runtime_devices(&rootfs);
    let port = mount_service_account(&env, &rootfs, &release_ns, "zr").await;
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("agent-image.log");
    let metrics = format!(
        "127.0.0.1:{}",
        ztunnel_rollout_testbed::control_plane::free_port().expect("a free port")
    );
    let identity = "image-agent";
    let lease = format!("{}-lease", env.namespace);
    // The image's entrypoint with the Deployment's command (`agent`) and flags.
    let child = in_image(&rootfs, "/usr/local/bin/ztunnel-rollout")
        .arg("agent")
        .args(agent_support::flags(
            &env.namespace,
            &lease,
            identity,
            &metrics,
        ))
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        // What the chart's Deployment sets: its namespace (from the downward API) and the
        // one DaemonSet whose pods it may replace.
        .env("POD_NAMESPACE", &release_ns)
        .env(
            "ZTUNNEL_ROLLOUT_ZTUNNEL_DAEMONSET",
            format!("{}/ztunnel", env.namespace),
        )
        .env("RUST_LOG", "warn,ztunnel_rollout=info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the image's agent");
    // Its root filesystem is read-only (its own mount namespace, seen from here).
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", child.id()))
        .expect("the agent's mounts");
    let root_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no root mount in\n{mounts}"));
    assert!(
        root_mount
            .split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
        "the image's root is writable: {root_mount}"
    );
    let agent = Agent {
        child,
        identity: identity.to_owned(),
        log,
        metrics,
        wrapped: false,
    };

    let name = format!("{}-rollout", env.namespace);
    agent_support::create(
        &env.client,
        &agent_support::rollout(&env, &name, serde_json::json!({})),
    )
    .await;
    let done = agent_support::wait_for_phase(
        &env.client,
        &name,
        "Complete",
        std::time::Duration::from_secs(180),
        &[&agent],
    )
    .await;
    let status = done.status.expect("status");
    assert_eq!(status.counts.done, 3, "{:?}", status.nodes);
    let hashes = support::ztunnel_hashes(&env).await;
    assert!(
        hashes.len() == 3 && hashes.values().all(|h| *h == target),
        "every ztunnel pod on {target}: {hashes:?}"
    );
    agent_support::assert_nodes_released(&env.client, &env.node_list_params(), None).await;
    // The API server says who led: the process in the image.
    let held = kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        env.client.clone(),
        &release_ns,
    )
    .get(&lease)
    .await
    .expect("the agent's lease in the release's namespace");
    assert_eq!(
        held.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(identity)
    );
}
