//! Containers: records, OCI bundles over overlayfs, runs supervised by a detached shim, logs
//! and attach. See `docs/containers.md`.
//!
//! Layout under the data root:
//!
//! ```text
//! containers.redb                 records (id → request + merged process), names
//! containers/<id>/config.json     the OCI runtime spec
//! containers/<id>/rootfs.json     the overlay to mount (lowers top first, upper, work)
//! containers/<id>/rootfs/         the overlay mount point (mounted while the container runs)
//! containers/<id>/upper/, work/   the container's writable layer and overlayfs scratch
//! containers/<id>/hosts, hostname, resolv.conf   bind-mounted into the container
//! containers/<id>/state.json      the last run, written by its shim only
//! containers/<id>/<id>-json.log   stdout/stderr in Docker's json-file format
//! containers/<id>/shim.log        the supervisor's own diagnostics
//! containers/<id>/runtime.lock    flock'ed by the shim from before `create` until the runtime's
//!                                 delete (after the exit is saved; see shim.rs)
//! containers/<id>/exit.reserve    16 KiB the shim frees if its final state.json does not fit
//! containers/<id>/seccomp-capture where the shim is to keep crun's compiled filter
//! runtime/<runtime>/              the OCI runtime's --root
//! runtime/crun-seccomp/<key>.bpf  crun's compiled seccomp filters, by profile (seccomp_cache.rs)
//! ```

pub mod cgroup;
pub mod commit;
pub mod events;
pub mod exec;
pub mod export;
pub mod logs;
pub mod mounts;
pub mod names;
pub mod network;
mod ops;
pub mod process;
pub mod restart;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod seccomp_cache;
pub mod shim;
pub mod spec;
pub mod stdio;
pub mod store;
pub mod top;
pub mod volumes;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use berth_proto::{
    ContainerInfo, ContainerRef, ContainerSpec, ContainerState, ContainerStatus, Error, ErrorCode,
    ImageSelector, LogFrame, LogLimits, LogsRequest, WaitCondition,
};

use crate::digest::Digest;
use crate::images::ImageService;
use process::{ImageConfig, ProcessError};
use rootfs::RootfsMount;
use runtime::{parse_signal, Runtime, RuntimeError};
use shim::{Phase, Ready, RunState, ShimArgs};
use spec::SpecError;
use store::{ContainerRecord, ContainerStore, StoreError};

