//! Kubernetes API server workloads (issue 6's "how fast"): mutating
//! requests at a fixed rate, pod watch fan-out, lists of many pods. They talk
//! HTTPS + HTTP/2 to any API server (keel's or Kubernetes') with the client
//! certificate of a kubeconfig, as kubectl does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

use crate::load::Worker;
use crate::stats::{new_histogram, record, Errors, Limiter};

/// An API server and the credentials to reach it (from a kubeconfig).
#[derive(Clone)]
pub struct Target {
    /// `host:port` to dial.
    addr: String,
    /// The name the serving certificate is checked against.
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
}

/// One HTTP/2 connection; clones share it (one stream per request).
pub type Conn = SendRequest<Full<Bytes>>;

/// The first value of `field:` in a kubeconfig (the file keel and kubeadm
/// write: one cluster, one user).
fn kubeconfig_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.trim().trim_start_matches("- ");
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

impl Target {
    /// Reads the server URL, CA and client certificate of a kubeconfig
    /// (embedded `*-data` fields).
    pub fn from_kubeconfig(path: &Path) -> Result<Target> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let field = |f: &str| {
            kubeconfig_field(&text, f)
                .ok_or_else(|| anyhow!("{}: no {f}", path.display()))
                .map(str::to_owned)
        };
        let b64 = |f: &str| -> Result<Vec<u8>> {
            base64::engine::general_purpose::STANDARD
                .decode(field(f)?)
                .with_context(|| format!("{}: {f} is not base64", path.display()))
        };
        let server = field("server")?;
        let hostport = server
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("server {server}: only https:// is supported"))?
            .trim_end_matches('/');
        let host = match hostport.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => hostport,
        };
        let addr = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:443")
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| anyhow!("server name {host}: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&b64("certificate-authority-data")?) {
            roots.add(c.context("CA certificate")?)?;
        }
        let certs = CertificateDer::pem_slice_iter(&b64("client-certificate-data")?)
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&b64("client-key-data")?).context("client key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Target {
            addr,
            server_name,
            tls: Arc::new(tls),
        })
    }

    /// Opens `n` HTTP/2 connections.
    pub async fn connect(&self, n: usize) -> Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let tcp = tokio::net::TcpStream::connect(&self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await
                .context("TLS handshake")?;
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(16 << 20)
                .handshake(TokioIo::new(tls))
                .await
                .context("HTTP/2 handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            conns.push(send);
        }
        Ok(conns)
    }
}

/// Sends one request and reads the whole response.
async fn call(
    conn: &mut Conn,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes)> {
    let resp = conn
        .send_request(build(method, path, body)?)
        .await
        .context("request")?;
    let status = resp.status();
    let body = resp.into_body().collect().await.context("body")?.to_bytes();
    Ok((status, body))
}

fn build(method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Request<Full<Bytes>>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "application/json");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    Ok(req.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
}

/// Fails unless `status` is `want`, quoting the server's Status message.
fn expect(status: StatusCode, want: StatusCode, body: &[u8], what: &str) -> Result<()> {
    if status == want {
        return Ok(());
    }
    let msg: String = String::from_utf8_lossy(body).chars().take(300).collect();
    bail!("{what}: {status}: {msg}")
}

/// Creates namespace `ns` unless it exists.
pub async fn ensure_namespace(conn: &mut Conn, ns: &str) -> Result<()> {
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    let (status, b) = call(
        conn,
        Method::POST,
        "/api/v1/namespaces",
        Some(body.to_string().into_bytes()),
    )
    .await?;
    if status == StatusCode::CONFLICT {
        return Ok(());
    }
    expect(status, StatusCode::CREATED, &b, "creating the namespace")
}

