//! The one reader of Yjs update v1 bytes, and the format's constants.
//!
//! An update v1 (`Y.encodeStateAsUpdate`, `doc.on('update')`, yrs
//! `encode_v1`) is a list of client blocks followed by a delete set; the
//! layout follows yjs 13 (`src/utils/encoding.js` `readClientsStructRefs`,
//! `src/structs/*`, `DeleteSet.js` `readDeleteSet`) and lib0 (`decoding.js`
//! `readAny`):
//!
//! ```text
//! update     = n:var  block × n  delete_set
//! block      = n:var  client:var  clock:var  struct × n     (consecutive clocks)
//! struct     = info:u8 ( len:var                             GC (0) and Skip (10)
//!                      | [origin:id] [right_origin:id]      info bits 0x80, 0x40
//!                        [parent [parent_sub:str]]          only if neither origin
//!                        content )                          content ref = info & 0x1F
//! parent     = 1 root_name:str | 0 parent_item:id
//! id         = client:var clock:var
//! delete_set = n:var ( client:var  m:var  (clock:var len:var) × m ) × n
//! ```
//!
//! [`UpdateReader`] is a pull tokenizer over that layout: [`next_block`],
//! [`next_struct`], then [`next_delete_client`] and [`next_delete_range`],
//! then [`finish`]. Every content is walked to find where the struct ends, so
//! the reader is also where content is checked. It never recurses (lib0
//! `Any` values are walked with a heap stack), checks every length and count
//! prefix against the bytes left before using it, and so runs in time and
//! memory linear in the input.
//!
//! [`Rules`] say how much it checks. [`Rules::Strict`] is the validator's
//! complete set (see [`validate`](super::validate) for why each rule
//! exists: every one of them closes a crash, hang or parser differential in
//! a downstream decoder). [`Rules::Lax`] reads only what is needed to find
//! the structs, for bytes that were accepted once already (stored updates,
//! snapshots written by yrs) and must still be understood after a limit
//! was lowered.
//!
//! [`next_block`]: UpdateReader::next_block
//! [`next_struct`]: UpdateReader::next_struct
//! [`next_delete_client`]: UpdateReader::next_delete_client
//! [`next_delete_range`]: UpdateReader::next_delete_range
//! [`finish`]: UpdateReader::finish

use std::collections::HashSet;
use std::fmt;

use super::json::{validate_json, JsonError};
use super::lib0::{Decoder, Encoder, WireError};

// ---- format constants ---------------------------------------------------------

/// Content ref (`info & 0x1F`) of a GC struct (yjs `contentRefs`).
pub const REF_GC: u8 = 0;
/// Content ref of ContentDeleted.
pub const REF_DELETED: u8 = 1;
/// Content ref of ContentJSON (yjs 12 legacy).
pub const REF_JSON: u8 = 2;
/// Content ref of ContentBinary.
pub const REF_BINARY: u8 = 3;
/// Content ref of ContentString.
pub const REF_STRING: u8 = 4;
/// Content ref of ContentEmbed.
pub const REF_EMBED: u8 = 5;
/// Content ref of ContentFormat.
pub const REF_FORMAT: u8 = 6;
/// Content ref of ContentType (a shared type).
pub const REF_TYPE: u8 = 7;
/// Content ref of ContentAny.
pub const REF_ANY: u8 = 8;
/// Content ref of ContentDoc (a subdocument).
pub const REF_DOC: u8 = 9;
/// Content ref of a Skip struct (a placeholder for clocks not in the update).
pub const REF_SKIP: u8 = 10;

/// Item info bit: an origin (left neighbour) ID follows (yjs `Item.write`).
pub const INFO_HAS_ORIGIN: u8 = 0x80;
/// Item info bit: a right-origin ID follows.
pub const INFO_HAS_RIGHT_ORIGIN: u8 = 0x40;
/// Item info bit: a parent-sub (map key) follows the parent.
pub const INFO_HAS_PARENT_SUB: u8 = 0x20;
/// Item info bits holding the content ref.
pub const INFO_CONTENT_MASK: u8 = 0x1F;

