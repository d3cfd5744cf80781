//! lib0 v1 primitive encoding, as used by Yjs update v1, y-protocols and
//! y-websocket (`lib0/encoding.js`, `lib0/decoding.js`).
//!
//! The decoder is written for hostile input: every read is bounds-checked,
//! varints reject overflow instead of wrapping, and length prefixes are checked
//! against the remaining input *before* anything is sliced or allocated, so a
//! 5-byte prefix claiming a terabyte costs nothing.

use std::fmt;

/// Error decoding lib0-encoded bytes.
///
/// The `Display` text is short and never echoes input bytes, so it may be
/// sent back to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The input ended in the middle of a value.
    UnexpectedEof,
    /// A varint does not fit in 64 bits (or uses more than 10 bytes).
    VarIntOverflow,
    /// A string is not valid UTF-8.
    InvalidUtf8,
    /// A length or count prefix claims more bytes than the input has left.
    LengthTooLarge,
    /// Bytes were left over after a value that must fill its whole buffer.
    TrailingBytes,
    /// A y-websocket message has an unknown top-level message type.
    UnknownMessageType(u64),
    /// A y-websocket sync message has an unknown sync sub-type.
    UnknownSyncType(u64),
    /// A y-websocket auth message has an unknown auth sub-type.
    UnknownAuthType(u64),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::UnexpectedEof => f.write_str("unexpected end of input"),
            WireError::VarIntOverflow => f.write_str("varint overflow"),
            WireError::InvalidUtf8 => f.write_str("invalid utf-8"),
            WireError::LengthTooLarge => f.write_str("length prefix exceeds input"),
            WireError::TrailingBytes => f.write_str("trailing bytes"),
            WireError::UnknownMessageType(t) => write!(f, "unknown message type {t}"),
            WireError::UnknownSyncType(t) => write!(f, "unknown sync message type {t}"),
            WireError::UnknownAuthType(t) => write!(f, "unknown auth message type {t}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Zero-copy cursor over a lib0 v1 encoded buffer.
///
/// Slices and strings returned borrow from the input (lifetime `'a`), not
/// from the decoder, so they outlive it.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// Creates a decoder positioned at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Number of bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Number of bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The unconsumed rest of the input (does not advance).
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Reads one byte.
    pub fn read_u8(&mut self) -> Result<u8, WireError> {
        let b = *self.buf.get(self.pos).ok_or(WireError::UnexpectedEof)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads exactly `n` raw bytes.
    pub fn read_exact(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::UnexpectedEof);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a lib0 varuint: 7 data bits per byte, least significant group
    /// first, high bit = "more bytes follow".
    ///
    /// Overlong encodings (e.g. `80 00`) are accepted because lib0 accepts
    /// them; values that do not fit in a `u64` are rejected rather than
    /// silently wrapped.
    pub fn read_var_u64(&mut self) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        // 10 bytes carry 70 bits; the 10th byte may only contribute bit 63.
        for i in 0..10u32 {
            let b = self.read_u8()?;
            let bits = u64::from(b & 0x7F);
            let shift = 7 * i;
            if shift == 63 && bits > 1 {
                return Err(WireError::VarIntOverflow);
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::VarIntOverflow)
    }

    /// Reads a lib0 signed varint: the first byte holds a continuation bit
    /// (0x80), a sign bit (0x40) and 6 data bits; following bytes hold 7 data
    /// bits each, like a varuint.
    ///
    /// At most 10 bytes are accepted and the magnitude must fit in an `i64`
    /// (2^63 is allowed for negative numbers, i.e. `i64::MIN`). A negative
    /// zero (`0x40`) decodes to 0.
    pub fn read_var_i64(&mut self) -> Result<i64, WireError> {
        let first = self.read_u8()?;
        let negative = first & 0x40 != 0;
        let mut magnitude = u64::from(first & 0x3F);
        let mut more = first & 0x80 != 0;
        let mut shift: u32 = 6;
        let mut bytes = 1;
        while more {
            if bytes == 10 {
                return Err(WireError::VarIntOverflow);
            }
            let b = self.read_u8()?;
            bytes += 1;
            let bits = u64::from(b & 0x7F);
            // Bits shifted past bit 63 would be lost: that is an overflow.
            if shift > 57 && (bits >> (64 - shift)) != 0 {
                return Err(WireError::VarIntOverflow);
            }
            magnitude |= bits << shift;
            shift += 7;
            more = b & 0x80 != 0;
        }
        const I64_MIN_MAGNITUDE: u64 = 1 << 63;
        if negative {
            if magnitude == I64_MIN_MAGNITUDE {
                Ok(i64::MIN)
            } else if magnitude < I64_MIN_MAGNITUDE {
                // magnitude < 2^63, so the cast is lossless and negation cannot overflow.
                Ok(-(magnitude as i64))
            } else {
                Err(WireError::VarIntOverflow)
            }
        } else {
            i64::try_from(magnitude).map_err(|_| WireError::VarIntOverflow)
        }
    }

    /// Reads a varuint used as a length or element count and checks that it
    /// is at most [`remaining`](Self::remaining).
    ///
    /// Every element of every lib0 collection takes at least one byte, so a
    /// count larger than the bytes left can never be satisfied; rejecting it
    /// up front bounds loops and pre-allocations by the input size.
    pub fn read_len(&mut self) -> Result<usize, WireError> {
        let n = self.read_var_u64()?;
        // Compare in u64 so the check is also right where usize is 32 bits.
        if n > self.remaining() as u64 {
            return Err(WireError::LengthTooLarge);
        }
        // n <= remaining() which is a usize, so this cannot truncate.
        Ok(n as usize)
    }

    /// Reads a varuint length followed by that many bytes
    /// (lib0 `readVarUint8Array`).
    pub fn read_var_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.read_len()?;
        self.read_exact(n)
    }

    /// Reads a varuint length followed by that many bytes of UTF-8
    /// (lib0 `readVarString`).
    pub fn read_var_str(&mut self) -> Result<&'a str, WireError> {
        let bytes = self.read_var_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| WireError::InvalidUtf8)
    }
}

