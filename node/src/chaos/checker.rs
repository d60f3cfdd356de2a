//! A linearizability checker for one register (one key): the Wing–Gong
//! algorithm with Lowe's memoization, as in Porcupine (Athalye) and
//! Horn & Kroening's "Faster linearizability checking via P-compositionality".
//!
//! Why not a crate: `todc-utils` (0.1.1, 2023) implements the same algorithm
//! but has no search bound and no way to explain a failure; `stateright`'s
//! `LinearizabilityTester` enumerates interleavings without memoization, which
//! is meant for the short histories of model checking, not for thousands of
//! operations. This file is small and tested on its own.
//!
//! The model is a register holding an *effect id* (or nothing, for a key
//! never written or deleted): `Write(e)` sets it, `Read(x)` is legal iff it
//! holds `x`, `Cas { expect, write }` is legal iff it holds `expect` and then
//! holds `write` (a compare-and-set), `Delete` empties it.
//! An operation is an interval `[call, ret]` of monotonic time; an operation
//! whose outcome is unknown (timeout, lost connection) has `ret = `[`NEVER`]:
//! it takes effect at some point after its call. For a `Write` or a `Delete`
//! that includes never (placing it after everything else is the same as
//! never, and always legal); a `Cas` is legal only from its expected state,
//! so the caller passes an unknown one only when its effect was seen. Failed
//! reads have no effect and are left out by the caller.
//!
//! The search: walk the time-ordered list of call/return events; at a call,
//! try to linearize that operation now (apply it to the model, remove its
//! events from the list, remember the choice on a stack); at a return whose
//! operation was not linearized yet, undo the last choice and try the next
//! call instead. Lowe's memo: a (set of linearized operations, model state)
//! pair already explored is never explored again. Ties in time count as
//! overlapping (calls sort before returns), which can only hide a violation
//! measured in nanoseconds, never invent one.

use std::collections::HashSet;

/// Monotonic time in nanoseconds since the history began.
pub type Time = u64;

/// Return time of an operation whose outcome is unknown.
pub const NEVER: Time = Time::MAX;

/// What a register operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Wrote the value with this effect id.
    Write(u64),
    /// Read this effect id, or `None` (key not found).
    Read(Option<u64>),
    /// Compare-and-set: found `expect` (`None`: the key did not exist), then
    /// wrote the value with effect id `write`.
    Cas {
        /// What the register held.
        expect: Option<u64>,
        /// The effect id written.
        write: u64,
    },
    /// Deleted the key: the register is empty afterwards, whatever it held.
    Delete,
}

/// One operation of a single key's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Caller's identifier, echoed in explanations.
    pub id: usize,
    /// When it was invoked.
    pub call: Time,
    /// When it returned, or [`NEVER`] when the outcome is unknown.
    pub ret: Time,
    /// What it did.
    pub op: RegisterOp,
}

/// Why a history is not linearizable: the furthest the search got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// Ids of the longest sequence of operations that could be linearized,
    /// in linearization order.
    pub longest_prefix: Vec<usize>,
    /// Id of the operation that had to be linearized next (its return came
    /// first among the rest) but could not be, whatever was tried.
    pub stuck_at: usize,
}

/// The verdict on one history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations explains every result.
    Linearizable,
    /// No order does.
    Violation(Counterexample),
    /// The search budget ran out before an answer was found.
    Inconclusive {
        /// Search steps taken.
        steps: u64,
    },
}

/// Default search budget (steps) per key: a few seconds of work at most.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

const NIL: usize = usize::MAX;

