//! The read barrier: a READ (found or not) is answered only once this master
//! has confirmed, *after* the READ looked at its index, that no newer master
//! has fenced enough slaves to serve. No clock is involved.
//!
//! Why that is enough: a new master fences all but `r - 1` members of this
//! term before it serves (see [`super::term`]). A confirmation round asks `r`
//! members of this term for their fenced epoch (a Fence with this term's epoch,
//! which changes nothing when they are already at it). If all `r` answer with
//! this epoch, at least one of them is among those any successor must fence,
//! and it had not been fenced when it answered; so no successor had served
//! (acknowledged anything) by the time the round started, which is after the
//! READ read the index. The READ is linearized at that index lookup. A paused
//! master that wakes up fails its round (a fenced member answers a newer epoch,
//! which also deposes it) and answers nothing stale, NOT_FOUND included.
//!
//! Rounds are shared: every READ that arrives while a round runs waits for the
//! next one, which starts as soon as the current one ends, so under load one
//! round of `r` small messages vouches for many READs. Tested by
//! `master::tests::a_woken_master_answers_no_read_not_even_not_found`.

use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::error::MasterError;

/// The answer every READ of one round gets.
type Answer = Result<(), MasterError>;

/// READs waiting for the next confirmation round.
#[derive(Debug, Default)]
pub struct Barrier {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    waiting: Vec<oneshot::Sender<Answer>>,
    /// The term ended: no round will run again.
    closed: bool,
}

fn term_ended() -> MasterError {
    MasterError::unavailable(
        "this master's term ended before the READ could be confirmed; retry against the active master",
    )
}

impl Barrier {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Joins the next round that *starts after this call*; the returned
    /// future resolves with that round's outcome.
    pub fn ticket(&self) -> impl Future<Output = Answer> + use<> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state();
            if state.closed {
                let _ = tx.send(Err(term_ended()));
            } else {
                state.waiting.push(tx);
            }
        }
        self.wake.notify_one();
        async move { rx.await.unwrap_or_else(|_| Err(term_ended())) }
    }

    /// Runs rounds until `ended`: waits for READs, takes all of them, runs
    /// `round` once and gives every one of them its outcome. When `ended`
    /// fires, every READ waiting (and any that comes later) fails.
    pub async fn drive<F, Fut>(&self, ended: CancellationToken, round: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Answer>,
    {
        loop {
            let batch = std::mem::take(&mut self.state().waiting);
            if batch.is_empty() {
                tokio::select! {
                    () = ended.cancelled() => break,
                    () = self.wake.notified() => continue,
                }
            }
            let answer = tokio::select! {
                () = ended.cancelled() => break,
                answer = round() => answer,
            };
            for waiter in batch {
                let _ = waiter.send(answer.clone());
            }
        }
        let mut state = self.state();
        state.closed = true;
        for waiter in state.waiting.drain(..) {
            let _ = waiter.send(Err(term_ended()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A READ that arrives while a round runs is not vouched for by it: it
    /// waits for the next round, which starts after it arrived.
    #[tokio::test(start_paused = true)]
    async fn a_read_is_only_vouched_for_by_a_round_that_started_after_it() {
        let barrier = Arc::new(Barrier::default());
        let ended = CancellationToken::new();
        let rounds = Arc::new(AtomicU32::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(0u32);
        let driver = {
            let (barrier, ended, rounds) = (barrier.clone(), ended.clone(), rounds.clone());
            tokio::spawn(async move {
                barrier
                    .drive(ended, || {
                        let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
                        let mut release = release_rx.clone();
                        async move {
                            // Each round waits until the test releases it.
                            let _ = release.wait_for(|r| *r >= n).await;
                            if n == 1 {
                                Err(MasterError::unavailable("round 1 failed"))
                            } else {
                                Ok(())
                            }
                        }
                    })
                    .await
            })
        };
        let first = tokio::spawn(barrier.ticket());
        while rounds.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        // Round 1 is running: this READ must wait for round 2.
        let second = tokio::spawn(barrier.ticket());
        release_tx.send_replace(1);
        assert!(first.await.unwrap().is_err(), "round 1's outcome");
        while rounds.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        release_tx.send_replace(2);
        assert!(second.await.unwrap().is_ok(), "round 2's outcome");
        // When the term ends, waiting READs fail instead of hanging, and so
        // does any that comes later.
        let third = barrier.ticket();
        ended.cancel();
        driver.await.unwrap();
        assert!(third.await.is_err());
        assert!(barrier.ticket().await.is_err());
    }
}
