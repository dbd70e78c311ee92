//! etcdctl end-to-end tests: every test body runs `etcdctl` against one member
//! and asserts exact outputs. Each body is declared for both backends with
//! `e2e_test!(name: etcd, keel)`; the keel variants are gated (see
//! `Backend::unavailable`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keel_tests::{
    ctl_ok, e2e_test, etcdctl, etcdctl_json, etcdctl_stdin, etcdctl_supports, header_revision,
    jint, kvs, Backend, Kv, Member, MemberOpts, Watcher,
};
use serde_json::Value;

fn start(b: Backend) -> Member {
    Member::start(b, MemberOpts::default())
}

/// Puts `pairs` in order, asserting each answers `OK`.
fn put_all(m: &Member, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        assert_eq!(ctl_ok(m, &["put", k, v]), "OK\n", "put {k} {v}");
    }
}

/// The simple-format output of a get returning `pairs`.
fn kv_lines(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}\n{v}\n")).collect()
}

/// Current revision as seen by a `get` header.
fn current_rev(m: &Member) -> i64 {
    header_revision(&etcdctl_json(m, &["get", "__keel_tests_none__"]))
}

fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> Kv {
    Kv {
        key: key.into(),
        value: value.into(),
        create,
        modified,
        version,
        lease: 0,
    }
}

// ---------------------------------------------------------------- put / get

fn put_get(b: Backend) {
    let m = start(b);
    assert_eq!(ctl_ok(&m, &["put", "foo", "bar"]), "OK\n");
    assert_eq!(ctl_ok(&m, &["get", "foo"]), "foo\nbar\n");
    assert_eq!(ctl_ok(&m, &["get", "missing"]), "");
    assert_eq!(ctl_ok(&m, &["put", "foo", "baz"]), "OK\n");
    assert_eq!(
        ctl_ok(&m, &["put", "foo", "qux", "--prev-kv"]),
        "OK\nfoo\nbaz\n"
    );
    assert_eq!(ctl_ok(&m, &["put", "sp ace", "a b  c"]), "OK\n");
    assert_eq!(ctl_ok(&m, &["get", "sp ace"]), "sp ace\na b  c\n");

    // A fresh cluster starts at revision 1; each put is one revision.
    let j = etcdctl_json(&m, &["get", "foo"]);
    assert_eq!(header_revision(&j), 5);
    assert_eq!(jint(&j, "count"), 1);
    assert_eq!(kvs(&j), vec![kv("foo", "qux", 2, 4, 3)]);
    assert!(jint(&j["header"], "member_id") != 0, "{j}");

    // Old revisions stay readable.
    assert_eq!(ctl_ok(&m, &["get", "foo", "--rev", "2"]), "foo\nbar\n");
    assert_eq!(ctl_ok(&m, &["get", "foo", "--rev", "3"]), "foo\nbaz\n");
    assert_eq!(ctl_ok(&m, &["get", "foo", "--rev", "1"]), "");

    // Empty value and value from stdin.
    assert_eq!(ctl_ok(&m, &["put", "empty", ""]), "OK\n");
    assert_eq!(ctl_ok(&m, &["get", "empty"]), "empty\n\n");
    assert_eq!(
        etcdctl_stdin(&m, &["put", "stdin-key"], "from stdin").ok(),
        "OK\n"
    );
    assert_eq!(
        ctl_ok(&m, &["get", "stdin-key", "--print-value-only"]),
        "from stdin\n"
    );
}
e2e_test!(put_get: etcd, keel);

/// Final state (key, value, create, mod, version):
///   /p/a m 3 9 2 · /p/b z 4 4 1 · /p/c b 2 11 3 · /p/d k 5 12 4 · /q/x x 8 8 1
fn range_fixture(m: &Member) {
    put_all(
        m,
        &[
            ("/p/c", "c"), // 2
            ("/p/a", "a"), // 3
            ("/p/b", "z"), // 4
            ("/p/d", "d"), // 5
            ("/p/c", "c"), // 6
            ("/p/d", "d"), // 7
            ("/q/x", "x"), // 8
            ("/p/a", "m"), // 9
            ("/p/d", "d"), // 10
            ("/p/c", "b"), // 11
            ("/p/d", "k"), // 12
        ],
    );
}

