//! The Virtualization.framework backend (macOS 11+; Apple silicon with the arm64 guest, Intel
//! with the amd64 one): boots the guest from `vm-image/` in-process through `objc2-virtualization`
//! and reaches `berth-core` over the machine's VZVirtioSocketDevice.
//!
//! * Boot: VZLinuxBootLoader with the kernel (arm64: the uncompressed `Image`), the initramfs and
//!   [`guest::kernel_cmdline`] with `console=hvc0`.
//! * Devices: a virtio block device on the sparse raw data disk (`/dev/vda`, as under QEMU), a
//!   virtio network device on VZNATNetworkDeviceAttachment, a virtio console serial port whose
//!   output goes to `state_dir/console.log`, a virtio entropy device and a virtio socket device.
//! * The machine lives on its own serial dispatch queue: every message to the VZVirtualMachine
//!   and its socket device is sent on that queue ([`Machine::sync`], [`Machine::run`]), and the
//!   framework calls the completion handlers and delegates back on it.
//! * `dial(port)`: `connectToPort:completionHandler:`; the connection's file descriptor is
//!   duplicated into a tokio `UnixStream` (the connection object closes its own copy when it is
//!   released). [`VzBackend::listen`]: `setSocketListener:forPort:` with a delegate that hands
//!   each accepted connection to a [`GuestListener`].
//! * `stop()`: `requestStopWithError:` (the guest sees a power-button press and its init stops
//!   the core and powers off), then `stopWithCompletionHandler:` after `stop_timeout`.
//!
//! The process must be signed with the `com.apple.security.virtualization` entitlement, or
//! creating the machine fails (docs/vm.md).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::{CORE_PORT, READY_PORT};
use block2::RcBlock;
use dispatch2::{DispatchQueue, DispatchQueueAttr, DispatchRetained};
use objc2::rc::Retained;
use objc2::runtime::ProtocolObject;
use objc2::{define_class, msg_send, AllocAnyThread, DefinedClass};
use objc2_foundation::{NSArray, NSError, NSObject, NSObjectProtocol, NSString, NSURL};
use objc2_virtualization::{
    VZDiskImageStorageDeviceAttachment, VZEntropyDeviceConfiguration, VZFileSerialPortAttachment,
    VZLinuxBootLoader, VZNATNetworkDeviceAttachment, VZNetworkDeviceAttachment,
    VZNetworkDeviceConfiguration, VZSerialPortAttachment, VZSerialPortConfiguration,
    VZSocketDeviceConfiguration, VZStorageDeviceConfiguration, VZVirtioBlockDeviceConfiguration,
    VZVirtioConsoleDeviceSerialPortConfiguration, VZVirtioEntropyDeviceConfiguration,
    VZVirtioNetworkDeviceConfiguration, VZVirtioSocketConnection, VZVirtioSocketDevice,
    VZVirtioSocketDeviceConfiguration, VZVirtioSocketListener, VZVirtioSocketListenerDelegate,
    VZVirtualMachine, VZVirtualMachineConfiguration, VZVirtualMachineDelegate,
    VZVirtualMachineState,
};
use tokio::sync::{mpsc, oneshot};

use crate::guest::{self, BootTimes};
use crate::{BoxFuture, BoxStream, GuestListener, VmBackend, VmError, VmState};

const BACKEND: &str = "vz";
/// The guest's console: the virtio console's first port.
const CONSOLE: &str = "hvc0";

#[derive(Debug, Clone)]
pub struct VzConfig {
    /// The uncompressed kernel: `Image` from `vm-image/build arm64` on Apple silicon
    /// (Virtualization.framework does not decompress).
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The raw data disk; created sparse at `data_disk_size` when missing.
    pub data_disk: PathBuf,
    pub data_disk_size: u64,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The console log lives here.
    pub state_dir: PathBuf,
    /// Boot to the core's handshake.
    pub start_timeout: Duration,
    /// How long the guest gets to power off after the stop request before it is stopped hard.
    pub stop_timeout: Duration,
    /// Appended to the kernel command line (e.g. `berth.log=debug`).
    pub kernel_args: Vec<String>,
}

