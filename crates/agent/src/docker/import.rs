//! `docker import` (`POST /images/create?fromSrc=-`): a flat file system tar becomes a
//! one-layer image.
//!
//! The upload is spooled to a temporary file; gzip is undone (into a second temporary file)
//! while the tar's diff id is computed, and the tar is read through once to refuse what is not
//! one. The layer then goes to the core as an uncompressed layer blob (its digest is its diff
//! id) on a `blob_write` connection with unpack: the same verified extraction a pulled layer
//! takes (no `..`, no writing through symlinks). Then a config (the `--change` lines applied
//! with `berth-dockerfile`, history "Imported from -"), an OCI manifest, and `image_put` with
//! the tag, the record last. Every refusal is an HTTP error and leaves no image.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_proto::{BlobWrite, ImagePut, LayerRef, LayerUnpack, RawBlob, Request, Response};
use berth_registry::media_type;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::StatusCode;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use super::{unexpected, ApiError, ApiResult, Query};
use crate::daemon::Daemon;
use crate::events;
use crate::names::familiar;

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A temporary file of the import, removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(what: &str) -> Temp {
        Temp(std::env::temp_dir().join(format!(
            "berth-import-{what}-{:032x}",
            rand::random::<u128>()
        )))
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// Hashes `r` into `out` (when given), returning the sha256 and the byte count.
fn copy_hashing(
    mut r: impl Read,
    mut out: Option<&mut std::fs::File>,
) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n_total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(f) = out.as_deref_mut() {
            f.write_all(&buf[..n])?;
        }
        n_total += n as u64;
    }
    Ok((
        format!("sha256:{}", hex::encode(hasher.finalize())),
        n_total,
    ))
}

/// The uploaded file as a plain tar: its path (the upload itself, or `plain` with gzip
/// undone), diff id and size. Refuses bzip2, xz and zstd, and what is not a tar.
fn plain_tar(upload: &Path, plain: &Path) -> Result<(PathBuf, String, u64), String> {
    let mut head = [0u8; 6];
    let n = std::fs::File::open(upload)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("reading the upload: {e}"))?;
    let head = &head[..n];
    let (path, digest, size) = if head.starts_with(&[0x1f, 0x8b]) {
        let f = std::fs::File::open(upload).map_err(|e| e.to_string())?;
        let mut out = std::fs::File::create(plain).map_err(|e| e.to_string())?;
        let (d, s) = copy_hashing(flate2::read::GzDecoder::new(f), Some(&mut out))
            .map_err(|e| format!("the gzip stream is damaged or cut short: {e}"))?;
        (plain.to_path_buf(), d, s)
    } else if head.starts_with(b"BZh") {
        return Err(
            "bzip2-compressed archives are not supported by Berth's docker import: \
                    decompress it first (gzip and plain tar are)"
                .into(),
        );
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(
            "xz-compressed archives are not supported by Berth's docker import: \
                    decompress it first (gzip and plain tar are)"
                .into(),
        );
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(
            "zstd-compressed archives are not supported by Berth's docker import: \
                    decompress it first (gzip and plain tar are)"
                .into(),
        );
    } else {
        let f = std::fs::File::open(upload).map_err(|e| e.to_string())?;
        let (d, s) = copy_hashing(f, None).map_err(|e| format!("reading the upload: {e}"))?;
        (upload.to_path_buf(), d, s)
    };
    // Read it through as a tar: garbage and a cut-short archive are refused here with a clear
    // message (escapes are refused by the core's extractor).
    let f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(f);
    let mut count = 0usize;
    for entry in archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("not a tar archive, or cut short: {e}"))?;
        std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| format!("not a tar archive, or cut short: {e}"))?;
        count += 1;
    }
    if count == 0 {
        return Err("not a tar archive: it has no entries".into());
    }
    Ok((path, digest, size))
}

