//! A pull, host side: resolve with the registry client (mirrors, auth), then stream every
//! missing layer to the core on its own connection, several at once, while the core verifies and
//! unpacks it; finally record the image. Progress goes out as [`Progress`] lines in the shape of
//! Docker's JSON progress stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::{
    BlobWrite, ImagePut, ImageSelector, LayerRef, LayerUnpack, RawBlob, Request, Response,
};
use berth_registry::{Client, Endpoint, Fetched, Platform, Reference, RegistryError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, Semaphore};

use crate::core_client::{BlobUploadError, CoreClient};
use crate::names::familiar;

/// Layers fetched at once.
const PARALLEL_LAYERS: usize = 3;

/// One line of progress: Docker's `{"status", "id", "progressDetail"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub id: Option<String>,
    pub status: String,
    pub current: Option<(u64, u64)>,
}

impl Progress {
    fn line(id: Option<&str>, status: impl Into<String>) -> Progress {
        Progress {
            id: id.map(str::to_string),
            status: status.into(),
            current: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// the registry failed
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// the core refused or failed
    #[error("{0}")]
    Core(berth_proto::Error),
    /// the image is malformed
    #[error("{0}")]
    Invalid(String),
}

impl From<berth_proto::Error> for PullError {
    fn from(e: berth_proto::Error) -> Self {
        PullError::Core(e)
    }
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex[..hex.len().min(12)].to_string()
}

fn sha256_digest(s: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(s.as_bytes())))
}

fn raw(f: &Fetched) -> RawBlob {
    RawBlob {
        media_type: f.media_type.clone(),
        digest: f.digest.clone(),
        text: String::from_utf8_lossy(&f.bytes).into_owned(),
    }
}

/// The first part of a pull: resolving the reference. Errors here become HTTP errors (nothing
/// has been streamed yet), as with dockerd.
pub async fn resolve(
    registry: &Client,
    reference: &Reference,
    platform: &Platform,
) -> Result<berth_registry::Resolved, PullError> {
    Ok(registry.resolve(reference, platform).await?)
}

