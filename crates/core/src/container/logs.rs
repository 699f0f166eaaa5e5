//! Container logs in Docker's json-file format: one JSON object per line,
//! `{"log":"hello\n","stream":"stdout","time":"2026-01-02T03:04:05.123456789Z"}`. The supervisor
//! appends (one `write` per entry, `O_APPEND`); the core reads from any offset and follows the
//! file while the container runs.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use berth_proto::LogFrame;

/// A line longer than this is cut into several entries (the last without its newline), as
/// dockerd does at 16 KiB.
pub const MAX_ENTRY: usize = 16 * 1024;

#[derive(Serialize, Deserialize)]
struct Entry<'a> {
    log: std::borrow::Cow<'a, str>,
    stream: std::borrow::Cow<'a, str>,
    time: std::borrow::Cow<'a, str>,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Appends entries to a log file; shareable between the stdout and stderr copiers behind a lock.
pub struct LogWriter {
    file: File,
}

impl LogWriter {
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(LogWriter { file })
    }

    /// Writes one entry; `bytes` are decoded as UTF-8 with invalid sequences replaced.
    pub fn write_entry(&mut self, stream: &str, bytes: &[u8]) -> io::Result<()> {
        let entry = Entry {
            log: String::from_utf8_lossy(bytes),
            stream: stream.into(),
            time: now_rfc3339().into(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)
    }

    /// Makes what was written durable (at the end of a run).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Cuts a byte stream into log entries: one per line, long lines in [`MAX_ENTRY`] pieces, and
/// what is left at the end of the stream as a last entry without a newline.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `emit` for every complete entry.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&data[..=i]);
            data = &data[i + 1..];
            self.drain_long(emit);
            if !self.partial.is_empty() {
                emit(&self.partial);
                self.partial.clear();
            }
        }
        self.partial.extend_from_slice(data);
        self.drain_long(emit);
    }

    fn drain_long(&mut self, emit: &mut dyn FnMut(&[u8])) {
        while self.partial.len() > MAX_ENTRY {
            let rest = self.partial.split_off(MAX_ENTRY);
            emit(&self.partial);
            self.partial = rest;
        }
    }

    /// End of stream: emits what is left.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// Reads the entries appended to a log file since the last call. A line still being written
/// (no newline yet) is kept for the next call.
pub struct LogCursor {
    file: File,
    partial: Vec<u8>,
}

impl LogCursor {
    /// From the start of the file.
    pub fn open(path: &Path) -> io::Result<LogCursor> {
        Ok(LogCursor {
            file: File::open(path)?,
            partial: Vec::new(),
        })
    }

    /// From the current end of the file: only what is written from now on.
    pub fn open_at_end(path: &Path) -> io::Result<LogCursor> {
        let mut c = LogCursor::open(path)?;
        c.file.seek(SeekFrom::End(0))?;
        Ok(c)
    }

    pub fn read_new(&mut self) -> io::Result<Vec<LogFrame>> {
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(vec![]);
        }
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(i) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let line = &self.partial[start..start + i];
            start += i + 1;
            if let Ok(e) = serde_json::from_slice::<Entry>(line) {
                out.push(LogFrame {
                    stream: e.stream.into_owned(),
                    time: e.time.into_owned(),
                    log: e.log.into_owned(),
                });
            }
        }
        self.partial.drain(..start);
        Ok(out)
    }
}

/// Unix seconds of an RFC 3339 time; 0 when unparseable.
pub fn unix_seconds(time: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .map(|t| t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9)
        .unwrap_or(0.0)
}

/// Whether a frame passes the stream and time filters of a logs request (`until` 0 = none).
pub fn selected(f: &LogFrame, stdout: bool, stderr: bool, since: f64, until: f64) -> bool {
    let stream_ok = match f.stream.as_str() {
        "stdout" => stdout,
        "stderr" => stderr,
        _ => false,
    };
    if !stream_ok {
        return false;
    }
    if since <= 0.0 && until <= 0.0 {
        return true;
    }
    let t = unix_seconds(&f.time);
    (since <= 0.0 || t >= since) && (until <= 0.0 || t <= until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_entries() {
        let mut s = LineSplitter::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        s.push(b"hel", &mut |b| got.push(b.to_vec()));
        assert!(got.is_empty());
        s.push(b"lo\nworld\nx", &mut |b| got.push(b.to_vec()));
        assert_eq!(got, [b"hello\n".to_vec(), b"world\n".to_vec()]);
        s.finish(&mut |b| got.push(b.to_vec()));
        assert_eq!(got[2], b"x");
        let mut got: Vec<Vec<u8>> = Vec::new();
        let long = vec![b'a'; MAX_ENTRY * 2 + 3];
        s.push(&long, &mut |b| got.push(b.to_vec()));
        s.push(b"\n", &mut |b| got.push(b.to_vec()));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].len(), MAX_ENTRY);
        assert_eq!(got[2], b"aaa\n");
    }

    #[test]
    fn written_entries_read_back_as_frames() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c-json.log");
        let mut w = LogWriter::open(&p).unwrap();
        w.write_entry("stdout", b"hello\n").unwrap();
        let mut from_start = LogCursor::open(&p).unwrap();
        let mut from_end = LogCursor::open_at_end(&p).unwrap();
        w.write_entry("stderr", b"oops \xff\n").unwrap();
        let all = from_start.read_new().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].stream.as_str(), all[0].log.as_str()),
            ("stdout", "hello\n")
        );
        assert_eq!(all[1].log, "oops \u{fffd}\n");
        assert!(unix_seconds(&all[0].time) > 1.7e9);
        let new = from_end.read_new().unwrap();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].stream, "stderr");
        assert!(from_end.read_new().unwrap().is_empty());
        let line = std::fs::read_to_string(&p).unwrap();
        assert!(line.starts_with("{\"log\":\"hello\\n\",\"stream\":\"stdout\",\"time\":\""));
        let f = &all[0];
        let t0 = unix_seconds(&f.time);
        assert!(selected(f, true, false, 0.0, 0.0));
        assert!(!selected(f, false, true, 0.0, 0.0));
        assert!(selected(f, true, true, t0 - 1.0, t0 + 1.0));
        assert!(!selected(f, true, true, t0 + 1.0, 0.0));
        assert!(!selected(f, true, true, 0.0, t0 - 1.0));
    }
}
