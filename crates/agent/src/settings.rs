//! Berth's settings document: one JSON file on the host, daemon.json-compatible for the keys
//! Docker users already have (`registry-mirrors`, `insecure-registries`; `debug`, `log-level`,
//! `default-address-pools`, `dns`, `features` are accepted and ignored with a warning) plus
//! Berth's own (`registries` with per-registry mirrors, `vm`). See `docs/settings.md`.
//!
//! Every document is validated as JSON first ([`validate`]), so that every error is reported at
//! once with the path of the key it concerns; only a valid document is turned into
//! [`Settings`]. [`SettingsStore`] keeps the file: atomic writes (temp file, fsync, rename,
//! fsync of the directory), an entity tag per version, and a refusal to start on a file that
//! does not validate.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use berth_registry::RegistryConfig;

/// VM CPUs allowed.
pub const CPUS: std::ops::RangeInclusive<u64> = 1..=256;
/// VM memory allowed, in MiB.
pub const MEMORY_MIB: std::ops::RangeInclusive<u64> = 256..=1_048_576;
/// VM data disk sizes allowed, in GiB.
pub const DISK_GIB: std::ops::RangeInclusive<u64> = 1..=16_384;

/// Set (to anything) in berthd's environment, it makes berthd abort after writing and syncing
/// the temporary file of a settings write and before renaming it into place: the tests' way of
/// crashing at the worst moment.
pub const CRASH_BEFORE_RENAME_ENV: &str = "BERTH_TEST_CRASH_BEFORE_SETTINGS_RENAME";

/// The settings document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Berth settings")]
pub struct Settings {
    /// Docker Hub mirrors, as in Docker's daemon.json: shorthand for
    /// `registries."docker.io".mirrors`, tried first.
    #[serde(
        rename = "registry-mirrors",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub registry_mirrors: Vec<String>,
    /// Registries that may be reached over plain http (and https without certificate checks),
    /// as in daemon.json: host, host:port or a CIDR range. 127.0.0.0/8, ::1 and localhost
    /// always may.
    #[serde(
        rename = "insecure-registries",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub insecure_registries: Vec<String>,
    /// Per registry: `host[:port]`, `docker.io` for Docker Hub, or `*` for every registry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registries: BTreeMap<String, RegistrySettings>,
    /// The VM's resources; changes take effect when the VM restarts.
    #[serde(default, skip_serializing_if = "VmSettings::is_empty")]
    pub vm: VmSettings,
    /// daemon.json's `debug`: accepted and ignored (use BERTH_LOG=debug).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    /// daemon.json's `log-level`: accepted and ignored (use BERTH_LOG).
    #[serde(rename = "log-level", default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// daemon.json's `default-address-pools`: accepted and ignored.
    #[serde(
        rename = "default-address-pools",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub default_address_pools: Option<Vec<Value>>,
    /// daemon.json's `dns`: accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    /// daemon.json's `features`: accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<BTreeMap<String, bool>>,
}

/// How one registry (or every registry, under `*`) is reached.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Mirrors, tried in this order before the registry itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// Never fall back to the registry itself: when every mirror fails, the pull fails.
    #[serde(
        rename = "mirror-only",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub mirror_only: bool,
    /// Plain http allowed (and https without certificate checks), as `insecure-registries`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// A PEM file of certificate authorities to trust for https (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// One mirror.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// `http(s)://host[:port]`, with no path, query or credentials.
    pub url: String,
}

/// The VM's resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    /// Virtual CPUs (1 to 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub cpus: Option<u32>,
    /// Memory in MiB (256 to 1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 1_048_576))]
    pub memory: Option<u64>,
    /// Data disk size in GiB (1 to 16384): the disk's size when it is made, and it grows to a
    /// bigger value at the next VM start; it never shrinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16_384))]
    pub disk: Option<u64>,
}

impl VmSettings {
    pub fn is_empty(&self) -> bool {
        self == &VmSettings::default()
    }
}

/// One thing wrong with a document: where (a JSON path such as
/// `registries["docker.io"].mirrors[0].url`) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What validating a document found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub errors: Vec<FieldError>,
    /// Keys accepted but ignored, and the like.
    pub warnings: Vec<String>,
}

