//! Every checker over a [`History`], and [`check_all`] which runs them all.
//!
//! Besides linearizability ([`super::linearizable`]):
//! - **watch guarantees** (etcd's API guarantees, and etcd's
//!   `tests/robustness/validate/watch.go`), per watch stream, against the
//!   KV event history ([`KvEvents`]): `ordered`, `unique`, `atomic`,
//!   `reliable`, `resumable`, `bookmarkable`, and `valid` (every event is one
//!   the KV history produced);
//! - **revision monotonic**: a member's revision never goes backwards, even
//!   across crashes (status samples and op header revisions by member), nor a
//!   client's (linearizable ops);
//! - **serializable reads**: a serializable read (or a read at an old
//!   revision) returns the state of the linearized history at its revision;
//! - **lease keys gone**: after a lease is revoked (or seen expired), no read
//!   returns a key attached to it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::expiry::lease_expiries;
use super::history::{
    EventKind, History, KeyValue, Op, OpResult, Request, Response, TxnOp, TxnOpResult, WatchEvent,
    WatchLog, WatchRecord,
};
use super::linearizable::{check_linearizable, LinearizableOpts, Linearization};
use super::model::KvState;
use super::result::{CheckOutcome, CheckResult, Verdict, Violation};

/// The checkers' names, as they appear in [`CheckResult`].
pub mod names {
    /// KV ops are linearizable.
    pub const LINEARIZABLE: &str = "linearizable";
    /// Watch events of a stream come in revision order.
    pub const WATCH_ORDERED: &str = "watch-ordered";
    /// No watch event is delivered twice in a stream.
    pub const WATCH_UNIQUE: &str = "watch-unique";
    /// All events of one revision arrive in one response.
    pub const WATCH_ATOMIC: &str = "watch-atomic";
    /// No event is skipped between the start and the last received revision.
    pub const WATCH_RELIABLE: &str = "watch-reliable";
    /// A resumed stream continues from its start revision, nothing missing.
    pub const WATCH_RESUMABLE: &str = "watch-resumable";
    /// A progress notification at R comes after every event <= R.
    pub const WATCH_BOOKMARKABLE: &str = "watch-bookmarkable";
    /// Every event is one the KV history produced (same key, value, revs).
    pub const WATCH_VALID: &str = "watch-valid";
    /// Revisions never go backwards (per member, across crashes; per client).
    pub const REVISION_MONOTONIC: &str = "revision-monotonic";
    /// Serializable / old-revision reads match the history at their revision.
    pub const SERIALIZABLE_READS: &str = "serializable-reads";
    /// Keys of a revoked or expired lease are gone.
    pub const LEASE_KEYS_GONE: &str = "lease-keys-gone";
}

/// Runs every checker on `h` with default options.
pub fn check_all(h: &History) -> CheckResult {
    check_all_with(h, &LinearizableOpts::for_history(h))
}

/// Runs every checker on `h`, the linearizability search with `opts`.
pub fn check_all_with(h: &History, opts: &LinearizableOpts) -> CheckResult {
    let lin = check_linearizable(h, opts);
    let mut outcomes = vec![linearizable_outcome(&lin)];
    let events = KvEvents::build(h, &lin, opts.initial_revision);
    outcomes.extend(check_watches(h, &events));
    outcomes.push(check_revision_monotonic(h));
    outcomes.push(check_serializable_reads(h, &lin, opts.initial_revision));
    outcomes.push(check_lease_keys_gone(h));
    CheckResult {
        outcomes,
        linearization: Some(lin),
    }
}

fn linearizable_outcome(lin: &Linearization) -> CheckOutcome {
    let violations = match (lin.verdict, lin.stuck) {
        (Verdict::Fail, stuck) => {
            let mut ops: Vec<u64> = stuck.into_iter().collect();
            ops.extend(lin.candidates.iter().copied());
            vec![Violation::ops(
                format!("{}; model state there: {}", lin.message, lin.state_at_stuck),
                ops,
            )]
        }
        _ => Vec::new(),
    };
    CheckOutcome {
        name: names::LINEARIZABLE.into(),
        verdict: lin.verdict,
        violations,
        note: lin.message.clone(),
    }
}

