//! Entry points of the fuzz targets in `fuzz/` (feature `fuzzing`), also run
//! by the property tests below on every `cargo test`.
//!
//! Each function feeds one arbitrary input to a parser that meets untrusted
//! bytes (the rule: no panic on any input from the network or a file) and
//! panics if the parser panics *or* breaks one of its stated invariants, so
//! libFuzzer reports both. Not a stable API: it exists for the fuzzer.

use crate::client::repl::{self, Command};
use crate::limits::{InputError, Limits};
use crate::quoting::{escape, tokenize};
use crate::version::Expect;
use crate::wal::frame::{self, HEADER_LEN, MIN_PAYLOAD, Parsed};

/// The log record decoder (`wal::frame`) on arbitrary bytes, as replay meets
/// them after the segment magic: frames are decoded one after the other.
///
/// Invariants: a decoded record re-encodes to exactly its frame's bytes (the
/// format is canonical, so a record cannot be read differently from how it
/// was written); "incomplete" means the bytes really end inside the frame;
/// after a bad frame, the next valid frame [`frame::find_valid_frame`]
/// reports is a valid frame that starts later.
pub fn log_frames(data: &[u8]) {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        match frame::parse(rest) {
            Parsed::Record(record, len) => {
                assert!(len <= rest.len(), "frame of {len} bytes past the end");
                assert!(len >= HEADER_LEN + MIN_PAYLOAD as usize);
                let mut again = Vec::new();
                frame::encode(
                    record.version,
                    &record.key,
                    &record.value,
                    record.origin,
                    record.tombstone,
                    &mut again,
                );
                assert_eq!(again, &rest[..len], "decoded record re-encodes differently");
                pos += len;
            }
            Parsed::Incomplete { needed } => {
                assert!(
                    needed > rest.len() as u64,
                    "incomplete, yet {needed} bytes are there"
                );
                return;
            }
            Parsed::Bad(_) => {
                if let Some(next) = frame::find_valid_frame(rest, 1) {
                    assert!(next >= 1 && next < rest.len());
                    assert!(matches!(frame::parse(&rest[next..]), Parsed::Record(..)));
                }
                return;
            }
        }
    }
}

/// Request validation ([`Limits`]) on arbitrary limits, keys and values.
///
/// The first four bytes choose the key and value limits, the fifth where
/// the rest splits into key and value. Invariants: a WRITE is accepted iff
/// `1 <= key <= max_key_bytes` and `value <= max_value_bytes`; a refusal
/// reports the first broken rule with the right lengths and names the
/// limit in its message; READ's key check agrees with WRITE's.
pub fn limits(data: &[u8]) {
    let [k0, k1, v0, v1, split, rest @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_key_bytes: usize::from(u16::from_le_bytes([*k0, *k1]) % 2048),
        max_value_bytes: usize::from(u16::from_le_bytes([*v0, *v1])),
        ..Limits::default()
    };
    let at = usize::from(*split).min(rest.len());
    let (key, value) = rest.split_at(at);
    let result = limits.check_write(key, value);
    let expected = if key.is_empty() {
        Err(InputError::EmptyKey {
            limit: limits.max_key_bytes,
        })
    } else if key.len() > limits.max_key_bytes {
        Err(InputError::KeyTooLong {
            len: key.len(),
            limit: limits.max_key_bytes,
        })
    } else if value.len() > limits.max_value_bytes {
        Err(InputError::ValueTooLarge {
            len: value.len(),
            limit: limits.max_value_bytes,
        })
    } else {
        Ok(())
    };
    assert_eq!(result, expected);
    if let Err(e) = &result {
        let limit = match e {
            InputError::ValueTooLarge { limit, .. } => limit,
            InputError::EmptyKey { limit } | InputError::KeyTooLong { limit, .. } => limit,
        };
        assert!(e.to_string().contains(&limit.to_string()), "{e}");
    }
    let key_only = limits.check_key(key);
    assert_eq!(
        key_only.is_ok(),
        !matches!(
            expected,
            Err(InputError::EmptyKey { .. } | InputError::KeyTooLong { .. })
        )
    );
    assert!(limits.max_message_bytes() > limits.max_value_bytes + limits.max_key_bytes);
}

