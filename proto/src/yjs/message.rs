//! The y-websocket wire protocol (npm `y-websocket` provider + `y-protocols`).
//!
//! Every websocket binary frame is one message:
//!
//! ```text
//! varuint messageType
//!   0 sync:       varuint syncType
//!                   0 SyncStep1  var bytes: encoded state vector
//!                   1 SyncStep2  var bytes: update v1
//!                   2 Update     var bytes: update v1
//!   1 awareness:  var bytes: awareness update
//!   2 auth:       varuint authType
//!                   0 PermissionDenied  var string: reason
//!   3 query awareness: (nothing)
//! ```
//!
//! Decoding here is purely structural: the update / state-vector / awareness
//! payloads are returned as borrowed slices. Use [`super::validate`] before
//! handing any payload to a CRDT implementation.

use super::lib0::{Decoder, Encoder, WireError};

/// Top-level message type: sync protocol (`y-protocols/sync`).
pub const MESSAGE_SYNC: u64 = 0;
/// Top-level message type: awareness update (`y-protocols/awareness`).
pub const MESSAGE_AWARENESS: u64 = 1;
/// Top-level message type: auth (`y-protocols/auth`).
pub const MESSAGE_AUTH: u64 = 2;
/// Top-level message type: ask peers to send their awareness state.
pub const MESSAGE_QUERY_AWARENESS: u64 = 3;

/// Sync sub-type: "here is my state vector, send me what I miss".
pub const SYNC_STEP1: u64 = 0;
/// Sync sub-type: "here is what you miss" (reply to step 1).
pub const SYNC_STEP2: u64 = 1;
/// Sync sub-type: incremental document update.
pub const SYNC_UPDATE: u64 = 2;

/// Auth sub-type: the server refused access.
pub const AUTH_PERMISSION_DENIED: u64 = 0;

