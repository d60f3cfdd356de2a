//! How a client numbers its WRITEs so that a master applies each at most once
//! (see `master::sessions`): a random id per client, a number per WRITE that
//! every retry of it reuses, and the lowest number still unanswered.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// A client's WRITE numbers. Cheap to share.
#[derive(Debug)]
pub struct Numbering {
    /// Random and nonzero: what tells this client's WRITEs from others'.
    id: u64,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    next: u64,
    /// Numbers handed out whose WRITE has not finished (answered, failed or
    /// given up).
    unanswered: BTreeSet<u64>,
}

/// One WRITE's number; dropping it marks the WRITE finished.
#[derive(Debug)]
pub struct WriteNumber {
    /// The client's id.
    pub client: u64,
    /// The WRITE's number.
    pub seq: u64,
    state: Arc<Mutex<State>>,
}

impl Default for Numbering {
    fn default() -> Self {
        Numbering {
            id: rand::random::<u64>().max(1),
            state: Arc::new(Mutex::new(State {
                next: 1,
                unanswered: BTreeSet::new(),
            })),
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Numbering {
    /// The client's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Numbers a new WRITE.
    pub fn next(&self) -> WriteNumber {
        let mut state = lock(&self.state);
        let seq = state.next;
        state.next += 1;
        state.unanswered.insert(seq);
        WriteNumber {
            client: self.id,
            seq,
            state: self.state.clone(),
        }
    }
}

impl WriteNumber {
    /// Every WRITE of this client numbered below this has finished, so the
    /// master may forget them (sent with each attempt: it only grows).
    pub fn answered_below(&self) -> u64 {
        lock(&self.state)
            .unanswered
            .first()
            .copied()
            .unwrap_or(self.seq)
    }
}

impl Drop for WriteNumber {
    fn drop(&mut self) {
        lock(&self.state).unanswered.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_below_is_the_oldest_write_still_running() {
        let numbering = Numbering::default();
        assert_ne!(numbering.id(), 0);
        let first = numbering.next();
        let second = numbering.next();
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(second.answered_below(), 1);
        drop(first);
        assert_eq!(second.answered_below(), 2);
        let third = numbering.next();
        drop(second);
        assert_eq!(third.answered_below(), 3);
    }
}
