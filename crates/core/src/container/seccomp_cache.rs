//! Compiled seccomp filters, kept for crun. crun turns a container's `linux.seccomp` into a BPF
//! program with libseccomp on every `create`, which is half of a create here (~15 of ~30 ms
//! for Berth's default profile). crun has a cache of its own, but only when built with
//! libgcrypt, which Debian's is not. The program depends only on the profile, crun (and the
//! libseccomp it was built with) and the kernel it probes, so Berth keeps it:
//!
//! - at create, the key is the SHA-256 of the profile's JSON, `crun --version` and the kernel's
//!   release, version and machine; with `<data root>/runtime/crun-seccomp/<key>.bpf` there, the
//!   bundle's `config.json` carries it as crun's `run.oci.seccomp_bpf_data` annotation (base64;
//!   crun then loads it as is and does not compile); without, the bundle gets a
//!   [`CAPTURE_FILE`] naming where it belongs;
//! - the shim, after a `create` that succeeded, copies crun's own compilation
//!   (`<runtime root>/<id>/seccomp.bpf`) there (written aside, then renamed into place).
//!
//! A cached file that is not a whole, plausible program (empty, not a multiple of a BPF
//! instruction's 8 bytes, longer than the kernel's 4096 instructions) is ignored and replaced.
//! runc has no such annotation: its containers compile as before.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use base64::Engine;
use oci_spec::runtime::LinuxSeccomp;
use sha2::{Digest, Sha256};

/// The annotation crun 0.17+ reads a ready program from.
pub const ANNOTATION: &str = "run.oci.seccomp_bpf_data";
/// In a bundle: the path the runtime's compiled program is to be copied to.
pub const CAPTURE_FILE: &str = "seccomp-capture";
/// Where crun leaves the program it compiled, in its state directory of the container.
const RUNTIME_PROGRAM: &str = "seccomp.bpf";
/// `struct sock_filter` is 8 bytes; the kernel takes at most 4096 of them (BPF_MAXINSNS).
const INSN: usize = 8;
const MAX_INSNS: usize = 4096;
/// More than this many programs (custom profiles) and the oldest half goes.
const MAX_ENTRIES: usize = 64;

pub struct SeccompCache {
    dir: PathBuf,
}

impl SeccompCache {
    pub fn new(data_root: &Path) -> SeccompCache {
        SeccompCache {
            dir: data_root.join("runtime").join("crun-seccomp"),
        }
    }

    /// The file a profile's program is kept in, for this crun and kernel.
    pub fn entry(&self, profile: &LinuxSeccomp) -> PathBuf {
        self.entry_with(profile, environment())
    }

    fn entry_with(&self, profile: &LinuxSeccomp, environment: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(profile).expect("serialisable"));
        h.update([0]);
        h.update(environment.as_bytes());
        let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{key}.bpf"))
    }

    /// The annotation's value for a kept program, if there is a usable one.
    pub fn annotation(entry: &Path) -> Option<String> {
        let program = fs::read(entry).ok()?;
        plausible(&program).then(|| base64::engine::general_purpose::STANDARD.encode(&program))
    }
}

fn plausible(program: &[u8]) -> bool {
    !program.is_empty() && program.len().is_multiple_of(INSN) && program.len() <= MAX_INSNS * INSN
}

/// What besides the profile decides the program: crun's version (and so its libseccomp's
/// handling) and the kernel. Found once per process.
fn environment() -> &'static str {
    static ENV: OnceLock<String> = OnceLock::new();
    ENV.get_or_init(|| {
        let crun = Command::new("crun")
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let kernel = nix::sys::utsname::uname()
            .map(|u| {
                format!(
                    "{} {} {}",
                    u.release().to_string_lossy(),
                    u.version().to_string_lossy(),
                    u.machine().to_string_lossy()
                )
            })
            .unwrap_or_default();
        format!("{crun}\n{kernel}")
    })
}

/// The shim's part, after a successful `create`: keeps the runtime's compiled program where
/// the bundle's [`CAPTURE_FILE`] says, once. Failures only cost the next create a compile.
pub fn capture(bundle: &Path, runtime_root: &Path, id: &str) {
    let marker = bundle.join(CAPTURE_FILE);
    let Ok(target) = fs::read_to_string(&marker) else {
        return;
    };
    let target = PathBuf::from(target.trim());
    if let Err(e) = keep(&runtime_root.join(id).join(RUNTIME_PROGRAM), &target) {
        tracing::debug!("keeping the compiled seccomp filter: {e}");
    }
    let _ = fs::remove_file(marker);
}

