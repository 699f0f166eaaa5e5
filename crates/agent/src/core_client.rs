//! berthd's end of `berth-proto`: one control connection multiplexing concurrent requests, and a
//! fresh connection per blob upload, all dialled through the [`VmBackend`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use berth_proto::{
    client_handshake, read_frame, write_frame, AttachRequest, BlobWrite, BlobWriteResult,
    BlobWritten, Channel, Error, ErrorCode, Hello, LogFrame, LogsRequest, Request, RequestFrame,
    Response, ResponseFrame, CORE_PORT,
};
use berth_vm::VmBackend;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot, Mutex};

pub const SOFTWARE: &str = concat!("berthd ", env!("CARGO_PKG_VERSION"));

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Result<Response, Error>>>>>;

struct Control {
    writer: Mutex<WriteHalf<berth_vm::BoxStream>>,
    pending: Pending,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

pub struct CoreClient {
    backend: Arc<dyn VmBackend>,
    control: Mutex<Option<Arc<Control>>>,
    next_id: AtomicU64,
}

/// A refusal keeps the core's own error (e.g. "no such container"); anything else means the
/// core could not be reached.
fn handshake_error(e: berth_proto::HandshakeError) -> Error {
    match e {
        berth_proto::HandshakeError::Refused(e) => e,
        other => unavailable(other),
    }
}

fn unavailable(msg: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::InvalidState,
        format!("the Berth core is not reachable: {msg}"),
    )
}

