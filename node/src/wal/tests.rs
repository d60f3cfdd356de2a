//! Tests of the log as a whole: writer, reader, epochs and compaction together,
//! on real files in temporary directories.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::commit_window::DEFAULT_COMMIT_WINDOW;

type Map = HashMap<Bytes, (Version, Bytes)>;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Applies a record the way a follower does: latest version per key wins.
fn apply(map: &mut Map, r: &Record) {
    let e = map
        .entry(r.key.clone())
        .or_insert((r.version, r.value.clone()));
    if r.version >= e.0 {
        *e = (r.version, r.value.clone());
    }
}

/// A fresh replay of the whole log.
fn replay(dir: &Path) -> Vec<(Record, LogPos)> {
    let mut reader = LogReader::open(dir).unwrap();
    let mut out = Vec::new();
    reader.poll(|r, pos| out.push((r.clone(), pos))).unwrap();
    out
}

fn replay_map(dir: &Path) -> Map {
    let mut map = Map::new();
    for (r, _) in replay(dir) {
        apply(&mut map, &r);
    }
    map
}

/// Compacts every segment below the newest (no term to check): what the
/// master's compaction does with its writer's live segment.
fn compact_sealed(dir: &Path, keep: impl Fn(&Record) -> bool) -> Result<CompactStats> {
    let live = list_segments(dir)?.last().map_or(0, |(no, _)| *no);
    compact(dir, live, keep, || Ok(()))
}

fn new_log(epoch: u64, segment_bytes: u64) -> (tempfile::TempDir, LogWriter) {
    let dir = tempfile::tempdir().unwrap();
    EpochHistory::record_cut(dir.path(), epoch, 1).unwrap();
    let w = LogWriter::open(dir.path(), epoch, 1, segment_bytes, DEFAULT_COMMIT_WINDOW).unwrap();
    (dir, w)
}

/// Takes over as the next master: epoch line first, then the writer.
fn take_over(dir: &Path, epoch: u64, segment_bytes: u64) -> LogWriter {
    let first_seq = {
        let mut reader = LogReader::open(dir).unwrap();
        reader.poll(|_, _| {}).unwrap();
        reader.last_seq() + 1
    };
    EpochHistory::record_cut(dir, epoch, first_seq).unwrap();
    LogWriter::open(dir, epoch, first_seq, segment_bytes, DEFAULT_COMMIT_WINDOW).unwrap()
}

#[tokio::test]
async fn round_trips_arbitrary_bytes_through_files() {
    let (dir, w) = new_log(1, 1 << 20);
    let cases: Vec<(Bytes, Bytes)> = vec![
        (b("plain"), b("value")),
        (b("key with spaces"), b("WRITE x y\nsecond line\r\n")),
        (
            Bytes::from_static(b"\xff\x00\xfe"),
            Bytes::from_static(b"\x80\x00\xc3"),
        ),
        (b("empty value"), Bytes::new()),
        (
            Bytes::from(vec![b'k'; 1024]),
            Bytes::from(vec![7u8; 1 << 20]),
        ),
    ];
    let mut acked = Vec::new();
    for (k, v) in &cases {
        acked.push(w.append(k.clone(), v.clone(), None).await.unwrap());
    }
    let got = replay(dir.path());
    assert_eq!(got.len(), cases.len());
    for (((r, pos), (k, v)), (version, apos)) in got.iter().zip(&cases).zip(&acked) {
        assert_eq!((&r.key, &r.value), (k, v));
        assert_eq!((r.version, *pos), (*version, *apos));
        assert_eq!(&read_at(dir.path(), *pos).unwrap(), r);
    }
}

