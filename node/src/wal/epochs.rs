//! The epoch history and the fencing rule it implements.
//!
//! Every master term that took over leaves one file `terms/{epoch:020}.cut`
//! holding `START_SEQ`: the first seq that epoch's master writes, one past the
//! last valid seq it read when it took over. A new master writes its cut (to a
//! temporary file, fsynced, renamed into place) *before* writing any record, so a
//! record whose epoch is newer than every cut read so far means a cut appeared:
//! reload. One file per epoch, not one shared file, because two takeovers that
//! overlap (a paused one waking up beside its successor) must never overwrite or
//! interleave each other's lines. Logs of older versions kept the same lines in
//! one `epochs` file ([`LEGACY_EPOCHS_FILE`]); it is still read.
//!
//! Invariant (epoch fencing): record `(e, s)` is valid iff `s < START_SEQ(e')` for
//! every epoch `e' > e` in the history; a deposed master's writes at or past the
//! point where a successor started are ignored on replay. Start seqs are not
//! required to grow with the epoch: a successor that read the log *before* an
//! overlapping takeover finished has a lower one, and every record between the two
//! is then invalid, which is what the rule says. Tested by
//! `epochs::tests::validity_follows_the_history` and
//! `wal::tests::stale_epoch_records_are_ignored_on_replay`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Result, WalError, sync_dir};
use crate::version::Version;

/// Directory of the log directory holding one file per master term (cuts here,
/// claims and memberships beside them, see `crate::master::term`).
pub const TERMS_DIR: &str = "terms";
/// The single history file of logs written by older versions (`EPOCH START_SEQ`
/// lines); read, never written.
pub const LEGACY_EPOCHS_FILE: &str = "epochs";
const CUT_SUFFIX: &str = ".cut";

/// The epochs of every master that wrote (or may write) to the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory {
    /// `(epoch, start_seq)` by increasing epoch.
    entries: Vec<(u64, u64)>,
    /// `suffix_min[i]`: the smallest start seq of `entries[i..]`, so that the
    /// validity check is one binary search.
    suffix_min: Vec<u64>,
}

/// The path of epoch `epoch`'s cut.
fn cut_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(TERMS_DIR).join(format!("{epoch:020}{CUT_SUFFIX}"))
}

/// The epoch a file name of `terms/` is the cut of, if it is one.
fn parse_cut_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(CUT_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl EpochHistory {
    /// Reads the history of the log in `dir`: every cut in `terms/`, and the
    /// legacy `epochs` file if there is one. Nothing at all is an empty history.
    ///
    /// A malformed cut or legacy line, or one epoch with two different start
    /// seqs, is an error naming the file.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut starts: BTreeMap<u64, (u64, PathBuf)> = BTreeMap::new();
        let legacy = dir.join(LEGACY_EPOCHS_FILE);
        for (line, epoch, start) in load_legacy(&legacy)? {
            let place = (start, legacy.clone());
            if let Some((other, _)) = starts.insert(epoch, place)
                && other != start
            {
                return Err(conflict(&legacy, line, epoch, other, start));
            }
        }
        for epoch in list_cuts(dir)? {
            let path = cut_path(dir, epoch);
            let text = match std::fs::read(&path) {
                Ok(text) => text,
                // Listed, then gone: only a person removes cuts; read it as absent.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(WalError::io(&path, e)),
            };
            let start = parse_cut(&text).map_err(|reason| WalError::BadEpochs {
                path: path.clone(),
                line: 1,
                reason,
            })?;
            if let Some((other, from)) = starts.insert(epoch, (start, path.clone()))
                && other != start
            {
                return Err(WalError::BadEpochs {
                    path,
                    line: 1,
                    reason: format!(
                        "epoch {epoch} starts at seq {start} here but at {other} in {}",
                        from.display()
                    ),
                });
            }
        }
        Ok(Self::from_entries(
            starts.into_iter().map(|(e, (s, _))| (e, s)).collect(),
        ))
    }

    /// Builds the history from `(epoch, start_seq)` pairs sorted by epoch.
    fn from_entries(entries: Vec<(u64, u64)>) -> Self {
        let mut suffix_min = vec![u64::MAX; entries.len()];
        let mut min = u64::MAX;
        for (i, &(_, start)) in entries.iter().enumerate().rev() {
            min = min.min(start);
            suffix_min[i] = min;
        }
        EpochHistory {
            entries,
            suffix_min,
        }
    }

    /// Records that epoch `epoch` writes from `start_seq` on: its cut, durable
    /// (fsynced, renamed into place, directory fsynced) before this returns.
    ///
    /// A new master calls this after reading the log to its end and before
    /// [`LogWriter::open`](super::LogWriter::open); `start_seq` is the last valid
    /// seq it read plus one. Refuses when this epoch or a newer one already has a
    /// cut: the caller has been overtaken.
    pub fn record_cut(dir: &Path, epoch: u64, start_seq: u64) -> Result<()> {
        let history = Self::load(dir)?;
        if let Some((latest, latest_start)) = history.latest().filter(|(e, _)| *e >= epoch) {
            return Err(WalError::EpochNotNewer {
                epoch,
                start_seq,
                latest,
                latest_start,
            });
        }
        let terms = dir.join(TERMS_DIR);
        if !terms.exists() {
            std::fs::create_dir_all(&terms).map_err(|e| WalError::io(&terms, e))?;
            sync_dir(dir)?;
        }
        let path = cut_path(dir, epoch);
        let tmp = path.with_extension("cut.tmp");
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |e| WalError::io(&p, e)
        };
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(format!("{start_seq}\n").as_bytes())
            .map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&terms)
    }

    /// The newest `(epoch, start_seq)`, if any.
    pub fn latest(&self) -> Option<(u64, u64)> {
        self.entries.last().copied()
    }

    /// All `(epoch, start_seq)`, oldest epoch first.
    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    /// Whether a record with version `v` counts (the fencing rule in the module
    /// doc). An epoch newer than the whole history is valid: nothing fences it.
    pub fn is_valid(&self, v: Version) -> bool {
        let first_newer = self.entries.partition_point(|&(e, _)| e <= v.epoch);
        match self.suffix_min.get(first_newer) {
            Some(&start) => v.seq < start,
            None => true,
        }
    }
}

