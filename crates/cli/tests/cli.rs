//! `berth start|stop|status|doctor` against a real berthd (from BERTH_BIN_DIR, which
//! ./scripts/test points at the workspace build) and the real docker CLI with the fixture
//! registries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> HashMap<String, String> {
    let path = std::env::var_os("BERTH_FIXTURES_ENV")
        .expect("BERTH_FIXTURES_ENV is not set: run ./scripts/test (or scripts/fixtures up)");
    std::fs::read_to_string(path)
        .expect("reading the fixtures env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn berthd() -> PathBuf {
    let dir = std::env::var_os("BERTH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_berth"))
                .parent()
                .unwrap()
                .into()
        });
    let p = dir.join("berthd");
    assert!(
        p.is_file(),
        "{} is missing: cargo build --workspace",
        p.display()
    );
    p
}

/// One engine's files in a temp dir: its socket, data root, log and docker config.
struct Engine {
    dir: tempfile::TempDir,
}

impl Engine {
    fn new() -> Engine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("docker-config")).unwrap();
        Engine { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/berthd.sock")
    }

    fn berth(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .env_remove("BERTH_BACKEND")
            // `berth start` installs a docker context: in this engine's docker config only.
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .output()
            .expect("running berth")
    }

    fn berth_ok(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            out.status.success(),
            "berth {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `berth start` with this engine's data root and berthd from the build.
    fn start(&self, backend: &str, extra: &[&str]) -> String {
        let data = self.dir.path().join("data");
        let berthd = berthd();
        let mut args = vec![
            "start",
            "--backend",
            backend,
            "--berthd",
            berthd.to_str().unwrap(),
            "--",
            "--data-root",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.berth_ok(&args)
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"))
            .output()
            .expect("running docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn server_pid(&self) -> Option<i32> {
        let s = std::os::unix::net::UnixStream::connect(self.socket()).ok()?;
        let cred =
            nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
        Some(cred.pid())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A failed assertion must not leave berthd (or its VM) behind.
        let _ = self.berth(&["stop", "--timeout", "30"]);
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn start_stop_start_keeps_the_images_direct_backend() {
    let fx = fixtures();
    let e = Engine::new();
    let image = format!("{}/berth/hello:latest", fx["BERTH_FIX_OPEN"]);

    let out = e.berth(&["status"]);
    assert_eq!(out.status.code(), Some(1), "status of a stopped engine");
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
    let out = e.berth_ok(&["stop"]);
    assert!(out.contains("not running"), "stopping twice is fine: {out}");

    let out = e.start("direct", &[]);
    assert!(out.contains("berthd is up"), "{out}");
    let pid = e.server_pid().expect("berthd serves the socket");
    let out = e.start("direct", &[]);
    assert!(out.contains("already running"), "{out}");
    let status = e.berth_ok(&["status"]);
    assert!(status.contains("backend: direct"), "{status}");

    e.docker_ok(&["pull", "-q", &image]);
    let id = e.docker_ok(&["images", "-q", "--no-trunc", &image]);
    assert!(id.trim().starts_with("sha256:"), "{id}");

    let out = e.berth_ok(&["stop"]);
    assert!(
        out.contains(&format!("berthd stopped (pid {pid})")),
        "{out}"
    );
    assert!(
        !alive(pid),
        "berthd {pid} is still running after berth stop"
    );
    assert_eq!(e.berth(&["status"]).status.code(), Some(1));

    e.start("direct", &[]);
    let again = e.docker_ok(&["images", "-q", "--no-trunc", &image]);
    assert_eq!(again, id, "the image survives berth stop + berth start");
    e.berth_ok(&["stop"]);
}

#[test]
fn a_berthd_that_cannot_start_is_reported_with_its_log() {
    let e = Engine::new();
    let out = e.berth(&[
        "start",
        "--backend",
        "no-such-backend",
        "--berthd",
        berthd().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("berthd exited before it answered"), "{err}");
    assert!(
        err.contains("unknown backend \"no-such-backend\""),
        "the log tail explains it: {err}"
    );

    let out = e.berth(&["start", "--berthd", "/nonexistent/berthd"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("running /nonexistent/berthd"), "{err}");
}

#[test]
fn doctor_names_the_accelerator_and_the_guest_image() {
    let e = Engine::new();
    let empty = e.dir.path().join("no-guest");
    let out = e.berth(&[
        "doctor",
        "--backend",
        "qemu",
        "--vm-image",
        empty.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a missing guest fails: {text}");
    assert!(text.contains("accelerator"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("vm-image/build")),
        "{text}"
    );
    assert!(text.contains("not running"), "{text}");
    // The direct backend needs no guest.
    let out = e.berth(&[
        "doctor",
        "--backend",
        "direct",
        "--vm-image",
        empty.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("info") && l.contains("guest image")),
        "{text}"
    );
}

/// Issue 5: `berth start` makes the docker context `berth`; `docker context use berth` then
/// reaches berthd with no `-H`; `berth context remove` takes it away (as an uninstall does).
#[test]
fn the_docker_context_berth_reaches_the_engine() {
    let e = Engine::new();
    let out = e.start("direct", &[]);
    assert!(out.contains("docker context `berth`"), "{out}");
    let docker = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .env("DOCKER_CONFIG", e.dir.path().join("docker-config"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .output()
            .expect("running docker")
    };
    let out = docker(&[
        "context",
        "inspect",
        "berth",
        "--format",
        "{{.Endpoints.docker.Host}}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("unix://{}", e.socket().display()),
        "{out:?}"
    );
    assert!(docker(&["context", "use", "berth"]).status.success());
    let out = docker(&["info", "--format", "{{.Name}} {{.OperatingSystem}}"]);
    let info = e.docker_ok(&["info", "--format", "{{.Name}} {{.OperatingSystem}}"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        info,
        "the context reaches berthd"
    );

    // Installing again points it at the socket again.
    let out = e.berth_ok(&["context", "install"]);
    assert!(out.contains("updated"), "{out}");
    let out = e.berth_ok(&["context", "remove"]);
    assert!(out.contains("removed"), "{out}");
    let out = docker(&["context", "ls", "--format", "{{.Name}}"]);
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(!names.lines().any(|n| n.trim() == "berth"), "{names}");
    let out = e.berth_ok(&["context", "remove"]);
    assert!(out.contains("no docker context"), "{out}");
    e.berth_ok(&["stop"]);
}

/// Issue 5: `berth doctor` names the settings file and says whether berthd would start with it,
/// using the running engine's validator.
#[test]
fn doctor_checks_the_settings_file() {
    let e = Engine::new();
    let settings = e.dir.path().join("settings.json");
    let doctor = || {
        let out = e.berth(&[
            "doctor",
            "--backend",
            "direct",
            "--settings",
            settings.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("settings"))
            .unwrap_or_else(|| panic!("no settings line: {text}"))
            .to_string();
        (out.status.code(), line)
    };
    let (_, line) = doctor();
    assert!(
        line.starts_with("info") && line.contains("not there yet"),
        "{line}"
    );

    std::fs::write(&settings, "{ not json").unwrap();
    let (code, line) = doctor();
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with("FAIL") && line.contains("is not JSON"),
        "{line}"
    );

    std::fs::write(
        &settings,
        r#"{"registry-mirrors": ["https://mirror.example"]}"#,
    )
    .unwrap();
    let (_, line) = doctor();
    assert!(
        line.starts_with("ok") && line.contains("berthd validates"),
        "{line}"
    );

    // With an engine to ask, the whole document is validated.
    e.start("direct", &[]);
    let (_, line) = doctor();
    assert!(line.starts_with("ok") && line.contains("(valid)"), "{line}");
    std::fs::write(
        &settings,
        r#"{"registry-mirrors": ["ftp://mirror.example"], "vm": {"cpus": 0}}"#,
    )
    .unwrap();
    let (code, line) = doctor();
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with("FAIL")
            && line.contains("2 error(s)")
            && line.contains("registry-mirrors"),
        "{line}"
    );
    e.berth_ok(&["stop"]);
}

/// Issue 4: images and stopped containers are still there after `berth stop` + `berth start`
/// with the VM.
#[test]
fn start_stop_start_keeps_images_and_containers_in_the_vm() {
    if std::env::var("BERTH_VM_TESTS").as_deref() != Ok("1") {
        panic!("this test boots the QEMU backend: run it through ./scripts/test, or set BERTH_VM_TESTS=1");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vm-image/build");
    let built = Command::new(&script).arg("amd64").output().unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let stdout = String::from_utf8_lossy(&built.stdout);
    let kernel = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kernel="))
        .unwrap();
    let image_dir = Path::new(kernel)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    let fx = fixtures();
    let e = Engine::new();
    let busybox = format!("{}/berth/busybox:latest", fx["BERTH_FIX_OPEN"]);
    e.start("qemu", &["--vm-image", &image_dir, "--vm-memory", "512"]);
    e.docker_ok(&["pull", "-q", &busybox]);
    let id = e.docker_ok(&["run", "-d", &busybox, "sh", "-c", "echo kept; exit 3"]);
    let id = id.trim().to_string();
    assert_eq!(e.docker_ok(&["wait", &id]).trim(), "3");
    let pid = e.server_pid().unwrap();
    e.berth_ok(&["stop"]);
    assert!(!alive(pid));
    let left: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(e.dir.path().to_str().unwrap()))
        .collect();
    assert!(
        left.is_empty(),
        "processes left after berth stop: {left:#?}"
    );

    e.start("qemu", &["--vm-image", &image_dir, "--vm-memory", "512"]);
    let images = e.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains(&busybox), "{images}");
    let state = e.docker_ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        &id,
    ]);
    assert_eq!(state.trim(), "exited 3");
    assert_eq!(e.docker_ok(&["logs", &id]), "kept\n");
    e.berth_ok(&["stop"]);
}
