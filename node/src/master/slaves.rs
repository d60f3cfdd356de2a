//! The active master's view of its slaves: who registered, how to reach
//! them, who is live, who is being drained, and how much each one served.
//!
//! A slave is *joining* from its registration until the master has read its
//! inventory, then *live* until it misses heartbeats for `slave_timeout` or
//! fails a request; it then has to register again, which re-reads its
//! inventory, so a returning slave never serves a version the master does not
//! know it holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use prometheus::IntCounter;

use super::index::SlaveIdx;
use super::slave_link::SlaveLink;
use crate::metrics;

/// How the master reaches one slave. Cheap to clone (an `Arc`).
#[derive(Debug)]
pub struct SlaveHandle {
    /// Index used in holder lists.
    pub idx: SlaveIdx,
    /// The slave's stable identity.
    pub id: String,
    /// Address the slave advertised.
    pub address: String,
    /// The connection to it (reused for every call).
    pub link: Arc<dyn SlaveLink>,
    /// READs served, for the load-distribution view
    /// (`dsm_slave_requests_total{op="read"}`).
    pub reads: IntCounter,
    /// WRITEs (including re-replication copies) stored
    /// (`dsm_slave_requests_total{op="write"}`).
    pub writes: IntCounter,
}

#[derive(Debug)]
struct Entry {
    handle: Arc<SlaveHandle>,
    /// Registered, inventory still being read: heartbeats are accepted,
    /// nothing is placed on it yet.
    joining: bool,
    live: bool,
    draining: bool,
    last_heartbeat: Instant,
    /// Bumped on every registration, so a stale heartbeat stream of an
    /// earlier registration cannot keep a newer one alive or kill it.
    session: u64,
}

/// Registry of every slave that registered during this master's term.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: HashMap<String, SlaveIdx>,
    entries: Vec<Option<Entry>>,
    next_session: u64,
}

/// One row of the registry, for status output.
#[derive(Debug, Clone)]
pub struct SlaveView {
    /// The slave's handle.
    pub handle: Arc<SlaveHandle>,
    /// Whether it is live.
    pub live: bool,
    /// Whether it is being drained.
    pub draining: bool,
}

impl Registry {
    /// The index for `id`, allocated on first sight and stable afterwards.
    pub fn idx_for(&mut self, id: &str) -> SlaveIdx {
        if let Some(idx) = self.by_id.get(id) {
            return *idx;
        }
        let idx = self.entries.len() as SlaveIdx;
        self.entries.push(None);
        self.by_id.insert(id.to_string(), idx);
        idx
    }

    /// Records a fresh registration (the slave joins: it is not live until
    /// [`Registry::activate`]); returns its session number.
    pub fn register(
        &mut self,
        idx: SlaveIdx,
        id: &str,
        address: &str,
        link: Arc<dyn SlaveLink>,
    ) -> u64 {
        self.next_session += 1;
        let session = self.next_session;
        let draining = self.entry(idx).is_some_and(|e| e.draining);
        let requests = &metrics::master().slave_requests;
        let handle = Arc::new(SlaveHandle {
            idx,
            id: id.to_string(),
            address: address.to_string(),
            link,
            reads: requests.with_label_values(&[id, "read"]),
            writes: requests.with_label_values(&[id, "write"]),
        });
        if let Some(slot) = self.entries.get_mut(idx as usize) {
            *slot = Some(Entry {
                handle,
                joining: true,
                live: false,
                draining,
                last_heartbeat: Instant::now(),
                session,
            });
        }
        session
    }

    fn entry(&self, idx: SlaveIdx) -> Option<&Entry> {
        self.entries.get(idx as usize).and_then(|e| e.as_ref())
    }

    fn entry_mut(&mut self, idx: SlaveIdx) -> Option<&mut Entry> {
        self.entries.get_mut(idx as usize).and_then(|e| e.as_mut())
    }

    /// Makes a joining slave live once its inventory is read; false when a
    /// newer registration or a failure superseded `session`.
    pub fn activate(&mut self, idx: SlaveIdx, session: u64) -> bool {
        match self.entry_mut(idx) {
            Some(e) if e.joining && e.session == session => {
                e.joining = false;
                e.live = true;
                true
            }
            _ => false,
        }
    }

