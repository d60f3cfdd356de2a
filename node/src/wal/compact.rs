//! Compaction: rewrites the segments below the live one into one, keeping what
//! the caller's rule keeps, while the writer keeps appending to the live segment
//! and readers keep following.
//!
//! One compaction at a time per log directory, across processes: the whole run
//! holds an exclusive `flock` on `compact.lock` (a second one is refused with
//! [`WalError::CompactionRunning`], never waits), and the temporary file is
//! created with `create_new`, so two runs can never write into one file.
//!
//! Crash safety: the new file is written as `kv_store.{first}.log.tmp`, synced,
//! renamed over the first of the segments it replaces, and the directory synced
//! *before* the other ones are deleted. A crash in between leaves the compacted
//! file followed by some original segments; their records are either seen (seq
//! not above what the compacted file delivered, so readers skip them) or still
//! current, so a replay yields the same latest version per key. The caller's
//! term is checked again right before the rename and before the deletes, so a
//! master that was deposed during the rewrite changes nothing (and what its rule
//! could still have got wrong is bounded by the rule's contract, below).
//!
//! Readers do not lose their place: see the `reader` module doc.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::epochs::Fence;
use super::frame::{self, MAGIC};
use super::segment::{Next, Segment};
use super::{LogPos, Origin, Record, Result, SegmentNo, WalError, list_segments, sync_dir};
use crate::version::Version;

/// File locked for the whole of a compaction.
pub const COMPACT_LOCK_FILE: &str = "compact.lock";
/// File where compactions record how far they dropped records (see
/// [`Dropped`]).
pub const DROPPED_FILE: &str = "compacted";

/// How far compactions have dropped records, over the log's whole life: a
/// reader that has delivered every record up to a seq at or above these
/// missed nothing that matters when its segments are replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Highest seq of any record dropped (superseded or purged).
    pub any: u64,
    /// Highest seq of a tombstone dropped (the key then vanishes from the
    /// log: a reader that never saw the tombstone would keep an older value).
    pub tombstone: u64,
}

impl Dropped {
    /// Reads the marks of `dir` (zero when no compaction dropped anything).
    pub fn load(dir: &Path) -> Result<Dropped> {
        let path = dir.join(DROPPED_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Dropped::default()),
            Err(e) => return Err(WalError::io(&path, e)),
        };
        let mut numbers = text.split_ascii_whitespace().map(str::parse::<u64>);
        match (numbers.next(), numbers.next()) {
            (Some(Ok(any)), Some(Ok(tombstone))) => Ok(Dropped { any, tombstone }),
            _ => Err(WalError::BadEpochs {
                path,
                line: 1,
                reason: format!("expected `ANY TOMBSTONE` (two numbers), found {text:?}"),
            }),
        }
    }

    /// Raises the marks of `dir` to at least `self`, durably.
    fn record(self, dir: &Path) -> Result<()> {
        let old = Dropped::load(dir)?;
        let new = Dropped {
            any: old.any.max(self.any),
            tombstone: old.tombstone.max(self.tombstone),
        };
        if new == old {
            return Ok(());
        }
        let path = dir.join(DROPPED_FILE);
        let tmp = dir.join(format!("{DROPPED_FILE}.tmp"));
        let io_err = |e| WalError::io(&tmp, e);
        let mut file = std::fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(format!("{} {}\n", new.any, new.tombstone).as_bytes())
            .map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        std::fs::rename(&tmp, &path).map_err(|e| WalError::io(&path, e))?;
        sync_dir(dir)
    }
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Segments in the log when compaction started.
    pub segments_before: usize,
    /// Segments once it finished (unchanged when there was nothing to compact).
    pub segments_after: usize,
    /// Bytes of the segments it rewrote, before.
    pub bytes_before: u64,
    /// Bytes of the segment that replaced them.
    pub bytes_after: u64,
    /// Valid records read from the rewritten segments (late writes of deposed
    /// masters excluded).
    pub records_read: u64,
    /// Records written to the compacted segment.
    pub records_kept: u64,
    /// Every kept record and its new position, in log order, so the caller
    /// can update its index (only where the index still holds that version).
    pub moved: Vec<Moved>,
    /// Tombstones dropped, with their versions: the log holds nothing of
    /// these keys any more unless a newer record follows.
    pub purged: Vec<(Bytes, Version)>,
}

