//! New layers and images made here rather than pulled: an overlay upper dir (a container's, or
//! a build step's) becomes an OCI layer tar — deletions as `.wh.<name>`, opaque directories as
//! `.wh..wh..opq` — gzip-compressed into the content store and unpacked into its snapshot by
//! the same verified path a pull takes; then a config and a manifest make it an image.
//!
//! The layer holds exactly what `docker diff` reports (`container::export::changes`), so the
//! two always agree.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_proto::{Error, ErrorCode, ImageInfo, ImagePut, LayerRef, LayerUnpack, RawBlob};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::container::export::{changes, DELETED};
use crate::container::rootfs::{is_opaque, is_whiteout};
use crate::digest::{chain_ids, Digest};
use crate::images::ImageService;

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

fn internal(what: &str) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Writes the layer tar of `upper` over `lowers` (top first) to `out`: every change
/// [`changes`] finds, and nothing else. Paths in `skip` are left out as they are from `docker
/// diff`.
pub fn write_layer_tar(
    upper: &Path,
    lowers: &[PathBuf],
    skip: &BTreeSet<String>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let changed: HashMap<String, u8> = changes(upper, lowers, skip)
        .into_iter()
        .map(|c| (c.path.trim_start_matches('/').to_string(), c.kind))
        .collect();
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links = HashMap::new();
    tar_changes(&mut b, upper, Path::new(""), &changed, &mut links)?;
    b.finish()
}

fn tar_changes(
    b: &mut tar::Builder<&mut dyn Write>,
    upper: &Path,
    rel: &Path,
    changed: &HashMap<String, u8>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(upper.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let key = rel.to_string_lossy().into_owned();
        let Some(&kind) = changed.get(&key) else {
            continue;
        };
        let abs = upper.join(&rel);
        let meta = fs::symlink_metadata(&abs)?;
        let ft = meta.file_type();
        if kind == DELETED || is_whiteout(&meta) {
            let mut wh = name.clone();
            wh.clear();
            wh.push(".wh.");
            wh.push(&name);
            let path = rel.with_file_name(wh);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o600);
            h.set_size(0);
            h.set_mtime(meta.mtime().max(0) as u64);
            b.append_data(&mut h, &path, io::empty())?;
            continue;
        }
        if ft.is_socket() {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if ft.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, &rel, io::empty())?;
            if is_opaque(&abs) || user_opaque(&abs) {
                let mut o = tar::Header::new_gnu();
                o.set_entry_type(tar::EntryType::Regular);
                o.set_mode(0o600);
                o.set_size(0);
                o.set_mtime(meta.mtime().max(0) as u64);
                b.append_data(&mut o, rel.join(".wh..wh..opq"), io::empty())?;
            }
            tar_changes(b, upper, &rel, changed, links)?;
        } else {
            crate::container::export::append_entry(b, &abs, &rel, &meta, h, links)?;
        }
    }
    Ok(())
}

/// The opaque marker of an overlay mounted with `userxattr` (rootless, user namespaces):
/// `user.overlay.opaque=y`.
fn user_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut v = [0u8; 1];
    // SAFETY: `path` and the attribute name are NUL-terminated strings that outlive the call;
    // the buffer pointer and length describe `v` exactly.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

