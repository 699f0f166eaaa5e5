//! The Hyper-V backend (Windows 10 1809 / Server 2019 or later with Hyper-V enabled; berthd's
//! user must be an administrator or in "Hyper-V Administrators"): boots the amd64 guest from
//! `vm-image/` as a Host Compute Service (HCS, `computecore.dll`) virtual machine and reaches
//! `berth-core` over Hyper-V sockets, which the guest's `hv_sock` maps onto AF_VSOCK.
//!
//! * The compute system is described by [`hcs::compute_system_document`]: `LinuxKernelDirect`
//!   boot (kernel, initramfs, [`guest::kernel_cmdline`] with `console=ttyS0` and
//!   [`hcs::hyperv_kernel_args`]), memory, processors, a VHDX data disk on SCSI (created with
//!   virtdisk's `CreateVirtualDisk` on first start: dynamic, so it grows as the guest writes), the
//!   Hyper-V socket service table, and COM1 on a named pipe that a thread copies into
//!   `state_dir/console.log`.
//! * HCS calls run on blocking threads, each with its own operation (`HcsCreateOperation`,
//!   `HcsWaitForOperationResult`). A system-exited event (`HcsSetComputeSystemCallback`) marks
//!   the machine as ended for [`VmBackend::state`].
//! * `dial(port)`: an `AF_HYPERV` stream socket connected to `{VM runtime id, service id of
//!   port}` ([`hcs::vsock_service_id`]) and handed to tokio as a TCP stream (tokio only reads,
//!   writes and polls it, which Winsock does alike for every stream socket).
//!   [`HypervBackend::listen`]: a socket bound to the same kind of address, accepted on a thread.
//! * `stop()`: `HcsShutDownComputeSystem` (needs the guest's `hv_utils` shutdown service), then
//!   `HcsTerminateComputeSystem` after `stop_timeout`. The document asks HCS to end the machine
//!   when berthd's last handle to it closes, so no VM outlives berthd.

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::windows::io::{
    AsRawHandle, AsRawSocket, FromRawHandle, FromRawSocket, OwnedHandle, OwnedSocket,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use berth_proto::{CORE_PORT, READY_PORT};
use tokio::sync::mpsc;
use windows::core::{GUID, HSTRING, PCWSTR, PWSTR};
use windows::Win32::Foundation::{CloseHandle, LocalFree, ERROR_PIPE_CONNECTED, HANDLE, HLOCAL};
use windows::Win32::Networking::WinSock::{
    accept, bind, connect, listen, setsockopt, socket, WSAGetLastError, WSAPoll, WSAStartup,
    ADDRESS_FAMILY, AF_HYPERV, POLLRDNORM, SOCKADDR, SOCKET, SOCKET_ERROR, SOCK_STREAM, SOMAXCONN,
    WSADATA, WSAPOLLFD, WSAPOLL_EVENT_FLAGS,
};
use windows::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
use windows::Win32::Storage::FileSystem::{FILE_FLAG_FIRST_PIPE_INSTANCE, PIPE_ACCESS_DUPLEX};
use windows::Win32::Storage::Vhd::{
    CreateVirtualDisk, CREATE_VIRTUAL_DISK_FLAG_NONE, CREATE_VIRTUAL_DISK_PARAMETERS,
    CREATE_VIRTUAL_DISK_PARAMETERS_0_1, CREATE_VIRTUAL_DISK_PARAMETERS_DEFAULT_BLOCK_SIZE,
    CREATE_VIRTUAL_DISK_VERSION_2, OPEN_VIRTUAL_DISK_FLAG_NONE, VIRTUAL_DISK_ACCESS_NONE,
    VIRTUAL_STORAGE_TYPE, VIRTUAL_STORAGE_TYPE_DEVICE_VHDX, VIRTUAL_STORAGE_TYPE_VENDOR_MICROSOFT,
};
use windows::Win32::System::HostComputeSystem::{
    HcsCloseComputeSystem, HcsCloseOperation, HcsCreateComputeSystem, HcsCreateOperation,
    HcsEventOptionNone, HcsEventSystemExited, HcsGetComputeSystemProperties, HcsGrantVmAccess,
    HcsSetComputeSystemCallback, HcsShutDownComputeSystem, HcsStartComputeSystem,
    HcsTerminateComputeSystem, HcsWaitForOperationResult, HCS_EVENT, HCS_OPERATION, HCS_SYSTEM,
};
use windows::Win32::System::Hypervisor::{HVSOCKET_CONNECT_TIMEOUT, HV_PROTOCOL_RAW, SOCKADDR_HV};
use windows::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_WAIT,
};

