//! Generators of hostile-but-syntactically-plausible payloads, for tests in
//! this and other crates (gateway/shard integration tests, fuzz seeds).
//!
//! Each builds an update v1 with one client (id 1, clock 0) and one Item
//! whose parent is the root type `"a"`, followed by an empty delete set,
//! unless stated otherwise.
//!
//! Compiled only for this crate's tests and with the `hostile` feature
//! (which other crates enable from their `[dev-dependencies]`), so attack
//! payloads never ship in a production build.

use super::lib0::Encoder;

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
        0x01, 0x03, 0xc3, 0x05, 0xa2, 0x83, 0x93, 0xa3, 0x0b, 0x04, 0x01, 0x01, 0x74, 0x03, 0x61,
        0x62, 0x61, 0x0a, 0x03, 0x84, 0xc3, 0x05, 0x05, 0x03, 0x63, 0x63, 0x63, 0x00,
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
        0x03, 0x01, 0x01, 0x0f, 0x04, 0x01, 0x01, 0x62, 0x04, 0xf0, 0x9f, 0x8c, 0x8d, 0x01, 0x02,
        0x08, 0x01, 0x00, 0x03, 0x16, 0x03, 0x04, 0x03, 0x0e, 0x07, 0x01, 0x01, 0x61, 0x00, 0x87,
        0x01, 0x0f, 0x04, 0xa4, 0x03, 0x0b, 0x04, 0xf0, 0x9f, 0x8c, 0x8d, 0x24, 0x01, 0x01, 0x62,
        0x01, 0x6c, 0x03, 0x61, 0x62, 0x63, 0x01, 0x01, 0x01, 0x0f, 0x04,
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
