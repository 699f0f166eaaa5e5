//! HTTP/1.1 to berthd's Unix socket (hyper 1): one connection per request, answers read whole
//! or streamed frame by frame. What the UI's `engine_request`/`engine_stream` forward to; no
//! knowledge of the Docker API beyond "a path on the socket".

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// A request as the UI sends it (`IpcRequest` in ui/src/lib/backend/tauri.ts).
#[derive(Debug, Clone, Deserialize)]
pub struct EngineRequest {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
}

/// A whole answer (`IpcResponse`): every status is an answer, not an error.
#[derive(Debug, Clone, Serialize)]
pub struct EngineResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// How a failed command rejects: `{ code, message }` (docs/desktop.md lists the codes).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IpcError {
    pub code: &'static str,
    pub message: String,
}

impl IpcError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        IpcError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for IpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// How long a connection to the socket may take: berthd accepts at once when it runs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the socket, naming the failure the way the UI shows it.
async fn connect(socket: &Path) -> Result<UnixStream, IpcError> {
    let err = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(socket)).await {
        Ok(Ok(s)) => return Ok(s),
        Ok(Err(e)) => e,
        Err(_) => {
            return Err(IpcError::new(
                "engine_not_answering",
                format!("berthd at {} did not accept a connection", socket.display()),
            ))
        }
    };
    Err(match err.kind() {
        ErrorKind::NotFound => IpcError::new(
            "socket_missing",
            format!(
                "no berthd socket at {} (the engine is not running)",
                socket.display()
            ),
        ),
        ErrorKind::ConnectionRefused => IpcError::new(
            "engine_not_answering",
            format!(
                "nothing answers at {} (berthd stopped or is starting)",
                socket.display()
            ),
        ),
        ErrorKind::PermissionDenied => IpcError::new(
            "permission_denied",
            format!(
                "{}: {err} (the socket belongs to another user)",
                socket.display()
            ),
        ),
        _ => IpcError::new("transport", format!("{}: {err}", socket.display())),
    })
}

/// Percent-encoding of a query key or value: everything but RFC 3986's unreserved characters.
fn encode_component(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The request target: berthd's path and the encoded query. The path must be absolute and
/// carry no query, fragment, scheme or whitespace of its own (the query goes in `query`).
pub fn target(req: &EngineRequest) -> Result<String, IpcError> {
    let p = &req.path;
    if !p.starts_with('/')
        || p.starts_with("//")
        || p.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        || p.contains(['?', '#'])
    {
        return Err(IpcError::new(
            "bad_request",
            format!("not a path on the engine: {p:?}"),
        ));
    }
    let mut t = p.clone();
    for (i, (k, v)) in req.query.iter().enumerate() {
        t.push(if i == 0 { '?' } else { '&' });
        encode_component(k, &mut t);
        t.push('=');
        encode_component(v, &mut t);
    }
    Ok(t)
}

/// Aborts the connection's task when dropped: a cancelled stream closes its socket, which is
/// how berthd learns the client went away (a followed log, `/events`).
pub struct ConnGuard(JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `req` and returns the answer's head with its body still to read, and the guard that
/// keeps the connection open.
pub async fn send(
    socket: &Path,
    req: &EngineRequest,
) -> Result<(Response<Incoming>, ConnGuard), IpcError> {
    let request = build(req, false)?;
    let stream = connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| IpcError::new("transport", format!("HTTP handshake with berthd: {e}")))?;
    let guard = ConnGuard(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender.send_request(request).await.map_err(not_answered)?;
    Ok((resp, guard))
}

fn not_answered(e: hyper::Error) -> IpcError {
    IpcError::new(
        "engine_not_answering",
        format!("berthd closed the connection before answering: {e}"),
    )
}

/// The hyper request for `req`; `upgrade` asks berthd to hijack the connection
/// (`Connection: Upgrade`, `Upgrade: tcp`, as the docker CLI does for attach and exec start).
fn build(req: &EngineRequest, upgrade: bool) -> Result<hyper::Request<Full<Bytes>>, IpcError> {
    let method = hyper::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| IpcError::new("bad_request", format!("bad method {:?}", req.method)))?;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(target(req)?)
        .header(hyper::header::HOST, "berthd");
    for (k, v) in &req.headers {
        if k.eq_ignore_ascii_case("host")
            || k.eq_ignore_ascii_case("content-length")
            || (upgrade
                && (k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("upgrade")))
        {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_str());
    }
    if upgrade {
        builder = builder
            .header(hyper::header::CONNECTION, "Upgrade")
            .header(hyper::header::UPGRADE, "tcp");
    }
    let body = Full::new(Bytes::from(req.body.clone().unwrap_or_default()));
    builder
        .body(body)
        .map_err(|e| IpcError::new("bad_request", e.to_string()))
}

/// The connection berthd hijacked: raw bytes both ways.
pub type Hijacked = TokioIo<hyper::upgrade::Upgraded>;

/// What an upgrade request got: the hijacked connection (`101`), or an ordinary answer (an
/// unknown exec, a container that is not running) with its body still to read.
pub enum Upgrade {
    Switched {
        status: u16,
        headers: BTreeMap<String, String>,
        io: Hijacked,
    },
    Refused(Response<Incoming>, ConnGuard),
}

/// Sends `req` asking for the connection to be upgraded (exec start, attach).
pub async fn upgrade(socket: &Path, req: &EngineRequest) -> Result<Upgrade, IpcError> {
    let request = build(req, true)?;
    let stream = connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| IpcError::new("transport", format!("HTTP handshake with berthd: {e}")))?;
    // The connection's task ends when the upgrade hands the socket over.
    let guard = ConnGuard(tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    }));
    let resp = sender.send_request(request).await.map_err(not_answered)?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Upgrade::Refused(resp, guard));
    }
    let status = resp.status().as_u16();
    let headers = headers_of(&resp);
    let upgraded = hyper::upgrade::on(resp).await.map_err(|e| {
        IpcError::new(
            "transport",
            format!("berthd switched protocols but the connection was lost: {e}"),
        )
    })?;
    drop(guard);
    Ok(Upgrade::Switched {
        status,
        headers,
        io: TokioIo::new(upgraded),
    })
}