/// Parent info: the parent is a root type, by name.
pub const PARENT_ROOT: u64 = 1;
/// Parent info: the parent is the type held by the item with an ID.
pub const PARENT_ITEM: u64 = 0;

/// Shared type ref (yjs `typeRefs`) of Y.Array.
pub const TYPE_ARRAY: u8 = 0;
/// Shared type ref of Y.Map.
pub const TYPE_MAP: u8 = 1;
/// Shared type ref of Y.Text.
pub const TYPE_TEXT: u8 = 2;
/// Shared type ref of Y.XmlElement (carries a node name).
pub const TYPE_XML_ELEMENT: u8 = 3;
/// Shared type ref of Y.XmlFragment.
pub const TYPE_XML_FRAGMENT: u8 = 4;
/// Shared type ref of Y.XmlHook (carries a hook name).
pub const TYPE_XML_HOOK: u8 = 5;
/// Shared type ref of Y.XmlText.
pub const TYPE_XML_TEXT: u8 = 6;

/// lib0 `Any` tag of `undefined` (`lib0/encoding.js` `writeAny`).
pub const ANY_UNDEFINED: u8 = 127;
/// lib0 `Any` tag of `null`.
pub const ANY_NULL: u8 = 126;
/// lib0 `Any` tag of an integer (signed varint).
pub const ANY_INTEGER: u8 = 125;
/// lib0 `Any` tag of a float32 (4 bytes).
pub const ANY_FLOAT32: u8 = 124;
/// lib0 `Any` tag of a float64 (8 bytes).
pub const ANY_FLOAT64: u8 = 123;
/// lib0 `Any` tag of a bigint (8 bytes).
pub const ANY_BIGINT: u8 = 122;
/// lib0 `Any` tag of `false`.
pub const ANY_FALSE: u8 = 121;
/// lib0 `Any` tag of `true`.
pub const ANY_TRUE: u8 = 120;
/// lib0 `Any` tag of a string.
pub const ANY_STRING: u8 = 119;
/// lib0 `Any` tag of an object (count, then key + value pairs).
pub const ANY_OBJECT: u8 = 118;
/// lib0 `Any` tag of an array (count, then values).
pub const ANY_ARRAY: u8 = 117;
/// lib0 `Any` tag of a byte array.
pub const ANY_BYTES: u8 = 116;

/// Largest clock (and clock + length) accepted by [`Rules::Strict`]:
/// `i32::MAX`. yrs stores clocks and lengths as `u32` read by a wrapping
/// varint decoder (larger values silently become different ones), adds them
/// unchecked (`clock + len` overflow panics in debug builds), and its update
/// integration computes `local_clock as i32 - clock as i32`: a single
/// 28-byte update whose clock is at least 2^31 makes yrs 0.28.1 panic
/// (subtract overflow in debug, an out-of-bounds index in its block-list
/// binary search in release). JS clients never get anywhere near 2^31
/// operations per client id.
pub const MAX_CLOCK: u64 = i32::MAX as u64;

/// Largest client id accepted by [`Rules::Strict`]. yjs client ids are
/// random `u32`s and lib0 JS cannot represent more than 2^53 - 1 exactly;
/// yrs 0.28's `ClientID::new` `debug_assert!`s the id fits in 53 bits, i.e.
/// panics in debug builds.
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Largest magnitude of an `Any` integer accepted by [`Rules::Strict`].
/// lib0 JS decodes integers into doubles and throws past 2^53; nothing
/// legitimate is larger, and bounding it keeps yrs' `i64` arithmetic (which
/// panics on overflow in debug builds) far from the edge.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

// ---- errors and rules -----------------------------------------------------------

/// Which decoder the validated bytes will be handed to.
///
/// Both targets perform every safety check; they differ only in the
/// constructs whose encoding yrs 0.28 and yjs 13 disagree on (see the
/// [`validate`](super::validate) module docs). Accepting such a construct
/// would let the validator and the decoder see different structs in the
/// same bytes.
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

