//! Kubernetes Events, published in the background so a slow API server never holds up a
//! node's next step. A full queue drops the event with a warning; the status still
//! carries every node's phase and message.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::warn;

pub const REPORTER: &str = "ztunnel-rollout";

pub struct Notice {
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
    /// Starts the publishing task; it ends when every sink is dropped.
    pub fn start(client: Client, instance: String) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Notice>(4096);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: REPORTER.to_owned(),
                instance: Some(instance),
            },
        );
        let task = tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let event = Event {
                    type_: if n.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: n.reason,
                    // The Events API limits notes to 1 kB.
                    note: Some(truncate(&n.note, 1000)),
                    action: n.action,
                    secondary: n.related,
                };
                if let Err(e) = recorder.publish(&event, &n.regarding).await {
                    warn!(error = %e, reason = %event.reason, "could not publish an Event");
                }
            }
        });
        (Self { tx }, task)
    }

    pub fn send(&self, notice: Notice) {
        if self.tx.try_send(notice).is_err() {
            warn!("the Event queue is full; an Event was dropped");
        }
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
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(super::truncate("abc", 5), "abc");
        assert_eq!(super::truncate("ééé", 3), "é…");
    }
}
