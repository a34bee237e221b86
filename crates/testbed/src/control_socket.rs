//! The local cluster's control interface: a Unix socket in its state directory
//! (`control.sock`) on which `local-cluster up` takes one command per connection —
//! `ACTION COMPONENT`, e.g. `restart etcd` or `pause kube-apiserver` — does it to that one
//! component ([`RunningControlPlane::control`]) and answers one JSON line:
//! `{"ok":true}` or `{"ok":false,"error":"..."}`. The campaign, the tests and a person
//! (`local-cluster ctl`) use it; `local-cluster up` stops the whole cluster only when a
//! component exits on its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::control_plane::{Action, RunningControlPlane};

/// The socket's file name in the state directory.
pub const SOCKET: &str = "control.sock";

/// How long a client waits for a command's answer (a start waits for the API server).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);
/// How long the server waits for a client's command line.
const COMMAND_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {0}: no answer within {1:?}")]
    NoAnswer(PathBuf, Duration),
    #[error("control socket {0}: unreadable answer {1:?}")]
    Unreadable(PathBuf, String),
    #[error("{0}")]
    Refused(String),
}

/// Sends `action component` to the cluster behind `socket` and waits for its answer.
pub async fn send(socket: &Path, action: &str, component: &str) -> Result<(), ControlSocketError> {
    let io = |source| ControlSocketError::Io {
        path: socket.to_owned(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.map_err(io)?;
        stream
            .write_all(format!("{action} {component}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .await
            .map_err(io)?;
        Ok(line)
    };
    let line = tokio::time::timeout(ANSWER_WITHIN, exchange)
        .await
        .map_err(|_| ControlSocketError::NoAnswer(socket.to_owned(), ANSWER_WITHIN))??;
    let answer: serde_json::Value = serde_json::from_str(&line)
        .map_err(|_| ControlSocketError::Unreadable(socket.to_owned(), line.clone()))?;
    match answer["ok"].as_bool() {
        Some(true) => Ok(()),
        Some(false) => Err(ControlSocketError::Refused(
            answer["error"].as_str().unwrap_or("refused").to_owned(),
        )),
        None => Err(ControlSocketError::Unreadable(socket.to_owned(), line)),
    }
}

/// Serves one connection: reads its command, does it, answers.
pub async fn serve_one(stream: UnixStream, cluster: &mut RunningControlPlane) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read =
        tokio::time::timeout(COMMAND_WITHIN, BufReader::new(read).read_line(&mut line)).await;
    let answer = match read {
        Ok(Ok(_)) => match run(&line, cluster).await {
            Ok(()) => serde_json::json!({ "ok": true }),
            Err(e) => serde_json::json!({ "ok": false, "error": e }),
        },
        _ => return,
    };
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
}

async fn run(line: &str, cluster: &mut RunningControlPlane) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [action, component] = words[..] else {
        return Err(format!(
            "expected `ACTION COMPONENT` (e.g. `restart etcd`), got {:?}",
            line.trim()
        ));
    };
    let action: Action = action.parse().map_err(|e| format!("{e}"))?;
    tracing::info!(?action, component, "control request");
    cluster
        .control(component, action)
        .await
        .map_err(|e| e.to_string())
}