/// Growable lib0 v1 encoder (a `Vec<u8>` wrapper).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// Creates an empty encoder.
    pub fn new() -> Self {
        Encoder { buf: Vec::new() }
    }

    /// Creates an empty encoder with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Encoder {
            buf: Vec::with_capacity(cap),
        }
    }

    /// Number of bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Consumes the encoder and returns the encoded bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// Writes one byte.
    pub fn write_u8(&mut self, b: u8) {
        self.buf.push(b);
    }

    /// Writes raw bytes with no length prefix.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Writes a lib0 varuint (canonical, shortest form).
    pub fn write_var_u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7F) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// Writes a lib0 signed varint (sign bit 0x40 in the first byte).
    pub fn write_var_i64(&mut self, v: i64) {
        let negative = v < 0;
        // unsigned_abs handles i64::MIN without overflow.
        let mut m = v.unsigned_abs();
        let mut first = (m & 0x3F) as u8;
        if negative {
            first |= 0x40;
        }
        m >>= 6;
        if m > 0 {
            first |= 0x80;
        }
        self.buf.push(first);
        while m > 0 {
            let mut b = (m & 0x7F) as u8;
            m >>= 7;
            if m > 0 {
                b |= 0x80;
            }
            self.buf.push(b);
        }
    }

    /// Writes a varuint length followed by the bytes
    /// (lib0 `writeVarUint8Array`).
    pub fn write_var_bytes(&mut self, bytes: &[u8]) {
        self.write_var_u64(bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }

    /// Writes a varuint byte length followed by the UTF-8 bytes
    /// (lib0 `writeVarString`).
    pub fn write_var_str(&mut self, s: &str) {
        self.write_var_bytes(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_u(v: u64) -> Vec<u8> {
        let mut e = Encoder::new();
        e.write_var_u64(v);
        e.into_vec()
    }

    fn enc_i(v: i64) -> Vec<u8> {
        let mut e = Encoder::new();
        e.write_var_i64(v);
        e.into_vec()
    }

    #[test]
    fn var_u64_round_trips_edge_values() {
        let cases = [
            0u64,
            1,
            63,
            64,
            127,
            128,
            255,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            (1 << 53) - 1,
            1 << 53,
            (1 << 56) - 1,
            1 << 56,
            (1 << 63) - 1,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        for v in cases {
            let bytes = enc_u(v);
            let expected_len = if v == 0 {
                1
            } else {
                (64 - v.leading_zeros() as usize).div_ceil(7)
            };
            assert_eq!(bytes.len(), expected_len, "len for {v}");
            let mut d = Decoder::new(&bytes);
            assert_eq!(d.read_var_u64(), Ok(v));
            assert!(d.is_empty());
        }
    }

    #[test]
    fn var_u64_known_lib0_bytes() {
        // Values cross-checked with lib0's writeVarUint.
        assert_eq!(enc_u(0), [0x00]);
        assert_eq!(enc_u(127), [0x7F]);
        assert_eq!(enc_u(128), [0x80, 0x01]);
        assert_eq!(enc_u(300), [0xAC, 0x02]);
        assert_eq!(
            enc_u(u64::MAX),
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        );
    }

    #[test]
    fn var_u64_accepts_overlong_and_rejects_overflow() {
        assert_eq!(Decoder::new(&[0x80, 0x00]).read_var_u64(), Ok(0));
        assert_eq!(
            Decoder::new(&[0x81, 0x80, 0x80, 0x00]).read_var_u64(),
            Ok(1)
        );
        // 10th byte carrying more than bit 63.
        let mut over = vec![0xFF; 9];
        over.push(0x02);
        assert_eq!(
            Decoder::new(&over).read_var_u64(),
            Err(WireError::VarIntOverflow)
        );
        // 11 bytes, even if all zero payload.
        let mut long = vec![0x80; 10];
        long.push(0x00);
        assert_eq!(
            Decoder::new(&long).read_var_u64(),
            Err(WireError::VarIntOverflow)
        );
        // Truncated in the middle.
        assert_eq!(
            Decoder::new(&[0x80, 0x80]).read_var_u64(),
            Err(WireError::UnexpectedEof)
        );
        assert_eq!(
            Decoder::new(&[]).read_var_u64(),
            Err(WireError::UnexpectedEof)
        );
    }

    #[test]
    fn var_i64_round_trips_edge_values() {
        let cases = [
            0i64,
            1,
            -1,
            63,
            -63,
            64,
            -64,
            8191,
            -8191,
            8192,
            -8192,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            (1 << 53) - 1,
            -((1 << 53) - 1),
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ];
        for v in cases {
            let bytes = enc_i(v);
            assert!(bytes.len() <= 10);
            let mut d = Decoder::new(&bytes);
            assert_eq!(d.read_var_i64(), Ok(v), "value {v} bytes {bytes:02x?}");
            assert!(d.is_empty());
        }
    }

    #[test]
    fn var_i64_known_lib0_bytes() {
        // Values cross-checked with lib0's writeVarInt.
        assert_eq!(enc_i(0), [0x00]);
        assert_eq!(enc_i(1), [0x01]);
        assert_eq!(enc_i(-1), [0x41]);
        assert_eq!(enc_i(63), [0x3F]);
        assert_eq!(enc_i(64), [0x80, 0x01]);
        assert_eq!(enc_i(-64), [0xC0, 0x01]);
        // Negative zero as written by lib0 for -0.
        assert_eq!(Decoder::new(&[0x40]).read_var_i64(), Ok(0));
    }

    #[test]
    fn var_i64_rejects_overflow() {
        // Magnitude 2^63 as a positive number.
        let mut pos = enc_i(i64::MIN);
        pos[0] &= !0x40;
        assert_eq!(
            Decoder::new(&pos).read_var_i64(),
            Err(WireError::VarIntOverflow)
        );
        // Magnitude above 2^63 as a negative number.
        let mut neg = vec![0xFF];
        neg.extend_from_slice(&[0xFF; 8]);
        neg.push(0x03);
        assert_eq!(
            Decoder::new(&neg).read_var_i64(),
            Err(WireError::VarIntOverflow)
        );
        // Bits beyond bit 63.
        let mut big = vec![0xBF];
        big.extend_from_slice(&[0xFF; 8]);
        big.push(0x04);
        assert_eq!(
            Decoder::new(&big).read_var_i64(),
            Err(WireError::VarIntOverflow)
        );
        // More than 10 bytes.
        let mut long = vec![0x80; 10];
        long.push(0x00);
        assert_eq!(
            Decoder::new(&long).read_var_i64(),
            Err(WireError::VarIntOverflow)
        );
        assert_eq!(
            Decoder::new(&[0x80]).read_var_i64(),
            Err(WireError::UnexpectedEof)
        );
    }

    #[test]
    fn var_bytes_and_strings() {
        let mut e = Encoder::new();
        e.write_var_bytes(&[1, 2, 3]);
        e.write_var_str("héllo 🌍");
        e.write_var_str("");
        e.write_u8(9);
        let bytes = e.into_vec();
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.read_var_bytes(), Ok(&[1u8, 2, 3][..]));
        assert_eq!(d.read_var_str(), Ok("héllo 🌍"));
        assert_eq!(d.read_var_str(), Ok(""));
        assert_eq!(d.remaining(), 1);
        assert_eq!(d.read_u8(), Ok(9));
        assert!(d.is_empty());
        assert_eq!(d.read_u8(), Err(WireError::UnexpectedEof));
    }

    #[test]
    fn huge_length_prefix_is_rejected_before_allocating() {
        let mut e = Encoder::new();
        e.write_var_u64(1 << 40);
        e.write_raw(b"abc");
        let bytes = e.into_vec();
        assert_eq!(
            Decoder::new(&bytes).read_var_bytes(),
            Err(WireError::LengthTooLarge)
        );
        assert_eq!(
            Decoder::new(&bytes).read_var_str(),
            Err(WireError::LengthTooLarge)
        );
        let mut e = Encoder::new();
        e.write_var_u64(u64::MAX);
        assert_eq!(
            Decoder::new(e.as_slice()).read_len(),
            Err(WireError::LengthTooLarge)
        );
        // Exactly the remaining bytes is fine, one more is not.
        assert_eq!(
            Decoder::new(&[3, 1, 2, 3]).read_var_bytes(),
            Ok(&[1u8, 2, 3][..])
        );
        assert_eq!(
            Decoder::new(&[4, 1, 2, 3]).read_var_bytes(),
            Err(WireError::LengthTooLarge)
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        for bad in [
            &[0xC3, 0x28][..],
            &[0xFF],
            &[0xED, 0xA0, 0x80],
            &[0xF0, 0x9F, 0x8C],
        ] {
            let mut e = Encoder::new();
            e.write_var_bytes(bad);
            assert_eq!(
                Decoder::new(e.as_slice()).read_var_str(),
                Err(WireError::InvalidUtf8)
            );
        }
    }

    #[test]
    fn read_exact_and_rest() {
        let data = [1u8, 2, 3, 4];
        let mut d = Decoder::new(&data);
        assert_eq!(d.read_exact(2), Ok(&[1u8, 2][..]));
        assert_eq!(d.position(), 2);
        assert_eq!(d.rest(), &[3, 4]);
        assert_eq!(d.read_exact(3), Err(WireError::UnexpectedEof));
        // A failed read does not advance.
        assert_eq!(d.position(), 2);
        assert_eq!(d.read_exact(2), Ok(&[3u8, 4][..]));
        assert_eq!(d.read_exact(0), Ok(&[][..]));
    }

    #[test]
    fn errors_display_without_payload() {
        let all = [
            WireError::UnexpectedEof,
            WireError::VarIntOverflow,
            WireError::InvalidUtf8,
            WireError::LengthTooLarge,
            WireError::TrailingBytes,
            WireError::UnknownMessageType(9),
            WireError::UnknownSyncType(9),
            WireError::UnknownAuthType(9),
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.is_empty() && s.len() < 64);
            let _: &dyn std::error::Error = &e;
        }
    }
}
