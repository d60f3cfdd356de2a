//! The master's metadata: for every key, its latest version, where that
//! version's record sits in the log, and which slaves hold it.
//!
//! The master never keeps values in memory; the index is all it needs to
//! route a READ (to a holder of the latest version) or to re-replicate (from a
//! holder, or from the log when no holder is left).
//!
//! A DELETE leaves a *tombstone* entry (the key's latest version is a
//! deletion): it orders later WRITEs and late replicas like any version, and
//! goes once compaction has removed it from the log ([`Index::purge`]). Keys
//! are kept in order, for LIST.
//!
//! Invariant (version order): an entry's version only moves forward; an older
//! version arriving late (a slow concurrent WRITE, a replayed record) never
//! replaces a newer one. Checked by `tests::versions_only_move_forward`.
//!
//! Memory: the index holds an entry for every key of the cluster, so its cost
//! per key bounds how many keys a master can serve. A key of up to 16 bytes is
//! stored in place, and its metadata in 32 bytes (`Stored::Compact`) when it
//! fits: at most [`INLINE_HOLDERS`] holders numbered below 256 (the usual
//! replication factors and cluster sizes), an epoch below 2^32, and a log
//! position below 4 GiB in one of its epoch's first 65,536 segments. Anything
//! larger is boxed, with no limit. Measured by `tests/index_memory.rs`, with
//! the positions a real log hands out.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::version::Version;
use crate::wal::{self, LogPos};

/// Small, stable number the master gives each slave identity, so that
/// holder lists stay compact.
pub type SlaveIdx = u32;

/// Holders an entry keeps in place, without a heap allocation.
pub const INLINE_HOLDERS: usize = 6;

/// The slaves known to hold a version.
pub type Holders = SmallVec<[SlaveIdx; INLINE_HOLDERS]>;

/// A key as the index stores it: in place up to 16 bytes.
type StoredKey = SmallVec<[u8; 16]>;

/// What the master knows of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    /// Latest version a READ must return.
    pub version: Version,
    /// Where the record of `version` is in the log (the fallback copy).
    pub pos: LogPos,
    /// Slaves known to hold exactly `version` (live or not).
    pub holders: Holders,
    /// The key was deleted at `version` (a tombstone: no value).
    pub deleted: bool,
}

/// A [`KeyMeta`] as the index stores it.
#[derive(Debug)]
enum Stored {
    /// Everything in 32 bytes: the common case.
    Compact {
        seq: u64,
        epoch: u32,
        /// The log position's segment: its epoch and its number within it
        /// ([`crate::wal::segment_no`]).
        segment_epoch: u32,
        segment_n: u16,
        offset: u32,
        deleted: bool,
        /// How many of `holders` are used.
        len: u8,
        holders: [u8; INLINE_HOLDERS],
    },
    /// What does not fit in place.
    Boxed(Box<KeyMeta>),
}

impl Stored {
    fn new(meta: KeyMeta) -> Stored {
        let mut holders = [0; INLINE_HOLDERS];
        let fits = meta.holders.len() <= INLINE_HOLDERS
            && meta
                .holders
                .iter()
                .zip(&mut holders)
                .all(|(&h, slot)| u8::try_from(h).map(|h| *slot = h).is_ok());
        let segment_epoch = u32::try_from(wal::segment_epoch(meta.pos.file_no));
        let segment_n = u16::try_from(wal::segment_index(meta.pos.file_no));
        match (
            u32::try_from(meta.version.epoch),
            segment_epoch,
            segment_n,
            u32::try_from(meta.pos.offset),
        ) {
            (Ok(epoch), Ok(segment_epoch), Ok(segment_n), Ok(offset)) if fits => {
                Stored::Compact {
                    seq: meta.version.seq,
                    epoch,
                    segment_epoch,
                    segment_n,
                    offset,
                    deleted: meta.deleted,
                    // At most INLINE_HOLDERS, checked above.
                    len: meta.holders.len() as u8,
                    holders,
                }
            }
            _ => Stored::Boxed(Box::new(meta)),
        }
    }

