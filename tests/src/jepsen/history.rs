//! The recorded history of a fault-injection run: what the checkers read.
//!
//! A workload recorder fills a [`History`] while clients drive a cluster and a
//! nemesis injects faults; the checkers (`linearizable`, `checks`) judge it and
//! the report (`report`) draws it. [`History::save`] / [`History::load`] keep
//! it on disk as JSON lines so a failing run can be re-checked after a fix.
//!
//! Conventions, shared by every type here:
//! - **Time** is nanoseconds since the start of the run, from one monotonic
//!   clock (`Instant`) shared by all clients and the nemesis.
//! - **Keys and values** are UTF-8 strings (workloads use printable keys).
//! - **Revisions** are etcd main revisions (`i64`), as the server reports them.
//! - An operation's outcome is three-valued: [`Response::Ok`] (it happened, with
//!   this result), [`Response::Fail`] (it definitely did not take effect) and
//!   [`Response::Unknown`] (it may or may not have taken effect, e.g. a write
//!   that timed out). The recorder decides which; when in doubt, `Unknown`.
//!
//! Files written by [`History::save`] into a directory:
//!
//! | file | one line per |
//! |---|---|
//! | `ops.jsonl` | [`Op`] |
//! | `watches.jsonl` | [`WatchLog`] |
//! | `faults.jsonl` | [`FaultEvent`] |
//! | `status.jsonl` | [`StatusSample`] |
//! | `meta.json` | [`History::meta`] (free-form: seed, backend, …) |

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One client operation: its request, its outcome, and when it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique within the history (the recorder numbers ops from 0).
    pub id: u64,
    /// The client (logical process) that issued it. A client issues one
    /// operation at a time: its next op is called after this one returned.
    pub client: u32,
    /// The member the client sent it to (`"a"`, `"b"`, …), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// When the request was sent (ns since the run start).
    pub call_ns: u64,
    /// When the response (or the error) arrived; `None` if it never returned
    /// (the run ended first). A `None` op is treated as [`Response::Unknown`].
    pub return_ns: Option<u64>,
    /// What was asked.
    pub req: Request,
    /// What came back.
    pub resp: Response,
}

impl Op {
    /// True if the op may have taken effect without us knowing its result:
    /// an `Unknown` response or an op that never returned.
    pub fn is_unknown(&self) -> bool {
        self.return_ns.is_none() || matches!(self.resp, Response::Unknown { .. })
    }

    /// True if the op definitely did not take effect (`Fail`).
    pub fn is_fail(&self) -> bool {
        self.return_ns.is_some() && matches!(self.resp, Response::Fail { .. })
    }

    /// The header revision of a successful response.
    pub fn ok_revision(&self) -> Option<i64> {
        match (&self.resp, self.return_ns) {
            (Response::Ok { revision, .. }, Some(_)) => Some(*revision),
            _ => None,
        }
    }
}

/// A client request (the etcd v3 KV and Lease calls the workloads use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// `Range` of one key.
    Get {
        /// The key.
        key: String,
        /// `serializable: true` reads the member's local state (may be stale).
        #[serde(default)]
        serializable: bool,
        /// Read at this revision; 0 = the latest.
        #[serde(default)]
        revision: i64,
    },
    /// `Range` of every key starting with `prefix`.
    Range {
        /// The key prefix (`range_end` = prefix + 1).
        prefix: String,
        /// See [`Request::Get::serializable`].
        #[serde(default)]
        serializable: bool,
        /// Read at this revision; 0 = the latest.
        #[serde(default)]
        revision: i64,
    },
    /// `Put`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
        /// Attach to this lease; 0 = none.
        #[serde(default)]
        lease: i64,
    },
    /// `DeleteRange` of one key.
    Delete {
        /// The key.
        key: String,
    },
    /// A single-level etcd `Txn`: if all `compares` hold, run `success`,
    /// else `failure`. A CAS is `compares: [mod_revision(k) == R]`,
    /// `success: [put k v]`, `failure: [get k]`.
    Txn {
        /// All must hold for `success` to run.
        compares: Vec<Compare>,
        /// Run if every compare holds.
        success: Vec<TxnOp>,
        /// Run otherwise.
        failure: Vec<TxnOp>,
    },
    /// `LeaseGrant`.
    LeaseGrant {
        /// TTL in seconds.
        ttl: i64,
        /// Requested id; 0 = let the server choose.
        #[serde(default)]
        id: i64,
    },
    /// `LeaseRevoke`: deletes the lease and every key attached to it.
    LeaseRevoke {
        /// The lease.
        id: i64,
    },
    /// `LeaseKeepAlive` (one round trip).
    LeaseKeepAlive {
        /// The lease.
        id: i64,
    },
    /// `LeaseTimeToLive`: a successful response with `ttl == -1` proves the
    /// lease expired (or was revoked), so its keys must be gone.
    LeaseTimeToLive {
        /// The lease.
        id: i64,
    },
    /// A lease's expiry: never sent by a client, but synthesized by the
    /// checkers (see `super::expiry`), one per granted lease, as an op of
    /// unknown outcome. Its effect is a revoke's: every key attached to the
    /// lease is deleted in one revision (the primary proposes a revoke).
    LeaseExpire {
        /// The lease.
        id: i64,
    },
}

