//! The byte layout of the store's file and its encoder/decoder.
//!
//! ```text
//! file    = MAGIC | frame*
//! frame   = u32 payload_len | u32 crc32c(payload) | payload    (the log's framing, little-endian)
//! payload = u8 kind | body
//! kind    = 1 owner:     the slave id (UTF-8, the rest of the payload)
//!           2 epoch:     u64 fenced epoch
//!           3 value:     u64 epoch | u64 seq | u32 key_len | key | value
//!           4 tombstone: u64 epoch | u64 seq | u32 key_len | key   (a DELETE)
//! ```
//!
//! Every file opens with an owner frame and an epoch frame. A record is only
//! ever appended after the writer applied it, so replaying the file in order,
//! later frames winning, rebuilds exactly the state the writer had. Decoding
//! never panics: a bad payload is reported as [`StoreError::Corrupt`].

use crate::version::Version;
use crate::wal::frame::{HEADER_LEN, frame_with};

use super::StoreError;

/// Every store file starts with these 8 bytes.
pub(super) const MAGIC: &[u8; 8] = b"DSMSLV1\n";

const KIND_OWNER: u8 = 1;
const KIND_EPOCH: u8 = 2;
const KIND_VALUE: u8 = 3;
const KIND_TOMBSTONE: u8 = 4;

/// kind + epoch + seq + key_len: the payload of a put before its key.
const PUT_HEAD: usize = 1 + 8 + 8 + 4;
/// The shortest payload of any kind (an owner frame of an empty id). A
/// zero-filled region reads as length 0, so it is rejected.
pub(super) const MIN_PAYLOAD: u32 = 1;

/// One decoded frame. Slices borrow the payload.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Entry<'a> {
    /// The slave this file belongs to.
    Owner(&'a str),
    /// The fenced epoch from here on.
    Epoch(u64),
    /// `key` holds `value` at `version` (`None`: a tombstone). `value_at` is
    /// where the value starts, relative to the frame's start.
    Put {
        key: &'a [u8],
        version: Version,
        value: Option<&'a [u8]>,
        value_at: usize,
    },
}

/// Bytes the frame of a put of `key_len` and `value_len` bytes takes.
pub(super) fn put_frame_len(key_len: usize, value_len: usize) -> u64 {
    (HEADER_LEN + PUT_HEAD + key_len + value_len) as u64
}

/// Appends an owner frame to `out`.
pub(super) fn encode_owner(id: &str, out: &mut Vec<u8>) {
    frame_with(out, |out| {
        out.push(KIND_OWNER);
        out.extend_from_slice(id.as_bytes());
    });
}

/// Appends an epoch frame to `out`.
pub(super) fn encode_epoch(epoch: u64, out: &mut Vec<u8>) {
    frame_with(out, |out| {
        out.push(KIND_EPOCH);
        out.extend_from_slice(&epoch.to_le_bytes());
    });
}

