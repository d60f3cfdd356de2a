//! The parts of the wire contract that the `.proto` file cannot carry: the
//! response metadata keys every side reads and writes (see
//! `proto/dsm.proto` for where each is sent).

/// A standby's FAILED_PRECONDITION names the active master's address here
/// (empty when it does not know it).
pub const LEADER_METADATA: &str = "dsm-leader";
/// A slave's refusal of a deposed master carries its fenced epoch here.
pub const EPOCH_METADATA: &str = "dsm-epoch";
/// A conditional WRITE or DELETE refused (FAILED_PRECONDITION) names the
/// key's current version here: `EPOCH.SEQ`, or `absent`.
pub const CURRENT_VERSION_METADATA: &str = "dsm-current-version";
/// A WATCH refused with OUT_OF_RANGE names the first seq still complete here.
pub const COMPACTED_BELOW_METADATA: &str = "dsm-compacted-below";
