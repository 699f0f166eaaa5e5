//! Berth's desktop app: the Tauri shell around `ui/` (docs/desktop.md). An adapter only: its
//! commands forward the UI's requests to berthd's socket, it starts berthd when the socket does
//! not answer, and it keeps a tray icon and a menu. No container logic lives here.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod engine;
mod exec;
mod menu;
mod prefs;
mod sidecar;
mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine as _;
use http_body_util::BodyExt;
use serde::Serialize;
use tauri::ipc::Channel;
use tauri::{AppHandle, Manager, RunEvent, State, WebviewUrl, WebviewWindowBuilder, WindowEvent};

use engine::{Engine, EngineStatus};
use prefs::Prefs;
use transport::{EngineRequest, EngineResponse, IpcError};

/// The dashboard window's label.
pub const MAIN: &str = "main";

/// The app's preferences and their file.
pub struct AppPrefs {
    path: PathBuf,
    prefs: Mutex<Prefs>,
}

impl AppPrefs {
    pub fn get(&self) -> Prefs {
        self.prefs.lock().unwrap().clone()
    }
}

/// What an `engine_stream` channel receives (ui/src/lib/backend/tauri.ts, `IpcStreamEvent`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum StreamEvent {
    Open {
        status: u16,
        headers: BTreeMap<String, String>,
    },
    Chunk {
        data: String,
    },
    End,
    Error {
        code: String,
        message: String,
    },
}

#[tauri::command]
async fn engine_request(
    engine: State<'_, Engine>,
    request: EngineRequest,
) -> Result<EngineResponse, IpcError> {
    transport::request(&engine.socket, &request)
        .await
        .map_err(|e| engine.explain(e))
}

/// Answers at once; the answer's head, chunks and end follow on `channel`.
#[tauri::command]
async fn engine_stream(
    app: AppHandle,
    engine: State<'_, Engine>,
    id: String,
    request: EngineRequest,
    channel: Channel<StreamEvent>,
) -> Result<(), IpcError> {
    transport::target(&request)?;
    let socket = engine.socket.clone();
    let key = id.clone();
    engine.add_stream(id, move || {
        tauri::async_runtime::spawn(async move {
            if let Err(e) = forward_stream(&socket, &request, &channel).await {
                let e = app.state::<Engine>().explain(e);
                let _ = channel.send(StreamEvent::Error {
                    code: e.code.to_owned(),
                    message: e.message,
                });
            }
            app.state::<Engine>().end_stream(&key);
        })
    });
    Ok(())
}

async fn forward_stream(
    socket: &std::path::Path,
    request: &EngineRequest,
    channel: &Channel<StreamEvent>,
) -> Result<(), IpcError> {
    let (resp, _conn) = transport::send(socket, request).await?;
    let open = StreamEvent::Open {
        status: resp.status().as_u16(),
        headers: transport::headers_of(&resp),
    };
    // A failed send: the page that asked is gone (reloaded, closed); drop the request.
    if channel.send(open).is_err() {
        return Ok(());
    }
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| IpcError::new("transport", format!("berthd's answer broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if data.is_empty() {
                continue;
            }
            let data = base64::engine::general_purpose::STANDARD.encode(&data);
            if channel.send(StreamEvent::Chunk { data }).is_err() {
                return Ok(());
            }
        }
    }
    let _ = channel.send(StreamEvent::End);
    Ok(())
}

#[tauri::command]
fn engine_stream_cancel(engine: State<'_, Engine>, id: String) {
    engine.cancel_stream(&id);
}

/// Starts exec `exec` attached (its hijacked stream); answers at once, then `open` (101),
/// the output's `chunk`s and `end` (or a refusal's status and body) follow on `channel`.
#[tauri::command]
async fn exec_start(
    app: AppHandle,
    engine: State<'_, Engine>,
    sessions: State<'_, exec::Sessions>,
    id: String,
    exec: String,
    channel: Channel<StreamEvent>,
) -> Result<(), IpcError> {
    exec::start_request(&exec)?;
    let socket = engine.socket.clone();
    let key = id.clone();
    sessions.add(id, move |input| {
        tauri::async_runtime::spawn(async move {
            if let Err(e) = exec::run(&socket, &exec, &channel, input).await {
                let e = app.state::<Engine>().explain(e);
                let _ = channel.send(StreamEvent::Error {
                    code: e.code.to_owned(),
                    message: e.message,
                });
            }
            app.state::<exec::Sessions>().ended(&key);
        })
    });
    Ok(())
}

/// Input for an exec session (`data`: base64), written after what came before.
#[tauri::command]
fn exec_write(
    sessions: State<'_, exec::Sessions>,
    id: String,
    data: String,
) -> Result<(), IpcError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| IpcError::new("bad_request", format!("exec input is not base64: {e}")))?;
    sessions.write(&id, bytes)
}

