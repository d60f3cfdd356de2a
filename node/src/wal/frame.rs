//! The byte layout of a record and its encoder/decoder.
//!
//! ```text
//! frame   = u32 payload_len | u32 crc32c(payload) | payload        (little-endian)
//! payload = u8 kind | u64 epoch | u64 seq | [origin] | u32 key_len | key | value
//! kind    = 1: a WRITE without an origin
//!           2: a WRITE with its origin = u64 client id | u64 client seq
//!           3: a DELETE (a tombstone: the value is empty) without an origin
//!           4: a DELETE with its origin
//! ```
//!
//! The value is "the rest of the payload", so it needs no length of its own and
//! may be empty. Decoding never panics: every field is bounds-checked and a bad
//! frame is reported as a [`FrameError`].

use bytes::Bytes;

use super::error::FrameError;
use super::{Origin, Record};
use crate::version::Version;

/// Every segment starts with these 8 bytes.
pub const MAGIC: &[u8; 8] = b"DSMLOG1\n";

/// Largest payload accepted, on write and on read. A length prefix above it is
/// treated as damage rather than trusted (it would make a reader allocate or wait
/// for gigabytes because of one flipped bit).
pub const MAX_RECORD_BYTES: u32 = 64 << 20;

/// Length prefix + CRC.
pub(crate) const HEADER_LEN: usize = 8;

/// kind + epoch + seq + key_len: a payload shorter than this cannot be a record.
/// (A zero-filled region reads as length 0, so it is rejected here.)
pub(crate) const MIN_PAYLOAD: u32 = 1 + 8 + 8 + 4;

const KIND_WRITE: u8 = 1;
const KIND_WRITE_WITH_ORIGIN: u8 = 2;
const KIND_DELETE: u8 = 3;
const KIND_DELETE_WITH_ORIGIN: u8 = 4;
/// Bytes an origin adds to a payload.
const ORIGIN_LEN: u64 = 16;

/// Payload size of a Write record (compare with [`MAX_RECORD_BYTES`] before encoding).
pub(crate) fn payload_len(key: &[u8], value: &[u8], origin: Option<Origin>) -> u64 {
    let origin = if origin.is_some() { ORIGIN_LEN } else { 0 };
    u64::from(MIN_PAYLOAD) + origin + key.len() as u64 + value.len() as u64
}

/// Appends the frame of a record to `out`: a Write, or a Delete (a
/// tombstone, whose `value` must be empty).
///
/// The caller has checked `payload_len(key, value, origin) <= MAX_RECORD_BYTES`,
/// which also bounds the key length to a u32.
pub(crate) fn encode(
    version: Version,
    key: &[u8],
    value: &[u8],
    origin: Option<Origin>,
    tombstone: bool,
    out: &mut Vec<u8>,
) {
    debug_assert!(!tombstone || value.is_empty());
    let len = payload_len(key, value, origin);
    debug_assert!(len <= u64::from(MAX_RECORD_BYTES));
    frame_with(out, |out| {
        out.push(match (tombstone, origin.is_some()) {
            (false, false) => KIND_WRITE,
            (false, true) => KIND_WRITE_WITH_ORIGIN,
            (true, false) => KIND_DELETE,
            (true, true) => KIND_DELETE_WITH_ORIGIN,
        });
        out.extend_from_slice(&version.epoch.to_le_bytes());
        out.extend_from_slice(&version.seq.to_le_bytes());
        if let Some(origin) = origin {
            out.extend_from_slice(&origin.client.to_le_bytes());
            out.extend_from_slice(&origin.seq.to_le_bytes());
        }
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    });
}

