//! The differential driver: one etcd (the reference) and one server under
//! test, the same operations applied to both in the same order, every
//! response compared.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_storage::proto::etcdserverpb::request_op::Request;
use keel_storage::proto::etcdserverpb::watch_create_request::FilterType;
use keel_storage::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
};
use serde_json::Value;

use super::gen::{prefix_end, Gen, Kind, Op};
use super::norm::{diff, event_json, exec, header_rev, show, signature, Clients};
use super::watch::{self, Watch};
use crate::{Backend, Member, MemberOpts};

/// How many distinct mismatches are collected before the run stops.
pub const MAX_MISMATCHES: usize = 20;
/// How many times the run restarts on fresh stores after the states diverged.
pub const MAX_SEGMENTS: usize = 4;
/// A full-state comparison every this many ops.
const STATE_CHECK_EVERY: usize = 250;
/// Ops into a segment at which the two late watches (from old revisions) open.
const LATE_WATCH_AT: usize = 150;
/// Ops into a segment at which the watches from a compacted and from a future
/// revision open (the first compaction happens 250–450 ops in).
const COMPACTED_WATCH_AT: usize = 600;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub ops: usize,
    /// The server compared against etcd.
    pub against: Backend,
}

impl Config {
    /// `KEEL_DIFF_SEED` (else random), `KEEL_DIFF_OPS` (else 10,000).
    pub fn from_env(against: Backend) -> Config {
        let seed = std::env::var("KEEL_DIFF_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(rand::random);
        let ops = std::env::var("KEEL_DIFF_OPS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(10_000);
        Config { seed, ops, against }
    }
}

/// One distinct mismatch (by signature) and how often it occurred.
#[derive(Debug)]
pub struct Mismatch {
    pub signature: String,
    pub count: usize,
    /// The first occurrence: op index, op, both responses, the differing fields.
    pub first: String,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub ops_run: usize,
    pub mismatches: Vec<Mismatch>,
    pub notes: Vec<String>,
    pub elapsed: Duration,
    /// Per op kind (and per etcd error message / txn outcome): how often it ran.
    pub stats: BTreeMap<String, usize>,
}

impl Report {
    fn record(&mut self, sig: String, first: impl FnOnce() -> String) {
        if let Some(m) = self.mismatches.iter_mut().find(|m| m.signature == sig) {
            m.count += 1;
            return;
        }
        let text = first();
        eprintln!(
            "\n==== differential mismatch #{} (seed {}; replay with KEEL_DIFF_SEED={}) ====\n{}\n{}",
            self.mismatches.len() + 1,
            self.seed,
            self.seed,
            sig,
            text
        );
        self.mismatches.push(Mismatch {
            signature: sig,
            count: 1,
            first: text,
        });
    }

    fn full(&self) -> bool {
        self.mismatches.len() >= MAX_MISMATCHES
    }

    /// Everything, for the failure message.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "differential run: seed {} (replay: KEEL_DIFF_SEED={}), {} ops in {:.1?}, {} distinct mismatch(es)\n",
            self.seed,
            self.seed,
            self.ops_run,
            self.elapsed,
            self.mismatches.len()
        );
        s += "op mix (etcd's outcome):";
        for (k, n) in &self.stats {
            s += &format!(" [{k}: {n}]");
        }
        s += "\n";
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        for (i, m) in self.mismatches.iter().enumerate() {
            s += &format!(
                "\n--- mismatch {} (seen {}x): {}\n{}\n",
                i + 1,
                m.count,
                m.signature,
                m.first
            );
        }
        s
    }
}

