//! Container records in their own redb file (`containers.redb` beside the image metadata): the
//! request, the merged process and the name, keyed by id, with a name index so a name is
//! claimed in the same transaction that stores its container. Run state (pid, exit code) is not
//! here: the container's supervisor keeps it in `containers/<id>/state.json`.

use std::path::Path;

use redb::{ReadableTable, TableDefinition};

use crate::meta::ReopeningDb;
use serde::{Deserialize, Serialize};

use berth_proto::ContainerSpec;

/// container id → [`ContainerRecord`] as JSON
const CONTAINERS: TableDefinition<&str, &str> = TableDefinition::new("containers");
/// name (without '/') → container id
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("container_names");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// the container database failed
    #[error("container store: {0}")]
    Db(String),
    /// a stored record could not be decoded
    #[error("container record {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    /// an earlier I/O error (a full disk) poisoned the database until it is opened again
    #[error("container store: an earlier I/O error; the store is being opened again")]
    Poisoned,
    /// the name belongs to another container
    #[error("the name {name:?} is in use by container {id}")]
    NameInUse { name: String, id: String },
}

crate::meta::from_redb_errors!(StoreError::Db);

/// The process a container runs: the image config merged with the request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ProcessConfig {
    /// Entrypoint followed by Cmd; never empty.
    pub args: Vec<String>,
    /// Image Env overridden by the request's, by key (what Docker shows as Config.Env).
    pub env: Vec<String>,
    pub working_dir: String,
    /// The user as given (request, else image); "" is root.
    pub user: String,
    pub stop_signal: String,
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub id: String,
    /// Without the leading '/'.
    pub name: String,
    /// The request, with the image's labels merged under the request's.
    pub spec: ContainerSpec,
    pub process: ProcessConfig,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    /// The OCI runtime's name ("runc" or "crun"); a container keeps the one it was created with.
    pub runtime: String,
    /// The image's layer snapshots (chain ids), bottom first.
    pub layers: Vec<String>,
    /// Binds, volumes and `--mount` tmpfs, planned at create (`mounts.rs`).
    #[serde(default)]
    pub mounts: Vec<super::mounts::ContainerMount>,
}

pub struct ContainerStore {
    db: ReopeningDb,
}

impl ContainerStore {
    pub fn open(path: &Path) -> Result<ContainerStore, StoreError> {
        let db = ReopeningDb::open::<_, _, StoreError>(path, &[CONTAINERS, NAMES])?;
        Ok(ContainerStore { db })
    }

