//! Volumes from the containers' side: the volume requests (who uses a volume is read from the
//! container records, never kept apart), the volumes a create needs (made on demand, anonymous
//! ones with a random name), the files the shim needs at start, and the removal of a container's
//! anonymous volumes with it (`docker rm -v`, `--rm`).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use berth_proto::{ContainerSpec, VolumeCreate, VolumeInfo};

use super::mounts::{self, ContainerMount, CopyUp, COPY_UP_FILE};
use super::store::ContainerRecord;
use super::{io_err, ContainerService, Result};
use crate::volume::{check_name, VolumeError};

/// The image config's `Volumes` (destinations), sorted.
pub fn image_volumes(config_json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(config_json).unwrap_or_default();
    let mut out: Vec<String> = v["config"]["Volumes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    out.sort();
    out
}

impl ContainerService {
    pub fn volume_create(&self, req: &VolumeCreate) -> Result<VolumeInfo> {
        let _lock = self.volumes.lock();
        Ok(self.volumes.create(req, false)?)
    }

    /// Volume name → the containers (ids) whose mounts name it.
    fn volume_users(&self) -> Result<HashMap<String, Vec<String>>> {
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for rec in self.store.all()? {
            for m in rec.mounts.iter().filter(|m| m.kind == "volume") {
                users
                    .entry(m.name.clone())
                    .or_default()
                    .push(rec.id.clone());
            }
        }
        Ok(users)
    }

    pub fn volume_list(&self, sizes: bool) -> Result<Vec<VolumeInfo>> {
        let mut users = self.volume_users()?;
        let mut out = self.volumes.list()?;
        for v in &mut out {
            v.used_by = users.remove(&v.name).unwrap_or_default();
            if sizes {
                v.size = Some(self.volumes.size(&v.name));
            }
        }
        Ok(out)
    }

    pub fn volume_inspect(&self, name: &str) -> Result<VolumeInfo> {
        let mut v = self
            .volumes
            .get(name)?
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))?;
        v.used_by = self.volume_users()?.remove(name).unwrap_or_default();
        Ok(v)
    }

    /// Removes a volume no container uses; in use is a conflict even with `force` (as
    /// dockerd), which only makes a missing volume not an error.
    pub fn volume_remove(&self, name: &str, force: bool) -> Result<()> {
        let _lock = self.volumes.lock();
        if self.volumes.get(name)?.is_none() {
            if force {
                return Ok(());
            }
            return Err(VolumeError::NotFound(name.to_string()).into());
        }
        if let Some(users) = self.volume_users()?.remove(name) {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                users,
            }
            .into());
        }
        Ok(self.volumes.remove(name)?)
    }

    /// The mounts of a new container, volume names checked and chosen (anonymous ones get a
    /// random 64-hex name) and their sources set; nothing is created yet.
    pub(super) fn plan_mounts(
        &self,
        spec: &ContainerSpec,
        image_config: &str,
    ) -> Result<Vec<ContainerMount>> {
        let mut planned = mounts::plan(spec, &image_volumes(image_config))?;
        for m in planned.iter_mut().filter(|m| m.kind == "volume") {
            if m.anonymous {
                m.name = hex::encode(rand::random::<[u8; 32]>());
            }
            check_name(&m.name).map_err(|e| VolumeError::InvalidName(m.name.clone(), e))?;
            m.source = self.volumes.data_path(&m.name);
        }
        Ok(planned)
    }

    /// Creates the volumes `mounts` name that do not exist yet, adding their names to `made`
    /// (the caller holds the volume lock until the container's record is stored).
    pub(super) fn create_volumes(
        &self,
        mounts: &[ContainerMount],
        made: &mut Vec<String>,
    ) -> Result<()> {
        for m in mounts.iter().filter(|m| m.kind == "volume") {
            if self.volumes.get(&m.name)?.is_some() {
                continue;
            }
            let req = VolumeCreate {
                name: m.name.clone(),
                labels: m.labels.clone(),
                ..Default::default()
            };
            self.volumes.create(&req, m.anonymous)?;
            made.push(m.name.clone());
        }
        Ok(())
    }

    /// Removes the volumes a create that failed made (a name clash must not leave a new named
    /// volume behind, as it does not with dockerd, which checks the name first).
    pub(super) fn remove_unused_volumes(&self, names: &[String]) {
        let _lock = self.volumes.lock();
        let Ok(users) = self.volume_users() else {
            return;
        };
        for name in names.iter().filter(|n| !users.contains_key(*n)) {
            if let Err(e) = self.volumes.remove(name) {
                tracing::warn!("removing volume {name}: {e}");
            }
        }
    }

    /// Removes the anonymous volumes of a container that is gone (or never came to be) when
    /// no other container uses them.
    pub(super) fn remove_anonymous_volumes(&self, mounts: &[ContainerMount]) {
        let _lock = self.volumes.lock();
        let Ok(users) = self.volume_users() else {
            return;
        };
        for m in mounts.iter().filter(|m| m.kind == "volume" && m.anonymous) {
            if users.contains_key(&m.name) {
                continue;
            }
            match self.volumes.remove(&m.name) {
                Ok(()) | Err(VolumeError::NotFound(_)) => {}
                Err(e) => tracing::warn!("removing anonymous volume {}: {e}", m.name),
            }
        }
    }

    /// What the bundle needs for the mounts: missing `-v` bind sources are created (as `docker
    /// run -v` does) and the volumes to fill at start are listed for the shim.
    pub(super) fn write_mount_files(&self, rec: &ContainerRecord, bundle: &Path) -> Result<()> {
        for m in rec.mounts.iter().filter(|m| m.create_source) {
            if !m.source.exists() {
                fs::create_dir_all(&m.source).map_err(io_err(format!(
                    "creating bind source {}",
                    m.source.display()
                )))?;
            }
        }
        let copy: Vec<CopyUp> = rec
            .mounts
            .iter()
            .filter(|m| m.kind == "volume" && m.copy_up)
            .map(|m| CopyUp {
                volume: m.source.clone(),
                destination: m.destination.clone(),
            })
            .collect();
        if !copy.is_empty() {
            fs::write(
                bundle.join(COPY_UP_FILE),
                serde_json::to_vec_pretty(&copy).expect("serialisable"),
            )
            .map_err(io_err(format!("writing {COPY_UP_FILE} of {}", rec.id)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_volumes_are_read_from_the_config() {
        let c = r#"{"config":{"Volumes":{"/var/lib/x":{},"/data":{}}}}"#;
        assert_eq!(image_volumes(c), ["/data", "/var/lib/x"]);
        assert!(image_volumes(r#"{"config":{}}"#).is_empty());
        assert!(image_volumes("not json").is_empty());
    }
}
