//! File system work of COPY, ADD and WORKDIR: done inside the step's own overlay (the image's
//! layers under a fresh upper dir), mounted in a private mount namespace of a thread of its
//! own and made that thread's root with chroot, so that a destination path — symlinks and `..`
//! included — can only ever resolve inside the image being built. Sources are opened relative
//! to a descriptor of their root taken before the chroot, one component at a time without
//! following symlinks.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{fstatat, Mode, SFlag};

/// The mount page is 4096 bytes; the overlay options must fit.
const MAX_OPTIONS: usize = 4000;

/// A step's overlay: `lowers` top first (none for `FROM scratch`: `empty` stands in).
pub struct Overlay {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub empty: PathBuf,
}

/// Where COPY reads from: the context directory, or another image's layers (`--from`),
/// mounted read-only at `target`.
pub enum Source {
    Dir(PathBuf),
    Image {
        lowers: Vec<PathBuf>,
        target: PathBuf,
    },
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn lowerdir(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `plan` with the source's root path (before the chroot), then `act` inside the step's
/// root with a descriptor of the source's root. Everything happens on a new thread whose mount
/// namespace and root are its own; the mounts go with it.
pub fn in_step_root<P, T>(
    ov: &Overlay,
    source: Option<&Source>,
    plan: impl FnOnce(Option<&Path>) -> io::Result<P> + Send,
    act: impl FnOnce(P, Option<&OwnedFd>) -> io::Result<T> + Send,
) -> io::Result<T>
where
    P: Send,
    T: Send,
{
    for d in [&ov.upper, &ov.work, &ov.merged, &ov.empty] {
        fs::create_dir_all(d)?;
    }
    let lowers = if ov.lowers.is_empty() {
        vec![ov.empty.clone()]
    } else {
        ov.lowers.clone()
    };
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir(&lowers),
        ov.upper.display(),
        ov.work.display()
    );
    if opts.len() > MAX_OPTIONS {
        return Err(other(format!(
            "the image has too many layers ({}) for a build step",
            ov.lowers.len()
        )));
    }
    std::thread::scope(|s| {
        s.spawn(move || -> io::Result<T> {
            unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            mount(
                Some("overlay"),
                &ov.merged,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
            .map_err(|e| other(format!("mounting the build step's file system: {e}")))?;
            let src_path: Option<PathBuf> = match source {
                None => None,
                Some(Source::Dir(p)) => Some(p.clone()),
                Some(Source::Image { lowers, target }) => match lowers.len() {
                    0 => return Err(other("the source stage or image has no files")),
                    1 => Some(lowers[0].clone()),
                    _ => {
                        fs::create_dir_all(target)?;
                        let o = format!("lowerdir={}", lowerdir(lowers));
                        if o.len() > MAX_OPTIONS {
                            return Err(other("the source image has too many layers"));
                        }
                        mount(
                            Some("overlay"),
                            target,
                            Some("overlay"),
                            MsFlags::MS_RDONLY,
                            Some(o.as_str()),
                        )
                        .map_err(|e| other(format!("mounting the source image: {e}")))?;
                        Some(target.clone())
                    }
                },
            };
            let planned = plan(src_path.as_deref())?;
            let src_fd = match &src_path {
                Some(p) => Some(nix::fcntl::open(
                    p,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?),
                None => None,
            };
            // SAFETY: open returned a new descriptor that nothing else owns.
            let src_fd =
                src_fd.map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            let old_root = fs::File::open("/")?;
            nix::unistd::chroot(&ov.merged)?;
            std::env::set_current_dir("/")?;
            let result = act(planned, src_fd.as_ref());
            // Back to the real root to unmount; the namespace would drop the mounts anyway.
            let back =
                nix::unistd::fchdir(old_root.as_raw_fd()).and_then(|()| nix::unistd::chroot("."));
            if back.is_ok() {
                let _ = umount2(&ov.merged, MntFlags::MNT_DETACH);
            }
            result
        })
        .join()
        .unwrap_or_else(|_| Err(other("the build step's thread panicked")))
    })
}

/// Opens `rel` (relative, cleaned) under `root` without following any symlink; returns the
/// parent's descriptor and the last component (`None` for the root itself).
fn open_parent(root: &OwnedFd, rel: &Path) -> io::Result<(OwnedFd, Option<Vec<u8>>)> {
    let parts: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let mut dir = dup(root)?;
    let Some((last, parents)) = parts.split_last() else {
        return Ok((dir, None));
    };
    for p in parents {
        let fd = openat(
            Some(dir.as_raw_fd()),
            *p,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| other(format!("{}: {e}", rel.display())))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        dir = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    }
    Ok((dir, Some(last.as_bytes().to_vec())))
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

/// One thing to copy: `src` (relative to the source root; empty for the root) to `dest`
/// (absolute in the step's root). A directory's contents go into `dest`.
#[derive(Debug, Clone)]
pub struct CopyItem {
    pub src: PathBuf,
    pub dest: PathBuf,
    /// ADD of a local archive: extracted into `dest`.
    pub extract: bool,
}

/// What to do with the copied files: owner (root unless `--chown`) and which context paths
/// to leave out (`.dockerignore`).
pub struct CopyOptions<'a> {
    pub owner: (u32, u32),
    pub excluded: &'a (dyn Fn(&Path) -> bool + Sync),
}

pub fn copy_items(src_root: &OwnedFd, items: &[CopyItem], opts: &CopyOptions) -> io::Result<()> {
    for item in items {
        let (parent, name) = open_parent(src_root, &item.src)?;
        let (fd, name) = match name {
            Some(n) => (parent, n),
            None => (parent, b".".to_vec()),
        };
        if item.extract {
            let f = open_file(&fd, &name)?;
            extract(f, &item.dest, opts)?;
            continue;
        }
        copy_entry(&fd, &name, &item.src, &item.dest, opts, true)?;
    }
    Ok(())
}

fn open_file(dir: &OwnedFd, name: &[u8]) -> io::Result<fs::File> {
    let fd = openat(
        Some(dir.as_raw_fd()),
        OsStr::from_bytes(name),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn set_times(path: &Path, mtime: i64, mtime_ns: i64) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(mtime, mtime_ns);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

fn make_dirs(path: &Path, owner: (u32, u32)) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(p) = path.parent() {
        make_dirs(p, owner)?;
    }
    match fs::create_dir(path) {
        Ok(()) => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(other(format!("creating {}: {e}", path.display()))),
    }
}

/// Removes whatever is at `path` unless it is a directory (a file replaces a file, a link).
fn clear_for_file(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(other(format!(
            "cannot copy to {}: it is a directory",
            path.display()
        ))),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn copy_entry(
    dir: &OwnedFd,
    name: &[u8],
    rel: &Path,
    dest: &Path,
    opts: &CopyOptions,
    top: bool,
) -> io::Result<()> {
    if !top && (opts.excluded)(rel) {
        return Ok(());
    }
    let st = fstatat(
        Some(dir.as_raw_fd()),
        OsStr::from_bytes(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    let mode = st.st_mode & 0o7777;
    let (uid, gid) = opts.owner;
    if kind == SFlag::S_IFDIR {
        if top {
            make_dirs(dest, opts.owner)?;
        } else {
            match fs::symlink_metadata(dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(dest)?;
                    fs::create_dir(dest)?;
                }
                Err(_) => fs::create_dir(dest)?,
            }
            std::os::unix::fs::lchown(dest, Some(uid), Some(gid))?;
            fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
        }
        let fd = openat(
            Some(dir.as_raw_fd()),
            OsStr::from_bytes(name),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let sub: OwnedFd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut d = nix::dir::Dir::from_fd(dup(&sub)?.into_raw_fd_compat())?;
        for e in d.iter() {
            let e = e?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        names.sort();
        for n in names {
            let child_rel = rel.join(OsStr::from_bytes(&n));
            let child_dest = dest.join(OsStr::from_bytes(&n));
            copy_entry(&sub, &n, &child_rel, &child_dest, opts, false)?;
        }
        if !top {
            set_times(dest, st.st_mtime, st.st_mtime_nsec)?;
        }
        return Ok(());
    }
    if let Some(p) = dest.parent() {
        make_dirs(p, opts.owner)?;
    }
    clear_for_file(dest)?;
    match kind {
        SFlag::S_IFREG => {
            let mut src = open_file(dir, name)?;
            let mut out = fs::File::options()
                .write(true)
                .create_new(true)
                .open(dest)
                .map_err(|e| other(format!("creating {}: {e}", dest.display())))?;
            io::copy(&mut src, &mut out)?;
            drop(out);
            std::os::unix::fs::lchown(dest, Some(uid), Some(gid))?;
            fs::set_permissions(dest, fs::Permissions::from_mode(mode))?;
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), OsStr::from_bytes(name))?;
            std::os::unix::fs::symlink(target, dest)?;
            std::os::unix::fs::lchown(dest, Some(uid), Some(gid))?;
        }
        // Devices, fifos and sockets of a context are not copied (nor does a tar carry
        // sockets); an image's fifo is made again.
        SFlag::S_IFIFO => {
            nix::unistd::mkfifo(dest, Mode::from_bits_truncate(mode))?;
            std::os::unix::fs::lchown(dest, Some(uid), Some(gid))?;
        }
        _ => return Ok(()),
    }
    set_times(dest, st.st_mtime, st.st_mtime_nsec)
}

trait IntoRawFdCompat {
    fn into_raw_fd_compat(self) -> std::os::fd::RawFd;
}

impl IntoRawFdCompat for OwnedFd {
    fn into_raw_fd_compat(self) -> std::os::fd::RawFd {
        std::os::fd::IntoRawFd::into_raw_fd(self)
    }
}

/// The archive kind ADD extracts, from the first bytes: gzip, zstd or a plain tar.
pub fn archive_kind(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some("tar")
    } else {
        None
    }
}

/// Extracts a local archive (ADD) into `dest` inside the step's root.
fn extract(mut f: fs::File, dest: &Path, opts: &CopyOptions) -> io::Result<()> {
    let mut head = vec![0u8; 512];
    let n = read_up_to(&mut f, &mut head)?;
    head.truncate(n);
    use std::io::Seek;
    f.seek(io::SeekFrom::Start(0))?;
    make_dirs(dest, opts.owner)?;
    let reader: Box<dyn Read> = match archive_kind(&head) {
        Some("gzip") => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f))),
        Some("zstd") => Box::new(zstd::stream::read::Decoder::new(f)?),
        _ => Box::new(io::BufReader::new(f)),
    };
    let mut a = tar::Archive::new(reader);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_overwrite(true);
    a.unpack(dest).map_err(|e| {
        // tar's error names the entry; its cause says why.
        let mut msg = e.to_string();
        let mut cause = e.get_ref().and_then(|inner| inner.source());
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        other(msg)
    })
}

fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// WORKDIR: the directory, made if missing (root-owned, 0755, as dockerd 20.10).
pub fn make_workdir(dir: &Path) -> io::Result<()> {
    make_dirs(dir, (0, 0))
}

/// Whether `path` (in the step's root) is an existing directory.
pub fn is_dir(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// Resolves `--chown` user and group names through the step root's `/etc/passwd` and
/// `/etc/group` (numbers stand for themselves). Run inside the step's root.
pub fn resolve_owner(spec: &str) -> io::Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let lookup = |file: &str, name: &str| -> io::Result<(u32, u32)> {
        let text = fs::read_to_string(file).map_err(|e| {
            other(format!(
                "unable to convert uid/gid chown string to host mapping: can't find uid for user {name}: {file}: {e}"
            ))
        })?;
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == name {
                let id = f[2].parse().unwrap_or(0);
                let gid = f[3].parse().unwrap_or(0);
                return Ok((id, gid));
            }
        }
        Err(other(format!(
            "unable to convert uid/gid chown string to host mapping: can't find uid for user {name}: no such user: {name}"
        )))
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => lookup("/etc/passwd", user)?,
    };
    let gid = match group {
        None => {
            if user.parse::<u32>().is_ok() {
                uid
            } else {
                primary_gid
            }
        }
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup("/etc/group", g)?.0,
        },
    };
    Ok((uid, gid))
}
