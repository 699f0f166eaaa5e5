//! The OCI runtime (runc or crun) through its command line. Every container's runtime state
//! lives under the core's own `--root` (`<data root>/runtime/<name>`), apart from any other
//! user of the same runtime on the machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// the runtime binary could not be run
    #[error("running {runtime}: {source}")]
    Spawn {
        runtime: String,
        source: std::io::Error,
    },
    /// the runtime refused or failed
    #[error("{runtime} {op} failed: {message}")]
    Failed {
        runtime: String,
        op: &'static str,
        message: String,
    },
}

/// Which runtime new containers use: `BERTH_RUNTIME` if set, else crun where it is installed
/// and can work (a pure cgroup v2 host, or a hybrid one whose unified hierarchy crun can be
/// kept from seeing, see [`hides_unified`]), else runc.
pub fn choose() -> String {
    if let Ok(r) = std::env::var("BERTH_RUNTIME") {
        if !r.is_empty() {
            return r;
        }
    }
    let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if on_path("crun") && (pure_v2 || hides_unified()) {
        "crun".into()
    } else {
        "runc".into()
    }
}

/// Where the v2 hierarchy of a hybrid host is mounted (systemd's layout).
const HYBRID_UNIFIED: &str = "/sys/fs/cgroup/unified";

/// Whether crun's commands run in a mount namespace of their own without the hybrid host's
/// unified hierarchy. crun refuses a hybrid layout whose v2 half has controllers ("cgroups in
/// hybrid mode not supported"); without `/sys/fs/cgroup/unified` it sees a plain v1 host and
/// manages the v1 controllers as runc does (the container's processes stay in the v2 root,
/// which has no controller we use). crun's process is short-lived and the container gets its
/// own mount namespace anyway, so nothing else sees the difference. Decided once: the v1
/// hierarchies are mounted at `/sys/fs/cgroup`, the unified one at its systemd place, and we
/// may unshare mount namespaces (root with CAP_SYS_ADMIN, which running containers needs).
pub fn hides_unified() -> bool {
    static HIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HIDE.get_or_init(|| {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        hybrid_layout(&mountinfo) && probe_hidden_crun()
    })
}

/// `/sys/fs/cgroup` is not itself cgroup2 and the unified hierarchy is mounted at
/// [`HYBRID_UNIFIED`] beside v1 hierarchies.
fn hybrid_layout(mountinfo: &str) -> bool {
    let mounts = super::cgroup::parse_mountinfo(mountinfo);
    let v2_at = |p: &str| {
        mounts
            .iter()
            .any(|m| m.controllers.is_none() && m.mount_point == Path::new(p))
    };
    let any_v1 = mounts.iter().any(|m| m.controllers.is_some());
    any_v1 && !v2_at("/sys/fs/cgroup") && v2_at(HYBRID_UNIFIED)
}

/// Runs `crun --version` the way every crun command will run (see [`Runtime::command`]), so
/// a host where the namespace cannot be made keeps runc.
fn probe_hidden_crun() -> bool {
    let mut c = Command::new("crun");
    c.arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    hide_unified_before_exec(&mut c);
    c.status().is_ok_and(|s| s.success())
}

/// Makes `c` run in a new mount namespace (a slave of ours, so nothing it mounts comes back)
/// where the hybrid host's unified hierarchy is unmounted.
fn hide_unified_before_exec(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only makes raw system calls (unshare, mount,
    // umount2) on constant arguments; it allocates nothing and takes no lock.
    unsafe {
        c.pre_exec(|| {
            use nix::mount::{mount, umount2, MntFlags, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_SLAVE,
                None::<&str>,
            )?;
            umount2(HYBRID_UNIFIED, MntFlags::MNT_DETACH)?;
            Ok(())
        });
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

#[derive(Debug, Clone)]
pub struct Runtime {
    pub name: String,
    /// The runtime's `--root`: where it keeps the state of our containers.
    pub root: PathBuf,
}

impl Runtime {
    pub fn new(name: &str, data_root: &Path) -> Runtime {
        Runtime {
            name: name.to_string(),
            root: data_root.join("runtime").join(name),
        }
    }

    fn command(&self) -> Command {
        let mut c = self.command_without_cgroups();
        if self.name == "crun" && hides_unified() {
            hide_unified_before_exec(&mut c);
        }
        c
    }

    /// For operations that never look at cgroups (`start` only writes to the container's
    /// exec fifo): no mount namespace to make, ~5 ms of every start on a hybrid host.
    fn command_without_cgroups(&self) -> Command {
        let mut c = Command::new(&self.name);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c
    }

    /// `create` with the runtime's own errors logged as JSON to `log` (the container's stdio is
    /// the caller's to set on the returned command).
    /// With `console_socket` the runtime sends the terminal's master there (`-t`).
    pub fn create_command(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        log: &Path,
        console_socket: Option<&str>,
    ) -> Command {
        let mut c = self.command();
        c.arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json")
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(s) = console_socket {
            c.arg("--console-socket").arg(s);
        }
        c.arg(id);
        c
    }

    /// `exec --detach` of the OCI process in `process` (its `terminal` decides whether a console
    /// socket is needed); the process's pid goes to `pid_file`.
    pub fn exec_command(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        log: &Path,
        console_socket: Option<&str>,
    ) -> Command {
        let mut c = self.command();
        c.arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json")
            .arg("exec")
            .arg("--detach")
            .arg("--process")
            .arg(process)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(s) = console_socket {
            c.arg("--console-socket").arg(s);
        }
        c.arg(id);
        c
    }

    /// `delete` as a command, for callers that reap their children themselves.
    pub fn delete_command(&self, id: &str, force: bool) -> Command {
        let mut c = self.command();
        c.arg("delete");
        if force {
            c.arg("--force");
        }
        c.arg(id).stdout(Stdio::null()).stderr(Stdio::null());
        c
    }

    fn run(&self, op: &'static str, args: &[&str]) -> Result<String, RuntimeError> {
        self.run_command(self.command(), op, args)
    }

    fn run_command(
        &self,
        mut command: Command,
        op: &'static str,
        args: &[&str],
    ) -> Result<String, RuntimeError> {
        let out = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                runtime: self.name.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(RuntimeError::Failed {
                runtime: self.name.clone(),
                op,
                message: as_docker_says(&last_error_line(&message).unwrap_or(message)),
            })
        }
    }

    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run_command(self.command_without_cgroups(), "start", &["start", id])
            .map(drop)
    }

    pub fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.run("kill", &["kill", id, &signal.to_string()])
            .map(drop)
    }

    /// Freezes the container's processes (the cgroup freezer).
    pub fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("pause", &["pause", id]).map(drop)
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.run("resume", &["resume", id]).map(drop)
    }

    /// The pids of the container's processes (`ps --format json`).
    pub fn ps(&self, id: &str) -> Result<Vec<u32>, RuntimeError> {
        let out = self.run("ps", &["ps", "--format", "json", id])?;
        serde_json::from_str::<Option<Vec<u32>>>(out.trim())
            .map(Option::unwrap_or_default)
            .map_err(|e| RuntimeError::Failed {
                runtime: self.name.clone(),
                op: "ps",
                message: format!("unexpected output {:?}: {e}", out.trim()),
            })
    }

    /// Whether the runtime keeps state for `id` (crun and runc both keep it in `<root>/<id>`).
    pub fn has_state(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    /// Deletes the runtime's state (and cgroup) of the container; with `force`, kills it first.
    /// Without state there is nothing to delete, and no runtime is run.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        if !self.has_state(id) {
            return Ok(());
        }
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.run("delete", &args).map(drop)
    }
}