/// Appends a frame to `out` whose payload `payload` writes: the length
/// prefix and the CRC are filled in around it. Shared by every file that
/// uses this framing (the log, the slave's store).
///
/// The caller keeps the payload within [`MAX_RECORD_BYTES`].
pub(crate) fn frame_with(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]); // length and CRC, filled in below
    payload(out);
    let len = (out.len() - start - HEADER_LEN) as u32;
    let crc = crc32c::crc32c(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// What the bytes at a frame boundary hold, before the payload is decoded.
#[derive(Debug)]
pub(crate) enum Framed<'a> {
    /// A frame whose payload matches its CRC, and the frame's length.
    Payload(&'a [u8], usize),
    /// The buffer ends before the frame does (`needed` bytes in all).
    Incomplete {
        /// Bytes the frame takes, header included, as far as known.
        needed: u64,
    },
    /// The frame's length is impossible, or its payload fails the CRC.
    Bad(FrameError),
}

/// Splits the frame at the start of `buf`, checking its length against
/// `min_payload..=MAX_RECORD_BYTES` and its payload against the CRC.
pub(crate) fn split(buf: &[u8], min_payload: u32) -> Framed<'_> {
    let Some((len, crc)) = header(buf) else {
        return Framed::Incomplete {
            needed: HEADER_LEN as u64,
        };
    };
    if !(min_payload..=MAX_RECORD_BYTES).contains(&len) {
        return Framed::Bad(FrameError::BadLength {
            len,
            min: min_payload,
            max: MAX_RECORD_BYTES,
        });
    }
    let frame_len = HEADER_LEN + len as usize;
    let Some(payload) = buf.get(HEADER_LEN..frame_len) else {
        return Framed::Incomplete {
            needed: frame_len as u64,
        };
    };
    let computed = crc32c::crc32c(payload);
    if computed != crc {
        return Framed::Bad(FrameError::BadCrc {
            stored: crc,
            computed,
        });
    }
    Framed::Payload(payload, frame_len)
}

/// What the bytes at a frame boundary hold.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A valid record and the length of its frame.
    Record(Record, usize),
    /// The buffer ends before the frame does (`needed` bytes in all).
    Incomplete { needed: u64 },
    /// The frame is complete (or its length is impossible) but invalid.
    Bad(FrameError),
}

/// Parses the frame at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    match split(buf, MIN_PAYLOAD) {
        Framed::Payload(payload, frame_len) => match decode_payload(payload) {
            Ok(record) => Parsed::Record(record, frame_len),
            Err(e) => Parsed::Bad(e),
        },
        Framed::Incomplete { needed } => Parsed::Incomplete { needed },
        Framed::Bad(e) => Parsed::Bad(e),
    }
}

/// Offset (relative to `buf`) of the first complete, valid frame starting at or
/// after `from`, if any.
///
/// Used only after a bad frame, to tell a torn tail (nothing valid follows) from
/// corruption (a valid record follows). Byte-by-byte: a damaged length prefix
/// means the next frame boundary is unknown. Most offsets are rejected by the
/// length check before any CRC is computed.
pub(crate) fn find_valid_frame(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find(|&i| matches!(parse(&buf[i..]), Parsed::Record(..)))
}

fn header(buf: &[u8]) -> Option<(u32, u32)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    Some((len, crc))
}

fn decode_payload(p: &[u8]) -> Result<Record, FrameError> {
    let too_short = || FrameError::BadLength {
        len: p.len() as u32,
        min: MIN_PAYLOAD,
        max: MAX_RECORD_BYTES,
    };
    let (&kind, rest) = p.split_first().ok_or_else(too_short)?;
    let (tombstone, with_origin) = match kind {
        KIND_WRITE => (false, false),
        KIND_WRITE_WITH_ORIGIN => (false, true),
        KIND_DELETE => (true, false),
        KIND_DELETE_WITH_ORIGIN => (true, true),
        other => return Err(FrameError::UnknownKind(other)),
    };
    let (epoch, rest) = take_u64(rest).ok_or_else(too_short)?;
    let (seq, mut rest) = take_u64(rest).ok_or_else(too_short)?;
    let mut origin = None;
    if with_origin {
        let (client, after) = take_u64(rest).ok_or_else(too_short)?;
        let (client_seq, after) = take_u64(after).ok_or_else(too_short)?;
        origin = Some(Origin {
            client,
            seq: client_seq,
        });
        rest = after;
    }
    let (key_len, rest) = rest
        .split_first_chunk::<4>()
        .map(|(b, r)| (u32::from_le_bytes(*b), r))
        .ok_or_else(too_short)?;
    if key_len as usize > rest.len() {
        return Err(FrameError::KeyTooLong {
            key_len,
            available: rest.len(),
        });
    }
    let (key, value) = rest.split_at(key_len as usize);
    if tombstone && !value.is_empty() {
        return Err(FrameError::TombstoneValue(value.len()));
    }
    Ok(Record {
        version: Version::new(epoch, seq),
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        origin,
        tombstone,
    })
}

