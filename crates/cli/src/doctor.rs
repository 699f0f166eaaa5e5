//! `berth doctor`: what Berth needs on this machine, checked one by one, each with what to do
//! when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_vm::qemu::{accel, GuestArch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Info,
    Warn,
    Fail,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

pub struct Check {
    pub level: Level,
    pub name: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<5} {:<16} {}",
            self.level.label(),
            self.name,
            self.detail
        )
    }
}

pub struct Context {
    pub socket: PathBuf,
    /// The backend berthd would start with (`berth start --backend`).
    pub backend: String,
    pub vm_image: PathBuf,
    pub data_root: PathBuf,
    /// berthd's settings file.
    pub settings: PathBuf,
}

fn check(level: Level, name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        level,
        name,
        detail: detail.into(),
    }
}

pub use berth_vm::find_program;

fn first_line_of(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

pub fn run(ctx: &Context) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(engine(ctx));
    out.extend(socket_mode(&ctx.socket));
    let vm = ctx.backend == "qemu";
    let need = |missing: Level| if vm { missing } else { Level::Info };

    match GuestArch::host() {
        Some(arch) => {
            let qemu = arch.qemu_program();
            out.push(match find_program(qemu) {
                Some(p) => check(Level::Ok, "qemu", first_line_of(&p, "--version")),
                None => check(
                    need(Level::Fail),
                    "qemu",
                    format!("{qemu} is not installed (Debian: apt-get install qemu-system-x86 / qemu-system-arm)"),
                ),
            });
            let choice = accel::detect(arch);
            out.push(check(
                Level::Info,
                "accelerator",
                format!("{} ({})", choice.accelerator, choice.reason),
            ));
            out.push(if Path::new("/dev/vhost-vsock").exists() {
                check(Level::Info, "vsock", "/dev/vhost-vsock exists")
            } else {
                match find_program("vhost-device-vsock") {
                    Some(p) => check(
                        Level::Ok,
                        "vsock",
                        format!("no /dev/vhost-vsock; using {}", p.display()),
                    ),
                    None => check(
                        need(Level::Fail),
                        "vsock",
                        "no /dev/vhost-vsock and no vhost-device-vsock: cargo install vhost-device-vsock",
                    ),
                }
            });
            out.push(guest_image(&ctx.vm_image, need(Level::Fail)));
        }
        None => out.push(check(
            need(Level::Fail),
            "vm",
            "no guest architecture for this host (amd64 and arm64 only)",
        )),
    }

    out.push(data_root(&ctx.data_root));
    out.push(settings(ctx));
    // The direct backend runs containers on this host; with a VM the guest has its own.
    out.push(runtime(if vm { Level::Info } else { Level::Fail }));
    out
}

fn engine(ctx: &Context) -> Check {
    match crate::engine::request(&ctx.socket, "GET", "/info") {
        Ok((200, body)) => {
            let info: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            check(
                Level::Ok,
                "engine",
                format!(
                    "berthd {} at {} ({} backend, core {})",
                    info["ServerVersion"].as_str().unwrap_or("?"),
                    ctx.socket.display(),
                    info["Berth"]["Backend"].as_str().unwrap_or("?"),
                    info["Berth"]["VmState"].as_str().unwrap_or("?"),
                ),
            )
        }
        Ok((status, body)) => check(
            Level::Fail,
            "engine",
            format!("berthd answered /info with {status}: {}", body.trim()),
        ),
        Err(_) => check(
            Level::Info,
            "engine",
            format!(
                "berthd is not running at {} (`berth start` starts it)",
                ctx.socket.display()
            ),
        ),
    }
}

/// The socket must be the user's alone: anyone who can open it controls the engine.
fn socket_mode(socket: &Path) -> Option<Check> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(socket).ok()?;
    let mode = meta.mode() & 0o777;
    let me = nix::unistd::geteuid().as_raw();
    Some(if mode & 0o077 == 0 && meta.uid() == me {
        check(
            Level::Ok,
            "socket",
            format!("{} is owner-only ({mode:o})", socket.display()),
        )
    } else {
        check(
            Level::Fail,
            "socket",
            format!(
                "{} has mode {mode:o}, owner uid {}: others could control the engine",
                socket.display(),
                meta.uid()
            ),
        )
    })
}

fn guest_image(dir: &Path, missing: Level) -> Check {
    let kernel = ["bzImage", "Image", "vmlinux"]
        .iter()
        .map(|k| dir.join(k))
        .find(|p| p.is_file());
    let initramfs = dir.join("initramfs.cpio.gz");
    match kernel {
        Some(k) if initramfs.is_file() => {
            let manifest = std::fs::read_to_string(dir.join("manifest")).unwrap_or_default();
            let package = manifest
                .lines()
                .find_map(|l| l.strip_prefix("kernel_package="))
                .map(|p| format!(", {p}"))
                .unwrap_or_default();
            check(
                Level::Ok,
                "guest image",
                format!("{} + {}{package}", k.display(), initramfs.display()),
            )
        }
        _ => check(
            missing,
            "guest image",
            format!(
                "no kernel + initramfs.cpio.gz in {}: run vm-image/build",
                dir.display()
            ),
        ),
    }
}

