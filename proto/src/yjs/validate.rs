//! Structural validation of untrusted Yjs payloads before any CRDT library
//! sees them.
//!
//! Why this exists: Yjs decoders trust their input. yrs 0.28.1 decodes lib0
//! `Any` values recursively and aborts the whole process (stack overflow) on a
//! ~20 KB update holding an array nested 10,000 deep; yrs 0.27 segfaulted on an
//! 18-byte update with invalid UTF-8 (it used `from_utf8_unchecked`); decoders
//! that pre-allocate from a length prefix can be asked for gigabytes. One
//! hostile client must not be able to take down a shard hosting thousands of
//! documents, so every update is walked here first, completely, by code that:
//!
//! * never recurses on attacker-controlled depth (explicit stacks, capped by
//!   [`Limits::max_depth`], which fail as soon as the cap is crossed);
//! * checks every length and count prefix against the bytes left *before*
//!   using it, so work and memory are linear in the input size;
//! * checks every string is UTF-8 and every embedded JSON text is well-formed
//!   JSON within the depth cap;
//! * rejects unknown content/type/`Any` tags, trailing bytes, zero-length
//!   structs, client ids past 2^53 and clocks past 2^31 - 1 (where yrs'
//!   `u32`/`i32` clock arithmetic breaks).
//!
//! It also closes *parser differentials*. yrs 0.28.1 does not decode two
//! yjs constructs the way yjs encodes them: it skips the name string after an
//! XmlHook type ref, and reads `count + 1` strings for ContentJSON. From that
//! point on yrs reads the rest of the update at a different offset than this
//! validator, so an attacker could hide, say, a 10,000-deep `Any` inside what
//! the validator sees as an innocent string (see
//! [`hostile::xml_hook_smuggle_update`]). The default [`Target::Yrs`]
//! therefore rejects both constructs (no yjs 13 editor binding emits them:
//! ContentJSON is yjs 12 legacy and XmlHook is unused by the common bindings);
//! [`Target::Yjs`] accepts them for consumers that only run yjs. The same
//! reasoning makes the checks strict wherever yrs reads a field differently
//! (`u8` type refs, GC/Skip info bytes, clocks and lengths).
//!
//! Limits: this is stateless validation of one payload. Differential fuzzing
//! against yrs 0.28.1 (validated updates fed to `Update::decode_v1` +
//! `apply_update`) found no decode failure or crash for single updates on an
//! empty document once the rules here were in place, but it did find
//! *sequences* of individually valid updates that panic or segfault yrs
//! during integration, because they contradict earlier updates (see
//! [`update_client_ranges`] and the `yrs_*` reproducers in [`hostile`]).
//! Those need document state, or process isolation, to stop.
//!
//! The update v1 layout walked here follows yjs 13 (`src/utils/encoding.js`
//! `readClientsStructRefs`, `src/structs/*`, `DeleteSet.js` `readDeleteSet`)
//! and lib0 (`decoding.js` `readAny`). This is *structural* validation: it does
//! not check that origins/parents reference items that exist or have the right
//! kind; those are resolved by the CRDT during integration.

use std::fmt;

use super::lib0::{Decoder, WireError};
use super::message::Message;

/// Bounds applied while validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting of lib0 `Any` arrays/objects and of JSON arrays/objects
    /// inside one value. A top-level container counts as depth 1.
    pub max_depth: usize,
    /// Maximum size in bytes of one update / state vector.
    pub max_update_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Real documents nest a handful of levels; 32 leaves plenty of room
            // while staying far below anything that could hurt a recursive
            // decoder downstream.
            max_depth: 32,
            max_update_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Which decoder the validated bytes will be handed to.
///
/// Both targets perform every safety check; they differ only in the
/// constructs whose encoding yrs 0.28 and yjs 13 disagree on (see the module
/// docs). Accepting such a construct would let the validator and the decoder
/// see different structs in the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// yrs 0.28 (what Tandem's shards run). Rejects XmlHook type refs and
    /// ContentJSON with [`ValidationError::Unsupported`].
    #[default]
    Yrs,
    /// The yjs JavaScript implementation only (e.g. a pure relay whose
    /// peers are all browsers). Accepts the full yjs 13 format.
    Yjs,
}

/// What a successfully validated update contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateSummary {
    /// Number of structs (items, GC and skip structs) over all clients.
    pub structs: usize,
    /// Number of delete-set ranges over all clients.
    pub delete_ranges: usize,
    /// True when the update carries no structs and no delete ranges
    /// (the empty update encodes as `[0, 0]`); such updates need not be
    /// stored or broadcast.
    pub is_empty: bool,
}

/// Why a payload was rejected.
///
/// `Display` is short, contains no input data (only small tag numbers) and
/// is safe to send to the client that sent the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationError {
    /// The input ended in the middle of a value.
    Truncated,
    /// `Any` or JSON nesting exceeds [`Limits::max_depth`].
    TooDeep,
    /// A string is not valid UTF-8.
    InvalidUtf8,
    /// An embedded JSON text (ContentJSON / Embed / Format, awareness state)
    /// is not well-formed JSON.
    InvalidJson,
    /// A struct's content ref (`info & 0x1F`) is not a known content kind.
    UnknownContent(u8),
    /// A lib0 `Any` value has an unknown type tag.
    UnknownAny(u8),
    /// A ContentType has an unknown or unsupported shared-type ref
    /// (yrs' weak links, ref 7, are rejected on purpose: the feature is off).
    UnknownTypeRef(u64),
    /// A length or count prefix is larger than the bytes left.
    LengthOutOfBounds,
    /// Bytes remain after a complete value.
    TrailingBytes,
    /// The input is larger than [`Limits::max_update_bytes`] (or an
    /// awareness state is larger than its cap).
    TooLarge,
    /// Valid yjs, but decoded differently by the [`Target`] decoder, so it
    /// cannot be validated safely; the text is a fixed description.
    Unsupported(&'static str),
    /// Any other structural problem; the text is a fixed description.
    Malformed(&'static str),
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValidationError::Truncated => f.write_str("truncated input"),
            ValidationError::TooDeep => f.write_str("nesting too deep"),
            ValidationError::InvalidUtf8 => f.write_str("invalid utf-8"),
            ValidationError::InvalidJson => f.write_str("invalid json"),
            ValidationError::UnknownContent(r) => write!(f, "unknown content ref {r}"),
            ValidationError::UnknownAny(t) => write!(f, "unknown any tag {t}"),
            ValidationError::UnknownTypeRef(t) => write!(f, "unsupported type ref {t}"),
            ValidationError::LengthOutOfBounds => f.write_str("length out of bounds"),
            ValidationError::TrailingBytes => f.write_str("trailing bytes"),
            ValidationError::TooLarge => f.write_str("too large"),
            ValidationError::Unsupported(what) => write!(f, "unsupported: {what}"),
            ValidationError::Malformed(what) => write!(f, "malformed: {what}"),
        }
    }
}

impl std::error::Error for ValidationError {}

impl From<WireError> for ValidationError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::UnexpectedEof => ValidationError::Truncated,
            WireError::VarIntOverflow => ValidationError::Malformed("varint overflow"),
            WireError::InvalidUtf8 => ValidationError::InvalidUtf8,
            WireError::LengthTooLarge => ValidationError::LengthOutOfBounds,
            WireError::TrailingBytes => ValidationError::TrailingBytes,
            WireError::UnknownMessageType(_) => ValidationError::Malformed("unknown message type"),
            WireError::UnknownSyncType(_) => {
                ValidationError::Malformed("unknown sync message type")
            }
            WireError::UnknownAuthType(_) => {
                ValidationError::Malformed("unknown auth message type")
            }
        }
    }
}

type VResult<T> = Result<T, ValidationError>;

/// Largest clock (and clock + length) accepted: `i32::MAX`. yrs stores
/// clocks and lengths as `u32` read by a wrapping varint decoder (larger
/// values silently become different ones), adds them unchecked (`clock +
/// len` overflow panics in debug builds), and its update integration computes
/// `local_clock as i32 - clock as i32`: a single 28-byte update whose clock
/// is at least 2^31 makes yrs 0.28.1 panic (subtract overflow in debug, an
/// out-of-bounds index in its block-list binary search in release). JS
/// clients never get anywhere near 2^31 operations per client id.
const MAX_CLOCK: u64 = i32::MAX as u64;

/// Largest client id accepted. yjs client ids are random `u32`s and lib0 JS
/// cannot represent more than 2^53 - 1 exactly; yrs 0.28's `ClientID::new`
/// `debug_assert!`s the id fits in 53 bits, i.e. panics in debug builds.
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// lib0 JS decodes integers into doubles and throws past 2^53; nothing
/// legitimate is larger, and bounding it keeps yrs' `i64` arithmetic (which
/// panics on overflow in debug builds) far from the edge.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Max JSON nesting accepted in awareness states (which have no `Limits`).
const AWARENESS_MAX_JSON_DEPTH: usize = 64;

/// Content refs (`info & 0x1F`), from yjs `contentRefs` / `readClientsStructRefs`.
const REF_GC: u8 = 0;
const REF_DELETED: u8 = 1;
const REF_JSON: u8 = 2;
const REF_BINARY: u8 = 3;
const REF_STRING: u8 = 4;
const REF_EMBED: u8 = 5;
const REF_FORMAT: u8 = 6;
const REF_TYPE: u8 = 7;
const REF_ANY: u8 = 8;
const REF_DOC: u8 = 9;
const REF_SKIP: u8 = 10;

/// Item info bits (yjs `Item.write`).
const INFO_HAS_ORIGIN: u8 = 0x80;
const INFO_HAS_RIGHT_ORIGIN: u8 = 0x40;
const INFO_HAS_PARENT_SUB: u8 = 0x20;
const INFO_CONTENT_MASK: u8 = 0x1F;

/// Shared type refs (yjs `typeRefs`): Array, Map, Text, XmlElement,
/// XmlFragment, XmlHook, XmlText. XmlElement and XmlHook carry a name.
const TYPE_XML_ELEMENT: u64 = 3;
const TYPE_XML_HOOK: u64 = 5;
const TYPE_MAX_KNOWN: u64 = 6;

/// Validates a complete Yjs update v1 (`Y.encodeStateAsUpdate`,
/// `doc.on('update')`, `Y.mergeUpdates`, yrs `encode_v1`).
///
/// Validates for the default [`Target::Yrs`]; see
/// [`validate_update_v1_for`]. Returns a summary on success. Work and
/// memory are linear in `bytes.len()`, and stack use is constant.
pub fn validate_update_v1(bytes: &[u8], limits: &Limits) -> Result<UpdateSummary, ValidationError> {
    validate_update_v1_for(bytes, limits, Target::Yrs)
}

/// Validates a complete Yjs update v1 for the given decoder [`Target`].
pub fn validate_update_v1_for(
    bytes: &[u8],
    limits: &Limits,
    target: Target,
) -> Result<UpdateSummary, ValidationError> {
    walk_update(bytes, limits, target, None)
}

