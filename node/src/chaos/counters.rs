//! The compare-and-set counters of the nemesis: keys `n0` and `n1`, which
//! clients increment by a READ of `n:…` (absent is 0) then a compare-and-set
//! of `n+1:c<process>.<k>` expecting the version read. Every READ and CAS is
//! in the history and checked for linearizability like any other key's; on
//! top of that, [`check_counter`] checks each counter's final count against
//! the increments acknowledged and those of unknown outcome, which catches a
//! lost (or doubled) increment even where no READ happened to see it.

use std::collections::BTreeMap;

use super::history::{self, Call, Completion};

/// Keys incremented by compare-and-set.
pub const COUNTERS: [&str; 2] = ["n0", "n1"];

/// The result of checking one compare-and-set counter ([`check_counter`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The key.
    pub key: String,
    /// Increments acknowledged.
    pub acked: u64,
    /// Increments whose outcome is unknown (they may or may not count).
    pub unknown: u64,
    /// The count read back at the end; `None` when that READ failed (which
    /// fails the run on its own) or found something that is not a count.
    pub last: Option<u64>,
    /// What is wrong, in words; empty when the counter is right.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last {
            Some(n) => write!(f, "{} = {n}", self.key)?,
            None => write!(f, "{} = ?", self.key)?,
        }
        let verdict = if self.problems.is_empty() {
            "ok"
        } else {
            "FAIL"
        };
        write!(
            f,
            " ({} acked, {} unknown) {verdict}",
            self.acked, self.unknown
        )
    }
}

/// The count in a counter's value `n:c<process>.<k>`.
pub(super) fn count_of(value: &str) -> Option<u64> {
    value.split_once(':')?.0.parse().ok()
}

/// Checks counter `key` against the history `ops`: with `S` increments
/// (compare-and-sets of the key) acknowledged and `U` of unknown outcome, the
/// final count `F` must satisfy `S <= F <= S + U`, and no two acknowledged
/// increments may have written the same count. `last` is what the final READ
/// found: `None` when it failed, `Some(None)` when the key does not exist
/// (a count of 0).
pub fn check_counter(key: &str, ops: &[history::Op], last: Option<Option<&str>>) -> Counter {
    let mut counter = Counter {
        key: key.to_string(),
        acked: 0,
        unknown: 0,
        last: None,
        problems: Vec::new(),
    };
    let mut wrote: BTreeMap<u64, usize> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.key == key) {
        let Call::CompareAndSet { value, .. } = &op.call else {
            continue;
        };
        match op.completion {
            Completion::Written { .. } => {
                counter.acked += 1;
                if let Some(n) = count_of(value)
                    && let Some(other) = wrote.insert(n, op.index)
                {
                    counter.problems.push(format!(
                        "counter {key}: increments #{other} and #{} were both acknowledged as {n}: an increment was lost",
                        op.index
                    ));
                }
            }
            Completion::Pending | Completion::Unknown { .. } => counter.unknown += 1,
            _ => {}
        }
    }
    counter.last = match last {
        None => None,
        Some(None) => Some(0),
        Some(Some(value)) => {
            let n = count_of(value);
            if n.is_none() {
                counter.problems.push(format!(
                    "counter {key} holds {value:?}, which is not a count"
                ));
            }
            n
        }
    };
    let (acked, unknown) = (counter.acked, counter.unknown);
    match counter.last {
        Some(n) if n < acked => counter.problems.push(format!(
            "counter {key}: {acked} increments acknowledged but the final value is {n}: an increment was lost"
        )),
        Some(n) if n > acked + unknown => counter.problems.push(format!(
            "counter {key}: the final value is {n} but only {acked} increments were acknowledged and {unknown} have an unknown outcome: an increment took effect twice, or a refused one took effect"
        )),
        _ => {}
    }
    counter
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Version;

    /// A history of increments of `n0`: each `(count, completion)` is one
    /// compare-and-set writing that count.
    fn increments(outcomes: &[(u64, Completion)]) -> Vec<history::Op> {
        outcomes
            .iter()
            .enumerate()
            .map(|(index, (count, completion))| history::Op {
                index,
                process: index,
                key: "n0".into(),
                call: Call::CompareAndSet {
                    value: format!("{count}:c{index}.1"),
                    expect: None,
                },
                invoked: index as u64,
                completed: index as u64 + 1,
                completion: completion.clone(),
            })
            .collect()
    }

    fn acked(seq: u64) -> Completion {
        Completion::Written {
            version: Version::new(1, seq),
        }
    }

    fn unknown() -> Completion {
        Completion::Unknown {
            error: "timeout".into(),
        }
    }

    fn refused() -> Completion {
        Completion::Refused { current: None }
    }

    #[test]
    fn a_counter_between_acked_and_acked_plus_unknown_is_right() {
        let ops = increments(&[(1, acked(1)), (2, acked(2)), (3, unknown()), (3, refused())]);
        for last in ["2:c1.1", "3:c2.1"] {
            let counter = check_counter("n0", &ops, Some(Some(last)));
            assert!(counter.problems.is_empty(), "{last}: {counter:?}");
            assert_eq!((counter.acked, counter.unknown), (2, 1));
        }
        let counter = check_counter("n0", &ops, Some(Some("2:c1.1")));
        assert_eq!(counter.to_string(), "n0 = 2 (2 acked, 1 unknown) ok");
        // The final READ failed: nothing to compare with (the run fails on
        // that alone).
        assert!(check_counter("n0", &ops, None).problems.is_empty());
        // No increment at all, and the key absent.
        assert!(check_counter("n0", &[], Some(None)).problems.is_empty());
    }

    #[test]
    fn a_final_count_below_the_acknowledged_increments_is_a_lost_increment() {
        let ops = increments(&[(1, acked(1)), (2, acked(2)), (3, acked(3))]);
        let counter = check_counter("n0", &ops, Some(Some("2:c1.1")));
        assert_eq!(
            counter.problems,
            [
                "counter n0: 3 increments acknowledged but the final value is 2: an increment was lost"
            ]
        );
        assert!(counter.to_string().ends_with("FAIL"), "{counter}");
        let counter = check_counter("n0", &ops, Some(None));
        assert_eq!(counter.problems.len(), 1, "{counter:?}");
    }

    #[test]
    fn two_acknowledged_increments_of_one_count_are_a_lost_increment() {
        // The final count even matches, since a third one made up for it.
        let ops = increments(&[(1, acked(1)), (2, acked(2)), (2, acked(3)), (3, unknown())]);
        let counter = check_counter("n0", &ops, Some(Some("3:c3.1")));
        assert_eq!(counter.problems.len(), 1, "{counter:?}");
        assert!(counter.problems[0].contains("#1 and #2"), "{counter:?}");
    }

    #[test]
    fn a_final_count_above_every_possible_increment_is_reported() {
        let ops = increments(&[(1, acked(1)), (2, refused())]);
        let counter = check_counter("n0", &ops, Some(Some("2:c1.1")));
        assert_eq!(counter.problems.len(), 1, "{counter:?}");
        let counter = check_counter("n0", &ops, Some(Some("garbage")));
        assert_eq!(counter.problems.len(), 1, "{counter:?}");
        assert_eq!(counter.last, None);
    }
}
