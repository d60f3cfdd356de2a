//! A master term: the epoch one master-capable process writes with, and what it
//! leaves in the shared log directory so that its successor can fence it.
//!
//! Beside the log's cuts (`terms/{epoch}.cut`, see [`crate::wal::EpochHistory`]),
//! each term has, in `terms/`:
//! - `{epoch:020}.claim`, created with `create_new` when a process starts a
//!   takeover: whoever creates it owns the epoch, so two processes can never
//!   write with the same one, and no lock is needed (a lock a paused process
//!   holds would block everyone else);
//! - `{epoch:020}.members`, the term's [`Membership`]: every slave the term may
//!   place a WRITE on, and the term's replication factor. It is replaced
//!   atomically (temporary file, fsync, rename) and always grows *before* a
//!   slave becomes placeable.
//!
//! # Why a takeover is safe whatever the clocks say
//!
//! A new master claims its epoch `N`, fences (itself, by calling them) enough
//! members of the previous term `P` that at most `r_P - 1` members are left
//! unfenced, then reads the log to its end and only then records its cut. An
//! old-epoch WRITE is acknowledged only once its record's fsync returned and,
//! after that, the log writer found no claim newer than `P` in `terms/`
//! (`wal::epochs::newest_term`): so the claim came later, the new master's
//! reading later still, and the record was on disk before it (the WRITE goes
//! to its slaves while the fsync runs, see `master::write`). The cut is after
//! it: nothing acknowledged is lost, however early or late the takeover.
//! Fencing does the rest: every quorum of the old term contains a fenced
//! slave (a fenced slave refuses older epochs, checked in the transaction of
//! the put), so a WRITE whose Puts arrive after the fences never reaches a
//! quorum, and the old master learns it was deposed.
//!
//! The membership a new master reads is complete because a term persists a
//! slave's admission, then looks for a newer claim, and refuses the slave if
//! there is one; a new master persists its claim, then reads the membership.
//! Whichever comes second sees the other (`master::control`, `register_slave`).
//! Tested by `tests::a_new_claim_is_unique_and_above_every_known_epoch` here and
//! by the in-process takeover tests in `master::tests`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::barrier::Barrier;
use super::error::MasterError;
use super::lease::ActiveLock;
use crate::wal::{self, EpochHistory, LogWriter, TERMS_DIR, WalError};

/// One term of this process as the active master.
pub struct Term {
    /// The epoch this term writes with; slaves fenced with it reject older.
    pub epoch: u64,
    /// The log writer (group commit) for this epoch's segments.
    pub writer: LogWriter,
    /// This term's write quorum size.
    pub replication_factor: u32,
    /// Highest seq known to be in the log for good (see [`Term::committed`]);
    /// watchers wait on it.
    committed: tokio::sync::watch::Sender<u64>,
    /// Cancelled when the term ends (deposed, log failure, shutdown).
    ended: CancellationToken,
    /// Confirms the term before READs are answered.
    pub barrier: Barrier,
    /// Who may be placed on; saved before anyone new is. A tokio mutex: it is
    /// held across the save.
    pub membership: tokio::sync::Mutex<Membership>,
    /// The active lock while this term holds it (see [`super::lease`]).
    pub active_lock: Mutex<Option<ActiveLock>>,
}

impl Term {
    /// A term that writes with `epoch` from `start_seq` on.
    pub fn new(epoch: u64, start_seq: u64, writer: LogWriter, membership: Membership) -> Self {
        Term {
            epoch,
            writer,
            replication_factor: membership.replication_factor,
            committed: tokio::sync::watch::Sender::new(start_seq.saturating_sub(1)),
            ended: CancellationToken::new(),
            barrier: Barrier::default(),
            membership: tokio::sync::Mutex::new(membership),
            active_lock: Mutex::new(None),
        }
    }

