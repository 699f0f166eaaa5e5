//! The real `docker` CLI against a real berthd for the operations on a container beyond its
//! lifecycle: pause/unpause, top, stats, rename, diff, export. Runs on the direct backend, and
//! with BERTH_TEST_BACKEND=qemu on the core in the VM (scripts/test runs both).

mod harness;

use std::io::Read;
use std::process::Command;

use harness::{fixtures, Berthd};
use serde_json::Value;

fn busybox() -> String {
    format!("{}/berth/busybox:latest", fixtures()["BERTH_FIX_OPEN"])
}

fn inspect(d: &Berthd, name: &str) -> Value {
    let v: Value = serde_json::from_str(&d.docker_ok(&["inspect", name])).unwrap();
    v[0].clone()
}

/// Runs docker expecting it to fail; returns its stderr.
fn docker_err(d: &Berthd, args: &[&str]) -> String {
    let out = d.docker(args);
    assert!(
        !out.status.success(),
        "docker {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn pause_unpause_top_and_rename() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let id = d
        .docker_ok(&["run", "-d", "--name", "pa1", &image, "sleep", "1000"])
        .trim()
        .to_string();

    // top: ps -ef's columns, the container's process.
    let out = d.docker_ok(&["top", "pa1"]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
        "{out}"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(rows[0].starts_with("root "), "{out}");
    assert!(rows[0].ends_with("sleep 1000"), "{out}");
    let pid = inspect(&d, "pa1")["State"]["Pid"]
        .as_u64()
        .unwrap()
        .to_string();
    assert_eq!(
        rows[0].split_whitespace().nth(1),
        Some(pid.as_str()),
        "{out}"
    );
    let (code, v) = d.api("GET", "/containers/pa1/top", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Titles"][7], "CMD");
    assert_eq!(v["Processes"][0][7], "sleep 1000");

    // pause: frozen, shown as paused; twice is dockerd's conflict.
    d.docker_ok(&["pause", "pa1"]);
    let s = &inspect(&d, "pa1")["State"];
    assert_eq!(s["Status"], "paused", "{s}");
    assert_eq!(s["Paused"], true);
    assert_eq!(s["Running"], true);
    let status = d.docker_ok(&["ps", "--filter", "name=pa1", "--format", "{{.Status}}"]);
    assert!(status.trim().ends_with("(Paused)"), "{status}");
    let err = docker_err(&d, &["pause", "pa1"]);
    assert!(
        err.contains(&format!("Container {id} is already paused")),
        "{err}"
    );
    d.docker_ok(&["unpause", "pa1"]);
    assert_eq!(inspect(&d, "pa1")["State"]["Status"], "running");
    let err = docker_err(&d, &["unpause", "pa1"]);
    assert!(
        err.contains(&format!("Container {id} is not paused")),
        "{err}"
    );
    d.docker_ok(&["exec", "pa1", "true"]);

    // stop of a paused container stops it (thawed after the signal, killed at the timeout).
    d.docker_ok(&["pause", "pa1"]);
    d.docker_ok(&["stop", "-t", "1", "pa1"]);
    let s = &inspect(&d, "pa1")["State"];
    assert_eq!(s["Status"], "exited", "{s}");
    assert_eq!(s["Paused"], false);

    // Not running: pause, unpause and top refuse as dockerd does.
    let err = docker_err(&d, &["pause", "pa1"]);
    assert!(
        err.contains(&format!("Container {id} is not running")),
        "{err}"
    );
    let err = docker_err(&d, &["unpause", "pa1"]);
    assert!(
        err.contains(&format!("Container {id} is not paused")),
        "{err}"
    );
    let err = docker_err(&d, &["top", "pa1"]);
    assert!(
        err.contains(&format!("Container {id} is not running")),
        "{err}"
    );
    let (code, _) = d.api("POST", "/containers/pa1/pause", None);
    assert_eq!(code, 409);

    // kill of a paused container.
    d.docker_ok(&["run", "-d", "--name", "pa2", &image, "sleep", "1000"]);
    d.docker_ok(&["pause", "pa2"]);
    d.docker_ok(&["kill", "pa2"]);
    d.docker_ok(&["wait", "pa2"]);
    let s = &inspect(&d, "pa2")["State"];
    assert_eq!(s["Status"], "exited", "{s}");
    assert_eq!(s["ExitCode"], 137, "{s}");

    // rename: to a taken name is dockerd's conflict; to a free one moves the name.
    let qid = inspect(&d, "pa2")["Id"].as_str().unwrap().to_string();
    let err = docker_err(&d, &["rename", "pa1", "pa2"]);
    assert!(
        err.contains(&format!(
            "Error when allocating new name: Conflict. The container name \"/pa2\" is already in use by container \"{qid}\""
        )),
        "{err}"
    );
    let err = docker_err(&d, &["rename", "pa1", "pa1"]);
    assert!(
        err.contains("Renaming a container with the same name as its current name"),
        "{err}"
    );
    let err = docker_err(&d, &["rename", "pa1", "bad/name"]);
    assert!(err.contains("Invalid container name"), "{err}");
    let err = docker_err(&d, &["rename", "nosuch", "x"]);
    assert!(err.contains("No such container: nosuch"), "{err}");
    d.docker_ok(&["rename", "pa1", "renamed"]);
    assert_eq!(inspect(&d, &id)["Name"], "/renamed");
    assert!(!d.docker(&["inspect", "pa1"]).status.success());
    let names = d.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, ["pa2", "renamed"]);
    // The old name is free again; the renamed container starts under its new name.
    d.docker_ok(&["create", "--name", "pa1", &image, "true"]);
    d.docker_ok(&["start", "renamed"]);
    assert_eq!(inspect(&d, "renamed")["State"]["Status"], "running");
    d.docker_ok(&["rm", "-f", "renamed", "pa2", "pa1"]);
}

#[test]
fn stats_show_memory_cpu_and_pids_from_the_cgroup() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "st1",
        "-m",
        "64m",
        "--pids-limit",
        "50",
        &image,
        "sleep",
        "1000",
    ]);

    let out = d.docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}}|{{.MemUsage}}|{{.CPUPerc}}|{{.PIDs}}",
        "st1",
    ]);
    let f: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(f.len(), 4, "{out}");
    assert_eq!(f[0], "st1");
    let (usage, limit) = f[1].split_once(" / ").expect("usage / limit");
    assert_eq!(limit, "64MiB", "{out}");
    assert!(!usage.starts_with("0B"), "memory usage is not zero: {out}");
    assert!(f[2].ends_with('%'), "{out}");
    assert_eq!(f[3], "1", "{out}");

    // The API's own shape: two samples a second apart (precpu is the earlier one).
    let (code, v) = d.api("GET", "/containers/st1/stats?stream=false", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["name"], "/st1");
    assert_eq!(v["memory_stats"]["limit"], 64 << 20, "{v}");
    assert!(v["memory_stats"]["usage"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v["memory_stats"]["stats"].as_object().unwrap().len() > 3,
        "{v}"
    );
    assert_eq!(v["pids_stats"]["current"], 1, "{v}");
    assert_eq!(v["pids_stats"]["limit"], 50, "{v}");
    let sys = v["cpu_stats"]["system_cpu_usage"].as_u64().unwrap();
    let presys = v["precpu_stats"]["system_cpu_usage"].as_u64().unwrap();
    assert!(presys > 0 && sys > presys, "{v}");
    assert!(v["cpu_stats"]["online_cpus"].as_u64().unwrap() >= 1, "{v}");
    assert_ne!(v["preread"], "0001-01-01T00:00:00Z");
    assert!(v["networks"]["eth0"]["rx_bytes"].is_u64(), "{v}");
    assert!(v["networks"].get("lo").is_none(), "{v}");

    let (code, v) = d.api(
        "GET",
        "/containers/st1/stats?stream=false&one-shot=true",
        None,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["preread"], "0001-01-01T00:00:00Z");
    assert_eq!(v["precpu_stats"]["cpu_usage"]["total_usage"], 0);
    assert_eq!(v["memory_stats"]["limit"], 64 << 20, "{v}");

    // The stream: each sample carries the one before as precpu. curl stops reading after a
    // while; what it got is checked, not how long it took.
    let out = Command::new("curl")
        .args(["-sN", "--max-time", "4", "--unix-socket"])
        .arg(&d.socket)
        .arg("http://berth/containers/st1/stats")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let samples: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(samples.len() >= 2, "{text}");
    for w in samples.windows(2) {
        assert_eq!(
            w[1]["precpu_stats"]["cpu_usage"]["total_usage"],
            w[0]["cpu_stats"]["cpu_usage"]["total_usage"]
        );
        assert_eq!(w[1]["preread"], w[0]["read"]);
    }

    // A stopped container has empty stats, as dockerd.
    d.docker_ok(&["kill", "st1"]);
    d.docker_ok(&["wait", "st1"]);
    let (code, v) = d.api("GET", "/containers/st1/stats?stream=false", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["read"], "0001-01-01T00:00:00Z");
    let out = d.docker_ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "st1"]);
    assert_eq!(out.trim(), "0B / 0B");
    let (code, _) = d.api("GET", "/containers/nosuch/stats?stream=false", None);
    assert_eq!(code, 404);
}

