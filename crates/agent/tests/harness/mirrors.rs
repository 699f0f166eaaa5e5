//! Registries to use as mirrors in tests: a real `docker-registry` process serving the open
//! fixture registry's storage read-only on a port of its own, and a proxy in front of a real
//! registry that corrupts chosen blobs (a mirror that lies about content).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound, then released for the process that will use it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `GET http://addr/v2/` answers 200.
pub fn answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.") && head.get(8..).is_some_and(|t| t.starts_with(" 200"))
}

/// A `docker-registry` process serving a copy-free, read-only view of the open fixture
/// registry's storage: the same repositories and digests, on another port.
pub struct RegistryMirror {
    pub addr: String,
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RegistryMirror {
    pub fn start() -> RegistryMirror {
        let fx = super::fixtures();
        let storage = PathBuf::from(&fx["BERTH_FIXTURES_DIR"]).join("run/open/storage");
        assert!(
            storage.is_dir(),
            "no open registry storage at {}",
            storage.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    readonly:\n      enabled: true\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {addr}\n  secret: berth-test-mirror\n",
                storage.display()
            ),
        )
        .unwrap();
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("docker-registry (Debian's docker-registry; scripts/test installs it)");
        let mut m = RegistryMirror {
            addr,
            log,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(&m.addr) {
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("docker-registry exited ({st}): {}", m.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "mirror {} did not answer: {}",
                m.addr,
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many requests for `path_part` the registry logged.
    pub fn requests_for(&self, path_part: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("GET ") && l.contains(path_part))
            .count()
    }

    /// Kills the process and waits for it (the mirror is gone; its port refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RegistryMirror {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A mirror that forwards every request to `upstream` (a real registry) and corrupts the
/// bodies of the blobs whose digests it was given (one byte flipped in the middle). Runs on a
/// thread until the test ends; returns its host:port.
pub fn start_corrupting_proxy(upstream: &str, corrupt: Vec<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let upstream = upstream.clone();
            let corrupt = corrupt.clone();
            std::thread::spawn(move || {
                let _ = proxy_one(conn, &upstream, &corrupt);
            });
        }
    });
    addr
}

fn proxy_one(mut conn: TcpStream, upstream: &str, corrupt: &[String]) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    // The request head (GETs and HEADs have no body).
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut b)? == 0 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("GET").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut forward = format!("{method} {path} HTTP/1.0\r\nHost: {upstream}\r\n");
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("accept:")
            || lower.starts_with("authorization:")
            || lower.starts_with("range:")
        {
            forward.push_str(l);
            forward.push_str("\r\n");
        }
    }
    forward.push_str("\r\n");
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(forward.as_bytes())?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(resp.len());
    let (rhead, body) = resp.split_at(split);
    let mut body = body.to_vec();
    let rhead = String::from_utf8_lossy(rhead).into_owned();
    let ok = rhead.starts_with("HTTP/1.1 200") || rhead.starts_with("HTTP/1.0 200");
    if ok
        && method == "GET"
        && corrupt
            .iter()
            .any(|d| path.ends_with(&format!("/blobs/{d}")))
        && !body.is_empty()
    {
        let n = body.len();
        body[n / 2] ^= 0xff;
    }
    let mut out = String::new();
    let mut rl = rhead.split("\r\n");
    out.push_str(rl.next().unwrap_or("HTTP/1.1 502 Bad Gateway"));
    out.push_str("\r\n");
    for l in rl {
        let lower = l.to_ascii_lowercase();
        if l.is_empty()
            || lower.starts_with("connection:")
            || lower.starts_with("content-length:")
            || lower.starts_with("transfer-encoding:")
        {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    let length = if method == "HEAD" {
        rhead
            .split("\r\n")
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| "0".into())
    } else {
        body.len().to_string()
    };
    out.push_str(&format!(
        "Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ));
    conn.write_all(out.as_bytes())?;
    if method != "HEAD" {
        conn.write_all(&body)?;
    }
    conn.flush()
}
