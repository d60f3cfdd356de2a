//! Limits on what a client may store, and the validation every request
//! goes through before anything is logged: bad input gets a clear error
//! naming the limit, and nothing already stored is touched.

use thiserror::Error;

/// Default largest key: 1 KiB.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;
/// Default largest value: 1 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Values above this are refused even if configured, because a value must
/// fit in one log record and one gRPC message.
pub const HARD_MAX_VALUE_BYTES: usize = 32 * 1024 * 1024;
/// Largest gRPC message a client accepts or sends: one value at the hard
/// limit with its key and framing, whatever the server is configured for.
pub const CLIENT_MAX_MESSAGE_BYTES: usize = HARD_MAX_VALUE_BYTES + 64 * 1024;

/// Default most WATCH streams one master serves at once.
pub const DEFAULT_MAX_WATCHERS: usize = 1000;

/// Limits enforced by the master on every request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Most WATCH streams served at once.
    pub max_watchers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_watchers: DEFAULT_MAX_WATCHERS,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    /// Keys must have at least one byte.
    #[error("key is empty; keys must be 1 to {limit} bytes")]
    EmptyKey {
        /// The configured key limit.
        limit: usize,
    },
    /// The key is longer than the limit.
    #[error("key is {len} bytes; the limit is {limit} bytes")]
    KeyTooLong {
        /// Length received.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The value is larger than the limit.
    #[error("value is {len} bytes; the limit is {limit} bytes (--max-value-bytes)")]
    ValueTooLarge {
        /// Length received.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
}

impl Limits {
    /// Checks a key for READ and WRITE.
    pub fn check_key(&self, key: &[u8]) -> Result<(), InputError> {
        if key.is_empty() {
            return Err(InputError::EmptyKey {
                limit: self.max_key_bytes,
            });
        }
        if key.len() > self.max_key_bytes {
            return Err(InputError::KeyTooLong {
                len: key.len(),
                limit: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks a WRITE's key and value.
    pub fn check_write(&self, key: &[u8], value: &[u8]) -> Result<(), InputError> {
        self.check_key(key)?;
        if value.len() > self.max_value_bytes {
            return Err(InputError::ValueTooLarge {
                len: value.len(),
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Largest gRPC message a server or client must accept for these limits.
    pub fn max_message_bytes(&self) -> usize {
        self.max_value_bytes + self.max_key_bytes + 64 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_and_named() {
        let limits = Limits {
            max_key_bytes: 4,
            max_value_bytes: 8,
            ..Limits::default()
        };
        let cases: &[(&[u8], &[u8], Option<&str>)] = &[
            (b"k", b"", None),
            (b"kkkk", b"12345678", None),
            (b"", b"v", Some("key is empty; keys must be 1 to 4 bytes")),
            (b"kkkkk", b"v", Some("key is 5 bytes; the limit is 4 bytes")),
            (
                b"k",
                b"123456789",
                Some("value is 9 bytes; the limit is 8 bytes"),
            ),
        ];
        for (key, value, want) in cases {
            let got = limits.check_write(key, value).err().map(|e| e.to_string());
            match want {
                None => assert_eq!(got, None),
                Some(prefix) => assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(prefix)),
                    "{got:?} should start with {prefix:?}"
                ),
            }
        }
    }
}
