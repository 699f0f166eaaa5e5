//! The core's end of `berth-proto`: accept connections, handshake, then serve the control
//! channel (requests answered concurrently), one blob upload, one log stream or one attach per
//! connection.

use std::path::Path;
use std::sync::Arc;

use berth_proto::{
    check_hello, read_frame, write_frame, AttachRequest, BlobWrite, BlobWriteResult, BlobWritten,
    Channel, ContainerInfo, ContainerRef, ContainerStatus, CoreInfo, Error, ErrorCode, FrameError,
    Hello, HelloReply, ImageSelector, LogFrame, LogsRequest, Request, RequestFrame, Response,
    ResponseFrame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::container::ContainerService;
use crate::images::ImageService;

pub const SOFTWARE: &str = concat!("berth-core ", env!("CARGO_PKG_VERSION"));

pub struct Core {
    pub images: ImageService,
    pub containers: Arc<ContainerService>,
}

impl Core {
    /// Opens the stores under `data_root`. Containers are supervised by `shim_binary` (the
    /// `berth-core` binary; `None`: this very executable).
    pub fn open(data_root: &Path, shim_binary: Option<&Path>) -> Result<Core, Error> {
        let images = ImageService::open(data_root)?;
        let shim = match shim_binary {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe().map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("finding the berth-core binary: {e}"),
                )
            })?,
        };
        let containers = ContainerService::open(data_root, shim)?;
        Ok(Core { images, containers })
    }

    /// Serves one accepted connection to its end.
    pub async fn serve_connection<S>(self: Arc<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let hello: Hello = match read_frame(&mut stream).await {
            Ok(h) => h,
            // A connection that closes before saying hello is a liveness probe.
            Err(FrameError::Closed) => return,
            Err(e) => {
                warn!("refused a connection: {e}");
                return;
            }
        };
        // Log and attach streams name a container: a wrong one is refused in the handshake,
        // the only place this channel has for an error.
        let checked = check_hello(&hello, SOFTWARE).and_then(|()| match &hello.channel {
            Channel::Logs(LogsRequest { container, .. })
            | Channel::Attach(AttachRequest { container, .. }) => self.container_id(container),
            _ => Ok(String::new()),
        });
        let container_id = match checked {
            Ok(id) => id,
            Err(error) => {
                warn!("refused a connection: {error}");
                let _ = write_frame(&mut stream, &HelloReply::Refused { error }).await;
                return;
            }
        };
        let welcome = HelloReply::Welcome {
            version: berth_proto::VERSION,
            software: SOFTWARE.into(),
        };
        // An attach starts following the output before the welcome, so that nothing written
        // after the host saw it (e.g. by a start it sends next) is missed.
        if let Channel::Attach(req) = hello.channel {
            let rx = self.follow_output(container_id, req.logs);
            if write_frame(&mut stream, &welcome).await.is_ok() {
                serve_attach(stream, req, rx).await;
            }
            return;
        }
        if write_frame(&mut stream, &welcome).await.is_err() {
            return;
        }
        match hello.channel {
            Channel::Control => self.serve_control(stream).await,
            Channel::BlobWrite(bw) => self.serve_blob(stream, bw).await,
            Channel::Logs(req) => self.serve_logs(stream, container_id, req).await,
            Channel::Attach(_) => unreachable!("handled above"),
        }
    }

    fn container_id(&self, r: &ContainerRef) -> Result<String, Error> {
        Ok(self.containers.find(r)?.id)
    }

    /// Follows a container's output on a blocking thread; frames arrive on the receiver.
    fn follow_output(self: &Arc<Self>, id: String, replay: bool) -> mpsc::Receiver<LogFrame> {
        let (tx, rx) = mpsc::channel(256);
        let core = self.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        tokio::task::spawn_blocking(move || {
            let mut first = Some(ready_tx);
            let mut sink = |f: LogFrame| tx.blocking_send(f).is_ok();
            let r = core.containers.attach(&id, replay, &mut sink, &mut || {
                if let Some(t) = first.take() {
                    let _ = t.send(());
                }
            });
            if let Err(e) = r {
                warn!("attach to {id}: {e}");
            }
        });
        // The follower has taken its starting offset once it says so (or gave up).
        let _ = ready_rx.recv();
        rx
    }

    async fn serve_logs<S>(self: Arc<Self>, stream: S, id: String, req: LogsRequest)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<LogFrame>(256);
        let core = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut sink = |f: LogFrame| tx.blocking_send(f).is_ok();
            if let Err(e) = core.containers.logs(&id, &req, &mut sink) {
                warn!("logs of {id}: {e}");
            }
        });
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(f) => {
                        if write_frame(&mut wr, &f).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                // The host closing its end means nobody reads any more.
                n = rd.read(&mut buf) => {
                    if !matches!(n, Ok(n) if n > 0) {
                        break;
                    }
                }
            }
        }
        let _ = wr.shutdown().await;
    }

    async fn serve_control<S>(self: Arc<Self>, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<ResponseFrame>(64);
        let writer = tokio::spawn(async move {
            while let Some(resp) = rx.recv().await {
                if let Err(e) = write_frame(&mut wr, &resp).await {
                    warn!("control channel write failed: {e}");
                    break;
                }
            }
        });
        loop {
            let frame: RequestFrame = match read_frame(&mut rd).await {
                Ok(f) => f,
                Err(FrameError::Closed) => break,
                Err(e) => {
                    warn!("control channel: {e}");
                    break;
                }
            };
            let core = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let id = frame.id;
                let result =
                    match tokio::task::spawn_blocking(move || core.handle(frame.request)).await {
                        Ok(r) => r,
                        Err(e) => Err(Error::new(
                            ErrorCode::Internal,
                            format!("request panicked: {e}"),
                        )),
                    };
                let _ = tx.send(ResponseFrame { id, result }).await;
            });
        }
        drop(tx);
        let _ = writer.await;
    }

    fn handle(&self, req: Request) -> Result<Response, Error> {
        debug!(?req, "request");
        let images = &self.images;
        Ok(match req {
            Request::Ping => Response::Pong,
            Request::Info => Response::Info(self.info()),
            Request::BlobsPresent { digests } => Response::Present {
                present: images.blobs_present(&digests)?,
            },
            Request::SnapshotsPresent { chain_ids } => Response::Present {
                present: images.snapshots_present(&chain_ids)?,
            },
            Request::ImagePut(put) => Response::Image(Box::new(images.put(&put)?)),
            Request::ImageList => Response::Images {
                images: images.list()?,
            },
            Request::ImageInspect { selector } => {
                Response::Image(Box::new(images.inspect(&selector)?))
            }
            Request::ImageTag { selector, target } => {
                images.tag(&selector, &target)?;
                Response::Done
            }
            Request::ImageRemove {
                selector,
                force,
                prune: _,
            } => {
                self.check_image_unused(&selector)?;
                Response::Removed {
                    events: images.remove(&selector, force)?,
                }
            }
            Request::DiskUsage => Response::DiskUsage(images.disk_usage()?),
            Request::ContainerCreate(spec) => {
                let (id, warnings) = self.containers.create(images, *spec)?;
                Response::ContainerCreated { id, warnings }
            }
            Request::ContainerStart { container } => {
                self.containers.start(&container)?;
                Response::Done
            }
            Request::ContainerStop {
                container,
                signal,
                timeout,
            } => {
                self.containers
                    .stop(&container, signal.as_deref(), timeout)?;
                Response::Done
            }
            Request::ContainerKill { container, signal } => {
                self.containers.kill(&container, &signal)?;
                Response::Done
            }
            Request::ContainerWait {
                container,
                condition,
            } => {
                let (code, error) = self.containers.wait(&container, condition)?;
                Response::Exited { code, error }
            }
            Request::ContainerRemove {
                container,
                force,
                // Named volumes do not exist yet: there is nothing else to remove.
                volumes: _,
            } => {
                self.containers.remove(&container, force)?;
                Response::Done
            }
            Request::ContainerList { all } => Response::Containers {
                containers: self.containers.list(all)?,
            },
            Request::ContainerInspect { container } => {
                Response::Container(Box::new(self.containers.inspect(&container)?))
            }
        })
    }

    /// Refuses to delete an image a container uses (its snapshots are the container's lower
    /// layers), with dockerd's messages. Untagging one of several tags is fine. Unlike dockerd,
    /// `force` does not override a stopped container either: the image's layers would go with
    /// it and leave the container unable to start.
    fn check_image_unused(&self, sel: &ImageSelector) -> Result<(), Error> {
        let Ok(image) = self.images.inspect(sel) else {
            return Ok(());
        };
        if let Some(name) = &sel.name {
            if image.repo_tags.contains(name) && image.repo_tags.len() > 1 {
                return Ok(());
            }
        }
        let users: Vec<ContainerInfo> = self
            .containers
            .list(true)?
            .into_iter()
            .filter(|c| c.spec.image_id == image.id)
            .collect();
        let Some(user) = users.first() else {
            return Ok(());
        };
        let hex = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
        let short = &hex[..hex.len().min(12)];
        let message = match users
            .iter()
            .find(|c| c.state.status == ContainerStatus::Running)
        {
            Some(r) => format!(
                "conflict: unable to delete {short} (cannot be forced) - image is being used by running container {}",
                &r.id[..12]
            ),
            None => match &sel.name {
                Some(name) if image.repo_tags.contains(name) => format!(
                    "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {short}",
                    &user.id[..12]
                ),
                _ => format!(
                    "conflict: unable to delete {short} (must be forced) - image is being used by stopped container {}",
                    &user.id[..12]
                ),
            },
        };
        Err(Error::new(ErrorCode::Conflict, message))
    }

    fn info(&self) -> CoreInfo {
        let uname = nix::sys::utsname::uname().ok();
        CoreInfo {
            software: SOFTWARE.into(),
            version: berth_proto::VERSION,
            os: "linux".into(),
            arch: std::env::consts::ARCH.into(),
            kernel: uname
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            data_root: self.images.root().display().to_string(),
            images: self.images.image_count(),
            storage_driver: "overlayfs".into(),
            runtime: crate::container::runtime::choose(),
            containers: self.container_counts(),
        }
    }

    fn container_counts(&self) -> berth_proto::ContainerCounts {
        use berth_proto::ContainerStatus::*;
        let mut c = berth_proto::ContainerCounts::default();
        for info in self.containers.list(true).unwrap_or_default() {
            c.total += 1;
            match info.state.status {
                Running | Restarting => c.running += 1,
                Paused => c.paused += 1,
                _ => c.stopped += 1,
            }
        }
        c
    }

    async fn serve_blob<S>(self: Arc<Self>, stream: S, bw: BlobWrite)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut limited = rd.take(bw.size);
        let bridge = tokio_util::io::SyncIoBridge::new(&mut limited);
        let core = self.clone();
        let digest = bw.digest.clone();
        // The bridge borrows `limited`; scoped blocking keeps that borrow honest.
        let result = tokio::task::block_in_place(|| {
            core.images.write_blob(
                bridge,
                &bw.digest,
                bw.size,
                &bw.media_type,
                bw.unpack.as_ref(),
            )
        });
        if result.is_err() {
            // Keep reading what the host still sends so it gets to read our answer.
            let _ = tokio::io::copy(&mut limited, &mut tokio::io::sink()).await;
        }
        let result = result.map(|unpacked_size| BlobWritten {
            digest,
            unpacked_size,
        });
        if let Err(e) = &result {
            warn!("blob {} refused: {e}", bw.digest);
        }
        let _ = write_frame(&mut wr, &BlobWriteResult { result }).await;
    }
}

/// Writes a container's output to an attach stream in Docker's stdcopy framing until the
/// follower ends. Input from the host is read and dropped: stdin is not connected yet.
async fn serve_attach<S>(stream: S, req: AttachRequest, mut rx: mpsc::Receiver<LogFrame>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let drain = tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    while let Some(f) = rx.recv().await {
        let stream_id = match f.stream.as_str() {
            "stdout" if req.stdout => 1u8,
            "stderr" if req.stderr => 2u8,
            _ => continue,
        };
        let payload = f.log.as_bytes();
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(&[stream_id, 0, 0, 0]);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
    drain.abort();
}