/// Why a payload was rejected.
///
/// `Display` is short, contains no input data (only small tag numbers) and
/// is safe to send to the client that sent the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationError {
    /// The input ended in the middle of a value.
    Truncated,
    /// `Any` or JSON nesting exceeds [`Limits::max_depth`](super::validate::Limits::max_depth).
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
    /// The input is larger than
    /// [`Limits::max_update_bytes`](super::validate::Limits::max_update_bytes)
    /// (or an awareness state is larger than its cap).
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

impl From<JsonError> for ValidationError {
    fn from(e: JsonError) -> Self {
        match e {
            JsonError::Invalid => ValidationError::InvalidJson,
            JsonError::TooDeep => ValidationError::TooDeep,
        }
    }
}

type VResult<T> = Result<T, ValidationError>;

/// How much [`UpdateReader`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rules {
    /// Everything the validator requires: `Any` and JSON nesting at most
    /// `max_depth` (a top-level container counts as depth 1), UTF-8 in
    /// every string, well-formed JSON texts, known content / type / `Any`
    /// tags, exact GC and Skip info bytes, no zero-length structs, client
    /// ids up to [`MAX_CLIENT_ID`], clocks up to [`MAX_CLOCK`], `Any`
    /// integers within [`MAX_SAFE_INTEGER`], same-client references only to
    /// earlier clocks, sorted non-overlapping delete ranges, and nothing the
    /// `target` decoder reads differently from yjs.
    Strict {
        /// Deepest `Any` / JSON nesting allowed.
        max_depth: usize,
        /// The decoder the bytes are meant for.
        target: Target,
    },
    /// Only what is needed to find where each struct starts and ends:
    /// varints that fit, lengths within the input, UTF-8 in the strings
    /// that name a parent (root name, parent-sub) or hold text, known
    /// content and `Any` tags, structs of non-zero length whose clocks do
    /// not overflow, and each client once per section.
    Lax,
}

// ---- tokens ---------------------------------------------------------------------

/// An item ID: the client that created the struct, and its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    /// The client id.
    pub client: u64,
    /// The clock.
    pub clock: u64,
}

impl Id {
    /// The ID `(client, clock)`.
    pub fn new(client: u64, clock: u64) -> Self {
        Id { client, clock }
    }
}

/// The header of one client block: `structs` structs by `client`, the first
/// at `clock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The client id.
    pub client: u64,
    /// Clock of the first struct.
    pub clock: u64,
    /// Number of structs in the block.
    pub structs: usize,
}

/// One struct of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Struct<'a> {
    /// The struct's first ID.
    pub id: Id,
    /// Its length in clocks (at least 1).
    pub len: u64,
    /// What it is.
    pub kind: StructKind<'a>,
}

impl<'a> Struct<'a> {
    /// The clock just past the struct.
    pub fn end(&self) -> u64 {
        // The reader checked `clock + len` for overflow before handing the
        // struct out; saturating only matters for hand-built values.
        self.id.clock.saturating_add(self.len)
    }

    /// The item, if the struct is one.
    pub fn item(&self) -> Option<&Item<'a>> {
        match &self.kind {
            StructKind::Item(item) => Some(item),
            StructKind::Gc | StructKind::Skip => None,
        }
    }

    /// True for an item holding a shared type.
    pub fn is_type(&self) -> bool {
        self.item()
            .is_some_and(|i| matches!(i.content, Content::Type(_)))
    }
}

/// The three kinds of struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StructKind<'a> {
    /// Garbage-collected clocks: known to exist, content gone.
    Gc,
    /// A placeholder for clocks the update does not carry.
    Skip,
    /// An item.
    Item(Item<'a>),
}

/// The header and content kind of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    /// The raw info byte.
    pub info: u8,
    /// The item it was inserted after.
    pub origin: Option<Id>,
    /// The item it was inserted before.
    pub right_origin: Option<Id>,
    /// The type it belongs to.
    pub parent: Parent<'a>,
    /// Its map key, when the parent is written and the item is a map entry.
    pub parent_sub: Option<&'a str>,
    /// What it holds.
    pub content: Content,
}

