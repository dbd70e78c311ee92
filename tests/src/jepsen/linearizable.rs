//! Linearizability of the whole KV history: a Wing–Gong/Lowe search with
//! memoization, as in porcupine, over etcd's state machine ([`KvState`]).
//!
//! The search (porcupine's `checkSingle`): every op becomes a call entry and
//! a return entry in one list sorted by time (calls first on ties). Walking
//! the list, a call whose op the model accepts from the current state is
//! *lifted* (removed with its return) and the walk restarts; reaching a
//! return entry means that op cannot be placed yet, so the last lifted op is
//! *unlifted* and the next candidate tried. A cache of (set of linearized
//! ops, state fingerprint) cuts every branch already explored.
//!
//! The history is not partitioned by key: the global revision couples all
//! keys, so the state is the whole store with its revision (as in etcd's
//! robustness model). Revisions are what make this fast:
//! - an acknowledged op must produce exactly its header revision, so known
//!   writes fall into place almost without branching;
//! - the state's revision may never exceed the revision of any acknowledged
//!   op not yet linearized (revisions only grow), so an op of unknown outcome
//!   is only tried where the acknowledged ops leave a revision gap.
//!
//! Outcomes: `Fail` ops and failed/unknown reads are dropped (no effect).
//! A write of unknown outcome (or that never returned) may take effect at any
//! time after its call or never: its return is at infinity and any result is
//! accepted; "never" is the same as "after every acknowledged op", so the
//! search succeeds once every acknowledged op is placed. Watches refine
//! unknown writes first (etcd's robustness does the same), assuming each put
//! value is written by one op only (values the workload makes unique):
//! - a put whose `(key, value)` shows up in a watch event at revision R took
//!   effect, at R;
//! - a put not seen by a watcher that covered its key from the first
//!   revision past the last acknowledged one never took effect (if the
//!   watcher dropped it, the watch checks report that).
//!
//! Lease expiries are ops too ([`super::expiry`]): one synthetic
//! [`Request::LeaseExpire`] per granted lease not certainly revoked, of
//! unknown outcome, called at the earliest time the lease may expire. Like
//! an unknown write it may take effect in any revision gap after its call,
//! or never; unlike one, it has a return when the lease is known gone (a
//! `LeaseTimeToLive` of -1, or a watch event deleting a key only it can
//! delete): then it must be placed before that, even if it deletes nothing.
//! A watch event pins it at its revision; one of a lease with no keys, or
//! whose keys complete watchers never saw deleted, is dropped (it changed
//! nothing before the last acknowledged revision). `LeaseExpire` ops in the
//! history itself are ignored: the checker makes its own.
//!
//! Serializable reads and reads at an old revision are not linearizable by
//! design; `checks` validates them against the order found here.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::expiry::{lease_expiries, LeaseKeys};
use super::history::{
    EventKind, History, KeyValue, Op, OpResult, Request, Response, TxnOp, TxnOpResult, WatchRecord,
};
use super::model::{Applied, KvState, Undo};
use super::result::Verdict;

/// Tunables of [`check_linearizable`].
#[derive(Clone, Debug)]
pub struct LinearizableOpts {
    /// The store's revision when the history starts (1 for a fresh store;
    /// the history's `meta["initial_revision"]` if set). The store must hold
    /// none of the history's keys then.
    pub initial_revision: i64,
    /// Give up (verdict `Unknown`) after this many search steps.
    pub max_steps: u64,
    /// Use watch logs to fix or drop writes of unknown outcome.
    pub use_watches: bool,
}

impl LinearizableOpts {
    /// Defaults for `h`: initial revision from `meta["initial_revision"]`
    /// (else 1), 100 million steps (tens of seconds at most), watches used.
    pub fn for_history(h: &History) -> LinearizableOpts {
        LinearizableOpts {
            initial_revision: h
                .meta
                .get("initial_revision")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1),
            max_steps: 100_000_000,
            use_watches: true,
        }
    }
}

