//! Talking to berthd and managing its process: one HTTP request over the Unix socket, `start`
//! (berthd detached, its log in a file) and `stop` (SIGTERM to whoever serves the socket).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One request over the socket; HTTP/1.0 so the body ends with the connection.
pub fn request(socket: &Path, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    request_with_body(socket, method, path, None)
}

/// As [`request`], with a JSON body.
pub fn request_with_body(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach berthd at {} (is it running? `berth start` starts it)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    match body {
        None => write!(s, "{method} {path} HTTP/1.0\r\nHost: berthd\r\n\r\n")?,
        Some(b) => write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: berthd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )?,
    }
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("malformed answer from berthd")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed status line from berthd")?;
    Ok((status, body.to_string()))
}

/// Whether berthd answers `/_ping` with OK (the core is up).
pub fn ping(socket: &Path) -> bool {
    matches!(request(socket, "GET", "/_ping"), Ok((200, body)) if body == "OK")
}

/// The process serving `socket` (SO_PEERCRED of a fresh connection), if one does.
pub fn server_pid(socket: &Path) -> Option<Pid> {
    let s = UnixStream::connect(socket).ok()?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    (cred.pid() > 0).then(|| Pid::from_raw(cred.pid()))
}

/// Gone, or a zombie nobody reaped yet (it no longer serves anything either way).
pub fn is_gone(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

pub struct StartOptions {
    pub socket: PathBuf,
    pub berthd: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
}

pub enum Started {
    Already,
    Now { pid: u32, took: Duration },
}

/// Starts berthd in its own session (it outlives this command and the terminal) and waits
/// until `/_ping` answers, which means the core (the VM, with the qemu backend) is up.
pub fn start(opts: &StartOptions, mut progress: impl FnMut(&str)) -> anyhow::Result<Started> {
    if ping(&opts.socket) {
        return Ok(Started::Already);
    }
    if let Some(dir) = opts.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.log)
        .with_context(|| format!("opening {}", opts.log.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(&opts.berthd);
    cmd.arg("--socket")
        .arg(&opts.socket)
        .args(&opts.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // berthd's fatal error is the end of its log, and what `start` shows: no backtrace after it
    // unless asked for.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        cmd.env("RUST_LIB_BACKTRACE", "0");
    }
    // SAFETY: setsid is async-signal-safe and touches only the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
    }
    let began = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", opts.berthd.display()))?;
    progress(&format!(
        "berthd started (pid {}), waiting for the engine; log: {}",
        child.id(),
        opts.log.display()
    ));
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "berthd exited before it answered ({status}); the end of {}:\n{}",
                opts.log.display(),
                log_tail(&opts.log, log_start, 15)
            );
        }
        if ping(&opts.socket) {
            return Ok(Started::Now {
                pid: child.id(),
                took: began.elapsed(),
            });
        }
        if began.elapsed() > opts.timeout {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            bail!(
                "berthd did not answer within {:?}; stopped it. The end of {}:\n{}",
                opts.timeout,
                opts.log.display(),
                log_tail(&opts.log, log_start, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub enum Stopped {
    NotRunning,
    Now { pid: Pid, killed: bool },
}

/// SIGTERM to the process serving `socket` (berthd stops containers' supervisors nowhere: they
/// keep running on the direct backend; with a VM it powers the guest off), SIGKILL after
/// `timeout`.
pub fn stop(socket: &Path, timeout: Duration) -> anyhow::Result<Stopped> {
    let Some(pid) = server_pid(socket) else {
        return Ok(Stopped::NotRunning);
    };
    kill(pid, Signal::SIGTERM).with_context(|| format!("signalling berthd (pid {pid})"))?;
    let began = Instant::now();
    while !is_gone(pid) {
        if began.elapsed() > timeout {
            let _ = kill(pid, Signal::SIGKILL);
            let killed_at = Instant::now();
            while !is_gone(pid) && killed_at.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(Stopped::Now { pid, killed: true });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Stopped::Now { pid, killed: false })
}

/// The last `lines` lines written to `path` after byte `from`.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_starts_where_this_start_began() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("berthd.log");
        std::fs::write(&log, "old run\nold end\nnew 1\nnew 2\nnew 3\n").unwrap();
        let from = "old run\nold end\n".len() as u64;
        assert_eq!(log_tail(&log, from, 2), "new 2\nnew 3");
        assert_eq!(log_tail(&log, from, 10), "new 1\nnew 2\nnew 3");
        assert_eq!(log_tail(&log, 10_000, 10), "");
    }

    #[test]
    fn a_dead_pid_is_gone_and_this_one_is_not() {
        assert!(!is_gone(nix::unistd::getpid()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // Not reaped yet: a zombie counts as gone.
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(is_gone(pid));
        child.wait().unwrap();
        assert!(is_gone(pid));
    }

    #[test]
    fn nothing_serves_a_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        assert!(server_pid(&socket).is_none());
        assert!(!ping(&socket));
        assert!(matches!(
            stop(&socket, Duration::from_secs(1)).unwrap(),
            Stopped::NotRunning
        ));
    }
}