/// Where an item's parent type comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent<'a> {
    /// A root type (`doc.getMap(name)`), by name.
    Root(&'a str),
    /// The shared type held by the item with this ID.
    Item(Id),
    /// Not written because an origin is: the item shares the parent of its
    /// origin, else of its right origin.
    FromOrigins,
}

/// The kind of an item's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Deleted content of some length.
    Deleted,
    /// Legacy JSON values.
    Json,
    /// A byte array.
    Binary,
    /// Text.
    String,
    /// A rich-text embed.
    Embed,
    /// A rich-text formatting attribute.
    Format,
    /// A shared type, with its type ref (`TYPE_*`).
    Type(u8),
    /// lib0 `Any` values.
    Any,
    /// A subdocument.
    Doc,
}

/// The header of one client's entry in the delete set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteClient {
    /// The client id.
    pub client: u64,
    /// Number of ranges that follow.
    pub ranges: usize,
}

/// One delete-set range: `len` clocks of `client` from `clock` on are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteRange {
    /// The client id.
    pub client: u64,
    /// First deleted clock.
    pub clock: u64,
    /// Number of deleted clocks.
    pub len: u64,
}

// ---- the reader -----------------------------------------------------------------

/// Which section the reader is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Structs,
    DeleteSet,
}

/// One open container while walking an `Any` value.
#[derive(Debug, Clone, Copy)]
struct AnyFrame {
    /// Children still to read.
    remaining: usize,
    /// Objects have a key string before each child.
    is_object: bool,
}

/// A pull tokenizer over one update v1 (see the module docs).
///
/// Calls may skip ahead: [`next_block`](Self::next_block) reads (and checks)
/// the rest of the current block first, [`next_delete_client`](Self::next_delete_client)
/// the rest of the structs, [`finish`](Self::finish) everything. Whatever is
/// skipped is checked like the rest, so `finish` alone validates a whole
/// update. After an error, further calls read nothing meaningful (but never
/// panic).
#[derive(Debug)]
pub struct UpdateReader<'a> {
    d: Decoder<'a>,
    strict: bool,
    /// `usize::MAX` for [`Rules::Lax`].
    max_depth: usize,
    target: Target,
    section: Section,
    /// Blocks (or delete-set clients) not started yet.
    blocks_left: usize,
    /// Structs (or delete ranges) left in the current block.
    items_left: usize,
    client: u64,
    /// Clock of the next struct; in the delete set, the end of the last range.
    clock: u64,
    seen: SeenClients,
    any_stack: Vec<AnyFrame>,
}

impl<'a> UpdateReader<'a> {
    /// Starts reading `bytes` (reads the block count).
    pub fn new(bytes: &'a [u8], rules: Rules) -> Result<Self, ValidationError> {
        let (strict, max_depth, target) = match rules {
            Rules::Strict { max_depth, target } => (true, max_depth, target),
            Rules::Lax => (false, usize::MAX, Target::Yjs),
        };
        let mut d = Decoder::new(bytes);
        let blocks_left = d.read_len()?;
        Ok(UpdateReader {
            d,
            strict,
            max_depth,
            target,
            section: Section::Structs,
            blocks_left,
            items_left: 0,
            client: 0,
            clock: 0,
            seen: SeenClients::default(),
            any_stack: Vec::new(),
        })
    }

    /// The next client block, or `None` after the last one.
    pub fn next_block(&mut self) -> Result<Option<Block>, ValidationError> {
        if self.section != Section::Structs {
            return Ok(None);
        }
        while self.next_struct()?.is_some() {}
        if self.blocks_left == 0 {
            return Ok(None);
        }
        self.blocks_left -= 1;
        let structs = self.d.read_len()?;
        let client = self.read_client()?;
        // yjs writes each client once; yrs would append a repeated client's
        // structs to the first run at an unrelated clock.
        if !self.seen.insert(client) {
            return Err(ValidationError::Malformed("duplicate client"));
        }
        let clock = self.read_clock()?;
        self.items_left = structs;
        self.client = client;
        self.clock = clock;
        Ok(Some(Block {
            client,
            clock,
            structs,
        }))
    }

