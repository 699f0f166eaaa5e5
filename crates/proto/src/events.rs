//! Events (`docker events`): what happened to containers and images, recorded by the core in
//! one ordered log that berthd follows on a [`crate::Channel::Events`] connection.
//!
//! Container events are the core's own (it runs the containers, and they exit or restart by
//! themselves); image events are sent by berthd after the operations it drives (pull, tag,
//! untag, delete) with [`crate::Request::EventPublish`], so that one log holds both, in order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One event. Field names follow Docker's `events.Message` where it has them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// The core's sequence number: increasing by one per event, kept across core restarts,
    /// so a follower that reconnects asks for what came after the last one it saw. 0 in an
    /// event sent with [`crate::Request::EventPublish`] (the core numbers it).
    #[serde(default)]
    pub seq: u64,
    /// Docker's `Type`: "container", "image", "volume", "network", …
    #[serde(rename = "type")]
    pub kind: String,
    /// Docker's `Action`: "create", "start", "die", "exec_create: sh -c …", "pull", …
    pub action: String,
    /// Docker's `Actor.ID`: a container id, an image id or reference.
    pub actor_id: String,
    /// Docker's `Actor.Attributes`. For containers the core adds `image`, `name` and the
    /// container's labels.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// When, in nanoseconds since the Unix epoch (the core's clock; never earlier than the
    /// event before it). 0 in a published event: the core stamps it.
    #[serde(default)]
    pub time_nano: i64,
}

/// Docker's event types Berth emits.
pub const CONTAINER_EVENT: &str = "container";
pub const IMAGE_EVENT: &str = "image";

/// The hello of an events connection: the recorded events numbered above `after` (all the
/// core still has for 0), an [`EventsFrame::Live`] marker, then each new event as it happens
/// until the host closes the connection. A follower too slow to keep up is disconnected; it
/// reconnects with the last number it saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EventsRequest {
    #[serde(default)]
    pub after: u64,
}

/// A frame of an events connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "frame")]
pub enum EventsFrame {
    Event(Event),
    /// The recorded events have all been sent; what follows happens from now on.
    Live,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let ev = Event {
            seq: 7,
            kind: CONTAINER_EVENT.into(),
            action: "die".into(),
            actor_id: "abc".into(),
            attributes: [("exitCode".to_string(), "3".to_string())].into(),
            time_nano: 1_700_000_000_123_456_789,
        };
        for f in [EventsFrame::Event(ev), EventsFrame::Live] {
            let text = serde_json::to_string(&f).unwrap();
            assert_eq!(serde_json::from_str::<EventsFrame>(&text).unwrap(), f);
        }
        let published: Event =
            serde_json::from_str(r#"{"type":"image","action":"pull","actor_id":"busybox:latest"}"#)
                .unwrap();
        assert_eq!((published.seq, published.time_nano), (0, 0));
        assert!(published.attributes.is_empty());
    }
}
