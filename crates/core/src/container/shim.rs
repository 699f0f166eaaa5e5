//! The per-container supervisor ("shim"): `berth-core shim --id … --bundle …`. The core starts
//! it for every start of a container; it detaches at once (a second copy of itself in a new
//! session, so stopping or restarting the core does not touch the container) and then:
//!
//! 1. mounts the rootfs (`rootfs.json`), becomes the child subreaper, runs `<runtime> create`
//!    with its stdout/stderr on pipes, then `<runtime> start`;
//! 2. tells the core on its stdout: one JSON [`Ready`] line (started with a pid, or failed with
//!    Docker's exit code and the runtime's message);
//! 3. copies the container's output into `<id>-json.log` (Docker's json-file format);
//! 4. reaps the container's init, records the exit code, unmounts the rootfs, writes the final
//!    [`RunState`], and only then deletes the runtime's state (with crun or runc on cgroup v1
//!    that is ~20 ms of cgroup removal nobody waiting for the exit needs to wait for).
//!
//! A shim holds `runtime.lock` in the bundle (an exclusive `flock`) from before `create` until
//! the runtime's state is deleted, so the next run's shim waits for the last one's delete before
//! its own `create` of the same id, and a removal knows the delete is still to come.
//!
//! `state.json` (written atomically, only by the shim) is how the core knows a run's state,
//! including after the core restarted.

use std::fs::{self, File};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use berth_proto::LogLimits;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::logs::{now_rfc3339, LineSplitter, LogWriter};
use super::rootfs::RootfsMount;
use super::runtime::{last_logged_error, start_failure_code, Runtime};
use super::stdio::{self, pipe};

pub const STATE_FILE: &str = "state.json";
pub const ROOTFS_FILE: &str = "rootfs.json";
const RUNTIME_LOG: &str = "runtime.log";
/// Held by the shim while the runtime has state for its run (see the module's docs).
const RUNTIME_LOCK: &str = "runtime.lock";
/// Room set aside at start for writing the exit: a container that fills the disk (its writable
/// layer is on the same one) must not cost its exit code. Freed if the final save needs it.
const EXIT_RESERVE: &str = "exit.reserve";
const EXIT_RESERVE_BYTES: usize = 16 * 1024;
const PID_FILE: &str = "init.pid";
/// Where the runtime sends the container's terminal (`-t`), in the bundle.
const CONSOLE_SOCKET: &str = "console.sock";

/// The log file of a container, named as dockerd names it.
pub fn log_file(bundle: &Path, id: &str) -> PathBuf {
    bundle.join(format!("{id}-json.log"))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Running,
    Exited,
    StartFailed,
}

/// One run of a container, as its supervisor last recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    /// Counts the starts of this container (1 for the first).
    pub generation: u64,
    pub phase: Phase,
    pub shim_pid: u32,
    /// The container's init, while it runs.
    pub pid: Option<u32>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    /// The kernel's OOM killer killed a process of the container during the run.
    #[serde(default)]
    pub oom_killed: bool,
}