/// One decoded y-websocket message. Payloads borrow from the input frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Sync step 1: the sender's encoded state vector.
    SyncStep1(&'a [u8]),
    /// Sync step 2: an update v1 with everything the peer was missing.
    SyncStep2(&'a [u8]),
    /// An incremental update v1.
    Update(&'a [u8]),
    /// An awareness update (see [`decode_awareness_update`]).
    Awareness(&'a [u8]),
    /// Auth: permission denied, with a human-readable reason.
    AuthPermissionDenied(&'a str),
    /// Request for all peers' awareness states.
    QueryAwareness,
}

impl<'a> Message<'a> {
    /// Decodes one message from a websocket frame.
    ///
    /// Bytes after a complete message are ignored, like the JS reader does
    /// (the JS client never sends any; being lenient costs nothing because
    /// the payloads themselves are length-delimited).
    pub fn decode(bytes: &'a [u8]) -> Result<Message<'a>, WireError> {
        let mut d = Decoder::new(bytes);
        match d.read_var_u64()? {
            MESSAGE_SYNC => match d.read_var_u64()? {
                SYNC_STEP1 => Ok(Message::SyncStep1(d.read_var_bytes()?)),
                SYNC_STEP2 => Ok(Message::SyncStep2(d.read_var_bytes()?)),
                SYNC_UPDATE => Ok(Message::Update(d.read_var_bytes()?)),
                other => Err(WireError::UnknownSyncType(other)),
            },
            MESSAGE_AWARENESS => Ok(Message::Awareness(d.read_var_bytes()?)),
            MESSAGE_AUTH => match d.read_var_u64()? {
                AUTH_PERMISSION_DENIED => Ok(Message::AuthPermissionDenied(d.read_var_str()?)),
                other => Err(WireError::UnknownAuthType(other)),
            },
            MESSAGE_QUERY_AWARENESS => Ok(Message::QueryAwareness),
            other => Err(WireError::UnknownMessageType(other)),
        }
    }

    /// Encodes this message exactly as y-websocket would.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Message::SyncStep1(sv) => encode_sync_step1(sv),
            Message::SyncStep2(u) => encode_sync_step2(u),
            Message::Update(u) => encode_update(u),
            Message::Awareness(a) => encode_awareness(a),
            Message::AuthPermissionDenied(r) => encode_permission_denied(r),
            Message::QueryAwareness => encode_query_awareness(),
        }
    }
}

fn encode_sync(sub: u64, payload: &[u8]) -> Vec<u8> {
    // 2 type bytes + up to 10 length bytes.
    let mut e = Encoder::with_capacity(payload.len() + 12);
    e.write_var_u64(MESSAGE_SYNC);
    e.write_var_u64(sub);
    e.write_var_bytes(payload);
    e.into_vec()
}

/// Encodes a sync step 1 message carrying an encoded state vector.
pub fn encode_sync_step1(sv: &[u8]) -> Vec<u8> {
    encode_sync(SYNC_STEP1, sv)
}

/// Encodes a sync step 2 message carrying an update v1.
pub fn encode_sync_step2(update: &[u8]) -> Vec<u8> {
    encode_sync(SYNC_STEP2, update)
}

/// Encodes a sync update message carrying an update v1.
pub fn encode_update(update: &[u8]) -> Vec<u8> {
    encode_sync(SYNC_UPDATE, update)
}

/// Encodes an awareness message carrying an encoded awareness update.
pub fn encode_awareness(update: &[u8]) -> Vec<u8> {
    let mut e = Encoder::with_capacity(update.len() + 11);
    e.write_var_u64(MESSAGE_AWARENESS);
    e.write_var_bytes(update);
    e.into_vec()
}

/// Encodes an auth permission-denied message (`y-protocols/auth`).
pub fn encode_permission_denied(reason: &str) -> Vec<u8> {
    let mut e = Encoder::with_capacity(reason.len() + 12);
    e.write_var_u64(MESSAGE_AUTH);
    e.write_var_u64(AUTH_PERMISSION_DENIED);
    e.write_var_str(reason);
    e.into_vec()
}

/// Encodes a query-awareness message (a single byte).
pub fn encode_query_awareness() -> Vec<u8> {
    vec![MESSAGE_QUERY_AWARENESS as u8]
}

/// One client's entry in an awareness update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwarenessEntry<'a> {
    /// The Yjs client id the state belongs to.
    pub client_id: u64,
    /// Per-client logical clock; higher wins.
    pub clock: u64,
    /// The state as JSON text; the literal `null` means "client left".
    pub state_json: &'a str,
}

impl AwarenessEntry<'_> {
    /// True when this entry removes the client's state (JSON `null`).
    pub fn is_removal(&self) -> bool {
        self.state_json == "null"
    }
}

/// Decodes an awareness update (`y-protocols/awareness` `encodeAwarenessUpdate`):
/// varuint count, then per entry varuint clientID, varuint clock, var string JSON.
///
/// The count is checked against the remaining bytes before anything is
/// allocated, and the whole buffer must be consumed.
pub fn decode_awareness_update(bytes: &[u8]) -> Result<Vec<AwarenessEntry<'_>>, WireError> {
    let mut d = Decoder::new(bytes);
    // Each entry takes at least 3 bytes, so count <= remaining is a safe
    // (loose) bound for the pre-allocation.
    let count = d.read_len()?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let client_id = d.read_var_u64()?;
        let clock = d.read_var_u64()?;
        let state_json = d.read_var_str()?;
        out.push(AwarenessEntry {
            client_id,
            clock,
            state_json,
        });
    }
    if !d.is_empty() {
        return Err(WireError::TrailingBytes);
    }
    Ok(out)
}

/// Encodes an awareness update from `(client_id, clock, state_json)` triples.
pub fn encode_awareness_update(entries: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.write_var_u64(entries.len() as u64);
    for &(client, clock, json) in entries {
        e.write_var_u64(client);
        e.write_var_u64(clock);
        e.write_var_str(json);
    }
    e.into_vec()
}

