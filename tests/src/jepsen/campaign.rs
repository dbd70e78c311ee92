//! A campaign: a cluster, the workloads, a nemesis schedule, then the
//! checkers, the totals, and (on failure or `KEEL_JEPSEN_KEEP=1`) a kept
//! directory with the history, watch logs, member data dirs and logs and the
//! report.
//!
//! Environment:
//! - `KEEL_JEPSEN_SEED=<u64>`: the seed (printed; random otherwise);
//! - `KEEL_JEPSEN_SCHEDULE="kill:4 pause:3 …"`: the fault schedule (printed;
//!   derived from the seed otherwise, see [`super::nemesis::Schedule`]);
//! - `KEEL_SOAK=<minutes>`: a long campaign of random faults;
//! - `KEEL_JEPSEN_MEMBERS=5`: cluster size (default 3);
//! - `KEEL_JEPSEN_KEEP=1`: keep the run directory even when it passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::checks::check_all;
use super::db::{Db, DbOpts};
use super::history::{History, Request, Response};
use super::nemesis::{Nemesis, NemesisReport, Schedule, KINDS};
use super::result::{CheckResult, Verdict};
use super::workload::{self, Ctx, Endpoints, Recorder, WatchStart};
use crate::workspace_root;

/// How a campaign runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The seed.
    pub seed: u64,
    /// The fault schedule.
    pub schedule: Schedule,
    /// Members.
    pub size: usize,
    /// Keep the run directory even on success.
    pub keep: bool,
    /// Register clients.
    pub register_clients: usize,
    /// List-append clients.
    pub list_clients: usize,
    /// Lease clients.
    pub lease_clients: usize,
}

/// Whether keel was built with its crash points (`keel --version`).
pub fn keel_has_failpoints() -> bool {
    std::process::Command::new(crate::keel_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("failpoints"))
        .unwrap_or(false)
}

impl Config {
    /// From the environment (see the module doc).
    pub fn from_env() -> Result<Config> {
        let seed = match std::env::var("KEEL_JEPSEN_SEED") {
            Ok(s) => s.parse().context("KEEL_JEPSEN_SEED")?,
            Err(_) => rand::random::<u64>() % 1_000_000_000,
        };
        let size = std::env::var("KEEL_JEPSEN_MEMBERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let soak: Option<f64> = std::env::var("KEEL_SOAK").ok().and_then(|s| s.parse().ok());
        let mut rng = StdRng::seed_from_u64(seed);
        let schedule = match std::env::var("KEEL_JEPSEN_SCHEDULE") {
            Ok(s) => Schedule::parse(&s)?,
            Err(_) => match soak {
                Some(min) => Schedule::random(KINDS, min, &mut rng),
                None => Schedule::every_kind(KINDS, &mut rng),
            },
        };
        Ok(Config {
            seed,
            schedule,
            size,
            keep: std::env::var("KEEL_JEPSEN_KEEP").as_deref() == Ok("1"),
            register_clients: 5,
            list_clients: 3,
            lease_clients: 2,
        })
    }
}

/// What a campaign found.
pub struct Outcome {
    /// Ops that returned ok / failed / unknown.
    pub ok: usize,
    /// Failed ops.
    pub failed: usize,
    /// Unknown-outcome ops.
    pub unknown: usize,
    /// Watch responses with events.
    pub watch_events: usize,
    /// The nemesis' report.
    pub nemesis: NemesisReport,
    /// The checkers' verdicts.
    pub checks: Option<CheckResult>,
    /// Anomalies: checker violations plus harness-level problems.
    pub anomalies: Vec<String>,
    /// The kept directory, if any.
    pub kept: Option<PathBuf>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Outcome {
    /// A printable summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "ops completed: {} (ok {}, failed {}, unknown {}); watch responses with events: {}\n",
            self.ok + self.failed + self.unknown,
            self.ok,
            self.failed,
            self.unknown,
            self.watch_events
        );
        s += &format!("faults injected: {:?}\n", self.nemesis.injected);
        if !self.nemesis.fired.is_empty() {
            s += &format!("crash points fired: {:?}\n", self.nemesis.fired);
        }
        for k in &self.nemesis.skipped {
            s += &format!("skipped: {k}\n");
        }
        if let Some(c) = &self.checks {
            s += &c.summary();
            s += "\n";
        }
        s += &format!("anomalies found: {}\n", self.anomalies.len());
        for a in self.anomalies.iter().take(20) {
            s += &format!("  - {a}\n");
        }
        if let Some(k) = &self.kept {
            s += &format!("kept: {}\n", k.display());
        }
        s += &format!("wall time: {:.0?}", self.elapsed);
        s
    }
}

