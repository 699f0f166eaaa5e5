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
use berth_proto::{read_packet, ExecAttachRequest, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::container::{ContainerError, ContainerService};
use crate::images::ImageService;

pub const SOFTWARE: &str = concat!("berth-core ", env!("CARGO_PKG_VERSION"));

pub struct Core {
    pub images: ImageService,
    pub containers: Arc<ContainerService>,
    /// Fired by [`Request::Restart`]: the listening loop stops and the process exits with
    /// `berth_proto::RESTART_EXIT_CODE`.
    pub restart: tokio::sync::Notify,
}

impl Core {
    /// Opens the stores under `data_root`. Containers are supervised by `shim_binary` (the
    /// `berth-core` binary; `None`: this very executable).
    pub fn open(data_root: &Path, shim_binary: Option<&Path>) -> Result<Core, Error> {
        Self::open_with_network(
            data_root,
            shim_binary,
            crate::net::NetworkConfig::dedicated(data_root),
        )
    }

    /// As [`Core::open`], with the container bridge where `network` says (the VM's own network
    /// namespace, or a dedicated one).
    pub fn open_with_network(
        data_root: &Path,
        shim_binary: Option<&Path>,
        network: crate::net::NetworkConfig,
    ) -> Result<Core, Error> {
        let shim = match shim_binary {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe().map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("finding the berth-core binary: {e}"),
                )
            })?,
        };
        // The two stores are independent: opened side by side (each redb open takes ≈0.2 s in
        // a VM without KVM, and waits for its disk flushes; see docs/vm.md).
        let (images, containers) = std::thread::scope(|s| {
            let images = s.spawn(|| {
                let t = std::time::Instant::now();
                let images = ImageService::open(data_root);
                crate::build::clear_leftovers(data_root);
                debug!("start: the image store opened in {:?}", t.elapsed());
                images
            });
            let t = std::time::Instant::now();
            let containers = ContainerService::open_with_network(data_root, shim, network);
            debug!("start: the container service opened in {:?}", t.elapsed());
            let images = images.join().unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorCode::Internal,
                    "opening the image store panicked",
                ))
            });
            (images, containers)
        });
        let (images, containers) = (images?, containers?);
        Ok(Core {
            images,
            containers,
            restart: tokio::sync::Notify::new(),
        })
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
            | Channel::Attach(AttachRequest { container, .. })
            | Channel::Export(berth_proto::ExportRequest { container }) => {
                self.container_id(container)
            }
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
        // A port forward connects to the container first: a refusal is answered in the
        // handshake, so berthd closes the client's connection rather than leave it hanging.
        if let Channel::PortForward(pf) = &hello.channel {
            match self.clone().connect_port(pf.clone()).await {
                Ok(tcp) => {
                    if write_frame(&mut stream, &welcome).await.is_ok() {
                        splice_port(stream, tcp).await;
                    }
                }
                Err(error) => {
                    debug!("port forward refused: {error}");
                    let _ = write_frame(&mut stream, &HelloReply::Refused { error }).await;
                }
            }
            return;
        }
        // A blob read opens the blob first: one the store does not hold is refused.
        if let Channel::BlobRead(req) = &hello.channel {
            match self.images.open_blob(&req.digest) {
                Ok((file, size)) => {
                    if write_frame(&mut stream, &welcome).await.is_ok() {
                        serve_blob_read(stream, file, size).await;
                    }
                }
                Err(error) => {
                    debug!("blob read refused: {error}");
                    let _ = write_frame(&mut stream, &HelloReply::Refused { error }).await;
                }
            }
            return;
        }
        // An exec starts before the welcome: what keeps it from starting is the host's error.
        if let Channel::Exec(req) = hello.channel {
            self.serve_exec(stream, req, welcome).await;
            return;
        }
        // An attach starts following the output (and takes the run its stdin goes to) before
        // the welcome, so that nothing written after the host saw it (e.g. by a start it sends
        // next) is missed.
        if let Channel::Attach(req) = hello.channel {
            let (tty, stdin_once) = self
                .containers
                .inspect(&ContainerRef(container_id.clone()))
                .map(|c| (c.spec.tty, c.spec.stdin_once))
                .unwrap_or((false, false));
            let stdin = if req.stdin {
                match self.containers.attach_stdin(&container_id) {
                    Ok(tx) => Some(tx),
                    Err(e) => {
                        warn!("attaching stdin of {container_id}: {e}");
                        None
                    }
                }
            } else {
                None
            };
            let rx = self.follow_output(container_id.clone(), req.logs);
            // Before the welcome: the host starts the container only after it, and dockerd's
            // `attach` comes before the `start`.
            if let Err(e) = self.containers.record_event(
                &ContainerRef(container_id),
                "attach",
                &Default::default(),
            ) {
                debug!("attach event: {e}");
            }
            if write_frame(&mut stream, &welcome).await.is_ok() {
                // As dockerd: the client's end of input closes the container's stdin only for
                // StdinOnce containers without a terminal; otherwise it ends this attach.
                let end_on_close = !stdin_once || tty;
                serve_attach(stream, req, tty, stdin, end_on_close, rx).await;
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
            Channel::Exec(_) => unreachable!("handled above"),
            Channel::PortForward(_) => unreachable!("handled above"),
            Channel::BlobRead(_) => unreachable!("handled above"),
            Channel::Export(_) => self.serve_export(stream, container_id).await,
            Channel::Events(req) => self.serve_events(stream, req).await,
            Channel::Build(req) => self.serve_build(stream, *req).await,
        }
    }

    /// Connects to the container's port from the core's network namespace.
    async fn connect_port(
        self: Arc<Self>,
        pf: berth_proto::PortForward,
    ) -> Result<tokio::net::TcpStream, Error> {
        if pf.protocol != "tcp" {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!("forwarding {} ports is not supported", pf.protocol),
            ));
        }
        let core = self.clone();
        let tcp = tokio::task::spawn_blocking(move || {
            core.containers
                .connect(&pf.container, pf.port, std::time::Duration::from_secs(5))
        })
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("connect panicked: {e}")))??;
        tcp.set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(tcp))
            .map_err(|e| Error::new(ErrorCode::Internal, format!("connected socket: {e}")))
    }

    /// Records an event the host saw: a container's gets the container's attributes (an
    /// unknown container is `not_found`), any other is recorded as sent.
    fn publish_event(&self, ev: berth_proto::Event) -> Result<(), Error> {
        if ev.kind.is_empty() || ev.action.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "an event needs a type and an action",
            ));
        }
        if ev.kind == berth_proto::CONTAINER_EVENT {
            self.containers
                .record_event(&ContainerRef(ev.actor_id), &ev.action, &ev.attributes)?;
        } else {
            self.containers
                .events()
                .record(&ev.kind, &ev.action, &ev.actor_id, ev.attributes);
        }
        Ok(())
    }

    /// Follows the event log: what was recorded after `req.after`, the `Live` marker, then
    /// each new event, until the host closes its end. A follower that falls too far behind is
    /// disconnected (it reconnects and reads what it missed from the log).
    async fn serve_events<S>(self: Arc<Self>, stream: S, req: berth_proto::EventsRequest)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        use berth_proto::EventsFrame;
        use tokio::sync::broadcast::error::RecvError;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (backlog, mut live) = self.containers.events().follow(req.after);
        for ev in backlog {
            if write_frame(&mut wr, &EventsFrame::Event(ev)).await.is_err() {
                return;
            }
        }
        if write_frame(&mut wr, &EventsFrame::Live).await.is_err() {
            return;
        }
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        if write_frame(&mut wr, &EventsFrame::Event(ev)).await.is_err() {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        warn!("an events follower fell {n} events behind: disconnecting it");
                        break;
                    }
                    Err(RecvError::Closed) => break,
                },
                n = rd.read(&mut buf) => {
                    if !matches!(n, Ok(n) if n > 0) {
                        break;
                    }
                }
            }
        }
        let _ = wr.shutdown().await;
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
            Request::Restart => {
                tracing::info!("restart requested");
                // notify_one keeps the permit if the loop is not waiting yet.
                self.restart.notify_one();
                Response::Done
            }
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
            Request::VolumeCreate(req) => {
                Response::Volume(Box::new(self.containers.volume_create(&req)?))
            }
            Request::VolumeList { sizes } => Response::Volumes {
                volumes: self.containers.volume_list(sizes)?,
            },
            Request::VolumeInspect { name } => {
                Response::Volume(Box::new(self.containers.volume_inspect(&name)?))
            }
            Request::VolumeRemove { name, force } => {
                self.containers.volume_remove(&name, force)?;
                Response::Done
            }
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
                volumes,
            } => {
                self.containers
                    .remove_with_volumes(&container, force, volumes)?;
                Response::Done
            }
            Request::ContainerList { all } => Response::Containers {
                containers: self.containers.list(all)?,
            },
            Request::ContainerInspect { container } => {
                Response::Container(Box::new(self.containers.inspect(&container)?))
            }
            Request::ContainerResize {
                container,
                height,
                width,
            } => {
                self.containers.resize(&container, height, width)?;
                Response::Done
            }
            Request::ExecCreate(spec) => Response::ExecCreated {
                id: self.containers.exec_create(*spec)?,
            },
            Request::ExecStart { exec } => {
                // Detached: the output is read (and dropped) until the exit is recorded.
                let mut run = self.containers.exec_start(&exec)?;
                std::thread::spawn(move || while run.next_output().is_some() {});
                Response::Done
            }
            Request::ExecInspect { exec } => {
                Response::Exec(Box::new(self.containers.exec_inspect(&exec)?))
            }
            Request::ExecResize {
                exec,
                height,
                width,
            } => {
                self.containers.exec_resize(&exec, height, width)?;
                Response::Done
            }
            Request::ContainerPublished { container, ports } => {
                self.containers.set_published(&container, &ports)?;
                Response::Done
            }
            Request::ContainerPause { container } => {
                self.containers.pause(&container)?;
                Response::Done
            }
            Request::ContainerUnpause { container } => {
                self.containers.unpause(&container)?;
                Response::Done
            }
            Request::ContainerTop { container, ps_args } => {
                Response::Top(self.containers.top(&container, &ps_args)?)
            }
            Request::ContainerStats { container } => {
                Response::Stats(Box::new(self.containers.stats(&container)?))
            }
            Request::ContainerRename { container, name } => {
                self.containers.rename(&container, &name)?;
                Response::Done
            }
            Request::EventPublish(event) => {
                self.publish_event(*event)?;
                Response::Done
            }
            Request::EventSeq => Response::EventSeq {
                seq: self.containers.events().seq(),
            },
            Request::ContainerChanges { container } => Response::Changes {
                changes: self.containers.changes(&container)?,
            },
            Request::ContainerSizes => Response::ContainerSizes {
                sizes: self.containers.sizes()?,
            },
            Request::ContainerCommit(req) => {
                Response::Image(Box::new(self.containers.commit(images, &req)?))
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

/// Docker's stdcopy header (stream, three zero bytes, big-endian length) and the payload; with
/// a TTY the payload alone.
fn docker_frame(tty: bool, stream: u8, payload: &[u8]) -> Vec<u8> {
    if tty {
        return payload.to_vec();
    }
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&[stream, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Carries a forwarded connection: the host's end of input becomes a half-close towards the
/// container, which may still answer; the container's close ends the whole stream (a
/// half-close of our own would not reach the host over the VM's hybrid vsock).
async fn splice_port<S>(stream: S, tcp: tokio::net::TcpStream)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut host_rd, mut host_wr) = tokio::io::split(stream);
    let (mut tcp_rd, mut tcp_wr) = tcp.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut host_rd, &mut tcp_wr).await;
        let _ = tcp_wr.shutdown().await;
        std::future::pending::<()>().await
    };
    let down = async {
        let _ = tokio::io::copy(&mut tcp_rd, &mut host_wr).await;
        let _ = host_wr.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Writes a container's output to an attach stream (stdcopy-framed, raw with a TTY) until the
/// follower ends; input packets from the host go to the container's stdin forwarder.
async fn serve_attach<S>(
    stream: S,
    req: AttachRequest,
    tty: bool,
    stdin: Option<std::sync::mpsc::Sender<Packet>>,
    end_on_close: bool,
    mut rx: mpsc::Receiver<LogFrame>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    let input = tokio::spawn(async move {
        let mut closed_tx = Some(closed_tx);
        while let Ok(p) = read_packet(&mut rd).await {
            let close = matches!(p, Packet::CloseStdin);
            if let Some(tx) = &stdin {
                let _ = tx.send(p);
                if close && end_on_close {
                    if let Some(c) = closed_tx.take() {
                        let _ = c.send(());
                    }
                }
            }
        }
        // Keep the forwarder's queue until the attach ends: it is how it knows the end.
        std::future::pending::<()>().await;
        drop(stdin);
    });
    loop {
        let f = tokio::select! {
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
            Ok(()) = &mut closed => break,
        };
        let stream_id = match f.stream.as_str() {
            "stdout" if req.stdout => 1u8,
            "stderr" if req.stderr => 2u8,
            _ => continue,
        };
        let frame = docker_frame(tty, stream_id, f.log.as_bytes());
        if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
    input.abort();
}

impl Core {
    /// `Channel::Exec`: starts the instance, then carries its stdio until it exits. A process
    /// the runtime could not start is reported in the stream (as dockerd does) with its exit
    /// code recorded; anything else that keeps it from starting is refused in the handshake.
    async fn serve_exec<S>(
        self: Arc<Self>,
        mut stream: S,
        req: ExecAttachRequest,
        welcome: HelloReply,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let core = self.clone();
        let exec = req.exec.clone();
        let started = tokio::task::spawn_blocking(move || core.containers.exec_start(&exec))
            .await
            .unwrap_or_else(|e| {
                Err(ContainerError::Internal(format!(
                    "exec start panicked: {e}"
                )))
            });
        let tty = self
            .containers
            .exec_entry(&req.exec)
            .map(|e| e.spec.tty)
            .unwrap_or(false);
        let mut run = match started {
            Ok(run) => run,
            Err(ContainerError::StartFailed { message, .. }) => {
                if write_frame(&mut stream, &welcome).await.is_ok() {
                    let text = format!("{message}\r\n");
                    let _ = stream
                        .write_all(&docker_frame(tty, 1, text.as_bytes()))
                        .await;
                    let _ = stream.shutdown().await;
                }
                return;
            }
            Err(e) => {
                let error: Error = e.into();
                debug!("exec {} refused: {error}", req.exec);
                let _ = write_frame(&mut stream, &HelloReply::Refused { error }).await;
                return;
            }
        };
        if write_frame(&mut stream, &welcome).await.is_err() {
            // Nobody reads: let the process run, its output dropped.
            std::thread::spawn(move || while run.next_output().is_some() {});
            return;
        }
        let entry = run.entry.clone();
        let (mut rd, mut wr) = tokio::io::split(stream);
        let input = tokio::spawn(async move {
            while let Ok(p) = read_packet(&mut rd).await {
                if matches!(p, Packet::Stdin(_) | Packet::CloseStdin) {
                    entry.send(p);
                }
            }
        });
        let (tx, mut rx) = mpsc::channel::<(u8, Vec<u8>)>(64);
        tokio::task::spawn_blocking(move || {
            // Read to the end even when the host is gone, so that the exit is recorded.
            while let Some(chunk) = run.next_output() {
                let _ = tx.blocking_send(chunk);
            }
        });
        while let Some((stream_id, data)) = rx.recv().await {
            let frame = docker_frame(tty, stream_id, &data);
            if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        // Drain what is left so the sender is never stuck.
        rx.close();
        let _ = wr.shutdown().await;
        input.abort();
    }
}

/// Hands the bytes an export writes (on its own thread) to the async side, a bounded number of
/// chunks at a time: the tar is never held whole.
struct ChunkWriter(mpsc::Sender<Vec<u8>>);

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.blocking_send(buf.to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the host went away")
        })?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `Channel::BlobRead`: the size, then the blob's bytes; a read error closes the stream early.
async fn serve_blob_read<S>(mut stream: S, file: std::fs::File, size: u64)
where
    S: AsyncWrite + Unpin,
{
    if write_frame(&mut stream, &berth_proto::BlobReadHeader { size })
        .await
        .is_err()
    {
        return;
    }
    let file = tokio::fs::File::from_std(file).take(size);
    let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
    match tokio::io::copy_buf(&mut reader, &mut stream).await {
        Ok(n) if n == size => {}
        Ok(n) => warn!("blob read ended after {n} of {size} bytes"),
        Err(e) => debug!("blob read: {e}"),
    }
    let _ = stream.shutdown().await;
}

impl Core {
    /// `Channel::Export`: the container's file system as a tar, then the core closes.
    async fn serve_export<S>(self: Arc<Self>, stream: S, id: String)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (_rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let core = self.clone();
        // A thread of its own: a stopped container's file system is mounted in a private mount
        // namespace of the exporting thread.
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, ChunkWriter(tx));
            let r = core
                .containers
                .export(&ContainerRef(id.clone()), &mut out)
                .and_then(|()| {
                    out.flush().map_err(|e| ContainerError::Io {
                        context: "exporting".into(),
                        source: e,
                    })
                });
            if let Err(e) = r {
                warn!("export of {id}: {e}");
            }
        });
        while let Some(chunk) = rx.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    }
}
