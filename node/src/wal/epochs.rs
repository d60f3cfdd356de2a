//! The epoch history (`epochs` file) and the fencing rule it implements.
//!
//! One text line per master term, `EPOCH START_SEQ\n`, where `START_SEQ` is the
//! first seq that epoch's master writes (one past the last valid seq it read when
//! taking over). A new master appends and fsyncs its line *before* writing any
//! record, so a record whose epoch is newer than every line read so far means the
//! file grew: reload it.
//!
//! Invariant (epoch fencing, DESIGN §4): record `(e, s)` is valid iff
//! `s < START_SEQ(e')` for every epoch `e' > e` in the history; a deposed master's
//! writes at or past the point where its successor started are ignored on replay.
//! Tested by `epochs::tests::validity_follows_the_history` and
//! `wal::tests::stale_epoch_records_are_ignored_on_replay`.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Result, WalError, sync_dir};
use crate::version::Version;

/// Name of the epoch history file in the log directory.
pub const EPOCHS_FILE: &str = "epochs";

/// The epochs of every master that wrote (or may write) to the log, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory {
    /// `(epoch, start_seq)`, epochs strictly increasing, start seqs non-decreasing
    /// (checked on load), which makes the validity check one binary search.
    entries: Vec<(u64, u64)>,
}

impl EpochHistory {
    /// Reads the history of the log in `dir`. A missing file is an empty history.
    ///
    /// An incomplete last line (no newline: a crash during [`append`](Self::append),
    /// which had not returned, so no record of that epoch exists) is ignored with a
    /// warning. A malformed complete line, or epochs out of order, is an error.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_file(&dir.join(EPOCHS_FILE)).map(|(history, _)| history)
    }

    /// Loads the history and returns the file's length (0 if missing), which
    /// readers compare to notice appends cheaply.
    pub(crate) fn load_file(path: &Path) -> Result<(Self, u64)> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Self::default(), 0)),
            Err(e) => return Err(WalError::io(path, e)),
        };
        let complete = match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => 0,
        };
        if complete < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                offset = complete,
                "ignoring an incomplete last line in the epoch history (crash during an append)"
            );
        }
        let mut history = Self::default();
        // Every complete line ends with a newline; drop the last one before splitting.
        let lines = match complete {
            0 => None,
            n => Some(bytes[..n - 1].split(|&b| b == b'\n')),
        };
        for (i, line) in lines.into_iter().flatten().enumerate() {
            let bad = |reason: String| WalError::BadEpochs {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let (epoch, start_seq) = parse_line(line).map_err(bad)?;
            history
                .push(epoch, start_seq)
                .map_err(|e| bad(e.to_string()))?;
        }
        Ok((history, bytes.len() as u64))
    }

    /// Appends `EPOCH START_SEQ` to the history of `dir` and fsyncs it (and the
    /// directory when the file is created) before returning.
    ///
    /// A new master calls this after reading the log to its end and before
    /// [`LogWriter::open`](super::LogWriter::open); `start_seq` is the last valid
    /// seq it read plus one. Refuses an epoch not greater than the latest, or a
    /// start seq below the latest one: history only moves forward.
    pub fn append(dir: &Path, epoch: u64, start_seq: u64) -> Result<()> {
        let path = dir.join(EPOCHS_FILE);
        let history = Self::load(dir)?;
        let backwards =
            |&(latest, latest_start): &(u64, u64)| epoch <= latest || start_seq < latest_start;
        if let Some((latest, latest_start)) = history.latest().filter(backwards) {
            return Err(WalError::EpochNotNewer {
                epoch,
                start_seq,
                latest,
                latest_start,
            });
        }
        let existed = path.exists();
        let io_err = |e| WalError::io(&path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err)?;
        // Drop an incomplete last line left by a crash, or the new line would be
        // glued to it.
        let bytes = std::fs::read(&path).map_err(io_err)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            file.set_len(complete as u64).map_err(io_err)?;
        }
        file.write_all(format!("{epoch} {start_seq}\n").as_bytes())
            .map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        if !existed {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// The newest `(epoch, start_seq)`, if any.
    pub fn latest(&self) -> Option<(u64, u64)> {
        self.entries.last().copied()
    }

    /// All `(epoch, start_seq)` lines, oldest first.
    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    /// Whether a record with version `v` counts (the fencing rule in the module
    /// doc). An epoch newer than the whole history is valid: nothing fences it.
    pub fn is_valid(&self, v: Version) -> bool {
        // Start seqs are non-decreasing, so the first newer epoch has the smallest.
        let first_newer = self.entries.partition_point(|&(e, _)| e <= v.epoch);
        match self.entries.get(first_newer) {
            Some(&(_, start)) => v.seq < start,
            None => true,
        }
    }

    fn push(&mut self, epoch: u64, start_seq: u64) -> std::result::Result<(), String> {
        if let Some((latest, latest_start)) = self.latest() {
            if epoch <= latest {
                return Err(format!("epoch {epoch} is not after epoch {latest}"));
            }
            if start_seq < latest_start {
                return Err(format!(
                    "start seq {start_seq} of epoch {epoch} is before start seq {latest_start} of epoch {latest}"
                ));
            }
        }
        self.entries.push((epoch, start_seq));
        Ok(())
    }
}

