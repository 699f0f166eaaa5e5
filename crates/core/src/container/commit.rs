//! `docker commit`: a container's upper dir becomes a new layer over its image's (frozen
//! meanwhile unless told otherwise), with the container's config, the request's and the
//! `--change` lines merged as dockerd merges them.

use berth_dockerfile::config::apply_changes;
use berth_proto::{CommitRequest, ImageInfo, ImageSelector, LayerRef};
use serde_json::{json, Map, Value};

use super::store::ContainerRecord;
use super::{ContainerError, ContainerService};
use crate::images::ImageService;
use crate::layer::{config_of, create_image, store_layer, History};

type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// The container's own `Config`, as dockerd keeps it: the image's with the create request's
/// settings merged in.
fn container_config(rec: &ContainerRecord, image: &ImageInfo) -> Map<String, Value> {
    let mut c = config_of(Some(image));
    let spec = &rec.spec;
    if let Some(cmd) = &spec.cmd {
        c.insert("Cmd".into(), json!(cmd));
    }
    if let Some(ep) = &spec.entrypoint {
        c.insert(
            "Entrypoint".into(),
            if ep.is_empty() {
                Value::Null
            } else {
                json!(ep)
            },
        );
    }
    c.insert("Env".into(), json!(rec.process.env));
    if !rec.process.working_dir.is_empty() {
        c.insert("WorkingDir".into(), json!(rec.process.working_dir));
    }
    c.insert("User".into(), json!(rec.process.user));
    if !spec.labels.is_empty() {
        c.insert("Labels".into(), json!(spec.labels));
    }
    if !spec.exposed_ports.is_empty() {
        let mut m = c
            .get("ExposedPorts")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for p in &spec.exposed_ports {
            m.insert(p.clone(), json!({}));
        }
        c.insert("ExposedPorts".into(), Value::Object(m));
    }
    if !spec.volumes.is_empty() {
        let mut m = c
            .get("Volumes")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for v in &spec.volumes {
            m.insert(v.clone(), json!({}));
        }
        c.insert("Volumes".into(), Value::Object(m));
    }
    if let Some(s) = &spec.stop_signal {
        c.insert("StopSignal".into(), json!(s));
    }
    c.insert("Tty".into(), json!(spec.tty));
    c.insert("OpenStdin".into(), json!(spec.open_stdin));
    c.insert("StdinOnce".into(), json!(spec.stdin_once));
    c
}

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(_) => false,
    }
}

/// The new image's config: the container's, the request's set fields over it, then the
/// changes.
pub fn commit_config(
    container: Map<String, Value>,
    request: Option<&Value>,
    changes: &[String],
) -> Result<Map<String, Value>> {
    let mut c = container.clone();
    if let Some(Value::Object(req)) = request {
        for (k, v) in req {
            if !is_unset(v) {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    apply_changes(&mut c, changes).map_err(ContainerError::Invalid)?;
    // As dockerd's merge: a Cmd the changes cleared (ENTRYPOINT) comes back from the container.
    if c.get("Cmd").is_none_or(is_unset) {
        if let Some(cmd) = container.get("Cmd").filter(|v| !is_unset(v)) {
            c.insert("Cmd".into(), cmd.clone());
        }
    }
    Ok(c)
}

impl ContainerService {
    /// Stores the container's changes as a layer over its image's (a build's RUN step uses
    /// this too), frozen meanwhile with `pause` when it runs.
    pub fn store_layer_of(
        &self,
        images: &ImageService,
        rec: &ContainerRecord,
        pause: bool,
    ) -> Result<LayerRef> {
        let lock = self.lock(&rec.id);
        let _guard = lock.lock().expect("container lock");
        let m = self.rootfs_of(&rec.id)?;
        let skip = self.change_skips(rec);
        let v = self.view(&rec.id);
        let runtime = self.runtime(&rec.runtime);
        let freeze = pause && v.running && !self.frozen(v.state.pid);
        if freeze {
            runtime.pause(&rec.id)?;
        }
        let layer = store_layer(
            images,
            &m.upper,
            &m.lowers,
            &skip,
            rec.layers.last().map(String::as_str),
        );
        if freeze {
            if let Err(e) = runtime.resume(&rec.id) {
                tracing::warn!("thawing container {} after its commit: {e}", rec.id);
            }
        }
        Ok(layer?)
    }

    /// `docker commit`.
    pub fn commit(&self, images: &ImageService, req: &CommitRequest) -> Result<ImageInfo> {
        let rec = self.find(&req.container)?;
        let image = images
            .inspect(&ImageSelector {
                name: None,
                id_prefix: Some(rec.spec.image_id.clone()),
            })
            .map_err(|_| {
                ContainerError::Conflict(format!(
                    "the image of container {} is no longer stored",
                    rec.id
                ))
            })?;
        let config = commit_config(
            container_config(&rec, &image),
            req.config.as_ref(),
            &req.changes,
        )?;
        let layer = self.store_layer_of(images, &rec, req.pause)?;
        let info = create_image(
            images,
            Some(&image),
            Some(layer),
            config,
            &History {
                created_by: rec.process.args.join(" "),
                comment: req.comment.clone(),
                author: req.author.clone(),
                empty_layer: false,
            },
            req.tag.clone(),
        )?;
        self.emit(
            &rec,
            "commit",
            &[
                ("comment", req.comment.clone()),
                ("imageID", info.id.clone()),
                ("imageRef", req.tag.clone().unwrap_or_default()),
            ],
        );
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_override_the_container_config() {
        let mut container = Map::new();
        container.insert("Cmd".into(), json!(["sh"]));
        container.insert("Env".into(), json!(["PATH=/bin"]));
        let c = commit_config(
            container.clone(),
            Some(&json!({"Labels": {"a": "b"}, "Cmd": null})),
            &[
                "CMD [\"echo\", \"hi\"]".into(),
                "ENV X=$PATH:/x".into(),
                "EXPOSE 8080".into(),
            ],
        )
        .unwrap();
        assert_eq!(c["Cmd"], json!(["echo", "hi"]));
        assert_eq!(c["Env"], json!(["PATH=/bin", "X=/bin:/x"]));
        assert_eq!(c["Labels"], json!({"a": "b"}));
        assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}}));
        let e = commit_config(container.clone(), None, &["RUN echo".into()]).unwrap_err();
        assert_eq!(e.to_string(), "run is not a valid change command");
        let c = commit_config(container, None, &["ENTRYPOINT [\"/x\"]".into()]).unwrap();
        assert_eq!(c["Cmd"], json!(["sh"]));
    }
}
