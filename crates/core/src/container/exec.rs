//! Exec instances (`docker exec`), terminal resizes and the container's stdin, all through the
//! container's supervisor (`stdio.rs`), which owns the processes' stdio.
//!
//! Exec instances live in the core's memory, as dockerd keeps them: created by `exec_create`,
//! run once by `exec_start` (the supervisor runs `<runtime> exec --detach` and reaps the process),
//! forgotten when their container is removed (or the core restarts).

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::{
    read_packet_blocking, ContainerRef, ExecInfo, ExecSpec, Packet, CONTAINER_EVENT,
};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilitiesBuilder, Process, UserBuilder};

use super::rootfs::RootfsMount;
use super::shim::{Ready, ROOTFS_FILE};
use super::stdio::{self, ShimRequest};
use super::store::ContainerRecord;
use super::{
    events, io_err, process, rootfs, spec, ContainerError, ContainerService, Result, POLL,
};

/// How long a stdin forwarder waits for a run's supervisor to answer on its socket.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone)]
struct ExecState {
    started: bool,
    running: bool,
    pid: Option<u32>,
    exit_code: Option<i64>,
}

/// One exec instance.
pub struct ExecEntry {
    pub id: String,
    pub container_id: String,
    pub spec: ExecSpec,
    state: Mutex<ExecState>,
    /// Packets for the supervisor while the process runs (stdin, its closing, resizes).
    input: Mutex<Option<Sender<Packet>>>,
    /// Where `exec_die` is recorded, with the container's attributes and the exec's id.
    events: Arc<crate::events::EventLog>,
    event_attributes: BTreeMap<String, String>,
}

impl ExecEntry {
    pub fn info(&self) -> ExecInfo {
        let s = self.state.lock().expect("exec state").clone();
        ExecInfo {
            id: self.id.clone(),
            container_id: self.container_id.clone(),
            spec: self.spec.clone(),
            running: s.running,
            exit_code: s.exit_code,
            pid: s.pid,
        }
    }

    /// Passes a packet on to the process; false when it no longer runs.
    pub fn send(&self, p: Packet) -> bool {
        match self.input.lock().expect("exec input").as_ref() {
            Some(tx) => tx.send(p).is_ok(),
            None => false,
        }
    }

    fn finish(&self, code: i64) {
        let mut s = self.state.lock().expect("exec state");
        if s.exit_code.is_none() {
            s.exit_code = Some(code);
        }
        let ended = std::mem::replace(&mut s.running, false);
        let code = s.exit_code.unwrap_or(code);
        drop(s);
        self.input.lock().expect("exec input").take();
        if ended {
            let mut attributes = self.event_attributes.clone();
            attributes.insert("exitCode".into(), code.to_string());
            self.events
                .record(CONTAINER_EVENT, "exec_die", &self.container_id, attributes);
        }
    }
}

/// A started exec instance: its output until it exits.
pub struct ExecRun {
    pub entry: Arc<ExecEntry>,
    reader: UnixStream,
}

impl ExecRun {
    /// The next piece of output (1 stdout, 2 stderr); `None` once the process exited, its exit
    /// code recorded.
    pub fn next_output(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            match read_packet_blocking(&mut self.reader) {
                Ok(Some(Packet::Stdout(d))) => return Some((1, d)),
                Ok(Some(Packet::Stderr(d))) => return Some((2, d)),
                Ok(Some(Packet::Exit(code))) => {
                    self.entry.finish(code);
                    return None;
                }
                Ok(Some(_)) => {}
                // The supervisor went away without a word: its container is gone.
                Ok(None) | Err(_) => {
                    self.entry.finish(255);
                    return None;
                }
            }
        }
    }
}

impl ContainerService {
    /// A container that runs, or dockerd's conflict.
    fn running_record(&self, r: &ContainerRef) -> Result<ContainerRecord> {
        let rec = self.find(r)?;
        if !self.view(&rec.id).running {
            return Err(ContainerError::Conflict(format!(
                "container {} is not running",
                rec.id
            )));
        }
        Ok(rec)
    }

