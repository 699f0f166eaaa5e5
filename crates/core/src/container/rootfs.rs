//! A container's root file system: an overlay of the image's layer snapshots (read-only, top
//! first) under the container's own `upper/` (its writes) and `work/` (overlayfs scratch),
//! mounted at `rootfs/` in the bundle for the time the container runs. Also reads single files
//! (passwd, group) out of the layer stack without mounting it.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

/// The mount page is 4096 bytes; the overlay options must fit in it.
const MAX_OPTIONS: usize = 4000;

/// What to mount, written beside `config.json` as `rootfs.json` so the supervisor can mount it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RootfsMount {
    /// Layer diff directories, top layer first (absolute).
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
}

impl RootfsMount {
    /// The overlay options. When the absolute lower paths would not fit in a mount page, the
    /// lowers are named relative to their common parent, which the caller must make the current
    /// directory (see [`RootfsMount::mount`]).
    fn options(&self, relative_to: Option<&Path>) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(
                |l| match relative_to.and_then(|base| l.strip_prefix(base).ok()) {
                    Some(rel) => rel.display().to_string(),
                    None => l.display().to_string(),
                },
            )
            .collect();
        let mut o = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            self.upper.display(),
            self.work.display()
        );
        // As dockerd does: without the index, a container's upper dir stays usable whatever
        // happens to the inode numbers of the lowers.
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            o.push_str(",index=off");
        }
        o
    }

    /// Mounts the overlay at `target` (unmounting whatever a crashed run left there first).
    /// Changes the process's current directory when the layer list is long: call it only from
    /// the single-threaded supervisor.
    pub fn mount(&self) -> io::Result<()> {
        if self.lowers.is_empty() {
            return Err(io::Error::other("the image has no layers"));
        }
        for d in [&self.upper, &self.work, &self.target] {
            fs::create_dir_all(d)?;
        }
        if is_mounted(&self.target) {
            self.unmount()?;
        }
        let mut opts = self.options(None);
        if opts.len() > MAX_OPTIONS {
            let parent = common_parent(&self.lowers)
                .ok_or_else(|| io::Error::other("the layers have no common parent"))?;
            std::env::set_current_dir(&parent)?;
            opts = self.options(Some(&parent));
            if opts.len() > MAX_OPTIONS {
                return Err(io::Error::other(format!(
                    "the image has too many layers ({}) for one overlay mount",
                    self.lowers.len()
                )));
            }
        }
        mount(
            Some("overlay"),
            &self.target,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(io::Error::from)
    }

    /// Unmounts the rootfs (lazily, so a process still holding it cannot keep the container's
    /// directory from being removed); not mounted is not an error.
    pub fn unmount(&self) -> io::Result<()> {
        unmount(&self.target)
    }
}

pub fn unmount(target: &Path) -> io::Result<()> {
    while is_mounted(target) {
        umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    Ok(())
}

fn common_parent(paths: &[PathBuf]) -> Option<PathBuf> {
    let first = paths.first()?.parent()?.parent()?.to_path_buf();
    paths.iter().all(|p| p.starts_with(&first)).then_some(first)
}

/// Whether something is mounted at `target` in this mount namespace.
pub fn is_mounted(target: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|mp| Path::new(&unescape_mountinfo(mp)) == target)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

pub(crate) fn is_opaque(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut v = [0u8; 1];
    // SAFETY: `path` and the attribute name are NUL-terminated C strings that outlive the call,
    // and the buffer pointer/length pair describes `v` exactly.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

/// Reads `rel` (e.g. "etc/passwd") as the overlay of `lowers` (top first) would show it,
/// honouring whiteouts and opaque directories; symlinks are not followed (their target is
/// taken as absent). Files larger than `max` bytes are refused.
pub fn read_from_layers(lowers: &[PathBuf], rel: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let Some((leaf, dirs)) = parts.split_last() else {
        return Ok(None);
    };
    'layers: for layer in lowers {
        let mut dir = layer.clone();
        let mut opaque = false;
        for d in dirs {
            dir.push(d);
            match fs::symlink_metadata(&dir) {
                Ok(m) if is_whiteout(&m) => return Ok(None),
                Ok(m) if m.is_dir() => opaque |= is_opaque(&dir),
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if opaque {
                        return Ok(None);
                    }
                    continue 'layers;
                }
                Err(e) => return Err(e),
            }
        }
        let path = dir.join(leaf);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {
                if m.len() > max {
                    return Err(io::Error::other(format!(
                        "{} is larger than {max} bytes",
                        path.display()
                    )));
                }
                let mut buf = Vec::new();
                fs::File::open(&path)?.take(max).read_to_end(&mut buf)?;
                return Ok(Some(buf));
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if opaque {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_through_the_layers() {
        let t = tempfile::tempdir().unwrap();
        let (top, mid, bottom) = (t.path().join("3"), t.path().join("2"), t.path().join("1"));
        for l in [&top, &mid, &bottom] {
            fs::create_dir_all(l.join("etc")).unwrap();
        }
        fs::write(bottom.join("etc/passwd"), "old").unwrap();
        fs::write(bottom.join("etc/group"), "g").unwrap();
        fs::write(mid.join("etc/passwd"), "new").unwrap();
        let layers = vec![top.clone(), mid.clone(), bottom.clone()];
        let read = |p| read_from_layers(&layers, p, 100).unwrap();
        assert_eq!(read("etc/passwd").as_deref(), Some(&b"new"[..]));
        assert_eq!(read("/etc/group").as_deref(), Some(&b"g"[..]));
        assert_eq!(read("etc/none"), None);
        assert_eq!(read("x/y"), None);
        nix::sys::stat::mknod(
            &top.join("etc/group"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .ok();
        if fs::symlink_metadata(top.join("etc/group")).is_ok() {
            assert_eq!(read("etc/group"), None, "a whiteout hides the lower file");
        }
        assert!(read_from_layers(&layers, "etc/passwd", 2).is_err());
    }

    #[test]
    fn long_layer_lists_use_relative_names() {
        let lowers: Vec<PathBuf> = (0..50)
            .map(|i| PathBuf::from(format!("/var/lib/berth/snapshots/{:064x}/diff", i)))
            .collect();
        let m = RootfsMount {
            lowers,
            upper: "/u".into(),
            work: "/w".into(),
            target: "/t".into(),
        };
        assert!(m.options(None).len() > MAX_OPTIONS);
        let base = common_parent(&m.lowers).unwrap();
        assert_eq!(base, Path::new("/var/lib/berth/snapshots"));
        let rel = m.options(Some(&base));
        assert!(
            rel.starts_with(&format!("lowerdir={:064x}/diff:", 0)),
            "{rel}"
        );
        assert!(rel.len() < MAX_OPTIONS);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }
}
