//! One retained change, as the store keeps it (etcd's value in the `key`
//! bucket): the key and value in one buffer plus the few numbers a
//! `KeyValue` needs besides its revision.
//!
//! A store holds every retained change, so the record's size is the store's
//! per-change overhead: 64 bytes plus the bytes, against 104 for a whole
//! `KeyValue` with two buffers. The buffer is a `Bytes` so that answers
//! share it, and so that it can live in a mapped snapshot file.

use bytes::Bytes;

use super::revision::Revision;
use crate::proto::mvccpb::KeyValue;

/// A put or a tombstone; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key's bytes, then the value's.
    data: Bytes,
    /// Where the key ends in `data`.
    key_len: u32,
    /// True for a deletion (no value, no numbers).
    tombstone: bool,
    /// The key's `create_revision` (0 for a tombstone).
    create_revision: i64,
    /// The key's `version` (0 for a tombstone).
    version: i64,
    /// The key's lease (0: none).
    lease: i64,
}

/// The fields of a put, for [`Record::put`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutMeta {
    /// `create_revision`.
    pub create_revision: i64,
    /// `version`.
    pub version: i64,
    /// `lease`.
    pub lease: i64,
}

impl Record {
    /// A put of `key` = `value`: both are copied into one buffer.
    pub fn put(key: &[u8], value: &[u8], meta: PutMeta) -> Record {
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        Record {
            data: Bytes::from(data),
            key_len: key.len() as u32,
            tombstone: false,
            create_revision: meta.create_revision,
            version: meta.version,
            lease: meta.lease,
        }
    }

    /// The deletion of `key`.
    pub fn tombstone(key: &[u8]) -> Record {
        Record {
            data: Bytes::copy_from_slice(key),
            key_len: key.len() as u32,
            tombstone: true,
            create_revision: 0,
            version: 0,
            lease: 0,
        }
    }

    /// A record over existing bytes (`data` = key then value; a snapshot's
    /// mapping). `None` if `key_len` is beyond `data`.
    pub fn from_parts(data: Bytes, key_len: u32, tombstone: bool, meta: PutMeta) -> Option<Record> {
        if key_len as usize > data.len() {
            return None;
        }
        Some(Record {
            data,
            key_len,
            tombstone,
            create_revision: meta.create_revision,
            version: meta.version,
            lease: meta.lease,
        })
    }

    /// The same record over other bytes holding the same key and value.
    pub fn with_data(&self, data: Bytes) -> Record {
        Record {
            data,
            ..self.clone()
        }
    }

    /// The key then the value, as one buffer.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Where the key ends in [`Record::data`].
    pub fn key_len(&self) -> u32 {
        self.key_len
    }

    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    /// The value (empty for a tombstone).
    pub fn value(&self) -> &[u8] {
        &self.data[self.key_len as usize..]
    }

    /// True for a deletion.
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }

    /// `create_revision`, `version` and `lease`.
    pub fn meta(&self) -> PutMeta {
        PutMeta {
            create_revision: self.create_revision,
            version: self.version,
            lease: self.lease,
        }
    }

    /// The key-value as clients see it, written at `rev`: key and value
    /// share this record's buffer. A tombstone has only `key` and
    /// `mod_revision`, as in etcd's delete events.
    pub fn kv(&self, rev: Revision) -> KeyValue {
        let k = self.key_len as usize;
        KeyValue {
            key: self.data.slice(..k),
            create_revision: self.create_revision,
            mod_revision: rev.main,
            version: self.version,
            value: self.data.slice(k..),
            lease: self.lease,
        }
    }

    /// Rough bytes this record costs, for the quota and `dbSize`.
    pub fn cost(&self) -> u64 {
        (self.data.len() + 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_and_tombstones_read_back_as_etcd_key_values() {
        let meta = PutMeta {
            create_revision: 3,
            version: 2,
            lease: 9,
        };
        let r = Record::put(b"key", b"value", meta);
        assert_eq!((r.key(), r.value()), (&b"key"[..], &b"value"[..]));
        let kv = r.kv(Revision::new(7, 1));
        assert_eq!(
            kv,
            KeyValue {
                key: Bytes::from_static(b"key"),
                create_revision: 3,
                mod_revision: 7,
                version: 2,
                value: Bytes::from_static(b"value"),
                lease: 9,
            }
        );
        let t = Record::tombstone(b"key");
        assert!(t.is_tombstone());
        assert_eq!(
            t.kv(Revision::new(8, 0)),
            KeyValue {
                key: Bytes::from_static(b"key"),
                mod_revision: 8,
                ..KeyValue::default()
            }
        );
        let empty = Record::put(b"", b"", PutMeta::default());
        assert_eq!((empty.key(), empty.value()), (&b""[..], &b""[..]));
        assert!(Record::from_parts(Bytes::from_static(b"ab"), 3, false, meta).is_none());
        let moved = r.with_data(Bytes::from_static(b"keyvalue"));
        assert_eq!(moved, r);
    }
}
