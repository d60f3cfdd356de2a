//! The history of a nemesis run: what clients asked and how each call
//! ended, as they observed it.
//!
//! [`Recorder`] stamps every client operation (READ, WRITE, compare-and-set,
//! DELETE) with monotonic times when it is invoked and when it completes, as
//! one of: ok (with what was read, the version a WRITE or compare-and-set was
//! given, or what a DELETE deleted), refused (a compare-and-set whose
//! condition did not hold: definite, nothing changed), fail (a definite
//! error: the operation had no effect) or unknown (timeout, lost connection,
//! no quorum: it may take effect at any time after its invocation, or
//! never). An operation still running when the history is taken is unknown
//! too. An operation is one client call, whatever retries the client made
//! inside it: that is the history clients observe. [`super::analysis`]
//! checks it.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use super::checker::{NEVER, Time};
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
    /// WRITE this (unique) value only if the key's latest version is
    /// `expect`, or, for `None`, only if the key does not exist.
    CompareAndSet {
        /// The value.
        value: String,
        /// The version the key must be at (`None`: absent).
        expect: Option<Version>,
    },
    /// DELETE the key.
    Delete,
}

impl Call {
    /// The unique value this call writes, if it writes one.
    pub fn value(&self) -> Option<&str> {
        match self {
            Call::Write { value } | Call::CompareAndSet { value, .. } => Some(value),
            Call::Read | Call::Delete => None,
        }
    }

    /// The call's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Read => "READ",
            Call::Write { .. } => "WRITE",
            Call::CompareAndSet { .. } => "compare-and-set",
            Call::Delete => "DELETE",
        }
    }
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
    /// A WRITE or compare-and-set was acknowledged with this version.
    Written {
        /// Its version.
        version: Version,
    },
    /// A compare-and-set (or conditional DELETE) found the key in another
    /// state: definite, nothing changed.
    Refused {
        /// The key's version then (`None`: it did not exist).
        current: Option<Version>,
    },
    /// A DELETE was acknowledged.
    Deleted {
        /// The version of its tombstone, or `None` when the key did not
        /// exist (nothing was deleted).
        version: Option<Version>,
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

impl Completion {
    /// Whether the operation was answered (a result or a refusal), rather
    /// than failed, unknown or still running.
    pub fn answered(&self) -> bool {
        matches!(
            self,
            Completion::Read { .. }
                | Completion::Written { .. }
                | Completion::Refused { .. }
                | Completion::Deleted { .. }
        )
    }
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
    /// Acknowledged compare-and-sets.
    pub cas_ok: usize,
    /// Compare-and-sets refused because the key was in another state.
    pub cas_refused: usize,
    /// Compare-and-sets that failed definitely.
    pub cas_fail: usize,
    /// Compare-and-sets whose outcome is unknown.
    pub cas_unknown: usize,
    /// Acknowledged DELETEs (whether or not there was anything to delete).
    pub delete_ok: usize,
    /// DELETEs that failed definitely.
    pub delete_fail: usize,
    /// DELETEs whose outcome is unknown.
    pub delete_unknown: usize,
}

impl Counts {
    /// Counts `ops`.
    pub fn of(ops: &[Op]) -> Counts {
        let mut c = Counts::default();
        for op in ops {
            if matches!(op.completion, Completion::Read { found: None }) {
                c.read_not_found += 1;
            }
            let (ok, fail, unknown) = match op.call {
                Call::Read => (&mut c.read_ok, &mut c.read_fail, &mut c.read_unknown),
                Call::Write { .. } => (&mut c.write_ok, &mut c.write_fail, &mut c.write_unknown),
                Call::CompareAndSet { .. } => (&mut c.cas_ok, &mut c.cas_fail, &mut c.cas_unknown),
                Call::Delete => (&mut c.delete_ok, &mut c.delete_fail, &mut c.delete_unknown),
            };
            let slot = match op.completion {
                Completion::Refused { .. } => &mut c.cas_refused,
                Completion::Read { .. }
                | Completion::Written { .. }
                | Completion::Deleted { .. } => ok,
                Completion::Fail { .. } => fail,
                Completion::Pending | Completion::Unknown { .. } => unknown,
            };
            *slot += 1;
        }
        c
    }

    /// Operations that were answered (a result or a refusal).
    pub fn ok(&self) -> usize {
        self.read_ok + self.write_ok + self.cas_ok + self.cas_refused + self.delete_ok
    }

    /// Every operation.
    pub fn total(&self) -> usize {
        self.ok()
            + self.read_fail
            + self.read_unknown
            + self.write_fail
            + self.write_unknown
            + self.cas_fail
            + self.cas_unknown
            + self.delete_fail
            + self.delete_unknown
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
            Call::CompareAndSet {
                value,
                expect: Some(v),
            } => format!("cas {value} if @{v}"),
            Call::CompareAndSet {
                value,
                expect: None,
            } => format!("cas {value} if absent"),
            Call::Delete => "delete".to_string(),
        };
        let result = match &op.completion {
            Completion::Pending => "pending".to_string(),
            Completion::Read { found: None } => "not found".to_string(),
            Completion::Read {
                found: Some((v, ver)),
            } => format!("{v} @{ver}"),
            Completion::Written { version } => format!("ok @{version}"),
            Completion::Refused { current: Some(v) } => format!("refused, key @{v}"),
            Completion::Refused { current: None } => "refused, key absent".to_string(),
            Completion::Deleted { version: Some(v) } => format!("deleted @{v}"),
            Completion::Deleted { version: None } => "nothing to delete".to_string(),
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
