//! An ordered map from key bytes to `V` kept as a list of sorted chunks: the
//! key index's container.
//!
//! std's `BTreeMap` leaves its leaves about half full when keys arrive in
//! order (the common case: sequential or time-ordered keys), which costs
//! about 90 bytes per key here. Chunks that fill up completely when keys
//! arrive in order, and split in half otherwise, keep the same O(log n)
//! lookups with a fraction of the overhead. A chunk is found by binary
//! search over the chunks' last keys, then a key by binary search inside it.
//!
//! Chunks are shared (`Arc`) between clones and copied on write, so a clone
//! (a snapshot of the store) costs a reference per chunk.

use std::ops::Bound;
use std::sync::Arc;

use smallvec::SmallVec;

/// Entries per chunk: an insert moves at most this many entries.
const CHUNK: usize = 128;

/// A key as the map holds it: up to 16 bytes inline (24 bytes in all, no
/// allocation), longer keys in one exact-size allocation. The map owns its
/// keys instead of sharing the writer's buffers, so a key costs no shared
/// buffer header and never pins a request's memory.
pub type Key = SmallVec<[u8; 16]>;

/// The ordered map. See the module docs.
#[derive(Debug, Clone)]
pub struct ChunkMap<V> {
    chunks: Vec<Arc<Vec<(Key, V)>>>,
    /// The last key of each chunk: finding a chunk searches this one array
    /// instead of following two pointers into every chunk probed.
    lasts: Vec<Key>,
    len: usize,
}

impl<V> Default for ChunkMap<V> {
    fn default() -> Self {
        ChunkMap {
            chunks: Vec::new(),
            lasts: Vec::new(),
            len: 0,
        }
    }
}

