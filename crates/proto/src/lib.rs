//! berth-proto: the host ↔ guest protocol, version 1.
//!
//! Everything `berthd` and `berth-core` say to each other is defined here and nowhere else.
//!
//! * Every connection (a vsock connection to the core's port, or a Unix-socket connection on the
//!   direct backend) starts with a [`Hello`] frame from the host naming the protocol version and
//!   the [`Channel`] the connection will carry, answered by a [`HelloReply`]. A version mismatch is
//!   answered with [`ErrorCode::VersionMismatch`] naming both versions, then the connection closes.
//! * The control channel carries [`RequestFrame`]s and [`ResponseFrame`]s matched by `id`; several
//!   requests may be in flight at once.
//! * Bulk data never shares the control connection: a blob upload opens its own connection with
//!   [`Channel::BlobWrite`], sends exactly `size` raw bytes after the handshake and reads one
//!   [`BlobWriteResult`] frame.
//!
//! Frames are a 4-byte big-endian length followed by that many bytes of JSON. This crate has
//! the framing and the types; connection policy (timeouts, multiplexing) belongs to the callers.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod build;
pub mod container;
pub mod events;
pub mod image;
pub mod stdio;
pub mod volume;

pub use build::*;
pub use container::*;
pub use events::*;
pub use image::*;
pub use stdio::*;
pub use volume::*;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// The vsock port (or its equivalent) the core listens on for every channel.
pub const CORE_PORT: u32 = 1024;
/// The host's vsock port the core in a VM connects to once it listens on [`CORE_PORT`]: the host
/// dials the guest only after this, since a host connection sent before the guest's vsock driver
/// is up can be lost by the device (hybrid vsock helpers leave it unanswered).
pub const READY_PORT: u32 = 1025;
/// What the core writes on its [`READY_PORT`] connection, before closing it.
pub const READY_LINE: &str = "berth-core ready\n";
/// The core's exit status after [`Request::Restart`].
pub const RESTART_EXIT_CODE: i32 = 75;
/// Frames larger than this are refused: nothing on the control channel needs more (manifests
/// and configs are capped at 4 MiB by the registry client).
pub const MAX_FRAME: usize = 32 << 20;

/// First frame on every connection, from the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    /// Must be `"berth"`: lets the core refuse something that is not a Berth host at once.
    pub protocol: String,
    pub version: u32,
    /// Free text naming the sender, e.g. "berthd 0.1.0".
    pub software: String,
    pub channel: Channel,
}

impl Hello {
    pub fn new(software: impl Into<String>, channel: Channel) -> Hello {
        Hello {
            protocol: "berth".into(),
            version: VERSION,
            software: software.into(),
            channel,
        }
    }
}

/// What a connection carries after the handshake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Channel {
    /// Requests and responses.
    Control,
    /// One blob, `size` raw bytes, then one [`BlobWriteResult`] frame back.
    BlobWrite(BlobWrite),
    /// A container's logs: [`LogFrame`]s, then the connection closes.
    Logs(LogsRequest),
    /// A container's live stdio, raw after the handshake (see [`AttachRequest`]).
    Attach(AttachRequest),
    /// Start an exec instance and carry its stdio (see [`ExecAttachRequest`]).
    Exec(ExecAttachRequest),
    /// One connection to a container's published port, raw after the handshake (see
    /// [`PortForward`]).
    PortForward(PortForward),
    /// A tar of a container's file system, raw after the handshake (see [`ExportRequest`]).
    Export(ExportRequest),
    /// One stored blob: a [`BlobReadHeader`] frame, then its raw bytes (see [`BlobRead`]).
    BlobRead(BlobRead),
    /// The event log: [`EventsFrame`]s until the host closes (see [`EventsRequest`]).
    Events(EventsRequest),
    /// A build: the context in, [`BuildFrame`]s out (see [`BuildRequest`]).
    Build(Box<BuildRequest>),
}

/// The answer to [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum HelloReply {
    Welcome { version: u32, software: String },
    Refused { error: Error },
}

/// Checks a received [`Hello`] against this build; the error is what the core sends back.
pub fn check_hello(hello: &Hello, own_software: &str) -> Result<(), Error> {
    if hello.protocol != "berth" {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("not a Berth connection (protocol {:?})", hello.protocol),
        ));
    }
    if hello.version != VERSION {
        return Err(Error::new(
            ErrorCode::VersionMismatch,
            format!(
                "protocol version mismatch: {} speaks v{}, {own_software} speaks v{VERSION}",
                hello.software, hello.version
            ),
        ));
    }
    Ok(())
}

/// A request on the control channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
}

