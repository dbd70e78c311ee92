//! `keel-bench report`: reads the `--json` results of a side-by-side run
//! (one file per workload and system) and writes the combined JSON, a
//! markdown table with keel/etcd ratios and the targets, and an SVG chart of
//! the latency distributions.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::stats::RunResult;

/// What a target compares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Metric {
    /// Median latency; lower is better.
    P50,
    /// 99th percentile latency; lower is better.
    P99,
    /// Requests (or events) per second; higher is better.
    Throughput,
    /// Largest VmRSS among the members after the run; lower is better.
    Rss,
}

impl Metric {
    fn of(self, r: &RunResult) -> f64 {
        match self {
            Metric::P50 => r.latency_ms.p50,
            Metric::P99 => r.latency_ms.p99,
            Metric::Throughput => r.throughput,
            Metric::Rss => r.members.iter().map(|m| m.rss_mb).fold(0.0, f64::max),
        }
    }

    fn higher_is_better(self) -> bool {
        self == Metric::Throughput
    }

    /// Whether `v` is at least as good as `goal` (at most it, for the
    /// lower-is-better figures).
    fn meets(self, v: f64, goal: f64) -> bool {
        if self.higher_is_better() {
            v >= goal
        } else {
            v <= goal
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::P50 | Metric::P99 => "ms",
            Metric::Throughput => "/s",
            Metric::Rss => "MiB",
        }
    }
}

/// A keel ÷ etcd goal for one workload of the matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The workload's `--id`.
    pub id: &'static str,
    /// What is compared, in words.
    pub what: &'static str,
    /// The figure compared.
    pub metric: Metric,
    /// keel ÷ etcd must be at most this (at least, for throughput).
    pub bound: f64,
}

/// The targets of the benchmark issue.
pub const TARGETS: &[Target] = &[
    Target {
        id: "put-1c",
        what: "put p50, 1 client",
        metric: Metric::P50,
        bound: 0.4,
    },
    Target {
        id: "put-100c",
        what: "put throughput, 100 clients / 10 conns",
        metric: Metric::Throughput,
        bound: 3.0,
    },
    Target {
        id: "put-1000c",
        what: "put p99, 1000 clients / 100 conns",
        metric: Metric::P99,
        bound: 0.25,
    },
    Target {
        id: "get-l-1c",
        what: "linearizable get p50, 1 client",
        metric: Metric::P50,
        bound: 0.5,
    },
    Target {
        id: "watch-lat-100",
        what: "watch latency p99, 100 watchers, 100 puts/s",
        metric: Metric::P99,
        bound: 0.3,
    },
    Target {
        id: "watch-lat-1000",
        what: "watch latency p99, 1000 watchers, 100 puts/s",
        metric: Metric::P99,
        bound: 0.2,
    },
    Target {
        id: "load-1m",
        what: "RSS per member after 1M keys (largest member)",
        metric: Metric::Rss,
        bound: 0.5,
    },
];

/// One target's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    /// The target.
    pub target: Target,
    /// etcd's figure.
    pub etcd: f64,
    /// keel's figure.
    pub keel: f64,
    /// keel ÷ etcd.
    pub ratio: f64,
    /// Whether the ratio is within the bound.
    pub met: bool,
}

/// A workload's runs, by system, in matrix order.
#[derive(Debug, Default)]
pub struct Matrix {
    /// Workload ids in order of first appearance.
    pub order: Vec<String>,
    /// (id, system) → run.
    pub runs: BTreeMap<(String, String), RunResult>,
}

impl Matrix {
    /// Groups `results` (in matrix order) by workload id and system.
    pub fn new(results: Vec<RunResult>) -> Matrix {
        let mut m = Matrix::default();
        for r in results {
            if !m.order.contains(&r.id) {
                m.order.push(r.id.clone());
            }
            m.runs.insert((r.id.clone(), r.system.clone()), r);
        }
        m
    }

    /// The run of workload `id` on `system`.
    pub fn get(&self, id: &str, system: &str) -> Option<&RunResult> {
        self.runs.get(&(id.to_string(), system.to_string()))
    }

