//! The WRITE path: validate, deduplicate, log (fsync), replicate to `r`
//! slaves, acknowledge.
//!
//! Invariant (persist before acknowledge): a WRITE is appended to the log and
//! fsynced (group commit) *before* it is sent to any slave, and acknowledged
//! only after every slave of its quorum stored it. A slave stores it only if no
//! newer master has fenced it (checked in the slave's write transaction), which
//! is what makes an acknowledgement by a deposed master impossible (see
//! [`super::term`]). Checked by `tests/failover.rs` and `master::tests`.
//!
//! Invariant (exactly once): a WRITE that carries its client's id and number is
//! applied at most once, whichever master receives its retries (see
//! [`super::sessions`]); a retry is answered with the original version, after
//! making sure the original reached its quorum. Checked by
//! `master::tests::a_retry_after_failover_is_not_applied_again`.
//!
//! Rule for WRITEs short of a quorum: a WRITE is checked against the live slave
//! count before it is logged, so the common case fails cleanly with nothing
//! logged. If slaves die *while* it replicates, the record is already in the
//! log: the client gets UNAVAILABLE ("outcome unknown", like a timeout), the
//! key's metadata moves to the new version with whatever replicas acked, and
//! background re-replication completes it from a replica or from the log. The
//! log is the source of truth; nothing in it is ever rolled back.
//!
//! The work of a WRITE runs in its own task: a client that gives up (tonic then
//! drops the request's future) cannot stop it between its log append and its
//! report to the session table.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::Status;

use super::index::SlaveIdx;
use super::sessions::Begin;
use super::slaves::SlaveHandle;
use super::{Master, Term, lock, placement};
use crate::metrics;
use crate::version::Version;
use crate::wal::{LogPos, Origin};

/// TEST-ONLY (feature `chaos-broken-ack`, flag `--chaos-broken-ack`):
/// when set, a WRITE is acknowledged as soon as it is logged and replicated
/// in the background — the bug the nemesis must catch (a READ right after
/// the acknowledgement still finds the previous version).
#[cfg(feature = "chaos-broken-ack")]
pub static BROKEN_ACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Who sent a WRITE, when the client numbered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientWrite {
    /// The WRITE's identity.
    pub origin: Origin,
    /// Every WRITE of the client numbered below this was answered.
    pub answered_below: u64,
}

impl ClientWrite {
    /// From the request's fields; `None` when the client did not number it.
    pub fn from_request(client_id: u64, client_seq: u64, answered_below: u64) -> Option<Self> {
        (client_id != 0 && client_seq != 0).then_some(ClientWrite {
            origin: Origin {
                client: client_id,
                seq: client_seq,
            },
            answered_below,
        })
    }
}

/// What a WRITE did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Its version.
    pub version: Version,
    /// It was a retry of a WRITE already applied: nothing new was written.
    pub deduplicated: bool,
}

impl Master {
    /// A WRITE: validate, deduplicate, log (fsync), replicate to `r` slaves,
    /// acknowledge.
    pub async fn write(
        &self,
        key: Bytes,
        value: Bytes,
        client: Option<ClientWrite>,
    ) -> Result<Written, Status> {
        self.config
            .limits
            .check_write(&key, &value)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let term = self.serving_term()?;
        let Some(client) = client else {
            let master = self
                .me
                .upgrade()
                .ok_or_else(|| Status::unavailable("shutting down"))?;
            return spawned(async move { master.write_fresh(&term, key, value, None).await }).await;
        };
        loop {
            let begun =
                lock(&self.sessions).begin(client.origin, client.answered_below, Instant::now());
            match begun.map_err(|e| Status::failed_precondition(e.to_string()))? {
                Begin::Fresh(ticket) => {
                    let master = self
                        .me
                        .upgrade()
                        .ok_or_else(|| Status::unavailable("shutting down"))?;
                    let origin = client.origin;
                    return spawned(async move {
                        let result = master.write_fresh(&term, key, value, Some(origin)).await;
                        drop(ticket);
                        result
                    })
                    .await;
                }
                Begin::Wait(mut done) => {
                    let _ = done.wait_for(|done| *done).await;
                }
                Begin::Logged { version, key, pos } => {
                    metrics::DEDUPLICATED_WRITES.inc();
                    return self.complete_retry(&term, key, version, pos).await;
                }
            }
        }
    }

