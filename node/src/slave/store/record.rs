//! The stored form of a value: a 16-byte version header (`epoch u64 BE |
//! seq u64 BE`), then the value's bytes. A tombstone (a DELETE) has the top
//! bit of `seq` set and no value bytes; seqs never reach 2^63, so the bit is
//! free. Decoding refuses a record too short for its header and a tombstone
//! that carries bytes, naming the key.

use super::StoreError;
use crate::version::Version;

/// Bytes of the version header in front of every stored value.
const HEADER: usize = 16;
/// Set in the stored seq of a tombstone.
const TOMBSTONE: u64 = 1 << 63;

/// A stored record: the version header, then the value (none for a
/// tombstone, flagged in the seq's top bit).
pub(super) fn encode_record(version: Version, value: Option<&[u8]>) -> Vec<u8> {
    let value_len = value.map_or(0, <[u8]>::len);
    let mut record = Vec::with_capacity(HEADER + value_len);
    record.extend_from_slice(&version.epoch.to_be_bytes());
    let seq = if value.is_none() {
        version.seq | TOMBSTONE
    } else {
        version.seq
    };
    record.extend_from_slice(&seq.to_be_bytes());
    record.extend_from_slice(value.unwrap_or_default());
    record
}

/// The version and value of a stored record (`None`: a tombstone).
pub(super) fn decode_record<'a>(
    key: &[u8],
    record: &'a [u8],
) -> Result<(Version, Option<&'a [u8]>), StoreError> {
    if record.len() < HEADER {
        return Err(StoreError::Corrupt(format!(
            "record of key {} is {} bytes, shorter than its {HEADER}-byte version header",
            String::from_utf8_lossy(key),
            record.len()
        )));
    }
    let (header, value) = record.split_at(HEADER);
    let (epoch, seq) = header.split_at(8);
    let seq = decode_u64(seq)?;
    let version = Version::new(decode_u64(epoch)?, seq & !TOMBSTONE);
    if seq & TOMBSTONE != 0 {
        if !value.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "tombstone of key {} carries {} value bytes",
                String::from_utf8_lossy(key),
                value.len()
            )));
        }
        return Ok((version, None));
    }
    Ok((version, Some(value)))
}

/// A big-endian u64 (the fenced epoch in `meta`, the halves of a version).
pub(super) fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}
