//! Berth's admin API on berthd's socket, beside the Docker API: the settings document and the
//! mirror test. See `docs/settings.md`.
//!
//! - `GET /berth/v1/settings`: the document, its `ETag`, and `Berth-Settings-Path`.
//! - `PUT /berth/v1/settings`: the whole document; `PATCH`: a JSON merge patch (RFC 7396).
//!   Both need `If-Match` (the `ETag` of the version edited, or `*`): 428 without it, 412 when
//!   another version is current. An invalid document answers 400 with every error and
//!   changes nothing. Registry changes apply to the next pull; `vm` changes are saved and
//!   take effect when the VM restarts (`restartRequired` says which keys;
//!   `POST /berth/v1/engine/restart-vm` restarts it with them).
//! - `POST /berth/v1/settings/validate`: the errors and warnings of a document; nothing is
//!   applied.
//! - `POST /berth/v1/registries/test-mirror`: `{"url", "image"?}` → reachability, TLS, the
//!   auth challenge, latency, and whether the mirror has the image.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{header, Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::docker::{json, read_body, ApiError, ApiResult, Resp};
use crate::settings::{self, ChangeError, FieldError};

/// Whether a (version-stripped, decoded) path belongs to this module.
pub fn handles(path: &str) -> bool {
    path == "/berth/v1/settings"
        || path.starts_with("/berth/v1/settings/")
        || path.starts_with("/berth/v1/registries/")
}

pub async fn route(daemon: Arc<Daemon>, req: Request<Incoming>, path: &str) -> ApiResult {
    let m = req.method().clone();
    match (m.clone(), path) {
        (Method::GET, "/berth/v1/settings") => get(&daemon),
        (Method::PUT, "/berth/v1/settings") | (Method::PATCH, "/berth/v1/settings") => {
            let if_match = req
                .headers()
                .get(header::IF_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = read_json(req).await?;
            change(&daemon, m == Method::PATCH, if_match.as_deref(), body).await
        }
        (Method::POST, "/berth/v1/settings/validate") => {
            let body = read_json(req).await?;
            Ok(validate(body))
        }
        (Method::POST, "/berth/v1/registries/test-mirror") => {
            let body = read_json(req).await?;
            test_mirror(&daemon, body).await
        }
        _ => Err(ApiError::not_found(format!("page not found: {m} {path}"))),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

fn store(daemon: &Daemon) -> Result<&settings::SettingsStore, ApiError> {
    daemon.settings.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "berthd runs without a settings file",
        )
    })
}

