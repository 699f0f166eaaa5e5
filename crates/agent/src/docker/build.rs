//! `POST /commit` and `POST /build` (the classic builder's protocol, which the docker CLI
//! speaks with `DOCKER_BUILDKIT=0`). The build itself runs in the core; berthd spools the
//! context (gzip undone), reads the Dockerfile's FROM and `COPY --from` images out of it, pulls
//! the missing ones (the core does no registry I/O), then streams the context to the core's
//! `build` channel and turns its frames into dockerd's JSON lines.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use berth_proto::{
    BuildFrame, BuildRequest, CommitRequest, ContainerRef, ImageSelector, Request, Response,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::images::{error_line, parse_ref, progress_line, registry_error};
use super::{json, json_stream, read_body, unexpected, ApiError, ApiResult, Query};
use crate::daemon::Daemon;
use crate::events;
use crate::names::familiar;
use crate::pull::{self, PullError};

/// Every value of a repeatable query parameter (`t`, `changes`), in order.
pub(super) fn all_values(query: Option<&str>, key: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn truthy(v: Option<&str>, default: bool) -> bool {
    match v {
        None | Some("") => default,
        Some(v) => matches!(v, "1" | "true" | "True" | "TRUE"),
    }
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn stream_line(text: &str) -> Bytes {
    let mut b = serde_json::to_vec(&json!({ "stream": text })).expect("JSON");
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

fn aux_line(id: &str) -> Bytes {
    let mut b = serde_json::to_vec(&json!({ "aux": { "ID": id } })).expect("JSON");
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

/// `POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes=` with the `Config` as
/// the body (or `null`).
pub async fn commit(daemon: &Daemon, q: &Query, req: hyper::Request<Incoming>) -> ApiResult {
    let changes = all_values(req.uri().query(), "changes");
    let container = q.get("container").unwrap_or("").to_string();
    let tag = match q.get("repo").filter(|s| !s.is_empty()) {
        Some(repo) => {
            let text = match q.get("tag").filter(|s| !s.is_empty()) {
                Some(t) => format!("{repo}:{t}"),
                None => repo.to_string(),
            };
            let r = parse_ref(&text)?;
            if r.digest.is_some() {
                return Err(ApiError::bad_request(
                    "refusing to create a tag with a digest reference",
                ));
            }
            Some(r.to_string())
        }
        None => None,
    };
    let body = read_body(req).await?;
    let config: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let request = CommitRequest {
        container: ContainerRef(container.clone()),
        tag: tag.clone(),
        comment: q.get("comment").unwrap_or("").to_string(),
        author: q.get("author").unwrap_or("").to_string(),
        pause: truthy(q.get("pause"), true),
        changes,
        config: config.filter(|v| !v.is_null()),
    };
    let info = match daemon
        .core
        .call(Request::ContainerCommit(Box::new(request)))
        .await
    {
        Ok(Response::Image(info)) => info,
        Ok(other) => return Err(unexpected(other)),
        Err(e) => return Err(super::containers::not_found_or(e, &container)),
    };
    if let Some(t) = &tag {
        let labels = events::image_labels(&info.config);
        events::publish(
            &daemon.core,
            events::image_event("tag", &info.id, &familiar(t), labels),
        )
        .await;
    }
    Ok(json(StatusCode::CREATED, &json!({ "Id": info.id })))
}

/// The untagged images another image was made on: a child's history and layers begin with
/// all of the parent's (each build step, and each commit, adds to its parent's). These are
/// dockerd's intermediate images, listed with `docker images -a` only (and `docker image prune` removes the ones left without a child).
pub(super) fn intermediates(infos: &[berth_proto::ImageInfo]) -> std::collections::HashSet<String> {
    let parsed: Vec<(&str, bool, Vec<Value>, Vec<&str>)> = infos
        .iter()
        .map(|i| {
            let v: Value = serde_json::from_str(&i.config).unwrap_or(Value::Null);
            let history = v["history"].as_array().cloned().unwrap_or_default();
            let layers = i.layers.iter().map(|l| l.diff_id.as_str()).collect();
            let untagged = i.repo_tags.is_empty() && i.repo_digests.is_empty();
            (i.id.as_str(), untagged, history, layers)
        })
        .collect();
    let mut out = std::collections::HashSet::new();
    for (id, untagged, h, l) in &parsed {
        if !untagged || h.is_empty() {
            continue;
        }
        let has_child = parsed.iter().any(|(cid, _, ch, cl)| {
            cid != id
                && ch.len() > h.len()
                && ch[..h.len()] == h[..]
                && cl.len() >= l.len()
                && cl[..l.len()] == l[..]
        });
        if has_child {
            out.insert(id.to_string());
        }
    }
    out
}

/// A temporary file of berthd's, deleted when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!(
            "berthd-{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The context as an uncompressed tar file: the body spooled, gzip undone.
async fn spool_context(body: Incoming) -> Result<TempFile, ApiError> {
    let raw = TempFile::new("context");
    let mut f = tokio::fs::File::create(&raw.0).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("spooling the build context: {e}"),
        )
    })?;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the build context: {e}")))?;
        if let Ok(data) = frame.into_data() {
            f.write_all(&data).await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("spooling the build context: {e}"),
                )
            })?;
        }
    }
    f.flush().await.ok();
    drop(f);
    tokio::task::spawn_blocking(move || -> Result<TempFile, ApiError> {
        let mut head = [0u8; 2];
        let n = std::fs::File::open(&raw.0)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        let tar = if n == 2 && head == [0x1f, 0x8b] {
            let plain = TempFile::new("context-tar");
            let r = std::fs::File::open(&raw.0)
                .and_then(|f| {
                    let mut d = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f));
                    let mut out = std::fs::File::create(&plain.0)?;
                    std::io::copy(&mut d, &mut out)
                })
                .map_err(|e| {
                    ApiError::bad_request(format!("decompressing the build context: {e}"))
                });
            r?;
            plain
        } else {
            raw
        };
        end_tar(&tar.0).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("spooling the build context: {e}"),
            )
        })?;
        Ok(tar)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// Pads the context to a whole tar and adds the end-of-archive blocks. The docker CLI sends
