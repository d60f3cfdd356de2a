//! Tests of the slave store on real files in temporary directories:
//! version order, persist-then-acknowledge (across reopen, `kill -9` and a
//! torn tail, a full volume, a failed sync), fencing, compaction, inventory
//! scans and closing. The invariants in the module documentation name the
//! tests here that check them.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Faults injected into the writer thread ([`Shared`]'s `faults`), as a
/// dying disk would cause them.
#[derive(Default)]
pub(super) struct Faults {
    /// How many of the next batch syncs fail, after their frames were
    /// written.
    failing_syncs: AtomicU32,
    /// Whether cutting a failed batch off the file fails too.
    failing_cut: AtomicBool,
    /// Whether a compaction's copy, once it read its first chunk of the
    /// index, waits there.
    holding_compaction: AtomicBool,
    /// Compaction copies that read their first chunk.
    copies_started: AtomicU32,
    /// Whether a compaction's copy, once it caught up with the writer,
    /// waits before it reports.
    holding_report: AtomicBool,
    /// Compaction copies that caught up with the writer.
    copies_caught_up: AtomicU32,
    /// Compactions that replaced the file.
    compactions: AtomicU32,
}

impl Faults {
    /// Called before a batch's sync: fails it if one is due to fail.
    pub(super) fn sync(&self, path: &Path) -> Result<(), StoreError> {
        let due = self
            .failing_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if due {
            return Err(error::io_err("fsync", path)(
                std::io::Error::from_raw_os_error(nix::libc::EIO),
            ));
        }
        Ok(())
    }

    /// Called by a compaction's copy thread once it read its first chunk:
    /// waits while the test holds compactions (or until the copy is
    /// cancelled).
    pub(super) fn hold_compaction(&self, cancel: &AtomicBool) {
        self.copies_started.fetch_add(1, Ordering::SeqCst);
        while self.holding_compaction.load(Ordering::SeqCst) && !cancel.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Called by a compaction's copy thread once it caught up with the
    /// writer: waits while the test holds reports (or until the copy is
    /// cancelled).
    pub(super) fn hold_report(&self, cancel: &AtomicBool) {
        self.copies_caught_up.fetch_add(1, Ordering::SeqCst);
        while self.holding_report.load(Ordering::SeqCst) && !cancel.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Called when a compaction replaced the file.
    pub(super) fn compacted(&self) {
        self.compactions.fetch_add(1, Ordering::SeqCst);
    }

    /// Called before a failed batch is cut off the file: fails the cut
    /// (which then does not happen) when one is due to fail.
    pub(super) fn cut(&self) -> std::io::Result<()> {
        if self.failing_cut.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EIO));
        }
        Ok(())
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn open(dir: &Path) -> Store {
    Store::open(dir, "slave-0").expect("open store")
}

#[tokio::test]
async fn put_get_round_trip_with_arbitrary_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let key = Bytes::from_static(b"k \n\0\xff");
    let value: Bytes = (0..=255u8).collect::<Vec<_>>().into();
    assert!(
        store
            .put(key.clone(), value.clone(), Version::new(1, 1), false)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&key).unwrap(), Some((value, Version::new(1, 1))));
    assert!(
        store
            .put(b(""), b(""), Version::new(1, 2), false)
            .await
            .unwrap()
    );
    assert_eq!(store.get(b"").unwrap(), Some((b(""), Version::new(1, 2))));
    assert_eq!(store.get(b"missing").unwrap(), None);
    assert_eq!(store.len().unwrap(), 2);
}

#[tokio::test]
async fn older_version_never_replaces_newer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(
        store
            .put(b("k"), b("new"), Version::new(2, 1), false)
            .await
            .unwrap()
    );
    // Higher seq but older epoch: still older.
    assert!(
        !store
            .put(b("k"), b("old"), Version::new(1, 99), false)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(b("k"), b("old"), Version::new(2, 0), false)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(b"k").unwrap(),
        Some((b("new"), Version::new(2, 1)))
    );
    assert!(
        store
            .put(b("k"), b("newer"), Version::new(2, 2), false)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(b"k").unwrap(),
        Some((b("newer"), Version::new(2, 2)))
    );
}

