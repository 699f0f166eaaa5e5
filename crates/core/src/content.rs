//! The content store: blobs (layers, manifests, configs) addressed by their sha256 digest.
//!
//! Layout under the store root:
//!
//! ```text
//! blobs/sha256/<hex>   verified blobs, immutable once there
//! ingest/<hex>-<rand>  blobs being written
//! ```
//!
//! A blob is written to `ingest/`, checked against the digest and size it was announced with,
//! fsynced and renamed into `blobs/`: a blob in `blobs/` has always been verified, and whatever a
//! crash leaves in `ingest/` is deleted at the next open.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// content has digest {actual}, expected {expected}
    #[error("content has digest {actual}, expected {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// blob {digest}: got {actual} bytes, expected {expected}
    #[error("blob {digest}: got {actual} bytes, expected {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    /// blob {digest} is larger than {limit} bytes
    #[error("blob {digest} is larger than {limit} bytes")]
    TooLarge { digest: Digest, limit: u64 },
    /// blob {0} not found
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// reading the data of blob {digest}: {source}
    #[error("reading the data of blob {digest}: {source}")]
    Read { digest: Digest, source: io::Error },
    /// {context} {}: {source}
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ContentError + 'a {
    move |source| ContentError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// A content store rooted at one directory. Cheap to clone; safe to use from several threads
/// and processes at once (every change is one atomic rename of a verified file).
#[derive(Clone, Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store under `root` and deletes every unfinished write a crash left.
    pub fn open(root: &Path) -> Result<ContentStore, ContentError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ingest)
            .map_err(io_err("creating", &ingest))?;
        fs::set_permissions(&ingest, fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting permissions of", &ingest))?;
        for entry in fs::read_dir(&ingest).map_err(io_err("listing", &ingest))? {
            let path = entry.map_err(io_err("listing", &ingest))?.path();
            crate::snapshot::remove_tree(&path).map_err(io_err("deleting", &path))?;
        }
        Ok(ContentStore { blobs, ingest })
    }

    /// Whether the blob is stored.
    pub fn contains(&self, d: &Digest) -> bool {
        fs::symlink_metadata(self.path(d)).is_ok_and(|m| m.is_file())
    }

    /// The size of a stored blob.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::symlink_metadata(self.path(d))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Where the blob is (or would be) stored.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    /// Opens a stored blob for reading, with its size (a push or a save streams it back).
    pub fn open_blob(&self, d: &Digest) -> Result<(File, u64), ContentError> {
        let path = self.path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound(d.clone()))
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("reading", &path))?.len();
        Ok((file, len))
    }

    /// Reads a whole blob of at most `max` bytes (manifests, configs). Blobs were verified when
    /// written, so this does not hash them again.
    pub fn read_all(&self, d: &Digest, max: u64) -> Result<Vec<u8>, ContentError> {
        let path = self.path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContentError::NotFound(d.clone()))
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("reading", &path))?.len();
        if len > max {
            return Err(ContentError::TooLarge {
                digest: d.clone(),
                limit: max,
            });
        }
        let mut out = Vec::with_capacity(len as usize);
        file.take(max.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(io_err("reading", &path))?;
        if out.len() as u64 > max {
            return Err(ContentError::TooLarge {
                digest: d.clone(),
                limit: max,
            });
        }
        Ok(out)
    }

    /// A writer for the blob `expected` of `expected_size` bytes. Nothing is visible in the
    /// store until [`BlobWriter::commit`] has checked both; a writer dropped uncommitted leaves
    /// nothing behind.
    pub fn writer(
        &self,
        expected: &Digest,
        expected_size: u64,
    ) -> Result<BlobWriter, ContentError> {
        let tmp = self
            .ingest
            .join(format!("{}-{:016x}", expected.hex(), rand::random::<u64>()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        Ok(BlobWriter {
            file: Some(BufWriter::with_capacity(128 << 10, file)),
            target: self.path(expected),
            blobs: self.blobs.clone(),
            tmp,
            hasher: Sha256::new(),
            written: 0,
            expected: expected.clone(),
            expected_size,
            overflowed: false,
            committed: false,
        })
    }

    /// Stores `bytes` as the blob `expected`, after checking their digest.
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(ContentError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if self.contains(expected) {
            return Ok(());
        }
        let mut w = self.writer(expected, bytes.len() as u64)?;
        let tmp = w.tmp.clone();
        w.write_all(bytes).map_err(io_err("writing", &tmp))?;
        w.commit()
    }

    /// Deletes a blob; one that is not there is not an error.
    pub fn delete(&self, d: &Digest) -> Result<(), ContentError> {
        let path = self.path(d);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", &path)(e)),
        }
    }

    /// Every stored blob with its size, sorted by digest.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs).map_err(io_err("listing", &self.blobs))? {
            let entry = entry.map_err(io_err("listing", &self.blobs))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_file() {
                out.push((d, meta.len()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A blob being written. Writing more than the announced size fails at once with
/// [`ContentError::TooLarge`] (as the `io::Error`'s inner error).
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    target: PathBuf,
    blobs: PathBuf,
    hasher: Sha256,
    written: u64,
    expected: Digest,
    expected_size: u64,
    overflowed: bool,
    committed: bool,
}

impl BlobWriter {
    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The digest this writer was opened for.
    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    fn too_large(&self) -> ContentError {
        ContentError::TooLarge {
            digest: self.expected.clone(),
            limit: self.expected_size,
        }
    }

    /// Checks size and digest, makes the data durable and the blob visible. When the blob is
    /// already stored (another writer won the race) the new copy is simply discarded.
    pub fn commit(mut self) -> Result<(), ContentError> {
        if self.overflowed {
            return Err(self.too_large());
        }
        let file = self.file.take().expect("the file is only taken by commit");
        let file = file
            .into_inner()
            .map_err(|e| io_err("writing", &self.tmp)(e.into_error()))?;
        if self.written != self.expected_size {
            return Err(ContentError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.expected_size,
                actual: self.written,
            });
        }
        let actual = Digest::from_sha256(std::mem::take(&mut self.hasher));
        if actual != self.expected {
            return Err(ContentError::DigestMismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        if fs::symlink_metadata(&self.target).is_ok_and(|m| m.is_file()) {
            return Ok(()); // drop deletes our copy
        }
        file.sync_all().map_err(io_err("syncing", &self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.target).map_err(io_err("moving into place", &self.target))?;
        self.committed = true;
        File::open(&self.blobs)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &self.blobs))?;
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.overflowed || self.written.saturating_add(buf.len() as u64) > self.expected_size {
            self.overflowed = true;
            return Err(io::Error::other(self.too_large()));
        }
        let file = self
            .file
            .as_mut()
            .expect("the file is only taken by commit");
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Close before unlinking; a BufWriter's drop would try to flush into a file that
            // is being thrown away, which is harmless.
            drop(self.file.take());
            if let Err(e) = fs::remove_file(&self.tmp) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("deleting unfinished blob {}: {e}", self.tmp.display());
                }
            }
        }
    }
}

