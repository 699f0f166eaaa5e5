//! Operations on a container beyond its lifecycle: pause/unpause (the runtime's cgroup
//! freezer), top, stats, rename, diff and export. Messages are dockerd's.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;

use berth_proto::{ContainerRef, ContainerTop, FsChange, StatsSample};

use super::rootfs::{self, RootfsMount};
use super::store::{ContainerRecord, StoreError};
use super::{cgroup, export, io_err, logs, names, shim, top, ContainerError, ContainerService};

type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// Mount points the runtime creates in the container's own layer: not changes (dockerd keeps
/// them in an init layer below the container's).
const RUNTIME_MOUNT_POINTS: &[&str] = &[
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "dev",
    "proc",
    "sys",
];

impl ContainerService {
    /// Whether a running container's processes are frozen.
    pub(super) fn frozen(&self, pid: Option<u32>) -> bool {
        pid.and_then(cgroup::CgroupPaths::of_pid)
            .is_some_and(|c| c.frozen())
    }

    /// The record and init pid of a running container, or dockerd's "is not running".
    fn running(&self, r: &ContainerRef) -> Result<(ContainerRecord, Option<u32>)> {
        let rec = self.find(r)?;
        let v = self.view(&rec.id);
        if !v.running {
            return Err(ContainerError::Conflict(format!(
                "Container {} is not running",
                rec.id
            )));
        }
        Ok((rec, v.state.pid))
    }

    pub fn pause(&self, r: &ContainerRef) -> Result<()> {
        let rec = self.find(r)?;
        let lock = self.lock(&rec.id);
        let _guard = lock.lock().expect("container lock");
        let (rec, pid) = self.running(&ContainerRef(rec.id))?;
        if self.frozen(pid) {
            return Err(ContainerError::Conflict(format!(
                "Container {} is already paused",
                rec.id
            )));
        }
        self.runtime(&rec.runtime).pause(&rec.id)?;
        self.emit(&rec, "pause", &[]);
        Ok(())
    }

    pub fn unpause(&self, r: &ContainerRef) -> Result<()> {
        let rec = self.find(r)?;
        let lock = self.lock(&rec.id);
        let _guard = lock.lock().expect("container lock");
        let v = self.view(&rec.id);
        if !v.running || !self.frozen(v.state.pid) {
            return Err(ContainerError::Conflict(format!(
                "Container {} is not paused",
                rec.id
            )));
        }
        self.runtime(&rec.runtime).resume(&rec.id)?;
        self.emit(&rec, "unpause", &[]);
        Ok(())
    }

    /// After a signal: a frozen container is thawed so that it gets it (as dockerd does for
    /// stop and kill of a paused container).
    pub(super) fn thaw_after_signal(&self, rec: &ContainerRecord) {
        let v = self.view(&rec.id);
        if v.running && self.frozen(v.state.pid) {
            if let Err(e) = self.runtime(&rec.runtime).resume(&rec.id) {
                tracing::warn!("thawing container {} after a signal: {e}", rec.id);
            }
        }
    }

    /// `docker top`: `ps -ef` of the container's processes, or the machine's `ps` with
    /// `ps_args`, filtered to them.
    pub fn top(&self, r: &ContainerRef, ps_args: &str) -> Result<ContainerTop> {
        let (rec, _) = self.running(r)?;
        let pids = self.runtime(&rec.runtime).ps(&rec.id)?;
        let args = ps_args.trim();
        let table = if args.is_empty() || args == "-ef" {
            top::ps_ef(&pids)
        } else {
            top::ps_with_args(args, &pids).map_err(ContainerError::Invalid)?
        };
        self.emit(&rec, "top", &[]);
        Ok(table)
    }

    /// One sample of a running container's resource use; an empty one when it is not running.
    pub fn stats(&self, r: &ContainerRef) -> Result<StatsSample> {
        let rec = self.find(r)?;
        let v = self.view(&rec.id);
        let read = logs::now_rfc3339();
        let empty = StatsSample {
            read: read.clone(),
            ..Default::default()
        };
        if !v.running {
            return Ok(empty);
        }
        let mut s = v
            .state
            .pid
            .and_then(|pid| cgroup::sample(pid, read))
            .unwrap_or(empty);
        if rec.spec.host.network_mode == "host" {
            // The machine's interfaces are not the container's (dockerd shows none either).
            s.networks.clear();
        }
        Ok(s)
    }

