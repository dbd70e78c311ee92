//! The in-memory Raft log: the entries after the latest snapshot, and the
//! marks that move along it.
//!
//! ```text
//!   offset (snapshot)   applied <= applied_handed <= min(committed, persisted)
//!        |                                            persisted <= handed <= last
//!  ------+----+----+----+----+----+----+----+----+----+
//!        | offset+1 ...                           last |
//! ```
//!
//! - `handed`: entries up to here were handed to the driver to persist (in a
//!   Ready); `persisted`: the driver reported them durable.
//! - `applied_handed`: committed entries up to here were handed to the
//!   driver to apply; `applied`: the driver reported them applied.
//!
//! A conflicting append truncates the log and pulls `handed` and
//! `persisted` back; committed entries are never truncated.

use super::Entry;

#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    /// Index of the snapshot the log starts after (0: none).
    pub(crate) offset: u64,
    /// Term of the entry at `offset`.
    pub(crate) offset_term: u64,
    /// Entries `offset + 1 ..= last_index()`.
    pub(crate) entries: Vec<Entry>,
    pub(crate) committed: u64,
    pub(crate) persisted: u64,
    pub(crate) handed: u64,
    pub(crate) applied: u64,
    pub(crate) applied_handed: u64,
}

impl RaftLog {
    pub(crate) fn first_index(&self) -> u64 {
        self.offset + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.offset + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The term of the entry at `i`; `None` if compacted away or beyond the log.
    pub(crate) fn term(&self, i: u64) -> Option<u64> {
        if i == self.offset {
            return Some(self.offset_term);
        }
        if i < self.offset || i > self.last_index() {
            return None;
        }
        Some(self.entries[(i - self.offset - 1) as usize].term)
    }

    pub(crate) fn match_term(&self, i: u64, t: u64) -> bool {
        self.term(i) == Some(t)
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The entry at `i`, if in memory.
    pub(crate) fn entry(&self, i: u64) -> Option<&Entry> {
        if i <= self.offset || i > self.last_index() {
            return None;
        }
        self.entries.get((i - self.offset - 1) as usize)
    }

    /// Entries `lo..hi` (hi exclusive), at most `max_size` payload bytes
    /// (at least one entry) and `max_count` entries (0: no limit). `None` if
    /// `lo` was compacted away.
    pub(crate) fn slice(
        &self,
        lo: u64,
        hi: u64,
        max_size: u64,
        max_count: usize,
    ) -> Option<Vec<Entry>> {
        if lo <= self.offset {
            return None;
        }
        let hi = hi.min(self.last_index() + 1);
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut i = lo;
        while i < hi {
            let e = &self.entries[(i - self.offset - 1) as usize];
            size += e.data.len() as u64 + 24;
            if !out.is_empty() && (size > max_size || (max_count > 0 && out.len() >= max_count)) {
                break;
            }
            out.push(e.clone());
            i += 1;
        }
        Some(out)
    }

    /// The largest index <= `index` whose term is <= `term` (etcd's
    /// `findConflictByTerm`), used to skip a whole term of mismatches at once.
    pub(crate) fn find_conflict_by_term(&self, index: u64, term: u64) -> u64 {
        let mut i = index.min(self.last_index());
        while i > self.offset {
            match self.term(i) {
                Some(t) if t <= term => return i,
                _ => i -= 1,
            }
        }
        i
    }

    /// Appends entries from a leader following (`prev_index`, `prev_term`).
    /// Returns the index of the last new entry, or `None` if the log does not
    /// match at `prev_index` or the entries would overwrite committed ones.
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: &[Entry],
    ) -> Option<u64> {
        if !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        // First entry that is not already in the log with the same term.
        let mut conflict = None;
        for (k, e) in entries.iter().enumerate() {
            if !self.match_term(e.index, e.term) {
                conflict = Some(k);
                break;
            }
        }
        if let Some(k) = conflict {
            let first = entries[k].index;
            if first <= self.committed {
                // A leader never asks us to overwrite committed entries:
                // refuse the message rather than break the log.
                return None;
            }
            self.truncate_and_append(&entries[k..]);
        }
        Some(last_new)
    }

    /// Appends `entries` (contiguous, starting at most at `last_index() + 1`
    /// and after `committed`), dropping whatever the log held from their
    /// first index on.
    pub(crate) fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        debug_assert!(first > self.offset && first <= self.last_index() + 1);
        let keep = (first - self.offset - 1) as usize;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(first - 1);
        self.handed = self.handed.min(first - 1);
        self.entries.extend_from_slice(entries);
    }

    pub(crate) fn commit_to(&mut self, i: u64) -> bool {
        let i = i.min(self.last_index());
        if i > self.committed {
            self.committed = i;
            true
        } else {
            false
        }
    }

    /// Entries not yet handed to the driver to persist.
    pub(crate) fn unhanded(&self) -> &[Entry] {
        let from = (self.handed.max(self.offset) - self.offset) as usize;
        &self.entries[from.min(self.entries.len())..]
    }

    /// Upper bound of the committed entries that may be handed out to apply.
    pub(crate) fn applicable_to(&self) -> u64 {
        self.committed.min(self.persisted)
    }

    /// Drops the log and restarts it after a snapshot.
    pub(crate) fn restore(&mut self, index: u64, term: u64) {
        self.offset = index;
        self.offset_term = term;
        self.entries.clear();
        self.committed = index;
        self.handed = index;
        // Not durable until the driver installs it; `persisted` stays below.
        self.persisted = self.persisted.min(index);
    }

    /// Drops entries `<= index` (which must be in the log).
    pub(crate) fn compact(&mut self, index: u64) {
        if let Some(t) = self.term(index) {
            let n = (index - self.offset) as usize;
            self.entries.drain(..n);
            self.offset = index;
            self.offset_term = t;
        }
    }
}