/// The KV history as watch events, by revision: what every watcher should
/// see.
///
/// Built by replaying the linearization when one was found (every revision
/// up to the last placed write is known, with full key-values); otherwise
/// from the acknowledged writes alone (only their revisions are known, and
/// only key, value and mod_revision are compared).
#[derive(Clone, Debug, Default)]
pub struct KvEvents {
    /// Events of each revision, in order.
    pub by_rev: BTreeMap<i64, Vec<WatchEvent>>,
    /// Revisions whose events are completely known (a revision with no
    /// entry in `by_rev` but in here has no events: impossible for etcd,
    /// since only changes create revisions).
    pub known: BTreeSet<i64>,
    /// True if events carry full key-values (create_revision, version,
    /// lease, prev_kv) worth comparing.
    pub full: bool,
    /// `(key, value)` pairs any not-failed op may have put.
    pub puts: HashSet<(String, String)>,
}

impl KvEvents {
    /// Builds the event history of `h` (see the type doc).
    pub fn build(h: &History, lin: &Linearization, initial_revision: i64) -> KvEvents {
        let mut ev = KvEvents::default();
        for o in h.ops.iter().filter(|o| !o.is_fail()) {
            for (k, v, _) in o.req.puts() {
                ev.puts.insert((k.into(), v.into()));
            }
        }
        if lin.verdict == Verdict::Pass {
            ev.full = true;
            let by_id = lin.ops_by_id(h);
            let mut state = KvState::new(initial_revision);
            for id in &lin.order {
                if let Some((applied, _)) = state.apply(&by_id[id].req) {
                    if !applied.events.is_empty() {
                        ev.known.insert(applied.revision);
                        ev.by_rev.insert(applied.revision, applied.events);
                    }
                }
            }
            return ev;
        }
        for o in &h.ops {
            let Some(rev) = o.ok_revision() else { continue };
            let Response::Ok { result, .. } = &o.resp else {
                continue;
            };
            let mut events = Vec::new();
            let ev_of = |kind, key: &str, value: &str| WatchEvent {
                kind,
                kv: KeyValue {
                    key: key.into(),
                    value: value.into(),
                    mod_revision: rev,
                    create_revision: 0,
                    version: 0,
                    lease: 0,
                },
                prev_kv: None,
            };
            match (&o.req, result) {
                (Request::Put { key, value, .. }, _) => {
                    events.push(ev_of(EventKind::Put, key, value))
                }
                (Request::Delete { key }, OpResult::Delete { deleted: 1 }) => {
                    events.push(ev_of(EventKind::Delete, key, ""))
                }
                (
                    Request::Txn {
                        success, failure, ..
                    },
                    OpResult::Txn { succeeded, results },
                ) => {
                    let branch = if *succeeded { success } else { failure };
                    for (op, r) in branch.iter().zip(results) {
                        match (op, r) {
                            (TxnOp::Put { key, value, .. }, _) => {
                                events.push(ev_of(EventKind::Put, key, value))
                            }
                            (TxnOp::Delete { key }, TxnOpResult::Delete { deleted: 1 }) => {
                                events.push(ev_of(EventKind::Delete, key, ""))
                            }
                            _ => {}
                        }
                    }
                }
                _ => continue,
            }
            if !events.is_empty() {
                ev.known.insert(rev);
                ev.by_rev.insert(rev, events);
            }
        }
        ev
    }

    /// The expected events at `rev` within the watched range, if `rev` is
    /// known.
    fn at(&self, rev: i64, w: &WatchLog) -> Option<Vec<&WatchEvent>> {
        if !self.known.contains(&rev) {
            return None;
        }
        Some(
            self.by_rev
                .get(&rev)
                .map(|evs| evs.iter().filter(|e| in_range(w, &e.kv.key)).collect())
                .unwrap_or_default(),
        )
    }

    /// Known revisions in `[from, to]` with at least one event in range.
    fn revs_in(&self, w: &WatchLog, from: i64, to: i64) -> Vec<i64> {
        if from > to {
            return Vec::new();
        }
        self.by_rev
            .range(from..=to)
            .filter(|(_, evs)| evs.iter().any(|e| in_range(w, &e.kv.key)))
            .map(|(r, _)| *r)
            .collect()
    }

