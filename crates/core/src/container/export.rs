//! `docker diff` and `docker export`: a container's changes, read from its overlay upper dir
//! against the image's layers, and a tar of its merged file system (the running overlay, or a
//! read-only overlay mounted in a private mount namespace of a thread of its own).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_proto::FsChange;

use super::rootfs::{is_opaque, is_whiteout};

/// Docker's change kinds.
pub const MODIFIED: u8 = 0;
pub const ADDED: u8 = 1;
pub const DELETED: u8 = 2;

/// Where the image has `rel` (top layer first), `None` when absent or whited out.
fn in_image(lowers: &[PathBuf], rel: &Path) -> Option<fs::Metadata> {
    for l in lowers {
        if let Ok(m) = fs::symlink_metadata(l.join(rel)) {
            return (!is_whiteout(&m)).then_some(m);
        }
    }
    None
}

/// The container's changes against its image: the upper dir walked, whiteouts as deleted,
/// entries the image has as modified, others as added. Paths in `skip` (mount points the
/// runtime made, such as `etc/hosts`, relative, without '/') are not changes, and neither is a
/// directory that holds nothing but them. Sorted by path.
pub fn changes(upper: &Path, lowers: &[PathBuf], skip: &BTreeSet<String>) -> Vec<FsChange> {
    let mut out = Vec::new();
    walk_changes(upper, lowers, skip, Path::new(""), &mut out);
    out.sort();
    out
}

/// The bytes in a container's writable layer (`SizeRw`): the sizes of the regular files in the
/// upper dir, a hard-linked file once, symlinks not followed; whiteouts, directories and the
/// `skip` paths (mount points) left out.
pub fn upper_size(upper: &Path, skip: &BTreeSet<String>) -> u64 {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    size_walk(upper, Path::new(""), skip, &mut seen, &mut total);
    total
}

fn size_walk(
    upper: &Path,
    rel: &Path,
    skip: &BTreeSet<String>,
    seen: &mut BTreeSet<(u64, u64)>,
    total: &mut u64,
) {
    let Ok(entries) = fs::read_dir(upper.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let rel = rel.join(e.file_name());
        if skip.contains(rel.to_string_lossy().as_ref()) {
            continue;
        }
        // DirEntry::metadata does not follow symlinks.
        let Ok(meta) = e.metadata() else {
            continue;
        };
        if meta.is_dir() {
            size_walk(upper, &rel, skip, seen, total);
        } else if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino()))) {
            *total += meta.len();
        }
    }
}

/// Returns whether the directory had entries that are not skipped.
fn walk_changes(
    upper: &Path,
    lowers: &[PathBuf],
    skip: &BTreeSet<String>,
    rel: &Path,
    out: &mut Vec<FsChange>,
) -> bool {
    let Ok(entries) = fs::read_dir(upper.join(rel)) else {
        return false;
    };
    let mut any = false;
    for e in entries.flatten() {
        let rel = rel.join(e.file_name());
        let key = rel.to_string_lossy().into_owned();
        if skip.contains(&key) {
            continue;
        }
        any = true;
        let path = format!("/{key}");
        let Ok(meta) = fs::symlink_metadata(upper.join(&rel)) else {
            continue;
        };
        if is_whiteout(&meta) {
            out.push(FsChange {
                path,
                kind: DELETED,
            });
            continue;
        }
        let below = in_image(lowers, &rel);
        if meta.is_dir() {
            let before = out.len();
            let had = walk_changes(upper, lowers, skip, &rel, out);
            let children = out.len() > before;
            let kind = match &below {
                None => {
                    // A directory made only for skipped mount points is not a change.
                    let empty = fs::read_dir(upper.join(&rel))
                        .map(|mut d| d.next().is_none())
                        .unwrap_or(true);
                    (had || empty).then_some(ADDED)
                }
                Some(b) => {
                    let meta_changed = !b.is_dir()
                        || b.mode() != meta.mode()
                        || b.uid() != meta.uid()
                        || b.gid() != meta.gid();
                    (children || meta_changed || is_opaque(&upper.join(&rel))).then_some(MODIFIED)
                }
            };
            if let Some(kind) = kind {
                out.push(FsChange { path, kind });
            }
        } else {
            out.push(FsChange {
                path,
                kind: if below.is_some() { MODIFIED } else { ADDED },
            });
        }
    }
    any
}