/// A record compaction kept, and where it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    /// The record's key.
    pub key: Bytes,
    /// Its version.
    pub version: Version,
    /// The client WRITE it is, if numbered.
    pub origin: Option<Origin>,
    /// Its new position.
    pub pos: LogPos,
}

/// The directory's compaction lock: while it is held, no compaction runs on
/// the log (in any process), so records stay where they are. Released when
/// dropped.
#[derive(Debug)]
pub struct CompactionLock {
    _file: std::fs::File,
}

impl CompactionLock {
    /// Takes the lock without waiting; [`WalError::CompactionRunning`] when a
    /// compaction (or another holder) has it.
    pub fn try_take(dir: &Path) -> Result<CompactionLock> {
        let path = dir.join(COMPACT_LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WalError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(CompactionLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(WalError::CompactionRunning { path }),
            Err(std::fs::TryLockError::Error(e)) => Err(WalError::io(&path, e)),
        }
    }
}

/// Number of segments numbered below `live`: what [`compact`] would rewrite.
/// For deciding when to compact.
pub fn sealed_segments(dir: &Path, live: SegmentNo) -> Result<usize> {
    Ok(list_segments(dir)?
        .iter()
        .filter(|(no, _)| *no < live)
        .count())
}

/// Rewrites every segment of `dir` numbered below `live` (the segment the
/// caller's writer appends to) into one.
///
/// A record is kept iff it is valid per the epoch history and `keep(record)`
/// returns true. `keep` may return false only when a newer version of the key is
/// in the log *for good*: written by a master that reached its write quorum (or
/// read by a later master's takeover). A newer version that merely exists in the
/// log might still be invalidated by a takeover that did not see it; dropping
/// the older record for it could lose the latest acknowledged value. It may also
/// return false for a tombstone that is itself in the log for good: every older
/// record of its key is below the live segment too, so it goes in the same
/// compaction (the tombstones dropped are listed in [`CompactStats::purged`]).
///
/// `still_current` is called right before the rename and before the deletes;
/// an error from it (the caller's term is over) stops the compaction there.
///
/// Runs beside a live [`LogWriter`](super::LogWriter) and live
/// [`LogReader`](super::LogReader)s. A compaction already running on the
/// directory (in any process) makes this fail at once with
/// [`WalError::CompactionRunning`]. A torn tail in a rewritten segment is dropped
/// with a warning; corruption fails with [`WalError::Corrupt`] and changes nothing.
pub fn compact(
    dir: &Path,
    live: SegmentNo,
    keep: impl Fn(&Record) -> bool,
    still_current: impl Fn() -> Result<()>,
) -> Result<CompactStats> {
    let lock = CompactionLock::try_take(dir)?;
    // The lock is released when `lock` is dropped, at the end of this call.
    let segments = list_segments(dir)?;
    let sealed: Vec<(SegmentNo, PathBuf)> = segments
        .iter()
        .filter(|(no, _)| *no < live)
        .cloned()
        .collect();
    if sealed.is_empty() {
        return Ok(CompactStats {
            segments_before: segments.len(),
            segments_after: segments.len(),
            ..CompactStats::default()
        });
    }
    let tmp = {
        let mut name = sealed[0].1.clone().into_os_string();
        name.push(".tmp");
        PathBuf::from(name)
    };
    // Only a crashed compaction leaves one, and no other can be running.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(WalError::io(&tmp, e)),
    }
    let result = rewrite(dir, segments.len(), &sealed, &tmp, keep, still_current);
    if result.is_err() {
        // Best effort: a stale .tmp is ignored by readers and removed next time.
        let _ = std::fs::remove_file(&tmp);
    }
    drop(lock);
    result
}

