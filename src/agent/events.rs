//! Kubernetes Events, published in the background so a slow API server never holds up a
//! node's next step. A full queue drops the event with a warning; the status still
//! carries every node's phase and message.

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::warn;

pub const REPORTER: &str = "ztunnel-rollout";

/// Events being created at once: at 1,000 nodes the agent sends ~40 a second, more than
/// one request at a time keeps up with on a loaded API server.
const EVENTS_AT_ONCE: usize = 8;

pub struct Notice {
    /// When it happened (the Event is sent later, when the queue gets to it).
    pub at: Timestamp,
    pub warning: bool,
    pub reason: String,
    pub action: String,
    pub note: String,
    pub regarding: ObjectReference,
    pub related: Option<ObjectReference>,
}

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Notice>,
}

impl EventSink {
    /// Starts the publishing task; it ends when every sink is dropped. Each notice is one
    /// new Event: kube's `Recorder` would merge Events of one reason and object into a
    /// series that keeps only the first note, and caches every Event it sent (at 1,000
    /// nodes its cache was the agent's largest heap item, BENCHMARKS.md).
    pub fn start(client: Client, instance: String) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Notice>(4096);
        let notices = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) });
        let task = tokio::spawn(notices.for_each_concurrent(EVENTS_AT_ONCE, move |n| {
            let event = event(n, &instance);
            // Events about cluster-scoped objects live in `default`.
            let namespace = event
                .regarding
                .as_ref()
                .and_then(|r| r.namespace.clone())
                .unwrap_or_else(|| "default".to_owned());
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            async move {
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    warn!(error = %e, reason = ?event.reason, "could not publish an Event");
                }
            }
        }));
        (Self { tx }, task)
    }

    /// Sends an Event about `regarding` for the controller step `action`.
    pub fn notice(
        &self,
        action: &str,
        regarding: &ObjectReference,
        related: Option<ObjectReference>,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.send(Notice {
            at: Timestamp::now(),
            warning,
            reason: reason.to_owned(),
            action: action.to_owned(),
            note,
            regarding: regarding.clone(),
            related,
        });
    }

    pub fn send(&self, notice: Notice) {
        if self.tx.try_send(notice).is_err() {
            warn!("the Event queue is full; an Event was dropped");
        }
    }
}

/// The events.k8s.io Event for a notice.
fn event(n: Notice, instance: &str) -> Event {
    let prefix = n
        .regarding
        .name
        .clone()
        .unwrap_or_else(|| REPORTER.to_owned());
    Event {
        metadata: ObjectMeta {
            // A trailing dash is the only ending generateName may have.
            generate_name: Some(format!("{prefix}-")),
            ..Default::default()
        },
        event_time: Some(MicroTime(n.at)),
        type_: Some(if n.warning { "Warning" } else { "Normal" }.to_owned()),
        reason: Some(n.reason),
        action: Some(n.action),
        // The Events API limits notes to 1 kB.
        note: Some(truncate(&n.note, 1000)),
        regarding: Some(n.regarding),
        related: n.related,
        reporting_controller: Some(REPORTER.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        ..Default::default()
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_notice_becomes_one_event_about_its_object() {
        use super::*;
        let e = event(
            Notice {
                at: Timestamp::UNIX_EPOCH,
                warning: true,
                reason: "NodeFailed".into(),
                action: "Rollout".into(),
                note: "n".into(),
                regarding: ObjectReference {
                    name: Some("node-1".into()),
                    ..Default::default()
                },
                related: None,
            },
            "agent-a",
        );
        assert_eq!(e.metadata.generate_name.as_deref(), Some("node-1-"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_controller.as_deref(), Some(REPORTER));
        assert_eq!(e.reporting_instance.as_deref(), Some("agent-a"));
        assert_eq!(
            e.event_time,
            Some(MicroTime(Timestamp::UNIX_EPOCH)),
            "when it happened"
        );
        assert!(e.series.is_none());
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(super::truncate("abc", 5), "abc");
        assert_eq!(super::truncate("ééé", 3), "é…");
    }
}
