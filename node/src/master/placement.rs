//! Quorum arithmetic and replica placement: pure functions, no sockets.
//!
//! Invariant (fencing covers every quorum): a term's write quorums have `r`
//! members of its membership `M`; a successor that fences all but `r - 1` of
//! `M` ([`Membership::fences_missing`](super::term::Membership::fences_missing))
//! leaves no quorum of that term without a fenced member, whatever `n` either
//! of them was configured with. Checked by `tests::fencing_covers_every_quorum`
//! and by the integration test `sigstop_master_is_fenced`. The majority rule
//! (`2r > n`) keeps a takeover possible whenever WRITEs are: with `n` members,
//! it needs `n - r + 1 <= r` live ones.

use rand::seq::SliceRandom;

/// Default replication factor for `n` configured slaves: `ceil((n + 1) / 2)`,
/// the smallest majority, so that any two write quorums share a slave.
pub fn default_replication_factor(n: u32) -> u32 {
    (n + 2) / 2
}

/// Checks a configuration; the message names the offending numbers.
pub fn validate(n: u32, r: u32) -> Result<(), String> {
    if n == 0 {
        return Err("--slaves must be at least 1".into());
    }
    if r == 0 || r > n {
        return Err(format!(
            "--replication-factor {r} must be between 1 and --slaves {n}"
        ));
    }
    if 2 * r <= n {
        return Err(format!(
            "--replication-factor {r} is not a majority of --slaves {n}: two writes could reach disjoint slaves; use at least {}",
            default_replication_factor(n)
        ));
    }
    Ok(())
}

/// Picks the slaves for one WRITE: all of `candidates` in random order; the
/// caller sends to the first `r` and falls back to the rest in order.
pub fn write_order<T: Clone>(candidates: &[T]) -> Vec<T> {
    let mut order = candidates.to_vec();
    order.shuffle(&mut rand::rng());
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_factor_is_a_majority() {
        for (n, r) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4), (9, 5)] {
            assert_eq!(default_replication_factor(n), r, "n = {n}");
            assert!(validate(n, r).is_ok());
        }
    }

    #[test]
    fn minority_factors_are_refused() {
        assert!(validate(4, 2).is_err());
        assert!(validate(3, 1).is_err());
        assert!(validate(3, 4).is_err());
        assert!(validate(0, 1).is_err());
    }

    /// Every r-subset of n members meets every set of fenced members that
    /// [`Membership::fences_missing`] is satisfied with: checked exhaustively
    /// for small clusters, majorities or not.
    #[test]
    fn fencing_covers_every_quorum() {
        use super::super::term::Membership;
        for n in 1..=9u32 {
            for r in 1..=n {
                let members = Membership {
                    replication_factor: r,
                    slaves: (0..n).map(|i| (format!("s{i}"), String::new())).collect(),
                };
                let f = (0..=n)
                    .find(|f| members.fences_missing(*f as usize) == 0)
                    .unwrap_or(n);
                for quorum in 0u32..(1 << n) {
                    if quorum.count_ones() != r {
                        continue;
                    }
                    for fenced in 0u32..(1 << n) {
                        if fenced.count_ones() == f {
                            assert_ne!(quorum & fenced, 0, "n={n} r={r}");
                        }
                    }
                }
            }
        }
    }
}