impl VzConfig {
    /// Defaults as QEMU's: 2 CPUs, 1 GiB, a 64 GiB sparse disk in `state_dir`, 60 s to boot.
    pub fn new(kernel: PathBuf, initramfs: PathBuf, state_dir: PathBuf) -> VzConfig {
        VzConfig {
            kernel,
            initramfs,
            data_disk: state_dir.join("data.raw"),
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

pub struct VzBackend {
    config: VzConfig,
    /// CPUs, memory and disk for the next start (`set_resources`).
    resources: guest::ResourceCell,
    console_log: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    state: VmState,
    machine: Option<Arc<Machine>>,
    boot: Option<BootTimes>,
}

impl VzBackend {
    pub fn new(config: VzConfig) -> VzBackend {
        let console_log = config.state_dir.join("console.log");
        VzBackend {
            resources: guest::ResourceCell::new(crate::Resources {
                cpus: config.cpus,
                memory_mib: config.memory_mib,
                disk_bytes: config.data_disk_size,
            }),
            config,
            console_log,
            inner: Arc::new(Mutex::new(Inner {
                state: VmState::Stopped,
                machine: None,
                boot: None,
            })),
        }
    }

    pub fn config(&self) -> &VzConfig {
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
        let machine = self.machine().ok_or_else(|| VmError::NotRunning {
            backend: BACKEND,
            state: self.lock().state.clone(),
        })?;
        machine.listen(port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("vz backend lock")
    }

    fn machine(&self) -> Option<Arc<Machine>> {
        self.lock().machine.clone()
    }

    /// The configuration with the resources asked for since it was made.
    fn effective_config(&self) -> VzConfig {
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
        let cfg = &self.effective_config();
        for (what, path) in [("kernel", &cfg.kernel), ("initramfs", &cfg.initramfs)] {
            if !path.is_file() {
                return Err(self.start_error(format!(
                    "the guest {what} {} is missing: run vm-image/build arm64",
                    path.display()
                )));
            }
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(|source| VmError::Io {
            context: format!("creating {}", cfg.state_dir.display()),
            source,
        })?;
        guest::ensure_sparse_disk(&cfg.data_disk, cfg.data_disk_size)?;
        // A fresh, existing file for the serial port attachment to write to.
        std::fs::File::create(&self.console_log).map_err(|source| VmError::Io {
            context: format!("creating {}", self.console_log.display()),
            source,
        })?;
        // SAFETY: a class method without preconditions.
        if !unsafe { VZVirtualMachine::isSupported() } {
            return Err(self.start_error(
                "Virtualization.framework cannot run virtual machines on this Mac (macOS 11 or \
                 later with hardware virtualization is needed)"
                    .into(),
            ));
        }
        let configuration =
            configuration(cfg, &self.console_log).map_err(|e| self.start_error(e))?;
        let machine = Arc::new(Machine::new(configuration));
        self.lock().machine = Some(machine.clone());

        // Listening before the machine starts: the core announces itself once, early.
        let mut ready = machine.listen(READY_PORT)?;
        let started = Instant::now();
        match tokio::time::timeout(cfg.start_timeout, machine.start()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(self.start_error(format!(
                    "the virtual machine did not start: {e} (is the process signed with the \
                     com.apple.security.virtualization entitlement?)"
                )))
            }
            Err(_) => {
                return Err(self.start_error(format!(
                    "the virtual machine did not start within {:?}",
                    cfg.start_timeout
                )))
            }
        }
        let dial_machine = machine.clone();
        guest::wait_for_core(
            &mut ready,
            move || dial_on(dial_machine.clone(), CORE_PORT),
            || machine.failure(),
            started,
            cfg.start_timeout,
        )
        .await
        .map_err(|e| self.start_error(format!("{e}\nconsole:\n{}", self.console_tail(20))))
    }

    /// Stops the machine, gently first; it is released on its queue afterwards.
    async fn shut_down(&self) {
        let machine = self.lock().machine.take();
        let Some(machine) = machine else { return };
        if machine.failure().is_some() {
            return;
        }
        if machine.request_stop() {
            let deadline = Instant::now() + self.config.stop_timeout;
            while Instant::now() < deadline {
                if machine.failure().is_some() {
                    tracing::info!("guest powered off");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::warn!(
                "guest did not power off within {:?}; stopping it",
                self.config.stop_timeout
            );
        }
        match tokio::time::timeout(Duration::from_secs(10), machine.force_stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("stopping the virtual machine: {e}"),
            Err(_) => tracing::warn!("the virtual machine did not stop within 10 s"),
        }
    }
}

impl VmBackend for VzBackend {
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
        let (state, machine) = {
            let inner = self.lock();
            (inner.state.clone(), inner.machine.clone())
        };
        if state != VmState::Running {
            return state;
        }
        let Some(why) = machine.and_then(|m| m.failure()) else {
            return state;
        };
        let failed = VmState::Failed(format!("{why}; console:\n{}", self.console_tail(20)));
        self.lock().state = failed.clone();
        failed
    }

    fn dial(&self, port: u32) -> BoxFuture<'_, Result<BoxStream, VmError>> {
        Box::pin(async move {
            let state = self.state();
            let machine = match (state, self.machine()) {
                (VmState::Running, Some(m)) => m,
                (state, _) => {
                    return Err(VmError::NotRunning {
                        backend: BACKEND,
                        state,
                    })
                }
            };
            dial_on(machine, port).await
        })
    }
}

/// Builds and validates the machine's configuration. Configuration objects are plain
/// Objective-C objects, not bound to the machine's queue.
fn configuration(
    cfg: &VzConfig,
    console_log: &Path,
) -> Result<Retained<VZVirtualMachineConfiguration>, String> {
    let url = |p: &Path| {
        std::path::absolute(p)
            .ok()
            .and_then(NSURL::from_file_path)
            .ok_or_else(|| format!("{} is not a usable path", p.display()))
    };
    let (kernel, initramfs, disk, console) = (
        url(&cfg.kernel)?,
        url(&cfg.initramfs)?,
        url(&cfg.data_disk)?,
        url(console_log)?,
    );
    let cmdline = NSString::from_str(&guest::kernel_cmdline(CONSOLE, &cfg.kernel_args));
    // SAFETY: every call below is an initializer or a property setter of a configuration object
    // created here, with arguments of the declared classes; nothing else sees them yet.
    unsafe {
        let boot_loader = VZLinuxBootLoader::initWithKernelURL(VZLinuxBootLoader::alloc(), &kernel);
        boot_loader.setInitialRamdiskURL(Some(&initramfs));
        boot_loader.setCommandLine(&cmdline);

        // The data disk: read-write, the framework's default caching and full synchronisation
        // (a guest flush reaches the Mac's disk).
        let attachment = VZDiskImageStorageDeviceAttachment::initWithURL_readOnly_error(
            VZDiskImageStorageDeviceAttachment::alloc(),
            &disk,
            false,
        )
        .map_err(|e| {
            format!(
                "cannot attach the data disk {}: {}",
                cfg.data_disk.display(),
                describe(&e)
            )
        })?;
        let block = VZVirtioBlockDeviceConfiguration::initWithAttachment(
            VZVirtioBlockDeviceConfiguration::alloc(),
            &attachment,
        );

        let nat = VZNATNetworkDeviceAttachment::new();
        let nat: &VZNetworkDeviceAttachment = &nat;
        let network = VZVirtioNetworkDeviceConfiguration::new();
        network.setAttachment(Some(nat));

        let console_file = VZFileSerialPortAttachment::initWithURL_append_error(
            VZFileSerialPortAttachment::alloc(),
            &console,
            false,
        )
        .map_err(|e| {
            format!(
                "cannot write the console to {}: {}",
                console_log.display(),
                describe(&e)
            )
        })?;
        let console_file: &VZSerialPortAttachment = &console_file;
        let serial = VZVirtioConsoleDeviceSerialPortConfiguration::new();
        serial.setAttachment(Some(console_file));

        let entropy = VZVirtioEntropyDeviceConfiguration::new();
        let vsock = VZVirtioSocketDeviceConfiguration::new();

        let configuration = VZVirtualMachineConfiguration::new();
        configuration.setBootLoader(Some(&boot_loader));
        configuration.setCPUCount(cfg.cpus as usize);
        configuration.setMemorySize(u64::from(cfg.memory_mib) << 20);
        let block: &VZStorageDeviceConfiguration = &block;
        configuration.setStorageDevices(&NSArray::from_slice(&[block]));
        let network: &VZNetworkDeviceConfiguration = &network;
        configuration.setNetworkDevices(&NSArray::from_slice(&[network]));
        let serial: &VZSerialPortConfiguration = &serial;
        configuration.setSerialPorts(&NSArray::from_slice(&[serial]));
        let entropy: &VZEntropyDeviceConfiguration = &entropy;
        configuration.setEntropyDevices(&NSArray::from_slice(&[entropy]));
        let vsock: &VZSocketDeviceConfiguration = &vsock;
        configuration.setSocketDevices(&NSArray::from_slice(&[vsock]));
        configuration.validateWithError().map_err(|e| {
            format!(
                "the machine's configuration is refused ({} CPUs, {} MiB): {}",
                cfg.cpus,
                cfg.memory_mib,
                describe(&e)
            )
        })?;
        Ok(configuration)
    }
}

/// An Objective-C object shared between threads. Retain and release are atomic, so moving the
/// pointer is sound; what is not thread-safe is messaging the machine and its devices, and
/// that happens only inside blocks run on the machine's queue. The delegates' own state is
/// `Send + Sync` Rust data.
struct Shared<T>(T);

// SAFETY: see the type's documentation: only the pointer crosses threads; the objects are
// messaged on the machine's queue alone.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above; `&Shared<T>` gives no way to message the object off the queue except
// through `Machine`, which always goes through the queue.
unsafe impl<T> Sync for Shared<T> {}

/// The virtual machine and the serial queue it lives on.
struct Machine {
    queue: DispatchRetained<DispatchQueue>,
    /// `None` only while dropping: the last reference is released on the queue.
    vm: Option<Shared<Retained<VZVirtualMachine>>>,
    _delegate: Shared<Retained<MachineDelegate>>,
    /// Why the machine stopped, as the delegate heard it.
    stopped: Arc<Mutex<Option<String>>>,
}

impl Machine {
    fn new(configuration: Retained<VZVirtualMachineConfiguration>) -> Machine {
        let queue = DispatchQueue::new("dev.berth.vz", DispatchQueueAttr::SERIAL);
        let stopped = Arc::new(Mutex::new(None));
        let delegate = MachineDelegate::new(stopped.clone());
        let configuration = Shared(configuration);
        let delegate_ref = Shared(delegate.clone());
        let mut vm = None;
        let slot = &mut vm;
        let q: &DispatchQueue = &queue;
        queue.exec_sync(move || {
            let (configuration, delegate) = (configuration, delegate_ref);
            // SAFETY: the machine is created on the queue it is bound to, from a validated
            // configuration; the delegate is set there too and kept alive by `Machine`.
            let machine = unsafe {
                let machine = VZVirtualMachine::initWithConfiguration_queue(
                    VZVirtualMachine::alloc(),
                    &configuration.0,
                    q,
                );
                machine.setDelegate(Some(ProtocolObject::from_ref(&*delegate.0)));
                machine
            };
            *slot = Some(Shared(machine));
        });
        Machine {
            queue,
            vm,
            _delegate: Shared(delegate),
            stopped,
        }
    }

    fn vm(&self) -> &Retained<VZVirtualMachine> {
        &self.vm.as_ref().expect("machine is alive").0
    }

    /// Runs `f` with the machine on its queue and waits for its result.
    fn sync<R: Send>(&self, f: impl FnOnce(&VZVirtualMachine) -> R + Send) -> R {
        let vm = Shared(&**self.vm());
        let mut out = None;
        let slot = &mut out;
        self.queue.exec_sync(move || {
            let vm = vm;
            *slot = Some(f(vm.0));
        });
        out.expect("the queue ran the block")
    }

    /// Runs `f` with the machine on its queue, later.
    fn run(&self, f: impl FnOnce(&VZVirtualMachine) + Send + 'static) {
        let vm = Shared(self.vm().clone());
        self.queue.exec_async(move || {
            let vm = vm;
            f(&vm.0)
        });
    }

    fn vm_state(&self) -> VZVirtualMachineState {
        // SAFETY: read on the machine's queue.
        self.sync(|vm| unsafe { vm.state() })
    }

    /// `Some(why)` once the machine has stopped or failed.
    fn failure(&self) -> Option<String> {
        let state = self.vm_state();
        if state != VZVirtualMachineState::Stopped && state != VZVirtualMachineState::Error {
            return None;
        }
        let heard = self.stopped.lock().expect("stop reason lock").clone();
        Some(heard.unwrap_or_else(|| {
            if state == VZVirtualMachineState::Error {
                "the virtual machine failed".into()
            } else {
                "the virtual machine stopped".into()
            }
        }))
    }

    async fn start(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.run(move |vm| {
            let done = completion(tx);
            // SAFETY: on the machine's queue; the block lives as long as the framework needs it
            // (it copies the block).
            unsafe { vm.startWithCompletionHandler(&done) };
        });
        rx.await
            .unwrap_or_else(|_| Err("the framework dropped the start request".into()))
    }

    /// Asks the guest to stop (a power-button press); false if the machine cannot take it.
    fn request_stop(&self) -> bool {
        self.sync(|vm| {
            // SAFETY: on the machine's queue.
            unsafe { vm.canRequestStop() && vm.requestStopWithError().is_ok() }
        })
    }

    /// Stops the machine at once, like pulling the power cord.
    async fn force_stop(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.run(move |vm| {
            // SAFETY: on the machine's queue.
            if unsafe { vm.canStop() } {
                let done = completion(tx);
                // SAFETY: on the machine's queue; the framework copies the block.
                unsafe { vm.stopWithCompletionHandler(&done) };
            } else {
                let _ = tx.send(Err("the machine cannot be stopped in its state".into()));
            }
        });
        rx.await
            .unwrap_or_else(|_| Err("the framework dropped the stop request".into()))
    }

    fn listen(self: &Arc<Self>, port: u32) -> Result<GuestListener, VmError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| VmError::Io {
            context: format!("listening on guest port {port}"),
            source: io::Error::other(e),
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let delegate = ListenerDelegate::new(runtime, tx);
        // SAFETY: a new listener object with our delegate, handed to the socket device on the
        // machine's queue below; the delegate is kept alive by the registration.
        let listener = unsafe {
            let listener = VZVirtioSocketListener::new();
            listener.setDelegate(Some(ProtocolObject::from_ref(&*delegate)));
            listener
        };
        let shared = Shared(listener.clone());
        let registered = self.sync(move |vm| {
            let listener = shared;
            let Some(device) = socket_device(vm) else {
                return false;
            };
            // SAFETY: on the machine's queue.
            unsafe { device.setSocketListener_forPort(&listener.0, port) };
            true
        });
        if !registered {
            return Err(VmError::Io {
                context: format!("listening on guest port {port}"),
                source: io::Error::new(io::ErrorKind::NotFound, "the machine has no vsock device"),
            });
        }
        Ok(GuestListener::new(
            port,
            rx,
            ListenRegistration {
                machine: self.clone(),
                port,
                _listener: Shared(listener),
                _delegate: Shared(delegate),
            },
        ))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // The framework expects every use of the machine on its queue, its release included.
        if let Some(vm) = self.vm.take() {
            self.queue.exec_async(move || drop(vm));
        }
    }
}

/// A completion handler that sends its outcome (nil error: success) on `tx`.
fn completion(tx: oneshot::Sender<Result<(), String>>) -> RcBlock<dyn Fn(*mut NSError)> {
    let tx = Mutex::new(Some(tx));
    RcBlock::new(move |error: *mut NSError| {
        // SAFETY: the framework passes nil or an NSError valid for the call.
        let result = match unsafe { error.as_ref() } {
            None => Ok(()),
            Some(e) => Err(describe(e)),
        };
        if let Some(tx) = tx.lock().expect("completion lock").take() {
            let _ = tx.send(result);
        }
    })
}

/// The machine's virtio socket device. Call on the machine's queue.
fn socket_device(vm: &VZVirtualMachine) -> Option<Retained<VZVirtioSocketDevice>> {
    // SAFETY: the callers run on the machine's queue.
    let devices = unsafe { vm.socketDevices() };
    devices
        .firstObject()?
        .downcast::<VZVirtioSocketDevice>()
        .ok()
}

/// Opens a connection to `port` in the guest.
fn dial_on(machine: Arc<Machine>, port: u32) -> BoxFuture<'static, Result<BoxStream, VmError>> {
    Box::pin(async move {
        let dial_error = |source| VmError::Dial { port, source };
        let (tx, rx) = oneshot::channel::<io::Result<OwnedFd>>();
        machine.run(move |vm| {
            let Some(device) = socket_device(vm) else {
                let _ = tx.send(Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the machine has no vsock device",
                )));
                return;
            };
            let tx = Mutex::new(Some(tx));
            let done = RcBlock::new(
                move |connection: *mut VZVirtioSocketConnection, error: *mut NSError| {
                    // SAFETY: the framework passes a connection or an error, each nil or valid
                    // for the call.
                    let result = match unsafe { (connection.as_ref(), error.as_ref()) } {
                        (Some(connection), _) => duplicate(connection),
                        (None, error) => Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            error.map_or_else(|| "no connection".to_string(), describe),
                        )),
                    };
                    if let Some(tx) = tx.lock().expect("dial lock").take() {
                        let _ = tx.send(result);
                    }
                },
            );
            // SAFETY: on the machine's queue; the framework copies the block.
            unsafe { device.connectToPort_completionHandler(port, &done) };
        });
        let fd = match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(result)) => result.map_err(dial_error)?,
            Ok(Err(_)) => {
                return Err(dial_error(io::Error::other(
                    "the framework dropped the connection request",
                )))
            }
            Err(_) => {
                return Err(dial_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer within 10 s",
                )))
            }
        };
        stream_of(fd).map_err(dial_error)
    })
}

