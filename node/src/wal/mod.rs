//! The write-ahead log (`kv_store.log`): the source of truth of every WRITE.
//!
//! The log lives in one directory, shared by the master and the backup master:
//!
//! - segments `kv_store.{epoch:08}.{n:08}.log`: the `n`-th segment created by the
//!   master of `epoch` (logs of older versions named `kv_store.{n:08}.log` read as
//!   epoch 0). Each opens with the magic [`MAGIC`] and holds length-prefixed,
//!   CRC-checked records (see `wal/frame.rs` for the byte layout). Segments are read in
//!   [`SegmentNo`] order, epoch first, so a segment a deposed master creates late
//!   always sorts *before* its successor's segments;
//! - `terms/`, the epoch history: one `{epoch}.cut` file per master term that
//!   took over, holding the first seq that term writes ([`EpochHistory`]), beside
//!   the master's own per-term files (claims and membership, `crate::master::term`).
//!
//! Who does what:
//! - the active master appends through one [`LogWriter`] (group commit: one
//!   `fdatasync` covers every append waiting at that moment);
//! - startup, the standby and `dsm log dump` read through a [`LogReader`], which
//!   remembers its place and follows new appends;
//! - [`compact`] rewrites the segments below the live one beside a live writer and
//!   readers, one compaction at a time per directory;
//! - [`read_at`] fetches one record by the [`LogPos`] an index remembered.
//!
//! # Invariants enforced here
//!
//! - **Persist before acknowledge.** [`LogWriter::write`] answers once a record is
//!   written; [`Appended::durable`] (and [`LogWriter::append`]) resolves only after
//!   the `fdatasync` covering it returned success and no newer epoch was claimed
//!   after it; after any write or sync error the writer refuses every later append
//!   (an fsync error may have dropped dirty pages, so retrying could acknowledge
//!   lost data). Tested by
//!   `writer::tests::group_commit_one_fsync_covers_waiting_appends`,
//!   `writer::tests::failed_writer_stops_acknowledging` and
//!   `writer::tests::a_newer_claim_stops_reporting_durable`.
//! - **Epoch fencing**: a record `(e, s)` is valid iff `s < start_seq(e')` for every
//!   epoch `e' > e` in the history, so a deposed master's records written after its
//!   successor read the log are ignored on replay. Tested by
//!   `tests::stale_epoch_records_are_ignored_on_replay`.
//! - **A live segment is never taken for a sealed one.** A master numbers its
//!   segments under its own epoch, so whatever a deposed master creates sorts below
//!   the live segment of any newer master. Tested by
//!   `tests::a_deposed_writers_roll_sorts_below_the_new_live_segment`.
//! - **Torn tail vs corruption**: a bad frame with no valid frame after it in its
//!   file is a torn tail (truncated by [`LogWriter::open`] with a warning); a bad frame
//!   followed by a valid one is corruption ([`WalError::Corrupt`], startup refuses).
//!   Tested by `tests::torn_tail_is_truncated_on_open` and
//!   `tests::corrupt_middle_record_names_file_and_offset`.
//! - **Valid records have strictly increasing seqs in log order.** Each master
//!   numbers its writes contiguously, and a new master's `START_SEQ` is one past the
//!   last valid seq it read, so anything an old master writes later is invalid. This
//!   is what lets a reader that lost its place to a compaction re-read the
//!   compacted file and skip every record with `seq <=` the last it delivered.
//!   Tested by `tests::follower_converges_across_compactions`.

mod compact;
mod epochs;
mod error;
pub(crate) mod frame;
mod reader;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::version::Version;

pub use compact::{
    COMPACT_LOCK_FILE, CompactStats, CompactionLock, DROPPED_FILE, Dropped, Moved, compact,
    sealed_segments,
};
pub use epochs::{EpochHistory, LEGACY_EPOCHS_FILE, TERMS_DIR};
pub use error::{FrameError, Result, WalError};
pub use frame::{MAGIC, MAX_RECORD_BYTES};
pub use reader::{LogReader, read_at};
#[cfg(feature = "chaos-broken-takeover")]
pub use writer::SKIP_CLAIM_CHECK;
pub use writer::{Appended, LogWriter, WriterStats};

