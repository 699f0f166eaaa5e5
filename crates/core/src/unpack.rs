//! Layer extraction: a (compressed) OCI/Docker layer tar becomes an overlayfs diff directory.
//!
//! The core runs as root and layers come from anywhere, so extraction never trusts a name:
//! every entry is created relative to a descriptor of the destination, each parent directory
//! is opened with `O_NOFOLLOW`, names with `..` are refused, and links are created as data,
//! never followed. Whiteouts become what overlayfs understands: a `0/0` character device for a
//! deleted path, the `trusted.overlay.opaque` xattr for a directory whose lower contents are
//! hidden. `docs/unpack.md` lists the rules and why.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest as _, Sha256};
use tar::EntryType;
use tracing::{debug, warn};

use crate::digest::Digest;
use crate::snapshot::{open_dir_at, remove_tree_at};

/// How a layer's tar stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type (OCI, OCI non-distributable and Docker schema 2).
    pub fn from_media_type(mt: &str) -> Result<Compression, UnpackError> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            other => Err(UnpackError::MediaType(other.to_string())),
        }
    }
}

/// What unpacking a layer found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerStats {
    /// sha256 of the uncompressed stream, every byte of it (the image config's diff id).
    pub diff_id: Digest,
    /// Sum of the sizes of the regular files written (each hardlinked file once) and of the
    /// symlinks' targets: what Docker (overlay2) reports as a layer's size.
    pub size: u64,
    /// Tar entries read (extension headers not counted).
    pub entries: u64,
}

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// unsupported layer media type {0:?}
    #[error("unsupported layer media type {0:?}")]
    MediaType(String),
    /// opening the destination {}: {source}
    #[error("opening the destination {}: {source}", path.display())]
    Dest { path: PathBuf, source: io::Error },
    /// reading the layer stream: {0}
    #[error("reading the layer stream: {0}")]
    Stream(#[source] io::Error),
    /// reading the data of layer entry {entry:?}: {source}
    #[error("reading the data of layer entry {entry:?}: {source}")]
    EntryData { entry: String, source: io::Error },
    /// layer entry {entry:?} refused: {problem}
    #[error("layer entry {entry:?} refused: {problem}")]
    Refused { entry: String, problem: Refusal },
    /// layer entry {entry:?}: {op}: {source}
    #[error("layer entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
}

/// Why an entry is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// the name is empty
    #[error("the name is empty")]
    EmptyName,
    /// the name contains a NUL byte
    #[error("the name contains a NUL byte")]
    NulInName,
    /// the name contains a ".." component
    #[error("the name contains a \"..\" component")]
    DotDot,
    /// only a directory entry may name the layer root
    #[error("only a directory entry may name the layer root")]
    RootNotDir,
    /// parent {0:?} is a symlink
    #[error("parent {0:?} is a symlink")]
    ParentSymlink(String),
    /// parent {0:?} is not a directory
    #[error("parent {0:?} is not a directory")]
    ParentNotDir(String),
    /// invalid whiteout name
    #[error("invalid whiteout name")]
    BadWhiteout,
    /// whiteout name {0:?} used as a directory
    #[error("whiteout name {0:?} used as a directory")]
    WhiteoutAsDir(String),
    /// hard link target {target:?} {reason}
    #[error("hard link target {target:?} {reason}")]
    HardlinkTarget { target: String, reason: String },
    /// symlink without a target
    #[error("symlink without a target")]
    EmptySymlink,
    /// unsupported entry type {0}
    #[error("unsupported entry type {0}")]
    UnsupportedType(String),
    /// owner id {0} is out of range
    #[error("owner id {0} is out of range")]
    IdOutOfRange(u64),
    /// invalid header: {0}
    #[error("invalid header: {0}")]
    BadHeader(String),
}

