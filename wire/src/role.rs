//! Whether a master-capable process (`dsm master`, `dsm backup`) is the active master.
//!
//! `Kv.Status` reports it as a string (`StatusReply.role`); the operator labels the
//! master-capable pods with it and points the leader Service at the active one. Both
//! sides convert through [`Role`], so neither compares strings by hand.

use std::fmt;
use std::str::FromStr;

use crate::proto::StatusReply;

/// Whether a master-capable process holds the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Holds the lease and serves clients and slaves.
    Active,
    /// Follows the log, ready to take over (a takeover in progress counts as standby).
    Standby,
}

impl Role {
    /// Every role, e.g. to publish a gauge for each.
    pub const ALL: [Role; 2] = [Role::Active, Role::Standby];

    /// The role as the contract spells it: `active` or `standby`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role string that is neither `active` nor `standby`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown role {:?}: expected active or standby", self.0)
    }
}

impl std::error::Error for UnknownRole {}

impl FromStr for Role {
    type Err = UnknownRole;

    /// Exactly `active` or `standby`, as [`Role::as_str`] writes them.
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// The role field's accessors, named as prost names those of enumeration fields.
impl StatusReply {
    /// The role the process reported; `None` for a string this build does not know.
    pub fn role(&self) -> Option<Role> {
        self.role.parse().ok()
    }

    /// Sets the role field.
    pub fn set_role(&mut self, role: Role) {
        self.role = role.as_str().to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_reads_back_as_written() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!(
            "Active".parse::<Role>(),
            Err(UnknownRole("Active".to_string()))
        );
    }

    #[test]
    fn a_status_reply_carries_the_role_as_a_string() {
        let mut reply = StatusReply::default();
        assert_eq!(reply.role(), None);
        reply.set_role(Role::Standby);
        assert_eq!(reply.role, "standby");
        assert_eq!(reply.role(), Some(Role::Standby));
    }
}
