//! Reading the log: replay at startup, following by the standby, `dsm log dump`,
//! and fetching one record by position.
//!
//! A [`LogReader`] keeps its place as (segment, offset of the next unread byte)
//! plus the highest version it delivered. Compaction may delete or replace the
//! segment it is in; it then goes back to the largest segment number at or before
//! its own (where compaction put the surviving records) and skips every record
//! with a seq not above the last it delivered. This is exact because valid
//! records have strictly increasing seqs in log order (module doc of `wal`).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::epochs::Fence;
use super::frame::{self, HEADER_LEN, MAGIC, MAX_RECORD_BYTES, MIN_PAYLOAD, Parsed};
use super::segment::{Next, Segment};
use super::{
    EpochHistory, LogPos, Record, Result, SegmentNo, WalError, list_segments, read_full_at,
    segment_path,
};
use crate::version::Version;

/// Reads the log in order and follows it as it grows. Never modifies files.
pub struct LogReader {
    dir: PathBuf,
    /// Epoch history, reloaded when the file grows or a record names a newer epoch.
    fence: Fence,
    /// The segment being read; `None` before the first one is opened, or after
    /// compaction took it away.
    cur: Option<Segment>,
    /// After compaction took `cur` away: resume at the largest segment number
    /// `<=` this one, which holds what compaction kept of it.
    rewind_to: Option<SegmentNo>,
    /// Highest version delivered so far; records at or below its seq were seen.
    last: Option<Version>,
    /// A delivered record was later invalidated by a newer epoch (see
    /// [`LogReader::invalidated`]).
    invalidated: bool,
}

impl LogReader {
    /// Opens a reader positioned before the first record of the log in `dir`.
    /// The directory must exist; it may be empty.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::metadata(dir).map_err(|e| WalError::io(dir, e))?;
        Ok(LogReader {
            dir: dir.to_path_buf(),
            fence: Fence::load(dir)?,
            cur: None,
            rewind_to: None,
            last: None,
            invalidated: false,
        })
    }

    /// Reads every complete record after the current place, in log order, and
    /// calls `f` for each valid one (per the epoch history) with its position.
    /// Returns how many it delivered.
    ///
    /// - An incomplete or bad frame at the end of the newest segment is "not
    ///   written yet": `poll` stops before it and the next call retries there.
    /// - A torn tail of an older segment (a crashed master's last write, followed
    ///   by its successor's segment) is skipped with a warning.
    /// - A bad frame followed by a valid one is [`WalError::Corrupt`]; the reader
    ///   stays before it, so every later call fails the same way.
    /// - Records of a deposed master written after its successor started are
    ///   skipped (debug log). Records already delivered before a compaction moved
    ///   them are not delivered again.
    ///
    /// Records passed to `f` have strictly increasing seqs.
    pub fn poll(&mut self, f: impl FnMut(&Record, LogPos)) -> Result<usize> {
        self.poll_at_most(usize::MAX, f)
    }

    /// [`poll`](Self::poll), returning once the records delivered hold
    /// `bytes` of keys and values (at least one record is delivered): the next
    /// call goes on from there. Memory stays bounded for a reader far behind
    /// the end of the log (a WATCH from an old position).
    pub fn poll_at_most(
        &mut self,
        bytes: usize,
        mut f: impl FnMut(&Record, LogPos),
    ) -> Result<usize> {
        let LogReader {
            dir,
            fence,
            cur,
            rewind_to,
            last,
            invalidated,
        } = self;
        if fence.refresh()? {
            check_delivered(fence, last, invalidated);
        }
        let mut delivered = 0;
        let mut delivered_bytes = 0usize;
        loop {
            let segments = list_segments(dir)?;
            if cur.is_none() {
                let pick = match rewind_to {
                    Some(t) => segments.iter().rev().find(|(no, _)| no <= t),
                    None => None,
                }
                .or(segments.first());
                let Some((no, path)) = pick.cloned() else {
                    return Ok(delivered);
                };
                match Segment::open(no, path.clone()) {
                    Ok(seg) => {
                        *cur = Some(seg);
                        *rewind_to = None;
                    }
                    // Deleted by a compaction since we listed: list again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(WalError::io(&path, e)),
                }
            }
            let Some(seg) = cur.as_mut() else { continue };
            // Look for a newer segment *before* reading to the end: once a newer
            // segment exists, nothing valid is appended to this one any more (only
            // a deposed master's late writes), so what we read now is all of it.
            let newer = segments.iter().find(|(no, _)| *no > seg.file_no).cloned();
            let sealed = newer.is_some();
            loop {
                match seg.next(sealed)? {
                    Next::Record(record, pos) => {
                        if accept(fence, last, invalidated, &record)? {
                            f(&record, pos);
                            delivered += 1;
                            delivered_bytes = delivered_bytes
                                .saturating_add(record.key.len() + record.value.len());
                            if delivered_bytes >= bytes {
                                return Ok(delivered);
                            }
                        }
                    }
                    Next::End => break,
                    Next::Torn {
                        offset,
                        len,
                        reason,
                    } => {
                        if sealed {
                            tracing::warn!(
                                path = %seg.path.display(),
                                offset,
                                bytes = len,
                                %reason,
                                "skipping the torn tail of an older log segment (a master crashed mid-write)"
                            );
                        }
                        break;
                    }
                }
            }
            let Some((next_no, next_path)) = newer else {
                return Ok(delivered);
            };
            if !seg.still_linked()? {
                // Compaction replaced or deleted our segment after we opened it,
                // and may have merged segments we had not read yet.
                *rewind_to = Some(seg.file_no);
                *cur = None;
                check_gap(dir, last, invalidated)?;
                continue;
            }
            match Segment::open(next_no, next_path.clone()) {
                Ok(next) => *cur = Some(next),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    *rewind_to = Some(next_no);
                    *cur = None;
                    check_gap(dir, last, invalidated)?;
                }
                Err(e) => return Err(WalError::io(&next_path, e)),
            }
        }
    }

    /// Drops every open file handle and cached listing, so that the next
    /// [`poll`](Self::poll) reads through freshly opened files: on a shared
    /// volume with close-to-open consistency (NFS, the usual ReadWriteMany
    /// volume) another client's appends are only guaranteed visible after an
    /// open. A takeover calls this before reading the log to its end. The place
    /// is kept.
    pub fn reopen(&mut self) -> Result<()> {
        if let Some(seg) = self.cur.take() {
            match seg.reopen()? {
                Some(fresh) => self.cur = Some(fresh),
                // Compaction replaced it: resume where its records went.
                None => self.rewind_to = Some(seg.file_no),
            }
        }
        self.fence = Fence::load(&self.dir)?;
        check_delivered(&self.fence, &self.last, &mut self.invalidated);
        Ok(())
    }

    /// Highest seq delivered so far (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last.map_or(0, |v| v.seq)
    }

    /// Highest version delivered so far.
    pub fn last_version(&self) -> Option<Version> {
        self.last
    }

    /// The reader's place: the next unread byte (segment, offset), if a segment
    /// is open. For lag metrics and logs.
    pub fn position(&self) -> Option<LogPos> {
        self.cur.as_ref().map(|seg| LogPos {
            file_no: seg.file_no,
            offset: seg.offset(),
        })
    }

    /// The epoch history as last loaded.
    pub fn history(&self) -> &EpochHistory {
        self.fence.history()
    }

    /// Whether what this reader delivered can no longer be trusted, and the
    /// caller's state must be rebuilt from a fresh reader:
    /// - a record already delivered has since become invalid: a deposed master
    ///   wrote it after its successor had read the log's end but before the
    ///   successor's cut was recorded, and this reader saw it in that window;
    /// - or compaction replaced segments this reader had not read yet and
    ///   dropped a tombstone it never delivered (it would keep a deleted value).
    pub fn invalidated(&self) -> bool {
        self.invalidated
    }
}