impl<V: Clone> ChunkMap<V> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `key` or would: the first whose last key is
    /// `>= key`, else the last chunk.
    fn chunk_for(&self, key: &[u8]) -> usize {
        let ci = self.lasts.partition_point(|k| k.as_slice() < key);
        ci.min(self.chunks.len().saturating_sub(1))
    }

    /// Brings `lasts` up to date for chunks `from..=to` (clamped), after
    /// their contents changed.
    fn refresh_lasts(&mut self, from: usize, to: usize) {
        let to = to.min(self.chunks.len().saturating_sub(1));
        for ci in from..=to {
            if let (Some((k, _)), Some(last)) = (self.chunks[ci].last(), self.lasts.get_mut(ci)) {
                if last != k {
                    last.clone_from(k);
                }
            }
        }
    }

    fn find(&self, key: &[u8]) -> Option<(usize, usize)> {
        let ci = self.chunk_for(key);
        let c = self.chunks.get(ci)?;
        c.binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| (ci, i))
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.find(key).map(|(ci, i)| &self.chunks[ci][i].1)
    }

    /// The value of `key`, mutably.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let (ci, i) = self.find(key)?;
        Arc::make_mut(&mut self.chunks[ci])
            .get_mut(i)
            .map(|e| &mut e.1)
    }

    /// Inserts `key` = `value` (replacing an existing value).
    pub fn insert(&mut self, key: &[u8], value: V) {
        let key_in = key;
        let key = || Key::from_slice(key_in);
        if self.chunks.is_empty() {
            let mut c = Vec::with_capacity(CHUNK);
            c.push((key(), value));
            self.chunks.push(Arc::new(c));
            self.lasts.push(key());
            self.len = 1;
            return;
        }
        let ci = self.chunk_for(key_in);
        let last_chunk = ci + 1 == self.chunks.len();
        let c = Arc::make_mut(&mut self.chunks[ci]);
        let i = match c.binary_search_by(|(k, _)| k.as_slice().cmp(key_in)) {
            Ok(i) => {
                c[i].1 = value;
                return;
            }
            Err(i) => i,
        };
        self.len += 1;
        if c.len() < CHUNK {
            c.insert(i, (key(), value));
            if i + 1 == c.len() {
                self.refresh_lasts(ci, ci);
            }
            return;
        }
        if last_chunk && i == c.len() {
            // Keys arriving in order: leave this chunk full.
            let mut n = Vec::with_capacity(CHUNK);
            n.push((key(), value));
            self.chunks.push(Arc::new(n));
            self.lasts.push(key());
            return;
        }
        // Full: pass an entry to a neighbour with room, so that chunks stay
        // full when keys arrive nearly in order (many writers with
        // increasing keys) instead of leaving half-empty chunks behind.
        let next_has_room = self.chunks.get(ci + 1).is_some_and(|n| n.len() < CHUNK);
        let prev_has_room = ci > 0 && self.chunks[ci - 1].len() < CHUNK;
        if next_has_room {
            let (head, tail) = self.chunks.split_at_mut(ci + 1);
            let (c, next) = (Arc::make_mut(&mut head[ci]), Arc::make_mut(&mut tail[0]));
            if i == c.len() {
                next.insert(0, (key(), value));
            } else if let Some(moved) = c.pop() {
                next.insert(0, moved);
                c.insert(i, (key(), value));
            }
        } else if prev_has_room {
            let (head, tail) = self.chunks.split_at_mut(ci);
            let (prev, c) = (
                Arc::make_mut(&mut head[ci - 1]),
                Arc::make_mut(&mut tail[0]),
            );
            if i == 0 {
                prev.push((key(), value));
            } else {
                prev.push(c.remove(0));
                c.insert(i - 1, (key(), value));
            }
        } else {
            // Split: the last chunk at the new key (what follows it is
            // where keys still arrive), any other in half.
            let at = if last_chunk {
                i.max(CHUNK / 2)
            } else {
                CHUNK / 2
            };
            let c = Arc::make_mut(&mut self.chunks[ci]);
            let mut tail = Vec::with_capacity(CHUNK);
            tail.extend(c.drain(at..));
            if i <= c.len() {
                c.insert(i, (key(), value));
            } else {
                tail.insert(i - at, (key(), value));
            }
            self.chunks.insert(ci + 1, Arc::new(tail));
            self.lasts.insert(ci + 1, Key::new());
        }
        // A neighbour took or gave an entry, or the chunk split.
        self.refresh_lasts(ci.saturating_sub(1), ci + 1);
    }

    /// The position of the first entry whose key is inside `start`.
    fn lower(&self, start: Bound<&[u8]>) -> (usize, usize) {
        let (key, inclusive) = match start {
            Bound::Unbounded => return (0, 0),
            Bound::Included(k) => (k, true),
            Bound::Excluded(k) => (k, false),
        };
        let ci = self.lasts.partition_point(|k| k.as_slice() < key);
        let Some(c) = self.chunks.get(ci) else {
            return (ci, 0);
        };
        let i = c.partition_point(|(k, _)| {
            if inclusive {
                k.as_ref() < key
            } else {
                k.as_ref() <= key
            }
        });
        (ci, i)
    }

    /// Entries with keys within `(start, end)`, in key order.
    pub fn range<'a>(
        &'a self,
        (start, end): (Bound<&'a [u8]>, Bound<&'a [u8]>),
    ) -> impl Iterator<Item = (&'a [u8], &'a V)> + 'a {
        let (ci, i) = self.lower(start);
        self.chunks
            .iter()
            .skip(ci)
            .enumerate()
            .flat_map(move |(n, c)| c[if n == 0 { i.min(c.len()) } else { 0 }..].iter())
            .take_while(move |(k, _)| match end {
                Bound::Unbounded => true,
                Bound::Included(e) => k.as_ref() <= e,
                Bound::Excluded(e) => k.as_ref() < e,
            })
            .map(|(k, v)| (k.as_slice(), v))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .map(|(k, v)| (k.as_slice(), v))
    }

    /// Keeps the entries `f` says yes to (it may change them), dropping
    /// chunks left empty.
    pub fn retain(&mut self, mut f: impl FnMut(&[u8], &mut V) -> bool) {
        for c in &mut self.chunks {
            Arc::make_mut(c).retain_mut(|(k, v)| f(k, v));
        }
        self.chunks.retain(|c| !c.is_empty());
        self.len = self.chunks.iter().map(|c| c.len()).sum();
        self.lasts = self
            .chunks
            .iter()
            .filter_map(|c| c.last().map(|(k, _)| k.clone()))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    use bytes::Bytes;

    fn key(n: u16) -> Bytes {
        Bytes::from(format!("{n:05}").into_bytes())
    }

    fn check(m: &ChunkMap<u32>, model: &BTreeMap<Bytes, u32>, probes: &[u16]) {
        check_chunks(m);
        assert_eq!(m.len(), model.len());
        assert!(m
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), *v))
            .eq(model.iter().map(|(k, v)| (k.clone(), *v))));
        for &p in probes {
            let k = key(p);
            assert_eq!(m.get(&k), model.get(&k));
            let hi = key(p.saturating_add(37));
            for b in [
                (Bound::Included(k.as_ref()), Bound::Excluded(hi.as_ref())),
                (Bound::Excluded(k.as_ref()), Bound::Included(hi.as_ref())),
                (Bound::Included(k.as_ref()), Bound::Unbounded),
                (Bound::Unbounded, Bound::Excluded(k.as_ref())),
            ] {
                let got: Vec<u32> = m.range(b).map(|(_, v)| *v).collect();
                let want: Vec<u32> = if matches!((b.0, b.1), (Bound::Excluded(a), Bound::Included(z)) if a > z)
                {
                    Vec::new()
                } else {
                    model.range::<[u8], _>(b).map(|(_, v)| *v).collect()
                };
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn sequential_inserts_fill_chunks() {
        let mut m = ChunkMap::default();
        for n in 0..(CHUNK as u16 * 5) {
            m.insert(&key(n), u32::from(n));
        }
        assert_eq!(m.chunks.len(), 5);
        assert!(m.chunks.iter().all(|c| c.len() == CHUNK));
        // A clone shares every chunk; writing to one copies only that one.
        let mut copy = m.clone();
        assert!(m
            .chunks
            .iter()
            .zip(&copy.chunks)
            .all(|(a, b)| Arc::ptr_eq(a, b)));
        if let Some(v) = copy.get_mut(&key(3)) {
            *v = 99;
        }
        assert_eq!(m.get(&key(3)), Some(&3));
        assert_eq!(copy.get(&key(3)), Some(&99));
        let shared = m
            .chunks
            .iter()
            .zip(&copy.chunks)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, 4);
    }

    /// Keys that arrive nearly in order (writers with increasing keys, each
    /// a little late: here every key up to 200 places behind its turn)
    /// still fill the chunks: at least 85% on average (splitting in half
    /// left them about 60% full in a million-key load from 200 clients).
    #[test]
    fn nearly_ordered_inserts_fill_chunks() {
        let n = CHUNK as u16 * 40;
        let mut order: Vec<u16> = (0..n).collect();
        let mut rng = 0x2545_f491_u32;
        for w in order.chunks_mut(200) {
            // A deterministic shuffle within each window.
            for i in (1..w.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                w.swap(i, rng as usize % (i + 1));
            }
        }
        let mut m = ChunkMap::default();
        let mut model = BTreeMap::new();
        for k in order {
            m.insert(&key(k), u32::from(k));
            model.insert(key(k), u32::from(k));
        }
        check(&m, &model, &[0, 1, 127, 128, 129, 2000, n - 1]);
        assert!(
            m.chunks.len() * CHUNK * 85 <= usize::from(n) * 100,
            "chunk sizes {:?}",
            m.chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
    }

    /// The chunks' own invariants: none empty, none over [`CHUNK`], keys
    /// strictly increasing within and across chunks, `len` their sum.
    fn check_chunks(m: &ChunkMap<u32>) {
        assert!(m.chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
        assert_eq!(m.len(), m.chunks.iter().map(|c| c.len()).sum::<usize>());
        let keys: Vec<&[u8]> = m.iter().map(|(k, _)| k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys out of order");
        let lasts: Vec<&Key> = m
            .chunks
            .iter()
            .filter_map(|c| c.last().map(|(k, _)| k))
            .collect();
        assert_eq!(
            m.lasts.iter().collect::<Vec<_>>(),
            lasts,
            "lasts out of date"
        );
    }

    /// One step of [`clones_keep_their_state`].
    #[derive(Debug, Clone)]
    enum Op {
        /// The next `n` keys of the increasing sequence, each arriving up
        /// to 200 places late (many writers with increasing keys).
        NearlyOrdered { n: usize, seed: u64 },
        /// One key anywhere among those the sequence has reached (the
        /// `u16` scaled to them), mostly inside full chunks.
        Insert(u16, u32),
        /// Removes one key (present or not), placed as for `Insert`
        /// (`retain`: it copies every chunk it shares with a clone).
        Remove(u16),
        /// Removes every entry whose value is `v` modulo 7.
        RemoveMod(u32),
        /// Changes a value in place (placed as for `Insert`).
        Update(u16, u32),
        /// Takes a clone (a snapshot), then keeps writing to the original.
        Clone,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1usize..500, any::<u64>()).prop_map(|(n, seed)| Op::NearlyOrdered { n, seed }),
            6 => (any::<u16>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            1 => any::<u16>().prop_map(Op::Remove),
            1 => any::<u32>().prop_map(Op::RemoveMod),
            2 => (any::<u16>(), any::<u32>()).prop_map(|(k, v)| Op::Update(k, v)),
            5 => Just(Op::Clone),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]

        /// Clones share chunks with the original (copy on write): whatever
        /// the original does after (fills chunks in order, passes entries
        /// to a neighbour, splits, removes, updates in place), each clone
        /// still holds exactly the state it was taken at, and the original
        /// the final one. Compared with a `BTreeMap` model: iteration
        /// order, `len`, `get` and ranges.
        #[test]
        fn clones_keep_their_state(ops in proptest::collection::vec(op(), 1..100)) {
            let mut m = ChunkMap::default();
            let mut model: BTreeMap<Bytes, u32> = BTreeMap::new();
            let mut clones: Vec<(ChunkMap<u32>, BTreeMap<Bytes, u32>)> = Vec::new();
            let mut probes: Vec<u16> = vec![0, 1, 3, 128 * 3, 24_000];
            // The increasing sequence: every third key, so that random
            // inserts land between its keys.
            let mut next_seq: u16 = 0;
            // `r` scaled to the keys the sequence has reached (and a few
            // beyond).
            let at = |r: u16, next_seq: u16| {
                u16::try_from(u32::from(r) * (u32::from(next_seq) + 300) / 65_536).unwrap_or(u16::MAX)
            };
            for op in ops {
                match op {
                    Op::NearlyOrdered { n, seed } => {
                        let mut rng = seed | 1;
                        let mut arrivals: Vec<(usize, u16)> = (0..n)
                            .map_while(|i| {
                                let k = next_seq.checked_add(u16::try_from(i).ok()?.checked_mul(3)?)?;
                                rng ^= rng << 13;
                                rng ^= rng >> 7;
                                rng ^= rng << 17;
                                Some((i + (rng % 201) as usize, k))
                            })
                            .collect();
                        // Stable: a key is overtaken only by later ones.
                        arrivals.sort_by_key(|&(at, _)| at);
                        let count = arrivals.len();
                        for (_, k) in arrivals {
                            m.insert(&key(k), u32::from(k));
                            model.insert(key(k), u32::from(k));
                        }
                        probes.push(next_seq);
                        next_seq = next_seq.saturating_add(u16::try_from(count * 3).unwrap_or(u16::MAX));
                    }
                    Op::Insert(k, v) => {
                        let k = at(k, next_seq);
                        m.insert(&key(k), v);
                        model.insert(key(k), v);
                        probes.push(k);
                    }
                    Op::Remove(k) => {
                        let k = at(k, next_seq);
                        let gone = key(k);
                        m.retain(|kk, _| kk != gone.as_ref());
                        model.remove(&gone);
                        probes.push(k);
                    }
                    Op::RemoveMod(v) => {
                        m.retain(|_, x| *x % 7 != v % 7);
                        model.retain(|_, x| *x % 7 != v % 7);
                    }
                    Op::Update(k, v) => {
                        let k = at(k, next_seq);
                        if let Some(x) = m.get_mut(&key(k)) { *x = v; }
                        if let Some(x) = model.get_mut(key(k).as_ref()) { *x = v; }
                        probes.push(k);
                    }
                    Op::Clone => clones.push((m.clone(), model.clone())),
                }
            }
            // Some 20 probes spread over the keys touched.
            probes.sort_unstable();
            probes.dedup();
            let step = (probes.len() / 20).max(1);
            let probes: Vec<u16> = probes.into_iter().step_by(step).collect();
            check_chunks(&m);
            check(&m, &model, &probes);
            for (clone, then) in &clones {
                check_chunks(clone);
                check(clone, then, &probes);
            }
        }
    }

    proptest! {
        #[test]
        fn matches_a_btreemap(ops in proptest::collection::vec((0u8..4, 0u16..2000, any::<u32>()), 1..3000)) {
            let mut m = ChunkMap::default();
            let mut model = BTreeMap::new();
            let mut probes = Vec::new();
            for (op, k, v) in ops {
                match op {
                    0 | 1 => { m.insert(&key(k), v); model.insert(key(k), v); }
                    2 => {
                        if let Some(x) = m.get_mut(&key(k)) { *x = v; }
                        if let Some(x) = model.get_mut(key(k).as_ref()) { *x = v; }
                    }
                    _ => {
                        m.retain(|_, x| *x % 7 != v % 7);
                        model.retain(|_, x| *x % 7 != v % 7);
                    }
                }
                probes.push(k);
            }
            probes.truncate(50);
            check(&m, &model, &probes);
        }
    }
}