#[tokio::test]
async fn equal_version_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(
        store
            .put(b("k"), b("a"), Version::new(1, 1), false)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put(b("k"), b("b"), Version::new(1, 1), false)
            .await
            .unwrap()
    );
    assert_eq!(store.get(b"k").unwrap(), Some((b("a"), Version::new(1, 1))));
}

#[tokio::test]
async fn force_replaces_newer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(
        store
            .put(b("k"), b("bogus"), Version::new(3, 9), false)
            .await
            .unwrap()
    );
    assert!(
        store
            .put(b("k"), b("fixed"), Version::new(3, 5), true)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(b"k").unwrap(),
        Some((b("fixed"), Version::new(3, 5)))
    );
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(
        store
            .put(b("k"), b("v"), Version::new(1, 7), false)
            .await
            .unwrap()
    );
    store.close().await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.get(b"k").unwrap(), Some((b("v"), Version::new(1, 7))));
}

#[tokio::test]
async fn raise_epoch_persists() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.epoch(), 0);
    assert_eq!(store.raise_epoch(5).await.unwrap(), 5);
    // Never lowered.
    assert_eq!(store.raise_epoch(3).await.unwrap(), 5);
    assert_eq!(store.epoch(), 5);
    store.close().await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.epoch(), 5);
}

#[tokio::test]
async fn fenced_put_rejects_older_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let put = |epoch, value: &str, seq| {
        store.put_fenced(
            epoch,
            b("k"),
            Some(b(value)),
            Version::new(epoch, seq),
            false,
        )
    };
    assert_eq!(put(2, "a", 1).await.unwrap(), PutOutcome::Stored);
    // A newer master's put raises the fenced epoch as it applies.
    assert_eq!(store.epoch(), 2);
    assert_eq!(
        put(1, "stale", 9).await.unwrap(),
        PutOutcome::StaleEpoch { fenced: 2 }
    );
    assert_eq!(
        put(2, "same", 1).await.unwrap(),
        PutOutcome::Superseded {
            current: Version::new(2, 1)
        }
    );
    assert_eq!(store.get(b"k").unwrap(), Some((b("a"), Version::new(2, 1))));
}

/// A READ of a deposed master is refused once a fence is committed, and a
/// newer master's READ raises the fence before it is served.
#[tokio::test]
async fn fenced_get_sees_the_fence_of_its_own_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(
        store
            .put(b("k"), b("v"), Version::new(1, 1), false)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_fenced(1, b"k").await.unwrap(),
        Ok(Some(Held {
            version: Version::new(1, 1),
            value: Some(b("v"))
        }))
    );
    assert_eq!(store.get_fenced(3, b"nope").await.unwrap(), Ok(None));
    assert_eq!(store.epoch(), 3, "a newer master's read fences older ones");
    assert_eq!(store.get_fenced(2, b"k").await.unwrap(), Err(3));
    store.close().await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.get_fenced(2, b"k").await.unwrap(), Err(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let tasks: Vec<_> = (0..500u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = Bytes::from(format!("key-{i}"));
                let value = Bytes::from(format!("value-{i}"));
                store.put(key, value, Version::new(1, i), false).await
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap());
    }
    store.close().await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.len().unwrap(), 500);
    for i in 0..500u64 {
        let got = store.get(format!("key-{i}").as_bytes()).unwrap();
        assert_eq!(
            got,
            Some((Bytes::from(format!("value-{i}")), Version::new(1, i)))
        );
    }
}

/// Environment variable telling [`crash_child`] where to write.
const CRASH_DIR: &str = "DSM_SLAVE_CRASH_DIR";

/// Persist-before-ack across `kill -9`: a child process puts keys from
/// several tasks and prints each acknowledgement; the parent SIGKILLs it
/// mid-stream, reopens the directory and finds every acknowledged key.
#[test]
fn acknowledged_puts_survive_kill_9() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "slave::store::tests::crash_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CRASH_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(key) = line.strip_prefix("acked ")
                && tx.send(key.to_string()).is_err()
            {
                return;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 300 {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(key) => acked.push(key),
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "child stopped acknowledging after {} puts: {e}",
                    acked.len()
                );
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acks printed between the last read and the kill count too.
    acked.extend(rx.try_iter());

    let store = Store::open(dir.path(), "crash").unwrap();
    for key in &acked {
        assert!(
            store.get(key.as_bytes()).unwrap().is_some(),
            "acknowledged key {key} lost by kill -9"
        );
    }
}

