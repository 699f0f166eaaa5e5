//! Layer extraction, as root: escapes refused, whiteouts converted for overlayfs, attributes
//! kept, every compression read to its end. Layers are built here with crafted headers where
//! the tar crate would refuse the names.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_core::digest::Digest;
use berth_core::unpack::{unpack_layer, Compression, LayerStats, Refusal, UnpackError};
use tar::{Builder, EntryType, Header};

const MTIME: u64 = 1_600_000_000;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root (it sets owners, creates devices and trusted.* xattrs); CI runs it as root"
    );
}

/// A layer under construction.
struct Layer(Builder<Vec<u8>>);

fn header(name: &[u8], kind: EntryType, size: u64, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    assert!(name.len() <= 100, "crafted names are short");
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_cksum();
    h
}

impl Layer {
    fn new() -> Layer {
        Layer(Builder::new(Vec::new()))
    }

    fn raw(mut self, mut h: Header, data: &[u8]) -> Layer {
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Layer {
        let h = header(
            name.as_bytes(),
            EntryType::Regular,
            data.len() as u64,
            0o644,
        );
        self.raw(h, data)
    }

    fn file_owned(self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Layer {
        let mut h = header(name.as_bytes(), EntryType::Regular, data.len() as u64, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(h, data)
    }

    fn dir(self, name: &str) -> Layer {
        self.dir_mode(name, 0o755)
    }

    fn dir_mode(self, name: &str, mode: u32) -> Layer {
        let h = header(name.as_bytes(), EntryType::Directory, 0, mode);
        self.raw(h, b"")
    }

    fn link(self, kind: EntryType, name: &str, target: &str) -> Layer {
        let mut h = header(name.as_bytes(), kind, 0, 0o777);
        let old = h.as_old_mut();
        old.linkname = [0; 100];
        old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.raw(h, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Layer {
        self.link(EntryType::Symlink, name, target)
    }

    fn hardlink(self, name: &str, target: &str) -> Layer {
        self.link(EntryType::Link, name, target)
    }

    /// PAX records for the next entry.
    fn pax(mut self, records: &[(&str, &[u8])]) -> Layer {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }

    /// Appends through the tar crate's own path handling (GNU long names).
    fn long(mut self, name: &str, data: &[u8]) -> Layer {
        let mut h = header(b"placeholder", EntryType::Regular, data.len() as u64, 0o644);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A scratch area: `dest` to unpack into and `canary`, a directory beside it that must stay
/// untouched.
struct Scratch {
    tmp: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("dest")).unwrap();
        fs::create_dir(tmp.path().join("canary")).unwrap();
        Scratch { tmp }
    }
    fn dest(&self) -> PathBuf {
        self.tmp.path().join("dest")
    }
    fn canary(&self) -> PathBuf {
        self.tmp.path().join("canary")
    }
    fn unpack(&self, bytes: &[u8]) -> Result<LayerStats, UnpackError> {
        unpack_layer(bytes, Compression::None, &self.dest())
    }
    /// Nothing but `dest` and an unchanged `canary` beside it.
    fn assert_contained(&self, canary_entries: usize) {
        let mut names: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["canary", "dest"]);
        assert_eq!(fs::read_dir(self.canary()).unwrap().count(), canary_entries);
    }
}

fn refusal(r: Result<LayerStats, UnpackError>) -> (String, Refusal) {
    match r {
        Err(UnpackError::Refused { entry, problem }) => (entry, problem),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is valid for `buf.len()` bytes.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Escapes

#[test]
fn dotdot_names_are_refused() {
    for name in [
        "../x",
        "a/../../x",
        "./../x",
        "a/b/../../../x",
        "/../x",
        "..",
        "a/..",
    ] {
        let s = Scratch::new();
        let layer = Layer::new()
            .dir("a")
            .raw(
                header(name.as_bytes(), EntryType::Regular, 3, 0o644),
                b"bad",
            )
            .finish();
        let (entry, problem) = refusal(s.unpack(&layer));
        assert_eq!(entry, name);
        assert_eq!(problem, Refusal::DotDot, "{name}");
        let msg = s.unpack(&layer).unwrap_err().to_string();
        assert!(msg.contains(name) && msg.contains(".."), "{msg}");
        s.assert_contained(0);
        assert!(!s.tmp.path().join("x").exists());
    }
}

#[test]
fn absolute_names_land_inside() {
    let s = Scratch::new();
    let probe = format!("/etc/berth-unpack-probe-{}", std::process::id());
    let layer = Layer::new()
        .file(&probe, b"inside")
        .file("/top", b"t")
        .finish();
    s.unpack(&layer).unwrap();
    assert_eq!(fs::read(s.dest().join(&probe[1..])).unwrap(), b"inside");
    assert_eq!(fs::read(s.dest().join("top")).unwrap(), b"t");
    assert!(!Path::new(&probe).exists());
    assert!(!Path::new("/top").exists());
    s.assert_contained(0);
}

#[test]
fn writing_through_a_symlinked_parent_is_refused() {
    for target in ["/", "..", "../..", "../canary", "CANARY"] {
        let s = Scratch::new();
        let target = target.replace("CANARY", s.canary().to_str().unwrap());
        // Unique, so that a regression is seen (and cleaned up) rather than clobbering a file.
        let pwned = format!("berth-unpack-pwned-{}", std::process::id());
        let name = format!("evil/{pwned}");
        let layer = Layer::new()
            .symlink("evil", &target)
            .file(&name, b"x")
            .finish();
        let result = s.unpack(&layer);
        let escaped = Path::new("/").join(&pwned);
        if escaped.exists() {
            fs::remove_file(&escaped).unwrap();
            panic!(
                "{name} was written through the symlink to {}",
                escaped.display()
            );
        }
        let (entry, problem) = refusal(result);
        assert_eq!(entry, name);
        assert_eq!(problem, Refusal::ParentSymlink("evil".into()), "{target}");
        let msg = s.unpack(&layer).unwrap_err().to_string();
        assert!(msg.contains(&name) && msg.contains("symlink"), "{msg}");
        s.assert_contained(0);

        // Deeper, and for every kind of entry.
        for layer in [
            Layer::new()
                .dir("d")
                .symlink("d/l", &target)
                .dir("d/l/sub")
                .finish(),
            Layer::new()
                .symlink("l", &target)
                .symlink("l/s", "x")
                .finish(),
            Layer::new()
                .symlink("l", &target)
                .raw(header(b"l/fifo", EntryType::Fifo, 0, 0o644), b"")
                .finish(),
            Layer::new()
                .symlink("l", &target)
                .file("f", b"x")
                .hardlink("l/h", "f")
                .finish(),
            Layer::new()
                .symlink("l", &target)
                .file("l/.wh.canary", b"")
                .finish(),
            Layer::new()
                .symlink("l", &target)
                .file("l/.wh..wh..opq", b"")
                .finish(),
        ] {
            let s2 = Scratch::new();
            let (_, problem) = refusal(s2.unpack(&layer));
            assert!(matches!(problem, Refusal::ParentSymlink(_)), "{problem}");
            s2.assert_contained(0);
        }
    }
}

#[test]
fn whiteouts_and_opaque_markers_never_reach_through_symlinks() {
    let s = Scratch::new();
    fs::write(s.canary().join("secret"), b"s").unwrap();
    let c = s.canary();
    let layer = Layer::new()
        .symlink("l", c.to_str().unwrap())
        .file("l/.wh.secret", b"")
        .finish();
    refusal(s.unpack(&layer));
    let layer = Layer::new()
        .symlink("m", c.to_str().unwrap())
        .file("m/.wh..wh..opq", b"")
        .finish();
    refusal(s.unpack(&layer));
    assert_eq!(fs::read(c.join("secret")).unwrap(), b"s");
    assert_eq!(getxattr(&c, "trusted.overlay.opaque"), None);
    s.assert_contained(1);
}

#[test]
fn a_directory_entry_replaces_a_symlink_instead_of_following_it() {
    let s = Scratch::new();
    let layer = Layer::new()
        .symlink("d", s.canary().to_str().unwrap())
        .dir("d")
        .file("d/f", b"in")
        .finish();
    s.unpack(&layer).unwrap();
    assert!(fs::symlink_metadata(s.dest().join("d")).unwrap().is_dir());
    assert_eq!(fs::read(s.dest().join("d/f")).unwrap(), b"in");
    s.assert_contained(0);
}

#[test]
fn hardlinks_outside_the_layer_are_refused() {
    let s = Scratch::new();
    let outside = s.tmp.path().join("outside");
    fs::write(&outside, b"o").unwrap();
    let layer = Layer::new().hardlink("h", "../outside").finish();
    let (entry, problem) = refusal(s.unpack(&layer));
    assert_eq!(entry, "h");
    assert!(
        matches!(&problem, Refusal::HardlinkTarget { target, .. } if target == "../outside"),
        "{problem}"
    );
    let msg = s.unpack(&layer).unwrap_err().to_string();
    assert!(msg.contains("\"h\"") && msg.contains("../outside"), "{msg}");
    assert_eq!(fs::metadata(&outside).unwrap().nlink(), 1);
    fs::remove_file(&outside).unwrap();

    let passwd_links = fs::metadata("/etc/passwd").unwrap().nlink();
    let layer = Layer::new().hardlink("p", "/etc/passwd").finish();
    let (_, problem) = refusal(s.unpack(&layer));
    assert!(
        matches!(&problem, Refusal::HardlinkTarget { reason, .. } if reason.contains("not in this layer")),
        "{problem}"
    );
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links);
    assert!(!s.dest().join("p").exists());
    s.assert_contained(0);
}

#[test]
fn hardlinks_through_a_symlinked_parent_are_refused() {
    let s = Scratch::new();
    fs::write(s.canary().join("secret"), b"s").unwrap();
    let layer = Layer::new()
        .symlink("l", s.canary().to_str().unwrap())
        .hardlink("h", "l/secret")
        .finish();
    let (entry, problem) = refusal(s.unpack(&layer));
    assert_eq!(entry, "h");
    let Refusal::HardlinkTarget { target, reason } = problem else {
        panic!("{problem}")
    };
    assert_eq!(target, "l/secret");
    assert!(reason.contains("symlink"), "{reason}");
    assert_eq!(fs::metadata(s.canary().join("secret")).unwrap().nlink(), 1);
    assert!(!s.dest().join("h").exists());

    // A hard link to a symlink of the layer is refused too: only regular files.
    let s = Scratch::new();
    let layer = Layer::new()
        .symlink("l", "/etc/passwd")
        .hardlink("h", "l")
        .finish();
    let (_, problem) = refusal(s.unpack(&layer));
    assert!(
        matches!(&problem, Refusal::HardlinkTarget { reason, .. } if reason.contains("regular file")),
        "{problem}"
    );
}

#[test]
fn bad_names_are_refused() {
    let s = Scratch::new();
    let (_, p) = refusal(
        s.unpack(
            &Layer::new()
                .raw(header(b"", EntryType::Regular, 0, 0o644), b"")
                .finish(),
        ),
    );
    assert_eq!(p, Refusal::EmptyName);
    let (_, p) = refusal(
        s.unpack(
            &Layer::new()
                .pax(&[("path", b"a\0b")])
                .file("x", b"")
                .finish(),
        ),
    );
    assert_eq!(p, Refusal::NulInName);
    let (_, p) = refusal(s.unpack(&Layer::new().file("./", b"").finish()));
    assert_eq!(p, Refusal::RootNotDir);
    let (_, p) = refusal(s.unpack(&Layer::new().file("f", b"").file("f/x", b"").finish()));
    assert_eq!(p, Refusal::ParentNotDir("f".into()));
    let (_, p) = refusal(s.unpack(&Layer::new().symlink("s", "").finish()));
    assert_eq!(p, Refusal::EmptySymlink);
    let (_, p) = refusal(
        s.unpack(
            &Layer::new()
                .raw(header(b"v", EntryType::new(b'V'), 0, 0o644), b"")
                .finish(),
        ),
    );
    assert!(matches!(p, Refusal::UnsupportedType(_)), "{p}");
    let sparse = Layer::new()
        .pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
        .file("sparse", b"")
        .finish();
    let (_, p) = refusal(s.unpack(&sparse));
    assert!(matches!(p, Refusal::UnsupportedType(_)), "{p}");
}

// ---------------------------------------------------------------------------------------------
// Whiteouts

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let s = Scratch::new();
    let layer = Layer::new()
        .dir("etc")
        .file("etc/.wh.gone", b"")
        .file(".wh.top", b"")
        .file("deep/er/.wh.x", b"")
        .finish();
    let stats = s.unpack(&layer).unwrap();
    assert_eq!(stats.entries, 4);
    for p in ["etc/gone", "top", "deep/er/x"] {
        let m = fs::symlink_metadata(s.dest().join(p)).unwrap();
        assert!(m.file_type().is_char_device(), "{p}");
        assert_eq!(m.rdev(), 0, "{p}");
    }
    assert!(!s.dest().join("etc/.wh.gone").exists());
    assert!(!s.dest().join(".wh.top").exists());
}

#[test]
fn opaque_markers_apply_wherever_they_come() {
    let s = Scratch::new();
    let layer = Layer::new()
        .dir("a")
        .file("a/before", b"1")
        .file("a/.wh..wh..opq", b"")
        .file("a/after", b"2")
        .file("b/.wh..wh..opq", b"") // before its directory's own entry
        .dir("b")
        .file("b/x", b"3")
        .dir("c")
        .file("c/.wh..wh..opq", b"")
        .finish();
    s.unpack(&layer).unwrap();
    for d in ["a", "b", "c"] {
        assert_eq!(
            getxattr(&s.dest().join(d), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "{d}"
        );
    }
    assert_eq!(fs::read(s.dest().join("a/before")).unwrap(), b"1");
    assert_eq!(fs::read(s.dest().join("a/after")).unwrap(), b"2");
    assert_eq!(fs::read(s.dest().join("b/x")).unwrap(), b"3");
    assert!(!s.dest().join("a/.wh..wh..opq").exists());
    assert_eq!(getxattr(&s.dest(), "trusted.overlay.opaque"), None);
}

#[test]
fn whiteouts_hide_lower_layers_only() {
    let s = Scratch::new();
    let layer = Layer::new()
        .file(".wh.f", b"") // whiteout, then this layer's own file
        .file("f", b"new")
        .file("g", b"kept") // this layer's file, then a whiteout for the lower one
        .file(".wh.g", b"")
        .file(".wh.d", b"") // whiteout, then this layer's directory: opaque
        .dir("d")
        .file("d/x", b"x")
        .dir("e")
        .file(".wh.e", b"") // directory of this layer, then whiteout: opaque
        .file(".wh.p", b"") // whiteout, then a child: opaque parent
        .file("p/c", b"c")
        .finish();
    s.unpack(&layer).unwrap();
    assert_eq!(fs::read(s.dest().join("f")).unwrap(), b"new");
    assert_eq!(fs::read(s.dest().join("g")).unwrap(), b"kept");
    for d in ["d", "e", "p"] {
        assert!(
            fs::symlink_metadata(s.dest().join(d)).unwrap().is_dir(),
            "{d}"
        );
        assert_eq!(
            getxattr(&s.dest().join(d), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..]),
            "{d}"
        );
    }
    assert_eq!(fs::read(s.dest().join("d/x")).unwrap(), b"x");
    assert_eq!(fs::read(s.dest().join("p/c")).unwrap(), b"c");
}

#[test]
fn invalid_whiteouts_are_refused_and_aufs_metadata_skipped() {
    for (name, want) in [
        (".wh.", Refusal::BadWhiteout),
        ("d/.wh..", Refusal::BadWhiteout),
        (".wh...", Refusal::BadWhiteout),
        (".wh..wh.foo", Refusal::BadWhiteout),
        (".wh.x/y", Refusal::WhiteoutAsDir(".wh.x".into())),
    ] {
        let s = Scratch::new();
        let (entry, problem) = refusal(s.unpack(&Layer::new().file(name, b"").finish()));
        assert_eq!((entry.as_str(), problem), (name, want));
    }
    let s = Scratch::new();
    let layer = Layer::new()
        .dir(".wh..wh.plnk")
        .file(".wh..wh.plnk/1234.5678", b"x")
        .file(".wh..wh.aufs", b"")
        .file("ok", b"")
        .finish();
    s.unpack(&layer).unwrap();
    let names: Vec<_> = fs::read_dir(s.dest())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ok"]);
}

// ---------------------------------------------------------------------------------------------
// Replacement within a layer

#[test]
fn later_entries_replace_earlier_ones() {
    let s = Scratch::new();
    let layer = Layer::new()
        .file("a", b"file")
        .dir("a")
        .file("a/b", b"child")
        .dir("d")
        .dir("d/sub")
        .file("d/sub/x", b"x")
        .symlink("d/l", "/")
        .file("d", b"now a file")
        .file("same", b"one")
        .file("same", b"two")
        .file("s", b"file")
        .symlink("s", "target")
        .symlink("t", "target")
        .file("t", b"file again")
        .finish();
    s.unpack(&layer).unwrap();
    assert_eq!(fs::read(s.dest().join("a/b")).unwrap(), b"child");
    assert_eq!(fs::read(s.dest().join("d")).unwrap(), b"now a file");
    assert_eq!(fs::read(s.dest().join("same")).unwrap(), b"two");
    assert_eq!(
        fs::read_link(s.dest().join("s")).unwrap(),
        Path::new("target")
    );
    assert_eq!(fs::read(s.dest().join("t")).unwrap(), b"file again");
}

// ---------------------------------------------------------------------------------------------
// Attributes and kinds

#[test]
fn modes_owners_and_times_are_kept() {
    let s = Scratch::new();
    let mut fifo = header(b"run/fifo", EntryType::Fifo, 0, 0o620);
    fifo.set_uid(1000);
    fifo.set_gid(1000);
    let mut dev = header(b"dev/null", EntryType::Char, 0, 0o666);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    let mut sym = header(b"sym", EntryType::Symlink, 0, 0o777);
    sym.set_link_name("suid").unwrap();
    sym.set_uid(1000);
    sym.set_gid(65534);
    sym.set_mtime(1_500_000_000);
    let mut root = header(b"./", EntryType::Directory, 0, 0o751);
    root.set_mtime(1_400_000_000);
    let layer = Layer::new()
        .raw(root, b"")
        .file_owned("suid", b"#!/bin/true\n", 0o4755, 1000, 1000)
        .file_owned("sgid", b"g", 0o2711, 65534, 65534)
        .dir_mode("tmp", 0o1777)
        .file("tmp/child", b"written after the directory")
        .raw(fifo, b"")
        .raw(dev, b"")
        .raw(sym, b"")
        .finish();
    let stats = s.unpack(&layer).unwrap();
    // Files, plus the symlink's target ("suid"), as Docker counts a layer's size.
    assert_eq!(stats.size, 12 + 1 + 27 + 4);
    let meta = |p: &str| fs::symlink_metadata(s.dest().join(p)).unwrap();

    let m = meta("suid");
    assert_eq!(m.mode() & 0o7777, 0o4755);
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    assert_eq!(m.mtime(), MTIME as i64);
    let m = meta("sgid");
    assert_eq!(m.mode() & 0o7777, 0o2711);
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    let m = meta("tmp");
    assert_eq!(m.mode() & 0o7777, 0o1777);
    assert_eq!(
        m.mtime(),
        MTIME as i64,
        "directory times are set after their children"
    );
    let m = meta("run/fifo");
    assert!(m.file_type().is_fifo());
    assert_eq!(m.mode() & 0o7777, 0o620);
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    let m = meta("run");
    assert_eq!(m.mode() & 0o7777, 0o755, "missing parents are made 0755");
    assert_eq!((m.uid(), m.gid()), (0, 0));
    let m = meta("dev/null");
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), nix::sys::stat::makedev(1, 3));
    let m = meta("sym");
    assert!(m.file_type().is_symlink());
    assert_eq!((m.uid(), m.gid()), (1000, 65534));
    assert_eq!(m.mtime(), 1_500_000_000);
    let m = fs::metadata(s.dest()).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o751);
    assert_eq!(m.mtime(), 1_400_000_000);
}

#[test]
fn hardlinks_inside_the_layer_work() {
    let s = Scratch::new();
    let layer = Layer::new()
        .file("bin/busybox", b"bb")
        .hardlink("bin/sh", "bin/busybox")
        .hardlink("./usr/bin/env", "/bin/busybox")
        .hardlink("bin/busybox", "bin/busybox")
        .finish();
    s.unpack(&layer).unwrap();
    let ino = fs::metadata(s.dest().join("bin/busybox")).unwrap().ino();
    for p in ["bin/sh", "usr/bin/env"] {
        assert_eq!(fs::metadata(s.dest().join(p)).unwrap().ino(), ino, "{p}");
    }
    assert_eq!(
        fs::metadata(s.dest().join("bin/busybox")).unwrap().nlink(),
        3
    );
}

#[test]
fn long_and_unicode_names() {
    let s = Scratch::new();
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(200));
    let pax_name = format!("pax/{}", "p".repeat(150));
    let layer = Layer::new()
        .long(&long_file, b"long")
        .pax(&[("path", pax_name.as_bytes())])
        .file("ignored-name", b"pax")
        .file("héllo/日本語.txt", "ünïcödé".as_bytes())
        .finish();
    s.unpack(&layer).unwrap();
    assert_eq!(fs::read(s.dest().join(&long_file)).unwrap(), b"long");
    assert_eq!(fs::read(s.dest().join(&pax_name)).unwrap(), b"pax");
    assert!(!s.dest().join("ignored-name").exists());
    assert_eq!(
        fs::read_to_string(s.dest().join("héllo/日本語.txt")).unwrap(),
        "ünïcödé"
    );
}