impl Request {
    /// True if the request can change the key-value state.
    pub fn is_write(&self) -> bool {
        match self {
            Request::Get { .. }
            | Request::Range { .. }
            | Request::LeaseKeepAlive { .. }
            | Request::LeaseTimeToLive { .. }
            | Request::LeaseGrant { .. } => false,
            Request::Put { .. }
            | Request::Delete { .. }
            | Request::LeaseRevoke { .. }
            | Request::LeaseExpire { .. } => true,
            Request::Txn {
                success, failure, ..
            } => success.iter().chain(failure).any(TxnOp::is_write),
        }
    }

    /// For a `Get` or `Range`: `(serializable, revision)`.
    pub fn read_options(&self) -> Option<(bool, i64)> {
        match self {
            Request::Get {
                serializable,
                revision,
                ..
            }
            | Request::Range {
                serializable,
                revision,
                ..
            } => Some((*serializable, *revision)),
            _ => None,
        }
    }

    /// True for a serializable `Get` or `Range` (served from a member's
    /// local state, maybe stale).
    pub fn is_serializable_read(&self) -> bool {
        self.read_options().is_some_and(|(s, _)| s)
    }

    /// The ops of both branches of a txn; empty for other requests.
    fn txn_ops(&self) -> impl Iterator<Item = &TxnOp> {
        let (success, failure): (&[TxnOp], &[TxnOp]) = match self {
            Request::Txn {
                success, failure, ..
            } => (success, failure),
            _ => (&[], &[]),
        };
        success.iter().chain(failure)
    }

    /// The `(key, value, lease)` of every put the request may do (a txn's
    /// in either branch).
    pub fn puts(&self) -> Vec<(&str, &str, i64)> {
        if let Request::Put { key, value, lease } = self {
            return vec![(key, value, *lease)];
        }
        self.txn_ops()
            .filter_map(|op| match op {
                TxnOp::Put { key, value, lease } => Some((key.as_str(), value.as_str(), *lease)),
                _ => None,
            })
            .collect()
    }

