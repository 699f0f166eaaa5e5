//! berth-vm: where the core runs and how the host reaches it.
//!
//! [`VmBackend`] is the one seam between berthd and the platform: start and stop the machine
//! that runs `berth-core`, and `dial` a port on it to get a byte stream. Every backend carries the
//! same protocol (`berth-proto`) over what `dial` returns, so berthd has one code path.
//!
//! Backends: `direct::DirectBackend` (Linux host, no VM: the `berth-core` binary runs as a child
//! process and listens on a Unix socket), `qemu::QemuBackend` (Linux: the guest from `vm-image/`
//! over hybrid vsock), `vz::VzBackend` (macOS: Virtualization.framework, VZVirtioSocketDevice)
//! and `hyperv::HypervBackend` (Windows: the Host Compute Service, Hyper-V sockets); docs/vm.md.
//! Each is compiled only on its host OS; [`guest`] and [`hcs`] are the platform-independent parts
//! they share or build on.

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

#[cfg(target_os = "linux")]
pub mod direct;
pub mod guest;
pub mod hcs;
#[cfg(windows)]
pub mod hyperv;
#[cfg(target_os = "linux")]
pub mod qemu;
#[cfg(target_os = "macos")]
pub mod vz;

/// A bidirectional byte stream to the guest.
pub trait GuestStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> GuestStream for T {}

pub type BoxStream = Box<dyn GuestStream>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Connections the guest opens to one host port (vsock CID 2), as the VM backends that deliver
/// them through a callback or a thread (vz, hyperv) hand them over. Dropping it stops listening.
pub struct GuestListener {
    port: u32,
    incoming: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<BoxStream>>,
    _registration: Box<dyn Send + Sync>,
}

impl GuestListener {
    /// `registration` is dropped with the listener: its `Drop` unregisters the port.
    pub fn new(
        port: u32,
        incoming: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<BoxStream>>,
        registration: impl Send + Sync + 'static,
    ) -> GuestListener {
        GuestListener {
            port,
            incoming,
            _registration: Box::new(registration),
        }
    }

    pub fn port(&self) -> u32 {
        self.port
    }

    /// The next connection from the guest; an error once the machine stopped listening.
    pub async fn accept(&mut self) -> Result<BoxStream, VmError> {
        match self.incoming.recv().await {
            Some(Ok(s)) => Ok(s),
            Some(Err(source)) => Err(VmError::Io {
                context: format!("accepting a guest connection on port {}", self.port),
                source,
            }),
            None => Err(VmError::Io {
                context: format!("listening on port {}", self.port),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the machine stopped listening",
                ),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    Stopped,
    Starting,
    Running,
    /// The machine (or core process) died; the text says how.
    Failed(String),
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmState::Stopped => f.write_str("stopped"),
            VmState::Starting => f.write_str("starting"),
            VmState::Running => f.write_str("running"),
            VmState::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// the backend could not start
    #[error("cannot start the {backend} backend: {message}")]
    Start {
        backend: &'static str,
        message: String,
    },
    /// the backend is not running
    #[error("the {backend} backend is not running ({state})")]
    NotRunning {
        backend: &'static str,
        state: VmState,
    },
    /// dialing the guest failed
    #[error("cannot reach port {port} in the guest: {source}")]
    Dial { port: u32, source: std::io::Error },
    /// the backend cannot do this
    #[error("the {backend} backend does not support {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    /// a value the backend refuses
    #[error("{0}")]
    Invalid(String),
    /// other i/o
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// What a machine is given. Set at start; [`VmBackend::set_resources`] changes it for the next
/// start (a running machine keeps its own until it is restarted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub cpus: u32,
    pub memory_mib: u32,
    /// The data disk's size; a disk only grows (the guest grows its file system at boot).
    pub disk_bytes: u64,
}

/// A machine that runs `berth-core`.
pub trait VmBackend: Send + Sync {
    /// Short name shown in `/info` and `berth status` ("direct", "qemu", "vz", "hyperv").
    fn name(&self) -> &'static str;
    /// Starts the machine and returns once `dial` can reach the core's port.
    fn start(&self) -> BoxFuture<'_, Result<(), VmError>>;
    /// Stops the machine; containers are the caller's business before this.
    fn stop(&self) -> BoxFuture<'_, Result<(), VmError>>;
    fn state(&self) -> VmState;
    /// Opens a new stream to `port` in the guest.
    fn dial(&self, port: u32) -> BoxFuture<'_, Result<BoxStream, VmError>>;
    /// The machine's resources for its next start; `None` where there is no machine (direct).
    fn resources(&self) -> Option<Resources> {
        None
    }
    /// Resources for the next start. Refused where there is no machine, for values no machine
    /// can have, and for a smaller data disk than the one there is.
    fn set_resources(&self, _resources: Resources) -> Result<(), VmError> {
        Err(VmError::Unsupported {
            backend: self.name(),
            what: "changing CPUs, memory or disk",
        })
    }
}

/// A program on `PATH` or in cargo's bin directory (`cargo install` puts `vhost-device-vsock`
/// there, and root's PATH often lacks it): how berthd finds the VM's helper programs and
/// `berth doctor` checks for them.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(std::path::PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}
