//! keel-bench: a load generator for any etcd v3 endpoint (keel or etcd),
//! with the flags of etcd's own `benchmark` tool where they exist. Prints
//! latency percentiles (hdrhistogram) and throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use keel_storage::proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "keel-bench", about = "Load generator for etcd v3 endpoints")]
struct Cli {
    /// Comma-separated endpoints (`http://host:port`).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoints: String,
    /// Number of gRPC connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total number of requests.
    #[arg(long, default_value_t = 10_000)]
    total: usize,
    /// Print one machine-readable summary line (`name p50_us p99_us ops_per_s`).
    #[arg(long)]
    summary_name: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Puts of random or sequential keys.
    Put {
        /// Key size in bytes.
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        /// Number of distinct keys.
        #[arg(long, default_value_t = 1)]
        key_space_size: usize,
        /// Sequential keys instead of random ones.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// The disk's floor: latency of a 4 KiB write + fdatasync in `--dir`
    /// (no server involved; `--total` rounds).
    Fsync {
        /// Directory on the disk to measure.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
    /// Gets of one key.
    Range {
        /// The key.
        #[arg(default_value = "foo")]
        key: String,
        /// `l` (linearizable) or `s` (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
    },
}

fn key_bytes(i: usize, size: usize) -> Vec<u8> {
    let mut k = format!("{i:0size$}").into_bytes();
    k.truncate(size.max(1));
    k
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Fsync { dir } = &cli.cmd {
        return fsync_floor(&cli, dir);
    }
    let endpoints: Vec<String> = cli
        .endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let mut conns = Vec::new();
    for i in 0..cli.conns.max(1) {
        let ep = endpoints[i % endpoints.len()].clone();
        let ch = Channel::from_shared(ep.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {ep}"))?;
        conns.push(KvClient::new(ch));
    }
    if let Cmd::Range { key, .. } = &cli.cmd {
        conns[0]
            .clone()
            .put(PutRequest {
                key: key.clone().into_bytes().into(),
                value: vec![b'x'; 256].into(),
                ..Default::default()
            })
            .await?;
    }
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..cli.clients.max(1) {
        let mut client = conns[c % conns.len()].clone();
        let hist = hist.clone();
        let next = next.clone();
        let cmd = cli.cmd.clone();
        let total = cli.total;
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let value = vec![b'v'; 256];
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t0 = Instant::now();
                let res = match &cmd {
                    Cmd::Put {
                        key_size,
                        val_size,
                        key_space_size,
                        sequential_keys,
                    } => {
                        let k = if *sequential_keys {
                            i % key_space_size.max(&1)
                        } else {
                            rand::random::<u64>() as usize % key_space_size.max(&1)
                        };
                        client
                            .put(PutRequest {
                                key: key_bytes(k, *key_size).into(),
                                value: value
                                    .iter()
                                    .cycle()
                                    .take(*val_size)
                                    .copied()
                                    .collect::<Vec<u8>>()
                                    .into(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                    }
                    Cmd::Fsync { .. } => Ok(()),
                    Cmd::Range { key, consistency } => client
                        .range(RangeRequest {
                            key: key.clone().into_bytes().into(),
                            serializable: consistency == "s",
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                };
                if let Err(e) = res {
                    eprintln!("request failed: {e}");
                    continue;
                }
                let _ = local.record(t0.elapsed().as_micros() as u64);
            }
            let _ = hist.lock().await.add(&local);
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    let h = hist.lock().await;
    report(&cli, &h, elapsed);
    Ok(())
}

fn fsync_floor(cli: &Cli, dir: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let path = dir.join(".keel-bench-fsync");
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0u8; 4096];
    let mut h = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    for _ in 0..cli.total {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        h.record(t0.elapsed().as_micros() as u64)?;
    }
    let elapsed = start.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    report(cli, &h, elapsed);
    Ok(())
}

fn report(cli: &Cli, h: &Histogram<u64>, elapsed: Duration) {
    let rate = h.len() as f64 / elapsed.as_secs_f64();
    println!("Summary:");
    println!("  Requests:     {}", h.len());
    println!("  Total:        {:.3} s", elapsed.as_secs_f64());
    println!("  Requests/sec: {rate:.1}");
    for q in [50.0, 90.0, 99.0, 99.9] {
        println!(
            "  p{q:<5}        {:.3} ms",
            h.value_at_percentile(q) as f64 / 1000.0
        );
    }
    println!("  max           {:.3} ms", h.max() as f64 / 1000.0);
    if let Some(name) = &cli.summary_name {
        println!(
            "SUMMARY {name} p50_us={} p99_us={} ops_per_s={rate:.0}",
            h.value_at_percentile(50.0),
            h.value_at_percentile(99.0)
        );
    }
}
