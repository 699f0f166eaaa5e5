//! The engine as the app sees it: berthd's socket, its state (checking, starting, running,
//! stopping, stopped, failed) told to the UI (`engine-status` event, `engine_status` command)
//! and the tray, its start as a sidecar and its stop, and the UI's open streams by id.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tauri::{AppHandle, Emitter, Manager};

use crate::sidecar;
use crate::transport;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Checking,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Checking => "checking",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// What `engine_status` answers and `engine-status` carries.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineStatus {
    pub state: State,
    /// A sentence for the user: what happens, or what failed.
    pub message: String,
    /// While starting: berthd's last log line. After a failure: the end of its log.
    pub log_tail: Option<String>,
    pub socket: String,
    pub log: String,
    pub berthd: Option<String>,
    pub backend: Option<String>,
    /// Milliseconds since this start began (starting, running after a start).
    pub elapsed_ms: Option<u64>,
}

pub struct Engine {
    pub socket: PathBuf,
    status: Mutex<EngineStatus>,
    /// One start or stop at a time.
    op: tokio::sync::Mutex<()>,
    streams: Mutex<HashMap<String, tauri::async_runtime::JoinHandle<()>>>,
}

/// How long a start may take before berthd is stopped and the start fails (as `berth start`).
const START_TIMEOUT: Duration = Duration::from_secs(180);

impl Engine {
    pub fn new(socket: PathBuf) -> Self {
        let status = EngineStatus {
            state: State::Checking,
            message: "checking the engine".into(),
            log_tail: None,
            socket: socket.display().to_string(),
            log: sidecar::log_path(&socket).display().to_string(),
            berthd: None,
            backend: None,
            elapsed_ms: None,
        };
        Engine {
            socket,
            status: Mutex::new(status),
            op: tokio::sync::Mutex::new(()),
            streams: Mutex::new(HashMap::new()),
        }
    }

    pub fn status(&self) -> EngineStatus {
        self.status.lock().unwrap().clone()
    }

    /// Changes the state and tells the UI and the tray.
    fn set(&self, app: &AppHandle, f: impl FnOnce(&mut EngineStatus)) {
        let st = {
            let mut s = self.status.lock().unwrap();
            f(&mut s);
            s.clone()
        };
        let _ = app.emit("engine-status", &st);
        crate::menu::show_state(app, &st);
    }