use crate::guest::{self, BootTimes};
use crate::hcs::{self, ComputeSystemSpec};
use crate::{BoxFuture, BoxStream, GuestListener, VmBackend, VmError, VmState};

const BACKEND: &str = "hyperv";
/// The guest's console: COM1.
const CONSOLE: &str = "ttyS0";
/// How long one Hyper-V socket connect may wait for the guest.
const CONNECT_TIMEOUT_MS: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct HypervConfig {
    /// The compute system's id (`hcsdiag list` shows it); one machine per id.
    pub name: String,
    /// `bzImage` from `vm-image/build amd64` (an uncompressed `vmlinux` works too).
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The VHDX data disk; created (dynamic) at `data_disk_size` when missing.
    pub data_disk: PathBuf,
    pub data_disk_size: u64,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The console log lives here.
    pub state_dir: PathBuf,
    /// Boot to the core's handshake.
    pub start_timeout: Duration,
    /// How long the guest gets to shut down before the machine is terminated.
    pub stop_timeout: Duration,
    /// Appended to the kernel command line (e.g. `berth.log=debug`).
    pub kernel_args: Vec<String>,
}

impl HypervConfig {
    /// Defaults as QEMU's: 2 CPUs, 1 GiB, a 64 GiB dynamic disk in `state_dir`, 60 s to boot.
    pub fn new(kernel: PathBuf, initramfs: PathBuf, state_dir: PathBuf) -> HypervConfig {
        HypervConfig {
            name: "berth".into(),
            kernel,
            initramfs,
            data_disk: state_dir.join("data.vhdx"),
            data_disk_size: guest::DEFAULT_DATA_DISK_SIZE,
            cpus: 2,
            memory_mib: 1024,
            state_dir,
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            kernel_args: Vec::new(),
        }
    }
}

pub struct HypervBackend {
    config: HypervConfig,
    /// CPUs, memory and disk for the next start (`set_resources`).
    resources: guest::ResourceCell,
    console_log: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    state: VmState,
    system: Option<Arc<System>>,
    console_pipe: Option<String>,
    boot: Option<BootTimes>,
}

impl HypervBackend {
    pub fn new(config: HypervConfig) -> HypervBackend {
        let console_log = config.state_dir.join("console.log");
        HypervBackend {
            resources: guest::ResourceCell::new(crate::Resources {
                cpus: config.cpus,
                memory_mib: config.memory_mib,
                disk_bytes: config.data_disk_size,
            }),
            config,
            console_log,
            inner: Arc::new(Mutex::new(Inner {
                state: VmState::Stopped,
                system: None,
                console_pipe: None,
                boot: None,
            })),
        }
    }

    pub fn config(&self) -> &HypervConfig {
        &self.config
    }

    /// How long the last boot took to the core's announcement and to its hello.
    pub fn last_boot(&self) -> Option<BootTimes> {
        self.lock().boot
    }

    /// The last `lines` lines of the guest's console.
    pub fn console_tail(&self, lines: usize) -> String {
        guest::console_tail(&self.console_log, lines)
    }

