//! The simulated cluster: nodes (a [`RawNode`], an in-memory disk and state
//! machine), a lossy network, and the driver loop that joins them.
//!
//! Time is discrete: a *step* delivers due messages, processes Readies and
//! completes due disk writes; every [`STEPS_PER_TICK`] steps each node
//! ticks (in a random order) and faults and client requests are drawn.
//! Invariants are checked after every step.
//!
//! Each step is one millisecond of a virtual clock that keeps running while
//! a node is paused (a stopped process or a VM stall: it neither ticks nor
//! handles messages, and keeps all its state); nodes time their read
//! leases ([`ReadLease`]) with it, as the real driver does with
//! `Instant::now()`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use keel_raft::read_lease::ReadLease;

use keel_raft::core::{
    ConfChange, ConfState, Config, Entry, EntryKind, HardState, Message, MessageKind, RaftError,
    RawNode, Restored, Role, SnapshotMeta,
};

use super::checker::{Check, Checker};
use super::rng::Rng;

pub const STEPS_PER_TICK: u64 = 4;
const ELECTION_TICK: usize = 10;

/// A state machine: the index applied and a fingerprint of everything
/// applied (see `rng::chain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sm {
    pub applied: u64,
    pub hash: u64,
}

/// What survives a crash.
#[derive(Debug, Default, Clone)]
struct Disk {
    hs: HardState,
    snap: Option<(SnapshotMeta, Sm)>,
    entries: Vec<Entry>,
}

/// A Ready's durable part, waiting for its (simulated) fsync.
#[derive(Debug)]
struct Write {
    due: u64,
    snap: Option<(SnapshotMeta, Sm)>,
    entries: Vec<Entry>,
    hs: Option<HardState>,
    msgs: Vec<Message>,
}

#[derive(Debug)]
struct Node {
    raw: Option<RawNode>,
    disk: Disk,
    sm: Sm,
    writes: VecDeque<Write>,
    /// Snapshot data received, by (index, term).
    recv_snaps: BTreeMap<(u64, u64), Sm>,
    /// Removed from the cluster: stays down.
    removed: bool,
    /// When a crashed node comes back (step).
    restart_at: Option<u64>,
    /// A paused node resumes at this step.
    paused_until: Option<u64>,
    /// The driver's read lease (reset by a crash, kept by a pause).
    lease: ReadLease,
}

#[derive(Debug)]
struct Packet {
    from: u64,
    to: u64,
    bytes: Vec<u8>,
    /// Snapshot data, for Snapshot messages.
    snap: Option<Sm>,
}

/// Fault and workload parameters of one run, drawn from the seed.
#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: u64,
    pub chaos_ticks: u64,
    pub liveness_ticks: u64,
    pub drop_per_mille: u64,
    pub dup_per_mille: u64,
    pub max_delay: u64,
    pub max_persist_delay: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub crash_per_mille: u64,
    pub leader_crash_per_mille: u64,
    pub crash_after_commit_per_mille: u64,
    pub pause_per_mille: u64,
}

impl Params {
    pub fn draw(seed: u64, rng: &mut Rng) -> Params {
        Params {
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            chaos_ticks: 150 + rng.below(100),
            liveness_ticks: 600,
            drop_per_mille: rng.below(150),
            dup_per_mille: rng.below(50),
            max_delay: if rng.chance(300) {
                1 + rng.below(24)
            } else {
                1 + rng.below(10)
            },
            max_persist_delay: rng.below(6),
            pre_vote: !rng.chance(150),
            check_quorum: !rng.chance(150),
            crash_per_mille: rng.below(60),
            leader_crash_per_mille: rng.below(120),
            crash_after_commit_per_mille: rng.below(150),
            pause_per_mille: rng.below(40),
        }
    }
}

pub struct Sim {
    pub rng: Rng,
    pub params: Params,
    pub now: u64,
    nodes: BTreeMap<u64, Node>,
    net: BTreeMap<(u64, u64), Packet>,
    /// Directed links that drop everything.
    blocked: BTreeSet<(u64, u64)>,
    drop_per_mille: u64,
    dup_per_mille: u64,
    max_delay: u64,
    bootstrap: ConfState,
    next_id: u64,
    next_data: u64,
    next_read: u64,
    pub checker: Checker,
    pub trace: bool,
    pub proposals: u64,
    pub stats: Stats,
    /// Faults are being injected (false once healed).
    chaos_on: bool,
    /// The virtual clock's origin (step 0).
    epoch: Instant,
}

