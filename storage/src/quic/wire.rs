//! Framing of the QUIC client API: `len u32 LE | tag u8 | payload`.

use super::QuicError;

/// The ALPN protocol ID of the QUIC client API.
pub const ALPN: &[u8] = b"keel-store/1";

/// Tag of a server frame holding a response message.
pub const TAG_OK: u8 = 0;
/// Tag of a server frame holding an error: `code u32 LE | message`.
pub const TAG_ERROR: u8 = 1;

/// What a client frame asks for (its tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    /// `RangeRequest` → `RangeResponse`.
    Range = 1,
    /// `PutRequest` → `PutResponse`.
    Put = 2,
    /// `DeleteRangeRequest` → `DeleteRangeResponse`.
    DeleteRange = 3,
    /// `TxnRequest` → `TxnResponse`.
    Txn = 4,
    /// `CompactionRequest` → `CompactionResponse`.
    Compact = 5,
    /// `LeaseGrantRequest` → `LeaseGrantResponse`.
    LeaseGrant = 6,
    /// `LeaseRevokeRequest` → `LeaseRevokeResponse`.
    LeaseRevoke = 7,
    /// `LeaseTimeToLiveRequest` → `LeaseTimeToLiveResponse`.
    LeaseTimeToLive = 8,
    /// `WatchRequest`s → a stream of `WatchResponse`s.
    Watch = 16,
}

impl Method {
    /// The method of a frame tag, if it is one.
    pub fn from_tag(tag: u8) -> Option<Method> {
        Some(match tag {
            1 => Method::Range,
            2 => Method::Put,
            3 => Method::DeleteRange,
            4 => Method::Txn,
            5 => Method::Compact,
            6 => Method::LeaseGrant,
            7 => Method::LeaseRevoke,
            8 => Method::LeaseTimeToLive,
            16 => Method::Watch,
            _ => return None,
        })
    }
}

/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;

/// Encodes one frame.
pub(crate) fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN_BYTES + 1 + payload.len());
    // Payloads are limited far below 4 GiB by both ends' frame limits.
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(tag);
    out.extend_from_slice(payload);
    out
}

/// Encodes an error frame for `status`.
pub(crate) fn error_frame(status: &tonic::Status) -> Vec<u8> {
    let mut payload = (status.code() as i32 as u32).to_le_bytes().to_vec();
    payload.extend_from_slice(status.message().as_bytes());
    frame(TAG_ERROR, &payload)
}

/// Decodes an error frame's payload.
pub(crate) fn decode_error(payload: &[u8]) -> QuicError {
    let Some((code, message)) = payload.split_first_chunk::<4>() else {
        return QuicError::Protocol("error frame shorter than its code".into());
    };
    let code = tonic::Code::from_i32(u32::from_le_bytes(*code) as i32);
    QuicError::Status(tonic::Status::new(
        code,
        String::from_utf8_lossy(message).into_owned(),
    ))
}

/// Writes one frame.
pub(crate) async fn write_frame(
    send: &mut quinn::SendStream,
    tag: u8,
    payload: &[u8],
) -> Result<(), QuicError> {
    send.write_all(&frame(tag, payload))
        .await
        .map_err(|e| QuicError::Stream(e.to_string()))
}

/// Reads one frame of at most `max` bytes (tag included): `None` when the
/// stream ended cleanly before it.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<(u8, bytes::Bytes)>, QuicError> {
    let mut len = [0u8; LEN_BYTES];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(QuicError::Protocol(format!(
                "stream ended inside a frame's length ({n} of {LEN_BYTES} bytes)"
            )))
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(QuicError::Stream(e.to_string())),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 {
        return Err(QuicError::Protocol("empty frame (no tag)".into()));
    }
    if len > max {
        return Err(QuicError::FrameTooLarge { len, max });
    }
    // Tag and payload in one read; the tag is split off without a copy of
    // the payload.
    let mut buf = vec![0u8; len];
    match recv.read_exact(&mut buf).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(QuicError::Protocol(format!(
                "stream ended inside a frame ({n} of {len} bytes)"
            )))
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(QuicError::Stream(e.to_string())),
    }
    let tag = buf[0];
    let body = bytes::Bytes::from(buf).slice(1..);
    Ok(Some((tag, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_length_tag_and_payload() {
        let f = frame(Method::Txn as u8, b"abc");
        assert_eq!(f, vec![4, 0, 0, 0, 4, b'a', b'b', b'c']);
        assert_eq!(Method::from_tag(4), Some(Method::Txn));
        assert_eq!(Method::from_tag(200), None);
    }

    #[test]
    fn error_frames_round_trip() {
        let f = error_frame(&tonic::Status::out_of_range(
            "mvcc: required revision has been compacted",
        ));
        assert_eq!(f[4], TAG_ERROR);
        match decode_error(&f[5..]) {
            QuicError::Status(s) => {
                assert_eq!(s.code(), tonic::Code::OutOfRange);
                assert!(s.message().contains("compacted"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode_error(&[1, 2]), QuicError::Protocol(_)));
    }
}