/// Reads a (compressed) layer tar from `reader` and writes it into `dest`, an existing empty
/// directory, as an overlayfs diff directory.
///
/// `reader` is always read to its end, also past the tar's end marker and through the gzip
/// trailer or further compressed members, so a hashing reader around it sees every byte.
/// On error `dest` holds a partial tree: the caller deletes it (a dropped
/// [`crate::snapshot::PreparedSnapshot`] does).
pub fn unpack_layer<R: Read>(
    mut reader: R,
    compression: Compression,
    dest: &Path,
) -> Result<LayerStats, UnpackError> {
    let root =
        open_dir_at(None, dest.as_os_str().as_bytes(), false).map_err(|e| UnpackError::Dest {
            path: dest.to_path_buf(),
            source: e.into(),
        })?;
    let mut un = Unpacker {
        root,
        dir_times: BTreeMap::new(),
        size: 0,
        entries: 0,
    };
    let diff_id = match compression {
        Compression::None => un.run(&mut reader)?,
        Compression::Gzip => un.run(flate2::read::MultiGzDecoder::new(&mut reader))?,
        Compression::Zstd => {
            un.run(zstd::stream::read::Decoder::new(&mut reader).map_err(UnpackError::Stream)?)?
        }
    };
    // The decoders stop at the end of their stream; whatever the transport still holds is read
    // too, so that the blob digest computed around `reader` covers every byte.
    io::copy(&mut reader, &mut io::sink()).map_err(UnpackError::Stream)?;
    Ok(LayerStats {
        diff_id,
        size: un.size,
        entries: un.entries,
    })
}