const TOP_KEYS: &[&str] = &[
    "registry-mirrors",
    "insecure-registries",
    "registries",
    "vm",
    "debug",
    "log-level",
    "default-address-pools",
    "dns",
    "features",
];
const IGNORED_KEYS: &[&str] = &[
    "debug",
    "log-level",
    "default-address-pools",
    "dns",
    "features",
];
const REGISTRY_KEYS: &[&str] = &["mirrors", "mirror-only", "insecure", "ca"];
const MIRROR_KEYS: &[&str] = &["url"];
const VM_KEYS: &[&str] = &["cpus", "memory", "disk"];

/// `parent.key`, or `parent["key"]` when the key is not a plain name.
fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", Value::String(key.to_string())),
    }
}

fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The known key closest to `key`, if one is close enough to be a likely typo.
fn suggestion(key: &str, known: &[&str]) -> Option<String> {
    let lower = key.to_ascii_lowercase().replace('_', "-");
    known
        .iter()
        .filter(|k| {
            strsim::jaro_winkler(&lower, k) >= 0.85
                || strsim::levenshtein(&lower, k) <= (k.len() / 3).max(1)
        })
        .max_by(|a, b| strsim::jaro_winkler(&lower, a).total_cmp(&strsim::jaro_winkler(&lower, b)))
        .map(|k| k.to_string())
}

struct Checker {
    report: Report,
}