/// Runs a campaign.
pub fn run(cfg: &Config) -> Result<Outcome> {
    let t0 = Instant::now();
    println!(
        "jepsen: seed {} (KEEL_JEPSEN_SEED={}), {} members",
        cfg.seed, cfg.seed, cfg.size
    );
    println!("jepsen: schedule KEEL_JEPSEN_SCHEDULE=\"{}\"", cfg.schedule);
    let failpoints = keel_has_failpoints();
    let runs = workspace_root().join("target").join("jepsen-runs");
    let root = runs.join(format!("seed-{}-pid-{}", cfg.seed, std::process::id()));
    if root.exists() {
        std::fs::remove_dir_all(&root).ok();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let opts = DbOpts {
        size: cfg.size,
        tmpfs_member: Some(cfg.size - 1),
        ..DbOpts::default()
    };
    if !opts.namespaces {
        println!("jepsen: not root: members on loopback, network faults and disk-full skipped");
    }
    let mut db = Db::start(opts, &root, rt.handle().clone())?;
    let rec = Recorder::new();
    let eps = Endpoints::new(
        db.sockets(),
        db.active()
            .into_iter()
            .map(|i| (db.nodes[i].name.clone(), db.nodes[i].client_addr()))
            .collect(),
    );
    let ctx = Ctx::new(rec.clone(), eps.clone());
    let seed = cfg.seed;
    let mut tasks = Vec::new();
    {
        let _g = rt.enter();
        for _ in 0..cfg.register_clients {
            tasks.push(rt.spawn(workload::register_client(ctx.clone(), seed)));
        }
        for _ in 0..cfg.list_clients {
            tasks.push(rt.spawn(workload::list_append_client(ctx.clone(), seed)));
        }
        for _ in 0..cfg.lease_clients {
            tasks.push(rt.spawn(workload::lease_client(ctx.clone(), seed)));
        }
        for (p, start) in [
            ("reg/", WatchStart::Now),
            ("la/", WatchStart::At(1)),
            ("lease/", WatchStart::Now),
            ("", WatchStart::At(1)),
        ] {
            tasks.push(rt.spawn(workload::watcher(ctx.clone(), p.into(), start, seed)));
        }
        tasks.push(rt.spawn(workload::compactor(
            ctx.clone(),
            Duration::from_secs(6),
            300,
            seed,
        )));
        tasks.push(rt.spawn(workload::status_sampler(
            ctx.clone(),
            Duration::from_millis(500),
        )));
    }
    std::thread::sleep(Duration::from_secs(3));

    let mut late_watchers = false;
    let mut nem = Nemesis::new(
        &mut db,
        &rec,
        &eps,
        StdRng::seed_from_u64(seed ^ 0x6e656d),
        failpoints,
    );
    if !failpoints {
        println!("jepsen: keel has no failpoints feature: failpoint and power-loss faults skipped");
    }
    let mut harness_err = None;
    for (n, step) in cfg.schedule.0.iter().enumerate() {
        // Start the compacted-start and future-start watchers once there
        // has been a compaction.
        if !late_watchers && rec.compact_rev.load(Ordering::Relaxed) > 0 {
            late_watchers = true;
            let _g = rt.enter();
            tasks.push(rt.spawn(workload::watcher(
                ctx.clone(),
                "reg/".into(),
                WatchStart::Compacted,
                seed,
            )));
            tasks.push(rt.spawn(workload::watcher(
                ctx.clone(),
                "la/".into(),
                WatchStart::Future(50),
                seed,
            )));
        }
        println!(
            "jepsen: [{:>5.1}s] step {}/{}: {step} ({} ops so far)",
            t0.elapsed().as_secs_f64(),
            n + 1,
            cfg.schedule.0.len(),
            rec.op_count()
        );
        if let Err(e) = nem.step(step) {
            harness_err = Some(format!("nemesis step {step}: {e:#}"));
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // Heal everything and let the cluster settle under load.
    if let Some(net) = nem.net() {
        let _ = net.heal();
        let _ = net.clear_shapes();
    }
    nem.ensure_running();
    nem.refresh_endpoints();
    let nemesis = nem.report.clone();
    drop(nem);
    let mut anomalies: Vec<String> = nemesis.problems.clone();
    anomalies.extend(harness_err);
    if let Err(e) = db.wait_leader(Duration::from_secs(30)) {
        anomalies.push(format!("no leader after healing: {e:#}"));
    }
    std::thread::sleep(Duration::from_secs(2));
    ctx.stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        // One deadline for all (a lease client may still be retrying a
        // revoke); whatever is left is aborted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                eprintln!("jepsen: a client did not stop in time: aborted");
                abort.abort();
            }
        }
    });

    // Final reads: every member, linearizable, the whole keyspace.
    if let Err(e) = final_reads(&mut db, &rec, &rt) {
        anomalies.push(e);
    }

    let mut history = rec.history();
    history.meta = BTreeMap::from([
        ("seed".to_string(), cfg.seed.to_string()),
        ("schedule".to_string(), cfg.schedule.to_string()),
        ("members".to_string(), cfg.size.to_string()),
        ("namespaces".to_string(), db.net().is_some().to_string()),
        (
            "compactions".to_string(),
            rec.compactions.load(Ordering::Relaxed).to_string(),
        ),
    ]);
    let checks = check_all(&history);
    if checks.verdict() == Verdict::Fail {
        anomalies.push(format!("checkers: {}", checks.summary()));
    }
    let (mut ok, mut failed, mut unknown) = (0, 0, 0);
    for o in &history.ops {
        if o.is_unknown() {
            unknown += 1;
        } else if o.is_fail() {
            failed += 1;
        } else {
            ok += 1;
        }
    }
    let watch_events = history
        .watches
        .iter()
        .flat_map(|w| &w.records)
        .filter(|r| matches!(r, super::history::WatchRecord::Events { .. }))
        .count();
    let keep = cfg.keep || !anomalies.is_empty();
    db.shutdown(keep);
    drop(db);
    let kept = if keep {
        Some(keep_run(&root, &history, &checks, cfg)?)
    } else {
        std::fs::remove_dir_all(&root).ok();
        None
    };
    Ok(Outcome {
        ok,
        failed,
        unknown,
        watch_events,
        nemesis,
        checks: Some(checks),
        anomalies,
        kept,
        elapsed: t0.elapsed(),
    })
}

