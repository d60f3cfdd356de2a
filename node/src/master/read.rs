//! The READ path: the latest version's value from one of its holders (chosen
//! at random to spread the load), falling back to the other holders and
//! finally to the log; a holder found stale is repaired.
//!
//! Invariant (a READ returns only what the current term can vouch for): every
//! answer, NOT_FOUND included, waits for a [`super::barrier`] round that started
//! after the READ looked at the index, so a master that lost its term (paused
//! past a takeover, partitioned away) answers nothing but an error. Checked by
//! `master::tests::a_woken_master_answers_no_read_not_even_not_found`,
//! `master::tests::a_woken_master_reads_nothing_through_the_slave_its_successor_left_unfenced`
//! and the nemesis (`chaos-broken-read` must be caught).

use bytes::Bytes;
use tracing::debug;

use super::error::MasterError;
use super::{Master, lock, placement};
use crate::version::Version;

/// TEST-ONLY (feature `chaos-broken-read`, flag `--chaos-broken-read`): when
/// set, NOT_FOUND is answered without confirming the term — the bug the
/// nemesis must catch (a paused master that wakes up answers NOT_FOUND for a
/// key its successor created). The lease loop then does not look for newer
/// claims either (as on a master cut off from the log volume), so that the
/// READ path alone decides.
#[cfg(feature = "chaos-broken-read")]
pub static BROKEN_READ: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(super) fn broken_read() -> bool {
    #[cfg(feature = "chaos-broken-read")]
    {
        BROKEN_READ.load(std::sync::atomic::Ordering::SeqCst)
    }
    #[cfg(not(feature = "chaos-broken-read"))]
    {
        false
    }
}

impl Master {
    /// A READ: the value of the latest acknowledged WRITE of `key`, or
    /// NOT_FOUND, once the term is confirmed.
    pub async fn read(&self, key: Bytes) -> Result<(Bytes, Version), MasterError> {
        self.config
            .limits
            .check_key(&key)
            .map_err(|e| MasterError::invalid(e.to_string()))?;
        let term = self.serving_term()?;
        let meta = lock(&self.index).get(&key).filter(|meta| !meta.deleted);
        let Some(meta) = meta else {
            if !broken_read() {
                term.barrier.ticket().await?;
                term.check_can_ack()?;
            }
            return Err(MasterError::not_found("key not found"));
        };
        // Joined after the index lookup: the round vouches for it.
        let confirmed = term.barrier.ticket();
        let value = async {
            let holders = self.live_holders(&meta.holders);
            for slave in placement::write_order(&holders) {
                let Ok(reply) = self.get_from(&term, &slave, &key).await else {
                    continue;
                };
                let found = reply.version.map(Version::from).filter(|_| reply.found);
                match found {
                    Some(v) if v == meta.version => {
                        slave.reads.inc();
                        return Ok(Bytes::from(reply.value));
                    }
                    // A newer WRITE is on its way to this slave: not ours to
                    // return before it is acknowledged; ask another holder.
                    Some(v) if v > meta.version => {}
                    _ => {
                        debug!(slave = %slave.id, "stale replica found by READ; repairing");
                        lock(&self.index).remove_holder(&key, slave.idx);
                        self.repair.notify_one();
                    }
                }
            }
            let value = self.read_log(&key, meta.version, meta.pos).await?;
            self.repair.notify_one();
            Ok::<Bytes, MasterError>(value)
        };
        let (value, confirmed) = tokio::join!(value, confirmed);
        confirmed?;
        let value = value?;
        term.check_can_ack()?;
        Ok((value, meta.version))
    }
}

/// Keys per LIST page at most.
pub const MAX_LIST_PAGE: usize = 1000;
/// Keys per LIST page when the request does not say.
pub const DEFAULT_LIST_PAGE: usize = 100;

/// One page of a LIST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// Keys and their versions, in key order.
    pub keys: Vec<(Bytes, Version)>,
    /// Where the next page starts (`after`), when there is one.
    pub next: Option<Bytes>,
}

impl Master {
    /// A LIST: existing keys starting with `prefix`, after `after`, at most
    /// `limit` (1 to [`MAX_LIST_PAGE`]; 0 means [`DEFAULT_LIST_PAGE`]), from
    /// the index, vouched for by the term like a READ. Memory is bounded by
    /// the page.
    pub async fn list(
        &self,
        prefix: Bytes,
        after: Option<Bytes>,
        limit: usize,
    ) -> Result<ListPage, MasterError> {
        let limit = match limit {
            0 => DEFAULT_LIST_PAGE,
            n if n > MAX_LIST_PAGE => {
                return Err(MasterError::invalid(format!(
                    "a LIST page holds at most {MAX_LIST_PAGE} keys; {n} were asked"
                )));
            }
            n => n,
        };
        let max_key = self.config.limits.max_key_bytes;
        for (what, bytes) in [
            ("prefix", &prefix),
            ("cursor", after.as_ref().unwrap_or(&prefix)),
        ] {
            if bytes.len() > max_key {
                return Err(MasterError::invalid(format!(
                    "the LIST {what} is {} bytes, over the key limit of {max_key} bytes",
                    bytes.len()
                )));
            }
        }
        let term = self.serving_term()?;
        let (keys, more) = lock(&self.index).list(&prefix, after.as_deref(), limit);
        term.barrier.ticket().await?;
        term.check_can_ack()?;
        let next = more.then(|| keys.last().map(|(k, _)| k.clone())).flatten();
        Ok(ListPage { keys, next })
    }
}
