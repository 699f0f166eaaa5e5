//! Volumes, as dockerd's `local` driver keeps them: a directory per volume under the data root,
//! `volumes/<name>/_data` (what containers mount) beside `volume.json` (name, driver, labels,
//! options, creation time, whether it is anonymous). Which containers use a volume is not
//! recorded here: the container records are the truth (`container/volumes.rs`).
//!
//! Names are checked as dockerd checks them (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`), so a name is always
//! one path component: no `/`, no `..`, never outside `volumes/`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use berth_proto::{Error, ErrorCode, VolumeCreate, VolumeInfo};
use serde::{Deserialize, Serialize};

const RECORD: &str = "volume.json";
const DATA: &str = "_data";
/// The label dockerd (API 1.42 and later) gives anonymous volumes; prune without `all` removes
/// only volumes that have it.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// a name the local driver refuses
    #[error("create {0}: {1}")]
    InvalidName(String, String),
    /// a driver other than local
    #[error(
        "create {name}: error looking up volume plugin {driver}: plugin \"{driver}\" not found"
    )]
    Driver { name: String, driver: String },
    /// a driver option the local driver does not know
    #[error("create {name}: invalid option: \"{key}\"")]
    Option { name: String, key: String },
    /// the local driver's mount options
    #[error(
        "create {0}: the local driver's mount options (type, device, o) are not supported yet"
    )]
    MountOptions(String),
    /// no volume of that name
    #[error("get {0}: no such volume")]
    NotFound(String),
    /// containers use it
    #[error("remove {name}: volume is in use - [{}]", users.join(", "))]
    InUse { name: String, users: Vec<String> },
    /// an i/o step failed
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl From<VolumeError> for Error {
    fn from(e: VolumeError) -> Error {
        let code = match &e {
            VolumeError::InvalidName(..) | VolumeError::Option { .. } => ErrorCode::InvalidArgument,
            VolumeError::Driver { .. } | VolumeError::NotFound(_) => ErrorCode::NotFound,
            VolumeError::MountOptions(_) => ErrorCode::Unsupported,
            VolumeError::InUse { .. } => ErrorCode::Conflict,
            VolumeError::Io { .. } => ErrorCode::Internal,
        };
        Error::new(code, e.to_string())
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let context = context.into();
    move |source| VolumeError::Io { context, source }
}

/// `volume.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct VolumeRecord {
    name: String,
    driver: String,
    created_at: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    anonymous: bool,
}

/// Checks a volume name as dockerd's local driver does; the error is its message.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if !valid_chars {
        return Err(format!("{name:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"));
    }
    if name.len() < 2 {
        return Err(
            "volume name is too short, names should be at least two alphanumeric characters".into(),
        );
    }
    Ok(())
}

/// The volumes under `<data root>/volumes`.
pub struct VolumeStore {
    dir: PathBuf,
    /// Held across "is it used" and "remove", and across a container create's "make the
    /// volumes" and "store the record", so a volume is never removed under a new user.
    lock: Mutex<()>,
}

impl VolumeStore {
    pub fn open(data_root: &Path) -> Result<VolumeStore, VolumeError> {
        let dir = data_root.join("volumes");
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let store = VolumeStore {
            dir,
            lock: Mutex::new(()),
        };
        store.remove_leftovers();
        Ok(store)
    }

