//! The version of a value: `(epoch, seq)`, ordered epoch first.
//!
//! Invariant (version order): a slave never replaces a value with one of a
//! lower version, and a READ never returns a version lower than the latest
//! acknowledged one. Ordering by epoch first is what makes a deposed master's
//! late writes lose against the new master's, whatever their sequence numbers.

use crate::proto;

/// A value's version. `Ord` compares `epoch`, then `seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Term of the master that accepted the write.
    pub epoch: u64,
    /// The write's index in the write-ahead log.
    pub seq: u64,
}

impl Version {
    /// Builds a version.
    pub fn new(epoch: u64, seq: u64) -> Self {
        Version { epoch, seq }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

impl From<Version> for proto::Version {
    fn from(v: Version) -> Self {
        proto::Version {
            epoch: v.epoch,
            seq: v.seq,
        }
    }
}

impl From<proto::Version> for Version {
    fn from(v: proto::Version) -> Self {
        Version::new(v.epoch, v.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_epoch_wins_over_higher_seq() {
        assert!(Version::new(2, 1) > Version::new(1, 1_000));
        assert!(Version::new(1, 5) > Version::new(1, 4));
    }
}
