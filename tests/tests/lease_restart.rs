//! Lease TTLs survive a restart: the primary checkpoints remaining TTLs into
//! the log (etcd's lease checkpointing), so a lease does not get a fresh TTL
//! when its member restarts, and its keys still expire on time.

use std::time::{Duration, Instant};

use keel_tests::{ctl_ok, etcdctl_json, jint, Backend, Member, MemberOpts};

fn lease_id(grant_out: &str) -> String {
    // "lease 694d7c5b3a1ab60c granted with TTL(60s)"
    grant_out
        .split_whitespace()
        .nth(1)
        .expect("lease id in grant output")
        .to_string()
}

#[test]
fn remaining_ttl_survives_kill9_restart() {
    let mut m = Member::start(Backend::Keel, MemberOpts::default());
    let id = lease_id(&ctl_ok(&m, &["lease", "grant", "30"]));
    ctl_ok(&m, &["put", "--lease", &id, "leased", "v"]);
    let granted = Instant::now();
    // Checkpoints run every 5 s: after 11 s the last one was at least 6 s
    // after the grant, so it recorded at most 24 s left.
    std::thread::sleep(Duration::from_secs(11));
    m.kill9();
    m.restart().expect("restart");
    let j = etcdctl_json(&m, &["lease", "timetolive", &id, "--keys"]);
    let ttl = jint(&j, "ttl");
    assert_eq!(jint(&j, "granted-ttl"), 30, "{j}");
    assert!(ttl > 0, "lease lost across restart: {j}");
    assert!(
        ttl <= 24,
        "lease got a fresh TTL after restart (ttl {ttl} after {:?}): {j}",
        granted.elapsed()
    );
    // And it still expires: the key goes when the TTL runs out.
    let deadline = Instant::now() + Duration::from_secs(ttl as u64 + 5);
    loop {
        let out = ctl_ok(&m, &["get", "leased"]);
        if out.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "leased key outlived its lease");
        std::thread::sleep(Duration::from_millis(250));
    }
}