/// How often waits, stops and log followers look at a container's state file.
// State files are small and local: polling them often costs little and keeps `run` snappy.
const POLL: Duration = Duration::from_millis(10);
/// The first pause of a waiter after the run it waits on changed.
const POLL_QUICK: Duration = Duration::from_millis(1);
/// How often the auto-remove monitor looks.
const MONITOR: Duration = Duration::from_millis(200);
/// passwd and group files larger than this are refused.
const MAX_ID_FILE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// the reference matches no container
    #[error("No such container: {0}")]
    NotFound(String),
    /// the id matches no exec instance
    #[error("No such exec instance: {0}")]
    ExecNotFound(String),
    /// the name is taken
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse { name: String, id: String },
    /// the request conflicts with the container's state
    #[error("{0}")]
    Conflict(String),
    /// the request is invalid
    #[error("{0}")]
    Invalid(String),
    /// not supported yet
    #[error("{0}")]
    Unsupported(String),
    /// the runtime could not start the process
    #[error("{message}")]
    StartFailed { message: String, exit_code: i64 },
    /// an i/o step failed
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// the record store failed
    #[error(transparent)]
    Store(#[from] StoreError),
    /// the OCI runtime failed
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// the image service answered with an error
    #[error(transparent)]
    Image(#[from] Error),
    /// a volume could not be made, found or removed
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    /// something that should not happen
    #[error("{0}")]
    Internal(String),
}

impl From<ContainerError> for Error {
    fn from(e: ContainerError) -> Error {
        if let ContainerError::Volume(v) = e {
            return v.into();
        }
        let code = match &e {
            ContainerError::NotFound(_) | ContainerError::ExecNotFound(_) => ErrorCode::NotFound,
            ContainerError::NameInUse { .. } | ContainerError::Conflict(_) => ErrorCode::Conflict,
            ContainerError::Invalid(_) => ErrorCode::InvalidArgument,
            ContainerError::Unsupported(_) => ErrorCode::Unsupported,
            ContainerError::StartFailed { exit_code, .. }
                if *exit_code == 126 || *exit_code == 127 =>
            {
                ErrorCode::InvalidArgument
            }
            ContainerError::Image(e) => return e.clone(),
            _ => ErrorCode::Internal,
        };
        Error::new(code, e.to_string())
    }
}

impl From<ProcessError> for ContainerError {
    fn from(e: ProcessError) -> Self {
        ContainerError::Invalid(e.to_string())
    }
}

impl From<SpecError> for ContainerError {
    fn from(e: SpecError) -> Self {
        match e {
            SpecError::Network(_) => ContainerError::Unsupported(e.to_string()),
            SpecError::Oci(_) => ContainerError::Internal(e.to_string()),
            _ => ContainerError::Invalid(e.to_string()),
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerError {
    let context = context.into();
    move |source| ContainerError::Io { context, source }
}

type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// What the core sees of a container's current run.
#[derive(Debug, Clone, PartialEq)]
struct RunView {
    generation: u64,
    running: bool,
    state: ContainerState,
}

pub struct ContainerService {
    data_root: PathBuf,
    dir: PathBuf,
    store: ContainerStore,
    shim_binary: PathBuf,
    default_runtime: String,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// The last exit of removed containers, for waits on "removed".
    removed: Mutex<HashMap<String, (i64, Option<String>)>>,
    /// Exec instances (`exec.rs`), by id; kept until their container is removed.
    execs: Mutex<HashMap<String, Arc<exec::ExecEntry>>>,
    /// The bridge network (`network.rs`, `crate::net`).
    network: crate::net::Network,
    /// Held while an address is chosen and claimed.
    net_lock: Mutex<()>,
    /// Restarts the monitor has scheduled (`restart.rs`): container id → when.
    restarts: Mutex<HashMap<String, Instant>>,
    /// The volumes containers mount (`crate::volume`, `volumes.rs`).
    volumes: crate::volume::VolumeStore,
    /// The event log (`crate::events`; container events in `events.rs`).
    events: Arc<crate::events::EventLog>,
    /// The last run whose end was reported, by container (`events.rs`), and the lock that
    /// makes each report happen once.
    exits_reported: Mutex<HashMap<String, u64>>,
    reporting: Mutex<()>,
}

impl ContainerService {
    /// Opens the container records under `data_root`; `shim_binary` is the `berth-core` binary
    /// that supervises containers. Starts the auto-remove monitor.
    pub fn open(data_root: &Path, shim_binary: PathBuf) -> Result<Arc<ContainerService>> {
        Self::open_with_network(
            data_root,
            shim_binary,
            crate::net::NetworkConfig::dedicated(data_root),
        )
    }

    /// As [`ContainerService::open`], with the bridge network where `network` says.
    pub fn open_with_network(
        data_root: &Path,
        shim_binary: PathBuf,
        network: crate::net::NetworkConfig,
    ) -> Result<Arc<ContainerService>> {
        let dir = data_root.join("containers");
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let db = data_root.join("containers.redb");
        // A service just dropped (a core "restart" in one process) may still be closing.
        let mut tries = 0;
        let store = loop {
            match ContainerStore::open(&db) {
                Ok(s) => break s,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("opening {}: {e}; retrying", db.display());
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let svc = Arc::new(ContainerService {
            data_root: data_root.to_path_buf(),
            dir,
            store,
            shim_binary,
            default_runtime: runtime::choose(),
            locks: Mutex::new(HashMap::new()),
            removed: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            network: crate::net::Network::new(network),
            net_lock: Mutex::new(()),
            restarts: Mutex::new(HashMap::new()),
            volumes: crate::volume::VolumeStore::open(data_root)?,
            events: Arc::new(crate::events::EventLog::open(data_root)),
            exits_reported: Mutex::new(HashMap::new()),
            reporting: Mutex::new(()),
        });
        svc.remove_orphan_bundles();
        svc.adopt_exit_records();
        let weak = Arc::downgrade(&svc);
        std::thread::Builder::new()
            .name("auto-remove".into())
            .spawn(move || monitor(weak))
            .map_err(io_err("starting the auto-remove monitor"))?;
        Ok(svc)
    }

    /// The runtime new containers get.
    pub fn default_runtime(&self) -> &str {
        &self.default_runtime
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn runtime(&self, name: &str) -> Runtime {
        Runtime::new(name, &self.data_root)
    }

    fn lock(&self, id: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .expect("locks")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Finds a container by full id, name (with or without '/'), or unique id prefix.
    pub fn find(&self, r: &ContainerRef) -> Result<ContainerRecord> {
        let s = r.0.as_str();
        if s.is_empty() {
            return Err(ContainerError::NotFound(s.into()));
        }
        if let Some(rec) = self.store.get(s)? {
            return Ok(rec);
        }
        let name = s.strip_prefix('/').unwrap_or(s);
        if let Some(id) = self.store.id_by_name(name)? {
            if let Some(rec) = self.store.get(&id)? {
                return Ok(rec);
            }
        }
        if s.bytes().all(|b| b.is_ascii_hexdigit()) {
            let p = s.to_ascii_lowercase();
            let hits: Vec<String> = self
                .store
                .ids()?
                .into_iter()
                .filter(|id| id.starts_with(&p))
                .collect();
            match hits.len() {
                0 => {}
                1 => {
                    if let Some(rec) = self.store.get(&hits[0])? {
                        return Ok(rec);
                    }
                }
                _ => {
                    return Err(ContainerError::Invalid(format!(
                        "multiple IDs found with provided prefix: {s}"
                    )))
                }
            }
        }
        Err(ContainerError::NotFound(s.into()))
    }

    /// Creates a container: merges the image config, checks everything a start would refuse
    /// that can be known now, stores the record, then writes the bundle.
    pub fn create(
        &self,
        images: &ImageService,
        mut spec: ContainerSpec,
    ) -> Result<(String, Vec<String>)> {
        let mut warnings = Vec::new();
        let image = images.inspect(&ImageSelector {
            name: None,
            id_prefix: Some(spec.image_id.clone()),
        })?;
        let image_config = ImageConfig::from_image_json(&image.config)
            .map_err(|e| ContainerError::Invalid(format!("the image config is invalid: {e}")))?;
        let id = hex::encode(rand::random::<[u8; 32]>());
        let network = spec.host.network_mode.clone();
        let default_hostname = if network == "host" {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| id[..12].to_string())
        } else {
            id[..12].to_string()
        };
        let process = process::merge(&image_config, &spec, &default_hostname)?;
        let mut labels = image_config.labels.clone().unwrap_or_default();
        labels.extend(std::mem::take(&mut spec.labels));
        spec.labels = labels;

        let layers: Vec<String> = image.layers.iter().map(|l| l.chain_id.clone()).collect();
        let mut lowers = Vec::new();
        for chain in layers.iter().rev() {
            let d = Digest::parse(chain)
                .map_err(|e| ContainerError::Internal(format!("image layer {chain}: {e}")))?;
            lowers.push(images.snapshots.path(&d));
        }
        let read = |p| {
            rootfs::read_from_layers(&lowers, p, MAX_ID_FILE)
                .map_err(io_err(format!("reading /{p} of the image")))
                .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        let (passwd, group) = (read("etc/passwd")?, read("etc/group")?);
        let user = process::resolve_user(&process.user, passwd.as_deref(), group.as_deref())?;

        let name = match spec.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => names::normalise(n).map_err(ContainerError::Invalid)?,
            None => self.free_name()?,
        };
        spec.name = Some(name.clone());
        let swap_limit = cgroup::swap_limit_supported();
        if spec.host.memory > 0 && spec.host.memory_swap == 0 && swap_limit {
            // As dockerd records it: as much swap as memory unless told otherwise.
            spec.host.memory_swap = spec.host.memory.saturating_mul(2);
        }
        let mounts = self.plan_mounts(&spec, &image.config)?;
        // As dockerd: the image's Volumes are part of the container's Config.Volumes.
        for v in volumes::image_volumes(&image.config) {
            if !spec.volumes.contains(&v) {
                spec.volumes.push(v);
            }
        }
        let record = ContainerRecord {
            id: id.clone(),
            name,
            spec,
            process,
            created: logs::now_rfc3339(),
            runtime: self.default_runtime.clone(),
            layers,
            mounts,
        };
        let bundle = self.bundle(&id);
        let (mut oci, spec_warnings) = spec::build(&spec::SpecInput {
            record: &record,
            user: &user,
            bundle: &bundle,
            nofile: nofile_limit(),
            cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            swap_limit,
        })?;
        warnings.extend(spec_warnings);
        let seccomp_capture = self.use_kept_seccomp(&record, &mut oci);

        // The bundle first, the record last: a create that fails half-way (a full disk) leaves
        // only a directory to delete, which frees space rather than needing it as a database
        // write would. A crash in between leaves a bundle without a record, removed at open.
        // The volumes are made (and cannot be removed) under the volume lock until the record
        // that uses them is stored.
        let volume_lock = self.volumes.lock();
        let mut made_volumes = Vec::new();
        let written = self
            .create_volumes(&record.mounts, &mut made_volumes)
            .and_then(|()| {
                self.write_bundle(&record, &bundle, &lowers, &oci, seccomp_capture.as_deref())
            })
            .and_then(|()| {
                self.store.insert(&record).map_err(|e| match e {
                    StoreError::NameInUse { name, id } => ContainerError::NameInUse { name, id },
                    e => e.into(),
                })
            });
        drop(volume_lock);
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&bundle);
            self.remove_unused_volumes(&made_volumes);
            return Err(e);
        }
        self.exits_start_at_zero(&id);
        self.emit(&record, "create", &[]);
        Ok((id, warnings))
    }

    /// Deletes bundle directories that have no record: creates cut short by a crash between
    /// writing the bundle and the record.
    fn remove_orphan_bundles(&self) {
        let Ok(ids) = self.store.ids() else { return };
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_id = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if is_id && !ids.iter().any(|id| id == name) {
                tracing::info!(
                    "removing {}: a create that never finished",
                    entry.path().display()
                );
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    fn free_name(&self) -> Result<String> {
        for attempt in 0..20 {
            let n = names::generate(attempt / 5);
            if self.store.id_by_name(&n)?.is_none() {
                return Ok(n);
            }
        }
        Err(ContainerError::Internal(
            "could not find a free container name".into(),
        ))
    }

    /// crun with a seccomp filter: the program compiled for an earlier container with the same
    /// profile goes into the spec (`seccomp_cache.rs`); without one, the path the shim is to
    /// keep this create's compilation at.
    fn use_kept_seccomp(
        &self,
        rec: &ContainerRecord,
        oci: &mut oci_spec::runtime::Spec,
    ) -> Option<PathBuf> {
        if rec.runtime != "crun" {
            return None;
        }
        let profile = oci.linux().as_ref()?.seccomp().as_ref()?;
        let entry = seccomp_cache::SeccompCache::new(&self.data_root).entry(profile);
        let Some(program) = seccomp_cache::SeccompCache::annotation(&entry) else {
            return Some(entry);
        };
        let mut annotations = oci.annotations().clone().unwrap_or_default();
        annotations.insert(seccomp_cache::ANNOTATION.into(), program);
        oci.set_annotations(Some(annotations));
        None
    }

    fn write_bundle(
        &self,
        rec: &ContainerRecord,
        bundle: &Path,
        lowers: &[PathBuf],
        oci: &oci_spec::runtime::Spec,
        seccomp_capture: Option<&Path>,
    ) -> Result<()> {
        let ctx = |what: &str| format!("writing {what} of container {}", rec.id);
        for d in ["upper", "work", "rootfs"] {
            fs::create_dir_all(bundle.join(d)).map_err(io_err(ctx(d)))?;
        }
        let host_net = rec.spec.host.network_mode == "host";
        fs::write(
            bundle.join("hostname"),
            format!("{}\n", rec.process.hostname),
        )
        .map_err(io_err(ctx("hostname")))?;
        fs::write(bundle.join("hosts"), hosts_file(host_net)).map_err(io_err(ctx("hosts")))?;
        fs::write(bundle.join("resolv.conf"), resolv_conf(host_net))
            .map_err(io_err(ctx("resolv.conf")))?;
        self.write_mount_files(rec, bundle)?;
        let mount = RootfsMount {
            lowers: lowers.to_vec(),
            upper: bundle.join("upper"),
            work: bundle.join("work"),
            target: bundle.join("rootfs"),
        };
        fs::write(
            bundle.join(shim::ROOTFS_FILE),
            serde_json::to_vec_pretty(&mount).expect("serialisable"),
        )
        .map_err(io_err(ctx(shim::ROOTFS_FILE)))?;
        oci.save(bundle.join("config.json"))
            .map_err(|e| ContainerError::Internal(format!("{}: {e}", ctx("config.json"))))?;
        if let Some(entry) = seccomp_capture {
            fs::write(
                bundle.join(seccomp_cache::CAPTURE_FILE),
                entry.as_os_str().as_encoded_bytes(),
            )
            .map_err(io_err(ctx(seccomp_cache::CAPTURE_FILE)))?;
        }
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(shim::log_file(bundle, &rec.id))
            .map_err(io_err(ctx("the log file")))?;
        Ok(())
    }

    /// The current run of a container as the core sees it: the shim's state file, corrected
    /// when its supervisor is gone.
    fn view(&self, id: &str) -> RunView {
        let run = RunState::read(&self.bundle(id)).ok().flatten();
        let Some(run) = run else {
            return RunView {
                generation: 0,
                running: false,
                state: ContainerState {
                    status: ContainerStatus::Created,
                    pid: None,
                    exit_code: None,
                    started_at: None,
                    finished_at: None,
                    error: None,
                    restart_count: 0,
                    oom_killed: false,
                },
            };
        };
        let mut state = ContainerState {
            status: ContainerStatus::Exited,
            pid: None,
            exit_code: run.exit_code,
            started_at: run.started_at.clone(),
            finished_at: run.finished_at.clone(),
            error: run.error.clone(),
            restart_count: 0,
            oom_killed: run.oom_killed,
        };
        let mut running = false;
        match run.phase {
            Phase::Starting | Phase::Running => {
                let shim_alive = process_alive(run.shim_pid, Some(id));
                let init_alive = run.pid.is_some_and(|p| process_alive(p, None));
                if shim_alive || init_alive {
                    running = true;
                    state.status = ContainerStatus::Running;
                    state.pid = run.pid;
                    state.exit_code = Some(0);
                    state.finished_at = None;
                    if !shim_alive {
                        state.error = Some(
                            "the container's supervisor is gone: its output is no longer logged"
                                .into(),
                        );
                    }
                } else {
                    state.exit_code = Some(255);
                    state.error = Some(
                        "the container's supervisor is gone (the host or core restarted while it ran); its exit status is unknown"
                            .into(),
                    );
                }
            }
            Phase::Exited => {}
            Phase::StartFailed => {
                if run.started_at.is_none() {
                    state.status = ContainerStatus::Created;
                }
            }
        }
        RunView {
            generation: run.generation,
            running,
            state,
        }
    }

    fn info(&self, rec: ContainerRecord) -> ContainerInfo {
        let view = self.view(&rec.id);
        let mut args = rec.process.args.clone();
        let path = if args.is_empty() {
            String::new()
        } else {
            args.remove(0)
        };
        let network = self.network_info(&rec.id, view.running);
        let ports = self.published_ports(&rec.id, view.running);
        let mut state = view.state;
        if view.running && self.frozen(state.pid) {
            state.status = ContainerStatus::Paused;
        }
        state.restart_count = self.restart_state(&rec.id).count;
        if !view.running && self.restart_pending(&rec.id) {
            state.status = ContainerStatus::Restarting;
        }
        ContainerInfo {
            log_path: shim::log_file(&self.bundle(&rec.id), &rec.id)
                .display()
                .to_string(),
            id: rec.id,
            name: rec.name,
            spec: rec.spec,
            path,
            args,
            env: rec.process.env,
            working_dir: rec.process.working_dir,
            user: rec.process.user,
            created: rec.created,
            network,
            ports,
            state,
            runtime: rec.runtime,
            mounts: rec.mounts.iter().map(|m| m.point()).collect(),
        }
    }

    pub fn inspect(&self, r: &ContainerRef) -> Result<ContainerInfo> {
        Ok(self.info(self.find(r)?))
    }

    /// All containers (or the running ones), newest first.
    pub fn list(&self, all: bool) -> Result<Vec<ContainerInfo>> {
        let mut out: Vec<ContainerInfo> = self
            .store
            .all()?
            .into_iter()
            .map(|r| self.info(r))
            .filter(|i| {
                all || matches!(
                    i.state.status,
                    ContainerStatus::Running | ContainerStatus::Paused
                )
            })
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created));
        Ok(out)
    }

    /// Starts a container through a new supervisor and returns once the process runs (or its
    /// start failed). Starting a running container does nothing. A start by the user: the
    /// restart count starts again.
    pub fn start(&self, r: &ContainerRef) -> Result<()> {
        self.start_run(r, false)
    }

    /// [`ContainerService::start`] without the user's part; `by_policy`: the restart monitor's
    /// start, which a stop by the user (recorded under the same lock) cancels.
    fn start_run(&self, r: &ContainerRef, by_policy: bool) -> Result<()> {
        let rec = self.find(r)?;
        let lock = self.lock(&rec.id);
        let _guard = lock.lock().expect("container lock");
        let view = self.view(&rec.id);
        if view.running {
            return Ok(());
        }
        // The run before this one ended: its `die` comes before this start.
        self.report_exit(&rec);
        // The restart record changes under the container's lock only.
        if !by_policy {
            self.user_started(&rec.id);
        } else if !self.count_restart(&rec.id) {
            return Ok(());
        }
        let bundle = self.bundle(&rec.id);
        let runtime = self.runtime(&rec.runtime);
        let log_limits =
            LogLimits::from_opts(&rec.spec.host.log_opts).unwrap_or(LogLimits::DEFAULT);
        fs::create_dir_all(&runtime.root)
            .map_err(io_err(format!("creating {}", runtime.root.display())))?;
        let args = ShimArgs {
            id: rec.id.clone(),
            bundle: bundle.clone(),
            runtime: rec.runtime.clone(),
            runtime_root: runtime.root.clone(),
            generation: view.generation + 1,
            detached: false,
            stdin: rec.spec.open_stdin,
            tty: rec.spec.tty,
            // Checked when the container was created; a record from before stays capped.
            log_max_size: log_limits.max_size,
            log_max_files: log_limits.max_files,
        };
        let began = Instant::now();
        self.attach_network(&rec)?;
        let network = began.elapsed();
        let started = self.run_shim(&args, &bundle);
        tracing::debug!(container = %rec.id, ?network, total = ?began.elapsed(), "start");
        match &started {
            Ok(()) => self.emit(&rec, "start", &[]),
            Err(_) => self.detach_network(&rec.id),
        }
        started
    }

    /// Runs the supervisor for one start and waits for its answer.
    fn run_shim(&self, args: &ShimArgs, bundle: &Path) -> Result<()> {
        let shim_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(bundle.join("shim.log"))
            .map_err(io_err("opening the supervisor's log"))?;
        // The supervisor outlives the core and must not be its child (nobody would reap it):
        // the forked child forks again and exits at once, the grandchild starts a session of
        // its own and execs the supervisor. One exec per start, not two (the `shim` command's
        // own detaching), which is ~5 ms of a start here.
        let detached = ShimArgs {
            detached: true,
            ..args.clone()
        };
        let mut cmd = Command::new(&self.shim_binary);
        cmd.args(detached.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log);
        // SAFETY: between fork and exec the closure makes only async-signal-safe calls (fork,
        // _exit, setsid) and touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                match libc::fork() {
                    -1 => return Err(io::Error::last_os_error()),
                    0 => {}
                    _ => libc::_exit(0),
                }
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io_err(format!(
            "starting the supervisor {}",
            self.shim_binary.display()
        )))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let status = child.wait().map_err(io_err("waiting for the supervisor"))?;
        let ready = shim::read_ready(stdout);
        match ready {
            Some(Ready::Started { .. }) => Ok(()),
            Some(Ready::Failed { message, exit_code }) => {
                Err(ContainerError::StartFailed { message, exit_code })
            }
            None => Err(ContainerError::Internal(format!(
                "the container's supervisor ({status}) exited without starting it; see {}",
                bundle.join("shim.log").display()
            ))),
        }
    }

    /// Waits until the container's run is over, up to `timeout` (None: for ever).
    fn wait_exit(&self, id: &str, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !self.view(id).running {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            std::thread::sleep(POLL);
        }
    }

    fn signal(&self, rec: &ContainerRecord, sig: i32) -> Result<()> {
        match self.runtime(&rec.runtime).kill(&rec.id, sig) {
            Ok(()) => {
                self.emit(rec, "kill", &[("signal", sig.to_string())]);
                self.thaw_after_signal(rec);
                Ok(())
            }
            // It exited between our look and the signal (its supervisor may still be finishing
            // the run): the caller waits for the exit anyway.
            Err(_) if self.wait_exit(&rec.id, Some(Duration::from_secs(5))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn kill_and_wait(&self, rec: &ContainerRecord) -> Result<()> {
        self.signal(rec, libc::SIGKILL)?;
        if self.wait_exit(&rec.id, Some(Duration::from_secs(30))) {
            self.report_exit(rec);
            self.detach_network(&rec.id);
            Ok(())
        } else {
            Err(ContainerError::Internal(format!(
                "container {} did not exit after SIGKILL",
                rec.id
            )))
        }
    }

    /// Sends the stop signal, then SIGKILL after `timeout` seconds (negative: wait for ever).
    pub fn stop(&self, r: &ContainerRef, signal: Option<&str>, timeout: Option<i64>) -> Result<()> {
        let rec = self.find(r)?;
        let lock = self.lock(&rec.id);
        let _guard = lock.lock().expect("container lock");
        // Before the signal: the monitor must never take this exit for one to restart after.
        self.user_stopped(&rec.id);
        if !self.view(&rec.id).running {
            return Ok(());
        }
        let sig = parse_signal(
            signal
                .filter(|s| !s.is_empty())
                .unwrap_or(&rec.process.stop_signal),
        )
        .map_err(ContainerError::Invalid)?;
        let timeout = timeout.or(rec.spec.stop_timeout).unwrap_or(10);
        self.signal(&rec, sig)?;
        let limit = (timeout >= 0).then(|| Duration::from_secs(timeout as u64));
        if self.wait_exit(&rec.id, limit) {
            self.report_exit(&rec);
            self.detach_network(&rec.id);
        } else {
            tracing::info!(
                "container {} did not exit within {timeout}s of signal {sig}: killing it",
                rec.id
            );
            self.kill_and_wait(&rec)?;
        }
        self.emit(&rec, "stop", &[]);
        Ok(())
    }

    pub fn kill(&self, r: &ContainerRef, signal: &str) -> Result<()> {
        let rec = self.find(r)?;
        let sig = parse_signal(if signal.is_empty() { "SIGKILL" } else { signal })
            .map_err(ContainerError::Invalid)?;
        if !self.view(&rec.id).running {
            return Err(ContainerError::Conflict(format!(
                "Cannot kill container: {}: Container {} is not running",
                r.0, rec.id
            )));
        }
        {
            let lock = self.lock(&rec.id);
            let _guard = lock.lock().expect("container lock");
            self.user_stopped(&rec.id);
        }
        self.signal(&rec, sig)
    }

    /// Blocks until `condition` holds; returns the exit code and error of the run that ended.
    pub fn wait(
        &self,
        r: &ContainerRef,
        condition: WaitCondition,
    ) -> Result<(i64, Option<String>)> {
        let rec = self.find(r)?;
        let id = rec.id.clone();
        let first = self.view(&id);
        let mut last = (
            first.state.exit_code.unwrap_or(0),
            first.state.error.clone(),
        );
        // Polled quickly right after the run changes (a short-lived container's exit then comes
        // soon), backing off to POLL while nothing happens.
        let mut seen = (first.running, first.generation);
        let mut pause = POLL_QUICK;
        loop {
            if self.store.get(&id)?.is_none() {
                let removed = self.removed.lock().expect("removed").get(&id).cloned();
                return Ok(removed.unwrap_or(last));
            }
            let v = self.view(&id);
            last = (v.state.exit_code.unwrap_or(0), v.state.error.clone());
            if (v.running, v.generation) != seen {
                seen = (v.running, v.generation);
                pause = POLL_QUICK;
            }
            let done = match condition {
                WaitCondition::NotRunning => !v.running,
                WaitCondition::NextExit => {
                    !v.running
                        && if first.running {
                            v.generation >= first.generation
                        } else {
                            v.generation > first.generation
                        }
                }
                WaitCondition::Removed => {
                    // `docker run --rm` waits here: remove at once rather than at the
                    // monitor's next round.
                    if v.generation > 0 && !v.running && rec.spec.host.auto_remove {
                        match self.remove_with_volumes(&ContainerRef(id.clone()), true, true) {
                            Ok(()) | Err(ContainerError::NotFound(_)) => {}
                            Err(e) => tracing::warn!("auto-removing container {id}: {e}"),
                        }
                        continue;
                    }
                    false
                }
            };
            if done {
                // The waiter (`docker run`) may look at the events next: the end is in them.
                self.report_exit(&rec);
                return Ok(last);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(POLL);
        }
    }

    /// Removes a container; a running one only with `force` (it is killed first).
    pub fn remove(&self, r: &ContainerRef, force: bool) -> Result<()> {
        self.remove_with_volumes(r, force, false)
    }

    /// [`ContainerService::remove`]; with `volumes` also its anonymous volumes that no other
    /// container uses (`docker rm -v`; auto-remove does it too, as dockerd).
    pub fn remove_with_volumes(&self, r: &ContainerRef, force: bool, volumes: bool) -> Result<()> {
        let rec = self.find(r)?;
        let lock = self.lock(&rec.id);
        let _guard = lock.lock().expect("container lock");
        // Another removal (`--rm`'s waiter and the monitor both remove) may have finished
        // while this one waited for the lock: it is gone, and its destroy was said once.
        if self.store.get(&rec.id)?.is_none() {
            return Err(ContainerError::NotFound(r.0.clone()));
        }
        if self.view(&rec.id).running {
            if !force {
                return Err(ContainerError::Conflict(format!(
                    "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                    rec.id
                )));
            }
            self.kill_and_wait(&rec)?;
        }
        // An end the monitor has not reported yet comes before the removal.
        self.report_exit(&rec);
        let bundle = self.bundle(&rec.id);
        self.detach_network(&rec.id);
        rootfs::unmount(&bundle.join("rootfs"))
            .map_err(io_err(format!("unmounting the rootfs of {}", rec.id)))?;
        // A shim that has just saved its exit deletes the runtime's state itself, after that:
        // `--rm` does not wait for it. Otherwise (a shim that died) it is done here.
        if !shim::runtime_state_pending(&bundle) {
            let _ = self.runtime(&rec.runtime).delete(&rec.id, true);
        }
        let last = self.view(&rec.id).state;
        match fs::remove_dir_all(&bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("deleting {}", bundle.display()))(e)),
        }
        // Before the record goes: a waiter returns as soon as it is gone (`docker run --rm`
        // then reads the events), and the destroy must already be there.
        self.emit(&rec, "destroy", &[]);
        self.removed
            .lock()
            .expect("removed")
            .insert(rec.id.clone(), (last.exit_code.unwrap_or(0), last.error));
        self.store.remove(&rec.id)?;
        self.locks.lock().expect("locks").remove(&rec.id);
        {
            // Not while the monitor is between looking at this container and reporting it.
            let _reporting = self.reporting.lock().expect("reporting");
            self.exits_reported.lock().expect("exits").remove(&rec.id);
        }
        self.forget_execs(&rec.id);
        if volumes {
            self.remove_anonymous_volumes(&rec.mounts);
        }
        Ok(())
    }

    /// Streams a container's logs to `sink` (which returns false to stop): what is there
    /// (filtered, tail), then with `follow` what comes while the container runs.
    pub fn logs(
        &self,
        id: &str,
        req: &LogsRequest,
        sink: &mut dyn FnMut(LogFrame) -> bool,
    ) -> Result<()> {
        let path = shim::log_file(&self.bundle(id), id);
        let mut cursor = match logs::LogCursor::open(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("opening the log")(e)),
        };
        let keep = |f: &LogFrame| logs::selected(f, req.stdout, req.stderr, req.since, req.until);
        let follow = req.follow && self.view(id).running;
        let mut frames: Vec<LogFrame> = cursor
            .read_new()
            .map_err(io_err("reading the log"))?
            .into_iter()
            .filter(keep)
            .collect();
        if let Some(n) = req.tail {
            let n = n as usize;
            if frames.len() > n {
                frames.drain(..frames.len() - n);
            }
        }
        for f in frames {
            if !sink(f) {
                return Ok(());
            }
        }
        if !follow {
            return Ok(());
        }
        loop {
            let running = self.view(id).running;
            for f in cursor.read_new().map_err(io_err("reading the log"))? {
                if keep(&f) && !sink(f) {
                    return Ok(());
                }
            }
            let past_until = req.until > 0.0 && unix_now() > req.until;
            if !running || past_until {
                return Ok(());
            }
            std::thread::sleep(POLL * 2);
        }
    }

    /// Streams a container's output from now on (with `replay`, from the start of its log)
    /// until the run under way ends, or the next run when none is (`docker run` attaches before
    /// it starts). `sink` returns false to stop.
    /// `ready` is called once the starting point is taken.
    pub fn attach(
        &self,
        id: &str,
        replay: bool,
        sink: &mut dyn FnMut(LogFrame) -> bool,
        ready: &mut dyn FnMut(),
    ) -> Result<()> {
        let first = self.view(id);
        let path = shim::log_file(&self.bundle(id), id);
        let mut cursor = if replay {
            logs::LogCursor::open(&path)
        } else {
            logs::LogCursor::open_at_end(&path)
        }
        .map_err(io_err("opening the log"))?;
        ready();
        loop {
            let done = match self.store.get(id)? {
                None => true,
                Some(_) => {
                    let v = self.view(id);
                    !v.running && (first.running || v.generation > first.generation)
                }
            };
            for f in cursor.read_new().map_err(io_err("reading the log"))? {
                if !sink(f) {
                    return Ok(());
                }
            }
            if done {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Removes exited containers created with auto-remove.
    fn auto_remove(&self) {
        let Ok(records) = self.store.all() else {
            return;
        };
        for rec in records.iter().filter(|r| r.spec.host.auto_remove) {
            let v = self.view(&rec.id);
            if v.generation > 0 && !v.running {
                match self.remove_with_volumes(&ContainerRef(rec.id.clone()), true, true) {
                    Ok(()) | Err(ContainerError::NotFound(_)) => {}
                    Err(e) => tracing::warn!("auto-removing container {}: {e}", rec.id),
                }
            }
        }
    }
}

fn monitor(svc: Weak<ContainerService>) {
    loop {
        std::thread::sleep(MONITOR);
        let Some(svc) = svc.upgrade() else {
            return;
        };
        svc.report_exits();
        svc.auto_remove();
        svc.sweep_network();
        svc.apply_restart_policies();
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whether `pid` is a live process (not a zombie); with `marker`, also that its command line
/// mentions it (a supervisor names its container), so a reused pid is not taken for ours.
fn process_alive(pid: u32, marker: Option<&str>) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    match marker {
        None => true,
        Some(m) => fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == m.as_bytes())),
    }
}

/// RLIMIT_NOFILE for containers: Docker's 1048576, or our own hard limit when lower (raising
/// it needs CAP_SYS_RESOURCE).
fn nofile_limit() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, h)| h)
        .unwrap_or(1024);
    hard.min(1 << 20)
}

fn hosts_file(host_net: bool) -> String {
    if host_net {
        if let Ok(h) = fs::read_to_string("/etc/hosts") {
            return h;
        }
    }
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n".into()
}

/// The host's resolv.conf; outside the host's network, without loopback name servers (they
/// are unreachable from the container), and Docker's public defaults when none is left.
fn resolv_conf(host_net: bool) -> String {
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if host_net {
        return host;
    }
    let is_loopback = |l: &str| {
        let mut w = l.split_whitespace();
        w.next() == Some("nameserver")
            && w.next()
                .is_some_and(|a| a.starts_with("127.") || a == "::1")
    };
    let mut out: String = host
        .lines()
        .filter(|l| !is_loopback(l))
        .map(|l| format!("{l}\n"))
        .collect();
    if !out
        .lines()
        .any(|l| l.trim_start().starts_with("nameserver"))
    {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes() {
        let e: Error = ContainerError::NameInUse {
            name: "web".into(),
            id: "abc".into(),
        }
        .into();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert_eq!(
            e.message,
            "Conflict. The container name \"/web\" is already in use by container \"abc\". You have to remove (or rename) that container to be able to reuse that name."
        );
        let e: Error = ContainerError::NotFound("x".into()).into();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NotFound, "No such container: x")
        );
        let e: Error = ContainerError::StartFailed {
            message: "m".into(),
            exit_code: 127,
        }
        .into();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn our_own_process_is_alive() {
        assert!(process_alive(std::process::id(), None));
        assert!(!process_alive(0, None));
        assert!(!process_alive(
            std::process::id(),
            Some("no-such-marker-arg")
        ));
    }
}