    /// Accepts connections the guest opens to `port` on the host (vsock CID 2). Must be called
    /// inside a tokio runtime, while the machine runs.
    pub fn listen(&self, port: u32) -> Result<GuestListener, VmError> {
        let system = self.lock().system.clone();
        let system = system.ok_or_else(|| VmError::NotRunning {
            backend: BACKEND,
            state: self.lock().state.clone(),
        })?;
        listen_on(system.runtime_id, port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("hyperv backend lock")
    }

    /// The configuration with the resources asked for since it was made.
    fn effective_config(&self) -> HypervConfig {
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

    async fn start_inner(&self) -> Result<BootTimes, VmError> {
        let cfg = self.effective_config();
        for (what, path) in [("kernel", &cfg.kernel), ("initramfs", &cfg.initramfs)] {
            if !path.is_file() {
                return Err(self.start_error(format!(
                    "the guest {what} {} is missing: run vm-image/build amd64",
                    path.display()
                )));
            }
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| VmError::Io {
            context: format!("creating {}", cfg.state_dir.display()),
            source,
        })?;
        let disk = cfg.data_disk.clone();
        let size = cfg.data_disk_size;
        blocking(move || ensure_vhdx(&disk, size))
            .await
            .map_err(|source| VmError::Io {
                context: format!("creating the data disk {}", cfg.data_disk.display()),
                source,
            })?;

        // Unique per boot: the previous boot's pipe lingers until its VM has closed it.
        static BOOTS: AtomicU32 = AtomicU32::new(0);
        let pipe = format!(
            r"\\.\pipe\berth-{}-console-{}-{}",
            cfg.name,
            std::process::id(),
            BOOTS.fetch_add(1, Ordering::Relaxed)
        );
        copy_console(&pipe, self.console_log.clone())
            .map_err(|e| self.start_error(format!("cannot create the console pipe {pipe}: {e}")))?;
        self.lock().console_pipe = Some(pipe.clone());

        let mut kernel_args = hcs::hyperv_kernel_args();
        kernel_args.extend(cfg.kernel_args.iter().cloned());
        let spec = ComputeSystemSpec {
            owner: "berth".into(),
            kernel: windows_path(&cfg.kernel)?,
            initrd: windows_path(&cfg.initramfs)?,
            cmdline: guest::kernel_cmdline(CONSOLE, &kernel_args),
            memory_mib: cfg.memory_mib,
            cpus: cfg.cpus,
            data_disk: windows_path(&cfg.data_disk)?,
            console_pipe: Some(pipe),
            vsock_ports: vec![CORE_PORT, READY_PORT],
        };
        let document = hcs::compute_system_document(&spec).to_string();
        let name = cfg.name.clone();
        let grants = vec![
            cfg.kernel.clone(),
            cfg.initramfs.clone(),
            cfg.data_disk.clone(),
        ];
        let system = blocking(move || System::create(&name, &document, &grants))
            .await
            .map_err(|e| self.start_error(e.to_string()))?;
        let system = Arc::new(system);
        self.lock().system = Some(system.clone());

        // Listening before the machine starts: the core announces itself once, early.
        let mut ready = listen_on(system.runtime_id, READY_PORT)?;
        let started = Instant::now();
        let starting = system.clone();
        let timeout = cfg.start_timeout;
        blocking(move || {
            starting
                .call("starting the VM", timeout, |op| {
                    // SAFETY: a live system handle and a fresh operation; no options.
                    unsafe { HcsStartComputeSystem(starting.handle, op, PCWSTR::null()) }
                })
                .map_err(io::Error::other)
        })
        .await
        .map_err(|e| self.start_error(format!("{e}\nconsole:\n{}", self.console_tail(20))))?;

        let dialing = system.clone();
        guest::wait_for_core(
            &mut ready,
            move || dial_on(dialing.runtime_id, CORE_PORT),
            || system.exited(),
            started,
            cfg.start_timeout,
        )
        .await
        .map_err(|e| self.start_error(format!("{e}\nconsole:\n{}", self.console_tail(20))))
    }

    /// Stops the machine, gently first, closes berthd's handle to it and releases the console
    /// pipe.
    async fn shut_down(&self) {
        let (system, pipe) = {
            let mut inner = self.lock();
            (inner.system.take(), inner.console_pipe.take())
        };
        if let Some(system) = system {
            if system.exited().is_none() {
                self.power_off(&system).await;
            }
            // Dropping the last reference closes the handle (HcsCloseComputeSystem).
            drop(system);
        }
        if let Some(pipe) = pipe {
            // A console thread still waiting for the VM to open the pipe is released by a
            // client that connects and leaves at once.
            let _ = std::fs::OpenOptions::new().write(true).open(&pipe);
        }
    }

    async fn power_off(&self, system: &Arc<System>) {
        let stop_timeout = self.config.stop_timeout;
        let s = system.clone();
        let asked = blocking(move || {
            s.call("shutting the VM down", stop_timeout, |op| {
                // SAFETY: a live system handle and a fresh operation; no options.
                unsafe { HcsShutDownComputeSystem(s.handle, op, PCWSTR::null()) }
            })
            .map_err(io::Error::other)
        })
        .await;
        match &asked {
            Ok(_) => {
                let deadline = Instant::now() + stop_timeout;
                while Instant::now() < deadline {
                    if system.exited().is_some() {
                        tracing::info!("guest shut down");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tracing::warn!("guest did not shut down within {stop_timeout:?}; terminating it");
            }
            Err(e) => tracing::warn!("{e}; terminating the VM"),
        }
        let s = system.clone();
        let terminated = blocking(move || {
            s.call("terminating the VM", Duration::from_secs(10), |op| {
                // SAFETY: a live system handle and a fresh operation; no options.
                unsafe { HcsTerminateComputeSystem(s.handle, op, PCWSTR::null()) }
            })
            .map_err(io::Error::other)
        })
        .await;
        if let Err(e) = terminated {
            tracing::warn!("{e}");
        }
    }
}

impl VmBackend for HypervBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }
    fn resources(&self) -> Option<crate::Resources> {
        Some(self.resources.get())
    }
    fn set_resources(&self, resources: crate::Resources) -> Result<(), VmError> {
        if resources.disk_bytes != self.resources.get().disk_bytes {
            return Err(VmError::Unsupported {
                backend: BACKEND,
                what: "resizing the VHDX data disk",
            });
        }
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
                Ok(times) => {
                    tracing::info!(
                        "guest up: core announced after {:?}, answered after {:?}",
                        times.to_ready,
                        times.to_handshake
                    );
                    let mut inner = self.lock();
                    inner.boot = Some(times);
                    inner.state = VmState::Running;
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
        let (state, system) = {
            let inner = self.lock();
            (inner.state.clone(), inner.system.clone())
        };
        if state != VmState::Running {
            return state;
        }
        let Some(why) = system.and_then(|s| s.exited()) else {
            return state;
        };
        let failed = VmState::Failed(format!("{why}; console:\n{}", self.console_tail(20)));
        self.lock().state = failed.clone();
        failed
    }

    fn dial(&self, port: u32) -> BoxFuture<'_, Result<BoxStream, VmError>> {
        Box::pin(async move {
            let state = self.state();
            let system = self.lock().system.clone();
            match (state, system) {
                (VmState::Running, Some(system)) => dial_on(system.runtime_id, port).await,
                (state, _) => Err(VmError::NotRunning {
                    backend: BACKEND,
                    state,
                }),
            }
        })
    }
}

/// Runs blocking Windows calls off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

fn windows_path(path: &Path) -> Result<String, VmError> {
    let absolute = std::path::absolute(path).map_err(|source| VmError::Io {
        context: format!("resolving {}", path.display()),
        source,
    })?;
    absolute
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| VmError::Io {
            context: format!("{} for HCS", path.display()),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the path is not valid Unicode"),
        })
}

/// An open compute system. HCS handles may be used from any thread.
struct System {
    handle: HCS_SYSTEM,
    /// The VM's runtime id: the `VmId` of its Hyper-V socket addresses.
    runtime_id: GUID,
    /// Why the system exited, once HCS said so.
    exit: Arc<Mutex<Option<String>>>,
}

// SAFETY: an HCS_SYSTEM is an opaque handle that HCS allows to be used from any thread.
unsafe impl Send for System {}
// SAFETY: as above; every call through it is a self-contained HCS call.
unsafe impl Sync for System {}

impl System {
    /// Creates the compute system from `document` (it does not run yet), grants it access to
    /// `files`, hooks its exit event and reads its runtime id. Blocking.
    fn create(name: &str, document: &str, files: &[PathBuf]) -> io::Result<System> {
        let id = HSTRING::from(name);
        for file in files {
            let path = HSTRING::from(file.as_os_str());
            // SAFETY: two valid NUL-terminated strings.
            unsafe { HcsGrantVmAccess(&id, &path) }.map_err(|e| {
                io::Error::other(format!(
                    "cannot grant the VM access to {}: {e}",
                    file.display()
                ))
            })?;
        }
        let configuration = HSTRING::from(document);
        let mut handle = None;
        let created = call("creating the VM", Duration::from_secs(60), |op| {
            // SAFETY: valid strings and a fresh operation; default security descriptor.
            handle = Some(unsafe { HcsCreateComputeSystem(&id, &configuration, op, None) }?);
            Ok(())
        });
        // Owned from here on, so an error below closes it (and ends the VM).
        let mut system = System {
            handle: handle.unwrap_or(HCS_SYSTEM(std::ptr::null_mut())),
            runtime_id: GUID::zeroed(),
            exit: Arc::new(Mutex::new(None)),
        };
        created.map_err(io::Error::other)?;

        // The context lives as long as the process: HCS may call back until the handle is
        // closed, and one small allocation per boot is the price of never racing that.
        let context = Arc::into_raw(system.exit.clone()).cast::<c_void>();
        // SAFETY: a live handle; `on_event` matches HCS_EVENT_CALLBACK and `context` points to
        // a Mutex<Option<String>> that is never freed.
        unsafe {
            HcsSetComputeSystemCallback(
                system.handle,
                HcsEventOptionNone,
                Some(context),
                Some(on_event),
            )
        }
        .map_err(|e| io::Error::other(format!("cannot watch the VM: {e}")))?;

        let query = HSTRING::from(r#"{"PropertyTypes":[]}"#);
        let properties = system
            .call(
                "reading the VM's properties",
                Duration::from_secs(30),
                |op| {
                    // SAFETY: a live handle, a fresh operation and a valid query string.
                    unsafe { HcsGetComputeSystemProperties(system.handle, op, &query) }
                },
            )
            .map_err(io::Error::other)?;
        let runtime_id = hcs::parse_properties(&properties)
            .and_then(|p| p.runtime_id)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "the VM's properties carry no RuntimeId: {properties}"
                ))
            })?;
        system.runtime_id = GUID::from_u128(runtime_id);
        Ok(system)
    }

    fn call(
        &self,
        what: &str,
        timeout: Duration,
        f: impl FnOnce(HCS_OPERATION) -> windows::core::Result<()>,
    ) -> Result<String, String> {
        call(what, timeout, f)
    }

    /// `Some(why)` once HCS reported the system's exit.
    fn exited(&self) -> Option<String> {
        self.exit.lock().expect("exit lock").clone()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if !self.handle.is_invalid() {
            // SAFETY: our handle, closed once; the VM ends with it (ShouldTerminateOnLastHandleClosed).
            unsafe { HcsCloseComputeSystem(self.handle) };
        }
    }
}