    /// The next struct of the current block, or `None` at its end.
    #[inline(always)]
    pub fn next_struct(&mut self) -> Result<Option<Struct<'a>>, ValidationError> {
        if self.section != Section::Structs || self.items_left == 0 {
            return Ok(None);
        }
        self.items_left -= 1;
        self.read_struct().map(Some)
    }

    /// The next client of the delete set, or `None` after the last one.
    pub fn next_delete_client(&mut self) -> Result<Option<DeleteClient>, ValidationError> {
        if self.section == Section::Structs {
            while self.next_block()?.is_some() {}
            self.section = Section::DeleteSet;
            self.blocks_left = self.d.read_len()?;
            self.seen.clear();
        }
        while self.next_delete_range()?.is_some() {}
        if self.blocks_left == 0 {
            return Ok(None);
        }
        self.blocks_left -= 1;
        let client = self.read_client()?;
        if !self.seen.insert(client) {
            return Err(ValidationError::Malformed("duplicate client"));
        }
        let ranges = self.d.read_len()?;
        self.items_left = ranges;
        self.client = client;
        self.clock = 0;
        Ok(Some(DeleteClient { client, ranges }))
    }

    /// The next range of the current delete-set client, or `None` at its end.
    pub fn next_delete_range(&mut self) -> Result<Option<DeleteRange>, ValidationError> {
        if self.section != Section::DeleteSet || self.items_left == 0 {
            return Ok(None);
        }
        self.items_left -= 1;
        let clock = self.read_clock()?;
        let len = self.d.read_var_u64()?;
        if self.strict {
            if len == 0 {
                return Err(ValidationError::Malformed("empty delete range"));
            }
            let end = match clock.checked_add(len) {
                Some(end) if end <= MAX_CLOCK => end,
                _ => return Err(ValidationError::Malformed("clock overflow")),
            };
            // yjs always writes a client's delete ranges sorted and merged
            // (`sortAndMergeDeleteSet`, `createDeleteSetFromStructStore`,
            // `mergeDeleteSets`). yrs 0.28.1 trusts that: overlapping or
            // unsorted ranges were found by differential fuzzing to underflow
            // its per-type length counters (`block_len -= len`, a panic in debug
            // builds, a corrupted document in release).
            if clock < self.clock {
                return Err(ValidationError::Malformed("unsorted delete ranges"));
            }
            self.clock = end;
        }
        Ok(Some(DeleteRange {
            client: self.client,
            clock,
            len,
        }))
    }

    /// Reads whatever is left and checks that nothing follows the delete set.
    pub fn finish(mut self) -> Result<(), ValidationError> {
        while self.next_delete_client()?.is_some() {}
        if !self.d.is_empty() {
            return Err(ValidationError::TrailingBytes);
        }
        Ok(())
    }

    #[inline(always)]
    fn read_client(&mut self) -> VResult<u64> {
        if self.strict {
            read_client(&mut self.d)
        } else {
            Ok(self.d.read_var_u64()?)
        }
    }

    #[inline(always)]
    fn read_clock(&mut self) -> VResult<u64> {
        if self.strict {
            read_clock(&mut self.d)
        } else {
            Ok(self.d.read_var_u64()?)
        }
    }

    /// Reads an ID that the item `own` refers to: its origin, right origin or
    /// parent.
    ///
    /// Such a reference always points at an item that existed when `own` was
    /// created, and a client's clock only grows, so a reference to the same
    /// client must have a *smaller* clock. yjs and yrs never write anything
    /// else (split halves refer to `clock - 1`), but yrs 0.28.1 does not check
    /// it: found by differential fuzzing, two small updates with a
    /// same-client origin "from the future" leave a dangling item pointer in
    /// yrs' block store and segfault the process on the next lookup.
    /// Cross-client references cannot be ordered without document state and
    /// are not checked here.
    #[inline(always)]
    fn read_ref_id(&mut self, own: Id) -> VResult<Id> {
        let id = Id::new(self.read_client()?, self.read_clock()?);
        if self.strict && id.client == own.client && id.clock >= own.clock {
            return Err(ValidationError::Malformed("reference to a later clock"));
        }
        Ok(id)
    }

    /// Reads a string; only [`Rules::Strict`] checks its UTF-8.
    #[inline]
    fn skip_str(&mut self) -> VResult<()> {
        if self.strict {
            self.d.read_var_str()?;
        } else {
            self.d.read_var_bytes()?;
        }
        Ok(())
    }

    /// A struct length: zero-length structs never come out of yjs or yrs,
    /// and yrs computes `clock + len - 1` for a block's last ID.
    #[inline]
    fn struct_len(&self, len: u64) -> VResult<u64> {
        if len == 0 {
            return Err(ValidationError::Malformed("empty struct"));
        }
        if self.strict && len > MAX_CLOCK {
            return Err(ValidationError::Malformed("struct too long"));
        }
        Ok(len)
    }

    #[inline(always)]
    fn read_struct(&mut self) -> VResult<Struct<'a>> {
        let id = Id::new(self.client, self.clock);
        let info = self.d.read_u8()?;
        let content_ref = info & INFO_CONTENT_MASK;
        let (len, kind) = match content_ref {
            REF_GC | REF_SKIP => {
                // GC / Skip: only a length. yjs masks the info byte but yrs
                // matches the whole byte, so flag bits here would make yrs
                // parse an item header instead; yjs never sets them.
                if self.strict && info != content_ref {
                    return Err(ValidationError::Malformed("struct flags"));
                }
                let len = self.d.read_var_u64()?;
                let len = self.struct_len(len)?;
                let kind = if content_ref == REF_GC {
                    StructKind::Gc
                } else {
                    StructKind::Skip
                };
                (len, kind)
            }
            REF_DELETED..=REF_DOC => {
                let (len, item) = self.read_item(info, id)?;
                (len, StructKind::Item(item))
            }
            other => return Err(ValidationError::UnknownContent(other)),
        };
        let end = id.clock.checked_add(len);
        self.clock = match end {
            Some(end) if !self.strict || end <= MAX_CLOCK => end,
            _ => return Err(ValidationError::Malformed("clock overflow")),
        };
        Ok(Struct { id, len, kind })
    }

    /// Reads an Item after its info byte, in the exact order of yjs
    /// `readClientsStructRefs`; returns its length in clocks.
    #[inline(always)]
    fn read_item(&mut self, info: u8, own: Id) -> VResult<(u64, Item<'a>)> {
        let origin = if info & INFO_HAS_ORIGIN != 0 {
            Some(self.read_ref_id(own)?)
        } else {
            None
        };
        let right_origin = if info & INFO_HAS_RIGHT_ORIGIN != 0 {
            Some(self.read_ref_id(own)?)
        } else {
            None
        };
        // Parent info is only written when neither origin is present
        // (otherwise the parent is copied from the neighbour). Note yjs sets
        // the parentSub bit (0x20) even when an origin is present, but only
        // *reads* the parentSub string when the parent is written: so the bit
        // alone is not an error.
        let (parent, parent_sub) = if origin.is_none() && right_origin.is_none() {
            let parent = match self.d.read_var_u64()? {
                PARENT_ROOT => Parent::Root(self.d.read_var_str()?),
                PARENT_ITEM => Parent::Item(self.read_ref_id(own)?),
                // JS treats anything but 1 as "ID"; nothing writes other values.
                _ => return Err(ValidationError::Malformed("parent info")),
            };
            let sub = if info & INFO_HAS_PARENT_SUB != 0 {
                Some(self.d.read_var_str()?)
            } else {
                None
            };
            (parent, sub)
        } else {
            (Parent::FromOrigins, None)
        };

        let (len, content) = match info & INFO_CONTENT_MASK {
            REF_DELETED => {
                let len = self.d.read_var_u64()?;
                (self.struct_len(len)?, Content::Deleted)
            }
            REF_JSON => {
                // yrs 0.28.1 reads count + 1 strings here (`while remaining >= 0`).
                if self.strict && self.target == Target::Yrs {
                    return Err(ValidationError::Unsupported("legacy json content"));
                }
                let count = self.d.read_len()?;
                for _ in 0..count {
                    if self.strict {
                        let s = self.d.read_var_str()?;
                        // yjs writes `undefined` (not valid JSON) for undefined entries.
                        if s != "undefined" {
                            validate_json(s, self.max_depth)?;
                        }
                    } else {
                        self.d.read_var_bytes()?;
                    }
                }
                (self.struct_len(count as u64)?, Content::Json)
            }
            REF_BINARY => {
                self.d.read_var_bytes()?;
                (1, Content::Binary)
            }
            REF_STRING => {
                let s = self.d.read_var_str()?;
                // Item length of a string is its length in UTF-16 code units
                // (JS string length), which both yjs and yrs use for clocks.
                let utf16 = utf16_len(s);
                (self.struct_len(utf16)?, Content::String)
            }
            REF_EMBED => {
                self.json_or_skip()?;
                (1, Content::Embed)
            }
            REF_FORMAT => {
                self.skip_str()?; // attribute key
                self.json_or_skip()?;
                (1, Content::Format)
            }
            REF_TYPE => {
                // yjs writes a varuint but yrs reads one byte; they agree only
                // for single-byte encodings, which is all yjs ever writes (< 7).
                let type_ref = self.d.read_u8()?;
                if self.strict {
                    if type_ref > TYPE_XML_TEXT {
                        return Err(ValidationError::UnknownTypeRef(u64::from(type_ref)));
                    }
                    if type_ref == TYPE_XML_HOOK && self.target == Target::Yrs {
                        // yrs 0.28.1 does not read the hook name that yjs writes.
                        return Err(ValidationError::Unsupported("xml hook"));
                    }
                }
                if type_ref == TYPE_XML_ELEMENT || type_ref == TYPE_XML_HOOK {
                    self.skip_str()?; // node name / hook name
                }
                (1, Content::Type(type_ref))
            }
            REF_ANY => {
                let count = self.d.read_len()?;
                for _ in 0..count {
                    self.skip_any()?;
                }
                (self.struct_len(count as u64)?, Content::Any)
            }
            REF_DOC => {
                self.skip_str()?; // guid
                self.skip_any()?; // options
                (1, Content::Doc)
            }
            // Unreachable: the caller only passes item content refs. Kept as
            // an error, not a panic, so a future edit cannot turn it into a crash.
            other => return Err(ValidationError::UnknownContent(other)),
        };
        Ok((
            len,
            Item {
                info,
                origin,
                right_origin,
                parent,
                parent_sub,
                content,
            },
        ))
    }

    /// Reads a JSON text; [`Rules::Strict`] checks it is well-formed.
    #[inline]
    fn json_or_skip(&mut self) -> VResult<()> {
        if self.strict {
            validate_json(self.d.read_var_str()?, self.max_depth)?;
        } else {
            self.d.read_var_bytes()?;
        }
        Ok(())
    }

    /// Walks one lib0 `Any` value (see [`walk_any`]).
    fn skip_any(&mut self) -> VResult<()> {
        // One stack reused for every Any value of the update, so a
        // struct-heavy update does not allocate per value.
        if self.strict {
            walk_any::<true>(&mut self.d, &mut self.any_stack, self.max_depth)
        } else {
            walk_any::<false>(&mut self.d, &mut self.any_stack, usize::MAX)
        }
    }
}

