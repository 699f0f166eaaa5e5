//! The content store: only verified blobs ever become visible, unfinished writes leave nothing,
//! and a layer stream is stored and unpacked in one pass.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Barrier};

use berth_core::content::{ContentError, ContentStore, TeeReader};
use berth_core::digest::Digest;
use berth_core::snapshot::SnapshotStore;
use berth_core::unpack::{unpack_layer, Compression};

fn ingest_is_empty(root: &Path) -> bool {
    fs::read_dir(root.join("ingest")).unwrap().count() == 0
}

fn store() -> (tempfile::TempDir, ContentStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = ContentStore::open(tmp.path()).unwrap();
    (tmp, store)
}

#[test]
fn a_committed_blob_is_visible_at_its_path() {
    let (tmp, store) = store();
    let data = b"{\"schemaVersion\":2}".to_vec();
    let d = Digest::of(&data);
    let mut w = store.writer(&d, data.len() as u64).unwrap();
    w.write_all(&data[..5]).unwrap();
    assert!(!store.contains(&d), "nothing is visible before commit");
    w.write_all(&data[5..]).unwrap();
    assert_eq!(w.written(), data.len() as u64);
    w.commit().unwrap();
    assert!(store.contains(&d));
    assert_eq!(store.size(&d), Some(data.len() as u64));
    assert_eq!(
        store.path(&d),
        tmp.path().join("blobs/sha256").join(d.hex())
    );
    assert_eq!(fs::read(store.path(&d)).unwrap(), data);
    assert_eq!(store.read_all(&d, 1 << 20).unwrap(), data);
    assert_eq!(store.list().unwrap(), vec![(d, data.len() as u64)]);
    assert!(ingest_is_empty(tmp.path()));
}

