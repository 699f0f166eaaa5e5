//! Starts berthd (with its real berth-core child) in a temp dir and drives the real docker CLI.

#![allow(dead_code)]

pub mod liar;
pub mod mirrors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The fixture registries' env file (`scripts/fixtures up` writes it).
pub fn fixtures() -> HashMap<String, String> {
    let Some(path) = std::env::var_os("BERTH_FIXTURES_ENV") else {
        panic!("BERTH_FIXTURES_ENV is not set: run ./scripts/test, or `scripts/fixtures up` and export BERTH_FIXTURES_ENV=<fixtures dir>/env")
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", Path::new(&path).display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches('"').trim_matches('\'').to_string(),
            )
        })
        .collect()
}

/// One image of the fixtures' images.json.
pub fn fixture_image(registry: &str, repo: &str, tag: &str) -> Value {
    let fx = fixtures();
    let path = &fx["BERTH_FIX_IMAGES"];
    let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let list = all
        .as_array()
        .cloned()
        .or_else(|| all["images"].as_array().cloned())
        .expect("images list");
    list.into_iter()
        .find(|i| i["registry"] == registry && i["repo"] == repo && i["tag"] == tag)
        .unwrap_or_else(|| panic!("no fixture {registry} {repo}:{tag} in {path}"))
}

pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_BIN_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_BIN_EXE_berthd"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub struct Berthd {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data_root: PathBuf,
    args: Vec<String>,
}

/// The amd64 guest, built (or found up to date) by `vm-image/build`; its output directory.
/// The VM tests are on only with BERTH_VM_TESTS=1 (scripts/test sets it and installs QEMU).
pub fn guest_image() -> PathBuf {
    if std::env::var("BERTH_VM_TESTS").as_deref() != Ok("1") {
        panic!("this test boots the QEMU backend: run it through ./scripts/test, or set BERTH_VM_TESTS=1 with qemu-system-x86 and vhost-device-vsock installed")
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vm-image/build");
    let out = Command::new(&script)
        .arg("amd64")
        .output()
        .expect("running vm-image/build");
    assert!(
        out.status.success(),
        "vm-image/build amd64: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kernel = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kernel="))
        .expect("vm-image/build prints kernel=");
    Path::new(kernel).parent().unwrap().to_path_buf()
}

impl Berthd {
    pub fn start(extra: &[&str]) -> Berthd {
        let dir = tempfile::tempdir().unwrap();
        let data_root = dir.path().join("data");
        let socket = dir.path().join("berthd.sock");
        std::fs::create_dir_all(dir.path().join("docker-config")).unwrap();
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(&socket, &data_root, &args, dir.path());
        let mut d = Berthd {
            child,
            dir,
            socket,
            data_root,
            args,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default();
                panic!("berthd exited at start ({status}):\n{log}");
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                && self.docker(&["version"]).status.success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops berthd cleanly (SIGTERM) and starts it again on the same data root.
    pub fn restart(&mut self) {
        stop(&mut self.child, Duration::from_secs(30));
        self.child = spawn(&self.socket, &self.data_root, &self.args, self.dir.path());
        self.wait_ready();
    }

    /// Stops berthd cleanly (SIGTERM) and waits for it, without starting it again.
    pub fn shut_down(&mut self) {
        stop(&mut self.child, Duration::from_secs(30));
    }

    /// Kills berthd (SIGKILL: no clean-up) and starts it again on the same data root.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        // The core dies with berthd (parent-death signal); give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        self.child = spawn(&self.socket, &self.data_root, &self.args, self.dir.path());
        self.wait_ready();
    }

    /// The docker CLI pointed at this berthd, with its own config dir (nothing of the user's).
    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("running docker (the CLI must be installed)")
    }

    /// Runs docker, panics with its output and berthd's log unless it succeeds; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default();
            panic!(
                "docker {args:?} failed ({}):\nstdout: {}\nstderr: {}\nberthd log (tail):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The backend the docker suites run on: `direct`, or `qemu` when `BERTH_TEST_BACKEND=qemu`
/// (scripts/test runs the container suites a second time that way). A test that names its own
/// `--backend` keeps it.
pub fn test_backend() -> &'static str {
    match std::env::var("BERTH_TEST_BACKEND").as_deref() {
        Ok("qemu") => "qemu",
        Ok("direct") | Err(_) => "direct",
        Ok(other) => panic!("BERTH_TEST_BACKEND={other}: use direct or qemu"),
    }
}

/// For tests that look at the host side of things (the store's files under the data root,
/// the host's mounts): on the qemu backend those live in the guest, so the test says why it
/// does not apply and returns.
pub fn skip_unless_direct(why: &str) -> bool {
    let skip = test_backend() != "direct";
    if skip {
        eprintln!("not on the {} backend: {why}", test_backend());
    }
    skip
}

/// The flags that put berthd on [`test_backend`] (none for direct).
fn backend_args(args: &[String]) -> Vec<String> {
    if test_backend() == "direct" || args.iter().any(|a| a == "--backend") {
        return Vec::new();
    }
    static GUEST: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let guest = GUEST.get_or_init(guest_image);
    vec![
        "--backend".into(),
        "qemu".into(),
        "--vm-image".into(),
        guest.display().to_string(),
        "--vm-memory".into(),
        "1024".into(),
    ]
}

fn spawn(socket: &Path, data_root: &Path, args: &[String], dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("berthd.log"))
        .unwrap();
    Command::new(bin_dir().join("berthd"))
        .arg("--socket")
        .arg(socket)
        .arg("--data-root")
        .arg(data_root)
        .arg("--core-binary")
        .arg(bin_dir().join("berth-core"))
        .args(backend_args(args))
        .args(args)
        .env("BERTH_LOG", "info,berth_agent=debug")
        // Never the user's own settings file (a test's --settings still wins).
        .env("BERTH_SETTINGS", dir.join("settings.json"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawning berthd")
}

impl Drop for Berthd {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(10));
    }
}

