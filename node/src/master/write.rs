//! The WRITE path (DELETEs and conditional WRITEs included): validate,
//! deduplicate, check the condition, log, replicate to `r` slaves while the
//! log syncs, acknowledge.
//!
//! Invariant (persist before acknowledge): a WRITE is written to the log
//! (group commit) before it is sent to any slave, and acknowledged only once
//! the log reports it durable (its fsync returned, and no newer epoch was
//! claimed after it: [`crate::wal::Appended::durable`]) *and* every slave of
//! its quorum stored it. The fsync and the slaves' stores run in parallel, so
//! a WRITE costs one fsync plus a slave's round trip, not both in a row. A
//! slave stores it only if no newer master has fenced it (checked in the
//! slave's write transaction); together with the claim check this is what
//! makes an acknowledgement by a deposed master impossible (see
//! [`super::term`]). Checked by `tests/failover.rs`, `tests/crash_points.rs`
//! and `master::tests`.
//!
//! A slave may hold a version the log never got: the master (or its machine)
//! died after the slaves stored it and before the fsync. Such a *stray* is
//! never acknowledged, and is beyond the next term's cut or absent from the
//! log, so no READ may return it: a READ asks only for the version the index
//! holds (and falls back to other holders, then to the log), and the next
//! term overwrites it, for a key the index knows, when it reads the slave's
//! inventory (`control::activate_after_inventory`; a stray of a key the index
//! does not know is never read, and the key's next WRITE supersedes it). Its version's epoch is older than
//! any later WRITE's, so it never wins over one. Checked by
//! `tests/crash_points.rs` (`a_write_the_log_lost_is_never_read`).
//!
//! Invariant (exactly once): a WRITE that carries its client's id and number is
//! applied at most once, whichever master receives its retries (see
//! [`super::sessions`]); a retry is answered with the original version, after
//! making sure the original reached its quorum. Checked by
//! `master::tests::a_retry_after_failover_is_not_applied_again`.
//!
//! Invariant (a condition is checked against the key's latest logged version):
//! a conditional WRITE or DELETE compares its expectation with the latest
//! version *in the log* (acknowledged or still replicating), and is appended
//! before any other WRITE of the key can be: a key's WRITEs hold a shared lock
//! of the key's stripe from their check to their append, conditional ones the
//! exclusive lock. A failed condition is an observation, answered only once the
//! term is confirmed ([`super::barrier`]) and once READs return the version it
//! observed: a refusal naming a WRITE still replicating, answered at once,
//! would let a READ after it return the older value (the nemesis's CAS
//! counters found this). Checked by
//! `master::tests::concurrent_compare_and_sets_of_one_version_let_one_win` and
//! `master::tests::a_refusal_is_answered_once_reads_see_what_it_observed`.
//!
//! A DELETE is a WRITE of a tombstone; deleting a key that does not exist
//! writes nothing.
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

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::RwLock;
use tokio::time::Instant;

use super::error::MasterError;
use super::index::SlaveIdx;
use super::sessions::{Begin, Logged};
use super::slaves::SlaveHandle;
use super::{Master, Term, lock, placement};
use crate::metrics;
use crate::version::{Expect, Version};
use crate::wal::{LogPos, Origin};

/// TEST-ONLY (feature `chaos-broken-ack`, flag `--chaos-broken-ack`):
/// when set, a WRITE is acknowledged as soon as it is logged and replicated
/// in the background — the bug the nemesis must catch (a READ right after
/// the acknowledgement still finds the previous version).
#[cfg(feature = "chaos-broken-ack")]
pub static BROKEN_ACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stripes of the per-key locks (keys hash to one).
const STRIPES: usize = 256;

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

/// A change to one key: a WRITE, or a DELETE (`value` is `None`).
#[derive(Clone, Debug)]
pub struct Mutation {
    /// The key.
    pub key: Bytes,
    /// The new value; `None` deletes the key.
    pub value: Option<Bytes>,
    /// Apply only if the key is in this state.
    pub expect: Option<Expect>,
    /// The client's numbering, for exactly-once.
    pub client: Option<ClientWrite>,
}

/// What a WRITE or DELETE did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The version it wrote; `None` for a DELETE of a key that did not exist.
    pub version: Option<Version>,
    /// It was a retry of one already applied: nothing new was written.
    pub deduplicated: bool,
}

