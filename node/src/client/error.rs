//! Why a [`Client`](super::Client) call failed, in words a person can act
//! on: [`ClientError`], the last error of each endpoint tried
//! ([`EndpointError`]), and gRPC statuses named by their code as the spec
//! spells it and followed by their causes.

use std::fmt;

use tonic::{Code, Status};

use crate::error_chain;
use crate::version::Version;

/// The last failure seen at one endpoint, for [`ClientError::Unavailable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointError {
    /// The endpoint's address as configured or learned.
    pub address: String,
    /// What went wrong, in words.
    pub error: String,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.address, self.error)
    }
}

/// Why a [`Client`](super::Client) call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A conditional WRITE or DELETE found the key in another state; nothing
    /// changed. `current` is the key's version (`None`: it does not exist).
    #[error("condition not met: the key {}; nothing was changed", match current {
        Some(v) => format!("is at version {v}"),
        None => "does not exist".to_string(),
    })]
    ConditionFailed {
        /// The key's current version.
        current: Option<Version>,
    },
    /// A WATCH asked for (or fell behind to) changes that compaction has
    /// dropped: re-read the keys, then watch from now.
    #[error(
        "changes before seq {complete_from} were compacted away: re-read the keys, then watch from now"
    )]
    Compacted {
        /// The first seq from which every change is still in the log.
        complete_from: u64,
    },
    /// The server rejected the input (empty key, key or value over the
    /// limit…); its message, which names the limit, is passed through.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server says the thing asked about does not exist (for `drain`, an
    /// unknown slave id; `read` turns a missing key into `Ok(None)`).
    #[error("not found: {0}")]
    NotFound(String),
    /// No endpoint served the call within the retry budget.
    #[error(
        "no active master reachable after {attempts} attempt(s); last errors: {} \
         (check that the master/backup addresses are right and that a master is running)",
        join(last_errors)
    )]
    Unavailable {
        /// Attempts made, over all endpoints and rounds.
        attempts: u32,
        /// The last error of each endpoint that was tried.
        last_errors: Vec<EndpointError>,
    },
    /// An address could not be turned into a gRPC endpoint.
    #[error("bad address '{address}': {reason}")]
    BadAddress {
        /// The address as given.
        address: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The client was given no address at all.
    #[error("no master address given")]
    NoEndpoints,
    /// Any other answer from a server, returned without retrying.
    #[error("{address} answered {}", describe_status(status))]
    Other {
        /// The endpoint that answered.
        address: String,
        /// Its answer.
        status: Status,
    },
}

fn join(errors: &[EndpointError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// gRPC code in the spelling of the spec (`FAILED_PRECONDITION`), which is
/// what people search for; tonic's `Display` writes sentences instead.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A status in one line: its code as the spec spells it, then its message
/// and causes, so "UNAVAILABLE: tcp connect error" goes on with
/// "Connection refused (os error 111)".
pub(super) fn describe_status(status: &Status) -> String {
    format!(
        "{}: {}",
        code_name(status.code()),
        error_chain::describe(status.message(), status)
    )
}