fn get_range_options(b: Backend) {
    let m = start(b);
    range_fixture(&m);
    let (a, bb, c, d) = (("/p/a", "m"), ("/p/b", "z"), ("/p/c", "b"), ("/p/d", "k"));
    let get = |extra: &[&str]| {
        let mut args = vec!["get", "/p/", "--prefix"];
        args.extend_from_slice(extra);
        ctl_ok(&m, &args)
    };

    assert_eq!(get(&[]), kv_lines(&[a, bb, c, d]));
    let j = etcdctl_json(&m, &["get", "/p/", "--prefix"]);
    assert_eq!(
        kvs(&j),
        vec![
            kv("/p/a", "m", 3, 9, 2),
            kv("/p/b", "z", 4, 4, 1),
            kv("/p/c", "b", 2, 11, 3),
            kv("/p/d", "k", 5, 12, 4),
        ]
    );
    assert_eq!(header_revision(&j), 12);
    assert_eq!(jint(&j, "count"), 4);

    // --sort-by × --order
    let cases: &[(&str, [(&str, &str); 4])] = &[
        ("KEY", [a, bb, c, d]),
        ("CREATE", [c, a, bb, d]),
        ("MODIFY", [bb, a, c, d]),
        ("VERSION", [bb, a, c, d]),
        ("VALUE", [c, d, a, bb]),
    ];
    for (target, asc) in cases {
        let sort = format!("--sort-by={target}");
        assert_eq!(get(&[&sort]), kv_lines(asc), "{sort}");
        assert_eq!(
            get(&[&sort, "--order=ASCEND"]),
            kv_lines(asc),
            "{sort} ASCEND"
        );
        let desc: Vec<_> = asc.iter().rev().copied().collect();
        assert_eq!(
            get(&[&sort, "--order=DESCEND"]),
            kv_lines(&desc),
            "{sort} DESCEND"
        );
        // The limit applies after sorting.
        assert_eq!(
            get(&[&sort, "--order=DESCEND", "--limit=2"]),
            kv_lines(&desc[..2]),
            "{sort} limit"
        );
    }
    assert_eq!(get(&["--order=DESCEND"]), kv_lines(&[d, c, bb, a]));

    // --limit: the count still reports the whole range, `more` is set.
    assert_eq!(get(&["--limit", "2"]), kv_lines(&[a, bb]));
    let j = etcdctl_json(&m, &["get", "/p/", "--prefix", "--limit", "1"]);
    assert_eq!(kvs(&j).len(), 1);
    assert_eq!(jint(&j, "count"), 4);
    assert_eq!(j.get("more"), Some(&Value::Bool(true)), "{j}");

    // --keys-only prints the key and an empty value line.
    assert_eq!(get(&["--keys-only"]), "/p/a\n\n/p/b\n\n/p/c\n\n/p/d\n\n");
    let j = etcdctl_json(&m, &["get", "/p/", "--prefix", "--keys-only"]);
    assert!(kvs(&j).iter().all(|kv| kv.value.is_empty()), "{j}");
    assert_eq!(kvs(&j)[0].version, 2);

    // --print-value-only
    assert_eq!(get(&["--print-value-only"]), "m\nz\nb\nk\n");
    assert_eq!(
        get(&["--print-value-only", "--sort-by=VALUE"]),
        "b\nk\nm\nz\n"
    );

    // --count-only (etcdctl 3.5+): the json has a count and no kvs.
    if etcdctl_supports("get", "--count-only") {
        let j = etcdctl_json(&m, &["get", "/p/", "--prefix", "--count-only"]);
        assert_eq!(jint(&j, "count"), 4);
        assert!(kvs(&j).is_empty(), "{j}");
    } else {
        println!("etcdctl has no get --count-only; checked count via json instead");
    }
    let j = etcdctl_json(&m, &["get", "", "--prefix", "--keys-only"]);
    assert_eq!(jint(&j, "count"), 5);

    // --rev: the range as of an old revision.
    assert_eq!(
        get(&["--rev", "5"]),
        kv_lines(&[("/p/a", "a"), bb, ("/p/c", "c"), ("/p/d", "d")])
    );
    assert_eq!(
        get(&["--rev", "3"]),
        kv_lines(&[("/p/a", "a"), ("/p/c", "c")])
    );
    let j = etcdctl_json(&m, &["get", "/p/", "--prefix", "--rev", "10"]);
    assert_eq!(kvs(&j)[3], kv("/p/d", "d", 5, 10, 3));
    assert_eq!(
        header_revision(&j),
        12,
        "header revision is the current one"
    );

    // --from-key, explicit range end, single key, prefix that matches nothing.
    assert_eq!(
        ctl_ok(&m, &["get", "--from-key", "/p/c"]),
        kv_lines(&[c, d, ("/q/x", "x")])
    );
    assert_eq!(
        ctl_ok(
            &m,
            &["get", "--from-key", "/p/c", "--keys-only", "--limit", "2"]
        ),
        "/p/c\n\n/p/d\n\n"
    );
    assert_eq!(ctl_ok(&m, &["get", "--from-key", ""]).lines().count(), 10);
    assert_eq!(ctl_ok(&m, &["get", "/p/b", "/p/d"]), kv_lines(&[bb, c]));
    assert_eq!(
        ctl_ok(
            &m,
            &[
                "get",
                "/p/",
                "--prefix",
                "--rev",
                "12",
                "--sort-by=CREATE",
                "--order=DESCEND",
                "--keys-only",
                "--limit=1"
            ]
        ),
        "/p/d\n\n"
    );
    assert_eq!(ctl_ok(&m, &["get", "/nothing/", "--prefix"]), "");
}
e2e_test!(get_range_options: etcd, keel);

// ---------------------------------------------------------------- delete

