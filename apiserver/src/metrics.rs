//! `/metrics` in Prometheus text format: request counts and latencies by
//! verb, resource and code (Kubernetes' metric names).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    /// Per bucket of [`BUCKETS`]: requests at most that long.
    buckets: Vec<u64>,
}

/// Request metrics, shared by all connections.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let Ok(mut map) = self.series.lock() else {
            return;
        };
        let s = map
            .entry((verb.to_string(), resource.to_string(), code))
            .or_insert_with(|| Series {
                buckets: vec![0; BUCKETS.len()],
                ..Series::default()
            });
        s.count += 1;
        s.sum += secs;
        for (b, bound) in s.buckets.iter_mut().zip(BUCKETS) {
            if secs <= *bound {
                *b += 1;
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let map = match self.series.lock() {
            Ok(m) => m.clone(),
            Err(_) => return String::new(),
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP apiserver_request_total Requests by verb, resource and HTTP code."
        );
        let _ = writeln!(out, "# TYPE apiserver_request_total counter");
        for ((verb, res, code), s) in &map {
            let _ = writeln!(
                out,
                "apiserver_request_total{{verb=\"{verb}\",resource=\"{res}\",code=\"{code}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP apiserver_request_duration_seconds Request latency by verb and resource."
        );
        let _ = writeln!(out, "# TYPE apiserver_request_duration_seconds histogram");
        let mut merged: BTreeMap<(String, String), Series> = BTreeMap::new();
        for ((verb, res, _), s) in &map {
            let m = merged
                .entry((verb.clone(), res.clone()))
                .or_insert_with(|| Series {
                    buckets: vec![0; BUCKETS.len()],
                    ..Series::default()
                });
            m.count += s.count;
            m.sum += s.sum;
            for (a, b) in m.buckets.iter_mut().zip(&s.buckets) {
                *a += b;
            }
        }
        for ((verb, res), s) in &merged {
            let labels = format!("verb=\"{verb}\",resource=\"{res}\"");
            for (b, bound) in s.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {b}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.observe("get", "pods", 200, Duration::from_millis(3));
        m.observe("get", "pods", 404, Duration::from_millis(30));
        let text = m.render();
        assert!(
            text.contains("apiserver_request_total{verb=\"get\",resource=\"pods\",code=\"404\"} 1"),
            "{text}"
        );
        assert!(text.contains("apiserver_request_duration_seconds_bucket{verb=\"get\",resource=\"pods\",le=\"0.005\"} 1"), "{text}");
        assert!(
            text.contains(
                "apiserver_request_duration_seconds_count{verb=\"get\",resource=\"pods\"} 2"
            ),
            "{text}"
        );
    }
}