/// The result of the search, kept for the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Linearization {
    /// Pass, Fail, or Unknown (step budget exhausted).
    pub verdict: Verdict,
    /// On `Pass`: op ids in a valid linearization order (acknowledged ops and
    /// the unknown-outcome writes that took effect among them). Otherwise:
    /// the longest linearizable prefix found.
    pub order: Vec<u64>,
    /// On `Fail`: the op that could not be placed after the longest prefix.
    pub stuck: Option<u64>,
    /// On `Fail`: the ops that were candidates at that point (concurrent
    /// with `stuck`, none of which fits).
    pub candidates: Vec<u64>,
    /// On `Fail`: the model state after the longest prefix.
    pub state_at_stuck: String,
    /// Ops in the search (after dropping failed ops and stale reads).
    pub ops_checked: usize,
    /// Unknown-outcome writes fixed at a revision by a watch event.
    pub pinned_by_watch: usize,
    /// Unknown-outcome writes dropped because a complete watch never saw them.
    pub dropped_by_watch: usize,
    /// The synthetic lease-expiry ops (ids after the history's): `order`,
    /// `stuck` and `candidates` may name them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expiries: Vec<Op>,
    /// How many of `expiries` were in the search (the others changed
    /// nothing: no keys, or none seen deleted by a complete watch).
    #[serde(default)]
    pub expiries_checked: usize,
    /// Search steps taken.
    pub steps: u64,
    /// One line for the summary.
    pub message: String,
}

impl Linearization {
    /// Every op the search may name, by id: the history's and the
    /// synthetic lease expiries.
    pub fn ops_by_id<'a>(&'a self, h: &'a History) -> HashMap<u64, &'a Op> {
        h.ops
            .iter()
            .chain(&self.expiries)
            .map(|o| (o.id, o))
            .collect()
    }
}

/// What the search knows about an op's outcome.
enum Outcome<'a> {
    /// Acknowledged: must produce exactly this.
    Known { revision: i64, result: &'a OpResult },
    /// May or may not have happened; if `pin` is set it did, at that
    /// revision, with that effect.
    Unknown { pin: Option<Pin<'a>> },
}

/// Where a watch saw an unknown op take effect.
#[derive(Clone, Copy)]
struct Pin<'a> {
    /// The revision it created.
    rev: i64,
    /// The `(key, value)` it put; `None` for an expiry (it deleted keys).
    put: Option<(&'a str, &'a str)>,
}

struct Prepared<'a> {
    id: u64,
    req: &'a Request,
    outcome: Outcome<'a>,
    /// The revision bound: the state's revision must stay <= this until the
    /// op is linearized (acknowledged and pinned ops): the response revision,
    /// minus one for a write that certainly changed something.
    bound: Option<i64>,
    /// An acknowledged op that may or may not have created its revision
    /// (a lease revoke: it deletes the lease's keys, if any).
    maybe_change: bool,
    /// An unknown op that certainly happened before its (finite) return: a
    /// lease expiry known to be gone. It is placed even if it changes nothing.
    must: bool,
    /// Random hashes for the linearized-set fingerprint.
    ha: u64,
    hb: u64,
}

const NIL: usize = usize::MAX;

