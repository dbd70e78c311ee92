//! The jepsen checkers against known-bad and known-good histories.
//!
//! Pure and fast: no processes. Each bad history is a valid one with one
//! thing broken, and the test asserts the checker meant to catch it does.
//! Valid histories come from a sequential simulation of etcd ([`Sim`]) whose
//! ops are given random overlapping intervals around their linearization
//! points, so the accepting side is not trivial either.

use keel_tests::jepsen::checks::{check_all, names};
use keel_tests::jepsen::history::{
    CmpOp, CmpTarget, Compare, EventKind, FaultEvent, History, KeyValue, Op, OpResult, Request,
    Response, StatusSample, TxnOp, TxnOpResult, WatchEvent, WatchLog, WatchRecord,
};
use keel_tests::jepsen::linearizable::{check_linearizable, LinearizableOpts};
use keel_tests::jepsen::model::KvState;
use keel_tests::jepsen::report::write_report;
use keel_tests::jepsen::result::{CheckResult, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------- helpers

/// A sequential etcd: ops are applied in the order `exec` is called (their
/// linearization order); the test chooses call/return times around that.
struct Sim {
    state: KvState,
    h: History,
    /// Every event produced, by revision, for building watch logs.
    events: Vec<(i64, Vec<WatchEvent>)>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            state: KvState::new(1),
            h: History::default(),
            events: Vec::new(),
        }
    }

    /// Applies `req` now and records it with the given interval and the
    /// true response.
    fn exec(&mut self, client: u32, call: u64, ret: u64, req: Request) -> usize {
        let resp = self.apply(&req);
        self.push(client, call, Some(ret), req, resp)
    }

    fn apply(&mut self, req: &Request) -> Response {
        let (a, _) = self.state.apply(req).expect("modelled request");
        if !a.events.is_empty() {
            self.events.push((a.revision, a.events.clone()));
        }
        Response::Ok {
            revision: a.revision,
            result: a.result,
        }
    }

    fn push(
        &mut self,
        client: u32,
        call: u64,
        ret: Option<u64>,
        req: Request,
        resp: Response,
    ) -> usize {
        let id = self.h.ops.len() as u64;
        self.h.ops.push(Op {
            id,
            client,
            member: None,
            call_ns: call,
            return_ns: ret,
            req,
            resp,
        });
        id as usize
    }

    /// A watcher on `prefix` from revision 1 that saw every event, one
    /// response per revision.
    fn full_watch(&self, watcher: u32, prefix: &str) -> WatchLog {
        let mut records = vec![WatchRecord::Start {
            time_ns: 0,
            member: None,
            start_rev: 1,
            progress_notify: true,
        }];
        for (rev, evs) in &self.events {
            let evs: Vec<WatchEvent> = evs
                .iter()
                .filter(|e| e.kv.key.starts_with(prefix))
                .cloned()
                .collect();
            if !evs.is_empty() {
                records.push(WatchRecord::Events {
                    time_ns: *rev as u64 * 10,
                    header_revision: *rev,
                    events: evs,
                });
            }
        }
        WatchLog {
            watcher,
            key: prefix.into(),
            prefix: true,
            records,
        }
    }

    fn history(&self) -> History {
        self.h.clone()
    }
}

fn put(k: &str, v: &str) -> Request {
    Request::Put {
        key: k.into(),
        value: v.into(),
        lease: 0,
    }
}

fn leased_put(k: &str, v: &str, lease: i64) -> Request {
    Request::Put {
        key: k.into(),
        value: v.into(),
        lease,
    }
}

fn get(k: &str) -> Request {
    Request::Get {
        key: k.into(),
        serializable: false,
        revision: 0,
    }
}

fn sget(k: &str) -> Request {
    Request::Get {
        key: k.into(),
        serializable: true,
        revision: 0,
    }
}

fn cas(k: &str, mod_rev: i64, v: &str) -> Request {
    Request::Txn {
        compares: vec![Compare {
            key: k.into(),
            op: CmpOp::Equal,
            target: CmpTarget::ModRevision(mod_rev),
        }],
        success: vec![TxnOp::Put {
            key: k.into(),
            value: v.into(),
            lease: 0,
        }],
        failure: vec![TxnOp::Get { key: k.into() }],
    }
}

fn unknown() -> Response {
    Response::Unknown {
        error: "deadline exceeded".into(),
    }
}

fn kv(k: &str, v: &str, m: i64, c: i64, ver: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
        mod_revision: m,
        create_revision: c,
        version: ver,
        lease: 0,
    }
}

fn ok_get(rev: i64, kv: Option<KeyValue>) -> Response {
    Response::Ok {
        revision: rev,
        result: OpResult::Get { kv },
    }
}

#[track_caller]
fn assert_verdict(r: &CheckResult, name: &str, want: Verdict) {
    assert_eq!(
        r.verdict_of(name),
        want,
        "{name}: expected {want:?}\n{}",
        r.summary()
    );
}

