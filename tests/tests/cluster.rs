//! Multi-process cluster tests: three (or four) real members on 127.0.0.1,
//! replication, leader failure under load, catch-up (log and snapshot),
//! membership changes, leadership transfer, minority partitions (SIGSTOP) and
//! rolling restarts. Every keel test has an etcd twin (ignored by default;
//! `cargo test -p keel-tests --test cluster -- --ignored` runs the reference).
//!
//! The tests of this file run one at a time (they share two cores and time
//! elections), see [`serial`].

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keel_storage::proto::etcdserverpb::kv_client::KvClient;
use keel_storage::proto::etcdserverpb::PutRequest;
use keel_tests::cluster::LoadReport;
use keel_tests::cluster::{Cluster, ClusterOpts, Load};
use keel_tests::{e2e_test, kvs, Backend};
use serde_json::Value;

/// One cluster test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

// ------------------------------------------------------------ replication

fn three_members_replicate(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let mut c = Cluster::start(b, ClusterOpts::default());
    let leader = c.wait_leader(Duration::from_secs(10));
    println!(
        "leader {} after {:?}",
        c.member(leader).name(),
        t0.elapsed()
    );

    // A put through every member (followers forward to the leader).
    for i in 0..3 {
        let (k, v) = (
            format!("rep/k{i}"),
            format!("value via {}", c.member(i).name()),
        );
        assert_eq!(c.ctl_ok(i, &["put", &k, &v]), "OK\n", "put via {i}");
    }
    // Read back from every member: linearizable first (which also makes the
    // member apply everything committed), then serializable.
    let mut seen: Vec<Value> = Vec::new();
    for j in 0..3 {
        for i in 0..3 {
            let (k, v) = (
                format!("rep/k{i}"),
                format!("value via {}", c.member(i).name()),
            );
            assert_eq!(
                c.ctl_ok(j, &["get", &k]),
                format!("{k}\n{v}\n"),
                "linearizable get {k} on {}",
                c.member(j).name()
            );
            assert_eq!(
                c.ctl_ok(j, &["get", &k, "--consistency=s"]),
                format!("{k}\n{v}\n"),
                "serializable get {k} on {}",
                c.member(j).name()
            );
        }
        let j_all = c.ctl_json(j, &["get", "rep/", "--prefix", "--consistency=s"]);
        assert_eq!(kvs(&j_all).len(), 3, "{j_all}");
        seen.push(j_all);
    }
    // Same keys, values and revisions everywhere.
    let first = kvs(&seen[0]);
    for (j, s) in seen.iter().enumerate() {
        assert_eq!(kvs(s), first, "member {j} differs");
    }
    let revs: BTreeSet<i64> = first.iter().map(|kv| kv.modified).collect();
    assert_eq!(revs.len(), 3, "three puts, three revisions: {first:?}");

    // member list: three voting members with names and URLs, from everyone.
    for j in 0..3 {
        let list = c.member_list(j);
        assert_eq!(list.len(), 3, "member list via {j}: {list:?}");
        let mut names = Vec::new();
        for m in &list {
            let name = m["name"].as_str().unwrap_or_default().to_string();
            let i = ["a", "b", "c"]
                .iter()
                .position(|n| *n == name)
                .unwrap_or_else(|| panic!("unexpected member {m}"));
            assert_eq!(m["ID"].as_u64(), Some(c.id(i)), "{m}");
            assert_eq!(
                m["clientURLs"],
                serde_json::json!([c.member(i).client_url()]),
                "{m}"
            );
            assert_eq!(
                m["peerURLs"],
                serde_json::json!([c.member(i).peer_url()]),
                "{m}"
            );
            assert!(!m["isLearner"].as_bool().unwrap_or(false), "{m}");
            names.push(name);
        }
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
    }

    // endpoint status --cluster: one leader, the same one everywhere.
    let st = c.ctl_json(0, &["endpoint", "status", "--cluster"]);
    let arr = st.as_array().expect("status array");
    assert_eq!(arr.len(), 3, "{st}");
    for e in arr {
        assert_eq!(
            e["Status"]["leader"].as_u64(),
            Some(c.id(leader)),
            "endpoint status --cluster: {st}"
        );
    }
    let eps: BTreeSet<String> = arr
        .iter()
        .map(|e| e["Endpoint"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(eps, c.urls(&[0, 1, 2]).into_iter().collect());

    let table = c.ctl_ok(1, &["endpoint", "status", "--cluster", "-w", "table"]);
    let rows: Vec<Vec<String>> = table
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 4, "header + 3 rows:\n{table}");
    let col = |name: &str| {
        rows[0]
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column:\n{table}"))
    };
    let (id_col, leader_col) = (col("ID"), col("IS LEADER"));
    let leaders: Vec<&Vec<String>> = rows[1..]
        .iter()
        .filter(|r| r[leader_col] == "true")
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader:\n{table}");
    assert_eq!(leaders[0][id_col], hex(c.id(leader)), "{table}");
    for u in c.urls(&[0, 1, 2]) {
        assert!(table.contains(&u), "{u} missing:\n{table}");
    }
    println!("three_members_replicate: {:?}", t0.elapsed());
}
e2e_test!(three_members_replicate: etcd(ignore = "reference run"), keel);

// ------------------------------------------------------------ leader failure

fn kill_leader_under_load(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let mut c = Cluster::start(b, ClusterOpts::default());
    let old = c.wait_leader(Duration::from_secs(10));
    let load = Load::start(
        "load/",
        c.urls(&[0, 1, 2]),
        6,
        Duration::ZERO,
        Duration::from_secs(3),
    );
    assert!(
        load.wait_progress(300, Duration::from_secs(15)),
        "load makes no progress: {} acked, {} failed",
        load.acked(),
        load.failed()
    );

    // kill -9 the leader mid-load; a new one must appear within 3 election
    // timeouts.
    let t_kill = Instant::now();
    c.kill9(old);
    let bound = c.election_timeout() * 3;
    let new = loop {
        if let Some(l) = c.leader() {
            break l;
        }
        assert!(
            t_kill.elapsed() < Duration::from_secs(15),
            "no new leader 15 s after killing {}",
            c.member(old).name()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let t_elect = t_kill.elapsed();
    assert_ne!(new, old);
    println!(
        "killed leader {}; new leader {} after {t_elect:?} (bound {bound:?})",
        c.member(old).name(),
        c.member(new).name()
    );
    assert!(
        t_elect <= bound,
        "new leader after {t_elect:?}, more than 3 election timeouts ({bound:?})"
    );
    // The load goes on through the survivors.
    let t_new = Instant::now();
    assert!(
        load.wait_progress(300, Duration::from_secs(10)),
        "load stalled after the new election: {} acked, {} failed",
        load.acked(),
        load.failed()
    );
    println!("300 more acks {:?} after the election", t_new.elapsed());

    // Restart the killed member; it catches up while the load goes on.
    c.restart(old);
    let t_back = Instant::now();
    assert!(load.wait_progress(300, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    println!("load: {}", report.summary());

    // Failures are allowed only while there was no leader (plus slack for
    // requests in flight), and through the dead member until it is back.
    let old_url = c.member(old).client_url();
    let slack = Duration::from_secs(4);
    let bad: Vec<String> = report
        .failures
        .iter()
        .filter(|f| {
            let in_election = f.at >= t_kill && f.sent <= t_kill + t_elect + slack;
            let dead_member = f.endpoint == old_url && f.at >= t_kill && f.sent <= t_back + slack;
            !(in_election || dead_member)
        })
        .map(|f| {
            format!(
                "{} via {} after {:?}: {}",
                f.key,
                f.endpoint,
                f.at.duration_since(t_kill),
                f.error
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} puts failed outside the failover windows, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );

    let rev = c.wait_converged(Duration::from_secs(30));
    c.assert_acks_everywhere("load/", &report.acks);
    c.assert_same_hashkv();
    println!(
        "kill_leader_under_load: {} acks on all 3 members at revision {rev}, {:?}",
        report.acks.len(),
        t0.elapsed()
    );
}
e2e_test!(kill_leader_under_load: etcd(ignore = "reference run"), keel);

// ------------------------------------------------------------ catch-up

/// Stops a follower, writes `n` keys, restarts it and waits until its
/// serializable reads show every one. Returns the cluster and the follower.
fn lagging_follower(b: Backend, opts: ClusterOpts, n: usize) -> (Cluster, usize) {
    let mut c = Cluster::start(b, opts);
    let leader = c.wait_leader(Duration::from_secs(10));
    let before = c.put_many(&[0, 1, 2], "lag/before/", 50, 4);
    let f = c.followers(leader)[0];
    assert!(c.stop(f), "follower did not exit on SIGTERM");
    let others: Vec<usize> = (0..3).filter(|&i| i != f).collect();
    let t = Instant::now();
    let acks = c.put_many(&others, "lag/", n, 8);
    println!(
        "follower {} down; {n} puts in {:?}",
        c.member(f).name(),
        t.elapsed()
    );
    // While it is down it cannot have them.
    let t_restart = Instant::now();
    c.restart(f);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        match c.read_prefix(f, "lag/", true) {
            Ok((kvs, _)) => {
                let missing = acks
                    .iter()
                    .chain(&before)
                    .filter(|a| kvs.get(&a.key) != Some(&(a.value.clone(), a.revision)))
                    .count();
                if missing == 0 {
                    break;
                }
                last = format!(
                    "{missing} of {} puts not yet there",
                    acks.len() + before.len()
                );
            }
            Err(e) => last = format!("{e:#}"),
        }
        assert!(
            Instant::now() < deadline,
            "follower {} did not catch up within 30 s: {last}",
            c.member(f).name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "follower {} caught up {:?} after restart",
        c.member(f).name(),
        t_restart.elapsed()
    );
    // etcdctl agrees, locally on the follower.
    for a in [&acks[0], &acks[acks.len() - 1], &before[0]] {
        let j = c.ctl_json(f, &["get", &a.key, "--consistency=s"]);
        let got = kvs(&j);
        assert_eq!(got.len(), 1, "{j}");
        assert_eq!(
            (got[0].value.as_str(), got[0].modified),
            (a.value.as_str(), a.revision)
        );
    }
    let mut all = acks;
    all.extend(before);
    c.wait_converged(Duration::from_secs(20));
    c.assert_acks_everywhere("lag/", &all);
    c.assert_same_hashkv();
    (c, f)
}

fn follower_restart_catches_up(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let (c, f) = lagging_follower(b, ClusterOpts::default(), 1200);
    let _ = (c, f);
    println!("follower_restart_catches_up: {:?}", t0.elapsed());
}
e2e_test!(follower_restart_catches_up: etcd(ignore = "reference run"), keel);

fn lagging_follower_catches_up_by_snapshot(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    // etcd keeps 5000 entries after a snapshot for slow followers; keel
    // compacts at the snapshot.
    let n = match b {
        Backend::Etcd => 5600,
        Backend::Keel => 1200,
    };
    let (c, f) = lagging_follower(b, ClusterOpts::default().snapshot_count(100), n);
    let log = c.member(f).log();
    let needle = match b {
        Backend::Etcd => "finished applying incoming snapshot",
        Backend::Keel => "installed a snapshot from the leader",
    };
    assert!(
        log.contains(needle),
        "follower {} caught up without a snapshot (no {needle:?} in its log):\n{}",
        c.member(f).name(),
        c.member(f).log_tail(40)
    );
    println!(
        "lagging_follower_catches_up_by_snapshot: {:?}",
        t0.elapsed()
    );
}
e2e_test!(lagging_follower_catches_up_by_snapshot: etcd(ignore = "reference run"), keel);

// ------------------------------------------------------------ membership

/// Asserts that every failure of `report` happened inside one of `windows`.
#[track_caller]
fn assert_failures_within(report: &LoadReport, windows: &[(Instant, Instant)], what: &str) {
    let bad = report.failures_outside(windows);
    assert!(
        bad.is_empty(),
        "{what}: {} puts failed outside the allowed windows, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
}

fn membership_add_learner_promote_remove(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let mut c = Cluster::start(b, ClusterOpts::default());
    c.wait_leader(Duration::from_secs(10));
    let early = c.put_many(&[0, 1, 2], "mem/early/", 300, 4);
    let load = Load::start(
        "mem/load/",
        c.urls(&[0, 1, 2]),
        2,
        Duration::from_millis(10),
        Duration::from_secs(3),
    );
    assert!(load.wait_progress(20, Duration::from_secs(5)));
    let slack = Duration::from_secs(2);
    let mut windows = Vec::new();

    // Add d as a learner and start it.
    let t = Instant::now();
    let d = c
        .add_member("d", true)
        .unwrap_or_else(|e| panic!("add learner d: {e:#}"));
    windows.push((t, Instant::now() + slack));
    let list = c.member_list(0);
    assert_eq!(list.len(), 4, "{list:?}");
    let md = list
        .iter()
        .find(|m| m["ID"].as_u64() == Some(c.id(d)))
        .unwrap_or_else(|| panic!("d not in {list:?}"));
    assert_eq!(md["isLearner"].as_bool(), Some(true), "{md}");

    // It catches up: its local reads see the earlier keys.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = c
            .read_prefix(d, "mem/early/", true)
            .map(|(kvs, _)| {
                early
                    .iter()
                    .filter(|a| kvs.get(&a.key) == Some(&(a.value.clone(), a.revision)))
                    .count()
            })
            .unwrap_or(0);
        if n == early.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "learner d has {n} of {} early keys after 20 s",
            early.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let k = &early[early.len() / 2];
    let j = c.ctl_json(d, &["get", &k.key, "--consistency=s"]);
    assert_eq!(kvs(&j)[0].modified, k.revision, "{j}");
    println!("learner d caught up {:?} after the add", t.elapsed());

    // Promote it; it then serves writes too.
    let t = Instant::now();
    c.promote(d, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("promote d: {e:#}"));
    windows.push((t, Instant::now() + slack));
    let list = c.member_list(d);
    assert_eq!(list.len(), 4, "{list:?}");
    assert!(
        list.iter()
            .all(|m| !m["isLearner"].as_bool().unwrap_or(false)),
        "still a learner after promote: {list:?}"
    );
    load.set_endpoints(c.urls(&[0, 1, 2, d]));
    assert!(load.wait_progress(20, Duration::from_secs(5)));
    assert_eq!(
        c.ctl_ok(d, &["put", "mem/via-d", "x"]),
        "OK\n",
        "put through the promoted member"
    );

    // Remove one of the original followers.
    let leader = c.wait_leader(Duration::from_secs(5));
    let gone = c
        .followers(leader)
        .into_iter()
        .find(|&i| i < 3)
        .expect("an original follower");
    let keep: Vec<usize> = (0..4).filter(|&i| i != gone).collect();
    load.set_endpoints(c.urls(&keep));
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    c.remove(gone)
        .unwrap_or_else(|e| panic!("remove {}: {e:#}", c.member(gone).name()));
    windows.push((t, Instant::now() + slack));
    let list = c.member_list(keep[0]);
    let names: BTreeSet<&str> = list.iter().filter_map(|m| m["name"].as_str()).collect();
    let want: BTreeSet<&str> = keep.iter().map(|&i| c.member(i).name()).collect();
    assert_eq!(names, want, "{list:?}");
    c.wait_leader(Duration::from_secs(5));
    assert!(
        load.wait_progress(50, Duration::from_secs(5)),
        "no writes after removing {}",
        c.member(gone).name()
    );
    for &i in &keep {
        assert_eq!(
            c.ctl_ok(i, &["put", &format!("mem/after/{i}"), "y"]),
            "OK\n"
        );
    }
    let report = load.stop();
    println!(
        "removed {}; load: {}",
        c.member(gone).name(),
        report.summary()
    );
    assert_failures_within(&report, &windows, "membership changes");

    c.wait_converged(Duration::from_secs(20));
    c.assert_acks_everywhere("mem/load/", &report.acks);
    c.assert_acks_everywhere("mem/early/", &early);
    c.assert_same_hashkv();
    println!("membership_add_learner_promote_remove: {:?}", t0.elapsed());
}
e2e_test!(membership_add_learner_promote_remove: etcd(ignore = "reference run"), keel);

// ------------------------------------------------------------ leadership transfer

fn move_leader(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let mut c = Cluster::start(b, ClusterOpts::default());
    for round in 0..2 {
        let leader = c.wait_leader(Duration::from_secs(10));
        let target = c.followers(leader)[round % 2];
        let t = Instant::now();
        let out = c.ctl_ok(leader, &["move-leader", &hex(c.id(target))]);
        assert!(
            out.contains(&format!(
                "Leadership transferred from {} to {}",
                hex(c.id(leader)),
                hex(c.id(target))
            )),
            "{out}"
        );
        let now = loop {
            if let Some(l) = c.leader() {
                if l == target || t.elapsed() > Duration::from_secs(2) {
                    break l;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no leader after move-leader"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        println!(
            "move-leader {} -> {}: {:?}",
            c.member(leader).name(),
            c.member(now).name(),
            t.elapsed()
        );
        assert_eq!(
            now,
            target,
            "leader is {} {:?} after move-leader to {}",
            c.member(now).name(),
            t.elapsed(),
            c.member(target).name()
        );
        assert!(t.elapsed() <= Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(
            c.ctl_ok(leader, &["put", "ml/k", &round.to_string()]),
            "OK\n"
        );
    }
    // Moving to a member that is not in the cluster fails.
    let leader = c.wait_leader(Duration::from_secs(10));
    let out = c.ctl(leader, &["move-leader", "1234abcd"]);
    assert!(!out.success(), "move-leader to an unknown member: {out}");
    println!("move_leader: {:?}", t0.elapsed());
}
e2e_test!(
    move_leader: etcd(ignore = "reference run"),
    keel
);

// ------------------------------------------------------------ minority

fn minority_cannot_commit(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let mut c = Cluster::start(b, ClusterOpts::default());
    let mut attempted = Vec::new();
    // Round 0: the leader is left alone; round 1: a follower is.
    for round in 0..2 {
        let leader = c.wait_leader(Duration::from_secs(10));
        let followers = c.followers(leader);
        let (alone, stopped) = if round == 0 {
            (leader, followers.clone())
        } else {
            (followers[0], vec![leader, followers[1]])
        };
        assert_eq!(c.ctl_ok(alone, &["put", "min/ok", "before"]), "OK\n");
        for &i in &stopped {
            c.pause(i);
        }
        if alone == leader {
            // Check-quorum: a leader that hears from no majority steps down
            // within about an election timeout.
            let t = Instant::now();
            loop {
                let st = c.status(alone).expect("status of the lone member");
                if st.leader != c.id(alone) {
                    println!("lone leader stepped down after {:?}", t.elapsed());
                    break;
                }
                assert!(
                    t.elapsed() < c.election_timeout() * 4,
                    "the lone leader still claims leadership {:?} after losing its majority: {st:?}",
                    t.elapsed()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let key = format!("min/k{round}");
        let url = c.member(alone).client_url();
        let t = Instant::now();
        let res = c.runtime().block_on(async {
            let mut kv = KvClient::connect(url).await.expect("connect");
            tokio::time::timeout(
                Duration::from_secs(15),
                kv.put(PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: b"minority".to_vec().into(),
                    ..Default::default()
                }),
            )
            .await
        });
        let took = t.elapsed();
        println!(
            "round {round}: put to the lone {} ({}) -> {:?} after {took:?}",
            c.member(alone).name(),
            if alone == leader {
                "old leader"
            } else {
                "follower"
            },
            res.as_ref()
                .map(|r| r.as_ref().map(|_| "OK").map_err(|e| e.to_string()))
        );
        let answered = match res {
            Ok(Ok(resp)) => panic!(
                "round {round}: a minority acknowledged a put: {:?}",
                resp.into_inner()
            ),
            Ok(Err(_)) => true,
            Err(_) => false,
        };
        // A linearizable read cannot complete on a minority either.
        let read = c.ctl(alone, &["get", "min/ok", "--command-timeout=3s"]);
        for &i in &stopped {
            c.resume(i);
        }
        assert!(
            !read.success(),
            "round {round}: linearizable read on a minority: {read}"
        );
        assert!(
            answered,
            "round {round}: the put to the lone member got no answer within 15 s"
        );
        assert!(
            took <= Duration::from_secs(12),
            "round {round}: failed only after {took:?}"
        );
        attempted.push(key);
        // The cluster recovers.
        c.wait_leader(Duration::from_secs(10));
        for i in 0..3 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let out = c.ctl(i, &["put", &format!("min/after/{round}/{i}"), "v"]);
                if out.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: no recovery: {out}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // The failed puts are either nowhere or the same everywhere.
    c.wait_converged(Duration::from_secs(20));
    for key in &attempted {
        let seen: Vec<_> = (0..3)
            .map(|i| kvs(&c.ctl_json(i, &["get", key, "--consistency=s"])))
            .collect();
        assert!(seen.iter().all(|s| s == &seen[0]), "{key}: {seen:?}");
        println!("{key}: {:?}", seen[0]);
    }
    c.assert_same_hashkv();
    println!("minority_cannot_commit: {:?}", t0.elapsed());
}
e2e_test!(minority_cannot_commit: etcd(ignore = "reference run"), keel);

// ------------------------------------------------------------ rolling restart

fn rolling_restart_under_load(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let mut c = Cluster::start(b, ClusterOpts::default());
    c.wait_leader(Duration::from_secs(10));
    let load = Load::start(
        "roll/",
        c.urls(&[0, 1, 2]),
        4,
        Duration::from_millis(2),
        Duration::from_secs(3),
    );
    assert!(load.wait_progress(100, Duration::from_secs(10)));
    let mut windows = Vec::new();
    for i in 0..3 {
        let was_leader = c.wait_leader(Duration::from_secs(10)) == i;
        let failed_before = load.failed();
        let t = Instant::now();
        assert!(c.stop(i), "{} did not exit on SIGTERM", c.member(i).name());
        let t_stopped = t.elapsed();
        c.restart(i);
        c.wait_leader(Duration::from_secs(10));
        windows.push((t, Instant::now() + Duration::from_secs(3)));
        assert!(
            load.wait_progress(200, Duration::from_secs(10)),
            "load stalled after restarting {}",
            c.member(i).name()
        );
        println!(
            "restarted {}{}: stop {t_stopped:?}, back {:?}, {} failed puts",
            c.member(i).name(),
            if was_leader { " (leader)" } else { "" },
            t.elapsed(),
            load.failed() - failed_before
        );
    }
    let report = load.stop();
    println!("load: {}", report.summary());
    assert_failures_within(&report, &windows, "rolling restart");
    c.wait_converged(Duration::from_secs(20));
    c.assert_acks_everywhere("roll/", &report.acks);
    c.assert_same_hashkv();
    println!("rolling_restart_under_load: {:?}", t0.elapsed());
}
e2e_test!(rolling_restart_under_load: etcd(ignore = "reference run"), keel);

/// Membership changes sent to a follower (etcd accepts them on any member:
/// the conf change is forwarded to the leader like any proposal).
fn membership_change_via_follower(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let mut c = Cluster::start(b, ClusterOpts::default());
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = c.followers(leader)[0];
    if b == Backend::Etcd {
        // etcd refuses membership changes for 5 s after its start.
        std::thread::sleep(Duration::from_millis(5500));
    }
    let t = Instant::now();
    let d = c
        .add_member_via("d", true, Some(f))
        .unwrap_or_else(|e| panic!("member add via follower {}: {e:#}", c.member(f).name()));
    println!("member add via a follower: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = c
            .status(d)
            .is_ok_and(|s| s.is_learner && s.leader == c.id(leader));
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "learner d never joined: {:?}",
            c.status(d)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = c
        .followers(leader)
        .into_iter()
        .find(|&i| i != d)
        .expect("follower");
    c.promote_via(d, Some(f), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("promote via follower: {e:#}"));
    let leader = c.wait_leader(Duration::from_secs(10));
    let f = c
        .followers(leader)
        .into_iter()
        .find(|&i| i != d)
        .expect("follower");
    c.remove_via(d, Some(f), true)
        .unwrap_or_else(|e| panic!("remove via follower: {e:#}"));
    assert_eq!(c.member_list(leader).len(), 3);
    assert_eq!(c.ctl_ok(f, &["put", "k", "v"]), "OK\n");
    println!("membership_change_via_follower: {:?}", t0.elapsed());
}
e2e_test!(
    membership_change_via_follower: etcd(ignore = "reference run"),
    keel
);

/// A removed member learns of its removal and exits (etcd: "the member has
/// been permanently removed from the cluster"), instead of lingering with a
/// stale membership and hanging its clients.
fn removed_member_exits(b: Backend) {
    let _g = serial();
    let t0 = Instant::now();
    let mut c = Cluster::start(b, ClusterOpts::default());
    let leader = c.wait_leader(Duration::from_secs(10));
    c.put_many(&[0, 1, 2], "rm/", 50, 4);
    let gone = c.followers(leader)[0];
    c.remove_via(gone, None, false)
        .unwrap_or_else(|e| panic!("remove {}: {e:#}", c.member(gone).name()));
    let t = Instant::now();
    while c.member_mut(gone).is_running() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if c.member_mut(gone).is_running() {
        let st = c.status(gone);
        let put = c.ctl(gone, &["put", "rm/after", "x", "--command-timeout=2s"]);
        let list = c.ctl(gone, &["member", "list"]);
        panic!(
            "removed member {} still runs 5 s after its removal; status {st:?}\n{put}\n{list}\n{}",
            c.member(gone).name(),
            c.member(gone).log_tail(5)
        );
    }
    println!("removed member exited after {:?}", t.elapsed());
    let rest: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
    for &i in &rest {
        assert_eq!(c.ctl_ok(i, &["put", &format!("rm/after/{i}"), "y"]), "OK\n");
    }
    println!("removed_member_exits: {:?}", t0.elapsed());
}
e2e_test!(
    removed_member_exits: etcd(ignore = "reference run"),
    keel
);

// ------------------------------------------------------------ graceful stop

/// A leader stopped with SIGTERM hands leadership over before it exits (as
/// etcd does), so the cluster has a new leader well within an election
/// timeout instead of after one.
fn graceful_stop_hands_over_leadership(b: Backend) {
    let _g = serial();
    let mut c = Cluster::start(b, ClusterOpts::default());
    let leader = c.wait_leader(Duration::from_secs(10));
    let old = c.id(leader);
    assert!(c.stop(leader), "the leader did not stop on SIGTERM");
    let t = Instant::now();
    let new = c.wait_leader(Duration::from_secs(10));
    println!("new leader after a graceful stop: {:?}", t.elapsed());
    assert_ne!(c.id(new), old);
    if b == Backend::Keel {
        let log = c.member(leader).log();
        assert!(
            log.contains("leadership handed over before stopping") && log.contains("moved=true"),
            "the stopping leader did not hand over:\n{}",
            c.member(leader).log_tail(20)
        );
    }
}
e2e_test!(graceful_stop_hands_over_leadership: etcd(ignore = "reference run"), keel);