/// Hashes everything read through it: the diff id.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The attributes of an entry, from its header and PAX records.
struct Attrs {
    uid: u32,
    gid: u32,
    mode: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// How [`Unpacker::walk`] failed.
enum WalkError {
    Symlink(String),
    NotDir(String),
    Missing(String),
    Io(&'static str, io::Error),
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Bookkeeping files AUFS left in layers built on it; they mean nothing for overlayfs.
const AUFS_METADATA: [&[u8]; 3] = [b".wh..wh.plnk", b".wh..wh.aufs", b".wh..wh.orph"];
const OPAQUE_XATTR: &std::ffi::CStr = c"trusted.overlay.opaque";

struct Unpacker {
    root: OwnedFd,
    /// Directory times, applied once every entry is written (writing a child changes them).
    dir_times: BTreeMap<Vec<Vec<u8>>, (TimeSpec, TimeSpec)>,
    size: u64,
    entries: u64,
}

impl Unpacker {
    fn run<D: Read>(&mut self, decoded: D) -> Result<Digest, UnpackError> {
        let mut archive = tar::Archive::new(HashingReader {
            inner: decoded,
            hasher: Sha256::new(),
        });
        for entry in archive.entries().map_err(UnpackError::Stream)? {
            let mut entry = entry.map_err(UnpackError::Stream)?;
            self.entry(&mut entry)?;
        }
        let mut hashing = archive.into_inner();
        // The end marker's second block, padding and anything after are part of the diff id.
        io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Stream)?;
        self.apply_dir_times();
        Ok(Digest::from_sha256(hashing.hasher))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let refused = |problem| UnpackError::Refused {
            entry: name.clone(),
            problem,
        };
        let mut kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            debug!("ignoring a global PAX header");
            return Ok(());
        }
        self.entries += 1;
        // Pre-POSIX tars mark directories with a trailing slash on a type '\0' entry.
        if entry.header().as_old().linkflag[0] == 0 && raw.ends_with(b"/") {
            kind = EntryType::Directory;
        }
        let comps = split_name(&raw).map_err(refused)?;

        if let Some((base, parents)) = comps.split_last() {
            if let Some(c) = parents.iter().find(|c| c.starts_with(WHITEOUT_PREFIX)) {
                if AUFS_METADATA.contains(&c.as_slice()) {
                    debug!("skipping AUFS metadata {name:?}");
                    return Ok(());
                }
                return Err(refused(Refusal::WhiteoutAsDir(lossy(c))));
            }
            if base.as_slice() == OPAQUE_MARKER {
                let dir = self
                    .walk(parents, true)
                    .map_err(|e| self.walk_error(&name, e))?;
                return set_opaque(&dir).map_err(|source| UnpackError::Io {
                    entry: name.clone(),
                    op: "marking the directory opaque",
                    source,
                });
            }
            if AUFS_METADATA.contains(&base.as_slice()) {
                debug!("skipping AUFS metadata {name:?}");
                return Ok(());
            }
            if let Some(target) = base.strip_prefix(WHITEOUT_PREFIX) {
                if target.is_empty()
                    || target == b"."
                    || target == b".."
                    || target.starts_with(WHITEOUT_PREFIX)
                {
                    return Err(refused(Refusal::BadWhiteout));
                }
                return self.whiteout(parents, target, &name);
            }
        }

        match kind {
            EntryType::Directory => {
                let attrs = attrs(entry).map_err(refused)?;
                self.directory(&comps, &attrs, &name)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let (base, parents) = comps
                    .split_last()
                    .ok_or_else(|| refused(Refusal::RootNotDir))?;
                let attrs = attrs(entry).map_err(refused)?;
                let parent = self
                    .walk(parents, true)
                    .map_err(|e| self.walk_error(&name, e))?;
                self.file(&parent, &comps, base, entry, &attrs, &name)
            }
            EntryType::Link => self.hardlink(&comps, entry, &name),
            EntryType::Symlink => {
                let (base, parents) = comps
                    .split_last()
                    .ok_or_else(|| refused(Refusal::RootNotDir))?;
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(refused(Refusal::EmptySymlink));
                }
                if target.contains(&0) {
                    return Err(refused(Refusal::NulInName));
                }
                let attrs = attrs(entry).map_err(refused)?;
                let parent = self
                    .walk(parents, true)
                    .map_err(|e| self.walk_error(&name, e))?;
                self.symlink(&parent, &comps, base, &target, &attrs, &name)
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                let (base, parents) = comps
                    .split_last()
                    .ok_or_else(|| refused(Refusal::RootNotDir))?;
                let attrs = attrs(entry).map_err(refused)?;
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    other => {
                        let h = entry.header();
                        let major = h.device_major().map_err(|e| refused(bad_header(e)))?;
                        let minor = h.device_minor().map_err(|e| refused(bad_header(e)))?;
                        let dev = makedev(major.unwrap_or(0).into(), minor.unwrap_or(0).into());
                        let sflag = if other == EntryType::Char {
                            SFlag::S_IFCHR
                        } else {
                            SFlag::S_IFBLK
                        };
                        (sflag, dev)
                    }
                };
                let parent = self
                    .walk(parents, true)
                    .map_err(|e| self.walk_error(&name, e))?;
                self.node(&parent, &comps, base, sflag, dev, &attrs, &name)
            }
            other => Err(refused(Refusal::UnsupportedType(describe_type(
                other,
                entry.header(),
            )))),
        }
    }

    /// Opens the directory `comps` (the root when empty) without following any symlink,
    /// creating missing directories (mode 0755) when `create`. A whiteout in the way of a
    /// directory this layer needs becomes an opaque directory: the lower one was deleted, this
    /// layer's one has only this layer's children.
    fn walk(&self, comps: &[Vec<u8>], create: bool) -> Result<OwnedFd, WalkError> {
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| WalkError::Io("duplicating a descriptor", e))?;
        for (i, c) in comps.iter().enumerate() {
            let shown = || lossy(&comps[..=i].join(&b'/'));
            match open_dir_at(Some(cur.as_raw_fd()), c, true) {
                Ok(fd) => cur = fd,
                Err(Errno::ENOENT) if create => {
                    cur = make_dir(&cur, c, 0o755)
                        .map_err(|e| WalkError::Io("creating a parent directory", e))?;
                }
                Err(Errno::ENOENT) => return Err(WalkError::Missing(shown())),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let st = fstatat(
                        Some(cur.as_raw_fd()),
                        c.as_slice(),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| WalkError::Io("inspecting a parent", e.into()))?;
                    if file_type(&st) == SFlag::S_IFLNK {
                        return Err(WalkError::Symlink(shown()));
                    }
                    if !(create && is_whiteout(&st)) {
                        return Err(WalkError::NotDir(shown()));
                    }
                    unlinkat(
                        Some(cur.as_raw_fd()),
                        c.as_slice(),
                        UnlinkatFlags::NoRemoveDir,
                    )
                    .map_err(|e| WalkError::Io("replacing a whiteout", e.into()))?;
                    let fd = make_dir(&cur, c, 0o755)
                        .map_err(|e| WalkError::Io("creating a parent directory", e))?;
                    set_opaque(&fd).map_err(|e| WalkError::Io("marking a directory opaque", e))?;
                    cur = fd;
                }
                Err(e) => return Err(WalkError::Io("opening a parent directory", e.into())),
            }
        }
        Ok(cur)
    }

    fn walk_error(&self, entry: &str, e: WalkError) -> UnpackError {
        let entry = entry.to_string();
        match e {
            WalkError::Symlink(p) => UnpackError::Refused {
                entry,
                problem: Refusal::ParentSymlink(p),
            },
            WalkError::NotDir(p) | WalkError::Missing(p) => UnpackError::Refused {
                entry,
                problem: Refusal::ParentNotDir(p),
            },
            WalkError::Io(op, source) => UnpackError::Io { entry, op, source },
        }
    }

    /// Makes room for a new non-directory at `base`: an earlier entry of this layer at the same
    /// path is replaced (a directory with everything under it).
    fn clear(&mut self, parent: &OwnedFd, comps: &[Vec<u8>], base: &[u8]) -> io::Result<()> {
        match fstatat(Some(parent.as_raw_fd()), base, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
                self.dir_times.retain(|k, _| !k.starts_with(comps));
                remove_tree_at(parent.as_raw_fd(), base)
            }
            Ok(_) => Ok(unlinkat(
                Some(parent.as_raw_fd()),
                base,
                UnlinkatFlags::NoRemoveDir,
            )?),
        }
    }

    fn directory(
        &mut self,
        comps: &[Vec<u8>],
        attrs: &Attrs,
        name: &str,
    ) -> Result<(), UnpackError> {
        let io = |op| {
            move |source| UnpackError::Io {
                entry: name.to_string(),
                op,
                source,
            }
        };
        let dir = match comps.split_last() {
            None => self
                .root
                .try_clone()
                .map_err(io("duplicating a descriptor"))?,
            Some((base, parents)) => {
                let parent = self
                    .walk(parents, true)
                    .map_err(|e| self.walk_error(name, e))?;
                let pfd = parent.as_raw_fd();
                match fstatat(Some(pfd), base.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Err(Errno::ENOENT) => make_dir(&parent, base, 0o700).map_err(io("creating"))?,
                    Err(e) => return Err(io("inspecting")(e.into())),
                    Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
                        open_dir_at(Some(pfd), base, true).map_err(|e| io("opening")(e.into()))?
                    }
                    Ok(st) => {
                        unlinkat(Some(pfd), base.as_slice(), UnlinkatFlags::NoRemoveDir)
                            .map_err(|e| io("replacing")(e.into()))?;
                        let fd = make_dir(&parent, base, 0o700).map_err(io("creating"))?;
                        if is_whiteout(&st) {
                            set_opaque(&fd).map_err(io("marking the directory opaque"))?;
                        }
                        fd
                    }
                }
            }
        };
        let fd = dir.as_raw_fd();
        fchown(
            fd,
            Some(Uid::from_raw(attrs.uid)),
            Some(Gid::from_raw(attrs.gid)),
        )
        .map_err(|e| io("setting the owner")(e.into()))?;
        set_xattrs(fd, &attrs.xattrs, name);
        fchmod(fd, Mode::from_bits_truncate(attrs.mode))
            .map_err(|e| io("setting the mode")(e.into()))?;
        self.dir_times
            .insert(comps.to_vec(), (attrs.atime, attrs.mtime));
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        parent: &OwnedFd,
        comps: &[Vec<u8>],
        base: &[u8],
        entry: &mut tar::Entry<'_, R>,
        attrs: &Attrs,
        name: &str,
    ) -> Result<(), UnpackError> {
        let io = |op| {
            move |source| UnpackError::Io {
                entry: name.to_string(),
                op,
                source,
            }
        };
        self.clear(parent, comps, base).map_err(io("replacing"))?;
        let fd = openat(
            Some(parent.as_raw_fd()),
            base,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("creating")(e.into()))?;
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let expected = entry.size();
        let sparse = entry.header().entry_type().is_gnu_sparse();
        let mut buf = vec![0u8; 128 << 10];
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::EntryData {
                        entry: name.to_string(),
                        source,
                    })
                }
            };
            file.write_all(&buf[..n]).map_err(io("writing"))?;
            written += n as u64;
        }
        if !sparse && written != expected {
            return Err(UnpackError::EntryData {
                entry: name.to_string(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the stream ended after {written} of {expected} bytes"),
                ),
            });
        }
        self.size += written;
        let fd = file.as_raw_fd();
        // Owner first: chown clears setuid/setgid and file capabilities, so the mode and the
        // xattrs come after it.
        fchown(
            fd,
            Some(Uid::from_raw(attrs.uid)),
            Some(Gid::from_raw(attrs.gid)),
        )
        .map_err(|e| io("setting the owner")(e.into()))?;
        set_xattrs(fd, &attrs.xattrs, name);
        fchmod(fd, Mode::from_bits_truncate(attrs.mode))
            .map_err(|e| io("setting the mode")(e.into()))?;
        futimens(fd, &attrs.atime, &attrs.mtime).map_err(|e| io("setting the times")(e.into()))?;
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        comps: &[Vec<u8>],
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<(), UnpackError> {
        let refused = |problem| UnpackError::Refused {
            entry: name.to_string(),
            problem,
        };
        let io = |op| {
            move |source| UnpackError::Io {
                entry: name.to_string(),
                op,
                source,
            }
        };
        let (base, parents) = comps
            .split_last()
            .ok_or_else(|| refused(Refusal::RootNotDir))?;
        let raw_target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        let target = lossy(&raw_target);
        let bad_target = |reason: String| {
            refused(Refusal::HardlinkTarget {
                target: target.clone(),
                reason,
            })
        };
        let tcomps = split_name(&raw_target).map_err(|p| bad_target(format!("is invalid: {p}")))?;
        let (tbase, tparents) = tcomps
            .split_last()
            .ok_or_else(|| bad_target("names the layer root".into()))?;
        let tparent = self.walk(tparents, false).map_err(|e| match e {
            WalkError::Symlink(p) => bad_target(format!("is refused: parent {p:?} is a symlink")),
            WalkError::NotDir(p) => {
                bad_target(format!("is refused: parent {p:?} is not a directory"))
            }
            WalkError::Missing(_) => bad_target("is not in this layer".into()),
            WalkError::Io(op, source) => UnpackError::Io {
                entry: name.to_string(),
                op,
                source,
            },
        })?;
        let tst = match fstatat(
            Some(tparent.as_raw_fd()),
            tbase.as_slice(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Err(bad_target("is not in this layer".into())),
            Err(e) => return Err(io("inspecting the link target")(e.into())),
        };
        if file_type(&tst) != SFlag::S_IFREG {
            return Err(bad_target("is not a regular file of this layer".into()));
        }
        let parent = self
            .walk(parents, true)
            .map_err(|e| self.walk_error(name, e))?;
        if let Ok(st) = fstatat(
            Some(parent.as_raw_fd()),
            base.as_slice(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino {
                return Ok(()); // already that file
            }
        }
        self.clear(&parent, comps, base).map_err(io("replacing"))?;
        linkat(
            Some(tparent.as_raw_fd()),
            tbase.as_slice(),
            Some(parent.as_raw_fd()),
            base.as_slice(),
            AtFlags::empty(),
        )
        .map_err(|e| io("linking")(e.into()))
    }

    fn symlink(
        &mut self,
        parent: &OwnedFd,
        comps: &[Vec<u8>],
        base: &[u8],
        target: &[u8],
        attrs: &Attrs,
        name: &str,
    ) -> Result<(), UnpackError> {
        let io = |op| {
            move |source| UnpackError::Io {
                entry: name.to_string(),
                op,
                source,
            }
        };
        self.clear(parent, comps, base).map_err(io("replacing"))?;
        let pfd = Some(parent.as_raw_fd());
        symlinkat(target, pfd, base).map_err(|e| io("creating")(e.into()))?;
        // Docker's layer size is the on-disk size of what the layer holds, and a symlink's
        // size is the length of its target.
        self.size += target.len() as u64;
        fchownat(
            pfd,
            base,
            Some(Uid::from_raw(attrs.uid)),
            Some(Gid::from_raw(attrs.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io("setting the owner")(e.into()))?;
        if !attrs.xattrs.is_empty() {
            debug!("not setting xattrs on symlink {name:?}");
        }
        utimensat(
            pfd,
            base,
            &attrs.atime,
            &attrs.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io("setting the times")(e.into()))
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        parent: &OwnedFd,
        comps: &[Vec<u8>],
        base: &[u8],
        kind: SFlag,
        dev: libc::dev_t,
        attrs: &Attrs,
        name: &str,
    ) -> Result<(), UnpackError> {
        let io = |op| {
            move |source| UnpackError::Io {
                entry: name.to_string(),
                op,
                source,
            }
        };
        self.clear(parent, comps, base).map_err(io("replacing"))?;
        let pfd = Some(parent.as_raw_fd());
        match mknodat(pfd, base, kind, Mode::from_bits_truncate(0o600), dev) {
            Ok(()) => {}
            Err(Errno::EPERM) if kind != SFlag::S_IFIFO => {
                warn!("layer entry {name:?}: not allowed to create device nodes here; skipped");
                return Ok(());
            }
            Err(e) => return Err(io("creating")(e.into())),
        }
        fchownat(
            pfd,
            base,
            Some(Uid::from_raw(attrs.uid)),
            Some(Gid::from_raw(attrs.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io("setting the owner")(e.into()))?;
        if !attrs.xattrs.is_empty() {
            debug!("not setting xattrs on special file {name:?}");
        }
        // fchmodat follows a final symlink, but `base` is the node just created, in a tree
        // only root can reach.
        fchmodat(
            pfd,
            base,
            Mode::from_bits_truncate(attrs.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| io("setting the mode")(e.into()))?;
        utimensat(
            pfd,
            base,
            &attrs.atime,
            &attrs.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| io("setting the times")(e.into()))
    }

    /// `.wh.<target>`: the lower layers' `target` is deleted. An entry of this layer at that
    /// path stays (whiteouts apply to lower layers only); a directory of this layer becomes
    /// opaque so that nothing of the lower one shows through it.
    fn whiteout(
        &mut self,
        parents: &[Vec<u8>],
        target: &[u8],
        name: &str,
    ) -> Result<(), UnpackError> {
        let io = |op| {
            move |source| UnpackError::Io {
                entry: name.to_string(),
                op,
                source,
            }
        };
        let parent = self
            .walk(parents, true)
            .map_err(|e| self.walk_error(name, e))?;
        let pfd = parent.as_raw_fd();
        match fstatat(Some(pfd), target, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => mknodat(
                Some(pfd),
                target,
                SFlag::S_IFCHR,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(|e| io("creating the whiteout device")(e.into())),
            Err(e) => Err(io("inspecting")(e.into())),
            Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
                let dir =
                    open_dir_at(Some(pfd), target, true).map_err(|e| io("opening")(e.into()))?;
                set_opaque(&dir).map_err(io("marking the directory opaque"))
            }
            Ok(_) => Ok(()),
        }
    }

    /// Sets the recorded directory times (a directory's times do not depend on its children's
    /// times, so any order does). A directory replaced since is skipped.
    fn apply_dir_times(&mut self) {
        for (comps, (atime, mtime)) in std::mem::take(&mut self.dir_times).into_iter().rev() {
            let dir = match comps.split_last() {
                None => self.root.try_clone().ok(),
                Some((base, parents)) => self
                    .walk(parents, false)
                    .ok()
                    .and_then(|p| open_dir_at(Some(p.as_raw_fd()), base, true).ok()),
            };
            let Some(dir) = dir else { continue };
            if let Err(e) = futimens(dir.as_raw_fd(), &atime, &mtime) {
                warn!("setting the times of {:?}: {e}", lossy(&comps.join(&b'/')));
            }
        }
    }
}

/// Splits an entry name into its components: leading `/` and `./` go (an absolute name is
/// relative to the layer root), empty and `.` components go, `..` anywhere is refused. An empty
/// result names the layer root.
fn split_name(raw: &[u8]) -> Result<Vec<Vec<u8>>, Refusal> {
    if raw.is_empty() {
        return Err(Refusal::EmptyName);
    }
    if raw.contains(&0) {
        return Err(Refusal::NulInName);
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Refusal::DotDot),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn bad_header(e: io::Error) -> Refusal {
    Refusal::BadHeader(e.to_string())
}

fn describe_type(t: EntryType, h: &tar::Header) -> String {
    let flag = h.as_old().linkflag[0];
    let what = match t {
        EntryType::GNULongName | EntryType::GNULongLink => "stray GNU long name",
        EntryType::XHeader => "stray PAX header",
        _ => "unknown",
    };
    format!("{:?} ({what})", flag as char)
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn is_whiteout(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFCHR && st.st_rdev == 0
}

/// Creates directory `name` in `parent` (or finds one a racing walk made) and opens it. The mode
/// is set explicitly: mkdir's is cut by the umask.
fn make_dir(parent: &OwnedFd, name: &[u8], mode: u32) -> io::Result<OwnedFd> {
    let created = match mkdirat(
        Some(parent.as_raw_fd()),
        name,
        Mode::from_bits_truncate(mode),
    ) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let fd = open_dir_at(Some(parent.as_raw_fd()), name, true)?;
    if created {
        fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))?;
    }
    Ok(fd)
}

fn set_opaque(dir: &OwnedFd) -> io::Result<()> {
    fsetxattr(dir.as_raw_fd(), OPAQUE_XATTR, b"y")
}

fn fsetxattr(fd: RawFd, name: &std::ffi::CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated, `value` is valid for `value.len()` bytes for the whole
    // call, and `fd` is an open descriptor the caller owns.
    let r = unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Which xattrs of a layer are applied. `trusted.*` (overlayfs keeps its own state there) and
/// `security.*` other than file capabilities (labels are the host's business) are not.
fn xattr_allowed(name: &str) -> bool {
    (name.starts_with("user.") && !name.starts_with("user.overlay."))
        || name == "security.capability"
        || name == "system.posix_acl_access"
        || name == "system.posix_acl_default"
}

/// Best effort: a filesystem that refuses an xattr costs a warning, not the layer.
fn set_xattrs(fd: RawFd, xattrs: &[(CString, Vec<u8>)], entry: &str) {
    for (key, value) in xattrs {
        if let Err(e) = fsetxattr(fd, key, value) {
            warn!("layer entry {entry:?}: xattr {key:?} not set: {e}");
        }
    }
}

fn attrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Attrs, Refusal> {
    let h = entry.header();
    // PAX uid/gid were already folded into the header by the tar crate.
    let id = |v: u64| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or(Refusal::IdOutOfRange(v))
    };
    let uid = id(h.uid().map_err(bad_header)?)?;
    let gid = id(h.gid().map_err(bad_header)?)?;
    let mode = h.mode().map_err(bad_header)? & 0o7777;
    let header_mtime = h.mtime().map_err(bad_header)?;
    let mut mtime = TimeSpec::new(i64::try_from(header_mtime).unwrap_or(i64::MAX), 0);
    let mut atime = None;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(bad_header)? {
        for ext in pax {
            let ext = ext.map_err(bad_header)?;
            let Ok(key) = ext.key() else { continue };
            match key {
                "mtime" => {
                    mtime = ext.value().ok().and_then(parse_pax_time).ok_or_else(|| {
                        Refusal::BadHeader(format!("PAX mtime {:?}", lossy(ext.value_bytes())))
                    })?
                }
                "atime" => atime = ext.value().ok().and_then(parse_pax_time),
                // The tar crate does not expand PAX sparse files: refused rather than written
                // as their raw sparse map.
                k if k.starts_with("GNU.sparse.") => {
                    return Err(Refusal::UnsupportedType(
                        "PAX sparse file (GNU.sparse.*)".into(),
                    ))
                }
                _ => {
                    let Some(xattr) = key.strip_prefix("SCHILY.xattr.") else {
                        continue;
                    };
                    if !xattr_allowed(xattr) {
                        debug!("not applying xattr {xattr:?} from the layer");
                        continue;
                    }
                    match CString::new(xattr) {
                        Ok(k) => xattrs.push((k, ext.value_bytes().to_vec())),
                        Err(_) => warn!("skipping xattr {xattr:?}: NUL in its name"),
                    }
                }
            }
        }
    }
    Ok(Attrs {
        uid,
        gid,
        mode,
        atime: atime.unwrap_or(mtime),
        mtime,
        xattrs,
    })
}

/// A PAX time: decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(v: &str) -> Option<TimeSpec> {
    let (negative, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nanos: i64 = digits.parse().ok()?;
    if negative {
        secs = -secs;
        if nanos > 0 {
            secs -= 1;
            nanos = 1_000_000_000 - nanos;
        }
    }
    Some(TimeSpec::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_and_checked() {
        let ok = |s: &str| {
            split_name(s.as_bytes())
                .unwrap()
                .iter()
                .map(|c| lossy(c))
                .collect::<Vec<_>>()
        };
        assert_eq!(ok("./a/b"), ["a", "b"]);
        assert_eq!(ok("/etc/x"), ["etc", "x"]);
        assert_eq!(ok("a//./b/"), ["a", "b"]);
        assert!(ok("./").is_empty());
        assert!(ok("/").is_empty());
        assert_eq!(ok("..a/b..").len(), 2);
        assert_eq!(split_name(b""), Err(Refusal::EmptyName));
        assert_eq!(split_name(b"../x"), Err(Refusal::DotDot));
        assert_eq!(split_name(b"a/../../x"), Err(Refusal::DotDot));
        assert_eq!(split_name(b"a/.."), Err(Refusal::DotDot));
        assert_eq!(split_name(b"a\0b"), Err(Refusal::NulInName));
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time("1700000000"),
            Some(TimeSpec::new(1_700_000_000, 0))
        );
        assert_eq!(parse_pax_time("1.5"), Some(TimeSpec::new(1, 500_000_000)));
        assert_eq!(
            parse_pax_time("1.1234567891"),
            Some(TimeSpec::new(1, 123_456_789))
        );
        assert_eq!(
            parse_pax_time("-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time("-3"), Some(TimeSpec::new(-3, 0)));
        for bad in ["", ".5", "x", "1.x", "1e9"] {
            assert_eq!(parse_pax_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn media_types() {
        use Compression::*;
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Gzip,
            ),
        ] {
            assert_eq!(Compression::from_media_type(mt).unwrap(), c, "{mt}");
        }
        let e =
            Compression::from_media_type("application/vnd.oci.image.config.v1+json").unwrap_err();
        assert!(
            e.to_string().contains("unsupported layer media type"),
            "{e}"
        );
    }

    #[test]
    fn xattr_policy() {
        assert!(xattr_allowed("user.foo"));
        assert!(xattr_allowed("security.capability"));
        assert!(!xattr_allowed("trusted.overlay.opaque"));
        assert!(!xattr_allowed("user.overlay.opaque"));
        assert!(!xattr_allowed("security.selinux"));
    }
}
