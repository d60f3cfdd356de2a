//! The gRPC metadata keys of the contract, which the `.proto` file cannot carry: the
//! response metadata every side reads and writes (see `proto/dsm.proto` for where each
//! is sent), and the request metadata carrying a client's token.

/// A standby's FAILED_PRECONDITION names the active master's address here
/// (empty when it does not know it).
pub const LEADER: &str = "dsm-leader";
/// A slave's refusal of a deposed master carries its fenced epoch here.
pub const EPOCH: &str = "dsm-epoch";
/// A conditional WRITE or DELETE refused (FAILED_PRECONDITION) names the
/// key's current version here: `EPOCH.SEQ`, or `absent`.
pub const CURRENT_VERSION: &str = "dsm-current-version";
/// A WATCH refused with OUT_OF_RANGE names the first seq still complete here.
pub const COMPACTED_BELOW: &str = "dsm-compacted-below";
/// Request metadata carrying a client's token: `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
