//! The gRPC services and messages, generated from `proto/dsm.proto` (see that file for
//! the contract), and the conversions of its `OpError` that every pipelined caller
//! and server needs.

use tonic::Status;

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
        OpError {
            code: status.code() as i32,
            message: status.message().to_string(),
        }
    }
}

impl From<OpError> for Status {
    fn from(error: OpError) -> Self {
        Status::new(tonic::Code::from(error.code), error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_op_error_carries_the_status_code_and_message() {
        let status = Status::from(OpError::from(Status::failed_precondition("fenced")));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "fenced");
    }
}
