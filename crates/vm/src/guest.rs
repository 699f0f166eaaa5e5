//! What every VM backend does the same way with the guest from `vm-image/`, whatever the host:
//! the kernel command line, the sparse data disk, the console log's tail, and the boot handshake
//! (the core announces itself on [`READY_PORT`], then answers a control hello on [`CORE_PORT`]).
//!
//! Platform-independent and tested on Linux; the QEMU, Virtualization.framework and Hyper-V
//! backends build on it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_proto::{Channel, Hello, CORE_PORT, READY_LINE, READY_PORT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::{BoxFuture, BoxStream, GuestListener, VmError};

/// The size a data disk is created at unless the settings say otherwise (sparse: it takes no
/// space until the guest writes).
pub const DEFAULT_DATA_DISK_SIZE: u64 = 64 << 30;

/// The guest's kernel command line: its console device, then Berth's fixed options, then
/// `extra` (e.g. `berth.log=debug`, `berth.disk=/dev/sda`).
///
/// `quiet` keeps the boot short on a slow serial console; `panic=-1` reboots at once on a panic,
/// which every backend turns into a machine that ended (QEMU's `-no-reboot`, HCS's
/// `StopOnReset`; Virtualization.framework stops the machine on a guest reset).
pub fn kernel_cmdline(console: &str, extra: &[String]) -> String {
    let mut line = format!("console={console} quiet panic=-1");
    for arg in extra {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// Creates the raw data disk at `path` when it is missing: a sparse file of `size` bytes (no
/// `qemu-img` needed; the guest's init formats it on first boot). Returns whether it was created.
pub fn ensure_sparse_disk(path: &Path, size: u64) -> Result<bool, VmError> {
    if let Ok(meta) = std::fs::metadata(path) {
        // A bigger size asked for since: the file grows (sparse), the guest's init grows the
        // file system at boot. Never shrinks.
        if meta.len() < size {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(size))
                .map_err(|source| VmError::Io {
                    context: format!("growing the data disk {}", path.display()),
                    source,
                })?;
        }
        return Ok(false);
    }
    let io = |source| VmError::Io {
        context: format!("creating the data disk {}", path.display()),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let f = File::create_new(path).map_err(io)?;
    f.set_len(size).map_err(io)?;
    Ok(true)
}

/// The last `lines` non-empty lines of a log file (the guest's console), with terminal control
/// sequences and other non-printable bytes removed. Never fails: a missing or empty file says so.
pub fn console_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 16 << 10;
    let Ok(mut f) = File::open(path) else {
        return format!("({} is missing)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = strip_control(&String::from_utf8_lossy(&bytes));
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if all.is_empty() {
        return format!("({} is empty)", path.display());
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The guest kernel's panic line (`Kernel panic - not syncing: …`) in the console log, if the
/// kernel panicked: the stack trace after it pushes it out of any short tail.
pub fn kernel_panic(console: &Path) -> Option<String> {
    const WINDOW: u64 = 256 << 10;
    let mut f = File::open(console).ok()?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    f.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    let text = strip_control(&String::from_utf8_lossy(&bytes));
    let line = text.lines().rev().find(|l| l.contains("Kernel panic - "))?;
    // Without the `[   9.41]` timestamp.
    let line = line.find("Kernel panic - ").map_or(line, |i| &line[i..]);
    Some(line.trim().to_string())
}

fn strip_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // ESC [ params final-byte, or ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Reads the core's announcement from a connection the guest opened to [`READY_PORT`].
pub async fn read_ready_line<S: AsyncRead + Unpin>(s: S) -> Result<(), String> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        s.take(READY_LINE.len() as u64).read_to_end(&mut line),
    )
    .await;
    match read {
        Ok(Ok(_)) if line == READY_LINE.as_bytes() => Ok(()),
        Ok(Ok(_)) => Err(format!("it said {:?}", String::from_utf8_lossy(&line))),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("it said nothing within 2 s".into()),
    }
}

/// One control-channel hello on a fresh connection to the core.
pub async fn control_hello<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<(), String> {
    let hello = Hello::new(
        concat!("berth-vm ", env!("CARGO_PKG_VERSION")),
        Channel::Control,
    );
    berth_proto::client_handshake(s, &hello)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How long a boot took, from starting the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimes {
    /// To the core's announcement on [`READY_PORT`].
    pub to_ready: Duration,
    /// To the core's answer to the hello on [`CORE_PORT`].
    pub to_handshake: Duration,
}

/// Waits for the core of a machine started at `started`: first its announcement through `ready`
/// (a listener on [`READY_PORT`] opened before the machine started; the host dials nothing before
/// it, because a connection sent before the guest's vsock driver is up can be lost), then a
/// control hello answered over `dial` (a connection to [`CORE_PORT`]), retried every 50 ms.
///
/// `failed` is polled throughout: `Some(why)` (the machine stopped, say) ends the wait with `why`.
/// The error text of a timeout names the phase and the last error; the caller adds the console.
pub async fn wait_for_core<'a, D, F>(
    ready: &mut GuestListener,
    mut dial: D,
    mut failed: F,
    started: Instant,
    timeout: Duration,
) -> Result<BootTimes, String>
where
    D: FnMut() -> BoxFuture<'a, Result<BoxStream, VmError>>,
    F: FnMut() -> Option<String>,
{
    let deadline = started + timeout;
    let to_ready = loop {
        if let Some(why) = failed() {
            return Err(why);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "berth-core did not announce itself on vsock port {READY_PORT} within {timeout:?}"
            ));
        }
        match tokio::time::timeout(Duration::from_millis(100), ready.accept()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                return Err(format!(
                    "waiting for the guest on vsock port {READY_PORT}: {e}"
                ))
            }
            Ok(Ok(s)) => match read_ready_line(s).await {
                Ok(()) => break started.elapsed(),
                Err(e) => {
                    tracing::warn!("ignoring a guest connection on port {READY_PORT}: {e}")
                }
            },
        }
    };
    loop {
        if let Some(why) = failed() {
            return Err(why);
        }
        let attempt = async {
            let mut s = dial().await.map_err(|e| e.to_string())?;
            control_hello(&mut s).await
        };
        let last_error = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(())) => {
                return Ok(BootTimes {
                    to_ready,
                    to_handshake: started.elapsed(),
                })
            }
            Ok(Err(e)) => e,
            Err(_) => "the hello got no answer within 5 s".to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "berth-core did not answer on vsock port {CORE_PORT} within {timeout:?} (last \
                 error: {last_error})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The resources a backend will start its machine with, changed between starts.
pub struct ResourceCell(std::sync::Mutex<crate::Resources>);

impl ResourceCell {
    pub fn new(initial: crate::Resources) -> ResourceCell {
        ResourceCell(std::sync::Mutex::new(initial))
    }

    pub fn get(&self) -> crate::Resources {
        *self.0.lock().expect("resources lock")
    }

    /// Checks `new` (at least one CPU and 256 MiB; a data disk no smaller than the file at
    /// `disk`, if there is one) and keeps it for the next start.
    pub fn set(&self, new: crate::Resources, disk: &Path) -> Result<(), VmError> {
        if new.cpus == 0 {
            return Err(VmError::Invalid("a machine needs at least one CPU".into()));
        }
        if new.memory_mib < MIN_MEMORY_MIB {
            return Err(VmError::Invalid(format!(
                "a machine needs at least {MIN_MEMORY_MIB} MiB of memory (asked: {})",
                new.memory_mib
            )));
        }
        if let Ok(meta) = std::fs::metadata(disk) {
            if new.disk_bytes < meta.len() {
                return Err(VmError::Invalid(format!(
                    "the data disk {} is {} GiB and cannot shrink to {} GiB",
                    disk.display(),
                    meta.len() >> 30,
                    new.disk_bytes >> 30
                )));
            }
        }
        *self.0.lock().expect("resources lock") = new;
        Ok(())
    }
}

/// The least memory a machine is started with.
pub const MIN_MEMORY_MIB: u32 = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn cmdline_puts_the_console_first_and_extras_last() {
        assert_eq!(kernel_cmdline("hvc0", &[]), "console=hvc0 quiet panic=-1");
        assert_eq!(
            kernel_cmdline(
                "ttyS0",
                &["berth.disk=/dev/sda".into(), "berth.log=debug".into()]
            ),
            "console=ttyS0 quiet panic=-1 berth.disk=/dev/sda berth.log=debug"
        );
    }

    #[test]
    fn sparse_disk_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("sub/data.raw");
        assert!(ensure_sparse_disk(&disk, 1 << 30).unwrap());
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 30);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
            f.write_all(b"kept").unwrap();
        }
        assert!(!ensure_sparse_disk(&disk, 1 << 30).unwrap());
        let mut head = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::open(&disk).unwrap(), &mut head).unwrap();
        assert_eq!(&head, b"kept", "an existing disk is kept");
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 30);
    }

    #[test]
    fn a_panic_is_found_behind_its_stack_trace() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut text = String::from("berth-init [1.5] starting berth-core\n");
        text.push_str("[    9.41] Kernel panic - not syncing: sysrq triggered crash\r\n");
        for i in 0..40 {
            text.push_str(&format!("[    9.41]  ? frame_{i}+0x93/0x140\n"));
        }
        std::fs::write(&log, &text).unwrap();
        assert_eq!(
            kernel_panic(&log).as_deref(),
            Some("Kernel panic - not syncing: sysrq triggered crash")
        );
        std::fs::write(&log, "berth-init [1.5] berth-core exited with status 0\n").unwrap();
        assert_eq!(kernel_panic(&log), None);
        assert_eq!(kernel_panic(&dir.path().join("missing")), None);
    }

    #[test]
    fn console_tail_drops_control_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "\u{1b}c\u{1b}[2JBIOS\r\none\n\ntwo\nthree\n").unwrap();
        assert_eq!(console_tail(&log, 2), "two\nthree");
        assert_eq!(console_tail(&log, 10), "BIOS\none\ntwo\nthree");
        assert!(console_tail(&dir.path().join("nope"), 3).contains("is missing"));
    }

    /// A guest that announces itself (after one stray connection) and a core that answers.
    fn guest(
        announce: bool,
    ) -> (
        GuestListener,
        tokio::sync::mpsc::UnboundedSender<std::io::Result<BoxStream>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let listener = GuestListener::new(READY_PORT, rx, ());
        if announce {
            let tx = tx.clone();
            tokio::spawn(async move {
                for line in [&b"something else\n"[..], READY_LINE.as_bytes()] {
                    let (host, mut guest) = tokio::io::duplex(64);
                    guest.write_all(line).await.unwrap();
                    drop(guest);
                    tx.send(Ok(Box::new(host) as BoxStream)).unwrap();
                }
            });
        }
        (listener, tx)
    }

    fn dial_core(
        dials: Arc<AtomicUsize>,
    ) -> impl FnMut() -> BoxFuture<'static, Result<BoxStream, VmError>> {
        move || {
            dials.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                let (host, mut core) = tokio::io::duplex(4096);
                tokio::spawn(async move {
                    let _ = berth_proto::server_handshake(&mut core, "berth-core test").await;
                });
                Ok(Box::new(host) as BoxStream)
            })
        }
    }

    #[tokio::test]
    async fn waits_for_the_announcement_then_the_hello() {
        let (mut ready, _tx) = guest(true);
        let dials = Arc::new(AtomicUsize::new(0));
        let times = wait_for_core(
            &mut ready,
            dial_core(dials.clone()),
            || None,
            Instant::now(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(times.to_ready <= times.to_handshake);
        assert_eq!(dials.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_is_dialed_before_the_announcement_and_a_dead_machine_ends_the_wait() {
        let (mut ready, _tx) = guest(false);
        let dials = Arc::new(AtomicUsize::new(0));
        let mut polls = 0;
        let err = wait_for_core(
            &mut ready,
            dial_core(dials.clone()),
            || {
                polls += 1;
                (polls > 3).then(|| "the machine stopped".to_string())
            },
            Instant::now(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert_eq!(err, "the machine stopped");
        assert_eq!(dials.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_silent_guest_times_out_naming_the_port() {
        let (mut ready, _tx) = guest(false);
        let err = wait_for_core(
            &mut ready,
            dial_core(Arc::new(AtomicUsize::new(0))),
            || None,
            Instant::now(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(err.contains(&format!("port {READY_PORT}")), "{err}");
    }

    #[test]
    fn resources_refuse_what_no_machine_can_have_and_disks_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("data.raw");
        let r = crate::Resources {
            cpus: 2,
            memory_mib: 1024,
            disk_bytes: 4 << 30,
        };
        let cell = ResourceCell::new(r);
        assert!(ensure_sparse_disk(&disk, r.disk_bytes).unwrap());
        for bad in [
            crate::Resources { cpus: 0, ..r },
            crate::Resources {
                memory_mib: 100,
                ..r
            },
            crate::Resources {
                disk_bytes: 1 << 30,
                ..r
            },
        ] {
            assert!(
                matches!(cell.set(bad, &disk), Err(VmError::Invalid(_))),
                "{bad:?}"
            );
            assert_eq!(cell.get(), r, "a refused change changes nothing");
        }
        let bigger = crate::Resources {
            cpus: 1,
            memory_mib: 2048,
            disk_bytes: 8 << 30,
        };
        cell.set(bigger, &disk).unwrap();
        assert_eq!(cell.get(), bigger);
        assert!(!ensure_sparse_disk(&disk, bigger.disk_bytes).unwrap());
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 8 << 30);
        // Asking for less never shrinks it.
        ensure_sparse_disk(&disk, 1 << 30).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 8 << 30);
    }
}
