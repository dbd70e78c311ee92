//! Focused tests of the core, etcd-style: small clusters driven by hand
//! through an in-memory network that delivers everything at once (unless a
//! node is isolated), with the scenario drawn in a comment.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn cfg(id: u64) -> Config {
    let mut c = Config::new(id);
    c.seed = id * 7919;
    c
}

fn new_node(id: u64, voters: &[u64]) -> RawNode {
    RawNode::new(
        cfg(id),
        Restored {
            conf_state: RawNode::bootstrap(voters),
            ..Default::default()
        },
    )
    .unwrap()
}

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: vec![index as u8],
    }
}

/// A cluster whose network delivers every message at once, except to or
/// from isolated nodes, and whose disks persist every Ready at once.
struct Net {
    nodes: BTreeMap<u64, RawNode>,
    isolated: BTreeSet<u64>,
    /// Every message delivered, for assertions.
    seen: Vec<Message>,
    /// Messages held back instead of delivered (when `hold` is set).
    held: Vec<Message>,
    hold: bool,
    /// Snapshot requests seen (their messages are delivered, and reported
    /// successful).
    snap_reqs: Vec<SnapshotRequest>,
}

impl Net {
    fn new(voters: &[u64]) -> Net {
        Net {
            nodes: voters
                .iter()
                .map(|&id| (id, new_node(id, voters)))
                .collect(),
            isolated: BTreeSet::new(),
            seen: Vec::new(),
            held: Vec::new(),
            hold: false,
            snap_reqs: Vec::new(),
        }
    }

    fn node(&mut self, id: u64) -> &mut RawNode {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Processes Readies and delivers messages until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut msgs = Vec::new();
            let mut reqs = Vec::new();
            for node in self.nodes.values_mut() {
                while node.has_ready() {
                    let rd = node.ready();
                    msgs.extend(rd.messages);
                    if let Some(meta) = &rd.snapshot {
                        node.on_snapshot_installed(meta);
                    }
                    if let Some(e) = rd.entries.last() {
                        node.on_persisted(e.index, e.term);
                    }
                    msgs.extend(rd.persisted_messages);
                    for e in &rd.committed_entries {
                        if e.kind == EntryKind::ConfChange {
                            node.apply_conf_change(&ConfChange::decode(&e.data).unwrap());
                        }
                    }
                    if let Some(e) = rd.committed_entries.last() {
                        node.on_applied(e.index);
                    }
                    reqs.extend(rd.snapshot_requests);
                }
            }
            if msgs.is_empty() && reqs.is_empty() {
                return;
            }
            for req in reqs {
                let from = req.message.from;
                self.deliver(req.message.clone());
                self.node(from).report_snapshot(req.to, true);
                self.snap_reqs.push(req);
            }
            for m in msgs {
                self.deliver(m);
            }
        }
        panic!("network did not settle");
    }

    fn deliver(&mut self, m: Message) {
        if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) {
            return;
        }
        if self.hold {
            self.held.push(m);
            return;
        }
        self.seen.push(m.clone());
        if let Some(n) = self.nodes.get_mut(&m.to) {
            // Round-trip through the wire format on the way.
            let m = Message::decode(&m.encode()).unwrap();
            let _ = n.step(m);
        }
    }

    fn tick_all(&mut self, n: usize) {
        for _ in 0..n {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node(id).tick();
            }
            self.settle();
        }
    }

    /// Makes `id` campaign and settles: it becomes leader.
    fn elect(&mut self, id: u64) {
        self.node(id).campaign(true);
        self.settle();
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} not elected");
    }

    /// Ticks follower `id` alone until its election timeout makes it a
    /// pre-candidate (within two election timeouts), then settles.
    fn tick_until_campaign(&mut self, id: u64) {
        for _ in 0..2 * self.node(id).cfg.election_tick {
            if self.node(id).role() != Role::Follower {
                break;
            }
            self.node(id).tick();
        }
        assert_eq!(self.node(id).role(), Role::PreCandidate, "node {id}");
        self.settle();
    }

    fn leaders(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.role() == Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }
}

