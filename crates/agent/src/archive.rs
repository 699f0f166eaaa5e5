//! `docker save` and `docker load`: image archives in Docker's format, so that files move
//! between Berth and dockerd both ways.
//!
//! A saved archive holds, as Docker 25 writes them, an OCI image layout (`oci-layout`,
//! `index.json`, every manifest, config and layer under `blobs/sha256/`) and beside it Docker's
//! `manifest.json` and `repositories`. The blobs are the ones the store holds: the manifests as
//! they were pulled (their digests unchanged), the layers as the registry compressed them; each
//! is streamed from its own `blob_read` connection to the core. dockerd 20.10 loads such a file
//! through `manifest.json` (it decompresses layers itself).
//!
//! Loading reads `manifest.json` (every Docker format has it; dockerd 20.10's own saves have
//! nothing else). The upload is spooled to a temporary file first, since a tar cannot be read
//! out of order. When `index.json` holds the manifest of an image, its exact bytes are kept;
//! otherwise (dockerd 20.10's layout: `<id>/layer.tar`) an OCI manifest is made for the layers
//! as they are in the file. Layers go to the core as in a pull (`blob_write` with unpack, one
//! connection each), then `image_put`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::{
    BlobWrite, ImageInfo, ImagePut, ImageSelector, LayerRef, LayerUnpack, RawBlob, Request,
    Response,
};
use berth_registry::{media_type, ImageIndex, ImageManifest};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::core_client::{BlobUploadError, CoreClient};
use crate::names::familiar;

/// Configs and manifests larger than this are refused (as the registry client does).
const DOCUMENT_MAX: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// the core refused or failed
    #[error("{0}")]
    Core(berth_proto::Error),
    /// the archive is not one Berth can load
    #[error("{0}")]
    Invalid(String),
    /// reading or writing the spooled archive
    #[error("{0}")]
    Io(String),
}

impl From<berth_proto::Error> for ArchiveError {
    fn from(e: berth_proto::Error) -> Self {
        ArchiveError::Core(e)
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", hex_of(digest))
}

/// Docker's `manifest.json` entry.
#[derive(Debug, Serialize, Deserialize)]
struct ManifestItem {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// save

/// One image to save, and the tags (normalised) it is saved under.
#[derive(Debug, Clone)]
pub struct SaveItem {
    pub image: ImageInfo,
    pub tags: Vec<String>,
}

/// A 512-byte tar header for a regular file (or a directory when `size` is None).
fn tar_header(path: &str, size: Option<u64>) -> Result<Bytes, ArchiveError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| ArchiveError::Invalid(format!("tar path {path}: {e}")))?;
    match size {
        Some(n) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(n);
            h.set_mode(0o644);
        }
        None => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
        }
    }
    h.set_mtime(0);
    h.set_cksum();
    Ok(Bytes::copy_from_slice(h.as_bytes()))
}

fn padding(size: u64) -> Bytes {
    let rest = (512 - size % 512) % 512;
    Bytes::from(vec![0u8; rest as usize])
}