/// Walks one lib0 `Any` value iteratively; `STRICT` adds the checks of
/// [`Rules::Strict`].
///
/// Containers push a frame on a heap stack, so nesting costs heap, not call
/// stack, and the depth check fires when the container that crosses
/// `max_depth` is opened — after reading only its tag.
fn walk_any<const STRICT: bool>(
    d: &mut Decoder<'_>,
    stack: &mut Vec<AnyFrame>,
    max_depth: usize,
) -> VResult<()> {
    stack.clear();
    loop {
        // Read one value (scalar, or the header of a container).
        let tag = d.read_u8()?;
        match tag {
            ANY_UNDEFINED | ANY_NULL | ANY_FALSE | ANY_TRUE => {}
            ANY_INTEGER => {
                let v = d.read_var_i64()?;
                if STRICT && !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) {
                    return Err(ValidationError::Malformed("integer out of range"));
                }
            }
            ANY_FLOAT32 => {
                d.read_exact(4)?;
            }
            ANY_FLOAT64 | ANY_BIGINT => {
                d.read_exact(8)?;
            }
            ANY_STRING => skip_str(d, STRICT)?,
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
                        skip_str(d, STRICT)?; // key
                    }
                    break;
                }
            }
        }
    }
}

/// Reads a client id, refusing ids past [`MAX_CLIENT_ID`].
#[inline]
pub(crate) fn read_client(d: &mut Decoder<'_>) -> VResult<u64> {
    let v = d.read_var_u64()?;
    if v > MAX_CLIENT_ID {
        return Err(ValidationError::Malformed("client id out of range"));
    }
    Ok(v)
}

