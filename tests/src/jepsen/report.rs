//! Reports of a checked run: the history itself (re-checkable offline), the
//! verdicts, a plain-text summary and a porcupine-style HTML timeline.
//!
//! [`write_report`] writes into a directory:
//!
//! | file | what |
//! |---|---|
//! | `ops.jsonl`, `watches.jsonl`, … | the history ([`History::save`]); re-check with `History::load` + `check_all` |
//! | `result.json` | the [`CheckResult`] |
//! | `summary.txt` | [`CheckResult::summary`] |
//! | `report.html` | the timeline: one row per client, one bar per op from call to return (hover for request and response), unknown outcomes hatched to the end, ops named by a violation in red, the op the linearizability search could not place outlined, faults shaded across all rows; below, the checkers' verdicts, the longest linearizable prefix and the watch logs |
//!
//! The HTML is self-contained (inline CSS and SVG, a few lines of inline
//! JS for zoom): no network needed to read it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context;

use super::history::{History, Op, Request, Response, WatchRecord};
use super::result::{CheckResult, Verdict};

/// Writes the history, the verdicts, `summary.txt` and `report.html` into
/// `dir` (created if missing). See the module doc for the files.
pub fn write_report(dir: &Path, h: &History, r: &CheckResult) -> anyhow::Result<()> {
    h.save(dir)?;
    fs::write(dir.join("result.json"), serde_json::to_string_pretty(r)?)
        .context("write result.json")?;
    fs::write(dir.join("summary.txt"), r.summary()).context("write summary.txt")?;
    fs::write(dir.join("report.html"), html(h, r)).context("write report.html")?;
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A one-line description of a request.
pub fn describe_request(req: &Request) -> String {
    match req {
        Request::Get {
            key,
            serializable,
            revision,
        } => format!(
            "get {key}{}{}",
            if *serializable { " (serializable)" } else { "" },
            if *revision != 0 {
                format!(" @{revision}")
            } else {
                String::new()
            }
        ),
        Request::Range {
            prefix,
            serializable,
            revision,
        } => format!(
            "range {prefix}*{}{}",
            if *serializable { " (serializable)" } else { "" },
            if *revision != 0 {
                format!(" @{revision}")
            } else {
                String::new()
            }
        ),
        Request::Put { key, value, lease } => {
            if *lease != 0 {
                format!("put {key}={value} lease {lease:x}")
            } else {
                format!("put {key}={value}")
            }
        }
        Request::Delete { key } => format!("delete {key}"),
        Request::Txn {
            compares,
            success,
            failure,
        } => format!(
            "txn if {} then {} else {}",
            serde_json::to_string(compares).unwrap_or_default(),
            serde_json::to_string(success).unwrap_or_default(),
            serde_json::to_string(failure).unwrap_or_default()
        ),
        Request::LeaseGrant { ttl, id } => format!("lease grant ttl {ttl} id {id:x}"),
        Request::LeaseRevoke { id } => format!("lease revoke {id:x}"),
        Request::LeaseKeepAlive { id } => format!("lease keepalive {id:x}"),
        Request::LeaseTimeToLive { id } => format!("lease ttl {id:x}"),
        Request::LeaseExpire { id } => format!("lease {id:x} expires (synthetic)"),
    }
}

/// A one-line description of a response.
pub fn describe_response(resp: &Response) -> String {
    match resp {
        Response::Ok { revision, result } => format!(
            "ok @{revision}: {}",
            serde_json::to_string(result).unwrap_or_default()
        ),
        Response::Fail { error } => format!("FAIL: {error}"),
        Response::Unknown { error } => format!("UNKNOWN: {error}"),
    }
}

fn html(h: &History, r: &CheckResult) -> String {
    let flagged: HashSet<u64> = r.flagged_ops().into_iter().collect();
    let lin = r.linearization.as_ref();
    let stuck = lin.and_then(|l| l.stuck);
    let position: HashMap<u64, usize> = lin
        .map(|l| l.order.iter().enumerate().map(|(i, id)| (*id, i)).collect())
        .unwrap_or_default();
    let end = h.end_ns().max(1);
    let start = h.ops.iter().map(|o| o.call_ns).min().unwrap_or(0);
    let span = (end - start).max(1) as f64;
    let width = (h.ops.len() as f64 * 6.0).clamp(1200.0, 30000.0);
    let x = |t: u64| 130.0 + (t.saturating_sub(start) as f64 / span) * width;
    let mut clients: BTreeMap<u32, Vec<&Op>> = BTreeMap::new();
    for o in &h.ops {
        clients.entry(o.client).or_default().push(o);
    }
    let row_h = 22.0;
    let height = 40.0 + clients.len() as f64 * row_h + 20.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg id="tl" width="{:.0}" height="{height:.0}">"#,
        width + 150.0
    );
    // Faults behind everything.
    for f in &h.faults {
        let x0 = x(f.start_ns);
        let x1 = x(f.end_ns.unwrap_or(f.start_ns)).max(x0 + 2.0);
        let _ = write!(
            svg,
            r#"<rect class="fault" x="{x0:.1}" y="20" width="{:.1}" height="{:.0}"><title>{}</title></rect><text class="flabel" x="{x0:.1}" y="14">{}</text>"#,
            x1 - x0,
            height - 30.0,
            esc(&format!(
                "{} {:?} {}: {} .. {}",
                f.kind,
                f.members,
                f.description,
                f.start_ns,
                f.end_ns.map_or("-".into(), |e| e.to_string())
            )),
            esc(&f.kind)
        );
    }
    for (row, (client, ops)) in clients.iter().enumerate() {
        let y = 30.0 + row as f64 * row_h;
        let _ = write!(
            svg,
            r#"<text class="rlabel" x="4" y="{:.1}">client {client}</text>"#,
            y + 13.0
        );
        for o in ops {
            let x0 = x(o.call_ns);
            let x1 = x(o.return_ns.unwrap_or(end)).max(x0 + 2.0);
            let mut class = match (&o.resp, o.return_ns) {
                (_, None) | (Response::Unknown { .. }, _) => "op unknown",
                (Response::Fail { .. }, _) => "op fail",
                (Response::Ok { .. }, _) if o.req.is_write() => "op write",
                _ => "op read",
            }
            .to_string();
            if flagged.contains(&o.id) {
                class.push_str(" bad");
            }
            if stuck == Some(o.id) {
                class.push_str(" stuck");
            }
            let pos = position
                .get(&o.id)
                .map_or(String::new(), |p| format!("\nlinearized #{p}"));
            let title = format!(
                "op {} client {}{}\n{} .. {} ns\n{}\n{}{}",
                o.id,
                o.client,
                o.member
                    .as_ref()
                    .map_or(String::new(), |m| format!(" on {m}")),
                o.call_ns,
                o.return_ns.map_or("never".into(), |t| t.to_string()),
                describe_request(&o.req),
                describe_response(&o.resp),
                pos
            );
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{x0:.1}" y="{y:.1}" width="{:.1}" height="{:.0}"><title>{}</title></rect>"#,
                x1 - x0,
                row_h - 6.0,
                esc(&title)
            );
        }
    }
    svg.push_str("</svg>");

    let mut checks = String::new();
    for o in &r.outcomes {
        let class = match o.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "failv",
            Verdict::Unknown => "unk",
        };
        let _ = write!(
            checks,
            r#"<tr><td>{}</td><td class="{class}">{:?}</td><td>{}</td></tr>"#,
            esc(&o.name),
            o.verdict,
            esc(&o.note)
        );
        for v in o.violations.iter().take(50) {
            let _ = write!(
                checks,
                r#"<tr><td></td><td></td><td class="viol"><pre>{}</pre>{}</td></tr>"#,
                esc(&v.message),
                if v.ops.is_empty() {
                    String::new()
                } else {
                    format!("ops {:?}", v.ops)
                }
            );
        }
    }

    let mut linsec = String::new();
    if let Some(l) = lin {
        let by_id = l.ops_by_id(h);
        let _ = write!(linsec, "<p>{}</p>", esc(&l.message));
        if let Some(s) = l.stuck {
            let _ = write!(
                linsec,
                "<p><b>Could not place op {s}</b>: {}</p><p>Candidates at that point: {:?}</p><pre>{}</pre>",
                by_id.get(&s).map_or(String::new(), |o| esc(&format!(
                    "{} → {}",
                    describe_request(&o.req),
                    describe_response(&o.resp)
                ))),
                l.candidates,
                esc(&l.state_at_stuck)
            );
        }
        let tail = l.order.len().saturating_sub(40);
        let _ = write!(
            linsec,
            "<details><summary>{} (last 40 of the order)</summary><ol start=\"{}\">",
            if l.verdict == Verdict::Pass {
                "linearization"
            } else {
                "longest linearizable prefix"
            },
            tail + 1
        );
        for id in &l.order[tail..] {
            if let Some(o) = by_id.get(id) {
                let _ = write!(
                    linsec,
                    "<li>op {id} (client {}): {} → {}</li>",
                    o.client,
                    esc(&describe_request(&o.req)),
                    esc(&describe_response(&o.resp))
                );
            }
        }
        linsec.push_str("</ol></details>");
    }

    let mut watches = String::new();
    for w in &h.watches {
        let _ = write!(
            watches,
            "<details><summary>watcher {} on {}{} ({} records)</summary><pre>",
            w.watcher,
            esc(&w.key),
            if w.prefix { "*" } else { "" },
            w.records.len()
        );
        for rec in w.records.iter().take(2000) {
            let line = match rec {
                WatchRecord::Events {
                    time_ns,
                    header_revision,
                    events,
                } => {
                    let evs: Vec<String> = events
                        .iter()
                        .map(|e| {
                            format!(
                                "{:?} {}={}@{}",
                                e.kind, e.kv.key, e.kv.value, e.kv.mod_revision
                            )
                        })
                        .collect();
                    format!("{time_ns} events hdr {header_revision}: {}", evs.join(", "))
                }
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            let _ = writeln!(watches, "{}", esc(&line));
        }
        watches.push_str("</pre></details>");
    }

    let meta: String = h
        .meta
        .iter()
        .map(|(k, v)| format!("{}={} ", esc(k), esc(v)))
        .collect();
    format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>keel jepsen report: {verdict:?}</title>
<style>
body {{ font: 13px sans-serif; margin: 12px; }}
#wrap {{ overflow-x: auto; border: 1px solid #ccc; }}
.op {{ stroke: #333; stroke-width: 0.5; }}
.write {{ fill: #7fb3e6; }} .read {{ fill: #a8dca8; }} .fail {{ fill: #ddd; }}
.unknown {{ fill: #f5c26b; fill-opacity: 0.55; stroke-dasharray: 4 2; }}
.bad {{ fill: #e05050; }} .stuck {{ stroke: #000; stroke-width: 3; }}
.fault {{ fill: #999; fill-opacity: 0.15; }} .flabel {{ font-size: 10px; fill: #555; }}
.rlabel {{ font-size: 11px; }}
table {{ border-collapse: collapse; }} td {{ padding: 2px 8px; vertical-align: top; }}
.pass {{ color: green; }} .failv {{ color: #c00; font-weight: bold; }} .unk {{ color: #c80; font-weight: bold; }}
.viol pre {{ margin: 0; white-space: pre-wrap; }}
</style></head><body>
<h2>keel jepsen report: <span class="{vclass}">{verdict:?}</span></h2>
<p>{nops} ops, {nw} watchers, {nf} faults. {meta}</p>
<p>Zoom <input id="zoom" type="range" min="0.1" max="4" step="0.1" value="1"> — blue: write, green: read, grey: failed,
orange hatched: unknown outcome, red: named by a violation, thick outline: the op the linearizability search could not place,
shaded: faults. Hover a bar for its request and response.</p>
<div id="wrap">{svg}</div>
<h3>Checkers</h3><table>{checks}</table>
<h3>Linearizability</h3>{linsec}
<h3>Watches</h3>{watches}
<script>
const svg = document.getElementById('tl'); const w0 = svg.getAttribute('width');
document.getElementById('zoom').addEventListener('input', e => {{
  svg.setAttribute('viewBox', '0 0 ' + w0 + ' ' + svg.getAttribute('height'));
  svg.setAttribute('width', w0 * e.target.value);
}});
</script>
</body></html>
"#,
        verdict = r.verdict(),
        vclass = match r.verdict() {
            Verdict::Pass => "pass",
            Verdict::Fail => "failv",
            Verdict::Unknown => "unk",
        },
        nops = h.ops.len(),
        nw = h.watches.len(),
        nf = h.faults.len(),
    )
}
