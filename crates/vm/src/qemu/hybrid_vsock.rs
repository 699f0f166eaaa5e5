//! The host side of hybrid vsock: a Unix socket (vhost-device-vsock's `uds-path`) that stands for
//! the guest's whole vsock address space. A connection names its guest port with one line,
//! `CONNECT <port>\n`, and the helper answers `OK <host port>\n` once the guest accepted; after
//! that line the socket carries the guest connection's bytes. When nothing listens on the port
//! the helper closes the connection instead.
//!
//! Guest-initiated connections go the other way: the helper connects to `<uds-path>_<port>`.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest answer line accepted ("OK 4294967295\n" is 14 bytes).
const MAX_LINE: usize = 64;

/// Connects to `port` in the guest through the helper's socket at `uds`.
pub async fn connect(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Byte by byte: what follows the line already belongs to the guest connection.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing accepted vsock port {port} in the guest"),
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the vsock helper's answer is not a line",
            ));
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line.starts_with("OK ") {
        Ok(s)
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("the vsock helper refused port {port}: {line:?}"),
        ))
    }
}

/// Where the helper delivers guest connections to `port`.
pub fn listen_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    /// A stand-in helper: answers OK for port 1024 and then sends `payload`; closes otherwise.
    async fn fake_helper(listener: UnixListener, payload: &'static [u8]) {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            let mut s = r.into_inner();
            if line == "CONNECT 1024\n" {
                let mut answer = b"OK 4000\n".to_vec();
                answer.extend_from_slice(payload);
                s.write_all(&answer).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn connects_and_keeps_the_guest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        tokio::spawn(fake_helper(listener, b"hello"));
        let mut s = connect(&uds, 1024).await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        tokio::spawn(fake_helper(listener, b""));
        let err = connect(&uds, 7).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn listen_path_appends_the_port() {
        assert_eq!(
            listen_path(Path::new("/run/vsock.sock"), 1025),
            PathBuf::from("/run/vsock.sock_1025")
        );
    }
}