/// Writes the archive of `items` on `tx`, blob by blob as they stream from the core. The
/// caller checked that every blob is stored.
pub async fn save(
    core: Arc<CoreClient>,
    items: Vec<SaveItem>,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), ArchiveError> {
    let send = |b: Bytes| {
        let tx = tx.clone();
        async move {
            tx.send(b)
                .await
                .map_err(|_| ArchiveError::Io("the client went away".into()))
        }
    };
    send(tar_header("blobs/", None)?).await?;
    send(tar_header("blobs/sha256/", None)?).await?;
    let mut written: Vec<String> = Vec::new();
    let mut manifest_json: Vec<ManifestItem> = Vec::new();
    let mut index: Vec<serde_json::Value> = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for item in &items {
        let image = &item.image;
        let manifest_bytes = crate::push::read_small(&core, &image.manifest_digest, DOCUMENT_MAX)
            .await
            .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        let what = format!("manifest {} of image {}", image.manifest_digest, image.id);
        let manifest = ImageManifest::parse(&manifest_bytes, &what)
            .map_err(|e| ArchiveError::Invalid(e.to_string()))?;
        let mut blobs = vec![manifest.config.clone()];
        blobs.extend(manifest.layers.iter().cloned());
        if !written.contains(&image.manifest_digest) {
            let path = blob_path(&image.manifest_digest);
            send(tar_header(&path, Some(manifest_bytes.len() as u64))?).await?;
            send(manifest_bytes.clone()).await?;
            send(padding(manifest_bytes.len() as u64)).await?;
            written.push(image.manifest_digest.clone());
        }
        for desc in &blobs {
            if written.contains(&desc.digest) {
                continue;
            }
            let (size, mut bytes) = core.read_blob(&desc.digest).await?;
            send(tar_header(&blob_path(&desc.digest), Some(size))?).await?;
            let mut sent = 0u64;
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk?;
                sent += chunk.len() as u64;
                send(chunk).await?;
            }
            if sent != size {
                return Err(ArchiveError::Io(format!(
                    "blob {} ended after {sent} of {size} bytes",
                    desc.digest
                )));
            }
            send(padding(size)).await?;
            written.push(desc.digest.clone());
        }
        let shown: Vec<String> = item.tags.iter().map(|t| familiar(t)).collect();
        manifest_json.push(ManifestItem {
            config: blob_path(&manifest.config.digest),
            repo_tags: Some(shown.clone()),
            layers: manifest
                .layers
                .iter()
                .map(|l| blob_path(&l.digest))
                .collect(),
        });
        let media = if image.manifest_media_type.is_empty() {
            media_type::OCI_MANIFEST.to_string()
        } else {
            image.manifest_media_type.clone()
        };
        let entry = |annotations: Option<serde_json::Value>| {
            let mut v = json!({
                "mediaType": media,
                "digest": image.manifest_digest,
                "size": manifest_bytes.len(),
            });
            if let Some(a) = annotations {
                v["annotations"] = a;
            }
            v
        };
        if item.tags.is_empty() {
            index.push(entry(None));
        }
        for (tag, shown) in item.tags.iter().zip(&shown) {
            let short_tag = tag.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
            index.push(entry(Some(json!({
                "io.containerd.image.name": tag,
                "org.opencontainers.image.ref.name": short_tag,
            }))));
            if let (Some((repo, t)), Some(top)) = (shown.rsplit_once(':'), manifest.layers.last()) {
                repositories
                    .entry(repo.to_string())
                    .or_default()
                    .insert(t.to_string(), hex_of(&top.digest).to_string());
            }
        }
    }
    let documents: [(&str, Vec<u8>); 4] = [
        (
            "index.json",
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": media_type::OCI_INDEX,
                "manifests": index,
            }))
            .expect("serialisable"),
        ),
        (
            "manifest.json",
            serde_json::to_vec(&manifest_json).expect("serialisable"),
        ),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        (
            "repositories",
            serde_json::to_vec(&repositories).expect("serialisable"),
        ),
    ];
    for (name, body) in documents {
        send(tar_header(name, Some(body.len() as u64))?).await?;
        let n = body.len() as u64;
        send(Bytes::from(body)).await?;
        send(padding(n)).await?;
    }
    // The end of the archive: two empty blocks.
    send(Bytes::from(vec![0u8; 1024])).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// load