/// Counts of what a run exercised.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub crashes: u64,
    pub snapshots_installed: u64,
    pub conf_changes_applied: u64,
    pub transfers: u64,
    pub partitions: u64,
    pub messages: u64,
    pub pauses: u64,
    /// Reads answered from a lease, without a heartbeat round.
    pub lease_reads: u64,
    /// Steps at which some node's lease held (and was checked).
    pub lease_checks: u64,
}

impl Sim {
    pub fn new(seed: u64, trace: bool) -> Sim {
        let mut rng = Rng::new(seed);
        let params = Params::draw(seed, &mut rng);
        let ids: Vec<u64> = (1..=params.nodes).collect();
        let bootstrap = RawNode::bootstrap(&ids);
        let mut sim = Sim {
            rng,
            drop_per_mille: params.drop_per_mille,
            dup_per_mille: params.dup_per_mille,
            max_delay: params.max_delay,
            params,
            now: 0,
            nodes: BTreeMap::new(),
            net: BTreeMap::new(),
            blocked: BTreeSet::new(),
            bootstrap,
            next_id: ids.len() as u64 + 1,
            next_data: 1,
            next_read: 1,
            checker: Checker::default(),
            trace,
            proposals: 0,
            stats: Stats::default(),
            chaos_on: true,
            epoch: Instant::now(),
        };
        for id in ids {
            sim.add_node(id);
        }
        sim
    }

    /// The virtual clock.
    fn clock(&self) -> Instant {
        self.epoch + Duration::from_millis(self.now)
    }

    fn new_lease() -> ReadLease {
        ReadLease::new(Duration::from_millis(STEPS_PER_TICK), ELECTION_TICK)
    }

    fn log(&self, s: impl FnOnce() -> String) {
        if self.trace {
            println!("[{:>5}] {}", self.now, s());
        }
    }

    fn config(&mut self, id: u64) -> Config {
        let mut cfg = Config::new(id);
        cfg.election_tick = ELECTION_TICK;
        cfg.heartbeat_tick = 2;
        cfg.pre_vote = self.params.pre_vote;
        cfg.check_quorum = self.params.check_quorum;
        cfg.max_inflight_msgs = 1 + self.rng.below(6) as usize;
        cfg.max_size_per_msg = 16 + self.rng.below(64);
        cfg.max_entries_per_msg = if self.rng.chance(500) {
            1
        } else {
            self.rng.below(4) as usize
        };
        cfg.seed = self.rng.next_u64();
        cfg
    }

