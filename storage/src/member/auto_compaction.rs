//! `--auto-compaction-mode` and `--auto-compaction-retention`: the leader
//! compacts the store's history on its own, as etcd's `v3compactor` does.
//!
//! - `periodic` keeps a window of time: the revision is sampled every tenth
//!   of the window (of an hour for windows longer than one), and once the
//!   window has passed, the store is compacted to the revision sampled a
//!   window ago, then again every window (at most every hour).
//! - `revision` keeps a number of revisions: every five minutes the store
//!   is compacted to the current revision minus the retention.
//!
//! The schedules are clock-free state machines ([`Periodic`], [`Revisions`])
//! fed the time and the current revision; [`Member::spawn_auto_compaction`]
//! drives them on the leader only (a follower's turns are skipped, as etcd
//! pauses its compactor on followers) and proposes the compactions through
//! the log like a client's `Compact`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::proto::etcdserverpb::CompactionRequest;
use crate::proto::keelpb::internal_request::Request;

use super::Member;

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoCompaction {
    /// Retention `0` (etcd's default): never compact on its own.
    #[default]
    Off,
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

impl AutoCompaction {
    /// Parses etcd's flags. `periodic` takes a duration (`1h`, `30m`, `5s`)
    /// or a bare number of hours; `revision` takes a number of revisions.
    pub fn parse(mode: &str, retention: &str) -> Result<AutoCompaction, String> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                    Err(_) => crate::go_duration::parse(retention).ok_or_else(|| {
                        format!("--auto-compaction-retention {retention:?}: expected a duration (1h, 30m, 10s) or a number of hours")
                    })?,
                };
                Ok(if period.is_zero() {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Periodic(period)
                })
            }
            "revision" => {
                let n: i64 = retention.parse().map_err(|_| {
                    format!("--auto-compaction-retention {retention:?}: expected a number of revisions in revision mode")
                })?;
                if n < 0 {
                    return Err(format!(
                        "--auto-compaction-retention {n}: must not be negative"
                    ));
                }
                Ok(if n == 0 {
                    AutoCompaction::Off
                } else {
                    AutoCompaction::Revision(n)
                })
            }
            other => Err(format!(
                "--auto-compaction-mode {other:?}: expected periodic or revision"
            )),
        }
    }
}

/// The `periodic` schedule: samples of the revision, a tenth of the
/// compaction interval apart, covering one retention window. Driven as
/// etcd's loop: [`Periodic::record`] the revision, wait
/// [`Periodic::sample_interval`], ask [`Periodic::due`], again.
#[derive(Debug)]
pub struct Periodic {
    period: Duration,
    /// Revisions sampled, oldest first; the first is a window old once full.
    revs: VecDeque<i64>,
    /// How many samples a window holds.
    retentions: usize,
    /// When the last compaction succeeded (or the schedule started).
    last_success: Instant,
    /// How long after `last_success` the next compaction is due: the whole
    /// window at first, then the compaction interval.
    due_after: Duration,
}

impl Periodic {
    /// The shortest sample interval (a window under 100 ms is sampled no
    /// more often than this).
    const MIN_SAMPLE: Duration = Duration::from_millis(10);

    /// A schedule keeping `period` of history, started at `now`.
    pub fn new(period: Duration, now: Instant) -> Periodic {
        let mut p = Periodic {
            period,
            revs: VecDeque::new(),
            retentions: 0,
            last_success: now,
            due_after: period,
        };
        let samples = period.as_secs_f64() / p.sample_interval().as_secs_f64();
        p.retentions = (samples as usize).saturating_add(1);
        p
    }

    /// Compaction interval: the window, at most an hour.
    fn compact_interval(&self) -> Duration {
        self.period.min(Duration::from_secs(3600))
    }

    /// How often the revision is sampled (and a failed compaction retried).
    pub fn sample_interval(&self) -> Duration {
        (self.compact_interval() / 10).max(Self::MIN_SAMPLE)
    }

