//! Measurement plumbing shared by every workload: the request-rate limiter,
//! the latency histogram summary, per-member CPU/RSS sampling and the JSON
//! result format that `keel-bench report` reads back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A new latency histogram in microseconds (1 µs .. 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Records `d` into `h` in microseconds, saturating at the histogram's top.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// A total-rate limiter with a burst of one, like the `rate.Limiter` of etcd's
/// `benchmark` (`--rate`): requests are spaced `1/rate` apart; one that comes
/// late does not earn a burst to catch up.
#[derive(Debug)]
pub struct Limiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Limiter {
    /// A limiter for `rate` requests per second; `None` when `rate` is 0
    /// (unlimited).
    pub fn new(rate: f64) -> Option<Limiter> {
        (rate > 0.0).then(|| Limiter {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(None),
        })
    }

    /// Reserves the next slot at time `now`: the instant at which the caller
    /// may send (never earlier than `now`).
    pub fn reserve(&self, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let at = match *next {
            Some(n) if n > now => n,
            _ => now,
        };
        *next = Some(at + self.interval);
        at
    }

    /// Waits for the next slot.
    pub async fn wait(&self) {
        let at = self.reserve(Instant::now());
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Error counting with the first few messages shown on stderr.
#[derive(Debug, Default)]
pub struct Errors {
    count: AtomicU64,
}

impl Errors {
    /// Counts one error; prints it when it is among the first five.
    pub fn add(&self, what: impl std::fmt::Display) {
        self.add_n(1, what)
    }

    /// Counts `k` errors described by one message.
    pub fn add_n(&self, k: u64, what: impl std::fmt::Display) {
        let n = self.count.fetch_add(k, Ordering::Relaxed);
        if n < 5 {
            eprintln!("request failed: {what}");
        } else if n == 5 {
            eprintln!("(further errors are counted, not shown)");
        }
    }

    /// The number counted so far.
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// CPU and memory of one server process over a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemberUsage {
    /// The process id.
    pub pid: u32,
    /// User + system CPU seconds spent during the run.
    pub cpu_s: f64,
    /// Resident set size at the end of the run, MiB.
    pub rss_mb: f64,
    /// Peak resident set size since the process started, MiB.
    pub hwm_mb: f64,
}

/// One run of one workload against one system, as written by `--json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// Short workload key used to match runs across systems (`--id`).
    pub id: String,
    /// Human-readable workload description (`--label`).
    pub label: String,
    /// The system measured (`--system`: keel, etcd, floor ...).
    pub system: String,
    /// The subcommand.
    pub workload: String,
    /// The command line, for the record.
    pub args: String,
    /// Latency samples recorded.
    pub count: u64,
    /// Requests (or expected events) that failed.
    pub errors: u64,
    /// Wall time of the measured part, seconds.
    pub duration_s: f64,
    /// Samples per second (requests/s, or events/s for the watch workloads).
    pub throughput: f64,
    /// Latency percentiles, ms.
    pub latency_ms: Percentiles,
    /// The latency distribution: (percentile, ms) points up to p99.99 and max.
    pub curve: Vec<(f64, f64)>,
    /// Server processes sampled with `--pids`.
    #[serde(default)]
    pub members: Vec<MemberUsage>,
    /// The machine's 1-minute load average at the end of the run (other
    /// work on the machine shows here).
    #[serde(default)]
    pub load_avg: f64,
}

impl RunResult {
    /// Fills the counts, throughput, percentiles and curve from a histogram
    /// of microseconds.
    pub fn fill(&mut self, h: &Histogram<u64>, errors: u64, elapsed: Duration) {
        let ms = |us: u64| us as f64 / 1000.0;
        self.count = h.len();
        self.errors = errors;
        self.duration_s = elapsed.as_secs_f64();
        self.throughput = if self.duration_s > 0.0 {
            h.len() as f64 / self.duration_s
        } else {
            0.0
        };
        if h.is_empty() {
            return;
        }
        self.latency_ms = Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        };
        // Percentiles evenly spaced on a "number of nines" axis: 1 - 10^(-k/10).
        self.curve = (0..=40)
            .map(|k| {
                let q = 1.0 - 10f64.powf(-(k as f64) / 10.0);
                (q * 100.0, ms(h.value_at_quantile(q)))
            })
            .collect();
        self.curve.push((100.0, ms(h.max())));
    }

