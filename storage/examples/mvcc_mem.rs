//! Heap bytes the MVCC store holds per key: puts N keys (8-byte keys,
//! 256-byte values, as keel-bench's defaults) through a write transaction
//! each, and reports live heap bytes per key from a counting allocator.
//!
//! Run: `cargo run --release -p keel-storage --example mvcc_mem [keys]`
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use keel_storage::mvcc::KvStore;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    if std::env::var_os("BTREE_FILL").is_some() {
        btree_fill(n);
    }
    let before = LIVE.load(Ordering::Relaxed);
    let mut store = KvStore::new();
    for i in 0..n {
        let key = Bytes::from(format!("{i:08}").into_bytes());
        let value = Bytes::from(vec![b'x'; 256]);
        let mut w = store.write();
        w.put(key, value, 0);
        w.end();
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{n} keys: {:.1} MB live heap, {} bytes per key (raw key+value: 264)",
        used as f64 / 1e6,
        used / n.max(1)
    );
}

/// How full std's B-tree leaves are under sequential vs random inserts.
fn btree_fill(n: usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut m = std::collections::BTreeMap::new();
    for i in 0..n {
        m.insert(format!("{i:08}").into_bytes(), [0u8; 72]);
    }
    let keys = n * 8;
    let used = LIVE.load(Ordering::Relaxed) - before - keys;
    println!(
        "btree sequential: {} bytes per entry (24+72 = 96 payload)",
        used / n
    );
    drop(m);
}
