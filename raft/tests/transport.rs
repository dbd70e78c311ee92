//! The QUIC peer transport over real sockets on 127.0.0.1: ordering and
//! completeness, reconnection after a restart, snapshots next to heartbeats,
//! mutual TLS against a CA, and misbehaving clients.
//!
//! Run: `cargo test -p keel-raft --test transport -- --nocapture` (prints
//! timings and the heartbeat latency during the snapshot transfer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_raft::transport::{Incoming, PeerTls, Transport, TransportConfig, ALPN};
use sha2::{Digest, Sha256};
use tokio::time::timeout;

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=keel_raft=debug`).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn auto_config(id: u64, root: &Path) -> TransportConfig {
    init_tracing();
    let member = root.join(format!("member-{id}"));
    TransportConfig::new(
        id,
        localhost(),
        PeerTls::Auto {
            dir: member.join("fixtures/peer"),
        },
        member.join("snap"),
    )
}

/// Starts one transport per config and makes every member a peer of every
/// other (through `add_peer`, since the ports are only known after binding).
async fn cluster(configs: Vec<TransportConfig>) -> (Vec<Transport>, Vec<Incoming>) {
    init_tracing();
    let mut ts = Vec::new();
    let mut incs = Vec::new();
    for cfg in configs {
        let (t, inc) = Transport::start(cfg).await.expect("start");
        ts.push(t);
        incs.push(inc);
    }
    let addrs: Vec<(u64, SocketAddr)> = ts
        .iter()
        .map(|t| (t.id(), t.local_addr().unwrap()))
        .collect();
    for t in &ts {
        for &(id, addr) in &addrs {
            t.add_peer(id, addr);
        }
    }
    (ts, incs)
}

/// Message payload: sender, sequence number, padding.
fn numbered(from: u64, seq: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(80);
    m.extend_from_slice(&from.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.resize(80, 0xab);
    m
}

fn parse_numbered(m: &[u8]) -> (u64, u64) {
    let from = u64::from_le_bytes(m[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(m[8..16].try_into().unwrap());
    (from, seq)
}

/// Receives until `pred` holds for a message; panics after `deadline`.
async fn recv_until(
    inc: &mut Incoming,
    deadline: Duration,
    mut pred: impl FnMut(u64, &[u8]) -> bool,
) {
    timeout(deadline, async {
        loop {
            let (from, m) = inc.messages.recv().await.expect("channel open");
            if pred(from, &m) {
                return;
            }
        }
    })
    .await
    .expect("expected message did not arrive in time");
}

/// Asserts that nothing at all arrives for `quiet`.
async fn assert_silent(inc: &mut Incoming, quiet: Duration) {
    if let Ok(Some((from, m))) = timeout(quiet, inc.messages.recv()).await {
        panic!("unexpected message from {from}: {} bytes", m.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_exchange_10k_messages_each_way_in_order() {
    const N: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let configs = (1..=3)
        .map(|id| {
            let mut c = auto_config(id, dir.path());
            c.send_queue = N as usize; // the whole burst fits: nothing may drop
            c
        })
        .collect();
    let (ts, incs) = cluster(configs).await;
    let start = Instant::now();
    for t in &ts {
        for to in (1..=3).filter(|&to| to != t.id()) {
            for seq in 0..N {
                t.send(to, numbered(t.id(), seq));
            }
        }
    }
    let mut receivers = Vec::new();
    for (t, mut inc) in ts.iter().zip(incs) {
        let me = t.id();
        receivers.push(tokio::spawn(async move {
            let mut next: BTreeMap<u64, u64> = BTreeMap::new();
            let mut total = 0;
            while total < 2 * N {
                let (from, m) = timeout(Duration::from_secs(20), inc.messages.recv())
                    .await
                    .unwrap_or_else(|_| panic!("member {me}: only {total} messages arrived"))
                    .expect("channel open");
                let (sender, seq) = parse_numbered(&m);
                assert_eq!(sender, from, "the transport names the right sender");
                let expected = next.entry(from).or_insert(0);
                assert_eq!(
                    seq, *expected,
                    "member {me}: message from {from} out of order"
                );
                *expected += 1;
                total += 1;
            }
            next
        }));
    }
    for r in receivers {
        let next = r.await.unwrap();
        assert_eq!(next.values().copied().collect::<Vec<_>>(), vec![N, N]);
    }
    println!(
        "6 × {N} messages delivered in order in {:?}",
        start.elapsed()
    );
    for t in &ts {
        for to in (1..=3).filter(|&to| to != t.id()) {
            assert_eq!(t.dropped_messages(to), Some(0));
            assert!(t.peer_reachable(to));
        }
    }
    for t in &ts {
        t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_is_reconnected_automatically() {
    let dir = tempfile::tempdir().unwrap();
    let (ts, mut incs) =
        cluster(vec![auto_config(1, dir.path()), auto_config(2, dir.path())]).await;
    let (a, b) = (ts[0].clone(), ts[1].clone());
    let mut inc_b = incs.pop().unwrap();
    let mut inc_a = incs.pop().unwrap();
    let b_addr = b.local_addr().unwrap();
    let b_cert = dir.path().join("member-2/fixtures/peer/cert.pem");
    let cert_before = std::fs::read(&b_cert).unwrap();

    a.send(2, numbered(1, 0));
    recv_until(&mut inc_b, Duration::from_secs(5), |_, m| {
        parse_numbered(m) == (1, 0)
    })
    .await;
    b.send(1, numbered(2, 0));
    recv_until(&mut inc_a, Duration::from_secs(5), |_, m| {
        parse_numbered(m) == (2, 0)
    })
    .await;
    assert!(a.peer_reachable(2));

    // Member 2 goes away and comes back on the same port with the same data dir.
    b.shutdown().await;
    drop((b, inc_b, ts));
    let started = Instant::now();
    let mut cfg = auto_config(2, dir.path());
    cfg.listen = b_addr;
    cfg.peers.insert(1, a.local_addr().unwrap());
    let (b, mut inc_b) = Transport::start(cfg)
        .await
        .expect("restart on the same port");
    assert_eq!(
        std::fs::read(&b_cert).unwrap(),
        cert_before,
        "auto TLS cert reused"
    );

    // Member 1 keeps sending, as Raft would; the transport redials by itself.
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for seq in 1.. {
                a.send(2, numbered(1, seq));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut first = 0;
    recv_until(&mut inc_b, Duration::from_secs(10), |from, m| {
        first = parse_numbered(m).1;
        from == 1
    })
    .await;
    sender.abort();
    let _ = sender.await;
    println!(
        "reconnected {:?} after the restart (first seq {first})",
        started.elapsed()
    );
    assert!(a.peer_reachable(2));

    // Everything sent now arrives, in order.
    let base = 1_000_000;
    for seq in base..base + 100 {
        a.send(2, numbered(1, seq));
    }
    let mut next = base;
    recv_until(&mut inc_b, Duration::from_secs(5), |_, m| {
        let seq = parse_numbered(m).1;
        if seq >= base {
            assert_eq!(seq, next, "in order after the reconnect");
            next += 1;
        }
        next == base + 100
    })
    .await;
    // And the restarted member can dial out too.
    b.send(1, numbered(2, 7));
    recv_until(&mut inc_a, Duration::from_secs(5), |_, m| {
        parse_numbered(m) == (2, 7)
    })
    .await;

    a.shutdown().await;
    b.shutdown().await;
}

/// Starts a transport on a runtime of its own, in its own thread, so that the
/// test can make it vanish without a word (no CONNECTION_CLOSE): returns the
/// handles and a function that "crashes" it.
fn start_crashable(cfg: TransportConfig) -> (Transport, Incoming, impl FnOnce()) {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (crash_tx, crash_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        started_tx.send(rt.block_on(Transport::start(cfg))).unwrap();
        let _ = crash_rx.recv();
        // Drops every task, quinn's drivers included, without sending anything.
        rt.shutdown_timeout(Duration::from_secs(1));
    });
    let (t, inc) = started_rx.recv().unwrap().expect("start");
    let crash = move || {
        crash_tx.send(()).unwrap();
        thread.join().unwrap();
    };
    (t, inc, crash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_peer_is_reconnected_before_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut inc_a) = Transport::start(auto_config(1, dir.path())).await.unwrap();
    let mut cfg = auto_config(2, dir.path());
    cfg.peers.insert(1, a.local_addr().unwrap());
    let (b, mut inc_b, crash) = start_crashable(cfg);
    let b_addr = b.local_addr().unwrap();
    a.add_peer(2, b_addr);
    a.send(2, numbered(1, 0));
    recv_until(&mut inc_b, Duration::from_secs(5), |_, m| {
        parse_numbered(m) == (1, 0)
    })
    .await;
    b.send(1, numbered(2, 0));
    recv_until(&mut inc_a, Duration::from_secs(5), |_, m| {
        parse_numbered(m) == (2, 0)
    })
    .await;

    crash();
    drop((b, inc_b));
    let crashed = Instant::now();
    let mut cfg = auto_config(2, dir.path());
    cfg.listen = b_addr;
    cfg.peers.insert(1, a.local_addr().unwrap());
    let (b, mut inc_b) = Transport::start(cfg)
        .await
        .expect("restart on the same port");
    // Member 1 still holds a connection the restarted member knows nothing
    // of; the restarted member resets it (same stateless-reset key, derived
    // from its TLS key) instead of leaving it to the 10 s idle timeout.
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for seq in 1.. {
                a.send(2, numbered(1, seq));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    recv_until(&mut inc_b, Duration::from_secs(5), |from, _| from == 1).await;
    sender.abort();
    println!("reconnected {:?} after the crash", crashed.elapsed());
    a.shutdown().await;
    b.shutdown().await;
}

/// Writes `len` bytes of deterministic pseudo-random data and returns their SHA-256.
fn write_random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).unwrap();
    Sha256::digest(&data).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_20_mib_does_not_delay_heartbeats() {
    const SIZE: usize = 20 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (ts, mut incs) =
        cluster(vec![auto_config(1, dir.path()), auto_config(2, dir.path())]).await;
    let (a, b) = (ts[0].clone(), ts[1].clone());
    let mut inc_b = incs.pop().unwrap();
    let file = dir.path().join("snapshot.bin");
    let want = write_random_file(&file, SIZE);

    // Warm up the connection, then heartbeat every millisecond.
    a.send(2, vec![0]);
    recv_until(&mut inc_b, Duration::from_secs(5), |_, _| true).await;
    let epoch = Instant::now();
    let heartbeats = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                tick.tick().await;
                let sent = epoch.elapsed().as_nanos() as u64;
                a.send(2, sent.to_le_bytes().to_vec());
            }
        })
    };
    let transfer_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = {
        let done = transfer_done.clone();
        tokio::spawn(async move {
            // (max latency during the transfer, heartbeats during the transfer, snapshot)
            let mut max = Duration::ZERO;
            let mut count = 0u64;
            let mut snapshot = None;
            loop {
                tokio::select! {
                    m = inc_b.messages.recv() => {
                        let (_, m) = m.expect("channel open");
                        let sent = Duration::from_nanos(u64::from_le_bytes(m[..8].try_into().unwrap()));
                        if snapshot.is_none() {
                            max = max.max(epoch.elapsed().saturating_sub(sent));
                            count += 1;
                        }
                    }
                    s = inc_b.snapshots.recv(), if snapshot.is_none() => {
                        snapshot = Some(s.expect("channel open"));
                    }
                }
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(snapshot) = snapshot.take() {
                        return (max, count, snapshot);
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    a.send_snapshot(2, b"meta: index 42".to_vec(), file.clone())
        .await
        .expect("snapshot sent");
    let took = started.elapsed();
    transfer_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (max, count, snap) = timeout(Duration::from_secs(5), receiver)
        .await
        .expect("receiver done")
        .unwrap();
    heartbeats.abort();
    println!("20 MiB snapshot in {took:?}; {count} heartbeats meanwhile, max latency {max:?}");
    assert_eq!(snap.from, 1);
    assert_eq!(snap.meta, b"meta: index 42");
    assert!(snap.path.starts_with(dir.path().join("member-2/snap")));
    let got = std::fs::read(&snap.path).unwrap();
    assert_eq!(got.len(), SIZE);
    assert_eq!(Sha256::digest(&got).to_vec(), want, "snapshot intact");
    assert!(count > 0, "heartbeats flowed during the transfer");
    assert!(
        max < Duration::from_millis(200),
        "heartbeat latency {max:?} during the transfer"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A cluster CA written as PEM, able to issue member certificates.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// Issues a certificate for `ip` and writes cert, key and (trusted) CA
    /// files into `dir`.
    fn member_tls(&self, dir: &Path, trusted: &TestCa, ip: &str) -> PeerTls {
        std::fs::create_dir_all(dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec![ip.to_string(), "localhost".to_string()]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let paths = ["peer.crt", "peer.key", "ca.crt"].map(|f| dir.join(f));
        std::fs::write(&paths[0], cert.pem()).unwrap();
        std::fs::write(&paths[1], key.serialize_pem()).unwrap();
        std::fs::write(&paths[2], &trusted.pem).unwrap();
        let [cert, key, ca] = paths;
        PeerTls::Files { cert, key, ca }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_ca_files_refuses_foreign_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_ca = TestCa::new("keel cluster CA");
    let other_ca = TestCa::new("some other CA");
    let config = |id: u64, tls: PeerTls| {
        TransportConfig::new(id, localhost(), tls, dir.path().join(format!("snap-{id}")))
    };
    let d = dir.path();
    let (ts, mut incs) = cluster(vec![
        config(
            1,
            cluster_ca.member_tls(&d.join("m1"), &cluster_ca, "127.0.0.1"),
        ),
        config(
            2,
            cluster_ca.member_tls(&d.join("m2"), &cluster_ca, "127.0.0.1"),
        ),
        // Member 3 trusts the cluster CA but its own certificate is foreign.
        config(
            3,
            other_ca.member_tls(&d.join("m3"), &cluster_ca, "127.0.0.1"),
        ),
        // Member 4's certificate is the cluster's, but for another address.
        config(
            4,
            cluster_ca.member_tls(&d.join("m4"), &cluster_ca, "10.9.8.7"),
        ),
    ])
    .await;
    let mut inc_2 = incs.remove(1);
    let mut inc_1 = incs.remove(0);

    ts[0].send(2, numbered(1, 1));
    ts[1].send(1, numbered(2, 1));
    recv_until(&mut inc_2, Duration::from_secs(5), |from, m| {
        from == 1 && parse_numbered(m) == (1, 1)
    })
    .await;
    recv_until(&mut inc_1, Duration::from_secs(5), |from, m| {
        from == 2 && parse_numbered(m) == (2, 1)
    })
    .await;

    // Members 3 and 4 keep trying; nothing of theirs reaches member 1.
    for seq in 0..40 {
        ts[2].send(1, numbered(3, seq));
        ts[3].send(1, numbered(4, seq));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_silent(&mut inc_1, Duration::from_millis(300)).await;
    assert!(ts[2].dropped_messages(1).unwrap() > 0);
    assert!(ts[3].dropped_messages(1).unwrap() > 0);
    // Nor can member 1 talk to member 4: its certificate does not name the
    // address member 1 dials.
    ts[0].send(4, numbered(1, 2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ts[0].peer_reachable(4));
    assert_eq!(ts[0].dropped_messages(4), Some(1));
    // A snapshot from member 3 is refused as well.
    let file = d.join("foreign.snap");
    std::fs::write(&file, b"foreign").unwrap();
    assert!(ts[2]
        .send_snapshot(1, Vec::new(), file.clone())
        .await
        .is_err());
    assert!(timeout(Duration::from_millis(200), inc_1.snapshots.recv())
        .await
        .is_err());
    // Members 1 and 2 are unaffected.
    ts[1].send(1, numbered(2, 2));
    recv_until(&mut inc_1, Duration::from_secs(5), |from, m| {
        from == 2 && parse_numbered(m) == (2, 2)
    })
    .await;
    for t in &ts {
        t.shutdown().await;
    }
}

/// Accepts any server certificate (the misbehaving client below does not care).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A bare quinn client with a self-signed certificate and the keel ALPN.
fn raw_client() -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["mallory".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_client_auth_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(localhost()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

/// The hello of a message stream (see the transport's module docs).
fn hello(from: u64, to: u64) -> Vec<u8> {
    let mut h = b"KRFT".to_vec();
    h.push(1); // version
    h.push(1); // kind: messages
    h.extend_from_slice(&from.to_le_bytes());
    h.extend_from_slice(&to.to_le_bytes());
    h
}

/// Connects to `server`, writes `bytes` on a uni stream and returns the
/// application error code the server closed the connection with.
async fn send_garbage(client: &quinn::Endpoint, server: SocketAddr, bytes: &[u8]) -> u64 {
    let conn = client.connect(server, "keel-peer").unwrap().await.unwrap();
    let mut s = conn.open_uni().await.unwrap();
    let _ = s.write_all(bytes).await;
    match timeout(Duration::from_secs(5), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => c.error_code.into_inner(),
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_get_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let (ts, mut incs) =
        cluster(vec![auto_config(1, dir.path()), auto_config(2, dir.path())]).await;
    let (a, b) = (ts[0].clone(), ts[1].clone());
    let mut inc_a = incs.remove(0);
    let a_addr = a.local_addr().unwrap();
    b.send(1, numbered(2, 0));
    recv_until(&mut inc_a, Duration::from_secs(5), |_, m| {
        parse_numbered(m) == (2, 0)
    })
    .await;

    let client = raw_client();
    // A valid hello (claiming to be member 2, which auto TLS cannot disprove)
    // followed by a frame claiming 4 GiB.
    let mut oversized = hello(2, 1);
    oversized.extend_from_slice(&u32::MAX.to_le_bytes());
    oversized.extend_from_slice(b"tiny");
    assert_eq!(send_garbage(&client, a_addr, &oversized).await, 1);
    // Just above the limit.
    let mut above = hello(2, 1);
    above.extend_from_slice(&((16u32 << 20) + 1).to_le_bytes());
    assert_eq!(send_garbage(&client, a_addr, &above).await, 1);
    // Not a hello at all.
    assert_eq!(
        send_garbage(&client, a_addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        1
    );
    // A hello from a member that does not exist, or addressed to someone else.
    assert_eq!(send_garbage(&client, a_addr, &hello(99, 1)).await, 2);
    assert_eq!(send_garbage(&client, a_addr, &hello(2, 3)).await, 1);
    // A stream that ends inside a frame.
    let mut truncated = hello(2, 1);
    truncated.extend_from_slice(&100u32.to_le_bytes());
    truncated.extend_from_slice(b"short");
    let conn = client.connect(a_addr, "keel-peer").unwrap().await.unwrap();
    let mut s = conn.open_uni().await.unwrap();
    s.write_all(&truncated).await.unwrap();
    s.finish().unwrap();
    match timeout(Duration::from_secs(5), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code.into_inner(), 1)
        }
        other => panic!("expected a close, got {other:?}"),
    }

    // None of it was delivered, and the good peer is still served.
    for seq in 1..=100 {
        b.send(1, numbered(2, seq));
    }
    let mut next = 1;
    recv_until(&mut inc_a, Duration::from_secs(5), |from, m| {
        assert_eq!(from, 2);
        assert_eq!(
            parse_numbered(m),
            (2, next),
            "only member 2's real messages"
        );
        next += 1;
        next == 101
    })
    .await;
    assert_silent(&mut inc_a, Duration::from_millis(100)).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_removed_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (ts, mut incs) =
        cluster(vec![auto_config(1, dir.path()), auto_config(2, dir.path())]).await;
    let (a, b) = (ts[0].clone(), ts[1].clone());
    let mut inc_a = incs.remove(0);
    // Sending to a non-member is a no-op; snapshots to it fail cleanly.
    a.send(42, vec![1, 2, 3]);
    assert!(!a.peer_reachable(42));
    assert!(a
        .send_snapshot(42, Vec::new(), PathBuf::from("/nonexistent"))
        .await
        .is_err());

    b.send(1, numbered(2, 0));
    recv_until(&mut inc_a, Duration::from_secs(5), |_, m| {
        parse_numbered(m) == (2, 0)
    })
    .await;
    // Once member 1 removes member 2, its messages are no longer accepted.
    a.remove_peer(2);
    b.send(1, numbered(2, 1));
    assert_silent(&mut inc_a, Duration::from_millis(300)).await;
    // Re-added, it gets through again (member 2 redials after being cut off).
    a.add_peer(2, b.local_addr().unwrap());
    let sender = {
        let b = b.clone();
        tokio::spawn(async move {
            loop {
                b.send(1, numbered(2, 2));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    recv_until(&mut inc_a, Duration::from_secs(10), |_, m| {
        parse_numbered(m) == (2, 2)
    })
    .await;
    sender.abort();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queues_and_unreachable_peers_drop_and_count() {
    let dir = tempfile::tempdir().unwrap();
    // A UDP socket that never answers: dials to it time out.
    let black_hole = std::net::UdpSocket::bind(localhost()).unwrap();
    let nowhere = black_hole.local_addr().unwrap();
    let mut cfg = auto_config(1, dir.path());
    cfg.send_queue = 10;
    cfg.send_queue_bytes = 3000;
    cfg.max_message_bytes = 1024;
    cfg.connect_timeout = Duration::from_millis(300);
    cfg.peers.insert(8, nowhere);
    cfg.peers.insert(9, nowhere);
    let (a, _inc) = Transport::start(cfg).await.unwrap();

    a.send(9, vec![0; 2000]); // oversized: never queued
    assert_eq!(a.dropped_messages(9), Some(1));
    for _ in 0..100 {
        a.send(9, vec![0; 10]); // the queue holds 10 messages
        a.send(8, vec![0; 1000]); // the queue holds 3000 bytes
    }
    // At most the queue's worth plus the one message that triggered the dial.
    assert!(a.dropped_messages(9).unwrap() >= 1 + 100 - 11);
    assert!(a.dropped_messages(8).unwrap() >= 100 - 4);
    // Once the dial times out, the queued messages are dropped too.
    timeout(Duration::from_secs(3), async {
        while a.dropped_messages(9) != Some(101) || a.dropped_messages(8) != Some(100) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("everything sent to an unreachable peer is dropped and counted");
    assert!(!a.peer_reachable(8) && !a.peer_reachable(9));
    a.shutdown().await;
}