/// Decodes an encoded state vector (`Y.encodeStateVector`): varuint count,
/// then `count` pairs of varuint client id, varuint clock.
///
/// The whole buffer must be consumed.
pub fn decode_state_vector(bytes: &[u8]) -> Result<Vec<(u64, u64)>, WireError> {
    let mut d = Decoder::new(bytes);
    let count = d.read_len()?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let client = d.read_var_u64()?;
        let clock = d.read_var_u64()?;
        out.push((client, clock));
    }
    if !d.is_empty() {
        return Err(WireError::TrailingBytes);
    }
    Ok(out)
}

/// Encodes a state vector from `(client_id, clock)` pairs.
pub fn encode_state_vector(entries: &[(u64, u64)]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.write_var_u64(entries.len() as u64);
    for &(client, clock) in entries {
        e.write_var_u64(client);
        e.write_var_u64(clock);
    }
    e.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name -> bytes` pairs from the vectors generated by the JS reference
    /// implementation (see `testdata/gen-vectors.mjs`).
    fn vectors(prefix: &str) -> Vec<(String, Vec<u8>)> {
        let text = include_str!("testdata/vectors.txt");
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (name, hex) = line.split_once(' ').expect("name hex");
            if !name.starts_with(prefix) {
                continue;
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            out.push((name.to_string(), bytes));
        }
        assert!(!out.is_empty(), "no vectors with prefix {prefix}");
        out
    }

    #[test]
    fn message_round_trips() {
        let msgs = [
            Message::SyncStep1(&[0]),
            Message::SyncStep1(&[1, 5, 3]),
            Message::SyncStep2(&[0, 0]),
            Message::Update(&[1, 2, 3, 4, 5]),
            Message::Awareness(&[0]),
            Message::AuthPermissionDenied("nope ✋"),
            Message::AuthPermissionDenied(""),
            Message::QueryAwareness,
        ];
        for m in msgs {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes), Ok(m));
        }
        let big = vec![7u8; 300];
        let bytes = encode_update(&big);
        assert_eq!(&bytes[..4], &[0, 2, 0xAC, 0x02]);
        assert_eq!(Message::decode(&bytes), Ok(Message::Update(&big)));
    }

    #[test]
    fn known_bytes() {
        assert_eq!(encode_sync_step1(&[0]), [0, 0, 1, 0]);
        assert_eq!(encode_sync_step2(&[0, 0]), [0, 1, 2, 0, 0]);
        assert_eq!(encode_update(&[0, 0]), [0, 2, 2, 0, 0]);
        assert_eq!(encode_awareness(&[0]), [1, 1, 0]);
        assert_eq!(encode_permission_denied("x"), [2, 0, 1, b'x']);
        assert_eq!(encode_query_awareness(), [3]);
    }

    #[test]
    fn trailing_bytes_after_message_are_tolerated() {
        assert_eq!(
            Message::decode(&[0, 0, 1, 0, 99, 98]),
            Ok(Message::SyncStep1(&[0]))
        );
        assert_eq!(Message::decode(&[3, 1, 2]), Ok(Message::QueryAwareness));
    }

    #[test]
    fn malformed_messages_are_rejected() {
        assert_eq!(Message::decode(&[]), Err(WireError::UnexpectedEof));
        assert_eq!(Message::decode(&[0]), Err(WireError::UnexpectedEof));
        assert_eq!(Message::decode(&[0, 0]), Err(WireError::UnexpectedEof));
        assert_eq!(
            Message::decode(&[0, 0, 5, 1]),
            Err(WireError::LengthTooLarge)
        );
        assert_eq!(
            Message::decode(&[0, 3, 0]),
            Err(WireError::UnknownSyncType(3))
        );
        assert_eq!(Message::decode(&[4]), Err(WireError::UnknownMessageType(4)));
        assert_eq!(
            Message::decode(&[0x80, 0x01]),
            Err(WireError::UnknownMessageType(128))
        );
        assert_eq!(
            Message::decode(&[2, 1, 0]),
            Err(WireError::UnknownAuthType(1))
        );
        assert_eq!(
            Message::decode(&[2, 0, 1, 0xFF]),
            Err(WireError::InvalidUtf8)
        );
        assert_eq!(
            Message::decode(&[1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),
            Err(WireError::LengthTooLarge)
        );
        // Every strict prefix of a valid message fails cleanly.
        let full = encode_update(&[1, 2, 3, 4]);
        for cut in 0..full.len() {
            assert!(Message::decode(&full[..cut]).is_err(), "prefix {cut}");
        }
    }

    #[test]
    fn awareness_update_round_trip() {
        let entries = [
            (1u64, 0u64, "{\"user\":{\"name\":\"Ann\"}}"),
            (u64::from(u32::MAX), 7, "null"),
            (300, 1 << 40, "{}"),
        ];
        let bytes = encode_awareness_update(&entries);
        let decoded = decode_awareness_update(&bytes).expect("decode");
        assert_eq!(decoded.len(), 3);
        for (d, e) in decoded.iter().zip(entries.iter()) {
            assert_eq!((d.client_id, d.clock, d.state_json), *e);
        }
        assert!(!decoded[0].is_removal());
        assert!(decoded[1].is_removal());
        assert_eq!(decode_awareness_update(&[0]), Ok(vec![]));
    }

    #[test]
    fn awareness_update_rejects_bad_input() {
        // Count larger than the remaining bytes: rejected before allocating.
        assert_eq!(
            decode_awareness_update(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 1]),
            Err(WireError::LengthTooLarge)
        );
        assert_eq!(
            decode_awareness_update(&[1, 1, 1, 1, 0xFF]),
            Err(WireError::InvalidUtf8)
        );
        assert_eq!(
            decode_awareness_update(&[0, 0]),
            Err(WireError::TrailingBytes)
        );
        let good = encode_awareness_update(&[(1, 2, "null")]);
        for cut in 0..good.len() {
            assert!(decode_awareness_update(&good[..cut]).is_err());
        }
    }

    #[test]
    fn state_vector_round_trip() {
        let sv = [(1u64, 10u64), (u64::from(u32::MAX), 0), (1 << 53, 1 << 32)];
        let bytes = encode_state_vector(&sv);
        assert_eq!(decode_state_vector(&bytes), Ok(sv.to_vec()));
        assert_eq!(decode_state_vector(&[0]), Ok(vec![]));
        assert_eq!(
            decode_state_vector(&[5, 1, 1]),
            Err(WireError::LengthTooLarge)
        );
        assert_eq!(decode_state_vector(&[1, 1]), Err(WireError::UnexpectedEof));
        assert_eq!(decode_state_vector(&[0, 1]), Err(WireError::TrailingBytes));
    }

    #[test]
    fn real_messages_from_js_decode_and_reencode_identically() {
        let mut kinds = std::collections::HashSet::new();
        for (name, bytes) in vectors("msg_") {
            let msg = Message::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            // y-websocket writes canonical varints, so re-encoding is byte-identical.
            assert_eq!(msg.encode(), bytes, "{name}");
            match msg {
                Message::SyncStep1(sv) => {
                    decode_state_vector(sv).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                Message::Awareness(a) => {
                    let entries =
                        decode_awareness_update(a).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(!entries.is_empty());
                }
                Message::AuthPermissionDenied(r) => assert_eq!(r, "you shall not pass ✋"),
                _ => {}
            }
            kinds.insert(bytes[0] * 16 + if bytes[0] == 0 { bytes[1] } else { 0 });
        }
        // (type, sync subtype) pairs: step1, step2, update, awareness, auth, query awareness.
        assert_eq!(kinds.len(), 6);
    }

    #[test]
    fn real_awareness_updates_and_state_vectors_decode() {
        for (name, bytes) in vectors("awareness_") {
            let entries = decode_awareness_update(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!entries.is_empty(), "{name}");
            let triples: Vec<(u64, u64, &str)> = entries
                .iter()
                .map(|e| (e.client_id, e.clock, e.state_json))
                .collect();
            assert_eq!(encode_awareness_update(&triples), bytes, "{name}");
            if name == "awareness_removed" {
                assert!(entries[0].is_removal());
            }
        }
        for (name, bytes) in vectors("sv_") {
            let sv = decode_state_vector(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(encode_state_vector(&sv), bytes, "{name}");
        }
    }
}