/// A descriptor of our own for the connection's socket: the connection object closes its copy
/// when it is closed or released.
fn duplicate(connection: &VZVirtioSocketConnection) -> io::Result<OwnedFd> {
    // SAFETY: a property getter of a live connection.
    let fd = unsafe { connection.fileDescriptor() };
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "the connection has no file descriptor",
        ));
    }
    // SAFETY: `fd` is open while `connection` lives, which outlasts this borrow.
    unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
}

/// The connection as a tokio stream. Call inside a tokio runtime.
fn stream_of(fd: OwnedFd) -> io::Result<BoxStream> {
    let s = std::os::unix::net::UnixStream::from(fd);
    s.set_nonblocking(true)?;
    Ok(Box::new(tokio::net::UnixStream::from_std(s)?))
}

fn describe(error: &NSError) -> String {
    error.localizedDescription().to_string()
}

/// Keeps a port's listener registered; dropping it removes the listener on the machine's queue.
struct ListenRegistration {
    machine: Arc<Machine>,
    port: u32,
    _listener: Shared<Retained<VZVirtioSocketListener>>,
    _delegate: Shared<Retained<ListenerDelegate>>,
}

impl Drop for ListenRegistration {
    fn drop(&mut self) {
        let port = self.port;
        if self.machine.vm.is_some() {
            self.machine.run(move |vm| {
                if let Some(device) = socket_device(vm) {
                    // SAFETY: on the machine's queue.
                    unsafe { device.removeSocketListenerForPort(port) };
                }
            });
        }
    }
}