/// Reads a clock, refusing clocks past [`MAX_CLOCK`].
#[inline]
pub(crate) fn read_clock(d: &mut Decoder<'_>) -> VResult<u64> {
    let v = d.read_var_u64()?;
    if v > MAX_CLOCK {
        return Err(ValidationError::Malformed("clock out of range"));
    }
    Ok(v)
}

/// [`UpdateReader::skip_str`] for code that holds the decoder borrowed.
#[inline]
fn skip_str(d: &mut Decoder<'_>, strict: bool) -> VResult<()> {
    if strict {
        d.read_var_str()?;
    } else {
        d.read_var_bytes()?;
    }
    Ok(())
}

/// Length of a string in UTF-16 code units (JS `string.length`).
#[inline]
fn utf16_len(s: &str) -> u64 {
    // Every char is one unit, except those outside the BMP (4 UTF-8 bytes),
    // which are two. Counted per byte of valid UTF-8, without decoding: a
    // char starts at each byte that is not a continuation byte (10xxxxxx),
    // and a 4-byte char starts with 11110xxx.
    s.bytes()
        .map(|b| u64::from(b & 0xC0 != 0x80) + u64::from(b >= 0xF0))
        .sum()
}

/// The client ids met so far in one section, to refuse repeats.
///
/// Nearly every update carries one client (a user typing), so the first id
/// is kept inline and a hash set is only built for the second.
#[derive(Debug, Default)]
struct SeenClients {
    first: Option<u64>,
    more: HashSet<u64>,
}