/// The last error a runtime logged in its JSON log (`--log-format json`), if any.
pub fn last_logged_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(as_docker_says))
}

/// crun words a missing executable as "executable file `x` not found in $PATH: No such file or
/// directory"; Docker users (and their scripts) know runc's `exec: "x": executable file not
/// found in $PATH`, so that is what Berth says whichever runtime ran.
fn as_docker_says(message: &str) -> String {
    const START: &str = "executable file `";
    const END: &str = "` not found in $PATH";
    if let Some(i) = message.find(START) {
        let rest = &message[i + START.len()..];
        if let Some(j) = rest.find(END) {
            let name = &rest[..j];
            return format!(
                "{}exec: \"{name}\": executable file not found in $PATH",
                &message[..i]
            );
        }
    }
    message.to_string()
}

/// runc prints JSON log lines on stderr when it has no log file; take the message of the last.
fn last_error_line(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["msg"].as_str().map(str::to_string))
}

/// The exit code Docker reports for a container whose start failed with `message`.
pub fn start_failure_code(message: &str) -> i64 {
    // runc says "executable file not found", crun "executable file `x` not found in $PATH: No
    // such file or directory".
    let message = message.to_ascii_lowercase();
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
    {
        127
    } else if message.contains("permission denied") {
        126
    } else {
        128
    }
}

/// A signal by name ("SIGTERM", "term", "KILL") or number, as `docker kill -s` takes it.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let invalid = || format!("Invalid signal: {s}");
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(invalid())
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|sig| sig as i32)
        .map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_systemds_hybrid_layout_hides_the_unified_hierarchy() {
        let hybrid = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
36 25 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert!(hybrid_layout(hybrid));
        let pure_v2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert!(!hybrid_layout(pure_v2));
        let legacy = "36 25 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert!(!hybrid_layout(legacy));
        // A v2 hierarchy elsewhere is not one we know how to hide.
        let elsewhere = "\
30 25 0:26 / /run/cg2 rw - cgroup2 cgroup2 rw
36 25 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert!(!hybrid_layout(elsewhere));
    }

    #[test]
    fn signals_parse_like_docker_kill() {
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("term"), Ok(15));
        assert_eq!(parse_signal("HUP"), Ok(1));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(
            parse_signal("SIGNOPE"),
            Err("Invalid signal: SIGNOPE".into())
        );
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn start_failures_map_to_dockers_codes() {
        assert_eq!(
            start_failure_code(
                "runc create failed: unable to start container process: exec: \"x\": executable file not found in $PATH"
            ),
            127
        );
        assert_eq!(start_failure_code("exec: \"/x\": permission denied"), 126);
        assert_eq!(
            as_docker_says("executable file `nope` not found in $PATH: No such file or directory"),
            "exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(
            as_docker_says("exec: \"x\": executable file not found in $PATH"),
            "exec: \"x\": executable file not found in $PATH"
        );
        assert_eq!(
            start_failure_code(
                "OCI runtime exec failed: executable file `nope` not found in $PATH: No such file or directory"
            ),
            127
        );
        assert_eq!(start_failure_code("open `/x`: Permission denied"), 126);
        assert_eq!(start_failure_code("cgroup: no such controller"), 128);
    }

    #[test]
    fn logged_errors_are_found() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("log.json");
        std::fs::write(
            &p,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"boom\"}\n",
        )
        .unwrap();
        assert_eq!(last_logged_error(&p).as_deref(), Some("boom"));
        assert_eq!(last_logged_error(&t.path().join("none")), None);
    }
}