struct MachineIvars {
    stopped: Arc<Mutex<Option<String>>>,
}

define_class!(
    // SAFETY: NSObject may be subclassed; the class adds no Drop-sensitive requirements.
    #[unsafe(super(NSObject))]
    #[name = "BerthVzMachineDelegate"]
    #[ivars = MachineIvars]
    struct MachineDelegate;

    // SAFETY: NSObjectProtocol has no requirements beyond NSObject's.
    unsafe impl NSObjectProtocol for MachineDelegate {}

    // SAFETY: the methods have the protocol's selectors and signatures.
    unsafe impl VZVirtualMachineDelegate for MachineDelegate {
        #[unsafe(method(guestDidStopVirtualMachine:))]
        fn guest_did_stop(&self, _vm: &VZVirtualMachine) {
            self.record("the guest powered off (the core exited or the guest was stopped)".into());
        }

        #[unsafe(method(virtualMachine:didStopWithError:))]
        fn did_stop_with_error(&self, _vm: &VZVirtualMachine, error: &NSError) {
            self.record(format!("the virtual machine stopped: {}", describe(error)));
        }
    }
);

impl MachineDelegate {
    fn new(stopped: Arc<Mutex<Option<String>>>) -> Retained<MachineDelegate> {
        let this = MachineDelegate::alloc().set_ivars(MachineIvars { stopped });
        // SAFETY: NSObject's designated initializer on a fresh instance whose ivars are set.
        unsafe { msg_send![super(this), init] }
    }