    /// Highest seq such that it and every seq below it are in the log for
    /// good: no later takeover can cut them off, because the record was read
    /// (and fsynced) by this term's takeover, or a WRITE at or above it was
    /// reported durable by the log writer, which checked after its fsync that
    /// no successor had claimed an epoch (see the module doc), and reached its
    /// quorum. What compaction and deduplication may rely on.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Follows [`committed`](Self::committed) as it grows.
    pub fn watch_committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// A WRITE of seq `seq` reached its write quorum.
    pub fn note_committed(&self, seq: u64) {
        self.committed.send_if_modified(|committed| {
            let grew = seq > *committed;
            if grew {
                *committed = seq;
            }
            grew
        });
    }

    /// Fails unless this term may still acknowledge. Only being deposed
    /// counts: whether the term still holds is established by fencing (slaves
    /// refuse an older epoch), never by a clock.
    pub fn check_can_ack(&self) -> Result<(), MasterError> {
        if self.ended.is_cancelled() {
            return Err(MasterError::unavailable(
                "this master was deposed while the request ran; retry against the active master",
            ));
        }
        Ok(())
    }

    /// Ends the term.
    pub fn depose(&self, why: &str) {
        if !self.ended.is_cancelled() {
            warn!(epoch = self.epoch, "stepping down: {why}");
        }
        self.ended.cancel();
    }

    /// Whether the term ended.
    pub fn is_deposed(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Cancelled when the term ends.
    pub fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }

    /// The answer to a WRITE whose log append failed; ends the term unless
    /// only that record was refused (too large).
    ///
    /// Why end the term: after a failed write or fsync the writer refuses
    /// every later append for good, because the kernel may have dropped the
    /// pages the failed fsync covered (fsyncgate), so a retry could
    /// acknowledge data that is not on disk. The only honest way back is
    /// PostgreSQL's: forget what memory believes and recover from what the
    /// disk holds. Here that is cheaper than a restart: the process steps
    /// down, replays the log from disk as a standby, and takes over again
    /// (new epoch, new segment, new writer) once the log volume accepts
    /// writes again — or the other master-capable process does. Tested by
    /// `tests/disk_faults.rs`.
    pub fn log_append_failed(&self, error: wal::WalError) -> MasterError {
        if let wal::WalError::Fenced { newer, .. } = error {
            self.depose(&format!("epoch {newer} was claimed in the log directory"));
            return MasterError::unavailable(format!(
                "this master was deposed (epoch {newer} was claimed) before the WRITE was durable; \
                 it was not acknowledged (outcome unknown): retry against the active master"
            ));
        }
        if !matches!(error, wal::WalError::TooLarge { .. }) {
            self.depose(&format!(
                "the write-ahead log failed ({error}); stepping down to recover it with a fresh writer"
            ));
        }
        MasterError::unavailable(format!(
            "write-ahead log append failed: {error}; the WRITE was not acknowledged"
        ))
    }
}

const CLAIM_SUFFIX: &str = ".claim";
const MEMBERS_SUFFIX: &str = ".members";

/// Errors reading or writing a term's files.
#[derive(Debug, Error)]
pub enum TermError {
    /// A file operation failed.
    #[error("term file {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A membership file that is not valid JSON of the expected shape.
    #[error(
        "membership file {path} is not valid ({source}); restore it from a backup of the log directory"
    )]
    Malformed {
        /// File involved.
        path: PathBuf,
        /// Parse error.
        source: serde_json::Error,
    },
    /// The log's epoch history could not be read.
    #[error(transparent)]
    History(#[from] WalError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> TermError + '_ {
    move |source| TermError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The slaves a term may place WRITEs on, and the size of its write quorums.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Slaves each WRITE of the term reaches before it is acknowledged.
    pub replication_factor: u32,
    /// Slave id → the address it registered with.
    pub slaves: BTreeMap<String, String>,
}