fn delete(b: Backend) {
    let m = start(b);
    put_all(
        &m,
        &[("/d/a", "1"), ("/d/b", "2"), ("/d/c", "3"), ("/e", "4")],
    ); // revs 2..5
    assert_eq!(ctl_ok(&m, &["del", "--prev-kv", "/d/a"]), "1\n/d/a\n1\n");
    assert_eq!(current_rev(&m), 6);
    assert_eq!(ctl_ok(&m, &["del", "missing"]), "0\n");
    assert_eq!(
        current_rev(&m),
        6,
        "deleting nothing does not bump the revision"
    );
    assert_eq!(ctl_ok(&m, &["del", "--prefix", "/d/"]), "2\n");
    assert_eq!(current_rev(&m), 7, "a multi-key delete is one revision");
    assert_eq!(ctl_ok(&m, &["get", "--prefix", "/d/"]), "");
    assert_eq!(ctl_ok(&m, &["get", "/e"]), "/e\n4\n");

    put_all(&m, &[("/f/1", "x"), ("/f/2", "y"), ("/f/3", "z")]); // revs 8..10
    assert_eq!(
        ctl_ok(&m, &["del", "--prefix", "--prev-kv", "/f/"]),
        "3\n/f/1\nx\n/f/2\ny\n/f/3\nz\n"
    );
    put_all(&m, &[("/g/1", "x"), ("/g/2", "y"), ("/g/3", "z")]); // revs 12..14
    assert_eq!(ctl_ok(&m, &["del", "/g/1", "/g/3"]), "2\n");
    assert_eq!(ctl_ok(&m, &["get", "--prefix", "/g/"]), "/g/3\nz\n");
    assert_eq!(ctl_ok(&m, &["del", "--from-key", "/g/"]), "1\n");
    assert_eq!(ctl_ok(&m, &["get", "--from-key", ""]), "/e\n4\n");

    // The deleted value is still visible at its old revision; a re-put restarts its version.
    assert_eq!(ctl_ok(&m, &["get", "/d/a", "--rev", "5"]), "/d/a\n1\n");
    assert_eq!(ctl_ok(&m, &["put", "/d/a", "again"]), "OK\n");
    let j = etcdctl_json(&m, &["get", "/d/a"]);
    assert_eq!(kvs(&j), vec![kv("/d/a", "again", 17, 17, 1)]);
}
e2e_test!(delete: etcd, keel);

// ---------------------------------------------------------------- txn

const TXN_PROMPTS: &str =
    "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n";

fn txn(b: Backend) {
    let m = start(b);
    put_all(&m, &[("k", "v"), ("other", "o")]); // k: create 2 mod 2 version 1; other: rev 3

    // All four compare targets true → success branch (put, get, del), one revision.
    let input = "mod(\"k\") = \"2\"\nvalue(\"k\") = \"v\"\nversion(\"k\") = \"1\"\ncreate(\"k\") = \"2\"\n\n\
                 put k v2\nget other\ndel other\n\n\
                 put k never\n\n";
    let out = etcdctl_stdin(&m, &["txn", "-i"], input).ok();
    assert_eq!(
        out,
        format!("{TXN_PROMPTS}SUCCESS\n\nOK\n\nother\no\n\n1\n")
    );
    assert_eq!(ctl_ok(&m, &["get", "k"]), "k\nv2\n");
    assert_eq!(ctl_ok(&m, &["get", "other"]), "");
    assert_eq!(
        kvs(&etcdctl_json(&m, &["get", "k"])),
        vec![kv("k", "v2", 2, 4, 2)]
    );

    // A false compare → failure branch.
    let input = "value(\"k\") = \"v\"\nversion(\"k\") = \"2\"\n\n\
                 del k\n\n\
                 put k v3\nget k\nput fail-branch yes\n\n";
    let out = etcdctl_stdin(&m, &["txn", "-i"], input).ok();
    assert_eq!(out, format!("{TXN_PROMPTS}FAILURE\n\nOK\n\nk\nv3\n\nOK\n"));
    assert_eq!(ctl_ok(&m, &["get", "k"]), "k\nv3\n");
    assert_eq!(ctl_ok(&m, &["get", "fail-branch"]), "fail-branch\nyes\n");
    assert_eq!(current_rev(&m), 5);

    // <, >, != and a missing key (version 0, create 0).
    let input = "create(\"k\") < \"3\"\nmod(\"k\") > \"4\"\nvalue(\"k\") != \"v\"\nversion(\"nokey\") = \"0\"\ncreate(\"nokey\") = \"0\"\n\n\
                 put nokey now\n\n\n";
    let out = etcdctl_stdin(&m, &["txn", "-i"], input).ok();
    assert_eq!(out, format!("{TXN_PROMPTS}SUCCESS\n\nOK\n"));
    assert_eq!(
        kvs(&etcdctl_json(&m, &["get", "nokey"])),
        vec![kv("nokey", "now", 6, 6, 1)]
    );

    // A mod compare against a stale revision fails (the CAS the orchestrator relies on).
    let input = "mod(\"k\") = \"4\"\n\nput k cas-won\n\nget k\n\n";
    let out = etcdctl_stdin(&m, &["txn", "-i"], input).ok();
    assert_eq!(out, format!("{TXN_PROMPTS}FAILURE\n\nk\nv3\n"));
    let input = "mod(\"k\") = \"5\"\n\nput k cas-won\n\nget k\n\n";
    let out = etcdctl_stdin(&m, &["txn", "-i"], input).ok();
    assert_eq!(out, format!("{TXN_PROMPTS}SUCCESS\n\nOK\n"));
    assert_eq!(ctl_ok(&m, &["get", "k"]), "k\ncas-won\n");

    // A read-only txn does not bump the revision; ranges inside a txn.
    let rev = current_rev(&m);
    let input = "\nget k\nget --prefix no\n\n\n";
    let out = etcdctl_stdin(&m, &["txn", "-i"], input).ok();
    assert_eq!(
        out,
        format!("{TXN_PROMPTS}SUCCESS\n\nk\ncas-won\n\nnokey\nnow\n")
    );
    assert_eq!(current_rev(&m), rev);

    // Non-interactive mode (no prompts) reads the same format from stdin.
    let out = etcdctl_stdin(&m, &["txn"], "value(\"k\") = \"cas-won\"\n\ndel k\n\n\n").ok();
    assert_eq!(out, "SUCCESS\n\n1\n");
    assert_eq!(ctl_ok(&m, &["get", "k"]), "");
}
e2e_test!(txn: etcd, keel);