/// `POST /exec/{exec}/resize?h=rows&w=cols`; every HTTP status is an answer.
#[tauri::command]
async fn exec_resize(
    engine: State<'_, Engine>,
    exec: String,
    rows: u16,
    cols: u16,
) -> Result<EngineResponse, IpcError> {
    let req = exec::resize_request(&exec, rows, cols)?;
    transport::request(&engine.socket, &req)
        .await
        .map_err(|e| engine.explain(e))
}

/// Ends an exec session: its input is closed, its connection cut shortly after.
#[tauri::command]
fn exec_close(sessions: State<'_, exec::Sessions>, id: String) {
    sessions.close(&id);
}

#[tauri::command]
fn engine_status(engine: State<'_, Engine>) -> EngineStatus {
    engine.status()
}

#[tauri::command]
fn engine_start(app: AppHandle) {
    start_engine(&app);
}

#[tauri::command]
fn engine_stop(app: AppHandle) {
    stop_engine(&app);
}

#[tauri::command]
fn prefs_get(prefs: State<'_, AppPrefs>) -> Prefs {
    prefs.get()
}

#[tauri::command]
fn prefs_set(app: AppHandle, prefs: State<'_, AppPrefs>, value: Prefs) -> Result<Prefs, IpcError> {
    value
        .validate()
        .map_err(|m| IpcError::new("bad_request", m))?;
    let before = prefs.get();
    if before.start_at_login != value.start_at_login {
        let exe = std::env::current_exe().unwrap_or_default();
        prefs::apply_autostart(value.start_at_login, &exe).map_err(|m| IpcError::new("io", m))?;
    }
    prefs::save(&prefs.path, &value).map_err(|m| IpcError::new("io", m))?;
    *prefs.prefs.lock().unwrap() = value.clone();
    apply_theme(&app, &value.theme);
    Ok(value)
}

fn apply_theme(app: &AppHandle, theme: &str) {
    let t = match theme {
        "light" => Some(tauri::Theme::Light),
        "dark" => Some(tauri::Theme::Dark),
        _ => None,
    };
    if let Some(w) = app.get_webview_window(MAIN) {
        let _ = w.set_theme(t);
    }
}

pub fn start_engine(app: &AppHandle) {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let backend = app.state::<AppPrefs>().get().engine_backend;
        app.state::<Engine>().start(&app, Some(backend)).await;
    });
}

pub fn stop_engine(app: &AppHandle) {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        app.state::<Engine>().stop(&app).await;
    });
}

/// Quits the app; berthd keeps running unless `keepEngineRunningOnQuit` is off.
pub fn quit(app: &AppHandle) {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        if !app.state::<AppPrefs>().get().keep_engine_running_on_quit {
            app.state::<Engine>().stop(&app).await;
        }
        app.exit(0);
    });
}

/// Shows the dashboard, making the window again if it was never made (started `--hidden`).
pub fn show_dashboard(app: &AppHandle) {
    let w = match app.get_webview_window(MAIN) {
        Some(w) => w,
        None => match make_window(app) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("berth: cannot open the dashboard: {e}");
                return;
            }
        },
    };
    let _ = w.unminimize();
    let _ = w.show();
    let _ = w.set_focus();
}

/// Shows a view of the UI (its hash routes).
pub fn navigate(app: &AppHandle, route: &str) {
    show_dashboard(app);
    if let Some(w) = app.get_webview_window(MAIN) {
        let _ = w.eval(format!(
            "location.hash = {};",
            serde_json::json!(format!("#{route}"))
        ));
    }
}

/// Opens an http(s) link in the user's browser (published ports in the containers list).
fn open_external(url: &tauri::Url) {
    if !matches!(url.scheme(), "http" | "https") {
        return;
    }
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener)
        .arg(url.as_str())
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        eprintln!("berth: cannot open {url}: {e}");
    }
}

fn is_app_url(url: &tauri::Url) -> bool {
    matches!(url.scheme(), "tauri" | "asset")
        || matches!(
            url.host_str(),
            Some("tauri.localhost") | Some("ipc.localhost")
        )
        || (cfg!(debug_assertions) && url.scheme() == "about")
}

fn make_window(app: &AppHandle) -> tauri::Result<tauri::WebviewWindow> {
    let theme = match app.state::<AppPrefs>().get().theme.as_str() {
        "light" => Some(tauri::Theme::Light),
        "dark" => Some(tauri::Theme::Dark),
        _ => None,
    };
    WebviewWindowBuilder::new(app, MAIN, WebviewUrl::App("index.html".into()))
        .title("Berth")
        .inner_size(1200.0, 780.0)
        .min_inner_size(820.0, 520.0)
        .theme(theme)
        .on_navigation(|url| {
            if is_app_url(url) {
                return true;
            }
            open_external(url);
            false
        })
        .on_new_window(|url, _| {
            open_external(&url);
            tauri::webview::NewWindowResponse::Deny
        })
        .build()
}

