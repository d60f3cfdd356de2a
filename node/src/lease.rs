//! The leadership lease shared by the two master-capable processes.
//!
//! The lease lives in the shared log directory (`lease`, JSON), so it works
//! the same on a laptop and on a shared PersistentVolume. It expires unless
//! renewed: a master that is killed *or paused* (SIGSTOP) stops renewing, and
//! the standby takes over once the lease has expired plus a safety margin. A
//! lock held for life would not do: a paused process keeps its lock forever.
//!
//! Every read-modify-write of the lease (and of the epoch history written at
//! takeover) happens under an exclusive `flock` on `lease.lock`, held only for
//! that short critical section, never while serving.
//!
//! Timing contract: the holder measures its own deadline from the monotonic
//! instant *before* it wrote the renewal, so its deadline always ends before
//! the wall-clock expiry others read; a holder past its deadline must not
//! acknowledge anything until it has renewed again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// File holding the lease record.
pub const LEASE_FILE: &str = "lease";
/// File locked while the lease (or the epoch history) is changed.
pub const LOCK_FILE: &str = "lease.lock";

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
    #[error(
        "lease file {path} is not valid JSON ({source}); remove it only if no master is running"
    )]
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
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
}

impl LeaseRecord {
    /// True when the lease is free for someone else: expired by more than
    /// `margin` (room for clock granularity and scheduling between hosts).
    pub fn is_expired(&self, now_unix_ms: u64, margin: Duration) -> bool {
        now_unix_ms
            > self
                .expires_unix_ms
                .saturating_add(margin.as_millis() as u64)
    }
}

/// Milliseconds since the Unix epoch, now.
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
}

/// Proof that the caller holds the lease lock; released on drop.
pub struct LeaseLock {
    file: File,
}

impl Drop for LeaseLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the flock anyway; unlocking
        // explicitly just makes the release immediate and visible.
        let _ = self.file.unlock();
    }
}

impl LeaseFile {
    /// Lease files in `dir` (the shared log directory).
    pub fn new(dir: &Path) -> Self {
        LeaseFile {
            dir: dir.to_path_buf(),
        }
    }

    fn io(&self, name: &str) -> impl FnOnce(std::io::Error) -> LeaseError {
        let path = self.dir.join(name);
        move |source| LeaseError::Io { path, source }
    }

    /// Takes the exclusive lock (blocking). Keep the critical section short.
    pub fn lock(&self) -> Result<LeaseLock, LeaseError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))
            .map_err(self.io(LOCK_FILE))?;
        file.lock().map_err(self.io(LOCK_FILE))?;
        Ok(LeaseLock { file })
    }

    /// Reads the lease; `None` when no master ever held it.
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

    /// Replaces the lease atomically (write to a temporary file, fsync,
    /// rename, fsync the directory). Requires the lock.
    pub fn write(&self, _lock: &LeaseLock, record: &LeaseRecord) -> Result<(), LeaseError> {
        let tmp = format!("{LEASE_FILE}.tmp");
        let mut file = File::create(self.dir.join(&tmp)).map_err(self.io(&tmp))?;
        let json = serde_json::to_vec(record).map_err(|source| LeaseError::Malformed {
            path: self.dir.join(&tmp),
            source,
        })?;
        file.write_all(&json).map_err(self.io(&tmp))?;
        file.sync_data().map_err(self.io(&tmp))?;
        std::fs::rename(self.dir.join(&tmp), self.dir.join(LEASE_FILE))
            .map_err(self.io(LEASE_FILE))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("."))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_includes_the_margin() {
        let lease = LeaseRecord {
            holder: "m".into(),
            address: "a".into(),
            epoch: 1,
            expires_unix_ms: 1_000,
        };
        let margin = Duration::from_millis(500);
        assert!(!lease.is_expired(900, margin));
        assert!(!lease.is_expired(1_500, margin));
        assert!(lease.is_expired(1_501, margin));
    }

    #[test]
    fn write_then_read_round_trips() -> Result<(), LeaseError> {
        let dir = tempfile::tempdir().map_err(|source| LeaseError::Io {
            path: PathBuf::from("tmp"),
            source,
        })?;
        let file = LeaseFile::new(dir.path());
        assert_eq!(file.read()?, None);
        let record = LeaseRecord {
            holder: "master".into(),
            address: "127.0.0.1:1".into(),
            epoch: 7,
            expires_unix_ms: 42,
        };
        let lock = file.lock()?;
        file.write(&lock, &record)?;
        drop(lock);
        assert_eq!(file.read()?, Some(record));
        Ok(())
    }
}
