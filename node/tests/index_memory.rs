//! The master's memory per key: its index holds metadata for every key, so a
//! cluster of a million keys must not need gigabytes on the master. The heap
//! is counted by wrapping the allocator the `dsm` binary uses (mimalloc) and
//! adding up the size of each block it hands out (its size class, not just
//! the bytes asked for), so the figure is what the process pays, and it is
//! exact and repeatable.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use dsm::master::index::Index;
use dsm::version::Version;
use dsm::wal::LogPos;

use mimalloc::MiMalloc;

struct Counting;

/// Bytes in blocks handed out and not yet freed.
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to mimalloc unchanged; the block sizes are
// read from blocks it handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { MiMalloc.alloc(layout) };
        let size = unsafe { MiMalloc.usable_size(ptr) };
        LIVE.fetch_add(size as isize, Ordering::Relaxed);
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let size = unsafe { MiMalloc.usable_size(ptr) };
        LIVE.fetch_sub(size as isize, Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A million keys, named as the bench names them (`key0` …), each written
/// once and held by three slaves: the index costs at most 100 bytes per key
/// beyond the key's own bytes.
#[test]
fn a_million_keys_cost_at_most_100_bytes_each_beyond_the_key() {
    const KEYS: u64 = 1_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let mut key_bytes = 0;
    let mut index = Index::default();
    // In a pseudo-random order (a full-period step through the keys), as a
    // cluster's clients fill it: the tree's nodes fill as they do in use.
    for n in 0..KEYS {
        let i = (n * 611_953 % KEYS) as usize;
        // As a WRITE hands it over: the key decoded from a request.
        let key = Bytes::from(format!("key{i}").into_bytes());
        key_bytes += key.len();
        let pos = LogPos {
            file_no: 1 + i as u64 / 100_000,
            offset: (i as u64 % 100_000) * 140,
        };
        index.record(
            &key,
            Version::new(1, i as u64 + 1),
            pos,
            vec![0, 1, 2],
            false,
        );
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    let per_key = used as f64 / KEYS as f64;
    let beyond = (used - key_bytes as isize) as f64 / KEYS as f64;
    println!(
        "{KEYS} keys: {used} bytes, {per_key:.1} per key, {beyond:.1} per key beyond its {:.1} key bytes",
        key_bytes as f64 / KEYS as f64
    );
    assert_eq!(index.len(), KEYS as usize);
    assert!(
        beyond <= 100.0,
        "the index costs {beyond:.1} bytes per key beyond the key bytes (limit 100)"
    );
}