#[track_caller]
fn assert_all_pass(h: &History) -> CheckResult {
    let r = check_all(h);
    assert_eq!(r.verdict(), Verdict::Pass, "{}", r.summary());
    r
}

/// Three sequential-ish writes and reads on two keys, with overlaps.
fn small_valid() -> Sim {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("k", "a")); // rev 2
    s.exec(2, 5, 20, put("j", "x")); // rev 3
    s.exec(1, 12, 30, get("k"));
    s.exec(3, 15, 40, put("k", "b")); // rev 4
    s.exec(2, 25, 50, get("k"));
    s.exec(1, 45, 60, get("j"));
    s
}

/// Client 1 puts k=a (rev 2) at 0–10 ns, then k=b (rev 3) at 20–30.
fn a_then_b() -> Sim {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("k", "a")); // rev 2
    s.exec(1, 20, 30, put("k", "b")); // rev 3
    s
}

/// [`small_valid`], then client 1 reads at 70–80 ns with `resp`.
fn late_read(req: Request, resp: Response) -> Sim {
    let mut s = small_valid();
    s.push(1, 70, Some(80), req, resp);
    s
}

// ------------------------------------------------------------ accepting

#[test]
fn valid_small_history_passes() {
    let mut s = small_valid();
    let w = s.full_watch(0, "");
    s.h.watches.push(w);
    assert_all_pass(&s.history());
}

#[test]
fn reads_may_linearize_out_of_call_order_when_concurrent() {
    // Client 2's read is called before client 3's put but returns after it,
    // and sees the put: fine, they overlap.
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("k", "a"));
    let p = s.exec(3, 20, 40, put("k", "b"));
    let g = s.exec(2, 15, 50, get("k"));
    assert!(g > p);
    assert_all_pass(&s.history());
}

#[test]
fn unknown_write_that_took_effect_passes() {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("k", "a"));
    let resp = s.apply(&put("k", "lost-ack")); // applied, rev 3
    assert!(matches!(resp, Response::Ok { revision: 3, .. }));
    s.push(2, 5, Some(100), put("k", "lost-ack"), unknown());
    s.exec(1, 20, 30, get("k")); // sees it
    s.exec(1, 40, 50, put("k", "c"));
    let r = assert_all_pass(&s.history());
    let lin = r.linearization.unwrap();
    assert!(lin.order.contains(&1), "the unknown write is placed");
}

#[test]
fn unknown_write_that_never_happened_passes() {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("k", "a"));
    s.push(2, 5, None, put("k", "never"), unknown()); // never returned
    s.push(
        3,
        6,
        Some(8),
        put("k", "rejected"),
        Response::Fail {
            error: "no leader".into(),
        },
    );
    s.exec(1, 20, 30, get("k"));
    s.exec(1, 40, 50, put("k", "c"));
    s.exec(1, 60, 70, get("k"));
    assert_all_pass(&s.history());
}

#[test]
fn unknown_write_seen_by_watch_only_is_pinned() {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("k", "a"));
    let resp = s.apply(&put("j", "ghost")); // rev 3, never read
    assert!(matches!(resp, Response::Ok { revision: 3, .. }));
    s.push(2, 5, Some(100), put("j", "ghost"), unknown());
    s.push(3, 5, Some(100), put("j", "phantom"), unknown()); // never applied
    s.exec(1, 20, 30, put("k", "b"));
    let w = s.full_watch(0, "");
    s.h.watches.push(w);
    let r = assert_all_pass(&s.history());
    let lin = r.linearization.unwrap();
    assert_eq!((lin.pinned_by_watch, lin.dropped_by_watch), (1, 1));
}

#[test]
fn cas_and_failed_cas_pass() {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("k", "a")); // rev 2
    s.exec(1, 20, 30, cas("k", 2, "b")); // succeeds, rev 3
    s.exec(2, 25, 35, cas("k", 2, "c")); // fails: mod rev is 3
    s.exec(2, 40, 45, cas("k", 0, "d")); // fails: exists
    s.exec(2, 50, 55, Request::Delete { key: "k".into() }); // rev 4
    s.exec(2, 60, 65, cas("k", 0, "e")); // succeeds: absent, rev 5
    let h = s.history();
    match &h.ops[2].resp {
        Response::Ok {
            result: OpResult::Txn { succeeded, .. },
            ..
        } => assert!(!succeeded),
        r => panic!("{r:?}"),
    }
    assert_all_pass(&h);
}

#[test]
fn serializable_reads_of_the_past_pass() {
    let mut s = a_then_b();
    // A lagging member answers a serializable read at revision 2.
    s.push(
        2,
        40,
        Some(50),
        sget("k"),
        ok_get(2, Some(kv("k", "a", 2, 2, 1))),
    );
    let r = assert_all_pass(&s.history());
    assert!(r
        .get(names::SERIALIZABLE_READS)
        .unwrap()
        .note
        .starts_with("1 reads checked"));
}

// ---------------------------------------------------- linearizability: bad