impl CoreClient {
    pub fn new(backend: Arc<dyn VmBackend>) -> CoreClient {
        CoreClient {
            backend,
            control: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn backend(&self) -> &Arc<dyn VmBackend> {
        &self.backend
    }

    async fn control(&self) -> Result<Arc<Control>, Error> {
        let mut slot = self.control.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.alive.load(Ordering::SeqCst) {
                return Ok(c.clone());
            }
        }
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        client_handshake(&mut stream, &Hello::new(SOFTWARE, Channel::Control))
            .await
            .map_err(unavailable)?;
        let (mut rd, wr) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let control = Arc::new(Control {
            writer: Mutex::new(wr),
            pending: pending.clone(),
            alive: alive.clone(),
        });
        tokio::spawn(async move {
            loop {
                match read_frame::<_, ResponseFrame>(&mut rd).await {
                    Ok(f) => {
                        if let Some(tx) = pending.lock().expect("pending").remove(&f.id) {
                            let _ = tx.send(f.result);
                        }
                    }
                    Err(e) => {
                        alive.store(false, Ordering::SeqCst);
                        for (_, tx) in pending.lock().expect("pending").drain() {
                            let _ =
                                tx.send(Err(unavailable(format!("control connection lost: {e}"))));
                        }
                        break;
                    }
                }
            }
        });
        *slot = Some(control.clone());
        Ok(control)
    }

    /// Forgets the control connection (its core died or is being replaced): requests waiting
    /// on it fail with `why`, and the next request dials afresh.
    pub async fn reset(&self, why: &str) {
        if let Some(c) = self.control.lock().await.take() {
            c.alive.store(false, Ordering::SeqCst);
            for (_, tx) in c.pending.lock().expect("pending").drain() {
                let _ = tx.send(Err(unavailable(why)));
            }
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn call(&self, request: Request) -> Result<Response, Error> {
        let control = self.control().await?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        control.pending.lock().expect("pending").insert(id, tx);
        {
            let mut w = control.writer.lock().await;
            if let Err(e) = write_frame(&mut *w, &RequestFrame { id, request }).await {
                control.alive.store(false, Ordering::SeqCst);
                control.pending.lock().expect("pending").remove(&id);
                return Err(unavailable(e));
            }
        }
        rx.await
            .map_err(|_| unavailable("control connection closed"))?
    }

    /// Opens a log stream on its own connection; frames arrive on the receiver until the end.
    pub async fn logs(
        &self,
        request: LogsRequest,
    ) -> Result<mpsc::Receiver<Result<LogFrame, Error>>, Error> {
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        client_handshake(&mut stream, &Hello::new(SOFTWARE, Channel::Logs(request)))
            .await
            .map_err(handshake_error)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match read_frame::<_, LogFrame>(&mut stream).await {
                    Ok(f) => {
                        if tx.send(Ok(f)).await.is_err() {
                            break;
                        }
                    }
                    Err(berth_proto::FrameError::Closed) => break,
                    Err(e) => {
                        let _ = tx.send(Err(unavailable(e))).await;
                        break;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Opens an attach stream; after the handshake it is the container's raw stdio.
    pub async fn attach(&self, request: AttachRequest) -> Result<berth_vm::BoxStream, Error> {
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        client_handshake(&mut stream, &Hello::new(SOFTWARE, Channel::Attach(request)))
            .await
            .map_err(handshake_error)?;
        Ok(stream)
    }

    /// Opens a port-forward stream: once the core has connected to the container's port (a
    /// refusal is the core's error), it carries that connection's bytes both ways.
    pub async fn port_forward(
        &self,
        request: berth_proto::PortForward,
    ) -> Result<berth_vm::BoxStream, Error> {
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        client_handshake(
            &mut stream,
            &Hello::new(SOFTWARE, Channel::PortForward(request)),
        )
        .await
        .map_err(handshake_error)?;
        Ok(stream)
    }

    /// Starts an exec instance on its own connection; after the handshake it is the process's
    /// stdio (output from the core, [`berth_proto::Packet`]s to it).
    pub async fn exec(
        &self,
        request: berth_proto::ExecAttachRequest,
    ) -> Result<berth_vm::BoxStream, Error> {
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        client_handshake(&mut stream, &Hello::new(SOFTWARE, Channel::Exec(request)))
            .await
            .map_err(handshake_error)?;
        Ok(stream)
    }

    /// Opens an export stream: after the handshake (a container that does not exist is the
    /// core's refusal) it carries the tar of the container's file system, to its end.
    pub async fn export(
        &self,
        request: berth_proto::ExportRequest,
    ) -> Result<berth_vm::BoxStream, Error> {
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        client_handshake(&mut stream, &Hello::new(SOFTWARE, Channel::Export(request)))
            .await
            .map_err(handshake_error)?;
        Ok(stream)
    }

    /// Opens a build: after the handshake the caller writes the context's bytes and reads
    /// [`berth_proto::BuildFrame`]s until the core closes.
    pub async fn build(
        &self,
        request: berth_proto::BuildRequest,
    ) -> Result<berth_vm::BoxStream, Error> {
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        client_handshake(
            &mut stream,
            &Hello::new(SOFTWARE, Channel::Build(Box::new(request))),
        )
        .await
        .map_err(handshake_error)?;
        Ok(stream)
    }

    /// Follows the core's event log on its own connection: after the handshake it carries
    /// [`berth_proto::EventsFrame`]s until either side closes it.
    pub async fn events(
        &self,
        request: berth_proto::EventsRequest,
    ) -> Result<berth_vm::BoxStream, Error> {
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        client_handshake(&mut stream, &Hello::new(SOFTWARE, Channel::Events(request)))
            .await
            .map_err(handshake_error)?;
        Ok(stream)
    }

    /// Reads one stored blob on its own connection: its size, then its bytes as they arrive,
    /// never held whole (a stream that ends short is an error). A blob the store does not hold
    /// is the core's refusal (`not_found`).
    pub async fn read_blob(&self, digest: &str) -> Result<(u64, BlobBytes), Error> {
        let mut stream = self.backend.dial(CORE_PORT).await.map_err(unavailable)?;
        let channel = Channel::BlobRead(berth_proto::BlobRead {
            digest: digest.to_string(),
        });
        client_handshake(&mut stream, &Hello::new(SOFTWARE, channel))
            .await
            .map_err(handshake_error)?;
        let header: berth_proto::BlobReadHeader = read_frame(&mut stream)
            .await
            .map_err(|e| unavailable(format!("no size for blob {digest}: {e}")))?;
        let size = header.size;
        let reader = tokio_util::io::ReaderStream::with_capacity(
            tokio::io::AsyncReadExt::take(stream, size),
            256 << 10,
        );
        let digest = digest.to_string();
        let bytes =
            futures_util::stream::unfold((reader, 0u64, false), move |(mut reader, got, done)| {
                let digest = digest.clone();
                async move {
                    if done {
                        return None;
                    }
                    match reader.next().await {
                        Some(Ok(b)) => {
                            let got = got + b.len() as u64;
                            Some((Ok(b), (reader, got, false)))
                        }
                        Some(Err(e)) => Some((
                            Err(unavailable(format!("reading blob {digest}: {e}"))),
                            (reader, got, true),
                        )),
                        None if got == size => None,
                        None => Some((
                            Err(Error::new(
                                ErrorCode::DataLoss,
                                format!("blob {digest} ended after {got} of its {size} bytes"),
                            )),
                            (reader, got, true),
                        )),
                    }
                }
            });
        Ok((size, Box::pin(bytes)))
    }

    /// Streams one blob to the core on its own connection. `on_bytes` sees the running total.
    pub async fn write_blob<S, E>(
        &self,
        blob: BlobWrite,
        mut body: S,
        mut on_bytes: impl FnMut(u64),
    ) -> Result<BlobWritten, BlobUploadError<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let size = blob.size;
        let mut stream = self
            .backend
            .dial(CORE_PORT)
            .await
            .map_err(|e| BlobUploadError::Core(unavailable(e)))?;
        client_handshake(&mut stream, &Hello::new(SOFTWARE, Channel::BlobWrite(blob)))
            .await
            .map_err(|e| BlobUploadError::Core(unavailable(e)))?;
        let mut sent = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(BlobUploadError::Source)?;
            if sent + chunk.len() as u64 > size {
                return Err(BlobUploadError::Core(Error::new(
                    ErrorCode::DataLoss,
                    format!("the registry sent more than the {size} bytes the manifest declares"),
                )));
            }
            if stream.write_all(&chunk).await.is_err() {
                // The core stopped reading: its answer says why.
                break;
            }
            sent += chunk.len() as u64;
            on_bytes(sent);
        }
        if sent < size {
            // Closing early makes the core see a short blob, which it refuses and discards.
            let _ = stream.shutdown().await;
        }
        let answer: BlobWriteResult = read_frame(&mut stream).await.map_err(|e| {
            BlobUploadError::Core(unavailable(format!("no answer for the blob: {e}")))
        })?;
        answer.result.map_err(BlobUploadError::Core)
    }
}

/// The bytes of a blob read from the core.
pub type BlobBytes = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobUploadError<E> {
    /// the source of the bytes failed
    #[error("{0}")]
    Source(E),
    /// the core refused or failed
    #[error("{0}")]
    Core(Error),
}