    /// The keys the request may delete by name (a txn's in either branch;
    /// not the keys of a revoked or expired lease).
    pub fn deletes(&self) -> Vec<&str> {
        if let Request::Delete { key } = self {
            return vec![key];
        }
        self.txn_ops()
            .filter_map(|op| match op {
                TxnOp::Delete { key } => Some(key.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// One compare of a [`Request::Txn`]: `target(key) op value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared. A missing key has value `""`, and 0 for
    /// mod/create revision and version (as in etcd).
    pub key: String,
    /// The comparison.
    pub op: CmpOp,
    /// What is compared, and against what.
    pub target: CmpTarget,
}

/// The comparison operator of a [`Compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

/// The left-hand side of a [`Compare`] with its right-hand constant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", content = "value", rename_all = "snake_case")]
pub enum CmpTarget {
    /// The key's value.
    Value(String),
    /// The key's mod_revision.
    ModRevision(i64),
    /// The key's create_revision.
    CreateRevision(i64),
    /// The key's version.
    Version(i64),
    /// The key's lease.
    Lease(i64),
}

/// One operation inside a [`Request::Txn`] branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxnOp {
    /// Read one key.
    Get {
        /// The key.
        key: String,
    },
    /// Write one key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
        /// Attach to this lease; 0 = none.
        #[serde(default)]
        lease: i64,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: String,
    },
}

impl TxnOp {
    /// True for `Put` and `Delete`.
    pub fn is_write(&self) -> bool {
        !matches!(self, TxnOp::Get { .. })
    }

    /// The key the op touches.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Get { key } | TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// The outcome of an [`Op`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// It happened, with this result.
    Ok {
        /// The response header's revision. For a write, the revision the
        /// write created (or the current one, if it changed nothing, e.g. a
        /// txn whose branch has no writes); for a read, the store's revision
        /// when it was served.
        revision: i64,
        /// The call-specific result; must match the request's kind.
        result: OpResult,
    },
    /// It definitely did not take effect (e.g. rejected before it was sent,
    /// or an error that proves it was not applied).
    Fail {
        /// The error, for the report.
        error: String,
    },
    /// It may or may not have taken effect (timeout, connection lost, leader
    /// changed while it was in flight).
    Unknown {
        /// The error, for the report.
        error: String,
    },
}

/// The call-specific part of a successful [`Response`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpResult {
    /// For [`Request::Get`]: the key, or `None` if absent.
    Get {
        /// The key-value, if present.
        kv: Option<KeyValue>,
    },
    /// For [`Request::Range`]: every present key with the prefix, sorted.
    Range {
        /// The key-values.
        kvs: Vec<KeyValue>,
    },
    /// For [`Request::Put`].
    Put,
    /// For [`Request::Delete`].
    Delete {
        /// How many keys were deleted (0 or 1).
        deleted: i64,
    },
    /// For [`Request::Txn`].
    Txn {
        /// True if the compares held and `success` ran.
        succeeded: bool,
        /// One result per op of the branch that ran, in order.
        results: Vec<TxnOpResult>,
    },
    /// For [`Request::LeaseGrant`].
    LeaseGrant {
        /// The granted lease id.
        id: i64,
    },
    /// For [`Request::LeaseRevoke`].
    LeaseRevoke,
    /// For [`Request::LeaseKeepAlive`].
    LeaseKeepAlive {
        /// The renewed TTL (seconds); <= 0 if the lease was not found.
        ttl: i64,
    },
    /// For [`Request::LeaseTimeToLive`].
    LeaseTimeToLive {
        /// Remaining TTL (seconds); -1 if the lease is gone.
        ttl: i64,
    },
}

/// The result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxnOpResult {
    /// For [`TxnOp::Get`].
    Get {
        /// The key-value, if present.
        kv: Option<KeyValue>,
    },
    /// For [`TxnOp::Put`].
    Put,
    /// For [`TxnOp::Delete`].
    Delete {
        /// How many keys were deleted (0 or 1).
        deleted: i64,
    },
}

/// A key-value as etcd reports it (`mvccpb.KeyValue`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty for a delete event).
    #[serde(default)]
    pub value: String,
    /// Revision of the last write of the key.
    pub mod_revision: i64,
    /// Revision of the write that created the key (its current generation).
    #[serde(default)]
    pub create_revision: i64,
    /// Number of writes since creation (1 after the creating put).
    #[serde(default)]
    pub version: i64,
    /// The attached lease; 0 = none.
    #[serde(default)]
    pub lease: i64,
}

/// Everything one watcher received, across reconnects.
///
/// A watcher watches one key (`prefix: false`) or all keys with a prefix.
/// Its log is a sequence of [`WatchRecord`]s in arrival order; each
/// [`WatchRecord::Start`] begins a new watch stream (the first one, or a
/// resume after a disconnect or cancel) from a given revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchLog {
    /// Unique within the history.
    pub watcher: u32,
    /// The watched key, or the prefix if `prefix` is true.
    pub key: String,
    /// Watch every key starting with `key`.
    #[serde(default)]
    pub prefix: bool,
    /// What arrived, in order.
    pub records: Vec<WatchRecord>,
}