/// The clocks one client's structs cover in an update (Skip placeholders
/// excluded): `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRange {
    /// The client id that authored the structs.
    pub client: u64,
    /// Clock of the first non-Skip struct.
    pub start: u64,
    /// Clock just past the last non-Skip struct.
    pub end: u64,
}

/// Validates an update like [`validate_update_v1`] (default [`Target::Yrs`])
/// and returns, per client, the clock range its structs cover.
///
/// For stateful checks the validator cannot do alone: yrs 0.28.1 trusts
/// that structs re-sent for clocks the document already has carry identical
/// content, and differential fuzzing found short sequences of individually
/// valid updates that re-send known clocks with different content and then
/// segfault yrs ([`hostile::yrs_resend_segfault_updates`]). A server can keep,
/// per document, the highest `end` it has accepted for each client and treat
/// `start < that` as a re-send. Note that yrs' state vector is not enough for
/// this: structs parked as *pending* (missing dependencies) are not in it, and
/// the fuzzer's crashes went through pending structs too. Honest clients
/// re-send only in rare races (e.g. two tabs replaying the same offline
/// state), so dropping or trimming such updates costs little.
pub fn update_client_ranges(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<ClientRange>, ValidationError> {
    validate_update_v1_with_ranges(bytes, limits).map(|(_, ranges)| ranges)
}

/// [`validate_update_v1`] and [`update_client_ranges`] in one walk (the shard's hot path).
pub fn validate_update_v1_with_ranges(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(UpdateSummary, Vec<ClientRange>), ValidationError> {
    let mut ranges = Vec::new();
    let summary = walk_update(bytes, limits, Target::Yrs, Some(&mut ranges))?;
    Ok((summary, ranges))
}

/// The update walk behind the public entry points; `ranges`, when given,
/// collects each client's [`ClientRange`].
fn walk_update(
    bytes: &[u8],
    limits: &Limits,
    target: Target,
    mut ranges: Option<&mut Vec<ClientRange>>,
) -> Result<UpdateSummary, ValidationError> {
    if bytes.len() > limits.max_update_bytes {
        return Err(ValidationError::TooLarge);
    }
    let mut d = Decoder::new(bytes);
    // One depth-tracking stack reused for every Any value in the update, so a
    // struct-heavy update does not allocate per value.
    let mut stack: Vec<AnyFrame> = Vec::new();

    let mut structs = 0usize;
    let clients = d.read_len()?;
    // yjs writes each client once; yrs would append a repeated client's
    // structs to the first run at an unrelated clock. Each client entry takes
    // >= 3 bytes, so this set stays small relative to the input.
    let mut seen_clients = std::collections::HashSet::with_capacity(clients.min(1024));
    for _ in 0..clients {
        let n_structs = d.read_len()?;
        let client = read_client(&mut d)?;
        if !seen_clients.insert(client) {
            return Err(ValidationError::Malformed("duplicate client"));
        }
        let mut clock = read_clock(&mut d)?;
        let mut real: Option<(u64, u64)> = None;
        for _ in 0..n_structs {
            // Skip info bytes are exact (checked in validate_struct).
            let is_skip = d.rest().first() == Some(&REF_SKIP);
            let start = clock;
            let len = validate_struct(&mut d, (client, clock), limits, target, &mut stack)?;
            clock = clock
                .checked_add(len)
                .filter(|end| *end <= MAX_CLOCK)
                .ok_or(ValidationError::Malformed("clock overflow"))?;
            if !is_skip {
                real = Some((real.map_or(start, |r| r.0), clock));
            }
            structs += 1;
        }
        if let (Some(out), Some((start, end))) = (ranges.as_deref_mut(), real) {
            out.push(ClientRange { client, start, end });
        }
    }

    let mut delete_ranges = 0usize;
    let ds_clients = d.read_len()?;
    seen_clients.clear();
    for _ in 0..ds_clients {
        let client = read_client(&mut d)?;
        if !seen_clients.insert(client) {
            return Err(ValidationError::Malformed("duplicate client"));
        }
        let n_ranges = d.read_len()?;
        // yjs always writes a client's delete ranges sorted and merged
        // (`sortAndMergeDeleteSet`, `createDeleteSetFromStructStore`,
        // `mergeDeleteSets`). yrs 0.28.1 trusts that: overlapping or
        // unsorted ranges were found by differential fuzzing to underflow
        // its per-type length counters (`block_len -= len`, a panic in debug
        // builds, a corrupted document in release).
        let mut prev_end = 0u64;
        for _ in 0..n_ranges {
            let clock = read_clock(&mut d)?;
            let len = d.read_var_u64()?;
            if len == 0 {
                return Err(ValidationError::Malformed("empty delete range"));
            }
            let end = match clock.checked_add(len) {
                Some(end) if end <= MAX_CLOCK => end,
                _ => return Err(ValidationError::Malformed("clock overflow")),
            };
            if clock < prev_end {
                return Err(ValidationError::Malformed("unsorted delete ranges"));
            }
            prev_end = end;
            delete_ranges += 1;
        }
    }

    if !d.is_empty() {
        return Err(ValidationError::TrailingBytes);
    }
    Ok(UpdateSummary {
        structs,
        delete_ranges,
        is_empty: structs == 0 && delete_ranges == 0,
    })
}

/// Validates an encoded state vector (`Y.encodeStateVector`, the payload of
/// sync step 1): varuint count, then `count` × (varuint client, varuint clock).
///
/// Returns the number of entries.
pub fn validate_state_vector(bytes: &[u8], limits: &Limits) -> Result<usize, ValidationError> {
    if bytes.len() > limits.max_update_bytes {
        return Err(ValidationError::TooLarge);
    }
    let mut d = Decoder::new(bytes);
    let count = d.read_len()?;
    for _ in 0..count {
        let _client = read_client(&mut d)?;
        let _clock = read_clock(&mut d)?;
    }
    if !d.is_empty() {
        return Err(ValidationError::TrailingBytes);
    }
    Ok(count)
}

/// Validates an awareness update (`y-protocols/awareness`
/// `encodeAwarenessUpdate`): varuint count, then per entry varuint client id,
/// varuint clock, var string JSON state.
///
/// The state is opaque to the server apart from the literal `null`
/// (= client left), but it is still checked to be UTF-8, at most
/// `max_state_bytes` long, and well-formed JSON nested at most 64 deep,
/// because every JS peer runs `JSON.parse` on it and a relay must not
/// forward something that makes all of them throw.
///
/// Returns the number of entries.
pub fn validate_awareness_update(
    bytes: &[u8],
    max_state_bytes: usize,
) -> Result<usize, ValidationError> {
    let mut d = Decoder::new(bytes);
    let count = d.read_len()?;
    for _ in 0..count {
        let _client = read_client(&mut d)?;
        // yrs keeps awareness clocks as u32.
        let _clock = read_clock(&mut d)?;
        let state = d.read_var_str()?;
        if state.len() > max_state_bytes {
            return Err(ValidationError::TooLarge);
        }
        validate_json(state, AWARENESS_MAX_JSON_DEPTH)?;
    }
    if !d.is_empty() {
        return Err(ValidationError::TrailingBytes);
    }
    Ok(count)
}

/// Decodes a y-websocket message and validates its payload with the
/// function matching its kind (update v1 for sync step 2 and updates, state
/// vector for sync step 1, awareness update for awareness messages).
/// Updates are validated for the default [`Target::Yrs`].
///
/// This is the one-call entry point for a server receiving client frames.
pub fn validate_message<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    max_awareness_state_bytes: usize,
) -> Result<Message<'a>, ValidationError> {
    let msg = Message::decode(bytes)?;
    match msg {
        Message::SyncStep1(sv) => {
            validate_state_vector(sv, limits)?;
        }
        Message::SyncStep2(update) | Message::Update(update) => {
            validate_update_v1(update, limits)?;
        }
        Message::Awareness(update) => {
            validate_awareness_update(update, max_awareness_state_bytes)?;
        }
        // Already fully decoded (the reason string is UTF-8-checked).
        Message::AuthPermissionDenied(_) | Message::QueryAwareness => {}
    }
    Ok(msg)
}

/// Reads a clock value (see [`MAX_CLOCK`]).
fn read_clock(d: &mut Decoder<'_>) -> VResult<u64> {
    let v = d.read_var_u64()?;
    if v > MAX_CLOCK {
        return Err(ValidationError::Malformed("clock out of range"));
    }
    Ok(v)
}

/// Reads a client id.
fn read_client(d: &mut Decoder<'_>) -> VResult<u64> {
    let v = d.read_var_u64()?;
    if v > MAX_CLIENT_ID {
        return Err(ValidationError::Malformed("client id out of range"));
    }
    Ok(v)
}

/// Reads an ID that the item `own` (client, clock) refers to: its origin,
/// right origin or parent.
///
/// Such a reference always points at an item that existed when `own` was
/// created, and a client's clock only grows, so a reference to the same
/// client must have a *smaller* clock. yjs and yrs never write anything else
/// (split halves refer to `clock - 1`), but yrs 0.28.1 does not check it:
/// found by differential fuzzing, two small updates with a same-client
/// origin "from the future" leave a dangling item pointer in yrs' block store
/// and segfault the process on the next lookup. Cross-client references
/// cannot be ordered without document state and are not checked here.
fn read_ref_id(d: &mut Decoder<'_>, own: (u64, u64)) -> VResult<()> {
    let client = read_client(d)?;
    let clock = read_clock(d)?;
    if client == own.0 && clock >= own.1 {
        return Err(ValidationError::Malformed("reference to a later clock"));
    }
    Ok(())
}

