//! A multi-member cluster of real server processes (`keel store` or etcd), and
//! a gRPC write load that records every acknowledged put.
//!
//! - [`Cluster`]: N [`Member`]s started with one shared `--initial-cluster`;
//!   leader discovery (`Maintenance.Status` over gRPC), kill / stop / pause /
//!   restart of single members, membership changes through `etcdctl`, and the
//!   end-of-test checks (every acknowledged write on every member, equal
//!   revisions and `HashKV`).
//! - [`Load`]: writer tasks putting unique keys round-robin over a (changeable)
//!   list of client URLs, recording every acknowledged `(key, revision)` and
//!   every failure with its time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keel_storage::proto::etcdserverpb::cluster_client::ClusterClient;
use keel_storage::proto::etcdserverpb::kv_client::KvClient;
use keel_storage::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_storage::proto::etcdserverpb::{
    HashKvRequest, MemberAddRequest, PutRequest, RangeRequest, StatusRequest, StatusResponse,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use crate::{etcdctl_at, Backend, CtlOutput, Member, MemberOpts};

/// Options shared by every member of a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Number of members started by [`Cluster::start`].
    pub size: usize,
    /// `--heartbeat-interval`, ms.
    pub heartbeat_ms: u64,
    /// `--election-timeout`, ms.
    pub election_ms: u64,
    /// `--snapshot-count`.
    pub snapshot_count: Option<u64>,
    /// Extra flags for every member.
    pub extra_args: Vec<String>,
    /// Every member also serves the QUIC client API
    /// ([`MemberOpts::quic_client`]).
    pub quic_client: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            size: 3,
            heartbeat_ms: 50,
            election_ms: 500,
            snapshot_count: None,
            extra_args: Vec::new(),
            quic_client: false,
        }
    }
}

impl ClusterOpts {
    /// Sets `--snapshot-count` for every member.
    pub fn snapshot_count(mut self, n: u64) -> Self {
        self.snapshot_count = Some(n);
        self
    }
    /// Sets the number of members.
    pub fn size(mut self, n: usize) -> Self {
        self.size = n;
        self
    }
    /// The election timeout as a [`Duration`].
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_ms)
    }
}

/// What `Maintenance.Status` says about one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The answering member's ID.
    pub member_id: u64,
    /// The leader it knows of (0: none).
    pub leader: u64,
    /// Its current MVCC revision.
    pub revision: i64,
    /// Its raft term.
    pub raft_term: u64,
    /// Its raft (last log) index.
    pub raft_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// True for a learner.
    pub is_learner: bool,
}

impl From<StatusResponse> for Status {
    fn from(r: StatusResponse) -> Status {
        let h = r.header.unwrap_or_default();
        Status {
            member_id: h.member_id,
            leader: r.leader,
            revision: h.revision,
            raft_term: r.raft_term,
            raft_index: r.raft_index,
            applied_index: r.raft_applied_index,
            is_learner: r.is_learner,
        }
    }
}

/// One store value as read back: key → (value, mod_revision).
pub type KvMap = BTreeMap<String, (String, i64)>;

/// A cluster of real member processes, members named `a`, `b`, `c`, ….
///
/// Member indexes are stable: a removed member keeps its slot (stopped, and
/// marked removed). Dropping the cluster kills every process.
pub struct Cluster {
    backend: Backend,
    opts: ClusterOpts,
    members: Vec<Member>,
    removed: Vec<bool>,
    paused: Vec<bool>,
    ids: Vec<u64>,
    rt: tokio::runtime::Runtime,
}

/// The conventional name of member `i`: `a`, `b`, ….
pub fn member_name(i: usize) -> String {
    ((b'a' + i as u8) as char).to_string()
}

fn member_opts(opts: &ClusterOpts, name: &str) -> MemberOpts {
    let mut mo = MemberOpts::default().name(name);
    mo.snapshot_count = opts.snapshot_count;
    mo.quic_client = opts.quic_client;
    mo.extra_args = vec![
        "--heartbeat-interval".into(),
        opts.heartbeat_ms.to_string(),
        "--election-timeout".into(),
        opts.election_ms.to_string(),
    ];
    mo.extra_args.extend(opts.extra_args.iter().cloned());
    mo
}

