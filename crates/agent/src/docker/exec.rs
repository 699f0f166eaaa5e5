//! Exec routes (`POST /containers/{id}/exec`, `/exec/{id}/start|resize|json`), container resize,
//! and the hijacked connection that exec start and attach share.

use std::sync::Arc;

use berth_proto::{ContainerRef, ExecAttachRequest, ExecInfo, ExecSpec, Packet, Request, Response};
use bytes::Bytes;
use hyper::{header, Request as HttpRequest, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{empty, json, strings, unexpected, ApiError, ApiResult, Query};
use crate::daemon::Daemon;

fn no_such_container(e: berth_proto::Error, id: &str) -> ApiError {
    if e.code == berth_proto::ErrorCode::NotFound {
        return ApiError::not_found(format!("No such container: {id}"));
    }
    e.into()
}

/// Docker's `ConsoleSize` ([height, width]); absent, null or zeros are none.
pub(super) fn console_size(v: &Value) -> Option<(u16, u16)> {
    let a = v.as_array()?;
    let h = u16::try_from(a.first()?.as_u64()?).ok()?;
    let w = u16::try_from(a.get(1)?.as_u64()?).ok()?;
    (h > 0 || w > 0).then_some((h, w))
}

/// The ExecConfig body as an [`ExecSpec`].
pub fn exec_spec_from_body(container: &str, body: &[u8]) -> Result<ExecSpec, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in the exec request: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "invalid JSON in the exec request: not an object",
        ));
    }
    let cmd = match &v["Cmd"] {
        Value::String(s) => vec![s.clone()],
        other => strings(other),
    };
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(ApiError::bad_request("No exec command specified"));
    }
    let opt = |k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let flag = |k: &str| v[k].as_bool().unwrap_or(false);
    Ok(ExecSpec {
        container: ContainerRef(container.to_string()),
        cmd,
        env: strings(&v["Env"]),
        working_dir: opt("WorkingDir"),
        user: opt("User"),
        tty: flag("Tty"),
        attach_stdin: flag("AttachStdin"),
        attach_stdout: flag("AttachStdout"),
        attach_stderr: flag("AttachStderr"),
        privileged: flag("Privileged"),
        detach_keys: v["DetachKeys"].as_str().unwrap_or("").to_string(),
        console_size: console_size(&v["ConsoleSize"]),
    })
}

/// `POST /containers/{id}/exec`.
pub async fn create(daemon: &Daemon, id: &str, body: &[u8]) -> ApiResult {
    let spec = exec_spec_from_body(id, body)?;
    match daemon
        .core
        .call(Request::ExecCreate(Box::new(spec)))
        .await
        .map_err(|e| no_such_container(e, id))?
    {
        Response::ExecCreated { id } => Ok(json(StatusCode::CREATED, &json!({ "Id": id }))),
        other => Err(unexpected(other)),
    }
}

async fn exec_info(daemon: &Daemon, id: &str) -> Result<ExecInfo, ApiError> {
    match daemon
        .core
        .call(Request::ExecInspect { exec: id.into() })
        .await?
    {
        Response::Exec(e) => Ok(*e),
        other => Err(unexpected(other)),
    }
}

/// `GET /exec/{id}/json`, with dockerd's fields.
pub async fn inspect(daemon: &Daemon, id: &str) -> ApiResult {
    let e = exec_info(daemon, id).await?;
    let s = &e.spec;
    let v = json!({
        "ID": e.id,
        "Running": e.running,
        "ExitCode": e.exit_code,
        "ProcessConfig": {
            "tty": s.tty,
            "entrypoint": s.cmd.first().cloned().unwrap_or_default(),
            "arguments": s.cmd.iter().skip(1).collect::<Vec<_>>(),
            "privileged": s.privileged,
            "user": s.user.clone().unwrap_or_default(),
        },
        "OpenStdin": s.attach_stdin,
        "OpenStderr": s.attach_stderr,
        "OpenStdout": s.attach_stdout,
        "CanRemove": false,
        "ContainerID": e.container_id,
        "DetachKeys": s.detach_keys,
        "Pid": e.pid.unwrap_or(0),
    });
    Ok(json(StatusCode::OK, &v))
}

