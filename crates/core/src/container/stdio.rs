//! Interactive stdio of a container, owned by its supervisor (the shim) so that it outlives the
//! core: the container's stdin (a pipe, or the pseudo-terminal with `-t`), terminal resizes, and
//! exec processes (`<runtime> exec --detach`, reaped by the shim so their exit codes are known).
//!
//! The shim serves a Unix socket, `attach.sock` in the bundle. A connection starts with one
//! JSON line ([`ShimRequest`]) from the core, then:
//!
//! * `stdin`: the core sends [`Packet`]s: `Stdin` bytes go to the container's stdin, `CloseStdin`
//!   closes it (the core sends it only for `StdinOnce` containers), `Resize` sets the terminal
//!   size;
//! * `resize`: one JSON line back, `{"ok":true}` or `{"error":…}`;
//! * `exec`: one JSON [`Ready`] line back (started with the pid, or failed with Docker's exit
//!   code), then output packets (`Stdout`, `Stderr`) and a last `Exit` packet; the core sends
//!   `Stdin`, `CloseStdin` and `Resize` packets.
//!
//! With a TTY the runtime hands the pseudo-terminal's master to the shim over a console socket
//! (`--console-socket`, SCM_RIGHTS).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use berth_proto::{read_packet_blocking, Packet};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::runtime::{last_logged_error, start_failure_code, Runtime};
use super::shim::Ready;

/// The supervisor's socket, in the bundle.
pub const SOCKET: &str = "attach.sock";
/// Unix socket paths longer than this do not fit in `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 100;

/// The first line of a connection to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum ShimRequest {
    Stdin,
    Resize {
        rows: u16,
        cols: u16,
    },
    Exec {
        /// The exec instance's id (names its files in the bundle).
        id: String,
        /// The OCI process JSON, a file name in the bundle.
        process: String,
        tty: bool,
        stdin: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResizeReply {
    #[serde(default)]
    pub error: Option<String>,
}

/// Connects to a supervisor's socket; paths too long for `sockaddr_un` go through
/// `/proc/self/fd/<bundle dir>/…`.
pub fn connect(bundle: &Path) -> io::Result<UnixStream> {
    let path = bundle.join(SOCKET);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixStream::connect(&path);
    }
    let dir = File::open(bundle)?;
    UnixStream::connect(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()))
}

/// Writes the request line.
pub fn send_request(conn: &mut UnixStream, req: &ShimRequest) -> io::Result<()> {
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)
}

/// Reads one line without reading past it (packets may follow).
pub fn read_line(conn: &mut impl Read) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match conn.read(&mut b) {
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => out.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if out.len() > 1 << 20 {
            return Err(io::Error::other("line too long"));
        }
    }
    String::from_utf8(out).map_err(io::Error::other)
}

/// Sets a terminal's window size.
pub fn set_winsize(tty: &impl AsRawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A console socket for the runtime: a listener bound in the current directory (the shim runs in
/// the bundle) and the path to give the runtime.
pub fn console_listener(bundle: &Path, name: &str) -> io::Result<(UnixListener, String)> {
    let _ = std::fs::remove_file(name);
    let listener = UnixListener::bind(name)?;
    let abs = bundle.join(name);
    let arg = if abs.as_os_str().len() <= MAX_SOCKET_PATH {
        abs.display().to_string()
    } else {
        // The runtime runs in the bundle too (runc also changes into it for `create`).
        name.to_string()
    };
    Ok((listener, arg))
}

/// Receives the pseudo-terminal master the runtime sent to a console socket.
pub fn receive_console(listener: &UnixListener, timeout: Duration) -> io::Result<File> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let (conn, _) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                for &other in &fds[1..] {
                    // SAFETY: the kernel gave us these descriptors; nobody else owns them.
                    drop(unsafe { OwnedFd::from_raw_fd(other) });
                }
                // SAFETY: as above; this one becomes the File's.
                return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Err(io::Error::other(
        "the runtime sent no terminal on the console socket",
    ))
}

/// Collects the exit statuses of the shim's children (the container's init, exec processes and
/// the runtime's own runs), so that several threads can each wait for their own. Once it runs,
/// nothing else in the shim may wait for children: spawn through [`Reaper::run`].
#[derive(Default)]
pub struct Reaper {
    exited: Mutex<HashMap<i32, i64>>,
    cv: Condvar,
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Arc<Reaper> {
        let r = Arc::new(Reaper::default());
        let me = r.clone();
        std::thread::spawn(move || me.reap());
        r
    }

    fn reap(&self) {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(p, c)) => (p, i64::from(c)),
                Ok(WaitStatus::Signaled(p, sig, _)) => (p, 128 + sig as i64),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                // No children right now: more may come.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            self.exited
                .lock()
                .expect("reaper")
                .insert(pid.as_raw(), code);
            self.cv.notify_all();
        }
    }

    /// Waits for `pid` to exit; its exit code (128 + signal when killed). A process that is not
    /// our child and disappears counts as 255.
    pub fn wait(&self, pid: i32) -> i64 {
        let mut exited = self.exited.lock().expect("reaper");
        loop {
            if let Some(code) = exited.remove(&pid) {
                return code;
            }
            let (guard, timeout) = self
                .cv
                .wait_timeout(exited, Duration::from_secs(1))
                .expect("reaper");
            exited = guard;
            if timeout.timed_out()
                && !exited.contains_key(&pid)
                && nix::sys::signal::kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH)
            {
                return 255;
            }
        }
    }

    /// Runs a command to its end; its exit code.
    pub fn run(&self, mut cmd: Command) -> io::Result<i64> {
        let child = cmd.spawn()?;
        drop(cmd);
        Ok(self.wait(child.id() as i32))
    }
}