// Pre-vote: a node cut off from a stable cluster keeps campaigning in vain;
// with pre-vote it never bumps its term, so when it rejoins the leader is
// undisturbed.
//
//   1 (leader) ── 2
//        ╳
//        3  (isolated, ticks through many election timeouts, then rejoins)
#[test]
fn pre_vote_prevents_disruption_by_rejoining_node() {
    for (pre_vote, leader_survives) in [(true, true), (false, false)] {
        let mut net = Net::new(&[1, 2, 3]);
        for n in net.nodes.values_mut() {
            n.cfg.pre_vote = pre_vote;
            n.cfg.check_quorum = false;
        }
        net.elect(1);
        let term = net.node(1).term();
        net.isolated.insert(3);
        net.node(1).propose(b"while 3 is away".to_vec()).unwrap();
        net.settle();
        for _ in 0..100 {
            net.node(3).tick();
            net.settle();
        }
        if pre_vote {
            assert_eq!(net.node(3).term(), term, "pre-vote must not bump the term");
        } else {
            assert!(net.node(3).term() > term);
        }
        net.isolated.clear();
        // Node 3 campaigns again with everyone reachable.
        for _ in 0..(2 * net.node(3).cfg.election_tick) {
            net.node(3).tick();
            net.settle();
        }
        assert_eq!(
            net.node(1).role() == Role::Leader && net.node(1).term() == term,
            leader_survives,
            "pre_vote={pre_vote}"
        );
    }
}

// Check-quorum: a leader that hears from nobody for an election timeout
// steps down; with the quorum reachable it stays.
#[test]
fn check_quorum_step_down() {
    for (isolate, stays) in [(false, true), (true, false)] {
        let mut net = Net::new(&[1, 2, 3]);
        net.elect(1);
        if isolate {
            net.isolated.insert(1);
        }
        for _ in 0..(2 * net.node(1).cfg.election_tick) {
            net.node(1).tick();
            net.settle();
        }
        assert_eq!(
            net.node(1).role() == Role::Leader,
            stays,
            "isolated={isolate}"
        );
    }
}

// Leader lease: followers that hear from a live leader ignore a vote
// request at a higher term (unless it follows a transfer).
#[test]
fn followers_in_lease_ignore_votes() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.node(2).term();
    let vote = |transfer| Message {
        from: 3,
        to: 2,
        term: term + 1,
        kind: MessageKind::Vote {
            last_index: 100,
            last_term: term,
            transfer,
        },
    };
    net.node(2).step(vote(false)).unwrap();
    assert_eq!(net.node(2).term(), term);
    net.node(2).step(vote(true)).unwrap();
    assert_eq!(net.node(2).term(), term + 1);
}

// A member that just started ignores (pre-)votes for an election timeout,
// as if it had just heard from a leader: one that restarts quickly must not
// help elect a new leader while the old one may still serve lease reads.
#[test]
fn fresh_member_ignores_votes_for_an_election_timeout() {
    let mut n = new_node(2, &[1, 2, 3]);
    let vote = |term| Message {
        from: 3,
        to: 2,
        term,
        kind: MessageKind::Vote {
            last_index: 100,
            last_term: 1,
            transfer: false,
        },
    };
    n.step(vote(1)).unwrap();
    assert_eq!(n.term(), 0, "vote heeded right after start");
    for _ in 0..n.cfg.election_tick {
        n.tick();
    }
    n.step(vote(2)).unwrap();
    assert_eq!(n.term(), 2, "vote ignored after an election timeout");
    assert!(
        n.ready()
            .persisted_messages
            .iter()
            .any(|m| m.kind == MessageKind::VoteResp { reject: false }),
        "vote granted"
    );
}

// Pre-votes and their answers bind no one, so they go out at once; the real
// vote and the answer to one wait for the WAL (the term and the vote must be
// durable first). Holding pre-votes for a write lets two followers that time
// out close together both win the pre-vote and split the real vote.
#[test]
fn pre_votes_go_out_before_persistence_votes_after() {
    // Without check-quorum a fresh node heeds pre-votes at once (no startup
    // lease), so no ticks (which might make it campaign first) are needed.
    let mut c = cfg(2);
    c.check_quorum = false;
    let restored = Restored {
        conf_state: RawNode::bootstrap(&[1, 2, 3]),
        ..Default::default()
    };
    let mut n = RawNode::new(c, restored).unwrap();
    let pre_vote = Message {
        from: 3,
        to: 2,
        term: 1,
        kind: MessageKind::PreVote {
            last_index: 100,
            last_term: 1,
        },
    };
    n.step(pre_vote).unwrap();
    let rd = n.ready();
    assert!(
        rd.messages
            .iter()
            .any(|m| m.to == 3 && m.kind == MessageKind::PreVoteResp { reject: false }),
        "pre-vote answered at once: {rd:?}"
    );
    assert!(rd.persisted_messages.is_empty(), "{rd:?}");

    // Its own campaign: the pre-vote at once, the vote after the WAL write
    // of its new term.
    while n.role() == Role::Follower {
        n.tick();
    }
    assert_eq!(n.role(), Role::PreCandidate);
    let rd = n.ready();
    let pre: Vec<_> = rd
        .messages
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::PreVote { .. }))
        .map(|m| m.to)
        .collect();
    assert_eq!(pre, vec![1, 3], "{rd:?}");
    n.step(Message {
        from: 1,
        to: 2,
        term: 1,
        kind: MessageKind::PreVoteResp { reject: false },
    })
    .unwrap();
    assert_eq!(n.role(), Role::Candidate);
    let rd = n.ready();
    assert!(rd.hard_state.is_some());
    assert!(
        !rd.messages
            .iter()
            .any(|m| matches!(m.kind, MessageKind::Vote { .. })),
        "a vote sent before the term is durable: {rd:?}"
    );
    assert_eq!(
        rd.persisted_messages
            .iter()
            .filter(|m| matches!(m.kind, MessageKind::Vote { .. }))
            .count(),
        2,
        "{rd:?}"
    );
}