/// One HCS call with its own operation, waited for up to `timeout`; returns the result document.
/// Blocking.
fn call(
    what: &str,
    timeout: Duration,
    f: impl FnOnce(HCS_OPERATION) -> windows::core::Result<()>,
) -> Result<String, String> {
    // SAFETY: no context and no callback: the operation is waited for below.
    let op = unsafe { HcsCreateOperation(None, None) };
    if op.is_invalid() {
        return Err(format!("{what}: HCS could not create an operation"));
    }
    let outcome = match f(op) {
        Err(e) => Err(format!("{what}: {e}")),
        Ok(()) => {
            let mut document = PWSTR::null();
            let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
            // SAFETY: a live operation; `document` receives a LocalAlloc'ed string or null.
            let waited = unsafe { HcsWaitForOperationResult(op, millis, Some(&mut document)) };
            let text = take_document(document);
            match waited {
                Ok(()) => Ok(text),
                Err(e) => Err(format!(
                    "{what}: {}",
                    hcs::describe_result(&text).unwrap_or_else(|| e.to_string())
                )),
            }
        }
    };
    // SAFETY: created above, no longer used.
    unsafe { HcsCloseOperation(op) };
    outcome
}

/// Reads and frees a document HCS returned.
fn take_document(document: PWSTR) -> String {
    if document.is_null() {
        return String::new();
    }
    // SAFETY: HCS returns a NUL-terminated UTF-16 string, allocated with LocalAlloc and ours to
    // free, which happens once, right after reading it.
    unsafe {
        let text = document.to_string().unwrap_or_default();
        LocalFree(Some(HLOCAL(document.0.cast())));
        text
    }
}

