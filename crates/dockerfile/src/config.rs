//! What an instruction does to an image's `config` object (Docker's JSON names: `Cmd`, `Env`,
//! `Labels`, …). Shared by the builder and by `docker commit --change`.

use serde_json::{json, Map, Value};

use crate::expand::{expand_word, expand_words, split_raw, ExpandError};
use crate::parse::{Args, Instruction};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// the instruction is not one that changes the config
    #[error("{0} is not a config instruction")]
    NotConfig(String),
    /// bad arguments, with Docker's message
    #[error("{0}")]
    Invalid(String),
    /// substitution failed
    #[error(transparent)]
    Expand(#[from] ExpandError),
}

/// What the instructions of one stage (or one commit's changes) remember between them.
#[derive(Debug, Clone, Default)]
pub struct ConfigState {
    /// A CMD was given: a later ENTRYPOINT keeps it (else ENTRYPOINT clears the inherited Cmd).
    pub cmd_set: bool,
}

/// The value of `name` in the config's `Env`.
pub fn env_value(config: &Map<String, Value>, name: &str) -> Option<String> {
    config.get("Env")?.as_array()?.iter().find_map(|e| {
        let (k, v) = e.as_str()?.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// Sets `name=value` in `Env`, in place of an earlier value.
pub fn set_env(config: &mut Map<String, Value>, name: &str, value: &str) {
    let entry = json!(format!("{name}={value}"));
    let env = config
        .entry("Env")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !env.is_array() {
        *env = Value::Array(Vec::new());
    }
    let list = env.as_array_mut().expect("array");
    let prefix = format!("{name}=");
    match list.iter_mut().find(|e| {
        e.as_str()
            .is_some_and(|s| s.starts_with(&prefix) || s == name)
    }) {
        Some(e) => *e = entry,
        None => list.push(entry),
    }
}

/// The shell of shell-form commands: the config's `Shell`, else `/bin/sh -c`.
pub fn shell(config: &Map<String, Value>) -> Vec<String> {
    match config.get("Shell").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec!["/bin/sh".into(), "-c".into()],
    }
}

/// `ENV`/`LABEL`: `k=v k2="v 2"` pairs, or the old `key value with spaces`.
pub fn name_values(
    text: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
    what: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let words = split_raw(text, escape);
    let Some(first) = words.first() else {
        return Err(ConfigError::Invalid(format!(
            "{what} requires at least one argument"
        )));
    };
    if !first.contains('=') {
        let rest = text.trim_start()[first.len()..].trim();
        if rest.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{what} must have two arguments"
            )));
        }
        let key = expand_word(first, escape, lookup)?;
        return Ok(vec![(key, expand_word(rest, escape, lookup)?)]);
    }
    let mut out = Vec::new();
    for w in &words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(ConfigError::Invalid(format!(
                "Syntax error - can't find = in \"{w}\". Must be of the form: name=value"
            )));
        };
        let k = expand_word(k, escape, lookup)?;
        if k.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{what} names can not be blank"
            )));
        }
        out.push((k, expand_word(v, escape, lookup)?));
    }
    Ok(out)
}