struct Entry {
    op: usize,
    is_call: bool,
    mate: usize,
    prev: usize,
    next: usize,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `(key, value)` pairs an op may put, in any branch.
fn puts_of(req: &Request) -> Vec<(&str, &str)> {
    req.puts().into_iter().map(|(k, v, _)| (k, v)).collect()
}

/// True if the op may delete something (so a watch cannot prove it absent).
fn may_delete(req: &Request) -> bool {
    matches!(
        req,
        Request::LeaseRevoke { .. } | Request::LeaseExpire { .. }
    ) || !req.deletes().is_empty()
}

/// Watch facts used to refine unknown writes.
struct WatchFacts<'a> {
    /// `(key, value)` → revision of a put event carrying it.
    seen_puts: HashMap<(&'a str, &'a str), i64>,
    /// Keys some watcher saw deleted.
    deleted: HashSet<&'a str>,
    /// Watchers that cover from the start to at least `last_ack`:
    /// `(key, prefix)`.
    complete: Vec<(&'a str, bool)>,
}

fn watch_facts<'a>(
    h: &'a History,
    initial_revision: i64,
    last_ack: i64,
    use_watches: bool,
) -> WatchFacts<'a> {
    let mut seen_puts = HashMap::new();
    let mut deleted = HashSet::new();
    let mut complete = Vec::new();
    // Acknowledged reads name the revision that wrote what they return.
    let mut seen = |kv: &'a KeyValue| {
        seen_puts
            .entry((kv.key.as_str(), kv.value.as_str()))
            .or_insert(kv.mod_revision);
    };
    for o in &h.ops {
        let (Some(_), Response::Ok { result, .. }) = (o.return_ns, &o.resp) else {
            continue;
        };
        match result {
            OpResult::Get { kv: Some(kv) } => seen(kv),
            OpResult::Range { kvs } => kvs.iter().for_each(&mut seen),
            OpResult::Txn { results, .. } => {
                for r in results {
                    if let TxnOpResult::Get { kv: Some(kv) } = r {
                        seen(kv);
                    }
                }
            }
            _ => {}
        }
    }
    let watches = if use_watches { &h.watches[..] } else { &[] };
    for w in watches {
        let mut first_start = None;
        let mut covered = 0;
        let mut contiguous = true;
        let mut last_event = 0;
        for r in &w.records {
            match r {
                WatchRecord::Start { start_rev, .. } => {
                    if first_start.is_none() {
                        first_start = Some(*start_rev);
                    } else if *start_rev == 0 || *start_rev > last_event.max(covered) + 1 {
                        contiguous = false;
                    }
                }
                WatchRecord::Events {
                    header_revision,
                    events,
                    ..
                } => {
                    for e in events {
                        if e.kind == EventKind::Put {
                            seen_puts
                                .entry((e.kv.key.as_str(), e.kv.value.as_str()))
                                .or_insert(e.kv.mod_revision);
                        } else {
                            deleted.insert(e.kv.key.as_str());
                        }
                        last_event = last_event.max(e.kv.mod_revision);
                    }
                    covered = covered.max(*header_revision);
                }
                WatchRecord::Progress { revision, .. } => covered = covered.max(*revision),
                WatchRecord::Created { .. } | WatchRecord::End { .. } => {}
            }
        }
        let from_start = matches!(first_start, Some(s) if s >= 1 && s <= initial_revision + 1);
        if from_start && contiguous && covered >= last_ack {
            complete.push((w.key.as_str(), w.prefix));
        }
    }
    WatchFacts {
        seen_puts,
        deleted,
        complete,
    }
}

fn covers(complete: &[(&str, bool)], key: &str) -> bool {
    complete.iter().any(|(k, prefix)| {
        if *prefix {
            key.starts_with(k)
        } else {
            *k == key
        }
    })
}