/// The per-key locks and what is logged but not yet in the index.
pub struct KeyOrder {
    stripes: Vec<RwLock<()>>,
    hasher: RandomState,
    /// The latest version appended for keys whose WRITE is still
    /// replicating (so not in the index yet), and whether it deletes.
    pub(super) in_flight: std::sync::Mutex<HashMap<Bytes, (Version, bool)>>,
    /// Woken whenever a WRITE is recorded in the index, for observations
    /// waiting until READs return what they saw in flight.
    recorded: tokio::sync::Notify,
}

impl Default for KeyOrder {
    fn default() -> Self {
        KeyOrder {
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            hasher: RandomState::new(),
            in_flight: std::sync::Mutex::new(HashMap::new()),
            recorded: tokio::sync::Notify::new(),
        }
    }
}

impl KeyOrder {
    fn stripe(&self, key: &[u8]) -> &RwLock<()> {
        let hash = self.hasher.hash_one(key) as usize;
        &self.stripes[hash % self.stripes.len()]
    }

    fn appended(&self, key: &Bytes, version: Version, deleted: bool) {
        let mut in_flight = lock(&self.in_flight);
        let entry = in_flight.entry(key.clone()).or_insert((version, deleted));
        if entry.0 < version {
            *entry = (version, deleted);
        }
    }

    /// Called once the index holds `version` (never before: see
    /// `Master::latest_logged`), or when it is known not to be durable.
    fn recorded(&self, key: &[u8], version: Version) {
        {
            let mut in_flight = lock(&self.in_flight);
            if in_flight.get(key).is_some_and(|(v, _)| *v <= version) {
                in_flight.remove(key);
            }
        }
        self.recorded.notify_waiters();
    }
}

impl std::fmt::Debug for KeyOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyOrder").finish_non_exhaustive()
    }
}

/// The refusal of a condition that does not hold.
fn condition_failed(key: &[u8], current: Option<Version>) -> MasterError {
    let shown = match current {
        Some(v) => format!("is at version {v}"),
        None => "does not exist".to_string(),
    };
    MasterError::ConditionFailed {
        message: format!(
            "condition not met: key {} {shown}; nothing was changed",
            crate::quoting::escape(key)
        ),
        current,
    }
}

impl Master {
    /// A WRITE: validate, deduplicate, log, replicate to `r` slaves while the
    /// log syncs, acknowledge.
    pub async fn write(
        &self,
        key: Bytes,
        value: Bytes,
        client: Option<ClientWrite>,
    ) -> Result<Written, MasterError> {
        self.apply(Mutation {
            key,
            value: Some(value),
            expect: None,
            client,
        })
        .await
    }

    /// A WRITE, DELETE or conditional one (module doc).
    pub async fn apply(&self, mutation: Mutation) -> Result<Written, MasterError> {
        let limits = &self.config.limits;
        match &mutation.value {
            Some(value) => limits.check_write(&mutation.key, value),
            None => limits.check_key(&mutation.key),
        }
        .map_err(|e| MasterError::invalid(e.to_string()))?;
        let term = self.serving_term()?;
        let master = self
            .me
            .upgrade()
            .ok_or_else(|| MasterError::unavailable("shutting down"))?;
        let Some(client) = mutation.client else {
            return spawned(async move { master.apply_fresh(&term, mutation).await }).await;
        };
        loop {
            let begun =
                lock(&self.sessions).begin(client.origin, client.answered_below, Instant::now());
            match begun.map_err(|e| MasterError::refused(e.to_string()))? {
                Begin::Fresh(ticket) => {
                    let mutation = mutation.clone();
                    return spawned(async move {
                        let result = master.apply_fresh(&term, mutation).await;
                        drop(ticket);
                        result
                    })
                    .await;
                }
                Begin::Wait(mut done) => {
                    let _ = done.wait_for(|done| *done).await;
                }
                Begin::Logged(logged) => {
                    metrics::master().deduplicated_writes.inc();
                    return self.complete_retry(&term, logged).await;
                }
            }
        }
    }