#[test]
fn a_wrong_digest_leaves_nothing() {
    let (tmp, store) = store();
    let claimed = Digest::of(b"what the registry announced");
    let mut w = store.writer(&claimed, 5).unwrap();
    w.write_all(b"other").unwrap();
    match w.commit() {
        Err(ContentError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, Digest::of(b"other"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!store.contains(&claimed));
    assert!(!store.contains(&Digest::of(b"other")));
    assert!(store.list().unwrap().is_empty());
    assert!(ingest_is_empty(tmp.path()));
}

#[test]
fn a_wrong_size_leaves_nothing() {
    let (tmp, store) = store();
    let data = b"0123456789";
    let d = Digest::of(data);

    let mut w = store.writer(&d, 10).unwrap();
    w.write_all(&data[..9]).unwrap();
    assert!(matches!(
        w.commit(),
        Err(ContentError::SizeMismatch {
            expected: 10,
            actual: 9,
            ..
        })
    ));

    let mut w = store.writer(&d, 9).unwrap();
    let e = w.write_all(data).unwrap_err();
    let inner = e.get_ref().and_then(|e| e.downcast_ref::<ContentError>());
    assert!(
        matches!(inner, Some(ContentError::TooLarge { limit: 9, .. })),
        "{e}"
    );
    assert!(matches!(w.commit(), Err(ContentError::TooLarge { .. })));

    // Even when the digest is right for the bytes, a blob announced smaller is refused.
    let tee = TeeReader::new(&data[..], store.writer(&d, 4).unwrap());
    assert!(matches!(tee.finish(), Err(ContentError::TooLarge { .. })));

    assert!(!store.contains(&d));
    assert!(ingest_is_empty(tmp.path()));
}

#[test]
fn dropping_a_writer_leaves_nothing() {
    let (tmp, store) = store();
    let d = Digest::of(b"abc");
    let mut w = store.writer(&d, 3).unwrap();
    w.write_all(b"ab").unwrap();
    assert!(!ingest_is_empty(tmp.path()));
    drop(w);
    assert!(ingest_is_empty(tmp.path()));
    assert!(!store.contains(&d));
}

#[test]
fn leftovers_of_a_crash_are_removed_at_open() {
    let (tmp, store) = store();
    let kept = Digest::of(b"kept");
    store.put(&kept, b"kept").unwrap();
    let mut w = store.writer(&Digest::of(b"half"), 4).unwrap();
    w.write_all(b"ha").unwrap();
    std::mem::forget(w); // as a crash would leave it
    fs::create_dir_all(tmp.path().join("ingest/odd/dir")).unwrap();
    std::os::unix::fs::symlink("/etc", tmp.path().join("ingest/odd/link")).unwrap();
    assert!(!ingest_is_empty(tmp.path()));

    let store = ContentStore::open(tmp.path()).unwrap();
    assert!(ingest_is_empty(tmp.path()));
    assert!(Path::new("/etc/passwd").exists());
    assert_eq!(store.list().unwrap(), vec![(kept, 4)]);
}

#[test]
fn put_verifies_and_delete_forgets() {
    let (_tmp, store) = store();
    let d = Digest::of(b"config");
    assert!(matches!(
        store.put(&d, b"not config"),
        Err(ContentError::DigestMismatch { .. })
    ));
    assert!(!store.contains(&d));
    store.put(&d, b"config").unwrap();
    assert!(matches!(
        store.read_all(&d, 3),
        Err(ContentError::TooLarge { .. })
    ));
    store.delete(&d).unwrap();
    store.delete(&d).unwrap();
    assert!(matches!(
        store.read_all(&d, 100),
        Err(ContentError::NotFound(_))
    ));
}

fn layer() -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(15);
    b.append_data(&mut h, "etc/motd", &b"welcome aboard\n"[..])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(100_000);
    b.append_data(&mut h, "bin/tool", &vec![0x7f; 100_000][..])
        .unwrap();
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (tar, gz.finish().unwrap())
}

#[test]
fn a_layer_is_stored_and_unpacked_in_one_pass() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root (unpack sets owners); CI runs it as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let content = ContentStore::open(tmp.path()).unwrap();
    let snapshots = SnapshotStore::open(tmp.path()).unwrap();
    let (tar, gz) = layer();
    let blob = Digest::of(&gz);
    let diff_id = Digest::of(&tar);

    let prepared = snapshots.prepare().unwrap();
    let mut tee = TeeReader::new(&gz[..], content.writer(&blob, gz.len() as u64).unwrap());
    let stats = unpack_layer(&mut tee, Compression::Gzip, prepared.path()).unwrap();
    assert_eq!(tee.written(), gz.len() as u64, "unpack read the whole blob");
    tee.finish().unwrap();
    assert_eq!(stats.diff_id, diff_id);
    assert_eq!(stats.size, 15 + 100_000);
    prepared.commit(&diff_id).unwrap();

    assert_eq!(content.read_all(&blob, 1 << 20).unwrap(), gz);
    assert_eq!(
        fs::read(snapshots.path(&diff_id).join("etc/motd")).unwrap(),
        b"welcome aboard\n"
    );
    assert!(ingest_is_empty(tmp.path()));

    // A stream that does not match its digest stores nothing, even though it unpacked.
    let wrong = Digest::of(b"something else");
    let prepared = snapshots.prepare().unwrap();
    let mut tee = TeeReader::new(&gz[..], content.writer(&wrong, gz.len() as u64).unwrap());
    unpack_layer(&mut tee, Compression::Gzip, prepared.path()).unwrap();
    assert!(matches!(
        tee.finish(),
        Err(ContentError::DigestMismatch { .. })
    ));
    drop(prepared);
    assert!(!content.contains(&wrong));
    assert!(ingest_is_empty(tmp.path()));
    assert_eq!(
        fs::read_dir(tmp.path().join("snapshots-ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn finish_reads_what_the_consumer_left() {
    let (tmp, store) = store();
    let data = vec![42u8; 200_000];
    let d = Digest::of(&data);
    let mut tee = TeeReader::new(&data[..], store.writer(&d, data.len() as u64).unwrap());
    let mut head = [0u8; 1000];
    tee.read_exact(&mut head).unwrap();
    tee.finish().unwrap();
    assert_eq!(store.size(&d), Some(200_000));
    assert!(ingest_is_empty(tmp.path()));
}

#[test]
fn concurrent_writers_of_one_blob_both_succeed() {
    let (tmp, store) = store();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::of(&data);
    let data = Arc::new(data);
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, data, barrier, d) =
                (store.clone(), data.clone(), barrier.clone(), d.clone());
            std::thread::spawn(move || {
                let mut w = store.writer(&d, data.len() as u64).unwrap();
                barrier.wait();
                for chunk in data.chunks(4096) {
                    w.write_all(chunk).unwrap();
                }
                w.commit()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(store.list().unwrap(), vec![(d.clone(), data.len() as u64)]);
    assert_eq!(fs::read(store.path(&d)).unwrap(), *data);
    assert!(ingest_is_empty(tmp.path()));
}