#[test]
fn stale_read_is_rejected() {
    // Client 1 reads k after put k=b (rev 4) returned at 40, but sees a@2.
    let s = late_read(get("k"), ok_get(3, Some(kv("k", "a", 2, 2, 1))));
    assert_verdict(&check_all(&s.history()), names::LINEARIZABLE, Verdict::Fail);
    // Even claiming the current revision does not help.
    let s = late_read(get("k"), ok_get(4, Some(kv("k", "a", 2, 2, 1))));
    assert_verdict(&check_all(&s.history()), names::LINEARIZABLE, Verdict::Fail);
}

#[test]
fn lost_write_is_rejected() {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("j", "x")); // rev 2
    s.exec(1, 20, 30, put("k", "a")); // rev 3, acknowledged
                                      // Later reads never see it.
    s.push(2, 40, Some(50), get("k"), ok_get(3, None));
    let r = check_all(&s.history());
    assert_verdict(&r, names::LINEARIZABLE, Verdict::Fail);
    let lin = r.linearization.as_ref().unwrap();
    assert_eq!(lin.stuck, Some(2), "{lin:?}");
    assert_eq!(lin.order, vec![0, 1]);
}

#[test]
fn write_applied_twice_is_rejected() {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("k", "a")); // rev 2
                                     // The read sees the put applied twice: version 2 at revision 3.
    s.push(
        2,
        20,
        Some(30),
        get("k"),
        ok_get(3, Some(kv("k", "a", 3, 2, 2))),
    );
    assert_verdict(&check_all(&s.history()), names::LINEARIZABLE, Verdict::Fail);
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    let s = late_read(get("k"), ok_get(4, Some(kv("k", "zzz", 4, 2, 2))));
    assert_verdict(&check_all(&s.history()), names::LINEARIZABLE, Verdict::Fail);
}

#[test]
fn cas_against_stale_mod_revision_is_rejected() {
    let mut s = a_then_b();
    // CAS(mod_revision == 2) claims success at rev 4.
    s.push(
        2,
        40,
        Some(50),
        cas("k", 2, "c"),
        Response::Ok {
            revision: 4,
            result: OpResult::Txn {
                succeeded: true,
                results: vec![TxnOpResult::Put],
            },
        },
    );
    assert_verdict(&check_all(&s.history()), names::LINEARIZABLE, Verdict::Fail);
}

#[test]
fn step_budget_gives_unknown_not_pass() {
    let s = small_valid();
    let h = s.history();
    let mut opts = LinearizableOpts::for_history(&h);
    opts.max_steps = 2;
    assert_eq!(check_linearizable(&h, &opts).verdict, Verdict::Unknown);
}

// ------------------------------------------------------------- watches

/// A history with a txn of two puts at one revision and a full watcher.
fn watched() -> Sim {
    let mut s = Sim::new();
    s.exec(1, 0, 10, put("w/a", "1")); // rev 2
    s.exec(
        2,
        5,
        20,
        Request::Txn {
            compares: vec![],
            success: vec![
                TxnOp::Put {
                    key: "w/b".into(),
                    value: "2".into(),
                    lease: 0,
                },
                TxnOp::Put {
                    key: "w/c".into(),
                    value: "3".into(),
                    lease: 0,
                },
            ],
            failure: vec![],
        },
    ); // rev 3
    s.exec(1, 25, 30, Request::Delete { key: "w/a".into() }); // rev 4
    s.exec(1, 35, 40, put("w/b", "5")); // rev 5
    s
}

fn watched_history(edit: impl FnOnce(&mut Vec<WatchRecord>)) -> History {
    let s = watched();
    let mut w = s.full_watch(7, "w/");
    edit(&mut w.records);
    let mut h = s.history();
    h.watches.push(w);
    h
}

fn events_at(records: &[WatchRecord], i: usize) -> Vec<WatchEvent> {
    match &records[i] {
        WatchRecord::Events { events, .. } => events.clone(),
        r => panic!("not events: {r:?}"),
    }
}

#[test]
fn valid_watch_passes() {
    let h = watched_history(|r| {
        r.push(WatchRecord::Progress {
            time_ns: 100,
            revision: 5,
        })
    });
    assert_all_pass(&h);
}

#[test]
fn duplicated_watch_event_is_rejected() {
    let h = watched_history(|r| {
        let dup = r[2].clone();
        r.insert(3, dup);
    });
    assert_verdict(&check_all(&h), names::WATCH_UNIQUE, Verdict::Fail);
}

#[test]
fn skipped_watch_event_is_rejected() {
    let h = watched_history(|r| {
        r.remove(3); // the delete at rev 4
    });
    let res = check_all(&h);
    assert_verdict(&res, names::WATCH_RELIABLE, Verdict::Fail);
    assert_verdict(&res, names::WATCH_ORDERED, Verdict::Pass);
}

#[test]
fn out_of_order_events_are_rejected() {
    let h = watched_history(|r| r.swap(3, 4));
    assert_verdict(&check_all(&h), names::WATCH_ORDERED, Verdict::Fail);
}