fn rewrite(
    dir: &Path,
    segments_before: usize,
    sealed: &[(SegmentNo, PathBuf)],
    tmp: &Path,
    keep: impl Fn(&Record) -> bool,
    still_current: impl Fn() -> Result<()>,
) -> Result<CompactStats> {
    let (first_no, first_path) = &sealed[0];
    let tmp_err = |e| WalError::io(tmp, e);
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(tmp_err)?;
    let mut out = BufWriter::new(created);
    out.write_all(MAGIC).map_err(tmp_err)?;
    let mut fence = Fence::load(dir)?;
    let mut stats = CompactStats {
        segments_before,
        segments_after: segments_before - sealed.len() + 1,
        ..CompactStats::default()
    };
    // Where kept records were, in case nothing needs rewriting.
    let mut old_positions = Vec::new();
    let mut offset = MAGIC.len() as u64;
    let mut last_seq: Option<u64> = None;
    // Whether the rewrite would differ from a single sealed segment as it is.
    let mut changed = false;
    let mut dropped = Dropped::default();
    let mut buf = Vec::new();
    for (no, path) in sealed {
        let mut seg = Segment::open(*no, path.clone()).map_err(|e| WalError::io(path, e))?;
        stats.bytes_before += seg_len(path)?;
        loop {
            match seg.next(true)? {
                Next::Record(record, pos) => {
                    let (valid, _) = fence.check(record.version)?;
                    if !valid {
                        changed = true;
                        continue;
                    }
                    // A crashed compaction can leave records twice; the first copy wins.
                    if last_seq.is_some_and(|l| record.version.seq <= l) {
                        changed = true;
                        continue;
                    }
                    last_seq = Some(record.version.seq);
                    stats.records_read += 1;
                    if !keep(&record) {
                        dropped.any = dropped.any.max(record.version.seq);
                        if record.tombstone {
                            dropped.tombstone = dropped.tombstone.max(record.version.seq);
                            stats.purged.push((record.key, record.version));
                        }
                        changed = true;
                        continue;
                    }
                    buf.clear();
                    frame::encode(
                        record.version,
                        &record.key,
                        &record.value,
                        record.origin,
                        record.tombstone,
                        &mut buf,
                    );
                    out.write_all(&buf).map_err(tmp_err)?;
                    stats.moved.push(Moved {
                        key: record.key,
                        version: record.version,
                        origin: record.origin,
                        pos: LogPos {
                            file_no: *first_no,
                            offset,
                        },
                    });
                    old_positions.push(pos);
                    offset += buf.len() as u64;
                }
                Next::End => break,
                Next::Torn {
                    offset: at,
                    len,
                    reason,
                } => {
                    tracing::warn!(
                        path = %path.display(),
                        offset = at,
                        bytes = len,
                        %reason,
                        "compaction drops the torn tail of a sealed log segment"
                    );
                    changed = true;
                    break;
                }
            }
        }
    }
    stats.records_kept = stats.moved.len() as u64;
    let file = out.into_inner().map_err(|e| tmp_err(e.into_error()))?;

    if sealed.len() == 1 && !changed {
        // Already compact: leave the file (and readers positioned in it) alone.
        drop(file);
        std::fs::remove_file(tmp).map_err(tmp_err)?;
        for (entry, pos) in stats.moved.iter_mut().zip(old_positions) {
            entry.pos = pos;
        }
        stats.bytes_after = stats.bytes_before;
        stats.segments_after = stats.segments_before;
        return Ok(stats);
    }

    file.sync_all().map_err(tmp_err)?;
    drop(file);
    stats.bytes_after = offset;
    still_current()?;
    // Recorded before any record disappears, so that a reader that finds its
    // segments replaced also finds how far records went.
    dropped.record(dir)?;
    std::fs::rename(tmp, first_path).map_err(tmp_err)?;
    // The rename must be durable before the originals go, or a crash could
    // lose both.
    sync_dir(dir)?;
    still_current()?;
    for (_, path) in &sealed[1..] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalError::io(path, e)),
        }
    }
    sync_dir(dir)?;
    tracing::info!(
        segments_before = stats.segments_before,
        records_read = stats.records_read,
        records_kept = stats.records_kept,
        bytes_before = stats.bytes_before,
        bytes_after = stats.bytes_after,
        "compacted the write-ahead log"
    );
    Ok(stats)
}

fn seg_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| WalError::io(path, e))
}