// Two followers that time out together after their leader died: each asks
// the other for a pre-vote while campaigning itself. If both granted, both
// would campaign in the same term and split the vote (another election
// timeout lost). In its first round after losing the leader a pre-candidate
// grants only a pre-vote that outranks its own (a longer log, or as long a
// log and a higher id): one wins at once.
#[test]
fn concurrent_pre_candidates_do_not_split_the_vote() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.node(1).term();
    net.isolated.insert(1);
    net.hold = true;
    // An election timeout passes (fresh nodes heed no votes before).
    for id in [2, 3] {
        for _ in 0..net.node(id).cfg.election_tick {
            if net.node(id).role() == Role::Follower {
                net.node(id).tick();
            }
        }
        if net.node(id).role() == Role::Follower {
            net.node(id).campaign(false);
        }
    }
    net.settle();
    assert_eq!(net.node(2).role(), Role::PreCandidate);
    assert_eq!(net.node(3).role(), Role::PreCandidate);
    // Their pre-votes cross.
    net.hold = false;
    for m in std::mem::take(&mut net.held) {
        net.deliver(m);
    }
    net.settle();
    assert_eq!(net.leaders(), vec![1, 3]);
    assert_eq!(net.node(3).term(), term + 1);
    assert_eq!(net.node(2).term(), term + 1);
}

// Ranking is for the first round only. A pre-candidate still campaigning
// after a whole round (here 3, whose messages were lost; elsewhere one cut
// off from a quorum) grants a lower-ranked pre-vote as standard pre-vote
// does; refusing it round after round could keep a node that can win from
// ever winning.
#[test]
fn ranking_pre_votes_stops_after_the_first_round() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.node(1).term();
    net.isolated.insert(1);
    net.hold = true;
    // 3's first round and the next start (a round lasts less than two
    // election timeouts); everything it sends is lost.
    for _ in 0..4 * net.node(3).cfg.election_tick {
        net.node(3).tick();
    }
    net.settle();
    net.held.clear();
    net.hold = false;
    assert_eq!(net.node(3).role(), Role::PreCandidate);
    assert_eq!(net.node(2).role(), Role::Follower);
    // 2 (lower id, as long a log) times out: 3 grants, 2 wins.
    net.tick_until_campaign(2);
    assert_eq!(net.leaders(), vec![1, 2]);
    assert_eq!(net.node(3).term(), term + 1);
}

// The rank rule must not hold up an election when the higher-ranked
// pre-candidate's own pre-vote was refused: 3 times out first while 2 still
// holds the dead leader's lease (2 refuses). When 2 times out in turn, 3
// grants 2's pre-vote although 2 ranks lower, since 2 refused 3's: 2 wins at
// once instead of both waiting for another election timeout.
#[test]
fn a_pre_candidate_refused_by_the_asker_grants_it() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.node(1).term();
    net.isolated.insert(1);
    net.tick_until_campaign(3);
    assert_eq!(net.node(3).role(), Role::PreCandidate);
    assert!(
        net.seen.iter().any(|m| m.from == 2
            && m.to == 3
            && m.kind == MessageKind::PreVoteResp { reject: true }),
        "2 refused 3"
    );
    assert_eq!(net.node(2).role(), Role::Follower);
    net.tick_until_campaign(2);
    assert_eq!(net.leaders(), vec![1, 2]);
    assert_eq!(net.node(3).term(), term + 1);
}

