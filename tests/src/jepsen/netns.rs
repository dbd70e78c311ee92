//! Network namespaces for a Jepsen cluster: every member is its own host.
//!
//! Layout of one [`Net`] (all names start with `kj<pid>-<n>-`, unique per
//! run; the root namespace gets no address and no route):
//!
//! ```text
//!   <p>sw   "switch": bridge br0 and one veth end per host (no address)
//!   <p>cli  the test's client host, 10.77.0.2 on eth0
//!   <p>m0   member 0, 10.77.0.10 on eth0
//!   <p>m1   member 1, 10.77.0.11 …
//! ```
//!
//! Because every run has its own switch, the fixed subnet `10.77.0.0/24`
//! exists only inside this run's namespaces and never reaches the host's
//! network. Members are started with `ip netns exec <ns> keel store …` (exec:
//! the child *is* keel, so signals reach it). The test process reaches them
//! with sockets created in the client namespace by a dedicated thread that
//! entered it with `setns(2)` ([`SocketFactory`]).
//!
//! Faults: partitions are `blackhole` routes inside a member's namespace
//! (one side only: one-way), loss/delay is a `tc tbf` bucket on its `eth0`
//! (see [`Shape`]).
//! Everything is deleted in `Drop`; [`clean_stale`] removes namespaces of
//! earlier runs whose process is gone.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace this harness creates.
pub const PREFIX: &str = "kj";

/// True when running as root (namespaces, tmpfs mounts and `tc` possible).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Runs `prog ARGS`, failing with its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("run {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Names of existing network namespaces (`ip netns list`).
pub fn list_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Deletes namespaces `kj<pid>-…` left behind by earlier runs whose process
/// no longer exists (a crashed or killed test). Returns how many.
pub fn clean_stale() -> usize {
    let me = std::process::id();
    let mut n = 0;
    for ns in list_namespaces() {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_in_namespace(&ns);
        if ip(&["netns", "del", &ns]).is_ok() {
            n += 1;
        }
    }
    n
}

/// SIGKILLs every process left in namespace `ns` (`ip netns pids`).
fn kill_in_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                if pid as u32 == std::process::id() {
                    continue;
                }
                // SAFETY: kill(2) on a process inside our own namespace.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Creates TCP sockets inside one network namespace (or in the current one),
/// so that connections made with them start from that namespace.
///
/// A socket belongs to the namespace of the thread that created it, for its
/// whole life; a dedicated thread enters the namespace once and creates
/// sockets on request. Cheap to clone.
#[derive(Clone)]
pub struct SocketFactory {
    tx: Option<Arc<Mutex<mpsc::Sender<Reply>>>>,
}

/// Where the namespace thread sends a new socket.
type Reply = mpsc::Sender<io::Result<OwnedFd>>;

impl SocketFactory {
    /// Sockets from the current namespace (loopback mode).
    pub fn local() -> SocketFactory {
        SocketFactory { tx: None }
    }

    /// Sockets from namespace `ns` (`/var/run/netns/<ns>`).
    pub fn in_namespace(ns: &str) -> Result<SocketFactory> {
        let path = format!("/var/run/netns/{ns}");
        let f = File::open(&path).with_context(|| format!("open {path}"))?;
        let (tx, rx) = mpsc::channel::<Reply>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn(move || {
                // SAFETY: setns on this thread only, with an fd we own.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    let _ = ready_tx.send(Err(io::Error::last_os_error()));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                // Ends when every sender (factory clone) is gone.
                while let Ok(reply) = rx.recv() {
                    let _ = reply.send(new_socket());
                }
            })
            .context("spawn netns thread")?;
        ready_rx
            .recv()
            .context("netns thread died")?
            .with_context(|| format!("setns({ns})"))?;
        Ok(SocketFactory {
            tx: Some(Arc::new(Mutex::new(tx))),
        })
    }

    /// A fresh non-blocking TCP socket (IPv4).
    fn socket(&self) -> io::Result<OwnedFd> {
        match &self.tx {
            None => new_socket(),
            Some(tx) => {
                let (rtx, rrx) = mpsc::channel();
                tx.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send(rtx)
                    .map_err(|_| io::Error::other("netns thread gone"))?;
                rrx.recv()
                    .map_err(|_| io::Error::other("netns thread gone"))?
            }
        }
    }