    /// Records the revision now (once per sample interval).
    pub fn record(&mut self, rev: i64) {
        self.revs.push_back(rev);
        if self.revs.len() > self.retentions {
            self.revs.pop_front();
        }
    }

    /// The revision to compact to at `now`, if a compaction is due: the
    /// oldest sample, a window old.
    pub fn due(&self, now: Instant) -> Option<i64> {
        if now.duration_since(self.last_success) < self.due_after {
            return None;
        }
        self.revs.front().copied()
    }

    /// The due compaction succeeded (or had been done already) at `now`.
    pub fn compacted(&mut self, now: Instant) {
        self.last_success = now;
        self.due_after = self.compact_interval();
    }
}

/// The `revision` schedule.
#[derive(Debug)]
pub struct Revisions {
    retention: i64,
    /// The last revision compacted to.
    prev: i64,
}

impl Revisions {
    /// How often the schedule runs (etcd's: five minutes).
    pub const INTERVAL: Duration = Duration::from_secs(300);

    /// A schedule keeping `retention` revisions.
    pub fn new(retention: i64) -> Revisions {
        Revisions { retention, prev: 0 }
    }

    /// The revision to compact to, given the current one, if any.
    pub fn due(&self, current: i64) -> Option<i64> {
        let rev = current - self.retention;
        (rev > 0 && rev != self.prev).then_some(rev)
    }

    /// The compaction to `rev` succeeded (or had been done already).
    pub fn compacted(&mut self, rev: i64) {
        self.prev = rev;
    }
}

impl Member {
    /// Starts the auto-compaction loop the configuration asks for (none
    /// when it is off). Runs until the member is dropped.
    pub fn spawn_auto_compaction(self: &Arc<Self>) {
        let schedule = self.cfg.auto_compaction;
        let weak = Arc::downgrade(self);
        match schedule {
            AutoCompaction::Off => {}
            AutoCompaction::Periodic(period) => {
                tokio::spawn(async move {
                    let mut p = Periodic::new(period, Instant::now());
                    loop {
                        {
                            let Some(m) = weak.upgrade() else { return };
                            let rev = m.read().kv.current_rev();
                            p.record(rev);
                        }
                        tokio::time::sleep(p.sample_interval()).await;
                        let Some(m) = weak.upgrade() else { return };
                        // A follower's turns are skipped (etcd pauses its
                        // compactor there); the samples go on.
                        let Some(due) = p.due(Instant::now()).filter(|_| m.is_leader()) else {
                            continue;
                        };
                        if m.compact_to(due, "periodic").await {
                            p.compacted(Instant::now());
                        }
                    }
                });
            }
            AutoCompaction::Revision(retention) => {
                tokio::spawn(async move {
                    let mut r = Revisions::new(retention);
                    loop {
                        tokio::time::sleep(Revisions::INTERVAL).await;
                        let Some(m) = weak.upgrade() else { return };
                        if !m.is_leader() {
                            continue;
                        }
                        let current = m.read().kv.current_rev();
                        if let Some(due) = r.due(current) {
                            if m.compact_to(due, "revision").await {
                                r.compacted(due);
                            }
                        }
                    }
                });
            }
        }
    }