// A lone voter wins its election in the step it campaigns, before its new
// term and vote are durable. Its appends (to a learner) must wait for that
// write: a crash before it could let it win the same term again and send
// different entries under it. Once an entry of its term is durable, they go
// out at once again.
#[test]
fn lone_voter_sends_nothing_before_its_term_is_durable() {
    let mut conf = RawNode::bootstrap(&[1]);
    conf.learners.insert(2);
    let mut n = RawNode::new(
        cfg(1),
        Restored {
            conf_state: conf,
            ..Default::default()
        },
    )
    .unwrap();
    n.campaign(false);
    assert_eq!(n.role(), Role::Leader);
    let rd = n.ready();
    assert_eq!(rd.hard_state.as_ref().map(|h| h.term), Some(1), "{rd:?}");
    let appends = |ms: &[Message]| {
        ms.iter()
            .filter(|m| m.to == 2 && matches!(m.kind, MessageKind::Append { .. }))
            .count()
    };
    assert_eq!(appends(&rd.messages), 0, "sent before the term is durable");
    assert_eq!(appends(&rd.persisted_messages), 1, "{rd:?}");
    let last = rd.entries.last().expect("the term's first entry");
    n.on_persisted(last.index, last.term);
    // The learner's probe is still in flight: a heartbeat is what goes out.
    for _ in 0..n.cfg.heartbeat_tick {
        n.tick();
    }
    let rd = n.ready();
    let to_learner = |ms: &[Message]| ms.iter().filter(|m| m.to == 2).count();
    assert_eq!(to_learner(&rd.messages), 1, "{rd:?}");
    assert_eq!(to_learner(&rd.persisted_messages), 0, "{rd:?}");
}

// Read lease, the core's part: every heartbeat starts a new round, a quorum's
// acknowledgement confirms it; leases are usable only once an entry of the
// term is committed and never after a TimeoutNow went out in this term.
#[test]
fn lease_rounds_and_revocation() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    assert_eq!(
        net.node(2).confirmed_read_round(),
        0,
        "followers hold no lease"
    );
    assert_eq!(net.node(2).lease_read_index(), None);
    assert_eq!(
        net.node(1).lease_read_index(),
        Some(net.node(1).commit()),
        "usable once the term's entry committed"
    );
    let before = net.node(1).read_round();
    net.isolated.insert(2);
    net.isolated.insert(3);
    net.node(1).tick();
    net.settle();
    let round = net.node(1).read_round();
    assert!(round > before, "a heartbeat is a new round");
    assert!(
        net.node(1).confirmed_read_round() < round,
        "unconfirmed without a quorum"
    );
    net.isolated.remove(&3);
    net.node(1).tick();
    net.settle();
    assert!(
        net.node(1).confirmed_read_round() > round,
        "confirmed by 1 and 3"
    );
    // A transfer ends lease reads for the rest of the term, even once
    // abandoned: the lost TimeoutNow may still arrive and win an election.
    net.isolated.insert(3);
    net.node(1).transfer_leader(3);
    assert_eq!(net.node(1).lease_read_index(), None, "transfer in progress");
    for _ in 0..net.node(1).cfg.election_tick {
        net.node(1).tick();
        net.settle();
    }
    assert_eq!(net.leaders(), vec![1]);
    assert!(
        net.node(1).propose(b"x".to_vec()).is_ok(),
        "transfer abandoned"
    );
    assert_eq!(net.node(1).lease_read_index(), None, "still revoked");
}

// While the driver vouches for its lease, the leader answers a follower's
// read at once, without a heartbeat round; otherwise it starts a round.
#[test]
fn forwarded_read_under_lease_needs_no_round() {
    for holds in [true, false] {
        let mut net = Net::new(&[1, 2, 3]);
        net.elect(1);
        let term = net.node(1).term();
        let round = net.node(1).read_round();
        net.node(1).set_read_lease(holds);
        net.node(1)
            .step(Message {
                from: 2,
                to: 1,
                term,
                kind: MessageKind::ReadIndex { ctx: b"f".to_vec() },
            })
            .unwrap();
        net.node(1).set_read_lease(false);
        let rd = net.node(1).ready();
        let answered = rd
            .messages
            .iter()
            .any(|m| matches!(&m.kind, MessageKind::ReadIndexResp { ctx, .. } if ctx == b"f"));
        assert_eq!(answered, holds, "holds={holds}");
        assert_eq!(net.node(1).read_round() > round, !holds, "holds={holds}");
    }
}