impl RunState {
    pub fn read(bundle: &Path) -> io::Result<Option<RunState>> {
        match fs::read(bundle.join(STATE_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes to a temporary file, syncs it and renames it over the state file.
    pub fn write(&self, bundle: &Path) -> io::Result<()> {
        let tmp = bundle.join(format!("{STATE_FILE}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, bundle.join(STATE_FILE))?;
        // The rename itself is durable only once the directory is: a machine that dies right
        // after a container exited must still find it exited (with its code) on the next boot.
        File::open(bundle)?.sync_all()
    }
}

/// What the shim tells the core once the container runs or could not be started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Ready {
    Started { pid: u32 },
    Failed { message: String, exit_code: i64 },
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "berth-core shim",
    about = "supervises one run of a container (internal)"
)]
pub struct ShimArgs {
    #[arg(long)]
    pub id: String,
    /// The container's directory: config.json, rootfs.json, state and logs.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The OCI runtime's name ("runc", "crun").
    #[arg(long)]
    pub runtime: String,
    /// The runtime's `--root`.
    #[arg(long)]
    pub runtime_root: PathBuf,
    /// The number of this start of the container.
    #[arg(long)]
    pub generation: u64,
    /// Set on the detached copy.
    #[arg(long, hide = true)]
    pub detached: bool,
    /// Keep the container's stdin open (a pipe the shim writes to) instead of /dev/null.
    #[arg(long)]
    pub stdin: bool,
    /// The container has a terminal (the runtime sends its master to a console socket).
    #[arg(long)]
    pub tty: bool,
    /// The log rotates at this many bytes (0: never) ...
    #[arg(long, default_value_t = LogLimits::DEFAULT.max_size)]
    pub log_max_size: u64,
    /// ... keeping this many files, the current one included.
    #[arg(long, default_value_t = LogLimits::DEFAULT.max_files)]
    pub log_max_files: u32,
}

impl ShimArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "shim".to_string(),
            "--id".into(),
            self.id.clone(),
            "--bundle".into(),
            self.bundle.display().to_string(),
            "--runtime".into(),
            self.runtime.clone(),
            "--runtime-root".into(),
            self.runtime_root.display().to_string(),
            "--generation".into(),
            self.generation.to_string(),
        ];
        if self.detached {
            v.push("--detached".into());
        }
        if self.stdin {
            v.push("--stdin".into());
        }
        if self.tty {
            v.push("--tty".into());
        }
        v.extend([
            "--log-max-size".into(),
            self.log_max_size.to_string(),
            "--log-max-files".into(),
            self.log_max_files.to_string(),
        ]);
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// an i/o step of the supervisor failed
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> ShimError {
    move |source| ShimError::Io { context, source }
}

/// The `shim` subcommand. The first copy starts the detached one and returns at once.
pub fn run(args: ShimArgs) -> Result<(), ShimError> {
    if !args.detached {
        let exe = std::env::current_exe().map_err(io_err("finding our own binary"))?;
        let mut detached = args.clone();
        detached.detached = true;
        let mut cmd = Command::new(exe);
        cmd.args(&detached.to_args()[..]).stdin(Stdio::null());
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it runs in
        // the forked child before exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
        }
        cmd.spawn()
            .map_err(io_err("starting the detached supervisor"))?;
        return Ok(());
    }
    Supervisor::new(args).supervise()
}

struct Supervisor {
    args: ShimArgs,
    runtime: Runtime,
    state: RunState,
}

impl Supervisor {
    fn new(args: ShimArgs) -> Supervisor {
        let prev = RunState::read(&args.bundle).ok().flatten();
        let runtime = Runtime {
            name: args.runtime.clone(),
            root: args.runtime_root.clone(),
        };
        let state = RunState {
            generation: args.generation,
            phase: Phase::Starting,
            shim_pid: std::process::id(),
            pid: None,
            started_at: prev.as_ref().and_then(|p| p.started_at.clone()),
            finished_at: prev.as_ref().and_then(|p| p.finished_at.clone()),
            exit_code: prev.as_ref().and_then(|p| p.exit_code),
            error: None,
            oom_killed: false,
        };
        Supervisor {
            args,
            runtime,
            state,
        }
    }

    fn bundle(&self) -> &Path {
        &self.args.bundle
    }

    fn save(&self) -> Result<(), ShimError> {
        self.state
            .write(self.bundle())
            .map_err(io_err("writing the run state"))
    }

    fn tell_core(&self, ready: &Ready) {
        let mut line = serde_json::to_vec(ready).expect("serialisable");
        line.push(b'\n');
        let mut out = io::stdout().lock();
        let _ = out.write_all(&line);
        let _ = out.flush();
        // From now on nobody listens: point stdout at /dev/null so the core's pipe closes.
        if let Ok(null) = File::options().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
        }
    }

