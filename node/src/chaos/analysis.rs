//! The analysis of a nemesis history: is it linearizable, key by key?
//!
//! [`analyse`] splits the history by key (a register per key; linearizability
//! is compositional, so each key is checked alone) and builds the register
//! history for [`super::checker`]:
//! - every READ must return a value some WRITE or compare-and-set (CAS) of
//!   that key wrote, and not before it was invoked; the value of one that
//!   failed definitely or was refused must never be read;
//! - an effect is a (value, version) pair, and each WRITE or CAS call has at
//!   most one (they are exactly-once): the version an acknowledged one
//!   returned, or, for one whose outcome is unknown, the version READs saw
//!   with its value. A value seen with any other version was applied twice,
//!   and two values with one version mean a version was given twice: both
//!   violations;
//! - an acknowledged CAS is a register CAS from the effect whose version it
//!   expected (versions map to effects as above; `Absent` is the empty
//!   register) to its own effect. One whose expected version maps to no
//!   effect is checked as the plain WRITE it also is: weaker, never wrong;
//! - a refused CAS is an observation, a READ of the effect at its `current`
//!   version (of nothing, when the key did not exist); it is left out when
//!   that version maps to no effect;
//! - an acknowledged DELETE empties the register; one that found nothing to
//!   delete is a READ of nothing; one whose outcome is unknown empties it at
//!   some point after its call, or never (always legal, so it is kept);
//! - an unknown WRITE or CAS somebody read took effect after its call; one
//!   whose value nobody read is left out: for a WRITE placing it after
//!   everything else is always possible and is the same as never, and a CAS
//!   may have been refused;
//! - failed or unknown READs are left out: they have no effect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::checker::{self, NEVER, Operation, RegisterOp, Verdict};
use super::history::{Call, Completion, Counts, Op, excerpt};
use crate::version::Version;

/// A broken guarantee, with the operations that show it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// What is wrong, in words.
    pub what: String,
    /// The operations involved, one per line, for the report.
    pub excerpt: String,
}

/// The result of checking a whole history.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    /// Operations by outcome.
    pub counts: Counts,
    /// Keys whose history was checked.
    pub keys: usize,
    /// Broken guarantees; empty when the history is linearizable.
    pub violations: Vec<Violation>,
    /// Keys whose check ran out of budget.
    pub inconclusive: Vec<String>,
    /// Time the checker took.
    pub check_time: Duration,
}

/// Checks `ops` per key (see the module documentation), with `budget`
/// search steps per key.
pub fn analyse(ops: &[Op], budget: u64) -> Analysis {
    let started = Instant::now();
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut analysis = Analysis {
        counts: Counts::of(ops),
        keys: by_key.len(),
        ..Analysis::default()
    };
    for (key, key_ops) in by_key {
        check_key(key, &key_ops, budget, &mut analysis);
    }
    analysis.check_time = started.elapsed();
    analysis
}

fn check_key(key: &str, ops: &[&Op], budget: u64, analysis: &mut Analysis) {
    let Some(register) = register_history(key, ops, &mut analysis.violations) else {
        return;
    };
    match checker::check(&register, budget) {
        Verdict::Linearizable => {}
        Verdict::Inconclusive { steps } => {
            tracing::warn!(key, steps, "linearizability check ran out of budget");
            analysis.inconclusive.push(key.to_string());
        }
        Verdict::Violation(c) => {
            let by_index: HashMap<usize, &Op> = ops.iter().map(|o| (o.index, *o)).collect();
            let Some(stuck) = by_index.get(&c.stuck_at) else {
                return;
            };
            let tail: Vec<&Op> = c
                .longest_prefix
                .iter()
                .rev()
                .take(6)
                .rev()
                .filter_map(|i| by_index.get(i).copied())
                .collect();
            // Everything that overlapped the stuck operation, too.
            let overlapping: Vec<&Op> = ops
                .iter()
                .copied()
                .filter(|o| o.index != stuck.index)
                .filter(|o| o.invoked <= stuck.completed && o.completed >= stuck.invoked)
                .filter(|o| !matches!(o.completion, Completion::Fail { .. }))
                .take(12)
                .collect();
            let mut text = String::from("longest linearizable prefix ends with:\n");
            text += &excerpt(&tail);
            text += "could not linearize:\n";
            text += &excerpt(&[stuck]);
            if !overlapping.is_empty() {
                text += "concurrent with it:\n";
                text += &excerpt(&overlapping);
            }
            analysis.violations.push(Violation {
                key: key.to_string(),
                what: format!(
                    "not linearizable: op #{} cannot be placed after {} linearized op(s)",
                    stuck.index,
                    c.longest_prefix.len()
                ),
                excerpt: text,
            });
        }
    }
}