/// Checks that the history's KV ops are linearizable (see the module doc).
pub fn check_linearizable(h: &History, opts: &LinearizableOpts) -> Linearization {
    let mut lin = Linearization::default();
    let last_ack = h
        .ops
        .iter()
        .filter_map(|o| o.ok_revision())
        .max()
        .unwrap_or(0);
    let facts = watch_facts(h, opts.initial_revision, last_ack, opts.use_watches);
    // How many ops put each (key, value): pins need a unique writer.
    let mut writers: HashMap<(&str, &str), usize> = HashMap::new();
    for o in &h.ops {
        if !o.is_fail() {
            for kv in puts_of(&o.req) {
                *writers.entry(kv).or_default() += 1;
            }
        }
    }
    // The synthetic expiry ops, numbered after the history's.
    let first_expiry = h.ops.iter().map(|o| o.id + 1).max().unwrap_or(0);
    let expiries = lease_expiries(h, opts.use_watches);
    lin.expiries = (0..)
        .zip(&expiries)
        .map(|(i, e)| e.op(first_expiry + i))
        .collect();
    let lease_keys = LeaseKeys::of(h);
    let expiry_ops = lin.expiries.clone();

    // Prepare the ops and their entries.
    let mut ops: Vec<Prepared> = Vec::new();
    let mut times: Vec<(u64, bool, usize)> = Vec::new(); // (time, is_return, op)
    let real = h
        .ops
        .iter()
        .filter(|o| !matches!(o.req, Request::LeaseExpire { .. }));
    for (o, expiry) in real
        .map(|o| (o, None))
        .chain(expiry_ops.iter().zip(&expiries).map(|(o, e)| (o, Some(e))))
    {
        let model_kind = matches!(
            o.req,
            Request::Get { revision: 0, .. }
                | Request::Range { revision: 0, .. }
                | Request::Put { .. }
                | Request::Delete { .. }
                | Request::Txn { .. }
                | Request::LeaseRevoke { .. }
                | Request::LeaseExpire { .. }
        );
        if !model_kind || o.req.is_serializable_read() || o.is_fail() {
            continue;
        }
        let (outcome, bound) = match (&o.resp, o.return_ns, expiry) {
            (_, _, Some(e)) => {
                if let Some(rev) = e.pin {
                    lin.pinned_by_watch += 1;
                    let pin = Pin { rev, put: None };
                    (Outcome::Unknown { pin: Some(pin) }, Some(rev - 1))
                } else {
                    // Nothing to delete, or nothing seen deleted by
                    // watches that would have seen it: it changed nothing
                    // (a known-gone lease must still die, for later puts).
                    let void = lease_keys.keys.get(&e.lease).is_none_or(|ks| {
                        ks.iter()
                            .all(|k| covers(&facts.complete, k) && !facts.deleted.contains(k))
                    });
                    if void && e.deadline_ns.is_none() {
                        continue;
                    }
                    (Outcome::Unknown { pin: None }, None)
                }
            }
            (Response::Ok { revision, result }, Some(_), None) => (
                Outcome::Known {
                    revision: *revision,
                    result,
                },
                // A write that changed something starts from revision - 1.
                Some(*revision - i64::from(changes(&o.req, result))),
            ),
            _ if !o.req.is_write() => continue, // an unknown read has no effect
            _ => {
                let mut pin = None;
                let puts = puts_of(&o.req);
                for &(k, v) in &puts {
                    if writers.get(&(k, v)) == Some(&1) {
                        if let Some(&rev) = facts.seen_puts.get(&(k, v)) {
                            pin = Some(Pin {
                                rev,
                                put: Some((k, v)),
                            });
                        }
                    }
                }
                if pin.is_some() {
                    lin.pinned_by_watch += 1;
                } else if !puts.is_empty()
                    && !may_delete(&o.req)
                    && puts.iter().all(|(k, v)| {
                        writers.get(&(*k, *v)) == Some(&1) && covers(&facts.complete, k)
                    })
                {
                    lin.dropped_by_watch += 1;
                    continue;
                }
                (Outcome::Unknown { pin }, pin.map(|p| p.rev - 1))
            }
        };
        // Acknowledged ops return when they did; an expiry when the lease
        // was known gone; other unknown ops never.
        let ret = match (&o.resp, o.return_ns, expiry) {
            (Response::Ok { .. }, Some(t), _) | (_, Some(t), Some(_)) => t,
            _ => u64::MAX,
        };
        lin.expiries_checked += usize::from(expiry.is_some());
        let i = ops.len();
        ops.push(Prepared {
            id: o.id,
            req: &o.req,
            must: expiry.is_some() && ret != u64::MAX,
            outcome,
            bound,
            maybe_change: matches!(o.req, Request::LeaseRevoke { .. }),
            ha: splitmix(o.id.wrapping_mul(2)),
            hb: splitmix(o.id.wrapping_mul(2).wrapping_add(1) ^ 0x5555),
        });
        times.push((o.call_ns, false, i));
        times.push((ret, true, i));
    }
    times.sort_by_key(|&(t, is_ret, op)| (t, is_ret, op));
    lin.ops_checked = ops.len();

    // The doubly linked list; entry 0 is the head sentinel.
    let mut entries: Vec<Entry> = Vec::with_capacity(times.len() + 1);
    entries.push(Entry {
        op: NIL,
        is_call: false,
        mate: NIL,
        prev: NIL,
        next: NIL,
    });
    let mut call_of = vec![NIL; ops.len()];
    for (idx, &(_, is_ret, op)) in times.iter().enumerate() {
        let me = idx + 1;
        let mate = if is_ret { call_of[op] } else { NIL };
        if !is_ret {
            call_of[op] = me;
        } else {
            entries[mate].mate = me;
        }
        entries.push(Entry {
            op,
            is_call: !is_ret,
            mate,
            prev: me - 1,
            next: NIL,
        });
        entries[me - 1].next = me;
    }

    let mut bounds: BTreeMap<i64, usize> = BTreeMap::new();
    let mut must_place = 0usize;
    for p in &ops {
        if let Some(b) = p.bound {
            *bounds.entry(b).or_default() += 1;
            must_place += 1;
        }
    }

    let mut state = KvState::new(opts.initial_revision);
    let mut stack: Vec<(usize, Undo)> = Vec::new();
    let (mut lin_a, mut lin_b) = (0u64, 0u64);
    let mut cache: HashSet<(u64, u64, u64)> = HashSet::new();
    // Longest prefix bookkeeping.
    let mut best: Vec<u64> = Vec::new();
    let mut low_water = 0usize;
    let mut stuck_recorded = true;

    let mut e = entries[0].next;
    let verdict = loop {
        if must_place == 0 || e == NIL {
            break Verdict::Pass;
        }
        lin.steps += 1;
        if lin.steps > opts.max_steps {
            break Verdict::Unknown;
        }
        if entries[e].is_call {
            let p = &ops[entries[e].op];
            let mut lifted = false;
            // Cheap revision test first: an acknowledged or pinned op starts
            // exactly at its bound; an unknown one must fit in a gap.
            let plausible = match p.bound {
                Some(b) if p.maybe_change => state.revision() == b || state.revision() == b - 1,
                Some(b) => state.revision() == b,
                // One that must happen may change nothing.
                None if p.must => state.revision() <= min_bound_without(&bounds, None),
                None => state.revision() < min_bound_without(&bounds, None),
            };
            if !plausible {
                // Not placeable here; try the next entry.
            } else if let Some((applied, undo)) = state.apply(p.req) {
                if accepts(p, &applied) && state.revision() <= min_bound_without(&bounds, p.bound) {
                    let (na, nb) = (lin_a ^ p.ha, lin_b ^ p.hb);
                    if cache.insert((na, nb, state.fingerprint())) {
                        lin_a = na;
                        lin_b = nb;
                        if let Some(b) = p.bound {
                            remove_bound(&mut bounds, b);
                            must_place -= 1;
                        }
                        stack.push((e, undo));
                        lift(&mut entries, e);
                        lifted = true;
                        if stack.len() > best.len() {
                            best.truncate(low_water.min(best.len()));
                            best.extend(
                                stack[best.len()..]
                                    .iter()
                                    .map(|(ce, _)| ops[entries[*ce].op].id),
                            );
                            low_water = stack.len();
                            stuck_recorded = false;
                        }
                    } else {
                        state.undo(undo);
                    }
                } else {
                    state.undo(undo);
                }
            }
            e = if lifted {
                entries[0].next
            } else {
                entries[e].next
            };
        } else {
            if !stuck_recorded && stack.len() == best.len() {
                stuck_recorded = true;
                lin.stuck = Some(ops[entries[e].op].id);
                let mut c = entries[0].next;
                lin.candidates.clear();
                while c != e && c != NIL {
                    if entries[c].is_call && lin.candidates.len() < 32 {
                        lin.candidates.push(ops[entries[c].op].id);
                    }
                    c = entries[c].next;
                }
                lin.state_at_stuck = state.describe();
            }
            let Some((ce, undo)) = stack.pop() else {
                break Verdict::Fail;
            };
            low_water = low_water.min(stack.len());
            state.undo(undo);
            let p = &ops[entries[ce].op];
            lin_a ^= p.ha;
            lin_b ^= p.hb;
            if let Some(b) = p.bound {
                *bounds.entry(b).or_default() += 1;
                must_place += 1;
            }
            unlift(&mut entries, ce);
            e = entries[ce].next;
        }
    };

    lin.verdict = verdict;
    match verdict {
        Verdict::Pass => {
            lin.order = stack
                .iter()
                .map(|(ce, _)| ops[entries[*ce].op].id)
                .collect();
            lin.stuck = None;
            lin.candidates.clear();
            lin.state_at_stuck.clear();
            lin.message = format!(
                "linearizable: {} ops ({} pinned, {} dropped by watches; {} of {} lease expiries), {} steps",
                lin.ops_checked,
                lin.pinned_by_watch,
                lin.dropped_by_watch,
                lin.expiries_checked,
                lin.expiries.len(),
                lin.steps
            );
        }
        Verdict::Fail => {
            lin.order = best;
            lin.message = format!(
                "not linearizable: longest prefix {} of {} ops; op {} cannot be placed",
                lin.order.len(),
                lin.ops_checked,
                lin.stuck.map_or("?".into(), |s| s.to_string())
            );
        }
        Verdict::Unknown => {
            lin.order = best;
            lin.message = format!(
                "undecided: step budget {} exhausted (longest prefix {} of {} ops)",
                opts.max_steps,
                lin.order.len(),
                lin.ops_checked
            );
        }
    }
    lin
}