    /// Abandons a join that failed, unless a newer registration took over.
    pub fn fail_join(&mut self, idx: SlaveIdx, session: u64) {
        if let Some(e) = self.entry_mut(idx)
            && e.session == session
        {
            e.joining = false;
            e.live = false;
        }
    }

    /// The session of `id` if it is live (or joining) at `address` in this
    /// term: a registration of such a slave needs no new join.
    pub fn current_session(&self, id: &str, address: &str) -> Option<u64> {
        let idx = self.by_id.get(id)?;
        self.entry(*idx)
            .filter(|e| (e.live || e.joining) && e.handle.address == address)
            .map(|e| e.session)
    }

    /// Whether `id` is being drained.
    pub fn is_draining(&self, id: &str) -> bool {
        self.by_id
            .get(id)
            .and_then(|idx| self.entry(*idx))
            .is_some_and(|e| e.draining)
    }

    /// The current session of `id`, if it is joining or live.
    pub fn session_of(&self, id: &str) -> Option<u64> {
        let idx = self.by_id.get(id)?;
        self.entry(*idx)
            .filter(|e| e.live || e.joining)
            .map(|e| e.session)
    }

    /// Records a heartbeat; false when the session is no longer the live one
    /// (the slave must register again).
    pub fn heartbeat(&mut self, id: &str, session: u64) -> bool {
        let Some(idx) = self.by_id.get(id).copied() else {
            return false;
        };
        match self.entry_mut(idx) {
            Some(e) if (e.live || e.joining) && e.session == session => {
                e.last_heartbeat = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Removes a slave from the live set (missed heartbeats or a failed
    /// request). Returns true if it was live.
    pub fn mark_dead(&mut self, idx: SlaveIdx) -> bool {
        match self.entry_mut(idx) {
            Some(e) if e.live || e.joining => {
                let was_live = e.live;
                e.live = false;
                e.joining = false;
                was_live
            }
            _ => false,
        }
    }

    /// Marks dead every live slave whose last heartbeat is older than
    /// `timeout`; returns their ids.
    pub fn expire(&mut self, timeout: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for e in self.entries.iter_mut().flatten() {
            if (e.live || e.joining) && now.duration_since(e.last_heartbeat) > timeout {
                e.live = false;
                e.joining = false;
                expired.push(e.handle.id.clone());
            }
        }
        expired
    }

    /// Whether `idx` is live.
    pub fn is_live(&self, idx: SlaveIdx) -> bool {
        self.entry(idx).is_some_and(|e| e.live)
    }

    /// Whether `idx` is live and not being drained (counts toward the
    /// replication factor).
    pub fn is_placeable(&self, idx: SlaveIdx) -> bool {
        self.entry(idx).is_some_and(|e| e.live && !e.draining)
    }

    /// Live slave handles, by index.
    pub fn live_handle(&self, idx: SlaveIdx) -> Option<Arc<SlaveHandle>> {
        self.entry(idx).filter(|e| e.live).map(|e| e.handle.clone())
    }

    /// Live, non-draining slaves: where new copies may go.
    pub fn placeable(&self) -> Vec<Arc<SlaveHandle>> {
        self.entries
            .iter()
            .flatten()
            .filter(|e| e.live && !e.draining)
            .map(|e| e.handle.clone())
            .collect()
    }

    /// Starts draining `id`; returns its index, or None if unknown.
    pub fn start_drain(&mut self, id: &str) -> Option<SlaveIdx> {
        let idx = self.by_id.get(id).copied()?;
        let e = self.entry_mut(idx)?;
        e.draining = true;
        Some(idx)
    }

    /// Every slave that registered this term.
    pub fn view(&self) -> Vec<SlaveView> {
        self.entries
            .iter()
            .flatten()
            .map(|e| SlaveView {
                handle: e.handle.clone(),
                live: e.live,
                draining: e.draining,
            })
            .collect()
    }
}