impl Checker {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let path = if path.is_empty() {
            "(document)".to_string()
        } else {
            path.to_string()
        };
        self.report.errors.push(FieldError {
            path,
            message: message.into(),
        });
    }

    fn object<'a>(&mut self, path: &str, v: &'a Value) -> Option<&'a Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                self.error(path, format!("must be an object, not {}", kind(other)));
                None
            }
        }
    }

    fn array<'a>(&mut self, path: &str, v: &'a Value) -> Option<&'a Vec<Value>> {
        match v {
            Value::Array(a) => Some(a),
            other => {
                self.error(path, format!("must be an array, not {}", kind(other)));
                None
            }
        }
    }

    fn string<'a>(&mut self, path: &str, v: &'a Value) -> Option<&'a str> {
        match v {
            Value::String(s) => Some(s),
            other => {
                self.error(path, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn boolean(&mut self, path: &str, v: &Value) {
        if !v.is_boolean() {
            self.error(path, format!("must be true or false, not {}", kind(v)));
        }
    }

    fn unknown_keys(&mut self, path: &str, m: &Map<String, Value>, known: &[&str]) {
        for k in m.keys() {
            if known.contains(&k.as_str()) {
                continue;
            }
            let mut message = format!("unknown key {k:?}");
            if let Some(s) = suggestion(k, known) {
                message.push_str(&format!(" (did you mean {s:?}?)"));
            } else {
                message.push_str(&format!(" (known keys: {})", known.join(", ")));
            }
            self.error(&child(path, k), message);
        }
    }

    /// A mirror URL; returns its normal form (for duplicate checks) when it is valid.
    fn mirror_url(&mut self, path: &str, s: &str) -> Option<String> {
        let u = match url::Url::parse(s.trim()) {
            Ok(u) => u,
            Err(url::ParseError::RelativeUrlWithoutBase) => {
                self.error(
                    path,
                    format!("{s:?} is not a URL: it needs a scheme (https://{s})"),
                );
                return None;
            }
            Err(e) => {
                self.error(path, format!("{s:?} is not a valid URL: {e}"));
                return None;
            }
        };
        let mut ok = true;
        if !matches!(u.scheme(), "http" | "https") {
            self.error(
                path,
                format!(
                    "{s:?}: the scheme must be http or https, not {:?}",
                    u.scheme()
                ),
            );
            ok = false;
        }
        if u.host_str().is_none_or(str::is_empty) {
            self.error(path, format!("{s:?} has no host"));
            ok = false;
        }
        if !(u.path().is_empty() || u.path() == "/") {
            self.error(
                path,
                format!(
                    "{s:?} has a path ({:?}): a mirror URL is scheme://host[:port] only; the registry API's /v2/ is added by Berth",
                    u.path()
                ),
            );
            ok = false;
        }
        if u.query().is_some() || u.fragment().is_some() {
            self.error(
                path,
                format!("{s:?} has a query or fragment: a mirror URL is scheme://host[:port] only"),
            );
            ok = false;
        }
        if !u.username().is_empty() || u.password().is_some() {
            self.error(
                path,
                format!(
                    "{}: credentials do not belong in a mirror URL; use docker login for the mirror's host",
                    redact(&u)
                ),
            );
            ok = false;
        }
        ok.then(|| u.to_string())
    }

    /// A list of mirror URLs (strings at `registry-mirrors`, `{url}` objects at `mirrors`);
    /// normal forms are added to `seen`, a duplicate is an error naming the first.
    fn mirror_list(
        &mut self,
        path: &str,
        v: &Value,
        objects: bool,
        seen: &mut Vec<(String, String)>,
    ) {
        let Some(items) = self.array(path, v) else {
            return;
        };
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let (url, url_path) = if objects {
                let Some(m) = self.object(&p, item) else {
                    continue;
                };
                self.unknown_keys(&p, m, MIRROR_KEYS);
                let url_path = child(&p, "url");
                match m.get("url") {
                    None => {
                        self.error(&p, "a mirror needs a \"url\"");
                        continue;
                    }
                    Some(u) => match self.string(&url_path, u) {
                        Some(u) => (u, url_path),
                        None => continue,
                    },
                }
            } else {
                match self.string(&p, item) {
                    Some(u) => (u, p.clone()),
                    None => continue,
                }
            };
            if let Some(norm) = self.mirror_url(&url_path, url) {
                if let Some((_, first)) = seen.iter().find(|(n, _)| *n == norm) {
                    self.error(
                        &url_path,
                        format!("duplicate mirror {url:?}: already listed at {first}"),
                    );
                } else {
                    seen.push((norm, url_path));
                }
            }
        }
    }

    fn insecure_entry(&mut self, path: &str, s: &str) {
        let bare = s
            .trim()
            .strip_prefix("http://")
            .or_else(|| s.trim().strip_prefix("https://"))
            .unwrap_or(s.trim())
            .trim_end_matches('/');
        if bare.is_empty() {
            self.error(path, "must not be empty");
            return;
        }
        if let Some((net, bits)) = bare.split_once('/') {
            match (net.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
                (Ok(std::net::IpAddr::V4(_)), Ok(b)) if b <= 32 => {}
                (Ok(std::net::IpAddr::V6(_)), Ok(b)) if b <= 128 => {}
                _ => self.error(
                    path,
                    format!("{s:?} is neither host[:port] nor a CIDR range (10.0.0.0/8)"),
                ),
            }
            return;
        }
        if let Err(why) = host_port(bare) {
            self.error(path, format!("{s:?}: {why}"));
        }
    }

    fn vm_number(
        &mut self,
        path: &str,
        v: &Value,
        range: std::ops::RangeInclusive<u64>,
        unit: &str,
    ) {
        match v.as_u64() {
            Some(n) if range.contains(&n) => {}
            Some(n) => self.error(
                path,
                format!(
                    "{n} is out of range: from {} to {}{unit}",
                    range.start(),
                    range.end()
                ),
            ),
            None => self.error(
                path,
                format!("must be a whole number{unit}, not {}", describe(v)),
            ),
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => kind(other).to_string(),
    }
}

fn redact(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    format!("\"{u}\"")
}

/// Checks `host[:port]` as Docker names registries.
fn host_port(s: &str) -> Result<(), String> {
    if s.contains('/') || s.contains('@') || s.contains('?') || s.contains('#') {
        return Err("a registry is host[:port], without a scheme, path or credentials".into());
    }
    let u = url::Url::parse(&format!("https://{s}/"))
        .map_err(|e| format!("not a valid host[:port]: {e}"))?;
    if u.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

/// Validates a document given as JSON: every error at once, with the path of its key.
pub fn validate(doc: &Value) -> Report {
    let mut c = Checker {
        report: Report::default(),
    };
    let Some(top) = c.object("", doc) else {
        return c.report;
    };
    c.unknown_keys("", top, TOP_KEYS);
    let mut hub_seen: Vec<(String, String)> = Vec::new();
    if let Some(v) = top.get("registry-mirrors") {
        c.mirror_list("registry-mirrors", v, false, &mut hub_seen);
    }
    if let Some(v) = top.get("insecure-registries") {
        if let Some(items) = c.array("insecure-registries", v) {
            let mut seen: Vec<(String, String)> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let p = index("insecure-registries", i);
                if let Some(s) = c.string(&p, item) {
                    c.insecure_entry(&p, s);
                    let norm = s.trim().to_ascii_lowercase();
                    if let Some((_, first)) = seen.iter().find(|(n, _)| *n == norm) {
                        c.error(
                            &p,
                            format!("duplicate entry {s:?}: already listed at {first}"),
                        );
                    } else {
                        seen.push((norm, p));
                    }
                }
            }
        }
    }
    if let Some(v) = top.get("registries") {
        if let Some(regs) = c.object("registries", v) {
            for (name, reg) in regs {
                let p = child("registries", name);
                if name != "*" && name != "docker.io" {
                    if matches!(
                        name.as_str(),
                        "index.docker.io" | "registry-1.docker.io" | "https://index.docker.io/v1/"
                    ) {
                        c.error(
                            &p,
                            format!("{name:?} is Docker Hub: use the key \"docker.io\""),
                        );
                    } else if let Err(why) = host_port(name) {
                        c.error(&p, format!("{name:?} is not a registry name: {why} (or \"docker.io\", or \"*\" for every registry)"));
                    }
                }
                let Some(m) = c.object(&p, reg) else {
                    continue;
                };
                c.unknown_keys(&p, m, REGISTRY_KEYS);
                let mut own_seen = Vec::new();
                let seen = if name == "docker.io" {
                    &mut hub_seen
                } else {
                    &mut own_seen
                };
                if let Some(v) = m.get("mirrors") {
                    c.mirror_list(&child(&p, "mirrors"), v, true, seen);
                }
                let has_mirrors = !seen.is_empty();
                if let Some(v) = m.get("mirror-only") {
                    let mp = child(&p, "mirror-only");
                    c.boolean(&mp, v);
                    if v == &Value::Bool(true) {
                        if name == "*" {
                            c.error(&mp, "mirror-only is set per registry, not for \"*\"");
                        } else if !has_mirrors {
                            c.error(
                                &mp,
                                "mirror-only needs at least one mirror: the registry would be unreachable",
                            );
                        }
                    }
                }
                if let Some(v) = m.get("insecure") {
                    let ip = child(&p, "insecure");
                    c.boolean(&ip, v);
                    if v == &Value::Bool(true) && name == "*" {
                        c.error(&ip, "insecure is set per registry, not for \"*\"");
                    }
                }
                if let Some(v) = m.get("ca") {
                    let cp = child(&p, "ca");
                    if let Some(s) = c.string(&cp, v) {
                        check_ca(&mut c, &cp, s);
                    }
                }
            }
        }
    }
    if let Some(v) = top.get("vm") {
        if let Some(m) = c.object("vm", v) {
            c.unknown_keys("vm", m, VM_KEYS);
            if let Some(v) = m.get("cpus") {
                c.vm_number("vm.cpus", v, CPUS, "");
            }
            if let Some(v) = m.get("memory") {
                c.vm_number("vm.memory", v, MEMORY_MIB, " MiB");
            }
            if let Some(v) = m.get("disk") {
                c.vm_number("vm.disk", v, DISK_GIB, " GiB");
            }
        }
    }
    // daemon.json keys Berth does not use: type-checked, then ignored with a warning.
    for key in IGNORED_KEYS {
        let Some(v) = top.get(*key) else { continue };
        match *key {
            "debug" => c.boolean(key, v),
            "log-level" => {
                c.string(key, v);
            }
            "default-address-pools" => {
                c.array(key, v);
            }
            "dns" => {
                if let Some(a) = c.array(key, v) {
                    for (i, item) in a.iter().enumerate() {
                        c.string(&index(key, i), item);
                    }
                }
            }
            "features" => {
                if let Some(m) = c.object(key, v) {
                    for (k, item) in m {
                        c.boolean(&child(key, k), item);
                    }
                }
            }
            _ => {}
        }
        c.report.warnings.push(format!(
            "{key}: accepted for daemon.json compatibility and ignored by Berth"
        ));
    }
    c.report
}

fn check_ca(c: &mut Checker, path: &str, s: &str) {
    let p = Path::new(s);
    if !p.is_absolute() {
        c.error(path, format!("{s:?} must be an absolute path"));
        return;
    }
    match std::fs::read(p) {
        Ok(bytes) => {
            if !String::from_utf8_lossy(&bytes).contains("-----BEGIN CERTIFICATE-----") {
                c.error(path, format!("{s} holds no PEM certificate"));
            }
        }
        Err(e) => c.error(path, format!("cannot read {s}: {e}")),
    }
}

/// Parses and validates a document's bytes: the settings and the warnings, or every error.
pub fn parse(bytes: &[u8]) -> Result<(Settings, Vec<String>), Vec<FieldError>> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
        vec![FieldError {
            path: "(document)".into(),
            message: format!("not valid JSON: {e}"),
        }]
    })?;
    from_value(doc)
}