/// Where each regular file of the spooled archive is: byte offset and size.
struct Spool {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `./a/b` and `a/b` are the same member.
fn member_name(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

impl Spool {
    /// Finds every regular file of the archive.
    fn index(mut self) -> Result<Spool, ArchiveError> {
        let mut spool_members = HashMap::new();
        let file = std::fs::File::open(&self.path).map_err(|e| ArchiveError::Io(e.to_string()))?;
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries()
            .map_err(|e| ArchiveError::Invalid(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                ArchiveError::Invalid(format!(
                    "the upload is not a tar archive, or is cut short: {e}"
                ))
            })?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry
                .path()
                .map_err(|e| ArchiveError::Invalid(format!("a member's name: {e}")))?
                .to_string_lossy()
                .into_owned();
            spool_members.insert(
                member_name(&name),
                (entry.raw_file_position(), entry.size()),
            );
        }
        self.members = spool_members;
        Ok(self)
    }

    fn member(&self, name: &str) -> Result<(u64, u64), ArchiveError> {
        self.members
            .get(&member_name(name))
            .copied()
            .ok_or_else(|| ArchiveError::Invalid(format!("the archive has no {name}")))
    }

    /// A whole (small) member.
    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>, ArchiveError> {
        let (offset, size) = self.member(name)?;
        if size > max {
            return Err(ArchiveError::Invalid(format!(
                "{name} has {size} bytes, more than {max}"
            )));
        }
        let mut f = std::fs::File::open(&self.path).map_err(|e| ArchiveError::Io(e.to_string()))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| ArchiveError::Io(e.to_string()))?;
        let mut buf = vec![0u8; size as usize];
        f.read_exact(&mut buf)
            .map_err(|e| ArchiveError::Io(format!("reading {name}: {e}")))?;
        Ok(buf)
    }

    /// sha256 and the first bytes of a member (to tell its compression).
    fn hash(&self, name: &str) -> Result<(String, Vec<u8>), ArchiveError> {
        let (offset, size) = self.member(name)?;
        let mut f = std::fs::File::open(&self.path).map_err(|e| ArchiveError::Io(e.to_string()))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| ArchiveError::Io(e.to_string()))?;
        let mut take = f.take(size);
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = take
                .read(&mut buf)
                .map_err(|e| ArchiveError::Io(format!("reading {name}: {e}")))?;
            if n == 0 {
                break;
            }
            if head.len() < 8 {
                head.extend_from_slice(&buf[..n.min(8 - head.len())]);
            }
            hasher.update(&buf[..n]);
        }
        Ok((format!("sha256:{}", hex::encode(hasher.finalize())), head))
    }

    /// A member as a stream of chunks, for the core.
    async fn stream(
        &self,
        name: &str,
    ) -> Result<impl futures_util::Stream<Item = std::io::Result<Bytes>> + Unpin, ArchiveError>
    {
        let (offset, size) = self.member(name)?;
        let mut f = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| ArchiveError::Io(e.to_string()))?;
        tokio::io::AsyncSeekExt::seek(&mut f, SeekFrom::Start(offset))
            .await
            .map_err(|e| ArchiveError::Io(e.to_string()))?;
        Ok(tokio_util::io::ReaderStream::with_capacity(
            tokio::io::AsyncReadExt::take(f, size),
            256 << 10,
        ))
    }
}

/// The layer media type for a member's first bytes.
fn layer_media_type(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    }
}