/// Waits until namespace `ns` has its `default` service account, as
/// Kubernetes' e2e framework does before it creates pods: until then
/// admission holds or refuses pod creates, which is no watch latency.
async fn wait_for_default_service_account(conn: &mut Conn, ns: &str) -> Result<()> {
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/default");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, b) = call(conn, Method::GET, &path, None).await?;
        if status == StatusCode::OK {
            return Ok(());
        }
        if status != StatusCode::NOT_FOUND || Instant::now() > deadline {
            return expect(
                status,
                StatusCode::OK,
                &b,
                "waiting for the default service account",
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod(name: &str, annotations: serde_json::Value) -> Vec<u8> {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "keel-bench"}, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]},
    })
    .to_string()
    .into_bytes()
}

/// Creates a pod, retrying while the namespace's default service account
/// does not exist yet (admission refuses pods until it does).
async fn create_pod(conn: &mut Conn, ns: &str, body: Vec<u8>) -> Result<()> {
    let path = format!("/api/v1/namespaces/{ns}/pods");
    for attempt in 0.. {
        let (status, b) = call(conn, Method::POST, &path, Some(body.clone())).await?;
        if status == StatusCode::CREATED {
            return Ok(());
        }
        let sa_missing = String::from_utf8_lossy(&b).contains("serviceaccount");
        if !sa_missing || attempt >= 50 {
            return expect(status, StatusCode::CREATED, &b, "creating a pod");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!("the loop returns")
}

/// `kube-create`: one ConfigMap create per request (a mutating request
/// through authentication, authorization, admission, validation and a
/// compare-and-swap in the store).
pub struct CreateWorker {
    /// The connection.
    pub conn: Conn,
    /// The namespace.
    pub ns: String,
    /// Name prefix (unique per run).
    pub prefix: String,
}

impl Worker for CreateWorker {
    fn call(&mut self, i: u64) -> BoxFuture<'_, Result<()>> {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": format!("{}-{i}", self.prefix)},
            "data": {"k": "v".repeat(64)},
        })
        .to_string()
        .into_bytes();
        let path = format!("/api/v1/namespaces/{}/configmaps", self.ns);
        Box::pin(async move {
            let (status, b) = call(&mut self.conn, Method::POST, &path, Some(body)).await?;
            expect(status, StatusCode::CREATED, &b, "create")
        })
    }
}

