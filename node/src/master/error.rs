//! The master's errors, in its own terms.
//!
//! The master's logic (WRITE, READ, LIST, WATCH, snapshots, compaction,
//! drains, slave admission) returns a [`MasterError`]: what went wrong and what
//! a caller can do about it, with the details a client needs (the active
//! master's address, a key's current version, where the log is complete from).
//! Only the gRPC services (`kv.rs`, `control.rs`) turn it into a
//! [`tonic::Status`], with [`From<MasterError> for Status`]; the metrics label
//! a request by [`MasterError::metric_label`]. Errors a slave answered (the
//! master is a gRPC client there) come in through `From<Status>`.

use dsm_wire::metadata;
use tonic::{Code, Status};

use crate::version::Version;

/// Why the master did not do what it was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MasterError {
    /// This process is not the active master; `leader` is the address of the
    /// one it knows (empty when none).
    #[error("{message}")]
    NotLeader {
        /// What to show.
        message: String,
        /// The active master's address, for the client to follow.
        leader: String,
    },
    /// Not possible now (no quorum of live slaves, a takeover under way, the
    /// term ended mid-request, shutting down); retrying, maybe against the
    /// other master, may succeed. For a WRITE: its outcome is unknown.
    #[error("{0}")]
    Unavailable(String),
    /// A slave did not answer in time (the outcome of what was asked of it
    /// is unknown).
    #[error("{0}")]
    TimedOut(String),
    /// The request is malformed or over a limit; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The request does not apply to the cluster's state (e.g. draining the
    /// last slave, a deposed term); nothing changed.
    #[error("{0}")]
    Refused(String),
    /// What was asked about does not exist (a key, a slave).
    #[error("{0}")]
    NotFound(String),
    /// A conditional WRITE or DELETE found the key at `current` (`None`:
    /// absent); nothing changed.
    #[error("{message}")]
    ConditionFailed {
        /// What to show.
        message: String,
        /// The key's latest version.
        current: Option<Version>,
    },
    /// Changes a WATCH needs were compacted away; every change from
    /// `complete_from` on is still in the log.
    #[error("{message}")]
    Compacted {
        /// What to show.
        message: String,
        /// First seq from which the log is complete.
        complete_from: u64,
    },
    /// A bounded resource is used up (watchers) or a watcher fell behind.
    #[error("{0}")]
    Exhausted(String),
    /// The log lost a record it must have.
    #[error("{0}")]
    DataLoss(String),
    /// A bug or a failing disk: reading or writing the log failed.
    #[error("{0}")]
    Internal(String),
}

/// Constructors for the variants that carry only a message.
impl MasterError {
    /// [`MasterError::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> MasterError {
        MasterError::Unavailable(message.into())
    }

    /// [`MasterError::TimedOut`].
    pub fn timed_out(message: impl Into<String>) -> MasterError {
        MasterError::TimedOut(message.into())
    }

    /// [`MasterError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> MasterError {
        MasterError::Invalid(message.into())
    }

    /// [`MasterError::Refused`].
    pub fn refused(message: impl Into<String>) -> MasterError {
        MasterError::Refused(message.into())
    }

    /// [`MasterError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> MasterError {
        MasterError::NotFound(message.into())
    }

    /// [`MasterError::Exhausted`].
    pub fn exhausted(message: impl Into<String>) -> MasterError {
        MasterError::Exhausted(message.into())
    }

    /// [`MasterError::DataLoss`].
    pub fn data_loss(message: impl Into<String>) -> MasterError {
        MasterError::DataLoss(message.into())
    }

    /// [`MasterError::Internal`].
    pub fn internal(message: impl Into<String>) -> MasterError {
        MasterError::Internal(message.into())
    }
}

