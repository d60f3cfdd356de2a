//! The leadership lease: *when* the standby tries to take over. Never what
//! makes a takeover safe — that is fencing (see [`super::term`]).
//!
//! The active master renews the lease record (`lease`, JSON, in the shared log
//! directory) every quarter of the lease TTL by bumping its `renewals` counter.
//! The standby never compares anybody's wall clock with its own: it notes, on
//! its own monotonic clock, when it last saw the record change, and considers
//! the lease free once it has seen no change for a whole TTL ([`LeaseWatch`]).
//! Processes on different nodes, an NTP step or a VM resumed from suspend can
//! then at worst make a takeover early or late, and both are safe.
//!
//! Two faster signs that the holder is gone:
//! - `released`: a master that shuts down cleanly says so;
//! - the *active lock*, an `flock` on `active.lock` that the active master holds
//!   for as long as it lives (the record says `locked` once it holds it). The
//!   kernel drops it when the process dies, so a standby that can take the lock
//!   while the record says `locked` knows the holder is dead (kill -9, OOM) and
//!   takes over at once. A paused process keeps the lock, so the lock never
//!   decides anything alone: the TTL still runs out and the takeover goes ahead
//!   without it.
//!
//! No lock is taken to read or write the record (a paused holder inside such a
//! critical section would block the standby for the whole pause): each writer
//! writes its own temporary file and renames it over `lease`, which is atomic.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::time::Instant;

/// File holding the lease record.
pub const LEASE_FILE: &str = "lease";
/// File the active master keeps locked while it lives.
pub const ACTIVE_LOCK_FILE: &str = "active.lock";

/// Errors reading or writing the lease.
#[derive(Debug, Error)]
pub enum LeaseError {
    /// A file operation failed.
    #[error("lease file {path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The lease file holds something that is not a lease.
    #[error("lease file {path} is not valid JSON ({source}); it is rewritten at the next renewal")]
    Malformed {
        /// File involved.
        path: PathBuf,
        /// Parse error.
        source: serde_json::Error,
    },
}

/// The lease as stored on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Identity of the master-capable process holding the lease.
    pub holder: String,
    /// Address clients should use to reach the holder.
    pub address: String,
    /// The holder's epoch (term).
    pub epoch: u64,
    /// Bumped at every renewal: what the standby watches.
    #[serde(default)]
    pub renewals: u64,
    /// The holder holds the active lock (its death frees the lock).
    #[serde(default)]
    pub locked: bool,
    /// The holder shut down cleanly: the lease is free now.
    #[serde(default)]
    pub released: bool,
    /// When the holder wrote this, on its own wall clock: for people reading
    /// the file, never compared with another process's clock.
    #[serde(default)]
    pub written_unix_ms: u64,
}

/// Milliseconds since the Unix epoch, now, on this process's wall clock.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Handle on the lease files of one log directory.
#[derive(Clone, Debug)]
pub struct LeaseFile {
    dir: PathBuf,
    /// This process's temporary file: two writers never share one.
    tmp: PathBuf,
}

impl LeaseFile {
    /// Lease files in `dir` (the shared log directory), written by the
    /// process identified as `writer`.
    pub fn new(dir: &Path, writer: &str) -> Self {
        let safe: String = writer
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        LeaseFile {
            dir: dir.to_path_buf(),
            tmp: dir.join(format!("{LEASE_FILE}.{safe}.{}.tmp", std::process::id())),
        }
    }

    /// Reads the lease (a fresh open); `None` when no master ever held it.
    pub fn read(&self) -> Result<Option<LeaseRecord>, LeaseError> {
        let path = self.dir.join(LEASE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| LeaseError::Malformed { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LeaseError::Io { path, source }),
        }
    }

    /// Replaces the lease atomically: this writer's temporary file, fsync,
    /// rename. Not synced further: losing a renewal to a crash costs at most
    /// an early takeover, which is safe.
    pub fn write(&self, record: &LeaseRecord) -> Result<(), LeaseError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LeaseError::Io { path, source }
        };
        let json = serde_json::to_vec(record).map_err(|source| LeaseError::Malformed {
            path: self.tmp.clone(),
            source,
        })?;
        let mut file = File::create(&self.tmp).map_err(io(&self.tmp))?;
        file.write_all(&json).map_err(io(&self.tmp))?;
        file.sync_data().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, self.dir.join(LEASE_FILE)).map_err(io(&self.dir))
    }

    /// Tries to take the active lock without waiting; `None` when another
    /// process holds it.
    pub fn try_lock_active(&self) -> Result<Option<ActiveLock>, LeaseError> {
        let path = self.dir.join(ACTIVE_LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LeaseError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ActiveLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(LeaseError::Io { path, source }),
        }
    }
}

/// The active lock, held until dropped (or until the process dies).
#[derive(Debug)]
pub struct ActiveLock {
    _file: File,
}