/// What the supervisor serves for one run of a container.
pub struct ShimIo {
    pub container_id: String,
    pub bundle: PathBuf,
    pub runtime: Runtime,
    pub reaper: Arc<Reaper>,
    /// The container's stdin: the write end of its pipe, or a copy of the terminal's master.
    pub stdin: Mutex<Option<File>>,
    /// The container's terminal master, with `-t`.
    pub tty: Option<File>,
}

impl ShimIo {
    /// Accepts connections on `listener` for ever (the shim exits when the container does).
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let me = self.clone();
                std::thread::spawn(move || {
                    if let Err(e) = me.handle(conn) {
                        tracing::debug!("stdio connection: {e}");
                    }
                });
            }
        });
    }

    fn handle(&self, mut conn: UnixStream) -> io::Result<()> {
        let line = read_line(&mut conn)?;
        let req: ShimRequest = serde_json::from_str(&line).map_err(io::Error::other)?;
        match req {
            ShimRequest::Stdin => {
                while let Some(p) = read_packet_blocking(&mut conn)? {
                    self.container_input(p);
                }
                Ok(())
            }
            ShimRequest::Resize { rows, cols } => {
                let error = match &self.tty {
                    Some(t) => set_winsize(t, rows, cols).err().map(|e| e.to_string()),
                    // As containerd: a container without a terminal ignores resizes.
                    None => None,
                };
                let mut line =
                    serde_json::to_vec(&ResizeReply { error }).map_err(io::Error::other)?;
                line.push(b'\n');
                conn.write_all(&line)
            }
            ShimRequest::Exec {
                id,
                process,
                tty,
                stdin,
            } => self.exec(conn, &id, &process, tty, stdin),
        }
    }

    fn container_input(&self, p: Packet) {
        match p {
            Packet::Stdin(data) => {
                let mut stdin = self.stdin.lock().expect("stdin");
                if let Some(f) = stdin.as_mut() {
                    if f.write_all(&data).is_err() {
                        *stdin = None;
                    }
                }
            }
            // The terminal stays: closing a pty master would hang the session up.
            Packet::CloseStdin if self.tty.is_none() => {
                self.stdin.lock().expect("stdin").take();
            }
            Packet::Resize { rows, cols } => {
                if let Some(t) = &self.tty {
                    let _ = set_winsize(t, rows, cols);
                }
            }
            _ => {}
        }
    }

    fn exec(
        &self,
        conn: UnixStream,
        id: &str,
        process: &str,
        tty: bool,
        stdin: bool,
    ) -> io::Result<()> {
        let short = &id[..id.len().min(12)];
        let files = ExecFiles {
            process: self.bundle.join(process),
            pid: self.bundle.join(format!("exec-{short}.pid")),
            log: self.bundle.join(format!("exec-{short}.log")),
            console: format!("exec-{short}.sock"),
        };
        let result = self.exec_run(conn, &files, tty, stdin);
        files.remove();
        result
    }

    fn exec_run(
        &self,
        mut conn: UnixStream,
        files: &ExecFiles,
        tty: bool,
        stdin: bool,
    ) -> io::Result<()> {
        let _ = std::fs::remove_file(&files.pid);
        let _ = std::fs::remove_file(&files.log);
        let console = if tty {
            Some(console_listener(&self.bundle, &files.console)?)
        } else {
            None
        };
        let mut cmd = self.runtime.exec_command(
            &self.container_id,
            &files.process,
            &files.pid,
            &files.log,
            console.as_ref().map(|c| c.1.as_str()),
        );
        // Without a terminal the runtime passes its stdio to the process.
        let mut ours: Vec<(u8, File)> = Vec::new();
        let mut stdin_w = None;
        if tty {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        } else {
            if stdin {
                let (r, w) = pipe()?;
                cmd.stdin(Stdio::from(r));
                stdin_w = Some(File::from(w));
            } else {
                cmd.stdin(Stdio::null());
            }
            let (r, w) = pipe()?;
            cmd.stdout(Stdio::from(w));
            ours.push((1, File::from(r)));
            let (r, w) = pipe()?;
            cmd.stderr(Stdio::from(w));
            ours.push((2, File::from(r)));
        }
        let started = self.reaper.run(cmd);
        let fail = |conn: &mut UnixStream, message: String| {
            let exit_code = start_failure_code(&message);
            send_line(conn, &Ready::Failed { message, exit_code })
        };
        match started {
            Ok(0) => {}
            Ok(code) => {
                let why = last_logged_error(&files.log)
                    .unwrap_or_else(|| format!("{} exec exited with {code}", self.runtime.name));
                return fail(&mut conn, format!("OCI runtime exec failed: {why}"));
            }
            Err(e) => return fail(&mut conn, format!("running {}: {e}", self.runtime.name)),
        }
        let Some(pid) = std::fs::read_to_string(&files.pid)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return fail(
                &mut conn,
                "the runtime wrote no pid file for the exec".into(),
            );
        };
        let master = match &console {
            Some((listener, _)) => match receive_console(listener, Duration::from_secs(10)) {
                Ok(m) => Some(m),
                Err(e) => {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                    self.reaper.wait(pid);
                    return fail(&mut conn, format!("receiving the exec's terminal: {e}"));
                }
            },
            None => None,
        };
        drop(console);
        if let Some(m) = &master {
            ours.push((1, m.try_clone()?));
            stdin_w = Some(m.try_clone()?);
        }
        send_line(&mut conn, &Ready::Started { pid: pid as u32 })?;

        // Output: one thread per stream, packets written under a lock; a core that went away
        // makes them discard (the process must not block on a full pipe).
        let writer = Arc::new(Mutex::new(Some(conn.try_clone()?)));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for (stream, from) in ours {
            let writer = writer.clone();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                pump_output(from, stream, &writer);
                let _ = done.send(());
            });
        }
        drop(done_tx);
        // Input from the core.
        let mut input = conn.try_clone()?;
        let master_for_input = master.as_ref().map(File::try_clone).transpose()?;
        std::thread::spawn(move || {
            let mut stdin_w = stdin_w;
            while let Ok(Some(p)) = read_packet_blocking(&mut input) {
                match p {
                    Packet::Stdin(data) => {
                        if let Some(w) = stdin_w.as_mut() {
                            if w.write_all(&data).is_err() {
                                stdin_w = None;
                            }
                        }
                    }
                    Packet::CloseStdin if master_for_input.is_none() => stdin_w = None,
                    Packet::Resize { rows, cols } => {
                        if let Some(m) = &master_for_input {
                            let _ = set_winsize(m, rows, cols);
                        }
                    }
                    _ => {}
                }
            }
        });
        let code = self.reaper.wait(pid);
        // Output may still be in the pipes; a background child holding them must not keep the
        // exit from being reported for long.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(()) => continue,
                Err(_) => break,
            }
        }
        drop(master);
        let mut w = writer.lock().expect("writer");
        if let Some(c) = w.as_mut() {
            let _ = c.write_all(&Packet::Exit(code).encode());
        }
        *w = None;
        let _ = conn.shutdown(std::net::Shutdown::Both);
        Ok(())
    }
}