fn take_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    b.split_first_chunk::<8>()
        .map(|(h, r)| (u64::from_le_bytes(*h), r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(epoch: u64, seq: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(Version::new(epoch, seq), key, value, None, false, &mut out);
        out
    }

    #[test]
    fn a_tombstone_round_trips_and_carries_no_value() {
        let mut bytes = Vec::new();
        let origin = Some(Origin { client: 3, seq: 4 });
        encode(Version::new(1, 2), b"gone", b"", origin, true, &mut bytes);
        match parse(&bytes) {
            Parsed::Record(r, _) => {
                assert!(r.tombstone);
                assert_eq!(r.origin, origin);
                assert_eq!(&r.key[..], b"gone");
                assert!(r.value.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // A tombstone frame with a value is damage, not a record.
        let mut bytes = Vec::new();
        encode(Version::new(1, 2), b"gone", b"", None, true, &mut bytes);
        let mut payload = bytes[HEADER_LEN..].to_vec();
        payload.push(b'x');
        assert!(matches!(
            parse(&with_crc(&payload)),
            Parsed::Bad(FrameError::TombstoneValue(1))
        ));
    }

    #[test]
    fn the_origin_of_a_write_round_trips() {
        let origin = Origin {
            client: u64::MAX - 3,
            seq: 42,
        };
        let mut bytes = Vec::new();
        encode(
            Version::new(2, 9),
            b"key",
            b"value",
            Some(origin),
            false,
            &mut bytes,
        );
        match parse(&bytes) {
            Parsed::Record(r, len) => {
                assert_eq!(len, bytes.len());
                assert_eq!(r.origin, Some(origin));
                assert_eq!((&r.key[..], &r.value[..]), (&b"key"[..], &b"value"[..]));
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..bytes.len() {
            assert!(matches!(parse(&bytes[..cut]), Parsed::Incomplete { .. }));
        }
    }

    #[test]
    fn round_trips_arbitrary_bytes() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"k", b"v"),
            (b"key with spaces", b"line one\nline two\n"),
            (b"\xff\xfe\x00", b"\x80\x81 not utf-8 \x00"),
            (b"empty value", b""),
            (b"", b"empty key is the master's business, not the log's"),
        ];
        for (i, (key, value)) in cases.iter().enumerate() {
            let bytes = frame(3, i as u64, key, value);
            match parse(&bytes) {
                Parsed::Record(r, len) => {
                    assert_eq!(len, bytes.len());
                    assert_eq!(r.version, Version::new(3, i as u64));
                    assert_eq!(&r.key[..], *key);
                    assert_eq!(&r.value[..], *value);
                }
                other => panic!("case {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let bytes = frame(1, 1, b"key", b"value");
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut]), Parsed::Incomplete { .. }),
                "cut at {cut}"
            );
        }
    }

    /// Re-frames `payload` with a correct CRC, to reach the payload checks.
    fn with_crc(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn rejects_unknown_kind_long_key_bad_length_and_crc() {
        let good = frame(1, 2, b"key", b"value");

        let mut payload = good[HEADER_LEN..].to_vec();
        payload[0] = 7;
        assert!(matches!(
            parse(&with_crc(&payload)),
            Parsed::Bad(FrameError::UnknownKind(7))
        ));

        let mut payload = good[HEADER_LEN..].to_vec();
        payload[17..21].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            parse(&with_crc(&payload)),
            Parsed::Bad(FrameError::KeyTooLong { key_len: 1000, .. })
        ));

        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&(MAX_RECORD_BYTES + 1).to_le_bytes());
        assert!(matches!(
            parse(&huge),
            Parsed::Bad(FrameError::BadLength { .. })
        ));

        assert!(matches!(
            parse(&[0u8; 64]),
            Parsed::Bad(FrameError::BadLength { len: 0, .. })
        ));

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            parse(&flipped),
            Parsed::Bad(FrameError::BadCrc { .. })
        ));
    }

    #[test]
    fn finds_the_next_valid_frame_after_damage() {
        let mut bytes = frame(1, 1, b"a", b"1");
        let second = bytes.len();
        bytes.extend(frame(1, 2, b"b", b"2"));
        bytes[HEADER_LEN + 3] ^= 1;
        assert!(matches!(parse(&bytes), Parsed::Bad(_)));
        assert_eq!(find_valid_frame(&bytes, 1), Some(second));
        assert_eq!(find_valid_frame(&bytes[..second], 1), None);
    }
}
