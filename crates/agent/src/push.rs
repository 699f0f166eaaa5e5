//! A push, host side: for each tag, the image's manifest is read back from the core's content
//! store (the exact bytes it was pulled with), its layers are skipped when the registry has
//! them, mounted from another repository of the same registry the store knows has them, or
//! streamed from the core (one connection per blob) into the upload; then the config, then
//! the manifest, byte for byte, so the digest is unchanged. Progress goes out in the shape of
//! dockerd's push stream. The registry itself is the only endpoint: mirrors never see a push.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::{ImageInfo, ImageSelector, Request};
use berth_registry::{
    Client, Descriptor, ImageManifest, Mount, Reference, RegistryError, UploadPolicy, UploadSession,
};
use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, Semaphore};

use crate::core_client::CoreClient;
use crate::pull::Progress;

/// Layers uploaded at once.
const PARALLEL_LAYERS: usize = 3;
/// Attempts at one blob when the registry or the connection fails part-way (each starts the
/// upload again: a streamed body cannot be replayed).
const BLOB_ATTEMPTS: u32 = 3;
/// Mount sources tried per layer (dockerd tries as many).
const MOUNT_CANDIDATES: usize = 3;
/// Manifests larger than this are not read back (the registry client refuses them too).
const MANIFEST_MAX: u64 = 4 << 20;

/// What a push reports: progress lines, and the `aux` record of each tag pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutput {
    Line(Progress),
    Pushed {
        tag: String,
        digest: String,
        size: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// the registry failed
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// the core refused or failed
    #[error("{0}")]
    Core(berth_proto::Error),
    /// the image or the request cannot be pushed
    #[error("{0}")]
    Invalid(String),
}

impl From<berth_proto::Error> for PushError {
    fn from(e: berth_proto::Error) -> Self {
        PushError::Core(e)
    }
}

/// One tag to push and the image it names.
#[derive(Debug, Clone)]
pub struct TagJob {
    pub tag: String,
    pub image: ImageInfo,
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex[..hex.len().min(12)].to_string()
}

fn line(id: Option<&str>, status: impl Into<String>) -> PushOutput {
    PushOutput::Line(Progress {
        id: id.map(str::to_string),
        status: status.into(),
        current: None,
    })
}

/// The repositories of the same registry (other than `target`) that the store knows hold the
/// layer: those the images using it were pulled from or pushed to (their repo digests).
fn mount_sources(images: &[ImageInfo], layer: &str, target: &Reference) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for img in images {
        if !img.layers.iter().any(|l| l.digest == layer) {
            continue;
        }
        for rd in &img.repo_digests {
            let Some((name, _)) = rd.split_once('@') else {
                continue;
            };
            let Some(repo) = name
                .strip_prefix(target.registry.as_str())
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            if repo != target.repository && !out.iter().any(|o| o == repo) {
                out.push(repo.to_string());
            }
        }
    }
    out.truncate(MOUNT_CANDIDATES);
    out
}

/// Pushes each tag of `jobs` to the repository `target` (its tag is ignored), reporting on
/// `tx`. Returns the manifest digest pushed for each tag.
pub async fn push(
    core: Arc<CoreClient>,
    registry: Client,
    target: Reference,
    jobs: Vec<TagJob>,
    known: Vec<ImageInfo>,
    policy: UploadPolicy,
    tx: mpsc::Sender<PushOutput>,
) -> Result<Vec<(String, String)>, PushError> {
    let known = Arc::new(known);
    let mut pushed = Vec::new();
    for job in jobs {
        let digest = push_tag(&core, &registry, &target, &job, &known, policy, &tx).await?;
        pushed.push((job.tag.clone(), digest));
    }
    Ok(pushed)
}