/// The REPL parser ([`repl::parse`]) on an arbitrary line (bytes that are
/// not UTF-8 are replaced, as a terminal would show them).
///
/// Invariant: a parsed command, printed back in canonical form with
/// [`escape`], parses to the same command (what the REPL shows can be
/// pasted into it).
pub fn repl_line(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let Ok(command) = repl::parse(&line) else {
        return;
    };
    let canonical = match &command {
        Command::Read { key } => format!("READ {}", escape(key)),
        Command::Write { key, value, expect } => {
            let condition = match expect {
                None => String::new(),
                Some(Expect::Absent) => " IF ABSENT".into(),
                Some(Expect::Version(v)) => format!(" IF VERSION {v}"),
            };
            format!("WRITE {} {}{condition}", escape(key), escape(value))
        }
        Command::Delete { key, if_version } => match if_version {
            Some(v) => format!("DELETE {} IF VERSION {v}", escape(key)),
            None => format!("DELETE {}", escape(key)),
        },
        Command::Keys { prefix } => format!("KEYS {}", escape(prefix)),
        Command::Watch { prefix, count } => match count {
            Some(n) => format!("WATCH {} {n}", escape(prefix)),
            None => format!("WATCH {}", escape(prefix)),
        },
        Command::Drain { slave_id } => format!("DRAIN {}", escape(slave_id.as_bytes())),
        Command::Status => "STATUS".into(),
        Command::Compact => "COMPACT".into(),
        Command::Help => "HELP".into(),
        Command::Exit => "EXIT".into(),
        Command::Empty => String::new(),
    };
    assert_eq!(repl::parse(&canonical), Ok(command), "{canonical:?}");
}

/// The word splitter ([`tokenize`]) and its inverse ([`escape`]).
///
/// Invariants: `tokenize(escape(x)) == [x]` for the input bytes as they
/// are; and words split from the input as a line, escaped and joined by
/// spaces, split back into the same words.
pub fn tokenize_escape(data: &[u8]) {
    assert_eq!(tokenize(&escape(data)), Ok(vec![data.to_vec()]));
    let line = String::from_utf8_lossy(data);
    if let Ok(words) = tokenize(&line) {
        let shown: Vec<String> = words.iter().map(|w| escape(w)).collect();
        assert_eq!(tokenize(&shown.join(" ")), Ok(words));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::version::Version;

    /// Valid frames with some damage, so inputs reach beyond the header
    /// checks (random bytes almost never carry a valid CRC).
    fn frames_with_damage() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..12),
                    proptest::collection::vec(any::<u8>(), 0..24),
                ),
                0..5,
            ),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(records, flips, cut)| {
                let mut bytes = Vec::new();
                for (i, (k, v)) in records.iter().enumerate() {
                    frame::encode(Version::new(1, i as u64), k, v, None, false, &mut bytes);
                }
                if !bytes.is_empty() {
                    for (at, x) in flips {
                        let i = at.index(bytes.len());
                        bytes[i] ^= x;
                    }
                    let keep = cut.index(bytes.len() + 1);
                    bytes.truncate(keep.max(bytes.len() / 2));
                }
                bytes
            })
    }

    proptest! {
        #[test]
        fn log_frames_hold_their_invariants(data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            frames_with_damage(),
        ]) {
            log_frames(&data);
        }

        #[test]
        fn limits_hold_their_invariants(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            limits(&data);
        }

        #[test]
        fn repl_lines_round_trip(line in "\\PC*|(?i:(read|write|get|set|put|drain|status|help|exit) )[ \"'\\\\a-z0-9\\n\\t\u{a0}]*") {
            repl_line(line.as_bytes());
        }

        #[test]
        fn repl_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            repl_line(&data);
        }

        #[test]
        fn tokenize_and_escape_round_trip(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            tokenize_escape(&data);
        }
    }
}