/// The rest of a pull, reporting on `tx`.
pub async fn fetch(
    core: Arc<CoreClient>,
    registry: Client,
    resolved: berth_registry::Resolved,
    tx: mpsc::Sender<Progress>,
) -> Result<(), PullError> {
    let reference = resolved.reference.clone();
    let send = |p: Progress| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(p).await;
        }
    };
    let tag_or_digest = reference
        .tag
        .clone()
        .or(reference.digest.clone())
        .unwrap_or_default();
    // As dockerd: the repository path without the registry ("library/busybox").
    let repo_path = &reference.repository;
    send(Progress::line(
        Some(&tag_or_digest),
        format!("Pulling from {repo_path}"),
    ))
    .await;
    for s in &resolved.skipped {
        send(Progress::line(
            None,
            format!("Skipped {}: {}", s.endpoint.base, s.reason),
        ))
        .await;
    }
    if resolved.endpoint.mirror {
        send(Progress::line(
            None,
            format!("Using mirror {}", resolved.endpoint.base),
        ))
        .await;
    } else if !resolved.skipped.is_empty()
        || !registry
            .config()
            .mirrors_for(&reference.registry)
            .is_empty()
    {
        // Mirrors are configured and none served: say that the registry itself did.
        send(Progress::line(
            None,
            format!("Using {} (the registry itself)", resolved.endpoint.base),
        ))
        .await;
    }

    let config: serde_json::Value = serde_json::from_slice(&resolved.config.bytes)
        .map_err(|e| PullError::Invalid(format!("image config is not JSON: {e}")))?;
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .ok_or_else(|| PullError::Invalid("image config has no rootfs.diff_ids".into()))?;
    if diff_ids.len() != resolved.layers.len() {
        return Err(PullError::Invalid(format!(
            "image config lists {} layers, the manifest {}",
            diff_ids.len(),
            resolved.layers.len()
        )));
    }
    let mut chain_ids: Vec<String> = Vec::new();
    for d in &diff_ids {
        let next = match chain_ids.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(&format!("{prev} {d}")),
        };
        chain_ids.push(next);
    }
    let layers: Vec<LayerRef> = resolved
        .layers
        .iter()
        .zip(diff_ids.iter().zip(&chain_ids))
        .map(|(l, (diff, chain))| LayerRef {
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
            diff_id: diff.clone(),
            chain_id: chain.clone(),
        })
        .collect();

    let present = match core
        .call(Request::SnapshotsPresent {
            chain_ids: chain_ids.clone(),
        })
        .await?
    {
        Response::Present { present } => present,
        other => {
            return Err(PullError::Invalid(format!(
                "unexpected answer from the core: {other:?}"
            )))
        }
    };
    let mut todo = Vec::new();
    for l in &layers {
        if present.contains(&l.chain_id) {
            send(Progress::line(Some(&short(&l.digest)), "Already exists")).await;
        } else if !todo.iter().any(|t: &LayerRef| t.chain_id == l.chain_id) {
            send(Progress::line(Some(&short(&l.digest)), "Pulling fs layer")).await;
            todo.push(l.clone());
        }
    }

    let manifest_endpoint = &resolved.endpoint;
    let limit = Arc::new(Semaphore::new(PARALLEL_LAYERS));
    let mut jobs = FuturesUnordered::new();
    for l in todo {
        let core = core.clone();
        let registry = registry.clone();
        let reference = reference.clone();
        let limit = limit.clone();
        let tx = tx.clone();
        let desc = resolved
            .layers
            .iter()
            .find(|d| d.digest == l.digest)
            .cloned()
            .expect("layer came from this manifest");
        jobs.push(async move {
            let _permit = limit.acquire().await.expect("semaphore open");
            let id = short(&l.digest);
            // Content a mirror served that fails verification in the core is refused, and the
            // blob fetched again from the next endpoint.
            let mut refused: Vec<Endpoint> = Vec::new();
            loop {
                let blob = registry
                    .fetch_blob_excluding(&reference, &desc, &refused)
                    .await?;
                for s in &blob.skipped {
                    let _ = tx
                        .send(Progress::line(
                            Some(&id),
                            format!("Skipped {}: {}", s.endpoint.base, s.reason),
                        ))
                        .await;
                }
                if !refused.is_empty() || blob.endpoint.base != manifest_endpoint.base {
                    let _ = tx
                        .send(Progress::line(
                            Some(&id),
                            format!("Fetching from {}", blob.endpoint.base),
                        ))
                        .await;
                }
                let source = blob.endpoint.clone();
                let total = l.size;
                let mut last = Instant::now() - Duration::from_secs(1);
                let progress_tx = tx.clone();
                let progress_id = id.clone();
                let write = BlobWrite {
                    digest: l.digest.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                    unpack: Some(LayerUnpack {
                        diff_id: l.diff_id.clone(),
                        chain_id: l.chain_id.clone(),
                    }),
                };
                let result = core
                    .write_blob(write, blob.stream, move |n| {
                        if last.elapsed() >= Duration::from_millis(100) || n == total {
                            last = Instant::now();
                            let _ = progress_tx.try_send(Progress {
                                id: Some(progress_id.clone()),
                                status: "Downloading".into(),
                                current: Some((n, total)),
                            });
                        }
                    })
                    .await;
                return match result {
                    Ok(_) => {
                        let _ = tx
                            .send(Progress::line(Some(&id), "Download complete"))
                            .await;
                        let _ = tx.send(Progress::line(Some(&id), "Pull complete")).await;
                        Ok(())
                    }
                    Err(BlobUploadError::Core(e))
                        if source.mirror && e.code == berth_proto::ErrorCode::DataLoss =>
                    {
                        tracing::warn!(mirror = %source.base, "layer {} refused: {}", l.digest, e.message);
                        let _ = tx
                            .send(Progress::line(
                                Some(&id),
                                format!(
                                    "Skipped {}: its content failed verification: {}",
                                    source.base, e.message
                                ),
                            ))
                            .await;
                        refused.push(source);
                        continue;
                    }
                    Err(BlobUploadError::Source(e)) => Err(PullError::Registry(e)),
                    Err(BlobUploadError::Core(e)) => Err(PullError::Core(e)),
                };
            }
        });
    }
    while let Some(r) = jobs.next().await {
        r?;
    }

    let previous = core
        .call(Request::ImageInspect {
            selector: ImageSelector {
                name: Some(reference.to_string()),
                id_prefix: None,
            },
        })
        .await
        .ok()
        .and_then(|r| match r {
            Response::Image(i) => Some(i.id),
            _ => None,
        });
    let repo_digest = format!("{}@{}", reference.name(), resolved.repo_digest);
    let put = ImagePut {
        tag: reference
            .tag
            .as_ref()
            .map(|_| reference.with_digest_removed()),
        repo_digest: Some(repo_digest),
        index: resolved.index.as_ref().map(raw),
        manifest: raw(&resolved.manifest),
        config: raw(&resolved.config),
        layers,
    };
    let id = match core.call(Request::ImagePut(Box::new(put))).await? {
        Response::Image(i) => i.id,
        other => {
            return Err(PullError::Invalid(format!(
                "unexpected answer from the core: {other:?}"
            )))
        }
    };
    // Before the last lines: once the client sees the pull end, the event is recorded.
    let labels = crate::events::image_labels(&String::from_utf8_lossy(&resolved.config.bytes));
    crate::events::publish(
        &core,
        crate::events::pull_event(&reference.to_string(), labels),
    )
    .await;
    send(Progress::line(
        None,
        format!("Digest: {}", resolved.repo_digest),
    ))
    .await;
    let shown = familiar(&reference.to_string());
    if previous.as_deref() == Some(id.as_str()) {
        send(Progress::line(
            None,
            format!("Status: Image is up to date for {shown}"),
        ))
        .await;
    } else {
        send(Progress::line(
            None,
            format!("Status: Downloaded newer image for {shown}"),
        ))
        .await;
    }
    Ok(())
}

trait WithoutDigest {
    fn with_digest_removed(&self) -> String;
}

impl WithoutDigest for Reference {
    /// "name:tag" even when the reference also carried a digest.
    fn with_digest_removed(&self) -> String {
        format!(
            "{}:{}",
            self.name(),
            self.tag.as_deref().unwrap_or("latest")
        )
    }
}