struct ExecFiles {
    process: PathBuf,
    pid: PathBuf,
    log: PathBuf,
    console: String,
}

impl ExecFiles {
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.process);
        let _ = std::fs::remove_file(&self.pid);
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.console);
    }
}

fn send_line<T: Serialize>(conn: &mut UnixStream, v: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

fn pump_output(mut from: File, stream: u8, writer: &Mutex<Option<UnixStream>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A terminal whose other side is closed answers EIO.
            Err(_) => break,
        };
        let data = buf[..n].to_vec();
        let p = if stream == 2 {
            Packet::Stderr(data)
        } else {
            Packet::Stdout(data)
        };
        let mut w = writer.lock().expect("writer");
        if let Some(c) = w.as_mut() {
            if c.write_all(&p.encode()).is_err() {
                *w = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_lines_and_lines_stop_at_the_newline() {
        let req = ShimRequest::Exec {
            id: "ab".into(),
            process: "exec-ab.json".into(),
            tty: true,
            stdin: false,
        };
        let text = serde_json::to_string(&req).unwrap();
        assert!(text.starts_with("{\"op\":\"exec\""), "{text}");
        let mut wire = format!("{text}\n").into_bytes();
        wire.extend(Packet::CloseStdin.encode());
        let mut r = &wire[..];
        let line = read_line(&mut r).unwrap();
        assert_eq!(serde_json::from_str::<ShimRequest>(&line).unwrap(), req);
        assert_eq!(
            read_packet_blocking(&mut r).unwrap(),
            Some(Packet::CloseStdin)
        );
    }

    #[test]
    fn long_socket_paths_are_reached_through_proc() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        // Bind through the same trick (the shim binds relative to its directory).
        let dir = File::open(&deep).unwrap();
        let listener =
            UnixListener::bind(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd())).unwrap();
        assert!(deep.join(SOCKET).exists());
        let mut c = connect(&deep).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }

    #[test]
    fn winsize_sets_a_terminal_and_refuses_a_pipe() {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_winsize(&pty.master, 33, 99).unwrap();
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` to the pointer, valid for the call.
        let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 99));
        let (r, _w) = pipe().unwrap();
        assert!(set_winsize(&r, 1, 1).is_err());
    }
}
