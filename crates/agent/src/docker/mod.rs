//! The Docker Engine API on berthd's socket. Requests are routed by hand rather than with a
//! router crate because image names contain slashes (`/images/127.0.0.1:5000/a/b/json`) and
//! every route may carry a `/vX.Y` version prefix.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{header, Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::daemon::Daemon;

mod archive;
mod build;
mod containers;
mod events;
mod exec;
mod images;
mod import;
pub mod model;
mod net;
mod ops;
mod push;
mod system;
mod volumes;

pub use system::decode_registry_auth;

/// The newest API version berthd speaks; the docker CLI negotiates down to it.
pub const API_VERSION: &str = "1.45";
/// The oldest it accepts.
pub const MIN_API_VERSION: &str = "1.24";

pub type Body = BoxBody<Bytes, std::io::Error>;
pub type Resp = Response<Body>;

/// An error answered as Docker does: a status code and `{"message": …}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<berth_proto::Error> for ApiError {
    fn from(e: berth_proto::Error) -> ApiError {
        use berth_proto::ErrorCode::*;
        let status = match e.code {
            InvalidArgument => StatusCode::BAD_REQUEST,
            NotFound => StatusCode::NOT_FOUND,
            AlreadyExists | Conflict => StatusCode::CONFLICT,
            Unsupported => StatusCode::NOT_IMPLEMENTED,
            InvalidState | DataLoss | VersionMismatch | Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.message)
    }
}

pub type ApiResult = Result<Resp, ApiError>;

/// A core answer of the wrong kind for the request (a bug on one side or the other).
pub fn unexpected(r: berth_proto::Response) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected answer from the core: {r:?}"),
    )
}

/// The strings of a JSON array (Cmd, Env, …); anything else is empty.
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Resp {
    let body = serde_json::to_vec(value).expect("API values always serialise");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("valid response")
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty(status: StatusCode) -> Resp {
    Response::builder()
        .status(status)
        .body(full(Bytes::new()))
        .expect("valid response")
}

/// A streamed JSON-lines answer (progress streams); the sender writes whole lines.
pub fn json_stream(rx: mpsc::Receiver<Bytes>) -> Resp {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("valid response")
}

/// Query parameters, last value wins (Docker's own parsing does the same).
pub struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    /// Docker's boolean query values: "1", "true", "True" are true; absent or "0"/"false" false.
    pub fn bool(&self, k: &str) -> bool {
        matches!(self.get(k), Some(v) if !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    }
    /// The `filters` parameter: `{"key": {"value": true}}` or the older `{"key": ["value"]}`.
    pub fn filters(&self) -> Result<HashMap<String, Vec<String>>, ApiError> {
        let Some(raw) = self.get("filters").filter(|s| !s.is_empty()) else {
            return Ok(HashMap::new());
        };
        let v: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| ApiError::bad_request(format!("invalid filter: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ApiError::bad_request("invalid filter: not an object"))?;
        let mut out = HashMap::new();
        for (k, vals) in obj {
            let list = match vals {
                serde_json::Value::Object(m) => m.keys().cloned().collect(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid filter value for {k:?}"
                    )))
                }
            };
            out.insert(k.clone(), list);
        }
        Ok(out)
    }
}