// Raft §5.4.2: the leader of term 3 holds entries 1-2 of term 1. A quorum
// acknowledging index 2 (term 1) commits nothing; acknowledging its own
// entry 3 (term 3) commits 1-3.
#[test]
fn leader_commits_only_entries_of_its_term() {
    let hs = HardState {
        term: 2,
        vote: 0,
        commit: 0,
    };
    let mut n = RawNode::new(
        cfg(1),
        Restored {
            hard_state: hs,
            conf_state: RawNode::bootstrap(&[1, 2, 3]),
            entries: vec![ent(1, 1), ent(2, 1)],
            ..Default::default()
        },
    )
    .unwrap();
    n.campaign(true);
    let rd = n.ready();
    let e = rd.entries.last().cloned();
    assert!(e.is_none(), "no new entries as a candidate");
    let resp = |from, kind| Message {
        from,
        to: 1,
        term: 3,
        kind,
    };
    n.step(resp(2, MessageKind::VoteResp { reject: false }))
        .unwrap();
    assert_eq!(n.role(), Role::Leader);
    assert_eq!(n.term(), 3);
    let rd = n.ready();
    let noop = rd.entries.last().unwrap().clone();
    assert_eq!((noop.index, noop.term), (3, 3));
    n.on_persisted(3, 3);
    let ack = |index| MessageKind::AppendResp {
        reject: false,
        index,
        hint_index: 0,
        hint_term: 0,
    };
    n.step(resp(2, ack(2))).unwrap();
    assert_eq!(
        n.commit(),
        0,
        "entries of an older term are not committed by counting"
    );
    n.step(resp(2, ack(3))).unwrap();
    assert_eq!(n.commit(), 3);
}

// The leader counts itself only once its entries are durable.
#[test]
fn leader_counts_itself_only_after_persist() {
    let mut n = new_node(1, &[1, 2, 3]);
    n.campaign(true);
    let _ = n.ready();
    n.step(Message {
        from: 2,
        to: 1,
        term: 1,
        kind: MessageKind::VoteResp { reject: false },
    })
    .unwrap();
    let rd = n.ready();
    assert!(
        !rd.messages.is_empty(),
        "appends go out before the leader's own write"
    );
    n.step(Message {
        from: 2,
        to: 1,
        term: 1,
        kind: MessageKind::AppendResp {
            reject: false,
            index: 1,
            hint_index: 0,
            hint_term: 0,
        },
    })
    .unwrap();
    // 2 has it; the leader 1 has not persisted: 1 of 3 is not a quorum... but
    // 2 + 1 would be. Not committed until on_persisted.
    assert_eq!(n.commit(), 0);
    n.on_persisted(1, 1);
    assert_eq!(n.commit(), 1);
}

// Conflict resolution: whatever the follower's log, after replication it
// equals the leader's (terms listed per index, leader's log at term 5).
#[test]
fn conflicting_follower_logs_converge() {
    let leader_log = [1, 1, 2, 3, 3, 4];
    let cases: &[&[u64]] = &[
        &[],                       // empty
        &[1, 1],                   // behind
        &[1, 1, 2, 3, 3, 4],       // equal
        &[1, 1, 2, 2, 2, 2, 2, 2], // longer, conflicting from 4
        &[1, 1, 1, 1, 1, 1, 1],    // conflicting from 3
        &[1, 2],                   // conflicting from 2
        &[1, 1, 2, 3, 3, 3, 3],    // longer, conflicting from 6
    ];
    for follower_log in cases {
        let restored = |log: &[u64], term| Restored {
            hard_state: HardState {
                term,
                vote: 0,
                commit: 0,
            },
            conf_state: RawNode::bootstrap(&[1, 2]),
            entries: log
                .iter()
                .enumerate()
                .map(|(i, &t)| ent(i as u64 + 1, t))
                .collect(),
            ..Default::default()
        };
        let mut net = Net {
            nodes: BTreeMap::new(),
            isolated: BTreeSet::new(),
            seen: Vec::new(),
            held: Vec::new(),
            hold: false,
            snap_reqs: Vec::new(),
        };
        net.nodes
            .insert(1, RawNode::new(cfg(1), restored(&leader_log, 4)).unwrap());
        net.nodes
            .insert(2, RawNode::new(cfg(2), restored(follower_log, 4)).unwrap());
        net.elect(1);
        net.node(1).propose(b"x".to_vec()).unwrap();
        net.settle();
        let l: Vec<(u64, u64)> = net
            .node(1)
            .log_entries()
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        let f: Vec<(u64, u64)> = net
            .node(2)
            .log_entries()
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(l, f, "follower log {follower_log:?}");
        assert_eq!(net.node(2).commit(), l.len() as u64);
    }
}