/// HCS's event callback: records a system exit in the `Mutex<Option<String>>` at `context`.
unsafe extern "system" fn on_event(event: *const HCS_EVENT, context: *const c_void) {
    // SAFETY: HCS passes an event valid for the call, and the context registered in
    // `System::create`, which is never freed.
    let (event, exit) = unsafe { (&*event, &*context.cast::<Mutex<Option<String>>>()) };
    if event.Type == HcsEventSystemExited {
        let data = if event.EventData.is_null() {
            String::new()
        } else {
            // SAFETY: a NUL-terminated string valid for the call.
            unsafe { event.EventData.to_string() }.unwrap_or_default()
        };
        let why = hcs::describe_exit(&data);
        tracing::warn!("hyperv: {why}");
        if let Ok(mut slot) = exit.lock() {
            *slot = Some(why);
        }
    }
}

/// Creates the data disk when missing: a dynamic VHDX (it grows as the guest writes; the guest's
/// init formats it on first boot).
fn ensure_vhdx(path: &Path, size: u64) -> io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let storage = VIRTUAL_STORAGE_TYPE {
        DeviceId: VIRTUAL_STORAGE_TYPE_DEVICE_VHDX,
        VendorId: VIRTUAL_STORAGE_TYPE_VENDOR_MICROSOFT,
    };
    let mut parameters = CREATE_VIRTUAL_DISK_PARAMETERS {
        Version: CREATE_VIRTUAL_DISK_VERSION_2,
        ..Default::default()
    };
    parameters.Anonymous.Version2 = CREATE_VIRTUAL_DISK_PARAMETERS_0_1 {
        MaximumSize: size,
        BlockSizeInBytes: CREATE_VIRTUAL_DISK_PARAMETERS_DEFAULT_BLOCK_SIZE,
        SectorSizeInBytes: 512,
        PhysicalSectorSizeInBytes: 4096,
        OpenFlags: OPEN_VIRTUAL_DISK_FLAG_NONE,
        ..Default::default()
    };
    let file = HSTRING::from(path.as_os_str());
    let mut handle = HANDLE::default();
    // SAFETY: valid parameter structures and path for the call; `handle` receives a handle we
    // close below. Version 2 parameters require VIRTUAL_DISK_ACCESS_NONE.
    let status = unsafe {
        CreateVirtualDisk(
            &storage,
            &file,
            VIRTUAL_DISK_ACCESS_NONE,
            None,
            CREATE_VIRTUAL_DISK_FLAG_NONE,
            0,
            &parameters,
            None,
            &mut handle,
        )
    };
    if status.is_err() {
        return Err(io::Error::from_raw_os_error(status.0 as i32));
    }
    // SAFETY: the handle CreateVirtualDisk returned, closed once.
    unsafe { CloseHandle(handle) }.map_err(io::Error::from)?;
    Ok(true)
}

