//! Snapshots: one overlayfs lower directory per layer, keyed by the layer's chain id.
//!
//! Layout under the store root:
//!
//! ```text
//! snapshots/<chain hex>/diff/        the layer's files, exactly (an overlayfs lowerdir)
//! snapshots/<chain hex>/meta.json    chain id, diff id, unpacked size
//! snapshots-ingest/<random>/         snapshots being unpacked or being removed
//! ```
//!
//! A snapshot is built in `snapshots-ingest/` and renamed into `snapshots/` in one step, so a
//! snapshot directory is either complete or absent; whatever a crash leaves in
//! `snapshots-ingest/` is deleted at the next open. Removal renames first and deletes after, for
//! the same reason.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// rename(2) that refuses to replace an existing target. Called through the raw syscall because
/// nix only wraps renameat2 for glibc, and the guest's core is a static musl binary.
fn rename_noreplace(from: &Path, to: &Path) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call; renameat2
    // reads them and touches no other memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// {context} {}: {source}
    #[error("{context} {}: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// snapshot metadata {}: {source}
    #[error("snapshot metadata {}: {source}", path.display())]
    Meta {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// What `meta.json` beside a snapshot's diff directory records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub chain_id: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    /// Unpacked size (sum of the regular files' sizes), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The snapshot directories of one store root. Cheap to clone; every method is safe to call from
/// several threads (all state is on disk, and every change is one atomic rename).
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    snapshots: PathBuf,
    ingest: PathBuf,
}

const DIFF: &str = "diff";
const META: &str = "meta.json";

impl SnapshotStore {
    /// Opens (creating) `root/snapshots` and `root/snapshots-ingest`, and deletes every leftover
    /// of an unpack or removal that a crash interrupted.
    pub fn open(root: &Path) -> Result<SnapshotStore, SnapshotError> {
        let snapshots = root.join("snapshots");
        let ingest = root.join("snapshots-ingest");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snapshots)
            .map_err(io_err("creating", &snapshots))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ingest)
            .map_err(io_err("creating", &ingest))?;
        // Layers are unpacked in here: nobody but root may reach into a tree being built.
        fs::set_permissions(&ingest, fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting permissions of", &ingest))?;
        clear_dir(&ingest).map_err(io_err("clearing", &ingest))?;
        Ok(SnapshotStore { snapshots, ingest })
    }

    /// A new empty directory to unpack a layer into. It is deleted when the returned value is
    /// dropped without [`PreparedSnapshot::commit`].
    pub fn prepare(&self) -> Result<PreparedSnapshot, SnapshotError> {
        let dir = self.ingest.join(format!("{:016x}", rand::random::<u64>()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("creating", &dir))?;
        // From here on, drop deletes `dir` whatever fails.
        let prepared = PreparedSnapshot {
            diff: dir.join(DIFF),
            dir,
            snapshots: self.snapshots.clone(),
            committed: false,
        };
        let diff = &prepared.diff;
        fs::DirBuilder::new()
            .mode(0o755)
            .create(diff)
            .map_err(io_err("creating", diff))?;
        fs::set_permissions(diff, fs::Permissions::from_mode(0o755))
            .map_err(io_err("setting permissions of", diff))?;
        Ok(prepared)
    }

    /// Whether the snapshot of `chain_id` is stored.
    pub fn exists(&self, chain_id: &Digest) -> bool {
        fs::symlink_metadata(self.path(chain_id)).is_ok_and(|m| m.is_dir())
    }

    /// The diff directory of the snapshot of `chain_id` (an overlayfs lowerdir).
    pub fn path(&self, chain_id: &Digest) -> PathBuf {
        self.snapshots.join(chain_id.hex()).join(DIFF)
    }

    /// The recorded facts of a stored snapshot; `None` when it is not stored.
    pub fn info(&self, chain_id: &Digest) -> Result<Option<SnapshotInfo>, SnapshotError> {
        let path = self.snapshots.join(chain_id.hex()).join(META);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| SnapshotError::Meta { path, source })
    }

    /// Deletes the snapshot of `chain_id`; a snapshot that is not there is not an error. The
    /// snapshot disappears at once (one rename); its files are deleted after, without following
    /// any symlink in it.
    pub fn remove(&self, chain_id: &Digest) -> Result<(), SnapshotError> {
        let from = self.snapshots.join(chain_id.hex());
        let to = self.ingest.join(format!(
            "removed-{}-{:08x}",
            chain_id.hex(),
            rand::random::<u32>()
        ));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("moving aside", &from)(e)),
        }
        remove_tree(&to).map_err(io_err("deleting", &to))
    }

    /// The chain ids of every stored snapshot.
    pub fn list(&self) -> Result<Vec<Digest>, SnapshotError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.snapshots).map_err(io_err("listing", &self.snapshots))? {
            let entry = entry.map_err(io_err("listing", &self.snapshots))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            if self.exists(&d) {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A snapshot being built. [`PreparedSnapshot::path`] is the empty diff directory to fill.
#[derive(Debug)]
pub struct PreparedSnapshot {
    dir: PathBuf,
    diff: PathBuf,
    snapshots: PathBuf,
    committed: bool,
}

impl PreparedSnapshot {
    /// The diff directory to unpack into.
    pub fn path(&self) -> &Path {
        &self.diff
    }

    /// Makes the snapshot visible as `chain_id`. When another snapshot of that chain id is
    /// already stored (a concurrent pull of the same layer), that one is kept and this one is
    /// deleted: both have the same content.
    pub fn commit(self, chain_id: &Digest) -> Result<(), SnapshotError> {
        self.commit_with(SnapshotInfo {
            chain_id: chain_id.clone(),
            diff_id: None,
            size: None,
        })
    }

    /// [`PreparedSnapshot::commit`], recording the layer's diff id and unpacked size too.
    pub fn commit_with(mut self, info: SnapshotInfo) -> Result<(), SnapshotError> {
        let meta = self.dir.join(META);
        let mut f = fs::File::create(&meta).map_err(io_err("creating", &meta))?;
        let json = serde_json::to_vec_pretty(&info).map_err(|source| SnapshotError::Meta {
            path: meta.clone(),
            source,
        })?;
        f.write_all(&json).map_err(io_err("writing", &meta))?;
        // The files of the layer were written without fsync: one syncfs makes the whole tree
        // durable before the rename makes it visible, so a crash never shows a snapshot whose
        // files are empty.
        nix::unistd::syncfs(f.as_raw_fd())
            .map_err(|e| io_err("syncing the filesystem of", &meta)(e.into()))?;
        drop(f);
        let target = self.snapshots.join(info.chain_id.hex());
        match rename_noreplace(&self.dir, &target) {
            Ok(()) => {
                self.committed = true;
                fsync_dir(&self.snapshots).map_err(io_err("syncing", &self.snapshots))?;
                Ok(())
            }
            // Already stored: keep the existing one; drop deletes ours.
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(()),
            Err(e) => Err(io_err("moving into place", &target)(e.into())),
        }
    }
}

impl Drop for PreparedSnapshot {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = remove_tree(&self.dir) {
                tracing::warn!("deleting unfinished snapshot {}: {e}", self.dir.display());
            }
        }
    }
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Deletes every entry of `dir` (not `dir` itself).
fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        remove_tree(&entry?.path())?;
    }
    Ok(())
}