// Pipelining: in replicate state the leader has at most max_inflight_msgs
// Appends unacknowledged per follower; acknowledgements open the window.
#[test]
fn pipelining_respects_inflight_window() {
    let mut net = Net::new(&[1, 2]);
    for n in net.nodes.values_mut() {
        n.cfg.max_inflight_msgs = 2;
        n.cfg.max_entries_per_msg = 1;
    }
    net.elect(1);
    assert_eq!(
        net.node(1).status().progress[&2].state,
        ProgressState::Replicate
    );
    net.hold = true;
    for i in 0..5u8 {
        net.node(1).propose(vec![i]).unwrap();
    }
    net.settle();
    let appends = |held: &[Message]| {
        held.iter()
            .filter(
                |m| matches!(&m.kind, MessageKind::Append { entries, .. } if !entries.is_empty()),
            )
            .count()
    };
    assert_eq!(appends(&net.held), 2, "window of 2");
    // Deliver them: the acks let the rest through, two at a time.
    net.hold = false;
    for m in std::mem::take(&mut net.held) {
        net.deliver(m);
    }
    net.settle();
    assert_eq!(net.node(2).last_index(), net.node(1).last_index());
}

// Batching: entries proposed between two Readies travel in one Append, up
// to max_size_per_msg.
#[test]
fn appends_are_batched() {
    let mut net = Net::new(&[1, 2]);
    net.elect(1);
    net.hold = true;
    for i in 0..10u8 {
        net.node(1).propose(vec![i; 10]).unwrap();
    }
    net.settle();
    let sizes: Vec<usize> = net
        .held
        .iter()
        .filter_map(|m| match &m.kind {
            MessageKind::Append { entries, .. } => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![10]);
}

// Learners receive the log but never campaign, and their votes do not count.
#[test]
fn learners_do_not_vote() {
    let mut conf = RawNode::bootstrap(&[1, 2]);
    conf.learners.insert(3);
    let mk = |id| {
        RawNode::new(
            cfg(id),
            Restored {
                conf_state: conf.clone(),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let mut net = Net {
        nodes: [(1, mk(1)), (2, mk(2)), (3, mk(3))].into_iter().collect(),
        isolated: BTreeSet::new(),
        seen: Vec::new(),
        held: Vec::new(),
        hold: false,
        snap_reqs: Vec::new(),
    };
    // The learner alone never campaigns.
    for _ in 0..100 {
        net.node(3).tick();
    }
    assert_eq!(net.node(3).term(), 0);
    assert!(!net.node(3).has_ready() || net.node(3).ready().persisted_messages.is_empty());
    // 1 campaigns with 2 cut off: the learner's vote does not make a quorum.
    net.isolated.insert(2);
    net.node(1).campaign(true);
    net.settle();
    assert_ne!(net.node(1).role(), Role::Leader);
    net.isolated.clear();
    net.elect(1);
    net.node(1).propose(b"x".to_vec()).unwrap();
    net.settle();
    assert_eq!(
        net.node(3).last_index(),
        net.node(1).last_index(),
        "learner gets the log"
    );
}

// Leadership transfer: the leader catches the target up, sends TimeoutNow,
// the target wins at once; proposals are refused meanwhile.
#[test]
fn leadership_transfer() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolated.insert(3);
    net.node(1).propose(b"a".to_vec()).unwrap();
    net.settle();
    net.isolated.clear();
    net.hold = true;
    net.node(1).transfer_leader(3);
    assert_eq!(
        net.node(1).propose(b"b".to_vec()),
        Err(RaftError::NotLeader { leader: None })
    );
    net.hold = false;
    for m in std::mem::take(&mut net.held) {
        net.deliver(m);
    }
    net.settle();
    assert_eq!(net.leaders(), vec![3]);
    assert!(net.seen.iter().any(|m| m.kind == MessageKind::TimeoutNow));
    // A transfer to an unreachable node is abandoned after an election timeout.
    net.isolated.insert(2);
    net.node(3).transfer_leader(2);
    assert!(net.node(3).propose(b"c".to_vec()).is_err());
    for _ in 0..net.node(3).cfg.election_tick {
        net.node(3).tick();
    }
    net.settle();
    assert!(net.node(3).propose(b"d".to_vec()).is_ok());
}

// ReadIndex: the leader answers only once a quorum acknowledged a heartbeat
// sent after the read; several reads share one round; followers forward.
#[test]
fn read_index_needs_heartbeat_quorum() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.hold = true;
    net.node(1).read_index(b"r1".to_vec());
    net.node(1).read_index(b"r2".to_vec());
    let rd = net.node(1).ready();
    assert!(
        rd.read_states.is_empty(),
        "no answer before the heartbeat round"
    );
    let heartbeats: Vec<Message> = rd
        .messages
        .into_iter()
        .filter(|m| matches!(m.kind, MessageKind::Heartbeat { .. }))
        .collect();
    assert_eq!(heartbeats.len(), 2, "one round for both reads");
    // One follower answers: with the leader that is a quorum of 3.
    let hb = heartbeats[0].clone();
    let MessageKind::Heartbeat { read_seq, .. } = hb.kind else {
        unreachable!()
    };
    net.node(1)
        .step(Message {
            from: hb.to,
            to: 1,
            term: hb.term,
            kind: MessageKind::HeartbeatResp { read_seq },
        })
        .unwrap();
    let rd = net.node(1).ready();
    let ctxs: Vec<&[u8]> = rd.read_states.iter().map(|r| r.ctx.as_slice()).collect();
    assert_eq!(ctxs, vec![b"r1".as_slice(), b"r2".as_slice()]);
    assert_eq!(rd.read_states[0].index, net.node(1).commit());
    // A follower's read is forwarded and answered.
    net.hold = false;
    net.held.clear();
    net.settle();
    net.node(2).read_index(b"f".to_vec());
    let mut got = Vec::new();
    for _ in 0..10 {
        let n = net.node(2);
        if n.has_ready() {
            let rd = n.ready();
            got.extend(rd.read_states);
            for m in rd.messages.into_iter().chain(rd.persisted_messages) {
                net.deliver(m);
            }
        }
        net.settle_except(2, &mut got);
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ctx, b"f");
}

impl Net {
    /// Settles every node but `keep`, whose read states go to `out`.
    fn settle_except(&mut self, keep: u64, out: &mut Vec<ReadState>) {
        let ids: Vec<u64> = self.nodes.keys().copied().filter(|&i| i != keep).collect();
        for id in ids {
            while self.node(id).has_ready() {
                let rd = self.node(id).ready();
                if let Some(e) = rd.entries.last() {
                    self.node(id).on_persisted(e.index, e.term);
                }
                for m in rd.messages.into_iter().chain(rd.persisted_messages) {
                    self.deliver(m);
                }
            }
        }
        let n = self.node(keep);
        if n.has_ready() {
            let rd = n.ready();
            if let Some(e) = rd.entries.last() {
                n.on_persisted(e.index, e.term);
            }
            out.extend(rd.read_states);
            for m in rd.messages.into_iter().chain(rd.persisted_messages) {
                self.deliver(m);
            }
        }
    }
}

// Snapshots: a follower that needs entries the leader compacted away gets a
// snapshot request; it installs the snapshot and catches up.
#[test]
fn snapshot_request_for_follower_behind_compaction() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.isolated.insert(3);
    for i in 0..5u8 {
        net.node(1).propose(vec![i]).unwrap();
        net.settle();
    }
    let applied = net.node(1).commit();
    let meta = net.node(1).compact(applied).unwrap();
    assert_eq!(meta.index, applied);
    assert_eq!(meta.conf_state.voters.len(), 3);
    net.isolated.clear();
    net.tick_all(3);
    assert_eq!(net.snap_reqs.len(), 1);
    assert_eq!(net.snap_reqs[0].to, 3);
    assert_eq!(net.snap_reqs[0].meta, meta);
    assert_eq!(net.node(3).snapshot_index(), meta.index);
    assert_eq!(net.node(3).commit(), net.node(1).commit());
    assert_eq!(
        net.node(1).status().progress[&3].state,
        ProgressState::Replicate
    );
    net.node(1).propose(b"after".to_vec()).unwrap();
    net.settle();
    assert_eq!(net.node(3).last_index(), net.node(1).last_index());
}

// Membership: one change at a time; a removed leader steps down.
#[test]
fn membership_changes_one_at_a_time_and_removed_leader_steps_down() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1)
        .propose_conf_change(ConfChange::AddLearner(4))
        .unwrap();
    assert_eq!(
        net.node(1).propose_conf_change(ConfChange::AddNode(4)),
        Err(RaftError::ConfChangePending)
    );
    net.nodes.insert(4, new_node(4, &[1, 2, 3]));
    net.settle();
    assert!(net.node(1).conf_state().learners.contains(&4));
    net.node(1)
        .propose_conf_change(ConfChange::AddNode(4))
        .unwrap();
    net.settle();
    assert!(net.node(4).conf_state().voters.contains(&4));
    net.node(1)
        .propose_conf_change(ConfChange::RemoveNode(1))
        .unwrap();
    net.settle();
    assert_ne!(net.node(1).role(), Role::Leader);
    assert!(!net.node(2).conf_state().voters.contains(&1));
}

