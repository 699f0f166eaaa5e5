//! berthd's side of the event log (`docker events`): one long-lived `events` connection to the
//! core, whose log holds every event in order (container events are the core's own; the image
//! events berthd sees are sent there with `EventPublish`). [`EventHub`] mirrors the core's
//! kept events and passes new ones to each `GET /events` (`docker/events.rs`).
//!
//! The connection asks for the events numbered after the last one berthd has, so a core that
//! restarted (or a backend the supervisor brought back) is followed again without losing or
//! repeating events; a berthd that restarted reads the core's whole kept log.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::{Event, EventsFrame, EventsRequest, Request, Response, IMAGE_EVENT};
use tokio::sync::{broadcast, watch};

use crate::core_client::CoreClient;
use crate::names::familiar;

/// Events berthd keeps (the core keeps as many).
const KEPT: usize = 1024;
/// How long a lost connection to the core waits before it is tried again.
const RECONNECT: Duration = Duration::from_millis(300);

struct Mirror {
    events: VecDeque<Event>,
    last_seq: u64,
}

pub struct EventHub {
    mirror: Mutex<Mirror>,
    live: broadcast::Sender<Event>,
    /// The number of the newest event received, for [`EventHub::caught_up`].
    received: watch::Sender<u64>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            mirror: Mutex::new(Mirror {
                events: VecDeque::new(),
                last_seq: 0,
            }),
            live: broadcast::channel(KEPT).0,
            received: watch::channel(0).0,
        }
    }
}

impl EventHub {
    fn last_seq(&self) -> u64 {
        self.mirror.lock().expect("event mirror").last_seq
    }

    /// Takes an event from the core. One numbered at or below the last one means the core's
    /// log started again (its data root was wiped): what berthd kept is dropped with it.
    fn receive(&self, ev: Event) {
        let mut m = self.mirror.lock().expect("event mirror");
        if ev.seq <= m.last_seq {
            tracing::warn!(
                "the core's event log starts again at {} (berthd had {}): forgetting the old one",
                ev.seq,
                m.last_seq
            );
            m.events.clear();
        }
        m.last_seq = ev.seq;
        m.events.push_back(ev.clone());
        if m.events.len() > KEPT {
            m.events.pop_front();
        }
        // Under the lock, as in `subscribe`: each event is in a client's backlog or live, once.
        let _ = self.live.send(ev);
        self.received.send_replace(m.last_seq);
    }

    /// The kept events and a receiver of those that come from now on.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let m = self.mirror.lock().expect("event mirror");
        (m.events.iter().cloned().collect(), self.live.subscribe())
    }

    /// Waits (up to `patience`) until the event numbered `seq` has arrived; false if not.
    pub async fn caught_up(&self, seq: u64, patience: Duration) -> bool {
        let mut rx = self.received.subscribe();
        tokio::time::timeout(patience, rx.wait_for(|&got| got >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Follows the core's event log for as long as berthd runs, reconnecting whenever the
/// connection ends (a core restart, a backend the supervisor starts again).
pub async fn follow_core(core: Arc<CoreClient>, hub: Arc<EventHub>) {
    let mut connected_once = false;
    loop {
        let after = hub.last_seq();
        match core.events(EventsRequest { after }).await {
            Ok(mut stream) => {
                if connected_once {
                    tracing::info!("following the core's events again after event {after}");
                }
                connected_once = true;
                loop {
                    match berth_proto::read_frame::<_, EventsFrame>(&mut stream).await {
                        Ok(EventsFrame::Event(ev)) => hub.receive(ev),
                        Ok(EventsFrame::Live) => {
                            tracing::debug!("events: caught up at {}", hub.last_seq())
                        }
                        Err(e) => {
                            tracing::debug!("the core's events connection ended: {e}");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!("following the core's events: {}", e.message),
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nano() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// Records an event in the core's log. Failing to is logged, not the operation's failure.
pub async fn publish(core: &CoreClient, event: Event) {
    let what = format!("{} {} {}", event.kind, event.action, event.actor_id);
    match core.call(Request::EventPublish(Box::new(event))).await {
        Ok(Response::Done) => {}
        Ok(other) => tracing::warn!("recording the event {what}: the core answered {other:?}"),
        Err(e) => tracing::warn!("recording the event {what}: {}", e.message),
    }
}

/// The labels of an image config JSON (`config.Labels`), which dockerd adds to image events.
pub fn image_labels(config_json: &str) -> BTreeMap<String, String> {
    let v: serde_json::Value = serde_json::from_str(config_json).unwrap_or_default();
    v["config"]["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// An image event as dockerd makes it: `Actor.ID` and the `name` attribute as given (familiar
/// names), over the image's labels.
pub fn image_event(
    action: &str,
    actor_id: &str,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Event {
    let mut attributes = labels;
    attributes.insert("name".into(), name.to_string());
    Event {
        seq: 0,
        kind: IMAGE_EVENT.into(),
        action: action.into(),
        actor_id: actor_id.into(),
        attributes,
        time_nano: 0,
    }
}

/// The `pull` event of a normalised reference ("docker.io/library/busybox:latest"): dockerd's
/// `Actor.ID` is the familiar reference ("busybox:latest"), `name` the familiar repository.
pub fn pull_event(reference: &str, labels: BTreeMap<String, String>) -> Event {
    let shown = familiar(reference);
    image_event("pull", &shown, &strip_tag(&shown), labels)
}

/// A reference without its tag or digest ("127.0.0.1:5000/a/b:1" → "127.0.0.1:5000/a/b").
pub fn strip_tag(reference: &str) -> String {
    let name = reference.split('@').next().unwrap_or(reference);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => name[..i].to_string(),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Event {
        Event {
            seq,
            kind: "container".into(),
            action: "start".into(),
            actor_id: format!("c{seq}"),
            attributes: BTreeMap::new(),
            time_nano: seq as i64,
        }
    }

    #[tokio::test]
    async fn the_mirror_keeps_order_and_starts_again_with_a_wiped_core() {
        let hub = EventHub::default();
        let (backlog, mut live) = hub.subscribe();
        assert!(backlog.is_empty());
        hub.receive(ev(1));
        hub.receive(ev(2));
        assert_eq!(live.recv().await.unwrap().seq, 1);
        assert!(hub.caught_up(2, Duration::from_millis(10)).await);
        assert!(!hub.caught_up(3, Duration::from_millis(10)).await);
        hub.receive(ev(1));
        let (kept, _) = hub.subscribe();
        assert_eq!(kept, vec![ev(1)]);
        assert_eq!(hub.last_seq(), 1);
    }

    #[test]
    fn names_of_image_events() {
        assert_eq!(strip_tag("busybox:latest"), "busybox");
        assert_eq!(strip_tag("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b");
        assert_eq!(strip_tag("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(strip_tag("a/b@sha256:00"), "a/b");
        let e = pull_event("docker.io/library/busybox:latest", BTreeMap::new());
        assert_eq!(e.actor_id, "busybox:latest");
        assert_eq!(e.attributes["name"], "busybox");
        let cfg = r#"{"config":{"Labels":{"org.x":"1"}}}"#;
        assert_eq!(image_labels(cfg)["org.x"], "1");
        assert!(image_labels("{}").is_empty());
    }
}