    /// The key's latest version in the log, with whether it deletes: what a
    /// condition is checked against.
    ///
    /// In-flight first, then the index: a WRITE that settles moves its version
    /// from in flight to the index in the other order (`settle_write`: the
    /// index first), so whenever it settles relative to these two looks, one
    /// of them sees it. The other order lost it when it settled in between —
    /// the index looked at before, in-flight after — and two CASes on one
    /// version both succeeded (found by the nemesis).
    fn latest_logged(&self, key: &[u8]) -> Option<(Version, bool)> {
        let in_flight = lock(&self.ordering.in_flight).get(key).copied();
        let indexed = lock(&self.index)
            .get(key)
            .map(|meta| (meta.version, meta.deleted));
        indexed.max(in_flight)
    }

    /// Waits until READs return `version` of `key` or a later one: until the
    /// index holds it, or nothing of the key is still replicating.
    async fn wait_recorded(&self, key: &[u8], version: Version) {
        loop {
            // Registered before looking, so a recording in between wakes it.
            let notified = self.ordering.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let indexed = lock(&self.index)
                .get(key)
                .is_some_and(|meta| meta.version >= version);
            if indexed || !lock(&self.ordering.in_flight).contains_key(key) {
                return;
            }
            notified.await;
        }
    }

    /// A WRITE or DELETE seen for the first time.
    async fn apply_fresh(
        &self,
        term: &Arc<Term>,
        mutation: Mutation,
    ) -> Result<Written, MasterError> {
        let Mutation {
            key,
            value,
            expect,
            client,
        } = mutation;
        let origin = client.map(|c| c.origin);
        let abandon = || {
            if let Some(origin) = origin {
                lock(&self.sessions).abandon(origin);
            }
        };
        let r = term.replication_factor as usize;
        let candidates = placement::write_order(&lock(&self.slaves).placeable());
        if candidates.len() < r {
            abandon();
            return Err(MasterError::unavailable(format!(
                "only {} slave(s) are live; a WRITE needs {r} (replication factor); nothing was written",
                candidates.len()
            )));
        }
        // A DELETE of a key that does not exist has nothing to do; knowing
        // that is an observation, like a condition.
        let observe = expect.is_some() || value.is_none();
        let stripe = self.ordering.stripe(&key);
        let (shared, exclusive) = if observe {
            (None, Some(stripe.write().await))
        } else {
            (Some(stripe.read().await), None)
        };
        if observe {
            let latest = self.latest_logged(&key);
            let current = latest.and_then(|(v, deleted)| (!deleted).then_some(v));
            let refused = match expect {
                Some(expect) if !expect.holds(current) => Some(condition_failed(&key, current)),
                _ => None,
            };
            if refused.is_some() || (value.is_none() && current.is_none()) {
                drop(exclusive);
                abandon();
                if let Some((observed, _)) = latest {
                    self.wait_recorded(&key, observed).await;
                }
                term.barrier.ticket().await?;
                term.check_can_ack()?;
                return match refused {
                    Some(refusal) => Err(refusal),
                    None => Ok(Written {
                        version: None,
                        deduplicated: false,
                    }),
                };
            }
        }
        fail::fail_point!(crate::crash_points::BEFORE_LOG_APPEND, |_| {
            crate::crash_points::crash(crate::crash_points::BEFORE_LOG_APPEND)
        });
        let tombstone = value.is_none();
        let appended = match term.writer.write(key.clone(), value.clone(), origin).await {
            Ok(appended) => appended,
            Err(e) => {
                abandon();
                return Err(term.log_append_failed(e));
            }
        };
        let (version, pos) = (appended.version, appended.pos);
        self.ordering.appended(&key, version, tombstone);
        drop(shared);
        drop(exclusive);
        // Retries wait (the session entry stays in flight) until this attempt
        // has its outcome, then see it as logged.
        let note_logged = || {
            if let Some(origin) = origin {
                let logged = Logged {
                    version,
                    key: key.clone(),
                    pos,
                    tombstone,
                };
                lock(&self.sessions).logged(origin, logged, Instant::now());
            }
        };
        // Not durable, maybe not in the log at all: nothing may point at it.
        // What the slaves stored is a stray the next term overwrites. The
        // term ends first, so that an observation waiting for this version
        // (`wait_recorded`) wakes to a term that cannot answer.
        let not_durable = |e| {
            let error = term.log_append_failed(e);
            self.ordering.recorded(&key, version);
            abandon();
            error
        };
        // The log syncs while the slaves store (module doc).
        let durable = async {
            let durable = appended.durable().await;
            fail::fail_point!(crate::crash_points::AFTER_LOG_DURABLE, |_| {
                crate::crash_points::crash(crate::crash_points::AFTER_LOG_DURABLE)
            });
            durable
        };
        #[cfg(feature = "chaos-broken-ack")]
        if BROKEN_ACK.load(Ordering::SeqCst)
            && let Some(me) = self.me.upgrade()
        {
            // Deliberately wrong: acknowledge once logged, replicate later.
            if let Err(e) = durable.await {
                return Err(not_durable(e));
            }
            self.log_end_seq.fetch_max(version.seq, Ordering::SeqCst);
            note_logged();
            let term = term.clone();
            tokio::spawn(async move {
                let acked = me
                    .replicate(&term, &key, value.as_ref(), version, &candidates)
                    .await;
                lock(&me.index).record(&key, version, pos, acked, tombstone);
                me.ordering.recorded(&key, version);
                me.repair.notify_one();
            });
            return Ok(Written {
                version: Some(version),
                deduplicated: false,
            });
        }
        let replicated = async {
            let acked = self
                .replicate(term, &key, value.as_ref(), version, &candidates)
                .await;
            fail::fail_point!(crate::crash_points::AFTER_REPLICATION, |_| {
                crate::crash_points::crash(crate::crash_points::AFTER_REPLICATION)
            });
            acked
        };
        let (durable, acked) = tokio::join!(durable, replicated);
        if let Err(e) = durable {
            return Err(not_durable(e));
        }
        self.log_end_seq.fetch_max(version.seq, Ordering::SeqCst);
        note_logged();
        self.settle_write(term, &key, version, pos, tombstone, acked, false)
    }

