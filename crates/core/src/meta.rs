//! Image metadata in an embedded transactional store (redb) on the data disk: images, the
//! references (tags and digests) that point at them, and the layer snapshots' facts. Blobs and
//! snapshot trees live in the file system ([`crate::content`], [`crate::snapshot`]); this store
//! only says which of them make up which image, so a crash between two writes leaves at worst an
//! unreferenced blob or snapshot, never a record pointing at nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use berth_proto::LayerInfo;

/// image id ("sha256:…") → [`ImageRecord`] as JSON
const IMAGES: TableDefinition<&str, &str> = TableDefinition::new("images");
/// normalised reference ("docker.io/library/busybox:latest" or "…@sha256:…") → image id
const REFS: TableDefinition<&str, &str> = TableDefinition::new("refs");
/// chain id → [`LayerRecord`] as JSON
const LAYERS: TableDefinition<&str, &str> = TableDefinition::new("layers");

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// the metadata database failed
    #[error("metadata store: {0}")]
    Db(String),
    /// a stored record could not be decoded
    #[error("metadata record {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    /// an earlier I/O error (a full disk) poisoned the database until it is opened again
    #[error("metadata store: an earlier I/O error; the store is being opened again")]
    Poisoned,
}

/// `From` every redb error type into `Error::Variant(String)`: the stores built on redb (this
/// one, the container records) report its failures as text; an earlier I/O error that poisoned
/// the database becomes `Error::Poisoned`, which [`ReopeningDb::with`] recovers from.
macro_rules! from_redb_errors {
    ($err:ident :: $variant:ident) => {
        $crate::meta::from_redb_errors!(@each $err::$variant; redb::Error, redb::DatabaseError,
            redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);
        impl $crate::meta::Poisoned for $err {
            fn is_poisoned(&self) -> bool {
                matches!(self, $err::Poisoned)
            }
        }
    };
    (@each $err:ident :: $variant:ident; $($t:ty),*) => {$(
        impl From<$t> for $err {
            fn from(e: $t) -> Self {
                match redb::Error::from(e) {
                    redb::Error::PreviousIo => $err::Poisoned,
                    e => $err::$variant(e.to_string()),
                }
            }
        }
    )*};
}
pub(crate) use from_redb_errors;

from_redb_errors!(MetaError::Db);

/// An error that says the database must be opened again before it can be used.
pub(crate) trait Poisoned {
    fn is_poisoned(&self) -> bool;
}

/// A redb database that is opened again when an I/O error has poisoned it. After one failed
/// write (a full disk) redb refuses every later transaction ("Previous I/O error occurred.
/// Please close and re-open the database") until it is reopened, which would otherwise last as
/// long as the core runs, space freed or not. Reopening replays redb's own recovery, so what
/// was committed before the error is what is there.
pub(crate) struct ReopeningDb {
    path: PathBuf,
    /// The database and how many times it was opened; `None` only while a reopen failed.
    db: RwLock<(Option<Database>, u64)>,
}

