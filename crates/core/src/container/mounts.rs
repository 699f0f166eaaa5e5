//! A container's own mounts, planned once at create from `-v` (`HostSpec.binds`: host paths and
//! volume names), `--mount` (`HostSpec.mounts`), the request's `Config.Volumes` and the image's
//! `Volumes` (anonymous volumes), as dockerd merges them; and the copy-up that fills a new, empty
//! volume with what the image has at its destination before the container starts.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_proto::{ContainerSpec, MountPoint};
use serde::{Deserialize, Serialize};

use super::spec::{parse_bind, SpecError};

/// Written in the bundle for the shim: the volumes to fill before the container starts.
pub const COPY_UP_FILE: &str = "copy-up.json";

/// One mount of a container, as its record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ContainerMount {
    /// "bind", "volume" or "tmpfs".
    pub kind: String,
    /// The volume's name ("" for binds and tmpfs).
    pub name: String,
    /// The host (core-side) path: a bind's source, a volume's `_data`; empty for tmpfs.
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
    /// The options as the user gave them (inspect's `Mode`).
    pub mode: String,
    /// Binds: the propagation mode; "" for volumes (as dockerd shows them).
    pub propagation: String,
    /// A volume to fill with the image's content at the destination while it is empty.
    pub copy_up: bool,
    /// An anonymous volume: `docker rm -v` and `--rm` remove it with the container.
    pub anonymous: bool,
    /// A `-v` bind whose missing source directory is created (`--mount` requires it).
    pub create_source: bool,
    /// Labels of the volume this mount creates (`--mount volume-label=…`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// tmpfs: the mount's options (size, mode).
    #[serde(default)]
    pub tmpfs_options: Vec<String>,
}

impl ContainerMount {
    /// Docker's `MountPoint` for inspect.
    pub fn point(&self) -> MountPoint {
        MountPoint {
            kind: self.kind.clone(),
            name: self.name.clone(),
            source: self.source.display().to_string(),
            destination: self.destination.clone(),
            driver: if self.kind == "volume" {
                "local".into()
            } else {
                String::new()
            },
            mode: self.mode.clone(),
            rw: !self.read_only,
            propagation: self.propagation.clone(),
        }
    }
}

fn absolute(kind: &str, dst: &str) -> Result<(), SpecError> {
    if dst.starts_with('/') {
        Ok(())
    } else {
        Err(SpecError::Mount(format!(
            "invalid mount config for type \"{kind}\": invalid mount path: '{dst}' mount path must be absolute"
        )))
    }
}

/// A `-v NAME:DST[:OPTIONS]` volume.
fn parse_volume_bind(b: &str) -> Result<ContainerMount, SpecError> {
    let parts: Vec<&str> = b.split(':').collect();
    let (name, dst, opts) = match parts.as_slice() {
        [n, d] => (*n, *d, ""),
        [n, d, o] => (*n, *d, *o),
        _ => return Err(SpecError::Bind(b.to_string())),
    };
    if dst.is_empty() {
        return Err(SpecError::Bind(b.to_string()));
    }
    if !dst.starts_with('/') {
        return Err(SpecError::Destination(dst.to_string()));
    }
    let mut m = ContainerMount {
        kind: "volume".into(),
        name: name.to_string(),
        destination: dst.to_string(),
        // dockerd shows the SELinux relabel default for a volume given without options.
        mode: if opts.is_empty() {
            "z".into()
        } else {
            opts.into()
        },
        copy_up: true,
        ..Default::default()
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "nocopy" => m.copy_up = false,
            "z" | "Z" => {}
            _ => return Err(SpecError::Mount(format!("invalid mode: {o}"))),
        }
    }
    Ok(m)
}

