//! Interactive containers through the real `docker` CLI against a real berthd: `docker exec`
//! (exit codes, env, user, detached, failures), stdin (`run -i`, `exec -i`, `attach`), TTYs
//! (`run -t`, `run -it` and `exec -it` under a pseudo-terminal, resizes) and the exec API's
//! bad input. Needs the fixture registries (`scripts/fixtures up`) and root, as docker_cli.rs.

mod harness;

use std::time::{Duration, Instant};

use harness::{fixtures, Berthd};
use serde_json::Value;

fn busybox() -> String {
    format!("{}/berth/busybox:latest", fixtures()["BERTH_FIX_OPEN"])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Removes every container of the daemon when dropped (also when a test fails), so that no
/// container outlives its test: containers outlive berthd by design.
struct RemoveAll {
    socket: std::path::PathBuf,
    config: std::path::PathBuf,
}

fn remove_all(d: &Berthd) -> RemoveAll {
    RemoveAll {
        socket: d.socket.clone(),
        config: d.dir.path().join("docker-config"),
    }
}

impl Drop for RemoveAll {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{}", self.socket.display()))
                .args(args)
                .env("DOCKER_CONFIG", &self.config)
                .output()
        };
        if let Ok(out) = docker(&["ps", "-aq"]) {
            for id in text(&out.stdout).split_whitespace() {
                let _ = docker(&["rm", "-f", id]);
            }
        }
    }
}