/// A response on the control channel; `id` is the request's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub result: Result<Response, Error>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    Ping,
    /// The core answers `Done`, then stops as on SIGTERM and exits with [`RESTART_EXIT_CODE`]
    /// so whatever supervises it (the guest's init; berthd on the direct backend) starts it
    /// again: a warm restart that keeps the machine and the containers' shims.
    Restart,
    Info,
    /// Which of these blobs the store holds.
    BlobsPresent {
        digests: Vec<String>,
    },
    /// Which of these layer snapshots (by chain id) exist.
    SnapshotsPresent {
        chain_ids: Vec<String>,
    },
    /// Record an image whose layers are all present; see [`ImagePut`].
    ImagePut(Box<ImagePut>),
    ImageList,
    ImageInspect {
        selector: ImageSelector,
    },
    ImageTag {
        selector: ImageSelector,
        target: String,
    },
    ImageRemove {
        selector: ImageSelector,
        force: bool,
        prune: bool,
    },
    DiskUsage,
    /// Create a volume (an existing one of the same name is answered as it is).
    VolumeCreate(Box<VolumeCreate>),
    /// Every volume, with its users; `sizes` also measures each (slower).
    VolumeList {
        sizes: bool,
    },
    VolumeInspect {
        name: String,
    },
    /// Remove a volume no container uses (`conflict` otherwise, `force` or not, as dockerd;
    /// `force` only makes a missing volume not an error).
    VolumeRemove {
        name: String,
        force: bool,
    },
    ContainerCreate(Box<ContainerSpec>),
    ContainerStart {
        container: ContainerRef,
    },
    /// Signal (default: the container's stop signal, else SIGTERM), then SIGKILL after
    /// `timeout` seconds (default: the container's, else 10).
    ContainerStop {
        container: ContainerRef,
        signal: Option<String>,
        timeout: Option<i64>,
    },
    ContainerKill {
        container: ContainerRef,
        signal: String,
    },
    /// Answers when the condition holds, with the exit code.
    ContainerWait {
        container: ContainerRef,
        condition: WaitCondition,
    },
    ContainerRemove {
        container: ContainerRef,
        force: bool,
        volumes: bool,
    },
    ContainerList {
        all: bool,
    },
    ContainerInspect {
        container: ContainerRef,
    },
    /// The host ports berthd bound for the container's next (or current) run, recorded so
    /// that inspect shows them and a restarted berthd binds the same ones again.
    ContainerPublished {
        container: ContainerRef,
        ports: Vec<PortBinding>,
    },
    /// Set the terminal size of a running container (a no-op without a TTY, as containerd).
    ContainerResize {
        container: ContainerRef,
        height: u16,
        width: u16,
    },
    /// Register an exec instance in a running container; answered with `ExecCreated`.
    ExecCreate(Box<ExecSpec>),
    /// Start an exec instance detached (its output is discarded); answers once it runs.
    ExecStart {
        exec: String,
    },
    ExecInspect {
        exec: String,
    },
    /// Set the terminal size of a started exec instance (a no-op without a TTY).
    ExecResize {
        exec: String,
        height: u16,
        width: u16,
    },
    /// Freeze a running container's processes (the runtime's `pause`, a cgroup freezer).
    ContainerPause {
        container: ContainerRef,
    },
    /// Thaw a paused container (the runtime's `resume`).
    ContainerUnpause {
        container: ContainerRef,
    },
    /// The container's processes (`docker top`); `ps_args` as `ps` takes them ("" = `-ef`).
    ContainerTop {
        container: ContainerRef,
        ps_args: String,
    },
    /// One sample of the container's resource use; answered with `Stats`.
    ContainerStats {
        container: ContainerRef,
    },
    /// Give a container a new name (without '/').
    ContainerRename {
        container: ContainerRef,
        name: String,
    },
    /// The container's file system changes against its image; answered with `Changes`.
    ContainerChanges {
        container: ContainerRef,
    },
    /// The size of every container's writable layer (`SizeRw` of `docker ps -s` and
    /// `docker system df`): container id → bytes of the regular files in its upper dir (a hard
    /// link counted once, symlinks not followed, mount points left out); answered with
    /// `ContainerSizes`.
    ContainerSizes,
    /// Record an event the host saw happen (image pulls, tags, removals; a container's
    /// `restart`) in the core's log; the core numbers and stamps it and, for a container,
    /// adds its attributes. Answered with `Done`.
    EventPublish(Box<Event>),
    /// The number of the newest recorded event; answered with `EventSeq`.
    EventSeq,
    /// `docker commit`; answered with `Image` (see [`CommitRequest`]).
    ContainerCommit(Box<CommitRequest>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Response {
    Pong,
    Info(CoreInfo),
    Present { present: Vec<String> },
    Image(Box<ImageInfo>),
    Images { images: Vec<ImageInfo> },
    Removed { events: Vec<RemoveEvent> },
    DiskUsage(DiskUsage),
    Volume(Box<VolumeInfo>),
    Volumes { volumes: Vec<VolumeInfo> },
    Done,
    ContainerCreated { id: String, warnings: Vec<String> },
    Container(Box<ContainerInfo>),
    Containers { containers: Vec<ContainerInfo> },
    Exited { code: i64, error: Option<String> },
    ExecCreated { id: String },
    Exec(Box<ExecInfo>),
    Top(ContainerTop),
    Stats(Box<StatsSample>),
    Changes { changes: Vec<FsChange> },
    EventSeq { seq: u64 },
    ContainerSizes { sizes: BTreeMap<String, u64> },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CoreInfo {
    pub software: String,
    pub version: u32,
    pub os: String,
    pub arch: String,
    pub kernel: String,
    pub data_root: String,
    pub images: u64,
    pub storage_driver: String,
    /// The OCI runtime new containers get ("runc" or "crun").
    #[serde(default)]
    pub runtime: String,
    #[serde(default)]
    pub containers: ContainerCounts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ContainerCounts {
    pub total: u64,
    pub running: u64,
    pub paused: u64,
    pub stopped: u64,
}

/// Errors crossing the boundary: a closed set of codes plus a human message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The request conflicts with the store's state (e.g. removing an image with several tags
    /// without force).
    Conflict,
    InvalidState,
    /// Data failed verification (digest, size, diff id).
    DataLoss,
    Unsupported,
    VersionMismatch,
    Internal,
}

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// connection closed
    #[error("connection closed")]
    Closed,
    /// frame of {0} bytes exceeds the limit
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// undecodable frame
    #[error("undecodable frame: {0}")]
    Decode(#[from] serde_json::Error),
    /// i/o
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one frame and flushes.
pub async fn write_frame<W, T>(w: &mut W, value: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(value)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame. A clean end of stream before the length prefix is [`FrameError::Closed`].
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Host side of the handshake: sends `hello`, waits for the reply.
pub async fn client_handshake<S>(s: &mut S, hello: &Hello) -> Result<String, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_frame(s, hello).await?;
    match read_frame::<_, HelloReply>(s).await? {
        HelloReply::Welcome { version, software } if version == VERSION => Ok(software),
        HelloReply::Welcome { version, software } => Err(HandshakeError::Refused(Error::new(
            ErrorCode::VersionMismatch,
            format!(
                "protocol version mismatch: {} speaks v{VERSION}, {software} speaks v{version}",
                hello.software
            ),
        ))),
        HelloReply::Refused { error } => Err(HandshakeError::Refused(error)),
    }
}

/// Core side of the handshake: reads the hello, checks it, answers. Returns the channel.
pub async fn server_handshake<S>(s: &mut S, own_software: &str) -> Result<Hello, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello: Hello = read_frame(s).await?;
    if let Err(error) = check_hello(&hello, own_software) {
        write_frame(
            s,
            &HelloReply::Refused {
                error: error.clone(),
            },
        )
        .await?;
        return Err(HandshakeError::Refused(error));
    }
    write_frame(
        s,
        &HelloReply::Welcome {
            version: VERSION,
            software: own_software.into(),
        },
    )
    .await?;
    Ok(hello)
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// handshake framing failed
    #[error("handshake failed: {0}")]
    Frame(#[from] FrameError),
    /// the other side refused
    #[error("handshake refused: {0}")]
    Refused(Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_and_frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let hello = server_handshake(&mut b, "core-test").await.unwrap();
            assert_eq!(hello.channel, Channel::Control);
            let req: RequestFrame = read_frame(&mut b).await.unwrap();
            assert!(matches!(req.request, Request::Ping));
            write_frame(
                &mut b,
                &ResponseFrame {
                    id: req.id,
                    result: Ok(Response::Pong),
                },
            )
            .await
            .unwrap();
        });
        let sw = client_handshake(&mut a, &Hello::new("host-test", Channel::Control)).await;
        assert_eq!(sw.unwrap(), "core-test");
        write_frame(
            &mut a,
            &RequestFrame {
                id: 7,
                request: Request::Ping,
            },
        )
        .await
        .unwrap();
        let resp: ResponseFrame = read_frame(&mut a).await.unwrap();
        assert_eq!(resp.id, 7);
        assert!(matches!(resp.result, Ok(Response::Pong)));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn version_mismatch_names_both_versions() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { server_handshake(&mut b, "core-test").await });
        let mut hello = Hello::new("host-test", Channel::Control);
        hello.version = 9;
        let err = client_handshake(&mut a, &hello).await.unwrap_err();
        let HandshakeError::Refused(e) = err else {
            panic!("expected refusal, got {err}")
        };
        assert_eq!(e.code, ErrorCode::VersionMismatch);
        assert!(
            e.message.contains("v9") && e.message.contains("v1"),
            "{}",
            e.message
        );
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let r: Result<Hello, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::TooLarge(_))));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        let r: Result<Hello, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Decode(_))));

        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        let r: Result<Hello, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Closed)));
    }
}
