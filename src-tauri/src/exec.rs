//! The UI's terminal: an exec's hijacked stream (`POST /exec/{id}/start` upgraded), its output
//! sent to the page through a `Channel` as it arrives, its input written from `exec_write`, in
//! order. The exec itself is made and resized through ordinary requests.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::BodyExt;
use tauri::ipc::Channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::transport::{self, EngineRequest, IpcError, Upgrade};
use crate::StreamEvent;

/// How long a closed session's connection stays to let its last input (and the shell's
/// answer to it) through, before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

struct Session {
    input: mpsc::UnboundedSender<Vec<u8>>,
    task: tauri::async_runtime::JoinHandle<()>,
}

/// The open exec sessions by the UI's id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Registers the session `spawn` starts (with the receiving end of its input) under the
    /// map's lock, so a session that ends at once still finds its entry to remove.
    pub fn add(
        &self,
        id: String,
        spawn: impl FnOnce(mpsc::UnboundedReceiver<Vec<u8>>) -> tauri::async_runtime::JoinHandle<()>,
    ) {
        let (input, rx) = mpsc::unbounded_channel();
        let mut map = self.map.lock().unwrap();
        if let Some(old) = map.remove(&id) {
            old.task.abort();
        }
        map.insert(
            id,
            Session {
                input,
                task: spawn(rx),
            },
        );
    }

    /// Input for the process, after what was sent before.
    pub fn write(&self, id: &str, data: Vec<u8>) -> Result<(), IpcError> {
        let map = self.map.lock().unwrap();
        let s = map
            .get(id)
            .ok_or_else(|| IpcError::new("bad_request", format!("no exec session {id:?}")))?;
        s.input
            .send(data)
            .map_err(|_| IpcError::new("bad_request", format!("exec session {id:?} has ended")))
    }

    /// Ends the session: its input is written and the write side closed, the connection is
    /// cut after a short grace (the process may go on; an interactive shell reads the UI's
    /// Ctrl-D and exits).
    pub fn close(&self, id: &str) {
        let Some(s) = self.map.lock().unwrap().remove(id) else {
            return;
        };
        drop(s.input);
        let task = s.task;
        tauri::async_runtime::spawn(async move {
            tokio::time::sleep(CLOSE_GRACE).await;
            task.abort();
        });
    }

    /// The session ended on its own.
    pub fn ended(&self, id: &str) {
        self.map.lock().unwrap().remove(id);
    }
}

/// An exec id as berthd makes them (hex), or a name-like id; nothing that could leave the path.
pub fn valid_exec_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn exec_id(id: &str) -> Result<&str, IpcError> {
    if valid_exec_id(id) {
        Ok(id)
    } else {
        Err(IpcError::new(
            "bad_request",
            format!("not an exec id: {id:?}"),
        ))
    }
}