    /// The targets' outcomes, for those whose workload ran on both systems.
    pub fn targets(&self) -> Vec<TargetResult> {
        TARGETS
            .iter()
            .filter_map(|t| {
                let e = t.metric.of(self.get(t.id, "etcd")?);
                let k = t.metric.of(self.get(t.id, "keel")?);
                let ratio = ratio(k, e);
                let met = t.metric.meets(ratio, t.bound);
                Some(TargetResult {
                    target: t.clone(),
                    etcd: e,
                    keel: k,
                    ratio,
                    met,
                })
            })
            .collect()
    }

    fn label(&self, id: &str) -> String {
        ["keel", "etcd"]
            .iter()
            .find_map(|s| self.get(id, s))
            .map(|r| r.label.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// The workloads that ran on keel or etcd (not the floor measurements).
    fn workloads(&self) -> Vec<&String> {
        self.order
            .iter()
            .filter(|id| self.get(id, "keel").is_some() || self.get(id, "etcd").is_some())
            .collect()
    }
}

/// keel ÷ etcd (NaN when etcd's figure is 0).
pub fn ratio(keel: f64, etcd: f64) -> f64 {
    if etcd == 0.0 {
        f64::NAN
    } else {
        keel / etcd
    }
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(e: Option<f64>, k: Option<f64>) -> String {
    match (e, k) {
        (Some(e), Some(k)) => format!("{} / {} ({:.2}×)", num(e), num(k), ratio(k, e)),
        (e, k) => format!(
            "{} / {}",
            e.map(num).unwrap_or("–".into()),
            k.map(num).unwrap_or("–".into())
        ),
    }
}

/// The server processes' CPU time (all of them) per sample, in µs; `None`
/// for a run without samples.
fn cpu_us_per_sample(r: &RunResult) -> Option<f64> {
    (r.count > 0).then(|| r.members.iter().map(|m| m.cpu_s).sum::<f64>() * 1e6 / r.count as f64)
}

/// What the null server says of one goal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FloorVerdict {
    /// The null server itself, storing nothing, misses the goal.
    MissedByNull,
    /// The null server meets it, but not once a write's fdatasync and
    /// round trip are added (an estimate: medians do not add exactly).
    MissedByEstimate,
    /// Neither misses it.
    WithinReach,
}

/// Each target set against the serving stack's floor: the same workload
/// run against `keel-bench null-server` (system `null`), which answers
/// every request at once and stores nothing. Its own figure is measured:
/// no store served this way, measured by this client on this machine, can
/// be expected to beat it (within the spread between runs). For a write,
/// and for a watch event (it follows a committed write), an estimate adds
/// the p50s of one fdatasync and one loopback round trip (the `fsync` and
/// `rtt` floors): a write acknowledged by two of three members is on a
/// follower's disk. Medians do not add exactly, and a commit waits only
/// for the faster of two followers, so the estimate is indicative, not a
/// bound.
fn floor_section(m: &Matrix) -> String {
    let p50 = |id| m.get(id, "floor").map(|f: &RunResult| f.latency_ms.p50);
    let write_floor = p50("fsync").zip(p50("rtt")).map(|(f, r)| f + r);
    let rows: Vec<String> = m
        .targets()
        .iter()
        .filter_map(|t| {
            let null = m.get(t.target.id, "null")?;
            let metric = t.target.metric;
            let goal = t.target.bound * t.etcd;
            let misses = |v: f64| !metric.meets(v, goal);
            // A watch event follows a committed write.
            let write = t.target.id.starts_with("put") || t.target.id.starts_with("watch-lat");
            let estimate = match metric {
                Metric::P50 | Metric::P99 if write => write_floor.map(|w| metric.of(null) + w),
                _ => None,
            };
            let verdict = if misses(metric.of(null)) {
                FloorVerdict::MissedByNull
            } else if estimate.is_some_and(misses) {
                FloorVerdict::MissedByEstimate
            } else {
                FloorVerdict::WithinReach
            };
            let u = metric.unit();
            let cpu = cpu_us_per_sample(null);
            Some(format!(
                "| {} | {} {u} | {} {u} | {} | {} | {} {u} | {} |\n",
                t.target.what,
                num(goal),
                num(metric.of(null)),
                cpu.map_or("–".into(), num),
                estimate.map_or("–".into(), |e| format!("{} {u}", num(e))),
                num(t.keel),
                match verdict {
                    FloorVerdict::MissedByNull => "**missed by the null server itself**",
                    FloorVerdict::MissedByEstimate => "missed by the estimate",
                    FloorVerdict::WithinReach => "within reach",
                }
            ))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = "\n### The goals against the serving stack's floor\n\n".to_string();
    s += "The same workloads against `keel-bench null-server`: keel's gRPC serving stack \
          answering every request at once and storing nothing (its watchers get each put \
          as it arrives), measured by the same client on the same cores. Its own figures \
          are measured: no store served this way can be expected to beat them, within the \
          spread between runs. For writes and watch events the estimate adds the p50s of \
          one fdatasync and one loopback round trip (a write acknowledged by two of three \
          members is on a follower's disk); medians do not add exactly, so the estimate is \
          indicative, not a bound.\n\n";
    s += "| target | goal, absolute | null server | null server CPU µs per sample | null server + fdatasync + round trip | keel | the goal |\n";
    s += "|---|---|---|---|---|---|---|\n";
    for r in rows {
        s += &r;
    }
    s
}

/// The markdown report: targets, every workload, CPU and memory.
pub fn markdown(m: &Matrix, header: &str) -> String {
    let mut s = String::new();
    s += header;
    s += "\n";
    if let (Some(f), Some(r)) = (m.get("fsync", "floor"), m.get("rtt", "floor")) {
        s += &format!(
            "Physical floor: 4 KiB write + fdatasync p50 {:.3} ms, p99 {:.3} ms; \
             loopback TCP round trip p50 {:.3} ms, p99 {:.3} ms.\n\n",
            f.latency_ms.p50, f.latency_ms.p99, r.latency_ms.p50, r.latency_ms.p99
        );
    }
    s += "### Targets (keel ÷ etcd)\n\n";
    s += "| target | etcd | keel | keel ÷ etcd | goal | met? |\n|---|---|---|---|---|---|\n";
    for t in m.targets() {
        let u = t.target.metric.unit();
        let goal = if t.target.metric.higher_is_better() {
            format!("≥ {}×", t.target.bound)
        } else {
            format!("≤ {}×", t.target.bound)
        };
        s += &format!(
            "| {} | {} {u} | {} {u} | {:.2}× | {goal} | {} |\n",
            t.target.what,
            num(t.etcd),
            num(t.keel),
            t.ratio,
            if t.met { "met" } else { "**missed**" }
        );
    }
    s += &floor_section(m);
    s += "\n### All workloads (etcd / keel, ratio keel ÷ etcd)\n\n";
    s += "| workload | samples (etcd / keel) | p50 ms | p99 ms | p99.9 ms | throughput /s | errors |\n";
    s += "|---|---|---|---|---|---|---|\n";
    for id in m.workloads() {
        let (e, k) = (m.get(id, "etcd"), m.get(id, "keel"));
        let f = |g: fn(&RunResult) -> f64| cell(e.map(g), k.map(g));
        s += &format!(
            "| {} | {} / {} | {} | {} | {} | {} | {} / {} |\n",
            m.label(id),
            e.map(|r| r.count.to_string()).unwrap_or("–".into()),
            k.map(|r| r.count.to_string()).unwrap_or("–".into()),
            f(|r| r.latency_ms.p50),
            f(|r| r.latency_ms.p99),
            f(|r| r.latency_ms.p999),
            f(|r| r.throughput),
            e.map(|r| r.errors.to_string()).unwrap_or("–".into()),
            k.map(|r| r.errors.to_string()).unwrap_or("–".into()),
        );
    }
    s += "\n### CPU and memory per member (etcd / keel)\n\n";
    s += "| workload | CPU s per member, etcd | CPU s per member, keel | CPU µs per sample, all members | RSS MiB per member after, etcd | RSS MiB per member after, keel | load avg after |\n";
    s += "|---|---|---|---|---|---|---|\n";
    let per_member = |r: Option<&RunResult>, g: fn(&crate::stats::MemberUsage) -> f64| {
        r.map(|r| {
            r.members
                .iter()
                .map(|x| format!("{:.1}", g(x)))
                .collect::<Vec<_>>()
                .join(" · ")
        })
        .unwrap_or("–".into())
    };
    let cpu_per = |r: Option<&RunResult>| r.and_then(cpu_us_per_sample);
    for id in m.workloads() {
        let (e, k) = (m.get(id, "etcd"), m.get(id, "keel"));
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} |\n",
            m.label(id),
            per_member(e, |x| x.cpu_s),
            per_member(k, |x| x.cpu_s),
            cell(cpu_per(e), cpu_per(k)),
            per_member(e, |x| x.rss_mb),
            per_member(k, |x| x.rss_mb),
            e.map(|r| format!("{:.1}", r.load_avg))
                .unwrap_or("–".into()),
            k.map(|r| format!("{:.1}", r.load_avg))
                .unwrap_or("–".into()),
        );
    }
    s
}

/// A latency for an axis label: "0.05", "2", "150".
fn short(ms: f64) -> String {
    let s = if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// One system's curve in a panel: name, colour, (nines, ms) points.
type Curve = (&'static str, plotters::style::RGBColor, Vec<(f64, f64)>);

/// The latency distributions, one panel per workload, etcd and keel curves
/// on a log latency axis against "number of nines" (p90, p99, p99.9 ...).
pub fn svg(m: &Matrix, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let ids: Vec<&String> = m.workloads();
    if ids.is_empty() {
        return Err(anyhow!("no results to chart"));
    }
    let cols = 3usize;
    let rows = ids.len().div_ceil(cols);
    let root = SVGBackend::new(path, (cols as u32 * 460, rows as u32 * 300)).into_drawing_area();
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing the chart: {e:?}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let nines = |pct: f64| {
        if pct >= 100.0 {
            4.3
        } else {
            -(1.0 - pct / 100.0).log10()
        }
    };
    for (area, id) in root.split_evenly((rows, cols)).iter().zip(ids) {
        let curves: Vec<Curve> = [("etcd", BLUE), ("keel", RED)]
            .into_iter()
            .filter_map(|(sys, color)| {
                let r = m.get(id, sys)?;
                let pts: Vec<(f64, f64)> = r
                    .curve
                    .iter()
                    .map(|&(p, ms)| (nines(p), ms.max(0.001)))
                    .collect();
                (!pts.is_empty()).then_some((sys, color, pts))
            })
            .collect();
        let ys = curves.iter().flat_map(|c| c.2.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        if curves.is_empty() {
            continue;
        }
        let mut chart = ChartBuilder::on(area)
            .caption(m.label(id), ("sans-serif", 13))
            .margin(6)
            .x_label_area_size(22)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..4.3f64, (lo * 0.8..hi * 1.25).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| {
                let n = x.round();
                if (x - n).abs() > 0.05 {
                    String::new()
                } else {
                    match n as i64 {
                        0 => "p0".into(),
                        1 => "p90".into(),
                        2 => "p99".into(),
                        3 => "p99.9".into(),
                        4 => "p99.99".into(),
                        _ => String::new(),
                    }
                }
            })
            .y_desc("ms")
            .y_labels(6)
            .light_line_style(WHITE.mix(0.0))
            .y_label_formatter(&|y| short(*y))
            .draw()
            .map_err(|e| err(&e))?;
        for (sys, color, pts) in curves {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(sys)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Reads every `*.json` result in `dir`, in file-name order.
pub fn read_dir(dir: &Path) -> Result<Vec<RunResult>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        })
        .collect()
}

/// The combined JSON of a run.
#[derive(Debug, Serialize)]
pub struct Combined<'a> {
    /// The markdown header (machine, command, date).
    pub header: &'a str,
    /// The targets' outcomes.
    pub targets: Vec<TargetResult>,
    /// Every run.
    pub results: Vec<&'a RunResult>,
}

/// Writes `<out>.json`, `<out>.md` and `<out>.svg` from the results in `dir`.
pub fn write(dir: &Path, out: &Path, header: &str) -> Result<()> {
    let m = Matrix::new(read_dir(dir)?);
    let with = |ext: &str| out.with_extension(ext);
    let mut md = markdown(&m, header);
    if let Some(name) = with("svg").file_name() {
        md += &format!(
            "\nLatency distributions: [{0}]({0})\n",
            name.to_string_lossy()
        );
    }
    std::fs::write(with("md"), md).context("writing the markdown")?;
    let combined = Combined {
        header,
        targets: m.targets(),
        results: m
            .order
            .iter()
            .flat_map(|id| ["floor", "null", "etcd", "keel"].map(|s| m.get(id, s)))
            .flatten()
            .collect(),
    };
    std::fs::write(with("json"), serde_json::to_string_pretty(&combined)?)
        .context("writing the json")?;
    svg(&m, &with("svg"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{MemberUsage, Percentiles};

    fn run(id: &str, system: &str, p50: f64, p99: f64, thr: f64, rss: f64) -> RunResult {
        RunResult {
            id: id.into(),
            label: format!("{id} label"),
            system: system.into(),
            count: 10,
            throughput: thr,
            latency_ms: Percentiles {
                p50,
                p99,
                ..Default::default()
            },
            curve: vec![
                (0.0, p50 / 2.0),
                (50.0, p50),
                (99.0, p99),
                (100.0, p99 * 2.0),
            ],
            members: vec![MemberUsage {
                pid: 1,
                cpu_s: 1.0,
                rss_mb: rss,
                hwm_mb: rss,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn targets_compare_keel_with_etcd() {
        let m = Matrix::new(vec![
            run("put-1c", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("put-1c", "keel", 0.3, 1.0, 3000.0, 100.0),
            run("put-100c", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("put-100c", "keel", 1.0, 2.0, 2000.0, 100.0),
            run("load-1m", "etcd", 1.0, 2.0, 1000.0, 600.0),
            run("load-1m", "keel", 1.0, 2.0, 1000.0, 300.0),
            run("get-l-1c", "keel", 1.0, 2.0, 1000.0, 100.0),
        ]);
        let t = m.targets();
        assert_eq!(t.len(), 3, "get-l-1c has no etcd run");
        assert_eq!(t[0].target.id, "put-1c");
        assert!((t[0].ratio - 0.3).abs() < 1e-9 && t[0].met);
        assert!((t[1].ratio - 2.0).abs() < 1e-9 && !t[1].met, "2× < 3×");
        assert!((t[2].ratio - 0.5).abs() < 1e-9 && t[2].met, "0.5 ≤ 0.5");
        let md = markdown(&m, "# h\n");
        assert!(
            md.contains("| put p50, 1 client | 1.000 ms | 0.300 ms | 0.30× | ≤ 0.4× | met |"),
            "{md}"
        );
        assert!(md.contains("| 2.00× | ≥ 3× | **missed** |"), "{md}");
        assert!(
            md.contains("| put-1c label | 10 / 10 | 1.000 / 0.300 (0.30×)"),
            "{md}"
        );
        assert!(ratio(1.0, 0.0).is_nan());
        assert_eq!(
            (short(0.05), short(2.0), short(2.5), short(150.0)),
            ("0.05".into(), "2".into(), "2.5".into(), "150".into())
        );
    }

    #[test]
    fn goals_are_set_against_the_null_servers_floor() {
        let m = Matrix::new(vec![
            run("fsync", "floor", 0.15, 0.3, 1.0, 0.0),
            run("rtt", "floor", 0.05, 0.1, 1.0, 0.0),
            // p50: goal 0.4 × 1.0 = 0.4 ms; null 0.1 meets it, but the
            // estimate 0.1 + 0.15 + 0.05 = 0.3 does too: within reach.
            run("put-1c", "null", 0.1, 0.2, 9000.0, 10.0),
            run("put-1c", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("put-1c", "keel", 0.5, 1.0, 2000.0, 100.0),
            // Throughput: goal 3 × 1000/s; the null server's 2500/s misses
            // it, and nothing is added to a throughput.
            run("put-100c", "null", 0.1, 0.2, 2500.0, 10.0),
            run("put-100c", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("put-100c", "keel", 1.0, 2.0, 2000.0, 100.0),
            // p99: goal 0.25 × 2.0 = 0.5 ms; null 0.4 meets it, the
            // estimate 0.6 does not.
            run("put-1000c", "null", 0.1, 0.4, 9000.0, 10.0),
            run("put-1000c", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("put-1000c", "keel", 1.0, 2.0, 1000.0, 100.0),
            // A get is no write: goal 0.5 × 1.0 = 0.5 ms, null 0.45, and no
            // estimate (0.65 would miss).
            run("get-l-1c", "null", 0.45, 0.9, 9000.0, 10.0),
            run("get-l-1c", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("get-l-1c", "keel", 0.4, 2.0, 1000.0, 100.0),
            // A watch event is: goal 0.3 × 2.0 = 0.6 ms, null 0.5, estimate 0.7.
            run("watch-lat-100", "null", 0.1, 0.5, 9000.0, 10.0),
            run("watch-lat-100", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("watch-lat-100", "keel", 1.0, 2.0, 1000.0, 100.0),
            // No null run: no row.
            run("load-1m", "etcd", 1.0, 2.0, 1000.0, 600.0),
            run("load-1m", "keel", 1.0, 2.0, 1000.0, 300.0),
        ]);
        let md = markdown(&m, "# h\n");
        let section = md
            .split("### The goals against")
            .nth(1)
            .and_then(|s| s.split("###").next())
            .unwrap_or_default();
        let row = |what: &str| {
            section
                .lines()
                .find(|l| l.starts_with(&format!("| {what} | ")))
                .unwrap_or_else(|| panic!("no row {what} in {section}"))
                .to_string()
        };
        assert_eq!(
            row("put p50, 1 client"),
            "| put p50, 1 client | 0.400 ms | 0.100 ms | 100000 | 0.300 ms | 0.500 ms | within reach |"
        );
        assert_eq!(
            row("put throughput, 100 clients / 10 conns"),
            "| put throughput, 100 clients / 10 conns | 3000 /s | 2500 /s | 100000 | – | 2000 /s | **missed by the null server itself** |"
        );
        assert_eq!(
            row("put p99, 1000 clients / 100 conns"),
            "| put p99, 1000 clients / 100 conns | 0.500 ms | 0.400 ms | 100000 | 0.600 ms | 2.000 ms | missed by the estimate |"
        );
        assert_eq!(
            row("linearizable get p50, 1 client"),
            "| linearizable get p50, 1 client | 0.500 ms | 0.450 ms | 100000 | – | 0.400 ms | within reach |"
        );
        assert_eq!(
            row("watch latency p99, 100 watchers, 100 puts/s"),
            "| watch latency p99, 100 watchers, 100 puts/s | 0.600 ms | 0.500 ms | 100000 | 0.700 ms | 2.000 ms | missed by the estimate |"
        );
        assert!(!section.contains("RSS per member"), "{section}");
        // Without the fsync and rtt floors there is no estimate.
        let bare = Matrix::new(vec![
            run("put-1c", "null", 0.1, 0.2, 9000.0, 10.0),
            run("put-1c", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("put-1c", "keel", 0.5, 1.0, 2000.0, 100.0),
        ]);
        assert!(markdown(&bare, "").contains("| 100000 | – | 0.500 ms | within reach |"));
        // Without null runs there is no such section.
        let plain = markdown(
            &Matrix::new(vec![run("put-1c", "etcd", 1.0, 2.0, 1.0, 1.0)]),
            "",
        );
        assert!(!plain.contains("serving stack's floor"), "{plain}");
    }

    #[test]
    fn writes_json_markdown_and_svg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let res = dir.path().join("res");
        std::fs::create_dir(&res).expect("mkdir");
        for (i, r) in [
            run("fsync", "floor", 0.1, 0.2, 1.0, 0.0),
            run("put-1c", "etcd", 1.0, 2.0, 1000.0, 100.0),
            run("put-1c", "keel", 0.5, 1.0, 2000.0, 100.0),
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(
                res.join(format!("{i:02}.json")),
                serde_json::to_string(r).expect("json"),
            )
            .expect("write");
        }
        let out = dir.path().join("2026-01-01");
        write(&res, &out, "# head\n").expect("report");
        let svg = std::fs::read_to_string(out.with_extension("svg")).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("put-1c label"));
        let md = std::fs::read_to_string(out.with_extension("md")).expect("md");
        assert!(md.contains("[2026-01-01.svg](2026-01-01.svg)"));
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.with_extension("json")).expect("json"),
        )
        .expect("parses");
        assert_eq!(json["results"].as_array().map(|a| a.len()), Some(3));
        assert_eq!(json["targets"][0]["met"], serde_json::Value::Bool(false));
    }
}