/// The tar's entries by name: (type, mode, uid, link target, contents).
fn read_tar(path: &std::path::Path) -> Vec<(String, tar::EntryType, u32, u64, String, Vec<u8>)> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let h = e.header().clone();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((
            name.trim_end_matches('/').to_string(),
            h.entry_type(),
            h.mode().unwrap() & 0o7777,
            h.uid().unwrap(),
            link,
            data,
        ));
    }
    out
}

#[test]
fn diff_and_export_of_stopped_and_running_containers() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);
    let script = "mkdir /data && echo hello > /data/new.txt && chmod 640 /data/new.txt \
        && chown 1000:1000 /data/new.txt && ln -s new.txt /data/link && ln /data/new.txt /data/hard \
        && echo extra >> /etc/passwd && rm /etc/group";
    d.docker_ok(&["run", "--name", "ex1", &image, "sh", "-c", script]);

    let out = d.docker_ok(&["diff", "ex1"]);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(
        got,
        [
            "A /data",
            "A /data/hard",
            "A /data/link",
            "A /data/new.txt",
            "C /etc",
            "D /etc/group",
            "C /etc/passwd",
        ],
        "{out}"
    );
    let (code, v) = d.api("GET", "/containers/ex1/changes", None);
    assert_eq!(code, 200);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|c| c["Path"] == "/etc/group" && c["Kind"] == 2),
        "{v}"
    );
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["Path"] == "/etc" && c["Kind"] == 0));
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["Path"] == "/data" && c["Kind"] == 1));

    // Export of the stopped container: its merged tree with what it wrote.
    let tar_path = d.dir.path().join("ex1.tar");
    d.docker_ok(&["export", "-o", tar_path.to_str().unwrap(), "ex1"]);
    let entries = read_tar(&tar_path);
    let find = |n: &str| entries.iter().find(|e| e.0 == n);
    // Two names of one inode: the first in the archive is the file, the other a link to it.
    let new = entries
        .iter()
        .find(|e| e.0 == "data/new.txt" || e.0 == "data/hard")
        .unwrap();
    let (first, second) = if new.0 == "data/hard" {
        ("data/hard", "data/new.txt")
    } else {
        ("data/new.txt", "data/hard")
    };
    let f = find(first).unwrap();
    assert_eq!(f.1, tar::EntryType::Regular);
    assert_eq!((f.2, f.3), (0o640, 1000));
    assert_eq!(f.5, b"hello\n");
    let h = find(second).unwrap();
    assert_eq!((h.1, h.4.as_str()), (tar::EntryType::Link, first));
    let l = find("data/link").unwrap();
    assert_eq!((l.1, l.4.as_str()), (tar::EntryType::Symlink, "new.txt"));
    assert_eq!(find("data").unwrap().1, tar::EntryType::Directory);
    assert!(
        find("etc/group").is_none(),
        "deleted files are not exported"
    );
    let passwd = String::from_utf8_lossy(&find("etc/passwd").unwrap().5).into_owned();
    assert!(
        passwd.starts_with("root:x:0:0:") && passwd.ends_with("extra\n"),
        "{passwd}"
    );
    assert!(find("bin/sh").is_some());
    assert!(entries.iter().all(|e| !e.0.starts_with('/')));
    // Nothing stays mounted for the export.
    if !harness::skip_unless_direct("the host's mount table is the guest's on this backend") {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = d.data_root.display().to_string();
        assert!(
            !mounts
                .lines()
                .any(|l| l.contains(&root) && l.contains("export-")),
            "{mounts}"
        );
    }

    // A running container: its current tree, and its diff as it changes.
    d.docker_ok(&["run", "-d", "--name", "ex2", &image, "sleep", "1000"]);
    d.docker_ok(&[
        "exec",
        "ex2",
        "sh",
        "-c",
        "echo live > /tmp/live && rm /etc/passwd",
    ]);
    let out = d.docker_ok(&["diff", "ex2"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["C /etc", "D /etc/passwd", "C /tmp", "A /tmp/live"],
        "{out}"
    );
    let tar_path = d.dir.path().join("ex2.tar");
    d.docker_ok(&["export", "-o", tar_path.to_str().unwrap(), "ex2"]);
    let entries = read_tar(&tar_path);
    let live = entries.iter().find(|e| e.0 == "tmp/live").unwrap();
    assert_eq!(live.5, b"live\n");
    assert!(!entries.iter().any(|e| e.0 == "etc/passwd"));

    let none = d.dir.path().join("none.tar");
    let err = docker_err(&d, &["export", "-o", none.to_str().unwrap(), "nosuch"]);
    assert!(err.contains("No such container: nosuch"), "{err}");
    let err = docker_err(&d, &["diff", "nosuch"]);
    assert!(err.contains("No such container: nosuch"), "{err}");
    d.docker_ok(&["rm", "-f", "ex1", "ex2"]);
}