fn main() {
    let socket = std::env::var_os("BERTH_SOCKET")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(berth_host::paths::socket);
    let prefs_path = prefs::path();
    let (loaded, problem) = prefs::load(&prefs_path);
    if let Some(p) = problem {
        eprintln!("berth: preferences: {p}");
    }
    let hidden = std::env::args().any(|a| a == "--hidden");

    let app = tauri::Builder::default()
        // First: a second launch shows this instance's window and exits.
        .plugin(tauri_plugin_single_instance::init(|app, _argv, _cwd| {
            show_dashboard(app);
        }))
        .manage(Engine::new(socket))
        .manage(exec::Sessions::default())
        .manage(AppPrefs {
            path: prefs_path,
            prefs: Mutex::new(loaded),
        })
        .invoke_handler(tauri::generate_handler![
            engine_request,
            engine_stream,
            engine_stream_cancel,
            exec_start,
            exec_write,
            exec_resize,
            exec_close,
            engine_status,
            engine_start,
            engine_stop,
            prefs_get,
            prefs_set,
        ])
        .setup(move |app| {
            menu::install(app.handle())?;
            if !hidden {
                make_window(app.handle())?;
            }
            engine::launch(app.handle());
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window hides it: the app stays in the tray, berthd keeps running.
            if let WindowEvent::CloseRequested { api, .. } = event {
                if window.label() == MAIN {
                    api.prevent_close();
                    let _ = window.hide();
                }
            }
        })
        .build(tauri::generate_context!())
        .expect("building the Tauri app");

    app.run(|_app, event| match event {
        // No window left is no reason to quit: the tray stays. Quit (or app.exit) still does.
        RunEvent::ExitRequested { api, code, .. } if code.is_none() => api.prevent_exit(),
        // macOS: a click on the Dock icon brings the dashboard back.
        #[cfg(target_os = "macos")]
        RunEvent::Reopen { .. } => show_dashboard(_app),
        _ => {}
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A Channel that keeps what it is sent, as JSON (also used by exec.rs's tests).
    pub(crate) fn collecting() -> (Channel<StreamEvent>, Arc<Mutex<Vec<serde_json::Value>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let channel = Channel::new(move |body| {
            if let tauri::ipc::InvokeResponseBody::Json(j) = body {
                sink.lock().unwrap().push(serde_json::from_str(&j).unwrap());
            }
            Ok(())
        });
        (channel, got)
    }

    fn get(path: &str) -> EngineRequest {
        EngineRequest {
            method: "GET".into(),
            path: path.into(),
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            body: None,
        }
    }

    /// A stand-in berthd: answers one request with a chunked body, a chunk per `parts`, then
    /// waits; reports whether the client closed the connection.
    async fn serve(l: UnixListener, parts: &'static [&'static str], end: bool) -> bool {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for p in parts {
            s.write_all(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes())
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if end {
            s.write_all(b"0\r\n\r\n").await.unwrap();
            return false;
        }
        // The client's close shows as EOF.
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test]
    async fn a_stream_arrives_as_open_chunks_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("e.sock");
        let server = tokio::spawn(serve(
            UnixListener::bind(&sock).unwrap(),
            &["{\"a\":1}\n", "{\"b\":2}\n"],
            true,
        ));
        let (channel, got) = collecting();
        forward_stream(&sock, &get("/events"), &channel)
            .await
            .unwrap();
        server.await.unwrap();
        let got = got.lock().unwrap().clone();
        assert_eq!(got[0]["event"], "open");
        assert_eq!(got[0]["status"], 200);
        assert_eq!(got[0]["headers"]["content-type"], "application/json");
        let b64 = base64::engine::general_purpose::STANDARD;
        let data: Vec<u8> = got[1..got.len() - 1]
            .iter()
            .flat_map(|m| {
                assert_eq!(m["event"], "chunk");
                b64.decode(m["data"].as_str().unwrap()).unwrap()
            })
            .collect();
        assert_eq!(data, b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(got.last().unwrap()["event"], "end");
    }

    #[tokio::test]
    async fn a_cancelled_stream_closes_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("e.sock");
        let server = tokio::spawn(serve(
            UnixListener::bind(&sock).unwrap(),
            &["line 1\n"],
            false,
        ));
        let (channel, got) = collecting();
        let engine = Engine::new(sock.clone());
        let s2 = sock.clone();
        engine.add_stream("s1".into(), move || {
            tauri::async_runtime::spawn(async move {
                let _ = forward_stream(&s2, &get("/containers/x/logs"), &channel).await;
            })
        });
        // The first chunk arrived: the stream is open; then the UI cancels it.
        for _ in 0..100 {
            if got.lock().unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(got.lock().unwrap()[1]["event"], "chunk");
        engine.cancel_stream("s1");
        assert!(server.await.unwrap(), "berthd saw the connection close");
    }
}