// ---------------------------------------------------------------- watch

const WATCH_WAIT: Duration = Duration::from_secs(10);

fn watch_live(b: Backend) {
    let m = start(b);
    put_all(&m, &[("/w/a", "1")]); // rev 2
    let mut w = Watcher::spawn(&m, &["--rev", "3", "--prefix", "/w/", "--prev-kv"]);
    put_all(&m, &[("/w/a", "2"), ("/x", "ignored"), ("/w/b", "1")]); // revs 3, 4, 5
    assert_eq!(ctl_ok(&m, &["del", "/w/a"]), "1\n"); // rev 6
    let expected = [
        "PUT", "/w/a", "1", "/w/a", "2", // prev kv, then kv
        "PUT", "/w/b", "1", //
        "DELETE", "/w/a", "2", "/w/a", "", // a delete's kv has no value
    ];
    w.wait_lines(expected.len(), WATCH_WAIT);
    // Nothing more must arrive for unrelated keys.
    put_all(&m, &[("/y", "ignored")]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.stop(), expected);

    // A single-key watch, json output: revisions and event types.
    let mut w = Watcher::spawn(&m, &["-w", "json", "/w/b", "--rev", "5"]);
    put_all(&m, &[("/w/b", "2")]); // rev 8
                                   // Both events may come in one response (one json line) or two.
    let events = |lines: &[String]| -> Vec<(i64, i64, String)> {
        lines
            .iter()
            .flat_map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                v["Events"].as_array().cloned().unwrap_or_default()
            })
            .map(|e| {
                (
                    jint(&e, "type"),
                    jint(&e["kv"], "mod_revision"),
                    keel_tests::b64(e["kv"]["value"].as_str().unwrap_or("")),
                )
            })
            .collect()
    };
    let lines = w.wait_until("2 events", WATCH_WAIT, |l| events(l).len() >= 2);
    let evs = events(&lines);
    assert_eq!(evs, vec![(0, 5, "1".to_string()), (0, 8, "2".to_string())]);
}
e2e_test!(watch_live: etcd, keel);

fn watch_replay(b: Backend) {
    let m = start(b);
    put_all(
        &m,
        &[
            ("/h/k", "v1"),
            ("/h/k", "v2"),
            ("/other", "o"),
            ("/h/k", "v3"),
        ],
    ); // 2..5
    assert_eq!(ctl_ok(&m, &["del", "/h/k"]), "1\n"); // 6
    put_all(&m, &[("/h/j", "x")]); // 7

    // From revision 1: the whole history of the prefix, in order.
    let mut w = Watcher::spawn(&m, &["--rev", "1", "--prefix", "/h/"]);
    let history = [
        "PUT", "/h/k", "v1", "PUT", "/h/k", "v2", "PUT", "/h/k", "v3", "DELETE", "/h/k", "", "PUT",
        "/h/j", "x",
    ];
    assert_eq!(w.wait_lines(history.len(), WATCH_WAIT), history);
    // …then live events continue on the same watch.
    put_all(&m, &[("/h/k", "v4")]);
    let mut all = history.to_vec();
    all.extend(["PUT", "/h/k", "v4"]);
    assert_eq!(w.wait_lines(all.len(), WATCH_WAIT), all);
    drop(w);

    // From the middle of history, with prev kvs, one key.
    let mut w = Watcher::spawn(&m, &["--rev", "4", "--prev-kv", "/h/k"]);
    let expected = [
        "PUT", "/h/k", "v2", "/h/k", "v3", //
        "DELETE", "/h/k", "v3", "/h/k", "", //
        "PUT", "/h/k", "v4",
    ];
    assert_eq!(w.wait_lines(expected.len(), WATCH_WAIT), expected);
}
e2e_test!(watch_replay: etcd, keel);

// ---------------------------------------------------------------- compaction

