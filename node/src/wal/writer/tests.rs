//! Tests of the log writer alone: group commit under one fsync, a failed
//! writer that stops acknowledging, size limits, the epoch line, segment roll
//! and fencing. Tests of the whole log (writer, reader, epochs, compaction
//! together) are in `wal/tests.rs`.

use super::*;
use crate::commit_window::DEFAULT_COMMIT_WINDOW;
use crate::wal::LogReader;

fn setup(segment_bytes: u64, hooks: Hooks) -> (tempfile::TempDir, Arc<LogWriter>) {
    let dir = tempfile::tempdir().unwrap();
    EpochHistory::record_cut(dir.path(), 1, 1).unwrap();
    let w = LogWriter::open_with(dir.path(), 1, 1, segment_bytes, Duration::ZERO, hooks).unwrap();
    (dir, Arc::new(w))
}

/// Group commit: appends that queue while the thread is busy are written
/// together and covered by one fdatasync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[expect(
    clippy::await_holding_lock,
    reason = "the gate stops the writer's std thread, not a task; holding it while the appends queue is the point"
)]
async fn group_commit_one_fsync_covers_waiting_appends() {
    let gate = Arc::new(std::sync::Mutex::new(()));
    let hooks = Hooks {
        gate: Some(gate.clone()),
        ..Hooks::default()
    };
    let (dir, w) = setup(u64::MAX, hooks);
    let held = gate.lock().unwrap();
    const N: usize = 64;
    let mut tasks = Vec::new();
    for i in 0..N {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            w.append(
                Bytes::from(format!("k{i}")),
                Bytes::from(vec![i as u8; i]),
                None,
            )
            .await
        }));
    }
    // The thread took one request and waits at the gate; wait until the
    // other N-1 are queued behind it (no timing: just until it is true).
    while w.tx.max_capacity() - w.tx.capacity() < N - 1 {
        tokio::task::yield_now().await;
    }
    drop(held);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap());
    }
    assert_eq!(w.stats().fsyncs, 1, "all {N} appends in one batch");
    assert_eq!(w.stats().records, N as u64);
    assert_eq!(w.last_seq(), N as u64);

    // Seqs are contiguous and follow file order; positions are where they say.
    results.sort_by_key(|(_, pos)| *pos);
    let seqs: Vec<u64> = results.iter().map(|(v, _)| v.seq).collect();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    let mut reader = LogReader::open(dir.path()).unwrap();
    let mut replayed = Vec::new();
    reader
        .poll(|r, pos| replayed.push((r.version, pos)))
        .unwrap();
    assert_eq!(replayed, results);
}

/// Persist before acknowledge: after a failed write, nothing more is acknowledged.
#[tokio::test]
async fn failed_writer_stops_acknowledging() {
    let hooks = Hooks::default();
    let fail = hooks.fail_writes.clone();
    let (_dir, w) = setup(u64::MAX, hooks);
    w.append(Bytes::from_static(b"a"), Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    fail.store(true, Ordering::SeqCst);
    let err = w
        .append(Bytes::from_static(b"b"), Bytes::from_static(b"2"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, WalError::WriterFailed { .. }), "{err}");
    // Even once the disk "recovers", the writer never pretends again.
    fail.store(false, Ordering::SeqCst);
    let err = w
        .append(Bytes::from_static(b"c"), Bytes::from_static(b"3"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected write failure"), "{err}");
    assert_eq!(w.last_seq(), 1);
}

/// Once a newer epoch is claimed in `terms/` (a successor is about to read
/// the log), nothing is reported durable any more: a record written before
/// the claim was seen stays in the file, but is not acknowledged.
#[tokio::test]
async fn a_newer_claim_stops_reporting_durable() {
    let (dir, w) = setup(u64::MAX, Hooks::default());
    let (first, _) = w
        .append(Bytes::from_static(b"a"), Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    std::fs::write(
        dir.path()
            .join(crate::wal::TERMS_DIR)
            .join("00000000000000000002.claim"),
        b"successor",
    )
    .unwrap();
    let appended = w
        .write(
            Bytes::from_static(b"b"),
            Some(Bytes::from_static(b"2")),
            None,
        )
        .await
        .expect("written: the claim is only looked for after the fsync");
    assert_eq!(appended.version, Version::new(1, 2));
    let err = appended.durable().await.unwrap_err();
    assert!(
        matches!(err, WalError::Fenced { epoch: 1, newer: 2 }),
        "{err}"
    );
    let err = w
        .append(Bytes::from_static(b"c"), Bytes::from_static(b"3"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, WalError::Fenced { .. }), "{err}");
    assert_eq!(w.last_seq(), first.seq, "only the first is durable");
    let mut reader = LogReader::open(dir.path()).unwrap();
    let mut found = Vec::new();
    reader.poll(|r, _| found.push(r.version)).unwrap();
    assert_eq!(found, vec![first, Version::new(1, 2)], "b was written");
}

#[tokio::test]
async fn too_large_is_refused_without_harm() {
    let (_dir, w) = setup(u64::MAX, Hooks::default());
    let huge = Bytes::from(vec![0u8; MAX_RECORD_BYTES as usize]);
    let err = w
        .append(Bytes::from_static(b"k"), huge, None)
        .await
        .unwrap_err();
    assert!(matches!(err, WalError::TooLarge { .. }));
    let (v, _) = w
        .append(Bytes::from_static(b"k"), Bytes::new(), None)
        .await
        .unwrap();
    assert_eq!(v, Version::new(1, 1));
}

#[tokio::test]
async fn open_requires_the_epoch_line_first() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        LogWriter::open(dir.path(), 1, 1, 1 << 20, DEFAULT_COMMIT_WINDOW),
        Err(WalError::EpochMismatch { latest: None, .. })
    ));
    EpochHistory::record_cut(dir.path(), 1, 1).unwrap();
    assert!(matches!(
        LogWriter::open(dir.path(), 2, 1, 1 << 20, DEFAULT_COMMIT_WINDOW),
        Err(WalError::EpochMismatch { .. })
    ));
}

#[tokio::test]
async fn rolls_segments_and_stops_when_fenced() {
    let (dir, w) = setup(200, Hooks::default());
    let mut positions = Vec::new();
    for i in 0..30u32 {
        let (v, pos) = w
            .append(
                Bytes::from(format!("key{i}")),
                Bytes::from(vec![b'x'; 40]),
                None,
            )
            .await
            .unwrap();
        assert_eq!(v.seq, u64::from(i) + 1);
        positions.push(pos);
    }
    let files: std::collections::BTreeSet<u64> = positions.iter().map(|p| p.file_no).collect();
    assert!(files.len() > 3, "{files:?}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let mut reader = LogReader::open(dir.path()).unwrap();
    let mut replayed = Vec::new();
    reader.poll(|_, pos| replayed.push(pos)).unwrap();
    assert_eq!(replayed, positions);

    // A successor takes over; the old writer stops at its next fsync (or
    // roll, whichever comes first).
    EpochHistory::record_cut(dir.path(), 2, 31).unwrap();
    let mut fenced = None;
    for _ in 0..10 {
        if let Err(e) = w
            .append(
                Bytes::from_static(b"late"),
                Bytes::from(vec![b'x'; 100]),
                None,
            )
            .await
        {
            fenced = Some(e);
            break;
        }
    }
    assert!(
        matches!(fenced, Some(WalError::Fenced { epoch: 1, newer: 2 })),
        "{fenced:?}"
    );
}
