//! Interactive stdio: exec instances and the input packets that carry stdin, its closing and
//! terminal resizes.
//!
//! Output travels raw (Docker's stdcopy framing, or unframed with a TTY) because that is exactly
//! what the Docker client reads. Input cannot be raw: "the client closed stdin" must reach the
//! container even on transports without half-close (the hybrid vsock of the VM backend), so the
//! host sends [`Packet`]s on an attach or exec connection: `[kind: u8][length: u32 BE][payload]`.
//! The core speaks the same packets to a container's supervisor, which adds the output kinds.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{ContainerRef, FrameError};

/// Payloads larger than this are refused (the host sends at most what one read gave it).
pub const MAX_PACKET: usize = 1 << 20;

/// One unit of interactive I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Bytes for the process's stdin (kind 1).
    Stdin(Vec<u8>),
    /// The client closed its stdin (kind 2, empty).
    CloseStdin,
    /// New terminal size (kind 3: rows u16 BE, cols u16 BE).
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Output of the process (kinds 0x11, 0x12): supervisor → core only.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The process exited (kind 0x13: i64 BE exit code, 128 + signal when killed): supervisor →
    /// core only.
    Exit(i64),
}

impl Packet {
    fn kind(&self) -> u8 {
        match self {
            Packet::Stdin(_) => 1,
            Packet::CloseStdin => 2,
            Packet::Resize { .. } => 3,
            Packet::Stdout(_) => 0x11,
            Packet::Stderr(_) => 0x12,
            Packet::Exit(_) => 0x13,
        }
    }

    /// The packet as bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let payload: Vec<u8> = match self {
            Packet::Stdin(b) | Packet::Stdout(b) | Packet::Stderr(b) => b.clone(),
            Packet::CloseStdin => vec![],
            Packet::Resize { rows, cols } => {
                let mut p = rows.to_be_bytes().to_vec();
                p.extend_from_slice(&cols.to_be_bytes());
                p
            }
            Packet::Exit(code) => code.to_be_bytes().to_vec(),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(self.kind());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// A packet from its kind and payload.
    pub fn decode(kind: u8, payload: Vec<u8>) -> Result<Packet, PacketError> {
        let fixed = |n: usize, p: &[u8]| {
            if p.len() == n {
                Ok(())
            } else {
                Err(PacketError::Length(kind, p.len()))
            }
        };
        Ok(match kind {
            1 => Packet::Stdin(payload),
            2 => {
                fixed(0, &payload)?;
                Packet::CloseStdin
            }
            3 => {
                fixed(4, &payload)?;
                Packet::Resize {
                    rows: u16::from_be_bytes([payload[0], payload[1]]),
                    cols: u16::from_be_bytes([payload[2], payload[3]]),
                }
            }
            0x11 => Packet::Stdout(payload),
            0x12 => Packet::Stderr(payload),
            0x13 => {
                fixed(8, &payload)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload);
                Packet::Exit(i64::from_be_bytes(b))
            }
            k => return Err(PacketError::Kind(k)),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// an unknown packet kind
    #[error("unknown packet kind {0}")]
    Kind(u8),
    /// a payload of the wrong size
    #[error("packet kind {0} with a payload of {1} bytes")]
    Length(u8, usize),
    /// a payload over the limit
    #[error("packet of {0} bytes exceeds the {MAX_PACKET}-byte limit")]
    TooLarge(usize),
}

fn header(h: [u8; 5]) -> Result<(u8, usize), PacketError> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_PACKET {
        return Err(PacketError::TooLarge(len));
    }
    Ok((h[0], len))
}

/// Reads one packet; a clean end of stream before it is [`FrameError::Closed`].
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<Packet, FrameError> {
    let mut h = [0u8; 5];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let (kind, len) = header(h).map_err(std::io::Error::other)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Packet::decode(kind, payload).map_err(|e| FrameError::Io(std::io::Error::other(e)))
}

/// Blocking form of [`read_packet`]; `Ok(None)` at a clean end of stream.
pub fn read_packet_blocking<R: std::io::Read>(r: &mut R) -> std::io::Result<Option<Packet>> {
    let mut h = [0u8; 5];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (kind, len) = header(h).map_err(std::io::Error::other)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Packet::decode(kind, payload)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// `POST /containers/{id}/exec`: what to run in a running container (Docker's ExecConfig).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ExecSpec {
    pub container: ContainerRef,
    /// Never empty.
    pub cmd: Vec<String>,
    /// Added to (and overriding by key) the container's environment.
    pub env: Vec<String>,
    /// Default: the container's.
    pub working_dir: Option<String>,
    /// Default: the container's.
    pub user: Option<String>,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub privileged: bool,
    /// Accepted and shown; Berth does not interpret detach keys.
    pub detach_keys: String,
    /// Initial terminal size (rows, cols) with `tty`.
    pub console_size: Option<(u16, u16)>,
}

/// An exec instance as the core knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecInfo {
    /// 64 hex characters.
    pub id: String,
    /// The container's full id.
    pub container_id: String,
    pub spec: ExecSpec,
    pub running: bool,
    /// Set once the process exited (or failed to start: 126/127 as Docker).
    pub exit_code: Option<i64>,
    /// The process on the core's side while it runs.
    pub pid: Option<u32>,
}

/// [`crate::Channel::Exec`]: start an exec instance and carry its stdio. After the welcome the
/// core writes the output (stdcopy-framed, or raw with a TTY) and closes when the process has
/// exited and its exit code is recorded; the host writes [`Packet`]s (stdin and its closing).
/// Unknown, already started or unstartable (container not running) instances are refused in the
/// handshake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecAttachRequest {
    pub exec: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packets_round_trip() {
        let all = [
            Packet::Stdin(b"hi\n".to_vec()),
            Packet::CloseStdin,
            Packet::Resize {
                rows: 40,
                cols: 120,
            },
            Packet::Stdout(vec![0, 255]),
            Packet::Stderr(vec![]),
            Packet::Exit(-1),
            Packet::Exit(137),
        ];
        let mut wire = Vec::new();
        for p in &all {
            wire.extend(p.encode());
        }
        let mut r = &wire[..];
        for p in &all {
            assert_eq!(&read_packet(&mut r).await.unwrap(), p);
        }
        assert!(matches!(read_packet(&mut r).await, Err(FrameError::Closed)));
        let mut r = &wire[..];
        for p in &all {
            assert_eq!(read_packet_blocking(&mut r).unwrap().as_ref(), Some(p));
        }
        assert_eq!(read_packet_blocking(&mut r).unwrap(), None);
    }

    #[tokio::test]
    async fn bad_packets_are_errors() {
        assert_eq!(Packet::decode(9, vec![]), Err(PacketError::Kind(9)));
        assert_eq!(Packet::decode(3, vec![1]), Err(PacketError::Length(3, 1)));
        let mut huge = vec![1u8];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_packet(&mut &huge[..]).await.is_err());
        // A packet cut short is an error, not a clean end.
        let cut = &Packet::Stdin(b"abc".to_vec()).encode()[..6];
        assert!(matches!(
            read_packet(&mut &cut[..]).await,
            Err(FrameError::Io(_))
        ));
    }
}
