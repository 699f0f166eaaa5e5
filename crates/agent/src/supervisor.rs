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