    fn meta(&self) -> KeyMeta {
        match self {
            Stored::Compact {
                seq,
                epoch,
                segment_epoch,
                segment_n,
                offset,
                deleted,
                len,
                holders,
            } => KeyMeta {
                version: Version::new(u64::from(*epoch), *seq),
                pos: LogPos {
                    // As `wal::segment_no` builds it.
                    file_no: (u64::from(*segment_epoch) << 32) | u64::from(*segment_n),
                    offset: u64::from(*offset),
                },
                holders: holders[..usize::from(*len)]
                    .iter()
                    .map(|&h| SlaveIdx::from(h))
                    .collect(),
                deleted: *deleted,
            },
            Stored::Boxed(meta) => KeyMeta::clone(meta),
        }
    }

    fn version(&self) -> Version {
        match self {
            Stored::Compact { seq, epoch, .. } => Version::new(u64::from(*epoch), *seq),
            Stored::Boxed(meta) => meta.version,
        }
    }

    fn deleted(&self) -> bool {
        match self {
            Stored::Compact { deleted, .. } => *deleted,
            Stored::Boxed(meta) => meta.deleted,
        }
    }

    /// Changes the metadata, storing the result as compactly as it fits.
    fn update(&mut self, change: impl FnOnce(&mut KeyMeta)) {
        let mut meta = self.meta();
        change(&mut meta);
        *self = Stored::new(meta);
    }

    /// The holders, without building a [`KeyMeta`].
    fn holders(&self) -> impl Iterator<Item = SlaveIdx> + '_ {
        let (inline, boxed): (&[u8], &[SlaveIdx]) = match self {
            Stored::Compact { len, holders, .. } => (&holders[..usize::from(*len)], &[]),
            Stored::Boxed(meta) => (&[], &meta.holders),
        };
        inline
            .iter()
            .map(|&h| SlaveIdx::from(h))
            .chain(boxed.iter().copied())
    }

    /// Number of holders for which `live` is true.
    fn count_holders(&self, live: impl Fn(SlaveIdx) -> bool) -> usize {
        self.holders().filter(|&h| live(h)).count()
    }

    fn held_by(&self, slave: SlaveIdx) -> bool {
        self.holders().any(|h| h == slave)
    }
}

/// The key → metadata map, in key order.
#[derive(Debug, Default)]
pub struct Index {
    keys: BTreeMap<StoredKey, Stored>,
    /// Entries that are tombstones.
    tombstones: usize,
}

impl Index {
    /// Number of keys that exist (tombstones not counted).
    pub fn len(&self) -> usize {
        self.keys.len() - self.tombstones
    }