/// One of `HostSpec.mounts` (`--mount`).
fn from_mount_spec(s: &berth_proto::MountSpec) -> Result<ContainerMount, SpecError> {
    let kind = s.kind.as_str();
    let invalid =
        |why: String| SpecError::Mount(format!("invalid mount config for type \"{kind}\": {why}"));
    if s.target.is_empty() {
        return Err(invalid("field Target must not be empty".into()));
    }
    absolute(kind, &s.target)?;
    let mut m = ContainerMount {
        kind: kind.to_string(),
        destination: s.target.clone(),
        read_only: s.read_only,
        ..Default::default()
    };
    match kind {
        "bind" => {
            if s.source.is_empty() {
                return Err(invalid("field Source must not be empty".into()));
            }
            if !s.source.starts_with('/') {
                return Err(invalid(format!(
                    "invalid mount path: '{}' mount path must be absolute",
                    s.source
                )));
            }
            if !Path::new(&s.source).exists() {
                return Err(invalid(format!(
                    "bind source path does not exist: {}",
                    s.source
                )));
            }
            m.source = PathBuf::from(&s.source);
            m.propagation = match s.propagation.as_str() {
                "" => "rprivate".into(),
                p @ ("shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate") => {
                    p.into()
                }
                p => return Err(invalid(format!("invalid propagation mode: {p}"))),
            };
        }
        "volume" => {
            m.name = s.source.clone();
            m.anonymous = s.source.is_empty();
            m.mode = "z".into();
            m.copy_up = !s.no_copy;
            m.labels = s.labels.clone();
        }
        "tmpfs" => {
            if !s.source.is_empty() {
                return Err(invalid("field Source must not be specified".into()));
            }
            let mut o = vec!["nosuid".to_string(), "nodev".into(), "noexec".into()];
            if s.tmpfs_size > 0 {
                o.push(format!("size={}", s.tmpfs_size));
            }
            o.push(format!(
                "mode={:o}",
                if s.tmpfs_mode == 0 {
                    0o1777
                } else {
                    s.tmpfs_mode
                }
            ));
            m.tmpfs_options = o;
        }
        other => {
            return Err(SpecError::Mount(format!(
                "mount type {other:?} is not supported (bind, volume and tmpfs are)"
            )))
        }
    }
    Ok(m)
}

/// The container's mounts, as dockerd merges them: `-v` and `--mount` first (one destination
/// once), then an anonymous volume for each `Config.Volumes` and image `Volumes` destination
/// nothing else mounts. Volume sources are left empty: the caller creates the volumes.
pub fn plan(
    spec: &ContainerSpec,
    image_volumes: &[String],
) -> Result<Vec<ContainerMount>, SpecError> {
    let mut out: Vec<ContainerMount> = Vec::new();
    let add = |m: ContainerMount, out: &mut Vec<ContainerMount>| {
        let clean = m.destination.trim_end_matches('/');
        if out
            .iter()
            .any(|o| o.destination.trim_end_matches('/') == clean)
        {
            return Err(SpecError::Mount(format!(
                "Duplicate mount point: {}",
                m.destination
            )));
        }
        out.push(m);
        Ok(())
    };
    for b in &spec.host.binds {
        let m = if b.starts_with('/') {
            let p = parse_bind(b)?;
            ContainerMount {
                kind: "bind".into(),
                source: p.source,
                destination: p.destination,
                read_only: p.read_only,
                mode: b.splitn(3, ':').nth(2).unwrap_or("").to_string(),
                propagation: p.propagation,
                create_source: true,
                ..Default::default()
            }
        } else {
            parse_volume_bind(b)?
        };
        add(m, &mut out)?;
    }
    for s in &spec.host.mounts {
        add(from_mount_spec(s)?, &mut out)?;
    }
    let taken = |out: &[ContainerMount], d: &str| {
        let d = d.trim_end_matches('/');
        out.iter().any(|o| o.destination.trim_end_matches('/') == d)
            || spec.host.tmpfs.keys().any(|t| t.trim_end_matches('/') == d)
    };
    for dst in spec.volumes.iter().chain(image_volumes) {
        absolute("volume", dst)?;
        if taken(&out, dst) {
            continue;
        }
        out.push(ContainerMount {
            kind: "volume".into(),
            destination: dst.clone(),
            copy_up: true,
            anonymous: true,
            ..Default::default()
        });
    }
    Ok(out)
}