/// One entry of a [`WatchLog`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchRecord {
    /// A watch stream was created (`WatchCreateRequest`).
    Start {
        /// When it was requested.
        time_ns: u64,
        /// The member it was sent to, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member: Option<String>,
        /// `start_revision` sent; 0 = "from now" (then the checks start at
        /// the [`WatchRecord::Created`] header revision + 1). A resume sends
        /// last received event revision + 1.
        start_rev: i64,
        /// Whether `progress_notify` was requested.
        #[serde(default)]
        progress_notify: bool,
    },
    /// A `WatchResponse` carrying events (one response = one message; all
    /// events of one revision must arrive in one response).
    Events {
        /// When it arrived.
        time_ns: u64,
        /// The response header's revision.
        header_revision: i64,
        /// The events, in order.
        events: Vec<WatchEvent>,
    },
    /// The `created: true` confirmation of a [`WatchRecord::Start`]. Its
    /// header revision is the store's revision then: with `start_rev: 0` the
    /// stream delivers events from `header_revision + 1`. Not a bookmark.
    Created {
        /// When it arrived.
        time_ns: u64,
        /// The response header's revision.
        header_revision: i64,
    },
    /// A progress notification (requested or periodic): a response with no
    /// events that is not the created confirmation. Bookmark: every event
    /// with revision <= `revision` has been delivered before it.
    Progress {
        /// When it arrived.
        time_ns: u64,
        /// The response header's revision.
        revision: i64,
    },
    /// The stream ended: cancelled by the server (`compact_revision > 0` if
    /// because the start revision was compacted) or broken by an error.
    End {
        /// When it ended.
        time_ns: u64,
        /// etcd's `compact_revision`; 0 if not a compaction cancel.
        #[serde(default)]
        compact_revision: i64,
        /// The error or cancel reason.
        reason: String,
    },
}

/// One event of a watch response (`mvccpb.Event`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value after the event (for a delete: key and mod_revision).
    pub kv: KeyValue,
    /// The previous key-value, if `prev_kv` was requested and it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
}

/// The kind of a [`WatchEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete (including a lease revoke or expiry).
    Delete,
}

/// A fault the nemesis injected (kill, pause, partition, clock skew, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// When it began.
    pub start_ns: u64,
    /// When it was healed; `None` if instantaneous (a kill) or never healed.
    #[serde(default)]
    pub end_ns: Option<u64>,
    /// A short kind: `"kill"`, `"pause"`, `"partition"`, `"restart"`, ….
    /// A `"kill"` is a crash for the revision-monotonicity check.
    pub kind: String,
    /// The members affected.
    #[serde(default)]
    pub members: Vec<String>,
    /// Free text for the report.
    #[serde(default)]
    pub description: String,
}

/// One `Maintenance.Status` (or similar) sample of a member's state.
///
/// The member answered somewhere between `call_ns` and `return_ns`: two
/// samples are only ordered in real time if one returned before the other
/// was called.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSample {
    /// When the request was sent (files written before `return_ns` existed
    /// have one `time_ns`: the call time, of an answer within 5 ms).
    #[serde(alias = "time_ns")]
    pub call_ns: u64,
    /// When the response arrived; 0 in older files (read as `call_ns`, see
    /// [`StatusSample::returned_ns`]).
    #[serde(default)]
    pub return_ns: u64,
    /// The member sampled.
    pub member: String,
    /// Its header revision.
    pub revision: i64,
    /// Its raft term, if known (0 otherwise).
    #[serde(default)]
    pub raft_term: u64,
    /// Its raft applied index, if known (0 otherwise).
    #[serde(default)]
    pub raft_index: u64,
}

impl StatusSample {
    /// When the response arrived (`call_ns` for samples of older files,
    /// which recorded one time).
    pub fn returned_ns(&self) -> u64 {
        self.return_ns.max(self.call_ns)
    }
}

/// A whole run: operations, watch logs, faults and status samples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Client operations, in any order (checkers sort by time).
    pub ops: Vec<Op>,
    /// One log per watcher.
    pub watches: Vec<WatchLog>,
    /// Faults injected by the nemesis.
    pub faults: Vec<FaultEvent>,
    /// Member status samples over time.
    pub status: Vec<StatusSample>,
    /// Free-form facts about the run (seed, backend, workload, …).
    pub meta: BTreeMap<String, String>,
}