/// Appends the frame of a put (`value` `None`: a tombstone) to `out` and
/// returns where its value starts in `out`.
///
/// The caller keeps key and value within the frame limit
/// ([`crate::wal::frame::MAX_RECORD_BYTES`]); the master's request limits
/// are far below it.
pub(super) fn encode_put(
    key: &[u8],
    version: Version,
    value: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> usize {
    let value_at = out.len() + HEADER_LEN + PUT_HEAD + key.len();
    frame_with(out, |out| {
        out.push(if value.is_some() {
            KIND_VALUE
        } else {
            KIND_TOMBSTONE
        });
        out.extend_from_slice(&version.epoch.to_le_bytes());
        out.extend_from_slice(&version.seq.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value.unwrap_or_default());
    });
    value_at
}

/// Decodes the payload of a frame whose CRC matched.
pub(super) fn decode(payload: &[u8]) -> Result<Entry<'_>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("{what} ({} bytes)", payload.len()));
    let (&kind, body) = payload
        .split_first()
        .ok_or_else(|| corrupt("empty frame"))?;
    match kind {
        KIND_OWNER => std::str::from_utf8(body)
            .map(Entry::Owner)
            .map_err(|_| corrupt("slave id is not UTF-8")),
        KIND_EPOCH => take_u64(body)
            .filter(|(_, rest)| rest.is_empty())
            .map(|(epoch, _)| Entry::Epoch(epoch))
            .ok_or_else(|| corrupt("epoch frame is not 8 bytes")),
        KIND_VALUE | KIND_TOMBSTONE => {
            let short = || corrupt("put frame shorter than its header");
            let (epoch, rest) = take_u64(body).ok_or_else(short)?;
            let (seq, rest) = take_u64(rest).ok_or_else(short)?;
            let (key_len, rest) = rest
                .split_first_chunk::<4>()
                .map(|(b, r)| (u32::from_le_bytes(*b) as usize, r))
                .ok_or_else(short)?;
            if key_len > rest.len() {
                return Err(corrupt(&format!(
                    "key length {key_len} beyond the frame's end"
                )));
            }
            let (key, value) = rest.split_at(key_len);
            let value = if kind == KIND_VALUE {
                Some(value)
            } else if value.is_empty() {
                None
            } else {
                return Err(corrupt(&format!(
                    "tombstone of key {} carries {} value bytes",
                    String::from_utf8_lossy(key),
                    value.len()
                )));
            };
            Ok(Entry::Put {
                key,
                version: Version::new(epoch, seq),
                value,
                value_at: HEADER_LEN + PUT_HEAD + key_len,
            })
        }
        other => Err(corrupt(&format!("unknown frame kind {other}"))),
    }
}

fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    b.split_first_chunk::<8>()
        .map(|(h, r)| (u64::from_le_bytes(*h), r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::frame::{Framed, split};

    fn decoded(frame: &[u8]) -> Entry<'_> {
        match split(frame, MIN_PAYLOAD) {
            Framed::Payload(payload, len) => {
                assert_eq!(len, frame.len());
                decode(payload).unwrap()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let mut out = Vec::new();
        encode_owner("slave-0", &mut out);
        assert_eq!(decoded(&out), Entry::Owner("slave-0"));

        let mut out = Vec::new();
        encode_epoch(7, &mut out);
        assert_eq!(decoded(&out), Entry::Epoch(7));

        let mut out = vec![0xAA; 3];
        let at = encode_put(b"k\0", Version::new(2, 9), Some(b"value"), &mut out);
        assert_eq!(&out[at..], b"value");
        let frame = &out[3..];
        assert_eq!(frame.len() as u64, put_frame_len(2, 5));
        let entry = decoded(frame);
        assert_eq!(
            entry,
            Entry::Put {
                key: b"k\0",
                version: Version::new(2, 9),
                value: Some(b"value"),
                value_at: at - 3,
            }
        );

        let mut out = Vec::new();
        encode_put(b"gone", Version::new(3, 1), None, &mut out);
        assert!(matches!(decoded(&out), Entry::Put { value: None, .. }));
        // An empty value is a value, not a tombstone.
        let mut out = Vec::new();
        encode_put(b"e", Version::new(3, 2), Some(b""), &mut out);
        assert!(matches!(
            decoded(&out),
            Entry::Put {
                value: Some(b""),
                ..
            }
        ));
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        for payload in [
            &[KIND_EPOCH, 1, 2][..],
            &[KIND_VALUE, 0, 0][..],
            &[KIND_OWNER, 0xff][..],
            &[9, 9][..],
            &[
                KIND_VALUE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0,
            ][..],
        ] {
            assert!(matches!(decode(payload), Err(StoreError::Corrupt(_))));
        }
        let mut tombstone_with_value = vec![KIND_TOMBSTONE];
        tombstone_with_value.extend_from_slice(&[0; 16]);
        tombstone_with_value.extend_from_slice(&1u32.to_le_bytes());
        tombstone_with_value.extend_from_slice(b"kx");
        let err = decode(&tombstone_with_value).unwrap_err().to_string();
        assert!(err.contains("tombstone of key k"), "{err}");
    }
}
