//! Import of the store older DSM versions kept: one redb database,
//! `slave.redb`, with a `values` table (key → `epoch u64 BE | seq u64 BE |
//! value`, a tombstone flagged in the seq's top bit) and a `meta` table
//! (`"epoch"` → u64 BE, `"id"` → the slave id).
//!
//! A slave upgraded in place finds its data there. Opening imports it into a
//! new store file (written and synced before it is renamed into place, so a
//! crash before that just imports again), then renames the database to
//! `slave.redb.imported`, kept so nothing is lost if the import must be
//! looked at. A crash between the two renames is finished by the next open
//! ([`finish`]).

use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::StoreError;
use super::file::{self, NewPut};
use crate::version::Version;

const OLD_FILE: &str = "slave.redb";
const IMPORTED_FILE: &str = "slave.redb.imported";
const VALUES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("values");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Set in the stored seq of a tombstone.
const TOMBSTONE: u64 = 1 << 63;

/// Imports `dir/slave.redb` for slave `id` into a new store file, if there
/// is one; `false` when there is none. A database of another slave is
/// refused with [`StoreError::WrongOwner`] and left as it is.
pub(super) fn import(dir: &Path, id: &str) -> Result<bool, StoreError> {
    let path = dir.join(OLD_FILE);
    if !path.exists() {
        return Ok(false);
    }
    let failed = |reason: String| StoreError::Import {
        path: path.clone(),
        reason,
    };
    let db = Database::open(&path).map_err(|e| failed(e.to_string()))?;
    let txn = db.begin_read().map_err(|e| failed(e.to_string()))?;
    let meta = txn.open_table(META).map_err(|e| failed(e.to_string()))?;
    let owner = match meta.get("id").map_err(|e| failed(e.to_string()))? {
        Some(v) => String::from_utf8(v.value().to_vec())
            .map_err(|_| failed("the slave id in its meta table is not UTF-8".into()))?,
        None => id.to_string(),
    };
    if owner != id {
        return Err(StoreError::WrongOwner {
            dir: dir.to_path_buf(),
            found: owner,
            expected: id.to_string(),
        });
    }
    let epoch = match meta.get("epoch").map_err(|e| failed(e.to_string()))? {
        Some(v) => {
            be_u64(v.value()).ok_or_else(|| failed("the fenced epoch is not 8 bytes".into()))?
        }
        None => 0,
    };
    let values = txn.open_table(VALUES).map_err(|e| failed(e.to_string()))?;
    let range = values.iter().map_err(|e| failed(e.to_string()))?;
    let mut keys = 0u64;
    let puts = range.map(|entry| {
        let (key, record) = entry.map_err(|e| failed(e.to_string()))?;
        keys += 1;
        old_record(key.value(), record.value()).map_err(failed)
    });
    file::write_new(dir, id, epoch, puts)?;
    drop(values);
    drop(meta);
    drop(txn);
    drop(db);
    set_aside(dir, &path)?;
    tracing::info!(
        dir = %dir.display(),
        keys,
        epoch,
        kept = %dir.join(IMPORTED_FILE).display(),
        "imported the slave store of an older DSM"
    );
    Ok(true)
}

/// Finishes an import a crash interrupted after the new store file was in
/// place: the database, already imported, is renamed out of the way.
pub(super) fn finish(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(OLD_FILE);
    if !path.exists() {
        return Ok(());
    }
    set_aside(dir, &path)
}

/// Renames the imported database to [`IMPORTED_FILE`], durably.
fn set_aside(dir: &Path, path: &Path) -> Result<(), StoreError> {
    std::fs::rename(path, dir.join(IMPORTED_FILE)).map_err(super::error::io_err("rename", path))?;
    file::sync_dir(dir)
}

/// A `values` row of the old layout as a put of the new one.
fn old_record(key: &[u8], record: &[u8]) -> Result<NewPut, String> {
    let name = || String::from_utf8_lossy(key).into_owned();
    let (epoch, rest) = record
        .split_first_chunk::<8>()
        .ok_or_else(|| format!("the record of key {} is shorter than its version", name()))?;
    let (seq, value) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| format!("the record of key {} is shorter than its version", name()))?;
    let seq = u64::from_be_bytes(*seq);
    let version = Version::new(u64::from_be_bytes(*epoch), seq & !TOMBSTONE);
    let value = if seq & TOMBSTONE == 0 {
        Some(Bytes::copy_from_slice(value))
    } else if value.is_empty() {
        None
    } else {
        return Err(format!("the tombstone of key {} carries a value", name()));
    };
    Ok((Bytes::copy_from_slice(key), version, value))
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slave::store::Store;

    /// A row of the older store: key, version, value (`None`: tombstone).
    type OldRow<'a> = (&'a [u8], Version, Option<&'a [u8]>);

    /// Writes a database the way the older store did.
    fn old_store(dir: &Path, id: &str, epoch: u64, rows: &[OldRow<'_>]) {
        let db = Database::create(dir.join(OLD_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("id", id.as_bytes()).unwrap();
            meta.insert("epoch", &epoch.to_be_bytes()[..]).unwrap();
            let mut values = txn.open_table(VALUES).unwrap();
            for (key, version, value) in rows {
                let mut record = version.epoch.to_be_bytes().to_vec();
                let seq = if value.is_some() {
                    version.seq
                } else {
                    version.seq | TOMBSTONE
                };
                record.extend_from_slice(&seq.to_be_bytes());
                record.extend_from_slice(value.unwrap_or_default());
                values.insert(*key, &record[..]).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn an_older_store_is_imported_with_its_epoch_and_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        old_store(
            dir.path(),
            "slave-0",
            4,
            &[
                (b"a", Version::new(3, 7), Some(b"one")),
                (b"gone", Version::new(4, 2), None),
            ],
        );
        let store = Store::open(dir.path(), "slave-0").unwrap();
        assert_eq!(store.epoch(), 4);
        assert_eq!(
            store.get(b"a").unwrap(),
            Some((Bytes::from_static(b"one"), Version::new(3, 7)))
        );
        let inventory: Vec<_> = store.inventory(10).flatten().flatten().collect();
        assert_eq!(inventory.len(), 2);
        assert!(inventory.contains(&(Bytes::from_static(b"gone"), Version::new(4, 2), true)));
        assert!(!dir.path().join(OLD_FILE).exists());
        assert!(dir.path().join(IMPORTED_FILE).exists());

        // The import happens once: reopening reads the new file.
        store.close().await.unwrap();
        drop(store);
        let store = Store::open(dir.path(), "slave-0").unwrap();
        assert_eq!(store.len().unwrap(), 2);
    }

    #[test]
    fn an_older_store_of_another_slave_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        old_store(dir.path(), "slave-1", 1, &[]);
        let err = Store::open(dir.path(), "slave-0").unwrap_err();
        assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
        assert!(dir.path().join(OLD_FILE).exists());
    }
}