/// Who may open the console pipe: SYSTEM, Administrators, its owner (berthd's user) and the
/// "Virtual Machines" group (S-1-5-83-0) that every VM worker process runs in.
const CONSOLE_PIPE_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)(A;;GA;;;S-1-5-83-0)";

/// Serves the named pipe COM1 is connected to, copying what the guest prints into `log` on a
/// thread. The pipe is duplex because the VM opens its COM port for reading and writing;
/// nothing is ever written to the guest.
fn copy_console(pipe_name: &str, log: PathBuf) -> io::Result<()> {
    let name = HSTRING::from(pipe_name);
    let sddl = HSTRING::from(CONSOLE_PIPE_SDDL);
    let mut descriptor = PSECURITY_DESCRIPTOR::default();
    // SAFETY: a valid SDDL string; `descriptor` receives a LocalAlloc'ed descriptor, freed below.
    unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            &sddl,
            SDDL_REVISION_1,
            &mut descriptor,
            None,
        )
    }
    .map_err(io::Error::from)?;
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.0,
        bInheritHandle: false.into(),
    };
    // SAFETY: creates the first (and only) instance of a byte pipe for local clients, with the
    // descriptor above (copied by the call).
    let raw = unsafe {
        CreateNamedPipeW(
            &name,
            PIPE_ACCESS_DUPLEX | FILE_FLAG_FIRST_PIPE_INSTANCE,
            PIPE_TYPE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            1,
            4 << 10,
            64 << 10,
            0,
            Some(&attributes),
        )
    };
    let created = if raw.is_invalid() {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: the descriptor ConvertStringSecurityDescriptorToSecurityDescriptorW allocated,
    // freed once, after its last use.
    unsafe { LocalFree(Some(HLOCAL(descriptor.0))) };
    created?;
    // SAFETY: the valid handle just created, owned from here on.
    let pipe = unsafe { OwnedHandle::from_raw_handle(raw.0) };
    std::thread::Builder::new()
        .name("berth-vm-console".into())
        .spawn(move || {
            // SAFETY: a live server handle (owned by `pipe`), waited on synchronously.
            let connected = unsafe { ConnectNamedPipe(HANDLE(pipe.as_raw_handle()), None) };
            if let Err(e) = connected {
                if e.code() != ERROR_PIPE_CONNECTED.to_hresult() {
                    tracing::warn!("the console pipe: {e}");
                    return;
                }
            }
            let mut pipe = File::from(pipe);
            match File::create(&log) {
                // Ends when the VM closes its end (a broken pipe).
                Ok(mut out) => {
                    let _ = io::copy(&mut pipe, &mut out);
                }
                Err(e) => tracing::warn!("cannot write {}: {e}", log.display()),
            }
        })?;
    Ok(())
}

