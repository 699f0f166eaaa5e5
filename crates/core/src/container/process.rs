//! The container's process: the image config merged with the request the way dockerd merges
//! them, and the user name resolved against the image's `/etc/passwd` and `/etc/group`.

use std::collections::BTreeMap;

use serde::Deserialize;

use berth_proto::ContainerSpec;

use super::store::ProcessConfig;

/// The default PATH Docker gives a container whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an image config (`config` in the OCI image config JSON) a container uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl ImageConfig {
    /// Reads `config` out of an image config document; an image without one has none of these.
    pub fn from_image_json(text: &str) -> Result<ImageConfig, serde_json::Error> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            config: Option<ImageConfig>,
        }
        Ok(serde_json::from_str::<Doc>(text)?
            .config
            .unwrap_or_default())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProcessError {
    /// neither the request nor the image names a command
    #[error("No command specified")]
    NoCommand,
    /// the user name is not in the image's passwd file
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoSuchUser(String),
    /// the group name is not in the image's group file
    #[error("unable to find group {0}: no matching entries in group file")]
    NoSuchGroup(String),
}

/// Merges image config and request as dockerd does: a request Entrypoint drops the image's Cmd
/// unless the request has a Cmd too; an empty request Entrypoint clears the image's; Env is
/// merged by key (the request wins); WorkingDir, User and StopSignal fall back to the image's.
pub fn merge(
    image: &ImageConfig,
    spec: &ContainerSpec,
    default_hostname: &str,
) -> Result<ProcessConfig, ProcessError> {
    let user_entry = spec.entrypoint.clone();
    let mut cmd = spec.cmd.clone().unwrap_or_default();
    let entrypoint = match user_entry {
        Some(e) if !e.is_empty() => e,
        other => {
            if cmd.is_empty() {
                cmd = image.cmd.clone().unwrap_or_default();
            }
            match other {
                // Given but empty: the image's entrypoint is cleared.
                Some(_) => vec![],
                None => image.entrypoint.clone().unwrap_or_default(),
            }
        }
    };
    let mut args = entrypoint;
    args.extend(cmd);
    if args.is_empty() || args[0].is_empty() {
        return Err(ProcessError::NoCommand);
    }
    let mut env = image.env.clone().unwrap_or_default();
    merge_env(&mut env, &spec.env);
    let working_dir = spec
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let user = spec
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| image.user.clone())
        .unwrap_or_default();
    let stop_signal = spec
        .stop_signal
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| image.stop_signal.clone().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "SIGTERM".into());
    let hostname = spec
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| default_hostname.to_string());
    Ok(ProcessConfig {
        args,
        env,
        working_dir,
        user,
        stop_signal,
        hostname,
    })
}

/// Replaces (by key) or appends each of `extra` in `env`. An entry without '=' names a key.
pub fn merge_env(env: &mut Vec<String>, extra: &[String]) {
    for e in extra {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match env
            .iter_mut()
            .find(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) == key)
        {
            Some(slot) => *slot = e.clone(),
            None => env.push(e.clone()),
        }
    }
}