/// True if an acknowledged op with this result certainly created a revision.
fn changes(req: &Request, result: &OpResult) -> bool {
    match (req, result) {
        (Request::Put { .. }, _) => true,
        (Request::Delete { .. }, OpResult::Delete { deleted }) => *deleted > 0,
        (
            Request::Txn {
                success, failure, ..
            },
            OpResult::Txn { succeeded, results },
        ) => {
            let branch = if *succeeded { success } else { failure };
            branch.iter().zip(results).any(|(op, r)| match (op, r) {
                (TxnOp::Put { .. }, _) => true,
                (TxnOp::Delete { .. }, TxnOpResult::Delete { deleted }) => *deleted > 0,
                _ => false,
            })
        }
        _ => false,
    }
}

fn accepts(p: &Prepared, applied: &Applied) -> bool {
    match &p.outcome {
        Outcome::Known { revision, result } => {
            applied.revision == *revision && applied.result == **result
        }
        // Taking effect without changing anything is the same as never
        // taking effect; skipping it keeps such ops out of the search
        // (unless it must take effect: a known-gone lease's expiry).
        Outcome::Unknown { pin: None } => p.must || !applied.events.is_empty(),
        Outcome::Unknown { pin: Some(pin) } => {
            applied.revision == pin.rev
                && match pin.put {
                    Some((key, value)) => applied.events.iter().any(|e| {
                        e.kind == EventKind::Put && e.kv.key == key && e.kv.value == value
                    }),
                    None => !applied.events.is_empty(),
                }
        }
    }
}

