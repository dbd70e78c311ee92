//! The Jepsen campaign (issue 4): a 3-member `keel store` cluster (each
//! member its own network namespace when root), concurrent etcd clients
//! recording a history, every nemesis at least once, then the checkers.
//! Prints ops completed, faults injected and anomalies found (must be 0).
//!
//! `KEEL_JEPSEN_SEED`, `KEEL_JEPSEN_SCHEDULE` reproduce a run;
//! `KEEL_SOAK=<minutes>` runs a long one; `KEEL_JEPSEN_KEEP=1` keeps the
//! run directory (under `target/jepsen-failures/`) even when it passes.

use keel_tests::jepsen::campaign::{run, Config};

#[test]
fn campaign() {
    let cfg = Config::from_env().expect("campaign config");
    let out = run(&cfg).unwrap_or_else(|e| panic!("campaign (seed {}) failed: {e:#}", cfg.seed));
    println!("{}", out.summary());
    assert!(
        out.anomalies.is_empty(),
        "seed {}: {} anomalies; kept {:?}\n{}",
        cfg.seed,
        out.anomalies.len(),
        out.kept,
        out.summary()
    );
}