/// `kube-list`: makes sure `objects` pods exist in `ns` (created with
/// `clients` in parallel), then times `total` full lists of them.
pub async fn list(
    conns: &[Conn],
    ns: &str,
    objects: usize,
    clients: usize,
    total: u64,
    errors: Arc<Errors>,
) -> Result<(Histogram<u64>, Duration)> {
    let mut c0 = conns[0].clone();
    ensure_namespace(&mut c0, ns).await?;
    let have = count_pods(&mut c0, ns).await?;
    if have < objects {
        eprintln!("creating {} pods in {ns} ...", objects - have);
        let next = Arc::new(AtomicUsize::new(have));
        let mut tasks = Vec::new();
        for c in 0..clients.max(1) {
            let mut conn = conns[c % conns.len()].clone();
            let (next, ns) = (next.clone(), ns.to_string());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= objects {
                        return Ok::<_, anyhow::Error>(());
                    }
                    create_pod(
                        &mut conn,
                        &ns,
                        pod(&format!("l-{i}"), serde_json::json!({})),
                    )
                    .await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let path = format!("/api/v1/namespaces/{ns}/pods");
    let mut h = new_histogram();
    let start = Instant::now();
    for _ in 0..total {
        let t0 = Instant::now();
        let (status, body) = call(&mut c0, Method::GET, &path, None).await?;
        let took = t0.elapsed();
        if status != StatusCode::OK {
            errors.add(format!("list: {status}"));
            continue;
        }
        let n = items(&body)?;
        if n < objects {
            errors.add(format!("list returned {n} pods, want at least {objects}"));
            continue;
        }
        record(&mut h, took);
    }
    Ok((h, start.elapsed()))
}

fn items(body: &[u8]) -> Result<usize> {
    #[derive(Deserialize)]
    struct List {
        items: Vec<serde::de::IgnoredAny>,
    }
    Ok(serde_json::from_slice::<List>(body)
        .context("list body")?
        .items
        .len())
}

async fn count_pods(conn: &mut Conn, ns: &str) -> Result<usize> {
    let (status, body) = call(
        conn,
        Method::GET,
        &format!("/api/v1/namespaces/{ns}/pods"),
        None,
    )
    .await?;
    expect(status, StatusCode::OK, &body, "listing pods")?;
    items(&body)
}

/// The annotation carrying a pod's creation instant (µs since the run's
/// epoch, in this process).
const SENT: &str = "keel-bench/sent-us";

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: WatchObject,
}

#[derive(Deserialize)]
struct WatchObject {
    #[serde(default)]
    metadata: WatchMeta,
}

#[derive(Deserialize, Default)]
struct WatchMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// `kube-watch`: `watchers` pod watches on `ns` (spread over the
/// connections), then `pods` pod creates at `pod_rate`/s; each watcher times
/// every ADDED event from its create. Missing events count as errors.
pub async fn watch(
    conns: &[Conn],
    ns: &str,
    watchers: usize,
    pods: u64,
    pod_rate: f64,
    errors: Arc<Errors>,
) -> Result<(Histogram<u64>, Duration)> {
    let mut c0 = conns[0].clone();
    ensure_namespace(&mut c0, ns).await?;
    wait_for_default_service_account(&mut c0, ns).await?;
    let (status, body) = call(
        &mut c0,
        Method::GET,
        &format!("/api/v1/namespaces/{ns}/pods?limit=1"),
        None,
    )
    .await?;
    expect(status, StatusCode::OK, &body, "listing pods")?;
    let list: serde_json::Value = serde_json::from_slice(&body).context("list body")?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("list without resourceVersion"))?
        .to_string();
    let epoch = Instant::now();
    let prefix = format!("w{}", rand::random::<u32>());
    let path =
        format!("/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}&timeoutSeconds=3600");
    // Watches first: all established before the first create. One task per
    // connection drives all of that connection's watch streams: an event
    // reaching a hundred streams of a connection wakes one task, not a
    // hundred (the load generator shares the cores with the server).
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let received = Arc::new(AtomicU64::new(0));
    let ctx = Arc::new(WatchRun {
        scan: AddedScan::new(&prefix),
        prefix: prefix.clone(),
        want: pods,
        epoch,
        received: received.clone(),
    });
    let mut tasks = Vec::with_capacity(conns.len());
    for (c, conn) in conns.iter().enumerate() {
        let n = (c..watchers).step_by(conns.len()).count();
        let (conn, path, ready) = (conn.clone(), path.clone(), ready_tx.clone());
        let (stop, ctx) = (stop_rx.clone(), ctx.clone());
        tasks.push(tokio::spawn(async move {
            ctx.run(conn, n, &path, ready, stop).await
        }));
    }
    drop((ready_tx, stop_rx));
    for _ in 0..watchers {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.context("starting a watch")),
            None => bail!("a watcher ended before it started"),
        }
    }
    eprintln!("{watchers} watches established; creating {pods} pods at {pod_rate}/s");
    let start = Instant::now();
    let limiter = Limiter::new(pod_rate);
    for i in 0..pods {
        if let Some(l) = &limiter {
            l.wait().await;
        }
        let sent = epoch.elapsed().as_micros().to_string();
        let body = pod(&format!("{prefix}-{i}"), serde_json::json!({ SENT: sent }));
        if let Err(e) = create_pod(&mut c0, ns, body).await {
            errors.add(format!("{e:#}"));
        }
    }
    // Every watcher ends once it has all its events; those still waiting
    // when no event has arrived anywhere for QUIET are stopped, and what
    // they missed counts as errors. One clock here, none per event.
    const QUIET: Duration = Duration::from_secs(30);
    let everything = pods.saturating_mul(watchers as u64);
    let (mut seen, mut since) = (received.load(Ordering::Relaxed), Instant::now());
    while seen < everything && since.elapsed() < QUIET {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = received.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
    let _ = stop_tx.send(());
    let mut all = new_histogram();
    for t in tasks {
        for (latencies, missing) in t.await.context("watcher task")? {
            if missing > 0 {
                errors.add_n(missing, "events not received");
            }
            for us in latencies {
                record(&mut all, Duration::from_micros(us.into()));
            }
        }
    }
    Ok((all, start.elapsed()))
}

