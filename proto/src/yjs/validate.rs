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
//! `hostile::xml_hook_smuggle_update`, feature `hostile`). The default
//! [`Target::Yrs`] therefore rejects both constructs (no yjs 13 editor binding emits them:
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
//! [`update_client_ranges`] and the `yrs_*` reproducers in `hostile`).
//! Those need document state, or process isolation, to stop: see
//! [`guard`](super::guard).
//!
//! The walk itself is [`UpdateReader`] with [`Rules::Strict`] (the update v1
//! layout and the rules are documented there); this module adds the size
//! limit, the summary and the other payload kinds. This is *structural*
//! validation: it does not check that origins/parents reference items that
//! exist or have the right kind; those are resolved by the CRDT during
//! integration.

use super::lib0::Decoder;
use super::message::Message;
use super::update::{read_client, read_clock, Rules, Struct, StructKind, UpdateReader};

pub use super::update::{Target, ValidationError};

use super::json::validate_json;

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

/// Max JSON nesting accepted in awareness states (which have no `Limits`).
const AWARENESS_MAX_JSON_DEPTH: usize = 64;

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
    walk_update(bytes, limits, target, |_| {})
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
/// segfault yrs (`hostile::yrs_resend_segfault_updates`). A server can keep,
/// per document, the highest `end` it has accepted for each client and treat
/// `start < that` as a re-send; [`UpdateGuard`](super::guard::UpdateGuard)
/// does. Note that yrs' state vector is not enough for this: structs parked
/// as *pending* (missing dependencies) are not in it, and the fuzzer's
/// crashes went through pending structs too. Honest clients re-send only in
/// rare races (e.g. two tabs replaying the same offline state), so dropping
/// or trimming such updates costs little.
pub fn update_client_ranges(
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<ClientRange>, ValidationError> {
    validate_update_v1_with_ranges(bytes, limits).map(|(_, ranges)| ranges)
}

/// [`validate_update_v1`] and [`update_client_ranges`] in one walk.
pub fn validate_update_v1_with_ranges(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(UpdateSummary, Vec<ClientRange>), ValidationError> {
    let mut ranges = Vec::new();
    let summary = walk_update(bytes, limits, Target::Yrs, |s| {
        extend_ranges(&mut ranges, s)
    })?;
    Ok((summary, ranges))
}

/// Adds a struct to per-client ranges built in update order (a client's
/// structs are contiguous: the reader refuses a client twice).
pub(crate) fn extend_ranges(ranges: &mut Vec<ClientRange>, s: &Struct<'_>) {
    if s.kind == StructKind::Skip {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.client == s.id.client => last.end = s.end(),
        _ => ranges.push(ClientRange {
            client: s.id.client,
            start: s.id.clock,
            end: s.end(),
        }),
    }
}

/// The strict update walk behind the public entry points; `visit` sees
/// every struct once it has been checked.
pub(crate) fn walk_update(
    bytes: &[u8],
    limits: &Limits,
    target: Target,
    mut visit: impl FnMut(&Struct<'_>),
) -> Result<UpdateSummary, ValidationError> {
    if bytes.len() > limits.max_update_bytes {
        return Err(ValidationError::TooLarge);
    }
    let rules = Rules::Strict {
        max_depth: limits.max_depth,
        target,
    };
    let mut r = UpdateReader::new(bytes, rules)?;
    let mut structs = 0usize;
    while r.next_block()?.is_some() {
        while let Some(s) = r.next_struct()? {
            visit(&s);
            structs += 1;
        }
    }
    let mut delete_ranges = 0usize;
    while r.next_delete_client()?.is_some() {
        while r.next_delete_range()?.is_some() {
            delete_ranges += 1;
        }
    }
    r.finish()?;
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