/// The process [`acknowledged_puts_survive_kill_9`] kills; does nothing
/// when run on its own.
#[test]
#[ignore = "child process of acknowledged_puts_survive_kill_9"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store = Store::open(&dir, "crash").unwrap();
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    // Bounded: the parent kills us long before the end.
                    for i in 0..20_000u64 {
                        let key = format!("w{w}-{i}");
                        let version = Version::new(1, w * 1_000_000 + i);
                        store
                            .put(Bytes::from(key.clone()), b("v"), version, false)
                            .await
                            .unwrap();
                        println!("acked {key}");
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
}

#[tokio::test]
async fn wrong_id_on_reopen_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.close().await.unwrap();
    drop(store);
    let err = Store::open(dir.path(), "slave-1").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::WrongOwner { .. }), "{msg}");
    assert!(msg.contains("slave-0") && msg.contains("slave-1"), "{msg}");
}

#[tokio::test]
async fn inventory_scans_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..25u64 {
        store
            .put(
                Bytes::from(format!("k{i:02}")),
                b("v"),
                Version::new(1, i),
                false,
            )
            .await
            .unwrap();
    }
    let chunks: Vec<_> = store.inventory(10).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        chunks.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let all: Vec<_> = chunks.into_iter().flatten().collect();
    for (i, (k, v, deleted)) in all.iter().enumerate() {
        assert_eq!(k, &Bytes::from(format!("k{i:02}")));
        assert_eq!(*v, Version::new(1, i as u64));
        assert!(!deleted);
    }
}

#[tokio::test]
async fn closed_store_refuses_writes_but_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(
        store
            .put(b("k"), b("v"), Version::new(1, 1), false)
            .await
            .unwrap()
    );
    store.close().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.put(b("k"), b("w"), Version::new(1, 2), false).await,
        Err(StoreError::Closed)
    ));
    assert!(store.get(b"k").unwrap().is_some());
}

/// Writes keys `k0..k{n}` at `version`, values `v{i}`.
async fn put_all(store: &Store, n: u64, version: u64) {
    for i in 0..n {
        let stored = store
            .put(
                Bytes::from(format!("k{i}")),
                Bytes::from(format!("v{i}@{version}")),
                Version::new(1, version * 1000 + i),
                false,
            )
            .await
            .unwrap();
        assert!(stored);
    }
}

fn file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(file::FILE)).unwrap().len()
}

/// A crash mid-append leaves a torn batch at the end of the file (here a
/// half-written frame, or zeros where the file grew but its data did not
/// reach the disk): reopening cuts it off and keeps everything before it.
/// A bad frame with valid frames after it is damage, not a torn write, and
/// the store refuses to open rather than drop what follows.
#[tokio::test]
async fn a_torn_tail_is_cut_and_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    put_all(&store, 10, 1).await;
    store.close().await.unwrap();
    drop(store);
    // Opening cuts the zeros the writer filled ahead: the file then ends
    // with its last frame.
    open(dir.path()).close().await.unwrap();
    let good = file_len(dir.path());
    let bytes = std::fs::read(dir.path().join(file::FILE)).unwrap();
    assert_ne!(bytes.last(), Some(&0), "the file ends with zeros");

    let mut frame = Vec::new();
    record::encode_put(
        b"torn",
        Version::new(1, 9999),
        Some(b"never acked"),
        &mut frame,
    );
    for tail in [frame[..frame.len() - 3].to_vec(), vec![0u8; 4096]] {
        let mut bytes = std::fs::read(dir.path().join(file::FILE)).unwrap();
        bytes.truncate(good as usize);
        bytes.extend_from_slice(&tail);
        std::fs::write(dir.path().join(file::FILE), &bytes).unwrap();

        let store = open(dir.path());
        assert_eq!(store.len().unwrap(), 10);
        assert_eq!(store.get(b"torn").unwrap(), None);
        assert_eq!(file_len(dir.path()), good, "the torn tail is cut off");
        // Writes continue where the valid part ends.
        assert!(
            store
                .put(b("after"), b("x"), Version::new(1, 5000), false)
                .await
                .unwrap()
        );
        store.close().await.unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get(b"after").unwrap().unwrap().0, b("x"));
        assert_eq!(store.get(b"k9").unwrap().unwrap().0, b("v9@1"));
        store.close().await.unwrap();
        drop(store);
    }

    // Flip one byte inside the first put's value: its CRC fails, and valid
    // frames follow it.
    let mut bytes = std::fs::read(dir.path().join(file::FILE)).unwrap();
    let k0 = bytes.windows(4).position(|w| w == b"v0@1").unwrap();
    bytes[k0] ^= 0x55;
    std::fs::write(dir.path().join(file::FILE), &bytes).unwrap();
    let err = Store::open(dir.path(), "slave-0").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt(_)), "{msg}");
    assert!(msg.contains("a valid frame follows"), "{msg}");
    assert_eq!(
        std::fs::read(dir.path().join(file::FILE)).unwrap(),
        bytes,
        "a refused file is left as it was"
    );
}