fn winsock() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let mut data = WSADATA::default();
        // SAFETY: version 2.2 and a valid WSADATA; Winsock counts startups, so this coexists
        // with the standard library's own.
        unsafe { WSAStartup(0x0202, &mut data) };
    });
}

fn last_socket_error() -> io::Error {
    // SAFETY: reads the calling thread's last Winsock error.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() }.0)
}

fn raw(s: &OwnedSocket) -> SOCKET {
    SOCKET(s.as_raw_socket() as usize)
}

/// A new Hyper-V stream socket.
fn hv_socket() -> io::Result<OwnedSocket> {
    winsock();
    // SAFETY: creates a socket; on success it is owned below.
    let s = unsafe { socket(i32::from(AF_HYPERV), SOCK_STREAM, HV_PROTOCOL_RAW as i32) }
        .map_err(io::Error::from)?;
    // SAFETY: the socket just created, owned from here on.
    Ok(unsafe { OwnedSocket::from_raw_socket(s.0 as _) })
}

/// The address of vsock `port` of the VM `vm_id`.
fn hv_address(vm_id: GUID, port: u32) -> SOCKADDR_HV {
    SOCKADDR_HV {
        Family: ADDRESS_FAMILY(AF_HYPERV),
        Reserved: 0,
        VmId: vm_id,
        ServiceId: GUID::from_u128(hcs::vsock_service_id(port)),
    }
}

const HV_ADDRESS_LEN: i32 = std::mem::size_of::<SOCKADDR_HV>() as i32;