async fn push_tag(
    core: &Arc<CoreClient>,
    registry: &Client,
    target: &Reference,
    job: &TagJob,
    known: &Arc<Vec<ImageInfo>>,
    policy: UploadPolicy,
    tx: &mpsc::Sender<PushOutput>,
) -> Result<String, PushError> {
    let image = &job.image;
    let manifest_bytes = read_small(core, &image.manifest_digest, MANIFEST_MAX).await?;
    let what = format!("manifest {} of image {}", image.manifest_digest, image.id);
    let manifest = ImageManifest::parse(&manifest_bytes, &what)?;
    if manifest.layers.len() != image.layers.len() {
        return Err(PushError::Invalid(format!(
            "the stored {what} lists {} layers, the image record {}",
            manifest.layers.len(),
            image.layers.len()
        )));
    }
    // Progress ids are the short diff ids, as dockerd's; the top layer is listed first.
    let mut layers: Vec<(String, Descriptor)> = Vec::new();
    for (desc, info) in manifest.layers.iter().zip(&image.layers).rev() {
        if !layers.iter().any(|(_, d)| d.digest == desc.digest) {
            layers.push((short(&info.diff_id), desc.clone()));
        }
    }
    for (id, _) in &layers {
        let _ = tx.send(line(Some(id), "Preparing")).await;
    }
    let limit = Arc::new(Semaphore::new(PARALLEL_LAYERS));
    let mut uploads = FuturesUnordered::new();
    for (id, desc) in layers {
        let limit = limit.clone();
        let tx = tx.clone();
        let core = core.clone();
        let registry = registry.clone();
        let target = target.clone();
        let sources = mount_sources(known, &desc.digest, &target);
        uploads.push(async move {
            let _permit = match limit.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let _ = tx.send(line(Some(&id), "Waiting")).await;
                    limit.acquire_owned().await.expect("semaphore open")
                }
            };
            push_layer(&core, &registry, &target, &id, &desc, &sources, policy, &tx).await
        });
    }
    while let Some(r) = uploads.next().await {
        r?;
    }

    let config = &manifest.config;
    if config.digest != image.id {
        return Err(PushError::Invalid(format!(
            "the stored {what} names config {}, the image is {}",
            config.digest, image.id
        )));
    }
    if !registry.blob_exists(target, &config.digest).await? {
        upload_blob(core, registry, target, config, policy, None, |_| {}).await?;
    }
    let media_type = if image.manifest_media_type.is_empty() {
        manifest.media_type.clone().unwrap_or_default()
    } else {
        image.manifest_media_type.clone()
    };
    let size = manifest_bytes.len() as u64;
    let digest = registry
        .push_manifest(target, &job.tag, &media_type, manifest_bytes)
        .await?;
    let _ = tx
        .send(line(
            None,
            format!("{}: digest: {digest} size: {size}", job.tag),
        ))
        .await;
    let _ = tx
        .send(PushOutput::Pushed {
            tag: job.tag.clone(),
            digest: digest.clone(),
            size,
        })
        .await;
    // The image now has this repository's digest, as dockerd records it after a push (later
    // pushes to other repositories of the registry mount from it).
    core.call(Request::ImageTag {
        selector: ImageSelector {
            name: None,
            id_prefix: Some(image.id.clone()),
        },
        target: format!("{}@{digest}", target.name()),
    })
    .await?;
    Ok(digest)
}

#[allow(clippy::too_many_arguments)]
async fn push_layer(
    core: &CoreClient,
    registry: &Client,
    target: &Reference,
    id: &str,
    desc: &Descriptor,
    sources: &[String],
    policy: UploadPolicy,
    tx: &mpsc::Sender<PushOutput>,
) -> Result<(), PushError> {
    if registry.blob_exists(target, &desc.digest).await? {
        let _ = tx.send(line(Some(id), "Layer already exists")).await;
        return Ok(());
    }
    let mut session = None;
    for from in sources {
        match registry
            .start_upload(target, Some((&desc.digest, from)))
            .await
        {
            Ok(Mount::Mounted) => {
                let _ = tx
                    .send(line(Some(id), format!("Mounted from {from}")))
                    .await;
                return Ok(());
            }
            Ok(Mount::Declined(s)) => session = Some(s),
            Err(e) => {
                // A refused mount is not the push's failure: the blob is uploaded instead.
                tracing::debug!("mounting {} from {from}: {e}", desc.digest);
            }
        }
    }
    let total = desc.size;
    let mut last = Instant::now() - Duration::from_secs(1);
    let progress_tx = tx.clone();
    let progress_id = id.to_string();
    upload_blob(core, registry, target, desc, policy, session, move |n| {
        if last.elapsed() >= Duration::from_millis(100) || n == total {
            last = Instant::now();
            let _ = progress_tx.try_send(PushOutput::Line(Progress {
                id: Some(progress_id.clone()),
                status: "Pushing".into(),
                current: Some((n, total)),
            }));
        }
    })
    .await?;
    let _ = tx.send(line(Some(id), "Pushed")).await;
    Ok(())
}

