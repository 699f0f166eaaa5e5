//! berthd as the app's sidecar: found beside the app (or on PATH, or in the development target
//! dir), started detached in its own session as `berth start` does (crates/cli/src/engine.rs),
//! so it outlives the app, and stopped with SIGTERM to whoever serves the socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where berthd is: `BERTH_BERTHD`, else beside the app's executable (the bundle's sidecar),
/// else on `PATH`, else (debug builds) `$CARGO_TARGET_DIR/debug`.
pub fn find_berthd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_BERTHD").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = exe_dir.into_iter().collect();
    dirs.extend(std::env::split_paths(&path));
    if cfg!(debug_assertions) {
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
            dirs.push(PathBuf::from(t).join("debug"));
        }
    }
    dirs.into_iter()
        .map(|d| d.join("berthd"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The VM backend berthd is started with: `BERTH_BACKEND`, else the preference, else the
/// platform's (`qemu` on Linux, as `berth start`; `vz` on macOS, `hyperv` on Windows).
pub fn backend(pref: Option<&str>) -> String {
    if let Some(b) = std::env::var("BERTH_BACKEND")
        .ok()
        .filter(|b| !b.is_empty())
    {
        return b;
    }
    if let Some(b) = pref.filter(|b| !b.is_empty()) {
        return b.to_owned();
    }
    if cfg!(target_os = "macos") {
        "vz".into()
    } else if cfg!(windows) {
        "hyperv".into()
    } else {
        "qemu".into()
    }
}

/// The log berthd writes: `berthd.log` beside the socket, as `berth start`.
pub fn log_path(socket: &Path) -> PathBuf {
    socket.with_file_name("berthd.log")
}

/// The arguments after `--socket S --backend B`: `BERTH_BERTHD_ARGS`, split on whitespace.
fn extra_args() -> Vec<OsString> {
    std::env::var("BERTH_BERTHD_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(OsString::from)
        .collect()
}

/// Runs berthd in a new session (stdin /dev/null, output appended to the log) and returns the
/// child with the log's length before this start, where its tail begins.
pub fn spawn(
    berthd: &Path,
    socket: &Path,
    backend: &str,
    vm_image: Option<&Path>,
) -> std::io::Result<(Child, u64)> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
        // The socket's directory is the user's alone, as berthd makes it.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let log_file = log_path(socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)?;
    let from = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(berthd);
    cmd.arg("--socket")
        .arg(socket)
        .arg("--backend")
        .arg(backend)
        .args(extra_args())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        cmd.env("RUST_LIB_BACKTRACE", "0");
    }
    // The guest image a package carries, unless the user chose one.
    if let Some(dir) = vm_image.filter(|_| std::env::var_os("BERTH_VM_IMAGE").is_none()) {
        cmd.env("BERTH_VM_IMAGE", dir);
    }
    // SAFETY: setsid is async-signal-safe and touches only the child.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
    }
    let child = cmd.spawn()?;
    Ok((child, from))
}

/// The process serving `socket` (SO_PEERCRED of a fresh connection), if one does.
pub fn server_pid(socket: &Path) -> Option<Pid> {
    let s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let cred =
            nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
        (cred.pid() > 0).then(|| Pid::from_raw(cred.pid()))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        // macOS: LOCAL_PEERPID (untested here).
        let pid = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::LocalPeerPid).ok()?;
        (pid > 0).then(|| Pid::from_raw(pid))
    }
}

/// Gone, or a zombie nobody reaped yet.
pub fn is_gone(pid: Pid) -> bool {
    if kill(pid, None).is_err() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        // No /proc (macOS): kill(pid, 0) answered, so it is there.
        Err(_) => false,
    }
}

/// SIGTERM to berthd (it stops the VM), SIGKILL after `timeout`. `Ok(false)`: nothing served
/// the socket.
pub fn stop(socket: &Path, timeout: Duration) -> Result<bool, String> {
    let Some(pid) = server_pid(socket) else {
        return Ok(false);
    };
    kill(pid, Signal::SIGTERM).map_err(|e| format!("signalling berthd (pid {pid}): {e}"))?;
    let began = Instant::now();
    while !is_gone(pid) {
        if began.elapsed() > timeout {
            let _ = kill(pid, Signal::SIGKILL);
            let at = Instant::now();
            while !is_gone(pid) && at.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(true)
}

/// The last `lines` lines written to `path` after byte `from`, without terminal colours.
pub fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
    let all: Vec<&str> = text.lines().collect();
    strip_ansi(&all[all.len().saturating_sub(lines)..].join("\n"))
}

/// Removes ANSI escape sequences (CSI `ESC [ … final`), which berthd's log carries.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_starts_where_this_start_began() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("berthd.log");
        std::fs::write(&log, "old\nnew 1\nnew 2\nnew 3\n").unwrap();
        assert_eq!(log_tail(&log, 4, 2), "new 2\nnew 3");
        assert_eq!(log_tail(&log, 4, 10), "new 1\nnew 2\nnew 3");
        assert_eq!(log_tail(&log, 1000, 10), "");
    }

    #[test]
    fn colours_are_removed_from_the_tail() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m berthd: up"),
            "2026  INFO berthd: up"
        );
    }

    #[test]
    fn the_log_lives_beside_the_socket() {
        assert_eq!(
            log_path(Path::new("/run/user/1/berth/berthd.sock")),
            Path::new("/run/user/1/berth/berthd.log")
        );
    }

    #[test]
    fn a_started_process_is_in_its_own_session_and_its_output_goes_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("berthd");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"args: $*\"\nps -o sid= -p $$ | tr -d ' '\necho $$\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("run/berthd.sock");
        let (mut child, from) = spawn(&fake, &sock, "direct", None).unwrap();
        assert_eq!(from, 0);
        assert!(child.wait().unwrap().success());
        let out = std::fs::read_to_string(log_path(&sock)).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            format!("args: --socket {} --backend direct", sock.display())
        );
        // Its session id is its own pid: setsid ran.
        if lines.len() == 3 && !lines[1].is_empty() {
            assert_eq!(lines[1], lines[2]);
        }
    }

    #[test]
    fn nothing_serves_a_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        assert!(server_pid(&dir.path().join("x.sock")).is_none());
        assert_eq!(
            stop(&dir.path().join("x.sock"), Duration::from_secs(1)),
            Ok(false)
        );
    }
}
