//! The QEMU backend (Linux hosts; macOS with HVF later): boots the guest built by `vm-image/build`
//! and reaches `berth-core` inside it over vsock.
//!
//! Two processes per machine, both children of berthd in their own process group and killed by
//! the kernel if berthd dies (`PR_SET_PDEATHSIG`):
//! * `vhost-device-vsock`, the vsock device as a vhost-user backend. It exposes the guest's
//!   vsock ports as one Unix socket with the hybrid `CONNECT <port>` handshake
//!   ([`hybrid_vsock`]), so no `/dev/vhost-vsock` is needed on the host.
//! * `qemu-system-*`, booting the kernel and initramfs directly, with a raw data disk, user-mode
//!   NAT, the serial console in a file, and QMP on a Unix socket for [`VmBackend::stop`].
//!
//! Every file of a running machine lives in [`QemuConfig::state_dir`]; see docs/vm.md.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::{CORE_PORT, READY_PORT};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

use crate::{guest, BoxFuture, BoxStream, GuestListener, VmBackend, VmError, VmState};

pub mod accel;
mod command;
pub mod hybrid_vsock;
mod qmp;

pub use accel::{AccelChoice, Accelerator};

const BACKEND: &str = "qemu";
/// The guest's vsock context id; one machine per helper, so any valid id (≥ 3) does.
const GUEST_CID: u32 = 3;

/// The guest's architecture, named as Debian and `vm-image/build` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestArch {
    Amd64,
    Arm64,
}

impl GuestArch {
    /// The host's own architecture, if it can be a guest's.
    pub fn host() -> Option<GuestArch> {
        if cfg!(target_arch = "x86_64") {
            Some(GuestArch::Amd64)
        } else if cfg!(target_arch = "aarch64") {
            Some(GuestArch::Arm64)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "amd64",
            GuestArch::Arm64 => "arm64",
        }
    }

    /// The QEMU program that emulates this architecture.
    pub fn qemu_program(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "qemu-system-x86_64",
            GuestArch::Arm64 => "qemu-system-aarch64",
        }
    }
}

impl std::fmt::Display for GuestArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub arch: GuestArch,
    /// `bzImage` (amd64) or `Image` (arm64) from `vm-image/build`.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The raw data disk (the core's store); created sparse at `data_disk_size` when missing.
    pub data_disk: PathBuf,
    pub data_disk_size: u64,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Sockets, logs and the console of the running machine.
    pub state_dir: PathBuf,
    /// The QEMU program; default: [`GuestArch::qemu_program`] from `PATH`.
    pub qemu: Option<PathBuf>,
    /// The `vhost-device-vsock` program (`cargo install vhost-device-vsock`).
    pub vsock_helper: PathBuf,
    /// `None`: chosen by [`accel::detect`].
    pub accelerator: Option<Accelerator>,
    /// Boot to the core's handshake.
    pub start_timeout: Duration,
    /// How long the guest gets to stop after the ACPI power button before QEMU is told to quit.
    pub stop_timeout: Duration,
    /// Appended to the kernel command line (e.g. `berth.log=debug`).
    pub kernel_args: Vec<String>,
}

impl QemuConfig {
    /// Defaults: 2 CPUs, 1 GiB, a 64 GiB sparse disk in `state_dir`, 60 s to boot (TCG-safe).
    pub fn new(
        arch: GuestArch,
        kernel: PathBuf,
        initramfs: PathBuf,
        state_dir: PathBuf,
    ) -> QemuConfig {
        QemuConfig {
            arch,
            kernel,
            initramfs,
            data_disk: state_dir.join("data.raw"),
            data_disk_size: guest::DEFAULT_DATA_DISK_SIZE,
            cpus: 2,
            memory_mib: 1024,
            state_dir,
            qemu: None,
            vsock_helper: PathBuf::from("vhost-device-vsock"),
            accelerator: None,
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            kernel_args: Vec::new(),
        }
    }
}

/// The files of a machine in its state directory.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// QEMU ↔ helper (vhost-user control).
    pub vhost_socket: PathBuf,
    /// Host ↔ guest hybrid vsock (the helper's `uds-path`).
    pub vsock_socket: PathBuf,
    pub qmp_socket: PathBuf,
    /// The guest's serial console.
    pub console_log: PathBuf,
    /// QEMU's own stdout and stderr.
    pub qemu_log: PathBuf,
    pub helper_log: PathBuf,
}

impl StatePaths {
    pub fn new(dir: &Path) -> StatePaths {
        StatePaths {
            vhost_socket: dir.join("vhost.sock"),
            vsock_socket: dir.join("vsock.sock"),
            qmp_socket: dir.join("qmp.sock"),
            console_log: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            helper_log: dir.join("vsock-helper.log"),
        }
    }
}