// Bad input from peers is refused or ignored, never a panic.
#[test]
fn bad_messages_are_refused() {
    let mut n = new_node(1, &[1, 2, 3]);
    let m = |to, from, kind| Message {
        from,
        to,
        term: 1,
        kind,
    };
    assert!(
        n.step(m(2, 3, MessageKind::TimeoutNow)).is_err(),
        "wrong recipient"
    );
    assert!(
        n.step(m(1, 1, MessageKind::TimeoutNow)).is_err(),
        "from self"
    );
    assert!(n.step(m(1, 0, MessageKind::TimeoutNow)).is_err(), "from 0");
    let bad_append = MessageKind::Append {
        prev_index: u64::MAX,
        prev_term: 1,
        entries: vec![ent(5, 1)],
        commit: u64::MAX,
    };
    assert!(
        n.step(m(1, 2, bad_append)).is_err(),
        "non-contiguous entries"
    );
    let huge = MessageKind::Append {
        prev_index: u64::MAX - 1,
        prev_term: 1,
        entries: vec![],
        commit: u64::MAX,
    };
    n.step(m(1, 2, huge)).unwrap();
    assert_eq!(n.commit(), 0);
    // An acknowledgement of entries never sent does not move the commit.
    let mut l = new_node(1, &[1, 2]);
    l.campaign(true);
    let _ = l.ready();
    l.step(m(1, 2, MessageKind::VoteResp { reject: false }))
        .unwrap();
    assert_eq!(l.role(), Role::Leader);
    l.step(m(
        1,
        2,
        MessageKind::AppendResp {
            reject: false,
            index: 1000,
            hint_index: 0,
            hint_term: 0,
        },
    ))
    .unwrap();
    assert_eq!(l.commit(), 0);
}