    /// Starts berthd unless its socket answers; returns when it answers or the start failed.
    pub async fn start(&self, app: &AppHandle, backend_pref: Option<String>) {
        let _op = self.op.lock().await;
        if transport::ping(&self.socket).await {
            self.set(app, |s| {
                s.state = State::Running;
                s.message = "the engine is running".into();
                s.log_tail = None;
            });
            return;
        }
        let Some(berthd) = sidecar::find_berthd() else {
            self.set(app, |s| {
                s.state = State::Failed;
                s.message = "berthd was not found beside the app, on PATH or in the build's target dir (set BERTH_BERTHD)".into();
                s.log_tail = None;
            });
            return;
        };
        let backend = sidecar::backend(backend_pref.as_deref());
        let log = sidecar::log_path(&self.socket);
        self.set(app, |s| {
            s.state = State::Starting;
            s.message = format!("starting berthd (backend {backend})");
            s.log_tail = None;
            s.berthd = Some(berthd.display().to_string());
            s.backend = Some(backend.clone());
            s.elapsed_ms = Some(0);
        });
        let began = Instant::now();
        // A package's guest image: the resource `vm/` (docs/desktop.md, Packaging).
        let vm_image = app
            .path()
            .resource_dir()
            .ok()
            .map(|d| d.join("vm"))
            .filter(|d| d.is_dir());
        let (mut child, from) =
            match sidecar::spawn(&berthd, &self.socket, &backend, vm_image.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    self.set(app, |s| {
                        s.state = State::Failed;
                        s.message = format!("could not run {}: {e}", berthd.display());
                    });
                    return;
                }
            };
        let mut last_line = String::new();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = sidecar::log_tail(&log, from, 15);
                self.set(app, |s| {
                    s.state = State::Failed;
                    s.message = format!("berthd exited before it answered ({status})");
                    s.log_tail = Some(tail);
                    s.elapsed_ms = Some(began.elapsed().as_millis() as u64);
                });
                return;
            }
            if transport::ping(&self.socket).await {
                let took = began.elapsed();
                self.set(app, |s| {
                    s.state = State::Running;
                    s.message = format!(
                        "the engine is running (pid {}, started in {:.1} s)",
                        child.id(),
                        took.as_secs_f64()
                    );
                    s.log_tail = None;
                    s.elapsed_ms = Some(took.as_millis() as u64);
                });
                // berthd is this process's child until it exits: reap it then.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return;
            }
            if began.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                let tail = sidecar::log_tail(&log, from, 15);
                self.set(app, |s| {
                    s.state = State::Failed;
                    s.message = format!(
                        "berthd did not answer within {} s; stopped it",
                        START_TIMEOUT.as_secs()
                    );
                    s.log_tail = Some(tail);
                });
                return;
            }
            // Progress: berthd's latest log line while the VM boots.
            let line = sidecar::log_tail(&log, from, 1);
            if line != last_line {
                last_line = line.clone();
                self.set(app, |s| {
                    s.log_tail = Some(line);
                    s.elapsed_ms = Some(began.elapsed().as_millis() as u64);
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops whoever serves the socket (berthd powers its VM off first).
    pub async fn stop(&self, app: &AppHandle) {
        let _op = self.op.lock().await;
        self.set(app, |s| {
            s.state = State::Stopping;
            s.message = "stopping the engine".into();
            s.log_tail = None;
        });
        let socket = self.socket.clone();
        let r = tauri::async_runtime::spawn_blocking(move || {
            sidecar::stop(&socket, Duration::from_secs(90))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        self.set(app, |s| match r {
            Ok(true) => {
                s.state = State::Stopped;
                s.message = "the engine is stopped".into();
            }
            Ok(false) => {
                s.state = State::Stopped;
                s.message = "the engine was not running".into();
            }
            Err(e) => {
                s.state = State::Failed;
                s.message = e;
            }
        });
    }

    /// Follows the engine while no start or stop runs: berthd stopped by someone else, or
    /// started by `berth start`. A ping every 5 s: nothing else runs while the app is idle.
    pub async fn watch(&self, app: &AppHandle) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let Ok(_op) = self.op.try_lock() else {
                continue;
            };
            let state = self.status().state;
            let up = transport::ping(&self.socket).await;
            match (state, up) {
                (State::Running, false) => self.set(app, |s| {
                    s.state = State::Stopped;
                    s.message = "berthd no longer answers".into();
                }),
                (State::Stopped | State::Failed, true) => self.set(app, |s| {
                    s.state = State::Running;
                    s.message = "the engine is running".into();
                    s.log_tail = None;
                }),
                _ => {}
            }
        }
    }

    /// A connection failure while the engine starts says so.
    pub fn explain(&self, e: transport::IpcError) -> transport::IpcError {
        if e.code == "socket_missing" || e.code == "engine_not_answering" {
            let st = self.status();
            if matches!(st.state, State::Starting | State::Checking) {
                return transport::IpcError::new("engine_starting", st.message);
            }
        }
        e
    }

    /// Registers the task `spawn` starts under the map's lock, so a task that ends at once
    /// still finds its entry to remove.
    pub fn add_stream(
        &self,
        id: String,
        spawn: impl FnOnce() -> tauri::async_runtime::JoinHandle<()>,
    ) {
        let mut streams = self.streams.lock().unwrap();
        if let Some(old) = streams.remove(&id) {
            old.abort();
        }
        streams.insert(id, spawn());
    }

    pub fn end_stream(&self, id: &str) {
        self.streams.lock().unwrap().remove(id);
    }

    /// Aborting the task drops the request (and its connection) to berthd.
    pub fn cancel_stream(&self, id: &str) {
        if let Some(t) = self.streams.lock().unwrap().remove(id) {
            t.abort();
        }
    }
}

/// Starts berthd at launch unless it answers, then follows it.
pub fn launch(app: &AppHandle) {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let backend = app.state::<crate::AppPrefs>().get().engine_backend;
        let engine = app.state::<Engine>();
        engine.start(&app, Some(backend)).await;
        engine.watch(&app).await;
    });
}