/// `h` and `w` as dockerd reads them (an integer each, else 400).
fn size(q: &Query) -> Result<(u16, u16), ApiError> {
    let one = |k: &str| {
        let raw = q.get(k).unwrap_or("");
        let n: i64 = raw.parse().map_err(|_| {
            ApiError::bad_request(format!("strconv.Atoi: parsing {raw:?}: invalid syntax"))
        })?;
        u16::try_from(n).map_err(|_| {
            ApiError::bad_request(format!("invalid terminal size {k}={n}: out of range"))
        })
    };
    Ok((one("h")?, one("w")?))
}

/// `POST /exec/{id}/resize?h=&w=`.
pub async fn resize(daemon: &Daemon, id: &str, q: &Query) -> ApiResult {
    let (height, width) = size(q)?;
    match daemon
        .core
        .call(Request::ExecResize {
            exec: id.into(),
            height,
            width,
        })
        .await?
    {
        Response::Done => Ok(empty(StatusCode::OK)),
        other => Err(unexpected(other)),
    }
}

/// `POST /containers/{id}/resize?h=&w=`.
pub async fn resize_container(daemon: &Daemon, id: &str, q: &Query) -> ApiResult {
    let (height, width) = size(q)?;
    match daemon
        .core
        .call(Request::ContainerResize {
            container: ContainerRef(id.into()),
            height,
            width,
        })
        .await
        .map_err(|e| no_such_container(e, id))?
    {
        Response::Done => Ok(empty(StatusCode::OK)),
        other => Err(unexpected(other)),
    }
}

/// `POST /exec/{id}/start`: detached, or hijacked like attach.
pub async fn start(
    daemon: Arc<Daemon>,
    id: &str,
    req: HttpRequest<hyper::body::Incoming>,
) -> ApiResult {
    let upgrade = req.headers().get(header::UPGRADE).is_some();
    // The body is read here; the upgrade stays with the request's parts.
    let (parts, body) = req.into_parts();
    let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, 1 << 20))
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("invalid JSON in the exec start request: {e}"))
        })?
    };
    let info = exec_info(&daemon, id).await?;
    if v["Detach"].as_bool().unwrap_or(false) {
        return match daemon
            .core
            .call(Request::ExecStart { exec: info.id })
            .await?
        {
            Response::Done => Ok(empty(StatusCode::OK)),
            other => Err(unexpected(other)),
        };
    }
    let core_stream = daemon
        .core
        .exec(ExecAttachRequest {
            exec: info.id.clone(),
        })
        .await?;
    let req = HttpRequest::from_parts(parts, http_body_util::Empty::<Bytes>::new());
    Ok(hijack(
        req,
        upgrade,
        core_stream,
        info.spec.tty,
        info.spec.attach_stdin,
    ))
}

fn content_type(tty: bool) -> &'static str {
    if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    }
}

/// Answers a stream request: a client that asked to upgrade gets `101` and the hijacked
/// connection carries the process's stdio both ways (stdin as [`Packet`]s to the core, the
/// client's half-close as `CloseStdin`); any other gets the output as the response body.
pub fn hijack<B: Send + 'static>(
    req: HttpRequest<B>,
    upgrade: bool,
    core_stream: berth_vm::BoxStream,
    tty: bool,
    stdin: bool,
) -> super::Resp {
    let ct = content_type(tty);
    if !upgrade {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            let mut chunks = tokio_util::io::ReaderStream::new(core_stream);
            while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut chunks).await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut resp = super::json_stream(rx);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, ct.parse().expect("valid header"));
        return resp;
    }
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => pipe(hyper_util::rt::TokioIo::new(upgraded), core_stream, stdin).await,
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
    });
    hyper::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONTENT_TYPE, ct)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(super::full(Bytes::new()))
        .expect("valid response")
}