#[test]
fn pax_attributes_and_xattrs() {
    let s = Scratch::new();
    // vfs_cap_data revision 2: cap_net_bind_service permitted and effective.
    let mut cap = Vec::new();
    cap.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    cap.extend_from_slice(&(1u32 << 10).to_le_bytes());
    cap.extend_from_slice(&[0; 12]);
    let layer = Layer::new()
        .pax(&[
            ("SCHILY.xattr.user.note", b"hello"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            (
                "SCHILY.xattr.security.selinux",
                b"system_u:object_r:etc_t:s0",
            ),
            ("mtime", b"1600000000.25"),
            ("uid", b"100000"),
            ("gid", b"100001"),
        ])
        .file("f", b"data")
        .pax(&[("SCHILY.xattr.security.capability", &cap)])
        .file_owned("ping", b"elf", 0o4755, 1000, 0)
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.d", b"dir"),
        ])
        .dir("d")
        .finish();
    s.unpack(&layer).unwrap();
    let f = s.dest().join("f");
    assert_eq!(getxattr(&f, "user.note").as_deref(), Some(&b"hello"[..]));
    assert_eq!(getxattr(&f, "trusted.overlay.opaque"), None);
    let m = fs::metadata(&f).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 250_000_000));
    assert_eq!((m.uid(), m.gid()), (100_000, 100_001));
    let ping = s.dest().join("ping");
    assert_eq!(
        getxattr(&ping, "security.capability").as_deref(),
        Some(&cap[..])
    );
    let m = fs::metadata(&ping).unwrap();
    assert_eq!(
        m.mode() & 0o7777,
        0o4755,
        "setuid survives the chown and the xattr"
    );
    let d = s.dest().join("d");
    assert_eq!(
        getxattr(&d, "trusted.overlay.opaque"),
        None,
        "a layer cannot set overlay xattrs"
    );
    assert_eq!(getxattr(&d, "user.d").as_deref(), Some(&b"dir"[..]));
}