/// Validates one struct and returns its length in clock units.
/// `own` is the struct's ID (client, clock).
fn validate_struct(
    d: &mut Decoder<'_>,
    own: (u64, u64),
    limits: &Limits,
    target: Target,
    stack: &mut Vec<AnyFrame>,
) -> VResult<u64> {
    let info = d.read_u8()?;
    let content_ref = info & INFO_CONTENT_MASK;
    match content_ref {
        REF_GC | REF_SKIP => {
            // GC / Skip: only a length. yjs masks the info byte but yrs
            // matches the whole byte, so flag bits here would make yrs parse
            // an item header instead; yjs never sets them.
            if info != content_ref {
                return Err(ValidationError::Malformed("struct flags"));
            }
            let len = d.read_var_u64()?;
            return nonzero_len(len);
        }
        REF_DELETED..=REF_DOC => {}
        other => return Err(ValidationError::UnknownContent(other)),
    }

    // Item header, in the exact order of yjs `readClientsStructRefs`.
    if info & INFO_HAS_ORIGIN != 0 {
        read_ref_id(d, own)?;
    }
    if info & INFO_HAS_RIGHT_ORIGIN != 0 {
        read_ref_id(d, own)?;
    }
    // Parent info is only written when neither origin is present (otherwise
    // the parent is copied from the neighbour). Note yjs sets the parentSub
    // bit (0x20) even when an origin is present, but only *reads* the parentSub
    // string when the parent is written: so the bit alone is not an error.
    if info & (INFO_HAS_ORIGIN | INFO_HAS_RIGHT_ORIGIN) == 0 {
        match d.read_var_u64()? {
            // Root type, addressed by name.
            1 => {
                d.read_var_str()?;
            }
            // Nested type, addressed by the ID of the item holding it.
            0 => read_ref_id(d, own)?,
            // JS treats anything but 1 as "ID"; nothing writes other values.
            _ => return Err(ValidationError::Malformed("parent info")),
        }
        if info & INFO_HAS_PARENT_SUB != 0 {
            d.read_var_str()?;
        }
    }

    match content_ref {
        REF_DELETED => nonzero_len(d.read_var_u64()?),
        REF_JSON => {
            // yrs 0.28.1 reads count + 1 strings here (`while remaining >= 0`).
            if target == Target::Yrs {
                return Err(ValidationError::Unsupported("legacy json content"));
            }
            let count = d.read_len()?;
            for _ in 0..count {
                let s = d.read_var_str()?;
                // yjs writes `undefined` (not valid JSON) for undefined entries.
                if s != "undefined" {
                    validate_json(s, limits.max_depth)?;
                }
            }
            nonzero_len(count as u64)
        }
        REF_BINARY => {
            d.read_var_bytes()?;
            Ok(1)
        }
        REF_STRING => {
            let s = d.read_var_str()?;
            // Item length of a string is its length in UTF-16 code units
            // (JS string length), which both yjs and yrs use for clocks.
            let utf16: u64 = s.chars().map(|c| c.len_utf16() as u64).sum();
            nonzero_len(utf16)
        }
        REF_EMBED => {
            validate_json(d.read_var_str()?, limits.max_depth)?;
            Ok(1)
        }
        REF_FORMAT => {
            d.read_var_str()?; // attribute key
            validate_json(d.read_var_str()?, limits.max_depth)?;
            Ok(1)
        }
        REF_TYPE => {
            // yjs writes a varuint but yrs reads one byte; they agree only
            // for single-byte encodings, which is all yjs ever writes (< 7).
            let type_ref = u64::from(d.read_u8()?);
            if type_ref > TYPE_MAX_KNOWN {
                return Err(ValidationError::UnknownTypeRef(type_ref));
            }
            if type_ref == TYPE_XML_HOOK && target == Target::Yrs {
                // yrs 0.28.1 does not read the hook name that yjs writes.
                return Err(ValidationError::Unsupported("xml hook"));
            }
            if type_ref == TYPE_XML_ELEMENT || type_ref == TYPE_XML_HOOK {
                d.read_var_str()?; // node name / hook name
            }
            Ok(1)
        }
        REF_ANY => {
            let count = d.read_len()?;
            for _ in 0..count {
                validate_any(d, limits.max_depth, stack)?;
            }
            nonzero_len(count as u64)
        }
        REF_DOC => {
            d.read_var_str()?; // guid
            validate_any(d, limits.max_depth, stack)?; // options
            Ok(1)
        }
        // Unreachable: filtered by the first match. Kept as an error, not a
        // panic, so a future edit cannot turn it into a crash.
        other => Err(ValidationError::UnknownContent(other)),
    }
}

/// Zero-length structs never come out of yjs or yrs, and yrs computes
/// `clock + len - 1` for a block's last ID, so they are rejected.
fn nonzero_len(len: u64) -> VResult<u64> {
    if len == 0 {
        return Err(ValidationError::Malformed("empty struct"));
    }
    if len > MAX_CLOCK {
        return Err(ValidationError::Malformed("struct too long"));
    }
    Ok(len)
}

/// One open container while walking an `Any` value.
#[derive(Debug, Clone, Copy)]
struct AnyFrame {
    /// Children still to read.
    remaining: usize,
    /// Objects have a key string before each child.
    is_object: bool,
}

/// lib0 `Any` tags (`lib0/encoding.js` `writeAny`).
const ANY_UNDEFINED: u8 = 127;
const ANY_NULL: u8 = 126;
const ANY_INTEGER: u8 = 125;
const ANY_FLOAT32: u8 = 124;
const ANY_FLOAT64: u8 = 123;
const ANY_BIGINT: u8 = 122;
const ANY_FALSE: u8 = 121;
const ANY_TRUE: u8 = 120;
const ANY_STRING: u8 = 119;
const ANY_OBJECT: u8 = 118;
const ANY_ARRAY: u8 = 117;
const ANY_BYTES: u8 = 116;

/// Walks one lib0 `Any` value iteratively.
///
/// Containers push a frame on `stack` (a heap `Vec`), so nesting costs heap,
/// not call stack, and the depth check fires when the container that crosses
/// `max_depth` is opened — after reading only its tag and count.
fn validate_any(d: &mut Decoder<'_>, max_depth: usize, stack: &mut Vec<AnyFrame>) -> VResult<()> {
    stack.clear();
    loop {
        // Read one value (scalar, or the header of a container).
        let tag = d.read_u8()?;
        match tag {
            ANY_UNDEFINED | ANY_NULL | ANY_FALSE | ANY_TRUE => {}
            ANY_INTEGER => {
                let v = d.read_var_i64()?;
                if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) {
                    return Err(ValidationError::Malformed("integer out of range"));
                }
            }
            ANY_FLOAT32 => {
                d.read_exact(4)?;
            }
            ANY_FLOAT64 | ANY_BIGINT => {
                d.read_exact(8)?;
            }
            ANY_STRING => {
                d.read_var_str()?;
            }
            ANY_BYTES => {
                d.read_var_bytes()?;
            }
            ANY_OBJECT | ANY_ARRAY => {
                // Checked before the count is even read: a hostile value is
                // rejected at the first level past the limit.
                if stack.len() >= max_depth {
                    return Err(ValidationError::TooDeep);
                }
                let count = d.read_len()?;
                if count > 0 {
                    stack.push(AnyFrame {
                        remaining: count,
                        is_object: tag == ANY_OBJECT,
                    });
                }
            }
            other => return Err(ValidationError::UnknownAny(other)),
        }
        // Find the next child to read, closing finished containers.
        loop {
            match stack.last_mut() {
                None => return Ok(()),
                Some(frame) if frame.remaining == 0 => {
                    stack.pop();
                }
                Some(frame) => {
                    frame.remaining -= 1;
                    if frame.is_object {
                        d.read_var_str()?; // key
                    }
                    break;
                }
            }
        }
    }
}

/// Checks that `s` is one well-formed JSON text (RFC 8259) whose array/object
/// nesting is at most `max_depth`.
///
/// Iterative, with a heap stack capped at `max_depth`, so hostile nesting
/// costs neither call stack nor more than `max_depth` bytes of heap. Full
/// syntax is checked (not just brackets) because yjs clients `JSON.parse`
/// these strings while applying the update: a malformed one makes every
/// JS peer fail on the document.
fn validate_json(s: &str, max_depth: usize) -> VResult<()> {
    let b = s.as_bytes();
    let mut i = 0usize;
    // true = object, false = array.
    let mut stack: Vec<bool> = Vec::new();
    'value: loop {
        skip_ws(b, &mut i);
        match b.get(i).copied() {
            Some(open @ (b'{' | b'[')) => {
                if stack.len() >= max_depth {
                    return Err(ValidationError::TooDeep);
                }
                i += 1;
                skip_ws(b, &mut i);
                let close = if open == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1; // empty container: a complete value
                } else {
                    stack.push(open == b'{');
                    if open == b'{' {
                        json_key(b, &mut i)?;
                    }
                    continue 'value;
                }
            }
            Some(b'"') => json_string(b, &mut i)?,
            Some(b't') => json_literal(b, &mut i, b"true")?,
            Some(b'f') => json_literal(b, &mut i, b"false")?,
            Some(b'n') => json_literal(b, &mut i, b"null")?,
            Some(b'-' | b'0'..=b'9') => json_number(b, &mut i)?,
            _ => return Err(ValidationError::InvalidJson),
        }
        // After a complete value: separator, closer, or end of text.
        loop {
            skip_ws(b, &mut i);
            let Some(&is_object) = stack.last() else {
                return if i == b.len() {
                    Ok(())
                } else {
                    Err(ValidationError::InvalidJson)
                };
            };
            match b.get(i).copied() {
                Some(b',') => {
                    i += 1;
                    if is_object {
                        json_key(b, &mut i)?;
                    }
                    continue 'value;
                }
                Some(b'}') if is_object => {
                    i += 1;
                    stack.pop();
                }
                Some(b']') if !is_object => {
                    i += 1;
                    stack.pop();
                }
                _ => return Err(ValidationError::InvalidJson),
            }
        }
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(*i) {
        *i += 1;
    }
}

/// Object member prefix: whitespace, string key, whitespace, colon.
fn json_key(b: &[u8], i: &mut usize) -> VResult<()> {
    skip_ws(b, i);
    if b.get(*i) != Some(&b'"') {
        return Err(ValidationError::InvalidJson);
    }
    json_string(b, i)?;
    skip_ws(b, i);
    if b.get(*i) != Some(&b':') {
        return Err(ValidationError::InvalidJson);
    }
    *i += 1;
    Ok(())
}

/// A string literal starting at the opening quote. The input is already
/// known to be UTF-8, so only escapes and control characters need checking.
fn json_string(b: &[u8], i: &mut usize) -> VResult<()> {
    *i += 1; // opening quote
    loop {
        let c = *b.get(*i).ok_or(ValidationError::InvalidJson)?;
        *i += 1;
        match c {
            b'"' => return Ok(()),
            b'\\' => {
                let e = *b.get(*i).ok_or(ValidationError::InvalidJson)?;
                *i += 1;
                match e {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = b.get(*i..*i + 4).ok_or(ValidationError::InvalidJson)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(ValidationError::InvalidJson);
                        }
                        *i += 4;
                    }
                    _ => return Err(ValidationError::InvalidJson),
                }
            }
            0x00..=0x1F => return Err(ValidationError::InvalidJson),
            _ => {}
        }
    }
}