/// Polls inspect until `done` holds for the container's JSON (a generous limit: this waits for
/// the policy's back-off, it does not measure it).
fn inspect_until(d: &Berthd, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let v = inspect(d, name);
        if done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: never {what}: {}",
            v["State"]
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn restart_policies_are_applied_by_the_core() {
    let mut d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);

    // on-failure:2 restarts a failing container twice, then leaves it exited.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "fails",
        "--restart",
        "on-failure:2",
        &image,
        "sh",
        "-c",
        "exit 3",
    ]);
    let v = inspect_until(&d, "fails", "restarted twice and exited", |v| {
        v["RestartCount"] == 2 && v["State"]["Status"] == "exited"
    });
    assert_eq!(v["State"]["ExitCode"], 3);
    assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(v["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 2);

    // on-failure does not restart a clean exit; no policy restarts nothing.
    d.docker_ok(&[
        "run",
        "--name",
        "clean",
        "--restart",
        "on-failure",
        &image,
        "true",
    ]);
    let out = d.docker(&["run", "--name", "nopolicy", &image, "sh", "-c", "exit 1"]);
    assert_eq!(out.status.code(), Some(1));

    // always: a container that exits by itself comes back, again and again.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "always",
        "--restart",
        "always",
        &image,
        "sh",
        "-c",
        "sleep 0.2",
    ]);
    inspect_until(&d, "always", "restarted twice", |v| {
        v["RestartCount"].as_u64().unwrap() >= 2
    });
    // A user's stop is final for it.
    d.docker_ok(&["stop", "always"]);
    let count = inspect(&d, "always")["RestartCount"].clone();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let v = inspect(&d, "always");
    assert_eq!(v["State"]["Status"], "exited", "{}", v["State"]);
    assert_eq!(v["RestartCount"], count);
    // A user's start counts from zero again.
    d.docker_ok(&["start", "always"]);
    let v = inspect(&d, "always");
    assert_eq!(v["RestartCount"], 0, "{}", v["State"]);
    d.docker_ok(&["rm", "-f", "always"]);

    for (name, want) in [("clean", 0), ("nopolicy", 0)] {
        let v = inspect(&d, name);
        assert_eq!(v["RestartCount"], want, "{name}");
        assert_eq!(v["State"]["Status"], "exited", "{name}");
    }

    // unless-stopped: a kill by the user is a stop.
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "unless",
        "--restart",
        "unless-stopped",
        &image,
        "sleep",
        "1000",
    ]);
    d.docker_ok(&["kill", "unless"]);
    d.docker_ok(&["wait", "unless"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let v = inspect(&d, "unless");
    assert_eq!(v["State"]["Status"], "exited", "{}", v["State"]);
    assert_eq!(v["RestartCount"], 0);

    // always, after a core restart: a container whose process died while no core ran is
    // started again by the next core (killed from the host, so only on the direct backend).
    if harness::skip_unless_direct("the container's process is killed from the host") {
        return;
    }
    d.docker_ok(&[
        "run",
        "-d",
        "--name",
        "back",
        "--restart",
        "always",
        &image,
        "sleep",
        "1000",
    ]);
    let pid = inspect(&d, "back")["State"]["Pid"].as_u64().unwrap();
    d.shut_down();
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    d.restart();
    let v = inspect_until(&d, "back", "running again", |v| {
        v["State"]["Status"] == "running" && v["RestartCount"] == 1
    });
    assert_ne!(v["State"]["Pid"].as_u64().unwrap(), pid);
    d.docker_ok(&["rm", "-f", "back", "unless", "fails", "clean", "nopolicy"]);
}

/// Issue 3: the default seccomp profile is on (mode 2) and refuses what containers should not
/// do — here a new user namespace, which needs no capability, so only the filter stops it —
/// while `seccomp=unconfined`, `--privileged` and CAP_SYS_ADMIN give it back; a profile file
/// in Docker's format is applied; a broken one is a clear error and no container.
#[test]
fn the_default_seccomp_profile_refuses_new_namespaces() {
    let d = Berthd::start(&[]);
    let bb = busybox();
    d.docker_ok(&["pull", "-q", &bb]);
    let mode = "grep Seccomp: /proc/self/status";

    let out = d.docker_ok(&["run", "--rm", &bb, "sh", "-c", mode]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"]
    );
    let err = docker_err(&d, &["run", "--rm", &bb, "sh", "-c", "unshare -U true"]);
    assert!(err.contains("Operation not permitted"), "{err}");
    // Ordinary programs are unaffected: processes, pipes, files, a socket.
    let out = d.docker_ok(&[
        "run",
        "--rm",
        &bb,
        "sh",
        "-c",
        "echo hi | cat > /tmp/f && cat /tmp/f && nslookup localhost 127.0.0.1 >/dev/null 2>&1; echo done",
    ]);
    assert_eq!(out, "hi\ndone\n");

    let script = format!("{mode}; unshare -U true && echo allowed");
    for extra in [
        &["--security-opt", "seccomp=unconfined"][..],
        &["--privileged"][..],
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&bb, "sh", "-c", &script]);
        let out = d.docker_ok(&args);
        assert!(
            out.contains("Seccomp:\t0") && out.contains("allowed"),
            "{extra:?}: {out}"
        );
    }
    let out = d.docker_ok(&[
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        &bb,
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        out.contains("Seccomp:\t2") && out.contains("allowed"),
        "{out}"
    );

    // A profile file in Docker's format: everything allowed but mkdir, refused with EACCES.
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let err = docker_err(
        &d,
        &["run", "--rm", "--security-opt", &opt, &bb, "mkdir", "/x"],
    );
    assert!(err.contains("Permission denied"), "{err}");
    let out = d.docker_ok(&["run", "--rm", "--security-opt", &opt, &bb, "sh", "-c", mode]);
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // crun compiled each profile once; later containers get the kept program (crun's
    // `run.oci.seccomp_bpf_data`, docs/containers.md) and it refuses the same calls.
    let err = docker_err(
        &d,
        &["run", "--rm", "--security-opt", &opt, &bb, "mkdir", "/x"],
    );
    assert!(err.contains("Permission denied"), "{err}");
    if harness::test_backend() == "direct"
        && d.docker_ok(&["info", "-f", "{{.DefaultRuntime}}"]).trim() == "crun"
    {
        let kept = |extra: &[&str]| {
            let mut args = vec!["create"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&[&bb, "true"]);
            let id = d.docker_ok(&args).trim().to_string();
            let config = d
                .data_root
                .join("core/containers")
                .join(&id)
                .join("config.json");
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
            d.docker_ok(&["rm", &id]);
            v["annotations"]["run.oci.seccomp_bpf_data"]
                .as_str()
                .map(str::to_string)
        };
        let default = kept(&[]).expect("the default profile's program is kept");
        let custom = kept(&["--security-opt", &opt]).expect("the custom profile's too");
        assert_ne!(default, custom);
        assert_eq!(kept(&["--security-opt", "seccomp=unconfined"]), None);
    }

    std::fs::write(&profile, r#"{"syscalls": []}"#).unwrap();
    let before = d.docker_ok(&["ps", "-aq"]);
    let err = docker_err(&d, &["run", "--rm", "--security-opt", &opt, &bb, "true"]);
    assert!(err.contains("invalid seccomp profile"), "{err}");
    assert_eq!(d.docker_ok(&["ps", "-aq"]), before, "no container is left");
}

/// Issue 3: crun where it can run (on this hybrid-cgroup host too, without the unified
/// hierarchy: docs/containers.md "Which runtime"), and runc, the fallback, runs the same
/// containers: `BERTH_RUNTIME=runc` through run, exec, pause, stats, a memory limit and stop.
#[test]
fn crun_is_preferred_and_runc_still_runs_the_same_containers() {
    if harness::skip_unless_direct("the runtime choice of the host's core") {
        return;
    }
    let image = busybox();
    let crun_installed = Command::new("crun").arg("--version").output().is_ok();
    let d = Berthd::start(&[]);
    let default = d.docker_ok(&["info", "-f", "{{.DefaultRuntime}}"]);
    if crun_installed {
        assert_eq!(
            default.trim(),
            "crun",
            "crun is installed, so the core chose it"
        );
    }
    drop(d);

    let d = Berthd::start_with_env(&[], &[("BERTH_RUNTIME", "runc")]);
    assert_eq!(
        d.docker_ok(&["info", "-f", "{{.DefaultRuntime}}"]).trim(),
        "runc"
    );
    d.docker_ok(&["pull", "-q", &image]);
    let out = d.docker_ok(&["run", "--rm", &image, "echo", "through-runc"]);
    assert_eq!(out.trim(), "through-runc");
    d.docker_ok(&[
        "run", "-d", "--name", "rc1", "-m", "64m", &image, "sleep", "1000",
    ]);
    assert_eq!(d.docker_ok(&["exec", "rc1", "echo", "ok"]).trim(), "ok");
    d.docker_ok(&["pause", "rc1"]);
    assert_eq!(inspect(&d, "rc1")["State"]["Status"], "paused");
    d.docker_ok(&["unpause", "rc1"]);
    let mem = d.docker_ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "rc1"]);
    assert!(mem.contains("/ 64MiB"), "{mem}");
    d.docker_ok(&["stop", "-t", "1", "rc1"]);
    d.docker_ok(&["rm", "rc1"]);
}