    fn rootfs(&self) -> Result<RootfsMount, String> {
        let text = fs::read(self.bundle().join(ROOTFS_FILE))
            .map_err(|e| format!("reading {ROOTFS_FILE}: {e}"))?;
        serde_json::from_slice(&text).map_err(|e| format!("reading {ROOTFS_FILE}: {e}"))
    }

    /// Fills the new, empty volumes with the image's content at their destinations (Docker's
    /// copy-up), from the mounted rootfs, before the runtime mounts them over it.
    fn copy_up(&self, rootfs: &RootfsMount) -> Result<(), String> {
        let list = match fs::read(self.bundle().join(super::mounts::COPY_UP_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("reading {}: {e}", super::mounts::COPY_UP_FILE)),
        };
        let list: Vec<super::mounts::CopyUp> = serde_json::from_slice(&list)
            .map_err(|e| format!("reading {}: {e}", super::mounts::COPY_UP_FILE))?;
        for c in list {
            super::mounts::copy_up(&rootfs.target, &c.destination, &c.volume).map_err(|e| {
                format!(
                    "copying the image's {} into volume {}: {e}",
                    c.destination,
                    c.volume.display()
                )
            })?;
        }
        Ok(())
    }

    fn fail(&mut self, message: String, rootfs: Option<&RootfsMount>) -> Result<(), ShimError> {
        tracing::warn!("container {}: {message}", self.args.id);
        let _ = self.runtime.delete(&self.args.id, true);
        if let Some(r) = rootfs {
            let _ = r.unmount();
        }
        let exit_code = start_failure_code(&message);
        self.state.phase = Phase::StartFailed;
        self.state.exit_code = Some(exit_code);
        self.state.error = Some(message.clone());
        self.state.pid = None;
        self.save()?;
        self.tell_core(&Ready::Failed { message, exit_code });
        Ok(())
    }

