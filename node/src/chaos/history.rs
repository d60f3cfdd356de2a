//! The history of a nemesis run and its analysis.
//!
//! [`Recorder`] stamps every client operation with monotonic times when it is
//! invoked and when it completes, as one of: ok (with what was read, or the
//! version a WRITE was given), fail (a definite error: the operation had no
//! effect) or unknown (timeout, lost connection, no quorum: it may take
//! effect at any time after its invocation, or never). An operation still
//! running when the history is taken is unknown too. An operation is one
//! client call, whatever retries the client made inside it: that is the
//! history clients observe.
//!
//! [`analyse`] splits the history by key (a register per key; linearizability
//! is compositional, so each key is checked alone) and builds the register
//! history for [`super::checker`]:
//! - every READ must return a value some WRITE of that key wrote, and not
//!   before that WRITE was invoked;
//! - an effect is a (value, version) pair, and each WRITE call has exactly
//!   one (WRITEs are exactly-once): the version an acknowledged WRITE
//!   returned, or, for a WRITE whose outcome is unknown, the version READs saw
//!   with its value. A value seen with any other version was applied twice:
//!   a violation;
//! - an unknown WRITE whose value nobody read is left out: placing it after
//!   everything else is always possible, and is the same as never;
//! - failed or unknown READs are left out: they have no effect.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::checker::{self, NEVER, Operation, RegisterOp, Time, Verdict};
use crate::version::Version;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// READ the key.
    Read,
    /// WRITE this (unique) value.
    Write {
        /// The value.
        value: String,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Still running (only in a history taken mid-run); counts as unknown.
    Pending,
    /// A READ found this value and version, or nothing (`None`).
    Read {
        /// What was read.
        found: Option<(String, Version)>,
    },
    /// A WRITE was acknowledged with this version.
    Written {
        /// Its version.
        version: Version,
    },
    /// A definite failure: the operation had no effect.
    Fail {
        /// The error.
        error: String,
    },
    /// The outcome is not known (timeout, lost connection, no quorum).
    Unknown {
        /// The error.
        error: String,
    },
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct Op {
    /// Index in the history.
    pub index: usize,
    /// The client (worker) that ran it; the final checks use their own.
    pub process: usize,
    /// The key.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// Invocation time, ns since the history began.
    pub invoked: Time,
    /// Completion time, ns since the history began; [`NEVER`] while pending.
    pub completed: Time,
    /// How it ended.
    pub completion: Completion,
}

/// Records operations from concurrent clients.
pub struct Recorder {
    /// Origin of every timestamp: a monotonic clock, immune to clock steps.
    start: Instant,
    /// The operations, in invocation order.
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history starting now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the history began.
    pub fn now(&self) -> Time {
        self.at(Instant::now())
    }

    /// `instant` in history time.
    pub fn at(&self, instant: Instant) -> Time {
        instant.saturating_duration_since(self.start).as_nanos() as Time
    }

    /// The monotonic instant the history began at.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an invocation; pass the returned index to [`complete`].
    ///
    /// [`complete`]: Recorder::complete
    pub fn invoke(&self, process: usize, key: &str, call: Call) -> usize {
        let mut ops = self.lock();
        // Stamped under the lock so indices follow invocation times.
        let invoked = self.now();
        let index = ops.len();
        ops.push(Op {
            index,
            process,
            key: key.to_string(),
            call,
            invoked,
            completed: NEVER,
            completion: Completion::Pending,
        });
        index
    }

    /// Records how operation `index` ended.
    pub fn complete(&self, index: usize, completion: Completion) {
        let completed = self.now();
        if let Some(op) = self.lock().get_mut(index) {
            op.completed = completed;
            op.completion = completion;
        }
    }

    /// A copy of the history so far.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }
}

/// Operations counted by kind and outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// READs that returned a value or not-found.
    pub read_ok: usize,
    /// Of those, READs that returned not-found.
    pub read_not_found: usize,
    /// READs that failed definitely.
    pub read_fail: usize,
    /// READs whose outcome is unknown.
    pub read_unknown: usize,
    /// Acknowledged WRITEs.
    pub write_ok: usize,
    /// WRITEs that failed definitely.
    pub write_fail: usize,
    /// WRITEs whose outcome is unknown.
    pub write_unknown: usize,
}

impl Counts {
    /// Counts `ops`.
    pub fn of(ops: &[Op]) -> Counts {
        let mut c = Counts::default();
        for op in ops {
            let read = op.call == Call::Read;
            if matches!(op.completion, Completion::Read { found: None }) {
                c.read_not_found += 1;
            }
            let slot = match (&op.completion, read) {
                (Completion::Read { .. }, _) => &mut c.read_ok,
                (Completion::Written { .. }, _) => &mut c.write_ok,
                (Completion::Fail { .. }, true) => &mut c.read_fail,
                (Completion::Fail { .. }, false) => &mut c.write_fail,
                (_, true) => &mut c.read_unknown,
                (_, false) => &mut c.write_unknown,
            };
            *slot += 1;
        }
        c
    }