/// Epochs that have a cut in `dir`, from a fresh listing (unsorted).
fn list_cuts(dir: &Path) -> Result<Vec<u64>> {
    let terms = dir.join(TERMS_DIR);
    let entries = match std::fs::read_dir(&terms) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(WalError::io(&terms, e)),
    };
    let mut epochs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(&terms, e))?;
        if let Some(epoch) = entry.file_name().to_str().and_then(parse_cut_name) {
            epochs.push(epoch);
        }
    }
    Ok(epochs)
}

/// The highest epoch any file of `terms/` names (a claim, a membership or a
/// cut: `{epoch:020}.{kind}`), 0 when none, from a fresh listing. A master
/// claims its epoch there before it reads the log, so a writer that finds
/// nothing above its own epoch after an fsync knows that no successor can
/// have read the log before that fsync.
pub fn newest_term(dir: &Path) -> Result<u64> {
    let terms = dir.join(TERMS_DIR);
    let entries = match std::fs::read_dir(&terms) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(WalError::io(&terms, e)),
    };
    let mut newest = 0;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(&terms, e))?;
        let name = entry.file_name();
        let epoch = name
            .to_str()
            .and_then(|name| name.split_once('.'))
            .and_then(|(digits, _)| digits.parse::<u64>().ok());
        newest = newest.max(epoch.unwrap_or(0));
    }
    Ok(newest)
}

fn parse_cut(text: &[u8]) -> std::result::Result<u64, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
    let field = text.trim();
    field
        .parse()
        .map_err(|_| format!("start seq {field:?} is not a number"))
}

fn conflict(path: &Path, line: usize, epoch: u64, a: u64, b: u64) -> WalError {
    WalError::BadEpochs {
        path: path.to_path_buf(),
        line,
        reason: format!("epoch {epoch} is listed with start seqs {a} and {b}"),
    }
}

/// The `(line, epoch, start_seq)` lines of a legacy `epochs` file (none when it
/// does not exist). An incomplete last line (a crash during an append, which had
/// not returned, so no record of that epoch exists) is ignored with a warning.
fn load_legacy(path: &Path) -> Result<Vec<(usize, u64, u64)>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(WalError::io(path, e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            offset = complete,
            "ignoring an incomplete last line in the epoch history (crash during an append)"
        );
    }
    let mut lines = Vec::new();
    let mut previous: Option<(u64, u64)> = None;
    let body = match complete {
        0 => None,
        n => Some(bytes[..n - 1].split(|&b| b == b'\n')),
    };
    for (i, line) in body.into_iter().flatten().enumerate() {
        let bad = |reason: String| WalError::BadEpochs {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let (epoch, start_seq) = parse_line(line).map_err(bad)?;
        if let Some((latest, latest_start)) = previous {
            if epoch <= latest {
                return Err(bad(format!("epoch {epoch} is not after epoch {latest}")));
            }
            if start_seq < latest_start {
                return Err(bad(format!(
                    "start seq {start_seq} of epoch {epoch} is before start seq {latest_start} of epoch {latest}"
                )));
            }
        }
        previous = Some((epoch, start_seq));
        lines.push((i + 1, epoch, start_seq));
    }
    Ok(lines)
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

/// What a [`Fence`] last loaded from: the cut epochs present and the legacy
/// file's length. Both only grow, so a different signature means news.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Signature {
    cuts: Vec<u64>,
    legacy_len: u64,
}

impl Signature {
    fn read(dir: &Path) -> Result<Self> {
        let mut cuts = list_cuts(dir)?;
        cuts.sort_unstable();
        let legacy = dir.join(LEGACY_EPOCHS_FILE);
        let legacy_len = match std::fs::metadata(&legacy) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(WalError::io(&legacy, e)),
        };
        Ok(Signature { cuts, legacy_len })
    }
}

