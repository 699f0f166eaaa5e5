//! Image routes: pull (`POST /images/create`), list, inspect, history, tag, remove, `system df`.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::{ImageInfo, Request, Response};
use berth_registry::{Platform, Reference, RegistryError};
use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::model::{ContainerSummary, ImageHistoryItem, ImageSummary};
use super::{json, json_stream, unexpected, ApiError, ApiResult, Query};
use crate::daemon::Daemon;
use crate::events;
use crate::names::{familiar, selector};
use crate::pull::{self, Progress, PullError};

pub(super) fn parse_ref(s: &str) -> Result<Reference, ApiError> {
    Reference::parse(s).map_err(|e| ApiError::bad_request(format!("invalid reference format: {e}")))
}

pub(super) fn registry_error(reference: &Reference, e: &RegistryError) -> ApiError {
    let name = familiar(&reference.name());
    if e.is_auth() {
        return ApiError::not_found(format!(
            "pull access denied for {name}, repository does not exist or may require 'docker login': {e}"
        ));
    }
    if e.is_not_found() {
        return ApiError::not_found(format!(
            "manifest for {} not found: {e}",
            familiar(&reference.to_string())
        ));
    }
    if let RegistryError::NoMatchingPlatform { .. } = e {
        return ApiError::not_found(e.to_string());
    }
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn parse_platform(s: &str) -> Result<Platform, ApiError> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] => Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: None,
        }),
        [os, arch, variant] => Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: Some(variant.to_string()),
        }),
        _ => Err(ApiError::bad_request(format!(
            "invalid platform {s:?}: want os/arch[/variant]"
        ))),
    }
}

pub(super) fn progress_line(p: &Progress) -> Bytes {
    let mut v = Map::new();
    v.insert("status".into(), Value::String(p.status.clone()));
    if let Some((cur, total)) = p.current {
        v.insert(
            "progressDetail".into(),
            json!({ "current": cur, "total": total }),
        );
        v.insert("progress".into(), Value::String(progress_bar(cur, total)));
    } else if p.id.is_some() {
        v.insert("progressDetail".into(), json!({}));
    }
    if let Some(id) = &p.id {
        v.insert("id".into(), Value::String(id.clone()));
    }
    let mut b = serde_json::to_vec(&Value::Object(v)).expect("serialisable");
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

pub(super) fn error_line(message: &str) -> Bytes {
    let mut b =
        serde_json::to_vec(&json!({ "errorDetail": { "message": message }, "error": message }))
            .expect("serialisable");
    b.extend_from_slice(b"\r\n");
    Bytes::from(b)
}

fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}{}", units[u])
    }
}

fn progress_bar(cur: u64, total: u64) -> String {
    let width = 50u64;
    let filled = (cur.min(total) * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    let mut bar = "=".repeat(filled as usize);
    if filled < width {
        bar.push('>');
        bar.push_str(&" ".repeat((width - filled - 1) as usize));
    }
    format!("[{bar}] {:>8}/{}", human(cur), human(total))
}

/// `POST /images/create?fromImage=…&tag=…`: a pull (`fromSrc` is an import: `import.rs`). Resolution errors are HTTP errors; after
/// that, progress streams and a failure is the stream's last line, as with dockerd.
pub async fn create(daemon: Arc<Daemon>, q: &Query, auth: Option<&str>) -> ApiResult {
    let from = q
        .get("fromImage")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("fromImage is required"))?;
    let tag = q.get("tag").unwrap_or("");
    let text = if tag.is_empty() {
        from.to_string()
    } else if tag.contains(':') {
        format!("{from}@{tag}")
    } else {
        format!("{from}:{tag}")
    };
    let reference = parse_ref(&text)?;
    let platform = match q.get("platform").filter(|s| !s.is_empty()) {
        Some(p) => parse_platform(p)?,
        None => daemon.platform.clone(),
    };
    let creds = crate::credentials::for_pull(&reference.registry, auth).await;
    let registry = daemon.registry_for_pull(&reference, creds)?;
    let resolved = pull::resolve(&registry, &reference, &platform)
        .await
        .map_err(|e| match e {
            PullError::Registry(e) => registry_error(&reference, &e),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        })?;

    let (line_tx, line_rx) = mpsc::channel::<Bytes>(64);
    let (ptx, mut prx) = mpsc::channel::<Progress>(256);
    let core = daemon.core.clone();
    let pull_task = tokio::spawn(pull::fetch(core, registry, resolved, ptx));
    tokio::spawn(async move {
        while let Some(p) = prx.recv().await {
            if line_tx.send(progress_line(&p)).await.is_err() {
                // The client went away; the pull goes on so the store ends consistent.
                break;
            }
        }
        let result = pull_task.await;
        let msg = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("pull failed: {e}"),
        };
        tracing::warn!("pull of {reference} failed: {msg}");
        let _ = line_tx.send(error_line(&msg)).await;
    });
    Ok(json_stream(line_rx))
}

