//! Container logs in Docker's json-file format: one JSON object per line,
//! `{"log":"hello\n","stream":"stdout","time":"2026-01-02T03:04:05.123456789Z"}`. The supervisor
//! appends (one `write` per entry, `O_APPEND`); the core reads from any offset and follows the
//! file while the container runs.
//!
//! Rotation, as dockerd's json-file driver does it: when the next entry would take the file
//! past its limit, `<log>.N-1` becomes `<log>.N` … `<log>` becomes `<log>.1` (the oldest is
//! overwritten) and a new `<log>` begins; with one file the old one is unlinked instead. Readers
//! go through the rotated files oldest first, and a follower whose file was rotated away
//! finishes it and goes on with its successor.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_proto::LogLimits;
use nix::fcntl::{Flock, FlockArg};

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

/// Appends entries to a log file, rotating it at its limits; shareable between the stdout and
/// stderr copiers behind a lock.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    limits: LogLimits,
}

impl LogWriter {
    pub fn open(path: &Path, limits: LogLimits) -> io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            limits,
        })
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
        let max = self.limits.max_size;
        if max > 0 && self.size > 0 && self.size + line.len() as u64 > max {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        // What was written stays written before its name changes.
        self.file.sync_data()?;
        let _exclusive = lock_dir(&self.path, FlockArg::LockExclusive);
        let keep = self.limits.max_files.max(1);
        if keep == 1 {
            fs::remove_file(&self.path)?;
        } else {
            for n in (1..keep - 1).rev() {
                match fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Makes what was written durable (at the end of a run).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// `<log>.n`, the n-th newest rotated file.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// Locks the directory holding the log: exclusively while the writer renames its files, shared
/// while a reader lists them, so a reader never sees a rotation half done (a gap in the
/// numbers, or a file at two numbers or none). `None` when the directory cannot be opened or
/// locked; the caller goes on unlocked.
fn lock_dir(path: &Path, arg: FlockArg) -> Option<Flock<File>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Flock::lock(File::open(dir).ok()?, arg).ok()
}

/// The log's files that exist, oldest first (the current one last), with their inodes: one
/// consistent view, taken under the directory's shared lock.
///
/// Read from the directory rather than by probing `<log>.1`, `<log>.2`, … so that a rotation
/// cut short (the writer killed between two renames) leaves no older file unseen.
fn chain(path: &Path) -> Vec<(PathBuf, u64)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let _shared = lock_dir(path, FlockArg::LockShared);
    let mut prefix = name.to_owned();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes();
    let mut rotated: Vec<(u32, PathBuf, u64)> = Vec::new();
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let file = e.file_name();
            let n = file
                .as_encoded_bytes()
                .strip_prefix(prefix)
                .and_then(|n| std::str::from_utf8(n).ok())
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok());
            let (Some(n), Ok(m)) = (n, e.metadata()) else {
                continue;
            };
            rotated.push((n, e.path(), m.ino()));
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<(PathBuf, u64)> = rotated.into_iter().map(|(_, p, i)| (p, i)).collect();
    if let Ok(m) = fs::metadata(path) {
        files.push((path.to_path_buf(), m.ino()));
    }
    files
}

