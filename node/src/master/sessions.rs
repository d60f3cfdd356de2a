//! Exactly-once WRITEs: the table of client WRITEs a master may still be asked
//! to repeat.
//!
//! A client numbers its WRITEs; the pair (client id, number) travels in the
//! WRITE and in its log record ([`crate::wal::Origin`]). Before applying a WRITE
//! the master looks the pair up here:
//! - unknown: a new WRITE; it is marked in flight until its log append is done,
//!   then remembered with its version and log position;
//! - in flight: the same WRITE is still running (an earlier attempt whose
//!   answer the client gave up on): wait for it, then look again;
//! - remembered: a retry. It is answered with the original version and never
//!   applied again (`master::write` first makes sure the original reached its
//!   quorum).
//!
//! The table is rebuilt from the log on replay, so a retry sent to the next
//! master after a failover is recognised too; compaction keeps every record
//! still in the table (`master::compaction`).
//!
//! Memory: a client says with each WRITE which of its numbers have all been
//! answered (`client_answered_below`); those are forgotten at once, so a client
//! costs one entry per WRITE it has in flight, at most [`MAX_WINDOW`]. A replay,
//! which cannot know what was answered, keeps each client's newest
//! [`MAX_WINDOW`] logged WRITEs (`Session::keep_window` says why that is enough). A client
//! that stays silent for [`SESSION_TTL`] is forgotten (far longer than any
//! client's retry budget; a retry arriving later than that could be applied
//! twice), and beyond [`MAX_SESSIONS`] clients the least recently seen idle one
//! is. Tested by the `sessions::tests` below and by `master::tests`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::version::Version;
use crate::wal::{LogPos, Origin};

/// A silent client's session is forgotten after this long.
pub const SESSION_TTL: Duration = Duration::from_secs(300);
/// WRITEs one client may have unanswered (in flight or being retried).
pub const MAX_WINDOW: usize = 4096;
/// Clients remembered at most.
pub const MAX_SESSIONS: usize = 100_000;

/// A client WRITE (or DELETE) that is in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// Its version.
    pub version: Version,
    /// Its key.
    pub key: Bytes,
    /// Its record's position.
    pub pos: LogPos,
    /// It was a DELETE.
    pub tombstone: bool,
}

/// A WRITE the table knows.
#[derive(Clone, Debug)]
enum Entry {
    /// Being applied; the sender flips to `true` (or is dropped) when done.
    InFlight(watch::Receiver<bool>),
    /// In the log.
    Logged(Logged),
}

/// One client's WRITEs.
#[derive(Debug)]
struct Session {
    /// Every WRITE numbered below this was answered.
    answered_below: u64,
    writes: BTreeMap<u64, Entry>,
    last_seen: Instant,
}

/// What to do with a WRITE, from [`Sessions::begin`].
#[derive(Debug)]
pub enum Begin {
    /// A new WRITE: apply it, then report with [`Sessions::logged`] (or
    /// [`Sessions::abandon`] if nothing was logged). Dropping the ticket
    /// wakes whoever waits for this WRITE.
    Fresh(Ticket),
    /// An earlier attempt of the same WRITE is still running: wait, then ask
    /// again.
    Wait(watch::Receiver<bool>),
    /// A retry of a WRITE already in the log.
    Logged(Logged),
}

/// Proof that a fresh WRITE is in flight; wakes its waiters when dropped.
#[derive(Debug)]
pub struct Ticket {
    done: watch::Sender<bool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.done.send_replace(true);
    }
}

/// Why [`Sessions::begin`] refused a WRITE.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The client said this number was answered already.
    #[error(
        "WRITE #{seq} of client {client:016x} was already answered (the client said so); a retry must reuse an unanswered number"
    )]
    AlreadyAnswered {
        /// Client id.
        client: u64,
        /// The WRITE's number.
        seq: u64,
    },
    /// The client has too many WRITEs unanswered.
    #[error(
        "client {client:016x} has {MAX_WINDOW} WRITEs unanswered, the limit; wait for some answers first"
    )]
    WindowFull {
        /// Client id.
        client: u64,
    },
}

/// The table. Not thread-safe by itself: the master keeps it under a mutex
/// held only for these quick calls.
#[derive(Debug, Default)]
pub struct Sessions {
    clients: HashMap<u64, Session>,
}