/// Validates a document and turns it into [`Settings`].
pub fn from_value(doc: Value) -> Result<(Settings, Vec<String>), Vec<FieldError>> {
    let report = validate(&doc);
    if !report.errors.is_empty() {
        return Err(report.errors);
    }
    let settings: Settings = serde_json::from_value(doc).map_err(|e| {
        vec![FieldError {
            path: "(document)".into(),
            message: e.to_string(),
        }]
    })?;
    Ok((settings, report.warnings))
}

/// RFC 7396 JSON merge patch: objects merge key by key, `null` removes a key, anything else
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

impl Settings {
    /// The document as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("settings always serialise")
    }

    /// The file's bytes: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).expect("settings always serialise");
        b.push(b'\n');
        b
    }

    /// The entity tag of this version: a hash of its bytes, quoted as HTTP wants.
    pub fn etag(&self) -> String {
        let h = Sha256::digest(self.to_bytes());
        format!("\"{}\"", hex::encode(&h[..12]))
    }

    /// The registry client configuration this document asks for. `registry-mirrors` come
    /// before `registries."docker.io".mirrors`. CA files are read here (a file that went
    /// away since validation is an error naming it).
    pub fn registry_config(&self) -> Result<RegistryConfig, String> {
        let mut cfg = RegistryConfig::default();
        let mut add = |registry: &str, url: &str| -> Result<(), String> {
            let u = url::Url::parse(url.trim()).map_err(|e| format!("mirror {url:?}: {e}"))?;
            let list = cfg.mirrors.entry(registry.to_string()).or_default();
            if !list.contains(&u) {
                list.push(u);
            }
            Ok(())
        };
        for m in &self.registry_mirrors {
            add("docker.io", m)?;
        }
        for (name, reg) in &self.registries {
            for m in &reg.mirrors {
                add(name, &m.url)?;
            }
        }
        cfg.insecure = self.insecure_registries.clone();
        for (name, reg) in &self.registries {
            if reg.mirror_only {
                cfg.mirror_only.insert(name.clone());
            }
            if reg.insecure && !cfg.insecure.contains(name) {
                cfg.insecure.push(name.clone());
            }
            if let Some(ca) = &reg.ca {
                let pem = std::fs::read(ca).map_err(|e| {
                    format!("registries[{name:?}].ca: reading {}: {e}", ca.display())
                })?;
                cfg.ca_certificates.push(pem);
            }
        }
        Ok(cfg)
    }
}