impl Membership {
    /// Fences a successor still needs, having fenced `fenced` of these slaves,
    /// before no write quorum of this term is left without a fenced slave:
    /// at most `replication_factor - 1` members may stay unfenced.
    pub fn fences_missing(&self, fenced: usize) -> usize {
        let may_stay = self.replication_factor.saturating_sub(1) as usize;
        self.slaves
            .len()
            .saturating_sub(may_stay)
            .saturating_sub(fenced)
    }
}

fn terms_dir(dir: &Path) -> PathBuf {
    dir.join(TERMS_DIR)
}

fn claim_path(dir: &Path, epoch: u64) -> PathBuf {
    terms_dir(dir).join(format!("{epoch:020}{CLAIM_SUFFIX}"))
}

fn members_path(dir: &Path, epoch: u64) -> PathBuf {
    terms_dir(dir).join(format!("{epoch:020}{MEMBERS_SUFFIX}"))
}

/// Every `(epoch, suffix)` file of `terms/`, from a fresh listing.
fn list_terms(dir: &Path) -> Result<Vec<(u64, String)>, TermError> {
    let terms = terms_dir(dir);
    let entries = match std::fs::read_dir(&terms) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TermError::Io {
                path: terms,
                source,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(&terms))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((digits, suffix)) = name.split_once('.') else {
            continue;
        };
        if let Ok(epoch) = digits.parse::<u64>() {
            found.push((epoch, format!(".{suffix}")));
        }
    }
    Ok(found)
}

/// The highest epoch anyone has claimed (or, for logs of older versions,
/// recorded in the history), 0 when none.
pub fn newest_claim(dir: &Path) -> Result<u64, TermError> {
    let claimed = list_terms(dir)?
        .into_iter()
        .filter(|(_, suffix)| suffix == CLAIM_SUFFIX)
        .map(|(epoch, _)| epoch)
        .max()
        .unwrap_or(0);
    let recorded = EpochHistory::load(dir)?
        .latest()
        .map_or(0, |(epoch, _)| epoch);
    Ok(claimed.max(recorded))
}

/// Claims the next epoch for `holder`: one above every epoch claimed or
/// recorded so far and above `at_least`, created with `create_new` and made
/// durable. `None` when another process claimed that epoch first (it is taking
/// over: let it).
pub fn claim_next_epoch(dir: &Path, holder: &str, at_least: u64) -> Result<Option<u64>, TermError> {
    let terms = terms_dir(dir);
    if !terms.exists() {
        std::fs::create_dir_all(&terms).map_err(io_error(&terms))?;
        sync(dir)?;
    }
    let epoch = newest_claim(dir)?.max(at_least) + 1;
    let path = claim_path(dir, epoch);
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(source) => return Err(TermError::Io { path, source }),
    };
    file.write_all(holder.as_bytes()).map_err(io_error(&path))?;
    file.sync_all().map_err(io_error(&path))?;
    sync(&terms)?;
    Ok(Some(epoch))
}

/// The membership term `epoch` saved, if it saved one.
pub fn load_members(dir: &Path, epoch: u64) -> Result<Option<Membership>, TermError> {
    let path = members_path(dir, epoch);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| TermError::Malformed { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TermError::Io { path, source }),
    }
}

/// Every membership saved by a term from `from` on, oldest first: what a new
/// master must fence (the previous term's, and those of takeovers that may
/// have overlapped with it).
pub fn members_since(dir: &Path, from: u64) -> Result<Vec<(u64, Membership)>, TermError> {
    let mut epochs: Vec<u64> = list_terms(dir)?
        .into_iter()
        .filter(|(epoch, suffix)| *epoch >= from && suffix == MEMBERS_SUFFIX)
        .map(|(epoch, _)| epoch)
        .collect();
    epochs.sort_unstable();
    let mut found = Vec::new();
    for epoch in epochs {
        if let Some(members) = load_members(dir, epoch)? {
            found.push((epoch, members));
        }
    }
    Ok(found)
}

