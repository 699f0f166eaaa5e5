//! The direct backend: no VM. `berth-core` runs on the Linux host as a child of berthd and
//! listens on a Unix socket; `dial(port)` connects to that socket whatever the port, because on
//! this backend the [`berth_proto::Hello`] of each connection names its channel.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::{BoxFuture, BoxStream, VmBackend, VmError, VmState};

#[derive(Debug, Clone)]
pub struct DirectConfig {
    /// The `berth-core` executable.
    pub core_binary: PathBuf,
    /// Where the core keeps its store.
    pub data_root: PathBuf,
    /// The Unix socket the core listens on.
    pub socket: PathBuf,
    /// How long to wait for the core's socket to answer.
    pub start_timeout: Duration,
}

pub struct DirectBackend {
    config: DirectConfig,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    state: VmState,
    child: Option<Child>,
}

impl DirectBackend {
    pub fn new(config: DirectConfig) -> DirectBackend {
        DirectBackend {
            config,
            inner: Arc::new(Mutex::new(Inner {
                state: VmState::Stopped,
                child: None,
            })),
        }
    }

    fn set_state(&self, s: VmState) {
        self.inner.lock().expect("state lock").state = s;
    }

    async fn start_inner(&self) -> Result<(), VmError> {
        let start_err = |message: String| VmError::Start {
            backend: "direct",
            message,
        };
        if !self.config.core_binary.is_file() {
            return Err(start_err(format!(
                "berth-core binary not found at {}",
                self.config.core_binary.display()
            )));
        }
        let _ = std::fs::remove_file(&self.config.socket);
        let mut cmd = Command::new(&self.config.core_binary);
        cmd.arg("--listen")
            .arg(&self.config.socket)
            .arg("--data-root")
            .arg(&self.config.data_root)
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe prctl(2), so the core dies when berthd does instead of lingering.
        unsafe {
            cmd.pre_exec(|| {
                if libc_prctl_pdeathsig() != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            start_err(format!(
                "spawning {}: {e}",
                self.config.core_binary.display()
            ))
        })?;
        self.inner.lock().expect("state lock").child = Some(child);

        let deadline = tokio::time::Instant::now() + self.config.start_timeout;
        loop {
            if let Some(status) = self.try_wait_child() {
                return Err(start_err(format!(
                    "berth-core exited during start: {status}"
                )));
            }
            if UnixStream::connect(&self.config.socket).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(start_err(format!(
                    "berth-core did not listen on {} within {:?}",
                    self.config.socket.display(),
                    self.config.start_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_wait_child(&self) -> Option<String> {
        let mut inner = self.inner.lock().expect("state lock");
        let child = inner.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }
}

fn libc_prctl_pdeathsig() -> i32 {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe { nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL, 0, 0, 0) }
}

impl VmBackend for DirectBackend {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), VmError>> {
        Box::pin(async move {
            self.set_state(VmState::Starting);
            match self.start_inner().await {
                Ok(()) => {
                    self.set_state(VmState::Running);
                    Ok(())
                }
                Err(e) => {
                    self.set_state(VmState::Failed(e.to_string()));
                    Err(e)
                }
            }
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), VmError>> {
        Box::pin(async move {
            let child = self.inner.lock().expect("state lock").child.take();
            if let Some(mut child) = child {
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            let _ = std::fs::remove_file(&self.config.socket);
            self.set_state(VmState::Stopped);
            Ok(())
        })
    }

    fn state(&self) -> VmState {
        if let Some(status) = self.try_wait_child() {
            let mut inner = self.inner.lock().expect("state lock");
            inner.child = None;
            inner.state = VmState::Failed(format!("berth-core exited: {status}"));
        }
        self.inner.lock().expect("state lock").state.clone()
    }

    fn dial(&self, port: u32) -> BoxFuture<'_, Result<BoxStream, VmError>> {
        Box::pin(async move {
            let state = self.state();
            if state != VmState::Running {
                return Err(VmError::NotRunning {
                    backend: "direct",
                    state,
                });
            }
            let s = UnixStream::connect(&self.config.socket)
                .await
                .map_err(|source| VmError::Dial { port, source })?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}
