//! Starting `local-cluster up` as a child process that stops the cluster when its
//! parent goes away (the tests' and the benchmarks' cluster).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// A running `local-cluster up` supervisor and what it printed when ready.
pub struct Supervisor {
    pub child: Child,
    pub stdin: ChildStdin,
    pub ready: serde_json::Value,
    pub log: PathBuf,
}

/// Starts `binary up` (the `local-cluster` binary) as a child of this process, its log
/// in `log_dir`; returns once it is ready.
pub fn start(
    binary: &Path,
    log_dir: &Path,
    tag: &str,
    extra_args: &[&str],
) -> Result<Supervisor, String> {
    let log = log_dir.join(format!("local-cluster-{tag}-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = Command::new(binary)
        .args(["up", "--exit-on-stdin-eof"])
        .args(extra_args)
        .env_remove("LOCAL_CLUSTER_STATE_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("starting local-cluster: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    let failure = |what: String| {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        format!("the local cluster did not start ({what}).\n{log_text}")
    };
    match read {
        Ok(n) if n > 0 => {}
        Ok(_) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(failure(format!("local-cluster exited: {status}")));
        }
        Err(e) => return Err(failure(e.to_string())),
    }
    let ready: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| failure(format!("unreadable ready line {line:?}: {e}")))?;
    Ok(Supervisor {
        child,
        stdin,
        ready,
        log,
    })
}