impl ReopeningDb {
    /// Opens (or creates) the database and makes sure `tables` exist, writing only when one is
    /// missing: under TCG each commit (an fsync) is ~0.1 s of the guest's start.
    pub(crate) fn open<K: redb::Key + 'static, V: redb::Value + 'static, E>(
        path: &Path,
        tables: &[TableDefinition<'_, K, V>],
    ) -> Result<ReopeningDb, E>
    where
        E: From<redb::DatabaseError>
            + From<redb::TransactionError>
            + From<redb::TableError>
            + From<redb::CommitError>,
    {
        let db = Database::create(path)?;
        let made = {
            let txn = db.begin_read()?;
            tables.iter().all(|t| txn.open_table(*t).is_ok())
        };
        if !made {
            let txn = db.begin_write()?;
            for t in tables {
                txn.open_table(*t)?;
            }
            txn.commit()?;
        }
        Ok(ReopeningDb {
            path: path.to_path_buf(),
            db: RwLock::new((Some(db), 1)),
        })
    }

    /// Runs `f` on the database; when redb answers that an earlier I/O error poisoned it, opens
    /// it again (once for everyone who saw the same poisoned copy) and runs `f` once more.
    pub(crate) fn with<T, E>(&self, f: impl Fn(&Database) -> Result<T, E>) -> Result<T, E>
    where
        E: Poisoned + From<redb::DatabaseError>,
    {
        let seen = {
            let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
            match &guard.0 {
                Some(db) => match f(db) {
                    Err(e) if e.is_poisoned() => guard.1,
                    r => return r,
                },
                None => guard.1,
            }
        };
        {
            let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
            if guard.1 == seen {
                // The poisoned copy goes first: redb holds a lock on the file while it is open.
                guard.0 = None;
                tracing::warn!("{}: reopening after an I/O error", self.path.display());
                guard.0 = Some(Database::create(&self.path)?);
                guard.1 += 1;
            }
        }
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        match &guard.0 {
            Some(db) => f(db),
            None => Err(E::from(redb::DatabaseError::DatabaseAlreadyOpen)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub id: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub index_digest: Option<String>,
    pub layers: Vec<LayerInfo>,
    pub size: u64,
    pub stored_at: String,
    pub last_tag_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub diff_id: String,
    pub unpacked_size: u64,
}

pub struct MetaStore {
    db: ReopeningDb,
}

/// The references pointing at each image id.
pub type RefMap = BTreeMap<String, Vec<String>>;

impl MetaStore {
    pub fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let db = ReopeningDb::open::<_, _, MetaError>(path, &[IMAGES, REFS, LAYERS])?;
        Ok(MetaStore { db })
    }

    pub fn put_layer(&self, chain_id: &str, rec: &LayerRecord) -> Result<(), MetaError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(LAYERS)?;
                t.insert(chain_id, encode(rec).as_str())?;
            }
            txn.commit()?;
            Ok(())
        })
    }

    pub fn layer(&self, chain_id: &str) -> Result<Option<LayerRecord>, MetaError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(LAYERS)?;
            let v = t.get(chain_id)?;
            v.map(|v| decode(chain_id, v.value())).transpose()
        })
    }

    pub fn layers(&self) -> Result<BTreeMap<String, LayerRecord>, MetaError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(LAYERS)?;
            let mut out = BTreeMap::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.insert(k.value().to_string(), decode(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    pub fn remove_layer(&self, chain_id: &str) -> Result<(), MetaError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                txn.open_table(LAYERS)?.remove(chain_id)?;
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Stores `image` and points every reference in `refs` at it, in one transaction.
    pub fn put_image(&self, image: &ImageRecord, refs: &[String]) -> Result<(), MetaError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                let mut images = txn.open_table(IMAGES)?;
                images.insert(image.id.as_str(), encode(image).as_str())?;
                let mut r = txn.open_table(REFS)?;
                for name in refs {
                    r.insert(name.as_str(), image.id.as_str())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    pub fn image(&self, id: &str) -> Result<Option<ImageRecord>, MetaError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(IMAGES)?;
            let v = t.get(id)?;
            v.map(|v| decode(id, v.value())).transpose()
        })
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, MetaError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(IMAGES)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    pub fn image_ids(&self) -> Result<Vec<String>, MetaError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(IMAGES)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                out.push(item?.0.value().to_string());
            }
            Ok(out)
        })
    }

    pub fn resolve_ref(&self, name: &str) -> Result<Option<String>, MetaError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(REFS)?;
            let v = t.get(name)?;
            Ok(v.map(|v| v.value().to_string()))
        })
    }

    /// All references, grouped by the image they point at.
    pub fn refs(&self) -> Result<RefMap, MetaError> {
        self.db.with(|db| {
            let txn = db.begin_read()?;
            let t = txn.open_table(REFS)?;
            let mut out: RefMap = BTreeMap::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.entry(v.value().to_string())
                    .or_default()
                    .push(k.value().to_string());
            }
            Ok(out)
        })
    }

    /// Points `name` at `id` (moving it if it pointed elsewhere); records the tag time.
    pub fn set_ref(&self, name: &str, id: &str, now: &str) -> Result<(), MetaError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                let mut images = txn.open_table(IMAGES)?;
                let rec = images
                    .get(id)?
                    .map(|v| decode::<ImageRecord>(id, v.value()))
                    .transpose()?;
                // A digest reference (recorded after a push) is not a tag: LastTagTime stays.
                if let Some(mut rec) = rec.filter(|_| !name.contains('@')) {
                    rec.last_tag_time = Some(now.to_string());
                    images.insert(id, encode(&rec).as_str())?;
                }
                txn.open_table(REFS)?.insert(name, id)?;
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// Removes references and, when `delete_image` is set, the image record, in one transaction.
    pub fn remove(&self, refs: &[String], delete_image: Option<&str>) -> Result<(), MetaError> {
        self.db.with(|db| {
            let txn = db.begin_write()?;
            {
                let mut r = txn.open_table(REFS)?;
                for name in refs {
                    r.remove(name.as_str())?;
                }
                if let Some(id) = delete_image {
                    txn.open_table(IMAGES)?.remove(id)?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }
}

fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("metadata records always serialise")
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &str) -> Result<T, MetaError> {
    serde_json::from_str(v).map_err(|e| MetaError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full file system under the store: the failed write poisons redb, and once space is
    /// freed the store works again, with what was committed before. Needs root (a small tmpfs).
    #[test]
    fn a_store_poisoned_by_a_full_disk_works_again_once_space_is_freed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("small");
        std::fs::create_dir(&dir).unwrap();
        if nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=4m"),
        )
        .is_err()
        {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _unmount = Unmount(&dir);
        let m = MetaStore::open(&dir.join("meta.redb")).unwrap();
        m.put_image(&rec("sha256:kept"), &["kept:1".into()])
            .unwrap();
        // Fill the file system, then write records until redb fails.
        let filler = dir.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        drop(f);
        let mut big = rec("sha256:big");
        big.layers = (0..2000)
            .map(|i| LayerInfo {
                digest: format!("sha256:{i:064}"),
                diff_id: format!("sha256:{i:064}"),
                chain_id: format!("sha256:{i:064}"),
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                size: i,
                unpacked_size: i,
            })
            .collect();
        let failed = (0..50).find_map(|i| {
            let mut r = big.clone();
            r.id = format!("sha256:big{i}");
            m.put_image(&r, &[]).err()
        });
        assert!(failed.is_some(), "a write on a full file system must fail");
        std::fs::remove_file(&filler).unwrap();
        // Space again: the next write and read work, and the first record is still there.
        m.put_image(&rec("sha256:after"), &["after:1".into()])
            .unwrap();
        assert_eq!(
            m.resolve_ref("kept:1").unwrap().as_deref(),
            Some("sha256:kept")
        );
        assert_eq!(
            m.resolve_ref("after:1").unwrap().as_deref(),
            Some("sha256:after")
        );
    }

    fn rec(id: &str) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            manifest_digest: "sha256:m".into(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            index_digest: None,
            layers: vec![],
            size: 0,
            stored_at: "2026-01-01T00:00:00Z".into(),
            last_tag_time: None,
        }
    }

    #[test]
    fn records_and_refs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let m = MetaStore::open(&path).unwrap();
            m.put_image(&rec("sha256:a"), &["docker.io/library/x:latest".into()])
                .unwrap();
            m.put_layer(
                "sha256:c",
                &LayerRecord {
                    diff_id: "sha256:d".into(),
                    unpacked_size: 5,
                },
            )
            .unwrap();
        }
        let m = MetaStore::open(&path).unwrap();
        assert_eq!(
            m.resolve_ref("docker.io/library/x:latest")
                .unwrap()
                .as_deref(),
            Some("sha256:a")
        );
        assert_eq!(m.image("sha256:a").unwrap().unwrap(), rec("sha256:a"));
        assert_eq!(m.layer("sha256:c").unwrap().unwrap().unpacked_size, 5);
        m.set_ref("docker.io/library/y:1", "sha256:a", "2026-02-02T00:00:00Z")
            .unwrap();
        assert_eq!(m.refs().unwrap()["sha256:a"].len(), 2);
        m.remove(&["docker.io/library/x:latest".into()], Some("sha256:a"))
            .unwrap();
        assert!(m.image("sha256:a").unwrap().is_none());
        assert_eq!(
            m.refs().unwrap()["sha256:a"],
            vec!["docker.io/library/y:1".to_string()]
        );
    }
}
