//! Faults of the VM, through the qemu backend under TCG with the real docker CLI: QEMU killed,
//! the vsock helper killed, a guest kernel panic, the core killed inside the guest, a full data
//! disk. Each is detected, reported (`/info`, `GET /berth/v1/engine`) and recovered from without
//! losing images or container records; no process is left behind.

mod harness;

use std::time::{Duration, Instant};

use harness::{fixtures, guest_image, Berthd};
use serde_json::Value;

/// One VM at a time: two cores do not boot two guests under TCG in good time.
static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn vm_berthd(extra: &[&str]) -> Berthd {
    let image_dir = guest_image().display().to_string();
    let mut args = vec![
        "--backend",
        "qemu",
        "--vm-image",
        &image_dir,
        "--vm-memory",
        "512",
    ];
    args.extend_from_slice(extra);
    Berthd::start(&args)
}

/// `GET /berth/v1/engine` over berthd's socket.
fn engine(d: &Berthd) -> Value {
    let (code, v) = d.api("GET", "/berth/v1/engine", None);
    assert_eq!(code, 200, "{v}");
    v
}

/// Waits until the engine has been restarted `restarts` times and its core answers again.
fn wait_recovered(d: &Berthd, restarts: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let e = engine(d);
        if e["Health"]["Restarts"].as_u64() == Some(restarts)
            && e["State"] == "running"
            && e["Core"]["Software"].is_string()
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "the engine did not come back: {e:#}\nberthd log:\n{}",
            std::fs::read_to_string(d.dir.path().join("berthd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Pids of processes whose command line mentions `needle` (this test's state directory).
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let zombie = stat.rsplit_once(')')?.1.trim_start().starts_with('Z');
            (!zombie && cmd.contains(needle)).then_some((pid, cmd))
        })
        .collect()
}

fn pid_of(d: &Berthd, program: &str) -> i32 {
    let state = d.data_root.join("vm");
    let found: Vec<_> = processes_mentioning(state.to_str().unwrap())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(program))
        .collect();
    assert_eq!(found.len(), 1, "one {program} for this machine: {found:#?}");
    found[0].0
}

/// After a recovery there is exactly one QEMU and one helper for the machine, and after
/// berthd stops, none.
fn check_no_orphans(d: &mut Berthd) {
    pid_of(d, "qemu-system");
    pid_of(d, "vhost-device-vsock");
    d.shut_down();
    let state = d.data_root.join("vm");
    let left = processes_mentioning(state.to_str().unwrap());
    assert!(
        left.is_empty(),
        "left behind after berthd stopped: {left:#?}"
    );
}

/// An image and a stopped container whose records must survive every fault.
fn committed_data(d: &Berthd) -> (String, String) {
    let busybox = format!("{}/berth/busybox:latest", fixtures()["BERTH_FIX_OPEN"]);
    d.docker_ok(&["pull", "-q", &busybox]);
    let id = d.docker_ok(&["run", "-d", &busybox, "sh", "-c", "echo before; exit 7"]);
    let id = id.trim().to_string();
    assert_eq!(d.docker_ok(&["wait", &id]).trim(), "7");
    (busybox, id)
}

fn check_committed_data(d: &Berthd, busybox: &str, id: &str) {
    check_records(d, busybox, id);
    // And the engine works: a new container runs.
    let out = d.docker_ok(&["run", "--rm", busybox, "echo", "after"]);
    assert_eq!(out, "after\n");
}

fn check_records(d: &Berthd, busybox: &str, id: &str) {
    let images = d.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains(busybox), "{images}");
    let state = d.docker_ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        id,
    ]);
    assert_eq!(state.trim(), "exited 7");
    assert_eq!(d.docker_ok(&["logs", id]), "before\n");
}

