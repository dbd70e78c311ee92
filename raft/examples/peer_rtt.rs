//! Round-trip latency of the QUIC peer transport on loopback: member 1 sends
//! a 100-byte message to member 2, which echoes it back; prints percentiles.
//!
//! Run: `cargo run --release -p keel-raft --example peer_rtt [rounds]`
use std::net::SocketAddr;
use std::time::Instant;

use keel_raft::transport::{PeerTls, Transport, TransportConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = std::env::temp_dir().join(format!("keel-peer-rtt-{}", std::process::id()));
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let cfg = |id: u64| {
            TransportConfig::new(
                id,
                any,
                PeerTls::Auto {
                    dir: dir.join(format!("m{id}/tls")),
                },
                dir.join(format!("m{id}/snap")),
            )
        };
        let (a, mut ia) = Transport::start(cfg(1)).await?;
        let (b, mut ib) = Transport::start(cfg(2)).await?;
        a.add_peer(2, b.local_addr().ok_or("no addr")?);
        b.add_peer(1, a.local_addr().ok_or("no addr")?);
        let echo = b.clone();
        tokio::spawn(async move {
            while let Some((from, m)) = ib.messages.recv().await {
                echo.send(from, m);
            }
        });
        let mut lat = Vec::with_capacity(rounds);
        for i in 0..rounds + 200 {
            let t = Instant::now();
            a.send(2, vec![7u8; 100]);
            ia.messages.recv().await.ok_or("closed")?;
            if i >= 200 {
                lat.push(t.elapsed().as_micros() as u64);
            }
        }
        lat.sort_unstable();
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        println!(
            "peer RTT over QUIC (us): p50 {} p90 {} p99 {} max {}",
            p(0.5),
            p(0.9),
            p(0.99),
            p(1.0)
        );
        a.shutdown().await;
        b.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
