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
use dsm::wal::{LogPos, segment_no};

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
/// beyond the key's own bytes, whether the keys come in a scattered order (a
/// full-period step through them), as a cluster's clients fill it, or in the
/// order `dsm bench` fills a cluster (`key0`, `key1`, …: long ascending runs,
/// which leave the tree's nodes emptier). One test for both, one after the
/// other: the block counter is the whole process's.
#[test]
fn a_million_keys_cost_at_most_100_bytes_each_beyond_the_key() {
    check_fill("scattered", |n| n * 611_953 % KEYS);
    check_fill("in the bench's order", |n| n);
}

const KEYS: u64 = 1_000_000;

/// Fills an index with key number `order(n)` as the `n`-th WRITE and checks
/// what its blocks cost.
fn check_fill(what: &str, order: impl Fn(u64) -> u64) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut key_bytes = 0;
    let mut index = Index::default();
    for n in 0..KEYS {
        let i = order(n);
        // As a WRITE hands it over: the key decoded from a request.
        let key = Bytes::from(format!("key{i}").into_bytes());
        key_bytes += key.len();
        // Segments as a master of epoch 1 numbers them (epoch in the high
        // bits), which is what a running master records.
        let pos = LogPos {
            file_no: segment_no(1, (i / 100_000) as u32).expect("epoch 1 has segment numbers"),
            offset: (i % 100_000) * 140,
        };
        index.record(&key, Version::new(1, i + 1), pos, vec![0, 1, 2], false);
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    let per_key = used as f64 / KEYS as f64;
    let beyond = (used - key_bytes as isize) as f64 / KEYS as f64;
    println!(
        "{KEYS} keys {what}: {used} bytes, {per_key:.1} per key, {beyond:.1} per key beyond its {:.1} key bytes",
        key_bytes as f64 / KEYS as f64
    );
    assert_eq!(index.len(), KEYS as usize);
    assert!(
        beyond <= 100.0,
        "{what}, the index costs {beyond:.1} bytes per key beyond the key bytes (limit 100)"
    );
}
