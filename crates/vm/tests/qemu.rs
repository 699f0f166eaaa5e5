//! The QEMU backend for real: builds (or reuses) the amd64 guest with `vm-image/build`, boots it,
//! speaks berth-proto to the core inside over hybrid vsock, stops it, and checks that nothing is
//! left running. Needs qemu-system-x86 and vhost-device-vsock, and about 10 s under TCG; gated
//! by BERTH_VM_TESTS=1 (scripts/test sets it).

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_proto::{
    client_handshake, read_frame, write_frame, Channel, Hello, Request, RequestFrame, Response,
    ResponseFrame, CORE_PORT,
};
use berth_vm::qemu::{GuestArch, QemuBackend, QemuConfig};
use berth_vm::{VmBackend, VmState};

/// One VM at a time: two cores, and both tests share the guest build.
static ONE_VM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Guest {
    kernel: PathBuf,
    initramfs: PathBuf,
}

fn require_gate() {
    if std::env::var("BERTH_VM_TESTS").as_deref() != Ok("1") {
        panic!(
            "the QEMU tests boot a real VM and are off by default. Run them with \
             `BERTH_VM_TESTS=1 cargo test -p berth-vm --test qemu` (needs qemu-system-x86, \
             `cargo install vhost-device-vsock`, and builds the guest with vm-image/build amd64)"
        );
    }
}

fn build_guest() -> Guest {
    build_guest_for("amd64")
}

fn build_guest_for(arch: &str) -> Guest {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vm-image/build");
    let started = Instant::now();
    let out = Command::new(&script)
        .arg(arch)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "vm-image/build {arch} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("vm-image/build {arch}: {:?}", started.elapsed());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("vm-image/build printed no {name}=: {stdout}"))
    };
    Guest {
        kernel: field("kernel"),
        initramfs: field("initramfs"),
    }
}

/// Processes whose command line mentions `needle` (the test's own state directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

async fn ping(backend: &QemuBackend) -> Duration {
    let started = Instant::now();
    let mut s = backend.dial(CORE_PORT).await.expect("dial the core");
    let software = client_handshake(&mut s, &Hello::new("berth-vm test", Channel::Control))
        .await
        .expect("handshake with the core in the guest");
    assert!(software.starts_with("berth-core"), "{software}");
    write_frame(
        &mut s,
        &RequestFrame {
            id: 7,
            request: Request::Ping,
        },
    )
    .await
    .unwrap();
    let reply: ResponseFrame = read_frame(&mut s).await.unwrap();
    assert_eq!(reply.id, 7);
    assert!(
        matches!(reply.result, Ok(Response::Pong)),
        "{:?}",
        reply.result
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_the_guest_and_pings_the_core_over_vsock() {
    require_gate();
    let _one = ONE_VM.lock().await;
    let guest = build_guest();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_string();
    let mut config = QemuConfig::new(
        GuestArch::Amd64,
        guest.kernel,
        guest.initramfs,
        state.path().join("vm"),
    );
    config.memory_mib = 512;
    config.data_disk_size = 1 << 30;
    let backend = QemuBackend::new(config);

    for boot in ["first boot (formats the disk)", "second boot"] {
        let started = Instant::now();
        if let Err(e) = backend.start().await {
            panic!("{boot}: {e}");
        }
        let report = backend.last_boot().unwrap();
        eprintln!(
            "{boot}: start() {:?}, QEMU to the core's announcement {:?}, to handshake {:?}, {} ({})",
            started.elapsed(),
            report.to_ready,
            report.to_handshake,
            report.accelerator.accelerator,
            report.accelerator.reason
        );
        assert_eq!(backend.state(), VmState::Running);
        let rtt = ping(&backend).await;
        eprintln!("{boot}: dial + hello + ping {rtt:?}");
        assert_eq!(backend.pids().len(), 2);

        let stopping = Instant::now();
        backend.stop().await.unwrap();
        eprintln!("{boot}: stop {:?}", stopping.elapsed());
        assert_eq!(backend.state(), VmState::Stopped);
        let console = backend.console_tail(5);
        assert!(
            console.contains("berth-core exited with status 0"),
            "the guest did not stop cleanly:\n{console}"
        );
        let left = processes_mentioning(&state_dir);
        assert!(left.is_empty(), "processes left behind: {left:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_qemu_is_reported_with_the_console() {
    require_gate();
    let _one = ONE_VM.lock().await;
    let guest = build_guest();
    let state = tempfile::tempdir().unwrap();
    let mut config = QemuConfig::new(
        GuestArch::Amd64,
        guest.kernel,
        guest.initramfs,
        state.path().join("vm"),
    );
    config.memory_mib = 512;
    config.data_disk_size = 1 << 30;
    let backend = QemuBackend::new(config);
    backend.start().await.expect("start");
    let qemu_pid = *backend.pids().first().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let state_now = loop {
        let s = backend.state();
        if matches!(s, VmState::Failed(_)) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match &state_now {
        VmState::Failed(why) => {
            assert!(why.contains("QEMU exited"), "{why}");
            assert!(why.contains("berth-core"), "no console tail in: {why}");
        }
        other => panic!("expected a failed machine, got {other}"),
    }
    backend.stop().await.unwrap();
    let left = processes_mentioning(state.path().to_str().unwrap());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

/// The arm64 guest (Debian's arm64 kernel, the aarch64 musl core, crun) under
/// `qemu-system-aarch64 -M virt` with TCG emulating the CPU: far enough that the core answers
/// the handshake and a ping, then a clean power-off (the GPIO power key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_the_arm64_guest_to_the_handshake() {
    require_gate();
    let _one = ONE_VM.lock().await;
    let guest = build_guest_for("arm64");
    assert!(
        guest.kernel.ends_with("Image"),
        "the uncompressed Image Virtualization.framework also boots: {}",
        guest.kernel.display()
    );
    let state = tempfile::tempdir().unwrap();
    let mut config = QemuConfig::new(
        GuestArch::Arm64,
        guest.kernel,
        guest.initramfs,
        state.path().join("vm"),
    );
    config.memory_mib = 512;
    config.data_disk_size = 1 << 30;
    config.start_timeout = Duration::from_secs(120);
    let backend = QemuBackend::new(config);
    let started = Instant::now();
    if let Err(e) = backend.start().await {
        panic!("arm64 boot: {e}");
    }
    let report = backend.last_boot().unwrap();
    eprintln!(
        "arm64: start() {:?}, to the core's announcement {:?}, to handshake {:?}, {}",
        started.elapsed(),
        report.to_ready,
        report.to_handshake,
        report.accelerator.accelerator
    );
    let rtt = ping(&backend).await;
    eprintln!("arm64: dial + hello + ping {rtt:?}");
    backend.stop().await.unwrap();
    let console = backend.console_tail(5);
    assert!(
        console.contains("berth-core exited with status 0"),
        "the arm64 guest did not stop cleanly:\n{console}"
    );
    let left = processes_mentioning(state.path().to_str().unwrap());
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}
