//! The image service: layers arriving as streams become verified blobs and snapshots; verified
//! manifests and configs become image records; references move atomically; removal frees what
//! no remaining image uses.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_proto::{
    DiskUsage, Error, ErrorCode, ImageInfo, ImagePut, ImageSelector, ImageUsage, LayerInfo,
    LayerUnpack, RemoveEvent,
};

use crate::content::ContentStore;
use crate::digest::{chain_ids, Digest};
use crate::meta::{ImageRecord, LayerRecord, MetaError, MetaStore};
use crate::snapshot::{SnapshotInfo, SnapshotStore};
use crate::unpack::{unpack_layer, Compression, UnpackError};

/// Manifests, indexes and configs larger than this are refused.
const MAX_DOCUMENT: u64 = 4 << 20;

pub struct ImageService {
    root: PathBuf,
    pub content: ContentStore,
    pub snapshots: SnapshotStore,
    meta: MetaStore,
    /// Serialises reference changes and garbage collection against image records.
    refs_lock: Mutex<()>,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Internal, e.to_string())
}

impl From<MetaError> for Error {
    fn from(e: MetaError) -> Error {
        internal(e)
    }
}

fn parse_digest(what: &str, s: &str) -> Result<Digest, Error> {
    Digest::parse(s)
        .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("{what} {s:?}: {e}")))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl ImageService {
    pub fn open(root: &Path) -> Result<ImageService, Error> {
        std::fs::create_dir_all(root)
            .map_err(|e| internal(format!("creating {}: {e}", root.display())))?;
        let content = ContentStore::open(root).map_err(internal)?;
        let snapshots = SnapshotStore::open(root).map_err(internal)?;
        let meta = MetaStore::open(&root.join("meta.redb"))?;
        Ok(ImageService {
            root: root.to_path_buf(),
            content,
            snapshots,
            meta,
            refs_lock: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn image_count(&self) -> u64 {
        self.meta.image_ids().map(|v| v.len() as u64).unwrap_or(0)
    }

    pub fn blobs_present(&self, digests: &[String]) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for d in digests {
            if self.content.contains(&parse_digest("blob digest", d)?) {
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    /// Opens a stored blob to stream it back, with its size; `not_found` when the store does
    /// not hold it (a layer whose snapshot came from another image's blob, say).
    pub fn open_blob(&self, digest: &str) -> Result<(std::fs::File, u64), Error> {
        let d = parse_digest("blob digest", digest)?;
        self.content.open_blob(&d).map_err(|e| match e {
            crate::content::ContentError::NotFound(_) => Error::new(
                ErrorCode::NotFound,
                format!("blob {digest} is not in the store"),
            ),
            e => internal(e),
        })
    }

    /// A snapshot counts only when both its tree and its record exist.
    pub fn snapshots_present(&self, chain_ids: &[String]) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        for c in chain_ids {
            let d = parse_digest("chain id", c)?;
            if self.snapshots.exists(&d) && self.meta.layer(c)?.is_some() {
                out.push(c.clone());
            }
        }
        Ok(out)
    }

    /// Stores one blob read from `reader` (exactly `size` bytes are expected). For a layer the
    /// bytes are unpacked into a new snapshot in the same pass; the blob and the snapshot become
    /// visible only when the digest, the size and the diff id all check out. Returns the
    /// unpacked size for layers.
    pub fn write_blob<R: Read>(
        &self,
        reader: R,
        digest: &str,
        size: u64,
        media_type: &str,
        unpack: Option<&LayerUnpack>,
    ) -> Result<Option<u64>, Error> {
        let digest = parse_digest("blob digest", digest)?;
        let writer = self.content.writer(&digest, size).map_err(internal)?;
        let Some(layer) = unpack else {
            let mut tee = crate::content::TeeReader::new(reader, writer);
            std::io::copy(&mut tee, &mut std::io::sink())
                .map_err(|e| Error::new(ErrorCode::DataLoss, format!("blob {digest}: {e}")))?;
            tee.finish()
                .map_err(|e| Error::new(ErrorCode::DataLoss, e.to_string()))?;
            return Ok(None);
        };
        let diff_id = parse_digest("diff id", &layer.diff_id)?;
        let chain_id = parse_digest("chain id", &layer.chain_id)?;
        let compression = Compression::from_media_type(media_type)
            .map_err(|e| Error::new(ErrorCode::Unsupported, e.to_string()))?;
        let prepared = self.snapshots.prepare().map_err(internal)?;
        let existed = self.content.contains(&digest);
        let mut tee = crate::content::TeeReader::new(reader, writer);
        let stats = match unpack_layer(&mut tee, compression, prepared.path()) {
            Ok(stats) => stats,
            Err(e) => {
                // Say the root cause: bytes that are not what the registry promised explain a
                // corrupt stream better than the decompressor's complaint does.
                let _ = std::io::copy(&mut tee, &mut std::io::sink());
                if let Err(c) = tee.finish() {
                    return Err(Error::new(
                        ErrorCode::DataLoss,
                        format!("layer {digest}: {c}"),
                    ));
                }
                if !existed {
                    let _ = self.content.delete(&digest);
                }
                let code = match e {
                    UnpackError::Stream(_) => ErrorCode::DataLoss,
                    _ => ErrorCode::InvalidArgument,
                };
                return Err(Error::new(code, format!("layer {digest}: {e}")));
            }
        };
        if stats.diff_id != diff_id {
            // Dropping the tee unread-to-the-end discards the blob too.
            return Err(Error::new(
                ErrorCode::DataLoss,
                format!(
                    "layer {digest}: its uncompressed content has diff id {} but the image config says {diff_id}",
                    stats.diff_id
                ),
            ));
        }
        tee.finish()
            .map_err(|e| Error::new(ErrorCode::DataLoss, format!("layer {digest}: {e}")))?;
        prepared
            .commit_with(SnapshotInfo {
                chain_id: chain_id.clone(),
                diff_id: Some(diff_id.clone()),
                size: Some(stats.size),
            })
            .map_err(internal)?;
        self.meta.put_layer(
            &layer.chain_id,
            &LayerRecord {
                diff_id: diff_id.to_string(),
                unpacked_size: stats.size,
            },
        )?;
        Ok(Some(stats.size))
    }

    /// Records an image. Every document is verified against its digest, the layers against the
    /// config's diff ids, and every layer must already be stored.
    pub fn put(&self, put: &ImagePut) -> Result<ImageInfo, Error> {
        let mut docs = vec![&put.manifest, &put.config];
        docs.extend(put.index.as_ref());
        for doc in &docs {
            let d = parse_digest("document digest", &doc.digest)?;
            let actual = Digest::of(doc.text.as_bytes());
            if actual != d {
                return Err(Error::new(
                    ErrorCode::DataLoss,
                    format!("{} has digest {actual}, expected {d}", doc.media_type),
                ));
            }
        }
        let config: serde_json::Value = serde_json::from_str(&put.config.text).map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("image config is not JSON: {e}"),
            )
        })?;
        let diff_ids: Vec<Digest> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|v| v.as_array())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    "image config has no rootfs.diff_ids",
                )
            })?
            .iter()
            .map(|v| parse_digest("diff id", v.as_str().unwrap_or_default()))
            .collect::<Result<_, _>>()?;
        if diff_ids.len() != put.layers.len() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "image config lists {} layers but the manifest {}",
                    diff_ids.len(),
                    put.layers.len()
                ),
            ));
        }
        let chains = chain_ids(&diff_ids);
        let mut layers = Vec::new();
        for ((l, diff), chain) in put.layers.iter().zip(&diff_ids).zip(&chains) {
            if l.diff_id != diff.to_string() || l.chain_id != chain.to_string() {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "layer {} does not match the image config's diff ids",
                        l.digest
                    ),
                ));
            }
            let rec = self
                .meta
                .layer(&l.chain_id)?
                .filter(|_| self.snapshots.exists(chain));
            let Some(rec) = rec else {
                return Err(Error::new(
                    ErrorCode::InvalidState,
                    format!("layer {} (chain {}) is not stored", l.digest, l.chain_id),
                ));
            };
            layers.push(LayerInfo {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
                diff_id: l.diff_id.clone(),
                chain_id: l.chain_id.clone(),
                unpacked_size: rec.unpacked_size,
            });
        }
        for doc in &docs {
            let d = parse_digest("document digest", &doc.digest)?;
            self.content
                .put(&d, doc.text.as_bytes())
                .map_err(internal)?;
        }
        let id = put.config.digest.clone();
        let _guard = self.refs_lock.lock().expect("refs lock");
        let stamp = now();
        let previous = self.meta.image(&id)?;
        let record = ImageRecord {
            id: id.clone(),
            manifest_digest: put.manifest.digest.clone(),
            manifest_media_type: put.manifest.media_type.clone(),
            index_digest: put.index.as_ref().map(|i| i.digest.clone()),
            size: layers.iter().map(|l| l.unpacked_size).sum(),
            layers,
            stored_at: previous
                .as_ref()
                .map(|p| p.stored_at.clone())
                .unwrap_or(stamp.clone()),
            last_tag_time: previous.and_then(|p| p.last_tag_time),
        };
        let refs: Vec<String> = put
            .tag
            .iter()
            .chain(put.repo_digest.iter())
            .cloned()
            .collect();
        self.meta.put_image(&record, &refs)?;
        drop(_guard);
        self.info(&id)
    }

    fn info(&self, id: &str) -> Result<ImageInfo, Error> {
        let rec = self
            .meta
            .image(id)?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("no such image: {id}")))?;
        let refs = self.meta.refs()?.remove(id).unwrap_or_default();
        self.to_info(rec, refs)
    }

    fn to_info(&self, rec: ImageRecord, refs: Vec<String>) -> Result<ImageInfo, Error> {
        let config_digest = parse_digest("image id", &rec.id)?;
        let config = self
            .content
            .read_all(&config_digest, MAX_DOCUMENT)
            .map_err(internal)?;
        let (repo_digests, repo_tags): (Vec<String>, Vec<String>) =
            refs.into_iter().partition(|r| r.contains('@'));
        Ok(ImageInfo {
            id: rec.id,
            repo_tags,
            repo_digests,
            manifest_digest: rec.manifest_digest,
            manifest_media_type: rec.manifest_media_type,
            config: String::from_utf8_lossy(&config).into_owned(),
            layers: rec.layers,
            size: rec.size,
            stored_at: rec.stored_at,
            last_tag_time: rec.last_tag_time,
        })
    }

    pub fn list(&self) -> Result<Vec<ImageInfo>, Error> {
        let mut refs = self.meta.refs()?;
        self.meta
            .images()?
            .into_iter()
            .map(|rec| {
                let r = refs.remove(&rec.id).unwrap_or_default();
                self.to_info(rec, r)
            })
            .collect()
    }

    /// Finds the image id a selector means: the reference first, then an id prefix.
    pub fn resolve(&self, sel: &ImageSelector) -> Result<String, Error> {
        if let Some(name) = &sel.name {
            if let Some(id) = self.meta.resolve_ref(name)? {
                return Ok(id);
            }
        }
        if let Some(prefix) = &sel.id_prefix {
            let p = prefix.strip_prefix("sha256:").unwrap_or(prefix);
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit()) {
                let p = format!("sha256:{}", p.to_ascii_lowercase());
                let hits: Vec<String> = self
                    .meta
                    .image_ids()?
                    .into_iter()
                    .filter(|id| id.starts_with(&p))
                    .collect();
                match hits.len() {
                    1 => return Ok(hits.into_iter().next().expect("one hit")),
                    0 => {}
                    _ => {
                        return Err(Error::new(
                            ErrorCode::InvalidArgument,
                            format!("image id prefix {prefix} is ambiguous"),
                        ))
                    }
                }
            }
        }
        let what = sel
            .name
            .as_deref()
            .or(sel.id_prefix.as_deref())
            .unwrap_or("(nothing)");
        Err(Error::new(
            ErrorCode::NotFound,
            format!("No such image: {what}"),
        ))
    }

    pub fn inspect(&self, sel: &ImageSelector) -> Result<ImageInfo, Error> {
        let id = self.resolve(sel)?;
        self.info(&id)
    }

    pub fn tag(&self, sel: &ImageSelector, target: &str) -> Result<(), Error> {
        let _guard = self.refs_lock.lock().expect("refs lock");
        let id = self.resolve(sel)?;
        self.meta.set_ref(target, &id, &now())?;
        Ok(())
    }

    /// Docker's `rmi`: by name, untag (and drop the repository's digest references when its last
    /// tag goes); the image itself goes when no reference is left. By id, every reference goes,
    /// which needs `force` when they span several repositories.
    pub fn remove(&self, sel: &ImageSelector, force: bool) -> Result<Vec<RemoveEvent>, Error> {
        let guard = self.refs_lock.lock().expect("refs lock");
        let by_name = match &sel.name {
            Some(n) => self.meta.resolve_ref(n)?.map(|id| (n.clone(), id)),
            None => None,
        };
        let (id, mut untag) = match by_name {
            Some((name, id)) => (id, vec![name]),
            None => (self.resolve(sel)?, vec![]),
        };
        let all_refs = self.meta.refs()?.remove(&id).unwrap_or_default();
        let mut events = Vec::new();
        if let Some(name) = untag.first().cloned() {
            let repo = repository_of(&name);
            let rest: Vec<&String> = all_refs.iter().filter(|r| **r != name).collect();
            let repo_has_tags = rest
                .iter()
                .any(|r| !r.contains('@') && repository_of(r) == repo);
            if !name.contains('@') && !repo_has_tags {
                untag.extend(
                    rest.iter()
                        .filter(|r| r.contains('@') && repository_of(r) == repo)
                        .map(|r| (*r).clone()),
                );
            }
            let remaining = all_refs.iter().filter(|r| !untag.contains(r)).count();
            events.extend(untag.iter().cloned().map(RemoveEvent::Untagged));
            if remaining > 0 {
                self.meta.remove(&untag, None)?;
                return Ok(events);
            }
        } else {
            let repos: BTreeSet<&str> = all_refs.iter().map(|r| repository_of(r)).collect();
            if repos.len() > 1 && !force {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                        short_id(&id)
                    ),
                ));
            }
            untag = all_refs.clone();
            events.extend(untag.iter().cloned().map(RemoveEvent::Untagged));
        }
        let rec = self.meta.image(&id)?;
        self.meta.remove(&untag, Some(&id))?;
        events.push(RemoveEvent::Deleted(id.clone()));
        if let Some(rec) = rec {
            for chain in self.collect_garbage(&rec)? {
                events.push(RemoveEvent::Deleted(chain));
            }
        }
        drop(guard);
        Ok(events)
    }

    /// Deletes the blobs and snapshots of a removed image that no remaining image uses; returns
    /// the chain ids of the snapshots it freed. Blobs and snapshots of pulls under way are never
    /// candidates: only what the removed image referenced is looked at.
    fn collect_garbage(&self, removed: &ImageRecord) -> Result<Vec<String>, Error> {
        let mut used_blobs = BTreeSet::new();
        let mut used_chains = BTreeSet::new();
        for img in self.meta.images()? {
            used_blobs.insert(img.id.clone());
            used_blobs.insert(img.manifest_digest.clone());
            used_blobs.extend(img.index_digest.clone());
            for l in &img.layers {
                used_blobs.insert(l.digest.clone());
                used_chains.insert(l.chain_id.clone());
            }
        }
        let mut blobs = vec![removed.id.clone(), removed.manifest_digest.clone()];
        blobs.extend(removed.index_digest.clone());
        blobs.extend(removed.layers.iter().map(|l| l.digest.clone()));
        for b in blobs.iter().filter(|b| !used_blobs.contains(*b)) {
            self.content
                .delete(&parse_digest("blob", b)?)
                .map_err(internal)?;
        }
        let mut freed = Vec::new();
        for l in removed.layers.iter().rev() {
            if used_chains.contains(&l.chain_id) || freed.contains(&l.chain_id) {
                continue;
            }
            self.meta.remove_layer(&l.chain_id)?;
            self.snapshots
                .remove(&parse_digest("chain id", &l.chain_id)?)
                .map_err(internal)?;
            freed.push(l.chain_id.clone());
        }
        Ok(freed)
    }

    pub fn disk_usage(&self) -> Result<DiskUsage, Error> {
        let images = self.meta.images()?;
        let mut users: BTreeMap<&str, usize> = BTreeMap::new();
        for img in &images {
            let chains: BTreeSet<&str> = img.layers.iter().map(|l| l.chain_id.as_str()).collect();
            for c in chains {
                *users.entry(c).or_default() += 1;
            }
        }
        let mut counted = BTreeSet::new();
        let mut layers_size = 0;
        let mut usage = Vec::new();
        for img in &images {
            let mut shared = 0;
            for l in &img.layers {
                if users.get(l.chain_id.as_str()).copied().unwrap_or(0) > 1 {
                    shared += l.unpacked_size;
                }
                if counted.insert(l.chain_id.clone()) {
                    layers_size += l.unpacked_size;
                }
            }
            usage.push(ImageUsage {
                id: img.id.clone(),
                size: img.size,
                shared_size: shared,
            });
        }
        Ok(DiskUsage {
            layers_size,
            images: usage,
        })
    }
}

/// "docker.io/library/busybox:latest" → "docker.io/library/busybox"; digest refs likewise.
fn repository_of(name: &str) -> &str {
    if let Some((repo, _)) = name.split_once('@') {
        return repo;
    }
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_of_strips_tag_and_digest_but_not_port() {
        assert_eq!(
            repository_of("docker.io/library/busybox:latest"),
            "docker.io/library/busybox"
        );
        assert_eq!(
            repository_of("127.0.0.1:15000/berth/hello:v2s2"),
            "127.0.0.1:15000/berth/hello"
        );
        assert_eq!(
            repository_of("127.0.0.1:15000/berth/hello@sha256:ab"),
            "127.0.0.1:15000/berth/hello"
        );
        assert_eq!(
            repository_of("127.0.0.1:15000/berth/hello"),
            "127.0.0.1:15000/berth/hello"
        );
    }
}