impl Sessions {
    /// Looks up `origin` before applying it; `answered_below` is what the
    /// client says it has been answered.
    pub fn begin(
        &mut self,
        origin: Origin,
        answered_below: u64,
        now: Instant,
    ) -> Result<Begin, Refused> {
        self.make_room(origin.client, now);
        let session = self.clients.entry(origin.client).or_insert(Session {
            answered_below: 0,
            writes: BTreeMap::new(),
            last_seen: now,
        });
        session.last_seen = now;
        if answered_below > session.answered_below {
            session.answered_below = answered_below;
            // Keep only what the client may still retry (and what is in flight).
            let kept = session.writes.split_off(&answered_below);
            let released = std::mem::replace(&mut session.writes, kept);
            for (seq, entry) in released {
                if matches!(entry, Entry::InFlight(_)) {
                    session.writes.insert(seq, entry);
                }
            }
        }
        if origin.seq < session.answered_below && !session.writes.contains_key(&origin.seq) {
            return Err(Refused::AlreadyAnswered {
                client: origin.client,
                seq: origin.seq,
            });
        }
        match session.writes.get(&origin.seq) {
            // Its attempt ended without reporting (nothing was logged).
            Some(Entry::InFlight(rx)) if *rx.borrow() => {
                let (done, rx) = watch::channel(false);
                session.writes.insert(origin.seq, Entry::InFlight(rx));
                Ok(Begin::Fresh(Ticket { done }))
            }
            Some(Entry::InFlight(rx)) => Ok(Begin::Wait(rx.clone())),
            Some(Entry::Logged(logged)) => Ok(Begin::Logged(logged.clone())),
            None if session.writes.len() >= MAX_WINDOW => Err(Refused::WindowFull {
                client: origin.client,
            }),
            None => {
                let (done, rx) = watch::channel(false);
                session.writes.insert(origin.seq, Entry::InFlight(rx));
                Ok(Begin::Fresh(Ticket { done }))
            }
        }
    }

    /// Records that `origin` is in the log (after the append, or when
    /// replaying the log).
    pub fn logged(&mut self, origin: Origin, logged: Logged, now: Instant) {
        let session = self.clients.entry(origin.client).or_insert(Session {
            answered_below: 0,
            writes: BTreeMap::new(),
            last_seen: now,
        });
        if origin.seq >= session.answered_below {
            session.writes.insert(origin.seq, Entry::Logged(logged));
        }
        session.keep_window();
    }

    /// Forgets an in-flight WRITE that was not logged (its append failed), so
    /// that a retry applies it.
    pub fn abandon(&mut self, origin: Origin) {
        if let Some(session) = self.clients.get_mut(&origin.client)
            && matches!(session.writes.get(&origin.seq), Some(Entry::InFlight(_)))
        {
            session.writes.remove(&origin.seq);
        }
    }

    /// Whether the record of `origin` at `version` may still be needed to
    /// answer a retry (compaction must keep it).
    pub fn retains(&self, origin: Origin, version: Version) -> bool {
        self.clients
            .get(&origin.client)
            .and_then(|s| s.writes.get(&origin.seq))
            .is_some_and(|e| match e {
                Entry::Logged(logged) => logged.version == version,
                Entry::InFlight(_) => true,
            })
    }

    /// A logged WRITE's record moved (compaction).
    pub fn moved(&mut self, origin: Origin, version: Version, to: LogPos) {
        if let Some(Entry::Logged(logged)) = self
            .clients
            .get_mut(&origin.client)
            .and_then(|s| s.writes.get_mut(&origin.seq))
            && logged.version == version
        {
            logged.pos = to;
        }
    }

    /// Forgets clients silent for [`SESSION_TTL`] with nothing in flight.
    pub fn expire(&mut self, now: Instant) {
        self.clients.retain(|_, s| {
            now.saturating_duration_since(s.last_seen) < SESSION_TTL || s.has_in_flight()
        });
    }

    /// Clients remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Before adding a client: expire, then evict the least recently seen
    /// idle one if the table is full.
    fn make_room(&mut self, client: u64, now: Instant) {
        if self.clients.len() < MAX_SESSIONS || self.clients.contains_key(&client) {
            return;
        }
        self.expire(now);
        if self.clients.len() < MAX_SESSIONS {
            return;
        }
        let oldest = self
            .clients
            .iter()
            .filter(|(_, s)| !s.has_in_flight())
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            tracing::warn!(
                client = format!("{id:016x}"),
                "client session table full ({MAX_SESSIONS}); forgetting the least recently seen client"
            );
            crate::metrics::master().sessions_evicted.inc();
            self.clients.remove(&id);
        }
    }
}

