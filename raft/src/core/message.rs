//! Messages between Raft peers and their wire encoding.
//!
//! The encoding is an rkyv archive of a flat record ([`Wire`]); decoding
//! validates the archive (bytecheck) and then every field that has rules
//! (kind tags, entry kinds, contiguous entries), so bytes from the network
//! can never make the core panic: bad input is a [`RaftError::Decode`].

use super::{ConfState, Entry, EntryKind, RaftError, SnapshotMeta};

/// One message between peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: u64,
    /// Recipient.
    pub to: u64,
    /// The sender's term (for PreVote: the term it would campaign in; for a
    /// PreVoteResp that grants: the term of the request).
    pub term: u64,
    /// What it says.
    pub kind: MessageKind,
}

/// The message types of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKind {
    /// A candidate asks for a vote. `transfer`: the election follows a
    /// leadership transfer (TimeoutNow), so it overrides the leader lease.
    Vote {
        /// Index of the candidate's last entry.
        last_index: u64,
        /// Term of the candidate's last entry.
        last_term: u64,
        /// Campaign caused by a leadership transfer.
        transfer: bool,
    },
    /// Answer to [`MessageKind::Vote`].
    VoteResp {
        /// Vote refused.
        reject: bool,
    },
    /// A pre-candidate asks whether it would win an election (no state
    /// changes on either side).
    PreVote {
        /// Index of the pre-candidate's last entry.
        last_index: u64,
        /// Term of the pre-candidate's last entry.
        last_term: u64,
    },
    /// Answer to [`MessageKind::PreVote`].
    PreVoteResp {
        /// Pre-vote refused.
        reject: bool,
    },
    /// The leader replicates entries following (`prev_index`, `prev_term`).
    Append {
        /// Index of the entry just before `entries`.
        prev_index: u64,
        /// Its term.
        prev_term: u64,
        /// Entries, contiguous from `prev_index + 1` (may be empty).
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: u64,
    },
    /// Answer to [`MessageKind::Append`] or [`MessageKind::Snapshot`].
    AppendResp {
        /// The follower's log does not match at `index`.
        reject: bool,
        /// Accepted: the follower's log matches the leader's up to `index`
        /// (durably). Rejected: the `prev_index` that did not match.
        index: u64,
        /// Rejected: the follower's guess at where the logs may match
        /// (its last index, or the last index whose term is <= `hint_term`).
        hint_index: u64,
        /// Rejected: the term of the follower's entry at `hint_index`.
        hint_term: u64,
    },
    /// The leader's heartbeat; carries the commit index (capped at what the
    /// follower has matched) and the latest ReadIndex round.
    Heartbeat {
        /// Commit index the follower may advance to.
        commit: u64,
        /// ReadIndex round being confirmed (0: none).
        read_seq: u64,
    },
    /// Answer to [`MessageKind::Heartbeat`].
    HeartbeatResp {
        /// The heartbeat's `read_seq`, echoed.
        read_seq: u64,
    },
    /// The leader installs a snapshot on the follower; the data travels
    /// separately (see [`super::SnapshotRequest`]).
    Snapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
    },
    /// A follower forwards a linearizable read to the leader.
    ReadIndex {
        /// The caller's context, returned in the answer.
        ctx: Vec<u8>,
    },
    /// The leader's answer to [`MessageKind::ReadIndex`]: confirmed at `index`.
    ReadIndexResp {
        /// Commit index to wait for before reading.
        index: u64,
        /// The request's context.
        ctx: Vec<u8>,
    },
    /// The leader tells a caught-up transfer target to campaign now.
    TimeoutNow,
    /// A follower forwards a leadership transfer request to the leader.
    TransferLeader {
        /// The node that should become leader.
        target: u64,
    },
}

