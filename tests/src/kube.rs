//! An API server for end-to-end tests: a `keel store` member (or a
//! 3-member cluster) plus a `keel apiserver` process against it, a
//! kubeconfig written by `keel kubeconfig`, and [`KubeApi::kubectl`] to
//! drive the real kubectl. The API server reaches the store over the
//! store's QUIC client API, as under `keel up` (pinning the members'
//! self-signed certificates with `--etcd-cafile`); [`KubeApi::try_start_grpc`]
//! uses the etcd gRPC API instead.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tempfile::TempDir;

use crate::cluster::{Cluster, ClusterOpts};
use crate::{free_port, keel_bin, Backend, CtlOutput, Member, MemberOpts};

/// The store an API server runs on.
enum Stores {
    /// One member.
    One(Box<Member>),
    /// A cluster.
    Cluster(Box<Cluster>),
}

/// The kubectl the tests drive (`$KUBECTL_BIN` overrides `/usr/bin/kubectl`).
pub fn kubectl_bin() -> PathBuf {
    std::env::var_os("KUBECTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"))
}

/// How long [`KubeApi::start`] waits for `/readyz`.
pub const API_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A store member and an apiserver process on it. Dropping it kills both
/// (printing the apiserver log's tail if the thread is panicking).
pub struct KubeApi {
    stores: Stores,
    /// `--etcd-servers`.
    etcd_servers: String,
    /// `--etcd-cafile`, for `quic://` servers.
    etcd_cafile: Option<PathBuf>,
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    /// More apiservers on the same store and CA: (port, process).
    peers: Vec<(u16, Child)>,
    /// Extra `keel apiserver` flags.
    extra_args: Vec<String>,
}

impl KubeApi {
    /// Starts a single-member `keel store` and `keel apiserver` on free
    /// ports, writes the kubeconfig and waits until `/readyz` answers.
    pub fn start() -> KubeApi {
        Self::try_start().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`KubeApi::start`], or `None` (printing why) when there is no kubectl
    /// on this machine: the kubectl tests then pass as skipped.
    pub fn start_or_skip() -> Option<KubeApi> {
        let bin = kubectl_bin();
        if !bin.exists() {
            let why = format!("skipped: no kubectl at {} (KUBECTL_BIN)", bin.display());
            println!("{why}");
            eprintln!("{why}");
            return None;
        }
        Some(Self::start())
    }