/// Hashes what passes through (the diff id of the uncompressed tar).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Stores the changes of `upper` over `lowers` as a new layer on top of `parent_chain`: the
/// gzip blob and its snapshot, both verified and renamed into place by
/// [`ImageService::write_blob`]. Returns the layer as an image lists it.
pub fn store_layer(
    images: &ImageService,
    upper: &Path,
    lowers: &[PathBuf],
    skip: &BTreeSet<String>,
    parent_chain: Option<&str>,
) -> Result<LayerRef, Error> {
    let tmp = images
        .root()
        .join("ingest")
        .join(format!("layer-{:016x}.tar.gz", rand::random::<u64>()));
    let result = (|| {
        let file = fs::File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(internal("creating the layer file"))?;
        let gz = flate2::write::GzEncoder::new(
            io::BufWriter::with_capacity(256 << 10, file),
            flate2::Compression::fast(),
        );
        let mut hw = HashingWriter {
            inner: gz,
            hasher: Sha256::new(),
        };
        write_layer_tar(upper, lowers, skip, &mut hw).map_err(internal("writing the layer"))?;
        let diff_id = Digest::from_sha256(hw.hasher);
        hw.inner
            .finish()
            .and_then(|mut w| w.flush())
            .map_err(internal("compressing the layer"))?;
        let mut f = fs::File::open(&tmp).map_err(internal("reading the layer back"))?;
        let mut h = Sha256::new();
        let size = io::copy(&mut f, &mut h).map_err(internal("hashing the layer"))?;
        let digest = Digest::from_sha256(h);
        let mut ids = Vec::new();
        if let Some(p) = parent_chain {
            ids.push(
                Digest::parse(p)
                    .map_err(|e| Error::new(ErrorCode::Internal, format!("chain id {p}: {e}")))?,
            );
        }
        // chain(parent, diff) = sha256(parent + " " + diff); with no parent it is the diff id.
        let chain = match ids.first() {
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
            None => chain_ids(std::slice::from_ref(&diff_id))[0].clone(),
        };
        let f = fs::File::open(&tmp).map_err(internal("reading the layer back"))?;
        images.write_blob(
            io::BufReader::with_capacity(256 << 10, f),
            digest.as_str(),
            size,
            LAYER_MEDIA_TYPE,
            Some(&LayerUnpack {
                diff_id: diff_id.to_string(),
                chain_id: chain.to_string(),
            }),
        )?;
        Ok(LayerRef {
            digest: digest.to_string(),
            size,
            media_type: LAYER_MEDIA_TYPE.into(),
            diff_id: diff_id.to_string(),
            chain_id: chain.to_string(),
        })
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// One history entry of a new image.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub created_by: String,
    pub comment: String,
    pub author: String,
    /// No layer was added (a config-only build step).
    pub empty_layer: bool,
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Records a new image: `parent`'s layers (none for `FROM scratch`) plus `layer`, with
/// `config` as its `config` object, `history` appended to the parent's, tagged `tag`.
/// Everything it lists is stored before the record (the last step) is written.
pub fn create_image(
    images: &ImageService,
    parent: Option<&ImageInfo>,
    layer: Option<LayerRef>,
    config: Map<String, Value>,
    history: &History,
    tag: Option<String>,
) -> Result<ImageInfo, Error> {
    let mut doc: Map<String, Value> = match parent {
        Some(p) => serde_json::from_str(&p.config).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("the parent image's config: {e}"),
            )
        })?,
        None => {
            let mut m = Map::new();
            m.insert("architecture".into(), json!(go_arch()));
            m.insert("os".into(), json!("linux"));
            m
        }
    };
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    for k in [
        "container",
        "container_config",
        "id",
        "parent",
        "docker_version",
    ] {
        doc.remove(k);
    }
    doc.insert("created".into(), json!(created));
    if history.author.is_empty() {
        doc.remove("author");
    } else {
        doc.insert("author".into(), json!(history.author));
    }
    doc.insert("config".into(), Value::Object(config));
    let mut entry = Map::new();
    entry.insert("created".into(), json!(created));
    if !history.created_by.is_empty() {
        entry.insert("created_by".into(), json!(history.created_by));
    }
    if !history.author.is_empty() {
        entry.insert("author".into(), json!(history.author));
    }
    if !history.comment.is_empty() {
        entry.insert("comment".into(), json!(history.comment));
    }
    if history.empty_layer {
        entry.insert("empty_layer".into(), json!(true));
    }
    let hist = doc
        .entry("history")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !hist.is_array() {
        *hist = Value::Array(Vec::new());
    }
    hist.as_array_mut()
        .expect("array")
        .push(Value::Object(entry));

    let mut layers: Vec<LayerRef> = parent
        .map(|p| {
            p.layers
                .iter()
                .map(|l| LayerRef {
                    digest: l.digest.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                    diff_id: l.diff_id.clone(),
                    chain_id: l.chain_id.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    layers.extend(layer);
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    doc.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    let config_text = serde_json::to_string(&Value::Object(doc)).expect("JSON");
    let config_digest = Digest::of(config_text.as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_digest.to_string(),
            "size": config_text.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let manifest_text = serde_json::to_string(&manifest).expect("JSON");
    images.put(&ImagePut {
        tag,
        repo_digest: None,
        index: None,
        manifest: RawBlob {
            media_type: MANIFEST_MEDIA_TYPE.into(),
            digest: Digest::of(manifest_text.as_bytes()).to_string(),
            text: manifest_text,
        },
        config: RawBlob {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: config_digest.to_string(),
            text: config_text,
        },
        layers,
    })
}

/// The `config` object of a stored image (empty for none).
pub fn config_of(image: Option<&ImageInfo>) -> Map<String, Value> {
    image
        .and_then(|i| serde_json::from_str::<Value>(&i.config).ok())
        .and_then(|v| v.get("config").and_then(Value::as_object).cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_tar_has_whiteouts_opaque_dirs_and_hardlinks() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
        for d in ["etc", "var/cache/x"] {
            fs::create_dir_all(lower.join(d)).unwrap();
        }
        fs::write(lower.join("etc/passwd"), "root").unwrap();
        fs::write(lower.join("etc/gone"), "x").unwrap();
        fs::write(lower.join("var/cache/x/old"), "x").unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::create_dir_all(upper.join("var/cache")).unwrap();
        fs::write(upper.join("etc/passwd"), "root\nme").unwrap();
        fs::write(upper.join("new"), "n").unwrap();
        fs::hard_link(upper.join("new"), upper.join("new2")).unwrap();
        std::os::unix::fs::symlink("new", upper.join("ln")).unwrap();
        fs::write(upper.join("etc/hosts"), "").unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            nix::sys::stat::mknod(
                &upper.join("etc/gone"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .unwrap();
            fs::create_dir_all(upper.join("var/cache/x")).unwrap();
            xattr_set(&upper.join("var/cache/x"), "trusted.overlay.opaque", b"y");
            fs::write(upper.join("var/cache/x/fresh"), "f").unwrap();
        }
        let skip: BTreeSet<String> = ["etc/hosts".to_string()].into();
        let mut buf = Vec::new();
        write_layer_tar(&upper, std::slice::from_ref(&lower), &skip, &mut buf).unwrap();
        let mut a = tar::Archive::new(&buf[..]);
        let mut seen: Vec<(String, tar::EntryType)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                )
            })
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = vec![
            ("etc".to_string(), tar::EntryType::Directory),
            ("etc/passwd".into(), tar::EntryType::Regular),
            ("ln".into(), tar::EntryType::Symlink),
            ("new".into(), tar::EntryType::Regular),
            ("new2".into(), tar::EntryType::Link),
        ];
        if root {
            want.extend([
                ("etc/.wh.gone".to_string(), tar::EntryType::Regular),
                ("var".into(), tar::EntryType::Directory),
                ("var/cache".into(), tar::EntryType::Directory),
                ("var/cache/x".into(), tar::EntryType::Directory),
                ("var/cache/x/.wh..wh..opq".into(), tar::EntryType::Regular),
                ("var/cache/x/fresh".into(), tar::EntryType::Regular),
            ]);
            want.sort_by(|a, b| a.0.cmp(&b.0));
        }
        assert_eq!(seen, want);
    }

    fn xattr_set(p: &Path, name: &str, value: &[u8]) {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid NUL-terminated strings and a buffer with its length.
        let rc = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }
}