/// Carries a hijacked client connection to the core and back until the core's side ends. The
/// client's end of input is passed on as a packet, never as a half-close: transports without
/// half-close (the VM's hybrid vsock) would end the whole stream.
async fn pipe<C>(client: C, core: berth_vm::BoxStream, stdin: bool)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut core_rd, mut core_wr) = tokio::io::split(core);
    let input = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if stdin
                && core_wr
                    .write_all(&Packet::Stdin(buf[..n].to_vec()).encode())
                    .await
                    .is_err()
            {
                return;
            }
        }
        if stdin {
            let _ = core_wr.write_all(&Packet::CloseStdin.encode()).await;
            let _ = core_wr.flush().await;
        }
        // Keep the core's side open: it closes when the output ends.
        std::future::pending::<()>().await;
        drop(core_wr);
    });
    let _ = tokio::io::copy(&mut core_rd, &mut client_wr).await;
    let _ = client_wr.shutdown().await;
    input.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_config_maps_to_a_spec() {
        let body = br#"{"User":"nobody","Privileged":true,"Tty":true,"ConsoleSize":[40,120],
            "AttachStdin":true,"AttachStdout":true,"AttachStderr":false,"DetachKeys":"ctrl-x",
            "Env":["A=1"],"WorkingDir":"/tmp","Cmd":["sh","-c","exit 3"]}"#;
        let s = exec_spec_from_body("c1", body).unwrap();
        assert_eq!(s.container, ContainerRef("c1".into()));
        assert_eq!(s.cmd, ["sh", "-c", "exit 3"]);
        assert_eq!(s.user.as_deref(), Some("nobody"));
        assert_eq!(s.working_dir.as_deref(), Some("/tmp"));
        assert!(s.privileged && s.tty && s.attach_stdin && s.attach_stdout && !s.attach_stderr);
        assert_eq!(s.console_size, Some((40, 120)));
        assert_eq!(s.detach_keys, "ctrl-x");
        assert_eq!(s.env, ["A=1"]);
        let s = exec_spec_from_body("c1", br#"{"Cmd":["ls"],"ConsoleSize":null}"#).unwrap();
        assert_eq!(s.console_size, None);
        assert!(!s.tty);
    }

    #[test]
    fn bad_exec_configs_are_refused() {
        let e = exec_spec_from_body("c", b"{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
        let e = exec_spec_from_body("c", br#"{"Cmd":[]}"#).unwrap_err();
        assert_eq!(e.message, "No exec command specified");
        let e = exec_spec_from_body("c", b"[1]").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn sizes_parse_like_dockerd() {
        let q = Query::parse(Some("h=40&w=120"));
        assert_eq!(size(&q).unwrap(), (40, 120));
        let e = size(&Query::parse(Some("h=x&w=1"))).unwrap_err();
        assert_eq!(e.message, "strconv.Atoi: parsing \"x\": invalid syntax");
        assert!(size(&Query::parse(Some("w=1"))).is_err());
        assert!(size(&Query::parse(Some("h=-1&w=1"))).is_err());
    }

    #[tokio::test]
    async fn the_pipe_sends_stdin_as_packets_and_its_end_as_close() {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (core, mut core_far) = tokio::io::duplex(1024);
        let core: berth_vm::BoxStream = Box::new(core);
        let task = tokio::spawn(pipe(client, core, true));
        client_far.write_all(b"hi\n").await.unwrap();
        client_far.shutdown().await.unwrap();
        let p = berth_proto::read_packet(&mut core_far).await.unwrap();
        assert_eq!(p, Packet::Stdin(b"hi\n".to_vec()));
        let p = berth_proto::read_packet(&mut core_far).await.unwrap();
        assert_eq!(p, Packet::CloseStdin);
        // Output still flows after the client's half-close, and the core's end ends it all.
        core_far.write_all(b"out").await.unwrap();
        drop(core_far);
        let mut got = Vec::new();
        client_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"out");
        task.await.unwrap();
    }
}