/// One WRITE as stored in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// `(epoch, seq)` the master assigned; `seq` is the record's index in the log.
    pub version: Version,
    /// The key: arbitrary bytes (validation of limits is the master's job).
    pub key: Bytes,
    /// The value: arbitrary bytes, possibly empty.
    pub value: Bytes,
    /// Which client WRITE this is, when the client numbered it: what lets any
    /// later master recognise a retry of it.
    pub origin: Option<Origin>,
    /// A DELETE: the key has no value from this version on (`value` is empty).
    pub tombstone: bool,
}

/// A client WRITE's identity: the client's id and the WRITE's number among
/// that client's WRITEs (both nonzero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The client's random id.
    pub client: u64,
    /// The WRITE's number.
    pub seq: u64,
}

/// A segment's place in the log: the epoch of the master that created it in the
/// high 32 bits, its number within that epoch in the low 32, so that numbers
/// sort in log order.
pub type SegmentNo = u64;

/// The number of the `n`-th segment of `epoch`; `None` past the epochs a segment
/// name can hold (2^32 - 1 takeovers).
pub fn segment_no(epoch: u64, n: u32) -> Option<SegmentNo> {
    u32::try_from(epoch)
        .ok()
        .map(|e| (u64::from(e) << 32) | u64::from(n))
}

/// The epoch that created segment `no`.
pub fn segment_epoch(no: SegmentNo) -> u64 {
    no >> 32
}

/// The number of segment `no` within its epoch.
pub fn segment_index(no: SegmentNo) -> u32 {
    // The low 32 bits, by the layout above.
    no as u32
}

/// Renders a segment number the way its file is named (`epoch.n`).
pub fn segment_label(no: SegmentNo) -> String {
    format!("{}.{}", segment_epoch(no), segment_index(no))
}

/// Where a record starts: segment number and byte offset of its frame.
///
/// A position is a hint, not an identity: compaction moves records, so whoever
/// reads by position must check the key and version it gets back ([`read_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPos {
    /// Number of the segment file (see [`SegmentNo`]).
    pub file_no: SegmentNo,
    /// Byte offset of the record's frame in that file.
    pub offset: u64,
}

impl std::fmt::Display for LogPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", segment_label(self.file_no), self.offset)
    }
}

const SEGMENT_PREFIX: &str = "kv_store.";
const SEGMENT_SUFFIX: &str = ".log";

/// The path of segment `no` in `dir`.
pub fn segment_path(dir: &Path, no: SegmentNo) -> PathBuf {
    let (epoch, n) = (no >> 32, no & u64::from(u32::MAX));
    if epoch == 0 {
        // Logs written before segments carried their epoch.
        dir.join(format!("{SEGMENT_PREFIX}{n:08}{SEGMENT_SUFFIX}"))
    } else {
        dir.join(format!("{SEGMENT_PREFIX}{epoch:08}.{n:08}{SEGMENT_SUFFIX}"))
    }
}

/// Parses a segment file name; anything else in the directory (the terms, a
/// compaction's temporary file, an operator's notes) is not part of the log.
fn parse_segment_name(name: &str) -> Option<SegmentNo> {
    let middle = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    let number = |digits: &str| -> Option<u32> {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    match middle.split_once('.') {
        None => segment_no(0, number(middle)?),
        Some((epoch, n)) => segment_no(u64::from(number(epoch)?), number(n)?),
    }
}

/// Lists the segments of `dir` in log order (ascending [`SegmentNo`]), from a
/// fresh directory listing.
pub fn list_segments(dir: &Path) -> Result<Vec<(SegmentNo, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        if let Some(no) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push((no, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(no, _)| *no);
    Ok(segments)
}

/// Total size of the log segments in `dir`, in bytes. A segment deleted by
/// a concurrent compaction between listing and measuring counts as empty.
pub fn log_bytes(dir: &Path) -> Result<u64> {
    Ok(list_segments(dir)?
        .iter()
        .filter_map(|(_, path)| std::fs::metadata(path).ok())
        .map(|m| m.len())
        .sum())
}

/// Makes a directory entry change (create, rename, unlink) durable: without it a
/// crash can forget a file whose contents were fsynced.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}

/// Identity of an open file (device, inode), to notice that a path now names a
/// different file (compaction renamed a new segment over it).
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Reads exactly `buf.len()` bytes at `offset`, or fewer at end of file.
fn read_full_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut total = 0;
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}