/// Magic SysRq `key` from a privileged container (it may write /proc/sysrq-trigger). Whatever
/// the key does to the machine, the docker command's own fate does not matter.
fn sysrq(d: &Berthd, busybox: &str, key: char) {
    let _ = d.docker(&[
        "run",
        "--rm",
        "--privileged",
        busybox,
        "sh",
        "-c",
        &format!("echo {key} > /proc/sysrq-trigger"),
    ]);
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[test]
fn qemu_killed_is_restarted_and_keeps_the_data() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = vm_berthd(&[]);
    let (busybox, id) = committed_data(&d);
    kill9(pid_of(&d, "qemu-system"));
    let e = wait_recovered(&d, 1);
    let why = e["Health"]["LastFailure"].as_str().unwrap();
    assert!(why.contains("QEMU exited"), "{why}");
    assert!(why.contains("signal: 9"), "{why}");
    // /info carries it too (the docker CLI drops fields it does not know: ask directly).
    let (_, info) = d.api("GET", "/info", None);
    assert_eq!(info["Berth"]["Health"]["Restarts"], 1, "{info:#}");
    check_committed_data(&d, &busybox, &id);
    check_no_orphans(&mut d);
}

#[test]
fn vsock_helper_killed_is_restarted_and_keeps_the_data() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = vm_berthd(&[]);
    let (busybox, id) = committed_data(&d);
    kill9(pid_of(&d, "vhost-device-vsock"));
    let e = wait_recovered(&d, 1);
    let why = e["Health"]["LastFailure"].as_str().unwrap();
    assert!(why.contains("vsock helper exited"), "{why}");
    check_committed_data(&d, &busybox, &id);
    check_no_orphans(&mut d);
}

#[test]
fn a_guest_kernel_panic_is_reported_with_the_console_and_recovered() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = vm_berthd(&[]);
    let (busybox, id) = committed_data(&d);
    // A privileged container can write to /proc/sysrq-trigger: `c` crashes the kernel. The
    // docker command itself loses its connection with the machine.
    sysrq(&d, &busybox, 'c');
    let e = wait_recovered(&d, 1);
    let why = e["Health"]["LastFailure"].as_str().unwrap();
    assert!(why.contains("the guest kernel panicked"), "{why}");
    assert!(
        why.contains("sysrq triggered crash"),
        "the panic's own line: {why}"
    );
    check_committed_data(&d, &busybox, &id);
    check_no_orphans(&mut d);
}

#[test]
fn the_core_killed_in_the_guest_is_started_again_by_init() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = vm_berthd(&[]);
    let (busybox, id) = committed_data(&d);
    // `i` sends SIGKILL to every process but PID 1: the core, the shims, this container.
    sysrq(&d, &busybox, 'i');
    // The machine stays up (no restart by berthd); the guest's init starts a new core and the
    // control connection is dialled again.
    let e = wait_recovered(&d, 0);
    assert!(e["Health"]["LastFailure"].is_null(), "{e:#}");
    check_committed_data(&d, &busybox, &id);
    // The power button still works after the restart: berthd's stop is a clean power-off.
    let console = d.data_root.join("vm/console.log");
    check_no_orphans(&mut d);
    let console = std::fs::read_to_string(console).unwrap_or_default();
    assert!(
        console.contains("starting it again"),
        "init restarted the core:\n{console}"
    );
    assert!(
        console.contains("power button pressed"),
        "a clean power-off:\n{console}"
    );
}

#[test]
fn a_full_data_disk_refuses_cleanly_and_recovers_when_space_is_freed() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = vm_berthd(&["--vm-disk", "1"]);
    let (busybox, id) = committed_data(&d);
    let big = format!("{}/berth/layers:latest", fixtures()["BERTH_FIX_OPEN"]);
    // Fill the disk from a container's writable layer (it lives on the data disk).
    let fill = d.docker(&[
        "run",
        "--name",
        "filler",
        &busybox,
        "dd",
        "if=/dev/zero",
        "of=/fill",
        "bs=1M",
    ]);
    assert!(!fill.status.success(), "dd must hit the end of the disk");
    // Its message may be lost: the container's log lives on the same full disk.
    let code = d.docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", "filler"]);
    assert_eq!(code.trim(), "1", "dd failed");

    let pull = d.docker(&["pull", &big]);
    assert!(!pull.status.success(), "a pull onto a full disk fails");
    let err = String::from_utf8_lossy(&pull.stderr);
    assert!(
        err.contains("No space left on device") || err.contains("no space"),
        "{err}"
    );
    let images = d.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!images.contains(&big), "no half image: {images}");
    // A new container cannot get its writable layer: refused, and nothing half-made is kept.
    let before = d.docker_ok(&["ps", "-aq"]);
    let run = d.docker(&["run", "--rm", &busybox, "echo", "after"]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        d.docker_ok(&["ps", "-aq"]),
        before,
        "no half-made container"
    );
    check_records(&d, &busybox, &id);

    d.docker_ok(&["rm", "filler"]);
    d.docker_ok(&["pull", "-q", &big]);
    let images = d.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains(&big), "{images}");
    check_committed_data(&d, &busybox, &id);
    check_no_orphans(&mut d);
}