/// The answer's headers, names lower-case, repeated ones joined with ", ".
pub fn headers_of(resp: &Response<Incoming>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in resp.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        out.entry(k.as_str().to_owned())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v)
            })
            .or_insert(v);
    }
    out
}

/// One request, the whole answer read as text.
pub async fn request(socket: &Path, req: &EngineRequest) -> Result<EngineResponse, IpcError> {
    let (resp, _guard) = send(socket, req).await?;
    let status = resp.status().as_u16();
    let headers = headers_of(&resp);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| IpcError::new("transport", format!("reading berthd's answer: {e}")))?
        .to_bytes();
    Ok(EngineResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Whether berthd answers `/_ping` with `OK` (it does once its core is up).
pub async fn ping(socket: &Path) -> bool {
    let req = EngineRequest {
        method: "GET".into(),
        path: "/_ping".into(),
        query: BTreeMap::new(),
        headers: BTreeMap::new(),
        body: None,
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), request(socket, &req)).await,
        Ok(Ok(r)) if r.status == 200 && r.body == "OK"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    fn req(path: &str, query: &[(&str, &str)]) -> EngineRequest {
        EngineRequest {
            method: "get".into(),
            path: path.into(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            headers: BTreeMap::new(),
            body: None,
        }
    }

    #[test]
    fn the_target_encodes_the_query_and_refuses_what_is_not_a_path() {
        assert_eq!(
            target(&req("/images/json", &[])).unwrap(),
            "/images/json".to_string()
        );
        assert_eq!(
            target(&req(
                "/containers/json",
                &[("all", "1"), ("filters", r#"{"id":["a b"]}"#)]
            ))
            .unwrap(),
            "/containers/json?all=1&filters=%7B%22id%22%3A%5B%22a%20b%22%5D%7D"
        );
        for bad in [
            "images/json",
            "//evil/x",
            "/a b",
            "/x?y=1",
            "/x#f",
            "http://x/",
        ] {
            assert_eq!(
                target(&req(bad, &[])).unwrap_err().code,
                "bad_request",
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_socket_and_a_dead_one_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.sock");
        let e = request(&missing, &req("/_ping", &[])).await.unwrap_err();
        assert_eq!(e.code, "socket_missing");
        // A socket file nobody listens on.
        let dead = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let e = request(&dead, &req("/_ping", &[])).await.unwrap_err();
        assert_eq!(e.code, "engine_not_answering");
        assert!(!ping(&dead).await);
    }

    #[tokio::test]
    async fn a_request_reaches_the_socket_with_its_method_query_headers_and_body() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("e.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n{\"a\":1}") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 9\r\n\r\n{\"Id\":1}\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let mut r = req("/containers/create", &[("name", "web 1")]);
        r.method = "POST".into();
        r.headers
            .insert("Content-Type".into(), "application/json".into());
        r.body = Some("{\"a\":1}".into());
        let resp = request(&sock, &r).await.unwrap();
        assert_eq!(resp.status, 201);
        assert_eq!(resp.body, "{\"Id\":1}\n");
        assert_eq!(resp.headers["x-a"], "1, 2");
        let sent = server.await.unwrap();
        assert!(
            sent.starts_with("POST /containers/create?name=web%201 HTTP/1.1\r\n"),
            "{sent}"
        );
        assert!(
            sent.to_ascii_lowercase().contains("host: berthd\r\n"),
            "{sent}"
        );
        assert!(
            sent.to_ascii_lowercase().contains("content-length: 7\r\n"),
            "{sent}"
        );
    }
}