/// Prints 1 to 400, a line each (the fixture's busybox has no `seq`).
const COUNT_TO_400: &str = "i=1; while [ $i -le 400 ]; do echo $i; i=$((i+1)); done";

/// Issue 3: logs are size-capped with rotation (json-file's `max-size`/`max-file`, 10 MiB × 3
/// by default): what `docker logs` shows is the newest lines, contiguous; `logs -f` follows
/// across rotations without a gap; bad options and other drivers are refused at create.
#[test]
fn logs_rotate_at_their_size_and_follow_across_rotations() {
    let d = Berthd::start(&[]);
    let image = busybox();
    d.docker_ok(&["pull", "-q", &image]);

    // 400 lines of ~70 bytes each into files of 2 KiB, two kept.
    d.docker_ok(&[
        "run",
        "--name",
        "rot1",
        "--log-opt",
        "max-size=2k",
        "--log-opt",
        "max-file=2",
        &image,
        "sh",
        "-c",
        COUNT_TO_400,
    ]);
    let c = inspect(&d, "rot1");
    assert_eq!(c["HostConfig"]["LogConfig"]["Type"], "json-file");
    assert_eq!(c["HostConfig"]["LogConfig"]["Config"]["max-size"], "2k");
    let out = d.docker_ok(&["logs", "rot1"]);
    let lines: Vec<u32> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        lines.len() < 100,
        "rotated away: {} lines kept",
        lines.len()
    );
    assert_eq!(*lines.last().unwrap(), 400);
    assert!(lines.windows(2).all(|w| w[1] == w[0] + 1), "{lines:?}");
    if harness::test_backend() == "direct" {
        let log = std::path::PathBuf::from(c["LogPath"].as_str().unwrap());
        let rotated =
            log.with_file_name(format!("{}.1", log.file_name().unwrap().to_string_lossy()));
        for f in [&log, &rotated] {
            let len = std::fs::metadata(f).unwrap().len();
            assert!(len > 0 && len <= 2048, "{}: {len} bytes", f.display());
        }
        assert!(!log.with_extension("log.2").exists());
    }
    // The default keeps everything this small.
    d.docker_ok(&["run", "--name", "rot2", &image, "sh", "-c", COUNT_TO_400]);
    assert_eq!(d.docker_ok(&["logs", "rot2"]).lines().count(), 400);

    // A follower started before the output (the container waits a little first) sees every
    // line across many rotations (~14 lines a file). It could only lose lines by falling more
    // than three files (~0.4 s) behind the writer, which a follower polling every 20 ms on a
    // busy machine does not.
    let id = d
        .docker_ok(&[
            "create", "--log-opt", "max-size=1k", "--log-opt", "max-file=4", &image, "sh", "-c",
            "sleep 1; i=1; while [ $i -le 300 ]; do echo $i; [ $((i % 10)) = 0 ] && sleep 0.1; i=$((i+1)); done",
        ])
        .trim()
        .to_string();
    d.docker_ok(&["start", &id]);
    let follower = d
        .docker_cmd(&["logs", "-f", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = follower.wait_with_output().unwrap();
    let followed: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(followed, (1..=300).collect::<Vec<u32>>());

    for (opts, says) in [
        (&["--log-opt", "max-size=10x"][..], "invalid max-size"),
        (
            &["--log-opt", "max-file=3"],
            "max-file can only be set when max-size is set",
        ),
        (
            &["--log-opt", "compress=true"],
            "unknown log opt 'compress'",
        ),
        (
            &["--log-driver", "syslog"],
            "logging driver \"syslog\" is not supported",
        ),
    ] {
        let mut args = vec!["create"];
        args.extend_from_slice(opts);
        args.push(&image);
        let err = docker_err(&d, &args);
        assert!(err.contains(says), "{opts:?}: {err}");
    }
}