/// A volume the shim fills before the container starts (`copy-up.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CopyUp {
    pub volume: PathBuf,
    pub destination: String,
}

/// Docker's copy-up: when `volume` is empty and the image has a directory at `destination`
/// (resolved inside `rootfs`, symlinks never leading out of it), copies that directory's
/// content into the volume, keeping owners, modes, times, symlinks, hard links, devices and
/// fifos, and gives the volume's top the directory's owner and mode. Returns whether it copied.
pub fn copy_up(rootfs: &Path, destination: &str, volume: &Path) -> io::Result<bool> {
    if fs::read_dir(volume)?.next().is_some() {
        return Ok(false);
    }
    let root = fs::File::open(rootfs)?;
    let src = match open_in_root(&root, destination) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(false)
        }
        Err(e) => return Err(e),
    };
    let src_path = PathBuf::from(format!("/proc/self/fd/{}", src.as_raw_fd()));
    let mut links = HashMap::new();
    copy_dir(&src_path, volume, &mut links)?;
    let md = fs::metadata(&src_path)?;
    set_owner_mode_times(volume, &md)?;
    Ok(true)
}

/// Opens directory `path` as if `root` were `/` (openat2 with RESOLVE_IN_ROOT): `..` and
/// absolute symlinks stay inside.
fn open_in_root(root: &fs::File, path: &str) -> io::Result<OwnedFd> {
    let rel = CString::new(path.trim_start_matches('/').as_bytes().to_vec())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let rel = if rel.as_bytes().is_empty() {
        CString::new(".").expect("no nul")
    } else {
        rel
    };
    // SAFETY: open_how is plain data; zeroed is a valid value that we then fill in.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the pointers are valid for the call (a nul-terminated path and the struct with
    // its size); the returned descriptor, when not negative, is ours to own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn copy_dir(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let md = from.symlink_metadata()?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(&to)?;
            copy_dir(&from, &to, links)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if md.nlink() > 1 && !ft.is_dir() && links.contains_key(&(md.dev(), md.ino())) {
            fs::hard_link(&links[&(md.dev(), md.ino())], &to)?;
            continue;
        } else if ft.is_file() {
            // A regular file (lstat said so, and nothing runs in the rootfs yet).
            fs::copy(&from, &to)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let c = CString::new(to.as_os_str().as_bytes().to_vec())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: a valid nul-terminated path; mknod reads nothing else of ours.
            let r = unsafe { libc::mknod(c.as_ptr(), md.mode() as libc::mode_t, md.rdev()) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        } else {
            // Sockets belong to a process that is not there.
            continue;
        }
        if md.nlink() > 1 && !ft.is_dir() {
            links.insert((md.dev(), md.ino()), to.clone());
        }
        set_owner_mode_times(&to, &md)?;
    }
    Ok(())
}