/// `POST /exec/{id}/start`, attached with a TTY.
pub fn start_request(exec: &str) -> Result<EngineRequest, IpcError> {
    let mut headers = BTreeMap::new();
    headers.insert("Content-Type".to_owned(), "application/json".to_owned());
    Ok(EngineRequest {
        method: "POST".into(),
        path: format!("/exec/{}/start", exec_id(exec)?),
        query: BTreeMap::new(),
        headers,
        body: Some(r#"{"Detach":false,"Tty":true}"#.into()),
    })
}

/// `POST /exec/{id}/resize?h=&w=`.
pub fn resize_request(exec: &str, rows: u16, cols: u16) -> Result<EngineRequest, IpcError> {
    let mut query = BTreeMap::new();
    query.insert("h".to_owned(), rows.to_string());
    query.insert("w".to_owned(), cols.to_string());
    Ok(EngineRequest {
        method: "POST".into(),
        path: format!("/exec/{}/resize", exec_id(exec)?),
        query,
        headers: BTreeMap::new(),
        body: None,
    })
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Starts the exec and carries its stream until the process ends (then `end`) or the page
/// is gone: `open` (101), `chunk`s of output, `end`. A refused start is `open` with berthd's
/// status, its body's chunks and `end`.
pub async fn run(
    socket: &Path,
    exec: &str,
    channel: &Channel<StreamEvent>,
    mut input: mpsc::UnboundedReceiver<Vec<u8>>,
) -> Result<(), IpcError> {
    let req = start_request(exec)?;
    let (status, headers, io) = match transport::upgrade(socket, &req).await? {
        Upgrade::Switched {
            status,
            headers,
            io,
        } => (status, headers, io),
        Upgrade::Refused(resp, _conn) => {
            let open = StreamEvent::Open {
                status: resp.status().as_u16(),
                headers: transport::headers_of(&resp),
            };
            if channel.send(open).is_err() {
                return Ok(());
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| IpcError::new("transport", format!("reading berthd's answer: {e}")))?
                .to_bytes();
            if !body.is_empty() {
                let _ = channel.send(StreamEvent::Chunk { data: b64(&body) });
            }
            let _ = channel.send(StreamEvent::End);
            return Ok(());
        }
    };
    if channel.send(StreamEvent::Open { status, headers }).is_err() {
        return Ok(());
    }
    let (mut rd, mut wr) = tokio::io::split(io);
    let writer = async move {
        while let Some(data) = input.recv().await {
            if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        // Closed by the UI: the end of input, as a half-close (berthd keeps the output coming).
        let _ = wr.shutdown().await;
        std::future::pending::<()>().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = rd.read(&mut buf).await.map_err(|e| {
                IpcError::new("transport", format!("the exec's stream broke off: {e}"))
            })?;
            if n == 0 {
                let _ = channel.send(StreamEvent::End);
                return Ok(());
            }
            // A failed send: the page that asked is gone; drop the connection.
            if channel
                .send(StreamEvent::Chunk {
                    data: b64(&buf[..n]),
                })
                .is_err()
            {
                return Ok(());
            }
        }
    };
    tokio::select! {
        r = reader => r,
        _ = writer => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::collecting;
    use std::sync::Arc;
    use tokio::net::{UnixListener, UnixStream};

    /// Reads a request's head and its body (Content-Length).
    async fn read_request(s: &mut UnixStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(at) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if got.len() >= at + 4 + len {
                    return text;
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed early");
            got.extend_from_slice(&buf[..n]);
        }
    }

    fn chunks(got: &[serde_json::Value]) -> Vec<u8> {
        got.iter()
            .filter(|m| m["event"] == "chunk")
            .flat_map(|m| {
                base64::engine::general_purpose::STANDARD
                    .decode(m["data"].as_str().unwrap())
                    .unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn an_exec_is_hijacked_both_ways_and_its_close_ends_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("e.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let head = read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n$ ")
                .await
                .unwrap();
            // The input, echoed as a terminal would, until the client's half-close.
            let mut input = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                input.extend_from_slice(&buf[..n]);
                s.write_all(&buf[..n]).await.unwrap();
            }
            s.write_all(b"\r\nbye\r\n").await.unwrap();
            drop(s);
            (head, input)
        });
        let (channel, got) = collecting();
        let (tx, rx) = mpsc::unbounded_channel();
        let s2 = sock.clone();
        let task = tokio::spawn(async move { run(&s2, "abc123", &channel, rx).await });
        tx.send(b"echo ".to_vec()).unwrap();
        tx.send(b"hi\r".to_vec()).unwrap();
        drop(tx);
        task.await.unwrap().unwrap();
        let (head, input) = server.await.unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(
            head.starts_with("POST /exec/abc123/start HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(lower.contains("connection: upgrade\r\n"), "{head}");
        assert!(lower.contains("upgrade: tcp\r\n"), "{head}");
        assert!(head.ends_with(r#"{"Detach":false,"Tty":true}"#), "{head}");
        assert_eq!(input, b"echo hi\r");
        let got = got.lock().unwrap().clone();
        assert_eq!(got[0]["event"], "open");
        assert_eq!(got[0]["status"], 101);
        assert_eq!(
            got[0]["headers"]["content-type"],
            "application/vnd.docker.raw-stream"
        );
        assert_eq!(chunks(&got), b"$ echo hi\r\r\nbye\r\n");
        assert_eq!(got.last().unwrap()["event"], "end");
    }

    #[tokio::test]
    async fn a_refused_exec_arrives_as_its_status_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("e.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            read_request(&mut s).await;
            let body = r#"{"message":"container abc is not running"}"#;
            s.write_all(
                format!(
                    "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        });
        let (channel, got) = collecting();
        let (_tx, rx) = mpsc::unbounded_channel();
        run(&sock, "abc", &channel, rx).await.unwrap();
        server.await.unwrap();
        let got = got.lock().unwrap().clone();
        assert_eq!(got[0]["event"], "open");
        assert_eq!(got[0]["status"], 409);
        assert_eq!(
            String::from_utf8(chunks(&got)).unwrap(),
            r#"{"message":"container abc is not running"}"#
        );
        assert_eq!(got.last().unwrap()["event"], "end");
    }

    #[tokio::test]
    async fn ids_that_could_leave_the_path_are_refused() {
        for bad in ["", "../containers/x", "a/b", "a?b", "a b", "%2e%2e"] {
            assert_eq!(start_request(bad).unwrap_err().code, "bad_request", "{bad}");
        }
        let r = resize_request("0123abcdef", 24, 80).unwrap();
        assert_eq!(
            transport::target(&r).unwrap(),
            "/exec/0123abcdef/resize?h=24&w=80"
        );
        let dir = tempfile::tempdir().unwrap();
        let (channel, _) = collecting();
        let (_tx, rx) = mpsc::unbounded_channel();
        let e = run(&dir.path().join("none.sock"), "abc", &channel, rx)
            .await
            .unwrap_err();
        assert_eq!(e.code, "socket_missing");
    }

    #[tokio::test]
    async fn a_session_takes_input_in_order_until_closed() {
        let sessions = Sessions::default();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        sessions.add("x1".into(), move |mut rx| {
            tauri::async_runtime::spawn(async move {
                while let Some(d) = rx.recv().await {
                    sink.lock().unwrap().extend(d);
                }
                let _ = done_tx.send(());
            })
        });
        sessions.write("x1", b"ab".to_vec()).unwrap();
        sessions.write("x1", b"c".to_vec()).unwrap();
        assert_eq!(
            sessions.write("nope", b"x".to_vec()).unwrap_err().code,
            "bad_request"
        );
        sessions.close("x1");
        done_rx.await.unwrap();
        assert_eq!(*got.lock().unwrap(), b"abc");
        assert!(sessions.write("x1", b"d".to_vec()).is_err());
    }
}