/// The registry configuration from the command line laid over the file's: for each registry
/// the flags' mirrors come first, then the file's (duplicates dropped); insecure registries,
/// mirror-only registries and CAs are the union.
pub fn overlay(flags: &RegistryConfig, file: &RegistryConfig) -> RegistryConfig {
    let mut out = file.clone();
    for (registry, urls) in &flags.mirrors {
        let list = out.mirrors.entry(registry.clone()).or_default();
        let mut merged = urls.clone();
        for u in list.iter() {
            if !merged.contains(u) {
                merged.push(u.clone());
            }
        }
        *list = merged;
    }
    for i in &flags.insecure {
        if !out.insecure.contains(i) {
            out.insecure.push(i.clone());
        }
    }
    out.mirror_only
        .extend(flags.mirror_only.iter().cloned().collect::<BTreeSet<_>>());
    out.ca_certificates
        .extend(flags.ca_certificates.iter().cloned());
    out
}

/// The JSON Schema of the document, generated from these types (`docs/settings.schema.json`).
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Settings)).expect("the schema serialises")
}

/// The settings file's default path, in the platform's configuration directory
/// ([`berth_host::paths::settings`]).
pub fn default_path() -> PathBuf {
    berth_host::paths::settings()
}

/// Why the settings file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the settings file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the settings file {path} is invalid (fix or remove it; berthd does not reset it):\n{}", list(.errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a change was not made.
#[derive(Debug)]
pub enum ChangeError {
    /// The document does not validate: nothing changed.
    Invalid(Vec<FieldError>),
    /// `If-Match` names another version: the current one is given.
    Conflict { current: String },
    /// Writing the file failed: nothing changed.
    Write(std::io::Error),
}

/// A version of the settings and its entity tag.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub settings: Settings,
    pub etag: String,
}

/// A change made: the versions before and after, the new document's warnings, and what
/// `prepare` built for it.
pub struct Changed<T> {
    pub old: Versioned,
    pub new: Versioned,
    pub warnings: Vec<String>,
    pub prepared: T,
}

