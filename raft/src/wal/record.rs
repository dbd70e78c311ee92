//! Record framing and payload encoding: one job, bytes in and out, no files.
//!
//! A frame is a 16-byte header, the payload, and zero padding to 8 bytes:
//!
//! ```text
//! 0..4   payload length, u32 LE (never 0, so an all-zero word is "end of log")
//! 4      record type: 1 entry, 2 hard state, 3 snapshot mark
//! 5..8   reserved, zero
//! 8..12  CRC32 (crc32fast) of bytes 0..8, 12..16 and the payload
//! 12..16 batch start: offset of the first record of the write this record was
//!        part of, in 8-byte units from the start of the segment, u32 LE
//! 16..   payload, then 0..=7 zero bytes so the next frame starts 8-aligned
//! ```
//!
//! Entries are rkyv archives of [`EntryRecord`]; hard states (24 bytes) and
//! snapshot marks (16 bytes) are fixed little-endian fields. Decoding treats
//! its input as untrusted: every failure is an `Err(reason)`, never a panic.

use super::{Entry, EntryKind, HardState, SnapshotMark};

/// Bytes of a frame header.
pub(crate) const FRAME_HEADER: usize = 16;
/// Largest payload a frame can carry.
pub(crate) const MAX_PAYLOAD: usize = u32::MAX as usize;

/// Rounds `n` up to a multiple of 8.
pub(crate) const fn align8(n: u64) -> u64 {
    (n + 7) & !7
}

/// Size on disk of a frame with a payload of `payload_len` bytes.
pub(crate) const fn framed_len(payload_len: usize) -> u64 {
    FRAME_HEADER as u64 + align8(payload_len as u64)
}

/// The kind of a record, stored in byte 4 of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// A log entry.
    Entry = 1,
    /// A Raft hard state.
    HardState = 2,
    /// A snapshot mark.
    SnapshotMark = 3,
}

impl RecordType {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordType::Entry),
            2 => Some(RecordType::HardState),
            3 => Some(RecordType::SnapshotMark),
            _ => None,
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Entry(Entry),
    HardState(HardState),
    SnapshotMark(SnapshotMark),
}

/// The rkyv form of an entry on disk. `kind` is a plain byte so that an
/// unknown kind is a decoding error we report, not a validation detail.
/// The payload is borrowed when writing (no copy of the entry) and
/// archived exactly as a `Vec<u8>` would be.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
pub(crate) struct EntryRecord<'a> {
    term: u64,
    index: u64,
    kind: u8,
    #[rkyv(with = rkyv::with::AsOwned)]
    data: std::borrow::Cow<'a, [u8]>,
}

/// A record encoded in the appender's thread, framed later by the writer
/// (the frame header holds the batch start, known only at write time).
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) kind: RecordType,
    pub(crate) payload: Vec<u8>,
}

impl Encoded {
    /// Size of this record once framed.
    pub(crate) fn framed_len(&self) -> u64 {
        framed_len(self.payload.len())
    }
}

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Normal => 0,
        EntryKind::ConfChange => 1,
    }
}

/// Encodes an entry as an rkyv archive (moves the data, no copy of it).
pub(crate) fn encode_entry(entry: &Entry) -> Result<Encoded, String> {
    let rec = EntryRecord {
        term: entry.term,
        index: entry.index,
        kind: kind_byte(entry.kind),
        data: std::borrow::Cow::Borrowed(&entry.data),
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&rec)
        .map_err(|e| format!("encoding entry {}: {e}", rec.index))?;
    if bytes.len() > MAX_PAYLOAD {
        return Err(format!("entry {} is too large to frame", rec.index));
    }
    Ok(Encoded {
        kind: RecordType::Entry,
        payload: bytes.into_vec(),
    })
}

/// Encodes a hard state (term, vote, commit as u64 LE).
pub(crate) fn encode_hard_state(hs: HardState) -> Encoded {
    let mut payload = Vec::with_capacity(24);
    payload.extend_from_slice(&hs.term.to_le_bytes());
    payload.extend_from_slice(&hs.vote.to_le_bytes());
    payload.extend_from_slice(&hs.commit.to_le_bytes());
    Encoded {
        kind: RecordType::HardState,
        payload,
    }
}

/// Encodes a snapshot mark (index, term as u64 LE).
pub(crate) fn encode_snapshot_mark(mark: SnapshotMark) -> Encoded {
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(&mark.index.to_le_bytes());
    payload.extend_from_slice(&mark.term.to_le_bytes());
    Encoded {
        kind: RecordType::SnapshotMark,
        payload,
    }
}

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[0..8]);
    h.update(&header[12..16]);
    h.update(payload);
    h.finalize()
}