/// Overwriting the same keys grows the file until it is mostly superseded;
/// the writer then rewrites it. Every key keeps its newest value and
/// version, tombstones and the fenced epoch survive, the file shrinks, and
/// all of it is still there after a reopen.
#[tokio::test]
async fn compaction_keeps_every_newest_value() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_compactions();
    let store = Store::open_with(dir.path(), "slave-0", options).unwrap();
    store.raise_epoch(3).await.unwrap();
    for round in 1..=20 {
        put_all(&store, 50, round).await;
    }
    store
        .put_fenced(3, b("k7"), None, Version::new(3, 1), false)
        .await
        .unwrap();
    wait_until(|| store.inner.shared.faults.compactions.load(Ordering::SeqCst) >= 1).await;
    let check = |store: &Store| {
        assert_eq!(store.epoch(), 3);
        assert_eq!(store.len().unwrap(), 50);
        for i in (0..50u64).filter(|&i| i != 7) {
            let (value, version) = store.get(format!("k{i}").as_bytes()).unwrap().unwrap();
            assert_eq!(value, Bytes::from(format!("v{i}@20")));
            assert_eq!(version, Version::new(1, 20_000 + i));
        }
        assert_eq!(store.get(b"k7").unwrap(), None);
        let chunk = store.inventory_chunk(Some(b"k69"), 1).unwrap();
        assert_eq!(chunk, vec![(b("k7"), Version::new(3, 1), true)]);
    };
    check_compacted(store, dir.path(), options, check).await;
}

#[tokio::test]
async fn a_second_open_of_a_directory_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = Store::open(dir.path(), "slave-0").unwrap_err();
    assert!(matches!(err, StoreError::InUse(_)), "{err}");
    store.close().await.unwrap();
    drop(store);
    open(dir.path());
}

/// A put too large for one frame is refused with the limit, before anything
/// is written, so it can never be acknowledged and then dropped by replay;
/// the store keeps working.
#[tokio::test]
async fn a_put_larger_than_a_frame_is_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let huge = Bytes::from(vec![7u8; crate::wal::frame::MAX_RECORD_BYTES as usize]);
    let err = store
        .put(b("big"), huge, Version::new(1, 1), false)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{msg}");
    assert!(msg.contains("larger than the store's limit of"), "{msg}");
    assert!(
        store
            .put(b("small"), b("v"), Version::new(1, 2), false)
            .await
            .unwrap()
    );
    store.close().await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.get(b"big").unwrap(), None);
    assert_eq!(store.get(b"small").unwrap().unwrap().0, b("v"));
}

/// Directory of [`full_volume_child`], set by its parent.
const FULL_DIR: &str = "DSM_SLAVE_FULL_DIR";