/// Writes `root` as a tar to `out`: owners, modes, times, symlinks, hardlinks (a later name of
/// the same inode is a link to the first), devices and fifos; sockets are left out. Entry names
/// are relative ("etc/passwd", "bin/"). Streams: nothing but one file's buffer is held.
pub fn write_tar(root: &Path, out: &mut dyn Write) -> io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    tar_dir(&mut b, root, Path::new(""), &mut links)?;
    b.finish()
}

fn tar_dir(
    b: &mut tar::Builder<&mut dyn Write>,
    root: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let abs = root.join(&rel);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(m) => m,
            // Removed by a running container since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        if ft.is_socket() {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if ft.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, &rel, io::empty())?;
            tar_dir(b, root, &rel, links)?;
        } else {
            match append_entry(b, &abs, &rel, &meta, h, links) {
                Ok(()) => {}
                // Removed by a running container since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Appends one entry that is not a directory — a symlink, a regular file (a hard link to the
/// first path seen for the same inode in `links`), a device or a fifo — with `header` already
/// holding its metadata. A file that grows or shrinks meanwhile is cut or padded to the
/// header's size so the archive stays well formed. Shared by `docker export` and the layers
/// `docker commit` and builds make (`crate::layer`).
pub(crate) fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    abs: &Path,
    rel: &Path,
    meta: &fs::Metadata,
    mut h: tar::Header,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        h.set_size(0);
        return b.append_link(&mut h, rel, fs::read_link(abs)?);
    }
    if ft.is_file() {
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = links.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                return b.append_link(&mut h, rel, first);
            }
            links.insert(key, rel.to_path_buf());
        }
        use std::io::Read;
        let size = meta.len();
        let f = fs::File::open(abs)?;
        return b.append_data(&mut h, rel, f.take(size).chain(io::repeat(0)).take(size));
    }
    // Devices and fifos: no data.
    if ft.is_char_device() || ft.is_block_device() {
        h.set_device_major(libc::major(meta.rdev()))?;
        h.set_device_minor(libc::minor(meta.rdev()))?;
    }
    h.set_size(0);
    b.append_data(&mut h, rel, io::empty())
}