/// Deletes `path` and everything under it without following symlinks; a missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot delete {}", path.display()),
        )
    })?;
    let parent = match open_dir_at(None, parent.as_os_str().as_bytes(), false) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_tree_at(parent.as_raw_fd(), OsStr::as_bytes(name))
}

/// Opens a directory relative to `dir` (the working directory when `None`). With `nofollow`, a
/// symlink as the last component fails with `ELOOP` instead of being followed.
pub(crate) fn open_dir_at(dir: Option<RawFd>, name: &[u8], nofollow: bool) -> nix::Result<OwnedFd> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    if nofollow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let fd = openat(dir, name, flags, Mode::empty())?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ignore_missing(r: nix::Result<()>) -> io::Result<()> {
    match r {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Deletes `name` in the directory `parent` and, when it is a directory, everything under it.
/// Symlinks are deleted, never followed, and mount points are never crossed. The walk holds
/// one directory descriptor at a time (it climbs back with `..`), so no depth of tree exhausts
/// the descriptor table.
pub(crate) fn remove_tree_at(parent: RawFd, name: &[u8]) -> io::Result<()> {
    let st = match fstatat(Some(parent), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFDIR {
        return ignore_missing(unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir));
    }
    let device = st.st_dev;
    let mut cur = open_dir_at(Some(parent), name, true)?;
    let mut stack: Vec<(Vec<u8>, Vec<Vec<u8>>)> = vec![(name.to_vec(), delete_files(&cur)?)];
    loop {
        let (_, pending) = stack
            .last_mut()
            .expect("the walk stack is never empty here");
        if let Some(child) = pending.pop() {
            match open_dir_at(Some(cur.as_raw_fd()), &child, true) {
                Ok(fd) => {
                    if fstat(fd.as_raw_fd())?.st_dev != device {
                        return Err(io::Error::other(format!(
                            "refusing to delete across a mount point at {}",
                            String::from_utf8_lossy(&child)
                        )));
                    }
                    let subdirs = delete_files(&fd)?;
                    cur = fd;
                    stack.push((child, subdirs));
                }
                Err(Errno::ENOENT) => {}
                Err(Errno::ENOTDIR | Errno::ELOOP) => ignore_missing(unlinkat(
                    Some(cur.as_raw_fd()),
                    child.as_slice(),
                    UnlinkatFlags::NoRemoveDir,
                ))?,
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let (done, _) = stack.pop().expect("the walk stack is never empty here");
        if stack.is_empty() {
            drop(cur);
            return ignore_missing(unlinkat(
                Some(parent),
                done.as_slice(),
                UnlinkatFlags::RemoveDir,
            ));
        }
        cur = open_dir_at(Some(cur.as_raw_fd()), b"..", true)?;
        ignore_missing(unlinkat(
            Some(cur.as_raw_fd()),
            done.as_slice(),
            UnlinkatFlags::RemoveDir,
        ))?;
    }
}

/// Deletes every non-directory in `dir`; returns the names of its subdirectories.
fn delete_files(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut d = Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut subdirs = Vec::new();
    let mut files = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            Some(t) => t == Type::Directory,
            None => {
                let st = fstatat(
                    Some(dir.as_raw_fd()),
                    name,
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
            }
        };
        if is_dir {
            subdirs.push(name.to_vec());
        } else {
            files.push(name.to_vec());
        }
    }
    for f in files {
        ignore_missing(unlinkat(
            Some(dir.as_raw_fd()),
            f.as_slice(),
            UnlinkatFlags::NoRemoveDir,
        ))?;
    }
    Ok(subdirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn remove_tree_does_not_follow_symlinks_and_handles_depth() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"k").unwrap();
        let tree = tmp.path().join("tree");
        let mut deep = tree.clone();
        for i in 0..1500 {
            deep.push(if i % 2 == 0 { "d" } else { "e" });
        }
        // Too deep for one create_dir_all path: build it relative, level by level.
        fs::create_dir(&tree).unwrap();
        let mut cur = open_dir_at(None, tree.as_os_str().as_bytes(), true).unwrap();
        for _ in 0..1500 {
            nix::sys::stat::mkdirat(Some(cur.as_raw_fd()), "d", Mode::from_bits_truncate(0o755))
                .unwrap();
            cur = open_dir_at(Some(cur.as_raw_fd()), b"d", true).unwrap();
        }
        nix::unistd::symlinkat(outside.as_path(), Some(cur.as_raw_fd()), "link").unwrap();
        symlink(&outside, tree.join("top-link")).unwrap();
        fs::write(tree.join("file"), b"x").unwrap();
        fs::create_dir(tree.join("ro")).unwrap();
        fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o000)).unwrap();
        drop(cur);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"k");
        remove_tree(&tree).unwrap();
        // A symlink itself is deleted, not its target.
        symlink(&outside, tmp.path().join("l")).unwrap();
        remove_tree(&tmp.path().join("l")).unwrap();
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn prepare_commit_remove_list() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(tmp.path()).unwrap();
        let chain = Digest::of(b"layer");
        assert!(!store.exists(&chain));
        let p = store.prepare().unwrap();
        fs::write(p.path().join("hello"), b"hi").unwrap();
        let info = SnapshotInfo {
            chain_id: chain.clone(),
            diff_id: Some(chain.clone()),
            size: Some(2),
        };
        p.commit_with(info.clone()).unwrap();
        assert!(store.exists(&chain));
        assert_eq!(fs::read(store.path(&chain).join("hello")).unwrap(), b"hi");
        assert_eq!(
            fs::read_dir(store.path(&chain)).unwrap().count(),
            1,
            "diff dir holds only the layer"
        );
        assert_eq!(store.info(&chain).unwrap(), Some(info));
        assert_eq!(store.list().unwrap(), vec![chain.clone()]);

        // A second commit of the same chain keeps the first.
        let p = store.prepare().unwrap();
        fs::write(p.path().join("other"), b"x").unwrap();
        p.commit(&chain).unwrap();
        assert!(store.path(&chain).join("hello").exists());
        assert!(!store.path(&chain).join("other").exists());
        assert_eq!(
            fs::read_dir(tmp.path().join("snapshots-ingest"))
                .unwrap()
                .count(),
            0
        );

        store.remove(&chain).unwrap();
        assert!(!store.exists(&chain));
        assert!(store.list().unwrap().is_empty());
        store.remove(&chain).unwrap();
        assert_eq!(store.info(&chain).unwrap(), None);
    }

    #[test]
    fn dropped_and_leftover_preparations_vanish() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(tmp.path()).unwrap();
        let p = store.prepare().unwrap();
        fs::create_dir(p.path().join("sub")).unwrap();
        let dir = p.path().parent().unwrap().to_path_buf();
        drop(p);
        assert!(!dir.exists());

        let p = store.prepare().unwrap();
        fs::write(p.path().join("f"), b"x").unwrap();
        std::mem::forget(p); // as a crash would leave it
        assert_eq!(
            fs::read_dir(tmp.path().join("snapshots-ingest"))
                .unwrap()
                .count(),
            1
        );
        SnapshotStore::open(tmp.path()).unwrap();
        assert_eq!(
            fs::read_dir(tmp.path().join("snapshots-ingest"))
                .unwrap()
                .count(),
            0
        );
    }
}