    fn matches(&self, exp: &WatchEvent, got: &WatchEvent) -> bool {
        let basic = exp.kind == got.kind
            && exp.kv.key == got.kv.key
            && exp.kv.mod_revision == got.kv.mod_revision
            && (exp.kind == EventKind::Delete || exp.kv.value == got.kv.value);
        if !basic || !self.full {
            return basic;
        }
        let kv_ok = exp.kind == EventKind::Delete || exp.kv == got.kv;
        let prev_ok = got.prev_kv.is_none() || got.prev_kv == exp.prev_kv;
        kv_ok && prev_ok
    }
}

fn in_range(w: &WatchLog, key: &str) -> bool {
    if w.prefix {
        key.starts_with(&w.key)
    } else {
        key == w.key
    }
}

fn ev_str(e: &WatchEvent) -> String {
    match e.kind {
        EventKind::Put => format!("put {}={:?}@{}", e.kv.key, e.kv.value, e.kv.mod_revision),
        EventKind::Delete => format!("delete {}@{}", e.kv.key, e.kv.mod_revision),
    }
}

/// One watch stream: a `Start` up to the next `Start`.
struct Stream<'a> {
    start_rev: i64,
    /// Index of this stream in the watcher's log (0 = first).
    index: usize,
    created: Option<i64>,
    /// Records after the start, in order.
    records: Vec<&'a WatchRecord>,
    /// The previous stream ended with a compaction cancel.
    after_compaction: bool,
}

fn streams(w: &WatchLog) -> Vec<Stream<'_>> {
    let mut out: Vec<Stream> = Vec::new();
    let mut compacted = false;
    for r in &w.records {
        match r {
            WatchRecord::Start { start_rev, .. } => {
                out.push(Stream {
                    start_rev: *start_rev,
                    index: out.len(),
                    created: None,
                    records: Vec::new(),
                    after_compaction: compacted,
                });
                compacted = false;
            }
            WatchRecord::Created {
                header_revision, ..
            } => {
                if let Some(s) = out.last_mut() {
                    s.created = Some(*header_revision);
                }
            }
            WatchRecord::End {
                compact_revision, ..
            } => compacted = *compact_revision > 0,
            _ => {
                if let Some(s) = out.last_mut() {
                    s.records.push(r);
                }
            }
        }
    }
    out
}