/// Appends the frame of `rec` to `buf`. `batch_start` is the segment offset
/// of the first record of this write (8-aligned, representable in u32 units;
/// the writer guarantees both).
pub(crate) fn encode_frame(buf: &mut Vec<u8>, rec: &Encoded, batch_start: u64) {
    debug_assert!(batch_start & 7 == 0 && batch_start / 8 <= u64::from(u32::MAX));
    let mut header = [0u8; FRAME_HEADER];
    header[0..4].copy_from_slice(&(rec.payload.len() as u32).to_le_bytes());
    header[4] = rec.kind as u8;
    header[12..16].copy_from_slice(&((batch_start / 8) as u32).to_le_bytes());
    let c = crc(&header, &rec.payload);
    header[8..12].copy_from_slice(&c.to_le_bytes());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(&rec.payload);
    let pad = align8(rec.payload.len() as u64) as usize - rec.payload.len();
    buf.extend_from_slice(&[0u8; 8][..pad]);
}

/// A frame parsed from disk.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The decoded record.
    pub(crate) record: Record,
    /// Size of the frame including padding.
    pub(crate) len: u64,
    /// Segment offset of the write (batch) the record was part of.
    pub(crate) batch_start: u64,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let b = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Parses the frame at `pos` of a segment image `data`.
///
/// `Ok(None)`: the 8 bytes at `pos` are zero (or fewer than 8 bytes remain and
/// they are all zero): the end of the log. `Err(reason)`: anything that is not
/// a complete, CRC-valid, decodable frame. `min_batch_start` is the smallest
/// legal batch start (the end of the segment header).
pub(crate) fn parse_frame(
    data: &[u8],
    pos: usize,
    min_batch_start: u64,
) -> Result<Option<Frame>, String> {
    let rest = data.get(pos..).unwrap_or(&[]);
    if rest.len() < 8 {
        return if rest.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Err("incomplete record header".into())
        };
    }
    if rest[..8].iter().all(|&b| b == 0) {
        return Ok(None);
    }
    if rest.len() < FRAME_HEADER {
        return Err("incomplete record header".into());
    }
    let header = &rest[..FRAME_HEADER];
    let len = u32_at(header, 0).ok_or("short header")? as usize;
    if len == 0 {
        return Err("zero payload length with non-zero header".into());
    }
    let framed = framed_len(len);
    if framed > rest.len() as u64 {
        return Err(format!(
            "record of {len} bytes runs past the end of the file"
        ));
    }
    let framed_usize = framed as usize;
    let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
    let stored = u32_at(header, 8).ok_or("short header")?;
    if crc(header, payload) != stored {
        return Err("CRC mismatch".into());
    }
    if header[5..8] != [0, 0, 0] {
        return Err("reserved header bytes are not zero".into());
    }
    if rest[FRAME_HEADER + len..framed_usize]
        .iter()
        .any(|&b| b != 0)
    {
        return Err("padding is not zero".into());
    }
    let batch_start = u64::from(u32_at(header, 12).ok_or("short header")?) * 8;
    if batch_start < min_batch_start || batch_start > pos as u64 {
        return Err(format!("batch start {batch_start} is out of range"));
    }
    let kind = RecordType::from_u8(header[4])
        .ok_or_else(|| format!("unknown record type {}", header[4]))?;
    let record = decode_payload(kind, payload)?;
    Ok(Some(Frame {
        record,
        len: framed,
        batch_start,
    }))
}

/// Decodes a payload of the given type. Untrusted input: never panics.
pub(crate) fn decode_payload(kind: RecordType, payload: &[u8]) -> Result<Record, String> {
    match kind {
        RecordType::HardState => {
            if payload.len() != 24 {
                return Err(format!(
                    "hard state of {} bytes, expected 24",
                    payload.len()
                ));
            }
            Ok(Record::HardState(HardState {
                term: u64_at(payload, 0).ok_or("short hard state")?,
                vote: u64_at(payload, 8).ok_or("short hard state")?,
                commit: u64_at(payload, 16).ok_or("short hard state")?,
            }))
        }
        RecordType::SnapshotMark => {
            if payload.len() != 16 {
                return Err(format!(
                    "snapshot mark of {} bytes, expected 16",
                    payload.len()
                ));
            }
            Ok(Record::SnapshotMark(SnapshotMark {
                index: u64_at(payload, 0).ok_or("short snapshot mark")?,
                term: u64_at(payload, 8).ok_or("short snapshot mark")?,
            }))
        }
        RecordType::Entry => decode_entry(payload).map(Record::Entry),
    }
}