#[test]
fn message_roundtrip() {
    let meta = SnapshotMeta {
        index: 9,
        term: 3,
        conf_state: RawNode::bootstrap(&[1, 2, 3]),
    };
    let kinds = vec![
        MessageKind::Vote {
            last_index: 4,
            last_term: 2,
            transfer: true,
        },
        MessageKind::VoteResp { reject: true },
        MessageKind::PreVote {
            last_index: 1,
            last_term: 1,
        },
        MessageKind::PreVoteResp { reject: false },
        MessageKind::Append {
            prev_index: 3,
            prev_term: 2,
            entries: vec![ent(4, 3), ent(5, 3)],
            commit: 3,
        },
        MessageKind::AppendResp {
            reject: true,
            index: 3,
            hint_index: 2,
            hint_term: 1,
        },
        MessageKind::Heartbeat {
            commit: 3,
            read_seq: 7,
        },
        MessageKind::HeartbeatResp { read_seq: 7 },
        MessageKind::Snapshot { meta },
        MessageKind::ReadIndex {
            ctx: b"abc".to_vec(),
        },
        MessageKind::ReadIndexResp {
            index: 5,
            ctx: b"abc".to_vec(),
        },
        MessageKind::TimeoutNow,
        MessageKind::TransferLeader { target: 3 },
    ];
    for kind in kinds {
        let m = Message {
            from: 1,
            to: 2,
            term: 3,
            kind,
        };
        assert_eq!(Message::decode(&m.encode()), Ok(m));
    }
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn decoding_corrupted_messages_never_panics(pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
        let m = Message {
            from: 1,
            to: 2,
            term: 3,
            kind: MessageKind::Append {
                prev_index: 3,
                prev_term: 2,
                entries: vec![ent(4, 3), ent(5, 3)],
                commit: 3,
            },
        };
        let mut b = m.encode();
        let i = pos % b.len();
        b[i] = val;
        let _ = Message::decode(&b);
        let c = cut % (b.len() + 1);
        let _ = Message::decode(&b[..c]);
    }

    #[test]
    fn stepping_decoded_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(m) = Message::decode(&bytes) {
            let mut n = new_node(1, &[1, 2, 3]);
            let _ = n.step(m);
            let _ = n.ready();
        }
    }
}