/// The register history of one key's operations (see the module
/// documentation); violations found on the way are added to `violations`.
/// `None` when the history cannot be checked at all.
fn register_history(
    key: &str,
    ops: &[&Op],
    violations: &mut Vec<Violation>,
) -> Option<Vec<Operation>> {
    let mut report = |what: String, involved: &[&Op]| {
        violations.push(Violation {
            key: key.to_string(),
            what,
            excerpt: excerpt(involved),
        });
    };
    // value -> the WRITE or compare-and-set that wrote it.
    let mut writer: HashMap<&str, &Op> = HashMap::new();
    for op in ops {
        if let Some(value) = op.call.value()
            && let Some(other) = writer.insert(value, op)
        {
            report(
                format!("the value {value:?} was written twice: the history is unusable"),
                &[other, op],
            );
            return None;
        }
    }
    // Each writer's one effect: its acknowledged version, or the first
    // version a READ saw with its value.
    let mut effect_of: HashMap<usize, Version> = ops
        .iter()
        .filter_map(|op| match op.completion {
            Completion::Written { version } => Some((op.index, version)),
            _ => None,
        })
        .collect();
    let mut register: Vec<Operation> = Vec::new();
    let mut seen_unknown: BTreeSet<usize> = BTreeSet::new();
    for op in ops {
        let (Call::Read, Completion::Read { found }) = (&op.call, &op.completion) else {
            continue;
        };
        let seen = match found {
            None => None,
            Some((value, version)) => {
                let Some(w) = writer.get(value.as_str()) else {
                    report(
                        format!("a READ returned {value:?}, which no WRITE wrote"),
                        &[op],
                    );
                    continue;
                };
                let without_effect = match &w.completion {
                    Completion::Fail { error } => Some(format!("failed definitely ({error})")),
                    Completion::Refused { .. } => Some("was refused".to_string()),
                    _ => None,
                };
                if let Some(why) = without_effect {
                    report(format!("a {} that {why} was read", w.call.name()), &[w, op]);
                    continue;
                }
                let effect = *effect_of.entry(w.index).or_insert(*version);
                if effect != *version {
                    report(
                        format!(
                            "the {} of {value:?} was applied twice (versions {effect} and {version}): a retry was not deduplicated",
                            w.call.name()
                        ),
                        &[w, op],
                    );
                    continue;
                }
                if !matches!(w.completion, Completion::Written { .. }) {
                    seen_unknown.insert(w.index);
                }
                Some(w.index as u64)
            }
        };
        register.push(Operation {
            id: op.index,
            call: op.invoked,
            ret: op.completed,
            op: RegisterOp::Read(seen),
        });
    }
    // version -> the effect with that version, for what compare-and-sets
    // expected and what refusals found. In history order, so that reports
    // are the same from run to run.
    let mut at_version: HashMap<Version, &Op> = HashMap::new();
    for op in ops {
        let Some(version) = effect_of.get(&op.index) else {
            continue;
        };
        if let Some(other) = at_version.get(version) {
            report(
                format!("two values were given the version {version}"),
                &[other, op],
            );
            continue;
        }
        at_version.insert(*version, op);
    }
    let effect_at = |version: &Version| at_version.get(version).map(|w| w.index as u64);
    let cas = |expect: &Option<Version>, write: u64| match expect {
        None => RegisterOp::Cas {
            expect: None,
            write,
        },
        Some(v) => match effect_at(v) {
            Some(e) => RegisterOp::Cas {
                expect: Some(e),
                write,
            },
            // The READ this version came from was itself reported, or it
            // came from outside the history: the CAS is still a WRITE, and
            // checking only that cannot invent a violation.
            None => RegisterOp::Write(write),
        },
    };
    for op in ops {
        let id = op.index as u64;
        let unknown_seen = seen_unknown.contains(&op.index);
        let (ret, register_op) = match (&op.call, &op.completion) {
            (Call::Write { .. }, Completion::Written { .. }) => {
                (op.completed, RegisterOp::Write(id))
            }
            (Call::CompareAndSet { expect, .. }, Completion::Written { .. }) => {
                (op.completed, cas(expect, id))
            }
            // Unknown ones somebody read took effect at some point after
            // their call.
            (Call::Write { .. }, _) if unknown_seen => (NEVER, RegisterOp::Write(id)),
            (Call::CompareAndSet { expect, .. }, _) if unknown_seen => (NEVER, cas(expect, id)),
            (_, Completion::Refused { current: None }) => (op.completed, RegisterOp::Read(None)),
            (_, Completion::Refused { current: Some(v) }) => match effect_at(v) {
                Some(e) => (op.completed, RegisterOp::Read(Some(e))),
                None => continue,
            },
            (Call::Delete, Completion::Deleted { version: Some(_) }) => {
                (op.completed, RegisterOp::Delete)
            }
            // Nothing to delete: the DELETE saw that the key did not exist.
            (Call::Delete, Completion::Deleted { version: None }) => {
                (op.completed, RegisterOp::Read(None))
            }
            (Call::Delete, Completion::Pending | Completion::Unknown { .. }) => {
                (NEVER, RegisterOp::Delete)
            }
            _ => continue,
        };
        register.push(Operation {
            id: op.index,
            call: op.invoked,
            ret,
            op: register_op,
        });
    }
    Some(register)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::checker::Time;

    fn v(seq: u64) -> Version {
        Version::new(1, seq)
    }

    #[derive(Clone)]
    struct H(Vec<Op>);

    impl H {
        fn op(mut self, call: Call, t: (Time, Time), completion: Completion) -> Self {
            let index = self.0.len();
            self.0.push(Op {
                index,
                process: index,
                key: "k".into(),
                call,
                invoked: t.0,
                completed: t.1,
                completion,
            });
            self
        }
        fn write(self, value: &str, t: (Time, Time), version: Option<u64>) -> Self {
            let completion = match version {
                Some(s) => Completion::Written { version: v(s) },
                None => Completion::Unknown {
                    error: "timeout".into(),
                },
            };
            self.op(
                Call::Write {
                    value: value.into(),
                },
                t,
                completion,
            )
        }
        fn read(self, t: (Time, Time), found: Option<(&str, u64)>) -> Self {
            let found = found.map(|(x, s)| (x.to_string(), v(s)));
            self.op(Call::Read, t, Completion::Read { found })
        }
        /// A compare-and-set of `value` expecting version `expect` (`None`:
        /// absent).
        fn cas(
            self,
            value: &str,
            expect: Option<u64>,
            t: (Time, Time),
            completion: Completion,
        ) -> Self {
            let call = Call::CompareAndSet {
                value: value.into(),
                expect: expect.map(v),
            };
            self.op(call, t, completion)
        }
        fn delete(self, t: (Time, Time), completion: Completion) -> Self {
            self.op(Call::Delete, t, completion)
        }
        fn analyse(&self) -> Analysis {
            analyse(&self.0, checker::DEFAULT_BUDGET)
        }
    }

    fn ok(seq: u64) -> Completion {
        Completion::Written { version: v(seq) }
    }

    fn refused(current: Option<u64>) -> Completion {
        Completion::Refused {
            current: current.map(v),
        }
    }

    fn deleted(seq: Option<u64>) -> Completion {
        Completion::Deleted {
            version: seq.map(v),
        }
    }

    fn unknown() -> Completion {
        Completion::Unknown {
            error: "timeout".into(),
        }
    }

    fn not_linearizable(a: &Analysis) -> bool {
        a.violations
            .iter()
            .any(|v| v.what.starts_with("not linearizable"))
    }

    #[test]
    fn compare_and_sets_and_deletes_pass_and_are_counted() {
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .cas("b", Some(1), (2, 3), ok(2))
            .cas("c", Some(1), (4, 5), refused(Some(2)))
            .read((6, 7), Some(("b", 2)))
            .delete((8, 9), deleted(Some(3)))
            .read((10, 11), None)
            .cas("d", None, (12, 13), ok(4))
            .cas("e", None, (14, 15), refused(Some(4)))
            .delete((16, NEVER), unknown())
            .read((17, 18), Some(("d", 4)))
            .read((19, 20), None)
            .analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        let c = &a.counts;
        assert_eq!((c.cas_ok, c.cas_refused, c.cas_unknown), (2, 2, 0));
        assert_eq!((c.delete_ok, c.delete_unknown), (1, 1));
        assert_eq!(c.total(), 11);
    }

    /// Two increments of a counter from the same read: both acknowledged,
    /// so one of them was lost.
    #[test]
    fn a_lost_increment_is_a_violation() {
        let base = H(Vec::new())
            .cas("1:c0.1", None, (0, 1), ok(1))
            .read((2, 3), Some(("1:c0.1", 1)))
            .read((2, 3), Some(("1:c0.1", 1)));
        // One after the other, and overlapping.
        for second in [(6, 7), (4, 8)] {
            let a = base
                .clone()
                .cas("2:c1.2", Some(1), (4, 5), ok(2))
                .cas("2:c2.2", Some(1), second, ok(3))
                .read((10, 11), Some(("2:c2.2", 3)))
                .analyse();
            assert!(not_linearizable(&a), "{second:?}: {:?}", a.violations);
        }
        // The second one refused is the correct outcome.
        let a = base
            .cas("2:c1.2", Some(1), (4, 5), ok(2))
            .cas("2:c2.2", Some(1), (6, 7), refused(Some(2)))
            .read((10, 11), Some(("2:c1.2", 2)))
            .analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
    }

    #[test]
    fn a_refusal_is_checked_as_a_read() {
        let base = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("b", (2, 3), Some(2));
        // Refused with the current version: fine.
        let a = base
            .clone()
            .cas("x", Some(1), (4, 5), refused(Some(2)))
            .analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        // Refused with a stale version, or claiming the key is absent.
        for current in [Some(1), None] {
            let a = base
                .clone()
                .cas("x", Some(7), (4, 5), refused(current))
                .analyse();
            assert!(not_linearizable(&a), "{current:?}: {:?}", a.violations);
        }
        // A refused compare-and-set must have had no effect.
        let a = base
            .cas("x", Some(1), (4, 5), refused(Some(2)))
            .read((6, 7), Some(("x", 3)))
            .analyse();
        assert!(
            a.violations.iter().any(|v| v.what.contains("was refused")),
            "{:?}",
            a.violations
        );
    }

    /// A refusal names the version it found, maybe that of a WRITE still
    /// running: a READ after the refusal must not return an older value
    /// (what a refusal answered before READs saw that WRITE looks like).
    #[test]
    fn a_stale_read_after_a_refusal_is_a_violation() {
        let base = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("b", (2, 20), Some(2))
            .cas("x", Some(1), (3, 4), refused(Some(2)));
        let a = base.clone().read((5, 6), Some(("a", 1))).analyse();
        assert!(not_linearizable(&a), "{:?}", a.violations);
        // The WRITE's value after the refusal, or the old one before it.
        let a = base.clone().read((5, 6), Some(("b", 2))).analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("b", (2, 20), Some(2))
            .read((3, 4), Some(("a", 1)))
            .cas("x", Some(1), (5, 6), refused(Some(2)))
            .analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        // Likewise after a DELETE that found nothing while a DELETE ran.
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .delete((2, 20), deleted(Some(2)))
            .delete((3, 4), deleted(None))
            .read((5, 6), Some(("a", 1)))
            .analyse();
        assert!(not_linearizable(&a), "{:?}", a.violations);
    }

    #[test]
    fn a_deleted_value_read_after_the_delete_is_a_violation() {
        let base = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .delete((2, 3), deleted(Some(2)));
        let a = base.clone().read((4, 5), None).analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        let a = base.read((4, 5), Some(("a", 1))).analyse();
        assert!(not_linearizable(&a), "{:?}", a.violations);
        // A DELETE that found nothing while the key held a value.
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .delete((2, 3), deleted(None))
            .analyse();
        assert!(not_linearizable(&a), "{:?}", a.violations);
    }

    #[test]
    fn an_unknown_delete_takes_effect_once_or_never() {
        let base = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .delete((2, NEVER), unknown())
            .read((4, 5), Some(("a", 1)));
        for last in [None, Some(("a", 1))] {
            let a = base.clone().read((6, 7), last).analyse();
            assert!(a.violations.is_empty(), "{last:?}: {:?}", a.violations);
        }
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .delete((2, NEVER), unknown())
            .read((4, 5), None)
            .read((6, 7), Some(("a", 1)))
            .analyse();
        assert!(not_linearizable(&a), "{:?}", a.violations);
    }

    #[test]
    fn an_unknown_compare_and_set_seen_is_checked_from_what_it_expected() {
        // Seen, so it took effect; but the key no longer held version 1
        // after "c" was acknowledged, before the CAS was invoked.
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("c", (2, 3), Some(2))
            .cas("b", Some(1), (4, NEVER), unknown())
            .read((10, 11), Some(("b", 3)))
            .analyse();
        assert!(not_linearizable(&a), "{:?}", a.violations);
        // Not seen: it may have been refused, and is left out.
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("c", (2, 3), Some(2))
            .cas("b", Some(1), (4, NEVER), unknown())
            .read((10, 11), Some(("c", 2)))
            .analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
    }

    #[test]
    fn a_compare_and_set_of_an_unknown_version_is_checked_as_a_write() {
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .cas("b", Some(9), (2, 3), ok(2))
            .read((4, 5), Some(("b", 2)))
            .analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
    }

    #[test]
    fn one_version_given_to_two_values_is_a_violation() {
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("b", (2, 3), None)
            .read((4, 5), Some(("b", 1)))
            .analyse();
        assert!(
            a.violations
                .iter()
                .any(|v| v.what.contains("given the version 1.1")),
            "{:?}",
            a.violations
        );
    }
    #[test]
    fn clean_history_passes_and_is_counted() {
        let a = H(Vec::new())
            .read((0, 1), None)
            .write("a", (2, 3), Some(1))
            .read((4, 5), Some(("a", 1)))
            .op(
                Call::Read,
                (6, 7),
                Completion::Unknown {
                    error: "timeout".into(),
                },
            )
            .analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert_eq!(a.counts.read_ok, 2);
        assert_eq!(a.counts.write_ok, 1);
        assert_eq!(a.counts.read_unknown, 1);
    }

    #[test]
    fn stale_read_is_reported_with_an_excerpt() {
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("b", (2, 3), Some(2))
            .read((4, 5), Some(("a", 1)))
            .analyse();
        assert_eq!(a.violations.len(), 1);
        let text = &a.violations[0].excerpt;
        assert!(text.contains("#2"), "{text}");
        assert!(text.contains("a @1.1"), "{text}");
    }

    #[test]
    fn unwritten_value_is_reported() {
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .read((2, 3), Some(("zzz", 9)))
            .analyse();
        assert!(
            a.violations
                .iter()
                .any(|v| v.what.contains("no WRITE wrote")),
            "{:?}",
            a.violations
        );
    }

    /// A retry applied twice (the bug
    /// `master::tests::a_retry_after_failover_is_not_applied_again` guards
    /// against): the WRITE of "a" acknowledged with version 1, "b" with 2,
    /// then a late retry of the WRITE of "a" applied as version 3
    /// and read: a, b, a, which no order of the client calls explains.
    #[test]
    fn a_retried_write_applied_twice_is_a_violation() {
        let a = H(Vec::new())
            .write("a", (0, 10), Some(1))
            .write("b", (11, 12), Some(2))
            .read((13, 14), Some(("b", 2)))
            .read((15, 16), Some(("a", 3)))
            .analyse();
        assert_eq!(a.violations.len(), 1, "{:?}", a.violations);
        assert!(a.violations[0].what.contains("applied twice"));
        // The same with a WRITE whose outcome its client never learnt: seen
        // with two versions.
        let a = H(Vec::new())
            .write("a", (0, 10), None)
            .read((11, 12), Some(("a", 1)))
            .read((13, 14), Some(("a", 4)))
            .analyse();
        assert_eq!(a.violations.len(), 1, "{:?}", a.violations);
    }

    #[test]
    fn old_version_read_again_is_still_stale() {
        let a = H(Vec::new())
            .write("a", (0, 10), Some(1))
            .write("b", (11, 12), Some(2))
            .read((13, 14), Some(("b", 2)))
            .read((15, 16), Some(("a", 1)))
            .analyse();
        assert_eq!(a.violations.len(), 1, "{:?}", a.violations);
    }

    #[test]
    fn unknown_write_seen_then_gone_is_a_violation() {
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("b", (2, 3), None)
            .read((4, 5), Some(("b", 2)))
            .read((6, 7), Some(("a", 1)))
            .analyse();
        assert_eq!(a.violations.len(), 1, "{:?}", a.violations);
    }

    #[test]
    fn unknown_write_never_seen_is_dropped() {
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("b", (2, 3), None)
            .read((4, 5), Some(("a", 1)))
            .analyse();
        assert!(a.violations.is_empty(), "{:?}", a.violations);
    }

    #[test]
    fn lost_acknowledged_write_is_a_violation() {
        // The final read after healing finds an older value.
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .write("b", (2, 3), Some(2))
            .read((100, 101), Some(("a", 1)))
            .analyse();
        assert_eq!(a.violations.len(), 1);
        let a = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .read((100, 101), None)
            .analyse();
        assert_eq!(a.violations.len(), 1);
    }

    #[test]
    fn keys_are_checked_separately() {
        let mut h = H(Vec::new())
            .write("a", (0, 1), Some(1))
            .read((2, 3), Some(("a", 1)));
        h.0[1].key = "other".into();
        let a = h.analyse();
        // On key "other" nobody wrote "a".
        assert_eq!(a.keys, 2);
        assert_eq!(a.violations.len(), 1);
    }
}
