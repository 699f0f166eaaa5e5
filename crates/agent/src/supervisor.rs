//! Keeps the core up. A task watches the backend; when the machine (or, on the direct backend,
//! the core process) has died it says so, tidies up what is left, starts the backend again with
//! a growing pause between attempts, and drops the control connection to the dead core so the
//! next request dials the new one. What happened is kept in [`Health`] for `/info` and
//! `GET /berth/v1/engine`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_vm::VmState;
use serde::Serialize;

use crate::core_client::CoreClient;

/// How often the backend's state is looked at.
pub const POLL: Duration = Duration::from_millis(250);
/// The first pause before a restart; it doubles for each failure in a row up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(30);
/// A backend that ran this long is healthy again: the next failure pauses [`FIRST_PAUSE`].
const STABLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthReport {
    /// Restarts that brought the backend back since berthd started.
    pub restarts: u32,
    /// Why the backend last failed, and when (RFC 3339).
    pub last_failure: Option<String>,
    pub last_failure_at: Option<String>,
    /// The backend is down and being restarted.
    pub restarting: bool,
}

#[derive(Default)]
pub struct Health(Mutex<HealthReport>);

impl Health {
    pub fn report(&self) -> HealthReport {
        self.0.lock().expect("health lock").clone()
    }

    fn failed(&self, why: &str) {
        let mut h = self.0.lock().expect("health lock");
        h.last_failure = Some(why.to_string());
        h.last_failure_at = Some(chrono::Utc::now().to_rfc3339());
        h.restarting = true;
    }

    fn restarted(&self) {
        let mut h = self.0.lock().expect("health lock");
        h.restarts += 1;
        h.restarting = false;
    }
}

/// Runs until the task is aborted (berthd aborts it before it stops the backend itself).
pub async fn supervise(core: Arc<CoreClient>, health: Arc<Health>) {
    let backend = core.backend().clone();
    let mut pause = FIRST_PAUSE;
    let mut up_since = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        let why = match backend.state() {
            VmState::Failed(why) => why,
            _ => {
                if up_since.elapsed() > STABLE {
                    pause = FIRST_PAUSE;
                }
                continue;
            }
        };
        tracing::error!(
            "the {} backend failed: {why}; restarting it in {pause:?}",
            backend.name()
        );
        health.failed(&why);
        // Requests waiting on the dead core fail now rather than hang.
        core.reset("the core stopped; berthd is restarting it")
            .await;
        let _ = backend.stop().await;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
        let began = Instant::now();
        match backend.start().await {
            Ok(()) => {
                health.restarted();
                up_since = Instant::now();
                tracing::info!(
                    "the {} backend is back after {:?}",
                    backend.name(),
                    began.elapsed()
                );
            }
            // The backend is Failed again: the next turn of the loop tries once more.
            Err(e) => tracing::error!("restarting the {} backend failed: {e}", backend.name()),
        }
    }
}

/// `docker stop` for every running container, all at once, each with its own signal and
/// timeout; returns when all are stopped (or the core stopped answering).
pub async fn stop_running_containers(core: &crate::core_client::CoreClient) {
    use berth_proto::{ContainerRef, ContainerStatus, Request, Response};
    let Ok(Response::Containers { containers }) =
        core.call(Request::ContainerList { all: false }).await
    else {
        return;
    };
    let running: Vec<_> = containers
        .into_iter()
        .filter(|c| c.state.status == ContainerStatus::Running)
        .collect();
    if running.is_empty() {
        return;
    }
    tracing::info!("stopping {} running container(s)", running.len());
    let stops = running.iter().map(|c| {
        core.call(Request::ContainerStop {
            container: ContainerRef(c.id.clone()),
            signal: None,
            timeout: None,
        })
    });
    for (c, result) in running
        .iter()
        .zip(futures_util::future::join_all(stops).await)
    {
        if let Err(e) = result {
            tracing::warn!(
                "stopping container {}: {}",
                &c.id[..12.min(c.id.len())],
                e.message
            );
        }
    }
}

/// How long containers get to stop before their machine is restarted or powered off.
pub const CONTAINER_STOP_CAP: Duration = Duration::from_secs(60);

/// Restarts the machine with `resources` (the settings' `vm` values): refused before anything
/// stops when the backend cannot have them; running containers are stopped as `docker stop`
/// stops them (capped at [`CONTAINER_STOP_CAP`]); requests on the old core fail; the machine
/// powers off and starts again. One restart at a time.
pub async fn restart_machine(
    core: &CoreClient,
    resources: berth_vm::Resources,
) -> Result<(), berth_vm::VmError> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let backend = core.backend().clone();
    backend.set_resources(resources)?;
    if tokio::time::timeout(CONTAINER_STOP_CAP, stop_running_containers(core))
        .await
        .is_err()
    {
        tracing::warn!(
            "containers did not stop within {CONTAINER_STOP_CAP:?}; restarting the VM anyway"
        );
    }
    core.reset("the VM is restarting").await;
    if let Err(e) = backend.stop().await {
        tracing::warn!("stopping the {} backend for a restart: {e}", backend.name());
    }
    tracing::info!(
        "restarting the {} backend with {resources:?}",
        backend.name()
    );
    backend.start().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_vm::{BoxFuture, BoxStream, VmBackend, VmError};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A backend that dies on demand and counts its starts; the second start fails once.
    struct Flaky {
        state: Mutex<VmState>,
        starts: AtomicU32,
    }

    impl VmBackend for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn start(&self) -> BoxFuture<'_, Result<(), VmError>> {
            Box::pin(async move {
                let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 2 {
                    *self.state.lock().unwrap() = VmState::Failed("no room".into());
                    return Err(VmError::Start {
                        backend: "flaky",
                        message: "no room".into(),
                    });
                }
                *self.state.lock().unwrap() = VmState::Running;
                Ok(())
            })
        }
        fn stop(&self) -> BoxFuture<'_, Result<(), VmError>> {
            Box::pin(async move {
                *self.state.lock().unwrap() = VmState::Stopped;
                Ok(())
            })
        }
        fn state(&self) -> VmState {
            self.state.lock().unwrap().clone()
        }
        fn dial(&self, port: u32) -> BoxFuture<'_, Result<BoxStream, VmError>> {
            Box::pin(async move {
                Err(VmError::Dial {
                    port,
                    source: std::io::Error::other("flaky"),
                })
            })
        }
    }

    #[tokio::test]
    async fn a_failed_backend_is_restarted_until_it_comes_back() {
        let flaky = Arc::new(Flaky {
            state: Mutex::new(VmState::Running),
            starts: AtomicU32::new(1),
        });
        let core = Arc::new(CoreClient::new(flaky.clone()));
        let health = Arc::new(Health::default());
        let task = tokio::spawn(supervise(core, health.clone()));

        tokio::time::sleep(POLL * 3).await;
        assert_eq!(health.report(), HealthReport::default(), "nothing to do");

        *flaky.state.lock().unwrap() = VmState::Failed("QEMU exited (signal: 9)".into());
        // Found within a poll; the first restart fails ("no room"), the next one works.
        let deadline = Instant::now() + Duration::from_secs(30);
        while health.report().restarts == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = health.report();
        assert_eq!(flaky.starts.load(Ordering::SeqCst), 3);
        assert_eq!(report.restarts, 1);
        assert!(!report.restarting);
        assert_eq!(report.last_failure.as_deref(), Some("no room"));
        assert!(report.last_failure_at.is_some());
        assert_eq!(flaky.state(), VmState::Running);
        task.abort();
    }
}
