//! The nemesis: faults injected into a [`Db`] from a schedule, each recorded
//! as a [`super::history::FaultEvent`].
//!
//! A schedule is a list of steps `kind[(arg)]:SECS` (separated by spaces or
//! commas), e.g. `kill:4 partition-leader:5 failpoint(wal::before_write+apply::after_apply):4`.
//! Each step injects its fault, holds it for SECS seconds, heals it and
//! waits for a leader before the next. Targets (which member) come from the
//! seeded random generator, so a seed and a schedule reproduce a run up to
//! timing.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::db::Db;
use super::netns::Shape;
use super::workload::{Endpoints, Recorder};

/// The kinds of fault.
pub const KINDS: &[&str] = &[
    "kill",
    "pause",
    "partition-leader",
    "partition-halves",
    "partition-bridge",
    "partition-one-way",
    "slow-net",
    "membership",
    "disk-full",
    "failpoint",
    "power-loss",
];

/// Kinds that need network namespaces.
pub const NET_KINDS: &[&str] = &[
    "partition-leader",
    "partition-halves",
    "partition-bridge",
    "partition-one-way",
    "slow-net",
];

/// Crash points that fire often (armed with a small probability).
pub const HOT_POINTS: &[&str] = &[
    "wal::before_write",
    "wal::after_fsync",
    "apply::before_apply",
    "apply::after_apply",
    "raft::before_send",
];

/// Crash points that fire rarely (armed to fire the first time).
pub const RARE_POINTS: &[&str] = &[
    "snapshot::before_save",
    "snapshot::after_save",
    "snapshot::before_restore",
    "compact::before",
    "compact::after",
];

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// One of [`KINDS`].
    pub kind: String,
    /// For `failpoint`: the points, `+`-separated.
    pub arg: Option<String>,
    /// How long the fault is held, seconds.
    pub secs: f64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(a) = &self.arg {
            write!(f, "({a})")?;
        }
        write!(f, ":{}", self.secs)
    }
}

/// A fault schedule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule(pub Vec<Step>);

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|s| s.to_string()).collect();
        write!(f, "{}", parts.join(" "))
    }
}

impl Schedule {
    /// Parses the text form (see the module doc).
    pub fn parse(text: &str) -> Result<Schedule> {
        let mut steps = Vec::new();
        for part in text
            .split([' ', ',', '\n'])
            .filter(|p| !p.trim().is_empty())
        {
            let (head, secs) = part
                .rsplit_once(':')
                .filter(|(_, s)| s.parse::<f64>().is_ok())
                .ok_or_else(|| anyhow::anyhow!("step {part:?}: expected kind[(arg)]:SECS"))?;
            let secs: f64 = secs.trim_end_matches('s').parse()?;
            let (kind, arg) = match head.split_once('(') {
                Some((k, a)) => (k.to_string(), Some(a.trim_end_matches(')').to_string())),
                None => (head.to_string(), None),
            };
            if !KINDS.contains(&kind.as_str()) {
                bail!("unknown fault kind {kind:?} (known: {KINDS:?})");
            }
            steps.push(Step { kind, arg, secs });
        }
        Ok(Schedule(steps))
    }

    /// The CI schedule: every kind in `kinds` once (failpoints three
    /// times, so every crash point is armed once), shuffled by `rng`, each
    /// held 3–5 s.
    pub fn every_kind(kinds: &[&str], rng: &mut StdRng) -> Schedule {
        let mut steps = Vec::new();
        for &k in kinds {
            if k == "failpoint" {
                for group in failpoint_groups() {
                    steps.push(Step {
                        kind: k.into(),
                        arg: Some(group),
                        secs: 4.0,
                    });
                }
            } else {
                steps.push(Step {
                    kind: k.into(),
                    arg: None,
                    secs: rng.random_range(3..=5) as f64,
                });
            }
        }
        steps.shuffle(rng);
        Schedule(steps)
    }

    /// A random schedule of about `minutes` (steps of 2–10 s plus recovery).
    pub fn random(kinds: &[&str], minutes: f64, rng: &mut StdRng) -> Schedule {
        let mut steps = Vec::new();
        let mut total = 0.0;
        while total < minutes * 60.0 {
            let kind = kinds[rng.random_range(0..kinds.len())];
            let arg = (kind == "failpoint").then(|| {
                let groups = failpoint_groups();
                groups[rng.random_range(0..groups.len())].clone()
            });
            let secs = rng.random_range(2..=10) as f64;
            total += secs + 5.0;
            steps.push(Step {
                kind: kind.into(),
                arg,
                secs,
            });
        }
        Schedule(steps)
    }

    /// Total hold time, seconds.
    pub fn secs(&self) -> f64 {
        self.0.iter().map(|s| s.secs).sum()
    }
}

