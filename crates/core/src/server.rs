//! The core's end of `berth-proto`: accept connections, handshake, then serve the control
//! channel (requests answered concurrently) or one blob upload per connection.

use std::sync::Arc;

use berth_proto::{
    read_frame, server_handshake, write_frame, BlobWrite, BlobWriteResult, BlobWritten, Channel,
    CoreInfo, Error, ErrorCode, FrameError, Request, RequestFrame, Response, ResponseFrame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::images::ImageService;

pub const SOFTWARE: &str = concat!("berth-core ", env!("CARGO_PKG_VERSION"));

pub struct Core {
    pub images: ImageService,
}

impl Core {
    /// Serves one accepted connection to its end.
    pub async fn serve_connection<S>(self: Arc<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let hello = match server_handshake(&mut stream, SOFTWARE).await {
            Ok(h) => h,
            // A connection that closes before saying hello is a liveness probe.
            Err(berth_proto::HandshakeError::Frame(FrameError::Closed)) => return,
            Err(e) => {
                warn!("refused a connection: {e}");
                return;
            }
        };
        match hello.channel {
            Channel::Control => self.serve_control(stream).await,
            Channel::BlobWrite(bw) => self.serve_blob(stream, bw).await,
            Channel::Logs(_) | Channel::Attach(_) => {
                let mut stream = stream;
                let error = Error::new(ErrorCode::Unsupported, "containers are not supported yet");
                let _ = write_frame(&mut stream, &BlobWriteResult { result: Err(error) }).await;
            }
        }
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
            } => Response::Removed {
                events: images.remove(&selector, force)?,
            },
            Request::DiskUsage => Response::DiskUsage(images.disk_usage()?),
            Request::ContainerCreate(_)
            | Request::ContainerStart { .. }
            | Request::ContainerStop { .. }
            | Request::ContainerKill { .. }
            | Request::ContainerWait { .. }
            | Request::ContainerRemove { .. }
            | Request::ContainerList { .. }
            | Request::ContainerInspect { .. } => {
                return Err(Error::new(ErrorCode::Unsupported, "containers are not supported yet"))
            }
        })
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
        }
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