/// `POST /images/create?fromSrc=-&repo=&tag=&message=&changes=&platform=` with the tarball as
/// the body.
pub async fn import(daemon: Arc<Daemon>, q: &Query, req: hyper::Request<Incoming>) -> ApiResult {
    let src = q.get("fromSrc").unwrap_or("");
    if src != "-" {
        return Err(bad(format!(
            "importing from a URL ({src}) is not supported by Berth: download the file and \
             give it to docker import as a file or on stdin"
        )));
    }
    // Spool the upload first: a refusal before the body is read would break the client's
    // pipe instead of showing it the message.
    let changes = super::build::all_values(req.uri().query(), "changes");
    let upload = Temp::new("upload");
    {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(&upload.0)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| bad(format!("reading the upload: {e}")))?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data)
                    .await
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            }
        }
        file.flush()
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    let tag = match q.get("repo").filter(|s| !s.is_empty()) {
        Some(repo) => {
            let text = match q.get("tag").filter(|s| !s.is_empty()) {
                Some(t) => format!("{repo}:{t}"),
                None => repo.to_string(),
            };
            let r = super::images::parse_ref(&text)?;
            if r.digest.is_some() {
                return Err(bad("refusing to create a tag with a digest reference"));
            }
            Some(r.to_string())
        }
        None => None,
    };
    let (os, arch, variant) = match q.get("platform").filter(|s| !s.is_empty()) {
        Some(p) => {
            let mut parts = p.split('/');
            let os = parts.next().unwrap_or("linux").to_string();
            if os != "linux" {
                return Err(bad(format!("unsupported os {os}: Berth runs linux images")));
            }
            let arch = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| daemon.platform.architecture.clone());
            (os, arch, parts.next().map(str::to_string))
        }
        None => (
            "linux".to_string(),
            daemon.platform.architecture.clone(),
            daemon.platform.variant.clone(),
        ),
    };
    // The config's `config`, from the changes.
    let mut config = Map::new();
    berth_dockerfile::config::apply_changes(&mut config, &changes).map_err(bad)?;

    let plain = Temp::new("layer");
    let upload_path = upload.0.clone();
    let plain_path = plain.0.clone();
    let result = tokio::task::spawn_blocking(move || plain_tar(&upload_path, &plain_path))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (layer_path, diff_id, size) = result.map_err(bad)?;

    // The layer, through the core's verified unpack.
    let file = tokio::fs::File::open(&layer_path)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let present = match daemon
        .core
        .call(Request::SnapshotsPresent {
            chain_ids: vec![diff_id.clone()],
        })
        .await?
    {
        Response::Present { present } => present,
        other => return Err(unexpected(other)),
    };
    if !present.contains(&diff_id) {
        let write = BlobWrite {
            digest: diff_id.clone(),
            size,
            media_type: LAYER_TAR.to_string(),
            unpack: Some(LayerUnpack {
                diff_id: diff_id.clone(),
                chain_id: diff_id.clone(),
            }),
        };
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
        daemon
            .core
            .write_blob(write, stream, |_| {})
            .await
            .map_err(|e| match e {
                crate::core_client::BlobUploadError::Source(e) => {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                }
                crate::core_client::BlobUploadError::Core(e) => {
                    bad(format!("the archive cannot be imported: {}", e.message))
                }
            })?;
    }
    drop(upload);
    drop(plain);

    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let message = q.get("message").filter(|s| !s.is_empty());
    let comment = message
        .map(str::to_string)
        .unwrap_or_else(|| format!("Imported from {src}"));
    let mut doc = json!({
        "architecture": arch,
        "os": os,
        "created": created,
        "config": Value::Object(config),
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [ { "created": created, "comment": comment } ],
    });
    if let Some(m) = message {
        doc["comment"] = json!(m);
    }
    if let Some(v) = variant {
        doc["variant"] = json!(v);
    }
    let config_text = serde_json::to_string(&doc).expect("JSON");
    let config_digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(config_text.as_bytes()))
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {
            "mediaType": media_type::OCI_CONFIG,
            "digest": config_digest,
            "size": config_text.len(),
        },
        "layers": [ { "mediaType": LAYER_TAR, "digest": diff_id, "size": size } ],
    });
    let manifest_text = serde_json::to_string(&manifest).expect("JSON");
    let put = ImagePut {
        tag: tag.clone(),
        repo_digest: None,
        index: None,
        manifest: RawBlob {
            media_type: media_type::OCI_MANIFEST.to_string(),
            digest: format!(
                "sha256:{}",
                hex::encode(Sha256::digest(manifest_text.as_bytes()))
            ),
            text: manifest_text,
        },
        config: RawBlob {
            media_type: media_type::OCI_CONFIG.to_string(),
            digest: config_digest.clone(),
            text: config_text,
        },
        layers: vec![LayerRef {
            digest: diff_id.clone(),
            size,
            media_type: LAYER_TAR.to_string(),
            diff_id: diff_id.clone(),
            chain_id: diff_id,
        }],
    };
    let info = match daemon.core.call(Request::ImagePut(Box::new(put))).await? {
        Response::Image(i) => i,
        other => return Err(unexpected(other)),
    };
    let labels = events::image_labels(&info.config);
    events::publish(
        &daemon.core,
        events::image_event("import", &info.id, &info.id, labels.clone()),
    )
    .await;
    if let Some(t) = &tag {
        events::publish(
            &daemon.core,
            events::image_event("tag", &info.id, &familiar(t), labels),
        )
        .await;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let mut line = serde_json::to_vec(&json!({ "status": info.id })).expect("JSON");
    line.extend_from_slice(b"\r\n");
    let _ = tx.send(Bytes::from(line)).await;
    drop(tx);
    Ok(super::json_stream(rx))
}
