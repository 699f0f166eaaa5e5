//! `POST /images/{name}/push?tag=`: `docker push`. A name that does not parse is an HTTP error;
//! everything after that (an unknown tag included) is written into the JSON progress stream,
//! as dockerd 20.10 does.

use std::sync::Arc;

use berth_proto::{Request, Response};
use berth_registry::{Reference, UploadPolicy};
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::images::{error_line, parse_ref, progress_line};
use super::{json_stream, unexpected, ApiError, ApiResult, Query};
use crate::daemon::Daemon;
use crate::names::familiar;
use crate::pull::Progress;
use crate::push::{self, PushOutput, TagJob};

/// `{"progressDetail":{},"aux":{"Tag","Digest","Size"}}`: the record the docker CLI (and
/// SDKs) read the pushed digest from.
fn aux_line(tag: &str, digest: &str, size: u64) -> Bytes {
    let mut b = serde_json::to_vec(&json!({
        "progressDetail": {},
        "aux": { "Tag": tag, "Digest": digest, "Size": size },
    }))
    .expect("serialisable");
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

/// The repository and the tag asked for: `tag` wins over a tag written in the name; none at
/// all means every tag of the repository.
fn target(name: &str, tag: &str) -> Result<(Reference, Option<String>), ApiError> {
    if name.contains('@') || tag.contains(':') {
        return Err(ApiError::bad_request(format!(
            "cannot push a digest reference: {name}"
        )));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    let (repo, named_tag) = match last.split_once(':') {
        Some((_, t)) => (&name[..name.len() - t.len() - 1], Some(t.to_string())),
        None => (name, None),
    };
    let tag = Some(tag.to_string())
        .filter(|t| !t.is_empty())
        .or(named_tag);
    let checked = match &tag {
        Some(t) => parse_ref(&format!("{repo}:{t}"))?,
        None => parse_ref(repo)?,
    };
    Ok((checked, tag))
}

pub async fn push(daemon: Arc<Daemon>, name: &str, q: &Query, auth: Option<&str>) -> ApiResult {
    let (target, tag) = target(name, q.get("tag").unwrap_or(""))?;
    let repository = target.name();
    let images = match daemon.core.call(Request::ImageList).await? {
        Response::Images { images } => images,
        other => return Err(unexpected(other)),
    };
    let creds = crate::credentials::for_pull(&target.registry, auth).await;
    let registry = daemon.registry_for_pull(&target, creds)?;

    let (line_tx, line_rx) = mpsc::channel::<Bytes>(64);
    let _ = line_tx
        .send(progress_line(&Progress {
            id: None,
            status: format!("The push refers to repository [{repository}]"),
            current: None,
        }))
        .await;
    let all = push::tags_of(&images, &repository);
    let jobs: Result<Vec<TagJob>, String> = if all.is_empty() {
        Err(format!(
            "An image does not exist locally with the tag: {}",
            familiar(&repository)
        ))
    } else {
        match &tag {
            Some(t) => all
                .into_iter()
                .find(|j| &j.tag == t)
                .map(|j| vec![j])
                .ok_or_else(|| format!("tag does not exist: {}", familiar(&target.to_string()))),
            None => Ok(all),
        }
    };
    let jobs = match jobs {
        Ok(j) => j,
        Err(message) => {
            let _ = line_tx.send(error_line(&message)).await;
            return Ok(json_stream(line_rx));
        }
    };

    let (ptx, mut prx) = mpsc::channel::<PushOutput>(256);
    let core = daemon.core.clone();
    let pushed_images: Vec<(String, berth_proto::ImageInfo)> = jobs
        .iter()
        .map(|j| (format!("{repository}:{}", j.tag), j.image.clone()))
        .collect();
    let task = tokio::spawn(push::push(
        core.clone(),
        registry,
        target.clone(),
        jobs,
        images,
        UploadPolicy::default(),
        ptx,
    ));
    tokio::spawn(async move {
        while let Some(out) = prx.recv().await {
            let bytes = match out {
                PushOutput::Line(p) => progress_line(&p),
                PushOutput::Pushed { tag, digest, size } => aux_line(&tag, &digest, size),
            };
            if line_tx.send(bytes).await.is_err() {
                // The client went away; the push goes on to its end.
                break;
            }
        }
        let message = match task.await {
            Ok(Ok(pushed)) => {
                for (tag, _) in &pushed {
                    let reference = format!("{repository}:{tag}");
                    if let Some((_, image)) = pushed_images.iter().find(|(r, _)| *r == reference) {
                        push::announce_pushed(&core, &reference, image).await;
                    }
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("push failed: {e}"),
        };
        tracing::warn!("push to {repository} failed: {message}");
        let _ = line_tx.send(error_line(&message)).await;
    });
    Ok(json_stream(line_rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_tags() {
        let (r, t) = target("127.0.0.1:15000/berth/x", "v1").unwrap();
        assert_eq!(r.name(), "127.0.0.1:15000/berth/x");
        assert_eq!(t.as_deref(), Some("v1"));
        let (r, t) = target("127.0.0.1:15000/berth/x:v2", "").unwrap();
        assert_eq!(r.name(), "127.0.0.1:15000/berth/x");
        assert_eq!(t.as_deref(), Some("v2"));
        let (r, t) = target("busybox", "").unwrap();
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(t, None);
        assert!(target("busybox@sha256:00", "").is_err());
        assert!(target("Busybox", "").is_err());
        assert!(target("busybox", "bad tag").is_err());
    }
}