    /// Gives the container a new name, with dockerd's checks and messages.
    pub fn rename(&self, r: &ContainerRef, new_name: &str) -> Result<()> {
        let rec = self.find(r)?;
        let new_name = new_name.trim_start_matches('/');
        if new_name.is_empty() {
            return Err(ContainerError::Invalid(
                "Neither old nor new names may be empty".into(),
            ));
        }
        let new_name = names::normalise(new_name).map_err(ContainerError::Invalid)?;
        if new_name == rec.name {
            return Err(ContainerError::Invalid(
                "Renaming a container with the same name as its current name".into(),
            ));
        }
        match self.store.rename(&rec.id, &new_name) {
            Ok(_) => {
                let old_name = rec.name.clone();
                let renamed = ContainerRecord {
                    name: new_name,
                    ..rec
                };
                // dockerd names it with its leading slash.
                self.emit(&renamed, "rename", &[("oldName", format!("/{old_name}"))]);
                Ok(())
            }
            Err(StoreError::NameInUse { name, id }) => Err(ContainerError::Conflict(format!(
                "Error when allocating new name: {}",
                ContainerError::NameInUse { name, id }
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn rootfs_of(&self, id: &str) -> Result<RootfsMount> {
        let path = self.bundle(id).join(shim::ROOTFS_FILE);
        let text = fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        serde_json::from_slice(&text)
            .map_err(|e| ContainerError::Internal(format!("reading {}: {e}", path.display())))
    }

    /// `docker diff`: the container's layer against its image.
    pub fn changes(&self, r: &ContainerRef) -> Result<Vec<FsChange>> {
        let rec = self.find(r)?;
        let m = self.rootfs_of(&rec.id)?;
        Ok(export::changes(
            &m.upper,
            &m.lowers,
            &self.change_skips(&rec),
        ))
    }

    /// Every container's writable layer size by id (`docker ps -s`, `docker system df`), read
    /// from its upper dir; 0 for one whose rootfs record cannot be read (being removed).
    pub fn sizes(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for rec in self.store.all()? {
            let size = match self.rootfs_of(&rec.id) {
                Ok(m) => export::upper_size(&m.upper, &self.change_skips(&rec)),
                Err(_) => 0,
            };
            out.insert(rec.id, size);
        }
        Ok(out)
    }

    /// What is in a container's upper dir but not a change (mount points): left out of `docker
    /// diff` and of a commit's layer alike.
    pub(super) fn change_skips(&self, rec: &ContainerRecord) -> BTreeSet<String> {
        let mut skip: BTreeSet<String> =
            RUNTIME_MOUNT_POINTS.iter().map(|s| s.to_string()).collect();
        let dests = rec
            .spec
            .host
            .binds
            .iter()
            .filter_map(|b| b.split(':').nth(1).map(str::to_string))
            .chain(rec.spec.host.tmpfs.keys().cloned())
            // Volumes (anonymous ones too) and `--mount`s are mount points as well.
            .chain(rec.mounts.iter().map(|m| m.destination.clone()));
        for d in dests {
            skip.insert(d.trim_matches('/').to_string());
        }
        skip
    }

    /// `docker export`: a tar of the container's file system to `out`: the running overlay, or
    /// (stopped) a read-only overlay in a private mount, under the container's lock so that no
    /// start mounts its layer meanwhile.
    pub fn export(&self, r: &ContainerRef, out: &mut (dyn Write + Send)) -> Result<()> {
        let rec = self.find(r)?;
        let bundle = self.bundle(&rec.id);
        let target = bundle.join("rootfs");
        let tar_err = |e| io_err(format!("exporting container {}", rec.id))(e);
        self.emit(&rec, "export", &[]);
        if self.view(&rec.id).running && rootfs::is_mounted(&target) {
            return export::write_tar(&target, out).map_err(tar_err);
        }
        let lock = self.lock(&rec.id);
        let _guard = lock.lock().expect("container lock");
        let m = self.rootfs_of(&rec.id)?;
        let at = bundle.join(format!("export-{}", hex::encode(rand::random::<[u8; 4]>())));
        export::tar_stopped(&m.upper, &m.lowers, &at, out).map_err(tar_err)
    }
}
