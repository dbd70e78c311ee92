//! keel-bench: a load generator for any etcd v3 endpoint (keel or etcd),
//! with the flags of etcd's own `benchmark` tool where they exist. Prints
//! latency percentiles (hdrhistogram) and throughput, optionally as JSON
//! (`--json`), and turns a directory of such results into the side-by-side
//! report (`report`).

mod floor;
mod kube;
mod load;
/// The keel binary's `memcpy` tuning, shared by path: the load generator
/// copies TLS records too.
#[path = "../../src/memcpy.rs"]
mod memcpy;
mod null_server;
mod report;
mod stats;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use keel_storage::proto::etcdserverpb::{kv_client::KvClient, PutRequest};

use crate::load::{KeyPicker, Worker};
use crate::stats::{Errors, Limiter, MemberSampler, RunResult};

#[derive(Parser, Debug)]
#[command(name = "keel-bench", about = "Load generator for etcd v3 endpoints")]
struct Cli {
    /// Comma-separated endpoints (`http://host:port`).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoints: String,
    /// Number of gRPC connections, spread round-robin over the endpoints.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent clients, sharing the connections round-robin.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total number of requests.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Maximum requests per second, all clients together (0: unlimited).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds after which a request counts as failed.
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Print one machine-readable line
    /// (`SUMMARY <name> p50_us= p99_us= ops_per_s= errors=`).
    #[arg(long)]
    summary_name: Option<String>,
    /// Write the result as JSON to this file.
    #[arg(long, alias = "json-out")]
    json: Option<PathBuf>,
    /// Server process ids whose CPU time (over the run) and RSS (after it)
    /// go into the result, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Workload key recorded in the JSON (matches runs across systems).
    #[arg(long, default_value = "")]
    id: String,
    /// Workload description recorded in the JSON.
    #[arg(long, default_value = "")]
    label: String,
    /// System name recorded in the JSON (keel, etcd, ...).
    #[arg(long, default_value = "")]
    system: String,
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
        key_space_size: u64,
        /// Sequential keys instead of random ones.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Gets of one key (put once before the run).
    Range {
        /// The key.
        #[arg(default_value = "foo")]
        key: String,
        /// `l` (linearizable) or `s` (serializable).
        #[arg(long, default_value = "l", value_parser = ["l", "s"])]
        consistency: String,
    },
    /// Transactions of `--txn-ops` puts each.
    TxnPut {
        /// Key size in bytes.
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        /// Number of distinct keys.
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        /// Puts per transaction.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
    },
    /// Latency from a put to each watcher's receipt of its event (puts one
    /// at a time to one key; `--total` is not used).
    WatchLatency {
        /// Watchers in total.
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        /// Watch streams the watchers are spread over (over `--conns`).
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Puts per second.
        #[arg(long, default_value_t = 100.0)]
        put_rate: f64,
        /// Puts in total.
        #[arg(long, default_value_t = 1000)]
        put_total: u64,
        /// Key size in bytes.
        #[arg(long, default_value_t = 32)]
        key_size: usize,
        /// Value size in bytes (at least 20).
        #[arg(long, default_value_t = 32)]
        val_size: usize,
    },
    /// Fan-out: many watchers on one prefix, `--clients` putters under it;
    /// events/s delivered and per-event latency (`--total` is not used).
    Watch {
        /// Watchers in total.
        #[arg(long, default_value_t = 10_000)]
        watchers: usize,
        /// Watch streams the watchers are spread over (over `--conns`).
        #[arg(long, default_value_t = 100)]
        streams: usize,
        /// Puts per second (0: unlimited).
        #[arg(long, default_value_t = 0.0)]
        put_rate: f64,
        /// Puts in total.
        #[arg(long, default_value_t = 100)]
        put_total: u64,
        /// The watched prefix.
        #[arg(long, default_value = "/bench/watch/")]
        prefix: String,
        /// Value size in bytes (at least 20).
        #[arg(long, default_value_t = 32)]
        val_size: usize,
    },
    /// Lease keep-alive round trips: each client keeps its own lease alive
    /// on its own `LeaseKeepAlive` stream (`--once`: a stream per request).
    LeaseKeepalive {
        /// The leases' TTL in seconds.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        /// A new stream for every keep-alive (etcd's `KeepAliveOnce`, as
        /// etcd's `benchmark lease-keepalive` does).
        #[arg(long)]
        once: bool,
    },
    /// The disk's floor: latency of a 4 KiB write + fdatasync in `--dir`
    /// (no server involved; `--total` rounds).
    Fsync {
        /// Directory on the disk to measure.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// The network's floor: loopback TCP ping-pong round trips (no server
    /// involved; `--total` rounds).
    Rtt {
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Kubernetes API server: ConfigMap creates (`--clients` over
    /// `--conns` HTTP/2 connections, `--total`, `--rate`).
    KubeCreate {
        /// kubeconfig with the server URL, CA and a client certificate.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Namespace (created if missing).
        #[arg(long, default_value = "keel-bench")]
        namespace: String,
    },
    /// Kubernetes API server: `--total` lists of `--objects` pods (created
    /// first if fewer exist, `--clients` at a time).
    KubeList {
        /// kubeconfig with the server URL, CA and a client certificate.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Namespace (created if missing).
        #[arg(long, default_value = "keel-bench-list")]
        namespace: String,
        /// Pods in the namespace.
        #[arg(long, default_value_t = 10_000)]
        objects: usize,
    },
    /// Kubernetes API server: `--watchers` pod watches (over `--conns`),
    /// then pod creates; latency from each create to each watcher's ADDED
    /// event (`--total` is not used).
    KubeWatch {
        /// kubeconfig with the server URL, CA and a client certificate.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Namespace (created if missing).
        #[arg(long, default_value = "keel-bench-watch")]
        namespace: String,
        /// Watchers in total.
        #[arg(long, default_value_t = 10_000)]
        watchers: usize,
        /// Pods created.
        #[arg(long, default_value_t = 100)]
        pods: u64,
        /// Pod creates per second.
        #[arg(long, default_value_t = 10.0)]
        pod_rate: f64,
    },
    /// Prints `--endpoints` reordered with the Raft leader first (Status
    /// RPC), so that single-connection workloads talk to the leader.
    Leader,
    /// Serves etcd KV and Watch gRPC services that store nothing (every
    /// request answered at once, empty; puts handed to watchers) until
    /// killed: keel-bench's workloads run against it measure the floor of
    /// gRPC over loopback and of this load generator on this machine.
    NullServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2379")]
        listen: String,
    },
    /// Turns a directory of `--json` results into `<out>.json`, `<out>.md`
    /// (keel/etcd ratios, targets met or missed) and `<out>.svg`.
    Report {
        /// The directory of results (read in file-name order).
        #[arg(long)]
        dir: PathBuf,
        /// Output path without extension, e.g. `bench/results/2026-11-23`.
        #[arg(long)]
        out: PathBuf,
        /// Markdown put above the tables (machine, command ...).
        #[arg(long, default_value = "")]
        header: String,
    },
}

fn main() -> Result<()> {
    memcpy::tune();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // As in the keel binary: without the LIFO slot, requests that become
    // ready together leave in one write per connection instead of one each
    // (the load generator shares the cores with the system under test, so
    // its own cost is taken from both keel and etcd alike).
    #[cfg(tokio_unstable)]
    if std::env::var_os("KEEL_BENCH_LIFO").is_none() {
        builder.disable_lifo_slot();
    }
    builder.build()?.block_on(cli_main())
}

async fn cli_main() -> Result<()> {
    let cli = Cli::parse();
    if let Cmd::Report { dir, out, header } = &cli.cmd {
        report::write(dir, out, header)?;
        println!("wrote {}.{{json,md,svg}}", out.display());
        return Ok(());
    }
    if let Cmd::NullServer { listen } = &cli.cmd {
        return null_server::serve(listen).await;
    }
    if let Cmd::Leader = &cli.cmd {
        println!("{}", load::leader_first(&endpoints(&cli)).await?.join(","));
        return Ok(());
    }
    let mut result = RunResult {
        id: cli.id.clone(),
        label: cli.label.clone(),
        system: cli.system.clone(),
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        ..Default::default()
    };
    let errors = Arc::new(Errors::default());
    let sampler = MemberSampler::start(&cli.pids);
    let (hist, elapsed) = run(&cli, &mut result, errors.clone()).await?;
    result.members = sampler.finish();
    result.load_avg = stats::load_avg();
    result.fill(&hist, errors.get(), elapsed);
    print!("{}", result.summary(cli.summary_name.as_deref()));
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The `--endpoints` list.
fn endpoints(cli: &Cli) -> Vec<String> {
    cli.endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Runs the subcommand; returns the latency histogram (µs) and the wall time.
async fn run(
    cli: &Cli,
    result: &mut RunResult,
    errors: Arc<Errors>,
) -> Result<(hdrhistogram::Histogram<u64>, std::time::Duration)> {
    let name = match &cli.cmd {
        Cmd::Put { .. } => "put",
        Cmd::Range { .. } => "range",
        Cmd::TxnPut { .. } => "txn-put",
        Cmd::WatchLatency { .. } => "watch-latency",
        Cmd::Watch { .. } => "watch",
        Cmd::LeaseKeepalive { .. } => "lease-keepalive",
        Cmd::Fsync { .. } => "fsync",
        Cmd::Rtt { .. } => "rtt",
        Cmd::Report { .. } => "report",
        Cmd::Leader => "leader",
        Cmd::NullServer { .. } => "null-server",
        Cmd::KubeCreate { .. } => "kube-create",
        Cmd::KubeList { .. } => "kube-list",
        Cmd::KubeWatch { .. } => "kube-watch",
    };
    result.workload = name.into();
    match &cli.cmd {
        Cmd::Fsync { dir } => return floor::fsync(dir, cli.total),
        Cmd::Rtt { size } => {
            let (total, size) = (cli.total, *size);
            return tokio::task::spawn_blocking(move || floor::rtt(total, size)).await?;
        }
        Cmd::KubeCreate {
            kubeconfig,
            namespace,
        } => {
            let target = kube::Target::from_kubeconfig(kubeconfig)?;
            let conns = target.connect(cli.conns).await?;
            kube::ensure_namespace(&mut conns[0].clone(), namespace).await?;
            let prefix = format!("c{}", rand::random::<u32>());
            let workers: Vec<Box<dyn Worker>> = (0..cli.clients.max(1))
                .map(|c| {
                    Box::new(kube::CreateWorker {
                        conn: conns[c % conns.len()].clone(),
                        ns: namespace.clone(),
                        prefix: prefix.clone(),
                    }) as Box<dyn Worker>
                })
                .collect();
            let timeout = std::time::Duration::from_secs_f64(cli.request_timeout.max(0.001));
            return load::closed_loop(workers, cli.total, Limiter::new(cli.rate), timeout, errors)
                .await;
        }
        Cmd::KubeList {
            kubeconfig,
            namespace,
            objects,
        } => {
            let target = kube::Target::from_kubeconfig(kubeconfig)?;
            let conns = target.connect(cli.conns).await?;
            return kube::list(&conns, namespace, *objects, cli.clients, cli.total, errors).await;
        }
        Cmd::KubeWatch {
            kubeconfig,
            namespace,
            watchers,
            pods,
            pod_rate,
        } => {
            let target = kube::Target::from_kubeconfig(kubeconfig)?;
            let conns = target.connect(cli.conns).await?;
            return kube::watch(&conns, namespace, *watchers, *pods, *pod_rate, errors).await;
        }
        _ => {}
    }
    let endpoints = endpoints(cli);
    let conns = load::connect(&endpoints, cli.conns).await?;
    let clients = cli.clients.max(1);
    let conn = |c: usize| conns[c % conns.len()].clone();
    let value = |n: usize| bytes::Bytes::from(vec![b'v'; n]);
    let mut workers: Vec<Box<dyn Worker>> = Vec::with_capacity(clients);
    match &cli.cmd {
        Cmd::Put {
            key_size,
            val_size,
            key_space_size,
            sequential_keys,
        } => {
            for c in 0..clients {
                workers.push(Box::new(load::PutWorker {
                    client: KvClient::new(conn(c)),
                    key_size: *key_size,
                    value: value(*val_size),
                    keys: KeyPicker {
                        space: *key_space_size,
                        sequential: *sequential_keys,
                    },
                }));
            }
        }
        Cmd::Range { key, consistency } => {
            KvClient::new(conn(0))
                .put(PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: value(256),
                    ..Default::default()
                })
                .await
                .context("putting the key to read")?;
            for c in 0..clients {
                workers.push(Box::new(load::RangeWorker {
                    client: KvClient::new(conn(c)),
                    key: key.clone().into_bytes().into(),
                    serializable: consistency == "s",
                }));
            }
        }
        Cmd::TxnPut {
            key_size,
            val_size,
            key_space_size,
            txn_ops,
        } => {
            for c in 0..clients {
                workers.push(Box::new(load::TxnPutWorker {
                    client: KvClient::new(conn(c)),
                    key_size: *key_size,
                    value: value(*val_size),
                    space: *key_space_size,
                    ops: *txn_ops,
                }));
            }
        }
        Cmd::LeaseKeepalive { ttl, once } => {
            for c in 0..clients {
                workers.push(Box::new(
                    load::KeepAliveWorker::new(conn(c), *ttl, *once).await?,
                ));
            }
        }
        Cmd::WatchLatency {
            watchers,
            streams,
            put_rate,
            put_total,
            key_size,
            val_size,
        } => {
            let cfg = watch::WatchConfig {
                key: load::key_bytes(rand::random::<u64>(), *key_size),
                prefix: false,
                watchers: *watchers,
                streams: *streams,
                put_total: *put_total,
                put_rate: *put_rate,
                putters: 1,
                lockstep: true,
                val_size: *val_size,
            };
            let put_conns = load::connect(&endpoints, cfg.putters.min(cli.conns)).await?;
            return watch::run(&cfg, &conns, &put_conns, errors).await;
        }
        Cmd::Watch {
            watchers,
            streams,
            put_rate,
            put_total,
            prefix,
            val_size,
        } => {
            let cfg = watch::WatchConfig {
                key: prefix.clone().into_bytes(),
                prefix: true,
                watchers: *watchers,
                streams: *streams,
                put_total: *put_total,
                put_rate: *put_rate,
                putters: clients,
                lockstep: false,
                val_size: *val_size,
            };
            let put_conns = load::connect(&endpoints, cfg.putters.min(cli.conns)).await?;
            return watch::run(&cfg, &conns, &put_conns, errors).await;
        }
        Cmd::Fsync { .. }
        | Cmd::Rtt { .. }
        | Cmd::Report { .. }
        | Cmd::Leader
        | Cmd::NullServer { .. }
        | Cmd::KubeCreate { .. }
        | Cmd::KubeList { .. }
        | Cmd::KubeWatch { .. } => {
            unreachable!("handled above")
        }
    }
    let timeout = std::time::Duration::from_secs_f64(cli.request_timeout.max(0.001));
    load::closed_loop(workers, cli.total, Limiter::new(cli.rate), timeout, errors).await
}