    fn supervise(mut self) -> Result<(), ShimError> {
        // Sockets live in the bundle and are bound relative to it (their absolute paths may be
        // too long for a socket address); the runtime inherits the directory.
        if let Ok(abs) = fs::canonicalize(&self.args.bundle) {
            self.args.bundle = abs;
        }
        std::env::set_current_dir(&self.args.bundle).map_err(io_err("changing into the bundle"))?;
        // Waits for the previous run's shim to finish deleting the runtime's state. Opened
        // close-on-exec: neither the runtime nor the container inherits it.
        let _runtime_lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(RUNTIME_LOCK)
            .map_err(io_err("opening the runtime lock"))
            .and_then(|f| {
                Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| ShimError::Io {
                    context: "locking the runtime lock",
                    source: e.into(),
                })
            })?;
        self.save()?;
        // Written, not sized: the blocks must really be taken now.
        let _ = fs::write(EXIT_RESERVE, [0u8; EXIT_RESERVE_BYTES]);
        let id = self.args.id.clone();
        // Where a start spends its time (BERTH_LOG=debug; the log is shim.log in the bundle).
        let began = std::time::Instant::now();
        let rootfs = match self.rootfs() {
            Ok(r) => r,
            Err(m) => return self.fail(m, None),
        };
        if let Err(e) = rootfs.mount() {
            return self.fail(
                format!("mounting the container's rootfs: {e}"),
                Some(&rootfs),
            );
        }
        if let Err(m) = self.copy_up(&rootfs) {
            return self.fail(m, Some(&rootfs));
        }
        // Orphans of the runtime (the container's init once `create` returns) become ours.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            return self.fail(format!("becoming a subreaper: {e}"), Some(&rootfs));
        }
        let limits = LogLimits {
            max_size: self.args.log_max_size,
            max_files: self.args.log_max_files,
        };
        let log = match LogWriter::open(&log_file(self.bundle(), &id), limits) {
            Ok(l) => Arc::new(Mutex::new(l)),
            Err(e) => return self.fail(format!("opening the log: {e}"), Some(&rootfs)),
        };
        let runtime_log = self.bundle().join(RUNTIME_LOG);
        let pid_file = self.bundle().join(PID_FILE);
        let _ = fs::remove_file(&runtime_log);
        let _ = fs::remove_file(&pid_file);
        // A crashed earlier run may have left the runtime's state behind.
        let _ = self.runtime.delete(&id, true);

        // The container's stdio: a terminal (its master comes over the console socket), or
        // pipes for stdout/stderr and, with `-i`, one for stdin.
        let mut console = None;
        let mut outputs: Vec<(&'static str, File)> = Vec::new();
        let mut child_stdio: Vec<OwnedFd> = Vec::new();
        let mut stdin_w = None;
        if self.args.tty {
            match stdio::console_listener(&self.args.bundle, CONSOLE_SOCKET) {
                Ok(c) => console = Some(c),
                Err(e) => {
                    return self.fail(format!("creating the console socket: {e}"), Some(&rootfs))
                }
            }
        } else {
            let pipes = (|| -> io::Result<()> {
                if self.args.stdin {
                    let (r, w) = pipe()?;
                    child_stdio.push(r);
                    stdin_w = Some(File::from(w));
                }
                for stream in ["stdout", "stderr"] {
                    let (r, w) = pipe()?;
                    outputs.push((stream, File::from(r)));
                    child_stdio.push(w);
                }
                Ok(())
            })();
            if let Err(e) = pipes {
                return self.fail(format!("creating pipes: {e}"), Some(&rootfs));
            }
        }
        tracing::debug!(container = %id, took = ?began.elapsed(), "rootfs mounted");
        let created = {
            // The command owns the child's ends; it is dropped at the end of this block so that
            // only the container holds them afterwards.
            let mut create = self.runtime.create_command(
                &id,
                self.bundle(),
                &pid_file,
                &runtime_log,
                console.as_ref().map(|c| c.1.as_str()),
            );
            let mut ends = child_stdio.into_iter();
            if !self.args.tty {
                if self.args.stdin {
                    create.stdin(Stdio::from(ends.next().expect("stdin pipe")));
                }
                create
                    .stdout(Stdio::from(ends.next().expect("stdout pipe")))
                    .stderr(Stdio::from(ends.next().expect("stderr pipe")));
            } else {
                create.stdout(Stdio::null()).stderr(Stdio::null());
            }
            create.status()
        };
        match created {
            Ok(s) if s.success() => {}
            Ok(s) => {
                let why = last_logged_error(&runtime_log)
                    .unwrap_or_else(|| format!("{} create exited with {s}", self.runtime.name));
                return self.fail(format!("OCI runtime create failed: {why}"), Some(&rootfs));
            }
            Err(e) => {
                return self.fail(format!("running {}: {e}", self.runtime.name), Some(&rootfs))
            }
        }
        let mut master = None;
        if let Some((listener, _)) = &console {
            match stdio::receive_console(listener, Duration::from_secs(10))
                .and_then(|m| Ok((m.try_clone()?, m)))
            {
                Ok((out, m)) => {
                    outputs.push(("stdout", out));
                    master = Some(m);
                }
                Err(e) => {
                    return self.fail(
                        format!("receiving the container's terminal: {e}"),
                        Some(&rootfs),
                    )
                }
            }
        }
        // The filter crun compiled, kept for the next containers with the same profile.
        super::seccomp_cache::capture(self.bundle(), &self.runtime.root, &id);
        drop(console);
        let _ = fs::remove_file(CONSOLE_SOCKET);
        let pid = match fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            Some(p) => p,
            None => return self.fail("the runtime wrote no pid file".into(), Some(&rootfs)),
        };

        let (done_tx, done_rx) = mpsc::channel();
        let copiers = outputs.len();
        let tty = self.args.tty;
        for (stream, from) in outputs {
            let log = log.clone();
            let done = done_tx.clone();
            std::thread::spawn(move || {
                if tty {
                    copy_raw(from, stream, &log);
                } else {
                    copy_output(from, stream, &log);
                }
                let _ = done.send(());
            });
        }
        drop(done_tx);

        tracing::debug!(container = %id, took = ?began.elapsed(), "runtime create done");
        if let Err(e) = self.runtime.start(&id) {
            return self.fail(format!("OCI runtime start failed: {e}"), Some(&rootfs));
        }
        tracing::debug!(container = %id, took = ?began.elapsed(), "runtime start done");
        // From here on every child is reaped by the reaper (exec processes too).
        let reaper = stdio::Reaper::start();
        let stdin_file = match (&master, stdin_w) {
            (Some(m), _) => m.try_clone().ok(),
            (None, w) => w,
        };
        let io = Arc::new(stdio::ShimIo {
            container_id: id.clone(),
            bundle: self.args.bundle.clone(),
            runtime: self.runtime.clone(),
            reaper: reaper.clone(),
            stdin: Mutex::new(stdin_file),
            tty: master,
        });
        let _ = fs::remove_file(stdio::SOCKET);
        match UnixListener::bind(stdio::SOCKET) {
            Ok(l) => {
                let _ = fs::set_permissions(stdio::SOCKET, fs::Permissions::from_mode(0o600));
                io.serve(l);
            }
            Err(e) => tracing::warn!("container {id}: serving {}: {e}", stdio::SOCKET),
        }
        self.state.phase = Phase::Running;
        self.state.pid = Some(pid as u32);
        self.state.started_at = Some(now_rfc3339());
        self.state.finished_at = None;
        self.state.exit_code = None;
        self.save()?;
        self.tell_core(&Ready::Started { pid: pid as u32 });
        // Found while the init lives; read once it is gone, before the runtime deletes it.
        let cgroup = super::cgroup::CgroupPaths::of_pid(pid as u32);

        let code = reaper.wait(pid);
        // Where an exit spends its time until the state says so (BERTH_LOG=debug, shim.log).
        let exited = std::time::Instant::now();
        self.state.oom_killed = cgroup
            .and_then(|c| c.oom_kills())
            .is_some_and(|kills| kills > 0);
        let _ = fs::remove_file(stdio::SOCKET);
        // The copiers end when the last writer (the container's processes) is gone; a process
        // that escaped the container could hold a pipe forever, so do not wait for long.
        for _ in 0..copiers {
            let _ = done_rx.recv_timeout(Duration::from_secs(5));
        }
        let _ = fs::remove_file(stdio::SOCKET);
        tracing::debug!(container = %id, took = ?exited.elapsed(), "exit: output copied");
        if let Err(e) = rootfs.unmount() {
            tracing::warn!("container {id}: unmounting the rootfs: {e}");
        }
        // The run's network namespace (bridge containers) goes with it, also when no core is
        // there to clean up; before the final state, so a next start never meets it.
        let netns = self.bundle().join(super::network::NETNS_FILE);
        if netns.exists() {
            crate::net::detach(&netns);
        }
        tracing::debug!(container = %id, took = ?exited.elapsed(), "exit: rootfs and network gone");
        // The output is on disk before the state says the run is over.
        if let Err(e) = log.lock().map(|l| l.sync()) {
            tracing::warn!("container {id}: syncing the log: {e}");
        }
        self.state.phase = Phase::Exited;
        self.state.pid = None;
        self.state.exit_code = Some(code);
        self.state.finished_at = Some(now_rfc3339());
        let mut saved = self.save();
        if saved.is_err() && fs::remove_file(EXIT_RESERVE).is_ok() {
            saved = self.save();
        }
        let _ = fs::remove_file(EXIT_RESERVE);
        tracing::debug!(container = %id, took = ?exited.elapsed(), "exit: state saved");
        // Every process of the container is gone (its pid namespace died with its init): what
        // is left is the runtime's record and the cgroup, deleted under the lock, which a next
        // start of this container waits for. The bundle may be gone already (`--rm`): the
        // runtime keeps what it needs in its own state directory.
        if !matches!(reaper.run(self.runtime.delete_command(&id, false)), Ok(0)) {
            let _ = reaper.run(self.runtime.delete_command(&id, true));
        }
        tracing::debug!(container = %id, took = ?exited.elapsed(), "exit: runtime state deleted");
        saved
    }
}