/// A full volume (here the file size limit at one byte, so every write of
/// the store fails with EFBIG): the put is refused with an error naming the
/// file and the cause, nothing of it is kept, and once space returns puts
/// resume without a restart. After a reopen, every acknowledged put is
/// there and the refused one is not. Runs in a child process, since the
/// limit applies to the whole process.
#[test]
fn a_full_volume_fails_puts_clearly_and_loses_nothing() {
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "slave::store::tests::full_volume_child",
            "--ignored",
            "--nocapture",
        ])
        .env(FULL_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed:\n{stdout}");
    let refused = stdout
        .lines()
        .find_map(|l| l.strip_prefix("refused: "))
        .unwrap_or_else(|| panic!("the put on a full volume was not refused:\n{stdout}"));
    assert!(refused.contains("File too large"), "{refused}");
    assert!(refused.contains(file::FILE), "{refused}");
    let acked: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .collect();
    assert_eq!(acked.len(), 40, "{stdout}");

    let store = open(dir.path());
    for key in &acked {
        assert!(
            store.get(key.as_bytes()).unwrap().is_some(),
            "acknowledged key {key} lost"
        );
    }
    assert_eq!(store.get(b"refused").unwrap(), None);
}

/// The process [`a_full_volume_fails_puts_clearly_and_loses_nothing`]
/// runs; does nothing when run on its own.
#[test]
#[ignore = "child process of a_full_volume_fails_puts_clearly_and_loses_nothing"]
fn full_volume_child() {
    use nix::sys::signal::{SigHandler, Signal, signal};

    let Some(dir) = std::env::var_os(FULL_DIR) else {
        return;
    };
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.unwrap();
    let set_limit = |soft: u64| {
        let mut limit = nix::libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write one valid rlimit.
        unsafe {
            assert_eq!(nix::libc::getrlimit(nix::libc::RLIMIT_FSIZE, &mut limit), 0);
            limit.rlim_cur = soft.min(limit.rlim_max);
            assert_eq!(nix::libc::setrlimit(nix::libc::RLIMIT_FSIZE, &limit), 0);
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store = Store::open(&dir, "slave-0").unwrap();
        let put = |key: String, seq: u64| {
            let store = store.clone();
            async move {
                store
                    .put(Bytes::from(key), b("value"), Version::new(1, seq), false)
                    .await
            }
        };
        for i in 0..20 {
            put(format!("before-{i}"), i).await.unwrap();
            println!("acked before-{i}");
        }
        set_limit(1);
        match put("refused".into(), 100).await {
            Ok(_) => println!("stored on a full volume"),
            Err(e) => println!("refused: {e}"),
        }
        set_limit(nix::libc::RLIM_INFINITY);
        for i in 0..20 {
            put(format!("after-{i}"), 200 + i).await.unwrap();
            println!("acked after-{i}");
        }
        store.close().await.unwrap();
    });
}

/// A batch whose sync fails (injected after its frames were written, as a
/// dying disk fails an `fdatasync`) is refused with the cause, is cut off the
/// file and never shown to readers; the next put is stored without a
/// restart, and a reopen finds the puts before and after it, not it.
#[tokio::test]
async fn a_failed_sync_refuses_its_batch_and_cuts_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    put_all(&store, 3, 1).await;
    store
        .inner
        .shared
        .faults
        .failing_syncs
        .store(1, Ordering::SeqCst);
    let err = store
        .put(b("refused"), b("lost"), Version::new(1, 5000), false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fsync"), "{err}");
    assert!(err.to_string().contains(file::FILE), "{err}");
    assert_eq!(store.get(b"refused").unwrap(), None);
    // Cut back to the last synced frame: the refused frame is gone from
    // the file, not merely hidden by the index.
    assert!(
        !std::fs::read(dir.path().join(file::FILE))
            .unwrap()
            .windows(b"refused".len())
            .any(|w| w == b"refused"),
        "the refused frame is still in the file"
    );
    assert!(
        store
            .put(b("after"), b("kept"), Version::new(1, 5001), false)
            .await
            .unwrap()
    );
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.get(b"refused").unwrap(), None);
    assert_eq!(
        store.get(b"after").unwrap(),
        Some((b("kept"), Version::new(1, 5001)))
    );
    for i in 0..3 {
        assert!(store.get(format!("k{i}").as_bytes()).unwrap().is_some());
    }
}