/// `build -f - DIR` contexts cut right after the last entry's data (no padding, no end
/// marker), which Go's tar reader in dockerd takes; zeros after a proper end change nothing.
fn end_tar(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let len = std::fs::metadata(path)?.len();
    let pad = (512 - len % 512) % 512;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(&vec![0u8; pad as usize + 1024])
}

/// The Dockerfile's text from the context tar (`None` when it is not there: the core says so).
fn read_dockerfile(tar_path: &std::path::Path, name: &str) -> Option<String> {
    let want: PathBuf = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let f = std::fs::File::open(tar_path).ok()?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    for e in a.entries().ok()? {
        let mut e = e.ok()?;
        let p: PathBuf = e
            .path()
            .ok()?
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        if p == want && e.header().entry_type().is_file() {
            let mut s = String::new();
            e.by_ref().take(16 << 20).read_to_string(&mut s).ok()?;
            return Some(s);
        }
    }
    None
}

/// The image an external reference names: stored, else pulled now (progress on `lines`).
async fn ensure_image(
    daemon: &Arc<Daemon>,
    text: &str,
    always_pull: bool,
    lines: &mpsc::Sender<Bytes>,
) -> Result<String, String> {
    let reference = parse_ref(text).map_err(|e| e.message)?;
    let name = reference.to_string();
    let inspect = |n: String| {
        let core = daemon.core.clone();
        async move {
            match core
                .call(Request::ImageInspect {
                    selector: ImageSelector {
                        name: Some(n),
                        id_prefix: None,
                    },
                })
                .await
            {
                Ok(Response::Image(i)) => Some(i.id),
                _ => None,
            }
        }
    };
    if !always_pull {
        if let Some(id) = inspect(name.clone()).await {
            return Ok(id);
        }
    }
    let creds = crate::credentials::for_pull(&reference.registry, None).await;
    let registry = daemon
        .registry_for_pull(&reference, creds)
        .map_err(|e| e.message)?;
    let resolved = pull::resolve(&registry, &reference, &daemon.platform)
        .await
        .map_err(|e| match e {
            PullError::Registry(e) => registry_error(&reference, &e).message,
            other => other.to_string(),
        })?;
    let (ptx, mut prx) = mpsc::channel(256);
    let task = tokio::spawn(pull::fetch(daemon.core.clone(), registry, resolved, ptx));
    while let Some(p) = prx.recv().await {
        let _ = lines.send(progress_line(&p)).await;
    }
    match task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(format!("pull failed: {e}")),
    }
    inspect(name)
        .await
        .ok_or_else(|| format!("{text} was pulled but is not stored"))
}