/// The smallest bound in `bounds` once `own` (the op's own bound) is taken out.
fn min_bound_without(bounds: &BTreeMap<i64, usize>, own: Option<i64>) -> i64 {
    let mut it = bounds.iter();
    match it.next() {
        None => i64::MAX,
        Some((&b, &n)) if Some(b) == own && n == 1 => it.next().map_or(i64::MAX, |(&b, _)| b),
        Some((&b, _)) => b,
    }
}

fn remove_bound(bounds: &mut BTreeMap<i64, usize>, b: i64) {
    let n = bounds.get_mut(&b).expect("bound present");
    *n -= 1;
    if *n == 0 {
        bounds.remove(&b);
    }
}

fn lift(entries: &mut [Entry], e: usize) {
    let (prev, next) = (entries[e].prev, entries[e].next);
    entries[prev].next = next;
    if next != NIL {
        entries[next].prev = prev;
    }
    let m = entries[e].mate;
    let (prev, next) = (entries[m].prev, entries[m].next);
    entries[prev].next = next;
    if next != NIL {
        entries[next].prev = prev;
    }
}

fn unlift(entries: &mut [Entry], e: usize) {
    let m = entries[e].mate;
    let (prev, next) = (entries[m].prev, entries[m].next);
    entries[prev].next = m;
    if next != NIL {
        entries[next].prev = m;
    }
    let (prev, next) = (entries[e].prev, entries[e].next);
    entries[prev].next = e;
    if next != NIL {
        entries[next].prev = e;
    }
}
