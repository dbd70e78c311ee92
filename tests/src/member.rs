//! One store member: a spawned `etcd` or `keel store` process with its own data
//! dir, ports and log file.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::keel_bin::keel_bin;
use crate::ports::free_port;
use crate::Backend;

/// Path of the real etcd server used as the reference backend (`$ETCD_BIN` overrides).
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// How long [`Member::wait_ready`] waits for `/health` to answer healthy.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Server options, spelled like etcd's flags. `None` leaves the server default.
#[derive(Clone, Debug)]
pub struct MemberOpts {
    /// `--name`.
    pub name: String,
    /// `--snapshot-count`.
    pub snapshot_count: Option<u64>,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: Option<u64>,
    /// `--max-request-bytes`.
    pub max_request_bytes: Option<u64>,
    /// Extra flags appended verbatim (for both backends).
    pub extra_args: Vec<String>,
    /// `--initial-cluster` (`name=peer-url,...`); `None`: this member alone.
    pub initial_cluster: Option<String>,
    /// `--initial-cluster-state` (`new`/`existing`); `None`: `new`.
    pub initial_cluster_state: Option<String>,
    /// keel only: also serve the QUIC client API
    /// (`--listen-client-quic-urls`, on a port of its own, with the
    /// generated self-signed certificate: [`Member::quic_cert`]).
    pub quic_client: bool,
}

impl Default for MemberOpts {
    fn default() -> Self {
        MemberOpts {
            name: "m1".to_string(),
            snapshot_count: None,
            quota_backend_bytes: None,
            max_request_bytes: None,
            extra_args: Vec::new(),
            initial_cluster: None,
            initial_cluster_state: None,
            quic_client: false,
        }
    }
}