/// The settings file: the version in force, and atomic replacement of it.
pub struct SettingsStore {
    path: PathBuf,
    current: Mutex<Versioned>,
    /// Warnings of the file read at start.
    pub load_warnings: Vec<String>,
}

impl SettingsStore {
    /// Loads the file: defaults when it does not exist, an error when it cannot be read or
    /// does not validate (the file is left as it is). Temporary files of a write that never
    /// finished (a crash before the rename) are removed.
    pub fn load(path: &Path) -> Result<SettingsStore, LoadError> {
        remove_stale_temps(path);
        let (settings, warnings) = match std::fs::read(path) {
            Ok(bytes) => parse(&bytes).map_err(|errors| LoadError::Invalid {
                path: path.to_path_buf(),
                errors,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Settings::default(), Vec::new()),
            Err(error) => {
                return Err(LoadError::Read {
                    path: path.to_path_buf(),
                    error,
                })
            }
        };
        let etag = settings.etag();
        Ok(SettingsStore {
            path: path.to_path_buf(),
            current: Mutex::new(Versioned { settings, etag }),
            load_warnings: warnings,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current(&self) -> Versioned {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the document with `make(current)` if `if_match` is the current entity tag
    /// (or `*`); validates it, writes it atomically, and only then makes it current. Returns
    /// the previous and the new version, and the new document's warnings.
    /// `prepare` runs on the valid new document before anything is written (it builds what
    /// will apply it; its error is reported as the document's and nothing changes).
    pub fn change<T>(
        &self,
        if_match: &str,
        make: impl FnOnce(&Settings) -> Value,
        prepare: impl FnOnce(&Settings) -> Result<T, String>,
    ) -> Result<Changed<T>, ChangeError> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !etag_matches(if_match, &cur.etag) {
            return Err(ChangeError::Conflict {
                current: cur.etag.clone(),
            });
        }
        let doc = make(&cur.settings);
        let (settings, warnings) = from_value(doc).map_err(ChangeError::Invalid)?;
        let prepared = prepare(&settings).map_err(|message| {
            ChangeError::Invalid(vec![FieldError {
                path: "(document)".into(),
                message,
            }])
        })?;
        write_atomic(&self.path, &settings.to_bytes()).map_err(ChangeError::Write)?;
        let etag = settings.etag();
        let old = std::mem::replace(&mut *cur, Versioned { settings, etag });
        Ok(Changed {
            old,
            new: cur.clone(),
            warnings,
            prepared,
        })
    }
}

/// `If-Match`: `*`, or a list of entity tags (weak ones compared as strong, as a single
/// server's tags are).
pub fn etag_matches(if_match: &str, current: &str) -> bool {
    if_match.trim() == "*"
        || if_match
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == current)
}

fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

fn remove_stale_temps(path: &Path) {
    let Some(dir) = path.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = temp_prefix(path);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            tracing::warn!(
                "removing {}: a settings write that never finished (the file in force is {})",
                e.path().display(),
                path.display()
            );
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: a
/// temporary file in the same directory, fsync, rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        "{}{:016x}.tmp",
        temp_prefix(path),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if std::env::var_os(CRASH_BEFORE_RENAME_ENV).is_some() {
            tracing::error!("{CRASH_BEFORE_RENAME_ENV} is set: aborting before the rename");
            std::process::abort();
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What a change means beyond the next pull: the `vm` keys that changed (they take effect
/// when the VM restarts).
pub fn restart_required(old: &Settings, new: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if old.vm.cpus != new.vm.cpus {
        out.push("vm.cpus".to_string());
    }
    if old.vm.memory != new.vm.memory {
        out.push("vm.memory".to_string());
    }
    if old.vm.disk != new.vm.disk {
        out.push("vm.disk".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(doc: Value) -> Vec<(String, String)> {
        validate(&doc)
            .errors
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    fn has(errs: &[(String, String)], path: &str, needle: &str) -> bool {
        errs.iter().any(|(p, m)| p == path && m.contains(needle))
    }

    #[test]
    fn a_full_valid_document_round_trips() {
        let doc = json!({
            "registry-mirrors": ["https://abc123.mirror.aliyuncs.com"],
            "insecure-registries": ["reg.lan:5000", "10.0.0.0/8"],
            "registries": {
                "docker.io": { "mirrors": [{ "url": "http://127.0.0.1:5001/" }] },
                "quay.io": { "mirrors": [{ "url": "https://quay-mirror.example" }], "mirror-only": true },
                "reg.lan:5000": { "insecure": true },
                "*": { "mirrors": [{ "url": "https://all.example" }] }
            },
            "vm": { "cpus": 4, "memory": 4096, "disk": 100 },
            "debug": true, "log-level": "info", "dns": ["1.1.1.1"], "features": { "buildkit": true },
            "default-address-pools": [{ "base": "10.10.0.0/16", "size": 24 }]
        });
        let (s, warnings) = from_value(doc.clone()).unwrap();
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.starts_with("debug:")));
        assert_eq!(s.vm.cpus, Some(4));
        let (again, _) = parse(&s.to_bytes()).unwrap();
        assert_eq!(again, s);
        assert_eq!(again.etag(), s.etag());

        let cfg = s.registry_config().unwrap();
        let hub: Vec<String> = cfg.mirrors["docker.io"]
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            hub,
            [
                "https://abc123.mirror.aliyuncs.com/",
                "http://127.0.0.1:5001/"
            ],
            "registry-mirrors first"
        );
        assert!(cfg.mirror_only.contains("quay.io"));
        assert!(cfg.http_allowed("reg.lan:5000"));
        assert!(cfg.http_allowed("10.1.2.3"));
        assert_eq!(cfg.mirrors_for("ghcr.io").len(), 1, "the * mirror");
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_path() {
        let errs = errors(json!({
            "registry-mirrors": [
                "https://mirror.example/v2/",
                "mirror.example",
                "ftp://mirror.example",
                "https://m.example?x=1",
                "https://u:secret@m.example",
                "https://dup.example",
                "https://dup.example/",
                42
            ],
            "insecure-registries": ["reg.lan:5000", "reg.lan:5000", "10.0.0.0/99", "http://a/b"],
            "registy": {},
            "registries": {
                "docker.io": { "mirrors": [{ "url": "https://dup.example" }], "mirorrs": [] },
                "quay.io": { "mirror-only": true },
                "index.docker.io": {},
                "https://ghcr.io": {},
                "*": { "mirror-only": true, "mirrors": [{ "url": "https://all.example" }, { "uri": "x" }] },
                "ca.example": { "ca": "relative.pem" },
                "ca2.example": { "ca": "/nonexistent/ca.pem", "insecure": "yes" }
            },
            "vm": { "cpus": 0, "memory": 100, "disk": 1.5, "gpus": 1 },
            "debug": "yes"
        }));
        let expect = [
            ("registry-mirrors[0]", "has a path (\"/v2/\")"),
            ("registry-mirrors[1]", "it needs a scheme"),
            ("registry-mirrors[2]", "must be http or https"),
            ("registry-mirrors[3]", "query"),
            ("registry-mirrors[4]", "credentials"),
            ("registry-mirrors[6]", "duplicate mirror"),
            ("registry-mirrors[7]", "must be a string"),
            ("insecure-registries[1]", "duplicate entry"),
            ("insecure-registries[2]", "CIDR"),
            ("insecure-registries[3]", "neither host[:port] nor a CIDR"),
            ("registy", "did you mean \"registries\"?"),
            (
                "registries[\"docker.io\"].mirrors[0].url",
                "already listed at registry-mirrors[5]",
            ),
            (
                "registries[\"docker.io\"].mirorrs",
                "did you mean \"mirrors\"?",
            ),
            (
                "registries[\"quay.io\"].mirror-only",
                "needs at least one mirror",
            ),
            (
                "registries[\"index.docker.io\"]",
                "use the key \"docker.io\"",
            ),
            ("registries[\"https://ghcr.io\"]", "not a registry name"),
            ("registries[\"*\"].mirror-only", "not for \"*\""),
            ("registries[\"*\"].mirrors[1]", "needs a \"url\""),
            ("registries[\"*\"].mirrors[1].uri", "did you mean \"url\"?"),
            ("registries[\"ca.example\"].ca", "absolute path"),
            (
                "registries[\"ca2.example\"].ca",
                "cannot read /nonexistent/ca.pem",
            ),
            ("registries[\"ca2.example\"].insecure", "true or false"),
            ("vm.cpus", "0 is out of range: from 1 to 256"),
            ("vm.memory", "100 is out of range: from 256 to 1048576 MiB"),
            ("vm.disk", "whole number GiB, not 1.5"),
            ("vm.gpus", "unknown key"),
            ("debug", "true or false"),
        ];
        for (path, needle) in expect {
            assert!(has(&errs, path, needle), "{path}: {needle}\n{errs:#?}");
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        assert!(
            !errs.iter().any(|(_, m)| m.contains("secret")),
            "a password in a URL is never echoed: {errs:?}"
        );
    }

    #[test]
    fn not_an_object_and_not_json() {
        assert!(has(&errors(json!([1])), "(document)", "must be an object"));
        let e = parse(b"{ \"registry-mirrors\": [").unwrap_err();
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("not valid JSON"), "{e:?}");
        assert!(e[0].message.contains("line 1"), "{e:?}");
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({ "a": "b", "c": { "d": "e", "f": "g" }, "vm": { "cpus": 2 } });
        merge_patch(
            &mut doc,
            &json!({ "a": "z", "c": { "f": null }, "vm": null, "n": [1] }),
        );
        assert_eq!(doc, json!({ "a": "z", "c": { "d": "e" }, "n": [1] }));
    }

    #[test]
    fn flags_come_before_the_file() {
        let file = Settings {
            registry_mirrors: vec!["https://file.example".into()],
            insecure_registries: vec!["a.lan".into()],
            ..Default::default()
        }
        .registry_config()
        .unwrap();
        let mut flags = RegistryConfig::default();
        flags.mirrors.insert(
            "docker.io".into(),
            vec![
                url::Url::parse("https://flag.example").unwrap(),
                url::Url::parse("https://file.example").unwrap(),
            ],
        );
        flags.insecure.push("b.lan".into());
        let cfg = overlay(&flags, &file);
        let hub: Vec<String> = cfg.mirrors["docker.io"]
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(hub, ["https://flag.example/", "https://file.example/"]);
        assert_eq!(cfg.insecure, ["a.lan", "b.lan"]);
    }

    #[test]
    fn etags_and_if_match() {
        let a = Settings::default();
        let b = Settings {
            vm: VmSettings {
                cpus: Some(2),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_ne!(a.etag(), b.etag());
        assert!(etag_matches(&a.etag(), &a.etag()));
        assert!(etag_matches("*", &a.etag()));
        assert!(etag_matches(&format!("W/{}, \"x\"", a.etag()), &a.etag()));
        assert!(!etag_matches(&b.etag(), &a.etag()));
        assert_eq!(restart_required(&a, &b), ["vm.cpus"]);
    }

    #[test]
    fn store_writes_atomically_and_refuses_invalid_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/settings.json");
        let store = SettingsStore::load(&path).unwrap();
        let v0 = store.current();
        assert_eq!(v0.settings, Settings::default());
        assert!(!path.exists(), "nothing is written until a change");

        let err = store
            .change(&v0.etag, |_| json!({ "vm": { "cpus": 0 } }), |_| Ok(()))
            .err()
            .unwrap();
        assert!(matches!(err, ChangeError::Invalid(ref e) if e[0].path == "vm.cpus"));
        assert!(!path.exists(), "an invalid document is never written");

        let v1 = store
            .change(&v0.etag, |_| json!({ "vm": { "cpus": 3 } }), |_| Ok(()))
            .unwrap()
            .new;
        assert_eq!(std::fs::read(&path).unwrap(), v1.settings.to_bytes());
        assert!(matches!(
            store.change(&v0.etag, |_| json!({}), |_| Ok(())),
            Err(ChangeError::Conflict { .. })
        ));
        // A leftover temp file (a crash before the rename) is removed at load; the file in
        // force is the last complete one.
        let stale = path.parent().unwrap().join(".settings.json.0123.tmp");
        std::fs::write(&stale, b"{ half").unwrap();
        let again = SettingsStore::load(&path).unwrap();
        assert_eq!(again.current().settings.vm.cpus, Some(3));
        assert!(!stale.exists());

        std::fs::write(&path, b"{ \"vm\": { \"cpus\": \"many\" } }").unwrap();
        let e = SettingsStore::load(&path).err().unwrap().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("vm.cpus: must be a whole number"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{ \"vm\": { \"cpus\": \"many\" } }",
            "an invalid file is left as it is"
        );
    }

    /// docs/settings.schema.json is generated from these types; regenerate it with
    /// `BERTH_UPDATE_SCHEMA=1 cargo test -p berth-agent settings::tests::schema_is_fresh`.
    #[test]
    fn schema_is_fresh() {
        crate::schema_file::assert_fresh(
            "settings.schema.json",
            &schema(),
            "settings::tests::schema_is_fresh",
        );
    }
}