fn set_owner_mode_times(path: &Path, md: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(md.uid()), Some(md.gid()))?;
    if !md.file_type().is_symlink() {
        // After the owner: chown clears setuid/setgid bits.
        fs::set_permissions(path, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    let times = [
        nix::sys::time::TimeSpec::new(md.atime(), md.atime_nsec()),
        nix::sys::time::TimeSpec::new(md.mtime(), md.mtime_nsec()),
    ];
    nix::sys::stat::utimensat(
        None,
        path,
        &times[0],
        &times[1],
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::{HostSpec, MountSpec};

    fn spec(host: HostSpec, volumes: &[&str]) -> ContainerSpec {
        ContainerSpec {
            host,
            volumes: volumes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn binds_volumes_and_image_volumes_merge() {
        let host = HostSpec {
            binds: vec![
                "/host:/h:ro".into(),
                "data:/data".into(),
                "cache:/c:ro,nocopy".into(),
            ],
            mounts: vec![MountSpec {
                kind: "volume".into(),
                target: "/m".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = plan(
            &spec(host, &["/anon", "/data"]),
            &["/img".into(), "/h".into()],
        )
        .unwrap();
        let by = |d: &str| m.iter().find(|x| x.destination == d).unwrap().clone();
        assert_eq!(m.len(), 6, "{m:?}");
        let h = by("/h");
        assert_eq!(
            (h.kind.as_str(), h.read_only, h.mode.as_str()),
            ("bind", true, "ro")
        );
        assert_eq!(h.propagation, "rprivate");
        let d = by("/data");
        assert_eq!(
            (d.kind.as_str(), d.name.as_str(), d.mode.as_str()),
            ("volume", "data", "z")
        );
        assert!(d.copy_up && !d.anonymous && !d.read_only);
        let c = by("/c");
        assert!(c.read_only && !c.copy_up);
        assert_eq!(c.mode, "ro,nocopy");
        assert!(by("/m").anonymous);
        assert_eq!(by("/m").mode, "z");
        for d in ["/anon", "/img"] {
            let a = by(d);
            assert!(a.anonymous && a.copy_up && a.name.is_empty() && a.mode.is_empty());
        }
    }

    #[test]
    fn bad_mounts_are_refused_with_dockers_words() {
        let e = |host: HostSpec| plan(&spec(host, &[]), &[]).unwrap_err().to_string();
        assert_eq!(
            e(HostSpec {
                binds: vec!["x:/a:bogus".into()],
                ..Default::default()
            }),
            "invalid mode: bogus"
        );
        assert_eq!(
            e(HostSpec {
                binds: vec!["a1:/a".into(), "/b:/a".into()],
                ..Default::default()
            }),
            "Duplicate mount point: /a"
        );
        assert_eq!(
            e(HostSpec {
                mounts: vec![MountSpec {
                    kind: "bind".into(),
                    source: "/no/such/berth/dir".into(),
                    target: "/x".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            "invalid mount config for type \"bind\": bind source path does not exist: /no/such/berth/dir"
        );
        assert_eq!(
            e(HostSpec {
                mounts: vec![MountSpec {
                    kind: "volume".into(),
                    target: "rel".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            "invalid mount config for type \"volume\": invalid mount path: 'rel' mount path must be absolute"
        );
    }

    #[test]
    fn copy_up_keeps_owners_modes_links_and_stays_in_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        let src = root.join("srv/data");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), b"hello").unwrap();
        fs::set_permissions(src.join("sub/f"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::lchown(src.join("sub/f"), Some(1000), Some(1001)).unwrap();
        fs::hard_link(src.join("sub/f"), src.join("link")).unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("sym")).unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o2750)).unwrap();
        std::os::unix::fs::lchown(&src, Some(7), Some(8)).unwrap();
        // An absolute symlink resolves inside the rootfs, never to the host's /srv.
        std::os::unix::fs::symlink("/srv/data", root.join("alias")).unwrap();

        let vol = t.path().join("vol");
        fs::create_dir(&vol).unwrap();
        assert!(copy_up(&root, "/alias", &vol).unwrap());
        assert_eq!(fs::read(vol.join("sub/f")).unwrap(), b"hello");
        let f = fs::metadata(vol.join("sub/f")).unwrap();
        assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1000, 1001, 0o640));
        assert_eq!(f.ino(), fs::metadata(vol.join("link")).unwrap().ino());
        assert_eq!(fs::read_link(vol.join("sym")).unwrap(), Path::new("sub/f"));
        let top = fs::metadata(&vol).unwrap();
        assert_eq!((top.uid(), top.gid(), top.mode() & 0o7777), (7, 8, 0o2750));
        // Not empty any more: a second copy-up leaves it alone.
        assert!(!copy_up(&root, "/alias", &vol).unwrap());
        // Nothing at the destination: nothing to copy.
        let empty = t.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert!(!copy_up(&root, "/nothing/here", &empty).unwrap());
        // `..` cannot climb out of the rootfs.
        fs::write(t.path().join("secret"), b"x").unwrap();
        assert!(copy_up(&root, "/../..", &empty).unwrap());
        assert!(!empty.join("secret").exists());
        assert!(empty.join("srv").is_dir());
    }
}
