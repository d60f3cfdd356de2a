//! Full-jitter exponential backoff: how long to pause after a round in which
//! every master failed, before trying again. Used by the client's call loop
//! and by a slave looking for a master to register with.
//!
//! The pause is drawn uniformly from zero up to a ceiling that doubles each
//! round ("full jitter", as in the AWS architecture blog's "Exponential
//! Backoff And Jitter"): when a master dies, every client and slave loses it
//! at the same moment, and drawing from the whole range spreads their retries
//! out instead of bunching them at the ceiling.
//!
//! Not a crate: `backoff` and `exponential-backoff` jitter by a factor around
//! the ceiling, and `backon` adds a jitter on top of it; none draws from the
//! whole range, and this is one line of arithmetic.

use std::time::Duration;

use rand::Rng as _;

/// A pause drawn uniformly from `0..=min(max, first * 2^round)`: at most
/// `first` after the first failed round (`round` 0), the ceiling doubling
/// with each further round up to `max`.
///
/// Rounds past 16 count as 16, so the ceiling cannot overflow; by then it has
/// long reached `max` (for any `max` below 65536 × `first`).
pub fn full_jitter(first: Duration, max: Duration, round: u32) -> Duration {
    let ceiling = first.saturating_mul(1u32 << round.min(16)).min(max);
    rand::rng().random_range(Duration::ZERO..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a slave registering with a master uses.
    const BACKOFF_BASE: Duration = Duration::from_millis(100);
    const BACKOFF_CAP: Duration = Duration::from_secs(2);

    #[test]
    fn backoff_is_capped_full_jitter() {
        let backoff = |round| full_jitter(BACKOFF_BASE, BACKOFF_CAP, round);
        for round in 0..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << round.min(16))
                .min(BACKOFF_CAP);
            for _ in 0..20 {
                assert!(backoff(round) <= ceiling);
            }
        }
    }
}
