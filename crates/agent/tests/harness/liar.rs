//! A registry that lies, for the bad-input tests: it serves one small image it builds itself and
//! misbehaves in the chosen way. Real registries cannot be made to lie, so this one is a seam.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lie {
    /// Everything honest (the control case).
    None,
    /// The layer blob's bytes do not match its digest.
    WrongDigest,
    /// The layer blob stops half-way (the connection closes after half the bytes).
    Truncated,
    /// Every blob request answers 500.
    ServerError,
    /// /v2/ accepts the credentials, every manifest request answers 401 anyway.
    UnauthorizedAfterLogin,
    /// The manifest is not JSON.
    MalformedManifest,
    /// The layer is a valid gzip tar whose diff id does not match the config.
    WrongDiffId,
    /// The layer tries to write outside its root.
    EscapingLayer,
    /// Honest, but the layer arrives slowly (a few seconds), to interrupt a pull half-way.
    Slow,
}

pub struct Image {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
}

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn tar_with(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly: the tar crate refuses ".." in set_path, a liar does not.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn build(lie: Lie) -> Image {
    let tar = if lie == Lie::EscapingLayer {
        tar_with(&[
            ("ok.txt", b"fine\n"),
            ("../../../../../../tmp/berth-liar-escaped", b"pwned\n"),
        ])
    } else {
        // Each lie serves its own content, so no layer is shared with another liar's image.
        let text = format!("hello from a registry that lies: {lie:?}\n");
        tar_with(&[("hello.txt", text.as_bytes())])
    };
    let diff_id = if lie == Lie::WrongDiffId {
        digest(b"something else")
    } else {
        digest(&tar)
    };
    let layer = gzip(&tar);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/hello"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "liar" }],
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&layer), "size": layer.len() }],
    }))
    .unwrap();
    Image {
        manifest,
        config,
        layer,
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, b: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(b.into()).map_err(|n| match n {}).boxed())
        .unwrap()
}

async fn serve(
    lie: Lie,
    img: Arc<Image>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let authed = req.headers().contains_key("authorization");
    if lie == Lie::UnauthorizedAfterLogin {
        if path == "/v2/" && authed {
            return Ok(full(StatusCode::OK, "{}"));
        }
        let mut r = full(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        r.headers_mut()
            .insert("www-authenticate", "Basic realm=\"liar\"".parse().unwrap());
        return Ok(r);
    }
    if path == "/v2/" {
        return Ok(full(StatusCode::OK, "{}"));
    }
    if path.contains("/manifests/") {
        let body = if lie == Lie::MalformedManifest {
            b"{\"schemaVersion\": 2, \"layers\": [".to_vec()
        } else {
            img.manifest.clone()
        };
        let mut r = full(StatusCode::OK, body);
        r.headers_mut().insert(
            "content-type",
            "application/vnd.oci.image.manifest.v1+json"
                .parse()
                .unwrap(),
        );
        return Ok(r);
    }
    if let Some(d) = path.split("/blobs/").nth(1) {
        if lie == Lie::ServerError {
            return Ok(full(StatusCode::INTERNAL_SERVER_ERROR, "boom"));
        }
        if d == digest(&img.config) {
            return Ok(full(StatusCode::OK, img.config.clone()));
        }
        if d == digest(&img.layer) {
            let mut layer = img.layer.clone();
            match lie {
                Lie::WrongDigest => {
                    let n = layer.len();
                    layer[n / 2] ^= 0xff;
                }
                Lie::Truncated => {
                    let half = Bytes::from(layer[..layer.len() / 2].to_vec());
                    let frames = futures_util::stream::iter(vec![
                        Ok(Frame::data(half)),
                        Err(std::io::Error::other("connection dropped")),
                    ]);
                    return Ok(Response::builder()
                        .status(StatusCode::OK)
                        .header("content-length", layer.len())
                        .body(BodyExt::boxed(StreamBody::new(frames)))
                        .unwrap());
                }
                Lie::Slow => {
                    let chunks: Vec<Bytes> = layer
                        .chunks(layer.len().div_ceil(10))
                        .map(Bytes::copy_from_slice)
                        .collect();
                    let frames =
                        futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
                            let c = it.next()?;
                            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                            Some((Ok::<_, std::io::Error>(Frame::data(c)), it))
                        });
                    return Ok(Response::builder()
                        .status(StatusCode::OK)
                        .header("content-length", layer.len())
                        .body(BodyExt::boxed(StreamBody::new(frames)))
                        .unwrap());
                }
                _ => {}
            }
            return Ok(full(StatusCode::OK, layer));
        }
        return Ok(full(
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
        ));
    }
    Ok(full(StatusCode::NOT_FOUND, "{}"))
}

/// Starts the liar on 127.0.0.1 (a random port) in a background thread; returns "127.0.0.1:PORT".
pub fn start(lie: Lie) -> String {
    let img = Arc::new(build(lie));
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let (s, _) = l.accept().await.unwrap();
                let img = img.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve(lie, img.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap().to_string()
}