/// Whether a shim of this bundle still holds the runtime lock: it has yet to delete the
/// runtime's state of its run (and will), so a removal leaves that to it.
pub fn runtime_state_pending(bundle: &Path) -> bool {
    let Ok(f) = File::open(bundle.join(RUNTIME_LOCK)) else {
        return false;
    };
    matches!(
        Flock::lock(f, FlockArg::LockExclusiveNonblock),
        Err((_, nix::errno::Errno::EWOULDBLOCK))
    )
}

/// Copies a terminal's output into the log as it comes (a prompt has no newline): one entry per
/// read.
fn copy_raw(mut from: File, stream: &str, log: &Mutex<LogWriter>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = log.lock().expect("log lock").write_entry(stream, &buf[..n]) {
                    tracing::warn!("writing the container log: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EIO once every process holding the terminal is gone.
            Err(_) => break,
        }
    }
}

fn copy_output(mut from: File, stream: &str, log: &Mutex<LogWriter>) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut emit = |entry: &[u8]| {
        if let Err(e) = log.lock().expect("log lock").write_entry(stream, entry) {
            tracing::warn!("writing the container log: {e}");
        }
    };
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => splitter.push(&buf[..n], &mut emit),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    splitter.finish(&mut emit);
}

/// Reads the shim's [`Ready`] line; `None` when it exited without one.
pub fn read_ready(from: impl Read) -> Option<Ready> {
    let mut line = String::new();
    io::BufReader::new(from).read_line(&mut line).ok()?;
    serde_json::from_str(line.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn state_round_trips_atomically() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(RunState::read(t.path()).unwrap(), None);
        let s = RunState {
            generation: 2,
            phase: Phase::Exited,
            shim_pid: 7,
            pid: None,
            started_at: Some("2026-01-01T00:00:00Z".into()),
            finished_at: Some("2026-01-01T00:00:01Z".into()),
            exit_code: Some(3),
            error: None,
            oom_killed: true,
        };
        s.write(t.path()).unwrap();
        assert_eq!(RunState::read(t.path()).unwrap(), Some(s));
        assert!(!t.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_removal_leaves_the_runtime_delete_to_a_shim_holding_the_lock() {
        let t = tempfile::tempdir().unwrap();
        // No shim ever ran here (or an old layout): nothing pending.
        assert!(!runtime_state_pending(t.path()));
        let f = File::create(t.path().join(RUNTIME_LOCK)).unwrap();
        assert!(!runtime_state_pending(t.path()), "a lock nobody holds");
        let held = Flock::lock(f, FlockArg::LockExclusive).unwrap();
        assert!(runtime_state_pending(t.path()), "a shim still to delete");
        drop(held);
        assert!(
            !runtime_state_pending(t.path()),
            "the shim is done (or died)"
        );
    }

    #[test]
    fn args_round_trip() {
        let a = ShimArgs {
            id: "abc".into(),
            bundle: "/b".into(),
            runtime: "runc".into(),
            runtime_root: "/r".into(),
            generation: 3,
            detached: true,
            stdin: true,
            tty: true,
            log_max_size: 1 << 20,
            log_max_files: 2,
        };
        let parsed = ShimArgs::parse_from(a.to_args());
        assert_eq!(parsed.to_args(), a.to_args());
        let ready = Ready::Failed {
            message: "m".into(),
            exit_code: 127,
        };
        let line = format!("{}\n", serde_json::to_string(&ready).unwrap());
        assert_eq!(read_ready(line.as_bytes()), Some(ready));
        assert_eq!(read_ready(&b""[..]), None);
    }
}