/// Every crash point (but the power-loss one) in three groups.
pub fn failpoint_groups() -> Vec<String> {
    vec![
        "wal::before_write+apply::after_apply+snapshot::before_save+compact::before".into(),
        "wal::after_fsync+raft::before_send+snapshot::after_save+compact::after".into(),
        "apply::before_apply+snapshot::before_restore".into(),
    ]
}

/// The `FAILPOINTS` value arming `points` (`+`-separated).
pub fn failpoints_spec(points: &str) -> String {
    points
        .split('+')
        .map(|p| {
            if HOT_POINTS.contains(&p) {
                format!("{p}=2%return")
            } else {
                format!("{p}=return")
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The failpoint that crashed a member, from its log ("failpoint NAME: crashing").
pub fn fired_points(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            l.split("failpoint ")
                .nth(1)
                .and_then(|r| r.split(": crashing").next())
                .filter(|_| l.contains(": crashing"))
                .map(String::from)
        })
        .collect()
}

/// What a nemesis did, per kind.
#[derive(Debug, Default, Clone)]
pub struct NemesisReport {
    /// Faults injected, by kind.
    pub injected: std::collections::BTreeMap<String, u32>,
    /// Kinds skipped (and why).
    pub skipped: Vec<String>,
    /// Crash points that fired.
    pub fired: std::collections::BTreeMap<String, u32>,
    /// Problems that are anomalies (a member that would not start, …).
    pub problems: Vec<String>,
}

/// Injects faults into a [`Db`].
pub struct Nemesis<'a> {
    db: &'a mut Db,
    rec: &'a Recorder,
    eps: &'a Endpoints,
    rng: StdRng,
    /// Crash points compiled into keel.
    pub failpoints: bool,
    /// What happened.
    pub report: NemesisReport,
}

fn names(db: &Db, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| db.nodes[i].name.clone()).collect()
}