    /// A WRITE seen for the first time.
    async fn write_fresh(
        &self,
        term: &Arc<Term>,
        key: Bytes,
        value: Bytes,
        origin: Option<Origin>,
    ) -> Result<Written, Status> {
        let r = term.replication_factor as usize;
        let candidates = placement::write_order(&lock(&self.slaves).placeable());
        if candidates.len() < r {
            if let Some(origin) = origin {
                lock(&self.sessions).abandon(origin);
            }
            return Err(Status::unavailable(format!(
                "only {} slave(s) are live; a WRITE needs {r} (replication factor); nothing was written",
                candidates.len()
            )));
        }
        fail::fail_point!(crate::faults::BEFORE_LOG_APPEND, |_| {
            crate::faults::crash(crate::faults::BEFORE_LOG_APPEND)
        });
        let appended = term.writer.append(key.clone(), value.clone(), origin).await;
        let (version, pos) = match appended {
            Ok(done) => done,
            Err(e) => {
                if let Some(origin) = origin {
                    lock(&self.sessions).abandon(origin);
                }
                return Err(term.log_append_failed(e));
            }
        };
        // Retries wait (the session entry stays in flight) until this attempt
        // has its outcome, then see it as logged.
        let note_logged = || {
            if let Some(origin) = origin {
                lock(&self.sessions).logged(origin, version, key.clone(), pos, Instant::now());
            }
        };
        fail::fail_point!(crate::faults::AFTER_FSYNC_BEFORE_REPLICATION, |_| {
            crate::faults::crash(crate::faults::AFTER_FSYNC_BEFORE_REPLICATION)
        });
        self.log_end_seq.fetch_max(version.seq, Ordering::SeqCst);
        #[cfg(feature = "chaos-broken-ack")]
        if BROKEN_ACK.load(Ordering::SeqCst)
            && let Some(me) = self.me.upgrade()
        {
            // Deliberately wrong: acknowledge now, replicate later.
            note_logged();
            let term = term.clone();
            tokio::spawn(async move {
                let acked = me
                    .replicate(&term, &key, &value, version, &candidates)
                    .await;
                lock(&me.index).record(&key, version, pos, acked);
                me.repair.notify_one();
            });
            return Ok(Written {
                version,
                deduplicated: false,
            });
        }
        let acked = self
            .replicate(term, &key, &value, version, &candidates)
            .await;
        note_logged();
        self.settle_write(term, &key, version, pos, acked, false)
    }

    /// Records where a WRITE landed and decides its answer.
    fn settle_write(
        &self,
        term: &Term,
        key: &Bytes,
        version: Version,
        pos: LogPos,
        acked: Vec<SlaveIdx>,
        deduplicated: bool,
    ) -> Result<Written, Status> {
        let r = term.replication_factor as usize;
        let reached = acked.len();
        lock(&self.index).record(key, version, pos, acked);
        if reached < r {
            self.repair.notify_one();
            term.check_can_ack()?;
            return Err(Status::unavailable(format!(
                "WRITE {version} is in the log but reached only {reached} of {r} slaves before they failed; \
                 it will be re-replicated when slaves return (outcome unknown, like a timeout)"
            )));
        }
        term.check_can_ack()?;
        term.note_committed(version.seq);
        fail::fail_point!(crate::faults::AFTER_QUORUM_BEFORE_REPLY, |_| {
            crate::faults::crash(crate::faults::AFTER_QUORUM_BEFORE_REPLY)
        });
        Ok(Written {
            version,
            deduplicated,
        })
    }

    /// A retry of a WRITE already in the log: answered with its version once
    /// it is known to be in the log for good; a WRITE of this term that has
    /// not reached its quorum yet is sent to the slaves again first.
    async fn complete_retry(
        &self,
        term: &Arc<Term>,
        key: Bytes,
        version: Version,
        pos: LogPos,
    ) -> Result<Written, Status> {
        let done = Written {
            version,
            deduplicated: true,
        };
        if version.seq <= term.committed() {
            return Ok(done);
        }
        let latest = lock(&self.index).get(&key).map(|meta| meta.version);
        if latest.is_some_and(|latest| latest > version && latest.seq <= term.committed()) {
            // A later WRITE of the key reached its quorum: this one is before
            // it in the log, so it is there for good too.
            return Ok(done);
        }
        let value = self.read_log(&key, version, pos).await?;
        let candidates = placement::write_order(&lock(&self.slaves).placeable());
        let acked = self
            .replicate(term, &key, &value, version, &candidates)
            .await;
        self.settle_write(term, &key, version, pos, acked, true)
    }

    /// Sends the value to the first `r` candidates in parallel, replacing
    /// each one that fails by the next candidate. Returns who stored it.
    pub(super) async fn replicate(
        &self,
        term: &Term,
        key: &Bytes,
        value: &Bytes,
        version: Version,
        candidates: &[Arc<SlaveHandle>],
    ) -> Vec<SlaveIdx> {
        let r = term.replication_factor as usize;
        let send = |slave: Arc<SlaveHandle>| async move {
            let result = self.put_to(term, &slave, key, value, version, false).await;
            (slave, result)
        };
        let mut next = candidates.len().min(r);
        let mut in_flight: FuturesUnordered<_> =
            candidates[..next].iter().cloned().map(send).collect();
        let mut acked = Vec::with_capacity(r);
        while let Some((slave, result)) = in_flight.next().await {
            match result {
                Ok(_) => {
                    acked.push(slave.idx);
                    if acked.len() == r {
                        break;
                    }
                }
                Err(_) if term.is_deposed() => break,
                Err(_) => {
                    if let Some(spare) = candidates.get(next).cloned() {
                        next += 1;
                        in_flight.push(send(spare));
                    }
                }
            }
        }
        acked
    }
}

/// Runs a WRITE's work in its own task, so that it finishes even if the
/// caller stops waiting.
async fn spawned(
    work: impl Future<Output = Result<Written, Status>> + Send + 'static,
) -> Result<Written, Status> {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(Status::internal(format!("the WRITE task failed: {e}"))))
}