/// The flat rkyv record a message is encoded as.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Default)]
struct Wire {
    from: u64,
    to: u64,
    term: u64,
    kind: u8,
    flag: bool,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    entries: Vec<WireEntry>,
    ctx: Vec<u8>,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct WireEntry {
    term: u64,
    index: u64,
    kind: u8,
    data: Vec<u8>,
}

const VOTE: u8 = 1;
const VOTE_RESP: u8 = 2;
const PRE_VOTE: u8 = 3;
const PRE_VOTE_RESP: u8 = 4;
const APPEND: u8 = 5;
const APPEND_RESP: u8 = 6;
const HEARTBEAT: u8 = 7;
const HEARTBEAT_RESP: u8 = 8;
const SNAPSHOT: u8 = 9;
const READ_INDEX: u8 = 10;
const READ_INDEX_RESP: u8 = 11;
const TIMEOUT_NOW: u8 = 12;
const TRANSFER_LEADER: u8 = 13;

impl Message {
    /// Encodes the message (an rkyv archive).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Wire {
            from: self.from,
            to: self.to,
            term: self.term,
            ..Wire::default()
        };
        match &self.kind {
            MessageKind::Vote {
                last_index,
                last_term,
                transfer,
            } => {
                w.kind = VOTE;
                w.a = *last_index;
                w.b = *last_term;
                w.flag = *transfer;
            }
            MessageKind::VoteResp { reject } => {
                w.kind = VOTE_RESP;
                w.flag = *reject;
            }
            MessageKind::PreVote {
                last_index,
                last_term,
            } => {
                w.kind = PRE_VOTE;
                w.a = *last_index;
                w.b = *last_term;
            }
            MessageKind::PreVoteResp { reject } => {
                w.kind = PRE_VOTE_RESP;
                w.flag = *reject;
            }
            MessageKind::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                w.kind = APPEND;
                w.a = *prev_index;
                w.b = *prev_term;
                w.c = *commit;
                w.entries = entries
                    .iter()
                    .map(|e| WireEntry {
                        term: e.term,
                        index: e.index,
                        kind: match e.kind {
                            EntryKind::Normal => 0,
                            EntryKind::ConfChange => 1,
                        },
                        data: e.data.clone(),
                    })
                    .collect();
            }
            MessageKind::AppendResp {
                reject,
                index,
                hint_index,
                hint_term,
            } => {
                w.kind = APPEND_RESP;
                w.flag = *reject;
                w.a = *index;
                w.b = *hint_index;
                w.c = *hint_term;
            }
            MessageKind::Heartbeat { commit, read_seq } => {
                w.kind = HEARTBEAT;
                w.a = *commit;
                w.b = *read_seq;
            }
            MessageKind::HeartbeatResp { read_seq } => {
                w.kind = HEARTBEAT_RESP;
                w.b = *read_seq;
            }
            MessageKind::Snapshot { meta } => {
                w.kind = SNAPSHOT;
                w.a = meta.index;
                w.b = meta.term;
                w.voters = meta.conf_state.voters.iter().copied().collect();
                w.learners = meta.conf_state.learners.iter().copied().collect();
            }
            MessageKind::ReadIndex { ctx } => {
                w.kind = READ_INDEX;
                w.ctx = ctx.clone();
            }
            MessageKind::ReadIndexResp { index, ctx } => {
                w.kind = READ_INDEX_RESP;
                w.a = *index;
                w.ctx = ctx.clone();
            }
            MessageKind::TimeoutNow => w.kind = TIMEOUT_NOW,
            MessageKind::TransferLeader { target } => {
                w.kind = TRANSFER_LEADER;
                w.a = *target;
            }
        }
        // Serializing plain integers and vectors into a Vec cannot fail.
        match rkyv::to_bytes::<rkyv::rancor::Error>(&w) {
            Ok(b) => b.into_vec(),
            Err(e) => unreachable!("encoding a message into memory failed: {e}"),
        }
    }

    /// Decodes and validates bytes from the network. Never panics: anything
    /// malformed is a [`RaftError::Decode`].
    pub fn decode(bytes: &[u8]) -> Result<Message, RaftError> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let w = rkyv::from_bytes::<Wire, rkyv::rancor::Error>(&aligned)
            .map_err(|e| RaftError::Decode(format!("invalid message archive: {e}")))?;
        let kind = match w.kind {
            VOTE => MessageKind::Vote {
                last_index: w.a,
                last_term: w.b,
                transfer: w.flag,
            },
            VOTE_RESP => MessageKind::VoteResp { reject: w.flag },
            PRE_VOTE => MessageKind::PreVote {
                last_index: w.a,
                last_term: w.b,
            },
            PRE_VOTE_RESP => MessageKind::PreVoteResp { reject: w.flag },
            APPEND => {
                let mut entries = Vec::with_capacity(w.entries.len());
                for e in w.entries {
                    let kind = match e.kind {
                        0 => EntryKind::Normal,
                        1 => EntryKind::ConfChange,
                        k => return Err(RaftError::Decode(format!("unknown entry kind {k}"))),
                    };
                    entries.push(Entry {
                        term: e.term,
                        index: e.index,
                        kind,
                        data: e.data,
                    });
                }
                MessageKind::Append {
                    prev_index: w.a,
                    prev_term: w.b,
                    entries,
                    commit: w.c,
                }
            }
            APPEND_RESP => MessageKind::AppendResp {
                reject: w.flag,
                index: w.a,
                hint_index: w.b,
                hint_term: w.c,
            },
            HEARTBEAT => MessageKind::Heartbeat {
                commit: w.a,
                read_seq: w.b,
            },
            HEARTBEAT_RESP => MessageKind::HeartbeatResp { read_seq: w.b },
            SNAPSHOT => MessageKind::Snapshot {
                meta: SnapshotMeta {
                    index: w.a,
                    term: w.b,
                    conf_state: ConfState {
                        voters: w.voters.into_iter().collect(),
                        learners: w.learners.into_iter().collect(),
                    },
                },
            },
            READ_INDEX => MessageKind::ReadIndex { ctx: w.ctx },
            READ_INDEX_RESP => MessageKind::ReadIndexResp {
                index: w.a,
                ctx: w.ctx,
            },
            TIMEOUT_NOW => MessageKind::TimeoutNow,
            TRANSFER_LEADER => MessageKind::TransferLeader { target: w.a },
            k => return Err(RaftError::Decode(format!("unknown message kind {k}"))),
        };
        let m = Message {
            from: w.from,
            to: w.to,
            term: w.term,
            kind,
        };
        m.validate().map_err(|e| match e {
            RaftError::InvalidMessage(s) => RaftError::Decode(s),
            e => e,
        })?;
        Ok(m)
    }

    /// Checks the rules a well-formed message follows (the core checks them
    /// again in [`super::RawNode::step`]).
    pub(crate) fn validate(&self) -> Result<(), RaftError> {
        let bad = |s: String| Err(RaftError::InvalidMessage(s));
        if self.from == 0 || self.to == 0 {
            return bad("message from or to node 0".into());
        }
        match &self.kind {
            MessageKind::Append {
                prev_index,
                entries,
                ..
            } => {
                for (i, e) in entries.iter().enumerate() {
                    let want = prev_index.checked_add(i as u64 + 1);
                    if want != Some(e.index) {
                        return bad(format!(
                            "append entries not contiguous after {prev_index}: entry {i} has index {}",
                            e.index
                        ));
                    }
                    if e.term > self.term {
                        return bad(format!("entry {} from future term {}", e.index, e.term));
                    }
                }
            }
            MessageKind::Snapshot { meta }
                if meta.index == 0 || meta.conf_state.voters.is_empty() =>
            {
                return bad("snapshot at index 0 or without voters".into());
            }
            _ => {}
        }
        Ok(())
    }
}