fn compaction(b: Backend) {
    let m = start(b);
    put_all(
        &m,
        &[("c", "1"), ("c", "2"), ("c", "3"), ("c", "4"), ("c", "5")],
    ); // 2..6
    assert_eq!(ctl_ok(&m, &["compaction", "4"]), "compacted revision 4\n");
    etcdctl(&m, &["get", "c", "--rev", "3"]).fails_with("required revision has been compacted");
    assert_eq!(ctl_ok(&m, &["get", "c", "--rev", "4"]), "c\n3\n");
    assert_eq!(ctl_ok(&m, &["get", "c", "--rev", "6"]), "c\n5\n");
    etcdctl(&m, &["get", "c", "--rev", "7"]).fails_with("required revision is a future revision");
    etcdctl(&m, &["get", "c", "--rev", "100"]).fails_with("required revision is a future revision");
    etcdctl(&m, &["compaction", "3"]).fails_with("required revision has been compacted");
    etcdctl(&m, &["compaction", "100"]).fails_with("required revision is a future revision");
    assert_eq!(ctl_ok(&m, &["get", "c"]), "c\n5\n");

    // A watch from a compacted revision is canceled by the server.
    let out = etcdctl(&m, &["watch", "--rev", "2", "c"]);
    assert!(!out.success(), "{out}");
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("required revision has been compacted"),
        "{out}"
    );
    // …while one from the compact revision itself works.
    let mut w = Watcher::spawn(&m, &["--rev", "4", "c"]);
    assert_eq!(
        w.wait_lines(9, WATCH_WAIT),
        ["PUT", "c", "3", "PUT", "c", "4", "PUT", "c", "5"]
    );
    drop(w);

    // Compacting the current revision keeps the latest values.
    assert_eq!(ctl_ok(&m, &["compaction", "6"]), "compacted revision 6\n");
    assert_eq!(ctl_ok(&m, &["get", "c"]), "c\n5\n");
    etcdctl(&m, &["get", "c", "--rev", "5"]).fails_with("required revision has been compacted");
    put_all(&m, &[("c", "6")]);
    assert_eq!(current_rev(&m), 7);
}
e2e_test!(compaction: etcd, keel);