    /// Operations that completed with a result.
    pub fn ok(&self) -> usize {
        self.read_ok + self.write_ok
    }

    /// Every operation.
    pub fn total(&self) -> usize {
        self.ok() + self.read_fail + self.read_unknown + self.write_fail + self.write_unknown
    }
}

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
    // value -> the WRITE that wrote it.
    let mut writer: HashMap<&str, &Op> = HashMap::new();
    for op in ops {
        if let Call::Write { value } = &op.call
            && let Some(other) = writer.insert(value.as_str(), op)
        {
            analysis.violations.push(Violation {
                key: key.to_string(),
                what: format!("the value {value:?} was written twice: the history is unusable"),
                excerpt: excerpt(&[other, op]),
            });
            return;
        }
    }
    // Each WRITE's one effect: its acknowledged version, or the first
    // version a READ saw with its value.
    let mut effect_of: HashMap<usize, Version> = HashMap::new();
    for op in ops {
        if let Completion::Written { version } = &op.completion {
            effect_of.insert(op.index, *version);
        }
    }
    let mut register: Vec<Operation> = Vec::new();
    let mut seen_unknown: BTreeMap<usize, Version> = BTreeMap::new();
    for op in ops {
        match (&op.call, &op.completion) {
            (Call::Read, Completion::Read { found }) => {
                let seen = match found {
                    None => None,
                    Some((value, version)) => {
                        let Some(w) = writer.get(value.as_str()) else {
                            analysis.violations.push(Violation {
                                key: key.to_string(),
                                what: format!("a READ returned {value:?}, which no WRITE wrote"),
                                excerpt: excerpt(&[op]),
                            });
                            continue;
                        };
                        if let Completion::Fail { error } = &w.completion {
                            analysis.violations.push(Violation {
                                key: key.to_string(),
                                what: format!("a WRITE that failed definitely ({error}) was read"),
                                excerpt: excerpt(&[w, op]),
                            });
                            continue;
                        }
                        let effect = *effect_of.entry(w.index).or_insert(*version);
                        if effect != *version {
                            analysis.violations.push(Violation {
                                key: key.to_string(),
                                what: format!(
                                    "the WRITE of {value:?} was applied twice (versions {effect} and {version}): a retry was not deduplicated"
                                ),
                                excerpt: excerpt(&[w, op]),
                            });
                            continue;
                        }
                        if !matches!(w.completion, Completion::Written { .. }) {
                            seen_unknown.insert(w.index, effect);
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
            (Call::Write { .. }, Completion::Written { .. }) => {
                register.push(Operation {
                    id: op.index,
                    call: op.invoked,
                    ret: op.completed,
                    op: RegisterOp::Write(op.index as u64),
                });
            }
            _ => {}
        }
    }
    // Unknown WRITEs somebody read took effect at some point after their call.
    for index in seen_unknown.keys() {
        let Some(w) = ops.iter().find(|o| o.index == *index) else {
            continue;
        };
        register.push(Operation {
            id: w.index,
            call: w.invoked,
            ret: NEVER,
            op: RegisterOp::Write(w.index as u64),
        });
    }
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

/// One line per operation: `#index p<process> [invoked, completed] call -> completion`.
pub fn excerpt(ops: &[&Op]) -> String {
    let ms = |t: Time| {
        if t == NEVER {
            "never".to_string()
        } else {
            format!("{:.3}", t as f64 / 1e6)
        }
    };
    let mut out = String::new();
    for op in ops {
        let call = match &op.call {
            Call::Read => "read".to_string(),
            Call::Write { value } => format!("write {value}"),
        };
        let result = match &op.completion {
            Completion::Pending => "pending".to_string(),
            Completion::Read { found: None } => "not found".to_string(),
            Completion::Read {
                found: Some((v, ver)),
            } => format!("{v} @{ver}"),
            Completion::Written { version } => format!("ok @{version}"),
            Completion::Fail { error } => format!("FAIL {error}"),
            Completion::Unknown { error } => format!("UNKNOWN {error}"),
        };
        let _ = writeln!(
            out,
            "  #{} p{} [{} ms, {} ms] {} {} -> {}",
            op.index,
            op.process,
            ms(op.invoked),
            ms(op.completed),
            op.key,
            call,
            result
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(seq: u64) -> Version {
        Version::new(1, seq)
    }

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
        fn analyse(&self) -> Analysis {
            analyse(&self.0, checker::DEFAULT_BUDGET)
        }
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
    /// against): the WRITE of "a" acknowledged with version 1, "b" with 2, then a late retry of the WRITE of "a" applied as version 3
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