/// A connected (lazily) gRPC channel to `url` with short timeouts.
fn channel(url: &str, timeout: Duration) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("valid client url")
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy()
}

impl Cluster {
    /// Starts `opts.size` members with a shared `--initial-cluster`, waits
    /// until every one answers `/health` and all agree on a leader. Panics on
    /// failure (with the logs).
    pub fn start(backend: Backend, opts: ClusterOpts) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut members: Vec<Member> = (0..opts.size)
            .map(|i| {
                Member::prepare(backend, member_opts(&opts, &member_name(i)))
                    .expect("prepare member")
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name(), m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.opts_mut().initial_cluster = Some(initial.clone());
        }
        for m in &mut members {
            m.launch().unwrap_or_else(|e| panic!("{e:#}"));
        }
        for m in &mut members {
            m.wait_ready_for(Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        let n = members.len();
        let mut c = Cluster {
            backend,
            opts,
            members,
            removed: vec![false; n],
            paused: vec![false; n],
            ids: vec![0; n],
            rt,
        };
        c.wait_leader(Duration::from_secs(20));
        for i in 0..n {
            c.ids[i] = c
                .status(i)
                .unwrap_or_else(|e| panic!("status of {}: {e:#}", c.members[i].name()))
                .member_id;
        }
        c
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// The options.
    pub fn opts(&self) -> &ClusterOpts {
        &self.opts
    }
    /// The election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.opts.election_timeout()
    }
    /// Number of member slots (including removed ones).
    pub fn len(&self) -> usize {
        self.members.len()
    }
    /// True if there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    /// Member `i`.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }
    /// Member `i`, mutably.
    pub fn member_mut(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }
    /// The member ID of member `i` (learned from its status).
    pub fn id(&self, i: usize) -> u64 {
        self.ids[i]
    }
    /// The index of the member with ID `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&x| x == id && x != 0)
    }
    /// A tokio runtime handle for async helpers.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
    /// Indexes of members that are not removed (running or not).
    pub fn active(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| !self.removed[i])
            .collect()
    }
    /// Indexes of members that are not removed, not paused and running.
    pub fn live(&mut self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| !self.removed[i] && !self.paused[i] && self.members[i].is_running())
            .collect()
    }
    /// Client URLs of the given members.
    pub fn urls(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| self.members[i].client_url()).collect()
    }
    /// Comma-joined client URLs of the given members (for `--endpoints`).
    pub fn endpoints(&self, idx: &[usize]) -> String {
        self.urls(idx).join(",")
    }
    /// `--initial-cluster` over the given members.
    pub fn initial_cluster(&self, idx: &[usize]) -> String {
        idx.iter()
            .map(|&i| format!("{}={}", self.members[i].name(), self.members[i].peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `etcdctl ARGS` against member `i` only.
    pub fn ctl(&self, i: usize, args: &[&str]) -> CtlOutput {
        etcdctl_at(&self.members[i].client_url(), args, None)
    }
    /// Runs `etcdctl ARGS` against member `i`, asserting success; returns stdout.
    #[track_caller]
    pub fn ctl_ok(&self, i: usize, args: &[&str]) -> String {
        self.ctl(i, args).ok()
    }
    /// `etcdctl -w json ARGS` against member `i`, parsed.
    #[track_caller]
    pub fn ctl_json(&self, i: usize, args: &[&str]) -> Value {
        let mut full = vec!["-w", "json"];
        full.extend_from_slice(args);
        let out = self.ctl(i, &full).ok();
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("bad json from etcdctl {args:?}: {e}: {out}"))
    }

    /// `Maintenance.Status` of member `i` (1 s timeout).
    pub fn status(&self, i: usize) -> Result<Status> {
        let url = self.members[i].client_url();
        self.rt.block_on(status_of(&url, Duration::from_secs(1)))
    }

    /// The leader's index if every live member answers and names the same
    /// leader, which is itself one of the live members.
    pub fn leader(&mut self) -> Option<usize> {
        let live = self.live();
        let urls = self.urls(&live);
        let statuses = self.rt.block_on(async {
            let futs = urls
                .iter()
                .map(|u| status_of(u, Duration::from_millis(500)))
                .collect::<Vec<_>>();
            futures::future::join_all(futs).await
        });
        let mut leader = None;
        let mut agreed = true;
        for (&i, s) in live.iter().zip(statuses) {
            let Ok(s) = s else {
                agreed = false;
                continue;
            };
            self.ids[i] = s.member_id;
            if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
                agreed = false;
            }
            leader = Some(s.leader);
        }
        if !agreed {
            return None;
        }
        let idx = self.index_of(leader?)?;
        live.contains(&idx).then_some(idx)
    }

    /// Waits until [`Cluster::leader`] answers; panics after `timeout`.
    #[track_caller]
    pub fn wait_leader(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            if Instant::now() >= deadline {
                let live = self.live();
                let mut report = String::new();
                for i in live {
                    report.push_str(&format!(
                        "\n  {}: {:?}",
                        self.members[i].name(),
                        self.status(i)
                    ));
                }
                panic!("no agreed leader after {timeout:?}:{report}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Indexes of the live members other than `leader`.
    pub fn followers(&mut self, leader: usize) -> Vec<usize> {
        self.live().into_iter().filter(|&i| i != leader).collect()
    }

    /// SIGKILL member `i`.
    pub fn kill9(&mut self, i: usize) {
        self.members[i].kill9();
        self.paused[i] = false;
    }
    /// SIGTERM member `i` (SIGKILL after 10 s); true if it exited on its own.
    pub fn stop(&mut self, i: usize) -> bool {
        self.members[i].stop()
    }
    /// Starts member `i` again on its data dir and waits for `/health`.
    pub fn restart(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.kill9();
        m.launch().unwrap_or_else(|e| panic!("{e:#}"));
        m.wait_ready_for(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    /// SIGSTOP member `i`.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.paused[i] = true;
    }
    /// SIGCONT member `i`.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.paused[i] = false;
    }
    fn signal(&self, i: usize, sig: i32) {
        let pid = self.members[i].pid().expect("member is running");
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// `etcdctl member list -w json` through member `via`: the `members` array.
    pub fn member_list(&self, via: usize) -> Vec<Value> {
        let j = self.ctl_json(via, &["member", "list"]);
        j.get("members")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Adds a member named `name` with `etcdctl member add` (through the
    /// leader, retried for a few seconds), then starts it with
    /// `--initial-cluster-state existing` and an initial cluster of every
    /// active member plus itself. Returns its index. The printed
    /// `ETCD_INITIAL_CLUSTER` must name exactly those members.
    pub fn add_member(&mut self, name: &str, learner: bool) -> Result<usize> {
        self.add_member_via(name, learner, None)
    }

    /// The client URL membership requests go to: member `via`, or the
    /// current leader.
    fn via_url(&mut self, via: Option<usize>) -> String {
        let i = via.unwrap_or_else(|| self.wait_leader(Duration::from_secs(10)));
        self.members[i].client_url()
    }

    /// [`Cluster::add_member`], sending the request to member `via` (`None`:
    /// the leader).
    pub fn add_member_via(
        &mut self,
        name: &str,
        learner: bool,
        via: Option<usize>,
    ) -> Result<usize> {
        let mut m = Member::prepare(self.backend, member_opts(&self.opts, name))?;
        let mut idx = self.active();
        let peer = m.peer_url();
        let (id, printed) = if peer.starts_with("quic://") {
            // etcdctl 3.4 refuses any peer URL scheme but
            // http(s)/unix(s) before sending the request, so a keel peer URL
            // cannot go through `etcdctl member add`: use the same gRPC call.
            self.member_add_grpc(name, &peer, learner, via)?
        } else {
            self.member_add_etcdctl(name, &peer, learner, via)?
        };
        let i = self.members.len();
        self.members.push(m);
        self.removed.push(false);
        self.paused.push(false);
        self.ids.push(id);
        idx.push(i);
        let initial = self.initial_cluster(&idx);
        let mut want: Vec<&str> = initial.split(',').collect();
        let mut got: Vec<&str> = printed.split(',').collect();
        want.sort();
        got.sort();
        if want != got {
            bail!("member add printed ETCD_INITIAL_CLUSTER={printed:?}, expected {initial:?}");
        }
        m = self.members.pop().expect("just pushed");
        m.opts_mut().initial_cluster = Some(initial);
        m.opts_mut().initial_cluster_state = Some("existing".into());
        self.members.push(m);
        let m = &mut self.members[i];
        m.launch()?;
        m.wait_ready_for(Duration::from_secs(20))?;
        Ok(i)
    }

    /// `etcdctl member add` (one attempt: it is not idempotent); returns
    /// the new ID and the printed `ETCD_INITIAL_CLUSTER`.
    fn member_add_etcdctl(
        &mut self,
        name: &str,
        peer: &str,
        learner: bool,
        via: Option<usize>,
    ) -> Result<(u64, String)> {
        let peer_arg = format!("--peer-urls={peer}");
        let mut args = vec!["member", "add", name, peer_arg.as_str()];
        if learner {
            args.push("--learner");
        }
        // etcd refuses changes for its first 5 s ("unhealthy cluster":
        // not every member connected long enough); nothing is applied then.
        let deadline = Instant::now() + Duration::from_secs(10);
        let out = loop {
            let url = self.via_url(via);
            let out = etcdctl_at(&url, &args, None);
            if out.success()
                || !out.stderr.contains("unhealthy cluster")
                || Instant::now() >= deadline
            {
                break out;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if !out.success() {
            bail!("member add failed: {out}");
        }
        // "Member 76f5e4861f08552c added to cluster cd062682b9a12700"
        let id_hex = out
            .stdout
            .split_whitespace()
            .skip_while(|w| *w != "Member")
            .nth(1)
            .ok_or_else(|| anyhow!("no member ID in {out}"))?;
        let id = u64::from_str_radix(id_hex, 16).with_context(|| format!("member ID in {out}"))?;
        let printed = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .map(|s| s.trim_matches('"').to_string())
            .ok_or_else(|| anyhow!("no ETCD_INITIAL_CLUSTER in {out}"))?;
        Ok((id, printed))
    }

    /// `Cluster.MemberAdd` over gRPC (what `etcdctl member add` sends; one
    /// attempt); returns the new ID and the initial cluster etcdctl would
    /// print from the answer.
    fn member_add_grpc(
        &mut self,
        name: &str,
        peer: &str,
        learner: bool,
        via: Option<usize>,
    ) -> Result<(u64, String)> {
        let url = self.via_url(via);
        let req = MemberAddRequest {
            peer_ur_ls: vec![peer.to_string()],
            is_learner: learner,
        };
        let t = Instant::now();
        let resp = self
            .rt
            .block_on(async {
                let mut c = ClusterClient::new(channel(&url, Duration::from_secs(30)));
                c.member_add(req).await
            })
            .map_err(|e| anyhow!("MemberAdd via {url} failed after {:?}: {e}", t.elapsed()))?
            .into_inner();
        let id = resp.member.as_ref().map(|m| m.id).unwrap_or(0);
        if id == 0 {
            bail!("MemberAdd answered without a member: {resp:?}");
        }
        // As etcdctl prints it: the new member under its given name, the
        // others under theirs.
        let printed = resp
            .members
            .iter()
            .flat_map(|m| {
                let n = if m.id == id {
                    name.to_string()
                } else {
                    m.name.clone()
                };
                m.peer_ur_ls
                    .iter()
                    .map(move |u| format!("{n}={u}"))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join(",");
        Ok((id, printed))
    }

    /// `etcdctl member promote <id of i>` through member `via` (`None`: the
    /// leader, found again before every attempt), retried for up to
    /// `timeout` while the learner is not yet in sync.
    pub fn promote_via(&mut self, i: usize, via: Option<usize>, timeout: Duration) -> Result<()> {
        let id = format!("{:x}", self.ids[i]);
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.via_url(via);
            let out = etcdctl_at(&url, &["member", "promote", &id], None);
            if out.success() {
                return Ok(());
            }
            if !out.stderr.contains("in sync") || Instant::now() >= deadline {
                bail!("member promote via {url} failed: {out}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`Cluster::promote_via`] the leader.
    pub fn promote(&mut self, i: usize, timeout: Duration) -> Result<()> {
        self.promote_via(i, None, timeout)
    }

    /// `etcdctl member remove <id of i>` through member `via` (`None`: the
    /// leader), marks it removed and, if `stop`, stops its process.
    pub fn remove_via(&mut self, i: usize, via: Option<usize>, stop: bool) -> Result<()> {
        let id = format!("{:x}", self.ids[i]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let (url, out) = loop {
            let url = self.via_url(via);
            let out = etcdctl_at(&url, &["member", "remove", &id], None);
            // etcd: "unhealthy cluster" in its first 5 s; nothing applied.
            if out.success()
                || !out.stderr.contains("unhealthy cluster")
                || Instant::now() >= deadline
            {
                break (url, out);
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if !out.success() {
            bail!("member remove via {url} failed: {out}");
        }
        self.removed[i] = true;
        if stop {
            self.members[i].stop();
        }
        Ok(())
    }

    /// [`Cluster::remove_via`] the leader.
    pub fn remove(&mut self, i: usize) -> Result<()> {
        self.remove_via(i, None, true)
    }

    /// Puts `n` unique keys `PREFIX<seq>` through the given members
    /// (round-robin, `concurrency` puts in flight) and returns the
    /// acknowledgements. Panics on any failed put.
    pub fn put_many(&self, idx: &[usize], prefix: &str, n: usize, concurrency: usize) -> Vec<Ack> {
        let urls = self.urls(idx);
        let prefix = prefix.to_string();
        self.rt.block_on(async move {
            let clients: Vec<KvClient<Channel>> = urls
                .iter()
                .map(|u| KvClient::new(channel(u, Duration::from_secs(10))))
                .collect();
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (clients, urls, next, prefix) =
                    (clients.clone(), urls.clone(), next.clone(), prefix.clone());
                tasks.push(tokio::spawn(async move {
                    let mut acks = Vec::new();
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if seq >= n {
                            return acks;
                        }
                        let k = seq % clients.len();
                        let key = format!("{prefix}{seq:07}");
                        let value = format!("v{seq}-{}", rand::random::<u32>());
                        let req = PutRequest {
                            key: key.clone().into_bytes().into(),
                            value: value.clone().into_bytes().into(),
                            ..Default::default()
                        };
                        let resp = clients[k]
                            .clone()
                            .put(req)
                            .await
                            .unwrap_or_else(|e| panic!("put {key} via {}: {e}", urls[k]));
                        acks.push(Ack {
                            key,
                            value,
                            revision: resp.into_inner().header.map(|h| h.revision).unwrap_or(0),
                            endpoint: urls[k].clone(),
                            at: Instant::now(),
                        });
                    }
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("put task panicked"));
            }
            all
        })
    }

    /// Everything under `prefix` on member `i`: a serializable (local) range,
    /// plus the header revision.
    pub fn read_prefix(&self, i: usize, prefix: &str, serializable: bool) -> Result<(KvMap, i64)> {
        let url = self.members[i].client_url();
        self.rt.block_on(read_prefix(&url, prefix, serializable))
    }

    /// Waits until every live member's serializable revision is at least
    /// the revision a linearizable read through the leader sees, and all
    /// members report the same revision and applied index. Returns it.
    #[track_caller]
    pub fn wait_converged(&mut self, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        let leader = self.wait_leader(timeout);
        let target = loop {
            match self.read_prefix(leader, "\u{0}__none__", false) {
                Ok((_, rev)) => break rev,
                Err(e) if Instant::now() >= deadline => panic!("linearizable read: {e:#}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let live = self.live();
        loop {
            let last = live.iter().map(|&i| self.status(i)).collect::<Vec<_>>();
            let ok = last.iter().all(|s| {
                s.as_ref().is_ok_and(|s| {
                    s.revision >= target
                        && last[0].as_ref().is_ok_and(|f| {
                            f.revision == s.revision && f.applied_index == s.applied_index
                        })
                })
            });
            if ok {
                return last[0].as_ref().map(|s| s.revision).unwrap_or(0);
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = live.iter().map(|&i| self.members[i].name()).collect();
                panic!(
                    "members did not converge to revision {target} within {timeout:?}: {:?}",
                    names.iter().zip(last.iter()).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Maintenance.HashKV` (at the current revision) of member `i`:
    /// (hash, header revision, compact revision).
    pub fn hashkv(&self, i: usize) -> Result<(u32, i64, i64)> {
        let url = self.members[i].client_url();
        self.rt.block_on(async move {
            let mut c = MaintenanceClient::new(channel(&url, Duration::from_secs(10)));
            let r = c.hash_kv(HashKvRequest { revision: 0 }).await?.into_inner();
            let rev = r.header.map(|h| h.revision).unwrap_or(0);
            Ok((r.hash, rev, r.compact_revision))
        })
    }

    /// Asserts that every acknowledged put in `acks` is present on every live
    /// member (serializable read) with its value and revision, and that no two
    /// acknowledged puts share a revision. Call after [`Cluster::wait_converged`].
    #[track_caller]
    pub fn assert_acks_everywhere(&mut self, prefix: &str, acks: &[Ack]) {
        let mut by_rev: HashMap<i64, &Ack> = HashMap::new();
        for a in acks {
            if let Some(other) = by_rev.insert(a.revision, a) {
                panic!(
                    "two acknowledged puts at revision {}: {other:?} and {a:?}",
                    a.revision
                );
            }
        }
        for i in self.live() {
            let (kvs, _) = self
                .read_prefix(i, prefix, true)
                .unwrap_or_else(|e| panic!("read {prefix} on {}: {e:#}", self.members[i].name()));
            let mut bad = Vec::new();
            for a in acks {
                match kvs.get(&a.key) {
                    None => bad.push(format!(
                        "{} (acked at rev {} via {}) missing",
                        a.key, a.revision, a.endpoint
                    )),
                    Some((v, r)) if *v != a.value || *r != a.revision => bad.push(format!(
                        "{}: acked {:?}@{} via {}, found {v:?}@{r}",
                        a.key, a.value, a.revision, a.endpoint
                    )),
                    Some(_) => {}
                }
            }
            assert!(
                bad.is_empty(),
                "member {}: {} of {} acknowledged puts missing or changed, e.g.:\n{}",
                self.members[i].name(),
                bad.len(),
                acks.len(),
                bad[..bad.len().min(20)].join("\n")
            );
        }
    }

    /// Asserts that every live member reports the same revision and the same
    /// `HashKV` (also through `etcdctl endpoint hashkv --cluster`). Call after
    /// [`Cluster::wait_converged`].
    #[track_caller]
    pub fn assert_same_hashkv(&mut self) {
        let live = self.live();
        let hashes: Vec<(String, (u32, i64, i64))> = live
            .iter()
            .map(|&i| {
                let name = self.members[i].name().to_string();
                let h = self
                    .hashkv(i)
                    .unwrap_or_else(|e| panic!("hashkv {name}: {e:#}"));
                (name, h)
            })
            .collect();
        assert!(
            hashes.iter().all(|(_, h)| h == &hashes[0].1),
            "members disagree on (hash, revision, compact revision): {hashes:?}"
        );
        // The same through etcdctl, across the whole cluster.
        let j = self.ctl_json(live[0], &["endpoint", "hashkv", "--cluster"]);
        let arr = j.as_array().cloned().unwrap_or_default();
        assert_eq!(arr.len(), live.len(), "endpoint hashkv --cluster: {j}");
        let ctl: Vec<u64> = arr
            .iter()
            .map(|e| e["HashKV"]["hash"].as_u64().unwrap_or(0))
            .collect();
        assert!(
            ctl.iter().all(|&h| h == hashes[0].1 .0 as u64),
            "etcdctl endpoint hashkv --cluster disagrees: {j} vs {hashes:?}"
        );
    }
}

async fn status_of(url: &str, timeout: Duration) -> Result<Status> {
    let mut c = MaintenanceClient::new(channel(url, timeout));
    let r = tokio::time::timeout(timeout, c.status(StatusRequest {}))
        .await
        .map_err(|_| anyhow!("status {url}: timed out"))??
        .into_inner();
    Ok(r.into())
}

/// The range end of a prefix.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// Everything under `prefix` at `url` (key → (value, mod_revision)) and the
/// header revision.
pub async fn read_prefix(url: &str, prefix: &str, serializable: bool) -> Result<(KvMap, i64)> {
    let mut client =
        KvClient::new(channel(url, Duration::from_secs(10))).max_decoding_message_size(256 << 20);
    let resp = client
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: prefix_end(prefix).into(),
            serializable,
            ..Default::default()
        })
        .await
        .with_context(|| format!("range {prefix} at {url}"))?
        .into_inner();
    let rev = resp.header.map(|h| h.revision).unwrap_or(0);
    if resp.count as usize != resp.kvs.len() || resp.more {
        bail!(
            "range at {url}: count {} but {} kvs (more={})",
            resp.count,
            resp.kvs.len(),
            resp.more
        );
    }
    let kvs = resp
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.mod_revision,
                ),
            )
        })
        .collect();
    Ok((kvs, rev))
}

/// One acknowledged put.
#[derive(Clone, Debug)]
pub struct Ack {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Revision of the put's response header.
    pub revision: i64,
    /// The client URL it went through.
    pub endpoint: String,
    /// When the answer arrived.
    pub at: Instant,
}

/// One failed (or timed-out) put: not acknowledged, may or may not be applied.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Key.
    pub key: String,
    /// The client URL it went through.
    pub endpoint: String,
    /// When it was sent.
    pub sent: Instant,
    /// When it failed.
    pub at: Instant,
    /// The error.
    pub error: String,
}

/// What a [`Load`] did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Acknowledged puts.
    pub acks: Vec<Ack>,
    /// Failed puts.
    pub failures: Vec<Failure>,
}

/// A background write load: `writers` tasks putting unique keys
/// `PREFIX/wN/SEQ` to the endpoints round-robin.
pub struct Load {
    rt: tokio::runtime::Runtime,
    stop: Arc<AtomicBool>,
    endpoints: Arc<Mutex<Vec<String>>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    failures: Arc<Mutex<Vec<Failure>>>,
    ops: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The key prefix.
    pub prefix: String,
}

impl Load {
    /// Starts the writers. `pause` is slept between puts (light load), and
    /// `timeout` bounds each put.
    pub fn start(
        prefix: &str,
        endpoints: Vec<String>,
        writers: usize,
        pause: Duration,
        timeout: Duration,
    ) -> Load {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let stop = Arc::new(AtomicBool::new(false));
        let endpoints = Arc::new(Mutex::new(endpoints));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let ops = Arc::new(AtomicU64::new(0));
        let tasks = (0..writers)
            .map(|w| {
                let (stop, endpoints, acks, failures, ops) = (
                    stop.clone(),
                    endpoints.clone(),
                    acks.clone(),
                    failures.clone(),
                    ops.clone(),
                );
                let prefix = prefix.to_string();
                rt.spawn(async move {
                    let mut clients: HashMap<String, KvClient<Channel>> = HashMap::new();
                    for seq in 0u64.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let eps = endpoints.lock().unwrap().clone();
                        if eps.is_empty() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        let url = eps[(seq as usize + w) % eps.len()].clone();
                        let client = clients
                            .entry(url.clone())
                            .or_insert_with(|| KvClient::new(channel(&url, timeout)));
                        let key = format!("{prefix}w{w:02}/{seq:07}");
                        let value = format!("v{w}-{seq}-{}", rand::random::<u32>());
                        let sent = Instant::now();
                        let req = PutRequest {
                            key: key.clone().into_bytes().into(),
                            value: value.clone().into_bytes().into(),
                            ..Default::default()
                        };
                        let res = tokio::time::timeout(timeout, client.put(req)).await;
                        ops.fetch_add(1, Ordering::Relaxed);
                        let at = Instant::now();
                        match res {
                            Ok(Ok(resp)) => {
                                let revision =
                                    resp.into_inner().header.map(|h| h.revision).unwrap_or(0);
                                acks.lock().unwrap().push(Ack {
                                    key,
                                    value,
                                    revision,
                                    endpoint: url,
                                    at,
                                });
                            }
                            Ok(Err(e)) => {
                                failures.lock().unwrap().push(Failure {
                                    key,
                                    endpoint: url,
                                    sent,
                                    at,
                                    error: format!("{:?}: {}", e.code(), e.message()),
                                });
                                // Do not spin on a dead endpoint.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(_) => failures.lock().unwrap().push(Failure {
                                key,
                                endpoint: url,
                                sent,
                                at,
                                error: format!("no answer within {timeout:?}"),
                            }),
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            rt,
            stop,
            endpoints,
            acks,
            failures,
            ops,
            tasks,
            prefix: prefix.to_string(),
        }
    }

    /// Replaces the endpoint list.
    pub fn set_endpoints(&self, endpoints: Vec<String>) {
        *self.endpoints.lock().unwrap() = endpoints;
    }
    /// Puts acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acks.lock().unwrap().len()
    }
    /// Puts failed so far.
    pub fn failed(&self) -> usize {
        self.failures.lock().unwrap().len()
    }
    /// Puts finished (either way) so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }
    /// Acknowledged puts that arrived after `t`.
    pub fn acked_since(&self, t: Instant) -> usize {
        self.acks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.at > t)
            .count()
    }
    /// Waits until at least `n` more puts are acknowledged than now; false
    /// after `timeout`.
    pub fn wait_progress(&self, n: usize, timeout: Duration) -> bool {
        let start = self.acked();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.acked() >= start + n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
    /// Stops the writers (waiting for in-flight puts) and returns what happened.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = self.tasks;
        self.rt.block_on(async {
            for t in tasks {
                t.await.expect("writer task panicked");
            }
        });
        let acks = std::mem::take(&mut *self.acks.lock().unwrap());
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        LoadReport { acks, failures }
    }
}

impl LoadReport {
    /// Failures that happened outside every `(from, to)` window, as text.
    pub fn failures_outside(&self, windows: &[(Instant, Instant)]) -> Vec<String> {
        self.failures
            .iter()
            .filter(|f| {
                !windows
                    .iter()
                    .any(|(a, b)| f.sent >= *a && f.sent <= *b || f.at >= *a && f.at <= *b)
            })
            .map(|f| format!("{} via {}: {}", f.key, f.endpoint, f.error))
            .collect()
    }
    /// A one-line summary.
    pub fn summary(&self) -> String {
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for f in &self.failures {
            let short: String = f.error.chars().take(80).collect();
            *errors.entry(short).or_default() += 1;
        }
        format!(
            "{} acked, {} failed {:?}",
            self.acks.len(),
            self.failures.len(),
            errors
        )
    }
}