/// The environment the process really gets: PATH (when missing), HOSTNAME and HOME as dockerd
/// adds them, then the container's own Env over them.
pub fn process_env(config_env: &[String], hostname: &str, home: &str) -> Vec<String> {
    let has = |k: &str| {
        config_env
            .iter()
            .any(|e| e.split_once('=').map(|x| x.0) == Some(k))
    };
    let mut env = Vec::new();
    if !has("PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env.push(format!("HOSTNAME={hostname}"));
    merge_env(&mut env, config_env);
    if !has("HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

/// A user as the runtime wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Resolves "user", "uid", "user:group" or "uid:gid" (empty: root) with the image's passwd and
/// group files (absent files count as empty). A numeric uid need not exist; a name must.
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, ProcessError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users: Vec<Vec<&str>> = passwd
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let groups: Vec<Vec<&str>> = group
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let mut out = ResolvedUser {
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        home: "/".into(),
    };
    let mut user_name = None;
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => {
            out.uid = uid;
            users.iter().find(|f| f[2].parse::<u32>() == Ok(uid))
        }
        Err(_) => Some(
            users
                .iter()
                .find(|f| f[0] == user_part)
                .ok_or_else(|| ProcessError::NoSuchUser(user_part.to_string()))?,
        ),
    };
    if let Some(f) = entry {
        user_name = Some(f[0]);
        out.uid = f[2].parse().unwrap_or(out.uid);
        out.gid = f[3].parse().unwrap_or(0);
        if let Some(home) = f.get(5).filter(|h| !h.is_empty()) {
            out.home = home.to_string();
        }
    }
    match group_part.filter(|g| !g.is_empty()) {
        Some(g) => {
            out.gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => groups
                    .iter()
                    .find(|f| f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| ProcessError::NoSuchGroup(g.to_string()))?,
            }
        }
        None => {
            if let Some(name) = user_name {
                for f in &groups {
                    let members = f.get(3).copied().unwrap_or_default();
                    if members.split(',').any(|m| m == name) {
                        if let Ok(gid) = f[2].parse::<u32>() {
                            if gid != out.gid && !out.additional_gids.contains(&gid) {
                                out.additional_gids.push(gid);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig::from_image_json(
            r#"{"architecture":"amd64","config":{"Entrypoint":["/entry"],"Cmd":["serve","--x"],
            "Env":["PATH=/bin","A=image","B=image"],"WorkingDir":"/srv","User":"app",
            "StopSignal":"SIGQUIT","Labels":{"l":"image"}},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap()
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            image_id: "sha256:x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn image_config_is_the_default() {
        let p = merge(&image(), &spec(), "abc").unwrap();
        assert_eq!(p.args, ["/entry", "serve", "--x"]);
        assert_eq!(p.env, ["PATH=/bin", "A=image", "B=image"]);
        assert_eq!(p.working_dir, "/srv");
        assert_eq!(p.user, "app");
        assert_eq!(p.stop_signal, "SIGQUIT");
        assert_eq!(p.hostname, "abc");
    }

    #[test]
    fn request_cmd_replaces_image_cmd_only() {
        let mut s = spec();
        s.cmd = Some(vec!["run".into()]);
        assert_eq!(merge(&image(), &s, "h").unwrap().args, ["/entry", "run"]);
    }

    #[test]
    fn request_entrypoint_drops_image_cmd() {
        let mut s = spec();
        s.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
        assert_eq!(merge(&image(), &s, "h").unwrap().args, ["/bin/sh", "-c"]);
        s.cmd = Some(vec!["echo hi".into()]);
        assert_eq!(
            merge(&image(), &s, "h").unwrap().args,
            ["/bin/sh", "-c", "echo hi"]
        );
    }

    #[test]
    fn empty_entrypoint_clears_the_images() {
        let mut s = spec();
        s.entrypoint = Some(vec![]);
        assert_eq!(merge(&image(), &s, "h").unwrap().args, ["serve", "--x"]);
        s.cmd = Some(vec!["ls".into()]);
        assert_eq!(merge(&image(), &s, "h").unwrap().args, ["ls"]);
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let mut s = spec();
        s.entrypoint = Some(vec![]);
        let mut img = image();
        img.cmd = None;
        assert_eq!(merge(&img, &s, "h"), Err(ProcessError::NoCommand));
        assert_eq!(ProcessError::NoCommand.to_string(), "No command specified");
    }

    #[test]
    fn env_merges_by_key_and_request_fields_win() {
        let mut s = spec();
        s.env = vec!["B=req".into(), "C=req".into()];
        s.working_dir = Some("/w".into());
        s.user = Some("65534".into());
        s.stop_signal = Some("SIGINT".into());
        s.hostname = Some("web".into());
        let p = merge(&image(), &s, "h").unwrap();
        assert_eq!(p.env, ["PATH=/bin", "A=image", "B=req", "C=req"]);
        assert_eq!(
            (
                p.working_dir.as_str(),
                p.user.as_str(),
                p.stop_signal.as_str()
            ),
            ("/w", "65534", "SIGINT")
        );
        assert_eq!(p.hostname, "web");
        let p = merge(&ImageConfig::default(), &s, "h");
        assert_eq!(p, Err(ProcessError::NoCommand));
        s.cmd = Some(vec!["x".into()]);
        let p = merge(&ImageConfig::default(), &s, "h").unwrap();
        assert_eq!(p.stop_signal, "SIGINT");
        s.working_dir = None;
        s.stop_signal = None;
        let p = merge(&ImageConfig::default(), &s, "h").unwrap();
        assert_eq!(
            (p.working_dir.as_str(), p.stop_signal.as_str()),
            ("/", "SIGTERM")
        );
    }

    #[test]
    fn process_env_adds_what_dockerd_adds() {
        let env = process_env(&["A=1".into()], "box", "/root");
        assert_eq!(
            env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=box".into(),
                "A=1".into(),
                "HOME=/root".into()
            ]
        );
        let env = process_env(&["PATH=/x".into(), "HOSTNAME=mine".into()], "box", "/");
        assert_eq!(env, ["HOSTNAME=mine", "PATH=/x", "HOME=/"]);
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nnogroup:x:65534:\nalice:x:1000:\nwheel:x:10:alice,bob\naudio:x:29:alice\n";

    #[test]
    fn users_resolve_like_docker() {
        let r = resolve_user("", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let r = resolve_user("alice", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1000));
        assert_eq!(r.additional_gids, [10, 29]);
        assert_eq!(r.home, "/home/alice");
        let r = resolve_user("65534", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid), (65534, 65534));
        let r = resolve_user("4242", Some(PASSWD), None).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (4242, 0, "/"));
        let r = resolve_user("alice:wheel", Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((r.uid, r.gid), (1000, 10));
        assert!(r.additional_gids.is_empty());
        let r = resolve_user("1:2", None, None).unwrap();
        assert_eq!((r.uid, r.gid), (1, 2));
        assert_eq!(
            resolve_user("carol", Some(PASSWD), Some(GROUP)),
            Err(ProcessError::NoSuchUser("carol".into()))
        );
        assert_eq!(
            resolve_user("alice:staff", Some(PASSWD), Some(GROUP))
                .unwrap_err()
                .to_string(),
            "unable to find group staff: no matching entries in group file"
        );
    }
}