// ---------------------------------------------------------------------------------------------
// Streams

/// Records every byte read through it.
struct Recorder<R> {
    inner: R,
    seen: Vec<u8>,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn sample() -> Vec<u8> {
    Layer::new()
        .dir("etc")
        .file("etc/hostname", b"berth\n")
        .file("big", &vec![7u8; 300_000])
        .symlink("link", "etc/hostname")
        .finish()
}

fn check_sample(dest: &Path) {
    assert_eq!(fs::read(dest.join("etc/hostname")).unwrap(), b"berth\n");
    assert_eq!(fs::read(dest.join("big")).unwrap().len(), 300_000);
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("etc/hostname")
    );
}

fn unpack_all(compressed: &[u8], c: Compression) -> (Result<LayerStats, UnpackError>, Vec<u8>) {
    let s = Scratch::new();
    let mut rec = Recorder {
        inner: compressed,
        seen: Vec::new(),
    };
    let r = unpack_layer(&mut rec, c, &s.dest());
    if r.is_ok() {
        check_sample(&s.dest());
    }
    (r, rec.seen)
}

#[test]
fn every_compression_gives_the_diff_id_of_the_tar() {
    let tar = sample();
    let zstd = zstd::encode_all(&tar[..], 3).unwrap();
    for (bytes, c) in [
        (tar.clone(), Compression::None),
        (gzip(&tar), Compression::Gzip),
        (zstd, Compression::Zstd),
    ] {
        let (r, seen) = unpack_all(&bytes, c);
        let stats = r.unwrap();
        assert_eq!(stats.diff_id, sha256(&tar), "{c:?}");
        assert_eq!(stats.size, 6 + 300_000 + "etc/hostname".len() as u64);
        assert_eq!(stats.entries, 4);
        assert_eq!(seen, bytes, "{c:?}: the reader is read to its end");
    }
}

