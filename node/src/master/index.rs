//! The master's metadata: for every key, its latest version, where that
//! version's record sits in the log, and which slaves hold it.
//!
//! The master never keeps values in memory; the index is all it needs to
//! route a READ (to a holder of the latest version) or to re-replicate (from a
//! holder, or from the log when no holder is left).
//!
//! Invariant (version order): an entry's version only moves forward; an older
//! version arriving late (a slow concurrent WRITE, a replayed record) never
//! replaces a newer one. Checked by `tests::versions_only_move_forward`.

use std::collections::HashMap;

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
}

/// The key → metadata map.
#[derive(Debug, Default)]
pub struct Index {
    keys: HashMap<Bytes, KeyMeta>,
}

impl Index {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key was ever written.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Metadata of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&KeyMeta> {
        self.keys.get(key)
    }

    /// Records `version` of `key` as the latest, held by `holders`, unless a
    /// newer version is already recorded. Returns whether it was recorded.
    pub fn record(
        &mut self,
        key: &Bytes,
        version: Version,
        pos: LogPos,
        holders: Vec<SlaveIdx>,
    ) -> bool {
        match self.keys.get_mut(key.as_ref()) {
            Some(meta) if meta.version >= version => {
                if meta.version == version {
                    for h in holders {
                        if !meta.holders.contains(&h) {
                            meta.holders.push(h);
                        }
                    }
                }
                false
            }
            Some(meta) => {
                *meta = KeyMeta {
                    version,
                    pos,
                    holders,
                };
                true
            }
            None => {
                self.keys.insert(
                    key.clone(),
                    KeyMeta {
                        version,
                        pos,
                        holders,
                    },
                );
                true
            }
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
        assert!(index.record(&key, Version::new(1, 5), pos(5), vec![0, 1]));
        assert!(!index.record(&key, Version::new(1, 4), pos(4), vec![2]));
        assert_eq!(index.get(b"k").map(|m| m.version), Some(Version::new(1, 5)));
        assert!(index.record(&key, Version::new(2, 1), pos(9), vec![2]));
        assert_eq!(index.get(b"k").map(|m| m.holders.clone()), Some(vec![2]));
    }

    #[test]
    fn holders_track_only_the_latest_version() {
        let mut index = Index::default();
        let key = Bytes::from_static(b"k");
        index.record(&key, Version::new(1, 2), pos(2), vec![]);
        assert!(!index.add_holder(b"k", Version::new(1, 1), 3));
        assert!(index.add_holder(b"k", Version::new(1, 2), 3));
        assert_eq!(index.count_under_replicated(2, |_| true), 1);
        index.add_holder(b"k", Version::new(1, 2), 4);
        assert_eq!(index.count_under_replicated(2, |_| true), 0);
        assert_eq!(index.count_under_replicated(2, |s| s != 4), 1);
        index.forget_slave(3);
        assert_eq!(index.held_by(3, 10), Vec::<Bytes>::new());
    }
}