fn truncate(s: String, n: usize) -> String {
    if s.len() <= n {
        return s;
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Runs the whole differential test.
pub fn run(cfg: &Config) -> Report {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report {
        seed: cfg.seed,
        ..Default::default()
    };
    eprintln!(
        "differential: seed {} (KEEL_DIFF_SEED), {} ops (KEEL_DIFF_OPS), etcd vs {}",
        cfg.seed,
        cfg.ops,
        cfg.against.name()
    );
    let mut gen = Gen::new(cfg.seed);
    let mut i = 0;
    for seg in 0..MAX_SEGMENTS {
        if i >= cfg.ops || report.full() {
            break;
        }
        if seg > 0 {
            let note = format!("states diverged: restarting both on fresh data dirs at op {i}");
            eprintln!("differential: {note}");
            report.notes.push(note);
        }
        let mut reference = Member::start(Backend::Etcd, MemberOpts::default().name("ref"));
        let mut sut = Member::start(cfg.against, MemberOpts::default().name("sut"));
        gen.reset(i);
        i = rt.block_on(segment(
            cfg,
            seg,
            i,
            &mut gen,
            &mut reference,
            &mut sut,
            &mut report,
        ));
    }
    report.ops_run = i;
    report.elapsed = started.elapsed();
    eprintln!(
        "differential: {} ops in {:.1?}, {} distinct mismatch(es)",
        i,
        report.elapsed,
        report.mismatches.len()
    );
    report
}

struct Side {
    clients: Clients,
    watches: Vec<Watch>,
}

fn all_keys() -> (Vec<u8>, Vec<u8>) {
    (vec![0], vec![0])
}

fn watch_req(
    key: &[u8],
    end: Vec<u8>,
    start: i64,
    prev_kv: bool,
    filters: Vec<i32>,
) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec().into(),
        range_end: end.into(),
        start_revision: start,
        prev_kv,
        filters,
        ..Default::default()
    }
}

/// The watches opened at the start of a segment: (name, request).
fn early_watches() -> Vec<(String, WatchCreateRequest)> {
    let (k, e) = all_keys();
    vec![
        (
            "prefix a/".into(),
            watch_req(b"a/", prefix_end(b"a/"), 0, false, vec![]),
        ),
        (
            "all keys, prev_kv".into(),
            watch_req(&k, e, 0, true, vec![]),
        ),
        (
            "prefix b/, NODELETE".into(),
            watch_req(
                b"b/",
                prefix_end(b"b/"),
                0,
                false,
                vec![FilterType::Nodelete as i32],
            ),
        ),
        (
            "key c, prev_kv".into(),
            watch_req(b"c", Vec::new(), 0, true, vec![]),
        ),
    ]
}

/// The watches opened after [`LATE_WATCH_AT`] ops, from old revisions.
fn late_watches(cur_rev: i64) -> Vec<(String, WatchCreateRequest)> {
    let (k, e) = all_keys();
    let from = (cur_rev / 3).max(1);
    vec![
        (
            format!("all keys from rev {from}, prev_kv"),
            watch_req(&k, e, from, true, vec![]),
        ),
        (
            "prefix d/ from rev 1, NOPUT".into(),
            watch_req(
                b"d/",
                prefix_end(b"d/"),
                1,
                false,
                vec![FilterType::Noput as i32],
            ),
        ),
    ]
}

/// Watches from a compacted revision (created, then canceled with the
/// compact revision) and from a future revision.
fn compacted_watches(cur_rev: i64, compact_rev: i64) -> Vec<(String, WatchCreateRequest)> {
    let (k, e) = all_keys();
    let mut v = vec![(
        format!("all keys from future rev {}, prev_kv", cur_rev + 5),
        watch_req(&k, e.clone(), cur_rev + 5, true, vec![]),
    )];
    if compact_rev > 1 {
        v.push((
            format!("all keys from compacted rev {}", compact_rev - 1),
            watch_req(&k, e, compact_rev - 1, false, vec![]),
        ));
    }
    v
}