fn with_headers(mut resp: Resp, etag: &str, path: &std::path::Path) -> Resp {
    let h = resp.headers_mut();
    if let Ok(v) = etag.parse() {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = path.display().to_string().parse() {
        h.insert("Berth-Settings-Path", v);
    }
    resp
}

fn get(daemon: &Daemon) -> ApiResult {
    let store = store(daemon)?;
    let cur = store.current();
    Ok(with_headers(
        json(StatusCode::OK, &cur.settings.to_value()),
        &cur.etag,
        store.path(),
    ))
}

fn invalid(errors: &[FieldError]) -> Resp {
    let summary = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    json(
        StatusCode::BAD_REQUEST,
        &json!({
            "message": format!("invalid settings ({} error{}): {summary}", errors.len(), if errors.len() == 1 { "" } else { "s" }),
            "errors": errors,
        }),
    )
}

async fn change(daemon: &Daemon, patch: bool, if_match: Option<&str>, body: Value) -> ApiResult {
    let store = store(daemon)?;
    let Some(if_match) = if_match else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "If-Match is required: send the ETag of the settings you edited (from GET /berth/v1/settings), or * to overwrite whatever is there",
        ));
    };
    let result = store.change(
        if_match,
        |cur| {
            if patch {
                let mut doc = cur.to_value();
                settings::merge_patch(&mut doc, &body);
                doc
            } else {
                body
            }
        },
        |new| daemon.prepare_registry(new),
    );
    match result {
        Ok(done) => {
            daemon.install_registry(done.prepared);
            let restart = settings::restart_required(&done.old.settings, &done.new.settings);
            let registries_changed = done.old.settings.registry_config().ok()
                != done.new.settings.registry_config().ok();
            let message = if restart.is_empty() {
                "settings saved and applied".to_string()
            } else {
                format!(
                    "settings saved; {} take{} effect when the VM restarts (the VM was not restarted; POST /berth/v1/engine/restart-vm restarts it)",
                    restart.join(", "),
                    if restart.len() == 1 { "s" } else { "" }
                )
            };
            tracing::info!("settings changed ({}): {message}", store.path().display());
            crate::events::publish(
                &daemon.core,
                settings_event(daemon, &done.old.settings, &done.new.settings, &restart),
            )
            .await;
            Ok(with_headers(
                json(
                    StatusCode::OK,
                    &json!({
                        "settings": done.new.settings.to_value(),
                        "etag": done.new.etag,
                        "appliedToRegistries": registries_changed,
                        "restartRequired": restart,
                        "warnings": done.warnings,
                        "message": message,
                    }),
                ),
                &done.new.etag,
                store.path(),
            ))
        }
        Err(ChangeError::Invalid(errors)) => Ok(invalid(&errors)),
        Err(ChangeError::Conflict { current }) => {
            let mut resp = json(
                StatusCode::PRECONDITION_FAILED,
                &json!({
                    "message": format!("the settings changed since you read them (If-Match {if_match}, now {current}): read them again and reapply your edit"),
                    "etag": current,
                }),
            );
            if let Ok(v) = current.parse() {
                resp.headers_mut().insert(header::ETAG, v);
            }
            Ok(resp)
        }
        Err(ChangeError::Write(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "writing {}: {e} (the settings in force did not change)",
                store.path().display()
            ),
        )),
    }
}

fn validate(body: Value) -> Resp {
    let report = settings::validate(&body);
    json(
        StatusCode::OK,
        &json!({
            "valid": report.errors.is_empty(),
            "errors": report.errors,
            "warnings": report.warnings,
        }),
    )
}

async fn test_mirror(daemon: &Daemon, body: Value) -> ApiResult {
    let url = body.get("url").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("want {\"url\": \"https://mirror.example\", \"image\": optional}")
    })?;
    let image = match body.get("image") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ApiError::bad_request("\"image\" must be a string")),
    };
    let url = url::Url::parse(url.trim())
        .map_err(|e| ApiError::bad_request(format!("{url:?} is not a URL: {e}")))?;
    let probe = daemon.registry().probe_mirror(&url, image).await;
    Ok(json(StatusCode::OK, &probe))
}

/// The settings-changed event: Docker's `daemon reload` (what dockerd sends when its
/// daemon.json is reloaded), with the mirror and insecure-registry lists as dockerd gives them,
/// and Berth's own attributes: the top-level keys that changed and the keys that wait for a VM
/// restart. Clients read the new document (and its etag) back.
fn settings_event(
    daemon: &Daemon,
    old: &settings::Settings,
    new: &settings::Settings,
    restart: &[String],
) -> berth_proto::events::Event {
    let (old_v, new_v) = (old.to_value(), new.to_value());
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut changed: Vec<String> = keys(&old_v)
        .into_iter()
        .chain(keys(&new_v))
        .filter(|k| old_v.get(k) != new_v.get(k))
        .collect();
    changed.sort();
    changed.dedup();
    let list = |key: &str| {
        new_v
            .get(key)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "[]".into())
    };
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert(
        "name".to_string(),
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    attributes.insert("registry-mirrors".to_string(), list("registry-mirrors"));
    attributes.insert(
        "insecure-registries".to_string(),
        list("insecure-registries"),
    );
    attributes.insert("berth.settings.changed".to_string(), changed.join(","));
    attributes.insert("berth.restart-required".to_string(), restart.join(","));
    berth_proto::events::Event {
        seq: 0,
        kind: "daemon".into(),
        action: "reload".into(),
        actor_id: daemon.id.clone(),
        attributes,
        time_nano: 0,
    }
}