/// A reader that copies every byte it reads into a [`BlobWriter`]: a layer stream is stored and
/// unpacked in one pass.
#[derive(Debug)]
pub struct TeeReader<R> {
    inner: R,
    writer: BlobWriter,
}

impl<R: Read> TeeReader<R> {
    pub fn new(inner: R, writer: BlobWriter) -> Self {
        TeeReader { inner, writer }
    }

    /// Bytes read (and written) so far.
    pub fn written(&self) -> u64 {
        self.writer.written()
    }

    /// Reads what is left of the inner reader, then commits the blob (checking size and
    /// digest).
    pub fn finish(mut self) -> Result<(), ContentError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match self.inner.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ContentError::Read {
                        digest: self.writer.expected.clone(),
                        source,
                    })
                }
            };
            if let Err(e) = self.writer.write_all(&buf[..n]) {
                if self.writer.overflowed {
                    return Err(self.writer.too_large());
                }
                return Err(io_err("writing", &self.writer.tmp)(e));
            }
        }
        self.writer.commit()
    }
}

impl<R: Read> Read for TeeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.writer.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_list_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ContentStore::open(tmp.path()).unwrap();
        let d = Digest::of(b"hello");
        assert!(!store.contains(&d));
        assert!(matches!(
            store.read_all(&d, 10),
            Err(ContentError::NotFound(_))
        ));
        store.put(&d, b"hello").unwrap();
        store.put(&d, b"hello").unwrap();
        assert!(store.contains(&d));
        assert_eq!(store.size(&d), Some(5));
        assert_eq!(store.read_all(&d, 5).unwrap(), b"hello");
        let (mut f, size) = store.open_blob(&d).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!((size, back.as_slice()), (5, &b"hello"[..]));
        assert!(matches!(
            store.open_blob(&Digest::of(b"absent")),
            Err(ContentError::NotFound(_))
        ));
        assert!(matches!(
            store.read_all(&d, 4),
            Err(ContentError::TooLarge { limit: 4, .. })
        ));
        assert_eq!(store.list().unwrap(), vec![(d.clone(), 5)]);
        assert!(matches!(
            store.put(&d, b"other"),
            Err(ContentError::DigestMismatch { .. })
        ));
        store.delete(&d).unwrap();
        store.delete(&d).unwrap();
        assert!(!store.contains(&d));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn overflow_is_reported_at_once_and_at_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ContentStore::open(tmp.path()).unwrap();
        let d = Digest::of(b"abc");
        let mut w = store.writer(&d, 3).unwrap();
        w.write_all(b"ab").unwrap();
        let e = w.write_all(b"cd").unwrap_err();
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<ContentError>());
        assert!(
            matches!(inner, Some(ContentError::TooLarge { limit: 3, .. })),
            "{e}"
        );
        assert_eq!(w.written(), 2);
        assert!(matches!(w.commit(), Err(ContentError::TooLarge { .. })));
        assert!(!store.contains(&d));
    }
}