impl Session {
    /// Forgets the lowest logged WRITEs beyond [`MAX_WINDOW`]: what a replay
    /// of the log needs, since the log does not say what was answered.
    ///
    /// Why that loses nothing: a master keeps every logged WRITE of a client
    /// from the client's first unanswered number on, and refuses new ones
    /// past [`MAX_WINDOW`] entries; so an unanswered WRITE has fewer than
    /// `MAX_WINDOW` logged ones above it, and anything lower than the client's
    /// newest `MAX_WINDOW` was answered: the client never retries it. On the
    /// live path [`Sessions::begin`] already keeps the count within bounds.
    fn keep_window(&mut self) {
        while self.writes.len() > MAX_WINDOW {
            let lowest_logged = self
                .writes
                .iter()
                .find(|(_, e)| matches!(e, Entry::Logged(_)))
                .map(|(seq, _)| *seq);
            match lowest_logged {
                Some(seq) => self.writes.remove(&seq),
                None => break,
            };
        }
    }

    fn has_in_flight(&self) -> bool {
        self.writes
            .values()
            .any(|e| matches!(e, Entry::InFlight(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(seq: u64) -> Origin {
        Origin { client: 7, seq }
    }

    fn pos(offset: u64) -> LogPos {
        LogPos { file_no: 1, offset }
    }

    fn logged(version: Version, pos: LogPos) -> Logged {
        Logged {
            version,
            key: Bytes::from_static(b"k"),
            pos,
            tombstone: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_of_a_logged_write_gets_the_original_version() {
        let mut s = Sessions::default();
        let now = Instant::now();
        let Ok(Begin::Fresh(ticket)) = s.begin(origin(1), 1, now) else {
            panic!("a new WRITE is fresh");
        };
        // While it runs, a retry waits for it.
        let Ok(Begin::Wait(mut rx)) = s.begin(origin(1), 1, now) else {
            panic!("a concurrent retry waits");
        };
        s.logged(origin(1), logged(Version::new(2, 9), pos(8)), now);
        drop(ticket);
        assert!(rx.wait_for(|done| *done).await.is_ok());
        match s.begin(origin(1), 1, now) {
            Ok(Begin::Logged(found)) => assert_eq!(found, logged(Version::new(2, 9), pos(8))),
            other => panic!("{other:?}"),
        }
        assert!(s.retains(origin(1), Version::new(2, 9)));
        // Once the client says #1 was answered, it is forgotten.
        assert!(matches!(s.begin(origin(2), 2, now), Ok(Begin::Fresh(_))));
        assert!(!s.retains(origin(1), Version::new(2, 9)));
        assert_eq!(
            s.begin(origin(1), 2, now).unwrap_err(),
            Refused::AlreadyAnswered { client: 7, seq: 1 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_append_is_forgotten_so_the_retry_applies_it() {
        let mut s = Sessions::default();
        let now = Instant::now();
        let Ok(Begin::Fresh(ticket)) = s.begin(origin(1), 1, now) else {
            panic!("fresh");
        };
        s.abandon(origin(1));
        drop(ticket);
        assert!(matches!(s.begin(origin(1), 1, now), Ok(Begin::Fresh(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_clients_expire_and_each_window_is_bounded() {
        let mut s = Sessions::default();
        let now = Instant::now();
        s.logged(origin(1), logged(Version::new(1, 1), pos(8)), now);
        assert_eq!(s.len(), 1);
        s.expire(now + SESSION_TTL - Duration::from_secs(1));
        assert_eq!(s.len(), 1);
        s.expire(now + SESSION_TTL);
        assert!(s.is_empty());

        let mut tickets = Vec::new();
        for seq in 1..=MAX_WINDOW as u64 {
            match s.begin(origin(seq), 1, now) {
                Ok(Begin::Fresh(t)) => tickets.push(t),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            s.begin(origin(MAX_WINDOW as u64 + 1), 1, now).unwrap_err(),
            Refused::WindowFull { client: 7 }
        );
        // In-flight WRITEs keep a session alive past its TTL.
        s.expire(now + SESSION_TTL * 2);
        assert_eq!(s.len(), 1);
    }

    /// A replay records every numbered WRITE of the log (it does not know
    /// which were answered) but keeps only a client's newest window of
    /// them: memory stays bounded, and retries of those are still
    /// recognised.
    #[tokio::test(start_paused = true)]
    async fn a_replay_keeps_each_clients_newest_window() {
        let mut s = Sessions::default();
        let now = Instant::now();
        let total = 3 * MAX_WINDOW as u64;
        for seq in 1..=total {
            s.logged(origin(seq), logged(Version::new(1, seq), pos(seq)), now);
        }
        let session = &s.clients[&7];
        assert_eq!(session.writes.len(), MAX_WINDOW);
        assert_eq!(
            session.writes.keys().next().copied(),
            Some(total - MAX_WINDOW as u64 + 1)
        );
        for seq in [total - MAX_WINDOW as u64 + 1, total] {
            match s.begin(origin(seq), 0, now) {
                Ok(Begin::Logged(l)) => assert_eq!(l.version, Version::new(1, seq)),
                other => panic!("retry of #{seq}: {other:?}"),
            }
        }
    }
}