#[tokio::test]
async fn torn_tail_is_truncated_on_open() {
    // A file cut inside the last record, and a last record followed by zeros
    // (a crash after the size grew but before the data reached the disk).
    for damage in ["cut", "zeros"] {
        let (dir, w) = new_log(1, 1 << 20);
        let mut positions = Vec::new();
        for i in 0..5 {
            positions.push(
                w.append(b(&format!("k{i}")), b("value"), None)
                    .await
                    .unwrap()
                    .1,
            );
        }
        w.close().await;
        let path = segment_path(dir.path(), positions[4].file_no);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let good_len = if damage == "cut" {
            f.set_len(len - 3).unwrap();
            positions[4].offset // the cut record is lost
        } else {
            f.set_len(len + 100).unwrap();
            len // every record survives
        };
        drop(f);

        let w2 = take_over(dir.path(), 2, 1 << 20);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            good_len,
            "{damage}"
        );
        let (v, _) = w2.append(b("after"), b("x"), None).await.unwrap();
        let seqs: Vec<Version> = replay(dir.path()).iter().map(|(r, _)| r.version).collect();
        let survivors = if damage == "cut" { 4 } else { 5 };
        let mut expected: Vec<Version> = (1..=survivors).map(|s| Version::new(1, s)).collect();
        expected.push(Version::new(2, survivors + 1));
        assert_eq!(seqs, expected, "{damage}");
        assert_eq!(v, Version::new(2, survivors + 1));
    }
}