/// What the standby concludes about the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Someone holds it; their address (for clients and slaves).
    Held(String),
    /// Free: nobody holds it, or the holder released it, died or stopped
    /// renewing for a whole TTL.
    Free(&'static str),
}

/// The standby's view of the lease, judged on its own monotonic clock.
#[derive(Debug)]
pub struct LeaseWatch {
    ttl: Duration,
    /// The last `(holder, epoch, renewals)` seen, and when it was first seen.
    seen: Option<((String, u64, u64), Instant)>,
}

impl LeaseWatch {
    /// A watch that has seen nothing yet: any record it then sees counts as
    /// fresh, so a standby that just started waits a whole TTL.
    pub fn new(ttl: Duration) -> Self {
        LeaseWatch { ttl, seen: None }
    }

    /// Judges the lease at `now` from the `record` just read and whether this
    /// process could take the active lock just now (`lock_free`).
    pub fn judge(
        &mut self,
        record: Option<&LeaseRecord>,
        lock_free: bool,
        now: Instant,
    ) -> Verdict {
        let Some(record) = record else {
            return Verdict::Free("no master holds the lease");
        };
        if record.released {
            return Verdict::Free("the last master released the lease");
        }
        if record.locked && lock_free {
            return Verdict::Free("the lease holder died (its active lock is free)");
        }
        let state = (record.holder.clone(), record.epoch, record.renewals);
        match &self.seen {
            Some((last, _)) if *last == state => {}
            _ => self.seen = Some((state, now)),
        }
        let since = self.seen.as_ref().map_or(now, |(_, at)| *at);
        if now.saturating_duration_since(since) >= self.ttl {
            Verdict::Free("the lease was not renewed for a whole lease TTL")
        } else {
            Verdict::Held(record.address.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(renewals: u64) -> LeaseRecord {
        LeaseRecord {
            holder: "master".into(),
            address: "127.0.0.1:1".into(),
            epoch: 3,
            renewals,
            locked: false,
            released: false,
            written_unix_ms: 0,
        }
    }

    /// The standby judges expiry only from changes it observes, on its own
    /// monotonic clock: a record whose wall-clock stamp is far in the past or
    /// future changes nothing, and a renewal resets the wait.
    #[tokio::test(start_paused = true)]
    async fn expiry_is_judged_on_the_standbys_own_clock_from_observed_renewals() {
        let ttl = Duration::from_secs(2);
        let mut watch = LeaseWatch::new(ttl);
        let start = Instant::now();
        let mut skewed = record(1);
        skewed.written_unix_ms = 1; // 1970, as if the holder's clock were way behind
        assert_eq!(
            watch.judge(Some(&skewed), false, start),
            Verdict::Held("127.0.0.1:1".into())
        );
        assert!(matches!(
            watch.judge(Some(&skewed), false, start + ttl - Duration::from_millis(1)),
            Verdict::Held(_)
        ));
        // A renewal just before the TTL: the wait starts again.
        let at = start + ttl - Duration::from_millis(1);
        assert!(matches!(
            watch.judge(Some(&record(2)), false, at),
            Verdict::Held(_)
        ));
        assert!(matches!(
            watch.judge(Some(&record(2)), false, at + ttl - Duration::from_millis(1)),
            Verdict::Held(_)
        ));
        assert!(matches!(
            watch.judge(Some(&record(2)), false, at + ttl),
            Verdict::Free(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_or_a_dead_holders_lock_frees_it_at_once() {
        let mut watch = LeaseWatch::new(Duration::from_secs(2));
        let now = Instant::now();
        assert!(matches!(watch.judge(None, false, now), Verdict::Free(_)));
        let mut released = record(5);
        released.released = true;
        assert!(matches!(
            watch.judge(Some(&released), false, now),
            Verdict::Free(_)
        ));
        let mut locked = record(5);
        locked.locked = true;
        assert!(matches!(
            watch.judge(Some(&locked), false, now),
            Verdict::Held(_)
        ));
        assert!(matches!(
            watch.judge(Some(&locked), true, now),
            Verdict::Free(_)
        ));
        // A holder that never got the lock (it took over from a paused one):
        // a free lock means nothing.
        assert!(matches!(
            watch.judge(Some(&record(5)), true, now),
            Verdict::Held(_)
        ));
    }

    #[test]
    fn write_then_read_round_trips_and_the_active_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let file = LeaseFile::new(dir.path(), "master");
        assert_eq!(file.read().unwrap(), None);
        file.write(&record(7)).unwrap();
        assert_eq!(file.read().unwrap(), Some(record(7)));
        let other = LeaseFile::new(dir.path(), "backup");
        let held = file.try_lock_active().unwrap();
        assert!(held.is_some());
        assert!(other.try_lock_active().unwrap().is_none());
        drop(held);
        assert!(other.try_lock_active().unwrap().is_some());
    }
}