/// A slave's error answer, in the master's terms: a slave's own message is
/// kept; its code says what kind of failure it was.
impl From<Status> for MasterError {
    fn from(status: Status) -> MasterError {
        let message = status.message().to_string();
        match status.code() {
            Code::DeadlineExceeded => MasterError::TimedOut(message),
            Code::InvalidArgument => MasterError::Invalid(message),
            Code::NotFound => MasterError::NotFound(message),
            Code::FailedPrecondition => MasterError::Refused(message),
            Code::ResourceExhausted => MasterError::Exhausted(message),
            Code::DataLoss => MasterError::DataLoss(message),
            Code::Internal | Code::Unknown => MasterError::Internal(message),
            _ => MasterError::Unavailable(message),
        }
    }
}

impl MasterError {
    /// The gRPC code a client receives.
    pub fn code(&self) -> Code {
        match self {
            MasterError::NotLeader { .. }
            | MasterError::Refused(_)
            | MasterError::ConditionFailed { .. } => Code::FailedPrecondition,
            MasterError::Unavailable(_) => Code::Unavailable,
            MasterError::TimedOut(_) => Code::DeadlineExceeded,
            MasterError::Invalid(_) => Code::InvalidArgument,
            MasterError::NotFound(_) => Code::NotFound,
            MasterError::Compacted { .. } => Code::OutOfRange,
            MasterError::Exhausted(_) => Code::ResourceExhausted,
            MasterError::DataLoss(_) => Code::DataLoss,
            MasterError::Internal(_) => Code::Internal,
        }
    }

    /// The `result` label of `dsm_requests_total` for this outcome.
    pub fn metric_label(&self) -> &'static str {
        match self {
            MasterError::NotLeader { .. } => "not_leader",
            MasterError::Unavailable(_) | MasterError::TimedOut(_) => "unavailable",
            MasterError::Invalid(_) => "invalid",
            MasterError::NotFound(_) => "not_found",
            MasterError::ConditionFailed { .. } => "condition_failed",
            MasterError::Compacted { .. } => "compacted",
            MasterError::Exhausted(_) => "limit",
            MasterError::Refused(_) => "refused",
            MasterError::DataLoss(_) | MasterError::Internal(_) => "error",
        }
    }
}

impl From<MasterError> for Status {
    fn from(error: MasterError) -> Status {
        let mut status = Status::new(error.code(), error.to_string());
        let (key, value) = match &error {
            // Sent even when empty: a client then knows to wait for a
            // takeover rather than give up.
            MasterError::NotLeader { leader, .. } => (metadata::LEADER, leader.clone()),
            MasterError::ConditionFailed { current, .. } => (
                metadata::CURRENT_VERSION,
                current.map_or_else(|| "absent".to_string(), |v| v.to_string()),
            ),
            MasterError::Compacted { complete_from, .. } => {
                (metadata::COMPACTED_BELOW, complete_from.to_string())
            }
            _ => return status,
        };
        if let Ok(value) = value.parse() {
            status.metadata_mut().insert(key, value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_details_a_client_follows_travel_as_metadata() {
        let status = Status::from(MasterError::NotLeader {
            message: "a is not the active master; it is b:1".into(),
            leader: "b:1".into(),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.metadata().get(metadata::LEADER).unwrap(), "b:1");

        let status = Status::from(MasterError::ConditionFailed {
            message: "condition not met".into(),
            current: None,
        });
        assert_eq!(
            status.metadata().get(metadata::CURRENT_VERSION).unwrap(),
            "absent"
        );

        let status = Status::from(MasterError::Compacted {
            message: "compacted".into(),
            complete_from: 17,
        });
        assert_eq!(status.code(), Code::OutOfRange);
        assert_eq!(
            status.metadata().get(metadata::COMPACTED_BELOW).unwrap(),
            "17"
        );
    }

    #[test]
    fn a_slave_answer_keeps_its_kind() {
        let timed_out = MasterError::from(Status::deadline_exceeded("slow"));
        assert_eq!(timed_out.code(), Code::DeadlineExceeded);
        assert_eq!(timed_out.metric_label(), "unavailable");
        let refused = MasterError::from(Status::unavailable("connection refused"));
        assert_eq!(
            refused,
            MasterError::Unavailable("connection refused".into())
        );
    }
}