    /// Takes the store's lock (see the field); the methods below expect the caller to hold it.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().expect("volume lock")
    }

    /// The directory containers mount.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(DATA)
    }

    /// Creates a volume (an empty name: an anonymous one with a random name); an existing
    /// volume of that name is answered as it is, as dockerd does.
    pub fn create(&self, req: &VolumeCreate, anonymous: bool) -> Result<VolumeInfo, VolumeError> {
        let name = if req.name.is_empty() {
            hex::encode(rand::random::<[u8; 32]>())
        } else {
            req.name.clone()
        };
        check_name(&name).map_err(|m| VolumeError::InvalidName(name.clone(), m))?;
        if !matches!(req.driver.as_str(), "" | "local") {
            return Err(VolumeError::Driver {
                name,
                driver: req.driver.clone(),
            });
        }
        if let Some(key) = req.options.keys().next() {
            if matches!(key.as_str(), "type" | "device" | "o" | "size") {
                return Err(VolumeError::MountOptions(name));
            }
            return Err(VolumeError::Option {
                name,
                key: key.clone(),
            });
        }
        if let Some(existing) = self.get(&name)? {
            return Ok(existing);
        }
        let dir = self.dir.join(&name);
        let data = dir.join(DATA);
        fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
        let mut labels = req.labels.clone();
        if anonymous {
            labels.insert(ANONYMOUS_LABEL.into(), String::new());
        }
        let rec = VolumeRecord {
            name: name.clone(),
            driver: "local".into(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            labels,
            options: req.options.clone(),
            anonymous,
        };
        // The record last, atomically: a directory without one is not a volume.
        let tmp = dir.join(format!("{RECORD}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&rec).map_err(io::Error::other)?)?;
            f.sync_all()?;
            fs::rename(&tmp, dir.join(RECORD))
        };
        write().map_err(io_err(format!("writing the record of volume {name}")))?;
        Ok(self.info(rec))
    }

    fn info(&self, rec: VolumeRecord) -> VolumeInfo {
        VolumeInfo {
            mountpoint: self.data_path(&rec.name).display().to_string(),
            name: rec.name,
            driver: rec.driver,
            created_at: rec.created_at,
            labels: rec.labels,
            options: rec.options,
            scope: "local".into(),
            anonymous: rec.anonymous,
            used_by: Vec::new(),
            size: None,
        }
    }

    /// The volume of that name, if there is one.
    pub fn get(&self, name: &str) -> Result<Option<VolumeInfo>, VolumeError> {
        if check_name(name).is_err() {
            return Ok(None);
        }
        match fs::read(self.dir.join(name).join(RECORD)) {
            Ok(b) => {
                let rec: VolumeRecord =
                    serde_json::from_slice(&b).map_err(|e| VolumeError::Io {
                        context: format!("reading the record of volume {name}"),
                        source: io::Error::other(e),
                    })?;
                Ok(Some(self.info(rec)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("reading the record of volume {name}"))(e)),
        }
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(io_err(format!("listing {}", self.dir.display())))?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(v) = self.get(&name)? {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a volume and its data (the caller has checked nobody uses it). The directory is
    /// first renamed away, so a removal cut short never leaves half a volume behind.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        if self.get(name)?.is_none() {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        let gone = self.dir.join(format!(
            ".removing-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        fs::rename(self.dir.join(name), &gone)
            .map_err(io_err(format!("removing volume {name}")))?;
        fs::remove_dir_all(&gone).map_err(io_err(format!("removing volume {name}")))
    }

    /// Removals cut short by a crash, and volumes whose record was never written.
    fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let half_made = !name.starts_with('.')
                && !path.join(RECORD).exists()
                && match fs::read_dir(path.join(DATA)) {
                    Ok(mut d) => d.next().is_none(),
                    Err(e) => e.kind() == io::ErrorKind::NotFound,
                };
            if name.starts_with(".removing-") || half_made {
                tracing::info!(
                    "removing {}: a volume left half made or removed",
                    path.display()
                );
                let _ = fs::remove_dir_all(&path);
            }
        }
    }

    /// Bytes of the regular files under a volume's data (hard links counted once).
    pub fn size(&self, name: &str) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0;
        let mut stack = vec![self.data_path(name)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(md) = entry.path().symlink_metadata() else {
                    continue;
                };
                if md.is_dir() {
                    stack.push(entry.path());
                } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
                    total += md.len();
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_dockerd_does() {
        assert!(check_name("v1").is_ok());
        assert!(check_name("my_vol.2-x").is_ok());
        assert!(check_name("a").unwrap_err().contains("too short"));
        for bad in ["a/b", "..", "../x", "/abs", ".hidden", "-x", "bad$name", ""] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("includes invalid characters"), "{bad}: {e}");
        }
    }

    #[test]
    fn create_get_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(t.path()).unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("k".to_string(), "v".to_string());
        let v = s
            .create(
                &VolumeCreate {
                    name: "data".into(),
                    labels,
                    ..Default::default()
                },
                false,
            )
            .unwrap();
        assert_eq!(v.driver, "local");
        assert_eq!(v.scope, "local");
        assert_eq!(
            Path::new(&v.mountpoint),
            t.path().join("volumes/data/_data")
        );
        assert!(Path::new(&v.mountpoint).is_dir());
        // Again: the same volume, not an error.
        let again = s
            .create(
                &VolumeCreate {
                    name: "data".into(),
                    ..Default::default()
                },
                false,
            )
            .unwrap();
        assert_eq!(again.created_at, v.created_at);
        assert_eq!(again.labels["k"], "v");
        let anon = s.create(&VolumeCreate::default(), true).unwrap();
        assert_eq!(anon.name.len(), 64);
        assert!(anon.anonymous);
        assert!(anon.labels.contains_key(ANONYMOUS_LABEL));
        fs::write(Path::new(&anon.mountpoint).join("f"), b"12345").unwrap();
        assert_eq!(s.size(&anon.name), 5);
        let names: Vec<String> = s.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names.len(), 2);
        s.remove(&anon.name).unwrap();
        assert!(s.get(&anon.name).unwrap().is_none());
        assert!(matches!(
            s.remove(&anon.name),
            Err(VolumeError::NotFound(_))
        ));
        let e = s
            .create(
                &VolumeCreate {
                    name: "x2".into(),
                    driver: "nope".into(),
                    ..Default::default()
                },
                false,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "create x2: error looking up volume plugin nope: plugin \"nope\" not found"
        );
        let mut options = BTreeMap::new();
        options.insert("foo".to_string(), "bar".to_string());
        let e = s
            .create(
                &VolumeCreate {
                    name: "x3".into(),
                    options,
                    ..Default::default()
                },
                false,
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "create x3: invalid option: \"foo\"");
        assert!(s.get("../etc").unwrap().is_none());
    }
}