    fn record(&self, why: String) {
        tracing::warn!("vz: {why}");
        *self.ivars().stopped.lock().expect("stop reason lock") = Some(why);
    }
}

struct ListenerIvars {
    runtime: tokio::runtime::Handle,
    incoming: mpsc::UnboundedSender<io::Result<BoxStream>>,
}

define_class!(
    // SAFETY: NSObject may be subclassed; the class adds no Drop-sensitive requirements.
    #[unsafe(super(NSObject))]
    #[name = "BerthVzSocketListenerDelegate"]
    #[ivars = ListenerIvars]
    struct ListenerDelegate;

    // SAFETY: NSObjectProtocol has no requirements beyond NSObject's.
    unsafe impl NSObjectProtocol for ListenerDelegate {}

    // SAFETY: the method has the protocol's selector and signature.
    unsafe impl VZVirtioSocketListenerDelegate for ListenerDelegate {
        #[unsafe(method(listener:shouldAcceptNewConnection:fromSocketDevice:))]
        fn should_accept(
            &self,
            _listener: &VZVirtioSocketListener,
            connection: &VZVirtioSocketConnection,
            _device: &VZVirtioSocketDevice,
        ) -> bool {
            let ivars = self.ivars();
            let stream = duplicate(connection).and_then(|fd| {
                let _runtime = ivars.runtime.enter();
                stream_of(fd)
            });
            // Refused (and closed by the framework) when nobody listens any more.
            ivars.incoming.send(stream).is_ok()
        }
    }
);

impl ListenerDelegate {
    fn new(
        runtime: tokio::runtime::Handle,
        incoming: mpsc::UnboundedSender<io::Result<BoxStream>>,
    ) -> Retained<ListenerDelegate> {
        let this = ListenerDelegate::alloc().set_ivars(ListenerIvars { runtime, incoming });
        // SAFETY: NSObject's designated initializer on a fresh instance whose ivars are set.
        unsafe { msg_send![super(this), init] }
    }
}