    /// [`KubeApi::start_or_skip`] with extra `keel apiserver` flags.
    pub fn start_with_or_skip(extra_args: &[String]) -> Option<KubeApi> {
        let bin = kubectl_bin();
        if !bin.exists() {
            println!("skipped: no kubectl at {} (KUBECTL_BIN)", bin.display());
            return None;
        }
        Some(Self::try_start_with(extra_args).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// [`KubeApi::start_with_or_skip`] with `&str` flags.
    pub fn start_with_args_or_skip(args: &[&str]) -> Option<KubeApi> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::start_with_or_skip(&args)
    }

    /// Like [`KubeApi::start`] but returns the error.
    pub fn try_start() -> Result<KubeApi> {
        Self::try_start_with(&[])
    }

    /// [`KubeApi::try_start`] with extra `keel apiserver` flags.
    pub fn try_start_with(extra_args: &[String]) -> Result<KubeApi> {
        let store = Member::try_start(Backend::Keel, MemberOpts::default().quic_client())?;
        let servers = store.quic_url().context("member serves no QUIC")?;
        let ca = store.quic_cert();
        Self::try_start_on(Stores::One(Box::new(store)), servers, Some(ca), extra_args)
    }

    /// [`KubeApi::try_start`] with the API server on the store's etcd gRPC
    /// API (`http://`), as against a real etcd.
    pub fn try_start_grpc() -> Result<KubeApi> {
        let store = Member::try_start(Backend::Keel, MemberOpts::default())?;
        let servers = store.client_url();
        Self::try_start_on(Stores::One(Box::new(store)), servers, None, &[])
    }

    /// An API server over QUIC on a 3-member keel cluster (every member's
    /// QUIC endpoint in `--etcd-servers`, their certificates pinned), or
    /// `None` when there is no kubectl.
    pub fn start_on_cluster_or_skip() -> Option<KubeApi> {
        let bin = kubectl_bin();
        if !bin.exists() {
            println!("skipped: no kubectl at {} (KUBECTL_BIN)", bin.display());
            return None;
        }
        let cluster = Cluster::start(
            Backend::Keel,
            ClusterOpts {
                quic_client: true,
                ..ClusterOpts::default()
            },
        );
        let mut urls = Vec::new();
        let mut pem = Vec::new();
        for i in 0..cluster.len() {
            let m = cluster.member(i);
            urls.push(m.quic_url().expect("member serves QUIC"));
            pem.extend(std::fs::read(m.quic_cert()).expect("member QUIC certificate"));
        }
        let ca = cluster.member(0).scratch_dir().join("store-quic-certs.pem");
        std::fs::write(&ca, pem).expect("write pinned certificates");
        Some(
            Self::try_start_on(
                Stores::Cluster(Box::new(cluster)),
                urls.join(","),
                Some(ca),
                &[],
            )
            .unwrap_or_else(|e| panic!("{e:#}")),
        )
    }

    fn try_start_on(
        stores: Stores,
        etcd_servers: String,
        etcd_cafile: Option<PathBuf>,
        extra_args: &[String],
    ) -> Result<KubeApi> {
        let dir = tempfile::Builder::new()
            .prefix("keel-kube-")
            .tempdir()
            .context("create apiserver temp dir")?;
        let mut api = KubeApi {
            stores,
            etcd_servers,
            etcd_cafile,
            dir,
            port: free_port(),
            child: None,
            peers: Vec::new(),
            extra_args: extra_args.to_vec(),
        };
        // The kubeconfig first: it creates the cert dir's CA, which the
        // apiserver then uses (two processes must not both create one).
        let out = Command::new(keel_bin())
            .args(["kubeconfig", "--cert-dir"])
            .arg(api.cert_dir())
            .args(["--server", &api.url(), "--output"])
            .arg(api.kubeconfig())
            .output()
            .context("run keel kubeconfig")?;
        if !out.status.success() {
            return Err(anyhow!(
                "keel kubeconfig failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        api.launch()?;
        api.wait_ready()?;
        Ok(api)
    }

    fn launch(&mut self) -> Result<()> {
        let child = self.spawn_apiserver(self.port, &self.extra_args)?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts one more apiserver on the same store and CA (on a free port),
    /// waits until it is ready and returns the path of its kubeconfig:
    /// `kubectl_cmd(..).env("KUBECONFIG", path)` talks to it.
    pub fn add_apiserver(&mut self) -> Result<PathBuf> {
        let args = self.extra_args.clone();
        self.add_apiserver_with(&args).map(|(_, kc)| kc)
    }

    /// [`KubeApi::add_apiserver`] with its own extra `keel apiserver`
    /// flags; returns its port and the path of its (admin) kubeconfig.
    pub fn add_apiserver_with(&mut self, extra_args: &[String]) -> Result<(u16, PathBuf)> {
        let port = free_port();
        let kubeconfig = self.dir.path().join(format!("kubeconfig-{port}"));
        let out = Command::new(keel_bin())
            .args(["kubeconfig", "--cert-dir"])
            .arg(self.cert_dir())
            .args(["--server", &format!("https://127.0.0.1:{port}"), "--output"])
            .arg(&kubeconfig)
            .output()
            .context("run keel kubeconfig")?;
        if !out.status.success() {
            return Err(anyhow!(
                "keel kubeconfig failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let child = self.spawn_apiserver(port, extra_args)?;
        self.peers.push((port, child));
        let deadline = Instant::now() + API_READY_TIMEOUT;
        loop {
            let mut cmd = self.kubectl_cmd(&["get", "--raw", "/readyz"]);
            let out = cmd
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .context("kubectl")?;
            if out.status.success() {
                return Ok((port, kubeconfig));
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "apiserver on port {port} not ready\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn_apiserver(&self, port: u16, extra_args: &[String]) -> Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("open apiserver log")?;
        let err = log.try_clone().context("clone log fd")?;
        let mut cmd = Command::new(keel_bin());
        cmd.arg("apiserver")
            .args(["--etcd-servers", &self.etcd_servers]);
        if let Some(ca) = &self.etcd_cafile {
            cmd.arg("--etcd-cafile").arg(ca);
        }
        cmd.args(["--secure-port", &port.to_string()])
            .args(["--bind-address", "127.0.0.1", "--cert-dir"])
            .arg(self.cert_dir())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .context("spawn keel apiserver")
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + API_READY_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(anyhow!(
                        "keel apiserver exited with {status}\n{}",
                        self.log()
                    ));
                }
            }
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.success() && out.stdout.trim() == "ok" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "apiserver not ready after {API_READY_TIMEOUT:?}: {out}\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kubectl get <args> -w --watch-only -o json --output-watch-events`
    /// in the background; its output lines (one watch event each) on the
    /// channel. Kill the child when done.
    pub fn kubectl_watch(&self, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
        use std::io::{BufRead, BufReader};
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-w", "--watch-only", "-o", "json", "--output-watch-events"]);
        let mut child = self
            .kubectl_cmd(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kubectl get -w");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
    /// The `--cert-dir` (CA, serving certificate).
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }
    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }
    /// Stops the API server as a service manager does, with SIGTERM, and
    /// waits (at most `within`) for it to exit; its exit status.
    pub fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let child = self
            .child
            .as_mut()
            .context("the API server is not running")?;
        let pid = libc::pid_t::try_from(child.id()).context("pid")?;
        // SAFETY: kill(2) on the pid of a child this handle still owns (not
        // yet waited for, so the pid cannot have been reused).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(anyhow!("SIGTERM: {}", std::io::Error::last_os_error()));
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().context("wait")? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "the API server still runs {within:?} after SIGTERM"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A scratch dir that lives as long as this server.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    /// The store member (of a cluster: the first).
    pub fn store(&self) -> &Member {
        match &self.stores {
            Stores::One(m) => m,
            Stores::Cluster(c) => c.member(0),
        }
    }
    /// The store cluster, if the API server runs on one.
    pub fn cluster_mut(&mut self) -> Option<&mut Cluster> {
        match &mut self.stores {
            Stores::One(_) => None,
            Stores::Cluster(c) => Some(c),
        }
    }
    /// The API server's log lines so far that mention `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }
    /// The apiserver log path.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("apiserver.log")
    }
    /// The apiserver log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Writes a kubeconfig for this server that authenticates with the
    /// bearer `token` (no client certificate; `None`: no credentials the
    /// server knows: HTTP basic auth, which kube-apiservers ignore, so the
    /// request is anonymous; kubectl would prompt for a user without
    /// anything) and returns its path.
    pub fn token_kubeconfig(&self, name: &str, token: Option<&str>) -> PathBuf {
        self.token_kubeconfig_at(&self.url(), name, token)
    }

    /// [`KubeApi::token_kubeconfig`] for the server at `url` (a peer).
    pub fn token_kubeconfig_at(&self, url: &str, name: &str, token: Option<&str>) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        let user = match token {
            Some(t) => format!("    token: {t}\n"),
            None => "    username: nobody\n    password: nothing\n".to_string(),
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: keel\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n{user}contexts:\n- name: keel\n  context:\n    cluster: keel\n    user: {name}\n    namespace: default\ncurrent-context: keel\n",
            server = url,
            ca = self.cert_dir().join("ca.crt").display(),
        );
        std::fs::write(&path, yaml).expect("write token kubeconfig");
        path
    }

    /// Runs kubectl with `args` against the kubeconfig at `kubeconfig`.
    pub fn kubectl_with(&self, kubeconfig: &std::path::Path, args: &[&str]) -> CtlOutput {
        let mut cmd = self.kubectl_cmd(args);
        cmd.env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.output().expect("run kubectl");
        CtlOutput {
            cmdline: format!(
                "kubectl {} (KUBECONFIG={})",
                args.join(" "),
                kubeconfig.display()
            ),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A kubectl command with this server's kubeconfig (not yet run).
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        self.kubectl_cmd_of(&kubectl_bin(), args)
    }

    /// [`KubeApi::kubectl_cmd`] with another kubectl binary (older versions).
    pub fn kubectl_cmd_of(&self, bin: &std::path::Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", self.kubeconfig())
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .arg("--request-timeout=20s")
            .args(args);
        cmd
    }

    /// Runs kubectl with `args` (and `stdin`, if any).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> CtlOutput {
        self.run_kubectl(&kubectl_bin(), args, stdin)
    }

    /// Runs the kubectl at `bin` with `args` (and `stdin`, if any).
    pub fn run_kubectl(
        &self,
        bin: &std::path::Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> CtlOutput {
        let mut cmd = self.kubectl_cmd_of(bin, args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        let out = child.wait_with_output().expect("wait for kubectl");
        CtlOutput {
            cmdline: format!("{} {}", bin.display(), args.join(" ")),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl with `args`.
    pub fn kubectl(&self, args: &[&str]) -> CtlOutput {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl, asserting success; returns stdout.
    #[track_caller]
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl(args).ok()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let peers = self.peers.drain(..).map(|(_, c)| c);
        for mut c in self.child.take().into_iter().chain(peers) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "----- apiserver log (last 60 lines) -----\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}