#[test]
fn split_revision_is_rejected() {
    let h = watched_history(|r| {
        // Revision 3 (two puts) delivered in two responses.
        let evs = events_at(r, 2);
        assert_eq!(evs.len(), 2);
        r[2] = WatchRecord::Events {
            time_ns: 30,
            header_revision: 3,
            events: vec![evs[0].clone()],
        };
        r.insert(
            3,
            WatchRecord::Events {
                time_ns: 31,
                header_revision: 3,
                events: vec![evs[1].clone()],
            },
        );
    });
    assert_verdict(&check_all(&h), names::WATCH_ATOMIC, Verdict::Fail);
}

#[test]
fn resume_that_skips_events_is_rejected() {
    // Disconnect after rev 3, resume correctly from 4, but the server
    // starts at 5.
    let h = watched_history(|r| {
        let rest: Vec<WatchRecord> = r.drain(3..).collect();
        r.push(WatchRecord::End {
            time_ns: 32,
            compact_revision: 0,
            reason: "connection reset".into(),
        });
        r.push(WatchRecord::Start {
            time_ns: 33,
            member: Some("b".into()),
            start_rev: 4,
            progress_notify: false,
        });
        r.extend(rest.into_iter().skip(1));
    });
    let res = check_all(&h);
    assert_verdict(&res, names::WATCH_RESUMABLE, Verdict::Fail);
    // A correct resume passes.
    let h = watched_history(|r| {
        let rest: Vec<WatchRecord> = r.drain(3..).collect();
        r.push(WatchRecord::Start {
            time_ns: 33,
            member: Some("b".into()),
            start_rev: 4,
            progress_notify: false,
        });
        r.extend(rest);
    });
    assert_all_pass(&h);
    // A client that resumes too late is caught as well.
    let h = watched_history(|r| {
        let rest: Vec<WatchRecord> = r.drain(3..).collect();
        r.push(WatchRecord::Start {
            time_ns: 33,
            member: None,
            start_rev: 5,
            progress_notify: false,
        });
        r.extend(rest.into_iter().skip(1));
    });
    assert_verdict(&check_all(&h), names::WATCH_RESUMABLE, Verdict::Fail);
}

#[test]
fn bookmark_followed_by_older_event_is_rejected() {
    let h = watched_history(|r| {
        r.insert(
            3,
            WatchRecord::Progress {
                time_ns: 31,
                revision: 4,
            },
        );
    });
    assert_verdict(&check_all(&h), names::WATCH_BOOKMARKABLE, Verdict::Fail);
}

#[test]
fn watch_event_not_in_history_is_rejected() {
    let h = watched_history(|r| {
        let mut evs = events_at(r, 4);
        evs[0].kv.value = "bogus".into();
        r[4] = WatchRecord::Events {
            time_ns: 50,
            header_revision: 5,
            events: evs,
        };
    });
    assert_verdict(&check_all(&h), names::WATCH_VALID, Verdict::Fail);
}

#[test]
fn created_header_is_not_a_bookmark_and_start_from_now_works() {
    // A watch from "now" at revision 3 sees only revisions 4 and 5.
    let s = watched();
    let full = s.full_watch(1, "w/");
    let mut records = vec![
        WatchRecord::Start {
            time_ns: 22,
            member: None,
            start_rev: 0,
            progress_notify: false,
        },
        WatchRecord::Created {
            time_ns: 23,
            header_revision: 3,
        },
    ];
    records.extend(full.records[3..].iter().cloned());
    let mut h = s.history();
    h.watches.push(WatchLog { records, ..full });
    assert_all_pass(&h);
}

// ---------------------------------------------- revisions, reads, leases

/// A status sample of member `a`, called at `call`, answered at `ret`.
fn sample(call: u64, ret: u64, revision: i64) -> StatusSample {
    StatusSample {
        call_ns: call,
        return_ns: ret,
        member: "a".into(),
        revision,
        raft_term: 2,
        raft_index: 0,
    }
}

#[test]
fn revision_going_backwards_after_crash_is_rejected() {
    let mut s = small_valid();
    s.h.status = vec![
        sample(100, 101, 4),
        sample(300, 301, 3),
        sample(400, 401, 4),
    ];
    s.h.faults.push(FaultEvent {
        start_ns: 200,
        end_ns: None,
        kind: "kill".into(),
        members: vec!["a".into()],
        description: "SIGKILL a".into(),
    });
    let r = check_all(&s.history());
    assert_verdict(&r, names::REVISION_MONOTONIC, Verdict::Fail);
    let o = r.get(names::REVISION_MONOTONIC).unwrap();
    assert!(o.violations[0].message.contains("across a crash"), "{o:?}");
    // Without the dip it passes.
    s.h.status.remove(1);
    assert_all_pass(&s.history());
}

#[test]
fn status_samples_are_ordered_by_call_and_return() {
    // The second sample was called before the first answered: the member
    // may have answered it first, so 4 then 3 is no anomaly.
    let mut s = small_valid();
    s.h.status = vec![sample(100, 200, 4), sample(150, 160, 3)];
    assert_all_pass(&s.history());
    // 70 µs apart, but in real-time order and no crash between: caught.
    s.h.status = vec![sample(100_000, 110_000, 4), sample(180_000, 190_000, 3)];
    let r = check_all(&s.history());
    assert_verdict(&r, names::REVISION_MONOTONIC, Verdict::Fail);
    let o = r.get(names::REVISION_MONOTONIC).unwrap();
    assert!(!o.violations[0].message.contains("across a crash"), "{o:?}");
}

