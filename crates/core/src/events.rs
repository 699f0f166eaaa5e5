//! The event log (`docker events`): every event the core records, numbered, in order, kept in
//! memory (the newest [`KEPT`]) and in `<data root>/events.jsonl` so that a core (or berthd)
//! restart keeps the history a `docker events --since` asks for. New events are broadcast to
//! the `events` connections that follow the log (`server.rs`).
//!
//! The file is one JSON [`Event`] per line, appended as events happen; once it holds
//! [`REWRITE_AT`] lines it is rewritten (atomically) with the ones kept in memory.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_proto::Event;
use tokio::sync::broadcast;

/// Events kept (dockerd keeps 256).
pub const KEPT: usize = 1024;
/// Lines in the file that make it be rewritten with only the kept events.
const REWRITE_AT: usize = 4 * KEPT;
/// Events a follower may fall behind by before it is disconnected (it then reconnects and
/// reads what it missed from the log).
const FOLLOWER_LAG: usize = 1024;

struct Log {
    events: VecDeque<Event>,
    /// The number of the newest event (0: none yet).
    seq: u64,
    /// Lines in the file.
    lines: usize,
    file: Option<fs::File>,
}

pub struct EventLog {
    path: PathBuf,
    log: Mutex<Log>,
    live: broadcast::Sender<Event>,
}

/// Now, in nanoseconds since the epoch.
pub fn now_nano() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl EventLog {
    /// Opens the log under `data_root`, reading what an earlier core recorded. A damaged line
    /// (a crash mid-append) is skipped; a file that cannot be written only costs persistence.
    pub fn open(data_root: &Path) -> EventLog {
        let path = data_root.join("events.jsonl");
        let mut events = VecDeque::new();
        let mut lines = 0;
        if let Ok(f) = fs::File::open(&path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break };
                lines += 1;
                if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                    events.push_back(ev);
                    if events.len() > KEPT {
                        events.pop_front();
                    }
                }
            }
        }
        let seq = events.back().map(|e| e.seq).unwrap_or(0);
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| tracing::warn!("events are not kept on disk: {}: {e}", path.display()))
            .ok();
        let (live, _) = broadcast::channel(FOLLOWER_LAG);
        let log = EventLog {
            path,
            log: Mutex::new(Log {
                events,
                seq,
                lines,
                file,
            }),
            live,
        };
        if lines >= REWRITE_AT {
            log.rewrite(&mut log.log.lock().expect("event log"));
        }
        log
    }

    /// Records an event: numbers it, stamps it (never earlier than the one before), keeps it
    /// and sends it to the followers. Returns the recorded event.
    pub fn record(
        &self,
        kind: &str,
        action: &str,
        actor_id: &str,
        attributes: BTreeMap<String, String>,
    ) -> Event {
        let mut log = self.log.lock().expect("event log");
        log.seq += 1;
        let last_time = log.events.back().map(|e| e.time_nano).unwrap_or(0);
        let ev = Event {
            seq: log.seq,
            kind: kind.into(),
            action: action.into(),
            actor_id: actor_id.into(),
            attributes,
            time_nano: now_nano().max(last_time),
        };
        tracing::debug!(seq = ev.seq, kind, action, actor_id, "event");
        if let Some(f) = log.file.as_mut() {
            let mut line = serde_json::to_vec(&ev).expect("events serialise");
            line.push(b'\n');
            if let Err(e) = f.write_all(&line) {
                tracing::warn!("appending to {}: {e}", self.path.display());
            }
        }
        log.lines += 1;
        log.events.push_back(ev.clone());
        if log.events.len() > KEPT {
            log.events.pop_front();
        }
        if log.lines >= REWRITE_AT {
            self.rewrite(&mut log);
        }
        // Sent under the lock: a follower sees events in their order, and one that subscribes
        // (under the same lock) sees each event either in its backlog or live, never both.
        let _ = self.live.send(ev.clone());
        ev
    }

    /// The kept events numbered above `after` and a receiver of the events recorded from now
    /// on. An `after` beyond the newest (a log that was wiped) reads everything kept.
    pub fn follow(&self, after: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let log = self.log.lock().expect("event log");
        let after = if after > log.seq { 0 } else { after };
        let backlog = log
            .events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        (backlog, self.live.subscribe())
    }

    /// The number of the newest event.
    pub fn seq(&self) -> u64 {
        self.log.lock().expect("event log").seq
    }

    /// Replaces the file by the kept events (write, then rename over).
    fn rewrite(&self, log: &mut Log) {
        let tmp = self.path.with_extension("jsonl.tmp");
        let written = (|| -> std::io::Result<fs::File> {
            let mut f = fs::File::create(&tmp)?;
            for ev in &log.events {
                let mut line = serde_json::to_vec(ev).expect("events serialise");
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            fs::OpenOptions::new().append(true).open(&self.path)
        })();
        match written {
            Ok(f) => {
                log.file = Some(f);
                log.lines = log.events.len();
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                tracing::warn!("rewriting {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(k: &str, v: &str) -> BTreeMap<String, String> {
        [(k.to_string(), v.to_string())].into()
    }

    #[test]
    fn events_are_numbered_kept_and_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path());
        let a = log.record("container", "create", "c1", attrs("name", "x"));
        let b = log.record("container", "start", "c1", attrs("name", "x"));
        assert_eq!((a.seq, b.seq), (1, 2));
        assert!(b.time_nano >= a.time_nano && a.time_nano > 0);
        let (backlog, _) = log.follow(1);
        assert_eq!(backlog, vec![b.clone()]);
        drop(log);

        let log = EventLog::open(dir.path());
        assert_eq!(log.seq(), 2);
        let (backlog, mut live) = log.follow(0);
        assert_eq!(backlog, vec![a, b]);
        let c = log.record("image", "pull", "busybox:latest", attrs("name", "busybox"));
        assert_eq!(c.seq, 3);
        assert_eq!(live.try_recv().unwrap(), c);
        // A follower that remembers more than the log has (a wiped data root) gets it all.
        assert_eq!(log.follow(99).0.len(), 3);
    }

    #[test]
    fn the_file_is_rewritten_with_the_kept_events() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path());
        for i in 0..REWRITE_AT + 10 {
            log.record("container", "top", &format!("c{i}"), BTreeMap::new());
        }
        let lines = fs::read_to_string(dir.path().join("events.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= KEPT + 10, "{lines} lines");
        drop(log);
        let log = EventLog::open(dir.path());
        let (kept, _) = log.follow(0);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept.last().unwrap().seq, (REWRITE_AT + 10) as u64);
        assert_eq!(
            kept.last().unwrap().actor_id,
            format!("c{}", REWRITE_AT + 9)
        );
    }
}