async fn open_watches(
    url: &str,
    list: &[(String, WatchCreateRequest)],
    into: &mut Vec<Watch>,
) -> anyhow::Result<()> {
    for (name, req) in list {
        into.push(watch::open(url, name, req.clone()).await?);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn segment(
    cfg: &Config,
    seg: usize,
    start: usize,
    gen: &mut Gen,
    reference: &mut Member,
    sut: &mut Member,
    report: &mut Report,
) -> usize {
    let sut_name = cfg.against.name();
    let mut a = Side {
        clients: Clients::connect(&reference.client_url())
            .await
            .expect("connect to etcd"),
        watches: Vec::new(),
    };
    let mut b = match Clients::connect(&sut.client_url()).await {
        Ok(c) => Side {
            clients: c,
            watches: Vec::new(),
        },
        Err(e) => {
            report.record(format!("connect: {e}"), || {
                format!("connect to {sut_name}: {e:#}")
            });
            return cfg.ops;
        }
    };
    let early = early_watches();
    open_watches(&reference.client_url(), &early, &mut a.watches)
        .await
        .expect("open etcd watches");
    if let Err(e) = open_watches(&sut.client_url(), &early, &mut b.watches).await {
        report.record(format!("watch open: {e}"), || {
            format!("opening the start-of-run watches on {sut_name}: {e:#}")
        });
    }

    let mut diverged = false;
    // Last revision at which both stores agreed (for comparing watch events after divergence).
    let mut agreed_rev = 1;
    let mut late_opened = false;
    let mut since_check = 0;
    let mut i = start;
    // The first op compares the initial state.
    if !state_check(i, &mut a, &mut b, sut_name, report, &mut agreed_rev).await {
        diverged = true;
    }
    while !diverged && i < cfg.ops && !report.full() {
        if !late_opened && i - start == LATE_WATCH_AT {
            late_opened = true;
            let late = late_watches(gen.cur_rev);
            open_watches(&reference.client_url(), &late, &mut a.watches)
                .await
                .expect("open etcd watches");
            if let Err(e) = open_watches(&sut.client_url(), &late, &mut b.watches).await {
                report.record(format!("late watch open: {e}"), || {
                    format!("opening the from-old-revision watches on {sut_name}: {e:#}")
                });
            }
        }
        if i - start == COMPACTED_WATCH_AT {
            let list = compacted_watches(gen.cur_rev, gen.compact_rev);
            open_watches(&reference.client_url(), &list, &mut a.watches)
                .await
                .expect("open etcd watches");
            if let Err(e) = open_watches(&sut.client_url(), &list, &mut b.watches).await {
                report.record(format!("compacted/future watch open: {e}"), || {
                    format!(
                        "opening the from-compacted/future-revision watches on {sut_name}: {e:#}"
                    )
                });
            }
        }
        let kind = gen.choose_kind(i);
        if kind == Kind::Txn {
            gen.live = peek(&mut a.clients).await;
        }
        let op = gen.next_op(kind);
        let (ra, rb) = tokio::join!(exec(&mut a.clients, &op), exec(&mut b.clients, &op));
        if let Some(rev) = header_rev(&ra) {
            gen.cur_rev = gen.cur_rev.max(rev);
        }
        if ra.get("error").is_none() {
            match &op {
                Op::Compact(c) => gen.compact_rev = c.revision,
                Op::LeaseGrant(g) => {
                    gen.leases.insert(g.id);
                }
                Op::LeaseRevoke(r) => {
                    gen.leases.remove(&r.id);
                }
                _ => {}
            }
        }
        let outcome = match ra.get("error") {
            Some(e) => format!(
                "{} error {}",
                op.kind(),
                e["message"].as_str().unwrap_or("?")
            ),
            None if matches!(op, Op::Txn(_)) => format!("txn succeeded={}", ra["succeeded"]),
            None => op.kind().to_string(),
        };
        *report.stats.entry(outcome).or_default() += 1;
        let same = compare_op(i, seg, &op, &ra, &rb, sut_name, report);
        if same {
            if let Some(rev) = header_rev(&ra) {
                agreed_rev = agreed_rev.max(rev);
            }
        }
        i += 1;
        if !sut.is_running() {
            let log = sut.log_tail(40);
            report.record(format!("{sut_name} process exited"), || {
                format!("{sut_name} exited during op {} ({op:?})\n{log}", i - 1)
            });
            diverged = true;
            break;
        }
        since_check += 1;
        if (!same && op.is_write()) || since_check == STATE_CHECK_EVERY {
            since_check = 0;
            diverged = !state_check(i, &mut a, &mut b, sut_name, report, &mut agreed_rev).await;
        }
    }

    // Watches: make every watch see the final revision, then compare.
    let final_rev = if diverged {
        tokio::time::sleep(Duration::from_secs(2)).await;
        agreed_rev
    } else {
        let sentinels = sentinel_ops();
        let mut last = 0;
        for op in &sentinels {
            let (ra, rb) = tokio::join!(exec(&mut a.clients, op), exec(&mut b.clients, op));
            compare_op(i, seg, op, &ra, &rb, sut_name, report);
            last = header_rev(&ra).unwrap_or(0);
        }
        last
    };
    compare_watches(&a, &b, final_rev, diverged, sut_name, report).await;
    i
}

/// A put under each watched range in one txn, then a delete under `d/` (the
/// NOPUT watch only sees deletes), so every watch has an event at the final
/// revision.
fn sentinel_ops() -> Vec<Op> {
    let put = |k: &str| RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: k.as_bytes().to_vec().into(),
            value: b"sentinel".to_vec().into(),
            ..Default::default()
        })),
    };
    vec![
        Op::Put(PutRequest {
            key: b"d/~sentinel".to_vec().into(),
            value: b"sentinel".to_vec().into(),
            ..Default::default()
        }),
        Op::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![
                put("a/~sentinel"),
                put("b/~sentinel"),
                put("c"),
                RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: b"d/~sentinel".to_vec().into(),
                        ..Default::default()
                    })),
                },
            ],
            failure: Vec::new(),
        }),
    ]
}