/// Decodes an rkyv entry archive with full validation (bytecheck). The input
/// is copied to an aligned buffer first if it is not suitably aligned (it
/// always is when read from a segment: frames are 8-aligned in the file).
pub(crate) fn decode_entry(payload: &[u8]) -> Result<Entry, String> {
    const ALIGN: usize = std::mem::align_of::<ArchivedEntryRecord<'static>>();
    let aligned;
    let bytes = if payload.as_ptr().align_offset(ALIGN) == 0 {
        payload
    } else {
        let mut v = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        v.extend_from_slice(payload);
        aligned = v;
        &aligned[..]
    };
    let archived = rkyv::access::<ArchivedEntryRecord<'static>, rkyv::rancor::Error>(bytes)
        .map_err(|e| format!("invalid entry archive: {e}"))?;
    let kind = match archived.kind {
        0 => EntryKind::Normal,
        1 => EntryKind::ConfChange,
        k => return Err(format!("unknown entry kind {k}")),
    };
    let index = archived.index.to_native();
    if index == 0 {
        return Err("entry with index 0".into());
    }
    Ok(Entry {
        term: archived.term.to_native(),
        index,
        kind,
        data: archived.data.as_slice().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 32;

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            any::<u64>(),
            1..u64::MAX,
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(term, index, conf, data)| Entry {
                term,
                index,
                kind: if conf {
                    EntryKind::ConfChange
                } else {
                    EntryKind::Normal
                },
                data,
            })
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            arb_entry().prop_map(Record::Entry),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(term, vote, commit)| {
                Record::HardState(HardState { term, vote, commit })
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(index, term)| Record::SnapshotMark(SnapshotMark { index, term })),
        ]
    }

    fn encode(r: &Record) -> Encoded {
        match r {
            Record::Entry(e) => encode_entry(e).expect("encodes"),
            Record::HardState(h) => encode_hard_state(*h),
            Record::SnapshotMark(m) => encode_snapshot_mark(*m),
        }
    }

    /// An 8-aligned image: `MIN` zero bytes standing in for the segment header, then frames.
    fn image(records: &[Record]) -> (rkyv::util::AlignedVec<16>, Vec<u64>) {
        let mut buf = vec![0u8; MIN as usize];
        let mut offsets = Vec::new();
        for r in records {
            offsets.push(buf.len() as u64);
            let enc = encode(r);
            let before = buf.len();
            encode_frame(&mut buf, &enc, MIN);
            assert_eq!((buf.len() - before) as u64, enc.framed_len());
        }
        let mut v = rkyv::util::AlignedVec::<16>::new();
        v.extend_from_slice(&buf);
        (v, offsets)
    }

    proptest! {
        #[test]
        fn frames_round_trip(records in proptest::collection::vec(arb_record(), 1..8)) {
            let (img, offsets) = image(&records);
            let mut pos = MIN as usize;
            for (r, off) in records.iter().zip(&offsets) {
                prop_assert_eq!(pos as u64, *off);
                let f = parse_frame(&img, pos, MIN).expect("valid").expect("not end");
                prop_assert_eq!(&f.record, r);
                prop_assert_eq!(f.batch_start, MIN);
                pos += f.len as usize;
            }
            prop_assert!(parse_frame(&img, pos, MIN).expect("end").is_none());
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), pos in 0usize..420) {
            let _ = parse_frame(&bytes, pos, MIN);
            let _ = decode_entry(&bytes);
            let _ = decode_payload(RecordType::HardState, &bytes);
            let _ = decode_payload(RecordType::SnapshotMark, &bytes);
        }

        /// Garbage with a valid-looking header and CRC still must not panic
        /// the rkyv decoder (bytecheck validates the archive).
        #[test]
        fn crc_valid_garbage_entry_never_panics(payload in proptest::collection::vec(any::<u8>(), 1..200)) {
            let enc = Encoded { kind: RecordType::Entry, payload };
            let mut buf = vec![0u8; MIN as usize];
            encode_frame(&mut buf, &enc, MIN);
            let mut img = rkyv::util::AlignedVec::<16>::new();
            img.extend_from_slice(&buf);
            let _ = parse_frame(&img, MIN as usize, MIN);
        }

        #[test]
        fn any_single_bit_flip_is_detected(r in arb_record(), bit in any::<prop::sample::Index>()) {
            let (mut img, _) = image(std::slice::from_ref(&r));
            let nbits = (img.len() - MIN as usize) * 8;
            let b = MIN as usize * 8 + bit.index(nbits);
            img[b / 8] ^= 1 << (b % 8);
            prop_assert!(parse_frame(&img, MIN as usize, MIN).is_err());
        }
    }

    #[test]
    fn misaligned_payload_decodes() {
        let e = Entry {
            term: 3,
            index: 9,
            kind: EntryKind::Normal,
            data: b"hello".to_vec(),
        };
        let enc = encode_entry(&e).expect("encodes");
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&enc.payload);
        assert_eq!(decode_entry(&shifted[1..]).expect("decodes"), e);
    }
}