/// When the failed batch cannot be cut off either, the file holds frames
/// past what the index knows: the writer refuses every later put, saying
/// why and that the slave must restart, instead of appending after them.
/// A reopen replays what is on disk and takes puts again, and nothing
/// acknowledged before the failure is lost. The refused put's frames are
/// still in the file, so the reopened store holds it: a version no one was
/// told is stored, which the master treats as a stray (it is not in its
/// index at that version).
#[tokio::test]
async fn a_failed_cut_back_stops_the_writer_until_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    put_all(&store, 3, 1).await;
    let faults = &store.inner.shared.faults;
    faults.failing_syncs.store(1, Ordering::SeqCst);
    faults.failing_cut.store(true, Ordering::SeqCst);
    assert!(
        store
            .put(b("refused"), b("x"), Version::new(1, 5000), false)
            .await
            .is_err()
    );
    faults.failing_cut.store(false, Ordering::SeqCst);
    let err = store
        .put(b("later"), b("y"), Version::new(1, 5001), false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("restart the slave"), "{err}");
    assert!(
        err.to_string().contains("cannot cut the file back"),
        "{err}"
    );
    assert_eq!(store.get(b"later").unwrap(), None);
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path());
    for i in 0..3 {
        assert!(store.get(format!("k{i}").as_bytes()).unwrap().is_some());
    }
    assert_eq!(
        store.get(b"refused").unwrap(),
        Some((b("x"), Version::new(1, 5000)))
    );
    assert_eq!(store.get(b"later").unwrap(), None);
    assert!(
        store
            .put(b("later"), b("y"), Version::new(1, 5001), false)
            .await
            .unwrap()
    );
}

/// Options under which a test's small file compacts.
fn small_compactions() -> StoreOptions {
    StoreOptions {
        compaction_min_bytes: 16 << 10,
        ..StoreOptions::default()
    }
}

/// Opens a store in `dir` whose compactions' copies wait after their first
/// chunk, and writes rounds of `put_all` until one waits there; returns the
/// store and the last round written.
async fn hold_a_compaction(dir: &Path, options: StoreOptions) -> (Store, u64) {
    let store = Store::open_with(dir, "slave-0", options).unwrap();
    let faults = &store.inner.shared.faults;
    faults.holding_compaction.store(true, Ordering::SeqCst);
    let mut round = 0;
    while faults.copies_started.load(Ordering::SeqCst) == 0 {
        round += 1;
        assert!(round < 500, "no compaction started");
        put_all(&store, 50, round).await;
        tokio::task::yield_now().await;
    }
    (store, round)
}

/// Runs `check` on `store`, asserts that the frames of `put_all`'s first
/// round are gone from its file, then closes it and runs `check` again on
/// the reopened store.
async fn check_compacted(store: Store, dir: &Path, options: StoreOptions, check: impl Fn(&Store)) {
    check(&store);
    let bytes = std::fs::read(dir.join(file::FILE)).unwrap();
    // The first round's values ("v5@1", not "v5@12").
    let copies = bytes
        .windows(5)
        .filter(|w| &w[..4] == b"v5@1" && !w[4].is_ascii_digit())
        .count();
    assert_eq!(copies, 0, "superseded frames are still in the file");
    store.close().await.unwrap();
    drop(store);
    let store = Store::open_with(dir, "slave-0", options).unwrap();
    check(&store);
}

/// Waits (at most a minute: a bound, not a timing check) until `done`.
async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..60_000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("gave up waiting");
}

