//! Tests of snapshot restore on real files: the log it builds, concurrent and
//! interrupted restores, and damaged files refused before anything changes.

use bytes::Bytes;

use super::*;

/// A snapshot file of `entries` at position 3.40, as `save` writes it.
fn snapshot_file(dir: &Path, entries: &[(&str, &str)]) -> PathBuf {
    let mut bytes = MAGIC.to_vec();
    bytes.extend(header_bytes(Version::new(3, 40)));
    let mut digest = Digest::default();
    for (i, (key, value)) in entries.iter().enumerate() {
        let version = Version::new(3, 10 + i as u64);
        digest.add(key.as_bytes(), version, value.as_bytes());
        frame::encode(
            version,
            key.as_bytes(),
            value.as_bytes(),
            None,
            false,
            &mut bytes,
        );
    }
    bytes.extend(trailer_bytes(digest));
    let path = dir.join("test.snap");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn replayed(dir: &Path) -> Vec<(Bytes, Bytes, Version)> {
    let mut reader = wal::LogReader::open(dir).unwrap();
    let mut out = Vec::new();
    reader
        .poll(|r, _| out.push((r.key.clone(), r.value.clone(), r.version)))
        .unwrap();
    out
}

#[test]
fn a_restored_log_holds_every_entry_as_epoch_one() {
    let work = tempfile::tempdir().unwrap();
    let big = "x".repeat(3 * READ_CHUNK);
    let file = snapshot_file(work.path(), &[("a", "1"), ("b", &big), ("c", "")]);
    let summary = read(&file, |_| {}).unwrap();
    assert_eq!((summary.keys, summary.position), (3, Version::new(3, 40)));
    let dir = work.path().join("log");
    let Restored::Built(built) = restore(&file, &dir, false).unwrap() else {
        panic!("an empty directory is restored into");
    };
    assert_eq!(built, summary);
    let log = replayed(&dir);
    let keys: Vec<_> = log.iter().map(|(k, _, v)| (k.clone(), *v)).collect();
    assert_eq!(
        keys,
        vec![
            (Bytes::from("a"), Version::new(1, 1)),
            (Bytes::from("b"), Version::new(1, 2)),
            (Bytes::from("c"), Version::new(1, 3)),
        ]
    );
    assert_eq!(log[1].1.len(), big.len());
    check_not_restoring(&dir).unwrap();
    let again = restore(&file, &dir, false).unwrap_err().to_string();
    assert!(again.contains("already holds a log"), "{again}");
    assert_eq!(restore(&file, &dir, true).unwrap(), Restored::AlreadyHeld);
}

/// Two init containers restoring into one volume at once: one builds
/// the log, the other finds it; the log holds each entry once.
#[test]
fn concurrent_restores_build_the_log_once() {
    let work = tempfile::tempdir().unwrap();
    let entries: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("k{i:04}"), format!("v{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let file = snapshot_file(work.path(), &refs);
    let dir = work.path().join("log");
    let outcomes: Vec<Restored> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| restore(&file, &dir, true).unwrap()))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let built = outcomes
        .iter()
        .filter(|o| matches!(o, Restored::Built(_)))
        .count();
    assert_eq!(built, 1, "{outcomes:?}");
    assert_eq!(replayed(&dir).len(), 2000);
}

/// A restore that died midway leaves its mark: no master starts on the
/// directory, and the next restore starts over.
#[test]
fn an_unfinished_restore_is_refused_then_redone() {
    let work = tempfile::tempdir().unwrap();
    let file = snapshot_file(work.path(), &[("a", "1"), ("b", "2")]);
    let dir = work.path().join("log");
    std::fs::create_dir_all(&dir).unwrap();
    // What a crash after the segment was written leaves.
    std::fs::write(dir.join(RESTORING_FILE), b"").unwrap();
    let segment = wal::segment_path(&dir, wal::segment_no(1, 1).unwrap());
    std::fs::write(&segment, b"half a segment").unwrap();
    let refused = check_not_restoring(&dir).unwrap_err().to_string();
    assert!(refused.contains("did not finish"), "{refused}");
    assert!(matches!(
        restore(&file, &dir, true).unwrap(),
        Restored::Built(_)
    ));
    check_not_restoring(&dir).unwrap();
    assert_eq!(replayed(&dir).len(), 2);
}

#[test]
fn damaged_files_are_refused_by_name_and_nothing_is_restored() {
    let work = tempfile::tempdir().unwrap();
    let file = snapshot_file(work.path(), &[("a", "1"), ("b", "2")]);
    let good = std::fs::read(&file).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not a DSM snapshot", b"hello".to_vec()),
        ("cut short", good[..good.len() - 25].to_vec()),
        ("damaged trailer", [&good[..], b"extra"].concat()),
        ("checksum", {
            let mut bad = good.clone();
            let at = bad.len() - 3;
            bad[at] ^= 1;
            bad
        }),
    ];
    for (want, bytes) in cases {
        let path = work.path().join("bad.snap");
        std::fs::write(&path, &bytes).unwrap();
        let error = read(&path, |_| {}).unwrap_err().to_string();
        assert!(error.contains(want), "{want}: {error}");
        assert!(error.contains("bad.snap"), "{error}");
        let dir = work.path().join("log-from-bad");
        assert!(restore(&path, &dir, false).is_err());
        check_not_restoring(&dir).unwrap();
        assert!(!holds_log(&dir).unwrap(), "{want}: something was restored");
    }
}
