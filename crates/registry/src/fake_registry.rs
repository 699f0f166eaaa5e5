//! A tiny HTTP/1.1 server for the client's tests: one request per connection, answered by a
//! closure, with replies that misbehave on purpose (bodies cut short, bodies longer than
//! declared). It closes any connection that does not start like HTTP (a TLS hello), so the
//! client's https-then-http fallback is exercised by every test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::manifest::{media_type, Descriptor, Platform};

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: String,
    /// Path with query.
    pub target: String,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    /// The body, as long as its Content-Length said (uploads).
    pub body: Bytes,
}

impl FakeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

/// How to answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A normal response with Content-Length.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Declares `declared` bytes, sends `body` (fewer), then drops the connection.
    Truncated {
        headers: Vec<(String, String)>,
        declared: usize,
        body: Bytes,
    },
    /// No Content-Length: the body ends when the connection closes.
    CloseDelimited {
        headers: Vec<(String, String)>,
        body: Bytes,
    },
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: vec![],
            body: Bytes::new(),
        }
    }

    pub fn body(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply::Full {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn json(status: u16, v: serde_json::Value) -> Reply {
        Reply::body(
            status,
            "application/json",
            serde_json::to_vec(&v).expect("json"),
        )
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Full { headers, .. }
            | Reply::Truncated { headers, .. }
            | Reply::CloseDelimited { headers, .. } => headers.push((name.into(), value.into())),
        }
        self
    }
}

type Handler = Arc<dyn Fn(&FakeRequest) -> Reply + Send + Sync>;

/// A running server; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<FakeRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start(
        handler: impl Fn(&FakeRequest) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let task_log = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let handler = handler.clone();
                let log = task_log.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, handler, log).await;
                });
            }
        });
        FakeServer { addr, log, task }
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.log.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path().starts_with(prefix))
            .count()
    }
}

async fn serve(
    mut conn: TcpStream,
    handler: Handler,
    log: Arc<Mutex<Vec<FakeRequest>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if !buf[0].is_ascii_uppercase() {
            // A TLS hello or garbage: not HTTP.
            return Ok(());
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // Read the body the request declares before answering (a push's uploads).
    let declared = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < declared {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let req = FakeRequest {
        method,
        target,
        headers,
        body: body.into(),
    };
    log.lock().unwrap().push(req.clone());
    let reply = handler(&req);
    let head_only = req.method == "HEAD";
    let (status, headers, length, body) = match &reply {
        Reply::Full {
            status,
            headers,
            body,
        } => (*status, headers, Some(body.len()), body.clone()),
        Reply::Truncated {
            headers,
            declared,
            body,
        } => (200, headers, Some(*declared), body.clone()),
        Reply::CloseDelimited { headers, body } => (200, headers, None, body.clone()),
    };
    let status = if matches!(&reply, Reply::Full { .. }) {
        status
    } else {
        status_of(headers).unwrap_or(status)
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n",
        reason(status)
    );
    for (n, v) in headers.iter().filter(|(n, _)| n != ":status") {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(l) = length {
        out.push_str(&format!("Content-Length: {l}\r\n"));
    }
    out.push_str("\r\n");
    conn.write_all(out.as_bytes()).await?;
    if !head_only {
        conn.write_all(&body).await?;
    }
    conn.flush().await?;
    conn.shutdown().await?;
    Ok(())
}

/// A ":status" pseudo header overrides 200 for the special replies (206 resumes).
fn status_of(headers: &[(String, String)]) -> Option<u16> {
    headers
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| v.parse().ok())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The content of a fake registry: manifests by repository and tag or digest, blobs by digest.
#[derive(Default, Clone)]
pub struct Content {
    pub manifests: HashMap<(String, String), (String, Bytes)>,
    pub blobs: HashMap<String, Bytes>,
}

impl Content {
    pub fn add_blob(&mut self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = digest_of(bytes);
        self.blobs
            .insert(digest.clone(), Bytes::copy_from_slice(bytes));
        Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            urls: None,
            annotations: None,
        }
    }

    /// Stores a manifest under its digest and, if given, a tag.
    pub fn add_manifest(
        &mut self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> Descriptor {
        let digest = digest_of(bytes);
        let entry = (media_type.to_string(), Bytes::copy_from_slice(bytes));
        self.manifests
            .insert((repo.into(), digest.clone()), entry.clone());
        if let Some(t) = tag {
            self.manifests.insert((repo.into(), t.into()), entry);
        }
        Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            urls: None,
            annotations: None,
        }
    }

    /// A one-layer image; OCI or Docker v2s2 by `docker`.
    pub fn add_image(
        &mut self,
        repo: &str,
        tag: Option<&str>,
        platform: &Platform,
        layer: &[u8],
        docker: bool,
    ) -> Descriptor {
        let (mt, config_mt, layer_mt) = if docker {
            (
                media_type::DOCKER_MANIFEST,
                media_type::DOCKER_CONFIG,
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                media_type::OCI_MANIFEST,
                media_type::OCI_CONFIG,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let layer = self.add_blob(layer_mt, layer);
        let config = serde_json::json!({
            "architecture": platform.architecture, "os": platform.os,
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]}, "config": {}
        });
        let config = self.add_blob(config_mt, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": mt, "config": config, "layers": [layer]
        });
        let mut d = self.add_manifest(
            repo,
            tag,
            mt,
            &serde_json::to_vec_pretty(&manifest).unwrap(),
        );
        d.platform = Some(platform.clone());
        d
    }

    pub fn add_index(
        &mut self,
        repo: &str,
        tag: Option<&str>,
        entries: &[Descriptor],
    ) -> Descriptor {
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": entries
        });
        self.add_manifest(
            repo,
            tag,
            media_type::OCI_INDEX,
            &serde_json::to_vec(&index).unwrap(),
        )
    }

    /// Answers `/v2/`, manifests and blobs; 404 with the distribution error JSON otherwise.
    pub fn serve(&self, req: &FakeRequest) -> Reply {
        let path = req.path();
        if path == "/v2/" {
            return Reply::json(200, serde_json::json!({}));
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Reply::status(404);
        };
        if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
            if let Some((mt, bytes)) = self
                .manifests
                .get(&(repo.to_string(), reference.to_string()))
            {
                return Reply::body(200, mt, bytes.clone())
                    .header("Docker-Content-Digest", &digest_of(bytes));
            }
            return unknown("MANIFEST_UNKNOWN", "manifest unknown");
        }
        if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
            if let Some(bytes) = self.blobs.get(digest) {
                return Reply::body(200, "application/octet-stream", bytes.clone());
            }
            return unknown("BLOB_UNKNOWN", "blob unknown to registry");
        }
        Reply::status(404)
    }
}

fn unknown(code: &str, message: &str) -> Reply {
    Reply::json(
        404,
        serde_json::json!({"errors": [{"code": code, "message": message}]}),
    )
}