/// Where images and containers live: warn when little room is left (a full disk refuses pulls).
fn data_root(dir: &Path) -> Check {
    // The nearest existing ancestor tells the filesystem before the first start.
    let Some(existing) = dir.ancestors().find(|d| d.exists()) else {
        return check(
            Level::Warn,
            "data root",
            format!("{}: no such path", dir.display()),
        );
    };
    match nix::sys::statvfs::statvfs(existing) {
        Ok(st) => {
            // The field types differ between platforms (u64 on Linux, u32 on macOS).
            #[allow(clippy::unnecessary_cast)]
            let free = st.blocks_available() as u64 * st.fragment_size() as u64;
            let gib = free as f64 / (1u64 << 30) as f64;
            let level = if free < 2 << 30 {
                Level::Warn
            } else {
                Level::Ok
            };
            check(
                level,
                "data root",
                format!("{} ({gib:.1} GiB free)", dir.display()),
            )
        }
        Err(e) => check(Level::Warn, "data root", format!("{}: {e}", dir.display())),
    }
}

/// The settings file: where it is, and whether berthd would start with it (a file that does
/// not validate stops berthd). Checked by the running engine's validator when one answers.
fn settings(ctx: &Context) -> Check {
    let path = ctx.settings.display();
    let text = match std::fs::read_to_string(&ctx.settings) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return check(
                Level::Info,
                "settings",
                format!("{path}: not there yet (defaults; made on the first edit)"),
            )
        }
        Err(e) => return check(Level::Fail, "settings", format!("{path}: {e}")),
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
        return check(
            Level::Fail,
            "settings",
            format!("{path} is not JSON ({e}): berthd will not start with it; fix or move it"),
        );
    }
    match crate::engine::request_with_body(
        &ctx.socket,
        "POST",
        "/berth/v1/settings/validate",
        Some(&text),
    ) {
        Ok((200, body)) => {
            let report: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let errors = report["errors"].as_array().cloned().unwrap_or_default();
            if report["valid"] == true {
                check(Level::Ok, "settings", format!("{path} (valid)"))
            } else {
                let first = errors
                    .first()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["path"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("?")
                        )
                    })
                    .unwrap_or_default();
                check(
                    Level::Fail,
                    "settings",
                    format!(
                        "{path}: {} error(s), first {first}; berthd will not start with it",
                        errors.len()
                    ),
                )
            }
        }
        _ => check(
            Level::Ok,
            "settings",
            format!("{path} (JSON; berthd validates the rest when it starts)"),
        ),
    }
}

/// The OCI runtime the direct backend would use on this host.
fn runtime(missing: Level) -> Check {
    let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let layout = if pure_v2 {
        "pure cgroup v2"
    } else {
        "hybrid/v1 cgroups"
    };
    let crun = find_program("crun");
    let runc = find_program("runc");
    match (crun, runc) {
        (Some(p), _) if pure_v2 => check(
            Level::Ok,
            "oci runtime",
            format!("{} for the direct backend ({layout})", p.display()),
        ),
        // berth-core runs crun's commands in a mount namespace without the hybrid host's
        // unified hierarchy (crun refuses it otherwise); where that namespace cannot be made
        // it falls back to runc.
        (Some(p), runc) => check(
            Level::Ok,
            "oci runtime",
            format!(
                "{} for the direct backend ({layout}: crun sees only the v1 hierarchies; {})",
                p.display(),
                match runc {
                    Some(_) => "runc if that fails",
                    None => "install runc as the fallback",
                }
            ),
        ),
        (None, Some(p)) => check(
            Level::Ok,
            "oci runtime",
            format!(
                "{} for the direct backend ({layout}; crun, the faster one, is not installed)",
                p.display()
            ),
        ),
        (None, None) => check(
            missing,
            "oci runtime",
            "neither crun nor runc is installed (needed by the direct backend)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_guest_image_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = guest_image(dir.path(), Level::Fail);
        assert_eq!(c.level, Level::Fail);
        assert!(c.detail.contains("vm-image/build"), "{}", c.detail);
        std::fs::write(dir.path().join("bzImage"), b"k").unwrap();
        std::fs::write(dir.path().join("initramfs.cpio.gz"), b"i").unwrap();
        std::fs::write(
            dir.path().join("manifest"),
            "arch=amd64\nkernel_package=linux-image-x-cloud-amd64\n",
        )
        .unwrap();
        let c = guest_image(dir.path(), Level::Fail);
        assert_eq!(c.level, Level::Ok);
        assert!(
            c.detail.ends_with(", linux-image-x-cloud-amd64"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn a_socket_others_can_open_fails() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(socket_mode(&path).unwrap().level, Level::Ok);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let c = socket_mode(&path).unwrap();
        assert_eq!(c.level, Level::Fail);
        assert!(c.detail.contains("666"), "{}", c.detail);
        assert!(socket_mode(&dir.path().join("none")).is_none());
    }
}