/// Replaces term `epoch`'s membership, durably (temporary file, fsync,
/// rename, fsync of the directory). Only the term's own process calls it.
pub fn save_members(dir: &Path, epoch: u64, members: &Membership) -> Result<(), TermError> {
    let terms = terms_dir(dir);
    if !terms.exists() {
        std::fs::create_dir_all(&terms).map_err(io_error(&terms))?;
        sync(dir)?;
    }
    let path = members_path(dir, epoch);
    let tmp = path.with_extension("members.tmp");
    let json = serde_json::to_vec_pretty(members).map_err(|source| TermError::Malformed {
        path: path.clone(),
        source,
    })?;
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(&json).map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync(&terms_dir(dir))
}

/// Removes the claims and memberships of terms before `epoch`: no takeover
/// reads them once a later term has recorded its cut. Cuts stay (replay needs
/// them). Best effort.
pub fn prune_before(dir: &Path, epoch: u64) {
    let Ok(files) = list_terms(dir) else { return };
    for (old, suffix) in files {
        if old < epoch && (suffix == CLAIM_SUFFIX || suffix == MEMBERS_SUFFIX) {
            let path = terms_dir(dir).join(format!("{old:020}{suffix}"));
            let _ = std::fs::remove_file(path);
        }
    }
}

fn sync(dir: &Path) -> Result<(), TermError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_claim_is_unique_and_above_every_known_epoch() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_claim(dir.path()).unwrap(), 0);
        assert_eq!(claim_next_epoch(dir.path(), "a", 0).unwrap(), Some(1));
        assert_eq!(claim_next_epoch(dir.path(), "b", 0).unwrap(), Some(2));
        // A cut of a log written by an older version counts as a claim.
        std::fs::write(dir.path().join("epochs"), "7 1\n").unwrap();
        assert_eq!(claim_next_epoch(dir.path(), "a", 0).unwrap(), Some(8));
        assert_eq!(claim_next_epoch(dir.path(), "a", 20).unwrap(), Some(21));
        // Two processes racing for the same epoch: exactly one gets it.
        let path = claim_path(dir.path(), 22);
        std::fs::write(&path, "other").unwrap();
        std::fs::remove_file(claim_path(dir.path(), 21)).unwrap();
        // newest is now 22 (the other's claim): the next is 23, never 22.
        assert_eq!(claim_next_epoch(dir.path(), "a", 0).unwrap(), Some(23));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "other");
    }

    #[test]
    fn memberships_round_trip_and_count_the_fences_a_successor_needs() {
        let dir = tempfile::tempdir().unwrap();
        let mut members = Membership {
            replication_factor: 2,
            slaves: BTreeMap::new(),
        };
        assert_eq!(members.fences_missing(0), 0, "no member, nothing to fence");
        for i in 0..3 {
            members
                .slaves
                .insert(format!("slave-{i}"), format!("127.0.0.1:{}", 100 + i));
        }
        // 3 members, quorums of 2: fence 2 so that no pair is left unfenced.
        assert_eq!(members.fences_missing(0), 2);
        assert_eq!(members.fences_missing(1), 1);
        assert_eq!(members.fences_missing(2), 0);
        save_members(dir.path(), 4, &members).unwrap();
        assert_eq!(load_members(dir.path(), 4).unwrap(), Some(members.clone()));
        assert_eq!(load_members(dir.path(), 5).unwrap(), None);
        save_members(dir.path(), 6, &Membership::default()).unwrap();
        let since: Vec<u64> = members_since(dir.path(), 4)
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert_eq!(since, vec![4, 6]);
        prune_before(dir.path(), 6);
        assert_eq!(load_members(dir.path(), 4).unwrap(), None);

        std::fs::write(members_path(dir.path(), 9), b"{not json").unwrap();
        assert!(matches!(
            load_members(dir.path(), 9),
            Err(TermError::Malformed { .. })
        ));
    }
}
