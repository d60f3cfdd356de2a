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

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use crate::version::Version;
use crate::wal::LogPos;

/// Small, stable number the master gives each slave identity, so that
/// holder lists stay compact.
pub type SlaveIdx = u32;

/// What the master knows of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    /// Latest version a READ must return.
    pub version: Version,
    /// Where the record of `version` is in the log (the fallback copy).
    pub pos: LogPos,
    /// Slaves known to hold exactly `version` (live or not).
    pub holders: Vec<SlaveIdx>,
    /// The key was deleted at `version` (a tombstone: no value).
    pub deleted: bool,
}

/// The key → metadata map, in key order.
#[derive(Debug, Default)]
pub struct Index {
    keys: BTreeMap<Bytes, KeyMeta>,
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
            .filter(|(_, m)| !m.deleted);
        for (key, meta) in range {
            if found.len() == limit {
                more = true;
                break;
            }
            found.push((key.clone(), meta.version));
        }
        (found, more)
    }

    /// Metadata of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&KeyMeta> {
        self.keys.get(key)
    }

    /// Records `version` of `key` (a deletion when `deleted`) as the latest,
    /// held by `holders`, unless a newer version is already recorded. Returns
    /// whether it was recorded.
    pub fn record(
        &mut self,
        key: &Bytes,
        version: Version,
        pos: LogPos,
        holders: Vec<SlaveIdx>,
        deleted: bool,
    ) -> bool {
        let meta = KeyMeta {
            version,
            pos,
            holders,
            deleted,
        };
        match self.keys.get_mut(key.as_ref()) {
            Some(current) if current.version >= version => {
                if current.version == version {
                    for h in meta.holders {
                        if !current.holders.contains(&h) {
                            current.holders.push(h);
                        }
                    }
                }
                false
            }
            Some(current) => {
                self.tombstones -= usize::from(current.deleted);
                self.tombstones += usize::from(deleted);
                *current = meta;
                true
            }
            None => {
                self.tombstones += usize::from(deleted);
                self.keys.insert(key.clone(), meta);
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
            .is_some_and(|m| m.deleted && m.version == version)
        {
            self.keys.remove(key);
            self.tombstones -= 1;
        }
    }

    /// Notes that `slave` holds `version` of `key`; ignored unless that is
    /// the latest version.
    pub fn add_holder(&mut self, key: &[u8], version: Version, slave: SlaveIdx) -> bool {
        match self.keys.get_mut(key) {
            Some(meta) if meta.version == version => {
                if !meta.holders.contains(&slave) {
                    meta.holders.push(slave);
                }
                true
            }
            _ => false,
        }
    }

    /// Notes that `slave` does not hold the latest version of `key`.
    pub fn remove_holder(&mut self, key: &[u8], slave: SlaveIdx) {
        if let Some(meta) = self.keys.get_mut(key) {
            meta.holders.retain(|h| *h != slave);
        }
    }

    /// Forgets everything `slave` was known to hold (before its inventory
    /// is read again).
    pub fn forget_slave(&mut self, slave: SlaveIdx) {
        for meta in self.keys.values_mut() {
            meta.holders.retain(|h| *h != slave);
        }
    }

    /// The record of `key` at `version` moved (log compaction).
    pub fn moved(&mut self, key: &[u8], version: Version, pos: LogPos) {
        if let Some(meta) = self.keys.get_mut(key)
            && meta.version == version
        {
            meta.pos = pos;
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
            .filter(|(_, m)| m.holders.iter().filter(|h| live(**h)).count() < target)
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect()
    }

    /// Number of keys with fewer than `target` live holders.
    pub fn count_under_replicated(&self, target: usize, live: impl Fn(SlaveIdx) -> bool) -> usize {
        self.keys
            .values()
            .filter(|m| m.holders.iter().filter(|h| live(**h)).count() < target)
            .count()
    }

    /// Number of keys whose latest version `slave` holds.
    pub fn count_held_by(&self, slave: SlaveIdx) -> usize {
        self.keys
            .values()
            .filter(|m| m.holders.contains(&slave))
            .count()
    }

    /// Keys whose latest version `slave` holds, at most `limit` of them.
    pub fn held_by(&self, slave: SlaveIdx, limit: usize) -> Vec<Bytes> {
        self.keys
            .iter()
            .filter(|(_, m)| m.holders.contains(&slave))
            .map(|(k, _)| k.clone())
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
        assert_eq!(index.get(b"k").map(|m| m.holders.clone()), Some(vec![2]));
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
}