/// `POST /build`: the classic builder's protocol.
pub async fn build(daemon: Arc<Daemon>, req: hyper::Request<Incoming>) -> ApiResult {
    let raw_query = req.uri().query().map(str::to_string);
    let q = Query::parse(raw_query.as_deref());
    if q.get("version") == Some("2") {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "BuildKit is not supported by Berth: build with the classic builder (DOCKER_BUILDKIT=0)",
        ));
    }
    if q.get("remote").is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "remote build contexts (a URL or a Git repository) are not supported by Berth: build from a local directory",
        ));
    }
    let mut tags = Vec::new();
    for t in all_values(raw_query.as_deref(), "t") {
        let r = parse_ref(&t)?;
        if r.digest.is_some() {
            return Err(ApiError::bad_request(format!(
                "invalid tag {t:?}: a tag cannot name a digest"
            )));
        }
        tags.push(r.to_string());
    }
    let map_of = |key: &str| -> Result<BTreeMap<String, Option<String>>, ApiError> {
        match q.get(key).filter(|s| !s.is_empty()) {
            None => Ok(BTreeMap::new()),
            Some(s) => serde_json::from_str(s)
                .map_err(|e| ApiError::bad_request(format!("invalid {key}: {e}"))),
        }
    };
    let build_args = map_of("buildargs")?;
    let labels: BTreeMap<String, String> = map_of("labels")?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();
    let dockerfile = q.get("dockerfile").unwrap_or("Dockerfile").to_string();
    let request = BuildRequest {
        context_size: 0,
        dockerfile: dockerfile.clone(),
        tags: tags.clone(),
        build_args,
        target: q.get("target").unwrap_or("").to_string(),
        no_cache: truthy(q.get("nocache"), false),
        rm: truthy(q.get("rm"), true),
        force_rm: truthy(q.get("forcerm"), false),
        labels,
        quiet: truthy(q.get("q"), false),
        network: q.get("networkmode").unwrap_or("").to_string(),
        images: BTreeMap::new(),
    };
    // `--pull`: the FROM images are pulled again even when stored.
    let always_pull = truthy(q.get("pull"), false);
    let context = spool_context(req.into_body()).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if let Err(message) = run_build(&daemon, request, always_pull, context, &tx).await {
            let _ = tx.send(error_line(&message)).await;
        }
    });
    Ok(json_stream(rx))
}

async fn run_build(
    daemon: &Arc<Daemon>,
    mut request: BuildRequest,
    always_pull: bool,
    context: TempFile,
    lines: &mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let path = context.0.clone();
    let name = request.dockerfile.clone();
    let text = tokio::task::spawn_blocking(move || read_dockerfile(&path, &name))
        .await
        .map_err(|e| e.to_string())?;
    // A Dockerfile that does not parse is reported by the core, at its line.
    if let Some(refs) = text
        .as_deref()
        .and_then(|t| berth_dockerfile::stages::external_images(t, &request.build_args).ok())
    {
        for r in refs {
            let got = ensure_image(daemon, &r, always_pull, lines).await;
            request.images.insert(r, got);
        }
    }
    let size = std::fs::metadata(&context.0)
        .map_err(|e| format!("reading the build context: {e}"))?
        .len();
    request.context_size = size;
    let quiet = request.quiet;
    let tags = request.tags.clone();
    let stream = daemon.core.build(request).await.map_err(|e| e.message)?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let file = context.0.clone();
    let sender = tokio::spawn(async move {
        let mut f = tokio::fs::File::open(&file).await?;
        tokio::io::copy(&mut f, &mut wr).await?;
        wr.flush().await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut result = Err("the build ended without an answer from the core".to_string());
    loop {
        let frame: BuildFrame = match berth_proto::read_frame(&mut rd).await {
            Ok(f) => f,
            Err(_) => break,
        };
        match frame {
            BuildFrame::Stream { text } => {
                if lines.send(stream_line(&text)).await.is_err() {
                    // The client went away; the core finishes (and cleans up) on its own.
                    break;
                }
            }
            BuildFrame::Error { message } => {
                result = Err(message);
                break;
            }
            BuildFrame::Done { id } => {
                result = Ok(id);
                break;
            }
        }
    }
    // Keep the write half until the end: closing it early would end the whole VM stream.
    let _ = sender.await;
    drop(context);
    let id = result?;
    let _ = lines.send(aux_line(&id)).await;
    if quiet {
        let _ = lines.send(stream_line(&format!("{id}\n"))).await;
    } else {
        let _ = lines
            .send(stream_line(&format!("Successfully built {}\n", short(&id))))
            .await;
    }
    let config = match daemon
        .core
        .call(Request::ImageInspect {
            selector: ImageSelector {
                name: None,
                id_prefix: Some(id.clone()),
            },
        })
        .await
    {
        Ok(Response::Image(i)) => i.config,
        _ => String::new(),
    };
    for t in tags {
        let shown = familiar(&t);
        events::publish(
            &daemon.core,
            events::image_event("tag", &id, &shown, events::image_labels(&config)),
        )
        .await;
        if !quiet {
            let _ = lines
                .send(stream_line(&format!("Successfully tagged {shown}\n")))
                .await;
        }
    }
    Ok(())
}
