//! `docker build` with the classic builder's behaviour: every step makes an image (untagged,
//! as dockerd's intermediate images), RUN runs as a real container whose upper dir becomes the
//! next layer, COPY/ADD/WORKDIR write into the step's own overlay (`fs.rs`), config
//! instructions change the config only. A step's result is cached under a key of the parent
//! image, the instruction and (COPY/ADD) the content hash of its sources; see `docs/build.md`.
//!
//! Layout under the data root:
//!
//! ```text
//! builds/<random>/context/     the unpacked build context (removed with the build)
//! builds/<random>/step-N/      a COPY/ADD/WORKDIR step's upper, work and mount point
//! build-cache/<key hex>        the image id a cached step made
//! ```

mod context;
mod fs;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_dockerfile::config::{apply, env_value, join_workdir, shell, ConfigState};
use berth_dockerfile::expand::{expand_word, expand_words};
use berth_dockerfile::stages::stage_name;
use berth_dockerfile::{parse, Args, IgnoreRules, Instruction};
use berth_proto::{
    BuildFrame, BuildRequest, ContainerRef, ContainerSpec, HostSpec, ImageInfo, ImageSelector,
    LogsRequest, WaitCondition,
};
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;

use crate::digest::Digest;
use crate::layer::{config_of, create_image, store_layer, History};
use crate::server::Core;
use crate::unpack::{unpack_layer, Compression};

/// ARGs every build has without declaring them (not kept in the image, nor in cache keys).
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Instructions that run in a container or write files: they make a layer.
const NOP: &str = "/bin/sh -c #(nop) ";