/// How the last boot went, for `berth status` and `scripts/bench boot`.
#[derive(Debug, Clone)]
pub struct BootReport {
    pub accelerator: AccelChoice,
    /// From spawning QEMU to the core's announcement on [`READY_PORT`].
    pub to_ready: Duration,
    /// From spawning QEMU to the core's answer to the hello.
    pub to_handshake: Duration,
}

pub struct QemuBackend {
    config: QemuConfig,
    /// CPUs, memory and disk for the next start (`set_resources`).
    resources: guest::ResourceCell,
    paths: StatePaths,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    state: VmState,
    qemu: Option<Child>,
    helper: Option<Child>,
    boot: Option<BootReport>,
}

impl QemuBackend {
    pub fn new(config: QemuConfig) -> QemuBackend {
        let paths = StatePaths::new(&config.state_dir);
        QemuBackend {
            resources: guest::ResourceCell::new(crate::Resources {
                cpus: config.cpus,
                memory_mib: config.memory_mib,
                disk_bytes: config.data_disk_size,
            }),
            config,
            paths,
            inner: Arc::new(Mutex::new(Inner {
                state: VmState::Stopped,
                qemu: None,
                helper: None,
                boot: None,
            })),
        }
    }

    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    pub fn paths(&self) -> &StatePaths {
        &self.paths
    }

    pub fn last_boot(&self) -> Option<BootReport> {
        self.lock().boot.clone()
    }

    /// Process ids of QEMU and the vsock helper while they run (for orphan checks).
    pub fn pids(&self) -> Vec<u32> {
        let inner = self.lock();
        [&inner.qemu, &inner.helper]
            .into_iter()
            .flatten()
            .filter_map(|c| c.id())
            .collect()
    }

    /// The last `lines` lines of the guest's serial console, control sequences removed.
    pub fn console_tail(&self, lines: usize) -> String {
        guest::console_tail(&self.paths.console_log, lines)
    }