/// What the watchers of a `kube-watch` run share.
struct WatchRun {
    /// Names of this run's pods start with it.
    prefix: String,
    /// Finds those pods' ADDED events.
    scan: AddedScan,
    /// ADDED events each watcher waits for.
    want: u64,
    /// The instant the pods' `SENT` annotations count from.
    epoch: Instant,
    /// Events received by all watchers, for the run's end.
    received: Arc<AtomicU64>,
}

impl WatchRun {
    /// Opens `n` watches on `conn`, reports each as open (or failed), then
    /// records the latency (µs) of every ADDED event of this run's pods on
    /// each until all have `want`, their streams end or `stop` fires.
    /// Returns each watch's latencies and how many events it missed.
    ///
    /// Latencies go to plain vectors, merged into one histogram at the
    /// end: each event costs the load generator a scan of its line and a
    /// push, nothing more.
    async fn run(
        &self,
        conn: Conn,
        n: usize,
        path: &str,
        ready: tokio::sync::mpsc::UnboundedSender<Result<()>>,
        mut stop: tokio::sync::watch::Receiver<()>,
    ) -> Vec<(Vec<u32>, u64)> {
        let opened =
            futures::future::join_all((0..n).map(|_| open_watch(conn.clone(), path))).await;
        let mut watches = Vec::with_capacity(n);
        let mut streams = futures::stream::SelectAll::new();
        for body in opened {
            let _ = ready.send(body.as_ref().map(|_| ()).map_err(|e| anyhow!("{e:#}")));
            let i = watches.len();
            watches.push(Lines::new(self.want as usize));
            if let Ok(body) = body {
                streams.push(http_body_util::BodyStream::new(body).map(move |f| (i, f)));
            }
        }
        drop(ready);
        let stopped = stop.changed();
        tokio::pin!(stopped);
        let mut done = if self.want == 0 { watches.len() } else { 0 };
        while done < watches.len() {
            let next = tokio::select! {
                biased;
                f = streams.next() => f,
                _ = &mut stopped => break,
            };
            let (i, frame) = match next {
                None => break,
                Some((i, Ok(frame))) => (i, frame),
                Some((_, Err(_))) => continue,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let now = self.epoch.elapsed().as_micros() as u64;
            let w = &mut watches[i];
            let before = w.latencies.len() as u64;
            w.feed(&data, |line, checked| self.sent(line, checked), now);
            let got = w.latencies.len() as u64;
            self.received.fetch_add(got - before, Ordering::Relaxed);
            if before < self.want && got >= self.want {
                done += 1;
            }
        }
        watches
            .into_iter()
            .map(|w| {
                let missing = self.want.saturating_sub(w.latencies.len() as u64);
                (w.latencies, missing)
            })
            .collect()
    }

    /// The send instant of an ADDED event of this run's pods. The first
    /// event of a watch is parsed in full (the stream is what a Kubernetes
    /// client expects); the rest are scanned for the two fields needed.
    fn sent(&self, line: &[u8], checked: &mut bool) -> Option<u64> {
        if *checked {
            return self.scan.sent(line);
        }
        *checked = true;
        let ev = serde_json::from_slice::<WatchEvent>(line).ok()?;
        let meta = &ev.object.metadata;
        (ev.kind == "ADDED" && meta.name.starts_with(&self.prefix))
            .then(|| meta.annotations.get(SENT).and_then(|s| s.parse().ok()))
            .flatten()
    }
}

/// Starts one watch: its body once the server answered 200.
async fn open_watch(mut conn: Conn, path: &str) -> Result<hyper::body::Incoming> {
    let resp = conn.send_request(build(Method::GET, path, None)?).await?;
    if resp.status() != StatusCode::OK {
        bail!("watch: {}", resp.status());
    }
    Ok(resp.into_body())
}

/// One watch's stream cut into lines, and the latencies found in them.
struct Lines {
    latencies: Vec<u32>,
    /// The tail of a line split across DATA frames.
    partial: Vec<u8>,
    /// Whether the first event was parsed in full.
    checked: bool,
}

impl Lines {
    fn new(want: usize) -> Self {
        Self {
            latencies: Vec::with_capacity(want),
            partial: Vec::new(),
            checked: false,
        }
    }

