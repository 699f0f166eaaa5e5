//! Image messages. Names are always fully normalised by the host ("docker.io/library/busybox:latest",
//! "127.0.0.1:15000/berth/hello@sha256:…"): the core does no reference parsing of its own.

use serde::{Deserialize, Serialize};

/// A blob upload on its own connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobWrite {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// When set, the blob is a layer: the core unpacks it into a snapshot while it arrives.
    pub unpack: Option<LayerUnpack>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerUnpack {
    /// Expected sha256 of the uncompressed tar (from the image config's rootfs.diff_ids).
    pub diff_id: String,
    /// The snapshot key: the OCI chain id of this layer in its image.
    pub chain_id: String,
}

/// The core's answer after the last byte of a [`BlobWrite`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobWriteResult {
    pub result: Result<BlobWritten, crate::Error>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobWritten {
    pub digest: String,
    /// For layers: the unpacked size as Docker counts it (sum of regular file sizes).
    pub unpacked_size: Option<u64>,
}

/// A stored blob read back on its own connection (a push, a save). A blob the store does not
/// hold is refused in the handshake; otherwise the core sends one [`BlobReadHeader`] frame and
/// then exactly `size` raw bytes, and closes. A read that fails part-way closes the stream
/// early: the host sees a short blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobRead {
    /// "sha256:…".
    pub digest: String,
}

/// The first frame of a [`BlobRead`] stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobReadHeader {
    /// The bytes that follow.
    pub size: u64,
}

/// A manifest, index or config exactly as the registry served it (the digest covers these bytes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RawBlob {
    pub media_type: String,
    pub digest: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRef {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
    pub chain_id: String,
}

/// Records an image whose layers have all been written. The core verifies every digest again,
/// stores manifest/config/index as blobs and moves `tag` (if any) to the image atomically.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImagePut {
    /// e.g. "docker.io/library/busybox:latest"; none when pulled by digest only.
    pub tag: Option<String>,
    /// e.g. "docker.io/library/busybox@sha256:…" (the digest the registry resolved).
    pub repo_digest: Option<String>,
    pub index: Option<RawBlob>,
    pub manifest: RawBlob,
    pub config: RawBlob,
    pub layers: Vec<LayerRef>,
}

/// How the host names an image it wants: a normalised reference, an id (prefix), or either.
/// The core tries `name` first, then `id_prefix`, as Docker does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ImageSelector {
    pub name: Option<String>,
    pub id_prefix: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageInfo {
    /// The config digest, "sha256:…".
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// The image config JSON as stored.
    pub config: String,
    pub layers: Vec<LayerInfo>,
    /// Sum of the layers' unpacked sizes.
    pub size: u64,
    /// When this image was stored (RFC 3339).
    pub stored_at: String,
    /// When a tag last moved onto it (RFC 3339), if ever.
    pub last_tag_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerInfo {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub diff_id: String,
    pub chain_id: String,
    pub unpacked_size: u64,
}

/// One line of an image removal, as Docker reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RemoveEvent {
    Untagged(String),
    Deleted(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskUsage {
    /// Bytes of unpacked layer data, each shared layer counted once.
    pub layers_size: u64,
    pub images: Vec<ImageUsage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageUsage {
    pub id: String,
    pub size: u64,
    /// Bytes shared with at least one other image.
    pub shared_size: u64,
}
