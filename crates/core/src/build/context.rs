//! COPY and ADD sources: paths and wildcards matched in a source root (the context, or a
//! mounted image) without following symlinks, `.dockerignore` applied to the context, and the
//! content hash of what they name (part of the step's cache key).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use berth_dockerfile::ignore::glob;
use berth_dockerfile::IgnoreRules;
use sha2::{Digest as _, Sha256};

/// A source path made relative to its root: leading `/`, `.` and `..` above the root dropped.
pub fn clean(p: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn has_wildcard(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// Whether `rel` exists under `root`, reached without going through a symlink.
fn lookup(root: &Path, rel: &Path) -> Option<fs::Metadata> {
    let mut cur = root.to_path_buf();
    let mut meta = fs::symlink_metadata(root).ok()?;
    for c in rel.components() {
        if !meta.is_dir() {
            return None;
        }
        cur.push(c);
        meta = fs::symlink_metadata(&cur).ok()?;
    }
    Some(meta)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(root.join(rel)) else {
        return;
    };
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let is_dir = fs::symlink_metadata(root.join(&r)).is_ok_and(|m| m.is_dir());
        out.push(r.clone());
        if is_dir {
            walk(root, &r, out);
        }
    }
}

/// The sources `patterns` name under `root`, in order, each relative ("" = the root itself).
/// Errors are dockerd's.
pub fn resolve(
    root: &Path,
    patterns: &[String],
    ignore: Option<&IgnoreRules>,
) -> Result<Vec<PathBuf>, String> {
    let excluded = |p: &Path| {
        ignore.is_some_and(|r| !p.as_os_str().is_empty() && r.excluded(&p.to_string_lossy()))
    };
    let mut out = Vec::new();
    for pat in patterns {
        let rel = clean(pat);
        if !has_wildcard(pat) {
            if lookup(root, &rel).is_none() || excluded(&rel) {
                return Err(format!(
                    "file not found in build context or excluded by .dockerignore: stat {}: file does not exist",
                    pat.trim_start_matches('/')
                ));
            }
            out.push(rel);
            continue;
        }
        let mut all = Vec::new();
        walk(root, Path::new(""), &mut all);
        let p: Vec<char> = rel.to_string_lossy().chars().collect();
        let before = out.len();
        for r in all {
            let s: Vec<char> = r.to_string_lossy().chars().collect();
            if glob(&p, &s) && !excluded(&r) {
                out.push(r);
            }
        }
        if out.len() == before {
            return Err("no source files were specified".into());
        }
    }
    Ok(out)
}

/// The content hash of the sources: every file's path, type, mode, owner, size and bytes (link
/// targets for symlinks), excluded paths left out.
pub fn content_hash(
    root: &Path,
    sources: &[PathBuf],
    ignore: Option<&IgnoreRules>,
) -> io::Result<String> {
    let mut h = Sha256::new();
    for s in sources {
        h.update(b"\0source\0");
        h.update(s.as_os_str().as_bytes());
        let mut files = vec![s.clone()];
        let top = fs::symlink_metadata(root.join(s))?;
        if top.is_dir() {
            walk(root, s, &mut files);
        }
        for f in files {
            if f != *s && ignore.is_some_and(|r| r.excluded(&f.to_string_lossy())) {
                continue;
            }
            let m = fs::symlink_metadata(root.join(&f))?;
            h.update(b"\0");
            h.update(f.as_os_str().as_bytes());
            h.update(
                format!("\0{:o}\0{}\0{}\0{}\0", m.mode(), m.uid(), m.gid(), m.len()).as_bytes(),
            );
            if m.file_type().is_symlink() {
                h.update(fs::read_link(root.join(&f))?.as_os_str().as_bytes());
            } else if m.is_file() {
                let mut file = fs::File::open(root.join(&f))?;
                io::copy(&mut file, &mut h)?;
            }
        }
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_wildcards_and_ignore() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("src/sub")).unwrap();
        fs::write(r.join("a.txt"), "a").unwrap();
        fs::write(r.join("b.txt"), "b").unwrap();
        fs::write(r.join("secret.txt"), "s").unwrap();
        fs::write(r.join("src/sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("evil")).unwrap();
        let ig = IgnoreRules::parse("secret.txt\n");
        let got = resolve(r, &["*.txt".into(), "/src/../src".into()], Some(&ig)).unwrap();
        assert_eq!(
            got,
            vec![
                PathBuf::from("a.txt"),
                PathBuf::from("b.txt"),
                PathBuf::from("src")
            ]
        );
        let e = resolve(r, &["secret.txt".into()], Some(&ig)).unwrap_err();
        assert!(e.contains("excluded by .dockerignore"), "{e}");
        // Never through a symlink.
        assert!(resolve(r, &["evil/passwd".into()], None).is_err());
        assert!(resolve(r, &["*.md".into()], None).is_err());
        let h1 = content_hash(r, &got, Some(&ig)).unwrap();
        fs::write(r.join("src/sub/x"), "changed").unwrap();
        assert_ne!(h1, content_hash(r, &got, Some(&ig)).unwrap());
    }
}
