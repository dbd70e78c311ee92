//! The bytes on a peer stream: the hello that opens every stream, the
//! length-prefixed message frames, and the snapshot envelope.
//!
//! ```text
//! hello    = magic "KRFT" | version u8 (=1) | kind u8 | from u64 LE | to u64 LE      (22 bytes)
//! messages = hello(kind=1) { len u32 LE | payload[len] }*                            (uni stream)
//! snapshot = hello(kind=2) | meta_len u32 LE | meta | file_len u64 LE | file bytes
//!            | crc32 u32 LE (of the file bytes)                                      (bi stream, →)
//!          ← status u8 (0 = stored, 1 = refused)                                     (bi stream, ←)
//! ```

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// First bytes of every stream.
pub(crate) const MAGIC: [u8; 4] = *b"KRFT";
/// Wire version; bumped on any incompatible change.
pub(crate) const VERSION: u8 = 1;
/// Hello length in bytes.
pub(crate) const HELLO_LEN: usize = 22;
/// Stream kind: long-lived uni stream of message frames.
pub(crate) const KIND_MESSAGES: u8 = 1;
/// Stream kind: one bi stream per snapshot.
pub(crate) const KIND_SNAPSHOT: u8 = 2;
/// Snapshot status byte: the file is stored and handed to the receiver.
pub(crate) const SNAPSHOT_STORED: u8 = 0;
/// Snapshot status byte: the receiver refused or failed to store the file.
pub(crate) const SNAPSHOT_REFUSED: u8 = 1;

/// Application close codes (QUIC `CONNECTION_CLOSE` error codes).
pub(crate) mod close {
    /// Orderly shutdown or peer removal.
    pub(crate) const SHUTDOWN: u32 = 0;
    /// Malformed hello, oversized frame, truncated frame, wrong ALPN.
    pub(crate) const PROTOCOL: u32 = 1;
    /// Well-formed hello from a member that is not (or no longer) a peer.
    pub(crate) const UNKNOWN_PEER: u32 = 2;
}

/// The decoded hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub kind: u8,
    pub from: u64,
    pub to: u64,
}

impl Hello {
    /// Encodes the hello.
    pub(crate) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind;
        b[6..14].copy_from_slice(&self.from.to_le_bytes());
        b[14..22].copy_from_slice(&self.to.to_le_bytes());
        b
    }

    /// Decodes a hello; `None` when the magic, version or kind is wrong.
    pub(crate) fn decode(b: &[u8; HELLO_LEN]) -> Option<Hello> {
        if b[..4] != MAGIC || b[4] != VERSION {
            return None;
        }
        let kind = b[5];
        if kind != KIND_MESSAGES && kind != KIND_SNAPSHOT {
            return None;
        }
        let mut from = [0u8; 8];
        from.copy_from_slice(&b[6..14]);
        let mut to = [0u8; 8];
        to.copy_from_slice(&b[14..22]);
        Some(Hello {
            kind,
            from: u64::from_le_bytes(from),
            to: u64::from_le_bytes(to),
        })
    }
}

/// Appends one message frame (`len u32 LE | payload`) to `buf`. The caller
/// has checked `payload.len() <= u32::MAX`.
pub(crate) fn push_frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Why reading a hello failed.
#[derive(Debug)]
pub(crate) enum HelloError {
    /// Not a hello (bad magic, version or kind).
    Malformed,
    /// The stream ended or broke before 22 bytes arrived.
    Io(std::io::Error),
    /// Nothing arrived within the deadline.
    Timeout,
}

/// Reads and decodes the hello at the start of a stream, within `deadline`.
pub(crate) async fn read_hello<R: AsyncRead + Unpin>(
    r: &mut R,
    deadline: Duration,
) -> Result<Hello, HelloError> {
    let mut b = [0u8; HELLO_LEN];
    match tokio::time::timeout(deadline, r.read_exact(&mut b)).await {
        Err(_) => Err(HelloError::Timeout),
        Ok(Err(e)) => Err(HelloError::Io(e)),
        Ok(Ok(_)) => Hello::decode(&b).ok_or(HelloError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_garbage() {
        let h = Hello {
            kind: KIND_SNAPSHOT,
            from: 7,
            to: u64::MAX,
        };
        assert_eq!(Hello::decode(&h.encode()), Some(h));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert_eq!(Hello::decode(&bad), None);
        let mut bad = h.encode();
        bad[4] = 2;
        assert_eq!(Hello::decode(&bad), None);
        let mut bad = h.encode();
        bad[5] = 9;
        assert_eq!(Hello::decode(&bad), None);
    }

    #[test]
    fn frame_is_length_prefixed() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"abc");
        push_frame(&mut buf, b"");
        assert_eq!(buf, [3, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0]);
    }
}