/// `--auto-compaction-retention 2s` (periodic mode, etcd's default): once a
/// window has passed, the member compacts on its own to the revision it saw
/// a window before; the latest values stay.
fn auto_compaction_periodic(b: Backend) {
    let m = Member::start(
        b,
        MemberOpts {
            extra_args: [
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention",
                "2s",
            ]
            .map(String::from)
            .to_vec(),
            ..MemberOpts::default()
        },
    );
    put_all(&m, &[("a", "1"), ("a", "2")]);
    assert_eq!(ctl_ok(&m, &["get", "a", "--rev", "2"]), "a\n1\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(&m, &["get", "a", "--rev", "2"]);
        if !out.success() {
            out.fails_with("required revision has been compacted");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revision 2 still readable after 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ctl_ok(&m, &["get", "a"]), "a\n2\n");
}
e2e_test!(auto_compaction_periodic: etcd, keel);

/// Bad auto-compaction flags stop the member with a message naming them
/// (each server's own words: the harness's line with the command line is
/// left out of the check).
fn auto_compaction_bad_flags(b: Backend) {
    let cases = [
        (
            ["--auto-compaction-mode", "hourly"],
            [
                "unknown auto-compaction-mode",
                "expected periodic or revision",
            ],
        ),
        (
            ["--auto-compaction-retention", "soon"],
            ["CompactionRetention", "expected a duration"],
        ),
    ];
    for (args, [etcd_says, keel_says]) in cases {
        let opts = MemberOpts {
            extra_args: args.map(String::from).to_vec(),
            ..MemberOpts::default()
        };
        let err = match Member::try_start(b, opts) {
            Ok(_) => panic!("{args:?} accepted"),
            Err(e) => format!("{e:#}"),
        };
        let want = if b == Backend::Etcd {
            etcd_says
        } else {
            keel_says
        };
        let said: String = err
            .lines()
            .filter(|l| !l.starts_with("===== keel-tests: start"))
            .collect();
        assert!(said.contains(want), "{args:?}: want {want:?} in {err}");
    }
}
e2e_test!(auto_compaction_bad_flags: etcd, keel);

// ---------------------------------------------------------------- leases

/// Parses "lease <hex> granted with TTL(<n>s)".
fn grant(m: &Member, ttl: u64) -> String {
    let out = ctl_ok(m, &["lease", "grant", &ttl.to_string()]);
    let id = out
        .strip_prefix("lease ")
        .and_then(|r| r.strip_suffix(&format!(" granted with TTL({ttl}s)\n")))
        .unwrap_or_else(|| panic!("unexpected lease grant output {out:?}"));
    assert_eq!(id.len(), 16, "{out:?}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{out:?}");
    id.to_string()
}

fn leases(b: Backend) {
    let m = start(b);
    let id = grant(&m, 100);
    let id_dec = i64::from_str_radix(&id, 16).expect("hex lease id");
    assert_eq!(
        ctl_ok(&m, &["put", &format!("--lease={id}"), "lk1", "a"]),
        "OK\n"
    );
    assert_eq!(
        ctl_ok(&m, &["put", &format!("--lease={id}"), "lk2", "b"]),
        "OK\n"
    );
    assert_eq!(ctl_ok(&m, &["put", "plain", "c"]), "OK\n");
    let got = kvs(&etcdctl_json(&m, &["get", "lk1"]));
    assert_eq!(got[0].lease, id_dec);

    assert_eq!(
        ctl_ok(&m, &["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(100)\n")
    );

    let out = ctl_ok(&m, &["lease", "timetolive", "--keys", &id]);
    // "lease ID granted with TTL(100s), remaining(99s), attached keys([lk1 lk2])"
    // (the key order is unspecified).
    let (remaining, keys) = out
        .strip_prefix(&format!("lease {id} granted with TTL(100s), remaining("))
        .and_then(|r| r.strip_suffix("])\n"))
        .and_then(|r| r.split_once("s), attached keys(["))
        .unwrap_or_else(|| panic!("unexpected timetolive output {out:?}"));
    let remaining: i64 = remaining.parse().expect("remaining seconds");
    assert!((90..=100).contains(&remaining), "{out:?}");
    let keys: BTreeSet<&str> = keys.split(' ').collect();
    assert_eq!(keys, BTreeSet::from(["lk1", "lk2"]), "{out:?}");

    let j = etcdctl_json(&m, &["lease", "timetolive", "--keys", &id]);
    assert_eq!(jint(&j, "id"), id_dec);
    assert_eq!(jint(&j, "granted-ttl"), 100);
    assert!((90..=100).contains(&jint(&j, "ttl")), "{j}");
    let keys: BTreeSet<String> = j["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| keel_tests::b64(k.as_str().unwrap()))
        .collect();
    assert_eq!(keys, BTreeSet::from(["lk1".to_string(), "lk2".to_string()]));

    assert_eq!(
        ctl_ok(&m, &["lease", "list"]),
        format!("found 1 leases\n{id}\n")
    );
    let id2 = grant(&m, 200);
    let out = ctl_ok(&m, &["lease", "list"]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("found 2 leases"));
    let listed: BTreeSet<&str> = lines.collect();
    assert_eq!(listed, BTreeSet::from([id.as_str(), id2.as_str()]));

    let rev = current_rev(&m);
    assert_eq!(
        ctl_ok(&m, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ctl_ok(&m, &["get", "lk", "--prefix"]), "");
    assert_eq!(ctl_ok(&m, &["get", "plain"]), "plain\nc\n");
    assert_eq!(
        current_rev(&m),
        rev + 1,
        "revoking deletes the keys in one revision"
    );
    assert_eq!(
        ctl_ok(&m, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        ctl_ok(&m, &["lease", "list"]),
        format!("found 1 leases\n{id2}\n")
    );
    etcdctl(&m, &["lease", "revoke", &id]).fails_with("requested lease not found");
    etcdctl(&m, &["lease", "keep-alive", "--once", &id]).fails_with("requested lease not found");
    etcdctl(&m, &["put", &format!("--lease={id}"), "lk3", "x"])
        .fails_with("requested lease not found");

    // Re-attaching a key to another lease moves it.
    assert_eq!(
        ctl_ok(&m, &["put", &format!("--lease={id2}"), "plain", "d"]),
        "OK\n"
    );
    assert_eq!(ctl_ok(&m, &["put", "plain", "e"]), "OK\n"); // detaches
    assert_eq!(
        ctl_ok(&m, &["lease", "revoke", &id2]),
        format!("lease {id2} revoked\n")
    );
    assert_eq!(ctl_ok(&m, &["get", "plain"]), "plain\ne\n");
    assert_eq!(ctl_ok(&m, &["lease", "list"]), "found 0 leases\n");
}
e2e_test!(leases: etcd, keel);

fn lease_expiry(b: Backend) {
    let m = start(b);
    let granted = Instant::now();
    let id = grant(&m, 2);
    assert_eq!(
        ctl_ok(&m, &["put", &format!("--lease={id}"), "short", "lived"]),
        "OK\n"
    );
    assert_eq!(
        ctl_ok(&m, &["put", &format!("--lease={id}"), "short2", "lived"]),
        "OK\n"
    );
    assert_eq!(ctl_ok(&m, &["get", "short"]), "short\nlived\n");
    let mut w = Watcher::spawn(&m, &["--prefix", "short", "--rev", "2"]);
    loop {
        let out = ctl_ok(&m, &["get", "short", "--prefix"]);
        if out.is_empty() {
            break;
        }
        assert!(
            granted.elapsed() < Duration::from_secs(5),
            "lease with TTL 2 not expired after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = granted.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "expired too early: {took:?}"
    );
    println!("TTL 2 lease expired after {took:?}");
    assert_eq!(
        ctl_ok(&m, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    // The expiry shows up as deletes in the watch (one revision, keys in order).
    let expected = [
        "PUT", "short", "lived", "PUT", "short2", "lived", "DELETE", "short", "", "DELETE",
        "short2", "",
    ];
    assert_eq!(w.wait_lines(expected.len(), WATCH_WAIT), expected);
}
e2e_test!(lease_expiry: etcd, keel);

// ---------------------------------------------------------------- snapshot

fn snapshot_restore(b: Backend) {
    let m = start(b);
    let mut pairs = Vec::new();
    for i in 0..50 {
        pairs.push((format!("/snap/{i:03}"), format!("value-{i}")));
    }
    for (k, v) in &pairs {
        assert_eq!(ctl_ok(&m, &["put", k, v]), "OK\n");
    }
    assert_eq!(ctl_ok(&m, &["put", "/snap/000", "overwritten"]), "OK\n");
    assert_eq!(ctl_ok(&m, &["del", "/snap/049"]), "1\n");
    let rev = current_rev(&m);
    assert_eq!(rev, 53);
    let before = ctl_ok(&m, &["get", "--prefix", "/snap/"]);

    let file = m.scratch_dir().join("backup.db");
    let file_s = file.display().to_string();
    let out = etcdctl(&m, &["snapshot", "save", &file_s]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, format!("Snapshot saved at {file_s}\n"));
    assert!(std::fs::metadata(&file).expect("snapshot file").len() > 0);

    // Writes after the snapshot must not be in the restored member.
    assert_eq!(ctl_ok(&m, &["put", "/snap/after", "x"]), "OK\n");

    let mut r = Member::prepare(b, MemberOpts::default().name("restored")).expect("prepare");
    let out = b.snapshot_restore(&file, &r);
    assert!(out.success(), "{out}");
    r.restart().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ctl_ok(&r, &["get", "--prefix", "/snap/"]), before);
    assert_eq!(
        ctl_ok(&r, &["get", "/snap/000"]),
        "/snap/000\noverwritten\n"
    );
    assert_eq!(
        current_rev(&r),
        rev,
        "the restored store keeps its revision"
    );
    // The restored member takes writes, continuing the revision sequence.
    assert_eq!(ctl_ok(&r, &["put", "/snap/new", "y"]), "OK\n");
    assert_eq!(current_rev(&r), rev + 1);
    // …and serves history that the snapshot kept.
    assert_eq!(
        ctl_ok(&r, &["get", "/snap/000", "--rev", "2"]),
        "/snap/000\nvalue-0\n"
    );
    let members = etcdctl_json(&r, &["member", "list"]);
    assert_eq!(members["members"][0]["name"], "restored");
}
e2e_test!(snapshot_restore: etcd, keel);

// ---------------------------------------------------------------- cluster info

fn status_health_members(b: Backend) {
    let m = start(b);
    assert_eq!(ctl_ok(&m, &["put", "x", "1"]), "OK\n");
    assert_eq!(ctl_ok(&m, &["put", "y", "2"]), "OK\n");

    let j = etcdctl_json(&m, &["endpoint", "status"]);
    let arr = j.as_array().expect("endpoint status json is an array");
    assert_eq!(arr.len(), 1, "{j}");
    assert_eq!(arr[0]["Endpoint"], m.client_url().as_str());
    let st = &arr[0]["Status"];
    assert_eq!(header_revision(st), 3, "{j}");
    assert!(!st["version"].as_str().unwrap_or("").is_empty(), "{j}");
    let member_id = jint(&st["header"], "member_id");
    assert!(member_id != 0, "{j}");
    assert_eq!(jint(st, "leader"), member_id, "a single member leads: {j}");
    assert!(jint(st, "raftTerm") >= 1, "{j}");
    assert!(jint(st, "raftIndex") >= 3, "{j}");
    assert!(jint(st, "dbSize") > 0, "{j}");

    // `endpoint health` (etcdctl 3.4 prints the result on stderr).
    let out = etcdctl(&m, &["endpoint", "health"]);
    assert!(out.success(), "{out}");
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains(&format!(
            "{} is healthy: successfully committed proposal",
            m.client_url()
        )),
        "{out}"
    );

    let j = etcdctl_json(&m, &["member", "list"]);
    let members = j["members"].as_array().expect("members");
    assert_eq!(members.len(), 1, "{j}");
    assert_eq!(members[0]["name"], m.name());
    assert_eq!(
        members[0]["clientURLs"],
        serde_json::json!([m.client_url()])
    );
    assert_eq!(members[0]["peerURLs"], serde_json::json!([m.peer_url()]));
    assert_eq!(jint(&members[0], "ID"), member_id);
    let out = ctl_ok(&m, &["member", "list"]);
    assert_eq!(
        out,
        format!(
            "{member_id:x}, started, {}, {}, {}, false\n",
            m.name(),
            m.peer_url(),
            m.client_url()
        )
    );

    // Plain HTTP endpoints on the client URL.
    let (code, body) = m.http_get("/health").expect("GET /health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"health\":\"true\""), "{body}");
    let (code, body) = m.http_get("/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("# TYPE"),
        "metrics look like prometheus text: {}",
        &body[..body.len().min(500)]
    );
}
e2e_test!(status_health_members: etcd, keel);

// ---------------------------------------------------------------- errors

#[track_caller]
fn still_serves(m: &Member) {
    assert_eq!(ctl_ok(m, &["get", "alive"]), "alive\nyes\n");
}

fn errors(b: Backend) {
    let m = start(b);
    put_all(&m, &[("alive", "yes")]);

    etcdctl(&m, &["put", "", "v"]).fails_with("key is not provided");
    still_serves(&m);

    let out = etcdctl_stdin(&m, &["txn"], "\nput dup 1\nput dup 2\n\n\n");
    out.fails_with("duplicate key given in txn request");
    still_serves(&m);
    // A put and a delete of the same key in one branch is also a duplicate.
    etcdctl_stdin(&m, &["txn"], "\nput dup 1\ndel dup\n\n\n")
        .fails_with("duplicate key given in txn request");
    assert_eq!(ctl_ok(&m, &["get", "dup"]), "");

    etcdctl(&m, &["put", "--lease=1234abcd", "k", "v"]).fails_with("requested lease not found");
    assert_eq!(ctl_ok(&m, &["get", "k"]), "");
    still_serves(&m);

    etcdctl(&m, &["lease", "revoke", "1234abcd"]).fails_with("requested lease not found");
    still_serves(&m);
    assert_eq!(
        current_rev(&m),
        2,
        "failed requests do not bump the revision"
    );
}
e2e_test!(errors: etcd, keel);

fn request_too_large(b: Backend) {
    let m = Member::start(b, MemberOpts::default().max_request_bytes(1024));
    put_all(&m, &[("alive", "yes")]);
    let big = "x".repeat(2048);
    etcdctl(&m, &["put", "big", &big]).fails_with("request is too large");
    still_serves(&m);
    assert_eq!(ctl_ok(&m, &["get", "big"]), "");
    let ok = "y".repeat(512);
    assert_eq!(ctl_ok(&m, &["put", "small", &ok]), "OK\n");
    assert_eq!(
        ctl_ok(&m, &["get", "small", "--print-value-only"]),
        format!("{ok}\n")
    );
    // A txn whose total size is over the limit is refused too.
    let txn = format!(
        "\nput t1 {}\nput t2 {}\n\n\n",
        "a".repeat(700),
        "b".repeat(700)
    );
    etcdctl_stdin(&m, &["txn"], &txn).fails_with("request is too large");
    still_serves(&m);
}
e2e_test!(request_too_large: etcd, keel);

fn quota_nospace(b: Backend) {
    let m = Member::start(
        b,
        MemberOpts::default().quota_backend_bytes(16 * 1024 * 1024),
    );
    put_all(&m, &[("alive", "yes")]);
    let value = "v".repeat(1024 * 1024);
    let mut n = 0;
    let err = loop {
        let out = etcdctl_stdin(&m, &["put", &format!("big/{n:03}")], &value);
        if !out.success() {
            break out.stderr;
        }
        n += 1;
        assert!(n < 64, "16 MiB quota never exceeded after {n} 1 MiB puts");
    };
    assert!(err.contains("database space exceeded"), "{err}");
    println!("NOSPACE after {n} puts of 1 MiB");
    assert!(n >= 8, "quota hit too early, after {n} puts");

    let alarms = ctl_ok(&m, &["alarm", "list"]);
    let member_id = jint(
        &etcdctl_json(&m, &["endpoint", "status"])[0]["Status"]["header"],
        "member_id",
    ) as u64;
    assert_eq!(alarms, format!("memberID:{member_id} alarm:NOSPACE \n"));
    // Writes are refused, reads still work.
    etcdctl(&m, &["put", "small", "x"]).fails_with("database space exceeded");
    still_serves(&m);
    assert_eq!(
        ctl_ok(&m, &["get", "big/000", "--keys-only"]),
        "big/000\n\n"
    );

    // Free space: delete, compact, defrag, disarm.
    // etcd applies the put that trips the quota and still answers NOSPACE,
    // so there are n or n+1 big keys.
    let stored = jint(
        &etcdctl_json(&m, &["get", "--prefix", "big/", "--keys-only"]),
        "count",
    );
    assert!(
        stored == n || stored == n + 1,
        "{stored} big keys after {n} acked puts"
    );
    assert_eq!(
        ctl_ok(&m, &["del", "--prefix", "big/"]),
        format!("{stored}\n")
    );
    let rev = current_rev(&m);
    assert_eq!(
        ctl_ok(&m, &["compaction", "--physical", &rev.to_string()]),
        format!("compacted revision {rev}\n")
    );
    assert_eq!(
        ctl_ok(&m, &["defrag"]),
        format!("Finished defragmenting etcd member[{}]\n", m.client_url())
    );
    assert_eq!(
        ctl_ok(&m, &["alarm", "disarm"]),
        format!("memberID:{member_id} alarm:NOSPACE \n")
    );
    assert_eq!(ctl_ok(&m, &["alarm", "list"]), "");
    assert_eq!(ctl_ok(&m, &["put", "small", "x"]), "OK\n");
    assert_eq!(
        etcdctl_stdin(&m, &["put", "big/again"], &value).ok(),
        "OK\n"
    );
    still_serves(&m);
}
e2e_test!(quota_nospace: etcd, keel);

// ---------------------------------------------------------------- harness lifecycle

fn member_lifecycle(b: Backend) {
    let mut m = start(b);
    put_all(&m, &[("life", "1")]);
    // Graceful stop, restart on the same dir and ports.
    assert!(m.stop(), "member did not exit on SIGTERM within 10 s");
    assert!(!etcdctl(
        &m,
        &[
            "get",
            "life",
            "--dial-timeout=300ms",
            "--command-timeout=1s"
        ]
    )
    .success());
    m.restart().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ctl_ok(&m, &["get", "life"]), "life\n1\n");
    put_all(&m, &[("life", "2")]);
    // Crash, restart.
    m.kill9();
    m.restart().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(ctl_ok(&m, &["get", "life"]), "life\n2\n");
    assert_eq!(current_rev(&m), 3);
    // Two members side by side get distinct ports and dirs.
    let other = start(b);
    assert_ne!(other.client_url(), m.client_url());
    assert_eq!(ctl_ok(&other, &["get", "life"]), "");
}
e2e_test!(member_lifecycle: etcd, keel);