    /// The human summary (etcd `benchmark` style) and the `SUMMARY` line the
    /// scripts parse.
    pub fn summary(&self, summary_name: Option<&str>) -> String {
        let l = &self.latency_ms;
        let mut s = format!(
            "Summary:\n  Requests:     {}\n  Errors:       {}\n  Total:        {:.3} s\n  Requests/sec: {:.1}\n",
            self.count, self.errors, self.duration_s, self.throughput
        );
        for (name, v) in [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("max", l.max),
        ] {
            s += &format!("  {name:<13} {v:.3} ms\n");
        }
        for m in &self.members {
            s += &format!(
                "  pid {}: cpu {:.2} s, rss {:.0} MiB (peak {:.0})\n",
                m.pid, m.cpu_s, m.rss_mb, m.hwm_mb
            );
        }
        if let Some(name) = summary_name {
            s += &format!(
                "SUMMARY {name} p50_us={:.0} p99_us={:.0} ops_per_s={:.0} errors={}\n",
                l.p50 * 1000.0,
                l.p99 * 1000.0,
                self.throughput,
                self.errors
            );
        }
        s
    }
}

/// Ticks of `/proc/PID/stat`'s CPU times per second.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of `pid` in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime ticks from the text of `/proc/PID/stat` (the command name
/// may hold spaces and parentheses: fields are counted after the last `)`).
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state(0) ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime(11) stime(12).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (VmRSS, VmHWM) of `pid` in MiB, from `/proc/PID/status`.
pub fn memory_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    };
    Some((kb("VmRSS:")? / 1024.0, kb("VmHWM:")? / 1024.0))
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// CPU counters of the sampled members at the start of a run.
#[derive(Debug)]
pub struct MemberSampler {
    start: Vec<(u32, f64)>,
}

impl MemberSampler {
    /// Takes the starting CPU counters of `pids`.
    pub fn start(pids: &[u32]) -> MemberSampler {
        MemberSampler {
            start: pids
                .iter()
                .map(|&p| (p, cpu_seconds(p).unwrap_or(0.0)))
                .collect(),
        }
    }

    /// CPU spent since `start`, and memory now, per member.
    pub fn finish(&self) -> Vec<MemberUsage> {
        self.start
            .iter()
            .map(|&(pid, c0)| {
                let (rss_mb, hwm_mb) = memory_mb(pid).unwrap_or((0.0, 0.0));
                MemberUsage {
                    pid,
                    cpu_s: cpu_seconds(pid).map(|c| c - c0).unwrap_or(0.0),
                    rss_mb,
                    hwm_mb,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_spaces_requests_and_does_not_burst() {
        let l = Limiter::new(10.0).expect("limited");
        let t0 = Instant::now();
        assert_eq!(l.reserve(t0), t0);
        assert_eq!(l.reserve(t0), t0 + Duration::from_millis(100));
        assert_eq!(l.reserve(t0), t0 + Duration::from_millis(200));
        // A caller arriving long after the schedule goes at once, and the
        // next one is spaced from it (burst of one).
        let late = t0 + Duration::from_secs(10);
        assert_eq!(l.reserve(late), late);
        assert_eq!(l.reserve(late), late + Duration::from_millis(100));
        assert!(Limiter::new(0.0).is_none());
    }

    #[test]
    fn fill_and_json_round_trip() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).expect("in range");
        }
        let mut r = RunResult {
            id: "put-1c".into(),
            system: "keel".into(),
            ..Default::default()
        };
        r.fill(&h, 3, Duration::from_secs(2));
        assert_eq!(r.count, 1000);
        assert_eq!(r.errors, 3);
        assert!((r.throughput - 500.0).abs() < 1e-9);
        assert!((r.latency_ms.p50 - 5.0).abs() < 0.01, "{:?}", r.latency_ms);
        assert!((r.latency_ms.p99 - 9.9).abs() < 0.01, "{:?}", r.latency_ms);
        assert!((r.latency_ms.max - 10.0).abs() < 0.01);
        assert_eq!(r.curve.len(), 42);
        assert!(r
            .curve
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let json = serde_json::to_string(&r).expect("serializes");
        let back: RunResult = serde_json::from_str(&json).expect("parses");
        assert_eq!((back.count, back.errors, back.curve.len()), (1000, 3, 42));
        assert!((back.latency_ms.p99 - r.latency_ms.p99).abs() < 1e-9);
        let s = r.summary(Some("x"));
        assert!(
            s.contains("SUMMARY x p50_us=5003 p99_us=9903 ops_per_s=500 errors=3"),
            "{s}"
        );
    }

    #[test]
    fn stat_cpu_parses_after_the_command_name() {
        let stat = "42 (keel (store) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(parse_stat_cpu(stat), Some(300));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }
}