#[test]
fn concatenated_members_and_frames_are_one_stream() {
    let tar = sample();
    let cut = 1000; // inside the data of etc/hostname's block run
    let mut gz = gzip(&tar[..cut]);
    gz.extend(gzip(&tar[cut..]));
    let (r, seen) = unpack_all(&gz, Compression::Gzip);
    assert_eq!(r.unwrap().diff_id, sha256(&tar));
    assert_eq!(seen, gz);

    let mut zs = zstd::encode_all(&tar[..cut], 1).unwrap();
    zs.extend(zstd::encode_all(&tar[cut..], 1).unwrap());
    let (r, seen) = unpack_all(&zs, Compression::Zstd);
    assert_eq!(r.unwrap().diff_id, sha256(&tar));
    assert_eq!(seen, zs);
}

#[test]
fn bytes_after_the_tar_are_read_and_hashed() {
    let tar = sample();
    let mut padded = tar.clone();
    padded.extend(vec![0u8; 10 * 512]);
    padded.extend(b"trailing bytes that are not tar at all");
    for (bytes, c) in [
        (padded.clone(), Compression::None),
        (gzip(&padded), Compression::Gzip),
    ] {
        let (r, seen) = unpack_all(&bytes, c);
        assert_eq!(
            r.unwrap().diff_id,
            sha256(&padded),
            "{c:?}: the diff id covers the whole stream"
        );
        assert_eq!(seen, bytes);
    }
    // Bytes after the compressed stream that are not a further member are an error.
    let mut gz = gzip(&tar);
    gz.extend(b"junk after the gzip stream");
    assert!(matches!(
        unpack_all(&gz, Compression::Gzip).0,
        Err(UnpackError::Stream(_))
    ));
    let mut zs = zstd::encode_all(&tar[..], 3).unwrap();
    zs.extend(b"junk after the zstd stream");
    assert!(matches!(
        unpack_all(&zs, Compression::Zstd).0,
        Err(UnpackError::Stream(_))
    ));
}