/// SIGTERM, then SIGKILL when the process has not exited within `grace`.
fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = nix_kill_term(child.id());
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn nix_kill_term(pid: u32) -> std::io::Result<()> {
    let st = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// Debian's dockerd 20.10, started by hand as the reference to compare with: its own data and
/// exec roots and socket, no bridge, no iptables. Stopped (and its mounts cleaned) on drop.
pub struct Dockerd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Dockerd {
    pub fn start(insecure: &[&str]) -> Dockerd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
            ]);
        for i in insecure {
            cmd.arg("--insecure-registry").arg(i);
        }
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd must be installed (scripts/test installs Debian's docker.io)");
        let d = Dockerd { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "dockerd: docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(20));
        // dockerd leaves mounts under its roots behind; unmount them before the temp dir goes.
        let root = self.dir.path().display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&root))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

impl Berthd {
    /// Runs docker with `input` on its stdin (a pipe, closed after the input).
    pub fn docker_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .docker_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running docker (the CLI must be installed)");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// One Docker API call with curl over the socket: the status and the body as JSON (Null
    /// when empty or not JSON).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "--unix-socket"])
            .arg(&self.socket)
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("http://berth{path}"))
            .output()
            .expect("curl (scripts/test installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code = code.trim().parse().unwrap_or(0);
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// Runs a shell command line under a pseudo-terminal (`script`), `docker` meaning this
    /// daemon's CLI; `input` is written to the terminal after `delay`. Output and exit code.
    pub fn in_pty(&self, cmdline: &str, input: &[u8], delay: Duration) -> (String, i32) {
        use std::io::Write;
        let docker = format!("docker -H unix://{}", self.socket.display());
        let line = cmdline.replace("docker ", &format!("{docker} "));
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (util-linux) must be installed");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = stdin.write_all(&input);
            // Keep the terminal open a little so the input is read before the end of input.
            std::thread::sleep(Duration::from_secs(3));
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }
}

impl Berthd {
    /// As [`Berthd::start`], with extra environment for this first start only (a restart
    /// runs berthd without it).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Berthd {
        let dir = tempfile::tempdir().unwrap();
        let data_root = dir.path().join("data");
        let socket = dir.path().join("berthd.sock");
        std::fs::create_dir_all(dir.path().join("docker-config")).unwrap();
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut cmd = spawn_command(&socket, &data_root, &args, dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning berthd");
        let mut d = Berthd {
            child,
            dir,
            socket,
            data_root,
            args,
        };
        d.wait_ready();
        d
    }

    /// berthd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// One API call with curl over the socket, with request headers: the status, the
    /// response headers (names lowercased) and the body as JSON (Null when empty or not JSON).
    pub fn api_h(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, HashMap<String, String>, Value) {
        let head_file = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "--unix-socket"])
            .arg(&self.socket)
            .arg("-D")
            .arg(head_file.path())
            .args(["-w", "\n%{http_code}"]);
        for (k, v) in headers {
            cmd.args(["-H", &format!("{k}: {v}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("http://berth{path}"))
            .output()
            .expect("curl (scripts/test installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code = code.trim().parse().unwrap_or(0);
        let heads = std::fs::read_to_string(head_file.path()).unwrap_or_default();
        let headers = heads
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (
            code,
            headers,
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }
}

/// The command [`Berthd`] runs, not yet spawned.
fn spawn_command(socket: &Path, data_root: &Path, args: &[String], dir: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("berthd.log"))
        .unwrap();
    let mut cmd = Command::new(bin_dir().join("berthd"));
    cmd.arg("--socket")
        .arg(socket)
        .arg("--data-root")
        .arg(data_root)
        .arg("--core-binary")
        .arg(bin_dir().join("berth-core"))
        .args(backend_args(args))
        .args(args)
        .env("BERTH_LOG", "info,berth_agent=debug")
        .env("BERTH_SETTINGS", dir.join("settings.json"))
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd
}
