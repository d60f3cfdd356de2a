//! Sequential scan of one segment file, shared by the reader, the writer's
//! recovery and compaction, so that all three draw the same line between a torn
//! tail and corruption.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::error::FrameError;
use super::frame::{self, HEADER_LEN, MAGIC, MAX_RECORD_BYTES, MIN_PAYLOAD, Parsed};
use super::{LogPos, Record, Result, SegmentNo, WalError, file_id, read_full_at};

/// Read-ahead size: large enough that replay costs few syscalls, small enough
/// that a follower polling a quiet log reads nothing much.
const READ_AHEAD: usize = 256 << 10;

/// What comes next in a segment.
#[derive(Debug)]
pub(crate) enum Next {
    /// A valid record and where it starts.
    Record(Record, LogPos),
    /// The data ends cleanly on a frame boundary.
    End,
    /// Unusable bytes from `offset` to the end of the file, with no valid frame
    /// after them: a torn tail, or (in a segment still being written) a frame
    /// not completely written yet.
    Torn {
        /// Where the unusable bytes start.
        offset: u64,
        /// How many bytes there are up to the end of the file.
        len: u64,
        /// What is wrong with the first frame there.
        reason: FrameError,
    },
}

/// An open segment and the offset of the next unread byte in it.
pub(crate) struct Segment {
    /// The segment's number.
    pub(crate) file_no: SegmentNo,
    /// Its path, for messages and to check it was not replaced.
    pub(crate) path: PathBuf,
    file: File,
    /// (device, inode) when opened: compaction renames a new file over a
    /// segment's name, and a follower must notice that.
    id: (u64, u64),
    /// Next unread byte: 0 before the magic, then always a frame boundary.
    offset: u64,
    /// `buf[start..]` holds the file's bytes from `offset` on (read-ahead).
    buf: Vec<u8>,
    start: usize,
}

impl Segment {
    /// Opens segment `file_no` at `path` read-only, positioned before its magic.
    pub(crate) fn open(file_no: SegmentNo, path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        let id = file_id(&file.metadata()?);
        Ok(Segment {
            file_no,
            path,
            file,
            id,
            offset: 0,
            buf: Vec::new(),
            start: 0,
        })
    }

    /// Offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Opens the segment's path again and continues at the same offset: a fresh
    /// open is what makes another client's appends visible on a volume with
    /// close-to-open consistency (NFS). `Ok(None)` when the path no longer names
    /// the file this segment was (compaction replaced or removed it).
    pub(crate) fn reopen(&self) -> Result<Option<Segment>> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(WalError::io(&self.path, e)),
        };
        let meta = file.metadata().map_err(|e| WalError::io(&self.path, e))?;
        if file_id(&meta) != self.id {
            return Ok(None);
        }
        Ok(Some(Segment {
            file_no: self.file_no,
            path: self.path.clone(),
            file,
            id: self.id,
            offset: self.offset,
            buf: Vec::new(),
            start: 0,
        }))
    }

    /// Whether the segment's path still names the file we opened (compaction
    /// may have renamed a new file over it or deleted it).
    pub(crate) fn still_linked(&self) -> Result<bool> {
        match std::fs::metadata(&self.path) {
            Ok(meta) => Ok(file_id(&meta) == self.id),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(WalError::io(&self.path, e)),
        }
    }

    /// Reads the next frame.
    ///
    /// `sealed` says the segment will not grow any more (a newer segment exists):
    /// then an incomplete last frame is a torn tail like any other bad frame, and
    /// is checked for valid frames after it. In the segment being written it is
    /// just not written yet, and its claimed length is trusted.
    ///
    /// On anything but a record the position does not move and read-ahead is
    /// dropped, so the next call re-reads the file (which may have been truncated
    /// by a new writer's recovery, or completed by the writer).
    pub(crate) fn next(&mut self, sealed: bool) -> Result<Next> {
        let next = self.next_inner(sealed);
        if !matches!(next, Ok(Next::Record(..))) {
            self.buf.clear();
            self.start = 0;
        }
        next
    }

    fn next_inner(&mut self, sealed: bool) -> Result<Next> {
        if self.offset == 0 {
            self.fill(MAGIC.len())?;
            let avail = self.avail();
            if avail.len() >= MAGIC.len() {
                if avail[..MAGIC.len()] != MAGIC[..] {
                    return Err(WalError::NotASegment {
                        path: self.path.clone(),
                        reason: FrameError::BadMagic,
                    });
                }
                self.consume(MAGIC.len());
            } else if MAGIC.starts_with(avail) {
                // Created but the magic is not (completely) written: the writer
                // is creating it, or crashed while doing so.
                return Ok(Next::Torn {
                    offset: 0,
                    len: avail.len() as u64,
                    reason: FrameError::Incomplete {
                        needed: MAGIC.len() as u64,
                        available: avail.len() as u64,
                    },
                });
            } else {
                return Err(WalError::NotASegment {
                    path: self.path.clone(),
                    reason: FrameError::BadMagic,
                });
            }
        }
        self.fill(HEADER_LEN)?;
        if self.avail().is_empty() {
            return Ok(Next::End);
        }
        // Read the whole frame when its length is plausible (else parse rejects it).
        let len = self
            .avail()
            .first_chunk::<4>()
            .map(|b| u32::from_le_bytes(*b));
        if let Some(len) = len.filter(|l| (MIN_PAYLOAD..=MAX_RECORD_BYTES).contains(l)) {
            self.fill(HEADER_LEN + len as usize)?;
        }
        match frame::parse(self.avail()) {
            Parsed::Record(record, frame_len) => {
                let pos = LogPos {
                    file_no: self.file_no,
                    offset: self.offset,
                };
                self.consume(frame_len);
                Ok(Next::Record(record, pos))
            }
            Parsed::Incomplete { needed } => {
                // fill() stopped at end of file, so avail() is everything left.
                let available = self.avail().len() as u64;
                let reason = FrameError::Incomplete { needed, available };
                if sealed {
                    self.damaged(reason)
                } else {
                    Ok(Next::Torn {
                        offset: self.offset,
                        len: available,
                        reason,
                    })
                }
            }
            Parsed::Bad(reason) => self.damaged(reason),
        }
    }

    /// A bad frame at `offset`: corruption if a valid frame follows anywhere in
    /// the file, else a torn tail.
    fn damaged(&mut self, reason: FrameError) -> Result<Next> {
        self.fill_to_eof()?;
        match frame::find_valid_frame(self.avail(), 1) {
            Some(i) => Err(WalError::Corrupt {
                path: self.path.clone(),
                offset: self.offset,
                reason,
                next_valid: self.offset + i as u64,
            }),
            None => Ok(Next::Torn {
                offset: self.offset,
                len: self.avail().len() as u64,
                reason,
            }),
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
    }

    /// Makes `avail()` hold at least `want` bytes, or everything up to end of file.
    fn fill(&mut self, want: usize) -> Result<()> {
        if self.avail().len() >= want {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        while self.buf.len() < want {
            let have = self.buf.len();
            let chunk = (want - have).max(READ_AHEAD);
            self.buf.resize(have + chunk, 0);
            let n = read_full_at(&self.file, &mut self.buf[have..], self.offset + have as u64)
                .map_err(|e| WalError::io(&self.path, e));
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            };
            self.buf.truncate(have + n);
            if n < chunk {
                break; // end of file
            }
        }
        Ok(())
    }

    fn fill_to_eof(&mut self) -> Result<()> {
        loop {
            let want = self.avail().len() + READ_AHEAD;
            self.fill(want)?;
            if self.avail().len() < want {
                return Ok(());
            }
        }
    }
}