/// etcd's live keys (for choosing compare values that hit).
async fn peek(c: &mut Clients) -> BTreeMap<Vec<u8>, keel_storage::proto::mvccpb::KeyValue> {
    let (k, e) = all_keys();
    let req = RangeRequest {
        key: k.into(),
        range_end: e.into(),
        ..Default::default()
    };
    match c.kv.range(req).await {
        Ok(r) => r
            .into_inner()
            .kvs
            .into_iter()
            .map(|kv| (kv.key.to_vec(), kv))
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// Compares one op's responses; records a mismatch. True if equal.
fn compare_op(
    i: usize,
    seg: usize,
    op: &Op,
    ra: &Value,
    rb: &Value,
    sut_name: &str,
    report: &mut Report,
) -> bool {
    let diffs = diff(ra, rb);
    if diffs.is_empty() {
        return true;
    }
    let sig = signature(op.kind(), &diffs);
    report.record(sig, || {
        let mut s = format!(
            "op #{i} (segment {seg}): {}\netcd: {}\n{sut_name}: {}\ndiffering fields:",
            truncate(format!("{op:?}"), 3000),
            truncate(show(ra), 4000),
            truncate(show(rb), 4000),
        );
        for (p, x, y) in &diffs {
            s += &format!(
                "\n  {}: etcd={} {sut_name}={}",
                if p.is_empty() { "<response>" } else { p },
                truncate(show(x), 600),
                truncate(show(y), 600)
            );
        }
        s
    });
    false
}

/// Compares the full state (all keys, leases). False if it differs (the
/// stores diverged: everything after would mismatch).
async fn state_check(
    i: usize,
    a: &mut Side,
    b: &mut Side,
    sut_name: &str,
    report: &mut Report,
    agreed_rev: &mut i64,
) -> bool {
    let op = Op::StateCheck;
    let (ra, rb) = tokio::join!(exec(&mut a.clients, &op), exec(&mut b.clients, &op));
    let diffs = diff(&ra, &rb);
    if diffs.is_empty() {
        if let Some(r) = ra.get("all keys").and_then(header_rev) {
            *agreed_rev = (*agreed_rev).max(r);
        }
        return true;
    }
    let sig = signature("state_check", &diffs);
    report.record(sig, || {
        let mut s = format!(
            "full-state check after op #{i} differs (the stores diverged; the run restarts on fresh stores):"
        );
        for (p, x, y) in &diffs {
            s += &format!(
                "\n  {p}: etcd={} {sut_name}={}",
                truncate(show(x), 1500),
                truncate(show(y), 1500)
            );
        }
        s
    });
    false
}

async fn compare_watches(
    a: &Side,
    b: &Side,
    final_rev: i64,
    diverged: bool,
    sut_name: &str,
    report: &mut Report,
) {
    // Wait until every watch on both sides delivered up to final_rev (or ended).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = |s: &Side| {
            s.watches.iter().all(|w| {
                let l = w.log.lock().unwrap();
                l.last_rev() >= final_rev || l.canceled.is_some() || l.error.is_some()
            })
        };
        if diverged || (done(a) && done(b)) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for wa in &a.watches {
        let Some(wb) = b.watches.iter().find(|w| w.name == wa.name) else {
            continue;
        };
        let (la, lb) = (wa.log.lock().unwrap(), wb.log.lock().unwrap());
        let upto = |l: &super::watch::WatchLog| -> Vec<Value> {
            l.events
                .iter()
                .filter(|e| e.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0) <= final_rev)
                .map(event_json)
                .collect()
        };
        let (ea, eb) = (upto(&la), upto(&lb));
        *report
            .stats
            .entry(format!("watch '{}' events", wa.name))
            .or_default() += ea.len();
        if !diverged && la.error.is_none() && lb.last_rev() < final_rev && lb.canceled.is_none() {
            let got = lb.last_rev();
            let err = lb.error.clone();
            report.record(format!("watch: {sut_name} did not deliver up to the final revision"), || {
                format!(
                    "watch '{}': after 10 s {sut_name}'s last event is at revision {got} (final revision {final_rev}; etcd delivered {} events, {sut_name} {}); stream error: {err:?}",
                    wa.name,
                    ea.len(),
                    eb.len()
                )
            });
        }
        let ca = la.canceled.clone();
        let cb = lb.canceled.clone();
        // A watch from a compacted revision is cancelled with "the"
        // compaction revision, but which one depends on *when* the server
        // notices: etcd finds it in its unsynced loop, possibly after later
        // compactions; keel at once. Any compaction revision is a correct
        // answer, so both cancelling for compaction (same reason) is a match.
        let same_cancel = match (&ca, &cb) {
            (Some((ra, wa_reason)), Some((rb, wb_reason))) => {
                wa_reason == wb_reason && (ra == rb || (*ra > 0 && *rb > 0))
            }
            (a, b) => a == b,
        };
        if !same_cancel || la.error != lb.error {
            report.record(format!("watch: cancel/error differs ({})", wa.name), || {
                format!(
                    "watch '{}': etcd canceled={ca:?} error={:?}; {sut_name} canceled={cb:?} error={:?}",
                    wa.name, la.error, lb.error
                )
            });
        }
        if ea == eb {
            continue;
        }
        let first = ea
            .iter()
            .zip(&eb)
            .position(|(x, y)| x != y)
            .unwrap_or(ea.len().min(eb.len()));
        let diffs = match (ea.get(first), eb.get(first)) {
            (Some(x), Some(y)) => diff(x, y),
            _ => vec![(
                "events.len".to_string(),
                Value::from(ea.len()),
                Value::from(eb.len()),
            )],
        };
        let nd = ea.iter().zip(&eb).filter(|(x, y)| x != y).count();
        let sig = signature(&format!("watch '{}'", wa.name), &diffs);
        report.record(sig, || {
            let ctx = |v: &[Value]| {
                v[first.saturating_sub(2)..(first + 3).min(v.len())]
                    .iter()
                    .map(show)
                    .collect::<Vec<_>>()
                    .join("\n    ")
            };
            let mut s = format!(
                "watch '{}' (events up to revision {final_rev}): etcd delivered {} events, {sut_name} {}; {} positions differ; first difference at event #{first}\n  etcd events around it:\n    {}\n  {sut_name} events around it:\n    {}\n  differing fields:",
                wa.name,
                ea.len(),
                eb.len(),
                nd,
                ctx(&ea),
                ctx(&eb)
            );
            for (p, x, y) in &diffs {
                s += &format!("\n  {p}: etcd={} {sut_name}={}", show(x), show(y));
            }
            s
        });
    }
}