    /// Stores a new record and claims its name, or fails with [`StoreError::NameInUse`].
    pub fn insert(&self, rec: &ContainerRecord) -> Result<(), StoreError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                let mut names = txn.open_table(NAMES)?;
                let holder = names.get(rec.name.as_str())?.map(|v| v.value().to_string());
                if let Some(id) = holder {
                    return Err(StoreError::NameInUse {
                        name: rec.name.clone(),
                        id,
                    });
                }
                names.insert(rec.name.as_str(), rec.id.as_str())?;
                txn.open_table(CONTAINERS)?
                    .insert(rec.id.as_str(), encode(rec).as_str())?;
            }
            txn.commit()?;
            Ok(())
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<ContainerRecord>, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(CONTAINERS)?;
            let v = t.get(id)?;
            v.map(|v| decode(id, v.value())).transpose()
        })
    }

    pub fn id_by_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(NAMES)?;
            let v = t.get(name)?;
            Ok(v.map(|v| v.value().to_string()))
        })
    }

    pub fn ids(&self) -> Result<Vec<String>, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(CONTAINERS)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                out.push(item?.0.value().to_string());
            }
            Ok(out)
        })
    }

    pub fn all(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(CONTAINERS)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Gives a container a new name in one transaction: the new name is claimed (or
    /// [`StoreError::NameInUse`]), the old one freed, the record updated.
    pub fn rename(&self, id: &str, new_name: &str) -> Result<ContainerRecord, StoreError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            let rec = {
                let mut t = txn.open_table(CONTAINERS)?;
                let old = t.get(id)?.map(|v| v.value().to_string());
                let Some(old) = old else {
                    return Err(StoreError::Corrupt {
                        key: id.to_string(),
                        message: "the record is gone".into(),
                    });
                };
                let mut rec: ContainerRecord = decode(id, &old)?;
                let mut names = txn.open_table(NAMES)?;
                let holder = names.get(new_name)?.map(|v| v.value().to_string());
                if let Some(holder) = holder {
                    return Err(StoreError::NameInUse {
                        name: new_name.to_string(),
                        id: holder,
                    });
                }
                let held = names.get(rec.name.as_str())?.map(|v| v.value().to_string());
                if held.as_deref() == Some(id) {
                    names.remove(rec.name.as_str())?;
                }
                names.insert(new_name, id)?;
                rec.name = new_name.to_string();
                rec.spec.name = Some(new_name.to_string());
                t.insert(id, encode(&rec).as_str())?;
                rec
            };
            txn.commit()?;
            Ok(rec)
        })
    }

    /// Deletes the record and frees its name; a missing record is not an error.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(CONTAINERS)?;
                let old = t.remove(id)?.map(|v| v.value().to_string());
                if let Some(old) = old {
                    let rec: ContainerRecord = decode(id, &old)?;
                    let mut names = txn.open_table(NAMES)?;
                    let holder = names.get(rec.name.as_str())?.map(|v| v.value().to_string());
                    if holder.as_deref() == Some(id) {
                        names.remove(rec.name.as_str())?;
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })
    }
}

fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("container records always serialise")
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: name.into(),
            spec: ContainerSpec::default(),
            process: ProcessConfig::default(),
            created: "2026-01-01T00:00:00Z".into(),
            runtime: "runc".into(),
            layers: vec![],
            mounts: vec![],
        }
    }

    #[test]
    fn names_are_unique_and_freed_on_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        {
            let s = ContainerStore::open(&path).unwrap();
            s.insert(&rec("a1", "web")).unwrap();
            match s.insert(&rec("b2", "web")) {
                Err(StoreError::NameInUse { name, id }) => {
                    assert_eq!((name.as_str(), id.as_str()), ("web", "a1"))
                }
                other => panic!("{other:?}"),
            }
            assert!(s.get("b2").unwrap().is_none());
        }
        let s = ContainerStore::open(&path).unwrap();
        assert_eq!(s.id_by_name("web").unwrap().as_deref(), Some("a1"));
        assert_eq!(s.all().unwrap(), vec![rec("a1", "web")]);
        s.remove("a1").unwrap();
        assert!(s.id_by_name("web").unwrap().is_none());
        s.insert(&rec("b2", "web")).unwrap();
        assert_eq!(s.ids().unwrap(), vec!["b2".to_string()]);
    }

    #[test]
    fn rename_moves_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = ContainerStore::open(&dir.path().join("c.redb")).unwrap();
        s.insert(&rec("a1", "web")).unwrap();
        s.insert(&rec("b2", "db")).unwrap();
        match s.rename("a1", "db") {
            Err(StoreError::NameInUse { name, id }) => {
                assert_eq!((name.as_str(), id.as_str()), ("db", "b2"))
            }
            other => panic!("{other:?}"),
        }
        let r = s.rename("a1", "front").unwrap();
        assert_eq!(
            (r.name.as_str(), r.spec.name.as_deref()),
            ("front", Some("front"))
        );
        assert_eq!(s.get("a1").unwrap().unwrap().name, "front");
        assert_eq!(s.id_by_name("front").unwrap().as_deref(), Some("a1"));
        assert!(s.id_by_name("web").unwrap().is_none());
        s.insert(&rec("c3", "web")).unwrap();
    }
}