/// Strips `/v1.45` style prefixes; an unsupported version is an error, as with dockerd.
fn strip_version(path: &str) -> Result<&str, ApiError> {
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(path);
    };
    let (ver, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some((maj, min)) = ver.split_once('.') else {
        return Ok(path);
    };
    let (Ok(maj), Ok(min)) = (maj.parse::<u32>(), min.parse::<u32>()) else {
        return Ok(path);
    };
    let parse = |s: &str| {
        let (a, b) = s.split_once('.').expect("constant has a dot");
        (
            a.parse::<u32>().expect("number"),
            b.parse::<u32>().expect("number"),
        )
    };
    if (maj, min) > parse(API_VERSION) {
        return Err(ApiError::bad_request(format!(
            "client version {maj}.{min} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if (maj, min) < parse(MIN_API_VERSION) {
        return Err(ApiError::bad_request(format!(
            "client version {maj}.{min} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    Ok(tail)
}

pub async fn handle(daemon: Arc<Daemon>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let uri_path = req.uri().path().to_string();
    let resp = match route(daemon, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!("{method} {uri_path}: {} {}", e.status, e.message);
            } else {
                tracing::debug!("{method} {uri_path}: {} {}", e.status, e.message);
            }
            json(e.status, &serde_json::json!({ "message": e.message }))
        }
    };
    tracing::debug!("{method} {uri_path} -> {}", resp.status());
    Ok(resp)
}

async fn route(daemon: Arc<Daemon>, req: Request<Incoming>) -> ApiResult {
    let uri_version_path = req.uri().path().to_string();
    let path = percent_decode(strip_version(req.uri().path())?);
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let m = &method;
    let p = path.as_str();

    if p == "/_ping" && (m == Method::GET || m == Method::HEAD) {
        return Ok(system::ping(m == Method::HEAD));
    }
    if m == Method::GET && p == "/version" {
        return Ok(system::version(&daemon).await);
    }
    if m == Method::GET && p == "/info" {
        return system::info(&daemon).await;
    }
    if m == Method::GET && p == "/berth/v1/engine" {
        return system::engine(&daemon).await;
    }
    if m == Method::POST && p == "/berth/v1/engine/restart-core" {
        return system::restart_core(&daemon).await;
    }
    if m == Method::POST && p == "/berth/v1/engine/restart-vm" {
        return system::restart_vm(&daemon).await;
    }
    if crate::admin::handles(p) {
        return crate::admin::route(daemon, req, p).await;
    }
    if m == Method::POST && p == "/auth" {
        let body = read_body(req).await?;
        return system::auth(&daemon, &body).await;
    }
    if m == Method::GET && p == "/events" {
        return events::events(daemon, &query).await;
    }
    if m == Method::GET && p == "/system/df" {
        return images::disk_usage(&daemon).await;
    }
    if m == Method::POST && p == "/build" {
        return build::build(daemon, req).await;
    }
    if m == Method::POST && p == "/commit" {
        return build::commit(&daemon, &query, req).await;
    }
    if m == Method::POST && p == "/images/create" && query.get("fromSrc").is_some() {
        return import::import(daemon, &query, req).await;
    }
    if m == Method::POST && p == "/images/create" {
        let auth = req
            .headers()
            .get("X-Registry-Auth")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return images::create(daemon, &query, auth.as_deref()).await;
    }
    if m == Method::POST && p == "/images/prune" {
        return images::prune(&daemon, &query).await;
    }
    if m == Method::POST && p == "/build/prune" {
        return images::build_prune(&daemon).await;
    }
    if m == Method::POST && p == "/networks/prune" {
        // One bridge, made by Berth: nothing a user created to prune.
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "NetworksDeleted": null }),
        ));
    }
    if m == Method::GET && p == "/images/json" {
        return images::list(&daemon, &query).await;
    }
    if m == Method::GET && p == "/images/get" {
        let names = archive::names_of(req.uri().query());
        return archive::save(daemon, names).await;
    }
    if m == Method::POST && p == "/images/load" {
        return archive::load(daemon, req).await;
    }
    if let Some(rest) = p.strip_prefix("/images/") {
        if m == Method::GET {
            if let Some(name) = rest.strip_suffix("/json") {
                return images::inspect(&daemon, name).await;
            }
            if let Some(name) = rest.strip_suffix("/history") {
                return images::history(&daemon, name).await;
            }
            if let Some(name) = rest.strip_suffix("/get") {
                return archive::save(daemon, vec![name.to_string()]).await;
            }
        }
        if m == Method::POST {
            if let Some(name) = rest.strip_suffix("/tag") {
                return images::tag(&daemon, name, &query).await;
            }
            if let Some(name) = rest.strip_suffix("/push") {
                let auth = req
                    .headers()
                    .get("X-Registry-Auth")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                return push::push(daemon, name, &query, auth.as_deref()).await;
            }
        }
        if m == Method::DELETE {
            return images::remove(&daemon, rest, &query).await;
        }
    }
    if m == Method::GET && p == "/volumes" {
        return volumes::list(&daemon, &query).await;
    }
    if m == Method::POST && p == "/volumes/create" {
        let body = read_body(req).await?;
        return volumes::create(&daemon, &body).await;
    }
    if m == Method::POST && p == "/volumes/prune" {
        let version = api_version(&uri_version_path);
        return volumes::prune(&daemon, &query, version).await;
    }
    if let Some(name) = p.strip_prefix("/volumes/").filter(|n| !n.contains('/')) {
        if m == Method::GET {
            return volumes::inspect(&daemon, name).await;
        }
        if m == Method::DELETE {
            return volumes::remove(&daemon, name, &query).await;
        }
    }
    if m == Method::GET && p == "/containers/json" {
        return containers::list(&daemon, &query).await;
    }
    if m == Method::POST && p == "/containers/prune" {
        return containers::prune(&daemon, &query).await;
    }
    if m == Method::POST && p == "/containers/create" {
        let body = read_body(req).await?;
        return containers::create(&daemon, &query, &body).await;
    }
    if let Some(rest) = p.strip_prefix("/containers/") {
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        return match (m.clone(), action) {
            (Method::GET, "json") => containers::inspect(&daemon, id).await,
            (Method::GET, "logs") => containers::logs(daemon.clone(), id, &query).await,
            (Method::POST, "start") => containers::start(&daemon, id).await,
            (Method::POST, "stop") => containers::stop(&daemon, id, &query).await,
            (Method::POST, "kill") => containers::kill(&daemon, id, &query).await,
            (Method::POST, "restart") => containers::restart(&daemon, id, &query).await,
            (Method::POST, "wait") => containers::wait(daemon.clone(), id, &query).await,
            (Method::POST, "attach") => containers::attach(daemon.clone(), id, &query, req).await,
            (Method::POST, "exec") => {
                let body = read_body(req).await?;
                exec::create(&daemon, id, &body).await
            }
            (Method::POST, "resize") => exec::resize_container(&daemon, id, &query).await,
            (Method::POST, "pause") => ops::pause(&daemon, id).await,
            (Method::POST, "unpause") => ops::unpause(&daemon, id).await,
            (Method::GET, "top") => ops::top(&daemon, id, &query).await,
            (Method::GET, "stats") => ops::stats(daemon.clone(), id, &query).await,
            (Method::POST, "rename") => ops::rename(&daemon, id, &query).await,
            (Method::GET, "changes") => ops::changes(&daemon, id).await,
            (Method::GET, "export") => ops::export(&daemon, id).await,
            (Method::DELETE, "") => containers::remove(&daemon, id, &query).await,
            _ => Err(ApiError::not_found(format!("page not found: {m} {p}"))),
        };
    }
    if let Some(rest) = p.strip_prefix("/exec/") {
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        return match (m.clone(), action) {
            (Method::POST, "start") => exec::start(daemon.clone(), id, req).await,
            (Method::POST, "resize") => exec::resize(&daemon, id, &query).await,
            (Method::GET, "json") => exec::inspect(&daemon, id).await,
            _ => Err(ApiError::not_found(format!("page not found: {m} {p}"))),
        };
    }
    Err(ApiError::not_found(format!("page not found: {m} {p}")))
}

/// The API version a request's path names (`/v1.41/…`), if it names one.
fn api_version(path: &str) -> Option<(u32, u32)> {
    let ver = path.strip_prefix("/v")?.split('/').next()?;
    let (maj, min) = ver.split_once('.')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

fn percent_decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a request body up to 1 MiB (every JSON body Docker sends on these routes is small).
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), 1 << 20);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefix() {
        assert_eq!(strip_version("/v1.45/images/json").unwrap(), "/images/json");
        assert_eq!(strip_version("/v1.24/_ping").unwrap(), "/_ping");
        assert_eq!(strip_version("/images/json").unwrap(), "/images/json");
        assert!(strip_version("/v1.99/images/json")
            .unwrap_err()
            .message
            .contains("too new"));
        assert!(strip_version("/v1.12/images/json")
            .unwrap_err()
            .message
            .contains("too old"));
    }

    #[test]
    fn path_decoding_keeps_plus_and_slashes() {
        assert_eq!(percent_decode("/images/a%2Fb/json"), "/images/a/b/json");
        assert_eq!(percent_decode("/images/a+b"), "/images/a+b");
    }
}