/// Polls `f` until it gives Some, for up to 20 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn exec_runs_commands_with_their_exit_codes_env_user_and_dir() {
    let d = Berthd::start(&[]);
    let _cleanup = remove_all(&d);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    d.docker_ok(&["run", "-d", "--name", "ex", &image, "sleep", "300"]);

    let out = d.docker(&["exec", "ex", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    let out = d.docker_ok(&[
        "exec",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "ex",
        "sh",
        "-c",
        "echo $FOO $(pwd) $(id -u) $HOSTNAME",
    ]);
    let hostname = d.docker_ok(&["inspect", "--format", "{{.Config.Hostname}}", "ex"]);
    assert_eq!(out, format!("bar /tmp 65534 {}\n", hostname.trim()));

    // The process runs in the container: same namespaces, same files.
    d.docker_ok(&["exec", "ex", "sh", "-c", "echo kept > /tmp/f"]);
    assert_eq!(d.docker_ok(&["exec", "ex", "cat", "/tmp/f"]), "kept\n");
    let ps = d.docker_ok(&["exec", "ex", "ps", "-o", "pid,args"]);
    assert!(ps.contains("sleep 300"), "{ps}");

    // A command that does not exist: Docker's message and 127; one that cannot run: 126.
    let out = d.docker(&["exec", "ex", "nope"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stdout).contains("executable file not found"),
        "{}",
        text(&out.stdout)
    );
    let out = d.docker(&["exec", "ex", "/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stdout));

    // Detached: runs in the background.
    d.docker_ok(&[
        "exec",
        "-d",
        "ex",
        "sh",
        "-c",
        "sleep 1; echo later > /tmp/bg",
    ]);
    let bg = eventually("the detached exec", || {
        let o = d.docker(&["exec", "ex", "cat", "/tmp/bg"]);
        o.status.success().then(|| text(&o.stdout))
    });
    assert_eq!(bg, "later\n");

    // A user that does not exist.
    let out = d.docker(&["exec", "-u", "nosuchuser", "ex", "true"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(
        text(&out.stdout).contains("unable to find user nosuchuser"),
        "{}",
        text(&out.stdout)
    );

    // A stopped container: dockerd's conflict.
    d.docker_ok(&["stop", "-t", "0", "ex"]);
    let out = d.docker(&["exec", "ex", "true"]);
    assert!(!out.status.success());
    let id = d.docker_ok(&["inspect", "--format", "{{.Id}}", "ex"]);
    assert!(
        text(&out.stderr).contains(&format!("container {} is not running", id.trim())),
        "{}",
        text(&out.stderr)
    );
    let out = d.docker(&["exec", "nosuchcontainer", "true"]);
    assert!(text(&out.stderr).contains("No such container: nosuchcontainer"));
}

#[test]
fn the_exec_api_answers_like_dockerd() {
    let d = Berthd::start(&[]);
    let _cleanup = remove_all(&d);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let id = d.docker_ok(&["run", "-d", "--name", "api", &image, "sleep", "300"]);
    let id = id.trim();

    let (code, v) = d.api(
        "POST",
        "/containers/api/exec",
        Some(r#"{"Cmd":["sh","-c","sleep 0.5; exit 4"],"User":"nobody","AttachStdout":true}"#),
    );
    assert_eq!(code, 201, "{v}");
    let exec = v["Id"].as_str().unwrap().to_string();
    assert_eq!(exec.len(), 64);
    let (code, v) = d.api("GET", &format!("/exec/{exec}/json"), None);
    assert_eq!(code, 200);
    assert_eq!(v["Running"], false);
    assert_eq!(v["ExitCode"], Value::Null);
    assert_eq!(v["ContainerID"], id);
    assert_eq!(v["ProcessConfig"]["entrypoint"], "sh");
    assert_eq!(
        v["ProcessConfig"]["arguments"],
        serde_json::json!(["-c", "sleep 0.5; exit 4"])
    );
    assert_eq!(v["ProcessConfig"]["user"], "nobody");
    assert_eq!(v["OpenStdout"], true);
    assert_eq!(v["OpenStdin"], false);
    // Resizing one that has not started is refused.
    let (code, _) = d.api("POST", &format!("/exec/{exec}/resize?h=10&w=10"), None);
    assert_eq!(code, 400);

    let (code, v) = d.api(
        "POST",
        &format!("/exec/{exec}/start"),
        Some(r#"{"Detach":true}"#),
    );
    assert_eq!(code, 200, "{v}");
    let (_, v) = d.api("GET", &format!("/exec/{exec}/json"), None);
    assert_eq!(v["Running"], true, "{v}");
    assert!(v["Pid"].as_u64().unwrap() > 0, "{v}");
    // Without a terminal a resize does nothing, as containerd's.
    let (code, _) = d.api("POST", &format!("/exec/{exec}/resize?h=10&w=10"), None);
    assert_eq!(code, 200);
    let v = eventually("the exec to exit", || {
        let (_, v) = d.api("GET", &format!("/exec/{exec}/json"), None);
        (v["Running"] == false).then_some(v)
    });
    assert_eq!(v["ExitCode"], 4);
    let (code, v) = d.api(
        "POST",
        &format!("/exec/{exec}/start"),
        Some(r#"{"Detach":true}"#),
    );
    assert_eq!(code, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("has already run"),
        "{v}"
    );

    // Unknown exec ids.
    for (method, path) in [
        ("GET", "/exec/nope/json"),
        ("POST", "/exec/nope/start"),
        ("POST", "/exec/nope/resize?h=1&w=1"),
    ] {
        let body = (method == "POST").then_some(r#"{"Detach":false}"#);
        let (code, v) = d.api(method, path, body);
        assert_eq!(code, 404, "{method} {path}: {v}");
        assert_eq!(v["message"], "No such exec instance: nope", "{path}");
    }

    // Malformed exec requests.
    let (code, v) = d.api("POST", "/containers/api/exec", Some("{bad json"));
    assert_eq!(code, 400, "{v}");
    let (code, v) = d.api("POST", "/containers/api/exec", Some(r#"{"Cmd":[]}"#));
    assert_eq!(
        (code, v["message"].as_str()),
        (400, Some("No exec command specified"))
    );
    let (code, v) = d.api(
        "POST",
        "/containers/nosuch/exec",
        Some(r#"{"Cmd":["true"]}"#),
    );
    assert_eq!(
        (code, v["message"].as_str()),
        (404, Some("No such container: nosuch"))
    );

    // Container resize: a no-op without a terminal, bad sizes are 400, stopped is 409.
    let (code, _) = d.api("POST", "/containers/api/resize?h=20&w=80", None);
    assert_eq!(code, 200);
    let (code, v) = d.api("POST", "/containers/api/resize?h=x&w=80", None);
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["message"], "strconv.Atoi: parsing \"x\": invalid syntax");
    let (code, _) = d.api("POST", "/containers/nosuch/resize?h=1&w=1", None);
    assert_eq!(code, 404);
    d.docker_ok(&["stop", "-t", "0", "api"]);
    let (code, v) = d.api("POST", "/containers/api/resize?h=20&w=80", None);
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["message"], format!("container {id} is not running"));
    let (code, v) = d.api("POST", "/containers/api/exec", Some(r#"{"Cmd":["true"]}"#));
    assert_eq!(code, 409, "{v}");
}

#[test]
fn stdin_reaches_run_exec_and_attach_and_its_end_closes_it() {
    let mut d = Berthd::start(&[]);
    let _cleanup = remove_all(&d);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);

    let out = d.docker_with_input(&["run", "-i", "--rm", &image, "cat"], b"hi\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    // The end of input closes the container's stdin (StdinOnce): wc sees it and counts.
    let out = d.docker_with_input(&["run", "-i", "--rm", &image, "wc", "-l"], b"a\nb\nc\n");
    assert_eq!(text(&out.stdout).trim(), "3", "{}", text(&out.stderr));
    // Without -i the container's stdin is empty.
    let out = d.docker_with_input(&["run", "--rm", &image, "wc", "-c"], b"ignored\n");
    assert_eq!(text(&out.stdout).trim(), "0");

    d.docker_ok(&["run", "-d", "--name", "ex", &image, "sleep", "300"]);
    let out = d.docker_with_input(&["exec", "-i", "ex", "cat"], b"hey\nthere\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hey\nthere\n");
    let out = d.docker_with_input(&["exec", "-i", "ex", "sh"], b"echo from sh; exit 6\n");
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(text(&out.stdout), "from sh\n");

    // `docker attach` to a running container with an open stdin (not StdinOnce), and again
    // after berthd (and the core) restarted: the supervisor keeps the container's stdin. As
    // with dockerd, the client's end of input ends its attach but leaves that stdin open.
    d.docker_ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "reader",
        &image,
        "sh",
        "-c",
        "read a; echo got $a; read b; echo got $b",
    ]);
    // `docker attach` waits for the container to exit: this first client is let go.
    let mut first = std::process::Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", d.socket.display()))
        .args(["attach", "--sig-proxy=false", "reader"])
        .env("DOCKER_CONFIG", d.dir.path().join("docker-config"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = first.stdin.take().unwrap();
        stdin.write_all(b"one\n").unwrap();
    }
    eventually("the first line", || {
        (d.docker_ok(&["logs", "reader"]) == "got one\n").then_some(())
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let state = d.docker_ok(&["inspect", "--format", "{{.State.Status}}", "reader"]);
    assert_eq!(
        state.trim(),
        "running",
        "stdin stays open for the next client"
    );
    // A berthd restart keeps the container (and its stdin) on the direct backend; with a VM,
    // berthd stopping stops the containers, so the second client comes without a restart.
    if harness::test_backend() == "direct" {
        d.restart();
    }
    let out = d.docker_with_input(&["attach", "reader"], b"two\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually("the container to read the second line and exit", || {
        let s = d.docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            "reader",
        ]);
        (s.trim() == "exited 0").then_some(())
    });
    assert_eq!(d.docker_ok(&["logs", "reader"]), "got one\ngot two\n");
}

#[test]
fn tty_containers_and_execs_have_a_terminal_that_resizes() {
    let d = Berthd::start(&[]);
    let _cleanup = remove_all(&d);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);

    // -t without -i (allowed when stdin is not a terminal): raw output with \r\n.
    let out = d.docker(&["run", "-t", "--rm", &image, "sh", "-c", "echo a; tty"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a\r\n/dev/pts/0\r\n");

    // -it under a pseudo-terminal: the container's terminal has the client's size at once.
    let (out, code) = d.in_pty(
        &format!(
            "stty rows 33 cols 99; docker run -it --rm {image} sh -c 'stty size; tty; exit 5'"
        ),
        b"",
        Duration::ZERO,
    );
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("33 99\r\n/dev/pts/0\r\n"), "{out:?}");

    // An interactive shell: typed input, TERM, the exit code.
    let (out, code) = d.in_pty(
        &format!("stty rows 20 cols 70; docker run -it --rm {image} sh"),
        b"echo $((6*7)) $TERM; stty size; exit 9\n",
        Duration::from_secs(2),
    );
    assert_eq!(code, 9, "{out}");
    assert!(out.contains("42 xterm\r\n20 70\r\n"), "{out:?}");

    // exec -it in a running container.
    d.docker_ok(&["run", "-d", "-t", "--name", "tt", &image, "sh"]);
    let (out, code) = d.in_pty(
        "stty rows 21 cols 71; docker exec -it tt sh",
        b"stty size; tty; exit 7\n",
        Duration::from_secs(2),
    );
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("21 71\r\n/dev/pts/"), "{out:?}");
    // exec -t without -i: output raw.
    let out = d.docker(&["exec", "-t", "tt", "echo", "x"]);
    assert_eq!(text(&out.stdout), "x\r\n");

    // Resizing the container's terminal is seen inside.
    let (code, v) = d.api("POST", "/containers/tt/resize?h=12&w=34", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        d.docker_ok(&["exec", "tt", "sh", "-c", "stty -F /dev/pts/0 size"]),
        "12 34\n"
    );
    // And an exec's.
    let (_, v) = d.api(
        "POST",
        "/containers/tt/exec",
        Some(r#"{"Cmd":["sh","-c","sleep 1; stty size > /tmp/size"],"Tty":true}"#),
    );
    let exec = v["Id"].as_str().unwrap().to_string();
    let (code, _) = d.api(
        "POST",
        &format!("/exec/{exec}/start"),
        Some(r#"{"Detach":true,"Tty":true}"#),
    );
    assert_eq!(code, 200);
    let (code, _) = d.api("POST", &format!("/exec/{exec}/resize?h=7&w=8"), None);
    assert_eq!(code, 200);
    let size = eventually("the exec's size", || {
        let o = d.docker(&["exec", "tt", "cat", "/tmp/size"]);
        o.status.success().then(|| text(&o.stdout))
    });
    assert_eq!(size, "7 8\n");

    // The log keeps what the terminal showed.
    let logs = d.docker(&["logs", "tt"]);
    assert!(logs.status.success());
    d.docker_ok(&["rm", "-f", "tt"]);
}

/// The same through the VM (QEMU, crun in the guest, every stream over vsock, where there is no
/// half-close): exec with its exit code, stdin's end reaching the container, a TTY and a resize.
#[test]
fn through_the_qemu_backend_exec_stdin_and_tty() {
    let image_dir = harness::guest_image();
    let image_dir = image_dir.display().to_string();
    let d = Berthd::start(&["--backend", "qemu", "--vm-image", &image_dir]);
    let _cleanup = remove_all(&d);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    d.docker_ok(&["run", "-d", "-t", "--name", "vm", &image, "sh"]);
    let out = d.docker(&["exec", "vm", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".into(), "err\n".into())
    );
    let out = d.docker(&["exec", "vm", "nope"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stdout));
    let out = d.docker_with_input(&["exec", "-i", "vm", "wc", "-l"], b"a\nb\n");
    assert_eq!(text(&out.stdout).trim(), "2", "{}", text(&out.stderr));
    let out = d.docker_with_input(&["run", "-i", "--rm", &image, "cat"], b"hi\n");
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    let (code, v) = d.api("POST", "/containers/vm/resize?h=12&w=34", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        d.docker_ok(&["exec", "vm", "sh", "-c", "stty -F /dev/pts/0 size"]),
        "12 34\n"
    );
    let (out, code) = d.in_pty(
        "stty rows 21 cols 71; docker exec -it vm sh",
        b"stty size; exit 7\n",
        Duration::from_secs(3),
    );
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("21 71\r\n"), "{out:?}");
}
