//! Differential test: one real etcd (the reference) and one `keel store`,
//! the same seeded random operations applied to both in the same order, every
//! response compared field by field (header revision, kvs, more, count,
//! prev_kv(s), deleted, txn succeeded and nested responses, lease
//! grant/revoke/time-to-live, compaction, error code and message), plus the
//! full event sequences of several watch streams. See `keel_tests::diff`.
//!
//! ```text
//! KEEL_E2E_KEEL=1 cargo test -p keel-tests --test differential -- --nocapture
//! ```
//!
//! - `KEEL_DIFF_SEED=<u64>` replays a run (the seed is printed).
//! - `KEEL_DIFF_OPS=<n>` sets the number of operations (default 10,000).
//! - `KEEL_DIFF_AGAINST=etcd` compares etcd with a second etcd instead (a
//!   self-check of the generator and comparator: must report nothing).
//!
//! Up to 20 distinct mismatches (deduplicated by op kind + differing fields)
//! are collected before the test fails with all of them; when the two stores'
//! states diverge the run restarts both on fresh data dirs (at most 4 times).

use keel_tests::diff::{run, Config};
use keel_tests::Backend;

#[test]
fn keel_matches_etcd() {
    let against = match std::env::var("KEEL_DIFF_AGAINST").as_deref() {
        Ok("etcd") => Backend::Etcd,
        _ => Backend::Keel,
    };
    if let Err(reason) = against.unavailable() {
        println!("{reason}");
        eprintln!("{reason}");
        return;
    }
    let report = run(&Config::from_env(against));
    println!("{}", report.summary());
    assert!(report.mismatches.is_empty(), "{}", report.summary());
}