/// Mounts the read-only overlay of `upper` over `lowers` (top first) at `target` in a private
/// mount namespace of a new thread, writes its tar to `out` there, and unmounts. Nobody else
/// ever sees the mount; it goes with the thread's namespace whatever happens.
pub fn tar_stopped(
    upper: &Path,
    lowers: &[PathBuf],
    target: &Path,
    out: &mut (dyn Write + Send),
) -> io::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    fs::create_dir_all(target)?;
    let mut dirs = vec![upper.display().to_string()];
    dirs.extend(lowers.iter().map(|l| l.display().to_string()));
    let opts = format!("lowerdir={}", dirs.join(":"));
    if opts.len() > 4000 {
        return Err(io::Error::other(
            "the image has too many layers to export a stopped container",
        ));
    }
    let result = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // The thread's own file system context and mount namespace: mounts made here are
            // invisible to the rest of the process and the machine.
            unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(io::Error::from)?;
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some(opts.as_str()),
            )
            .map_err(|e| io::Error::other(format!("mounting the container's file system: {e}")))?;
            let written = write_tar(target, out);
            let _ = umount2(target, MntFlags::MNT_DETACH);
            written
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the export thread panicked")))
    });
    let _ = fs::remove_dir(target);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn whiteout(p: &Path) -> bool {
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .is_ok()
    }

    #[test]
    fn upper_size_counts_regular_files_once_and_skips_mount_points() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        fs::create_dir_all(upper.join("a/b")).unwrap();
        fs::create_dir_all(upper.join("vol")).unwrap();
        fs::write(upper.join("a/b/file"), vec![0u8; 1000]).unwrap();
        fs::write(upper.join("top"), vec![0u8; 24]).unwrap();
        fs::hard_link(upper.join("a/b/file"), upper.join("a/again")).unwrap();
        // A symlink to a big file outside is not followed.
        let big = t.path().join("big");
        fs::write(&big, vec![0u8; 50_000]).unwrap();
        symlink(&big, upper.join("link")).unwrap();
        fs::write(upper.join("vol/in-a-mount-point"), vec![0u8; 7]).unwrap();
        let skip: BTreeSet<String> = ["vol".to_string()].into();
        assert_eq!(upper_size(&upper, &skip), 1024);
        assert_eq!(upper_size(&upper, &BTreeSet::new()), 1031);
        assert_eq!(upper_size(&t.path().join("missing"), &skip), 0);
    }

    #[test]
    fn changes_are_read_from_the_upper_dir() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
        for d in ["etc", "bin", "usr/lib"] {
            fs::create_dir_all(lower.join(d)).unwrap();
        }
        fs::write(lower.join("etc/passwd"), "root").unwrap();
        fs::write(lower.join("etc/group"), "root").unwrap();
        fs::write(lower.join("bin/sh"), "sh").unwrap();
        for d in ["etc", "new/deep", "usr", "proc"] {
            fs::create_dir_all(upper.join(d)).unwrap();
        }
        fs::write(upper.join("etc/passwd"), "root\nme").unwrap();
        fs::write(upper.join("etc/hosts"), "").unwrap();
        fs::write(upper.join("new/deep/file"), "x").unwrap();
        fs::write(upper.join("added"), "x").unwrap();
        if !whiteout(&upper.join("etc/group")) {
            eprintln!("mknod needs root: skipping the whiteout part");
        }
        let skip: BTreeSet<String> = ["etc/hosts", "proc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = changes(&upper, std::slice::from_ref(&lower), &skip);
        let mut want = vec![
            FsChange {
                path: "/added".into(),
                kind: ADDED,
            },
            FsChange {
                path: "/etc".into(),
                kind: MODIFIED,
            },
            FsChange {
                path: "/etc/passwd".into(),
                kind: MODIFIED,
            },
            FsChange {
                path: "/new".into(),
                kind: ADDED,
            },
            FsChange {
                path: "/new/deep".into(),
                kind: ADDED,
            },
            FsChange {
                path: "/new/deep/file".into(),
                kind: ADDED,
            },
        ];
        if upper.join("etc/group").exists() {
            want.push(FsChange {
                path: "/etc/group".into(),
                kind: DELETED,
            });
            want.sort();
        }
        // /usr is in the upper dir (copied up) but nothing in it changed: not reported.
        assert_eq!(got, want);
    }

    #[test]
    fn tar_keeps_links_modes_and_hardlinks() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("bin/busybox"), "elf").unwrap();
        fs::set_permissions(root.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::hard_link(root.join("bin/busybox"), root.join("bin/sh")).unwrap();
        symlink("busybox", root.join("bin/ls")).unwrap();
        fs::write(root.join("secret"), "s").unwrap();
        fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        let mut buf = Vec::new();
        write_tar(&root, &mut buf).unwrap();
        let mut a = tar::Archive::new(&buf[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let name = e.path().unwrap().display().to_string();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((name, h.entry_type(), h.mode().unwrap() & 0o7777, link));
        }
        assert_eq!(
            seen,
            vec![
                ("bin".into(), tar::EntryType::Directory, 0o750, None),
                ("bin/busybox".into(), tar::EntryType::Regular, 0o755, None),
                (
                    "bin/ls".into(),
                    tar::EntryType::Symlink,
                    0o777,
                    Some("busybox".into())
                ),
                (
                    "bin/sh".into(),
                    tar::EntryType::Link,
                    0o755,
                    Some("bin/busybox".into())
                ),
                ("secret".into(), tar::EntryType::Regular, 0o600, None),
            ]
        );
    }
}