/// Reads the whole keyspace through every live member (recorded), waits for
/// convergence and compares `HashKV`.
fn final_reads(
    db: &mut Db,
    rec: &Arc<Recorder>,
    rt: &tokio::runtime::Runtime,
) -> Result<(), String> {
    let live = db.live();
    // Converged: every live member at the same revision.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let revs: Vec<Option<i64>> = live
            .iter()
            .map(|&i| {
                rt.block_on(db.status(i, Duration::from_secs(1)))
                    .ok()
                    .map(|s| s.revision)
            })
            .collect();
        if revs.iter().all(|r| r.is_some() && *r == revs[0]) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!("members did not converge: revisions {revs:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let client = 10_000;
    for &i in &live {
        let ch = db.channel(i, Duration::ZERO);
        let name = db.nodes[i].name.clone();
        let req = Request::Range {
            prefix: String::new(),
            serializable: false,
            revision: 0,
        };
        let t = rec.now();
        let resp = rt.block_on(workload::execute(ch, &req));
        let bad = !matches!(resp, Response::Ok { .. });
        rec.op(client + i as u32, &name, t, req, resp.clone());
        if bad {
            return Err(format!("final read on {name} failed: {resp:?}"));
        }
    }
    type Hash = Result<(u32, i64), String>;
    let hashes: Vec<(String, Hash)> = live
        .iter()
        .map(|&i| {
            let ch = db.channel(i, Duration::from_secs(10));
            let h = rt.block_on(async move {
                use keel_storage::proto::etcdserverpb::maintenance_client::MaintenanceClient;
                MaintenanceClient::new(ch)
                    .hash_kv(keel_storage::proto::etcdserverpb::HashKvRequest { revision: 0 })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        (r.hash, r.header.map_or(0, |h| h.revision))
                    })
                    .map_err(|e| e.to_string())
            });
            (db.nodes[i].name.clone(), h)
        })
        .collect();
    if !hashes.iter().all(|(_, h)| h.is_ok() && *h == hashes[0].1) {
        return Err(format!("members disagree on HashKV: {hashes:?}"));
    }
    Ok(())
}

/// Moves the run directory to `target/jepsen-failures/` (out of any temp
/// cleanup) with the history, the verdicts and the report.
fn keep_run(root: &Path, h: &History, checks: &CheckResult, cfg: &Config) -> Result<PathBuf> {
    let dest_root = workspace_root().join("target").join("jepsen-failures");
    std::fs::create_dir_all(&dest_root)?;
    let dest = dest_root.join(root.file_name().expect("run dir name"));
    if dest.exists() {
        std::fs::remove_dir_all(&dest).ok();
    }
    std::fs::rename(root, &dest)
        .or_else(|_| {
            std::process::Command::new("cp")
                .arg("-a")
                .arg(root)
                .arg(&dest)
                .status()
                .map(|_| ())
        })
        .context("keep run dir")?;
    std::fs::write(
        dest.join("README.txt"),
        format!(
            "seed: {}\nreport: report/report.html (history: report/*.jsonl), member dirs: <name>/ (member.log, disk/data)\nreproduce: KEEL_JEPSEN_SEED={} KEEL_JEPSEN_SCHEDULE=\"{}\" cargo test -p keel-tests --test jepsen -- --nocapture\n\n{}\n",
            cfg.seed,
            cfg.seed,
            cfg.schedule,
            checks.summary()
        ),
    )?;
    // The history, the verdicts and the HTML timeline.
    super::report::write_report(&dest.join("report"), h, checks)?;
    Ok(dest)
}
