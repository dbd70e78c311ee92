//! The cluster under test: `keel store` processes, each on its own host (a
//! network namespace, see [`super::netns`]) when running as root, else on
//! loopback.
//!
//! Each member lives in `<root>/<name>/`: `member.log` (stdout+stderr across
//! restarts) and `disk/data` (the `--data-dir`). One member's `disk/` can be
//! a small tmpfs (root only) so the disk-full nemesis can fill it with a
//! `disk/ballast` file.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keel_storage::proto::etcdserverpb::cluster_client::ClusterClient;
use keel_storage::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_storage::proto::etcdserverpb::{
    MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, StatusRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

use super::netns::{self, Net, SocketFactory};
use crate::cluster::Status;
use crate::{free_port, keel_bin};

/// Options of a [`Db`].
#[derive(Clone, Debug)]
pub struct DbOpts {
    /// Initial voting members.
    pub size: usize,
    /// Use network namespaces (needs root).
    pub namespaces: bool,
    /// Member index whose data dir is a tmpfs of `tmpfs_mb` MiB (root only).
    pub tmpfs_member: Option<usize>,
    /// Size of that tmpfs.
    pub tmpfs_mb: u64,
    /// `--heartbeat-interval`, ms.
    pub heartbeat_ms: u64,
    /// `--election-timeout`, ms.
    pub election_ms: u64,
    /// `--snapshot-count`.
    pub snapshot_count: u64,
    /// `--experimental-wal-segment-size`, bytes.
    pub wal_segment: u64,
}

impl Default for DbOpts {
    fn default() -> Self {
        DbOpts {
            size: 3,
            namespaces: netns::is_root(),
            tmpfs_member: None,
            tmpfs_mb: 64,
            heartbeat_ms: 50,
            election_ms: 500,
            snapshot_count: 1000,
            wal_segment: 4 << 20,
        }
    }
}

/// One member process slot.
pub struct Node {
    /// `a`, `b`, ….
    pub name: String,
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    host: Option<String>,
    child: Option<Child>,
    initial_cluster: String,
    state: &'static str,
    /// `FAILPOINTS` for the next start only.
    pub failpoints: Option<String>,
    /// Removed from the cluster (slot kept).
    pub removed: bool,
    /// Currently SIGSTOPped.
    pub paused: bool,
    /// Its data dir is on a tmpfs.
    pub tmpfs: bool,
    /// Member ID (from its status; 0 until known).
    pub id: u64,
    starts: u32,
}

impl Node {
    /// `http://addr`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }
    /// `quic://addr`.
    pub fn peer_url(&self) -> String {
        format!("quic://{}", self.peer)
    }
    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }
    /// `<root>/<name>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The directory that may be a tmpfs.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }
    /// The `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.disk().join("data")
    }
    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("member.log")
    }
    /// The log's contents.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    /// The process id, if started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// True if the process is running (possibly paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }
    /// The exit status if the process has exited (and reaps it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// A cluster of `keel store` processes.
pub struct Db {
    opts: DbOpts,
    root: PathBuf,
    net: Option<Net>,
    sockets: SocketFactory,
    /// Member slots (a removed member keeps its slot).
    pub nodes: Vec<Node>,
    mounts: Vec<PathBuf>,
    rt_handle: tokio::runtime::Handle,
}