#[test]
fn revision_going_backwards_on_a_member_is_rejected() {
    let mut s = small_valid();
    for o in &mut s.h.ops {
        o.member = Some("b".into());
    }
    // A serializable read on b after b served revision 4.
    s.push(
        1,
        70,
        Some(80),
        sget("k"),
        ok_get(3, Some(kv("k", "a", 2, 2, 1))),
    );
    s.h.ops.last_mut().unwrap().member = Some("b".into());
    assert_verdict(
        &check_all(&s.history()),
        names::REVISION_MONOTONIC,
        Verdict::Fail,
    );
}

#[test]
fn serializable_read_inconsistent_with_history_is_rejected() {
    // At revision 3, k was a@2, not b.
    let s = late_read(sget("k"), ok_get(3, Some(kv("k", "b", 4, 2, 2))));
    let r = check_all(&s.history());
    assert_verdict(&r, names::SERIALIZABLE_READS, Verdict::Fail);
    assert_verdict(&r, names::LINEARIZABLE, Verdict::Pass);
    // A read at an old revision, too.
    let s = late_read(
        Request::Get {
            key: "k".into(),
            serializable: false,
            revision: 2,
        },
        ok_get(4, None),
    );
    assert_verdict(
        &check_all(&s.history()),
        names::SERIALIZABLE_READS,
        Verdict::Fail,
    );
}

#[test]
fn lease_key_visible_after_revoke_is_rejected() {
    let mut s = Sim::new();
    grant(&mut s, 60, 7);
    s.exec(1, 10, 20, leased_put("l", "leased", 7)); // rev 2
    s.exec(1, 30, 40, Request::LeaseRevoke { id: 7 }); // rev 3, deletes l
    s.exec(2, 50, 60, get("l"));
    assert_all_pass(&s.history());
    // Now a read after the revoke still sees the key.
    let mut leased = kv("l", "leased", 2, 2, 1);
    leased.lease = 7;
    s.push(2, 70, Some(80), get("l"), ok_get(3, Some(leased.clone())));
    let r = check_all(&s.history());
    assert_verdict(&r, names::LEASE_KEYS_GONE, Verdict::Fail);
    // Also when the lease is only known expired, and the recorder did not
    // fill the lease field.
    let mut s = Sim::new();
    s.exec(1, 10, 20, leased_put("l", "leased", 9));
    ttl_gone(&mut s, 9, 30, 3);
    leased.lease = 0;
    s.push(2, 50, Some(60), get("l"), ok_get(2, Some(leased)));
    assert_verdict(
        &check_all(&s.history()),
        names::LEASE_KEYS_GONE,
        Verdict::Fail,
    );
}

// ------------------------------------------------------- lease expiry

const SEC: u64 = 1_000_000_000;

/// Lease 7 (TTL 2 s) granted at 0–5 ns, `l/a` put with it (rev 2), then
/// `k` without a lease (rev 3).
fn leased() -> Sim {
    let mut s = Sim::new();
    grant(&mut s, 2, 7);
    s.exec(1, 10, 20, leased_put("l/a", "v", 7)); // rev 2
    s.exec(2, 30, 40, put("k", "x")); // rev 3
    s
}

/// Client 1 is granted lease `id` for `ttl` s at 0–5 ns.
fn grant(s: &mut Sim, ttl: i64, id: i64) {
    s.push(
        1,
        0,
        Some(5),
        Request::LeaseGrant { ttl, id: 0 },
        Response::Ok {
            revision: 1,
            result: OpResult::LeaseGrant { id },
        },
    );
}

/// Lease `id` is reported gone (`LeaseTimeToLive` -1) at `at`–`at + 10`.
fn ttl_gone(s: &mut Sim, id: i64, at: u64, revision: i64) {
    s.push(
        1,
        at,
        Some(at + 10),
        Request::LeaseTimeToLive { id },
        Response::Ok {
            revision,
            result: OpResult::LeaseTimeToLive { ttl: -1 },
        },
    );
}

/// A full watch of `s` whose events from revision `from` on arrive at `at`
/// (the expiry's deletes come seconds after the grant).
fn watch_from(s: &Sim, from: i64, at: u64) -> WatchLog {
    let mut w = s.full_watch(0, "");
    for r in &mut w.records {
        if let WatchRecord::Events {
            time_ns,
            header_revision,
            ..
        } = r
        {
            if *header_revision >= from {
                *time_ns = at + *header_revision as u64;
            }
        }
    }
    w
}

fn leased_kv(k: &str, v: &str, m: i64) -> KeyValue {
    KeyValue {
        lease: 7,
        ..kv(k, v, m, m, 1)
    }
}