async fn list_infos(daemon: &Daemon) -> Result<Vec<ImageInfo>, ApiError> {
    match daemon.core.call(Request::ImageList).await? {
        Response::Images { images } => Ok(images),
        other => Err(unexpected(other)),
    }
}

fn config_of(info: &ImageInfo) -> Value {
    serde_json::from_str(&info.config).unwrap_or(Value::Null)
}

fn created_unix(config: &Value) -> i64 {
    config
        .get("created")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

fn summary(info: &ImageInfo, shared: Option<u64>, containers: i64) -> ImageSummary {
    let config = config_of(info);
    // As dockerd 20.10: a dangling image is listed as `<none>:<none>` / `<none>@<none>`.
    let none = info.repo_tags.is_empty() && info.repo_digests.is_empty();
    let names = |list: &[String], empty: &str| {
        if none {
            vec![empty.to_string()]
        } else {
            list.iter().map(|r| familiar(r)).collect()
        }
    };
    ImageSummary {
        Containers: containers,
        Created: created_unix(&config),
        Id: info.id.clone(),
        // Labels that are not an object of strings (not a valid config) show as none.
        Labels: config
            .pointer("/config/Labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok()),
        ParentId: String::new(),
        RepoDigests: names(&info.repo_digests, "<none>@<none>"),
        RepoTags: names(&info.repo_tags, "<none>:<none>"),
        SharedSize: shared.map(|s| s as i64).unwrap_or(-1),
        Size: info.size,
        VirtualSize: info.size,
    }
}

/// Docker's reference filter: a glob over the familiar name with and without the tag.
fn ref_matches(pattern: &str, r: &str) -> bool {
    {
        let f = familiar(r);
        let name = f
            .split_once('@')
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| match f.rfind(':') {
                Some(i) if !f[i..].contains('/') => f[..i].to_string(),
                _ => f.clone(),
            });
        glob(pattern, &f) || glob(pattern, &name)
    }
}

/// path.Match-style glob: `*` and `?` do not cross '/'.
fn glob(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(&p[1..], &s[i..])),
            Some(b'?') => !s.is_empty() && s[0] != b'/' && go(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

pub async fn list(daemon: &Daemon, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    for k in filters.keys() {
        if !["reference", "dangling", "label", "before", "since"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    let infos = list_infos(daemon).await?;
    // As dockerd: the untagged images a build made on the way (with a child) need `-a`.
    let intermediates = super::build::intermediates(&infos);
    let mut out = Vec::new();
    for info in &infos {
        let dangling = info.repo_tags.is_empty();
        if !q.bool("all") && intermediates.contains(&info.id) {
            continue;
        }
        if let Some(d) = filters.get("dangling") {
            let want = d.iter().any(|v| v == "true" || v == "1");
            if want != dangling {
                continue;
            }
        }
        let mut info = info.clone();
        if let Some(pats) = filters.get("reference") {
            // As dockerd does, only the matching names are listed for a matching image.
            let keep = |r: &String| pats.iter().any(|p| ref_matches(p, r));
            info.repo_tags.retain(keep);
            info.repo_digests.retain(keep);
            if info.repo_tags.is_empty() && info.repo_digests.is_empty() {
                continue;
            }
        }
        let info = &info;
        if let Some(labels) = filters.get("label") {
            let cfg = config_of(info);
            let have = cfg
                .pointer("/config/Labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let ok = labels.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => have.get(k).and_then(Value::as_str) == Some(v),
                None => have.contains_key(l),
            });
            if !ok {
                continue;
            }
        }
        out.push(summary(info, None, -1));
    }
    out.sort_by_key(|v| std::cmp::Reverse(v.Created));
    Ok(json(StatusCode::OK, &out))
}

async fn find(daemon: &Daemon, name: &str) -> Result<ImageInfo, ApiError> {
    let sel = selector(name).map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
    match daemon
        .core
        .call(Request::ImageInspect { selector: sel })
        .await
    {
        Ok(Response::Image(i)) => Ok(*i),
        Ok(other) => Err(unexpected(other)),
        Err(e) if e.code == berth_proto::ErrorCode::NotFound => {
            Err(ApiError::not_found(format!("No such image: {name}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The container config as dockerd prints it: every field present, zero values included.
fn container_config(config: &Value) -> Value {
    let c = config.get("config").cloned().unwrap_or(Value::Null);
    let get = |k: &str, default: Value| c.get(k).cloned().unwrap_or(default);
    let mut m = Map::new();
    m.insert("Hostname".into(), get("Hostname", json!("")));
    m.insert("Domainname".into(), get("Domainname", json!("")));
    m.insert("User".into(), get("User", json!("")));
    for k in ["AttachStdin", "AttachStdout", "AttachStderr"] {
        m.insert(k.into(), get(k, json!(false)));
    }
    if let Some(p) = c.get("ExposedPorts") {
        m.insert("ExposedPorts".into(), p.clone());
    }
    for k in ["Tty", "OpenStdin", "StdinOnce"] {
        m.insert(k.into(), get(k, json!(false)));
    }
    m.insert("Env".into(), get("Env", Value::Null));
    m.insert("Cmd".into(), get("Cmd", Value::Null));
    if let Some(h) = c.get("Healthcheck") {
        m.insert("Healthcheck".into(), h.clone());
    }
    if let Some(a) = c.get("ArgsEscaped") {
        m.insert("ArgsEscaped".into(), a.clone());
    }
    m.insert("Image".into(), get("Image", json!("")));
    m.insert("Volumes".into(), get("Volumes", Value::Null));
    m.insert("WorkingDir".into(), get("WorkingDir", json!("")));
    m.insert("Entrypoint".into(), get("Entrypoint", Value::Null));
    m.insert("OnBuild".into(), get("OnBuild", Value::Null));
    m.insert("Labels".into(), get("Labels", Value::Null));
    if let Some(s) = c.get("StopSignal") {
        m.insert("StopSignal".into(), s.clone());
    }
    if let Some(s) = c.get("Shell") {
        m.insert("Shell".into(), s.clone());
    }
    Value::Object(m)
}

/// dockerd shows the last history entry's comment when the config has none.
fn comment(config: &Value) -> String {
    match config.get("comment").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => config
            .get("history")
            .and_then(Value::as_array)
            .and_then(|h| h.last())
            .and_then(|h| h.get("comment"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    }
}

pub async fn inspect(daemon: &Daemon, name: &str) -> ApiResult {
    let info = find(daemon, name).await?;
    let config = config_of(&info);
    let s = |k: &str| {
        config
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut v = json!({
        "Id": info.id,
        "RepoTags": info.repo_tags.iter().map(|r| familiar(r)).collect::<Vec<_>>(),
        "RepoDigests": info.repo_digests.iter().map(|r| familiar(r)).collect::<Vec<_>>(),
        "Parent": "",
        "Comment": comment(&config),
        "Created": s("created"),
        "DockerVersion": s("docker_version"),
        "Author": s("author"),
        "Config": container_config(&config),
        "Architecture": s("architecture"),
        "Os": s("os"),
        "Size": info.size,
        "GraphDriver": { "Name": "overlayfs", "Data": null },
        "RootFS": {
            "Type": "layers",
            "Layers": info.layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        },
        "Metadata": { "LastTagTime": info.last_tag_time.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()) },
    });
    if let Some(variant) = config.get("variant").and_then(Value::as_str) {
        v["Variant"] = json!(variant);
    }
    if let Some(osv) = config.get("os.version").and_then(Value::as_str) {
        v["OsVersion"] = json!(osv);
    }
    Ok(json(StatusCode::OK, &v))
}

pub async fn history(daemon: &Daemon, name: &str) -> ApiResult {
    let info = find(daemon, name).await?;
    let config = config_of(&info);
    let entries = config
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut layer = info.layers.iter();
    let mut out = Vec::new();
    for h in &entries {
        let empty = h
            .get("empty_layer")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let size = if empty {
            0
        } else {
            layer.next().map(|l| l.unpacked_size).unwrap_or(0)
        };
        let created = h
            .get("created")
            .and_then(Value::as_str)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp())
            .unwrap_or(0);
        let text = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        out.push(ImageHistoryItem {
            Comment: text("comment"),
            Created: created,
            CreatedBy: text("created_by"),
            Id: "<missing>".into(),
            Size: size,
            Tags: None,
        });
    }
    out.reverse();
    if let Some(top) = out.first_mut() {
        top.Id = info.id.clone();
        let tags: Vec<String> = info.repo_tags.iter().map(|r| familiar(r)).collect();
        top.Tags = Some(tags).filter(|t| !t.is_empty());
    }
    Ok(json(StatusCode::OK, &out))
}

pub async fn tag(daemon: &Daemon, name: &str, q: &Query) -> ApiResult {
    let repo = q
        .get("repo")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request("repo is required"))?;
    let text = match q.get("tag").filter(|s| !s.is_empty()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo.to_string(),
    };
    let target = parse_ref(&text)?;
    if target.digest.is_some() {
        return Err(ApiError::bad_request(
            "refusing to create a tag with a digest reference",
        ));
    }
    let info = find(daemon, name).await?;
    let sel = berth_proto::ImageSelector {
        name: None,
        id_prefix: Some(info.id.clone()),
    };
    match daemon
        .core
        .call(Request::ImageTag {
            selector: sel,
            target: target.to_string(),
        })
        .await?
    {
        Response::Done => {
            let labels = events::image_labels(&info.config);
            let shown = familiar(&target.to_string());
            events::publish(
                &daemon.core,
                events::image_event("tag", &info.id, &shown, labels),
            )
            .await;
            Ok(super::empty(StatusCode::CREATED))
        }
        other => Err(unexpected(other)),
    }
}

pub async fn remove(daemon: &Daemon, name: &str, q: &Query) -> ApiResult {
    let sel = selector(name).map_err(|_| ApiError::not_found(format!("No such image: {name}")))?;
    // The image's id and labels, for the events (gone once it is deleted).
    let image = match daemon
        .core
        .call(Request::ImageInspect {
            selector: sel.clone(),
        })
        .await
    {
        Ok(Response::Image(i)) => Some(*i),
        _ => None,
    };
    let by_name = sel.name.clone();
    let req = Request::ImageRemove {
        selector: sel,
        force: q.bool("force"),
        prune: !q.bool("noprune"),
    };
    match daemon.core.call(req).await {
        Ok(Response::Removed { events: removed }) => {
            for event in removal_events(image.as_ref(), by_name.as_deref(), &removed) {
                events::publish(&daemon.core, event).await;
            }
            let out: Vec<Value> = removed
                .into_iter()
                .map(|e| match e {
                    berth_proto::RemoveEvent::Untagged(r) => json!({ "Untagged": familiar(&r) }),
                    berth_proto::RemoveEvent::Deleted(d) => json!({ "Deleted": d }),
                })
                .collect();
            Ok(json(StatusCode::OK, &out))
        }
        Ok(other) => Err(unexpected(other)),
        Err(e) if e.code == berth_proto::ErrorCode::NotFound => {
            Err(ApiError::not_found(format!("No such image: {name}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The events of an image removal, as dockerd emits them: `untag` (named by the image id) for
/// the reference removed by name, or for every reference when removed by id (the digest
/// references that go along with a removed tag have none); `delete` for the image itself (not
/// for the layers that go with it).
fn removal_events(
    image: Option<&ImageInfo>,
    by_name: Option<&str>,
    removed: &[berth_proto::RemoveEvent],
) -> Vec<berth_proto::Event> {
    use berth_proto::RemoveEvent::{Deleted, Untagged};
    let Some(image) = image else {
        return Vec::new();
    };
    let labels = events::image_labels(&image.config);
    let untagged: Vec<&String> = removed
        .iter()
        .filter_map(|e| match e {
            Untagged(r) => Some(r),
            Deleted(_) => None,
        })
        .collect();
    let named = by_name.is_some_and(|n| untagged.first().is_some_and(|r| *r == n));
    let untags = if named { 1 } else { untagged.len() };
    let mut out: Vec<berth_proto::Event> = (0..untags)
        .map(|_| events::image_event("untag", &image.id, &image.id, labels.clone()))
        .collect();
    if removed
        .iter()
        .any(|e| matches!(e, Deleted(d) if *d == image.id))
    {
        out.push(events::image_event(
            "delete",
            &image.id,
            &image.id,
            Default::default(),
        ));
    }
    out
}

/// The images another image was made on (its history and layers begin with all of the
/// other's): what dockerd's parent links say for images built or committed here, and for the
/// base of one.
fn with_children(infos: &[ImageInfo]) -> std::collections::HashSet<String> {
    let parsed: Vec<(&str, Vec<Value>, Vec<&str>)> = infos
        .iter()
        .map(|i| {
            let v = config_of(i);
            let history = v["history"].as_array().cloned().unwrap_or_default();
            (
                i.id.as_str(),
                history,
                i.layers.iter().map(|l| l.diff_id.as_str()).collect(),
            )
        })
        .collect();
    let mut out = std::collections::HashSet::new();
    for (id, h, l) in &parsed {
        if h.is_empty() {
            continue;
        }
        if parsed.iter().any(|(cid, ch, cl)| {
            cid != id
                && ch.len() > h.len()
                && ch[..h.len()] == h[..]
                && cl.len() >= l.len()
                && cl[..l.len()] == l[..]
        }) {
            out.insert(id.to_string());
        }
    }
    out
}

/// `until`: an RFC 3339 time, a Unix time, or a duration before now ("24h").
fn until_unix(v: &str) -> Result<i64, ApiError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp());
    }
    if let Ok(n) = v.split('.').next().unwrap_or(v).parse::<i64>() {
        return Ok(n);
    }
    berth_dockerfile::config::duration_ns(v)
        .map(|ns| chrono::Utc::now().timestamp() - ns / 1_000_000_000)
        .map_err(|_| ApiError::bad_request(format!("invalid until filter value: {v}")))
}

fn labels_match(config: &Value, filters: &HashMap<String, Vec<String>>) -> bool {
    let have = config
        .pointer("/config/Labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let m = |l: &String| match l.split_once('=') {
        Some((k, v)) => have.get(k).and_then(Value::as_str) == Some(v),
        None => have.contains_key(l),
    };
    filters.get("label").is_none_or(|ls| ls.iter().all(m))
        && filters.get("label!").is_none_or(|ls| !ls.iter().any(m))
}

async fn layers_size(daemon: &Daemon) -> Result<u64, ApiError> {
    match daemon.core.call(Request::DiskUsage).await? {
        Response::DiskUsage(u) => Ok(u.layers_size),
        other => Err(unexpected(other)),
    }
}

/// `POST /images/prune?filters=`: as dockerd, by default the dangling images (untagged, with
/// no image made on them, not used by a container); with `dangling=false` (`-a`) every image
/// no container uses and no kept image was made on. Removing an image can leave the one under
/// it (a build's intermediate) without a child: it is looked at again, so a dangling build's
/// untagged steps go with it, as dockerd's parent pruning does.
pub async fn prune(daemon: &Daemon, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    for k in filters.keys() {
        if !["dangling", "until", "label", "label!"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    let dangling_only = match filters.get("dangling").and_then(|v| v.first()) {
        None => true,
        Some(v) => match v.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "invalid filter 'dangling={other}'"
                )))
            }
        },
    };
    let until = match filters.get("until").and_then(|v| v.first()) {
        Some(v) => Some(until_unix(v)?),
        None => None,
    };
    let used: std::collections::HashSet<String> = match daemon
        .core
        .call(Request::ContainerList { all: true })
        .await?
    {
        Response::Containers { containers } => {
            containers.into_iter().map(|c| c.spec.image_id).collect()
        }
        other => return Err(unexpected(other)),
    };
    let before = layers_size(daemon).await?;
    let mut deleted: Vec<Value> = Vec::new();
    let mut tried = std::collections::HashSet::new();
    loop {
        let infos = list_infos(daemon).await?;
        let parents = with_children(&infos);
        let mut progress = false;
        for info in &infos {
            if used.contains(&info.id) || parents.contains(&info.id) || tried.contains(&info.id) {
                continue;
            }
            if dangling_only && !(info.repo_tags.is_empty() && info.repo_digests.is_empty()) {
                continue;
            }
            let config = config_of(info);
            if until.is_some_and(|u| created_unix(&config) >= u) || !labels_match(&config, &filters)
            {
                continue;
            }
            tried.insert(info.id.clone());
            let req = Request::ImageRemove {
                selector: berth_proto::ImageSelector {
                    name: None,
                    id_prefix: Some(info.id.clone()),
                },
                force: true,
                prune: true,
            };
            match daemon.core.call(req).await {
                Ok(Response::Removed { events: removed }) => {
                    for event in removal_events(Some(info), None, &removed) {
                        events::publish(&daemon.core, event).await;
                    }
                    deleted.extend(removed.into_iter().map(|e| match e {
                        berth_proto::RemoveEvent::Untagged(r) => {
                            json!({ "Untagged": familiar(&r) })
                        }
                        berth_proto::RemoveEvent::Deleted(d) => json!({ "Deleted": d }),
                    }));
                    progress = true;
                }
                Ok(other) => return Err(unexpected(other)),
                // Taken into use (or removed) since the listing: not ours to prune.
                Err(e) => tracing::debug!("image prune skipped {}: {e}", info.id),
            }
        }
        if !progress {
            break;
        }
    }
    let after = layers_size(daemon).await?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "ImagesDeleted": if deleted.is_empty() { Value::Null } else { Value::Array(deleted) },
            "SpaceReclaimed": before.saturating_sub(after),
        }),
    ))
}

/// `POST /build/prune`: Berth's build cache is the intermediate images of builds (a cache
/// entry is a step's image id, used while that image is stored), so it is pruned with the
/// images (`docker image prune`); there is nothing else to delete here.
pub async fn build_prune(_daemon: &Daemon) -> ApiResult {
    Ok(json(
        StatusCode::OK,
        &json!({ "CachesDeleted": null, "SpaceReclaimed": 0 }),
    ))
}

pub async fn disk_usage(daemon: &Daemon) -> ApiResult {
    let usage = match daemon.core.call(Request::DiskUsage).await? {
        Response::DiskUsage(u) => u,
        other => return Err(unexpected(other)),
    };
    let infos = list_infos(daemon).await?;
    let shared: HashMap<&str, u64> = usage
        .images
        .iter()
        .map(|u| (u.id.as_str(), u.shared_size))
        .collect();
    let containers = match daemon
        .core
        .call(Request::ContainerList { all: true })
        .await?
    {
        Response::Containers { containers } => containers,
        other => return Err(unexpected(other)),
    };
    let images: Vec<ImageSummary> = infos
        .iter()
        .map(|i| {
            let n = containers
                .iter()
                .filter(|c| c.spec.image_id == i.id)
                .count();
            summary(i, shared.get(i.id.as_str()).copied(), n as i64)
        })
        .collect();
    let size_of: HashMap<&str, u64> = infos.iter().map(|i| (i.id.as_str(), i.size)).collect();
    let rw_of = super::containers::sizes(daemon).await?;
    let containers: Vec<ContainerSummary> = containers
        .iter()
        .map(|c| {
            let root = size_of.get(c.spec.image_id.as_str()).copied().unwrap_or(0);
            let rw = rw_of.get(&c.id).copied().unwrap_or(0);
            let mut v = super::containers::summary(c);
            super::containers::set_sizes(&mut v, rw, root);
            v
        })
        .collect();
    let volumes: Vec<Value> = super::volumes::list_infos(daemon, true)
        .await?
        .iter()
        .map(super::volumes::volume_usage_json)
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({
            "LayersSize": usage.layers_size,
            "Images": images,
            "Containers": containers,
            "Volumes": volumes,
            "BuildCache": [],
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_events_as_dockerd() {
        use berth_proto::RemoveEvent::{Deleted, Untagged};
        let image = ImageInfo {
            id: "sha256:aa".into(),
            repo_tags: vec![],
            repo_digests: vec![],
            manifest_digest: String::new(),
            manifest_media_type: String::new(),
            config: r#"{"config":{"Labels":{"v":"1"}}}"#.into(),
            layers: vec![],
            size: 0,
            stored_at: String::new(),
            last_tag_time: None,
        };
        let name = "docker.io/library/busybox:latest";
        let removed = [
            Untagged(name.into()),
            Untagged("docker.io/library/busybox@sha256:bb".into()),
            Deleted("sha256:aa".into()),
            Deleted("sha256:layer".into()),
        ];
        let got: Vec<(String, String)> = removal_events(Some(&image), Some(name), &removed)
            .into_iter()
            .map(|e| (e.action, e.actor_id))
            .collect();
        let want = |a: &str| (a.to_string(), "sha256:aa".to_string());
        assert_eq!(got, [want("untag"), want("delete")]);
        // By id: every reference's untag.
        let by_id = removal_events(Some(&image), None, &removed);
        assert_eq!(by_id.len(), 3);
        assert_eq!(by_id[0].attributes["v"], "1");
        assert_eq!(by_id[0].attributes["name"], "sha256:aa");
        assert!(!by_id[2].attributes.contains_key("v"));
    }

    #[test]
    fn globbing_like_docker_reference_filter() {
        let r = "docker.io/library/busybox:latest";
        assert!(ref_matches("busybox", r));
        assert!(ref_matches("busybox:latest", r));
        assert!(ref_matches("busy*", r));
        assert!(!ref_matches("busybox:1", r));
        let r = "127.0.0.1:15000/berth/hello:v2s2";
        assert!(ref_matches("127.0.0.1:15000/berth/*", r));
        assert!(!ref_matches("*", r));
    }

    #[test]
    fn progress_lines_have_docker_shape() {
        let p = Progress {
            id: Some("abc".into()),
            status: "Downloading".into(),
            current: Some((5, 10)),
        };
        let v: Value = serde_json::from_slice(&progress_line(&p)).unwrap();
        assert_eq!(v["progressDetail"]["current"], 5);
        assert_eq!(v["id"], "abc");
        let v: Value = serde_json::from_slice(&error_line("boom")).unwrap();
        assert_eq!(v["errorDetail"]["message"], "boom");
    }
}