/// Connects to vsock `port` in the VM `vm_id`. Blocking.
fn connect_blocking(vm_id: GUID, port: u32) -> io::Result<std::net::TcpStream> {
    let s = hv_socket()?;
    let timeout = CONNECT_TIMEOUT_MS.to_ne_bytes();
    // SAFETY: a live socket; HVSOCKET_CONNECT_TIMEOUT takes a u32 of milliseconds.
    let set = unsafe {
        setsockopt(
            raw(&s),
            HV_PROTOCOL_RAW as i32,
            HVSOCKET_CONNECT_TIMEOUT as i32,
            Some(&timeout),
        )
    };
    if set == SOCKET_ERROR {
        return Err(last_socket_error());
    }
    let address = hv_address(vm_id, port);
    // SAFETY: a live socket and a SOCKADDR_HV of the length given.
    let r = unsafe {
        connect(
            raw(&s),
            (&address as *const SOCKADDR_HV).cast::<SOCKADDR>(),
            HV_ADDRESS_LEN,
        )
    };
    if r == SOCKET_ERROR {
        return Err(last_socket_error());
    }
    Ok(std::net::TcpStream::from(s))
}

/// A connected Hyper-V socket as a tokio stream. Call inside a tokio runtime.
fn stream_of(s: std::net::TcpStream) -> io::Result<BoxStream> {
    s.set_nonblocking(true)?;
    Ok(Box::new(tokio::net::TcpStream::from_std(s)?))
}

fn dial_on(vm_id: GUID, port: u32) -> BoxFuture<'static, Result<BoxStream, VmError>> {
    Box::pin(async move {
        let s = blocking(move || connect_blocking(vm_id, port))
            .await
            .map_err(|source| VmError::Dial { port, source })?;
        stream_of(s).map_err(|source| VmError::Dial { port, source })
    })
}

/// Listens for the guest's connections to host port `port`: a socket bound to `{vm_id, service
/// id of port}`, accepted on a thread that ends when the [`GuestListener`] is dropped.
fn listen_on(vm_id: GUID, port: u32) -> Result<GuestListener, VmError> {
    let io_error = |source| VmError::Io {
        context: format!("listening on guest port {port}"),
        source,
    };
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|e| io_error(io::Error::other(e)))?;
    let s = hv_socket().map_err(io_error)?;
    let address = hv_address(vm_id, port);
    // SAFETY: a live socket and a SOCKADDR_HV of the length given.
    let bound = unsafe {
        bind(
            raw(&s),
            (&address as *const SOCKADDR_HV).cast::<SOCKADDR>(),
            HV_ADDRESS_LEN,
        )
    };
    // SAFETY: a live, bound socket.
    if bound == SOCKET_ERROR || unsafe { listen(raw(&s), SOMAXCONN as i32) } == SOCKET_ERROR {
        return Err(io_error(last_socket_error()));
    }
    let (tx, rx) = mpsc::unbounded_channel::<io::Result<BoxStream>>();
    std::thread::Builder::new()
        .name(format!("berth-vm-accept-{port}"))
        .spawn(move || accept_loop(s, &tx, &runtime))
        .map_err(io_error)?;
    Ok(GuestListener::new(port, rx, ()))
}

/// Accepts until the receiving side is gone, polling so that it notices within 200 ms; the
/// listening socket is closed when the loop ends.
fn accept_loop(
    listener: OwnedSocket,
    tx: &mpsc::UnboundedSender<io::Result<BoxStream>>,
    runtime: &tokio::runtime::Handle,
) {
    while !tx.is_closed() {
        let mut poll = WSAPOLLFD {
            fd: raw(&listener),
            events: POLLRDNORM,
            revents: WSAPOLL_EVENT_FLAGS(0),
        };
        // SAFETY: one valid WSAPOLLFD.
        let n = unsafe { WSAPoll(&mut poll, 1, 200) };
        if n == SOCKET_ERROR {
            let _ = tx.send(Err(last_socket_error()));
            return;
        }
        if n == 0 {
            continue;
        }
        // SAFETY: a listening socket that has a connection waiting; no peer address wanted.
        let accepted = match unsafe { accept(raw(&listener), None, None) } {
            // SAFETY: the new socket accept returned, owned from here on.
            Ok(c) => Ok(unsafe { OwnedSocket::from_raw_socket(c.0 as _) }),
            Err(e) => Err(io::Error::from(e)),
        };
        let stream = accepted.and_then(|c| {
            let _runtime = runtime.enter();
            stream_of(std::net::TcpStream::from(c))
        });
        if tx.send(stream).is_err() {
            return;
        }
    }
}