#[test]
fn lease_expiry_deleting_its_keys_passes() {
    let mut s = leased();
    s.apply(&Request::LeaseExpire { id: 7 }); // rev 4, no client op
    ttl_gone(&mut s, 7, 3 * SEC, 4);
    s.exec(1, 3 * SEC + 100, 3 * SEC + 200, get("l/a")); // gone
    s.exec(2, 3 * SEC + 300, 3 * SEC + 400, put("k", "y")); // rev 5
    let expiry_id = s.h.ops.len() as u64;
    // No watch: the expiry has a deadline (the TTL answer) and falls in
    // the revision gap before it.
    let r = assert_all_pass(&s.history());
    let lin = r.linearization.unwrap();
    assert_eq!((lin.expiries.len(), lin.expiries_checked), (1, 1));
    assert!(lin.order.contains(&expiry_id), "{:?}", lin.order);
    // Without the TTL answer it may or may not have happened: the read
    // that no longer sees the key places it.
    let mut h = s.history();
    h.ops.remove(3);
    assert_all_pass(&h);
    // A watch that saw the deletes pins it.
    s.h.watches.push(watch_from(&s, 4, 2 * SEC));
    let r = assert_all_pass(&s.history());
    assert_eq!(r.linearization.unwrap().pinned_by_watch, 1);
    // A lease that expires with no keys changes nothing: not searched.
    let mut s = Sim::new();
    grant(&mut s, 2, 7);
    s.exec(1, 10, 20, put("k", "x"));
    let r = assert_all_pass(&s.history());
    let lin = r.linearization.unwrap();
    assert_eq!((lin.expiries.len(), lin.expiries_checked), (1, 0));
}

#[test]
fn key_of_an_expired_lease_read_after_the_expiry_is_rejected() {
    // Known gone by its TTL; the key is still read later.
    let mut s = leased();
    ttl_gone(&mut s, 7, 3 * SEC, 3);
    s.push(
        2,
        3 * SEC + 100,
        Some(3 * SEC + 200),
        get("l/a"),
        ok_get(3, Some(leased_kv("l/a", "v", 2))),
    );
    let r = check_all(&s.history());
    assert_verdict(&r, names::LINEARIZABLE, Verdict::Fail);
    assert_verdict(&r, names::LEASE_KEYS_GONE, Verdict::Fail);
    // Known gone by a watch that saw the deletes; a member still serves
    // the key.
    let mut s = leased();
    s.apply(&Request::LeaseExpire { id: 7 }); // rev 4
    s.h.watches.push(watch_from(&s, 4, 2 * SEC));
    s.push(
        2,
        3 * SEC,
        Some(3 * SEC + 100),
        get("l/a"),
        ok_get(4, Some(leased_kv("l/a", "v", 2))),
    );
    let r = check_all(&s.history());
    assert_verdict(&r, names::LINEARIZABLE, Verdict::Fail);
    assert_verdict(&r, names::LEASE_KEYS_GONE, Verdict::Fail);
}

#[test]
fn expiry_deleting_a_key_not_on_the_lease_is_rejected() {
    let mut s = leased();
    s.apply(&Request::LeaseExpire { id: 7 }); // rev 4: deletes l/a
    ttl_gone(&mut s, 7, 3 * SEC, 4);
    // ... but k (no lease) is gone too.
    s.push(
        2,
        3 * SEC + 100,
        Some(3 * SEC + 200),
        get("k"),
        ok_get(4, None),
    );
    assert_verdict(&check_all(&s.history()), names::LINEARIZABLE, Verdict::Fail);
}

#[test]
fn put_with_an_expired_lease_is_rejected() {
    // Lease 7 expires with no keys; later a put with it is acknowledged.
    let mut s = Sim::new();
    grant(&mut s, 2, 7);
    ttl_gone(&mut s, 7, 3 * SEC, 1);
    s.exec(1, 3 * SEC + 100, 3 * SEC + 200, leased_put("l/b", "w", 7)); // rev 2
    assert_verdict(&check_all(&s.history()), names::LINEARIZABLE, Verdict::Fail);
    // Before the lease was known gone, fine.
    s.h.ops.swap(1, 2);
    s.h.ops[1].call_ns = 100;
    s.h.ops[1].return_ns = Some(200);
    assert_all_pass(&s.history());
}

#[test]
fn lease_gone_before_its_ttl_is_rejected() {
    let mut s = leased();
    ttl_gone(&mut s, 7, SEC, 3); // TTL 2 s, granted at 0
    let r = check_all(&s.history());
    assert_verdict(&r, names::LEASE_KEYS_GONE, Verdict::Fail);
    let o = r.get(names::LEASE_KEYS_GONE).unwrap();
    assert!(o.violations[0].message.contains("before its TTL"), "{o:?}");
}

// ------------------------------------------------------------ randomized