/// The watch checks; one outcome per guarantee.
pub fn check_watches(h: &History, kv: &KvEvents) -> Vec<CheckOutcome> {
    let mut v: BTreeMap<&str, Vec<Violation>> = BTreeMap::new();
    for name in [
        names::WATCH_ORDERED,
        names::WATCH_UNIQUE,
        names::WATCH_ATOMIC,
        names::WATCH_RELIABLE,
        names::WATCH_RESUMABLE,
        names::WATCH_BOOKMARKABLE,
        names::WATCH_VALID,
    ] {
        v.insert(name, Vec::new());
    }
    // Cross-watcher consistency for revisions the KV history does not know.
    let mut observed: HashMap<(i64, String), (u32, WatchEvent)> = HashMap::new();
    let mut streams_checked = 0;
    let mut events_checked = 0;
    for w in &h.watches {
        let id = w.watcher;
        let mut last_delivered: i64 = 0;
        for s in streams(w) {
            streams_checked += 1;
            // Where this stream's completeness starts.
            let first_event = s.records.iter().find_map(|r| match r {
                WatchRecord::Events { events, .. } => events.first().map(|e| e.kv.mod_revision),
                _ => None,
            });
            let from = if s.start_rev > 0 {
                Some(s.start_rev)
            } else {
                s.created.map(|c| c + 1)
            };
            // Where the stream picked up, for the resume check: without a
            // created header a "from now" stream is judged by its first event.
            let resumed_at = from.or(first_event);
            // A resume must not skip what the previous stream did not deliver.
            if let (true, Some(from)) = (
                s.index > 0 && !s.after_compaction && last_delivered > 0,
                resumed_at,
            ) {
                let skipped = kv.revs_in(w, last_delivered + 1, from - 1);
                if !skipped.is_empty() {
                    v.get_mut(names::WATCH_RESUMABLE).unwrap().push(Violation::watch(
                        id,
                        format!(
                            "stream {} resumed from {} after delivering up to {}: revisions {:?} skipped",
                            s.index, from, last_delivered, skipped
                        ),
                    ));
                }
            }
            let gap_check = if s.index == 0 {
                names::WATCH_RELIABLE
            } else {
                names::WATCH_RESUMABLE
            };
            let mut seen: HashSet<(i64, String)> = HashSet::new();
            let mut delivered_revs: BTreeSet<i64> = BTreeSet::new();
            let mut last: Option<(i64, usize)> = None; // (revision, response index)
            let mut max_rev = 0;
            for (ri, r) in s.records.iter().enumerate() {
                match r {
                    WatchRecord::Events { events, .. } => {
                        let mut revs_here: BTreeSet<i64> = BTreeSet::new();
                        for e in events {
                            events_checked += 1;
                            let rev = e.kv.mod_revision;
                            let k = (rev, e.kv.key.clone());
                            if !seen.insert(k.clone()) {
                                v.get_mut(names::WATCH_UNIQUE)
                                    .unwrap()
                                    .push(Violation::watch(
                                        id,
                                        format!(
                                            "stream {}: {} delivered twice",
                                            s.index,
                                            ev_str(e)
                                        ),
                                    ));
                                continue;
                            }
                            if let Some((lrev, lri)) = last {
                                if rev < lrev {
                                    v.get_mut(names::WATCH_ORDERED).unwrap().push(
                                        Violation::watch(
                                            id,
                                            format!(
                                                "stream {}: {} after an event at revision {}",
                                                s.index,
                                                ev_str(e),
                                                lrev
                                            ),
                                        ),
                                    );
                                } else if rev == lrev && lri != ri {
                                    v.get_mut(names::WATCH_ATOMIC)
                                        .unwrap()
                                        .push(Violation::watch(
                                            id,
                                            format!(
                                                "stream {}: revision {} split across responses",
                                                s.index, rev
                                            ),
                                        ));
                                }
                            }
                            if from.is_some_and(|f| rev < f) {
                                v.get_mut(names::WATCH_ORDERED)
                                    .unwrap()
                                    .push(Violation::watch(
                                        id,
                                        format!(
                                            "stream {}: {} is before the start revision {}",
                                            s.index,
                                            ev_str(e),
                                            from.unwrap_or(0)
                                        ),
                                    ));
                            }
                            last = Some((rev.max(last.map_or(0, |l| l.0)), ri));
                            max_rev = max_rev.max(rev);
                            revs_here.insert(rev);
                            delivered_revs.insert(rev);
                            if !in_range(w, &e.kv.key) {
                                v.get_mut(names::WATCH_VALID)
                                    .unwrap()
                                    .push(Violation::watch(
                                        id,
                                        format!("{} is outside the watched range", ev_str(e)),
                                    ));
                            }
                            // Valid: the event is one the history produced.
                            match kv.at(rev, w) {
                                Some(exp) => {
                                    if !exp.iter().any(|x| kv.matches(x, e)) {
                                        let want: Vec<String> =
                                            exp.iter().map(|x| ev_str(x)).collect();
                                        v.get_mut(names::WATCH_VALID).unwrap().push(
                                            Violation::watch(
                                                id,
                                                format!(
                                                    "{} does not match the history at revision {}: {:?}",
                                                    ev_str(e),
                                                    rev,
                                                    want
                                                ),
                                            ),
                                        );
                                    }
                                }
                                None => {
                                    if e.kind == EventKind::Put
                                        && !kv
                                            .puts
                                            .contains(&(e.kv.key.clone(), e.kv.value.clone()))
                                    {
                                        v.get_mut(names::WATCH_VALID).unwrap().push(
                                            Violation::watch(
                                                id,
                                                format!("{}: no op wrote this value", ev_str(e)),
                                            ),
                                        );
                                    }
                                    let key = (rev, e.kv.key.clone());
                                    match observed.get(&key) {
                                        Some((other, oe))
                                            if oe.kind != e.kind
                                                || (e.kind == EventKind::Put
                                                    && oe.kv.value != e.kv.value) =>
                                        {
                                            v.get_mut(names::WATCH_VALID).unwrap().push(
                                                Violation::watch(
                                                    id,
                                                    format!(
                                                        "{} but watcher {} saw {}",
                                                        ev_str(e),
                                                        other,
                                                        ev_str(oe)
                                                    ),
                                                ),
                                            );
                                        }
                                        Some(_) => {}
                                        None => {
                                            observed.insert(key, (id, e.clone()));
                                        }
                                    }
                                }
                            }
                        }
                        // Atomic: every in-range event of each revision here.
                        for rev in revs_here {
                            if let Some(exp) = kv.at(rev, w) {
                                let got =
                                    events.iter().filter(|e| e.kv.mod_revision == rev).count();
                                if got < exp.len() {
                                    v.get_mut(names::WATCH_ATOMIC).unwrap().push(Violation::watch(
                                        id,
                                        format!(
                                            "stream {}: revision {} delivered {} of its {} events in one response",
                                            s.index,
                                            rev,
                                            got,
                                            exp.len()
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                    WatchRecord::Progress { revision, .. } => {
                        // Bookmark: everything up to `revision` came before.
                        if let Some(f) = from {
                            let missing: Vec<i64> = kv
                                .revs_in(w, f, *revision)
                                .into_iter()
                                .filter(|r| !delivered_revs.contains(r))
                                .collect();
                            if !missing.is_empty() {
                                v.get_mut(names::WATCH_BOOKMARKABLE).unwrap().push(
                                    Violation::watch(
                                        id,
                                        format!(
                                            "stream {}: progress at {} before the events of revisions {:?}",
                                            s.index, revision, missing
                                        ),
                                    ),
                                );
                            }
                        }
                        let later: Vec<i64> = s.records[ri + 1..]
                            .iter()
                            .filter_map(|r| match r {
                                WatchRecord::Events { events, .. } => Some(events),
                                _ => None,
                            })
                            .flatten()
                            .map(|e| e.kv.mod_revision)
                            .filter(|r| r <= revision)
                            .collect();
                        if !later.is_empty() {
                            v.get_mut(names::WATCH_BOOKMARKABLE).unwrap().push(Violation::watch(
                                id,
                                format!(
                                    "stream {}: progress at {} followed by events of revisions {:?}",
                                    s.index, revision, later
                                ),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            // Reliable: no revision in range skipped between start and last.
            if let Some(f) = from {
                let missing: Vec<i64> = kv
                    .revs_in(w, f, max_rev)
                    .into_iter()
                    .filter(|r| !delivered_revs.contains(r))
                    .collect();
                if !missing.is_empty() {
                    v.get_mut(gap_check).unwrap().push(Violation::watch(
                        id,
                        format!(
                            "stream {} (from {}): events of revisions {:?} never delivered (last delivered {})",
                            s.index, f, missing, max_rev
                        ),
                    ));
                }
            }
            last_delivered = last_delivered.max(max_rev);
        }
    }
    let note = format!(
        "{} watchers, {} streams, {} events against {} known revisions{}",
        h.watches.len(),
        streams_checked,
        events_checked,
        kv.known.len(),
        if kv.full {
            ""
        } else {
            " (acknowledged writes only)"
        }
    );
    v.into_iter()
        .map(|(name, vs)| CheckOutcome::from_violations(name, vs, note.clone()))
        .collect()
}

/// Revisions never go backwards: per member (status samples and the header
/// revisions of ops it served, ordered in real time, across crashes) and
/// per client for linearizable ops.
pub fn check_revision_monotonic(h: &History) -> CheckOutcome {
    // label (member or client) → (call, return, revision, op id)
    type Point = (u64, u64, i64, Option<u64>);
    let mut groups: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for o in &h.ops {
        let (Some(rev), Some(ret)) = (o.ok_revision(), o.return_ns) else {
            continue;
        };
        if matches!(
            o.req,
            Request::LeaseGrant { .. }
                | Request::LeaseKeepAlive { .. }
                | Request::LeaseTimeToLive { .. }
                | Request::LeaseRevoke { .. }
        ) {
            continue;
        }
        if let Some(m) = &o.member {
            groups.entry(format!("member {m}")).or_default().push((
                o.call_ns,
                ret,
                rev,
                Some(o.id),
            ));
        }
        if !o.req.is_serializable_read() {
            groups
                .entry(format!("client {}", o.client))
                .or_default()
                .push((o.call_ns, ret, rev, Some(o.id)));
        }
    }
    for s in &h.status {
        groups
            .entry(format!("member {}", s.member))
            .or_default()
            .push((s.call_ns, s.returned_ns(), s.revision, None));
    }
    let kills: Vec<(u64, &[String])> = h
        .faults
        .iter()
        .filter(|f| f.kind == "kill" || f.kind == "crash")
        .map(|f| (f.start_ns, f.members.as_slice()))
        .collect();
    let mut violations = Vec::new();
    for (label, mut items) in groups {
        // Sweep: for each item by call time, the max revision among items
        // that returned before it was called.
        let mut by_ret: Vec<usize> = (0..items.len()).collect();
        items.sort_by_key(|x| (x.0, x.1));
        by_ret.sort_by_key(|&i| items[i].1);
        let mut j = 0;
        let mut best: Option<usize> = None;
        for i in 0..items.len() {
            while j < by_ret.len() && items[by_ret[j]].1 < items[i].0 {
                let k = by_ret[j];
                if best.is_none_or(|b| items[k].2 > items[b].2) {
                    best = Some(k);
                }
                j += 1;
            }
            if let Some(b) = best {
                if items[i].2 < items[b].2 {
                    let (before, after) = (items[b], items[i]);
                    let crashed = kills.iter().any(|(t, ms)| {
                        *t > before.1
                            && *t < after.0
                            && label
                                .strip_prefix("member ")
                                .is_some_and(|m| ms.iter().any(|x| x == m))
                    });
                    violations.push(Violation::ops(
                        format!(
                            "{label}: revision {} at {} ns after {} at {} ns{}",
                            after.2,
                            after.0,
                            before.2,
                            before.1,
                            if crashed { " (across a crash)" } else { "" }
                        ),
                        before.3.into_iter().chain(after.3).collect(),
                    ));
                    if violations.len() > 100 {
                        break;
                    }
                }
            }
        }
    }
    CheckOutcome::from_violations(
        names::REVISION_MONOTONIC,
        violations,
        format!(
            "{} status samples, {} faults",
            h.status.len(),
            h.faults.len()
        ),
    )
}

/// Serializable reads and reads at an old revision return the state of the
/// linearized history at their revision. Needs a linearization (`Unknown`
/// without one).
pub fn check_serializable_reads(
    h: &History,
    lin: &Linearization,
    initial_revision: i64,
) -> CheckOutcome {
    // (target revision, op)
    let mut reads: Vec<(i64, &Op)> = Vec::new();
    for o in &h.ops {
        let Some(hdr) = o.ok_revision() else { continue };
        let target = match o.req.read_options() {
            Some((_, revision)) if revision != 0 => revision,
            Some((true, _)) => hdr,
            _ => continue,
        };
        reads.push((target, o));
    }
    if reads.is_empty() {
        return CheckOutcome::from_violations(
            names::SERIALIZABLE_READS,
            Vec::new(),
            "no serializable reads".into(),
        );
    }
    if lin.verdict != Verdict::Pass {
        return CheckOutcome {
            name: names::SERIALIZABLE_READS.into(),
            verdict: Verdict::Unknown,
            violations: Vec::new(),
            note: format!("{} reads not checked: no linearization", reads.len()),
        };
    }
    reads.sort_by_key(|(t, o)| (*t, o.id));
    let by_id = lin.ops_by_id(h);
    let mut state = KvState::new(initial_revision);
    let mut violations = Vec::new();
    let mut order = lin.order.iter().peekable();
    let (mut checked, mut skipped) = (0, 0);
    for (target, o) in reads {
        if target < initial_revision {
            skipped += 1;
            continue;
        }
        // Advance to the last state whose revision is <= target.
        while let Some(id) = order.peek() {
            let req = &by_id[*id].req;
            let mut probe = state.clone();
            match probe.apply(req) {
                Some((a, _)) if a.revision <= target => {
                    state = probe;
                    order.next();
                }
                Some(_) => break,
                None => {
                    order.next();
                }
            }
        }
        if state.revision() != target {
            skipped += 1; // beyond the linearized writes
            continue;
        }
        checked += 1;
        let want = match &o.req {
            Request::Get { key, .. } => OpResult::Get {
                kv: state.get(key).cloned(),
            },
            Request::Range { prefix, .. } => OpResult::Range {
                kvs: state.range(prefix),
            },
            _ => unreachable!("only reads collected"),
        };
        if let Response::Ok { result, .. } = &o.resp {
            if *result != want {
                violations.push(Violation::ops(
                    format!(
                        "read at revision {target} returned {result:?}, the history has {want:?}"
                    ),
                    vec![o.id],
                ));
            }
        }
    }
    CheckOutcome::from_violations(
        names::SERIALIZABLE_READS,
        violations,
        format!("{checked} reads checked, {skipped} beyond the linearized history"),
    )
}

/// After a lease is revoked (an acknowledged `LeaseRevoke`) or seen gone (a
/// `LeaseTimeToLive` with ttl -1, or a watch event deleting a key only its
/// expiry can delete, see [`super::expiry`]), no read called later returns a
/// key attached to it (by its `lease` field, or by a value put with that
/// lease). And no lease is gone, unrevoked, before its TTL could run out.
pub fn check_lease_keys_gone(h: &History) -> CheckOutcome {
    let mut violations = Vec::new();
    // lease → (time it was known gone, revision if known, op id if any)
    let mut gone: BTreeMap<i64, (u64, Option<i64>, Option<u64>)> = BTreeMap::new();
    let mut note_gone = |id: i64, at: (u64, Option<i64>, Option<u64>)| {
        let e = gone.entry(id).or_insert(at);
        if at.0 < e.0 {
            *e = at;
        }
    };
    for e in lease_expiries(h, true) {
        if e.early() {
            violations.push(Violation::ops(
                format!(
                    "lease {:x} gone at {} ns, before its TTL could run out ({} ns), and not revoked",
                    e.lease,
                    e.deadline_ns.unwrap_or(0),
                    e.earliest_ns
                ),
                e.proof.into_iter().collect(),
            ));
        }
        if let (Some(rev), Some(t)) = (e.pin, e.deadline_ns) {
            note_gone(e.lease, (t, Some(rev), e.proof));
        }
    }
    for o in &h.ops {
        let (Some(ret), Response::Ok { revision, result }) = (o.return_ns, &o.resp) else {
            continue;
        };
        let (id, rev) = match (&o.req, result) {
            (Request::LeaseRevoke { id }, _) => (*id, Some(*revision)),
            (Request::LeaseTimeToLive { id }, OpResult::LeaseTimeToLive { ttl: -1 }) => (*id, None),
            _ => continue,
        };
        note_gone(id, (ret, rev, Some(o.id)));
    }
    // Values put with each lease.
    let mut lease_values: HashMap<(&str, &str), i64> = HashMap::new();
    for o in h.ops.iter().filter(|o| !o.is_fail()) {
        for (k, v, l) in o.req.puts() {
            if l != 0 {
                lease_values.insert((k, v), l);
            }
        }
    }
    let mut checked = 0;
    for o in &h.ops {
        let Some(hdr) = o.ok_revision() else { continue };
        let Response::Ok { result, .. } = &o.resp else {
            continue;
        };
        let (serializable, at_rev) = match (&o.req, o.req.read_options()) {
            (_, Some(options)) => options,
            (Request::Txn { .. }, _) => (false, 0),
            _ => continue,
        };
        if at_rev != 0 {
            continue; // reads of the past may see the keys
        }
        let kvs: Vec<&KeyValue> = match result {
            OpResult::Get { kv } => kv.iter().collect(),
            OpResult::Range { kvs } => kvs.iter().collect(),
            OpResult::Txn { results, .. } => results
                .iter()
                .filter_map(|r| match r {
                    TxnOpResult::Get { kv } => kv.as_ref(),
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        checked += 1;
        for kv in kvs {
            let lease = if kv.lease != 0 {
                kv.lease
            } else {
                match lease_values.get(&(kv.key.as_str(), kv.value.as_str())) {
                    Some(l) => *l,
                    None => continue,
                }
            };
            let Some((t, rev, by)) = gone.get(&lease) else {
                continue;
            };
            // A serializable read may lag unless it is at/after the revoke.
            let after = if serializable {
                rev.is_some_and(|r| hdr >= r) && o.call_ns > *t
            } else {
                o.call_ns > *t
            };
            if after {
                let by_what =
                    by.map_or("a watch saw its keys deleted".into(), |b| format!("op {b}"));
                violations.push(Violation::ops(
                    format!(
                        "{} (lease {lease:x}) read after the lease was gone ({by_what})",
                        kv.key
                    ),
                    by.iter().copied().chain([o.id]).collect(),
                ));
            }
        }
    }
    CheckOutcome::from_violations(
        names::LEASE_KEYS_GONE,
        violations,
        format!("{} leases gone, {checked} reads checked", gone.len()),
    )
}