    fn add_node(&mut self, id: u64) {
        let cfg = self.config(id);
        let raw = RawNode::new(
            cfg,
            Restored {
                conf_state: self.bootstrap.clone(),
                ..Restored::default()
            },
        )
        .expect("new node");
        self.nodes.insert(
            id,
            Node {
                raw: Some(raw),
                disk: Disk::default(),
                sm: Sm::default(),
                writes: VecDeque::new(),
                recv_snaps: BTreeMap::new(),
                removed: false,
                restart_at: None,
                paused_until: None,
                lease: Sim::new_lease(),
            },
        );
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Nodes that are up and running (not crashed, not paused).
    fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raw.is_some() && n.paused_until.is_none())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The running leader with the highest term.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.paused_until.is_none())
            .filter_map(|(&id, n)| n.raw.as_ref().map(|r| (id, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
            .map(|(id, _)| id)
    }

    // ---- network -----------------------------------------------------------

    fn send(&mut self, m: Message, snap: Option<Sm>) {
        let (from, to) = (m.from, m.to);
        let is_snap = snap.is_some();
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.drop_per_mille) {
            self.log(|| format!("drop {from}->{to} {:?}", kind_name(&m.kind)));
            if is_snap {
                if let Some(r) = self.raw_mut(from) {
                    r.report_snapshot(to, false);
                }
            } else if self.blocked.contains(&(from, to)) && self.rng.chance(100) {
                if let Some(r) = self.raw_mut(from) {
                    r.report_unreachable(to);
                }
            }
            return;
        }
        let bytes = m.encode();
        self.stats.messages += 1;
        let copies = if self.rng.chance(self.dup_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let due = self.now + 1 + self.rng.below(self.max_delay);
            let key = (due, self.rng.next_u64());
            self.net.insert(
                key,
                Packet {
                    from,
                    to,
                    bytes: bytes.clone(),
                    snap,
                },
            );
        }
    }

    fn deliver(&mut self) -> Check {
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let p = entry.remove();
            if let Some(until) = self.nodes.get(&p.to).and_then(|n| n.paused_until) {
                // Queued in the paused node's socket buffer.
                let key = (until, self.rng.next_u64());
                self.net.insert(key, p);
                continue;
            }
            let alive = self.nodes.get(&p.to).is_some_and(|n| n.raw.is_some());
            if !alive || self.blocked.contains(&(p.from, p.to)) {
                if p.snap.is_some() {
                    if let Some(r) = self.raw_mut(p.from) {
                        r.report_snapshot(p.to, false);
                    }
                }
                continue;
            }
            let m =
                Message::decode(&p.bytes).map_err(|e| format!("decoding a sent message: {e}"))?;
            self.log(|| {
                format!(
                    "deliver {}->{} t{} {:?}",
                    m.from,
                    m.to,
                    m.term,
                    kind_name(&m.kind)
                )
            });
            let node = self.nodes.get_mut(&p.to).expect("alive");
            if let (Some(sm), MessageKind::Snapshot { meta }) = (p.snap, &m.kind) {
                node.recv_snaps.insert((meta.index, meta.term), sm);
            }
            let raw = node.raw.as_mut().expect("alive");
            // A forwarded read meets the leader's lease as the driver's
            // clock says now.
            let read = matches!(m.kind, MessageKind::ReadIndex { .. });
            if read {
                let clock = self.epoch + Duration::from_millis(self.now);
                raw.set_read_lease(node.lease.holds(raw.term(), clock));
            }
            let stepped = raw.step(m);
            if read {
                raw.set_read_lease(false);
            }
            match stepped {
                Ok(()) => {}
                Err(RaftError::InvalidMessage(e)) => {
                    return Err(format!("core refused a well-formed message: {e}"))
                }
                Err(e) => return Err(format!("step: {e}")),
            }
            if p.snap.is_some() {
                let to = p.to;
                if let Some(r) = self.raw_mut(p.from) {
                    r.report_snapshot(to, true);
                }
            }
        }
        Ok(())
    }

    fn raw_mut(&mut self, id: u64) -> Option<&mut RawNode> {
        self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut())
    }

    // ---- the driver ------------------------------------------------------------

    /// Takes and handles one Ready of node `id`, if it has one.
    fn process_ready(&mut self, id: u64) -> Check {
        let now = self.now;
        let persist_delay = self.rng.below(self.params.max_persist_delay + 1);
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(raw) = node.raw.as_mut() else {
            return Ok(());
        };
        if !raw.has_ready() {
            return Ok(());
        }
        let clock = self.epoch + Duration::from_millis(now);
        node.lease
            .on_confirmed(raw.term(), raw.confirmed_read_round());
        let rd = raw.ready();
        node.lease.on_ready(raw.term(), raw.read_round(), clock);
        self.checker.appended(raw, &rd.entries)?;
        // The snapshot to install: its data came with the message.
        let snap = match &rd.snapshot {
            Some(meta) => {
                let Some(sm) = node.recv_snaps.remove(&(meta.index, meta.term)) else {
                    return Err(format!(
                        "node {id}: Ready.snapshot {meta:?} without received data"
                    ));
                };
                node.recv_snaps.clear();
                Some((meta.clone(), sm))
            }
            None => None,
        };
        // Apply committed entries (they are durable already).
        let mut removed = Vec::new();
        let mut added = Vec::new();
        let term = raw.term();
        for e in &rd.committed_entries {
            node.sm.hash = self
                .checker
                .apply(id, term, node.sm.applied, node.sm.hash, e)?;
            node.sm.applied = e.index;
            if e.kind == EntryKind::ConfChange {
                let cc = ConfChange::decode(&e.data).map_err(|e| format!("conf change: {e}"))?;
                self.stats.conf_changes_applied += 1;
                raw.apply_conf_change(&cc);
                match cc {
                    ConfChange::RemoveNode(x) => removed.push(x),
                    ConfChange::AddLearner(x) | ConfChange::AddNode(x) => added.push(x),
                }
            }
        }
        if let Some(last) = rd.committed_entries.last() {
            raw.on_applied(last.index);
        }
        for rs in &rd.read_states {
            self.checker.read_answered(id, rs)?;
        }
        node.writes.push_back(Write {
            due: now + persist_delay,
            snap,
            entries: rd.entries,
            hs: rd.hard_state,
            msgs: rd.persisted_messages,
        });
        let snap_data = node.disk.snap.clone();
        for m in rd.messages {
            self.send(m, None);
        }
        for req in rd.snapshot_requests {
            match &snap_data {
                Some((meta, sm)) if *meta == req.meta => {
                    let sm = *sm;
                    self.send(req.message, Some(sm));
                }
                other => {
                    return Err(format!(
                        "node {id} asks to send snapshot {:?} but its disk holds {:?}",
                        req.meta,
                        other.as_ref().map(|s| &s.0)
                    ))
                }
            }
        }
        for x in removed {
            self.remove_node(x);
        }
        for x in added {
            if !self.nodes.contains_key(&x) {
                return Err(format!("conf change added unknown node {x}"));
            }
        }
        Ok(())
    }

    /// Completes the due disk writes of node `id`, in order.
    fn persist(&mut self, id: u64) -> Check {
        loop {
            let now = self.now;
            let node = self.nodes.get_mut(&id).expect("node");
            if node.raw.is_none() || node.writes.front().is_none_or(|w| w.due > now) {
                return Ok(());
            }
            let w = node.writes.pop_front().expect("front");
            if let Some((meta, sm)) = &w.snap {
                self.checker.install(id, meta, sm.hash)?;
                self.stats.snapshots_installed += 1;
                node.disk.snap = Some((meta.clone(), *sm));
                node.disk.entries.clear();
                node.sm = *sm;
            }
            if let Some(first) = w.entries.first() {
                let base = node.disk.snap.as_ref().map_or(0, |s| s.0.index);
                let last = base + node.disk.entries.len() as u64;
                if first.index <= base || first.index > last + 1 {
                    return Err(format!(
                        "node {id}: Ready entries from {} do not attach to the disk log ({base}, {last}]",
                        first.index
                    ));
                }
                node.disk
                    .entries
                    .truncate((first.index - base - 1) as usize);
                node.disk.entries.extend(w.entries.iter().cloned());
            }
            if let Some(hs) = w.hs {
                node.disk.hs = hs;
            }
            let raw = node.raw.as_mut().expect("live");
            if let Some((meta, _)) = &w.snap {
                raw.on_snapshot_installed(meta);
            }
            if let Some(last) = w.entries.last() {
                raw.on_persisted(last.index, last.term);
            }
            for m in w.msgs {
                self.send(m, None);
            }
        }
    }

    /// The application snapshots its state machine and compacts the log.
    fn maybe_compact(&mut self, id: u64) -> Check {
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(raw) = node.raw.as_mut() else {
            return Ok(());
        };
        let base = node.disk.snap.as_ref().map_or(0, |s| s.0.index);
        // (A snapshot being installed may already have moved the core's log.)
        if node.sm.applied <= base || node.sm.applied <= raw.snapshot_index() {
            return Ok(());
        }
        let meta = raw
            .compact(node.sm.applied)
            .map_err(|e| format!("node {id}: compact({}): {e}", node.sm.applied))?;
        node.disk.entries.retain(|e| e.index > meta.index);
        node.disk.snap = Some((meta, node.sm));
        Ok(())
    }

    fn crash(&mut self, id: u64, down_for: u64) {
        let now = self.now;
        self.log(|| format!("crash {id} for {down_for}"));
        self.stats.crashes += 1;
        let node = self.nodes.get_mut(&id).expect("node");
        node.raw = None;
        node.writes.clear();
        node.recv_snaps.clear();
        node.sm = Sm::default();
        node.restart_at = Some(now + down_for);
        node.paused_until = None;
        node.lease = Sim::new_lease();
    }

    fn restart(&mut self, id: u64) -> Check {
        self.log(|| format!("restart {id}"));
        let cfg = self.config(id);
        let bootstrap = self.bootstrap.clone();
        let node = self.nodes.get_mut(&id).expect("node");
        node.restart_at = None;
        let (snapshot, sm) = match &node.disk.snap {
            Some((meta, sm)) => (Some(meta.clone()), *sm),
            None => (None, Sm::default()),
        };
        node.sm = sm;
        let restored = Restored {
            hard_state: node.disk.hs,
            conf_state: snapshot
                .as_ref()
                .map_or(bootstrap, |s| s.conf_state.clone()),
            snapshot,
            entries: node.disk.entries.clone(),
            applied: sm.applied,
        };
        let raw = RawNode::new(cfg, restored).map_err(|e| format!("restart {id}: {e}"))?;
        node.raw = Some(raw);
        self.checker.restarted(id);
        Ok(())
    }

    fn remove_node(&mut self, id: u64) {
        if self.nodes.get(&id).is_some_and(|n| !n.removed) {
            self.log(|| format!("node {id} removed: shutting down"));
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            if !n.removed {
                n.removed = true;
                n.raw = None;
                n.writes.clear();
                n.restart_at = None;
            }
        }
    }

    // ---- the loop ----------------------------------------------------------------

    /// One step: deliver, process Readies, persist, check.
    pub fn step(&mut self) -> Check {
        self.now += 1;
        let now = self.now;
        for (&id, n) in self.nodes.iter_mut() {
            if n.paused_until.is_some_and(|t| t <= now) {
                n.paused_until = None;
                if self.trace {
                    println!("[{now:>5}] resume {id}");
                }
            }
        }
        let leaders: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter_map(|(&id, n)| n.raw.as_ref().map(|r| (id, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .map(|(id, r)| (id, r.commit()))
            .collect();
        self.deliver()?;
        let mut ids = self.live_ids();
        self.rng.shuffle(&mut ids);
        for &id in &ids {
            for _ in 0..2 {
                self.process_ready(id)?;
            }
            self.persist(id)?;
            self.process_ready(id)?;
            if self.rng.chance(20) {
                self.maybe_compact(id)?;
            }
        }
        for id in self.live_ids() {
            let raw = self.nodes[&id].raw.as_ref().expect("live");
            self.checker.observe(raw)?;
        }
        self.check_leases()?;
        // A leader may crash right after it advanced its commit index (before
        // its followers learn of it): the adversarial timing of Raft's
        // figure 8.
        if self.chaos_on {
            for (id, c) in leaders {
                let advanced = self.nodes[&id]
                    .raw
                    .as_ref()
                    .is_some_and(|r| r.role() == Role::Leader && r.commit() > c);
                if advanced && self.rng.chance(self.params.crash_after_commit_per_mille) {
                    let down = STEPS_PER_TICK * (1 + self.rng.below(15));
                    self.crash(id, down);
                }
            }
        }
        Ok(())
    }

    /// Lease safety: a node whose read lease holds now (paused or not:
    /// it would serve as soon as it runs) answers reads at its commit
    /// index, so that index must cover everything committed anywhere,
    /// in any term.
    fn check_leases(&mut self) -> Check {
        let clock = self.clock();
        let max = self.checker.max_committed();
        for (&id, n) in &self.nodes {
            let Some(raw) = n.raw.as_ref() else {
                continue;
            };
            let Some(index) = raw.lease_read_index() else {
                continue;
            };
            if !n.lease.holds(raw.term(), clock) {
                continue;
            }
            self.stats.lease_checks += 1;
            if index < max {
                return Err(format!(
                    "lease: node {id} (term {}, paused: {}) holds its read lease at commit {index}, but {max} is committed",
                    raw.term(),
                    n.paused_until.is_some()
                ));
            }
        }
        Ok(())
    }

    /// Ticks every live node, in a random order.
    pub fn tick(&mut self) {
        let mut ids = self.live_ids();
        self.rng.shuffle(&mut ids);
        for id in ids {
            if let Some(r) = self.raw_mut(id) {
                r.tick();
            }
        }
    }

    /// Draws faults and client requests for one tick.
    pub fn chaos(&mut self) -> Check {
        let ids = self.ids();
        // Partitions.
        if self.rng.chance(40) {
            self.stats.partitions += 1;
            self.blocked.clear();
            if self.rng.chance(500) {
                // Symmetric: split the nodes in two.
                let side: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|_| self.rng.chance(500))
                    .collect();
                for &a in &side {
                    for &b in &ids {
                        if !side.contains(&b) {
                            self.blocked.insert((a, b));
                            self.blocked.insert((b, a));
                        }
                    }
                }
                self.log(|| format!("partition {side:?} | rest"));
            } else {
                // One-way links.
                for _ in 0..1 + self.rng.below(3) {
                    let a = self.rng.pick(&ids).expect("nodes");
                    let b = self.rng.pick(&ids).expect("nodes");
                    if a != b {
                        self.blocked.insert((a, b));
                    }
                }
                self.log(|| format!("one-way blocks {:?}", self.blocked));
            }
        } else if !self.blocked.is_empty() && self.rng.chance(60) {
            self.log(|| "heal partitions".into());
            self.blocked.clear();
        }
        // Crashes and restarts.
        if self.rng.chance(self.params.crash_per_mille) {
            let live = self.live_ids();
            if let Some(id) = self.rng.pick(&live) {
                let down = STEPS_PER_TICK * (2 + self.rng.below(30));
                self.crash(id, down);
            }
        }
        // Leaders crash too, soon after being elected: the schedules of
        // Raft's figure 8 (entries of older terms half replicated).
        if let Some(l) = self.leader() {
            if self.rng.chance(self.params.leader_crash_per_mille) {
                let down = STEPS_PER_TICK * (1 + self.rng.below(15));
                self.crash(l, down);
            }
        }
        for id in self.ids() {
            if self.nodes[&id].restart_at.is_some_and(|t| t <= self.now) {
                self.restart(id)?;
            }
        }
        // Pauses (SIGSTOP, a VM stall): no ticks, no messages handled, all
        // state kept, while the clock runs on. Leaders half of the time.
        if self.rng.chance(self.params.pause_per_mille) {
            let live = self.live_ids();
            let pick = match self.leader() {
                Some(l) if self.rng.chance(500) => Some(l),
                _ => self.rng.pick(&live),
            };
            if let Some(id) = pick {
                let steps = STEPS_PER_TICK * (1 + self.rng.below(40));
                self.log(|| format!("pause {id} for {steps} steps"));
                self.stats.pauses += 1;
                let until = self.now + steps;
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.paused_until = Some(until);
                }
            }
        }
        // Clients.
        if self.rng.chance(400) {
            self.propose_somewhere();
        }
        if self.rng.chance(120) {
            let live = self.live_ids();
            if let Some(id) = self.rng.pick(&live) {
                let ctx = self.next_read.to_le_bytes().to_vec();
                self.next_read += 1;
                self.checker.read_issued(ctx.clone());
                self.log(|| format!("read {} at node {id}", self.next_read - 1));
                let clock = self.clock();
                let node = self.nodes.get_mut(&id).expect("live");
                if let Some(r) = node.raw.as_mut() {
                    // A leader whose lease holds answers at once.
                    match r.lease_read_index() {
                        Some(index) if node.lease.holds(r.term(), clock) => {
                            self.stats.lease_reads += 1;
                            let rs = keel_raft::core::ReadState { index, ctx };
                            self.checker.read_answered(id, &rs)?;
                        }
                        _ => r.read_index(ctx),
                    }
                }
            }
        }
        // Membership and leadership.
        if let Some(l) = self.leader() {
            if self.rng.chance(25) {
                self.conf_change(l);
            }
            if self.rng.chance(40) {
                let voters: Vec<u64> = self.nodes[&l]
                    .raw
                    .as_ref()
                    .expect("live")
                    .conf_state()
                    .voters
                    .iter()
                    .copied()
                    .collect();
                if let Some(to) = self.rng.pick(&voters) {
                    self.log(|| format!("transfer leadership {l} -> {to}"));
                    self.stats.transfers += 1;
                    // Sometimes through a follower, which forwards it.
                    let via = if self.rng.chance(300) { to } else { l };
                    if let Some(r) = self.raw_mut(via) {
                        r.transfer_leader(to);
                    }
                }
            }
        }
        Ok(())
    }

    /// Proposes a fresh payload at the current leader (if any); returns
    /// its (index, term) if the leader accepted it.
    pub fn propose_somewhere(&mut self) -> Option<(u64, u64)> {
        let l = self.leader()?;
        let data = self.next_data.to_le_bytes().to_vec();
        self.next_data += 1;
        let raw = self.raw_mut(l)?;
        let ok = raw.propose(data.clone()).is_ok();
        let at = (raw.last_index(), raw.term());
        self.log(|| format!("propose {:?} at {l}: {ok}", data[0]));
        if ok {
            self.proposals += 1;
            Some(at)
        } else {
            None
        }
    }

    fn conf_change(&mut self, l: u64) {
        let conf = self.nodes[&l]
            .raw
            .as_ref()
            .expect("live")
            .conf_state()
            .clone();
        let learners: Vec<u64> = conf.learners.iter().copied().collect();
        let voters: Vec<u64> = conf.voters.iter().copied().collect();
        let cc = match self.rng.below(3) {
            0 if self.next_id <= 9 && conf.voters.len() + conf.learners.len() < 7 => {
                let id = self.next_id;
                ConfChange::AddLearner(id)
            }
            1 if !learners.is_empty() => {
                ConfChange::AddNode(self.rng.pick(&learners).expect("some"))
            }
            2 if voters.len() > 2 => ConfChange::RemoveNode(self.rng.pick(&voters).expect("some")),
            _ => return,
        };
        let r = self.raw_mut(l).expect("live").propose_conf_change(cc);
        self.log(|| format!("conf change {cc:?} at {l}: {r:?}"));
        if r.is_ok() {
            if let ConfChange::AddLearner(id) = cc {
                self.next_id += 1;
                self.add_node(id);
            }
        }
    }

    /// Prints every node's status (tracing).
    pub fn dump(&self) {
        for (id, n) in &self.nodes {
            match &n.raw {
                Some(r) => println!("node {id}: sm {:?} {:?}", n.sm, r.status()),
                None => println!("node {id}: down (removed: {})", n.removed),
            }
        }
    }

    /// Ends all faults: links healed, no loss, crashed members restarted.
    pub fn heal(&mut self) -> Check {
        self.log(|| "heal everything".into());
        self.chaos_on = false;
        self.blocked.clear();
        for n in self.nodes.values_mut() {
            n.paused_until = None;
        }
        self.drop_per_mille = 0;
        self.dup_per_mille = 0;
        // Raft's timing assumption: a round trip well under the election timeout.
        self.max_delay = self.max_delay.min(8);
        for id in self.ids() {
            let n = &self.nodes[&id];
            if n.raw.is_none() && !n.removed {
                self.restart(id)?;
            }
        }
        Ok(())
    }

    /// Whether every live member (in the leader's membership) applied the
    /// entry carrying `data`. Returns the number of members checked.
    pub fn applied_everywhere(&self, index: u64) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let conf = self.nodes[&l]
            .raw
            .as_ref()
            .expect("live")
            .conf_state()
            .clone();
        if self.trace {
            let st: Vec<_> = conf
                .members()
                .map(|id| {
                    (
                        id,
                        self.nodes
                            .get(&id)
                            .map(|n| (n.raw.is_some(), n.removed, n.sm.applied)),
                    )
                })
                .collect();
            self.log(|| format!("liveness: want {index} applied on {st:?}"));
        }
        let ok = conf.members().all(|id| match self.nodes.get(&id) {
            Some(n) if n.raw.is_some() => n.sm.applied >= index,
            Some(n) => n.removed,
            None => true,
        });
        ok
    }
}

fn kind_name(k: &MessageKind) -> String {
    match k {
        MessageKind::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => format!(
            "Append(prev {prev_index}/{prev_term}, {} ents, commit {commit})",
            entries.len()
        ),
        other => {
            let s = format!("{other:?}");
            s.chars().take(80).collect()
        }
    }
}
