//! `docker commit` (a control request) and `docker build` (a channel of its own: the context
//! goes in, progress comes out).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ContainerRef;

/// `docker commit`: the container's upper layer as a new image. Answered with `Image`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CommitRequest {
    pub container: ContainerRef,
    /// Normalised ("docker.io/library/x:latest"); none makes an untagged image.
    pub tag: Option<String>,
    pub comment: String,
    pub author: String,
    /// Freeze the container while its layer is read (dockerd's default).
    pub pause: bool,
    /// Dockerfile lines (`CMD ["sh"]`, `ENV A=1`), applied after `config`.
    pub changes: Vec<String>,
    /// Docker's `Config` object from the request body: its set fields override the container's.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// Opens a [`crate::Channel::Build`]: after the welcome the host sends exactly `context_size`
/// bytes of the build context (an uncompressed tar); the core answers with [`BuildFrame`]s,
/// the last one `done` or `error`, and closes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct BuildRequest {
    pub context_size: u64,
    /// The Dockerfile's path in the context ("Dockerfile" when empty).
    pub dockerfile: String,
    /// Normalised names the result is tagged with (the core tags; berthd reports).
    pub tags: Vec<String>,
    /// `--build-arg`s; `None` is a name given without a value (taken from nowhere, as dockerd).
    pub build_args: BTreeMap<String, Option<String>>,
    pub target: String,
    pub no_cache: bool,
    /// Remove the build containers of successful steps (dockerd's `rm`, default true).
    pub rm: bool,
    /// Remove them whatever happens (`forcerm`).
    pub force_rm: bool,
    /// `--label`s, set on the final image.
    pub labels: BTreeMap<String, String>,
    /// Only the image id is reported (`-q`).
    pub quiet: bool,
    /// The network of RUN steps (`--network`): "" or "default" (the bridge), "none", "host".
    #[serde(default)]
    pub network: String,
    /// The images the Dockerfile's FROM and `COPY --from` name, as written there after ARG
    /// substitution ("busybox", "alpine:3"), resolved by berthd: the image id, or the reason
    /// it could not get it (the step that needs it fails with that message).
    pub images: BTreeMap<String, Result<String, String>>,
}

/// What the core reports during a build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "frame")]
pub enum BuildFrame {
    /// Text for Docker's `{"stream": …}` lines (steps, ` ---> id`, RUN output).
    Stream { text: String },
    /// The build failed: Docker's `{"errorDetail": {"message"}, "error"}`; the last frame.
    Error { message: String },
    /// The image id; tags (if any) have been moved to it. The last frame.
    Done { id: String },
}