    /// Connects to `addr` from the factory's namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let fd = self.socket()?;
        // SAFETY: `fd` is a fresh TCP socket we own.
        let std =
            unsafe { std::net::TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
        let sock = tokio::net::TcpSocket::from_std_stream(std);
        let s = sock.connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

fn new_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is wrapped right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A degraded link for one host's egress: a token bucket (`tc tbf`) of
/// `rate_kbit` with a queue of `latency_ms`, so traffic above the rate is
/// delayed and, once the queue is full, dropped. (This kernel has no
/// `netem` qdisc and no `gact` action, so loss and delay come from the
/// bucket; where `netem` exists it would be the finer tool.)
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// Sustained rate, kbit/s.
    pub rate_kbit: u32,
    /// Longest queueing delay before drops, ms.
    pub latency_ms: u32,
}

/// One run's namespaces: a switch, a client host and member hosts.
pub struct Net {
    prefix: String,
    hosts: Vec<String>,
    created: Vec<String>,
    partitions: Mutex<Vec<(usize, usize)>>,
    shaped: Mutex<Vec<usize>>,
    sockets: SocketFactory,
}

const SUBNET: [u8; 3] = [10, 77, 0];

impl Net {
    /// Creates the switch, the client host and `n` member hosts.
    pub fn create(n: usize) -> Result<Net> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "{PREFIX}{}-{}-",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            prefix,
            hosts: Vec::new(),
            created: Vec::new(),
            partitions: Mutex::new(Vec::new()),
            shaped: Mutex::new(Vec::new()),
            sockets: SocketFactory::local(),
        };
        let sw = net.switch();
        net.add_ns(&sw)?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let cli = net.client_ns();
        net.add_host(
            &cli,
            Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 2),
            "vcli",
        )?;
        for _ in 0..n {
            net.add_member_host()?;
        }
        net.sockets = SocketFactory::in_namespace(&cli)?;
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// The client host's namespace.
    pub fn client_ns(&self) -> String {
        format!("{}cli", self.prefix)
    }

    /// Sockets from the client host.
    pub fn sockets(&self) -> SocketFactory {
        self.sockets.clone()
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// Creates namespace `ns` with address `addr/24` on `eth0`, wired to the
    /// switch through veth `sw_end`.
    fn add_host(&mut self, ns: &str, addr: Ipv4Addr, sw_end: &str) -> Result<()> {
        self.add_ns(ns)?;
        let sw = self.switch();
        ip(&[
            "-n", &sw, "link", "add", sw_end, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", &sw, "link", "set", sw_end, "master", "br0"])?;
        ip(&["-n", &sw, "link", "set", sw_end, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])
    }

    /// Adds one more member host; returns its index.
    pub fn add_member_host(&mut self) -> Result<usize> {
        let i = self.hosts.len();
        let ns = format!("{}m{i}", self.prefix);
        self.add_host(&ns, self.member_ip(i), &format!("vm{i}"))?;
        self.hosts.push(ns);
        Ok(i)
    }

    /// Number of member hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// True if there are no member hosts.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Member host `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Member host `i`'s address.
    pub fn member_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + i as u8)
    }

    /// Drops every packet `from` sends to `to` (a one-way partition; call
    /// both ways for a full cut).
    pub fn cut(&self, from: usize, to: usize) -> Result<()> {
        let mut p = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        if p.contains(&(from, to)) {
            return Ok(());
        }
        let dst = format!("{}/32", self.member_ip(to));
        ip(&["-n", &self.hosts[from], "route", "add", "blackhole", &dst])?;
        p.push((from, to));
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<()> {
        let mut p = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let mut first_err = None;
        for (from, to) in p.drain(..) {
            let dst = format!("{}/32", self.member_ip(to));
            if let Err(e) = ip(&["-n", &self.hosts[from], "route", "del", "blackhole", &dst]) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The current cuts `(from, to)`.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Degrades host `i`'s egress (see [`Shape`]).
    pub fn shape(&self, i: usize, n: &Shape) -> Result<()> {
        let mut on = self.shaped.lock().unwrap_or_else(|e| e.into_inner());
        let verb = if on.contains(&i) { "change" } else { "add" };
        let rate = format!("{}kbit", n.rate_kbit);
        let latency = format!("{}ms", n.latency_ms);
        run(
            "tc",
            &[
                "-n",
                &self.hosts[i],
                "qdisc",
                verb,
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                &rate,
                "burst",
                "16kb",
                "latency",
                &latency,
            ],
        )?;
        if !on.contains(&i) {
            on.push(i);
        }
        Ok(())
    }

    /// Removes every shaping qdisc.
    pub fn clear_shapes(&self) -> Result<()> {
        let mut on = self.shaped.lock().unwrap_or_else(|e| e.into_inner());
        let mut first_err = None;
        for i in on.drain(..) {
            if let Err(e) = run(
                "tc",
                &["-n", &self.hosts[i], "qdisc", "del", "dev", "eth0", "root"],
            ) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            kill_in_namespace(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
