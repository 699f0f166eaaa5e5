//! `GET /events` (`docker events`): the kept events between `since` and `until`, then (unless
//! `until` has passed) each new one until `until` or the client leaves, as newline-delimited
//! JSON in Docker's shape, filtered as dockerd filters them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::{Event, Request, Response, CONTAINER_EVENT, IMAGE_EVENT};
use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::model::{EventActor, EventMessage};
use super::{json_stream, ApiError, ApiResult, Query};
use crate::daemon::Daemon;
use crate::events::strip_tag;

/// How long a request waits for berthd's copy of the log to hold what the core has recorded.
const CATCH_UP: Duration = Duration::from_secs(5);

pub async fn events(daemon: Arc<Daemon>, q: &Query) -> ApiResult {
    let since = timestamp(q.get("since"), "since")?;
    let until = timestamp(q.get("until"), "until")?;
    if let (Some(s), Some(u)) = (since, until) {
        if u < s {
            return Err(ApiError::bad_request(format!(
                "`since` time ({}) cannot be after `until` time ({})",
                q.get("since").unwrap_or_default(),
                q.get("until").unwrap_or_default()
            )));
        }
    }
    let filter = EventFilter(q.filters()?);
    // An event the core recorded before this request (a container just stopped) may still be
    // on its way to berthd: wait for it, so a `--until` now sees it.
    if let Ok(Response::EventSeq { seq }) = daemon.core.call(Request::EventSeq).await {
        if !daemon.events.caught_up(seq, CATCH_UP).await {
            tracing::warn!("events: berthd's copy of the log did not reach event {seq}");
        }
    }
    let now = crate::events::now_nano();
    let (kept, mut live) = daemon.events.subscribe();
    let in_window = move |ev: &Event| {
        since.is_none_or(|s| ev.time_nano >= s) && until.is_none_or(|u| ev.time_nano <= u)
    };
    // As dockerd: the kept events only when a window is asked for.
    let backlog: Vec<Event> = if since.is_some() || until.is_some() {
        kept.into_iter()
            .filter(|e| in_window(e) && filter.matches(e))
            .collect()
    } else {
        Vec::new()
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for ev in &backlog {
            if tx.send(line(ev)).await.is_err() {
                return;
            }
        }
        let deadline = match until {
            Some(u) if u <= now => return,
            Some(u) => Some(tokio::time::Instant::now() + Duration::from_nanos((u - now) as u64)),
            None => None,
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    // As dockerd, live events are not held to `since`.
                    Ok(ev) => {
                        let before_end = until.is_none_or(|u| ev.time_nano <= u);
                        if before_end && filter.matches(&ev) && tx.send(line(&ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("an events client fell behind: {n} events not sent to it");
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = &mut sleep => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(json_stream(rx))
}

/// `since`/`until`: what the docker CLI sends (Unix seconds with an optional fraction, e.g.
/// "1700000000.123456789"), or an RFC 3339 time. In nanoseconds; empty is none.
fn timestamp(value: Option<&str>, what: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request(format!("invalid value for {what}: {v:?}"));
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return t.timestamp_nanos_opt().map(Some).ok_or_else(bad);
    }
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    secs.checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(nanos))
        .map(Some)
        .ok_or_else(bad)
}

/// One event as Docker's JSON (`events.Message`), with the legacy `status`, `id` and `from`
/// of container and image events.
pub fn message(ev: &Event) -> EventMessage {
    let legacy = ev.kind == CONTAINER_EVENT || ev.kind == IMAGE_EVENT;
    EventMessage {
        Action: ev.action.clone(),
        Actor: EventActor {
            Attributes: ev.attributes.clone(),
            ID: ev.actor_id.clone(),
        },
        Type: ev.kind.clone(),
        from: (ev.kind == CONTAINER_EVENT)
            .then(|| ev.attributes.get("image").cloned())
            .flatten(),
        id: legacy.then(|| ev.actor_id.clone()),
        scope: "local".into(),
        status: legacy.then(|| ev.action.clone()),
        time: ev.time_nano.div_euclid(1_000_000_000),
        timeNano: ev.time_nano,
    }
}

fn line(ev: &Event) -> Bytes {
    let mut b = serde_json::to_vec(&message(ev)).expect("events serialise");
    b.push(b'\n');
    Bytes::from(b)
}

/// The `filters` of `GET /events`, applied as dockerd applies them: every key given must
/// match; within a key, any value.
struct EventFilter(HashMap<String, Vec<String>>);

impl EventFilter {
    fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// No values, or one equal to any of `candidates`.
    fn exact(&self, key: &str, candidates: &[&str]) -> bool {
        let v = self.values(key);
        v.is_empty() || v.iter().any(|x| candidates.contains(&x.as_str()))
    }

    /// No values, or one equal to or a prefix of any of `candidates`.
    fn fuzzy(&self, key: &str, candidates: &[&str]) -> bool {
        let v = self.values(key);
        v.is_empty()
            || v.iter()
                .any(|x| candidates.iter().any(|c| c.starts_with(x.as_str())))
    }

    /// The object a key names: its id or its `name` attribute, prefixes allowed.
    fn named(&self, key: &str, ev: &Event) -> bool {
        let name = ev.attributes.get("name").map(String::as_str).unwrap_or("");
        self.fuzzy(key, &[&ev.actor_id, name])
    }

    fn matches(&self, ev: &Event) -> bool {
        self.action(ev)
            && self.exact("type", &[&ev.kind])
            && self.exact("scope", &["local"])
            && ["container", "volume", "network", "plugin", "daemon", "node"]
                .iter()
                .chain(&["service", "secret", "config"])
                .all(|k| self.named(k, ev))
            && self.image(ev)
            && self.labels(ev)
    }

    /// `event`: the action; `exec_create`, `exec_start` and `health_status` also match the
    /// actions that carry a command or status after a colon (dockerd's special case).
    fn action(&self, ev: &Event) -> bool {
        let prefixed = self
            .values("event")
            .iter()
            .any(|v| matches!(v.as_str(), "exec_create" | "exec_start" | "health_status"));
        if prefixed {
            self.fuzzy("event", &[&ev.action])
        } else {
            self.exact("event", &[&ev.action])
        }
    }

    /// `image`: an image event's id or name, a container event's image, with or without tag.
    fn image(&self, ev: &Event) -> bool {
        let attr = if ev.kind == IMAGE_EVENT {
            "name"
        } else {
            "image"
        };
        let name = ev.attributes.get(attr).map(String::as_str).unwrap_or("");
        self.exact(
            "image",
            &[
                &ev.actor_id,
                name,
                &strip_tag(&ev.actor_id),
                &strip_tag(name),
            ],
        )
    }

    /// `label`: every `key` or `key=value` given is among the attributes.
    fn labels(&self, ev: &Event) -> bool {
        self.values("label")
            .iter()
            .all(|l| match l.split_once('=') {
                Some((k, v)) => ev.attributes.get(k).is_some_and(|have| have == v),
                None => ev.attributes.contains_key(l.as_str()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn container_event(action: &str, id: &str, attrs: &[(&str, &str)]) -> Event {
        Event {
            seq: 1,
            kind: CONTAINER_EVENT.into(),
            action: action.into(),
            actor_id: id.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            time_nano: 1_700_000_000_123_456_789,
        }
    }

    fn filter(json: &str) -> EventFilter {
        let q = Query::parse(Some(&format!(
            "filters={}",
            url::form_urlencoded::byte_serialize(json.as_bytes()).collect::<String>()
        )));
        EventFilter(q.filters().unwrap())
    }

    #[test]
    fn docker_shape() {
        let ev = container_event("die", "abc", &[("image", "busybox"), ("exitCode", "3")]);
        let m = json!(message(&ev));
        assert_eq!(m["status"], "die");
        assert_eq!(m["id"], "abc");
        assert_eq!(m["from"], "busybox");
        assert_eq!(m["Type"], "container");
        assert_eq!(m["Actor"]["Attributes"]["exitCode"], "3");
        assert_eq!(m["scope"], "local");
        assert_eq!(m["time"], 1_700_000_000);
        assert_eq!(m["timeNano"], 1_700_000_000_123_456_789i64);
        let mut img = ev.clone();
        img.kind = IMAGE_EVENT.into();
        let m = json!(message(&img));
        assert!(m.get("from").is_none() && m["status"] == "die");
        img.kind = "volume".into();
        assert!(json!(message(&img)).get("status").is_none());
    }

    #[test]
    fn timestamps_as_the_cli_sends_them() {
        assert_eq!(timestamp(None, "since").unwrap(), None);
        assert_eq!(timestamp(Some(""), "since").unwrap(), None);
        assert_eq!(
            timestamp(Some("1700000000"), "since").unwrap(),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            timestamp(Some("1700000000.5"), "since").unwrap(),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            timestamp(Some("1700000000.000000001"), "until").unwrap(),
            Some(1_700_000_000_000_000_001)
        );
        assert_eq!(
            timestamp(Some("2023-11-14T22:13:20Z"), "since").unwrap(),
            Some(1_700_000_000_000_000_000)
        );
        let e = timestamp(Some("yesterday"), "since").unwrap_err();
        assert!(
            e.message.contains("invalid value for since"),
            "{}",
            e.message
        );
        assert!(timestamp(Some("1.0000000001"), "since").is_err());
    }

    #[test]
    fn filters_as_dockerd() {
        let ev = container_event(
            "exec_create: sh -c true",
            "0123abcd",
            &[
                ("image", "reg:5000/berth/busybox:latest"),
                ("name", "web"),
                ("app", "x"),
            ],
        );
        assert!(filter("{}").matches(&ev));
        assert!(filter(r#"{"type":{"container":true}}"#).matches(&ev));
        assert!(!filter(r#"{"type":{"image":true}}"#).matches(&ev));
        assert!(filter(r#"{"event":{"exec_create":true}}"#).matches(&ev));
        assert!(!filter(r#"{"event":{"exec":true}}"#).matches(&ev));
        assert!(filter(r#"{"container":{"0123":true}}"#).matches(&ev));
        assert!(filter(r#"{"container":["web"]}"#).matches(&ev));
        assert!(!filter(r#"{"container":{"other":true}}"#).matches(&ev));
        assert!(filter(r#"{"image":{"reg:5000/berth/busybox":true}}"#).matches(&ev));
        assert!(filter(r#"{"image":{"reg:5000/berth/busybox:latest":true}}"#).matches(&ev));
        assert!(!filter(r#"{"image":{"busybox":true}}"#).matches(&ev));
        assert!(filter(r#"{"label":{"app":true}}"#).matches(&ev));
        assert!(filter(r#"{"label":{"app=x":true}}"#).matches(&ev));
        assert!(!filter(r#"{"label":{"app=y":true}}"#).matches(&ev));
        assert!(!filter(r#"{"label":{"app=x":true,"tier":true}}"#).matches(&ev));
        assert!(!filter(r#"{"volume":{"v":true}}"#).matches(&ev));
        assert!(filter(r#"{"scope":{"local":true}}"#).matches(&ev));
        assert!(!filter(r#"{"scope":{"swarm":true}}"#).matches(&ev));
        let die = container_event("die", "0123abcd", &[("name", "web")]);
        assert!(filter(r#"{"event":{"die":true,"start":true}}"#).matches(&die));
        assert!(!filter(r#"{"event":{"di":true}}"#).matches(&die));
    }
}