/// The history as a reader or compaction uses it: reloaded when a cut appears
/// or when a record names an epoch the history does not know yet.
pub(crate) struct Fence {
    dir: PathBuf,
    history: EpochHistory,
    loaded: Signature,
    /// Highest epoch a reload was made for and still not found (a log without
    /// cuts, e.g. copied for `dsm log dump`): not reloaded again for every
    /// record of that epoch.
    checked_unknown: u64,
}

impl Fence {
    pub(crate) fn load(dir: &Path) -> Result<Self> {
        let mut fence = Fence {
            dir: dir.to_path_buf(),
            history: EpochHistory::default(),
            loaded: Signature::default(),
            checked_unknown: 0,
        };
        fence.reload()?;
        Ok(fence)
    }

    pub(crate) fn history(&self) -> &EpochHistory {
        &self.history
    }

    /// Reloads if a cut appeared (fresh listing). Returns whether it reloaded.
    pub(crate) fn refresh(&mut self) -> Result<bool> {
        if Signature::read(&self.dir)? == self.loaded {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    fn reload(&mut self) -> Result<()> {
        // Signature first: a cut landing between the two reads is then seen
        // by the next refresh rather than missed.
        self.loaded = Signature::read(&self.dir)?;
        self.history = EpochHistory::load(&self.dir)?;
        Ok(())
    }

    /// Whether `v` is valid, reloading first if its epoch is newer than the
    /// history (its master wrote its cut before writing, so the cut is there).
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
        EpochHistory::record_cut(dir.path(), 1, 1).unwrap();
        EpochHistory::record_cut(dir.path(), 2, 11).unwrap();
        EpochHistory::record_cut(dir.path(), 4, 11).unwrap(); // epoch 2 wrote nothing
        EpochHistory::record_cut(dir.path(), 5, 30).unwrap();
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

    /// Two takeovers that overlapped: epoch 7 read the log (to seq 20) before
    /// epoch 6, which read further (to 25), wrote its cut. Whatever the order the
    /// cuts land in, records of epoch 5 from seq 21 on and every record of epoch
    /// 6 are invalid: epoch 7 never saw them.
    #[test]
    fn an_overlapping_takeover_with_a_lower_start_fences_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        EpochHistory::record_cut(dir.path(), 5, 1).unwrap();
        EpochHistory::record_cut(dir.path(), 7, 21).unwrap();
        // Epoch 6's cut arrives late: refused, as its master has been overtaken…
        assert!(matches!(
            EpochHistory::record_cut(dir.path(), 6, 26),
            Err(WalError::EpochNotNewer { latest: 7, .. })
        ));
        // …but had it checked just before epoch 7's cut landed, it would be there.
        std::fs::write(cut_path(dir.path(), 6), "26\n").unwrap();
        let h = EpochHistory::load(dir.path()).unwrap();
        assert_eq!(h.entries(), &[(5, 1), (6, 26), (7, 21)]);
        for (v, valid) in [
            (Version::new(5, 20), true),
            (Version::new(5, 21), false),
            (Version::new(5, 25), false),
            (Version::new(6, 26), false),
            (Version::new(7, 21), true),
        ] {
            assert_eq!(h.is_valid(v), valid, "{v}");
        }
    }

    #[test]
    fn record_cut_refuses_going_back() {
        let dir = tempfile::tempdir().unwrap();
        EpochHistory::record_cut(dir.path(), 3, 10).unwrap();
        assert!(matches!(
            EpochHistory::record_cut(dir.path(), 3, 20),
            Err(WalError::EpochNotNewer { .. })
        ));
        EpochHistory::record_cut(dir.path(), 4, 12).unwrap();
        assert_eq!(
            EpochHistory::load(dir.path()).unwrap().entries(),
            &[(3, 10), (4, 12)]
        );
    }

    #[test]
    fn the_legacy_epochs_file_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEGACY_EPOCHS_FILE);
        // A crash in the middle of an append left half a line.
        std::fs::write(&path, "1 1\n3 10\n4 1").unwrap();
        EpochHistory::record_cut(dir.path(), 4, 12).unwrap();
        assert_eq!(
            EpochHistory::load(dir.path()).unwrap().entries(),
            &[(1, 1), (3, 10), (4, 12)]
        );
        std::fs::write(&path, "1 1\n4 11\n").unwrap();
        assert!(matches!(
            EpochHistory::load(dir.path()),
            Err(WalError::BadEpochs { .. })
        ));
    }

    #[test]
    fn malformed_history_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEGACY_EPOCHS_FILE);
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
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(dir.path().join(TERMS_DIR)).unwrap();
        std::fs::write(cut_path(dir.path(), 2), "twelve\n").unwrap();
        match EpochHistory::load(dir.path()) {
            Err(WalError::BadEpochs { path: p, .. }) => assert_eq!(p, cut_path(dir.path(), 2)),
            other => panic!("{other:?}"),
        }
    }
}
