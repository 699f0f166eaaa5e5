//! Volume routes: list (filters dangling, name, label, driver), create, inspect, remove, prune;
//! and the volumes of `GET /system/df`. The core keeps the volumes (dockerd's `local` driver);
//! berthd shapes Docker's JSON and filters.

use std::collections::BTreeMap;

use berth_proto::{Request, Response, VolumeCreate, VolumeInfo};
use hyper::StatusCode;
use serde_json::{json, Value};

use super::{empty, json, unexpected, ApiError, ApiResult, Query};
use crate::daemon::Daemon;

/// The label dockerd (API 1.42 and later) gives anonymous volumes.
const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

fn map_or_null(m: &BTreeMap<String, String>) -> Value {
    if m.is_empty() {
        Value::Null
    } else {
        json!(m)
    }
}

/// Docker's `Volume` object.
pub fn volume_json(v: &VolumeInfo) -> Value {
    json!({
        "CreatedAt": v.created_at,
        "Driver": v.driver,
        "Labels": map_or_null(&v.labels),
        "Mountpoint": v.mountpoint,
        "Name": v.name,
        "Options": map_or_null(&v.options),
        "Scope": v.scope,
    })
}

/// With `UsageData`, as `GET /system/df` shows volumes.
pub fn volume_usage_json(v: &VolumeInfo) -> Value {
    let mut j = volume_json(v);
    j["UsageData"] = json!({
        "Size": v.size.map(|s| s as i64).unwrap_or(-1),
        "RefCount": v.used_by.len(),
    });
    j
}

pub async fn list_infos(daemon: &Daemon, sizes: bool) -> Result<Vec<VolumeInfo>, ApiError> {
    match daemon.core.call(Request::VolumeList { sizes }).await? {
        Response::Volumes { volumes } => Ok(volumes),
        other => Err(unexpected(other)),
    }
}

/// Docker's label filter: every `key` or `key=value` must match.
fn labels_match(labels: &BTreeMap<String, String>, wanted: &[String]) -> bool {
    wanted.iter().all(|l| match l.split_once('=') {
        Some((k, v)) => labels.get(k).map(String::as_str) == Some(v),
        None => labels.contains_key(l),
    })
}

fn truthy(v: &str) -> Result<bool, ApiError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "invalid filter 'dangling={other}'"
        ))),
    }
}

pub async fn list(daemon: &Daemon, q: &Query) -> ApiResult {
    let filters = q.filters()?;
    for k in filters.keys() {
        if !["dangling", "name", "label", "driver"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    let dangling = match filters.get("dangling").and_then(|v| v.last()) {
        Some(v) => Some(truthy(v)?),
        None => None,
    };
    let mut out = Vec::new();
    for v in list_infos(daemon, false).await? {
        if dangling.is_some_and(|d| d != v.used_by.is_empty()) {
            continue;
        }
        if let Some(names) = filters.get("name") {
            if !names.iter().any(|n| v.name.contains(n.as_str())) {
                continue;
            }
        }
        if let Some(drivers) = filters.get("driver") {
            if !drivers.contains(&v.driver) {
                continue;
            }
        }
        if let Some(labels) = filters.get("label") {
            if !labels_match(&v.labels, labels) {
                continue;
            }
        }
        out.push(volume_json(&v));
    }
    Ok(json(
        StatusCode::OK,
        &json!({ "Volumes": out, "Warnings": [] }),
    ))
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn create(daemon: &Daemon, body: &[u8]) -> ApiResult {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("invalid JSON in the volume create request: {e}"))
        })?
    };
    let req = VolumeCreate {
        name: body["Name"].as_str().unwrap_or("").to_string(),
        driver: body["Driver"].as_str().unwrap_or("").to_string(),
        labels: string_map(&body["Labels"]),
        options: string_map(&body["DriverOpts"]),
    };
    match daemon
        .core
        .call(Request::VolumeCreate(Box::new(req)))
        .await?
    {
        Response::Volume(v) => Ok(json(StatusCode::CREATED, &volume_json(&v))),
        other => Err(unexpected(other)),
    }
}

pub async fn inspect(daemon: &Daemon, name: &str) -> ApiResult {
    match daemon
        .core
        .call(Request::VolumeInspect { name: name.into() })
        .await?
    {
        Response::Volume(v) => Ok(json(StatusCode::OK, &volume_json(&v))),
        other => Err(unexpected(other)),
    }
}

pub async fn remove(daemon: &Daemon, name: &str, q: &Query) -> ApiResult {
    let req = Request::VolumeRemove {
        name: name.into(),
        force: q.bool("force"),
    };
    match daemon.core.call(req).await? {
        Response::Done => Ok(empty(StatusCode::NO_CONTENT)),
        other => Err(unexpected(other)),
    }
}

/// `POST /volumes/prune`: removes the volumes no container uses; since API 1.42 only the
/// anonymous ones unless the filter `all` is true (older clients get every unused one, as
/// dockerd gives them). `label` / `label!` filters are honoured.
pub async fn prune(daemon: &Daemon, q: &Query, api: Option<(u32, u32)>) -> ApiResult {
    let filters = q.filters()?;
    for k in filters.keys() {
        if !["label", "label!", "all"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("invalid filter '{k}'")));
        }
    }
    let all = match filters.get("all").and_then(|v| v.last()) {
        Some(v) => {
            truthy(v).map_err(|_| ApiError::bad_request(format!("invalid filter 'all={v}'")))?
        }
        None => api.is_some_and(|v| v < (1, 42)),
    };
    let mut deleted = Vec::new();
    let mut reclaimed = 0u64;
    for v in list_infos(daemon, true).await? {
        if !v.used_by.is_empty() {
            continue;
        }
        if !all && !v.labels.contains_key(ANONYMOUS_LABEL) {
            continue;
        }
        if let Some(labels) = filters.get("label") {
            if !labels_match(&v.labels, labels) {
                continue;
            }
        }
        if let Some(labels) = filters.get("label!") {
            if labels
                .iter()
                .any(|l| labels_match(&v.labels, std::slice::from_ref(l)))
            {
                continue;
            }
        }
        let req = Request::VolumeRemove {
            name: v.name.clone(),
            force: false,
        };
        match daemon.core.call(req).await {
            Ok(_) => {
                reclaimed += v.size.unwrap_or(0);
                deleted.push(v.name);
            }
            // Taken into use (or removed) since the listing: not ours to prune any more.
            Err(e) => tracing::debug!("prune skipped volume {}: {e}", v.name),
        }
    }
    Ok(json(
        StatusCode::OK,
        &json!({ "VolumesDeleted": deleted, "SpaceReclaimed": reclaimed }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_json_is_dockers() {
        let mut v = VolumeInfo {
            name: "data".into(),
            driver: "local".into(),
            mountpoint: "/r/volumes/data/_data".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            scope: "local".into(),
            used_by: vec!["c1".into()],
            size: Some(120),
            ..Default::default()
        };
        let j = volume_json(&v);
        assert_eq!(j["Labels"], Value::Null);
        assert_eq!(j["Options"], Value::Null);
        assert_eq!(j["Mountpoint"], "/r/volumes/data/_data");
        v.labels.insert("a".into(), "b".into());
        let u = volume_usage_json(&v);
        assert_eq!(u["Labels"]["a"], "b");
        assert_eq!(u["UsageData"]["Size"], 120);
        assert_eq!(u["UsageData"]["RefCount"], 1);
        assert!(labels_match(&v.labels, &["a".into(), "a=b".into()]));
        assert!(!labels_match(&v.labels, &["a=c".into()]));
    }
}
