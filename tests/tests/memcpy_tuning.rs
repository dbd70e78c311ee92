//! `keel` re-executes itself once at start on AMD CPUs with glibc's
//! `rep movsb` threshold raised (`src/memcpy.rs`). These check that the
//! binary starts under any `GLIBC_TUNABLES` a caller sets (no exec loop, the
//! caller's tunables kept) and that a running member carries the setting.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use keel_tests::{free_port, keel_bin};

const SETTING: &str = "glibc.cpu.x86_rep_movsb_threshold=0x1000000";

fn is_amd() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("AuthenticAMD"))
}

#[test]
fn keel_starts_under_any_caller_tunables() {
    for tunables in [
        None,
        Some(""),
        Some("glibc.malloc.check=0"),
        Some("glibc.cpu.x86_rep_movsb_threshold=0x800"),
    ] {
        let mut cmd = Command::new(keel_bin());
        cmd.arg("--version");
        match tunables {
            Some(t) => cmd.env("GLIBC_TUNABLES", t),
            None => cmd.env_remove("GLIBC_TUNABLES"),
        };
        let out = cmd.output().expect("run keel --version");
        assert!(out.status.success(), "{tunables:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("keel "), "{tunables:?}: {stdout:?}");
    }
}

/// The environment a running member was executed with (its last exec).
fn exec_environment(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn a_member_runs_with_the_setting_after_the_callers_tunables() {
    if !is_amd() || !cfg!(target_env = "gnu") {
        eprintln!("not an AMD CPU with glibc: keel does not re-execute here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("quic://127.0.0.1:{peer}");
    let mut child = Command::new(keel_bin())
        .args(["store", "--name", "t", "--data-dir"])
        .arg(dir.path().join("t"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args([
            "--initial-cluster",
            &format!("t={peer_url}"),
            "--log-level",
            "warn",
        ])
        .env("GLIBC_TUNABLES", "glibc.malloc.check=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keel store");
    // The member prints its ready line once it serves: the re-exec kept
    // its arguments. (Read on a thread: a member that never gets ready
    // fails the test instead of hanging it.)
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_default();
    let env = exec_environment(child.id());
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.contains("ready"), "{ready:?}");
    // The caller's tunables stay, the setting follows them. (glibc 2.36
    // splits the variable in place where it parses it, ':' becoming a NUL;
    // other versions leave it whole.)
    let at = env
        .iter()
        .position(|v| v.starts_with("GLIBC_TUNABLES="))
        .expect("GLIBC_TUNABLES in the member's exec environment");
    let whole = format!("GLIBC_TUNABLES=glibc.malloc.check=0:{SETTING}");
    let split = env[at] == "GLIBC_TUNABLES=glibc.malloc.check=0"
        && env.get(at + 1).map(String::as_str) == Some(SETTING);
    assert!(env[at] == whole || split, "{env:?}");
    // And the process keeps its name (`ps`, `pgrep keel`).
    assert_eq!(comm.trim(), "keel");
}