/// Every log file of a container (the rotated ones and the current one), for removal.
pub fn all_files(path: &Path) -> Vec<PathBuf> {
    chain(path).into_iter().map(|(p, _)| p).collect()
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

/// Reads the entries appended to a log since the last call, across rotations. A line still
/// being written (no newline yet) is kept for the next call.
pub struct LogCursor {
    path: PathBuf,
    file: File,
    ino: u64,
    partial: Vec<u8>,
}

impl LogCursor {
    /// From the start of the oldest file kept.
    pub fn open(path: &Path) -> io::Result<LogCursor> {
        let first = chain(path)
            .into_iter()
            .next()
            .map_or_else(|| path.to_path_buf(), |(p, _)| p);
        LogCursor::at(path, &first)
    }

    fn at(path: &Path, file: &Path) -> io::Result<LogCursor> {
        let f = File::open(file)?;
        Ok(LogCursor {
            path: path.to_path_buf(),
            ino: f.metadata()?.ino(),
            file: f,
            partial: Vec::new(),
        })
    }

    /// From the current end of the log: only what is written from now on.
    pub fn open_at_end(path: &Path) -> io::Result<LogCursor> {
        let mut c = LogCursor::at(path, path)?;
        c.file.seek(SeekFrom::End(0))?;
        Ok(c)
    }

    pub fn read_new(&mut self) -> io::Result<Vec<LogFrame>> {
        let mut buf = Vec::new();
        loop {
            // The files as they are now; the writer renames only after its last write to a
            // file, so once ours is seen rotated, reading it to its end reads all of it.
            let files = chain(&self.path);
            self.file.read_to_end(&mut buf)?;
            let next = match files.iter().position(|(_, ino)| *ino == self.ino) {
                Some(i) if i + 1 == files.len() => None,
                Some(i) => Some(files[i + 1].clone()),
                // Ours is gone (rotated past the last kept): on with the oldest kept.
                None => files.first().cloned(),
            };
            let Some((next, ino)) = next else { break };
            match File::open(&next) {
                // The name still holds the file we saw: on with it.
                Ok(f) if f.metadata()?.ino() == ino => {
                    self.ino = ino;
                    self.file = f;
                }
                // Rotated again since we looked (the name is gone or now holds a newer file,
                // and opening it would skip the one we saw): look again.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
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
        let mut w = LogWriter::open(&p, LogLimits::DEFAULT).unwrap();
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

    /// One entry's length in the file (the time has a fixed width).
    fn entry_len(dir: &Path) -> u64 {
        let p = dir.join("probe.log");
        let mut w = LogWriter::open(&p, LogLimits::DEFAULT).unwrap();
        w.write_entry("stdout", b"line 00\n").unwrap();
        fs::metadata(&p).unwrap().len()
    }

    #[test]
    fn the_log_rotates_at_its_size_keeping_its_files_and_readers_see_every_kept_line() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("c-json.log");
        let len = entry_len(t.path());
        // Room for three entries per file, three files.
        let limits = LogLimits {
            max_size: len * 3,
            max_files: 3,
        };
        let mut w = LogWriter::open(&p, limits).unwrap();
        let mut follower = LogCursor::open_at_end(&p).unwrap();
        let mut followed = Vec::new();
        for i in 0..20 {
            w.write_entry("stdout", format!("line {i:02}\n").as_bytes())
                .unwrap();
            // The follower looks now and then, sometimes after two rotations.
            if i % 7 == 6 {
                followed.extend(follower.read_new().unwrap());
            }
        }
        followed.extend(follower.read_new().unwrap());
        for f in [&p, &rotated(&p, 1), &rotated(&p, 2)] {
            assert!(fs::metadata(f).unwrap().len() <= len * 3, "{}", f.display());
        }
        assert!(!rotated(&p, 3).exists(), "three files kept, no more");
        assert_eq!(all_files(&p).len(), 3);
        // 20 entries, three per file: 18..19 in the current file, 12..17 in the rotated ones.
        let all: Vec<String> = LogCursor::open(&p)
            .unwrap()
            .read_new()
            .unwrap()
            .into_iter()
            .map(|f| f.log)
            .collect();
        let expected: Vec<String> = (12..20).map(|i| format!("line {i:02}\n")).collect();
        assert_eq!(all, expected);
        // The follower read every line in order, across rotations, missing only what was
        // rotated past the last kept file before it looked (lines 0..=6 were read in time).
        let followed: Vec<String> = followed.into_iter().map(|f| f.log).collect();
        assert_eq!(
            followed[..7],
            (0..7).map(|i| format!("line {i:02}\n")).collect::<Vec<_>>()[..]
        );
        assert!(followed.windows(2).all(|w| w[0] < w[1]), "{followed:?}");
        assert_eq!(followed.last().unwrap(), "line 19\n");
    }

    #[test]
    fn a_follower_racing_the_writer_misses_nothing_that_is_kept() {
        // Enough files that nothing is rotated past the last kept: every line must be read,
        // however the follower's looks interleave with the writer's renames.
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("race.log");
        let len = entry_len(t.path());
        let total = 4000;
        let limits = LogLimits {
            max_size: len * 20,
            max_files: total / 20 + 10,
        };
        File::create(&p).unwrap();
        let mut follower = LogCursor::open_at_end(&p).unwrap();
        let writer = std::thread::spawn({
            let p = p.clone();
            move || {
                let mut w = LogWriter::open(&p, limits).unwrap();
                for i in 0..total {
                    w.write_entry("stdout", format!("{i}\n").as_bytes())
                        .unwrap();
                }
            }
        });
        let mut followed = Vec::new();
        loop {
            let done = writer.is_finished();
            followed.extend(follower.read_new().unwrap().into_iter().map(|f| f.log));
            if done {
                break;
            }
        }
        writer.join().unwrap();
        let expected: Vec<String> = (0..total).map(|i| format!("{i}\n")).collect();
        assert_eq!(followed.len(), expected.len());
        assert!(followed == expected, "lines missed or out of order");
    }

    #[test]
    fn one_file_is_started_afresh_and_no_limit_never_rotates() {
        let t = tempfile::tempdir().unwrap();
        let len = entry_len(t.path());
        let p = t.path().join("one.log");
        let mut w = LogWriter::open(
            &p,
            LogLimits {
                max_size: len * 2,
                max_files: 1,
            },
        )
        .unwrap();
        let mut follower = LogCursor::open(&p).unwrap();
        for i in 0..5 {
            w.write_entry("stdout", format!("line {i:02}\n").as_bytes())
                .unwrap();
        }
        assert_eq!(all_files(&p), [p.as_path()]);
        let logs = |c: &mut LogCursor| -> Vec<String> {
            c.read_new().unwrap().into_iter().map(|f| f.log).collect()
        };
        assert_eq!(logs(&mut LogCursor::open(&p).unwrap()), ["line 04\n"]);
        // The follower still reads its first file (unlinked, held open), then goes on with the
        // current one; the file in between was unlinked before it looked.
        assert_eq!(logs(&mut follower), ["line 00\n", "line 01\n", "line 04\n"]);

        let q = t.path().join("unlimited.log");
        let mut w = LogWriter::open(
            &q,
            LogLimits {
                max_size: 0,
                max_files: 1,
            },
        )
        .unwrap();
        for i in 0..50 {
            w.write_entry("stdout", format!("line {i:02}\n").as_bytes())
                .unwrap();
        }
        assert_eq!(all_files(&q), [q.as_path()]);
        assert_eq!(logs(&mut LogCursor::open(&q).unwrap()).len(), 50);
    }
}