    /// Takes one DATA frame received at `now` (µs since the epoch); `sent`
    /// gives a complete line's send instant if it is one of the run's
    /// events.
    fn feed(&mut self, data: &[u8], sent: impl Fn(&[u8], &mut bool) -> Option<u64>, now: u64) {
        let Self {
            latencies,
            partial,
            checked,
        } = self;
        let mut line_at = |line: &[u8]| {
            if let Some(sent) = sent(line, checked) {
                latencies.push(now.saturating_sub(sent).clamp(1, u32::MAX.into()) as u32);
            }
        };
        let mut rest = data;
        if !partial.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                partial.extend_from_slice(rest);
                return;
            };
            partial.extend_from_slice(&rest[..=nl]);
            line_at(partial);
            partial.clear();
            rest = &rest[nl + 1..];
        }
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            line_at(&rest[..=nl]);
            rest = &rest[nl + 1..];
        }
        partial.extend_from_slice(rest);
    }
}

/// Finds the send instant of an ADDED event line of one of this run's pods
/// (name starting with the run's prefix) without parsing the object.
struct AddedScan {
    name: memchr::memmem::Finder<'static>,
    sent: memchr::memmem::Finder<'static>,
}

impl AddedScan {
    fn new(prefix: &str) -> Self {
        let finder = |s: String| memchr::memmem::Finder::new(s.as_bytes()).into_owned();
        Self {
            name: finder(format!("\"name\":\"{prefix}")),
            sent: finder(format!("\"{SENT}\":\"")),
        }
    }

    fn sent(&self, line: &[u8]) -> Option<u64> {
        let rest = line.strip_prefix(b"{\"type\":\"ADDED\"")?;
        self.name.find(rest)?;
        let at = self.sent.find(rest)? + self.sent.needle().len();
        let digits = rest[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&rest[at..at + digits])
            .ok()?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kubeconfig_fields() {
        let text = "clusters:\n- name: keel\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: QUJD\n";
        assert_eq!(
            kubeconfig_field(text, "server"),
            Some("https://127.0.0.1:6443")
        );
        assert_eq!(
            kubeconfig_field(text, "certificate-authority-data"),
            Some("QUJD")
        );
        assert_eq!(kubeconfig_field(text, "client-key-data"), None);
    }

    #[test]
    fn scans_added_lines() {
        let line = br#"{"type":"ADDED","object":{"metadata":{"name":"w1-3","annotations":{"keel-bench/sent-us":"12345"}}}}"#;
        assert_eq!(AddedScan::new("w1").sent(line), Some(12345));
        assert_eq!(AddedScan::new("w2").sent(line), None, "another run's pod");
        let modified = br#"{"type":"MODIFIED","object":{"metadata":{"name":"w1-3","annotations":{"keel-bench/sent-us":"1"}}}}"#;
        assert_eq!(AddedScan::new("w1").sent(modified), None);
    }
}