fn keep(program: &Path, target: &Path) -> io::Result<()> {
    let bytes = fs::read(program)?;
    if !plausible(&bytes) {
        return Err(io::Error::other(format!(
            "{}: {} bytes is not a seccomp program",
            program.display(),
            bytes.len()
        )));
    }
    let dir = target
        .parent()
        .ok_or_else(|| io::Error::other("no cache directory"))?;
    fs::create_dir_all(dir)?;
    trim(dir);
    let aside = target.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&aside, &bytes)?;
    fs::rename(&aside, target).inspect_err(|_| {
        let _ = fs::remove_file(&aside);
    })
}

/// Bounds the cache: past [`MAX_ENTRIES`] the least recently written half goes.
fn trim(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() < MAX_ENTRIES {
        return;
    }
    files.sort();
    for (_, p) in files.iter().take(files.len() / 2) {
        let _ = fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(default_action: &str) -> LinuxSeccomp {
        serde_json::from_value(serde_json::json!({
            "defaultAction": default_action,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        }))
        .unwrap()
    }

    #[test]
    fn the_key_follows_the_profile_crun_and_kernel() {
        let c = SeccompCache::new(Path::new("/data"));
        let a = c.entry_with(&profile("SCMP_ACT_ALLOW"), "crun 1.8.1\nkernel 6.1");
        assert!(a.starts_with("/data/runtime/crun-seccomp"));
        assert_eq!(
            a,
            c.entry_with(&profile("SCMP_ACT_ALLOW"), "crun 1.8.1\nkernel 6.1")
        );
        for other in [
            c.entry_with(&profile("SCMP_ACT_LOG"), "crun 1.8.1\nkernel 6.1"),
            c.entry_with(&profile("SCMP_ACT_ALLOW"), "crun 1.9\nkernel 6.1"),
            c.entry_with(&profile("SCMP_ACT_ALLOW"), "crun 1.8.1\nkernel 6.12"),
        ] {
            assert_ne!(a, other);
        }
    }

    #[test]
    fn a_captured_program_is_kept_once_and_a_bad_one_never_used() {
        let t = tempfile::tempdir().unwrap();
        let (bundle, root) = (t.path().join("bundle"), t.path().join("root"));
        fs::create_dir_all(&bundle).unwrap();
        fs::create_dir_all(root.join("c1")).unwrap();
        let cache = SeccompCache::new(t.path());
        let entry = cache.entry_with(&profile("SCMP_ACT_ALLOW"), "env");
        // Two instructions: "allow" as libseccomp writes it (any 8-byte multiple will do).
        let program: Vec<u8> = (0u8..16).collect();
        fs::write(root.join("c1").join(RUNTIME_PROGRAM), &program).unwrap();

        // No marker: nothing is kept.
        capture(&bundle, &root, "c1");
        assert!(SeccompCache::annotation(&entry).is_none());
        fs::write(bundle.join(CAPTURE_FILE), entry.display().to_string()).unwrap();
        capture(&bundle, &root, "c1");
        assert!(!bundle.join(CAPTURE_FILE).exists(), "captured once");
        let b64 = SeccompCache::annotation(&entry).unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            program
        );

        // Torn or foreign files are not handed to crun, nor kept.
        for bad in [
            &b""[..],
            &[1, 2, 3][..],
            &vec![0u8; (MAX_INSNS + 1) * INSN][..],
        ] {
            fs::write(&entry, bad).unwrap();
            assert!(SeccompCache::annotation(&entry).is_none(), "{}", bad.len());
            fs::write(root.join("c1").join(RUNTIME_PROGRAM), bad).unwrap();
            fs::write(bundle.join(CAPTURE_FILE), entry.display().to_string()).unwrap();
            capture(&bundle, &root, "c1");
            assert_eq!(fs::read(&entry).unwrap(), bad, "left as it was");
        }
    }

    #[test]
    fn the_cache_keeps_its_newest_half_past_its_bound() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("crun-seccomp");
        fs::create_dir_all(&dir).unwrap();
        for i in 0..MAX_ENTRIES {
            let p = dir.join(format!("{i:03}.bpf"));
            fs::write(&p, [0u8; 8]).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(i as u64);
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        trim(&dir);
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left.len(), MAX_ENTRIES / 2);
        assert_eq!(left[0], format!("{:03}.bpf", MAX_ENTRIES / 2));
    }
}