    /// Registers an exec instance in a running container.
    pub fn exec_create(&self, spec: ExecSpec) -> Result<String> {
        if spec.cmd.is_empty() || spec.cmd[0].is_empty() {
            return Err(ContainerError::Invalid("No exec command specified".into()));
        }
        let rec = self.running_record(&spec.container)?;
        let id = hex::encode(rand::random::<[u8; 32]>());
        let event_attributes = events::attributes(&rec, &[("execID", id.clone())]);
        let action = format!("exec_create: {}", exec_command(&spec.cmd));
        let entry = Arc::new(ExecEntry {
            id: id.clone(),
            container_id: rec.id.clone(),
            spec,
            state: Mutex::default(),
            input: Mutex::new(None),
            events: self.events.clone(),
            event_attributes,
        });
        self.execs.lock().expect("execs").insert(id.clone(), entry);
        self.emit(&rec, &action, &[("execID", id.clone())]);
        Ok(id)
    }

    pub fn exec_entry(&self, id: &str) -> Result<Arc<ExecEntry>> {
        self.execs
            .lock()
            .expect("execs")
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::ExecNotFound(id.to_string()))
    }

    pub fn exec_inspect(&self, id: &str) -> Result<ExecInfo> {
        Ok(self.exec_entry(id)?.info())
    }

    pub(super) fn forget_execs(&self, container_id: &str) {
        self.execs
            .lock()
            .expect("execs")
            .retain(|_, e| e.container_id != container_id);
    }

    /// Starts an exec instance through the container's supervisor. A process the runtime could
    /// not start is [`ContainerError::StartFailed`] with Docker's exit code (recorded too).
    pub fn exec_start(&self, id: &str) -> Result<ExecRun> {
        let entry = self.exec_entry(id)?;
        {
            let mut s = entry.state.lock().expect("exec state");
            if s.exit_code.is_some() {
                return Err(ContainerError::Conflict(format!(
                    "Error: Exec command {id} has already run"
                )));
            }
            if s.started {
                return Err(ContainerError::Conflict(format!(
                    "Error: Exec command {id} is already running"
                )));
            }
            s.started = true;
        }
        let started = self.exec_launch(&entry);
        match &started {
            Ok(_) => {
                let action = format!("exec_start: {}", exec_command(&entry.spec.cmd));
                entry.events.record(
                    CONTAINER_EVENT,
                    &action,
                    &entry.container_id,
                    entry.event_attributes.clone(),
                );
            }
            Err(e) => {
                let mut s = entry.state.lock().expect("exec state");
                match e {
                    ContainerError::StartFailed { exit_code, .. } => s.exit_code = Some(*exit_code),
                    _ => s.started = false,
                }
            }
        }
        started
    }

    fn exec_launch(&self, entry: &Arc<ExecEntry>) -> Result<ExecRun> {
        let rec = self.running_record(&ContainerRef(entry.container_id.clone()))?;
        let bundle = self.bundle(&rec.id);
        // An unknown user is found where runc finds it in dockerd: when the process starts.
        let process = self.exec_process(&rec, &entry.spec).map_err(|e| match e {
            ContainerError::Invalid(m) => ContainerError::StartFailed {
                message: format!(
                    "OCI runtime exec failed: exec failed: unable to start container process: {m}"
                ),
                exit_code: 126,
            },
            e => e,
        })?;
        let file = format!("exec-{}.json", &entry.id[..12]);
        fs::write(
            bundle.join(&file),
            serde_json::to_vec(&process).expect("serialisable"),
        )
        .map_err(io_err("writing the exec's process"))?;
        let mut conn = stdio::connect(&bundle).map_err(io_err(format!(
            "reaching the supervisor of container {}",
            rec.id
        )))?;
        stdio::send_request(
            &mut conn,
            &ShimRequest::Exec {
                id: entry.id.clone(),
                process: file,
                tty: entry.spec.tty,
                stdin: entry.spec.attach_stdin,
            },
        )
        .map_err(io_err("talking to the container's supervisor"))?;
        let line =
            stdio::read_line(&mut conn).map_err(io_err("reading the supervisor's answer"))?;
        match serde_json::from_str::<Ready>(&line) {
            Ok(Ready::Started { pid }) => {
                let writer = conn
                    .try_clone()
                    .map_err(io_err("talking to the container's supervisor"))?;
                let (tx, rx) = mpsc::channel::<Packet>();
                std::thread::spawn(move || {
                    let mut writer = writer;
                    for p in rx {
                        if writer.write_all(&p.encode()).is_err() {
                            break;
                        }
                    }
                });
                if let (true, Some((rows, cols))) = (entry.spec.tty, entry.spec.console_size) {
                    let _ = tx.send(Packet::Resize { rows, cols });
                }
                *entry.input.lock().expect("exec input") = Some(tx);
                let mut s = entry.state.lock().expect("exec state");
                s.running = true;
                s.pid = Some(pid);
                drop(s);
                Ok(ExecRun {
                    entry: entry.clone(),
                    reader: conn,
                })
            }
            Ok(Ready::Failed { message, exit_code }) => {
                Err(ContainerError::StartFailed { message, exit_code })
            }
            Err(_) => Err(ContainerError::Internal(format!(
                "the supervisor of container {} did not start the exec (answer {line:?})",
                rec.id
            ))),
        }
    }

    /// The OCI process of an exec: the container's, with the exec's command, environment
    /// (added to the container's; TERM=xterm with a TTY, as dockerd), directory, user, terminal
    /// and, with `privileged`, every capability.
    fn exec_process(&self, rec: &ContainerRecord, spec: &ExecSpec) -> Result<Process> {
        let bundle = self.bundle(&rec.id);
        let oci = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|e| ContainerError::Internal(format!("reading the container's spec: {e}")))?;
        let mut p = oci.process().clone().ok_or_else(|| {
            ContainerError::Internal("the container's spec has no process".into())
        })?;
        p.set_args(Some(spec.cmd.clone()));
        let mut env = p.env().clone().unwrap_or_default();
        if spec.tty {
            process::merge_env(&mut env, &["TERM=xterm".to_string()]);
        }
        process::merge_env(&mut env, &spec.env);
        p.set_env(Some(env));
        if let Some(w) = spec.working_dir.as_deref().filter(|w| !w.is_empty()) {
            p.set_cwd(w.into());
        }
        if let Some(u) = spec.user.as_deref().filter(|u| !u.is_empty()) {
            // The container's own layer first: users it added count.
            let mount: RootfsMount = fs::read(bundle.join(ROOTFS_FILE))
                .map_err(io_err("reading the container's rootfs description"))
                .and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| {
                        ContainerError::Internal(format!("reading {ROOTFS_FILE}: {e}"))
                    })
                })?;
            let mut layers = vec![mount.upper];
            layers.extend(mount.lowers);
            let read = |f| {
                rootfs::read_from_layers(&layers, f, super::MAX_ID_FILE)
                    .map_err(io_err(format!("reading /{f} of the container")))
                    .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
            };
            let (passwd, group) = (read("etc/passwd")?, read("etc/group")?);
            let user = process::resolve_user(u, passwd.as_deref(), group.as_deref())?;
            p.set_user(
                UserBuilder::default()
                    .uid(user.uid)
                    .gid(user.gid)
                    .additional_gids(user.additional_gids)
                    .build()
                    .map_err(|e| ContainerError::Internal(e.to_string()))?,
            );
        }
        p.set_terminal(Some(spec.tty));
        p.set_console_size(None);
        if let (true, Some((rows, cols))) = (spec.tty, spec.console_size) {
            p.set_console_size(Some(
                oci_spec::runtime::BoxBuilder::default()
                    .height(u64::from(rows))
                    .width(u64::from(cols))
                    .build()
                    .map_err(|e| ContainerError::Internal(e.to_string()))?,
            ));
        }
        if spec.privileged {
            let caps: Capabilities = spec::capabilities(true, &[], &[])?
                .iter()
                .filter_map(|c| c.parse::<Capability>().ok())
                .collect();
            p.set_capabilities(Some(
                LinuxCapabilitiesBuilder::default()
                    .bounding(caps.clone())
                    .effective(caps.clone())
                    .permitted(caps)
                    .inheritable(Capabilities::new())
                    .ambient(Capabilities::new())
                    .build()
                    .map_err(|e| ContainerError::Internal(e.to_string()))?,
            ));
        }
        Ok(p)
    }

    /// Sets the terminal size of a started exec instance.
    pub fn exec_resize(&self, id: &str, rows: u16, cols: u16) -> Result<()> {
        let entry = self.exec_entry(id)?;
        if !entry.state.lock().expect("exec state").started {
            return Err(ContainerError::Invalid(
                "exec process is not started".into(),
            ));
        }
        // One that already exited has nothing left to resize.
        entry.send(Packet::Resize { rows, cols });
        Ok(())
    }

    /// Sets the terminal size of a running container (nothing to do without a terminal).
    pub fn resize(&self, r: &ContainerRef, rows: u16, cols: u16) -> Result<()> {
        let rec = self.running_record(r)?;
        if !rec.spec.tty {
            return Ok(());
        }
        let mut conn = match stdio::connect(&self.bundle(&rec.id)) {
            Ok(c) => c,
            // The supervisor takes its socket away as soon as the container's process exits.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ContainerError::Conflict(format!(
                    "container {} is not running",
                    rec.id
                )))
            }
            Err(e) => {
                return Err(io_err(format!(
                    "reaching the supervisor of container {}",
                    rec.id
                ))(e))
            }
        };
        stdio::send_request(&mut conn, &ShimRequest::Resize { rows, cols })
            .map_err(io_err("talking to the container's supervisor"))?;
        let line =
            stdio::read_line(&mut conn).map_err(io_err("reading the supervisor's answer"))?;
        match serde_json::from_str::<stdio::ResizeReply>(&line) {
            Ok(stdio::ResizeReply { error: None }) => {
                self.emit(
                    &rec,
                    "resize",
                    &[("height", rows.to_string()), ("width", cols.to_string())],
                );
                Ok(())
            }
            Ok(stdio::ResizeReply { error: Some(e) }) => Err(ContainerError::Internal(format!(
                "resizing the terminal: {e}"
            ))),
            Err(_) => Err(ContainerError::Internal(format!(
                "the supervisor answered {line:?} to a resize"
            ))),
        }
    }

    /// Forwards an attached client's stdin to the container: to the run under way, or (as
    /// `docker run` attaches before it starts) to the next one. Packets sent before that run's
    /// supervisor answers are kept. `CloseStdin` closes the container's stdin only for
    /// `StdinOnce` containers; without `OpenStdin` the input is dropped.
    pub fn attach_stdin(self: &Arc<Self>, id: &str) -> Result<Sender<Packet>> {
        let rec = self.find(&ContainerRef(id.to_string()))?;
        let (tx, rx) = mpsc::channel::<Packet>();
        if !rec.spec.open_stdin {
            return Ok(tx);
        }
        let first = self.view(&rec.id);
        let svc = Arc::downgrade(self);
        std::thread::spawn(move || {
            let mut pending = VecDeque::new();
            let mut conn: Option<UnixStream> = None;
            let mut since_running: Option<Instant> = None;
            // When the client left (its attach may end as soon as it sent its last bytes and
            // closed), what it sent is still delivered if the run comes soon.
            let mut gone_since: Option<Instant> = None;
            // Until the run's supervisor answers, keep what comes and watch the run.
            while conn.is_none() {
                while gone_since.is_none() {
                    match rx.try_recv() {
                        Ok(p) => pending.push_back(p),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => gone_since = Some(Instant::now()),
                    }
                }
                if pending.is_empty() && gone_since.is_some()
                    || gone_since.is_some_and(|t| t.elapsed() > CONNECT_PATIENCE)
                {
                    return;
                }
                let Some(svc) = svc.upgrade() else { return };
                if svc.store.get(&rec.id).ok().flatten().is_none() {
                    return;
                }
                let v = svc.view(&rec.id);
                let ours = if first.running {
                    v.generation == first.generation
                } else {
                    v.generation > first.generation
                };
                if ours && !v.running {
                    return;
                }
                if !ours && first.running {
                    return;
                }
                if ours && v.running {
                    let since = *since_running.get_or_insert_with(Instant::now);
                    let connected = stdio::connect(&svc.bundle(&rec.id)).and_then(|mut c| {
                        stdio::send_request(&mut c, &ShimRequest::Stdin).map(|()| c)
                    });
                    match connected {
                        Ok(c) => conn = Some(c),
                        Err(_) if since.elapsed() > CONNECT_PATIENCE => return,
                        Err(_) => {}
                    }
                }
                drop(svc);
                if conn.is_none() {
                    std::thread::sleep(POLL);
                }
            }
            let mut conn = conn.expect("connected");
            let stdin_once = rec.spec.stdin_once;
            let packets = pending
                .into_iter()
                .map(Ok)
                .chain(std::iter::from_fn(|| rx.recv().ok().map(Ok::<Packet, ()>)));
            for p in packets.flatten() {
                let close = matches!(p, Packet::CloseStdin);
                if close && !stdin_once {
                    // The client is done; the container's stdin stays open for the next one.
                    return;
                }
                if conn.write_all(&p.encode()).is_err() || close {
                    return;
                }
            }
        });
        Ok(tx)
    }
}

/// An exec's command as dockerd names it in its events: the program, a space, the arguments.
fn exec_command(cmd: &[String]) -> String {
    match cmd.split_first() {
        Some((program, args)) => format!("{program} {}", args.join(" ")),
        None => String::new(),
    }
}