/// A Go duration ("30s", "1m30s", "500ms") in nanoseconds.
pub fn duration_ns(s: &str) -> Result<i64, String> {
    let bad = || format!("time: invalid duration \"{s}\"");
    if s == "0" {
        return Ok(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += num * unit;
        rest = &rest[u..];
    }
    Ok(total as i64)
}

fn words_or_json(
    args: &Args,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ConfigError> {
    Ok(match args {
        Args::Json(v) => v
            .iter()
            .map(|w| expand_word(w, escape, lookup))
            .collect::<Result<_, _>>()?,
        Args::Text(t) => expand_words(t, escape, lookup)?,
    })
}

/// Joins `dir` onto the working directory as Docker does (absolute replaces), cleaned.
pub fn join_workdir(current: &str, dir: &str) -> String {
    let joined = if dir.starts_with('/') {
        dir.to_string()
    } else {
        format!("{}/{dir}", if current.is_empty() { "/" } else { current })
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The instructions `docker commit --change` and `docker import --change` may use (dockerd's
/// list).
pub const CHANGE_COMMANDS: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Applies `--change` lines (Dockerfile instructions, one per line) to `config`, as `docker
/// commit` and `docker import` do; an instruction outside [`CHANGE_COMMANDS`] is dockerd's
/// "run is not a valid change command".
pub fn apply_changes(config: &mut Map<String, Value>, changes: &[String]) -> Result<(), String> {
    let mut state = ConfigState::default();
    for (i, line) in changes.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ins = crate::parse::instruction(i + 1, line).map_err(|e| e.to_string())?;
        if !CHANGE_COMMANDS.contains(&ins.keyword.as_str()) {
            return Err(format!(
                "{} is not a valid change command",
                ins.keyword.to_ascii_lowercase()
            ));
        }
        let env = config.clone();
        apply(config, &mut state, &ins, '\\', &|n| env_value(&env, n))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Applies one config instruction (CMD, ENTRYPOINT, ENV, LABEL, EXPOSE, USER, WORKDIR,
/// VOLUME, ONBUILD, STOPSIGNAL, HEALTHCHECK, SHELL) to `config`. `lookup` gives the variables
/// substitution sees (the config's Env and the build's ARGs).
pub fn apply(
    config: &mut Map<String, Value>,
    state: &mut ConfigState,
    ins: &Instruction,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let k = ins.keyword.as_str();
    let flags: &[&str] = match k {
        "HEALTHCHECK" => &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        _ => &[],
    };
    ins.check_flags(flags).map_err(ConfigError::Invalid)?;
    match k {
        "CMD" | "ENTRYPOINT" => {
            let key = if k == "CMD" { "Cmd" } else { "Entrypoint" };
            let value = match &ins.args {
                Args::Json(v) => json!(v),
                Args::Text(t) if t.is_empty() && k == "ENTRYPOINT" => Value::Null,
                Args::Text(t) => {
                    let mut v = shell(config);
                    v.push(t.clone());
                    json!(v)
                }
            };
            config.insert(key.into(), value);
            if k == "CMD" {
                state.cmd_set = true;
            } else if !state.cmd_set {
                config.insert("Cmd".into(), Value::Null);
            }
        }
        "ENV" => {
            for (name, value) in name_values(&ins.args.text(), escape, lookup, "ENV")? {
                set_env(config, &name, &value);
            }
        }
        "LABEL" => {
            let pairs = name_values(&ins.args.text(), escape, lookup, "LABEL")?;
            let labels = config
                .entry("Labels")
                .or_insert_with(|| Value::Object(Map::new()));
            if !labels.is_object() {
                *labels = Value::Object(Map::new());
            }
            let m = labels.as_object_mut().expect("object");
            for (name, value) in pairs {
                m.insert(name, json!(value));
            }
        }
        "EXPOSE" => {
            let ports = expand_words(&ins.args.text(), escape, lookup)?;
            let exposed = config
                .entry("ExposedPorts")
                .or_insert_with(|| Value::Object(Map::new()));
            if !exposed.is_object() {
                *exposed = Value::Object(Map::new());
            }
            let m = exposed.as_object_mut().expect("object");
            for p in ports {
                let (port, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                let proto = proto.to_ascii_lowercase();
                let (lo, hi) = match port.split_once('-') {
                    Some((a, b)) => (a, b),
                    None => (port, port),
                };
                let parse = |s: &str| {
                    s.parse::<u16>()
                        .map_err(|_| ConfigError::Invalid(format!("Invalid containerPort: {p}")))
                };
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if lo > hi || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                    return Err(ConfigError::Invalid(format!("Invalid port: {p}")));
                }
                for n in lo..=hi {
                    m.insert(format!("{n}/{proto}"), json!({}));
                }
            }
        }
        "USER" => {
            let user = expand_word(ins.args.text().trim(), escape, lookup)?;
            config.insert("User".into(), json!(user));
        }
        "WORKDIR" => {
            let dir = expand_word(ins.args.text().trim(), escape, lookup)?;
            let current = config
                .get("WorkingDir")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            config.insert("WorkingDir".into(), json!(join_workdir(&current, &dir)));
        }
        "VOLUME" => {
            let vols = words_or_json(&ins.args, escape, lookup)?;
            let m = config
                .entry("Volumes")
                .or_insert_with(|| Value::Object(Map::new()));
            if !m.is_object() {
                *m = Value::Object(Map::new());
            }
            let m = m.as_object_mut().expect("object");
            for v in vols {
                let v = v.trim().to_string();
                if v.is_empty() {
                    return Err(ConfigError::Invalid(
                        "VOLUME specified can not be an empty string".into(),
                    ));
                }
                m.insert(v, json!({}));
            }
        }
        "ONBUILD" => {
            let inner = ins.args.text();
            let word = inner
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match word.as_str() {
                "ONBUILD" => {
                    return Err(ConfigError::Invalid(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
                    ))
                }
                "FROM" | "MAINTAINER" => {
                    return Err(ConfigError::Invalid(format!(
                        "{word} isn't allowed as an ONBUILD trigger"
                    )))
                }
                _ => {}
            }
            crate::parse::instruction(ins.line, &inner)
                .map_err(|e| ConfigError::Invalid(e.message))?;
            let list = config
                .entry("OnBuild")
                .or_insert_with(|| Value::Array(Vec::new()));
            if !list.is_array() {
                *list = Value::Array(Vec::new());
            }
            list.as_array_mut().expect("array").push(json!(inner));
        }
        "STOPSIGNAL" => {
            let sig = expand_word(ins.args.text().trim(), escape, lookup)?;
            config.insert("StopSignal".into(), json!(sig));
        }
        "SHELL" => match &ins.args {
            Args::Json(v) if !v.is_empty() => {
                config.insert("Shell".into(), json!(v));
            }
            _ => {
                return Err(ConfigError::Invalid(
                    "SHELL requires the arguments to be in JSON form".into(),
                ))
            }
        },
        "HEALTHCHECK" => {
            let text = ins.args.text();
            let (word, rest) = match text.trim().split_once(char::is_whitespace) {
                Some((w, r)) => (w.to_ascii_uppercase(), r.trim().to_string()),
                None => (text.trim().to_ascii_uppercase(), String::new()),
            };
            let hc = match word.as_str() {
                "NONE" => {
                    if !rest.is_empty() {
                        return Err(ConfigError::Invalid(
                            "HEALTHCHECK NONE takes no arguments".into(),
                        ));
                    }
                    json!({"Test": ["NONE"]})
                }
                "CMD" => {
                    let test = match crate::parse::instruction(ins.line, &format!("CMD {rest}"))
                        .map_err(|e| ConfigError::Invalid(e.message))?
                        .args
                    {
                        Args::Json(v) => {
                            let mut t = vec!["CMD".to_string()];
                            t.extend(v);
                            t
                        }
                        Args::Text(t) => vec!["CMD-SHELL".into(), t],
                    };
                    let mut hc = Map::new();
                    hc.insert("Test".into(), json!(test));
                    for (flag, key) in [
                        ("interval", "Interval"),
                        ("timeout", "Timeout"),
                        ("start-period", "StartPeriod"),
                        ("start-interval", "StartInterval"),
                    ] {
                        if let Some(v) = ins.flag(flag) {
                            let ns = duration_ns(v).map_err(ConfigError::Invalid)?;
                            hc.insert(key.into(), json!(ns));
                        }
                    }
                    if let Some(r) = ins.flag("retries") {
                        let n: i64 = r.parse().map_err(|_| {
                            ConfigError::Invalid(format!("invalid retries value {r:?}"))
                        })?;
                        hc.insert("Retries".into(), json!(n));
                    }
                    Value::Object(hc)
                }
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "Unknown type \"{word}\" in HEALTHCHECK (try CMD)"
                    )))
                }
            };
            config.insert("Healthcheck".into(), hc);
        }
        other => return Err(ConfigError::NotConfig(other.to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::instruction;

    #[test]
    fn changes_as_commit_and_import_apply_them() {
        let mut c = Map::new();
        let changes = ["CMD [\"cat\", \"/x\"]", "ENV A=b", "", "WORKDIR /w"].map(String::from);
        apply_changes(&mut c, &changes).unwrap();
        assert_eq!(c["Cmd"], json!(["cat", "/x"]));
        assert_eq!(c["Env"], json!(["A=b"]));
        assert_eq!(c["WorkingDir"], "/w");
        let err = apply_changes(&mut c, &["RUN true".to_string()]).unwrap_err();
        assert_eq!(err, "run is not a valid change command");
    }

    fn run(config: &mut Map<String, Value>, lines: &[&str]) {
        let mut st = ConfigState::default();
        for l in lines {
            let ins = instruction(1, l).unwrap();
            let snapshot = config.clone();
            let lookup = move |n: &str| env_value(&snapshot, n);
            apply(config, &mut st, &ins, '\\', &lookup).unwrap();
        }
    }

    #[test]
    fn instructions_change_the_config_as_docker_does() {
        let mut c = Map::new();
        c.insert("Cmd".into(), json!(["sh"]));
        run(
            &mut c,
            &[
                "ENV A=1 B=\"two words\"",
                "ENV C ${A}-x",
                "LABEL org.x=\"y z\" k=v",
                "EXPOSE 80 53/udp 8000-8001",
                "WORKDIR /app",
                "WORKDIR sub",
                "USER nobody",
                "ENTRYPOINT [\"/bin/app\"]",
                "VOLUME /data",
                "STOPSIGNAL SIGINT",
                "HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost",
                "ONBUILD RUN echo later",
            ],
        );
        assert_eq!(c["Env"], json!(["A=1", "B=two words", "C=1-x"]));
        assert_eq!(c["Labels"], json!({"org.x": "y z", "k": "v"}));
        assert_eq!(
            c["ExposedPorts"],
            json!({"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}})
        );
        assert_eq!(c["WorkingDir"], json!("/app/sub"));
        assert_eq!(c["User"], json!("nobody"));
        // ENTRYPOINT without a CMD in the same stage clears the inherited Cmd.
        assert_eq!(c["Cmd"], Value::Null);
        assert_eq!(c["Entrypoint"], json!(["/bin/app"]));
        assert_eq!(c["Volumes"], json!({"/data": {}}));
        assert_eq!(c["StopSignal"], json!("SIGINT"));
        assert_eq!(
            c["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 5_000_000_000i64, "Retries": 2})
        );
        assert_eq!(c["OnBuild"], json!(["RUN echo later"]));
        run(&mut c, &["SHELL [\"/bin/ash\", \"-eo\"]", "CMD echo hi"]);
        assert_eq!(c["Cmd"], json!(["/bin/ash", "-eo", "echo hi"]));
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(duration_ns("500ms").unwrap(), 500_000_000);
        assert!(duration_ns("5x").is_err());
    }
}