impl History {
    /// Writes the history as JSON lines into `dir` (created if missing);
    /// see the module doc for the file names.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        write_lines(&dir.join("ops.jsonl"), &self.ops)?;
        write_lines(&dir.join("watches.jsonl"), &self.watches)?;
        write_lines(&dir.join("faults.jsonl"), &self.faults)?;
        write_lines(&dir.join("status.jsonl"), &self.status)?;
        let meta = serde_json::to_string_pretty(&self.meta)?;
        fs::write(dir.join("meta.json"), meta).context("write meta.json")?;
        Ok(())
    }

    /// Reads a history written by [`History::save`]. Missing files are
    /// empty (so a recorder may write only `ops.jsonl`).
    pub fn load(dir: &Path) -> anyhow::Result<History> {
        let meta_path = dir.join("meta.json");
        let meta = if meta_path.exists() {
            let text = fs::read_to_string(&meta_path).context("read meta.json")?;
            serde_json::from_str(&text).context("parse meta.json")?
        } else {
            BTreeMap::new()
        };
        Ok(History {
            ops: read_lines(&dir.join("ops.jsonl"))?,
            watches: read_lines(&dir.join("watches.jsonl"))?,
            faults: read_lines(&dir.join("faults.jsonl"))?,
            status: read_lines(&dir.join("status.jsonl"))?,
            meta,
        })
    }

    /// The latest time mentioned anywhere in the history (for drawing).
    pub fn end_ns(&self) -> u64 {
        let ops = self.ops.iter().map(|o| o.return_ns.unwrap_or(o.call_ns));
        let faults = self.faults.iter().map(|f| f.end_ns.unwrap_or(f.start_ns));
        let status = self.status.iter().map(StatusSample::returned_ns);
        let watches = self.watches.iter().flat_map(|w| {
            w.records.iter().map(|r| match r {
                WatchRecord::Start { time_ns, .. }
                | WatchRecord::Created { time_ns, .. }
                | WatchRecord::Events { time_ns, .. }
                | WatchRecord::Progress { time_ns, .. }
                | WatchRecord::End { time_ns, .. } => *time_ns,
            })
        });
        ops.chain(faults)
            .chain(status)
            .chain(watches)
            .max()
            .unwrap_or(0)
    }
}

fn write_lines<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let file = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut w, item)?;
        w.write_all(b"\n")?;
    }
    w.flush()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn read_lines<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: bad record", path.display(), i + 1))?;
        out.push(item);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KeyValue {
            key: "k".into(),
            value: "v".into(),
            mod_revision: 2,
            create_revision: 2,
            version: 1,
            lease: 0,
        };
        let h = History {
            ops: vec![Op {
                id: 0,
                client: 1,
                member: Some("a".into()),
                call_ns: 10,
                return_ns: Some(20),
                req: Request::Txn {
                    compares: vec![Compare {
                        key: "k".into(),
                        op: CmpOp::Equal,
                        target: CmpTarget::ModRevision(0),
                    }],
                    success: vec![TxnOp::Put {
                        key: "k".into(),
                        value: "v".into(),
                        lease: 0,
                    }],
                    failure: vec![TxnOp::Get { key: "k".into() }],
                },
                resp: Response::Ok {
                    revision: 2,
                    result: OpResult::Txn {
                        succeeded: true,
                        results: vec![TxnOpResult::Put],
                    },
                },
            }],
            watches: vec![WatchLog {
                watcher: 0,
                key: "k".into(),
                prefix: false,
                records: vec![
                    WatchRecord::Start {
                        time_ns: 1,
                        member: None,
                        start_rev: 1,
                        progress_notify: true,
                    },
                    WatchRecord::Events {
                        time_ns: 21,
                        header_revision: 2,
                        events: vec![WatchEvent {
                            kind: EventKind::Put,
                            kv,
                            prev_kv: None,
                        }],
                    },
                ],
            }],
            faults: vec![FaultEvent {
                start_ns: 5,
                end_ns: Some(15),
                kind: "pause".into(),
                members: vec!["b".into()],
                description: "SIGSTOP b".into(),
            }],
            status: vec![StatusSample {
                call_ns: 25,
                return_ns: 30,
                member: "a".into(),
                revision: 2,
                raft_term: 2,
                raft_index: 9,
            }],
            meta: [("seed".to_string(), "42".to_string())].into(),
        };
        h.save(dir.path()).unwrap();
        let back = History::load(dir.path()).unwrap();
        assert_eq!(h, back);
        assert_eq!(back.end_ns(), 30);
    }

    #[test]
    fn old_status_samples_load() {
        // Before return_ns: one time, the call's.
        let line = r#"{"time_ns":7,"member":"a","revision":3,"raft_term":2,"raft_index":9}"#;
        let s: StatusSample = serde_json::from_str(line).unwrap();
        assert_eq!((s.call_ns, s.return_ns, s.returned_ns()), (7, 0, 7));
    }
}
