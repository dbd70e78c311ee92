//! Deterministic simulation of the Raft core (`keel_raft::core`).
//!
//! Each seed builds a cluster (3 nodes for even seeds, 5 for odd ones) of
//! [`RawNode`](keel_raft::core::RawNode)s with in-memory disks and state
//! machines, over a network that drops, duplicates, delays and reorders
//! messages and suffers symmetric and one-way partitions; nodes crash
//! (losing everything not yet durable) and restart from their disks, or
//! pause (keeping their state while the clock runs on); the leader takes
//! proposals, linearizable reads (by ReadIndex, or at once while its read
//! lease holds), membership changes (add
//! learner, promote, remove) and leadership transfers; applications compact
//! their logs, so lagging nodes get snapshots. Safety invariants
//! (`sim/checker.rs`) are checked after every step. After a chaos phase all
//! faults heal and a new proposal must commit on every live member within a
//! bounded number of ticks.
//!
//! - `cargo test -p keel-raft --test sim`: 2,000 seeds (`KEEL_SIM_SEEDS=<n>`
//!   for more, `KEEL_SIM_SEED_BASE=<b>` to start elsewhere).
//! - `KEEL_SIM_SEED=<seed> cargo test -p keel-raft --test sim -- replay`
//!   replays one seed exactly (`KEEL_SIM_TRACE=1` prints every event).

#[path = "sim/checker.rs"]
mod checker;
#[path = "sim/cluster.rs"]
mod cluster;
#[path = "sim/rng.rs"]
mod rng;

use std::panic::{catch_unwind, AssertUnwindSafe};

use cluster::{Sim, STEPS_PER_TICK};

/// What a successful run did, for the summary line.
#[derive(Debug, Default)]
struct Summary {
    committed: u64,
    leader_terms: usize,
    reads: u64,
    liveness_ticks: u64,
    stats: cluster::Stats,
}

fn run(seed: u64, trace: bool) -> Result<Summary, String> {
    let mut sim = Sim::new(seed, trace);
    let p = sim.params.clone();
    if trace {
        println!("seed {seed}: {p:?}");
    }
    for _ in 0..p.chaos_ticks {
        sim.chaos()?;
        sim.tick();
        for _ in 0..STEPS_PER_TICK {
            sim.step()?;
        }
    }
    sim.heal()?;
    let mut probe: Option<(u64, u64)> = None;
    let mut probe_at = 0;
    for t in 0..p.liveness_ticks {
        sim.tick();
        for _ in 0..STEPS_PER_TICK {
            sim.step()?;
        }
        if let Some((i, term)) = probe {
            if sim.checker.committed_term(i) == Some(term) && sim.applied_everywhere(i) {
                return Ok(Summary {
                    committed: sim.checker.max_committed(),
                    leader_terms: sim.checker.leader_terms(),
                    reads: sim.checker.reads_ok,
                    liveness_ticks: t,
                    stats: sim.stats,
                });
            }
        }
        if probe.is_none() || t - probe_at > 50 {
            if let Some(at) = sim.propose_somewhere() {
                probe = Some(at);
                probe_at = t;
            }
        }
    }
    if trace {
        sim.dump();
    }
    Err(format!(
        "liveness: after healing, no proposal committed on every live member within {} ticks (leader: {:?})",
        p.liveness_ticks,
        sim.leader()
    ))
}

/// Runs one seed, turning panics into errors.
fn run_caught(seed: u64) -> Result<Summary, String> {
    match catch_unwind(AssertUnwindSafe(|| run(seed, false))) {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {msg}"))
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs every seed of `parity` in the configured range.
fn run_seeds(parity: u64) {
    let count = env_u64("KEEL_SIM_SEEDS").unwrap_or(2000);
    let base = env_u64("KEEL_SIM_SEED_BASE").unwrap_or(0);
    let start = std::time::Instant::now();
    let mut total = Summary::default();
    let mut runs = 0u64;
    let mut max_live = (0, 0);
    for seed in (base..base + count).filter(|s| s % 2 == parity) {
        match run_caught(seed) {
            Ok(s) => {
                total.committed += s.committed;
                total.leader_terms += s.leader_terms;
                total.reads += s.reads;
                if s.liveness_ticks > max_live.0 {
                    max_live = (s.liveness_ticks, seed);
                }
                let (a, b) = (&mut total.stats, s.stats);
                a.crashes += b.crashes;
                a.snapshots_installed += b.snapshots_installed;
                a.conf_changes_applied += b.conf_changes_applied;
                a.transfers += b.transfers;
                a.partitions += b.partitions;
                a.messages += b.messages;
                a.pauses += b.pauses;
                a.lease_reads += b.lease_reads;
                a.lease_checks += b.lease_checks;
                runs += 1;
            }
            Err(e) => panic!(
                "simulation failed for seed {seed}: {e}\nreplay: KEEL_SIM_SEED={seed} cargo test -p keel-raft --test sim -- replay --nocapture"
            ),
        }
    }
    println!(
        "{runs} seeds ({} nodes) in {:?}: {} entries committed, {} leader terms, {} reads checked, liveness within {:?} (ticks, seed); {:?}",
        if parity == 0 { 3 } else { 5 },
        start.elapsed(),
        total.committed,
        total.leader_terms,
        total.reads,
        max_live,
        total.stats
    );
}

#[test]
fn sim_three_nodes() {
    run_seeds(0);
}

#[test]
fn sim_five_nodes() {
    run_seeds(1);
}

/// Replays `KEEL_SIM_SEED` (a no-op without it).
#[test]
fn replay() {
    let Some(seed) = env_u64("KEEL_SIM_SEED") else {
        return;
    };
    let trace = std::env::var("KEEL_SIM_TRACE").is_ok_and(|v| v != "0");
    match run(seed, trace) {
        Ok(s) => println!("seed {seed} passed: {s:?}"),
        Err(e) => panic!("seed {seed} failed: {e}"),
    }
}

/// The same seed gives the same run.
#[test]
fn deterministic() {
    let a = run(7, false).map(|s| (s.committed, s.leader_terms, s.reads, s.liveness_ticks));
    let b = run(7, false).map(|s| (s.committed, s.leader_terms, s.reads, s.liveness_ticks));
    assert_eq!(a, b);
}