/// A random valid history: `clients` clients, `n` ops on `keys` keys, with
/// random overlapping intervals around each op's linearization point; a
/// fraction of writes end `Unknown` (applied or not); one prefix watcher
/// that sees everything, with progress notifications.
fn random_history(
    rng: &mut StdRng,
    clients: u32,
    n: usize,
    keys: usize,
    unknown_p: f64,
) -> History {
    #[derive(Clone)]
    enum Slot {
        Idle,
        Called {
            req: Request,
            call: u64,
        },
        Done {
            req: Request,
            call: u64,
            resp: Response,
        },
    }
    let mut s = Sim::new();
    let mut slots = vec![Slot::Idle; clients as usize];
    let mut t = 0u64;
    let mut issued = 0;
    let mut progress = Vec::new();
    let mut next_val = 0u64;
    while issued < n || slots.iter().any(|s| !matches!(s, Slot::Idle)) {
        t += 1 + rng.random_range(0..5);
        let c = rng.random_range(0..clients);
        let slot = &mut slots[c as usize];
        match slot.clone() {
            Slot::Idle if issued < n => {
                issued += 1;
                let key = format!("k{}", rng.random_range(0..keys));
                next_val += 1;
                let val = format!("v{next_val}");
                let req = match rng.random_range(0..10) {
                    0..=3 => get(&key),
                    4..=6 => put(&key, &val),
                    7 => Request::Delete { key },
                    8 => {
                        let cur = s.state.get(&key).map_or(0, |kv| kv.mod_revision);
                        // Right or (sometimes) stale expectation.
                        cas(&key, cur - rng.random_range(0..2), &val)
                    }
                    _ => Request::Range {
                        prefix: "k".into(),
                        serializable: false,
                        revision: 0,
                    },
                };
                *slot = Slot::Called { req, call: t };
            }
            Slot::Idle => {}
            Slot::Called { req, call } => {
                let lost = req.is_write() && rng.random_bool(unknown_p);
                let resp = if lost && rng.random_bool(0.5) {
                    unknown() // never applied
                } else {
                    let r = s.apply(&req);
                    if lost {
                        unknown()
                    } else {
                        r
                    }
                };
                if rng.random_bool(0.05) {
                    progress.push((s.state.revision(), t));
                }
                *slot = Slot::Done { req, call, resp };
            }
            Slot::Done { req, call, resp } => {
                let ret = if matches!(resp, Response::Unknown { .. }) && rng.random_bool(0.3) {
                    None
                } else {
                    Some(t)
                };
                s.push(c, call, ret, req, resp);
                *slot = Slot::Idle;
            }
        }
    }
    let mut w = s.full_watch(0, "k");
    // Interleave progress notifications after the events they cover.
    for (rev, _) in progress {
        let pos = w
            .records
            .iter()
            .position(|r| matches!(r, WatchRecord::Events { header_revision, .. } if *header_revision > rev))
            .unwrap_or(w.records.len());
        w.records.insert(
            pos,
            WatchRecord::Progress {
                time_ns: 0,
                revision: rev,
            },
        );
    }
    let mut h = s.history();
    h.watches.push(w);
    h
}

#[test]
fn random_valid_histories_pass() {
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..40 {
        let unknown_p = if round % 2 == 0 { 0.0 } else { 0.15 };
        let h = random_history(
            &mut rng,
            1 + round % 8,
            200,
            1 + (round as usize % 4),
            unknown_p,
        );
        let r = check_all(&h);
        assert_eq!(r.verdict(), Verdict::Pass, "round {round}\n{}", r.summary());
    }
}

#[test]
fn big_history_is_decided() {
    // CI-sized: 5000 ops, 20 clients, 5 hot keys, some unknown writes.
    let mut rng = StdRng::seed_from_u64(11);
    let h = random_history(&mut rng, 20, 5000, 5, 0.02);
    let started = std::time::Instant::now();
    let r = check_all(&h);
    let lin = r.linearization.as_ref().unwrap();
    println!(
        "5000 ops: {} steps in {:?}; {}",
        lin.steps,
        started.elapsed(),
        lin.message
    );
    assert_eq!(r.verdict(), Verdict::Pass, "{}", r.summary());
}

/// Breaks one thing in a valid history, in a way that is always
/// observable; returns a description.
fn mutate(rng: &mut StdRng, h: &mut History) -> Option<String> {
    let i = rng.random_range(0..h.ops.len());
    let op = &mut h.ops[i];
    let Response::Ok { revision, result } = &mut op.resp else {
        return None;
    };
    match (rng.random_range(0..3), result) {
        (_, OpResult::Get { kv: Some(kv) }) => {
            kv.value = "never-written".into();
            Some(format!("op {i}: get returns a value never written"))
        }
        (0, OpResult::Put | OpResult::Txn { .. } | OpResult::Delete { deleted: 1 }) => {
            *revision += 1;
            Some(format!("op {i}: write revision +1"))
        }
        (1, OpResult::Txn { succeeded, results }) if results.len() == 1 => {
            *succeeded = !*succeeded;
            results[0] = if *succeeded {
                TxnOpResult::Put
            } else {
                TxnOpResult::Get { kv: None }
            };
            Some(format!("op {i}: txn outcome flipped"))
        }
        (_, OpResult::Range { kvs }) if !kvs.is_empty() => {
            kvs.pop();
            Some(format!("op {i}: range drops a key"))
        }
        _ => {
            // Drop one watch event instead.
            let w = &mut h.watches[0];
            let idx: Vec<usize> = w
                .records
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r, WatchRecord::Events { .. }))
                .map(|(i, _)| i)
                .collect();
            if idx.len() < 2 {
                return None;
            }
            let j = idx[rng.random_range(0..idx.len() - 1)];
            w.records.remove(j);
            Some(format!("watch record {j} dropped"))
        }
    }
}