impl Db {
    /// Creates the hosts (namespaces if `opts.namespaces`) and starts
    /// `opts.size` members under `root`, then waits for a leader. Must be
    /// called from outside the runtime behind `rt`.
    pub fn start(opts: DbOpts, root: &Path, rt: tokio::runtime::Handle) -> Result<Db> {
        std::fs::create_dir_all(root)?;
        let net = if opts.namespaces {
            let stale = netns::clean_stale();
            if stale > 0 {
                eprintln!("jepsen: removed {stale} stale namespaces of earlier runs");
            }
            Some(Net::create(opts.size)?)
        } else {
            None
        };
        let sockets = net
            .as_ref()
            .map(|n| n.sockets())
            .unwrap_or_else(SocketFactory::local);
        let mut db = Db {
            opts,
            root: root.to_path_buf(),
            net,
            sockets,
            nodes: Vec::new(),
            mounts: Vec::new(),
            rt_handle: rt,
        };
        for i in 0..db.opts.size {
            db.new_node(i)?;
        }
        let initial = db.initial_cluster(&(0..db.opts.size).collect::<Vec<_>>());
        for n in &mut db.nodes {
            n.initial_cluster = initial.clone();
        }
        for i in 0..db.nodes.len() {
            db.launch(i)?;
        }
        for i in 0..db.nodes.len() {
            db.wait_serving(i, Duration::from_secs(30))?;
        }
        db.wait_leader(Duration::from_secs(30))?;
        Ok(db)
    }

