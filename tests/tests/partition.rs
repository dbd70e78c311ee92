//! Network partitions of a 3-member `keel store` cluster, each member its
//! own host (network namespace; root only, skipped otherwise), cut with
//! blackhole routes (issue 3's multi-process partition tests):
//!
//! - an isolated follower cannot commit and its clients get errors, while
//!   the majority keeps serving; once healed it catches up;
//! - an isolated leader steps down, the majority elects a new leader within
//!   three election timeouts and keeps serving; the old leader rejoins
//!   without disrupting it (pre-vote, check-quorum).
//!
//! Run: `cargo test -p keel-tests --test partition -- --nocapture`

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use keel_storage::proto::etcdserverpb::kv_client::KvClient;
use keel_storage::proto::etcdserverpb::{PutRequest, RangeRequest};
use keel_tests::jepsen::db::{Db, DbOpts};
use keel_tests::jepsen::netns;

const ELECTION: Duration = Duration::from_millis(500);

struct Setup {
    rt: tokio::runtime::Runtime,
    db: Db,
    _dir: tempfile::TempDir,
}

/// A 3-member cluster on namespaces, or `None` (with a note) when not root.
fn setup() -> Option<Setup> {
    if !netns::is_root() {
        eprintln!("skipped: network partitions need root (network namespaces)");
        return None;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = DbOpts {
        election_ms: ELECTION.as_millis() as u64,
        ..DbOpts::default()
    };
    let db = Db::start(opts, dir.path(), rt.handle().clone()).expect("start the cluster");
    Some(Setup { rt, db, _dir: dir })
}

impl Setup {
    fn put(&self, i: usize, key: &str, timeout: Duration) -> Result<i64> {
        let mut kv = KvClient::new(self.db.channel(i, timeout));
        let req = PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        };
        self.rt.block_on(async move {
            let r = tokio::time::timeout(timeout, kv.put(req)).await??;
            Ok(r.into_inner().header.unwrap_or_default().revision)
        })
    }

    /// A read of `key` on member `i`: serializable (local) or linearizable.
    fn get(&self, i: usize, key: &str, serializable: bool, timeout: Duration) -> Result<bool> {
        let mut kv = KvClient::new(self.db.channel(i, timeout));
        let req = RangeRequest {
            key: key.as_bytes().to_vec().into(),
            serializable,
            ..Default::default()
        };
        self.rt.block_on(async move {
            let r = tokio::time::timeout(timeout, kv.range(req)).await??;
            Ok(!r.into_inner().kvs.is_empty())
        })
    }

    fn revision(&self, i: usize) -> Result<i64> {
        Ok(self
            .rt
            .block_on(self.db.status(i, Duration::from_secs(2)))?
            .revision)
    }

    /// Cuts `i` off from every other member, both ways.
    fn isolate(&self, i: usize) {
        let net = self.db.net().expect("namespaces");
        for j in 0..self.db.nodes.len() {
            if j != i {
                net.cut(i, j).expect("cut");
                net.cut(j, i).expect("cut");
            }
        }
    }

    fn heal(&self) {
        self.db.net().expect("namespaces").heal().expect("heal");
    }

    /// Waits until member `i` has every key in `keys` (serializable reads).
    fn wait_caught_up(&self, i: usize, keys: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = keys
                .iter()
                .filter(|k| {
                    !self
                        .get(i, k, true, Duration::from_secs(1))
                        .unwrap_or(false)
                })
                .count();
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("member {i} still misses {missing} of {} keys", keys.len());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn isolated_follower_cannot_commit_and_catches_up() {
    let Some(mut s) = setup() else { return };
    let leader = s.db.wait_leader(Duration::from_secs(10)).expect("leader");
    let f = (0..3).find(|&i| i != leader).expect("a follower");
    s.put(leader, "before", Duration::from_secs(5))
        .expect("put before the cut");
    s.isolate(f);

    // The minority: writes and linearizable reads fail (an error or a
    // timeout, never a success); serializable reads still answer locally.
    let short = Duration::from_secs(3);
    assert!(
        s.put(f, "minority", short).is_err(),
        "the isolated member committed a write"
    );
    assert!(
        s.get(f, "before", false, short).is_err(),
        "linearizable read on the minority"
    );
    assert!(s.get(f, "before", true, short).expect("serializable read"));

    // The majority keeps serving.
    let mut acked = Vec::new();
    for n in 0..50 {
        let key = format!("majority/{n}");
        s.put(leader, &key, Duration::from_secs(5))
            .expect("majority write");
        acked.push(key);
    }
    assert!(s
        .get(leader, "majority/49", false, short)
        .expect("majority read"));
    assert!(!s
        .get(f, "majority/49", true, short)
        .expect("serializable read"));

    // Healed, the follower catches up with every acknowledged write, and
    // the write it refused was never applied anywhere.
    s.heal();
    s.wait_caught_up(f, &acked, Duration::from_secs(10))
        .expect("catch-up");
    let (rl, rf) = (
        s.revision(leader).expect("rev"),
        s.revision(f).expect("rev"),
    );
    assert_eq!(rl, rf, "revisions after catch-up");
    s.db.shutdown(false);
}

#[test]
fn isolated_leader_steps_down_and_majority_elects_a_new_one() {
    let Some(mut s) = setup() else { return };
    let old = s.db.wait_leader(Duration::from_secs(10)).expect("leader");
    s.put(old, "before", Duration::from_secs(5))
        .expect("put before the cut");
    let cut_at = Instant::now();
    s.isolate(old);

    // A new leader among the other two within three election timeouts.
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = loop {
        let found = others.iter().copied().find(|&i| {
            s.rt.block_on(s.db.status(i, Duration::from_millis(500)))
                .is_ok_and(|st| st.leader != 0 && s.db.index_of(st.leader) == Some(i))
        });
        if let Some(i) = found {
            break i;
        }
        assert!(
            cut_at.elapsed() < 3 * ELECTION + Duration::from_secs(1),
            "no new leader {:?} after the cut",
            cut_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let elected = cut_at.elapsed();
    eprintln!("new leader {new} elected {elected:?} after isolating {old}");
    assert!(elected < 3 * ELECTION + Duration::from_millis(300));

    // The majority serves; the old leader's clients get errors.
    let short = Duration::from_secs(3);
    let acked: Vec<String> = (0..30).map(|n| format!("after/{n}")).collect();
    for k in &acked {
        s.put(new, k, Duration::from_secs(5))
            .expect("write on the new leader");
    }
    assert!(
        s.put(old, "stale-leader", short).is_err(),
        "the old leader committed"
    );
    assert!(
        s.get(old, "after/0", false, short).is_err(),
        "linearizable read on the old leader"
    );

    // Healed: the old leader rejoins as a follower, catches up, and the
    // new leader keeps its term (pre-vote: no disruption).
    let term =
        s.rt.block_on(s.db.status(new, short))
            .expect("status")
            .raft_term;
    s.heal();
    s.wait_caught_up(old, &acked, Duration::from_secs(10))
        .expect("catch-up");
    let st = s.rt.block_on(s.db.status(new, short)).expect("status");
    assert_eq!(
        s.db.index_of(st.leader),
        Some(new),
        "leadership moved on rejoin"
    );
    assert_eq!(
        st.raft_term, term,
        "the rejoining member disrupted the term"
    );
    assert!(!s.get(new, "stale-leader", false, short).expect("read"));
    s.db.shutdown(false);
}