/// After compaction took segments away before this reader had read them: a
/// tombstone dropped past what it delivered would leave it holding a value
/// that was deleted, so the caller must rebuild from a fresh replay.
fn check_gap(dir: &Path, last: &Option<Version>, invalidated: &mut bool) -> Result<()> {
    let seen = last.map_or(0, |v| v.seq);
    if !*invalidated && super::Dropped::load(dir)?.tombstone > seen {
        *invalidated = true;
        tracing::warn!(
            seen,
            "compaction dropped a tombstone this reader had not read; rebuild from a fresh replay"
        );
    }
    Ok(())
}

/// Decides whether to deliver `record`, updating the reader's bookkeeping.
fn accept(
    fence: &mut Fence,
    last: &mut Option<Version>,
    invalidated: &mut bool,
    record: &Record,
) -> Result<bool> {
    let (valid, reloaded) = fence.check(record.version)?;
    if reloaded {
        check_delivered(fence, last, invalidated);
    }
    if !valid {
        tracing::debug!(
            version = %record.version,
            "ignoring a deposed master's record written after its successor's epoch started"
        );
        return Ok(false);
    }
    if last.is_some_and(|l| record.version.seq <= l.seq) {
        // Seen before a compaction moved it (or a crashed compaction left both
        // copies): valid records have strictly increasing seqs in log order.
        return Ok(false);
    }
    *last = Some(record.version);
    Ok(true)
}

fn check_delivered(fence: &Fence, last: &Option<Version>, invalidated: &mut bool) {
    if *invalidated {
        return;
    }
    if let Some(v) = last.filter(|v| !fence.history().is_valid(*v)) {
        *invalidated = true;
        tracing::warn!(
            version = %v,
            "a log record already delivered was invalidated by a newer epoch; rebuild from a fresh replay"
        );
    }
}

/// Reads the record whose frame starts at `pos`.
///
/// Compaction moves records, so the caller must check the key and version it
/// gets back. Returns [`WalError::Moved`] when the segment is gone or no valid
/// frame starts at that offset.
pub fn read_at(dir: &Path, pos: LogPos) -> Result<Record> {
    let path = segment_path(dir, pos.file_no);
    let moved = |reason: String| WalError::Moved {
        path: path.clone(),
        offset: pos.offset,
        reason,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(moved("the segment no longer exists".into()));
        }
        Err(e) => return Err(WalError::io(&path, e)),
    };
    if pos.offset < MAGIC.len() as u64 {
        return Err(moved("the offset is inside the segment header".into()));
    }
    let mut header = [0u8; HEADER_LEN];
    let n = read_full_at(&file, &mut header, pos.offset).map_err(|e| WalError::io(&path, e))?;
    if n < HEADER_LEN {
        return Err(moved("the offset is past the end of the segment".into()));
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if !(MIN_PAYLOAD..=MAX_RECORD_BYTES).contains(&len) {
        return Err(moved(format!("implausible record length {len}")));
    }
    let mut frame = vec![0u8; HEADER_LEN + len as usize];
    let n = read_full_at(&file, &mut frame, pos.offset).map_err(|e| WalError::io(&path, e))?;
    frame.truncate(n);
    match frame::parse(&frame) {
        Parsed::Record(record, _) => Ok(record),
        Parsed::Incomplete { .. } => {
            Err(moved("the frame runs past the end of the segment".into()))
        }
        Parsed::Bad(e) => Err(moved(e.to_string())),
    }
}