#[test]
fn broken_streams_are_errors() {
    let tar = sample();
    let gz = gzip(&tar);
    let zs = zstd::encode_all(&tar[..], 3).unwrap();
    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>, Compression)> = vec![
        (
            "gzip without its trailer",
            gz[..gz.len() - 4].to_vec(),
            Compression::Gzip,
        ),
        (
            "gzip cut in half",
            gz[..gz.len() / 2].to_vec(),
            Compression::Gzip,
        ),
        (
            "zstd cut in half",
            zs[..zs.len() / 2].to_vec(),
            Compression::Zstd,
        ),
        (
            "tar cut inside a file",
            tar[..3000].to_vec(),
            Compression::None,
        ),
        ("garbage as tar", garbage.clone(), Compression::None),
        ("garbage as gzip", garbage.clone(), Compression::Gzip),
        ("garbage as zstd", garbage, Compression::Zstd),
        ("tar declared as gzip", tar.clone(), Compression::Gzip),
    ];
    for (what, bytes, c) in cases {
        let (r, _) = unpack_all(&bytes, c);
        let e = r.expect_err(what);
        assert!(
            matches!(e, UnpackError::Stream(_) | UnpackError::EntryData { .. }),
            "{what}: {e}"
        );
    }
}

#[test]
fn an_empty_layer_is_fine() {
    let s = Scratch::new();
    let tar = Layer::new().finish();
    let stats = s.unpack(&tar).unwrap();
    assert_eq!(stats.entries, 0);
    assert_eq!(stats.diff_id, sha256(&tar));
    assert_eq!(fs::read_dir(s.dest()).unwrap().count(), 0);
}

#[test]
fn the_destination_must_exist() {
    let s = Scratch::new();
    let r = unpack_layer(&sample()[..], Compression::None, &s.dest().join("missing"));
    assert!(matches!(r, Err(UnpackError::Dest { .. })), "{r:?}");
}
