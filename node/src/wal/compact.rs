//! Compaction: rewrites the sealed segments into one, keeping the latest valid
//! record per key, while the writer keeps appending to the newest segment and
//! readers keep following.
//!
//! Crash safety: the new file is written as `kv_store.{first:08}.log.tmp`, synced,
//! renamed over the first sealed segment, and the directory synced *before* the
//! other sealed segments are deleted. A crash in between leaves the compacted file
//! followed by some original segments; their records are either seen (seq not
//! above what the compacted file delivered, so readers skip them) or still current,
//! so a replay yields the same latest version per key.
//!
//! Readers do not lose their place: see the `reader` module doc.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::epochs::Fence;
use super::frame::{self, MAGIC};
use super::segment::{Next, Segment};
use super::{LogPos, Result, WalError, list_segments, sync_dir};
use crate::version::Version;

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Segments in the log when compaction started (the sealed ones and the newest).
    pub segments_before: usize,
    /// Segments once it finished: the compacted one and the newest (unchanged
    /// when there was nothing to compact).
    pub segments_after: usize,
    /// Bytes of the sealed segments before.
    pub bytes_before: u64,
    /// Bytes of the segment that replaced them.
    pub bytes_after: u64,
    /// Valid records read from the sealed segments (late writes of deposed
    /// masters excluded).
    pub records_read: u64,
    /// Records written to the compacted segment.
    pub records_kept: u64,
    /// Every kept record's key, version and new position, in log order, so the
    /// caller can update its index (only where the index still holds that version).
    pub moved: Vec<(Bytes, Version, LogPos)>,
}

/// Number of sealed segments (all but the newest): what [`compact`] would
/// rewrite. For deciding when to compact.
pub fn sealed_segments(dir: &Path) -> Result<usize> {
    Ok(list_segments(dir)?.len().saturating_sub(1))
}

/// Rewrites all sealed segments (every segment but the newest) of `dir` into one.
///
/// A record is kept iff it is valid per the epoch history and `keep(key, version)`
/// returns true. `keep` must return false only when a newer version of the key is
/// known to be in the log (e.g. `index.get(key).is_none_or(|latest| version >= latest)`):
/// a record written and synced but not yet in the caller's index must be kept.
///
/// Runs beside a live [`LogWriter`](super::LogWriter) (which only appends to the
/// newest segment) and live [`LogReader`](super::LogReader)s. Only one compaction
/// may run at a time per directory. A torn tail in a sealed segment is dropped with
/// a warning; corruption fails with [`WalError::Corrupt`] and changes nothing.
pub fn compact(dir: &Path, keep: impl Fn(&[u8], Version) -> bool) -> Result<CompactStats> {
    let segments = list_segments(dir)?;
    let sealed = match segments.split_last() {
        Some((_newest, sealed)) if !sealed.is_empty() => sealed,
        _ => {
            return Ok(CompactStats {
                segments_before: segments.len(),
                segments_after: segments.len(),
                ..CompactStats::default()
            });
        }
    };
    let first_no = sealed[0].0;
    let tmp = dir.join(format!("kv_store.{first_no:08}.log.tmp"));
    let result = rewrite(dir, sealed, &tmp, keep);
    if result.is_err() {
        // Best effort: a stale .tmp is ignored by readers and overwritten next time.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn rewrite(
    dir: &Path,
    sealed: &[(u32, PathBuf)],
    tmp: &Path,
    keep: impl Fn(&[u8], Version) -> bool,
) -> Result<CompactStats> {
    let (first_no, first_path) = &sealed[0];
    let tmp_err = |e| WalError::io(tmp, e);
    let mut out = BufWriter::new(File::create(tmp).map_err(tmp_err)?);
    out.write_all(MAGIC).map_err(tmp_err)?;
    let mut fence = Fence::load(dir)?;
    let mut stats = CompactStats {
        segments_before: sealed.len() + 1,
        segments_after: 2,
        ..CompactStats::default()
    };
    // Where kept records were, in case nothing needs rewriting.
    let mut old_positions = Vec::new();
    let mut offset = MAGIC.len() as u64;
    let mut last_seq: Option<u64> = None;
    // Whether the rewrite would differ from a single sealed segment as it is.
    let mut changed = false;
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
                    if !keep(&record.key, record.version) {
                        changed = true;
                        continue;
                    }
                    buf.clear();
                    frame::encode(record.version, &record.key, &record.value, &mut buf);
                    out.write_all(&buf).map_err(tmp_err)?;
                    stats.moved.push((
                        record.key,
                        record.version,
                        LogPos {
                            file_no: *first_no,
                            offset,
                        },
                    ));
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
            entry.2 = pos;
        }
        stats.bytes_after = stats.bytes_before;
        stats.segments_after = stats.segments_before;
        return Ok(stats);
    }

    file.sync_all().map_err(tmp_err)?;
    drop(file);
    stats.bytes_after = offset;
    std::fs::rename(tmp, first_path).map_err(tmp_err)?;
    // The rename must be durable before the originals go, or a crash could
    // lose both.
    sync_dir(dir)?;
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