#[test]
fn random_mutations_are_detected() {
    let mut rng = StdRng::seed_from_u64(99);
    let (mut tried, mut caught) = (0, 0);
    let mut missed = Vec::new();
    while tried < 100 {
        let mut h = random_history(&mut rng, 4, 60, 3, 0.0);
        let Some(what) = mutate(&mut rng, &mut h) else {
            continue;
        };
        tried += 1;
        let r = check_all(&h);
        assert_ne!(r.verdict(), Verdict::Unknown, "{what}\n{}", r.summary());
        if r.verdict() == Verdict::Fail {
            caught += 1;
        } else {
            missed.push(what);
        }
    }
    println!("caught {caught} of {tried}; missed: {missed:?}");
    assert!(caught >= 90, "caught only {caught} of {tried}: {missed:?}");
}

// ---------------------------------------------------------------- report

#[test]
fn report_is_written_and_history_reloads() {
    let mut s = late_read(get("k"), ok_get(3, Some(kv("k", "a", 2, 2, 1))));
    s.h.faults.push(FaultEvent {
        start_ns: 32,
        end_ns: Some(48),
        kind: "partition".into(),
        members: vec!["a".into()],
        description: "a isolated".into(),
    });
    s.h.watches.push(s.full_watch(0, ""));
    let h = s.history();
    let r = check_all(&h);
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), &h, &r).unwrap();
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("linearizable"));
    assert!(!html.contains("http://") && !html.contains("https://"));
    let summary = std::fs::read_to_string(dir.path().join("summary.txt")).unwrap();
    assert!(summary.contains("Fail"));
    // Re-check offline: same verdicts.
    let back = History::load(dir.path()).unwrap();
    assert_eq!(back, h);
    let again = check_all(&back);
    assert_eq!(again.verdict(), Verdict::Fail);
    let kinds: Vec<EventKind> = h.watches[0]
        .records
        .iter()
        .filter_map(|r| match r {
            WatchRecord::Events { events, .. } => Some(events[0].kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds.len(), 3);
}

#[test]
fn big_history_with_unknown_writes_and_no_watch_help_is_decided() {
    // Unknown-outcome writes are only refined by watches when there are
    // watches; without, the revision gaps alone must keep the search small.
    let mut rng = StdRng::seed_from_u64(12);
    let h = random_history(&mut rng, 30, 10_000, 3, 0.10);
    let mut opts = LinearizableOpts::for_history(&h);
    opts.use_watches = false;
    let started = std::time::Instant::now();
    let lin = check_linearizable(&h, &opts);
    println!(
        "10000 ops, no watch help: {} steps in {:?}; {}",
        lin.steps,
        started.elapsed(),
        lin.message
    );
    assert_eq!(lin.verdict, Verdict::Pass, "{}", lin.message);
}

#[test]
fn lease_revoke_with_and_without_keys_passes() {
    let mut s = Sim::new();
    s.exec(1, 0, 10, leased_put("l1", "a", 5)); // rev 2
    s.exec(2, 5, 15, leased_put("l2", "b", 5)); // rev 3
    s.exec(1, 20, 30, Request::LeaseRevoke { id: 6 }); // no keys: rev stays 3
    s.exec(2, 25, 35, Request::LeaseRevoke { id: 5 }); // deletes both: rev 4
    s.exec(
        1,
        40,
        50,
        Request::Range {
            prefix: "l".into(),
            serializable: false,
            revision: 0,
        },
    );
    s.h.watches.push(s.full_watch(0, "l"));
    let h = s.history();
    assert!(matches!(h.ops[2].resp, Response::Ok { revision: 3, .. }));
    assert!(matches!(h.ops[3].resp, Response::Ok { revision: 4, .. }));
    assert_all_pass(&h);
}

/// Re-checks a kept run offline: `KEEL_JEPSEN_RECHECK=<run>/report cargo
/// test -p keel-tests --test checkers recheck -- --nocapture` (does nothing
/// without the variable).
#[test]
fn recheck_saved_history() {
    let Ok(dir) = std::env::var("KEEL_JEPSEN_RECHECK") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    assert!(
        dir.join("ops.jsonl").exists(),
        "no ops.jsonl in {}",
        dir.display()
    );
    let h = History::load(dir).unwrap();
    let started = std::time::Instant::now();
    let r = check_all(&h);
    println!(
        "{} ops checked in {:?}\n{}",
        h.ops.len(),
        started.elapsed(),
        r.summary()
    );
}