/// Deletes what interrupted builds left (`builds/`); called when the core opens.
pub fn clear_leftovers(data_root: &Path) {
    let dir = data_root.join("builds");
    if dir.exists() {
        if let Err(e) = crate::snapshot::remove_tree(&dir) {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// A failed build, with the message the client shows.
struct Failed(String);

impl<E: std::fmt::Display> From<E> for Failed {
    fn from(e: E) -> Failed {
        Failed(e.to_string())
    }
}

type Step<T> = Result<T, Failed>;

/// One stage while it is built.
struct Stage {
    name: Option<String>,
    /// The image so far; `None` for `FROM scratch` before its first step.
    image: Option<ImageInfo>,
    config: Map<String, Value>,
    state: ConfigState,
    /// ARGs declared in this stage and their values (`None`: declared without one).
    args: BTreeMap<String, Option<String>>,
    author: String,
}

impl Stage {
    fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |n: &str| env_value(&self.config, n).or_else(|| self.args.get(n).cloned().flatten())
    }

    fn id(&self) -> &str {
        self.image
            .as_ref()
            .map(|i| i.id.as_str())
            .unwrap_or("scratch")
    }

    fn lowers(&self, core: &Core) -> Step<Vec<PathBuf>> {
        let mut out = Vec::new();
        if let Some(img) = &self.image {
            for l in img.layers.iter().rev() {
                out.push(core.images.snapshots.path(&Digest::parse(&l.chain_id)?));
            }
        }
        Ok(out)
    }
}

struct Builder<'a> {
    core: &'a Arc<Core>,
    req: &'a BuildRequest,
    tx: &'a mpsc::Sender<BuildFrame>,
    dir: PathBuf,
    context: PathBuf,
    ignore: Option<IgnoreRules>,
    escape: char,
    /// ARGs before the first FROM, with their values.
    meta_args: BTreeMap<String, Option<String>>,
    /// Build args some ARG used (the rest are reported as not consumed).
    consumed: BTreeSet<String>,
    stages: Vec<Stage>,
    step: usize,
    total: usize,
}

impl Builder<'_> {
    fn say(&self, text: impl Into<String>) {
        if !self.req.quiet {
            let _ = self
                .tx
                .blocking_send(BuildFrame::Stream { text: text.into() });
        }
    }

    fn cache_dir(&self) -> PathBuf {
        self.core.images.root().join("build-cache")
    }

    fn cache_key(&self, parent: &str, parts: &Value) -> String {
        let mut h = Sha256::new();
        h.update(parent.as_bytes());
        h.update(b"\0");
        h.update(parts.to_string().as_bytes());
        hex::encode(h.finalize())
    }

    /// The image a cached step made, if it is still stored.
    fn cached(&self, key: &str) -> Option<ImageInfo> {
        if self.req.no_cache {
            return None;
        }
        let id = std::fs::read_to_string(self.cache_dir().join(key)).ok()?;
        self.core
            .images
            .inspect(&ImageSelector {
                name: None,
                id_prefix: Some(id.trim().to_string()),
            })
            .ok()
            .filter(|i| i.id == id.trim())
    }

    fn remember(&self, key: &str, id: &str) {
        let dir = self.cache_dir();
        let tmp = dir.join(format!(".{key}.{:08x}", rand::random::<u32>()));
        let r = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&tmp, id))
            .and_then(|()| std::fs::rename(&tmp, dir.join(key)));
        if let Err(e) = r {
            tracing::warn!("recording a build cache entry: {e}");
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn stage(&mut self) -> &mut Stage {
        self.stages.last_mut().expect("a stage")
    }

    /// Records the step's image as the stage's and reports it.
    fn finish_step(&mut self, image: ImageInfo, key: &str, cached: bool) {
        if cached {
            self.say(" ---> Using cache\n");
        } else {
            self.remember(key, &image.id);
        }
        self.say(format!(" ---> {}\n", short(&image.id)));
        let st = self.stage();
        st.config = config_of(Some(&image));
        st.image = Some(image);
    }

    fn run(&mut self, instructions: &[Instruction]) -> Step<ImageInfo> {
        // The target stage ends the build; the steps counted are those up to its end.
        let mut end = instructions.len();
        let mut stage_names = Vec::new();
        for (i, ins) in instructions.iter().enumerate() {
            if ins.keyword == "FROM" {
                if !stage_names.is_empty()
                    && stage_names.last() == Some(&Some(self.req.target.to_ascii_lowercase()))
                    && !self.req.target.is_empty()
                {
                    end = i;
                    break;
                }
                stage_names.push(stage_name(ins));
            }
        }
        if !self.req.target.is_empty()
            && !stage_names.contains(&Some(self.req.target.to_ascii_lowercase()))
        {
            return Err(Failed(format!(
                "failed to reach build target {} in Dockerfile",
                self.req.target
            )));
        }
        let mut todo: Vec<Instruction> = instructions[..end].to_vec();
        if !self.req.labels.is_empty() {
            // As dockerd: the build's labels are one more LABEL at the end.
            let pairs: Vec<String> = self
                .req
                .labels
                .iter()
                .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
                .collect();
            todo.push(berth_dockerfile::parse::instruction(
                0,
                &format!("LABEL {}", pairs.join(" ")),
            )?);
        }
        self.total = todo.len();
        if !todo.iter().any(|i| i.keyword == "FROM") {
            return Err(Failed(
                "No build stage in current context: the Dockerfile has no FROM".into(),
            ));
        }
        for ins in &todo {
            self.step += 1;
            self.say(format!(
                "Step {}/{} : {}\n",
                self.step, self.total, ins.original
            ));
            self.dispatch(ins)?;
        }
        let last = self.stages.last().and_then(|s| s.image.clone());
        last.ok_or_else(|| Failed("No image was generated. Is your Dockerfile empty?".into()))
    }

    fn dispatch(&mut self, ins: &Instruction) -> Step<()> {
        if ins.keyword == "FROM" {
            return self.from(ins);
        }
        if ins.keyword == "ARG" && self.stages.is_empty() {
            return self.arg(ins, true);
        }
        if self.stages.is_empty() {
            return Err(Failed(format!(
                "Please provide a source image with `from` prior to {}",
                ins.keyword.to_ascii_lowercase()
            )));
        }
        match ins.keyword.as_str() {
            "ARG" => self.arg(ins, false),
            "RUN" => self.run_step(ins),
            "COPY" | "ADD" => self.copy(ins),
            "WORKDIR" => self.workdir(ins),
            "MAINTAINER" => {
                let who = ins.args.text();
                self.stage().author = who.clone();
                self.config_step(ins, |_| Ok(()))
            }
            _ => {
                let escape = self.escape;
                let ins2 = ins.clone();
                self.config_step(ins, move |st| {
                    let lookup_cfg = st.config.clone();
                    let args = st.args.clone();
                    let lookup = move |n: &str| {
                        env_value(&lookup_cfg, n).or_else(|| args.get(n).cloned().flatten())
                    };
                    apply(&mut st.config, &mut st.state, &ins2, escape, &lookup)
                        .map_err(|e| Failed(e.to_string()))
                })
            }
        }
    }

    /// A step that changes only the config: an image with the same layers.
    fn config_step(
        &mut self,
        ins: &Instruction,
        change: impl FnOnce(&mut Stage) -> Step<()>,
    ) -> Step<()> {
        let parent = self.stage().id().to_string();
        change(self.stage())?;
        let st = self.stages.last().expect("stage");
        let key = self.cache_key(
            &parent,
            &json!(["config", ins.original, st.config, st.author]),
        );
        if let Some(img) = self.cached(&key) {
            self.finish_step(img, &key, true);
            return Ok(());
        }
        let img = create_image(
            &self.core.images,
            st.image.as_ref(),
            None,
            st.config.clone(),
            &History {
                created_by: format!("{NOP} {}", ins.original),
                author: st.author.clone(),
                empty_layer: true,
                ..Default::default()
            },
            None,
        )?;
        self.finish_step(img, &key, false);
        Ok(())
    }

    fn arg(&mut self, ins: &Instruction, meta: bool) -> Step<()> {
        let words = expand_words(&ins.args.text(), self.escape, &|_| None)?;
        let mut decl = Vec::new();
        for w in words {
            let (name, default) = match w.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (w, None),
            };
            let given = self.req.build_args.get(&name).cloned();
            if given.is_some() {
                self.consumed.insert(name.clone());
            }
            let value = match given {
                Some(Some(v)) => Some(v),
                _ => default.or_else(|| {
                    if meta {
                        None
                    } else {
                        self.meta_args.get(&name).cloned().flatten()
                    }
                }),
            };
            decl.push((name, value));
        }
        if meta {
            self.meta_args.extend(decl);
            return Ok(());
        }
        self.config_step(ins, move |st| {
            st.args.extend(decl);
            Ok(())
        })
    }

    fn from(&mut self, ins: &Instruction) -> Step<()> {
        ins.check_flags(&["platform"])?;
        let words: Vec<String> = match &ins.args {
            Args::Text(t) => t.split_whitespace().map(str::to_string).collect(),
            Args::Json(v) => v.clone(),
        };
        let (image_ref, name) = match words.as_slice() {
            [i] => (i.clone(), None),
            [i, as_, n] if as_.eq_ignore_ascii_case("as") => {
                (i.clone(), Some(n.to_ascii_lowercase()))
            }
            _ => return Err(Failed("FROM requires either one or three arguments".into())),
        };
        let meta = self.meta_args.clone();
        let image_ref = expand_word(&image_ref, self.escape, &|n| meta.get(n).cloned().flatten())?;
        let base = if image_ref.eq_ignore_ascii_case("scratch") {
            None
        } else if let Some(prev) = self
            .stages
            .iter()
            .rev()
            .find(|s| s.name.as_deref() == Some(&image_ref.to_ascii_lowercase()))
        {
            Some(
                prev.image
                    .clone()
                    .ok_or_else(|| Failed(format!("stage {image_ref} made no image")))?,
            )
        } else {
            Some(self.named_image(&image_ref)?)
        };
        if let Some(b) = &base {
            self.say(format!(" ---> {}\n", short(&b.id)));
        }
        let config = config_of(base.as_ref());
        let triggers: Vec<String> = config
            .get("OnBuild")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        self.stages.push(Stage {
            name,
            image: base,
            config,
            state: ConfigState::default(),
            args: BTreeMap::new(),
            author: String::new(),
        });
        if !triggers.is_empty() {
            self.say(format!(
                "# Executing {} build trigger{}\n",
                triggers.len(),
                if triggers.len() == 1 { "" } else { "s" }
            ));
            // The triggers run once, in the image that inherits them: not in its children.
            self.stage().config.remove("OnBuild");
            for t in triggers {
                let trig = berth_dockerfile::parse::instruction(ins.line, &t)?;
                self.dispatch(&trig)?;
            }
        }
        Ok(())
    }

    /// An image berthd resolved for this build.
    fn named_image(&self, reference: &str) -> Step<ImageInfo> {
        match self.req.images.get(reference) {
            Some(Ok(id)) => Ok(self.core.images.inspect(&ImageSelector {
                name: None,
                id_prefix: Some(id.clone()),
            })?),
            Some(Err(message)) => Err(Failed(message.clone())),
            None => Err(Failed(format!(
                "pull access denied for {reference}: the image was not resolved before the build"
            ))),
        }
    }

    fn run_step(&mut self, ins: &Instruction) -> Step<()> {
        ins.check_flags(&[])?;
        let st = self.stages.last().expect("stage");
        let cmd: Vec<String> = match &ins.args {
            Args::Json(v) => v.clone(),
            Args::Text(t) => {
                let mut s = shell(&st.config);
                s.push(t.clone());
                s
            }
        };
        // ARGs with values reach the command's environment (and its cache key), as dockerd.
        let mut env: Vec<String> = st
            .args
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        let used_args = env.clone();
        for p in PROXY_ARGS {
            if let Some(Some(v)) = self.req.build_args.get(*p) {
                if !st.args.contains_key(*p) {
                    env.push(format!("{p}={v}"));
                }
            }
        }
        let created_by = if used_args.is_empty() {
            cmd.join(" ")
        } else {
            format!(
                "|{} {} {}",
                used_args.len(),
                used_args.join(" "),
                cmd.join(" ")
            )
        };
        let parent = st.id().to_string();
        let key = self.cache_key(&parent, &json!(["run", cmd, used_args, st.config]));
        if let Some(img) = self.cached(&key) {
            self.finish_step(img, &key, true);
            return Ok(());
        }
        let Some(image) = st.image.clone() else {
            return Err(Failed(format!(
                "The command '{}' cannot run: the image has no layers (FROM scratch)",
                cmd.join(" ")
            )));
        };
        // The container runs the step's config; a config-only step before it may not have an
        // image of its own yet, so the config is the stage's.
        let spec = ContainerSpec {
            image_id: image.id.clone(),
            image_ref: image.id.clone(),
            cmd: Some(cmd.clone()),
            entrypoint: Some(Vec::new()),
            env,
            labels: Default::default(),
            host: HostSpec {
                network_mode: match self.req.network.as_str() {
                    "" | "default" => "bridge".into(),
                    other => other.to_string(),
                },
                ..Default::default()
            },
            ..Default::default()
        };
        let containers = &self.core.containers;
        let (id, _) = containers.create(&self.core.images, spec)?;
        self.say(format!(" ---> Running in {}\n", short(&id)));
        let outcome = self.run_container(&id, &cmd);
        let keep = !self.req.rm && !self.req.force_rm;
        let made = outcome.and_then(|()| {
            let rec = containers.find(&ContainerRef(id.clone()))?;
            let layer = containers.store_layer_of(&self.core.images, &rec, false)?;
            let st = self.stages.last().expect("stage");
            Ok(create_image(
                &self.core.images,
                Some(&image),
                Some(layer),
                st.config.clone(),
                &History {
                    created_by: created_by.clone(),
                    author: st.author.clone(),
                    ..Default::default()
                },
                None,
            )?)
        });
        if !keep || made.is_err() {
            // dockerd keeps a failed step's container unless --force-rm; Berth never leaves
            // one behind (docs/build.md).
            let _ = containers.remove(&ContainerRef(id.clone()), true);
            if made.is_ok() {
                self.say(format!("Removing intermediate container {}\n", short(&id)));
            }
        }
        let img = made?;
        self.finish_step(img, &key, false);
        Ok(())
    }

    fn run_container(&self, id: &str, cmd: &[String]) -> Step<()> {
        let containers = &self.core.containers;
        let r = ContainerRef(id.to_string());
        containers.start(&r)?;
        let req = LogsRequest {
            container: r.clone(),
            follow: true,
            stdout: true,
            stderr: true,
            since: 0.0,
            until: 0.0,
            tail: None,
        };
        containers.logs(id, &req, &mut |f| {
            self.say(f.log);
            true
        })?;
        let (code, error) = containers.wait(&r, WaitCondition::NotRunning)?;
        if code != 0 {
            let _ = error;
            return Err(Failed(format!(
                "The command '{}' returned a non-zero code: {code}",
                cmd.join(" ")
            )));
        }
        Ok(())
    }

    fn step_overlay(&self, st: &Stage) -> Step<fs::Overlay> {
        let dir = self.dir.join(format!("step-{}", self.step));
        Ok(fs::Overlay {
            lowers: st.lowers(self.core)?,
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
            empty: self.dir.join("empty"),
        })
    }

    /// Makes the step's image from its overlay's upper dir (no layer when nothing changed).
    fn layer_step(
        &mut self,
        ov: &fs::Overlay,
        key: &str,
        created_by: String,
        always_layer: bool,
    ) -> Step<()> {
        let st = self.stages.last().expect("stage");
        let changed =
            !crate::container::export::changes(&ov.upper, &ov.lowers, &BTreeSet::new()).is_empty();
        let layer = if changed || always_layer {
            Some(store_layer(
                &self.core.images,
                &ov.upper,
                &ov.lowers,
                &BTreeSet::new(),
                st.image
                    .as_ref()
                    .and_then(|i| i.layers.last())
                    .map(|l| l.chain_id.as_str()),
            )?)
        } else {
            None
        };
        let empty_layer = layer.is_none();
        let img = create_image(
            &self.core.images,
            st.image.as_ref(),
            layer,
            st.config.clone(),
            &History {
                created_by,
                author: st.author.clone(),
                empty_layer,
                ..Default::default()
            },
            None,
        )?;
        if let Some(parent) = ov.upper.parent() {
            let _ = crate::snapshot::remove_tree(parent);
        }
        self.finish_step(img, key, false);
        Ok(())
    }

    fn workdir(&mut self, ins: &Instruction) -> Step<()> {
        let escape = self.escape;
        let st = self.stages.last_mut().expect("stage");
        let lookup_cfg = st.config.clone();
        let args = st.args.clone();
        let lookup =
            move |n: &str| env_value(&lookup_cfg, n).or_else(|| args.get(n).cloned().flatten());
        apply(&mut st.config, &mut st.state, ins, escape, &lookup)?;
        let dir = st
            .config
            .get("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let parent = st.id().to_string();
        let parts = json!(["workdir", dir, st.config]);
        let key = self.cache_key(&parent, &parts);
        if let Some(img) = self.cached(&key) {
            self.finish_step(img, &key, true);
            return Ok(());
        }
        let st = self.stages.last().expect("stage");
        let ov = self.step_overlay(st)?;
        let target = PathBuf::from(&dir);
        fs::in_step_root(
            &ov,
            None,
            |_| Ok(()),
            move |(), _| fs::make_workdir(&target),
        )
        .map_err(|e| Failed(format!("WORKDIR {dir}: {e}")))?;
        self.layer_step(&ov, &key, format!("{NOP} WORKDIR {dir}"), false)
    }

    fn copy(&mut self, ins: &Instruction) -> Step<()> {
        let add = ins.keyword == "ADD";
        let what = ins.keyword.clone();
        if add {
            ins.check_flags(&["chown", "chmod"])?;
        } else {
            ins.check_flags(&["chown", "chmod", "from"])?;
        }
        if ins.flag("chmod").is_some() {
            return Err(Failed(
                "the --chmod option requires BuildKit. Refer to https://docs.docker.com/go/buildkit/ to learn how to build images with BuildKit enabled"
                    .into(),
            ));
        }
        let st = self.stages.last().expect("stage");
        let lookup = st.lookup();
        let mut words = match &ins.args {
            Args::Json(v) => v
                .iter()
                .map(|w| expand_word(w, self.escape, &lookup))
                .collect::<Result<Vec<_>, _>>()?,
            Args::Text(t) => expand_words(t, self.escape, &lookup)?,
        };
        if words.len() < 2 {
            return Err(Failed(format!("{what} requires at least two arguments")));
        }
        let dest_raw = words.pop().expect("two words");
        let chown = match ins.flag("chown") {
            Some(c) => Some(expand_word(c, self.escape, &lookup)?),
            None => None,
        };
        drop(lookup);
        if let Some(url) = words
            .iter()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        {
            return Err(Failed(format!(
                "ADD from a URL ({url}) is not supported by Berth's builder: download it with RUN (wget, curl) or put the file in the build context"
            )));
        }
        let workdir = st
            .config
            .get("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let dest_dir_form = dest_raw.ends_with('/') || dest_raw.ends_with("/.") || dest_raw == ".";
        let dest = PathBuf::from(join_workdir(&workdir, &dest_raw));
        // Where the sources come from.
        let from = ins.flag("from").map(str::to_string);
        let step_dir = self.dir.join(format!("step-{}", self.step));
        let (source, source_id, ignore) = match &from {
            None => (
                fs::Source::Dir(self.context.clone()),
                "context".to_string(),
                self.ignore.clone(),
            ),
            Some(f) => {
                let img = self.source_image(f)?;
                let mut lowers = Vec::new();
                for l in img.layers.iter().rev() {
                    lowers.push(
                        self.core
                            .images
                            .snapshots
                            .path(&Digest::parse(&l.chain_id)?),
                    );
                }
                (
                    fs::Source::Image {
                        lowers,
                        target: step_dir.join("from"),
                    },
                    img.id.clone(),
                    None,
                )
            }
        };
        // The cache key: sources named and (from the context) their content.
        let content = match &source {
            fs::Source::Dir(root) => {
                let srcs = context::resolve(root, &words, ignore.as_ref())
                    .map_err(|e| Failed(format!("{what} failed: {e}")))?;
                context::content_hash(root, &srcs, ignore.as_ref())?
            }
            fs::Source::Image { .. } => source_id.clone(),
        };
        let parent = st.id().to_string();
        let key = self.cache_key(
            &parent,
            &json!([what, words, dest, dest_dir_form, chown, content, st.config]),
        );
        if let Some(img) = self.cached(&key) {
            self.finish_step(img, &key, true);
            return Ok(());
        }
        let ov = self.step_overlay(st)?;
        let patterns = words.clone();
        let multiple_err = format!(
            "When using {what} with more than one source file, the destination must be a directory and end with a /"
        );
        let ignore2 = ignore.clone();
        let what2 = what.clone();
        let excluded = move |p: &Path| {
            ignore2
                .as_ref()
                .is_some_and(|r| r.excluded(&p.to_string_lossy()))
        };
        fs::in_step_root(
            &ov,
            Some(&source),
            |root| {
                let root = root.expect("a source");
                let srcs = context::resolve(root, &patterns, ignore.as_ref())
                    .map_err(|e| std::io::Error::other(format!("{what2} failed: {e}")))?;
                let mut plan = Vec::new();
                for s in &srcs {
                    let meta = std::fs::symlink_metadata(root.join(s))?;
                    let archive = add && meta.is_file() && {
                        let mut head = vec![0u8; 512];
                        let mut f = std::fs::File::open(root.join(s))?;
                        let n = f.read(&mut head)?;
                        fs::archive_kind(&head[..n]).is_some()
                    };
                    plan.push((s.clone(), meta.is_dir(), archive));
                }
                Ok(plan)
            },
            |plan, src_fd| {
                let src_fd = src_fd.expect("a source");
                if plan.len() > 1 && !dest_dir_form {
                    return Err(std::io::Error::other(multiple_err));
                }
                let owner = match &chown {
                    Some(c) => fs::resolve_owner(c)?,
                    None => (0, 0),
                };
                let mut items = Vec::new();
                for (src, is_dir, archive) in plan {
                    let to = if is_dir || archive {
                        dest.clone()
                    } else if dest_dir_form || fs::is_dir(&dest) {
                        dest.join(src.file_name().unwrap_or_default())
                    } else {
                        dest.clone()
                    };
                    items.push(fs::CopyItem {
                        src,
                        dest: to,
                        extract: archive,
                    });
                }
                fs::copy_items(
                    src_fd,
                    &items,
                    &fs::CopyOptions {
                        owner,
                        excluded: &excluded,
                    },
                )
            },
        )
        .map_err(|e| {
            let m = e.to_string();
            if m.starts_with(&format!("{what} failed")) {
                Failed(m)
            } else {
                Failed(format!("{what} failed: {m}"))
            }
        })?;
        let created_by = format!(
            "{NOP}{what} {}:{} in {} ",
            if from.is_some() { "image" } else { "dir" },
            &content[..content.len().min(64)],
            dest.display()
        );
        self.layer_step(&ov, &key, created_by, true)
    }

    /// `--from`: a stage by name or index, else an image berthd resolved.
    fn source_image(&self, f: &str) -> Step<ImageInfo> {
        let lower = f.to_ascii_lowercase();
        // The current stage is not a source of itself.
        let earlier = &self.stages[..self.stages.len().saturating_sub(1)];
        if let Some(s) = earlier
            .iter()
            .rev()
            .find(|s| s.name.as_deref() == Some(&lower))
        {
            return s
                .image
                .clone()
                .ok_or_else(|| Failed(format!("stage {f} made no image")));
        }
        if let Ok(i) = f.parse::<usize>() {
            return match earlier.get(i) {
                Some(s) => s
                    .image
                    .clone()
                    .ok_or_else(|| Failed(format!("stage {f} made no image"))),
                None => Err(Failed(format!(
                    "invalid from flag value {f}: refers to current build stage or a later one"
                ))),
            };
        }
        self.named_image(f)
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// Reads `size` context bytes from `r` into `path`.
async fn spool<R: AsyncRead + Unpin>(r: &mut R, size: u64, path: &Path) -> std::io::Result<()> {
    let mut f = tokio::fs::File::create(path).await?;
    let mut take = r.take(size);
    let n = tokio::io::copy(&mut take, &mut f).await?;
    if n != size {
        return Err(std::io::Error::other(format!(
            "the build context ended after {n} of {size} bytes"
        )));
    }
    Ok(())
}

impl Core {
    /// `Channel::Build`: the context, then the build's frames.
    pub(crate) async fn serve_build<S>(self: Arc<Self>, stream: S, req: BuildRequest)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let dir = self
            .images
            .root()
            .join("builds")
            .join(format!("{:016x}", rand::random::<u64>()));
        let (tx, mut rx) = mpsc::channel::<BuildFrame>(256);
        let tarball = dir.join("context.tar");
        let spooled = match tokio::fs::create_dir_all(&dir).await {
            Ok(()) => spool(&mut rd, req.context_size, &tarball).await,
            Err(e) => Err(e),
        };
        let core = self.clone();
        let dir2 = dir.clone();
        let worker = tokio::task::spawn_blocking(move || {
            let frame = match spooled {
                Err(e) => BuildFrame::Error {
                    message: format!("reading the build context: {e}"),
                },
                Ok(()) => match build(&core, &req, &dir2, &tx) {
                    Ok(id) => BuildFrame::Done { id },
                    Err(Failed(message)) => BuildFrame::Error { message },
                },
            };
            let _ = crate::snapshot::remove_tree(&dir2);
            let _ = tx.blocking_send(frame);
        });
        while let Some(frame) = rx.recv().await {
            if berth_proto::write_frame(&mut wr, &frame).await.is_err() {
                // The client went away: the build still ends (and cleans up) on its own.
                break;
            }
        }
        let _ = worker.await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    }
}

fn build(
    core: &Arc<Core>,
    req: &BuildRequest,
    dir: &Path,
    tx: &mpsc::Sender<BuildFrame>,
) -> Step<String> {
    let context = dir.join("context");
    std::fs::create_dir_all(&context)?;
    let f = std::fs::File::open(dir.join("context.tar"))?;
    unpack_layer(std::io::BufReader::new(f), Compression::None, &context)
        .map_err(|e| Failed(format!("reading the build context: {e}")))?;
    let _ = std::fs::remove_file(dir.join("context.tar"));
    let name = if req.dockerfile.is_empty() {
        "Dockerfile".to_string()
    } else {
        req.dockerfile.clone()
    };
    let rel = context::clean(&name);
    let text = read_in(&context, &rel)
        .map_err(|_| Failed(format!("Cannot locate specified Dockerfile: {name}")))?;
    let ignore = read_in(&context, Path::new(".dockerignore"))
        .ok()
        .map(|t| IgnoreRules::parse(&t));
    let df = parse(&text)?;
    let mut b = Builder {
        core,
        req,
        tx,
        dir: dir.to_path_buf(),
        context,
        ignore,
        escape: df.escape,
        meta_args: BTreeMap::new(),
        consumed: BTreeSet::new(),
        stages: Vec::new(),
        step: 0,
        total: 0,
    };
    let image = b.run(&df.instructions)?;
    let unused: Vec<&String> = req
        .build_args
        .keys()
        .filter(|k| !b.consumed.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
        .collect();
    if !unused.is_empty() {
        let names: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
        b.say(format!(
            "[Warning] One or more build-args [{}] were not consumed\n",
            names.join(" ")
        ));
    }
    for t in &req.tags {
        core.images.tag(
            &ImageSelector {
                name: None,
                id_prefix: Some(image.id.clone()),
            },
            t,
        )?;
    }
    Ok(image.id)
}

/// Reads a small file of the context (the Dockerfile, `.dockerignore`), never through a
/// symlink.
fn read_in(root: &Path, rel: &Path) -> std::io::Result<String> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        if std::fs::symlink_metadata(&cur)?.file_type().is_symlink() {
            return Err(std::io::Error::other("a symlink"));
        }
    }
    let mut s = String::new();
    std::fs::File::open(&cur)?
        .take(16 << 20)
        .read_to_string(&mut s)?;
    Ok(s)
}