fn parse_line(line: &[u8]) -> std::result::Result<(u64, u64), String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let mut fields = text.split_ascii_whitespace();
    let mut number = |what: &str| -> std::result::Result<u64, String> {
        let field = fields
            .next()
            .ok_or_else(|| format!("missing {what} in {text:?} (expected `EPOCH START_SEQ`)"))?;
        field
            .parse()
            .map_err(|_| format!("{what} {field:?} is not a number"))
    };
    let epoch = number("epoch")?;
    let start_seq = number("start seq")?;
    if fields.next().is_some() {
        return Err(format!(
            "extra fields in {text:?} (expected `EPOCH START_SEQ`)"
        ));
    }
    Ok((epoch, start_seq))
}

/// The history as a reader or compaction uses it: reloaded when the file grows
/// or when a record names an epoch the history does not know yet.
pub(crate) struct Fence {
    path: PathBuf,
    history: EpochHistory,
    /// File length when last loaded; the file is append-only, so a different
    /// length means new lines.
    loaded_len: u64,
    /// Highest epoch a reload was made for and still not found (a log without
    /// an epochs file, e.g. copied for `dsm log dump`): not reloaded again for
    /// every record of that epoch.
    checked_unknown: u64,
}

impl Fence {
    pub(crate) fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(EPOCHS_FILE);
        let (history, loaded_len) = EpochHistory::load_file(&path)?;
        Ok(Fence {
            path,
            history,
            loaded_len,
            checked_unknown: 0,
        })
    }

    pub(crate) fn history(&self) -> &EpochHistory {
        &self.history
    }

    /// Reloads if the file changed size. Returns whether it reloaded.
    pub(crate) fn refresh(&mut self) -> Result<bool> {
        let len = match std::fs::metadata(&self.path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(WalError::io(&self.path, e)),
        };
        if len == self.loaded_len {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    fn reload(&mut self) -> Result<()> {
        let (history, len) = EpochHistory::load_file(&self.path)?;
        self.history = history;
        self.loaded_len = len;
        Ok(())
    }

    /// Whether `v` is valid, reloading first if its epoch is newer than the
    /// history (its master fsynced its line before writing, so the file has it).
    /// Returns `(valid, reloaded)`.
    pub(crate) fn check(&mut self, v: Version) -> Result<(bool, bool)> {
        let mut reloaded = false;
        let unknown = |h: &EpochHistory| h.latest().is_none_or(|(e, _)| v.epoch > e);
        if unknown(&self.history) && v.epoch > self.checked_unknown {
            self.reload()?;
            reloaded = true;
            if unknown(&self.history) {
                self.checked_unknown = v.epoch;
            }
        }
        Ok((self.history.is_valid(v), reloaded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_follows_the_history() {
        let dir = tempfile::tempdir().unwrap();
        EpochHistory::append(dir.path(), 1, 1).unwrap();
        EpochHistory::append(dir.path(), 2, 11).unwrap();
        EpochHistory::append(dir.path(), 4, 11).unwrap(); // epoch 2 wrote nothing
        EpochHistory::append(dir.path(), 5, 30).unwrap();
        let h = EpochHistory::load(dir.path()).unwrap();
        assert_eq!(h.latest(), Some((5, 30)));
        let table = [
            ((1, 10), true),
            ((1, 11), false), // epoch 2 started at 11: a late write of epoch 1
            ((2, 10), true),
            ((2, 11), false), // epoch 4 also starts at 11
            ((3, 5), true),   // an epoch missing from the history is fenced by later ones only
            ((4, 29), true),
            ((4, 30), false),
            ((5, 1_000), true),
            ((9, 1), true), // newer than the history: nothing fences it
        ];
        for ((epoch, seq), valid) in table {
            assert_eq!(h.is_valid(Version::new(epoch, seq)), valid, "{epoch}.{seq}");
        }
    }

    #[test]
    fn append_refuses_going_back_and_repairs_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        EpochHistory::append(dir.path(), 3, 10).unwrap();
        assert!(matches!(
            EpochHistory::append(dir.path(), 3, 20),
            Err(WalError::EpochNotNewer { .. })
        ));
        assert!(matches!(
            EpochHistory::append(dir.path(), 4, 9),
            Err(WalError::EpochNotNewer { .. })
        ));
        // A crash in the middle of an append leaves half a line.
        let path = dir.path().join(EPOCHS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"4 1").unwrap();
        drop(f);
        assert_eq!(
            EpochHistory::load(dir.path()).unwrap().latest(),
            Some((3, 10))
        );
        EpochHistory::append(dir.path(), 4, 12).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "3 10\n4 12\n");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EPOCHS_FILE);
        for (text, line) in [
            ("1 1\nx 2\n", 2),
            ("1 1\n2\n", 2),
            ("1 1 1\n", 1),
            ("2 1\n1 5\n", 2),
            ("1 5\n2 4\n", 2),
            ("\n", 1),
        ] {
            std::fs::write(&path, text).unwrap();
            match EpochHistory::load(dir.path()) {
                Err(WalError::BadEpochs { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
