//! The version of a value: `(epoch, seq)`, ordered epoch first.
//!
//! Invariant (version order): a slave never replaces a value with one of a
//! lower version, and a READ never returns a version lower than the latest
//! acknowledged one. Ordering by epoch first is what makes a deposed master's
//! late writes lose against the new master's, whatever their sequence numbers.

use crate::proto;

/// What a conditional WRITE or DELETE expects of its key (compare-and-set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key's latest version is exactly this one.
    Version(Version),
    /// The key does not exist (never written, or deleted).
    Absent,
}

impl Expect {
    /// From a request's condition (`None`: unconditional).
    ///
    /// # Errors
    /// A condition that gives neither a version nor `absent = true`.
    pub fn from_proto(condition: Option<proto::Condition>) -> Result<Option<Expect>, &'static str> {
        use proto::condition::Expect as Wire;
        let Some(condition) = condition else {
            return Ok(None);
        };
        match condition.expect {
            Some(Wire::Version(v)) => Ok(Some(Expect::Version(v.into()))),
            Some(Wire::Absent(true)) => Ok(Some(Expect::Absent)),
            Some(Wire::Absent(false)) | None => {
                Err("a condition must give a version or absent = true")
            }
        }
    }

    /// Whether a key whose latest version is `current` (`None`: it does not
    /// exist) meets the condition.
    pub fn holds(self, current: Option<Version>) -> bool {
        match self {
            Expect::Version(v) => current == Some(v),
            Expect::Absent => current.is_none(),
        }
    }
}

impl From<Expect> for proto::Condition {
    fn from(expect: Expect) -> Self {
        use proto::condition::Expect as Wire;
        proto::Condition {
            expect: Some(match expect {
                Expect::Version(v) => Wire::Version(v.into()),
                Expect::Absent => Wire::Absent(true),
            }),
        }
    }
}

impl std::str::FromStr for Version {
    type Err = String;

    /// Parses `EPOCH.SEQ`, as versions are printed.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (epoch, seq) = text
            .split_once('.')
            .ok_or_else(|| format!("version {text:?} is not EPOCH.SEQ (such as 2.17)"))?;
        let number = |part: &str| {
            part.parse::<u64>()
                .map_err(|_| format!("version {text:?} is not EPOCH.SEQ (such as 2.17)"))
        };
        Ok(Version::new(number(epoch)?, number(seq)?))
    }
}

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
    fn versions_parse_as_they_print() {
        let v = Version::new(2, 17);
        assert_eq!(v.to_string().parse::<Version>(), Ok(v));
        assert!("2".parse::<Version>().is_err());
        assert!("a.b".parse::<Version>().is_err());
    }

    #[test]
    fn newer_epoch_wins_over_higher_seq() {
        assert!(Version::new(2, 1) > Version::new(1, 1_000));
        assert!(Version::new(1, 5) > Version::new(1, 4));
    }
}