fn json_literal(b: &[u8], i: &mut usize, lit: &[u8]) -> VResult<()> {
    if b.get(*i..*i + lit.len()) != Some(lit) {
        return Err(ValidationError::InvalidJson);
    }
    *i += lit.len();
    Ok(())
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn json_number(b: &[u8], i: &mut usize) -> VResult<()> {
    fn digits(b: &[u8], i: &mut usize) -> usize {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    }
    if b.get(*i) == Some(&b'-') {
        *i += 1;
    }
    match b.get(*i) {
        Some(b'0') => *i += 1,
        Some(b'1'..=b'9') => {
            digits(b, i);
        }
        _ => return Err(ValidationError::InvalidJson),
    }
    if b.get(*i) == Some(&b'.') {
        *i += 1;
        if digits(b, i) == 0 {
            return Err(ValidationError::InvalidJson);
        }
    }
    if let Some(b'e' | b'E') = b.get(*i) {
        *i += 1;
        if let Some(b'+' | b'-') = b.get(*i) {
            *i += 1;
        }
        if digits(b, i) == 0 {
            return Err(ValidationError::InvalidJson);
        }
    }
    Ok(())
}

/// Generators of hostile-but-syntactically-plausible payloads, for tests in
/// this and other crates (gateway/shard integration tests, fuzz seeds).
///
/// Each builds an update v1 with one client (id 1, clock 0) and one Item
/// whose parent is the root type `"a"`, followed by an empty delete set,
/// unless stated otherwise.
pub mod hostile {
    use super::super::lib0::Encoder;

    /// Writes the update header and the item header for a root-parented
    /// item with the given content ref, ready for the content bytes.
    fn item_prefix(content_ref: u8) -> Encoder {
        let mut e = Encoder::new();
        e.write_var_u64(1); // clients
        e.write_var_u64(1); // structs
        e.write_var_u64(1); // client id
        e.write_var_u64(0); // clock
        e.write_u8(content_ref); // info: no origins, no parentSub
        e.write_var_u64(1); // parentInfo: root type by name
        e.write_var_str("a");
        e
    }

    fn finish(mut e: Encoder) -> Vec<u8> {
        e.write_var_u64(0); // empty delete set
        e.into_vec()
    }

    /// ContentAny holding one array nested `depth` deep around a `null`
    /// (`[117, 1]` × depth, then `126`). With depth 10,000 this is ~20 KB and
    /// is exactly the shape that overflows yrs 0.28.1's recursive decoder.
    pub fn nested_any_array_update(depth: usize) -> Vec<u8> {
        let mut e = item_prefix(8);
        e.write_var_u64(1); // one Any value
        for _ in 0..depth {
            e.write_u8(117);
            e.write_var_u64(1);
        }
        e.write_u8(126);
        finish(e)
    }

    /// ContentAny holding objects nested `depth` deep (`{"k": {"k": ... null}}`).
    pub fn nested_any_object_update(depth: usize) -> Vec<u8> {
        let mut e = item_prefix(8);
        e.write_var_u64(1);
        for _ in 0..depth {
            e.write_u8(118);
            e.write_var_u64(1);
            e.write_var_str("k");
        }
        e.write_u8(126);
        finish(e)
    }

    /// ContentDoc whose options `Any` is nested `depth` arrays deep.
    pub fn nested_doc_options_update(depth: usize) -> Vec<u8> {
        let mut e = item_prefix(9);
        e.write_var_str("guid");
        for _ in 0..depth {
            e.write_u8(117);
            e.write_var_u64(1);
        }
        e.write_u8(126);
        finish(e)
    }

    fn nested_json_text(depth: usize) -> String {
        let mut s = "[".repeat(depth);
        s.push_str(&"]".repeat(depth));
        s
    }

    /// ContentJSON with one entry `[[[[...]]]]` nested `depth` deep.
    pub fn nested_json_update(depth: usize) -> Vec<u8> {
        let mut e = item_prefix(2);
        e.write_var_u64(1);
        e.write_var_str(&nested_json_text(depth));
        finish(e)
    }

    /// ContentEmbed whose JSON is `[[[[...]]]]` nested `depth` deep.
    pub fn nested_embed_update(depth: usize) -> Vec<u8> {
        let mut e = item_prefix(5);
        e.write_var_str(&nested_json_text(depth));
        finish(e)
    }

    /// ContentFormat whose JSON value is `[[[[...]]]]` nested `depth` deep.
    pub fn nested_format_update(depth: usize) -> Vec<u8> {
        let mut e = item_prefix(6);
        e.write_var_str("bold");
        e.write_var_str(&nested_json_text(depth));
        finish(e)
    }

    /// 18-byte update whose ContentString bytes are not UTF-8 (the shape of
    /// the input that crashed yrs 0.27 through `from_utf8_unchecked`).
    pub fn invalid_utf8_string_update() -> Vec<u8> {
        let mut e = item_prefix(4);
        e.write_var_bytes(&[0xC3, 0x28, 0xFF, 0xFE, 0xED, 0xA0, 0x80, 0xF0]);
        finish(e)
    }

    /// Updates with invalid UTF-8 in every string position of the format:
    /// root name, parentSub, string content, format key, XML node name, doc
    /// guid, `Any` string, `Any` object key, JSON text.
    pub fn invalid_utf8_variants() -> Vec<Vec<u8>> {
        const BAD: &[u8] = &[0x61, 0xFF, 0x62];
        let header = |info: u8| {
            let mut e = Encoder::new();
            for v in [1, 1, 1, 0] {
                e.write_var_u64(v);
            }
            e.write_u8(info);
            e
        };
        let mut out = Vec::new();
        // Root type name.
        let mut e = header(4);
        e.write_var_u64(1);
        e.write_var_bytes(BAD);
        e.write_var_str("x");
        out.push(finish(e));
        // parentSub (map key).
        let mut e = header(4 | 0x20);
        e.write_var_u64(1);
        e.write_var_str("a");
        e.write_var_bytes(BAD);
        e.write_var_str("x");
        out.push(finish(e));
        // String content.
        out.push(invalid_utf8_string_update());
        // Format key.
        let mut e = item_prefix(6);
        e.write_var_bytes(BAD);
        e.write_var_str("true");
        out.push(finish(e));
        // XmlElement name.
        let mut e = item_prefix(7);
        e.write_var_u64(3);
        e.write_var_bytes(BAD);
        out.push(finish(e));
        // Doc guid.
        let mut e = item_prefix(9);
        e.write_var_bytes(BAD);
        e.write_u8(126);
        out.push(finish(e));
        // Any string.
        let mut e = item_prefix(8);
        e.write_var_u64(1);
        e.write_u8(119);
        e.write_var_bytes(BAD);
        out.push(finish(e));
        // Any object key.
        let mut e = item_prefix(8);
        e.write_var_u64(1);
        e.write_u8(118);
        e.write_var_u64(1);
        e.write_var_bytes(BAD);
        e.write_u8(126);
        out.push(finish(e));
        // JSON text.
        let mut e = item_prefix(2);
        e.write_var_u64(1);
        e.write_var_bytes(&[b'"', 0xFF, b'"']);
        out.push(finish(e));
        out
    }

    /// ContentString whose length prefix claims 2^40 bytes, followed by a
    /// few real bytes: a decoder that allocates from the prefix asks for 1 TiB.
    pub fn huge_length_update() -> Vec<u8> {
        let mut e = item_prefix(4);
        e.write_var_u64(1 << 40);
        e.write_raw(b"abcd");
        finish(e)
    }

    /// Update whose client count claims 2^40 clients (pre-allocation bomb
    /// for decoders that size a map from the count).
    pub fn huge_count_update() -> Vec<u8> {
        let mut e = Encoder::new();
        e.write_var_u64(1 << 40);
        e.write_raw(&[1, 1, 0, 0, 1]);
        e.into_vec()
    }

    /// ContentAny with `count` claiming 2^40 values.
    pub fn huge_any_count_update() -> Vec<u8> {
        let mut e = item_prefix(8);
        e.write_var_u64(1 << 40);
        e.write_u8(126);
        finish(e)
    }

    /// A *parser-differential* update: to yjs (and to the validator with
    /// [`Target::Yjs`](super::Target::Yjs)) it is a harmless XmlHook whose
    /// name happens to be a long ASCII string, followed by a GC struct; yrs
    /// 0.28.1, which does not read XmlHook names, instead parses the name's
    /// bytes as a second struct: a ContentAny nested at least `depth` deep,
    /// i.e. the stack-overflow payload smuggled past any yjs-faithful check.
    /// The default [`Target::Yrs`](super::Target::Yrs) rejects it.
    pub fn xml_hook_smuggle_update(depth: usize) -> Vec<u8> {
        // yrs takes the first byte of the name's length varint as the next
        // info byte. Pick a nesting `n` >= depth whose payload length L has
        // L % 128 == 8 (and L >= 128), so that byte is 0x88: an Item with an
        // origin and ContentAny. yrs then reads the origin client from the
        // rest of the length varint and everything else from the payload.
        let mut n = depth.max(62);
        while (4 + 2 * n) % 128 != 8 {
            n += 1;
        }
        let mut payload = Vec::with_capacity(4 + 2 * n);
        payload.extend_from_slice(&[0, 1]); // yrs: origin clock 0, one Any value
        for _ in 0..n {
            payload.extend_from_slice(&[117, 1]);
        }
        payload.extend_from_slice(&[126, 0]); // null; yrs: empty delete set
        let mut e = Encoder::new();
        e.write_var_u64(1); // clients
        e.write_var_u64(2); // structs
        e.write_var_u64(1); // client id
        e.write_var_u64(0); // clock
        e.write_u8(7); // ContentType, no origins -> parent follows
        e.write_var_u64(1);
        e.write_var_str("a");
        e.write_u8(5); // XmlHook
        e.write_var_bytes(&payload); // yjs: hook name; yrs: the next struct
        e.write_u8(0); // yjs: GC struct ...
        e.write_var_u64(1); // ... of length 1
        finish(e)
    }

    /// A 28-byte update (found by differential fuzzing against yrs 0.28.1)
    /// whose structs start at clock 3,026,502,050 (>= 2^31) and whose last
    /// item has an origin at a lower clock of the same client: yrs'
    /// `i32` clock arithmetic goes wrong and its block-list binary search
    /// panics, in release builds too.
    pub fn high_clock_update() -> Vec<u8> {
        vec![
            0x01, 0x03, 0xc3, 0x05, 0xa2, 0x83, 0x93, 0xa3, 0x0b, 0x04, 0x01, 0x01, 0x74, 0x03,
            0x61, 0x62, 0x61, 0x0a, 0x03, 0x84, 0xc3, 0x05, 0x05, 0x03, 0x63, 0x63, 0x63, 0x00,
        ]
    }

    /// Two updates (found by differential fuzzing against yrs 0.28.1) that,
    /// applied in order to an empty yrs `Doc`, leave a dangling item pointer
    /// and segfault the process (no panic to catch). The first one carries
    /// same-client origins pointing at later clocks, which the validator
    /// rejects; the second is harmless on its own.
    pub fn future_origin_segfault_updates() -> [Vec<u8>; 2] {
        [
            vec![
                0x01, 0x05, 0x02, 0x01, 0x0a, 0x01, 0xa4, 0x02, 0x06, 0x03, 0x61, 0x62, 0x63, 0x88,
                0x02, 0x04, 0x02, 0x7e, 0x7e, 0xa4, 0x01, 0x09, 0x03, 0x61, 0x62, 0x63, 0x45, 0x02,
                0x0d, 0x07, 0x7b, 0x22, 0x61, 0x22, 0x3a, 0x31, 0x7d, 0x00,
            ],
            vec![
                0x01, 0x03, 0x02, 0x06, 0x00, 0x01, 0x0a, 0x01, 0x87, 0x01, 0x08, 0x01, 0x01, 0x02,
                0x00,
            ],
        ]
    }

    /// **Passes validation.** Two updates (83 and 38 bytes, found by
    /// differential fuzzing) that, applied in order to an empty yrs 0.28.1
    /// `Doc`, segfault the process: the second re-sends clocks of client 2
    /// that the first already delivered, with different content. Whether
    /// that is legitimate depends on document state, so no stateless check
    /// can reject it; see [`update_client_ranges`](super::update_client_ranges)
    /// for the state-aware guard (the first update covers client 2 up to
    /// clock 20, the second starts at 7). For integration tests of that guard
    /// or of process isolation.
    pub fn yrs_resend_segfault_updates() -> [Vec<u8>; 2] {
        [
            vec![
                0x03, 0x05, 0x02, 0x0c, 0x00, 0x04, 0x43, 0x03, 0x00, 0x02, 0x01, 0x02, 0x49, 0x01,
                0x12, 0x04, 0x67, 0x75, 0x69, 0x64, 0x76, 0x00, 0xa3, 0x02, 0x01, 0x02, 0x01, 0x02,
                0x81, 0x01, 0x11, 0x01, 0x03, 0x01, 0x03, 0xa4, 0x03, 0x16, 0x02, 0x79, 0x7a, 0x0a,
                0x01, 0x28, 0x00, 0x02, 0x02, 0x01, 0x6c, 0x03, 0x78, 0x7d, 0x05, 0x7e, 0x04, 0x03,
                0x06, 0x08, 0x01, 0x01, 0x62, 0x02, 0x7e, 0x7d, 0x05, 0x84, 0x01, 0x0b, 0x04, 0xf0,
                0x9f, 0x8c, 0x8d, 0x00, 0x02, 0x03, 0x01, 0x01, 0x62, 0x02, 0x01, 0x02, 0x00,
            ],
            vec![
                0x01, 0x04, 0x02, 0x07, 0x00, 0x04, 0x84, 0x02, 0x07, 0x02, 0x79, 0x7a, 0x08, 0x00,
                0x03, 0x11, 0x03, 0x7d, 0x05, 0x7d, 0x05, 0x7d, 0x05, 0x06, 0x00, 0x01, 0x00, 0x04,
                0x62, 0x6f, 0x6c, 0x64, 0x04, 0x74, 0x72, 0x75, 0x65, 0x00,
            ],
        ]
    }

    /// **Passes validation.** One 56-byte update (found by differential
    /// fuzzing) with an item whose origin points between the two UTF-16
    /// halves of an emoji in a string item of the same update; yrs 0.28.1
    /// then underflows a type's length counter (`block_len -= len`): a panic
    /// in debug builds, a silently corrupted length in release. yjs replaces
    /// split surrogate halves with U+FFFD instead. The same reference can
    /// target a string from an earlier update, so this needs document state
    /// (or a yrs fix) to stop; it is here to test that a panic while applying
    /// is contained.
    pub fn yrs_surrogate_split_update() -> Vec<u8> {
        vec![
            0x03, 0x01, 0x01, 0x0f, 0x04, 0x01, 0x01, 0x62, 0x04, 0xf0, 0x9f, 0x8c, 0x8d, 0x01,
            0x02, 0x08, 0x01, 0x00, 0x03, 0x16, 0x03, 0x04, 0x03, 0x0e, 0x07, 0x01, 0x01, 0x61,
            0x00, 0x87, 0x01, 0x0f, 0x04, 0xa4, 0x03, 0x0b, 0x04, 0xf0, 0x9f, 0x8c, 0x8d, 0x24,
            0x01, 0x01, 0x62, 0x01, 0x6c, 0x03, 0x61, 0x62, 0x63, 0x01, 0x01, 0x01, 0x0f, 0x04,
        ]
    }

    /// Every generator above at its nastiest setting (depth 10,000), by name.
    pub fn all() -> Vec<(&'static str, Vec<u8>)> {
        let mut v = vec![
            ("nested_any_array", nested_any_array_update(10_000)),
            ("nested_any_object", nested_any_object_update(10_000)),
            ("nested_doc_options", nested_doc_options_update(10_000)),
            ("nested_json", nested_json_update(10_000)),
            ("nested_embed", nested_embed_update(10_000)),
            ("nested_format", nested_format_update(10_000)),
            ("invalid_utf8_string", invalid_utf8_string_update()),
            ("huge_length", huge_length_update()),
            ("huge_count", huge_count_update()),
            ("huge_any_count", huge_any_count_update()),
            ("xml_hook_smuggle", xml_hook_smuggle_update(10_000)),
            ("high_clock", high_clock_update()),
        ];
        let [future_origin, _] = future_origin_segfault_updates();
        v.push(("future_origin", future_origin));
        for u in invalid_utf8_variants() {
            v.push(("invalid_utf8_variant", u));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::lib0::Encoder;
    use super::super::message;
    use super::hostile;
    use super::*;

    fn vectors() -> Vec<(String, Vec<u8>)> {
        let text = include_str!("testdata/vectors.txt");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (name, hex) = line.split_once(' ').expect("name hex");
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect();
                (name.to_string(), bytes)
            })
            .collect()
    }

    fn real_updates() -> Vec<(String, Vec<u8>)> {
        let v: Vec<_> = vectors()
            .into_iter()
            .filter(|(n, _)| n.starts_with("update_"))
            .collect();
        assert!(v.len() >= 20);
        v
    }

    fn lim() -> Limits {
        Limits::default()
    }

    /// Validates for the permissive yjs target, which walks every content
    /// kind (the default target stops early at ContentJSON / XmlHook).
    fn yjs(bytes: &[u8], limits: &Limits) -> Result<UpdateSummary, ValidationError> {
        validate_update_v1_for(bytes, limits, Target::Yjs)
    }

    /// Builds a one-item update with the given info byte and raw bytes after
    /// the header (parent/origins + content), plus the empty delete set.
    fn one_struct(info: u8, after_info: &[u8]) -> Vec<u8> {
        let mut e = Encoder::new();
        e.write_raw(&[1, 1, 1, 0, info]);
        e.write_raw(after_info);
        e.write_u8(0);
        e.into_vec()
    }

    /// Root-parented item ("a") with the given content ref and content bytes.
    fn root_item(content_ref: u8, content: &[u8]) -> Vec<u8> {
        let mut after = vec![1, 1, b'a'];
        after.extend_from_slice(content);
        one_struct(content_ref, &after)
    }

    fn json_item(json: &str) -> Vec<u8> {
        let mut e = Encoder::new();
        e.write_var_u64(1);
        e.write_var_str(json);
        root_item(2, e.as_slice())
    }

    // ---- real vectors -----------------------------------------------------

    /// Real vectors holding constructs yrs 0.28.1 decodes differently.
    const YRS_DIVERGENT: [(&str, ValidationError); 2] = [
        ("update_xml_hook", ValidationError::Unsupported("xml hook")),
        (
            "update_legacy_json",
            ValidationError::Unsupported("legacy json content"),
        ),
    ];

    #[test]
    fn default_target_accepts_real_updates_except_yrs_divergent_ones() {
        for (name, bytes) in real_updates() {
            let r = validate_update_v1(&bytes, &lim());
            match YRS_DIVERGENT.iter().find(|(n, _)| *n == name) {
                Some((_, err)) => assert_eq!(r, Err(*err), "{name}"),
                None => assert!(r.is_ok(), "{name}: {r:?}"),
            }
        }
    }

    #[test]
    fn yjs_target_accepts_every_real_update() {
        for (name, bytes) in real_updates() {
            let s = validate_update_v1_for(&bytes, &lim(), Target::Yjs)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            if name == "update_empty_doc" {
                assert!(s.is_empty);
                assert_eq!(bytes, [0, 0]);
            } else {
                assert!(!s.is_empty, "{name}");
                assert!(s.structs > 0 || s.delete_ranges > 0, "{name}");
            }
        }
    }

    #[test]
    fn real_vectors_cover_every_content_kind() {
        // Walk the real updates with a tiny independent scanner to prove the
        // vectors exercise every content ref, so "accepts every real update"
        // means something. Reuses the validator for the content itself.
        let mut seen = [false; 11];
        for (_, bytes) in real_updates() {
            let mut d = Decoder::new(&bytes);
            let mut stack = Vec::new();
            let clients = d.read_len().expect("clients");
            for _ in 0..clients {
                let n = d.read_len().expect("n");
                let client = d.read_var_u64().expect("client");
                let mut clock = d.read_var_u64().expect("clock");
                for _ in 0..n {
                    let info = d.rest()[0];
                    seen[usize::from(info & 0x1F)] = true;
                    clock +=
                        validate_struct(&mut d, (client, clock), &lim(), Target::Yjs, &mut stack)
                            .expect("struct");
                }
            }
        }
        assert_eq!(seen, [true; 11], "content refs 0..=10 seen: {seen:?}");
    }

    #[test]
    fn accepts_real_state_vectors_awareness_and_messages() {
        for (name, bytes) in vectors() {
            if name.starts_with("sv_") {
                validate_state_vector(&bytes, &lim()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            } else if name.starts_with("awareness_") {
                let n = validate_awareness_update(&bytes, 64 * 1024)
                    .unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert!(n > 0);
            } else if name.starts_with("msg_") {
                validate_message(&bytes, &lim(), 64 * 1024)
                    .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            }
        }
    }

    #[test]
    fn every_strict_prefix_of_a_real_update_is_rejected() {
        for (name, bytes) in real_updates() {
            // Every prefix for normal-sized updates; the 11 KB edit-heavy one
            // gets a stride to keep the debug-build test fast.
            let step = if bytes.len() > 2048 { 7 } else { 1 };
            for cut in (0..bytes.len()).step_by(step) {
                let prefix = &bytes[..cut];
                assert!(
                    validate_update_v1_for(prefix, &lim(), Target::Yjs).is_err(),
                    "{name} prefix {cut} accepted"
                );
                assert!(
                    validate_update_v1(prefix, &lim()).is_err(),
                    "{name} prefix {cut} accepted"
                );
            }
        }
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        for (name, mut bytes) in real_updates() {
            bytes.push(0);
            assert_eq!(
                validate_update_v1_for(&bytes, &lim(), Target::Yjs),
                Err(ValidationError::TrailingBytes),
                "{name}"
            );
        }
    }

    // ---- hostile generators ----------------------------------------------

    #[test]
    fn rejects_every_hostile_generator() {
        for (name, bytes) in hostile::all() {
            let r = validate_update_v1(&bytes, &lim());
            assert!(r.is_err(), "{name} accepted");
        }
        let nested = hostile::nested_any_array_update(10_000);
        assert!(
            (20_000..20_100).contains(&nested.len()),
            "len {}",
            nested.len()
        );
        assert_eq!(
            validate_update_v1(&nested, &lim()),
            Err(ValidationError::TooDeep)
        );
        for f in [
            hostile::nested_any_object_update,
            hostile::nested_doc_options_update,
            hostile::nested_json_update,
            hostile::nested_embed_update,
            hostile::nested_format_update,
        ] {
            assert_eq!(yjs(&f(10_000), &lim()), Err(ValidationError::TooDeep));
        }
        // The default target also rejects everything, if only earlier.
        assert_eq!(
            validate_update_v1(&hostile::nested_json_update(10_000), &lim()),
            Err(ValidationError::Unsupported("legacy json content"))
        );
        let utf8 = hostile::invalid_utf8_string_update();
        assert_eq!(utf8.len(), 18);
        assert_eq!(
            validate_update_v1(&utf8, &lim()),
            Err(ValidationError::InvalidUtf8)
        );
        for (i, u) in hostile::invalid_utf8_variants().iter().enumerate() {
            assert_eq!(
                yjs(u, &lim()),
                Err(ValidationError::InvalidUtf8),
                "variant {i}"
            );
            assert!(validate_update_v1(u, &lim()).is_err(), "variant {i}");
        }
        assert_eq!(
            validate_update_v1(&hostile::huge_length_update(), &lim()),
            Err(ValidationError::LengthOutOfBounds)
        );
        assert_eq!(
            validate_update_v1(&hostile::huge_count_update(), &lim()),
            Err(ValidationError::LengthOutOfBounds)
        );
        assert_eq!(
            validate_update_v1(&hostile::huge_any_count_update(), &lim()),
            Err(ValidationError::LengthOutOfBounds)
        );
        let high = hostile::high_clock_update();
        assert_eq!(high.len(), 28);
        assert_eq!(
            validate_update_v1(&high, &lim()),
            Err(ValidationError::Malformed("clock out of range"))
        );
    }

    #[test]
    fn hostile_generators_are_otherwise_well_formed() {
        // With a shallow nesting the same generators produce valid updates,
        // proving the rejection above is due to depth and nothing else.
        for f in [
            hostile::nested_any_array_update,
            hostile::nested_any_object_update,
            hostile::nested_doc_options_update,
            hostile::nested_json_update,
            hostile::nested_embed_update,
            hostile::nested_format_update,
        ] {
            assert_eq!(
                yjs(&f(3), &lim()),
                Ok(UpdateSummary {
                    structs: 1,
                    delete_ranges: 0,
                    is_empty: false
                })
            );
        }
    }

    #[test]
    fn depth_limit_boundaries() {
        let l = lim();
        let d = l.max_depth;
        for f in [
            hostile::nested_any_array_update,
            hostile::nested_any_object_update,
            hostile::nested_doc_options_update,
            hostile::nested_json_update,
            hostile::nested_embed_update,
            hostile::nested_format_update,
        ] {
            assert!(yjs(&f(d), &l).is_ok());
            assert_eq!(yjs(&f(d + 1), &l), Err(ValidationError::TooDeep));
        }
        // Empty containers count too: `[]` at depth max+1 is too deep.
        assert!(yjs(
            &json_item(&format!("{}{}", "[".repeat(d), "]".repeat(d))),
            &l
        )
        .is_ok());
        let mut any = vec![1];
        for _ in 0..d {
            any.extend_from_slice(&[117, 1]);
        }
        any.extend_from_slice(&[117, 0]);
        assert_eq!(
            validate_update_v1(&root_item(8, &any), &l),
            Err(ValidationError::TooDeep)
        );
        // max_depth 0 allows scalars only.
        let zero = Limits { max_depth: 0, ..l };
        assert!(validate_update_v1(&root_item(8, &[1, 126]), &zero).is_ok());
        assert_eq!(
            validate_update_v1(&root_item(8, &[1, 117, 0]), &zero),
            Err(ValidationError::TooDeep)
        );
    }

    #[test]
    fn deep_nesting_uses_no_call_stack() {
        // 256 KiB of stack: a recursive walk of 10,000 levels would overflow
        // it (and abort the test binary). Raising the limit so the whole
        // value is walked proves the walk is iterative, not just that it
        // bails out early.
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let started = std::time::Instant::now();
                let strict = Limits::default();
                for (_, bytes) in hostile::all() {
                    assert!(validate_update_v1(&bytes, &strict).is_err());
                }
                let lax = Limits {
                    max_depth: 1_000_000,
                    ..strict
                };
                for f in [
                    hostile::nested_any_array_update,
                    hostile::nested_any_object_update,
                    hostile::nested_doc_options_update,
                    hostile::nested_json_update,
                    hostile::nested_embed_update,
                    hostile::nested_format_update,
                ] {
                    assert!(yjs(&f(200_000), &lax).is_ok());
                }
                started.elapsed()
            })
            .expect("spawn");
        let elapsed = handle
            .join()
            .expect("validator thread panicked or overflowed");
        assert!(
            elapsed < std::time::Duration::from_secs(10),
            "took {elapsed:?}"
        );
    }

    // ---- targeted malformations ------------------------------------------

    #[test]
    fn rejects_unknown_content_refs_and_type_refs() {
        for r in 11u8..=31 {
            assert_eq!(
                validate_update_v1(&root_item(r, &[]), &lim()),
                Err(ValidationError::UnknownContent(r))
            );
        }
        for t in 0u8..=6 {
            let mut c = vec![t];
            if t == 3 || t == 5 {
                c.extend_from_slice(&[1, b'p']);
            }
            assert!(
                validate_update_v1_for(&root_item(7, &c), &lim(), Target::Yjs).is_ok(),
                "type {t}"
            );
            let default = validate_update_v1(&root_item(7, &c), &lim());
            if t == 5 {
                assert_eq!(default, Err(ValidationError::Unsupported("xml hook")));
            } else {
                assert!(default.is_ok(), "type {t}");
            }
        }
        // Overlong varint type ref: yjs would read 3, yrs reads the byte 0x83.
        assert_eq!(
            validate_update_v1(&root_item(7, &[0x83, 0x00, 1, b'p']), &lim()),
            Err(ValidationError::UnknownTypeRef(0x83))
        );
        assert_eq!(
            validate_update_v1(&root_item(7, &[7]), &lim()),
            Err(ValidationError::UnknownTypeRef(7))
        );
        assert_eq!(
            validate_update_v1(&root_item(7, &[15]), &lim()),
            Err(ValidationError::UnknownTypeRef(15))
        );
        assert_eq!(
            validate_update_v1(&root_item(8, &[1, 115]), &lim()),
            Err(ValidationError::UnknownAny(115))
        );
        assert_eq!(
            validate_update_v1(&root_item(8, &[1, 128]), &lim()),
            Err(ValidationError::UnknownAny(128))
        );
        assert_eq!(
            validate_update_v1(&root_item(8, &[1, 0]), &lim()),
            Err(ValidationError::UnknownAny(0))
        );
    }

    #[test]
    fn all_any_tags_accepted() {
        let mut e = Encoder::new();
        let tags: Vec<Vec<u8>> = vec![
            vec![127],
            vec![126],
            vec![125, 0x41],
            vec![124, 0, 0, 0, 0],
            vec![123, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![122, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            vec![121],
            vec![120],
            vec![119, 2, b'h', b'i'],
            vec![118, 1, 1, b'k', 117, 2, 126, 116, 1, 9],
            vec![117, 0],
            vec![116, 0],
        ];
        e.write_var_u64(tags.len() as u64);
        for t in &tags {
            e.write_raw(t);
        }
        assert!(validate_update_v1(&root_item(8, e.as_slice()), &lim()).is_ok());
        // Each tag truncated by one byte is rejected.
        for t in tags.iter().filter(|t| t.len() > 1) {
            let mut c = vec![1];
            c.extend_from_slice(&t[..t.len() - 1]);
            assert!(
                validate_update_v1(&root_item(8, &c), &lim()).is_err(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn any_integer_range() {
        let mut e = Encoder::new();
        e.write_var_i64(MAX_SAFE_INTEGER);
        let mut ok = vec![1, 125];
        ok.extend_from_slice(e.as_slice());
        assert!(validate_update_v1(&root_item(8, &ok), &lim()).is_ok());
        let mut e = Encoder::new();
        e.write_var_i64(MAX_SAFE_INTEGER + 1);
        let mut big = vec![1, 125];
        big.extend_from_slice(e.as_slice());
        assert_eq!(
            validate_update_v1(&root_item(8, &big), &lim()),
            Err(ValidationError::Malformed("integer out of range"))
        );
        // 11-byte varint (shift past 64 bits in yrs' reader).
        let mut long = vec![1, 125];
        long.extend_from_slice(&[0x80; 10]);
        long.push(0);
        assert!(validate_update_v1(&root_item(8, &long), &lim()).is_err());
    }

    #[test]
    fn header_variants() {
        // Origin + right origin, no parent; parentSub bit set but (as in yjs)
        // not read because an origin is present.
        assert!(validate_update_v1(
            &one_struct(0x80 | 0x40 | 0x20 | 4, &[5, 3, 6, 0, 1, b'x']),
            &lim()
        )
        .is_ok());
        // Parent by ID with a parentSub.
        assert!(
            validate_update_v1(&one_struct(0x20 | 4, &[0, 9, 2, 1, b'k', 1, b'x']), &lim()).is_ok()
        );
        // Bad parent info.
        assert_eq!(
            validate_update_v1(&one_struct(4, &[2, 1, b'a', 1, b'x']), &lim()),
            Err(ValidationError::Malformed("parent info"))
        );
        // GC and Skip: length only.
        assert!(validate_update_v1(&[1, 2, 1, 0, 0, 5, 10, 3, 0], &lim()).is_ok());
        assert_eq!(
            validate_update_v1(&[1, 1, 1, 0, 0, 0, 0], &lim()),
            Err(ValidationError::Malformed("empty struct"))
        );
    }

    #[test]
    fn zero_length_content_is_rejected() {
        assert_eq!(
            validate_update_v1(&root_item(4, &[0]), &lim()),
            Err(ValidationError::Malformed("empty struct"))
        );
        assert_eq!(
            validate_update_v1(&root_item(8, &[0]), &lim()),
            Err(ValidationError::Malformed("empty struct"))
        );
        assert_eq!(
            yjs(&root_item(2, &[0]), &lim()),
            Err(ValidationError::Malformed("empty struct"))
        );
        assert_eq!(
            validate_update_v1(&root_item(1, &[0]), &lim()),
            Err(ValidationError::Malformed("empty struct"))
        );
        assert!(validate_update_v1(&root_item(1, &[5]), &lim()).is_ok());
        // Empty binary / embed-like contents still have length 1.
        assert!(validate_update_v1(&root_item(3, &[0]), &lim()).is_ok());
    }

    #[test]
    fn clock_bounds() {
        let max = MAX_CLOCK;
        assert_eq!(max, (1 << 31) - 1);
        let mut e = Encoder::new();
        e.write_raw(&[1, 1, 1]);
        e.write_var_u64(max - 2);
        e.write_raw(&[0, 2, 0]); // GC len 2: ends exactly at MAX_CLOCK
        assert!(validate_update_v1(e.as_slice(), &lim()).is_ok());
        let mut e = Encoder::new();
        e.write_raw(&[1, 1, 1]);
        e.write_var_u64(max - 2);
        e.write_raw(&[0, 3, 0]);
        assert_eq!(
            validate_update_v1(e.as_slice(), &lim()),
            Err(ValidationError::Malformed("clock overflow"))
        );
        let mut e = Encoder::new();
        e.write_raw(&[1, 1, 1]);
        e.write_var_u64(1 << 31);
        e.write_raw(&[0, 1, 0]);
        assert_eq!(
            validate_update_v1(e.as_slice(), &lim()),
            Err(ValidationError::Malformed("clock out of range"))
        );
        // String length counts UTF-16 units: "🌍" is 2.
        let mut e = Encoder::new();
        e.write_raw(&[1, 1, 1]);
        e.write_var_u64(max - 2);
        e.write_raw(&[4, 1, 1, b'a']);
        e.write_var_str("🌍");
        e.write_u8(0);
        assert!(validate_update_v1(e.as_slice(), &lim()).is_ok());
        let mut e = Encoder::new();
        e.write_raw(&[1, 1, 1]);
        e.write_var_u64(max - 1);
        e.write_raw(&[4, 1, 1, b'a']);
        e.write_var_str("🌍");
        e.write_u8(0);
        assert_eq!(
            validate_update_v1(e.as_slice(), &lim()),
            Err(ValidationError::Malformed("clock overflow"))
        );
    }

    #[test]
    fn delete_set() {
        // Only a delete set: 1 client, 2 ranges.
        let ok = [0, 1, 7, 2, 0, 3, 10, 1];
        assert_eq!(
            validate_update_v1(&ok, &lim()),
            Ok(UpdateSummary {
                structs: 0,
                delete_ranges: 2,
                is_empty: false
            })
        );
        assert_eq!(
            validate_update_v1(&[0, 1, 7, 1, 0, 0], &lim()),
            Err(ValidationError::Malformed("empty delete range"))
        );
        let mut e = Encoder::new();
        e.write_raw(&[0, 1, 7, 1]);
        e.write_var_u64(MAX_CLOCK);
        e.write_var_u64(1);
        assert_eq!(
            validate_update_v1(e.as_slice(), &lim()),
            Err(ValidationError::Malformed("clock overflow"))
        );
        assert_eq!(
            validate_update_v1(&[0, 1, 7, 200, 1], &lim()),
            Err(ValidationError::LengthOutOfBounds)
        );
        // A delete-set client with no ranges is harmless.
        assert_eq!(
            validate_update_v1(&[0, 1, 7, 0], &lim()).map(|s| s.is_empty),
            Ok(true)
        );
        // Ranges must be sorted and must not overlap; adjacent is fine.
        let unsorted = Err(ValidationError::Malformed("unsorted delete ranges"));
        assert!(validate_update_v1(&[0, 1, 7, 2, 0, 3, 3, 1], &lim()).is_ok());
        assert_eq!(
            validate_update_v1(&[0, 1, 7, 2, 0, 3, 2, 1], &lim()),
            unsorted
        );
        assert_eq!(
            validate_update_v1(&[0, 1, 7, 2, 5, 1, 0, 1], &lim()),
            unsorted
        );
        // Each client once; the order of ranges is per client.
        assert!(validate_update_v1(&[0, 2, 7, 1, 5, 1, 8, 1, 0, 1], &lim()).is_ok());
        assert_eq!(
            validate_update_v1(&[0, 2, 7, 1, 5, 1, 7, 1, 9, 1], &lim()),
            Err(ValidationError::Malformed("duplicate client"))
        );
    }

    #[test]
    fn size_limits() {
        let small = Limits {
            max_update_bytes: 4,
            ..lim()
        };
        assert_eq!(
            validate_update_v1(&[0, 0], &small),
            Ok(UpdateSummary {
                structs: 0,
                delete_ranges: 0,
                is_empty: true
            })
        );
        assert_eq!(
            validate_update_v1(&[0, 0, 0, 0, 0], &small),
            Err(ValidationError::TooLarge)
        );
        assert_eq!(
            validate_state_vector(&[0, 0, 0, 0, 0], &small),
            Err(ValidationError::TooLarge)
        );
        assert_eq!(
            validate_update_v1(&[], &lim()),
            Err(ValidationError::Truncated)
        );
        assert_eq!(
            validate_update_v1(&[0], &lim()),
            Err(ValidationError::Truncated)
        );
    }

    #[test]
    fn state_vector_validation() {
        assert_eq!(validate_state_vector(&[0], &lim()), Ok(0));
        assert_eq!(validate_state_vector(&[2, 1, 5, 2, 0], &lim()), Ok(2));
        assert_eq!(
            validate_state_vector(&[2, 1, 5], &lim()),
            Err(ValidationError::Truncated)
        );
        assert_eq!(
            validate_state_vector(&[1, 1, 5, 0], &lim()),
            Err(ValidationError::TrailingBytes)
        );
        assert_eq!(
            validate_state_vector(&[0xFF, 0x7F], &lim()),
            Err(ValidationError::LengthOutOfBounds)
        );
    }

    #[test]
    fn awareness_validation() {
        let good = message::encode_awareness_update(&[
            (1, 2, "{\"user\":{\"name\":\"A\"}}"),
            (3, 4, "null"),
        ]);
        assert_eq!(validate_awareness_update(&good, 1024), Ok(2));
        assert_eq!(
            validate_awareness_update(&good, 5),
            Err(ValidationError::TooLarge)
        );
        let bad_json = message::encode_awareness_update(&[(1, 2, "{\"user\":")]);
        assert_eq!(
            validate_awareness_update(&bad_json, 1024),
            Err(ValidationError::InvalidJson)
        );
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let deep = message::encode_awareness_update(&[(1, 2, &deep)]);
        assert_eq!(
            validate_awareness_update(&deep, 1 << 20),
            Err(ValidationError::TooDeep)
        );
        let big_clock = message::encode_awareness_update(&[(1, 1 << 31, "null")]);
        assert!(validate_awareness_update(&big_clock, 1024).is_err());
        assert_eq!(
            validate_awareness_update(&[1, 1, 1, 1, 0xFF], 1024),
            Err(ValidationError::InvalidUtf8)
        );
        assert_eq!(
            validate_awareness_update(&[0, 0], 1024),
            Err(ValidationError::TrailingBytes)
        );
        assert_eq!(
            validate_awareness_update(&[0xFF, 0xFF, 0x03], 1024),
            Err(ValidationError::LengthOutOfBounds)
        );
    }

    #[test]
    fn validate_message_dispatches_on_kind() {
        let nested = hostile::nested_any_array_update(10_000);
        assert_eq!(
            validate_message(&message::encode_update(&nested), &lim(), 1024),
            Err(ValidationError::TooDeep)
        );
        assert_eq!(
            validate_message(&message::encode_sync_step2(&nested), &lim(), 1024),
            Err(ValidationError::TooDeep)
        );
        assert_eq!(
            validate_message(&message::encode_sync_step1(&[1, 5]), &lim(), 1024),
            Err(ValidationError::Truncated)
        );
        assert_eq!(
            validate_message(
                &message::encode_awareness(&[1, 1, 1, 3, b'{', b'}', b'x']),
                &lim(),
                1024
            ),
            Err(ValidationError::InvalidJson)
        );
        assert_eq!(
            validate_message(&[9], &lim(), 1024),
            Err(ValidationError::Malformed("unknown message type"))
        );
        assert_eq!(
            validate_message(&[3], &lim(), 1024),
            Ok(Message::QueryAwareness)
        );
        let upd = message::encode_update(&[0, 0]);
        assert_eq!(
            validate_message(&upd, &lim(), 1024),
            Ok(Message::Update(&[0, 0]))
        );
    }

    #[test]
    fn json_validator() {
        let ok = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1.5e+10",
            "-12.25E-3",
            "\"\"",
            "\"a\\\"]}\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83C\\uDF0D\"",
            "\"ünï 🌍\"",
            "[]",
            "{}",
            " [ 1 , { \"a\" : [ ] , \"b\" : { } } , \"]\" ] ",
            "{\"x\":\"[[[[[[\"}",
            "\t\n\r{\"k\":null}\n",
        ];
        for s in ok {
            assert_eq!(validate_json(s, 32), Ok(()), "{s}");
        }
        let bad = [
            "",
            " ",
            "nul",
            "nulls",
            "undefined",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "-",
            "\"abc",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"\\u12\"",
            "\"tab\there\"",
            "[",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\":1]",
            "[1}",
            "]",
            "1 2",
            "[]]",
            "NaN",
        ];
        for s in bad {
            assert_eq!(
                validate_json(s, 32),
                Err(ValidationError::InvalidJson),
                "{s:?}"
            );
        }
        // Brackets inside strings do not count toward depth.
        let quoted = format!("[\"{}\"]", "[".repeat(1000));
        assert_eq!(validate_json(&quoted, 2), Ok(()));
        assert_eq!(validate_json("[[1]]", 2), Ok(()));
        assert_eq!(validate_json("[[[1]]]", 2), Err(ValidationError::TooDeep));
        assert_eq!(
            validate_json("{\"a\":{\"b\":{}}}", 2),
            Err(ValidationError::TooDeep)
        );
        // "undefined" is only allowed as a whole ContentJSON entry.
        assert!(yjs(&json_item("undefined"), &lim()).is_ok());
        assert_eq!(
            yjs(&json_item("[undefined]"), &lim()),
            Err(ValidationError::InvalidJson)
        );
    }

    #[test]
    fn errors_display_short_and_safe() {
        let all = [
            ValidationError::Truncated,
            ValidationError::TooDeep,
            ValidationError::InvalidUtf8,
            ValidationError::InvalidJson,
            ValidationError::UnknownContent(31),
            ValidationError::UnknownAny(3),
            ValidationError::UnknownTypeRef(u64::MAX),
            ValidationError::LengthOutOfBounds,
            ValidationError::TrailingBytes,
            ValidationError::TooLarge,
            ValidationError::Unsupported("legacy json content"),
            ValidationError::Malformed("clock overflow"),
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.is_empty() && s.len() <= 48 && s.is_ascii(), "{s}");
        }
    }

    #[test]
    fn xml_hook_smuggling_is_caught_by_default_target() {
        let smuggled = hostile::xml_hook_smuggle_update(10_000);
        // To a yjs-faithful walk it is a shallow, valid update: two structs.
        assert_eq!(
            validate_update_v1_for(&smuggled, &lim(), Target::Yjs),
            Ok(UpdateSummary {
                structs: 2,
                delete_ranges: 0,
                is_empty: false
            })
        );
        // The bytes a yrs-style reader would see as the second struct really
        // are an Item (info 0x88: origin + ContentAny) nested >= 10,000 deep.
        let name_len_at = 9; // [1,2,1,0,7,1,1,'a',5] precede the name length
        assert_eq!(smuggled[name_len_at], 0x88);
        assert!(smuggled.windows(2).filter(|w| *w == [117, 1]).count() >= 10_000);
        assert_eq!(
            validate_update_v1(&smuggled, &lim()),
            Err(ValidationError::Unsupported("xml hook"))
        );
    }

    #[test]
    fn legacy_json_only_for_yjs_target() {
        let u = json_item("[1,{\"a\":null}]");
        assert!(validate_update_v1_for(&u, &lim(), Target::Yjs).is_ok());
        assert_eq!(
            validate_update_v1(&u, &lim()),
            Err(ValidationError::Unsupported("legacy json content"))
        );
    }

    #[test]
    fn client_ids_are_bounded_and_unique() {
        let max = (1u64 << 53) - 1;
        let with_client = |c: u64| {
            let mut e = Encoder::new();
            e.write_raw(&[1, 1]);
            e.write_var_u64(c);
            e.write_raw(&[0, 0, 1, 0]); // clock 0, GC len 1, empty ds
            e.into_vec()
        };
        assert!(validate_update_v1(&with_client(max), &lim()).is_ok());
        assert_eq!(
            validate_update_v1(&with_client(max + 1), &lim()),
            Err(ValidationError::Malformed("client id out of range"))
        );
        // Origin ID client.
        let mut after = Vec::new();
        let mut e = Encoder::new();
        e.write_var_u64(max + 1);
        after.extend_from_slice(e.as_slice());
        after.extend_from_slice(&[0, 1, b'x']);
        assert_eq!(
            validate_update_v1(&one_struct(0x80 | 4, &after), &lim()),
            Err(ValidationError::Malformed("client id out of range"))
        );
        // Delete-set client.
        let mut e = Encoder::new();
        e.write_raw(&[0, 1]);
        e.write_var_u64(u64::MAX);
        e.write_raw(&[1, 0, 1]);
        assert_eq!(
            validate_update_v1(e.as_slice(), &lim()),
            Err(ValidationError::Malformed("client id out of range"))
        );
        // State vector / awareness clients.
        let mut e = Encoder::new();
        e.write_u8(1);
        e.write_var_u64(max + 1);
        e.write_u8(0);
        assert!(validate_state_vector(e.as_slice(), &lim()).is_err());
        let aw = message::encode_awareness_update(&[(max + 1, 0, "null")]);
        assert!(validate_awareness_update(&aw, 1024).is_err());
        // The same client twice in one update.
        let dup = [2, 1, 7, 0, 0, 1, 1, 7, 1, 0, 1, 0];
        assert_eq!(
            validate_update_v1(&dup, &lim()),
            Err(ValidationError::Malformed("duplicate client"))
        );
        let distinct = [2, 1, 7, 0, 0, 1, 1, 8, 1, 0, 1, 0];
        assert!(validate_update_v1(&distinct, &lim()).is_ok());
    }

    #[test]
    fn same_client_references_must_point_back_in_time() {
        // Item (client 1, clock 5): origin (1, 4) is fine, (1, 5) is not.
        let at5 = |info: u8, after: &[u8]| {
            let mut e = Encoder::new();
            e.write_raw(&[1, 1, 1, 5, info]);
            e.write_raw(after);
            e.write_u8(0);
            e.into_vec()
        };
        let later = Err(ValidationError::Malformed("reference to a later clock"));
        assert!(validate_update_v1(&at5(0x80 | 4, &[1, 4, 1, b'x']), &lim()).is_ok());
        assert_eq!(
            validate_update_v1(&at5(0x80 | 4, &[1, 5, 1, b'x']), &lim()),
            later
        );
        assert_eq!(
            validate_update_v1(&at5(0x40 | 4, &[1, 9, 1, b'x']), &lim()),
            later
        );
        assert!(validate_update_v1(&at5(0x40 | 4, &[2, 9, 1, b'x']), &lim()).is_ok());
        // Parent given by ID.
        assert!(validate_update_v1(&at5(4, &[0, 1, 0, 1, b'x']), &lim()).is_ok());
        assert_eq!(
            validate_update_v1(&at5(4, &[0, 1, 6, 1, b'x']), &lim()),
            later
        );
        // The clock advances along the structs: the 2nd struct (clock 6) may
        // refer to the 1st (clock 5) but not to itself.
        let two = |origin_clock: u8| {
            [
                1,
                2,
                1,
                5,
                4,
                1,
                1,
                b'a',
                1,
                b'x',
                0x84,
                1,
                origin_clock,
                1,
                b'y',
                0,
            ]
        };
        assert!(validate_update_v1(&two(5), &lim()).is_ok());
        assert_eq!(validate_update_v1(&two(6), &lim()), later);
        // The yrs segfault reproducer is stopped at its first update.
        let [first, second] = hostile::future_origin_segfault_updates();
        assert_eq!(validate_update_v1(&first, &lim()), later);
        assert!(validate_update_v1(&second, &lim()).is_ok());
    }

    #[test]
    fn client_ranges() {
        // Client 1: Skip 3 (ignored), GC 2 at clock 3, String "ab" at 5.
        let u = [
            2, 3, 1, 0, 10, 3, 0, 2, 4, 1, 1, b'a', 2, b'a', b'b', 1, 9, 4, 0, 2, 0,
        ];
        assert_eq!(
            update_client_ranges(&u, &lim()),
            Ok(vec![
                ClientRange {
                    client: 1,
                    start: 3,
                    end: 7
                },
                ClientRange {
                    client: 9,
                    start: 4,
                    end: 6
                },
            ])
        );
        assert_eq!(update_client_ranges(&[0, 0], &lim()), Ok(vec![]));
        assert!(update_client_ranges(&hostile::nested_any_array_update(100), &lim()).is_err());
        for (name, bytes) in real_updates() {
            if YRS_DIVERGENT.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let ranges =
                update_client_ranges(&bytes, &lim()).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(ranges.iter().all(|r| r.start < r.end), "{name}");
        }
    }

    #[test]
    fn yrs_integration_reproducers_are_structurally_valid() {
        // Documents the limit of stateless validation: these pass, and the
        // state-aware guard is what catches the re-send.
        let [first, second] = hostile::yrs_resend_segfault_updates();
        assert!(validate_update_v1(&first, &lim()).is_ok());
        assert!(validate_update_v1(&second, &lim()).is_ok());
        let end_of_first = update_client_ranges(&first, &lim())
            .expect("ranges")
            .iter()
            .find(|r| r.client == 2)
            .map(|r| r.end);
        let start_of_second = update_client_ranges(&second, &lim())
            .expect("ranges")
            .iter()
            .find(|r| r.client == 2)
            .map(|r| r.start);
        assert_eq!((end_of_first, start_of_second), (Some(20), Some(7)));
        assert!(validate_update_v1(&hostile::yrs_surrogate_split_update(), &lim()).is_ok());
    }

    #[test]
    fn gc_and_skip_info_must_be_exact() {
        for info in [0x80u8, 0x40, 0x20, 0x80 | 10, 0x20 | 10] {
            assert_eq!(
                validate_update_v1(&[1, 1, 1, 0, info, 1, 0], &lim()),
                Err(ValidationError::Malformed("struct flags")),
                "{info:#x}"
            );
        }
    }

    // ---- fuzzing ------------------------------------------------------------

    /// xorshift64*: tiny, seeded, good enough to drive mutations.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Interesting bytes for lib0: tags, continuation bits, common small values.
    const MAGIC: &[u8] = &[
        0, 1, 2, 0x7F, 0x80, 0xFF, 0x20, 0x40, 0xC0, 116, 117, 118, 119, 122, 125, 126, 127, 10, 7,
        8, 9,
    ];

    fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
        let mut v = input.to_vec();
        let rounds = 1 + rng.below(4);
        for _ in 0..rounds {
            let len = v.len();
            match rng.below(9) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    v[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    v[i] = rng.next() as u8;
                }
                2 if len > 0 => {
                    let i = rng.below(len);
                    v[i] = MAGIC[rng.below(MAGIC.len())];
                }
                3 => {
                    let i = rng.below(len + 1);
                    v.insert(i, MAGIC[rng.below(MAGIC.len())]);
                }
                4 if len > 0 => {
                    let i = rng.below(len);
                    v.remove(i);
                }
                5 => v.truncate(rng.below(len + 1)),
                6 if len > 1 => {
                    // Duplicate a slice (repeats structs / Any values).
                    let a = rng.below(len);
                    let b = (a + 1 + rng.below(16)).min(len);
                    let chunk = v[a..b].to_vec();
                    let at = rng.below(len + 1);
                    v.splice(at..at, chunk);
                }
                7 => {
                    // Splice in a big varint (length / count / clock bombs).
                    let mut e = Encoder::new();
                    e.write_var_u64(rng.next() >> rng.below(64));
                    let at = rng.below(len + 1);
                    v.splice(at..at, e.into_vec());
                }
                _ if len > 0 => {
                    let i = rng.below(len);
                    v[i] = v[i].wrapping_add(1);
                }
                _ => v.push(rng.next() as u8),
            }
        }
        v
    }

    #[test]
    fn fuzz_mutations_never_panic() {
        let mut corpus: Vec<Vec<u8>> = vectors()
            .into_iter()
            .filter(|(_, b)| b.len() <= 1024)
            .map(|(_, b)| b)
            .collect();
        corpus.push(hostile::nested_any_array_update(40));
        corpus.push(hostile::nested_json_update(40));
        corpus.extend(hostile::invalid_utf8_variants());
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let l = lim();
        let mut accepted = 0usize;
        let mut rejected = 0usize;
        for i in 0..100_000 {
            let base = &corpus[i % corpus.len()];
            let m = mutate(&mut rng, base);
            let _ = validate_update_v1(&m, &l);
            match validate_update_v1_for(&m, &l, Target::Yjs) {
                Ok(_) => accepted += 1,
                Err(e) => {
                    rejected += 1;
                    // Display must always work and stay short.
                    assert!(e.to_string().len() <= 48);
                }
            }
            // The other entry points must hold up on the same garbage.
            let _ = validate_state_vector(&m, &l);
            let _ = validate_awareness_update(&m, 1024);
            let _ = message::decode_awareness_update(&m);
            let _ = message::decode_state_vector(&m);
            let _ = Message::decode(&m);
            let _ = validate_message(&m, &l, 1024);
        }
        // Sanity: the mutator produces both outcomes, so the loop is testing
        // deep paths and not just failing on the first byte.
        assert!(accepted > 100, "accepted {accepted}");
        assert!(rejected > 10_000, "rejected {rejected}");
    }
}
