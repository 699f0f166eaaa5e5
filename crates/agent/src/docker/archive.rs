//! `docker save` (`GET /images/get?names=…`, `GET /images/{name}/get`) and `docker load`
//! (`POST /images/load`); the archive format is `crate::archive`'s.

use std::sync::Arc;

use berth_proto::{ImageInfo, Request, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

use super::images::parse_ref;
use super::{json_stream, unexpected, ApiError, ApiResult, Resp};
use crate::archive::{self, ArchiveError, SaveItem};
use crate::daemon::Daemon;
use crate::names::{familiar, selector};

/// The `names` of `GET /images/get` (the parameter repeats, one per image).
pub fn names_of(query: Option<&str>) -> Vec<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "names")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Whether the name says a tag or a digest ("busybox:1", "a@sha256:…"), not just a repository.
fn names_a_version(name: &str) -> bool {
    name.contains('@') || name.rsplit('/').next().is_some_and(|l| l.contains(':'))
}

/// What `docker save NAME…` means, as dockerd: a tag is that image under that tag; a repository
/// alone is every tag of it; an id or a digest is the image without a tag.
async fn items(daemon: &Daemon, names: &[String]) -> Result<Vec<SaveItem>, ApiError> {
    let images = match daemon.core.call(Request::ImageList).await? {
        Response::Images { images } => images,
        other => return Err(unexpected(other)),
    };
    let mut out: Vec<SaveItem> = Vec::new();
    let mut add = |image: &ImageInfo, tag: Option<String>| match out
        .iter_mut()
        .find(|i| i.image.id == image.id)
    {
        Some(item) => {
            if let Some(t) = tag.filter(|t| !item.tags.contains(t)) {
                item.tags.push(t);
            }
        }
        None => out.push(SaveItem {
            image: image.clone(),
            tags: tag.into_iter().collect(),
        }),
    };
    for name in names {
        if !names_a_version(name) {
            if let Ok(r) = parse_ref(name) {
                let repo = r.name();
                let tagged = crate::push::tags_of(&images, &repo);
                if !tagged.is_empty() {
                    for j in tagged {
                        add(&j.image, Some(format!("{repo}:{}", j.tag)));
                    }
                    continue;
                }
            }
        }
        let sel =
            selector(name).map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
        let info = match daemon
            .core
            .call(Request::ImageInspect { selector: sel })
            .await
        {
            Ok(Response::Image(i)) => *i,
            Ok(other) => return Err(unexpected(other)),
            Err(e) if e.code == berth_proto::ErrorCode::NotFound => {
                return Err(ApiError::not_found(format!("No such image: {name}")))
            }
            Err(e) => return Err(e.into()),
        };
        let tag = (names_a_version(name) && !name.contains('@'))
            .then(|| parse_ref(name).map(|r| r.to_string()))
            .transpose()?;
        add(&info, tag);
    }
    Ok(out)
}

pub async fn save(daemon: Arc<Daemon>, names: Vec<String>) -> ApiResult {
    if names.is_empty() {
        return Err(ApiError::bad_request("no image names given to save"));
    }
    let items = items(&daemon, &names).await?;
    // Every blob the archive needs must be stored before the answer starts.
    let mut wanted: Vec<String> = Vec::new();
    for i in &items {
        wanted.push(i.image.manifest_digest.clone());
        wanted.push(i.image.id.clone());
        wanted.extend(i.image.layers.iter().map(|l| l.digest.clone()));
    }
    let present = match daemon
        .core
        .call(Request::BlobsPresent {
            digests: wanted.clone(),
        })
        .await?
    {
        Response::Present { present } => present,
        other => return Err(unexpected(other)),
    };
    if let Some(missing) = wanted.iter().find(|d| !present.contains(d)) {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "blob {missing} of the image is not in the store (only its unpacked layer is), so it cannot be saved"
            ),
        ));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<String>();
    let core = daemon.core.clone();
    tokio::spawn(async move {
        if let Err(e) = archive::save(core, items, tx).await {
            tracing::warn!("docker save of {names:?}: {e}");
            let _ = fail_tx.send(e.to_string());
        }
    });
    Ok(tar_stream(rx, fail_rx))
}

/// A streamed tar answer; a failure part-way ends the body with an error (the client sees the
/// connection break, not a short archive that looks whole).
fn tar_stream(rx: mpsc::Receiver<Bytes>, fail: tokio::sync::oneshot::Receiver<String>) -> Resp {
    let stream = futures_util::stream::unfold((rx, Some(fail)), |(mut rx, fail)| async move {
        match rx.recv().await {
            Some(b) => Some((Ok::<_, std::io::Error>(Frame::data(b)), (rx, fail))),
            None => {
                let why = match fail {
                    Some(f) => f.await.ok()?,
                    None => return None,
                };
                Some((Err(std::io::Error::other(why)), (rx, None)))
            }
        }
    });
    hyper::Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("valid response")
}

fn load_error(e: ArchiveError) -> ApiError {
    match e {
        ArchiveError::Invalid(m) => ApiError::bad_request(m),
        ArchiveError::Core(e) => e.into(),
        ArchiveError::Io(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// `POST /images/load`: the archive is read whole (spooled), then loaded; the answer is the
/// JSON stream of "Loaded image: …" lines, as dockerd's.
pub async fn load(daemon: Arc<Daemon>, req: hyper::Request<Incoming>) -> ApiResult {
    let body = req.into_body().into_data_stream();
    let spooled = archive::spool(body).await.map_err(load_error)?;
    let loaded = archive::load(daemon.core.clone(), spooled, |t| {
        parse_ref(t)
            .map(|r| r.to_string())
            .map_err(|e| format!("RepoTag {t:?}: {}", e.message))
    })
    .await
    .map_err(load_error)?;
    let (tx, rx) = mpsc::channel::<Bytes>(loaded.len() * 2 + 1);
    for l in &loaded {
        let lines: Vec<String> = if l.tags.is_empty() {
            vec![format!("Loaded image ID: {}\n", l.id)]
        } else {
            l.tags
                .iter()
                .map(|t| format!("Loaded image: {}\n", familiar(t)))
                .collect()
        };
        for line in lines {
            let mut b = serde_json::to_vec(&json!({ "stream": line })).expect("serialisable");
            b.extend_from_slice(b"\r\n");
            let _ = tx.send(Bytes::from(b)).await;
        }
    }
    Ok(json_stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_repeat_and_versions_are_told_apart() {
        assert_eq!(
            names_of(Some(
                "names=busybox&names=127.0.0.1%3A15000%2Fberth%2Fhello%3Av2s2"
            )),
            vec!["busybox", "127.0.0.1:15000/berth/hello:v2s2"]
        );
        assert!(names_of(None).is_empty());
        assert!(!names_a_version("127.0.0.1:15000/berth/hello"));
        assert!(names_a_version("127.0.0.1:15000/berth/hello:v1"));
        assert!(names_a_version("busybox@sha256:00"));
        assert!(!names_a_version("busybox"));
    }
}
