//! Driving `etcdctl` (v3 API) against a member.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Member;

/// Path of etcdctl (`$ETCDCTL_BIN` overrides `/usr/bin/etcdctl`).
pub fn etcdctl_bin() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcdctl"))
}

/// What one etcdctl run produced.
#[derive(Debug)]
pub struct CtlOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CtlOutput {
    /// True if it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
    /// Panics unless it exited 0; returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert!(self.success(), "expected success: {self}");
        self.stdout
    }
    /// Panics if it exited 0; returns stderr.
    #[track_caller]
    pub fn err(self) -> String {
        assert!(!self.success(), "expected failure: {self}");
        self.stderr
    }
    /// Panics unless it failed with `needle` in stderr.
    #[track_caller]
    pub fn fails_with(self, needle: &str) {
        assert!(
            !self.success() && self.stderr.contains(needle),
            "expected failure containing {needle:?}: {self}"
        );
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

fn base_command(endpoints: &str) -> Command {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .arg(format!("--endpoints={endpoints}"));
    cmd
}

fn cmdline(args: &[&str]) -> String {
    let mut s = String::from("etcdctl");
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(' ') || a.len() > 60 {
            let shown = if a.len() > 60 {
                format!("{}…({} bytes)", &a[..20], a.len())
            } else {
                a.to_string()
            };
            s.push_str(&format!("{shown:?}"));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// Runs `etcdctl --endpoints=<endpoints> ARGS` with `ETCDCTL_API=3`, feeding `stdin`.
pub fn etcdctl_at(endpoints: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
    let mut cmd = base_command(endpoints);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn etcdctl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes())
            .expect("write etcdctl stdin");
    }
    let out = child.wait_with_output().expect("wait etcdctl");
    CtlOutput {
        cmdline: cmdline(args),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `etcdctl ARGS` against `m`.
pub fn etcdctl(m: &Member, args: &[&str]) -> CtlOutput {
    etcdctl_at(&m.client_url(), args, None)
}

/// Runs `etcdctl ARGS` against `m`, feeding `stdin` (e.g. `txn -i`).
pub fn etcdctl_stdin(m: &Member, args: &[&str], stdin: &str) -> CtlOutput {
    etcdctl_at(&m.client_url(), args, Some(stdin))
}

/// Runs `etcdctl ARGS`, asserts success, returns stdout.
#[track_caller]
pub fn ctl_ok(m: &Member, args: &[&str]) -> String {
    etcdctl(m, args).ok()
}

/// Runs `etcdctl -w json ARGS`, asserts success and parses stdout. Keys and
/// values come back base64-encoded (see [`b64`]); int64 as JSON numbers.
#[track_caller]
pub fn etcdctl_json(m: &Member, args: &[&str]) -> Value {
    let mut full = vec!["-w", "json"];
    full.extend_from_slice(args);
    let out = etcdctl(m, &full).ok();
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("bad json from etcdctl {args:?}: {e}: {out}"))
}

/// True if this etcdctl knows `flag` for `subcommand` (e.g. `get --count-only` is 3.5+).
pub fn etcdctl_supports(subcommand: &str, flag: &str) -> bool {
    static HELP: OnceLock<Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    let map = HELP.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let help = map.entry(subcommand.to_string()).or_insert_with(|| {
        let out = base_command("http://127.0.0.1:1")
            .args([subcommand, "--help"])
            .output()
            .expect("etcdctl --help");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    });
    help.contains(flag)
}

/// Decodes standard base64 (as etcdctl's json output encodes keys and values).
pub fn b64(s: &str) -> String {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => panic!("bad base64 char {:?}", c as char),
        }
    }
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let k = chunk.len();
        out.push((n >> 16) as u8);
        if k > 2 {
            out.push((n >> 8) as u8);
        }
        if k > 3 {
            out.push(n as u8);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An integer field of a JSON object, 0 when absent (etcdctl omits zero values).
pub fn jint(v: &Value, field: &str) -> i64 {
    match v.get(field) {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .unwrap_or(0),
        Some(Value::String(s)) => s
            .parse()
            .unwrap_or_else(|_| panic!("{field}={s:?} not an int")),
        Some(other) => panic!("{field} is not an int: {other}"),
    }
}

/// One key-value from etcdctl's json output, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// create_revision.
    pub create: i64,
    /// mod_revision.
    pub modified: i64,
    /// version.
    pub version: i64,
    /// lease id.
    pub lease: i64,
}

impl Kv {
    /// Decodes one `kvs[i]` object.
    pub fn from_json(v: &Value) -> Kv {
        Kv {
            key: v
                .get("key")
                .and_then(Value::as_str)
                .map(b64)
                .unwrap_or_default(),
            value: v
                .get("value")
                .and_then(Value::as_str)
                .map(b64)
                .unwrap_or_default(),
            create: jint(v, "create_revision"),
            modified: jint(v, "mod_revision"),
            version: jint(v, "version"),
            lease: jint(v, "lease"),
        }
    }
}

/// The decoded `kvs` of a `get -w json` response.
pub fn kvs(resp: &Value) -> Vec<Kv> {
    resp.get("kvs")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Kv::from_json).collect())
        .unwrap_or_default()
}

/// `header.revision` of a json response.
pub fn header_revision(resp: &Value) -> i64 {
    jint(
        resp.get("header")
            .or_else(|| resp.get("Header"))
            .unwrap_or(resp),
        "revision",
    )
}

/// A long-running `etcdctl watch …` child whose stdout lines are collected
/// by a background thread. Dropping it kills the child.
pub struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    cmdline: String,
}

impl Watcher {
    /// Spawns `etcdctl watch ARGS` against `m`.
    pub fn spawn(m: &Member, args: &[&str]) -> Watcher {
        let mut cmd = base_command(&m.client_url());
        cmd.arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn etcdctl watch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let e = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        Watcher {
            child,
            lines,
            stderr,
            cmdline: cmdline(&all),
        }
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until at least `n` lines were printed (panics after `timeout`,
    /// showing what was printed); returns all lines so far.
    #[track_caller]
    pub fn wait_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        self.wait_until(&format!("{n} lines"), timeout, |lines| lines.len() >= n)
    }

    /// Waits until `done(lines so far)` holds (panics after `timeout`, showing
    /// what was printed and `what` was awaited); returns all lines so far.
    #[track_caller]
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            if done(&lines) {
                return lines;
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                // Give the reader threads a moment to drain.
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "`{}`: wanted {what}, got {} lines ({}):\n{:#?}\nstderr: {}",
                    self.cmdline,
                    self.lines().len(),
                    if exited { "watch exited" } else { "timed out" },
                    self.lines(),
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the watch and returns every line it printed.
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.lines()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
