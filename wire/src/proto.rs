//! The gRPC services and messages, generated from `proto/dsm.proto` (see that file for
//! the contract), and the conversions of its `OpError` that every pipelined caller
//! and server needs.

use tonic::Status;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, KeyAndValueRef, MetadataMap};

/// The generated code, kept apart so the lints and the documentation requirement of
/// this crate apply to the hand-written code only.
mod generated {
    #![allow(missing_docs, clippy::all)]

    tonic::include_proto!("dsm.v1");
}

pub use generated::*;

/// How a failed op travels inside a results message: the status a unary
/// call would have returned.
impl From<Status> for OpError {
    fn from(status: Status) -> Self {
        let metadata = status
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                KeyAndValueRef::Ascii(key, value) if key.as_str().starts_with(DSM_PREFIX) => {
                    Some((key.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                }
                _ => None,
            })
            .collect();
        OpError {
            code: status.code() as i32,
            message: status.message().to_string(),
            metadata,
        }
    }
}

impl From<OpError> for Status {
    fn from(error: OpError) -> Self {
        let mut metadata = MetadataMap::new();
        for (key, value) in &error.metadata {
            // Only what parses as ASCII metadata: anything else came from a
            // peer that does not speak this protocol and is dropped.
            if let (Ok(key), Ok(value)) = (
                key.parse::<AsciiMetadataKey>(),
                value.parse::<AsciiMetadataValue>(),
            ) {
                metadata.insert(key, value);
            }
        }
        Status::with_metadata(tonic::Code::from(error.code), error.message, metadata)
    }
}

/// What the names of DSM's own metadata start with (see [`crate::metadata`]).
const DSM_PREFIX: &str = "dsm-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_error_carries_the_status_code_and_message() {
        let status = Status::from(OpError::from(Status::failed_precondition("fenced")));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "fenced");
    }

    #[test]
    fn an_op_error_carries_the_leader_hint() {
        let mut status = Status::failed_precondition("not the active master");
        status
            .metadata_mut()
            .insert(crate::metadata::LEADER, "10.0.0.2:7000".parse().unwrap());
        status
            .metadata_mut()
            .insert("x-other", "dropped".parse().unwrap());
        let status = Status::from(OpError::from(status));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status
                .metadata()
                .get(crate::metadata::LEADER)
                .and_then(|v| v.to_str().ok()),
            Some("10.0.0.2:7000")
        );
        assert!(status.metadata().get("x-other").is_none());
    }
}