    /// Proposes a compaction to `rev`; true if it is done (now or before).
    async fn compact_to(&self, rev: i64, mode: &str) -> bool {
        if rev <= self.read().kv.compact_rev() {
            return true;
        }
        let req = Request::Compaction(CompactionRequest {
            revision: rev,
            physical: false,
        });
        match self.propose(req).await {
            Ok(_) | Err(StoreError::Compacted) => {
                tracing::info!(revision = rev, mode, "auto-compaction done");
                true
            }
            Err(e) => {
                tracing::warn!(revision = rev, mode, error = %e, "auto-compaction failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcds_flags() {
        let p = |m, r| AutoCompaction::parse(m, r);
        assert_eq!(p("periodic", "0"), Ok(AutoCompaction::Off));
        assert_eq!(
            p("periodic", "1"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            p("periodic", "30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            p("periodic", "1h30m"),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            p("periodic", "500ms"),
            Ok(AutoCompaction::Periodic(Duration::from_millis(500)))
        );
        assert_eq!(p("revision", "1000"), Ok(AutoCompaction::Revision(1000)));
        assert_eq!(p("revision", "0"), Ok(AutoCompaction::Off));
        assert!(p("revision", "1h").is_err());
        assert!(p("revision", "-5").is_err());
        assert!(p("periodic", "soon").is_err());
        assert!(p("hourly", "1").is_err());
    }

    /// Runs a schedule as the member's loop does for `steps` sample
    /// intervals, the revision at sample `i` being `rev(i)`; returns the
    /// (step, revision) of each compaction, all succeeding.
    fn run(p: &mut Periodic, t0: Instant, steps: u64, rev: impl Fn(u64) -> i64) -> Vec<(u64, i64)> {
        let every = p.sample_interval();
        let mut done = Vec::new();
        for i in 0..steps {
            p.record(rev(i));
            let now = t0 + every * (i as u32 + 1);
            if let Some(r) = p.due(now) {
                done.push((i + 1, r));
                p.compacted(now);
            }
        }
        done
    }

    /// etcd's documented schedule for a 1-hour window: samples every 6
    /// minutes, the first compaction after an hour to the revision of the
    /// start, then one every hour to the revision of about an hour before.
    #[test]
    fn periodic_waits_a_window_then_compacts_to_the_revision_a_window_ago() {
        let t0 = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(3600), t0);
        assert_eq!(p.sample_interval(), Duration::from_secs(360));
        // Revision 100·i at sample i (t = 6i minutes).
        let done = run(&mut p, t0, 30, |i| 100 * i as i64);
        assert_eq!(done, vec![(10, 0), (20, 900), (30, 1900)]);
    }

    /// A failed compaction is retried at the next sample, further on.
    #[test]
    fn periodic_retries_a_failed_compaction_at_the_next_sample() {
        let t0 = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(3600), t0);
        let at = |i: u32| t0 + Duration::from_secs(360) * i;
        for i in 0..10 {
            p.record(100 * i64::from(i));
        }
        assert_eq!(p.due(at(10)), Some(0));
        // Not marked compacted: due again at the next sample.
        p.record(1000);
        assert_eq!(p.due(at(11)), Some(0));
        p.compacted(at(11));
        p.record(1100);
        assert_eq!(p.due(at(12)), None);
    }

    /// A window over an hour is compacted every hour, each time to the
    /// revision about a whole window old.
    #[test]
    fn long_windows_compact_hourly() {
        let t0 = Instant::now();
        let mut p = Periodic::new(Duration::from_secs(2 * 3600), t0);
        assert_eq!(p.sample_interval(), Duration::from_secs(360));
        let done = run(&mut p, t0, 40, |i| i as i64);
        // First after two hours, then hourly; 20 samples back.
        assert_eq!(done, vec![(20, 0), (30, 9), (40, 19)]);
    }

    /// A tiny window is sampled no more often than every 10 ms.
    #[test]
    fn tiny_windows_do_not_spin() {
        let p = Periodic::new(Duration::from_nanos(5), Instant::now());
        assert_eq!(p.sample_interval(), Periodic::MIN_SAMPLE);
        assert!(p.retentions >= 1);
    }

    #[test]
    fn revision_mode_keeps_the_last_n() {
        let mut r = Revisions::new(1000);
        assert_eq!(r.due(999), None);
        assert_eq!(r.due(1000), None);
        assert_eq!(r.due(30_000), Some(29_000));
        r.compacted(29_000);
        assert_eq!(r.due(30_000), None, "nothing new since");
        assert_eq!(r.due(30_001), Some(29_001));
    }
}