    /// Records where a WRITE landed and decides its answer.
    #[allow(clippy::too_many_arguments)]
    fn settle_write(
        &self,
        term: &Term,
        key: &Bytes,
        version: Version,
        pos: LogPos,
        tombstone: bool,
        acked: Vec<SlaveIdx>,
        deduplicated: bool,
    ) -> Result<Written, MasterError> {
        let r = term.replication_factor as usize;
        let reached = acked.len();
        lock(&self.index).record(key, version, pos, acked, tombstone);
        self.ordering.recorded(key, version);
        if reached < r {
            self.repair.notify_one();
            term.check_can_ack()?;
            return Err(MasterError::unavailable(format!(
                "WRITE {version} is in the log but reached only {reached} of {r} slaves before they failed; \
                 it will be re-replicated when slaves return (outcome unknown, like a timeout)"
            )));
        }
        term.check_can_ack()?;
        term.note_committed(version.seq);
        fail::fail_point!(crate::crash_points::AFTER_QUORUM_BEFORE_REPLY, |_| {
            crate::crash_points::crash(crate::crash_points::AFTER_QUORUM_BEFORE_REPLY)
        });
        Ok(Written {
            version: Some(version),
            deduplicated,
        })
    }

    /// A retry of a WRITE already in the log: answered with its version once
    /// it is known to be in the log for good; a WRITE of this term that has
    /// not reached its quorum yet is sent to the slaves again first.
    async fn complete_retry(
        &self,
        term: &Arc<Term>,
        logged: Logged,
    ) -> Result<Written, MasterError> {
        let Logged {
            version,
            key,
            pos,
            tombstone,
        } = logged;
        let done = Written {
            version: Some(version),
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
        let value = if tombstone {
            None
        } else {
            Some(self.read_log(&key, version, pos).await?)
        };
        let candidates = placement::write_order(&lock(&self.slaves).placeable());
        let acked = self
            .replicate(term, &key, value.as_ref(), version, &candidates)
            .await;
        self.settle_write(term, &key, version, pos, tombstone, acked, true)
    }

    /// Sends the value (`None`: a tombstone) to the first `r` candidates in
    /// parallel, replacing each one that fails by the next candidate. Returns
    /// who stored it.
    pub(super) async fn replicate(
        &self,
        term: &Term,
        key: &Bytes,
        value: Option<&Bytes>,
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
    work: impl Future<Output = Result<Written, MasterError>> + Send + 'static,
) -> Result<Written, MasterError> {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(MasterError::internal(format!("the WRITE task failed: {e}"))))
}