/// A compaction copies beside the writer. While its copy is held after its
/// first chunk of the index, the writer acknowledges overwrites of keys the
/// copy has passed and of keys ahead of it, new keys on both sides, a
/// tombstone on each side, a forced put of an older version and an epoch
/// raise; the copy then catches up with them, and while it is held again
/// before it reports, more puts are acknowledged (the last piece, which the
/// writer adds itself). Once it completes, every key has its newest state,
/// the frames superseded before the copy are gone from the file, and all of
/// it is there after a reopen.
#[tokio::test]
async fn puts_go_on_while_a_compaction_copies() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_compactions();
    let (store, round) = hold_a_compaction(dir.path(), options).await;
    let faults = &store.inner.shared.faults;
    // The copy has read k0 … k22 (16 keys in key order) and waits: the
    // writer goes on meanwhile.
    let last = round + 1;
    put_all(&store, 40, last).await;
    let put = |key: String, value: &'static str, version: Version, force: bool| {
        let store = store.clone();
        async move {
            store
                .put_fenced(1, Bytes::from(key), Some(b(value)), version, force)
                .await
                .unwrap()
        }
    };
    for i in 0..5u64 {
        for prefix in ["a", "z"] {
            let stored = put(
                format!("{prefix}{i}"),
                "fresh",
                Version::new(1, 900_000 + i),
                false,
            );
            assert_eq!(stored.await, PutOutcome::Stored);
        }
    }
    for key in ["k1", "k45"] {
        let deleted = store
            .put_fenced(1, b(key), None, Version::new(1, 990_000), false)
            .await
            .unwrap();
        assert_eq!(deleted, PutOutcome::Stored);
    }
    // A repair's forced put of an older version of k47.
    assert_eq!(
        put("k47".into(), "older", Version::new(1, 1), true).await,
        PutOutcome::Stored
    );
    store.raise_epoch(4).await.unwrap();
    faults.holding_report.store(true, Ordering::SeqCst);
    faults.holding_compaction.store(false, Ordering::SeqCst);
    wait_until(|| faults.copies_caught_up.load(Ordering::SeqCst) >= 1).await;
    for i in 0..5u64 {
        let key = Bytes::from(format!("m{i}"));
        let stored = store.put(key, b("last"), Version::new(4, 1 + i), false);
        assert!(stored.await.unwrap());
    }
    assert_eq!(faults.compactions.load(Ordering::SeqCst), 0);
    faults.holding_report.store(false, Ordering::SeqCst);
    wait_until(|| faults.compactions.load(Ordering::SeqCst) >= 1).await;

    let check = |store: &Store| {
        assert_eq!(store.epoch(), 4);
        for i in 0..50u64 {
            let found = store.get(format!("k{i}").as_bytes()).unwrap();
            let expected = match i {
                1 | 45 => None,
                47 => Some((b("older"), Version::new(1, 1))),
                0..40 => Some((
                    Bytes::from(format!("v{i}@{last}")),
                    Version::new(1, last * 1000 + i),
                )),
                _ => Some((
                    Bytes::from(format!("v{i}@{round}")),
                    Version::new(1, round * 1000 + i),
                )),
            };
            assert_eq!(found, expected, "k{i}");
        }
        for i in 0..5u64 {
            for prefix in ["a", "z"] {
                let found = store.get(format!("{prefix}{i}").as_bytes()).unwrap();
                assert_eq!(found, Some((b("fresh"), Version::new(1, 900_000 + i))));
            }
            let found = store.get(format!("m{i}").as_bytes()).unwrap();
            assert_eq!(found, Some((b("last"), Version::new(4, 1 + i))));
        }
    };
    check_compacted(store, dir.path(), options, check).await;
}

/// A store closed while a compaction copies stops the copy and removes its
/// file; the directory reopens with everything acknowledged, and compacts
/// later.
#[tokio::test]
async fn closing_during_a_compaction_stops_it_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_compactions();
    let (store, round) = hold_a_compaction(dir.path(), options).await;
    store.close().await.unwrap();
    drop(store);
    assert!(
        !dir.path().join(file::NEW_FILE).exists(),
        "the copy's file is left"
    );

    let store = Store::open_with(dir.path(), "slave-0", options).unwrap();
    for i in 0..50u64 {
        let (value, _) = store.get(format!("k{i}").as_bytes()).unwrap().unwrap();
        assert_eq!(value, Bytes::from(format!("v{i}@{round}")));
    }
    put_all(&store, 50, round + 1).await;
    wait_until(|| store.inner.shared.faults.compactions.load(Ordering::SeqCst) >= 1).await;
}