/// Checks one key's history with at most `budget` search steps.
pub fn check(ops: &[Operation], budget: u64) -> Verdict {
    let n = ops.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Nodes 0..n are calls, n..2n returns, 2n the head, 2n+1 the tail.
    let head = 2 * n;
    let tail = 2 * n + 1;
    let mut order: Vec<usize> = (0..2 * n).collect();
    let time = |node: usize| {
        if node < n {
            (ops[node].call, 0u8)
        } else {
            (ops[node - n].ret.max(ops[node - n].call), 1u8)
        }
    };
    order.sort_by_key(|&node| time(node));
    let mut next = vec![NIL; 2 * n + 2];
    let mut prev = vec![NIL; 2 * n + 2];
    let mut last = head;
    for &node in &order {
        next[last] = node;
        prev[node] = last;
        last = node;
    }
    next[last] = tail;
    prev[tail] = last;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        for node in [call, call + n] {
            next[prev[node]] = next[node];
            prev[next[node]] = prev[node];
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        for node in [call + n, call] {
            next[prev[node]] = node;
            prev[next[node]] = node;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut memo: HashSet<(Box<[u64]>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state: Option<u64> = None;
    let mut best: Option<Counterexample> = None;
    let mut entry = next[head];
    let mut steps = 0u64;
    while next[head] != tail {
        steps += 1;
        if steps > budget {
            return Verdict::Inconclusive { steps };
        }
        if entry < n {
            let (legal, after) = apply(state, ops[entry].op);
            if legal {
                linearized[entry / 64] |= 1 << (entry % 64);
                if memo.insert((linearized.clone().into_boxed_slice(), after)) {
                    stack.push((entry, state));
                    state = after;
                    lift(&mut next, &mut prev, entry);
                    entry = next[head];
                    continue;
                }
                linearized[entry / 64] &= !(1 << (entry % 64));
            }
            entry = next[entry];
        } else {
            // The return of an operation not linearized yet: whatever is on
            // the stack cannot be extended past it. Backtrack.
            if best
                .as_ref()
                .is_none_or(|b| stack.len() > b.longest_prefix.len())
            {
                best = Some(Counterexample {
                    longest_prefix: stack.iter().map(|&(c, _)| ops[c].id).collect(),
                    stuck_at: ops[entry - n].id,
                });
            }
            let Some((call, before)) = stack.pop() else {
                return Verdict::Violation(best.unwrap_or(Counterexample {
                    longest_prefix: Vec::new(),
                    stuck_at: ops[entry - n].id,
                }));
            };
            linearized[call / 64] &= !(1 << (call % 64));
            state = before;
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Verdict::Linearizable
}

/// The register's sequential specification.
fn apply(state: Option<u64>, op: RegisterOp) -> (bool, Option<u64>) {
    match op {
        RegisterOp::Write(e) => (true, Some(e)),
        RegisterOp::Read(seen) => (seen == state, state),
        RegisterOp::Cas { expect, write } => (expect == state, Some(write)),
        RegisterOp::Delete => (true, None),
    }
}

#[cfg(test)]
mod tests {
    use super::RegisterOp::{Cas, Delete, Read, Write};
    use super::*;

    fn op(id: usize, call: Time, ret: Time, op: RegisterOp) -> Operation {
        Operation { id, call, ret, op }
    }

    fn linearizable(ops: &[Operation]) -> bool {
        match check(ops, DEFAULT_BUDGET) {
            Verdict::Linearizable => true,
            Verdict::Violation(_) => false,
            Verdict::Inconclusive { .. } => panic!("inconclusive on a tiny history"),
        }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert!(linearizable(&[]));
        assert!(linearizable(&[
            op(0, 0, 1, Read(None)),
            op(1, 2, 3, Write(1)),
            op(2, 4, 5, Read(Some(1))),
            op(3, 6, 7, Write(2)),
            op(4, 8, 9, Read(Some(2))),
        ]));
    }

    #[test]
    fn overlapping_read_may_see_either_value() {
        // W(1) done; W(2) overlaps two reads that see 2 then... 2.
        let base = [op(0, 0, 1, Write(1)), op(1, 2, 10, Write(2))];
        for seen in [1, 2] {
            let mut h = base.to_vec();
            h.push(op(2, 3, 4, Read(Some(seen))));
            assert!(linearizable(&h), "read of {seen} during the write");
        }
        // Reads during the write see 2 then 1: not allowed (no way back).
        let mut h = base.to_vec();
        h.push(op(2, 3, 4, Read(Some(2))));
        h.push(op(3, 5, 6, Read(Some(1))));
        assert!(!linearizable(&h));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = [
            op(0, 0, 1, Write(1)),
            op(1, 2, 3, Write(2)),
            op(2, 4, 5, Read(Some(1))),
        ];
        match check(&h, DEFAULT_BUDGET) {
            Verdict::Violation(c) => assert_eq!(c.stuck_at, 2, "{c:?}"),
            v => panic!("expected a violation, got {v:?}"),
        }
    }

    #[test]
    fn not_found_after_a_completed_write_is_caught() {
        let h = [op(0, 0, 1, Write(1)), op(1, 2, 3, Read(None))];
        assert!(!linearizable(&h));
    }

    #[test]
    fn reading_a_value_never_written_is_caught() {
        let h = [op(0, 0, 1, Write(1)), op(1, 2, 3, Read(Some(7)))];
        assert!(!linearizable(&h));
    }

    #[test]
    fn read_from_the_future_is_caught() {
        // The read returned before the write was even invoked.
        let h = [op(0, 0, 1, Read(Some(1))), op(1, 2, 3, Write(1))];
        assert!(!linearizable(&h));
    }

    #[test]
    fn two_readers_seeing_writes_in_opposite_orders_is_caught() {
        // W(1) and W(2) run concurrently over [0, 100]. Reader A sees 1 then
        // 2, reader B (at the same times) sees 2 then 1.
        let h = [
            op(0, 0, 100, Write(1)),
            op(1, 0, 100, Write(2)),
            op(2, 10, 20, Read(Some(1))),
            op(3, 30, 40, Read(Some(2))),
            op(4, 10, 20, Read(Some(2))),
            op(5, 30, 40, Read(Some(1))),
        ];
        assert!(!linearizable(&h));
        // Either reader alone is fine.
        assert!(linearizable(&h[..4]));
        assert!(linearizable(&[h[0], h[1], h[4], h[5]]));
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        // Write(2) timed out: it may appear long after its call ...
        let late = [
            op(0, 0, 1, Write(1)),
            op(1, 2, NEVER, Write(2)),
            op(2, 10, 11, Read(Some(1))),
            op(3, 50, 51, Read(Some(2))),
        ];
        assert!(linearizable(&late));
        // ... or never.
        let never = [
            op(0, 0, 1, Write(1)),
            op(1, 2, NEVER, Write(2)),
            op(2, 50, 51, Read(Some(1))),
        ];
        assert!(linearizable(&never));
    }

    #[test]
    fn unknown_write_that_appears_then_disappears_is_caught() {
        let h = [
            op(0, 0, 1, Write(1)),
            op(1, 2, NEVER, Write(2)),
            op(2, 10, 11, Read(Some(2))),
            op(3, 20, 21, Read(Some(1))),
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_call() {
        let h = [
            op(0, 0, 1, Write(1)),
            op(1, 0, 3, Read(Some(2))),
            op(2, 10, NEVER, Write(2)),
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn counterexample_names_the_longest_prefix() {
        let h = [
            op(10, 0, 1, Write(1)),
            op(11, 2, 3, Read(Some(1))),
            op(12, 4, 5, Write(2)),
            op(13, 6, 7, Read(Some(1))),
        ];
        match check(&h, DEFAULT_BUDGET) {
            Verdict::Violation(c) => {
                assert_eq!(c.longest_prefix, vec![10, 11, 12]);
                assert_eq!(c.stuck_at, 13);
            }
            v => panic!("expected a violation, got {v:?}"),
        }
    }

    #[test]
    fn compare_and_set_needs_the_expected_value() {
        assert!(linearizable(&[
            op(
                0,
                0,
                1,
                Cas {
                    expect: None,
                    write: 1
                }
            ),
            op(
                1,
                2,
                3,
                Cas {
                    expect: Some(1),
                    write: 2
                }
            ),
            op(2, 4, 5, Read(Some(2))),
        ]));
        // The register holds 1, not 2: the CAS cannot have succeeded.
        assert!(!linearizable(&[
            op(0, 0, 1, Write(1)),
            op(
                1,
                2,
                3,
                Cas {
                    expect: Some(2),
                    write: 3
                }
            ),
        ]));
        // Expecting an absent key while it holds a value.
        assert!(!linearizable(&[
            op(0, 0, 1, Write(1)),
            op(
                1,
                2,
                3,
                Cas {
                    expect: None,
                    write: 2
                }
            ),
        ]));
    }

    #[test]
    fn two_compare_and_sets_from_one_state_cannot_both_succeed() {
        // Concurrent: whichever goes first changes what the other expects.
        let concurrent = [
            op(0, 0, 1, Write(1)),
            op(
                1,
                2,
                10,
                Cas {
                    expect: Some(1),
                    write: 2,
                },
            ),
            op(
                2,
                3,
                11,
                Cas {
                    expect: Some(1),
                    write: 3,
                },
            ),
        ];
        assert!(!linearizable(&concurrent));
        // One of them alone is fine, and so is a chain.
        assert!(linearizable(&concurrent[..2]));
        assert!(linearizable(&[
            concurrent[0],
            concurrent[1],
            op(
                2,
                3,
                11,
                Cas {
                    expect: Some(2),
                    write: 3
                }
            ),
        ]));
        // An unknown second one cannot have taken effect and been read.
        assert!(!linearizable(&[
            concurrent[0],
            concurrent[1],
            op(
                2,
                3,
                NEVER,
                Cas {
                    expect: Some(1),
                    write: 3
                }
            ),
            op(3, 20, 21, Read(Some(3))),
        ]));
    }

    #[test]
    fn a_deleted_value_is_gone_once_the_delete_completed() {
        let deleted = [op(0, 0, 1, Write(1)), op(1, 2, 3, Delete)];
        let mut h = deleted.to_vec();
        h.push(op(2, 4, 5, Read(None)));
        h.push(op(
            3,
            6,
            7,
            Cas {
                expect: None,
                write: 2,
            },
        ));
        h.push(op(4, 8, 9, Read(Some(2))));
        assert!(linearizable(&h));
        let mut h = deleted.to_vec();
        h.push(op(2, 4, 5, Read(Some(1))));
        assert!(!linearizable(&h));
        // During the delete, either is fine.
        assert!(linearizable(&[
            op(0, 0, 1, Write(1)),
            op(1, 2, 10, Delete),
            op(2, 3, 4, Read(Some(1))),
            op(3, 5, 6, Read(None)),
        ]));
    }

    #[test]
    fn unknown_delete_may_take_effect_late_or_never() {
        let base = [op(0, 0, 1, Write(1)), op(1, 2, NEVER, Delete)];
        for later in [Read(Some(1)), Read(None)] {
            let mut h = base.to_vec();
            h.push(op(2, 10, 11, Read(Some(1))));
            h.push(op(3, 20, 21, later));
            assert!(linearizable(&h), "{later:?}");
        }
        // But only once: the value cannot come back.
        let mut h = base.to_vec();
        h.push(op(2, 10, 11, Read(None)));
        h.push(op(3, 20, 21, Read(Some(1))));
        assert!(!linearizable(&h));
    }

    #[test]
    fn long_concurrent_history_is_checked_quickly() {
        // 4 clients, 2000 operations, every read sees the latest write in a
        // consistent order: linearizable, and found so well within budget.
        let mut h = Vec::new();
        let mut value = None;
        for i in 0..2000u64 {
            let t = i * 10;
            let o = if i % 2 == 0 {
                value = Some(i);
                Write(i)
            } else {
                Read(value)
            };
            // Overlap each operation with its neighbours.
            h.push(op(i as usize, t, t + 25, o));
        }
        assert!(linearizable(&h));
    }

    #[test]
    fn exhausted_budget_is_inconclusive_not_a_hang() {
        // Many unknown writes concurrent with reads of values in an order
        // that forces a wide search; a budget of 50 steps cannot finish.
        let mut h = Vec::new();
        for i in 0..30u64 {
            h.push(op(i as usize, 0, NEVER, Write(i)));
        }
        for i in 0..30u64 {
            h.push(op(
                100 + i as usize,
                10 + 2 * i,
                11 + 2 * i,
                Read(Some(29 - i)),
            ));
        }
        h.push(op(200, 100, 101, Read(Some(5))));
        assert!(matches!(check(&h, 50), Verdict::Inconclusive { .. }));
    }
}