/// Issue 5: a settings edit of `vm` answers `restartRequired`; `POST
/// /berth/v1/engine/restart-vm` stops the containers as `docker stop` does, restarts the VM with
/// the new memory and a bigger data disk (the guest's file system grows), and keeps the data. A
/// smaller disk is refused before anything stops.
#[test]
fn vm_settings_apply_on_a_vm_restart() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let conf = tempfile::tempdir().unwrap();
    let settings = conf.path().join("settings.json");
    let mut d = vm_berthd(&["--vm-disk", "1", "--settings", settings.to_str().unwrap()]);
    let (busybox, id) = committed_data(&d);
    let kib = |d: &Berthd, cmd: &str| -> u64 {
        let out = d.docker_ok(&["run", "--rm", &busybox, "sh", "-c", cmd]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{cmd}: {out:?}"))
    };
    let memory = "awk '/MemTotal/ {print $2}' /proc/meminfo";
    // The container's root is on the data disk.
    let disk = "df -k / | awk 'NR == 2 {print $2}'";
    let (mem0, disk0) = (kib(&d, memory), kib(&d, disk));
    assert!(mem0 < 512 << 10 && disk0 < 1 << 20, "{mem0} {disk0}");

    let (code, headers, _) = d.api_h("GET", "/berth/v1/settings", &[], None);
    assert_eq!(code, 200);
    let patch = r#"{"vm": {"memory": 768, "disk": 2}}"#;
    let (code, _, body) = d.api_h(
        "PATCH",
        "/berth/v1/settings",
        &[("If-Match", &headers["etag"])],
        Some(patch),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["restartRequired"],
        serde_json::json!(["vm.memory", "vm.disk"])
    );
    assert!(
        body["message"].as_str().unwrap().contains("restart-vm"),
        "{body}"
    );

    // A container that says how it was stopped.
    let waiter = d.docker_ok(&[
        "run",
        "-d",
        &busybox,
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 1; done",
    ]);
    let (code, answer) = d.api("POST", "/berth/v1/engine/restart-vm", None);
    assert_eq!(code, 200, "{answer}\n{}", d.log());
    assert_eq!(answer["Resources"]["MemoryMiB"], 768, "{answer}");
    assert_eq!(answer["Resources"]["DiskGiB"], 2, "{answer}");
    let stopped = d.docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", waiter.trim()]);
    assert_eq!(
        stopped.trim(),
        "42",
        "the container got its stop signal first"
    );
    let (mem1, disk1) = (kib(&d, memory), kib(&d, disk));
    assert!(mem1 > mem0 + (200 << 10), "memory {mem0} -> {mem1} KiB");
    assert!(disk1 > disk0 + (800 << 10), "disk {disk0} -> {disk1} KiB");
    assert_eq!(engine(&d)["Resources"]["MemoryMiB"], 768);
    check_records(&d, &busybox, &id);

    // The disk cannot shrink: refused, and the VM keeps running untouched.
    let (_, headers, _) = d.api_h("GET", "/berth/v1/settings", &[], None);
    let (code, _, body) = d.api_h(
        "PATCH",
        "/berth/v1/settings",
        &[("If-Match", &headers["etag"])],
        Some(r#"{"vm": {"disk": 1}}"#),
    );
    assert_eq!(code, 200, "{body}");
    let running = d.docker_ok(&["run", "-d", &busybox, "sleep", "600"]);
    let (code, answer) = d.api("POST", "/berth/v1/engine/restart-vm", None);
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("cannot shrink"),
        "{answer}"
    );
    let state = d.docker_ok(&["inspect", "--format", "{{.State.Running}}", running.trim()]);
    assert_eq!(state.trim(), "true", "a refused restart stops nothing");
    d.docker_ok(&["rm", "-f", running.trim()]);
    check_no_orphans(&mut d);
}