/// Streams a stored blob from the core into an upload, starting again (a new read, a new
/// upload) when the registry or the connection fails part-way.
async fn upload_blob(
    core: &CoreClient,
    registry: &Client,
    target: &Reference,
    desc: &Descriptor,
    policy: UploadPolicy,
    mut session: Option<UploadSession>,
    on_bytes: impl FnMut(u64) + Send + 'static,
) -> Result<(), PushError> {
    let on_bytes = Arc::new(std::sync::Mutex::new(on_bytes));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (size, bytes) = core.read_blob(&desc.digest).await.map_err(|e| {
            if e.code == berth_proto::ErrorCode::NotFound {
                PushError::Invalid(format!(
                    "blob {} of the image is not in the store (only its unpacked layer is, \
                     e.g. from another image with the same content), so it cannot be pushed",
                    desc.digest
                ))
            } else {
                PushError::Core(e)
            }
        })?;
        if size != desc.size {
            return Err(PushError::Invalid(format!(
                "the stored blob {} has {size} bytes, its manifest says {}",
                desc.digest, desc.size
            )));
        }
        let counter = on_bytes.clone();
        let mut sent = 0u64;
        let body = bytes.map(move |chunk| {
            let chunk =
                chunk.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            sent += chunk.len() as u64;
            (counter.lock().expect("progress"))(sent);
            Ok(chunk)
        });
        match registry
            .push_blob(
                target,
                &desc.digest,
                size,
                Box::pin(body),
                policy,
                session.take(),
            )
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if attempt < BLOB_ATTEMPTS && e.upload_may_succeed_again() => {
                tracing::info!("upload of {} failed, starting it again: {e}", desc.digest);
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A small stored blob (a manifest), whole, checked against its digest.
pub(crate) async fn read_small(
    core: &CoreClient,
    digest: &str,
    max: u64,
) -> Result<Bytes, PushError> {
    let (size, mut bytes) = core.read_blob(digest).await?;
    if size > max {
        return Err(PushError::Invalid(format!(
            "stored document {digest} has {size} bytes, more than {max}"
        )));
    }
    let mut buf = BytesMut::with_capacity(size as usize);
    while let Some(chunk) = bytes.next().await {
        buf.extend_from_slice(&chunk?);
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&buf)));
    if actual != digest {
        return Err(PushError::Invalid(format!(
            "stored document {digest} has digest {actual}"
        )));
    }
    Ok(buf.freeze())
}

/// The tags of `repository` ("127.0.0.1:15000/berth/x") among the store's images, sorted, with
/// their images: what a push without a tag sends.
pub fn tags_of(images: &[ImageInfo], repository: &str) -> Vec<TagJob> {
    let mut out: Vec<TagJob> = Vec::new();
    let mut seen = BTreeSet::new();
    for img in images {
        for t in &img.repo_tags {
            let Some(tag) = t
                .strip_prefix(repository)
                .and_then(|rest| rest.strip_prefix(':'))
            else {
                continue;
            };
            if seen.insert(tag.to_string()) {
                out.push(TagJob {
                    tag: tag.to_string(),
                    image: img.clone(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.tag.cmp(&b.tag));
    out
}

/// Announces a finished push of `reference` ("127.0.0.1:15000/berth/x:latest") as dockerd's
/// `push` image event (Actor.ID the familiar reference, `name` its repository).
pub async fn announce_pushed(core: &CoreClient, reference: &str, image: &ImageInfo) {
    let shown = crate::names::familiar(reference);
    let name = crate::events::strip_tag(&shown);
    let labels = crate::events::image_labels(&image.config);
    crate::events::publish(
        core,
        crate::events::image_event("push", &shown, &name, labels),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(layer: &str, repo_digests: &[&str], tags: &[&str]) -> ImageInfo {
        ImageInfo {
            id: "sha256:c".into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: repo_digests.iter().map(|s| s.to_string()).collect(),
            manifest_digest: "sha256:m".into(),
            manifest_media_type: String::new(),
            config: "{}".into(),
            layers: vec![berth_proto::LayerInfo {
                digest: layer.into(),
                media_type: String::new(),
                size: 1,
                diff_id: "sha256:d".into(),
                chain_id: "sha256:d".into(),
                unpacked_size: 1,
            }],
            size: 1,
            stored_at: String::new(),
            last_tag_time: None,
        }
    }

    #[test]
    fn mount_sources_are_other_repositories_of_the_same_registry() {
        let target = Reference::parse("127.0.0.1:15000/berth/new:latest").unwrap();
        let images = vec![
            image(
                "sha256:l",
                &[
                    "127.0.0.1:15000/berth/hello@sha256:x",
                    "127.0.0.1:15001/berth/hello@sha256:x",
                    "127.0.0.1:15000/berth/new@sha256:x",
                    "127.0.0.1:150000/berth/other@sha256:x",
                ],
                &[],
            ),
            image(
                "sha256:other",
                &["127.0.0.1:15000/berth/busybox@sha256:y"],
                &[],
            ),
        ];
        assert_eq!(
            mount_sources(&images, "sha256:l", &target),
            vec!["berth/hello".to_string()]
        );
        assert!(mount_sources(&images, "sha256:none", &target).is_empty());
    }

    #[test]
    fn tags_of_a_repository_are_sorted_and_exact() {
        let images = vec![
            image(
                "sha256:l",
                &[],
                &["127.0.0.1:15000/berth/x:v2", "127.0.0.1:15000/berth/xy:v1"],
            ),
            image("sha256:k", &[], &["127.0.0.1:15000/berth/x:a"]),
        ];
        let tags: Vec<String> = tags_of(&images, "127.0.0.1:15000/berth/x")
            .into_iter()
            .map(|j| j.tag)
            .collect();
        assert_eq!(tags, vec!["a", "v2"]);
    }
}