/// Spools `body` to a temporary file and indexes it.
pub async fn spool<S, E>(mut body: S) -> Result<SpooledArchive, ArchiveError>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use tokio::io::AsyncWriteExt;
    let path = std::env::temp_dir().join(format!("berth-load-{:032x}.tar", rand::random::<u128>()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .await
        .map_err(|e| ArchiveError::Io(format!("creating {}: {e}", path.display())))?;
    // From here on the file goes when the spool does.
    let spool = Spool {
        path: path.clone(),
        members: HashMap::new(),
    };
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ArchiveError::Io(format!("reading the upload: {e}")))?;
        file.write_all(&chunk)
            .await
            .map_err(|e| ArchiveError::Io(format!("writing {}: {e}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| ArchiveError::Io(e.to_string()))?;
    drop(file);
    let spool = tokio::task::spawn_blocking(move || spool.index())
        .await
        .map_err(|e| ArchiveError::Io(format!("indexing task: {e}")))??;
    Ok(SpooledArchive(Arc::new(spool)))
}

/// An uploaded archive on disk, removed when dropped.
pub struct SpooledArchive(Arc<Spool>);

/// An image of the archive as loaded: its id and the tags given to it.
pub struct Loaded {
    pub id: String,
    pub tags: Vec<String>,
}

/// Loads every image `manifest.json` lists; `normalise` turns a RepoTag into the store's name
/// ("busybox:latest" → "docker.io/library/busybox:latest"), or says why it cannot.
pub async fn load(
    core: Arc<CoreClient>,
    archive: SpooledArchive,
    normalise: impl Fn(&str) -> Result<String, String>,
) -> Result<Vec<Loaded>, ArchiveError> {
    let spool = archive.0;
    let s = spool.clone();
    let (items, originals) = tokio::task::spawn_blocking(move || {
        let text = s.read("manifest.json", DOCUMENT_MAX).map_err(|_| {
            ArchiveError::Invalid(
                "the archive has no manifest.json: not an image archive of docker save".into(),
            )
        })?;
        let items: Vec<ManifestItem> = serde_json::from_slice(&text)
            .map_err(|e| ArchiveError::Invalid(format!("manifest.json: {e}")))?;
        Ok::<_, ArchiveError>((items, originals(&s)))
    })
    .await
    .map_err(|e| ArchiveError::Io(format!("reading the archive: {e}")))??;

    let mut loaded = Vec::new();
    for item in items {
        let s = spool.clone();
        let config_path = item.config.clone();
        let config = tokio::task::spawn_blocking(move || s.read(&config_path, DOCUMENT_MAX))
            .await
            .map_err(|e| ArchiveError::Io(e.to_string()))??;
        let config_digest = sha256(&config);
        let value: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| ArchiveError::Invalid(format!("{}: not JSON: {e}", item.config)))?;
        let diff_ids: Vec<String> = value
            .pointer("/rootfs/diff_ids")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| {
                ArchiveError::Invalid(format!(
                    "{}: the config has no rootfs.diff_ids",
                    item.config
                ))
            })?;
        if diff_ids.len() != item.layers.len() {
            return Err(ArchiveError::Invalid(format!(
                "{}: the config lists {} layers, manifest.json {}",
                item.config,
                diff_ids.len(),
                item.layers.len()
            )));
        }
        let mut chain_ids: Vec<String> = Vec::new();
        for d in &diff_ids {
            let next = match chain_ids.last() {
                None => d.clone(),
                Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
            };
            chain_ids.push(next);
        }
        let tags: Vec<String> = item
            .repo_tags
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|t| normalise(t).map_err(ArchiveError::Invalid))
            .collect::<Result<_, _>>()?;

        // The layers as the archive has them: digest, size and media type.
        let original = originals
            .get(&config_digest)
            .filter(|(_, _, m)| m.layers.len() == item.layers.len());
        let mut layers: Vec<LayerRef> = Vec::new();
        for (i, path) in item.layers.iter().enumerate() {
            let (digest, media) = match original {
                Some((_, _, m)) => (m.layers[i].digest.clone(), m.layers[i].media_type.clone()),
                None => {
                    let s = spool.clone();
                    let p = path.clone();
                    let (digest, head) = tokio::task::spawn_blocking(move || s.hash(&p))
                        .await
                        .map_err(|e| ArchiveError::Io(e.to_string()))??;
                    (digest, layer_media_type(&head).to_string())
                }
            };
            let (_, size) = spool.member(path)?;
            layers.push(LayerRef {
                digest,
                size,
                media_type: media,
                diff_id: diff_ids[i].clone(),
                chain_id: chain_ids[i].clone(),
            });
        }

        let existing = match core
            .call(Request::ImageInspect {
                selector: ImageSelector {
                    name: None,
                    id_prefix: Some(config_digest.clone()),
                },
            })
            .await
        {
            Ok(Response::Image(i)) if i.id == config_digest => Some(i.id),
            _ => None,
        };
        if existing.is_none() {
            let present = match core
                .call(Request::SnapshotsPresent {
                    chain_ids: chain_ids.clone(),
                })
                .await?
            {
                Response::Present { present } => present,
                other => {
                    return Err(ArchiveError::Invalid(format!(
                        "unexpected answer from the core: {other:?}"
                    )))
                }
            };
            for (l, path) in layers.iter().zip(&item.layers) {
                if present.contains(&l.chain_id) {
                    continue;
                }
                let body = spool.stream(path).await?;
                let write = BlobWrite {
                    digest: l.digest.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                    unpack: Some(LayerUnpack {
                        diff_id: l.diff_id.clone(),
                        chain_id: l.chain_id.clone(),
                    }),
                };
                core.write_blob(write, body, |_| {})
                    .await
                    .map_err(|e| match e {
                        BlobUploadError::Source(e) => {
                            ArchiveError::Io(format!("reading {path} of the archive: {e}"))
                        }
                        BlobUploadError::Core(e) => ArchiveError::Invalid(format!(
                            "layer {path} of the archive: {}",
                            e.message
                        )),
                    })?;
            }
            let (manifest_bytes, manifest_type, config_type) = match original {
                Some((bytes, media, m)) => {
                    (bytes.clone(), media.clone(), m.config.media_type.clone())
                }
                None => (
                    made_manifest(&config_digest, config.len(), &layers),
                    media_type::OCI_MANIFEST.to_string(),
                    media_type::OCI_CONFIG.to_string(),
                ),
            };
            let put = ImagePut {
                tag: tags.first().cloned(),
                repo_digest: None,
                index: None,
                manifest: RawBlob {
                    media_type: manifest_type,
                    digest: sha256(&manifest_bytes),
                    text: String::from_utf8_lossy(&manifest_bytes).into_owned(),
                },
                config: RawBlob {
                    media_type: config_type,
                    digest: config_digest.clone(),
                    text: String::from_utf8_lossy(&config).into_owned(),
                },
                layers,
            };
            match core.call(Request::ImagePut(Box::new(put))).await? {
                Response::Image(_) => {}
                other => {
                    return Err(ArchiveError::Invalid(format!(
                        "unexpected answer from the core: {other:?}"
                    )))
                }
            }
        }
        for t in tags.iter().skip(usize::from(existing.is_none())) {
            core.call(Request::ImageTag {
                selector: ImageSelector {
                    name: None,
                    id_prefix: Some(config_digest.clone()),
                },
                target: t.clone(),
            })
            .await?;
        }
        loaded.push(Loaded {
            id: config_digest,
            tags,
        });
    }
    Ok(loaded)
}

/// The image manifests `index.json` lists, by config digest: bytes, media type, parsed.
fn originals(spool: &Spool) -> HashMap<String, (Vec<u8>, String, ImageManifest)> {
    let mut out = HashMap::new();
    let Ok(text) = spool.read("index.json", DOCUMENT_MAX) else {
        return out;
    };
    let Ok(index) = ImageIndex::parse(&text, "index.json") else {
        return out;
    };
    for d in index.manifests {
        let Ok(bytes) = spool.read(&blob_path(&d.digest), DOCUMENT_MAX) else {
            continue;
        };
        if sha256(&bytes) != d.digest {
            continue;
        }
        let Ok(m) = ImageManifest::parse(&bytes, &d.digest) else {
            continue;
        };
        out.insert(m.config.digest.clone(), (bytes, d.media_type.clone(), m));
    }
    out
}

/// An OCI manifest for layers that came without one (dockerd 20.10's archives).
fn made_manifest(config_digest: &str, config_size: usize, layers: &[LayerRef]) -> Vec<u8> {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {
            "mediaType": media_type::OCI_CONFIG,
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&v).expect("serialisable")
}