    /// True when no key exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` existing keys starting with `prefix`, after `after`
    /// (exclusive; from the first when `None`), in key order, with their
    /// versions; and whether more follow.
    pub fn list(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> (Vec<(Bytes, Version)>, bool) {
        let lower = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut found = Vec::new();
        let mut more = false;
        let range = self
            .keys
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, m)| !m.deleted());
        for (key, meta) in range {
            if found.len() == limit {
                more = true;
                break;
            }
            found.push((Bytes::copy_from_slice(key), meta.version()));
        }
        (found, more)
    }

    /// Metadata of `key`.
    pub fn get(&self, key: &[u8]) -> Option<KeyMeta> {
        self.keys.get(key).map(Stored::meta)
    }

    /// Records `version` of `key` (a deletion when `deleted`) as the latest,
    /// held by `holders`, unless a newer version is already recorded. Returns
    /// whether it was recorded.
    pub fn record(
        &mut self,
        key: &[u8],
        version: Version,
        pos: LogPos,
        holders: impl IntoIterator<Item = SlaveIdx>,
        deleted: bool,
    ) -> bool {
        let meta = KeyMeta {
            version,
            pos,
            holders: holders.into_iter().collect(),
            deleted,
        };
        match self.keys.get_mut(key) {
            Some(current) if current.version() >= version => {
                if current.version() == version {
                    current.update(|known| {
                        for h in meta.holders {
                            if !known.holders.contains(&h) {
                                known.holders.push(h);
                            }
                        }
                    });
                }
                false
            }
            Some(current) => {
                self.tombstones -= usize::from(current.deleted());
                self.tombstones += usize::from(deleted);
                *current = Stored::new(meta);
                true
            }
            None => {
                self.tombstones += usize::from(deleted);
                self.keys
                    .insert(StoredKey::from_slice(key), Stored::new(meta));
                true
            }
        }
    }

    /// Forgets `key` if its latest version is the tombstone `version` (the
    /// log no longer holds it, nor anything older of the key).
    pub fn purge(&mut self, key: &[u8], version: Version) {
        if self
            .keys
            .get(key)
            .is_some_and(|m| m.deleted() && m.version() == version)
        {
            self.keys.remove(key);
            self.tombstones -= 1;
        }
    }

    /// Notes that `slave` holds `version` of `key`; ignored unless that is
    /// the latest version.
    pub fn add_holder(&mut self, key: &[u8], version: Version, slave: SlaveIdx) -> bool {
        match self.keys.get_mut(key) {
            Some(meta) if meta.version() == version => {
                if !meta.held_by(slave) {
                    meta.update(|meta| meta.holders.push(slave));
                }
                true
            }
            _ => false,
        }
    }

    /// Notes that `slave` does not hold the latest version of `key`.
    pub fn remove_holder(&mut self, key: &[u8], slave: SlaveIdx) {
        if let Some(meta) = self.keys.get_mut(key)
            && meta.held_by(slave)
        {
            meta.update(|meta| meta.holders.retain(|h| *h != slave));
        }
    }

    /// Forgets everything `slave` was known to hold (before its inventory
    /// is read again).
    pub fn forget_slave(&mut self, slave: SlaveIdx) {
        for meta in self.keys.values_mut().filter(|m| m.held_by(slave)) {
            meta.update(|meta| meta.holders.retain(|h| *h != slave));
        }
    }

    /// The record of `key` at `version` moved (log compaction).
    pub fn moved(&mut self, key: &[u8], version: Version, pos: LogPos) {
        if let Some(meta) = self.keys.get_mut(key)
            && meta.version() == version
        {
            meta.update(|meta| meta.pos = pos);
        }
    }

    /// Keys with fewer than `target` holders for which `live` is true,
    /// at most `limit` of them.
    pub fn under_replicated(
        &self,
        target: usize,
        live: impl Fn(SlaveIdx) -> bool,
        limit: usize,
    ) -> Vec<Bytes> {
        self.keys
            .iter()
            .filter(|(_, m)| m.count_holders(&live) < target)
            .map(|(k, _)| Bytes::copy_from_slice(k))
            .take(limit)
            .collect()
    }

    /// Number of keys with fewer than `target` live holders.
    pub fn count_under_replicated(&self, target: usize, live: impl Fn(SlaveIdx) -> bool) -> usize {
        self.keys
            .values()
            .filter(|m| m.count_holders(&live) < target)
            .count()
    }

    /// Number of keys whose latest version `slave` holds.
    pub fn count_held_by(&self, slave: SlaveIdx) -> usize {
        self.keys.values().filter(|m| m.held_by(slave)).count()
    }

    /// Keys whose latest version `slave` holds, at most `limit` of them.
    pub fn held_by(&self, slave: SlaveIdx, limit: usize) -> Vec<Bytes> {
        self.keys
            .iter()
            .filter(|(_, m)| m.held_by(slave))
            .map(|(k, _)| Bytes::copy_from_slice(k))
            .take(limit)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> LogPos {
        LogPos { file_no: 1, offset }
    }

    #[test]
    fn versions_only_move_forward() {
        let mut index = Index::default();
        let key = Bytes::from_static(b"k");
        assert!(index.record(&key, Version::new(1, 5), pos(5), vec![0, 1], false));
        assert!(!index.record(&key, Version::new(1, 4), pos(4), vec![2], false));
        assert_eq!(index.get(b"k").map(|m| m.version), Some(Version::new(1, 5)));
        assert!(index.record(&key, Version::new(2, 1), pos(9), vec![2], false));
        assert_eq!(index.get(b"k").map(|m| m.holders.to_vec()), Some(vec![2]));
    }

    #[test]
    fn holders_track_only_the_latest_version() {
        let mut index = Index::default();
        let key = Bytes::from_static(b"k");
        index.record(&key, Version::new(1, 2), pos(2), vec![], false);
        assert!(!index.add_holder(b"k", Version::new(1, 1), 3));
        assert!(index.add_holder(b"k", Version::new(1, 2), 3));
        assert_eq!(index.count_under_replicated(2, |_| true), 1);
        index.add_holder(b"k", Version::new(1, 2), 4);
        assert_eq!(index.count_under_replicated(2, |_| true), 0);
        assert_eq!(index.count_under_replicated(2, |s| s != 4), 1);
        index.forget_slave(3);
        assert_eq!(index.held_by(3, 10), Vec::<Bytes>::new());
    }

    #[test]
    fn tombstones_order_versions_are_listed_as_absent_and_purge() {
        let mut index = Index::default();
        for (k, seq) in [("app/a", 1), ("app/b", 2), ("app/c", 3), ("other", 4)] {
            index.record(
                &Bytes::from(k),
                Version::new(1, seq),
                pos(seq),
                vec![],
                false,
            );
        }
        let b = Bytes::from_static(b"app/b");
        assert!(index.record(&b, Version::new(1, 5), pos(5), vec![], true));
        assert_eq!(index.len(), 3);
        // A late replica of the deleted value does not bring it back.
        assert!(!index.record(&b, Version::new(1, 2), pos(2), vec![1], false));
        let (page, more) = index.list(b"app/", None, 10);
        let keys: Vec<&[u8]> = page.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(keys, vec![&b"app/a"[..], b"app/c"]);
        assert!(!more);
        let (page, more) = index.list(b"app/", None, 1);
        assert_eq!(page.len(), 1);
        assert!(more);
        let (page, _) = index.list(b"app/", Some(b"app/a"), 10);
        assert_eq!(page[0].0, Bytes::from_static(b"app/c"));
        index.purge(b"app/b", Version::new(1, 4));
        assert!(index.get(b"app/b").is_some(), "not the tombstone's version");
        index.purge(b"app/b", Version::new(1, 5));
        assert!(index.get(b"app/b").is_none());
        assert_eq!(index.len(), 3);
    }

    /// The sizes the memory budget rests on.
    #[test]
    fn an_entry_is_a_24_byte_key_and_32_bytes_of_metadata() {
        assert_eq!(std::mem::size_of::<StoredKey>(), 24);
        assert_eq!(std::mem::size_of::<Stored>(), 32);
    }

    /// The positions a running master records (segments numbered under its
    /// epoch, which a compaction may leave under an older one) stay in place.
    #[test]
    fn positions_in_any_epochs_segments_are_stored_in_place() {
        let mut index = Index::default();
        for (i, (epoch, segment_epoch)) in [(1, 1), (7, 7), (9, 4), (u64::from(u32::MAX), 1)]
            .into_iter()
            .enumerate()
        {
            let key = format!("key{i}");
            let pos = LogPos {
                file_no: crate::wal::segment_no(segment_epoch, 12).unwrap(),
                offset: 4096,
            };
            let version = Version::new(epoch, 40 + i as u64);
            index.record(key.as_bytes(), version, pos, [0, 2, 255], i == 3);
            assert!(
                matches!(index.keys.get(key.as_bytes()), Some(Stored::Compact { .. })),
                "{key} is boxed"
            );
            let meta = index.get(key.as_bytes()).unwrap();
            assert_eq!(
                (meta.version, meta.pos, meta.holders.to_vec(), meta.deleted),
                (version, pos, vec![0, 2, 255], i == 3)
            );
        }
    }

    /// Metadata that does not fit in place (many holders, a large slave
    /// number, a position past 4 GiB) is kept whole, and moves back in
    /// place when it fits again.
    #[test]
    fn metadata_too_large_to_fit_in_place_is_kept_whole() {
        let mut index = Index::default();
        let key = Bytes::from_static(b"a key longer than sixteen bytes");
        let far = LogPos {
            file_no: 7,
            offset: u64::from(u32::MAX) + 1,
        };
        let many: Vec<SlaveIdx> = (0..INLINE_HOLDERS as u32 + 2).collect();
        index.record(&key, Version::new(1, 1), far, many.clone(), false);
        let meta = index.get(&key).unwrap();
        assert_eq!((meta.pos, meta.holders.to_vec()), (far, many));
        assert!(matches!(index.keys.get(&key[..]), Some(Stored::Boxed(_))));

        index.add_holder(&key, Version::new(1, 1), SlaveIdx::from(u16::MAX) + 5);
        assert!(
            index
                .get(&key)
                .unwrap()
                .holders
                .contains(&(SlaveIdx::from(u16::MAX) + 5))
        );
        index.record(&key, Version::new(1, 2), pos(3), [1, 2], false);
        assert!(matches!(
            index.keys.get(&key[..]),
            Some(Stored::Compact { .. })
        ));
        let meta = index.get(&key).unwrap();
        assert_eq!((meta.pos, meta.holders.to_vec()), (pos(3), vec![1, 2]));
        index.remove_holder(&key, 1);
        assert_eq!(index.held_by(2, 10), vec![key.clone()]);
        assert_eq!(index.count_held_by(1), 0);
    }
}