impl SeenClients {
    /// Adds `client`; false if it was already there.
    fn insert(&mut self, client: u64) -> bool {
        match self.first {
            None => {
                self.first = Some(client);
                true
            }
            Some(first) if first == client => false,
            // Each client entry takes >= 3 bytes, so the set stays small
            // relative to the input.
            Some(_) => self.more.insert(client),
        }
    }

    fn clear(&mut self) {
        self.first = None;
        self.more.clear();
    }
}

/// The delete set of a (validated) update, re-encoded as an update without
/// structs: `[0]`, then the delete set with its clients in ascending order
/// and canonical varints.
///
/// That is byte for byte what yrs 0.28.1 writes for
/// `[0] + Update::decode_v1(update).delete_set().encode_v1()` (its delete set
/// is a `BTreeMap` by client whose ranges are kept as decoded), so a re-sent
/// update can be trimmed to its deletions without a yrs dependency.
pub fn delete_set_update(update: &[u8]) -> Result<Vec<u8>, ValidationError> {
    let mut r = UpdateReader::new(update, Rules::Lax)?;
    let mut clients: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
    while let Some(c) = r.next_delete_client()? {
        let mut ranges = Vec::with_capacity(c.ranges);
        while let Some(range) = r.next_delete_range()? {
            ranges.push((range.clock, range.len));
        }
        clients.push((c.client, ranges));
    }
    r.finish()?;
    clients.sort_unstable_by_key(|(client, _)| *client);
    let mut e = Encoder::with_capacity(update.len());
    e.write_var_u64(0);
    e.write_var_u64(clients.len() as u64);
    for (client, ranges) in clients {
        e.write_var_u64(client);
        e.write_var_u64(ranges.len() as u64);
        for (clock, len) in ranges {
            e.write_var_u64(clock);
            e.write_var_u64(len);
        }
    }
    Ok(e.into_vec())
}