#[tokio::test]
async fn corrupt_middle_record_names_file_and_offset() {
    let (dir, w) = new_log(1, 1 << 20);
    let mut positions = Vec::new();
    for i in 0..5 {
        positions.push(
            w.append(b(&format!("k{i}")), b("value"), None)
                .await
                .unwrap()
                .1,
        );
    }
    w.close().await;
    let path = segment_path(dir.path(), positions[1].file_no);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = positions[1].offset as usize + 30; // inside the key/value of record 2
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();

    let mut reader = LogReader::open(dir.path()).unwrap();
    let mut delivered = 0;
    let err = reader.poll(|_, _| delivered += 1).unwrap_err();
    assert_eq!(delivered, 1, "only the record before the damage");
    match &err {
        WalError::Corrupt {
            path: p,
            offset,
            next_valid,
            ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(*offset, positions[1].offset);
            assert_eq!(*next_valid, positions[2].offset);
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("offset {}", positions[1].offset)),
        "{msg}"
    );
    assert!(msg.contains("repaired or restored"), "{msg}");
    // The reader stays before the damage.
    assert!(matches!(
        reader.poll(|_, _| {}),
        Err(WalError::Corrupt { .. })
    ));

    // A new writer refuses to start and does not truncate anything.
    EpochHistory::record_cut(dir.path(), 2, 2).unwrap();
    assert!(matches!(
        LogWriter::open(dir.path(), 2, 2, 1 << 20, DEFAULT_COMMIT_WINDOW),
        Err(WalError::Corrupt { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn older_segment_torn_tail_is_skipped_by_readers() {
    let (dir, w1) = new_log(1, 1 << 20);
    w1.append(b("a"), b("1"), None).await.unwrap();
    let w2 = take_over(dir.path(), 2, 1 << 20);
    // The old master crashes half-way through a write, after the new segment exists.
    let old = segment_path(dir.path(), segment_no(1, 1).unwrap());
    let mut f = std::fs::OpenOptions::new().append(true).open(&old).unwrap();
    std::io::Write::write_all(&mut f, &[40, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    w2.append(b("b"), b("2"), None).await.unwrap();
    let got: Vec<Version> = replay(dir.path()).iter().map(|(r, _)| r.version).collect();
    assert_eq!(got, vec![Version::new(1, 1), Version::new(2, 2)]);
    drop(w1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_follows_a_concurrent_writer() {
    const N: u64 = 500;
    let (dir, w) = new_log(1, 2_000);
    let writer = tokio::spawn(async move {
        for i in 0..N {
            w.append(b(&format!("k{}", i % 37)), b(&format!("v{i}")), None)
                .await
                .unwrap();
        }
        w
    });
    let mut reader = LogReader::open(dir.path()).unwrap();
    let mut got = Vec::new();
    while (got.len() as u64) < N {
        reader.poll(|r, _| got.push(r.clone())).unwrap();
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.version, Version::new(1, i as u64 + 1));
        assert_eq!(r.value, b(&format!("v{i}")));
    }
    assert_eq!(reader.last_seq(), N);
    assert_eq!(reader.poll(|_, _| {}).unwrap(), 0);
}

/// Epoch fencing: records of an old epoch at or past a newer epoch's cut (the
/// first seq that epoch writes) are ignored on replay.
#[tokio::test]
async fn stale_epoch_records_are_ignored_on_replay() {
    let (dir, w1) = new_log(1, 1 << 20);
    for i in 0..10 {
        w1.append(b(&format!("k{i}")), b("e1"), None).await.unwrap();
    }
    // A follower reads everything, including writes 6..10 that the new master
    // will not have seen.
    let mut early = LogReader::open(dir.path()).unwrap();
    assert_eq!(early.poll(|_, _| {}).unwrap(), 10);
    assert!(!early.invalidated());

    // The new master read the log when it ended at seq 5.
    EpochHistory::record_cut(dir.path(), 2, 6).unwrap();
    let w2 = LogWriter::open(dir.path(), 2, 6, 1 << 20, DEFAULT_COMMIT_WINDOW).unwrap();
    for i in 5..7 {
        w2.append(b(&format!("k{i}")), b("e2"), None).await.unwrap();
    }
    // The deposed master, still running, writes into its old segment (and
    // sees epoch 2 after the fsync: it does not report the record durable).
    let late = w1.write(b("k0"), Some(b("late")), None).await.unwrap();
    assert_eq!(late.version, Version::new(1, 11));
    assert!(matches!(
        late.durable().await,
        Err(WalError::Fenced { epoch: 1, newer: 2 })
    ));

    let got: Vec<(Version, Bytes)> = replay(dir.path())
        .into_iter()
        .map(|(r, _)| (r.version, r.value))
        .collect();
    let mut expected: Vec<(Version, Bytes)> =
        (1..=5).map(|s| (Version::new(1, s), b("e1"))).collect();
    expected.push((Version::new(2, 6), b("e2")));
    expected.push((Version::new(2, 7), b("e2")));
    assert_eq!(got, expected);

    // The early follower learns that what it applied was fenced off.
    let mut more = Vec::new();
    early.poll(|r, _| more.push(r.version)).unwrap();
    assert!(early.invalidated());
    assert!(
        more.is_empty(),
        "epoch 2's seqs 6,7 are not above 10: {more:?}"
    );

    // Compaction drops the fenced records too.
    let stats = compact_sealed(dir.path(), |_: &Record| true).unwrap();
    assert_eq!(stats.records_kept, 5);
    assert_eq!(replay(dir.path()).len(), 7);
}

#[tokio::test]
async fn compaction_keeps_latest_and_read_at_detects_moves() {
    // segment_bytes = 1: every append goes to a segment of its own.
    let (dir, w) = new_log(1, 1);
    let mut index: HashMap<Bytes, Version> = HashMap::new();
    let mut pos_of = HashMap::new();
    for (k, v) in [
        ("a", "1"),
        ("b", "22"),
        ("a", "333"),
        ("c", "4444"),
        ("b", "5"),
    ] {
        let (version, pos) = w.append(b(k), b(v), None).await.unwrap();
        index.insert(b(k), version);
        pos_of.insert(version.seq, pos);
        assert_eq!(read_at(dir.path(), pos).unwrap().version, version);
    }
    // The follower has read everything up to now.
    let mut follower = LogReader::open(dir.path()).unwrap();
    let mut fmap = Map::new();
    follower.poll(|r, _| apply(&mut fmap, r)).unwrap();
    w.append(b("d"), b("6"), None).await.unwrap();

    let stats = compact_sealed(dir.path(), |r: &Record| {
        index.get(&r.key).is_none_or(|l| r.version >= *l)
    })
    .unwrap();
    // Sealed: the empty first segment and records 1..5; record 6 is in the newest.
    assert_eq!(stats.records_read, 5);
    let kept: Vec<(Bytes, Version)> = stats
        .moved
        .iter()
        .map(|m| (m.key.clone(), m.version))
        .collect();
    assert_eq!(
        kept,
        vec![
            (b("a"), Version::new(1, 3)),
            (b("c"), Version::new(1, 4)),
            (b("b"), Version::new(1, 5))
        ]
    );
    for m in &stats.moved {
        let r = read_at(dir.path(), m.pos).unwrap();
        assert_eq!((&r.key, r.version), (&m.key, m.version));
    }
    // Old positions: deleted segments, or bytes that are no longer a record start.
    for seq in 1..=5 {
        match read_at(dir.path(), pos_of[&seq]) {
            Err(WalError::Moved { .. }) => {}
            Ok(r) => assert_ne!(r.version.seq, seq, "a position may now hold another record"),
            Err(e) => panic!("{e}"),
        }
    }
    let first = stats.moved[0].pos;
    let inside = LogPos {
        offset: first.offset + 1,
        ..first
    };
    assert!(matches!(
        read_at(dir.path(), inside),
        Err(WalError::Moved { .. })
    ));

    // The follower, whose segment was deleted under it, still converges.
    follower.poll(|r, _| apply(&mut fmap, r)).unwrap();
    assert_eq!(fmap, replay_map(dir.path()));
    assert_eq!(fmap.len(), 4);
}

/// A follower positioned in the first sealed segment, which compaction renames
/// a new file over, continues where it was.
#[tokio::test]
async fn follower_keeps_its_place_when_its_segment_is_replaced() {
    let (dir, w1) = new_log(1, 1 << 20);
    w1.append(b("a"), b("1"), None).await.unwrap();
    w1.append(b("b"), b("2"), None).await.unwrap();
    let mut follower = LogReader::open(dir.path()).unwrap();
    let mut fmap = Map::new();
    assert_eq!(follower.poll(|r, _| apply(&mut fmap, r)).unwrap(), 2);
    w1.close().await;
    let w2 = take_over(dir.path(), 2, 1 << 20);
    w2.append(b("a"), b("3"), None).await.unwrap();
    w2.append(b("c"), b("4"), None).await.unwrap();
    let stats = compact_sealed(dir.path(), |r: &Record| {
        !(r.key == b"a"[..] && r.version.seq == 1)
    })
    .unwrap();
    assert_eq!((stats.segments_before, stats.records_kept), (2, 1));

    let mut delivered = Vec::new();
    follower
        .poll(|r, _| {
            delivered.push(r.version.seq);
            apply(&mut fmap, r)
        })
        .unwrap();
    assert_eq!(
        delivered,
        vec![3, 4],
        "b@2 was seen before; not delivered again"
    );
    assert_eq!(fmap, replay_map(dir.path()));
}

/// A crash after the rename but before the other sealed segments are deleted
/// leaves duplicates; replay still yields the same latest version per key.
#[tokio::test]
async fn crash_during_compaction_leaves_a_replayable_log() {
    let (dir, w) = new_log(1, 1);
    let mut index: HashMap<Bytes, Version> = HashMap::new();
    for i in 0..12 {
        let k = b(&format!("k{}", i % 4));
        let (v, _) = w
            .append(k.clone(), b(&format!("v{i}")), None)
            .await
            .unwrap();
        index.insert(k, v);
    }
    let before = replay_map(dir.path());
    let segments = list_segments(dir.path()).unwrap();
    let (_, sealed) = segments.split_last().unwrap();
    let saved: Vec<_> = sealed[1..]
        .iter()
        .map(|(_, p)| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    compact_sealed(dir.path(), |r: &Record| {
        index.get(&r.key).is_none_or(|l| r.version >= *l)
    })
    .unwrap();
    for (p, bytes) in &saved {
        std::fs::write(p, bytes).unwrap();
    }
    assert_eq!(replay_map(dir.path()), before);
    let seqs: Vec<u64> = replay(dir.path())
        .iter()
        .map(|(r, _)| r.version.seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The next compaction cleans up.
    compact_sealed(dir.path(), |r: &Record| {
        index.get(&r.key).is_none_or(|l| r.version >= *l)
    })
    .unwrap();
    assert_eq!(replay_map(dir.path()), before);
    assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
}

/// Compaction under concurrent appends keeps exactly the latest valid record
/// per key, and a follower polling before, during and after compactions ends
/// with the same key -> version map as a fresh replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_converges_across_compactions() {
    let (dir, w) = new_log(1, 600);
    let w = Arc::new(w);
    let index: Arc<Mutex<HashMap<Bytes, Version>>> = Arc::default();
    let writes_done = Arc::new(AtomicBool::new(false));
    let compactions_done = Arc::new(AtomicBool::new(false));

    let compactor = {
        let (dir, index, stop) = (dir.path().to_path_buf(), index.clone(), writes_done.clone());
        tokio::task::spawn_blocking(move || {
            let keep = |r: &Record| {
                let index = index.lock().unwrap();
                index.get(&r.key).is_none_or(|l| r.version >= *l)
            };
            let mut rounds = 0;
            loop {
                let last = stop.load(Ordering::SeqCst);
                compact_sealed(&dir, keep).unwrap();
                rounds += 1;
                if last {
                    return rounds;
                }
            }
        })
    };
    let follower = {
        let (dir, done) = (dir.path().to_path_buf(), compactions_done.clone());
        tokio::task::spawn_blocking(move || {
            let mut reader = LogReader::open(&dir).unwrap();
            let mut map = Map::new();
            let mut last_seq = 0;
            loop {
                let last = done.load(Ordering::SeqCst);
                reader
                    .poll(|r, _| {
                        assert!(r.version.seq > last_seq, "seqs increase");
                        last_seq = r.version.seq;
                        apply(&mut map, r)
                    })
                    .unwrap();
                if last {
                    return map;
                }
                std::thread::yield_now();
            }
        })
    };
    let mut writers = Vec::new();
    for t in 0..4 {
        let (w, index) = (w.clone(), index.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                let key = b(&format!("key{}", (i * 7 + t) % 23));
                let (v, _) = w
                    .append(key.clone(), b(&format!("{t}-{i}")), None)
                    .await
                    .unwrap();
                let mut index = index.lock().unwrap();
                let latest = index.entry(key).or_insert(v);
                *latest = (*latest).max(v);
            }
        }));
    }
    for t in writers {
        t.await.unwrap();
    }
    writes_done.store(true, Ordering::SeqCst);
    let rounds = compactor.await.unwrap();
    compactions_done.store(true, Ordering::SeqCst);
    let follower_map = follower.await.unwrap();
    assert!(rounds >= 1);

    let fresh = replay_map(dir.path());
    assert_eq!(follower_map, fresh);
    let index = index.lock().unwrap();
    let fresh_versions: HashMap<Bytes, Version> =
        fresh.iter().map(|(k, (v, _))| (k.clone(), *v)).collect();
    assert_eq!(&fresh_versions, &*index);
    // After the last compaction, sealed segments hold only latest versions.
    let segments = list_segments(dir.path()).unwrap();
    let newest = segments.last().unwrap().0;
    for (r, pos) in replay(dir.path()) {
        if pos.file_no != newest {
            assert_eq!(index[&r.key], r.version, "superseded record survived");
        }
    }
}

/// Encodes records into a segment image (magic included) and returns each
/// frame's start offset.
fn segment_image(records: &[(Vec<u8>, Vec<u8>)]) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = MAGIC.to_vec();
    let mut starts = Vec::new();
    for (i, (k, v)) in records.iter().enumerate() {
        starts.push(bytes.len() as u64);
        frame::encode(Version::new(1, i as u64 + 1), k, v, None, false, &mut bytes);
    }
    (bytes, starts)
}

proptest! {
    // Fewer cases: compaction of a sealed segment fsyncs files and the directory.
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// No input file makes the reader, the writer's recovery or read_at panic.
    #[test]
    fn arbitrary_segment_bytes_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        with_magic in any::<bool>(),
        sealed in any::<bool>(),
        offsets in proptest::collection::vec(0u64..700, 4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = if with_magic { MAGIC.to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&body);
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        if sealed {
            std::fs::write(segment_path(dir.path(), 2), MAGIC).unwrap();
        }
        let mut reader = LogReader::open(dir.path()).unwrap();
        let _ = reader.poll(|_, _| {});
        for offset in offsets {
            let _ = read_at(dir.path(), LogPos { file_no: 1, offset });
        }
        let _ = writer::truncate_torn_tail(1, &segment_path(dir.path(), 1));
        let _ = compact_sealed(dir.path(), |_: &Record| true);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Replay delivers exactly the records before the first damaged one, and
    /// reports corruption (at that record) only if a valid record follows.
    #[test]
    fn replay_stops_at_the_first_bad_record(
        records in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..40)),
            1..8,
        ),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        truncate in any::<bool>(),
        sealed in any::<bool>(),
    ) {
        let (mut bytes, starts) = segment_image(&records);
        let p = MAGIC.len() + at.index(bytes.len() - MAGIC.len());
        if truncate {
            bytes.truncate(p);
        } else {
            bytes[p] ^= flip;
        }
        // First damaged frame: the one containing p (for a cut, the one cut).
        let first_bad = starts.iter().rposition(|&s| s <= p as u64).unwrap_or(0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        if sealed {
            std::fs::write(segment_path(dir.path(), 2), MAGIC).unwrap();
        }
        let mut reader = LogReader::open(dir.path()).unwrap();
        let mut got = Vec::new();
        let result = reader.poll(|r, _| got.push(r.version.seq));
        let expected: Vec<u64> = (1..=first_bad as u64).collect();
        prop_assert_eq!(&got, &expected);
        match result {
            Ok(_) => {}
            Err(WalError::Corrupt { offset, .. }) => {
                prop_assert!(!truncate, "a cut file has nothing valid after the cut");
                prop_assert!(first_bad + 1 < records.len(), "corrupt needs a later record");
                prop_assert_eq!(offset, starts[first_bad]);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }
}

/// One compaction at a time per log directory, across processes.
/// While another holds the lock, a compaction is refused and touches
/// nothing; a crashed compaction's temporary file is never written into.
#[tokio::test]
async fn a_second_compaction_is_refused_while_one_runs() {
    let (dir, w) = new_log(1, 1);
    for i in 0..6 {
        w.append(b(&format!("k{}", i % 2)), b(&format!("v{i}")), None)
            .await
            .unwrap();
    }
    let before: Vec<_> = list_segments(dir.path()).unwrap();
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.path().join(COMPACT_LOCK_FILE))
        .unwrap();
    held.lock().unwrap();
    match compact_sealed(dir.path(), |_: &Record| true) {
        Err(e @ WalError::CompactionRunning { .. }) => {
            assert!(e.to_string().contains("another compaction"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(list_segments(dir.path()).unwrap(), before);
    drop(held);
    // A crash left a temporary file behind: it is replaced, not appended to.
    let mut tmp = before[0].1.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, b"half a compaction").unwrap();
    let latest = replay_map(dir.path());
    compact_sealed(dir.path(), |_: &Record| true).unwrap();
    assert!(!std::path::Path::new(&tmp).exists());
    assert_eq!(replay_map(dir.path()), latest);
}

/// A compaction whose caller's term ends while it rewrites changes nothing.
#[tokio::test]
async fn a_compaction_whose_term_ended_changes_nothing() {
    let (dir, w) = new_log(1, 1);
    for i in 0..4 {
        w.append(b("k"), b(&format!("v{i}")), None).await.unwrap();
    }
    let before = list_segments(dir.path()).unwrap();
    let live = before.last().unwrap().0;
    let deposed = || Err(WalError::Deposed("epoch 2 was claimed".into()));
    let result = compact(dir.path(), live, |_: &Record| true, deposed);
    assert!(matches!(result, Err(WalError::Deposed(_))), "{result:?}");
    assert_eq!(list_segments(dir.path()).unwrap(), before);
    assert_eq!(replay(dir.path()).len(), 4);
}

/// A deposed master's roll that raced the takeover creates its next segment
/// after its successor's first one. Numbered under its own epoch, it sorts
/// below the successor's live segment: followers keep reading the live segment,
/// and compaction below it never touches it.
#[tokio::test]
async fn a_deposed_writers_roll_sorts_below_the_new_live_segment() {
    let (dir, w1) = new_log(1, 1 << 20);
    w1.append(b("a"), b("1"), None).await.unwrap();
    let w2 = take_over(dir.path(), 2, 1 << 20);
    w2.append(b("b"), b("2"), None).await.unwrap();
    let late = segment_path(dir.path(), segment_no(1, 2).unwrap());
    std::fs::write(&late, MAGIC).unwrap();
    let newest = list_segments(dir.path()).unwrap().last().unwrap().0;
    assert_eq!(
        newest,
        w2.live_segment(),
        "the live segment is still the newest"
    );

    let mut follower = LogReader::open(dir.path()).unwrap();
    let mut seen = Vec::new();
    follower.poll(|r, _| seen.push(r.version)).unwrap();
    let stats = compact(dir.path(), w2.live_segment(), |_: &Record| true, || Ok(())).unwrap();
    assert!(stats.segments_after < stats.segments_before);
    w2.append(b("c"), b("3"), None).await.unwrap();
    follower.poll(|r, _| seen.push(r.version)).unwrap();
    assert_eq!(
        seen,
        vec![Version::new(1, 1), Version::new(2, 2), Version::new(2, 3)],
        "the follower read every append of the live segment"
    );
    let live = segment_path(dir.path(), w2.live_segment());
    assert!(live.exists(), "compaction left the live segment alone");
    drop(w1);
}

/// On a volume with close-to-open consistency (NFS), appends made through
/// another client only become visible through a fresh open. Here the new
/// contents of a segment arrive as a new file at the same path, which an old
/// handle never sees; a takeover reopens before it reads the log's end.
#[tokio::test]
async fn a_reopened_reader_sees_what_its_old_handle_cannot() {
    let (dir, w) = new_log(1, 1 << 20);
    w.append(b("a"), b("1"), None).await.unwrap();
    w.append(b("b"), b("2"), None).await.unwrap();
    w.close().await;
    let mut reader = LogReader::open(dir.path()).unwrap();
    assert_eq!(reader.poll(|_, _| {}).unwrap(), 2);

    let path = segment_path(dir.path(), segment_no(1, 1).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    frame::encode(Version::new(1, 3), b"c", b"3", None, false, &mut bytes);
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, &bytes).unwrap();
    std::fs::rename(&fresh, &path).unwrap();

    assert_eq!(
        reader.poll(|_, _| {}).unwrap(),
        0,
        "the old handle is stale"
    );
    reader.reopen().unwrap();
    let mut more = Vec::new();
    reader.poll(|r, _| more.push(r.version)).unwrap();
    assert_eq!(more, vec![Version::new(1, 3)]);
}

/// A bounded poll hands out the log in pieces, across segment boundaries,
/// with nothing skipped or repeated.
#[tokio::test]
async fn bounded_polls_deliver_the_whole_log_in_pieces() {
    let (dir, w) = new_log(1, 256);
    for i in 0..50 {
        w.append(b(&format!("k{i}")), b("value"), None)
            .await
            .unwrap();
    }
    w.close().await;
    assert!(
        list_segments(dir.path()).unwrap().len() > 3,
        "several segments"
    );
    let mut reader = LogReader::open(dir.path()).unwrap();
    let mut seqs = Vec::new();
    loop {
        let n = reader
            .poll_at_most(7, |r, _| seqs.push(r.version.seq))
            .unwrap();
        assert!(n <= 7);
        if n == 0 {
            break;
        }
    }
    let all: Vec<u64> = replay(dir.path())
        .iter()
        .map(|(r, _)| r.version.seq)
        .collect();
    assert_eq!(seqs, all);
    assert_eq!(all.len(), 50);
}