    /// Accepts connections the guest opens to `port` on the host (vsock CID 2): the helper
    /// delivers them to `vsock.sock_<port>`. Dropping the listener stops it and removes the file.
    pub fn listen(&self, port: u32) -> Result<GuestListener, VmError> {
        let path = hybrid_vsock::listen_path(&self.paths.vsock_socket, port);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| VmError::Io {
            context: format!("listening for guest port {port} on {}", path.display()),
            source,
        })?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let accepted = listener
                    .accept()
                    .await
                    .map(|(s, _)| Box::new(s) as BoxStream);
                let failed = accepted.is_err();
                if tx.send(accepted).is_err() || failed {
                    break;
                }
            }
        });
        Ok(GuestListener::new(port, rx, StopListening { task, path }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("qemu backend lock")
    }

    /// The configuration with the resources asked for since it was made.
    fn effective_config(&self) -> QemuConfig {
        let r = self.resources.get();
        let mut c = self.config.clone();
        c.cpus = r.cpus;
        c.memory_mib = r.memory_mib;
        c.data_disk_size = r.disk_bytes;
        c
    }

    fn start_error(&self, message: String) -> VmError {
        VmError::Start {
            backend: BACKEND,
            message,
        }
    }

    async fn start_inner(&self) -> Result<(), VmError> {
        let cfg = &self.effective_config();
        for (what, path) in [("kernel", &cfg.kernel), ("initramfs", &cfg.initramfs)] {
            if !path.is_file() {
                return Err(self.start_error(format!(
                    "the guest {what} {} is missing: run vm-image/build {}",
                    path.display(),
                    cfg.arch
                )));
            }
        }
        let qemu_program = cfg
            .qemu
            .clone()
            .unwrap_or_else(|| PathBuf::from(cfg.arch.qemu_program()));
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| VmError::Io {
            context: format!("creating {}", cfg.state_dir.display()),
            source,
        })?;
        for stale in [
            &self.paths.vhost_socket,
            &self.paths.vsock_socket,
            &self.paths.qmp_socket,
        ] {
            let _ = std::fs::remove_file(stale);
        }
        guest::ensure_sparse_disk(&cfg.data_disk, cfg.data_disk_size)?;
        let accel = match cfg.accelerator {
            Some(a) => AccelChoice {
                accelerator: a,
                reason: "set in the configuration".into(),
            },
            None => accel::detect(cfg.arch),
        };
        tracing::info!("qemu backend: {} ({})", accel.accelerator, accel.reason);

        // The guest announces its core on READY_PORT; only then does the host dial it. A
        // connection request the helper queues before the guest's vsock driver is up can stay
        // unanswered for good (seen on a second boot under TCG), so none is sent that early.
        let mut ready = self.listen(READY_PORT)?;

        // The helper first: QEMU connects to its vhost-user socket at start.
        let mut helper_cmd = Command::new(&cfg.vsock_helper);
        helper_cmd.arg("--vm").arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            self.paths.vhost_socket.display(),
            self.paths.vsock_socket.display()
        ));
        let helper = spawn_owned(helper_cmd, &self.paths.helper_log).map_err(|e| {
            self.start_error(format!(
                "cannot run {} ({e}): install it with `cargo install vhost-device-vsock`",
                cfg.vsock_helper.display()
            ))
        })?;
        self.lock().helper = Some(helper);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.paths.vhost_socket.exists() {
            if let Some(status) = self.helper_exit() {
                return Err(self.start_error(format!(
                    "the vsock helper exited at start ({status}): {}",
                    guest::console_tail(&self.paths.helper_log, 10)
                )));
            }
            if Instant::now() > deadline {
                return Err(self.start_error(format!(
                    "the vsock helper did not create {} within 10 s",
                    self.paths.vhost_socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let _ = std::fs::remove_file(&self.paths.console_log);
        let mut qemu_cmd = Command::new(&qemu_program);
        qemu_cmd.args(command::qemu_args(cfg, accel.accelerator, &self.paths));
        let spawned = Instant::now();
        let qemu = spawn_owned(qemu_cmd, &self.paths.qemu_log).map_err(|e| {
            self.start_error(format!(
                "cannot run {} ({e}): install Debian's qemu-system-{}",
                qemu_program.display(),
                match cfg.arch {
                    GuestArch::Amd64 => "x86",
                    GuestArch::Arm64 => "arm",
                }
            ))
        })?;
        self.lock().qemu = Some(qemu);

        let vsock = self.paths.vsock_socket.clone();
        let dial = || -> BoxFuture<'static, Result<BoxStream, VmError>> {
            let vsock = vsock.clone();
            Box::pin(async move {
                hybrid_vsock::connect(&vsock, CORE_PORT)
                    .await
                    .map(|s| Box::new(s) as BoxStream)
                    .map_err(|source| VmError::Dial {
                        port: CORE_PORT,
                        source,
                    })
            })
        };
        let failed = || {
            if let Some(status) = self.qemu_exit() {
                return Some(format!(
                    "QEMU exited during boot ({status}). QEMU said: {}\nconsole:\n{}",
                    guest::console_tail(&self.paths.qemu_log, 5),
                    self.console_tail(20)
                ));
            }
            self.helper_exit().map(|status| {
                format!(
                    "the vsock helper exited during boot ({status}): {}",
                    guest::console_tail(&self.paths.helper_log, 10)
                )
            })
        };
        let times = guest::wait_for_core(&mut ready, dial, failed, spawned, cfg.start_timeout)
            .await
            .map_err(|why| {
                self.start_error(format!(
                    "{why} ({}). console:\n{}",
                    accel.accelerator,
                    self.console_tail(20)
                ))
            })?;
        drop(ready);
        let report = BootReport {
            accelerator: accel,
            to_ready: times.to_ready,
            to_handshake: times.to_handshake,
        };
        tracing::info!(
            "guest up: core announced itself {:?} and answered {:?} after QEMU started",
            report.to_ready,
            report.to_handshake
        );
        self.lock().boot = Some(report);
        Ok(())
    }

    fn qemu_exit(&self) -> Option<String> {
        child_exit(&mut self.lock().qemu)
    }

    fn helper_exit(&self) -> Option<String> {
        child_exit(&mut self.lock().helper)
    }

    /// Ends both processes, gently first.
    async fn shut_down(&self) {
        let qemu = self.lock().qemu.take();
        if let Some(mut qemu) = qemu {
            if qemu.try_wait().ok().flatten().is_none() {
                // The guest's init turns the power button into a clean stop of the core.
                if qmp::execute(&self.paths.qmp_socket, "system_powerdown")
                    .await
                    .is_ok()
                    && wait_for(&mut qemu, self.config.stop_timeout).await
                {
                    tracing::info!("guest powered off");
                } else {
                    tracing::warn!(
                        "guest did not power off within {:?}; quitting QEMU",
                        self.config.stop_timeout
                    );
                    let quit = qmp::execute(&self.paths.qmp_socket, "quit").await.is_ok();
                    if !(quit && wait_for(&mut qemu, Duration::from_secs(5)).await) {
                        let _ = qemu.kill().await;
                    }
                }
            }
        }
        let helper = self.lock().helper.take();
        if let Some(mut helper) = helper {
            terminate(&mut helper).await;
        }
        for socket in [
            &self.paths.vhost_socket,
            &self.paths.vsock_socket,
            &self.paths.qmp_socket,
            &hybrid_vsock::listen_path(&self.paths.vsock_socket, READY_PORT),
        ] {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl VmBackend for QemuBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }
    fn resources(&self) -> Option<crate::Resources> {
        Some(self.resources.get())
    }
    fn set_resources(&self, resources: crate::Resources) -> Result<(), VmError> {
        self.resources.set(resources, &self.config.data_disk)
    }

    fn start(&self) -> BoxFuture<'_, Result<(), VmError>> {
        Box::pin(async move {
            {
                let mut inner = self.lock();
                if matches!(inner.state, VmState::Running | VmState::Starting) {
                    return Ok(());
                }
                inner.state = VmState::Starting;
            }
            match self.start_inner().await {
                Ok(()) => {
                    self.lock().state = VmState::Running;
                    Ok(())
                }
                Err(e) => {
                    self.shut_down().await;
                    self.lock().state = VmState::Failed(e.to_string());
                    Err(e)
                }
            }
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), VmError>> {
        Box::pin(async move {
            self.shut_down().await;
            self.lock().state = VmState::Stopped;
            Ok(())
        })
    }

    fn state(&self) -> VmState {
        let state = self.lock().state.clone();
        if state != VmState::Running {
            return state;
        }
        let failure = if let Some(status) = self.qemu_exit() {
            // With `panic=-1` and `-no-reboot` a guest panic is QEMU exiting on its own.
            let panicked = guest::kernel_panic(&self.paths.console_log)
                .map(|line| format!("the guest kernel panicked ({line}); "))
                .unwrap_or_default();
            Some(format!(
                "{panicked}QEMU exited ({status}); console:\n{}",
                self.console_tail(20)
            ))
        } else {
            self.helper_exit().map(|status| {
                format!(
                    "the vsock helper exited ({status}): {}",
                    guest::console_tail(&self.paths.helper_log, 5)
                )
            })
        };
        let mut inner = self.lock();
        if let Some(why) = failure {
            inner.state = VmState::Failed(why);
        }
        inner.state.clone()
    }

    fn dial(&self, port: u32) -> BoxFuture<'_, Result<BoxStream, VmError>> {
        Box::pin(async move {
            let state = self.state();
            if state != VmState::Running {
                return Err(VmError::NotRunning {
                    backend: BACKEND,
                    state,
                });
            }
            let s = hybrid_vsock::connect(&self.paths.vsock_socket, port)
                .await
                .map_err(|source| VmError::Dial { port, source })?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}

impl Drop for QemuBackend {
    fn drop(&mut self) {
        // kill_on_drop covers the children; this only tidies the sockets.
        for socket in [&self.paths.vhost_socket, &self.paths.qmp_socket] {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// Spawns `cmd` in its own process group (a Ctrl-C at berthd's terminal is berthd's to handle),
/// killed when berthd dies, output appended to `log`.
fn spawn_owned(mut cmd: Command, log: &Path) -> std::io::Result<Child> {
    let out = File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe calls
    // (setpgid, prctl, getppid) that touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
            // Note: the death signal follows the *thread* that forked; tokio's worker threads
            // live as long as the runtime, which is berthd's whole life.
            if nix::libc::prctl(
                nix::libc::PR_SET_PDEATHSIG,
                nix::libc::SIGKILL as nix::libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
                return Err(std::io::Error::other("berthd exited during spawn"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn child_exit(child: &mut Option<Child>) -> Option<String> {
    let c = child.as_mut()?;
    match c.try_wait() {
        Ok(Some(status)) => Some(status.to_string()),
        Ok(None) => None,
        Err(e) => Some(format!("cannot wait for it: {e}")),
    }
}

async fn wait_for(child: &mut Child, limit: Duration) -> bool {
    tokio::time::timeout(limit, child.wait()).await.is_ok()
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if wait_for(child, Duration::from_secs(2)).await {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Ends a [`QemuBackend::listen`]: stops accepting and removes the socket file.
struct StopListening {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Drop for StopListening {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kernel_is_a_clear_start_error() {
        let dir = tempfile::tempdir().unwrap();
        let backend = QemuBackend::new(QemuConfig::new(
            GuestArch::Amd64,
            dir.path().join("nope"),
            dir.path().join("nope.cpio.gz"),
            dir.path().join("state"),
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(backend.start()).unwrap_err().to_string();
        assert!(err.contains("vm-image/build amd64"), "{err}");
        assert!(matches!(backend.state(), VmState::Failed(_)));
    }
}