impl<'a> Nemesis<'a> {
    /// A nemesis over `db`, recording into `rec`, keeping `eps` current.
    pub fn new(
        db: &'a mut Db,
        rec: &'a Recorder,
        eps: &'a Endpoints,
        rng: StdRng,
        failpoints: bool,
    ) -> Nemesis<'a> {
        Nemesis {
            db,
            rec,
            eps,
            rng,
            failpoints,
            report: NemesisReport::default(),
        }
    }

    /// The network, when members run in namespaces.
    pub fn net(&self) -> Option<&super::netns::Net> {
        self.db.net()
    }

    /// Whether `kind` can run here (and why not).
    pub fn supported(&self, kind: &str) -> Result<(), String> {
        if NET_KINDS.contains(&kind) && self.db.net().is_none() {
            return Err(format!(
                "{kind}: skipped (not root: loopback, no network faults)"
            ));
        }
        if kind == "disk-full" && !self.db.nodes.iter().any(|n| n.tmpfs) {
            return Err("disk-full: skipped (not root: no tmpfs)".into());
        }
        if (kind == "failpoint" || kind == "power-loss") && !self.failpoints {
            return Err(format!(
                "{kind}: skipped (keel built without the failpoints feature)"
            ));
        }
        Ok(())
    }

    /// Publishes the active members to the clients.
    pub fn refresh_endpoints(&self) {
        let list = self
            .db
            .active()
            .into_iter()
            .map(|i| {
                (
                    self.db.nodes[i].name.clone(),
                    self.db.nodes[i].client_addr(),
                )
            })
            .collect();
        self.eps.set(list);
    }

    fn sleep(&self, secs: f64) {
        std::thread::sleep(Duration::from_secs_f64(secs));
    }

    fn leader_or_any(&mut self) -> usize {
        match self.db.wait_leader(Duration::from_secs(5)) {
            Ok(l) => l,
            Err(_) => {
                let live = self.db.live();
                live[self
                    .rng
                    .random_range(0..live.len().max(1))
                    .min(live.len() - 1)]
            }
        }
    }

    fn random_member(&mut self) -> usize {
        if self.rng.random_bool(0.5) {
            self.leader_or_any()
        } else {
            let act = self.db.active();
            act[self.rng.random_range(0..act.len())]
        }
    }

    /// Makes sure every active member runs (restarting those that exited);
    /// a member that does not come back is a problem.
    pub fn ensure_running(&mut self) {
        for i in self.db.active() {
            if self.db.nodes[i].paused {
                self.db.pause(i, false);
            }
            if !self.db.nodes[i].is_running() {
                let why = self.db.nodes[i].exited();
                self.crash_event(i, &format!("found exited: {why:?}"));
                self.db
                    .log_note(i, &format!("nemesis: restarting (was {why:?})"));
                if let Err(e) = self.db.restart(i, Duration::from_secs(30)) {
                    self.report.problems.push(format!(
                        "member {} did not restart: {e:#}",
                        self.db.nodes[i].name
                    ));
                }
            }
        }
    }

    /// Runs one step: inject, hold, heal, wait for a leader.
    pub fn step(&mut self, step: &Step) -> Result<()> {
        if let Err(why) = self.supported(&step.kind) {
            println!("nemesis: {why}");
            self.report.skipped.push(why);
            return Ok(());
        }
        *self.report.injected.entry(step.kind.clone()).or_default() += 1;
        let hold = step.secs;
        match step.kind.as_str() {
            "kill" => {
                let t = self.random_member();
                let f = self.rec.fault_start(
                    "kill",
                    names(self.db, &[t]),
                    format!("kill -9 {}", self.db.nodes[t].name),
                );
                self.db.log_note(t, "nemesis: kill -9");
                self.db.kill9(t);
                self.sleep(hold);
                self.rec.fault_end(f);
                self.restart_logged(t);
            }
            "pause" => {
                let t = self.random_member();
                let f = self.rec.fault_start(
                    "pause",
                    names(self.db, &[t]),
                    format!("SIGSTOP {}", self.db.nodes[t].name),
                );
                self.db.pause(t, true);
                self.sleep(hold);
                self.db.pause(t, false);
                self.rec.fault_end(f);
            }
            "partition-leader" | "partition-halves" | "partition-bridge" | "partition-one-way" => {
                self.partition(&step.kind, hold)?;
            }
            "slow-net" => {
                let act = self.db.active();
                let shape = Shape {
                    rate_kbit: self.rng.random_range(200..=1000),
                    latency_ms: self.rng.random_range(20..=200),
                };
                let f = self.rec.fault_start(
                    "slow-net",
                    names(self.db, &act),
                    format!("tbf egress {shape:?} on every member"),
                );
                {
                    let net = self.db.net().expect("checked");
                    for &i in &act {
                        net.shape(i, &shape)?;
                    }
                }
                self.sleep(hold);
                self.db.net().expect("checked").clear_shapes()?;
                self.rec.fault_end(f);
            }
            "membership" => self.membership()?,
            "disk-full" => {
                let t = self
                    .db
                    .active()
                    .into_iter()
                    .find(|&i| self.db.nodes[i].tmpfs)
                    .expect("checked");
                let f = self.rec.fault_start(
                    "disk-full",
                    names(self.db, &[t]),
                    format!("fill {}'s data dir (tmpfs)", self.db.nodes[t].name),
                );
                let n = self.db.fill_disk(t)?;
                self.db
                    .log_note(t, &format!("nemesis: disk filled ({n} bytes ballast)"));
                self.sleep(hold);
                self.db.free_disk(t);
                self.rec.fault_end(f);
                if !self.db.nodes[t].is_running() {
                    let st = self.db.nodes[t].exited();
                    self.rec
                        .fault_note(f, &format!("member exited on the full disk: {st:?}"));
                }
                self.ensure_running();
            }
            "failpoint" | "power-loss" => {
                let points = if step.kind == "power-loss" {
                    "wal::before_fsync".to_string()
                } else {
                    step.arg
                        .clone()
                        .unwrap_or_else(|| failpoint_groups()[0].clone())
                };
                let spec = if step.kind == "power-loss" {
                    "wal::before_fsync=5%return".to_string()
                } else {
                    failpoints_spec(&points)
                };
                let restore = points.contains("snapshot::before_restore");
                let t = if restore {
                    // A follower that falls behind, so it may get a snapshot.
                    let l = self.leader_or_any();
                    let act: Vec<usize> =
                        self.db.active().into_iter().filter(|&i| i != l).collect();
                    act[self.rng.random_range(0..act.len())]
                } else {
                    self.random_member()
                };
                let f = self.rec.fault_start(
                    &step.kind,
                    names(self.db, &[t]),
                    format!("restart {} with FAILPOINTS={spec}", self.db.nodes[t].name),
                );
                let before = self.db.nodes[t].log().len();
                self.crash_event(t, "kill -9 before arming the crash points");
                self.db.kill9(t);
                if restore {
                    // Let the others move on (and snapshot) meanwhile.
                    self.sleep(hold);
                }
                self.db.nodes[t].failpoints = Some(spec);
                self.db.launch(t)?;
                let deadline = Instant::now() + Duration::from_secs_f64(hold);
                while Instant::now() < deadline && self.db.nodes[t].is_running() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let log = self.db.nodes[t].log();
                let fired = fired_points(log.get(before..).unwrap_or(""));
                for p in &fired {
                    *self.report.fired.entry(p.clone()).or_default() += 1;
                }
                if !fired.is_empty() {
                    self.crash_event(t, &format!("crashed at {}", fired.join(", ")));
                }
                self.rec.fault_note(
                    f,
                    &if fired.is_empty() {
                        "no point fired".to_string()
                    } else {
                        format!("crashed at {}", fired.join(", "))
                    },
                );
                self.rec.fault_end(f);
                self.db.kill9(t);
                self.restart_logged(t);
            }
            other => bail!("unknown fault kind {other}"),
        }
        self.ensure_running();
        if self.db.wait_leader(Duration::from_secs(20)).is_err() {
            println!("nemesis: no leader 20 s after healing {step}");
        }
        Ok(())
    }

    /// Records an instantaneous `crash` of member `t` (the checkers allow
    /// a member's state to be rebuilt across one).
    fn crash_event(&self, t: usize, why: &str) {
        let f = self
            .rec
            .fault_start("crash", names(self.db, &[t]), why.to_string());
        self.rec.fault_end(f);
    }

    fn restart_logged(&mut self, t: usize) {
        self.db.log_note(t, "nemesis: restart");
        if let Err(e) = self.db.restart(t, Duration::from_secs(30)) {
            self.report.problems.push(format!(
                "member {} did not restart: {e:#}",
                self.db.nodes[t].name
            ));
        }
    }

    fn partition(&mut self, kind: &str, hold: f64) -> Result<()> {
        let mut act = self.db.active();
        act.shuffle(&mut self.rng);
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let both = |a: &[usize], b: &[usize], cuts: &mut Vec<(usize, usize)>| {
            for &x in a {
                for &y in b {
                    cuts.push((x, y));
                    cuts.push((y, x));
                }
            }
        };
        let desc = match kind {
            "partition-leader" => {
                let l = self.leader_or_any();
                let others: Vec<usize> = act.iter().copied().filter(|&i| i != l).collect();
                both(&[l], &others, &mut cuts);
                format!("isolate leader {}", self.db.nodes[l].name)
            }
            "partition-halves" => {
                let (minority, majority) = act.split_at(act.len() / 2);
                both(minority, majority, &mut cuts);
                format!(
                    "{:?} | {:?}",
                    names(self.db, minority),
                    names(self.db, majority)
                )
            }
            "partition-bridge" => {
                // Two sides that only the bridge member connects.
                let bridge = act[0];
                let rest = &act[1..];
                let (x, y) = rest.split_at(rest.len() / 2);
                both(x, y, &mut cuts);
                format!(
                    "{:?} | {:?}, bridged by {}",
                    names(self.db, x),
                    names(self.db, y),
                    self.db.nodes[bridge].name
                )
            }
            _ => {
                let l = self.leader_or_any();
                let outbound = self.rng.random_bool(0.5);
                for &i in act.iter().filter(|&&i| i != l) {
                    cuts.push(if outbound { (l, i) } else { (i, l) });
                }
                format!(
                    "leader {} {} the others",
                    self.db.nodes[l].name,
                    if outbound {
                        "cannot send to"
                    } else {
                        "hears nothing from"
                    }
                )
            }
        };
        let f = self.rec.fault_start(kind, names(self.db, &act), desc);
        {
            let net = self.db.net().expect("checked");
            for &(a, b) in &cuts {
                net.cut(a, b)?;
            }
        }
        self.sleep(hold);
        self.db.net().expect("checked").heal()?;
        self.rec.fault_end(f);
        Ok(())
    }

    /// Adds a learner, promotes it, then removes one old voter (never the
    /// tmpfs member), all under load.
    fn membership(&mut self) -> Result<()> {
        let f = self
            .rec
            .fault_start("membership", vec![], "add learner".into());
        let i = match self.db.add_member(true) {
            Ok(i) => i,
            Err(e) => {
                self.rec.fault_note(f, &format!("add failed: {e:#}"));
                self.rec.fault_end(f);
                return Ok(());
            }
        };
        self.rec
            .fault_note(f, &format!("added learner {}", self.db.nodes[i].name));
        self.refresh_endpoints();
        match self.db.promote(i, Duration::from_secs(20)) {
            Ok(()) => self.rec.fault_note(f, "promoted"),
            Err(e) => self.rec.fault_note(f, &format!("promote failed: {e:#}")),
        }
        let cands: Vec<usize> = self
            .db
            .active()
            .into_iter()
            .filter(|&j| j != i && !self.db.nodes[j].tmpfs)
            .collect();
        if let Some(&r) = cands.get(self.rng.random_range(0..cands.len().max(1))) {
            match self.db.remove(r) {
                Ok(()) => self
                    .rec
                    .fault_note(f, &format!("removed {}", self.db.nodes[r].name)),
                Err(e) => self.rec.fault_note(f, &format!("remove failed: {e:#}")),
            }
        }
        self.refresh_endpoints();
        self.rec.fault_end(f);
        Ok(())
    }
}
