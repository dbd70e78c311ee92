//! The leader's read lease, timed with a real clock.
//!
//! A linearizable read normally costs a heartbeat round (ReadIndex). With
//! check-quorum, a follower that heard from the leader ignores vote
//! requests for an election timeout, so once a quorum acknowledged a
//! heartbeat round, no other leader can be elected until an election timeout
//! after that round began: within that window the leader may serve reads at
//! its commit index without asking anyone (Raft thesis §6.4.1, TiKV's lease
//! reads).
//!
//! The core counts time in ticks, and ticks stall while a process is paused
//! (SIGSTOP, a VM hiccup): a leader that resumes after its followers elected
//! someone else would still count its lease as current. So the lease is
//! timed here with the monotonic clock instead: each round's start is the
//! instant the first Ready that could carry it was taken, before its
//! messages were sent, and the lease lasts a little less than the followers'
//! guaranteed vote-ignoring time from there.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Rounds remembered while unconfirmed (10 per second at the default
/// heartbeat; more are forgotten, which only shortens the lease).
const MAX_ROUNDS: usize = 256;

/// The lease state of one member's driver.
#[derive(Debug)]
pub struct ReadLease {
    /// How long a confirmed round keeps the lease (zero: leases off).
    duration: Duration,
    /// The term the rounds below belong to.
    term: u64,
    /// `(round, instant)`: the first Ready taken while the round was current.
    rounds: VecDeque<(u64, Instant)>,
    /// Rounds up to this one were forgotten: their start is unknown.
    forgotten: u64,
    /// The lease ends here (in `term`).
    until: Option<Instant>,
}

impl ReadLease {
    /// A lease for followers that tick every `tick` and ignore votes for
    /// `election_tick` ticks after hearing from the leader. The first tick
    /// after a heartbeat may come at once, so they are bound for
    /// `(election_tick - 1) * tick`; one more tick is kept as a margin for
    /// clock drift and scheduling. Too short a timeout (under 3 ticks)
    /// gives no lease.
    pub fn new(tick: Duration, election_tick: usize) -> ReadLease {
        let ticks = election_tick.saturating_sub(2) as u32;
        let duration = if election_tick >= 3 {
            tick.saturating_mul(ticks)
        } else {
            Duration::ZERO
        };
        ReadLease {
            duration,
            term: 0,
            rounds: VecDeque::new(),
            forgotten: 0,
            until: None,
        }
    }

    /// How long a confirmed round keeps the lease.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn enter_term(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.rounds.clear();
            self.forgotten = 0;
            self.until = None;
        }
    }

    /// A Ready is about to be sent while `round` is the core's current
    /// round: heartbeats in it carry at most `round`.
    pub fn on_ready(&mut self, term: u64, round: u64, now: Instant) {
        self.enter_term(term);
        if self.duration.is_zero() {
            return;
        }
        if self.rounds.back().is_none_or(|&(r, _)| round > r) && round > self.forgotten {
            if self.rounds.len() >= MAX_ROUNDS {
                if let Some((r, _)) = self.rounds.pop_front() {
                    self.forgotten = r;
                }
            }
            self.rounds.push_back((round, now));
        }
    }

    /// A quorum acknowledged `round` (the core's confirmed round) in `term`.
    pub fn on_confirmed(&mut self, term: u64, round: u64) {
        self.enter_term(term);
        if round == 0 || round <= self.forgotten {
            return;
        }
        // Rounds before `round` can no longer extend the lease.
        while self.rounds.len() > 1 && self.rounds[1].0 <= round {
            self.rounds.pop_front();
        }
        // The first Ready whose round was at least `round`: every heartbeat
        // carrying `round` or later left after it.
        let start = self
            .rounds
            .iter()
            .find(|&&(r, _)| r >= round)
            .map(|&(_, t)| t);
        if let Some(start) = start {
            let until = start + self.duration;
            if self.until.is_none_or(|u| until > u) {
                self.until = Some(until);
            }
        }
    }

    /// Whether the lease of `term` holds at `now`.
    pub fn holds(&self, term: u64, now: Instant) -> bool {
        term == self.term && self.until.is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn duration_leaves_margin_below_the_followers_timeout() {
        assert_eq!(ReadLease::new(100 * MS, 10).duration(), 800 * MS);
        assert_eq!(ReadLease::new(100 * MS, 2).duration(), Duration::ZERO);
    }

    #[test]
    fn lease_runs_from_the_round_start_not_its_confirmation() {
        let t0 = Instant::now();
        let mut l = ReadLease::new(100 * MS, 10);
        assert!(!l.holds(1, t0), "no lease before any confirmation");
        l.on_ready(1, 1, t0);
        l.on_ready(1, 1, t0 + 10 * MS); // same round: keeps the first instant
        l.on_ready(1, 2, t0 + 100 * MS);
        l.on_confirmed(1, 1);
        assert!(l.holds(1, t0 + 799 * MS));
        assert!(!l.holds(1, t0 + 800 * MS));
        l.on_confirmed(1, 2);
        assert!(l.holds(1, t0 + 899 * MS));
        assert!(!l.holds(1, t0 + 900 * MS));
    }

    #[test]
    fn a_confirmation_between_recorded_rounds_uses_the_later_start() {
        let t0 = Instant::now();
        let mut l = ReadLease::new(100 * MS, 10);
        l.on_ready(1, 1, t0);
        // Rounds 2 and 3 began between two Readies: the next Ready carried 3.
        l.on_ready(1, 3, t0 + 50 * MS);
        l.on_confirmed(1, 2);
        assert!(!l.holds(1, t0 + 850 * MS));
        assert!(l.holds(1, t0 + 849 * MS));
    }

    #[test]
    fn a_new_term_drops_the_lease() {
        let t0 = Instant::now();
        let mut l = ReadLease::new(100 * MS, 10);
        l.on_ready(1, 5, t0);
        l.on_confirmed(1, 5);
        assert!(l.holds(1, t0));
        assert!(!l.holds(2, t0));
        l.on_confirmed(2, 5);
        assert!(!l.holds(2, t0), "round 5 of term 1 says nothing of term 2");
    }

    #[test]
    fn forgotten_rounds_never_extend_the_lease() {
        let t0 = Instant::now();
        let mut l = ReadLease::new(100 * MS, 10);
        for r in 1..=(MAX_ROUNDS as u64 + 10) {
            l.on_ready(1, r, t0 + r as u32 * MS);
        }
        l.on_confirmed(1, 3);
        assert!(!l.holds(1, t0), "round 3's start was forgotten");
        l.on_confirmed(1, MAX_ROUNDS as u64 + 10);
        assert!(l.holds(1, t0 + (MAX_ROUNDS as u32 + 10) * MS));
    }

    #[test]
    fn zero_duration_never_holds() {
        let t0 = Instant::now();
        let mut l = ReadLease::new(100 * MS, 2);
        l.on_ready(1, 1, t0);
        l.on_confirmed(1, 1);
        assert!(!l.holds(1, t0));
    }
}