    /// The options.
    pub fn opts(&self) -> &DbOpts {
        &self.opts
    }
    /// The network, when members run in namespaces.
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }
    /// Where the members' dirs are.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Socket factory for clients (the client host's namespace).
    pub fn sockets(&self) -> SocketFactory {
        self.sockets.clone()
    }

    fn new_node(&mut self, i: usize) -> Result<()> {
        let name = ((b'a' + i as u8) as char).to_string();
        let (client, peer, host) = match &mut self.net {
            Some(net) => {
                if net.len() <= i {
                    net.add_member_host()?;
                }
                let ip = net.member_ip(i);
                (
                    SocketAddr::from((ip, 2379)),
                    SocketAddr::from((ip, 2380)),
                    Some(net.ns(i).to_string()),
                )
            }
            None => (
                SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
                SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
                None,
            ),
        };
        let dir = self.root.join(&name);
        std::fs::create_dir_all(dir.join("disk"))?;
        let mut tmpfs = false;
        if self.opts.tmpfs_member == Some(i) && netns::is_root() {
            let disk = dir.join("disk");
            let size = format!("size={}m", self.opts.tmpfs_mb);
            netns::run(
                "mount",
                &["-t", "tmpfs", "-o", &size, "tmpfs", &disk.to_string_lossy()],
            )?;
            self.mounts.push(disk);
            tmpfs = true;
        }
        self.nodes.push(Node {
            name,
            dir,
            client,
            peer,
            host,
            child: None,
            initial_cluster: String::new(),
            state: "new",
            failpoints: None,
            removed: false,
            paused: false,
            tmpfs,
            id: 0,
            starts: 0,
        });
        Ok(())
    }

    /// `name=peer,...` over the given members.
    pub fn initial_cluster(&self, idx: &[usize]) -> String {
        idx.iter()
            .map(|&i| format!("{}={}", self.nodes[i].name, self.nodes[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Spawns member `i` (no wait). Uses (and clears) its `failpoints`.
    pub fn launch(&mut self, i: usize) -> Result<()> {
        let o = &self.opts;
        let n = &mut self.nodes[i];
        if n.is_running() {
            bail!("member {} is already running", n.name);
        }
        n.starts += 1;
        let mut cmd = match &n.host {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(keel_bin());
                c
            }
            None => Command::new(keel_bin()),
        };
        let client = n.client_url();
        let peer = n.peer_url();
        cmd.arg("store")
            .args(["--name", &n.name])
            .arg("--data-dir")
            .arg(n.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &n.initial_cluster])
            .args(["--initial-cluster-state", n.state])
            .args(["--heartbeat-interval", &o.heartbeat_ms.to_string()])
            .args(["--election-timeout", &o.election_ms.to_string()])
            .args(["--snapshot-count", &o.snapshot_count.to_string()])
            .args([
                "--experimental-wal-segment-size",
                &o.wal_segment.to_string(),
            ]);
        cmd.env_remove("FAILPOINTS");
        let fp = n.failpoints.take();
        if let Some(fp) = &fp {
            cmd.env("FAILPOINTS", fp);
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.log_path())
            .context("open member log")?;
        writeln!(
            log,
            "===== jepsen: start #{} (FAILPOINTS={fp:?}): {cmd:?}",
            n.starts
        )
        .ok();
        let err = log.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        n.child = Some(cmd.spawn().context("spawn keel")?);
        n.paused = false;
        Ok(())
    }

    /// Writes a marker line into member `i`'s log.
    pub fn log_note(&self, i: usize, note: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.nodes[i].log_path())
        {
            let _ = writeln!(f, "===== jepsen: {note}");
        }
    }

    /// A gRPC channel to member `i` (lazy; `timeout` per request, none if 0).
    pub fn channel(&self, i: usize, timeout: Duration) -> Channel {
        let _rt = self.rt_handle.enter();
        channel(&self.sockets, self.nodes[i].client, timeout)
    }

    /// `Maintenance.Status` of member `i`.
    pub async fn status(&self, i: usize, timeout: Duration) -> Result<Status> {
        let mut c = MaintenanceClient::new(self.channel(i, timeout));
        let r = tokio::time::timeout(timeout, c.status(StatusRequest {}))
            .await
            .map_err(|_| anyhow!("status of {}: timed out", self.nodes[i].name))??
            .into_inner();
        Ok(r.into())
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt_handle.block_on(f)
    }

    /// Waits until member `i` answers `Status` (fails early if it exits).
    pub fn wait_serving(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.nodes[i].exited() {
                bail!(
                    "member {} exited with {st} while starting\n{}",
                    self.nodes[i].name,
                    self.log_tail(i, 40)
                );
            }
            match self.block_on(self.status(i, Duration::from_millis(500))) {
                Ok(s) => {
                    self.nodes[i].id = s.member_id;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "member {} not serving after {timeout:?}: {e:#}\n{}",
                        self.nodes[i].name,
                        self.log_tail(i, 40)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The last `n` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let log = self.nodes[i].log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "----- {} -----\n{}",
            self.nodes[i].log_path().display(),
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    /// Members that are not removed.
    pub fn active(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| !self.nodes[i].removed)
            .collect()
    }

    /// Members that are not removed, running and not paused.
    pub fn live(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                let n = &mut self.nodes[i];
                !n.removed && !n.paused && n.is_running()
            })
            .collect()
    }

    /// The index of the member with ID `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id && id != 0)
    }

    /// The leader, if every live member answers and names the same live one.
    pub fn leader(&mut self) -> Option<usize> {
        let live = self.live();
        let sts: Vec<_> = self.block_on(async {
            let futs = live
                .iter()
                .map(|&i| self.status(i, Duration::from_millis(500)));
            futures::future::join_all(futs).await
        });
        let mut leader = None;
        for (&i, s) in live.iter().zip(sts) {
            let s = s.ok()?;
            self.nodes[i].id = s.member_id;
            if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
                return None;
            }
            leader = Some(s.leader);
        }
        let l = self.index_of(leader?)?;
        live.contains(&l).then_some(l)
    }

    /// Waits for [`Db::leader`].
    pub fn wait_leader(&mut self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                let live = self.live();
                let sts: Vec<String> = live
                    .iter()
                    .map(|&i| {
                        format!(
                            "{}: {:?}",
                            self.nodes[i].name,
                            self.block_on(self.status(i, Duration::from_millis(500)))
                        )
                    })
                    .collect();
                bail!("no agreed leader after {timeout:?}: {sts:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL member `i` (no-op if not running).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    /// SIGSTOP / SIGCONT member `i`.
    pub fn pause(&mut self, i: usize, stop: bool) {
        if let Some(pid) = self.nodes[i].pid() {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
            self.nodes[i].paused = stop;
        }
    }

    /// Kills (if needed) and starts member `i` again; waits until it serves.
    pub fn restart(&mut self, i: usize, timeout: Duration) -> Result<()> {
        self.kill9(i);
        self.launch(i)?;
        self.wait_serving(i, timeout)
    }

    /// Adds a new member (a new host) through `MemberAdd` and starts it with
    /// `--initial-cluster-state existing`. Returns its index.
    pub fn add_member(&mut self, learner: bool) -> Result<usize> {
        let i = self.nodes.len();
        self.new_node(i)?;
        let peer = self.nodes[i].peer_url();
        let via = self.wait_leader(Duration::from_secs(10))?;
        let ch = self.channel(via, Duration::from_secs(10));
        let resp = self
            .block_on(async move {
                ClusterClient::new(ch)
                    .member_add(MemberAddRequest {
                        peer_ur_ls: vec![peer],
                        is_learner: learner,
                    })
                    .await
            })
            .map_err(|e| anyhow!("MemberAdd: {e}"));
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(e) => {
                self.nodes[i].removed = true;
                return Err(e);
            }
        };
        self.nodes[i].id = resp.member.as_ref().map_or(0, |m| m.id);
        let mut idx = self.active();
        idx.retain(|&j| j != i);
        idx.push(i);
        self.nodes[i].initial_cluster = self.initial_cluster(&idx);
        self.nodes[i].state = "existing";
        self.launch(i)?;
        self.wait_serving(i, Duration::from_secs(30))?;
        Ok(i)
    }

    /// Promotes learner `i`, retrying while it is not yet in sync.
    pub fn promote(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let via = self.wait_leader(Duration::from_secs(10))?;
            let ch = self.channel(via, Duration::from_secs(10));
            let id = self.nodes[i].id;
            let r = self.block_on(async move {
                ClusterClient::new(ch)
                    .member_promote(MemberPromoteRequest { id })
                    .await
            });
            match r {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => bail!("MemberPromote: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// Removes member `i` through `MemberRemove` and stops its process.
    pub fn remove(&mut self, i: usize) -> Result<()> {
        let via = self.wait_leader(Duration::from_secs(10))?;
        let ch = self.channel(via, Duration::from_secs(10));
        let id = self.nodes[i].id;
        self.block_on(async move {
            ClusterClient::new(ch)
                .member_remove(MemberRemoveRequest { id })
                .await
        })
        .map_err(|e| anyhow!("MemberRemove: {e}"))?;
        self.nodes[i].removed = true;
        self.kill9(i);
        Ok(())
    }

    /// Fills member `i`'s tmpfs with a ballast file until it is full.
    pub fn fill_disk(&self, i: usize) -> Result<u64> {
        let path = self.nodes[i].disk().join("ballast");
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(_) => break,
            }
        }
        Ok(n)
    }

    /// Removes the ballast.
    pub fn free_disk(&self, i: usize) {
        let _ = std::fs::remove_file(self.nodes[i].disk().join("ballast"));
    }

    /// Kills every process and unmounts the tmpfs (copying its contents
    /// to `<name>/disk-copy` first when `keep`).
    pub fn shutdown(&mut self, keep: bool) {
        for i in 0..self.nodes.len() {
            self.pause(i, false);
            self.kill9(i);
        }
        for m in self.mounts.drain(..) {
            if keep {
                let _ = std::fs::remove_file(m.join("ballast"));
                let copy = m.with_file_name("disk-copy");
                let _ = Command::new("cp").arg("-a").arg(&m).arg(&copy).status();
            }
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// A lazy gRPC channel to `addr` whose TCP connections start from the
/// sockets' namespace. `timeout` bounds each request (0: no bound).
pub fn channel(sockets: &SocketFactory, addr: SocketAddr, timeout: Duration) -> Channel {
    let mut ep = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid url")
        .connect_timeout(Duration::from_millis(1000))
        .tcp_nodelay(true);
    if !timeout.is_zero() {
        ep = ep.timeout(timeout);
    }
    let sockets = sockets.clone();
    ep.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
        let sockets = sockets.clone();
        async move {
            sockets
                .connect(addr)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    }))
}