impl MemberOpts {
    /// Sets `--max-request-bytes`.
    pub fn max_request_bytes(mut self, n: u64) -> Self {
        self.max_request_bytes = Some(n);
        self
    }
    /// Sets `--quota-backend-bytes`.
    pub fn quota_backend_bytes(mut self, n: u64) -> Self {
        self.quota_backend_bytes = Some(n);
        self
    }
    /// Sets `--snapshot-count`.
    pub fn snapshot_count(mut self, n: u64) -> Self {
        self.snapshot_count = Some(n);
        self
    }
    /// Serves the QUIC client API too (keel).
    pub fn quic_client(mut self) -> Self {
        self.quic_client = true;
        self
    }
    /// Sets `--name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

/// A single-member cluster: one server process.
///
/// The temp dir holds `data/` (the `--data-dir`) and `member.log` (the
/// process's stdout+stderr, appended to across restarts). Dropping a `Member`
/// kills the process (SIGKILL) and removes the dir; if the thread is panicking
/// the tail of the log is printed first, so a failing test shows it.
pub struct Member {
    backend: Backend,
    opts: MemberOpts,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// The QUIC client API's UDP port ([`MemberOpts::quic_client`]).
    quic_port: Option<u16>,
    child: Option<Child>,
    starts: u32,
}

impl Member {
    /// Starts a fresh member and waits until it is ready. Panics on failure
    /// (with the server log in the message).
    pub fn start(backend: Backend, opts: MemberOpts) -> Member {
        Self::try_start(backend, opts).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Member::start`] but returns the error. Retries with new ports if
    /// the server could not bind them ("address already in use").
    pub fn try_start(backend: Backend, opts: MemberOpts) -> Result<Member> {
        let mut m = Self::prepare(backend, opts)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = m.launch().and_then(|_| m.wait_ready());
            match res {
                Ok(()) => return Ok(m),
                Err(e) => {
                    let log = m.log();
                    let in_use = log.to_ascii_lowercase().contains("address already in use")
                        || log.to_ascii_lowercase().contains("address in use");
                    if !in_use || attempt >= 5 {
                        return Err(e);
                    }
                    m.kill9();
                    let data = m.data_dir();
                    if data.exists() {
                        std::fs::remove_dir_all(&data).context("wipe data dir for retry")?;
                    }
                    m.client_port = free_port();
                    m.peer_port = free_port();
                    if m.quic_port.is_some() {
                        m.quic_port = Some(free_port());
                    }
                }
            }
        }
    }

    /// Allocates the dir and ports without starting anything (e.g. to restore
    /// a snapshot into [`Member::data_dir`] first; then call [`Member::restart`]).
    pub fn prepare(backend: Backend, opts: MemberOpts) -> Result<Member> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-e2e-{}-", backend.name()))
            .tempdir()
            .context("create member temp dir")?;
        let quic_port = (opts.quic_client && backend == Backend::Keel).then(free_port);
        Ok(Member {
            backend,
            opts,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            quic_port,
            child: None,
            starts: 0,
        })
    }

    /// Which server this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The options it was started with.
    pub fn opts(&self) -> &MemberOpts {
        &self.opts
    }
    /// The options, to change before the next (re)start (e.g. the
    /// `--initial-cluster` of a multi-member cluster, once every member's
    /// ports are known after [`Member::prepare`]).
    pub fn opts_mut(&mut self) -> &mut MemberOpts {
        &mut self.opts
    }
    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }
    /// `--name`.
    pub fn name(&self) -> &str {
        &self.opts.name
    }
    /// `http://127.0.0.1:PORT`, the client URL (gRPC + /health + /metrics).
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    /// `quic://127.0.0.1:PORT`, the QUIC client API, if it is served.
    pub fn quic_url(&self) -> Option<String> {
        self.quic_port.map(|p| format!("quic://127.0.0.1:{p}"))
    }
    /// The QUIC client API's self-signed certificate (generated at the
    /// first start): what a client pins (`--etcd-cafile`).
    pub fn quic_cert(&self) -> PathBuf {
        self.data_dir()
            .join("fixtures")
            .join("client")
            .join("cert.pem")
    }
    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }
    /// The peer URL: `http://` for etcd, `quic://` for keel.
    pub fn peer_url(&self) -> String {
        let scheme = match self.backend {
            Backend::Etcd => "http",
            Backend::Keel => "quic",
        };
        format!("{scheme}://127.0.0.1:{}", self.peer_port)
    }
    /// `--initial-cluster` value: [`MemberOpts::initial_cluster`] if set, else
    /// this single member.
    pub fn initial_cluster(&self) -> String {
        match &self.opts.initial_cluster {
            Some(c) => c.clone(),
            None => format!("{}={}", self.opts.name, self.peer_url()),
        }
    }
    /// The `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// A scratch dir that lives as long as the member (holds the log and data dir).
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }
    /// Path of the log file (stdout + stderr of every run).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("member.log")
    }
    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The server command line (program + args) for the current ports and options.
    pub fn command(&self) -> Command {
        let o = &self.opts;
        let mut cmd = match self.backend {
            Backend::Etcd => Command::new(etcd_bin()),
            Backend::Keel => {
                let mut c = Command::new(keel_bin());
                c.arg("store");
                c
            }
        };
        let client = self.client_url();
        let peer = self.peer_url();
        cmd.arg("--name").arg(&o.name);
        cmd.arg("--data-dir").arg(self.data_dir());
        cmd.args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ]);
        cmd.args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ]);
        cmd.args(["--initial-cluster", &self.initial_cluster()]);
        let state = o.initial_cluster_state.as_deref().unwrap_or("new");
        cmd.args(["--initial-cluster-state", state]);
        if let Some(n) = o.snapshot_count {
            cmd.args(["--snapshot-count", &n.to_string()]);
        }
        if let Some(n) = o.quota_backend_bytes {
            cmd.args(["--quota-backend-bytes", &n.to_string()]);
        }
        if let Some(n) = o.max_request_bytes {
            cmd.args(["--max-request-bytes", &n.to_string()]);
        }
        if self.backend == Backend::Etcd {
            // A single member elects itself after one election timeout; keep
            // restarts fast. (Lease minimum TTL stays well under 2 s.)
            cmd.args(["--heartbeat-interval", "25", "--election-timeout", "250"]);
        }
        if let Some(p) = self.quic_port {
            cmd.args([
                "--listen-client-quic-urls",
                &format!("quic://127.0.0.1:{p}"),
            ]);
        }
        cmd.args(&o.extra_args);
        cmd
    }

    /// Spawns the process (does not wait for readiness). Errors if it is already running.
    pub fn launch(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("member {} is already running", self.opts.name);
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("open member log")?;
        let mut cmd = self.command();
        writeln!(log, "===== keel-tests: start #{}: {:?}", self.starts, cmd).ok();
        let err = log.try_clone().context("clone log fd")?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
        self.child = Some(child);
        Ok(())
    }

    /// True if the process is running (not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Polls `GET /health` on the client URL until it answers 200 and healthy,
    /// for up to [`READY_TIMEOUT`]. Fails early if the process exits.
    pub fn wait_ready(&mut self) -> Result<()> {
        self.wait_ready_for(READY_TIMEOUT)
    }

    /// [`Member::wait_ready`] with an explicit deadline.
    pub fn wait_ready_for(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(anyhow!(
                        "member {} ({}) exited with {status} before becoming ready\n{}",
                        self.opts.name,
                        self.backend.name(),
                        self.log_tail(80)
                    ));
                }
            } else {
                bail!("member {} is not running", self.opts.name);
            }
            match self.http_get("/health") {
                Ok((200, body)) if !body.contains("false") => return Ok(()),
                Ok((code, body)) => last = format!("HTTP {code}: {body}"),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "member {} ({}) not ready after {timeout:?}; last /health: {last}\n{}",
                    self.opts.name,
                    self.backend.name(),
                    self.log_tail(80)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plain HTTP/1.1 GET on the client port; returns (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.client_port
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status_line = text.lines().next().unwrap_or_default();
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad HTTP response: {status_line:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        Ok((code, body))
    }

    /// SIGKILL and reap. No-op if not running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to 10 s for a clean exit, then SIGKILL. Returns true if
    /// it exited on its own after SIGTERM.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Starts the process again with the same data dir, ports and options (after
    /// `kill9`/`stop`, or the first time after `prepare`) and waits until ready.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.launch()?;
        self.wait_ready()
    }

    /// The last `n` lines of the log, with a header.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(n);
        format!(
            "----- last {} lines of {} ({}) -----\n{}\n-----",
            lines.len() - start,
            self.log_path().display(),
            self.backend.name(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("member {} log:\n{}", self.opts.name, self.log_tail(60));
            if std::env::var_os("KEEL_E2E_KEEP").is_some() {
                let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
                eprintln!("keeping {}", dir.keep().display());
            }
        }
    }
}
