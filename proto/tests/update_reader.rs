//! The update v1 tokenizer ([`proto::yjs::update::UpdateReader`]): what it
//! hands out, how calls may skip ahead, and how the two rule sets differ.

mod common;

use proto::yjs::hostile;
use proto::yjs::lib0::Encoder;
use proto::yjs::update::{
    Block, Content, DeleteClient, DeleteRange, Id, Item, Parent, Rules, Struct, StructKind, Target,
    UpdateReader, ValidationError, ANY_ARRAY, ANY_INTEGER, ANY_NULL, ANY_STRING, INFO_HAS_ORIGIN,
    INFO_HAS_PARENT_SUB, INFO_HAS_RIGHT_ORIGIN, MAX_CLIENT_ID, PARENT_ITEM, PARENT_ROOT, REF_ANY,
    REF_BINARY, REF_DELETED, REF_GC, REF_SKIP, REF_STRING, REF_TYPE, TYPE_MAP, TYPE_XML_ELEMENT,
};
use proto::yjs::validate::{validate_update_v1_for, Limits};

fn strict() -> Rules {
    Rules::Strict {
        max_depth: Limits::default().max_depth,
        target: Target::Yrs,
    }
}

fn vectors() -> Vec<(String, Vec<u8>)> {
    common::parse_vectors(include_str!("../src/yjs/testdata/vectors.txt"))
}

/// Everything the reader hands out for one update, in order.
#[derive(Debug, PartialEq)]
enum Token<'a> {
    Block(Block),
    Struct(Struct<'a>),
    DeleteClient(DeleteClient),
    DeleteRange(DeleteRange),
}

/// Reads `bytes` completely, calling every method in order.
fn tokens(bytes: &[u8], rules: Rules) -> Result<Vec<Token<'_>>, ValidationError> {
    let mut out = Vec::new();
    let mut r = UpdateReader::new(bytes, rules)?;
    while let Some(b) = r.next_block()? {
        out.push(Token::Block(b));
        while let Some(s) = r.next_struct()? {
            out.push(Token::Struct(s));
        }
    }
    while let Some(c) = r.next_delete_client()? {
        out.push(Token::DeleteClient(c));
        while let Some(d) = r.next_delete_range()? {
            out.push(Token::DeleteRange(d));
        }
    }
    r.finish()?;
    Ok(out)
}

/// Two client blocks with every header variant, then a delete set.
fn sample() -> Vec<u8> {
    let mut e = Encoder::new();
    e.write_var_u64(2); // blocks
                        // Client 7 from clock 3: a Y.Map at the root "m", a string in it under
                        // key "k", then "xy" after that string, a GC range and a Skip.
    e.write_var_u64(5);
    e.write_var_u64(7);
    e.write_var_u64(3);
    e.write_u8(REF_TYPE);
    e.write_var_u64(PARENT_ROOT);
    e.write_var_str("m");
    e.write_u8(TYPE_MAP);
    e.write_u8(REF_STRING | INFO_HAS_PARENT_SUB);
    e.write_var_u64(PARENT_ITEM);
    e.write_var_u64(7);
    e.write_var_u64(3);
    e.write_var_str("k");
    e.write_var_str("🌍"); // two UTF-16 units
    e.write_u8(REF_STRING | INFO_HAS_ORIGIN | INFO_HAS_RIGHT_ORIGIN);
    e.write_var_u64(7);
    e.write_var_u64(5);
    e.write_var_u64(9);
    e.write_var_u64(0);
    e.write_var_str("xy");
    e.write_u8(REF_GC);
    e.write_var_u64(4);
    e.write_u8(REF_SKIP);
    e.write_var_u64(2);
    // Client 9 from clock 0: deleted content, then two Any values, then bytes.
    e.write_var_u64(3);
    e.write_var_u64(9);
    e.write_var_u64(0);
    e.write_u8(REF_DELETED);
    e.write_var_u64(1);
    e.write_var_str("r");
    e.write_var_u64(2);
    e.write_u8(REF_ANY | INFO_HAS_ORIGIN);
    e.write_var_u64(9);
    e.write_var_u64(1);
    e.write_var_u64(2); // two values
    e.write_u8(ANY_ARRAY);
    e.write_var_u64(1);
    e.write_u8(ANY_INTEGER);
    e.write_var_i64(-5);
    e.write_u8(ANY_STRING);
    e.write_var_str("s");
    e.write_u8(REF_BINARY | INFO_HAS_ORIGIN);
    e.write_var_u64(9);
    e.write_var_u64(3);
    e.write_var_bytes(&[1, 2, 3]);
    // Delete set: client 9 [0, 2), [5, 6); client 7 (no ranges).
    e.write_var_u64(2);
    e.write_var_u64(9);
    e.write_var_u64(2);
    e.write_var_u64(0);
    e.write_var_u64(2);
    e.write_var_u64(5);
    e.write_var_u64(1);
    e.write_var_u64(7);
    e.write_var_u64(0);
    e.into_vec()
}

fn item(s: &Struct<'_>) -> Item<'static> {
    let i = s.item().expect("an item");
    // Only the fields compared below; names are checked separately.
    Item {
        info: i.info,
        origin: i.origin,
        right_origin: i.right_origin,
        parent: match i.parent {
            Parent::Root(_) => Parent::Root(""),
            Parent::Item(id) => Parent::Item(id),
            Parent::FromOrigins => Parent::FromOrigins,
        },
        parent_sub: i.parent_sub.map(|_| ""),
        content: i.content,
    }
}

#[test]
fn tokens_of_every_header_variant() {
    let bytes = sample();
    let t = tokens(&bytes, strict()).expect("valid");
    assert_eq!(
        t[0],
        Token::Block(Block {
            client: 7,
            clock: 3,
            structs: 5
        })
    );
    let structs: Vec<Struct<'_>> = t
        .iter()
        .filter_map(|t| match t {
            Token::Struct(s) => Some(*s),
            _ => None,
        })
        .collect();
    let ids: Vec<(u64, u64, u64)> = structs
        .iter()
        .map(|s| (s.id.client, s.id.clock, s.len))
        .collect();
    assert_eq!(
        ids,
        [
            (7, 3, 1),
            (7, 4, 2),
            (7, 6, 2),
            (7, 8, 4),
            (7, 12, 2),
            (9, 0, 2),
            (9, 2, 2),
            (9, 4, 1)
        ]
    );
    assert!(structs[0].is_type());
    assert_eq!(
        structs[0].item().map(|i| (i.parent, i.content)),
        Some((Parent::Root("m"), Content::Type(TYPE_MAP)))
    );
    assert_eq!(
        structs[1].item().map(|i| (i.parent, i.parent_sub)),
        Some((Parent::Item(Id::new(7, 3)), Some("k")))
    );
    assert_eq!(
        item(&structs[2]),
        Item {
            info: REF_STRING | INFO_HAS_ORIGIN | INFO_HAS_RIGHT_ORIGIN,
            origin: Some(Id::new(7, 5)),
            right_origin: Some(Id::new(9, 0)),
            parent: Parent::FromOrigins,
            parent_sub: None,
            content: Content::String,
        }
    );
    assert_eq!(structs[3].kind, StructKind::Gc);
    assert_eq!(structs[4].kind, StructKind::Skip);
    assert_eq!(structs[4].end(), 14);
    assert_eq!(item(&structs[5]).content, Content::Deleted);
    assert_eq!(item(&structs[6]).content, Content::Any);
    assert_eq!(item(&structs[7]).content, Content::Binary);
    assert!(!structs[6].is_type() && structs[3].item().is_none());
    let deletes: Vec<&Token<'_>> = t
        .iter()
        .skip_while(|t| !matches!(t, Token::DeleteClient(_)))
        .collect();
    assert_eq!(
        deletes,
        [
            &Token::DeleteClient(DeleteClient {
                client: 9,
                ranges: 2
            }),
            &Token::DeleteRange(DeleteRange {
                client: 9,
                clock: 0,
                len: 2
            }),
            &Token::DeleteRange(DeleteRange {
                client: 9,
                clock: 5,
                len: 1
            }),
            &Token::DeleteClient(DeleteClient {
                client: 7,
                ranges: 0
            }),
        ]
    );
    // The same under the lax rules.
    assert_eq!(tokens(&bytes, Rules::Lax), Ok(t));
}

#[test]
fn calls_may_skip_ahead_and_still_check_everything() {
    let bytes = sample();
    // finish() alone reads and checks the whole update.
    let r = UpdateReader::new(&bytes, strict()).expect("header");
    assert_eq!(r.finish(), Ok(()));
    // Skipping the structs of a block, or all of them.
    let mut r = UpdateReader::new(&bytes, strict()).expect("header");
    assert_eq!(r.next_block().expect("block").map(|b| b.client), Some(7));
    assert_eq!(r.next_block().expect("block").map(|b| b.client), Some(9));
    assert!(r.next_struct().expect("struct").is_some());
    assert_eq!(
        r.next_delete_client().expect("ds").map(|c| c.client),
        Some(9)
    );
    assert!(r.next_block().expect("none").is_none());
    assert!(r.next_struct().expect("none").is_none());
    assert_eq!(
        r.next_delete_client().expect("ds").map(|c| c.client),
        Some(7)
    );
    assert!(r.next_delete_client().expect("ds").is_none());
    assert_eq!(r.finish(), Ok(()));
    // Errors in skipped parts are still found.
    for (_, bad) in hostile::all() {
        let full = validate_update_v1_for(&bad, &Limits::default(), Target::Yrs).map(|_| ());
        let skipped = UpdateReader::new(&bad, strict()).and_then(|r| r.finish());
        assert_eq!(skipped, full);
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    let r = UpdateReader::new(&trailing, strict()).expect("header");
    assert_eq!(r.finish(), Err(ValidationError::TrailingBytes));
}

#[test]
fn lax_rules_read_what_strict_rules_refuse_but_not_broken_structure() {
    // Content and ranges the validator refuses, which a lax reader must
    // still get past (stored data written before a limit was lowered).
    let mut huge_client = Encoder::new();
    huge_client.write_raw(&[1, 1]);
    huge_client.write_var_u64(MAX_CLIENT_ID + 1);
    huge_client.write_raw(&[0, REF_GC, 1, 0]);
    let content_only = [
        hostile::nested_any_array_update(100),
        hostile::nested_doc_options_update(100),
        hostile::nested_json_update(100),
        hostile::nested_format_update(100),
        hostile::xml_hook_smuggle_update(100),
        hostile::high_clock_update(),
        huge_client.into_vec(),
        // GC with flag bits, unsorted delete ranges, an unknown type ref.
        vec![1, 1, 1, 0, REF_GC | 0x80, 1, 0],
        vec![0, 1, 7, 2, 5, 1, 0, 1],
        vec![1, 1, 1, 0, REF_TYPE, 1, 1, b'a', 9, 0],
    ];
    for (i, u) in content_only.iter().enumerate() {
        assert!(tokens(u, strict()).is_err(), "{i}: strict");
        assert!(tokens(u, Rules::Lax).is_ok(), "{i}: lax");
    }
    // Invalid UTF-8 is read as bytes where the lax rules do not need text.
    let variants = hostile::invalid_utf8_variants();
    let lax_ok: Vec<bool> = variants
        .iter()
        .map(|u| tokens(u, Rules::Lax).is_ok())
        .collect();
    // Root name, parent-sub and string content are text the reader hands
    // out or measures; the rest is skipped.
    assert_eq!(
        lax_ok,
        [false, false, false, true, true, true, true, true, true]
    );
    // Structure is checked by both.
    let broken: [&[u8]; 6] = [
        &[1, 1, 1, 0, REF_GC, 0, 0],              // zero-length struct
        &[1, 1, 1, 0, 11, 0],                     // unknown content ref
        &[2, 1, 7, 0, 0, 1, 1, 7, 1, 0, 1, 0],    // the same client twice
        &[1, 1, 1, 0, REF_STRING, 1, 1, b'a', 5], // truncated
        &[1, 1, 1, 0, REF_ANY, 1, 1, b'a', 1, 3], // unknown Any tag
        &[1, 1, 1, 0, REF_STRING, 2, 1, b'a'],    // parent info 2
    ];
    for (i, u) in broken.iter().enumerate() {
        assert!(tokens(u, strict()).is_err(), "{i}: strict");
        assert!(tokens(u, Rules::Lax).is_err(), "{i}: lax");
    }
    // Clocks past the strict range do not wrap in lax mode either.
    let mut overflow = Encoder::new();
    overflow.write_raw(&[1, 1, 1]);
    overflow.write_var_u64(u64::MAX);
    overflow.write_raw(&[REF_GC, 1, 0]);
    assert_eq!(
        tokens(overflow.as_slice(), Rules::Lax),
        Err(ValidationError::Malformed("clock overflow"))
    );
}

#[test]
fn real_updates_tokenize_into_consecutive_clocks() {
    for (name, bytes) in vectors()
        .into_iter()
        .filter(|(n, _)| n.starts_with("update_"))
    {
        let rules = Rules::Strict {
            max_depth: 32,
            target: Target::Yjs,
        };
        let t = tokens(&bytes, rules).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(tokens(&bytes, Rules::Lax).as_ref(), Ok(&t), "{name}");
        let mut next: Option<u64> = None;
        for token in &t {
            match token {
                Token::Block(b) => next = Some(b.clock),
                Token::Struct(s) => {
                    assert_eq!(Some(s.id.clock), next, "{name}");
                    assert!(s.len > 0, "{name}");
                    next = Some(s.end());
                }
                _ => {}
            }
        }
    }
}

#[test]
fn strict_acceptance_implies_identical_lax_tokens() {
    // Mutations of real updates: whatever the strict rules accept, the lax
    // rules read as the very same tokens (the guard relies on it).
    let corpus: Vec<Vec<u8>> = vectors()
        .into_iter()
        .filter(|(n, b)| n.starts_with("update_") && b.len() <= 1024)
        .map(|(_, b)| b)
        .collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let yjs = Rules::Strict {
        max_depth: 32,
        target: Target::Yjs,
    };
    let mut accepted = 0;
    for i in 0..20_000 {
        let mut m = corpus[i % corpus.len()].clone();
        for _ in 0..1 + rnd() % 3 {
            let len = m.len() as u64;
            match rnd() % 3 {
                0 if len > 0 => {
                    let at = (rnd() % len) as usize;
                    m[at] ^= 1 << (rnd() % 8);
                }
                1 => m.truncate((rnd() % (len + 1)) as usize),
                _ => {
                    let at = (rnd() % (len + 1)) as usize;
                    m.insert(at, rnd() as u8);
                }
            }
        }
        if let Ok(t) = tokens(&m, yjs) {
            accepted += 1;
            assert_eq!(tokens(&m, Rules::Lax), Ok(t));
        }
    }
    assert!(accepted > 1000, "{accepted}");
}

#[test]
fn deep_values_are_walked_without_recursion_and_linearly() {
    // 256 KiB of stack; a recursive walk of 200,000 levels would overflow it.
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let u = hostile::nested_any_object_update(200_000);
            assert_eq!(tokens(&u, strict()), Err(ValidationError::TooDeep));
            let t = tokens(&u, Rules::Lax).expect("lax has no depth limit");
            assert_eq!(t.len(), 2); // one block, one struct
            let lax_json = hostile::nested_json_update(200_000);
            assert!(tokens(&lax_json, Rules::Lax).is_ok());
        })
        .expect("spawn")
        .join()
        .expect("no stack overflow");
}

#[test]
fn any_scalars_and_containers() {
    // [null, [-5], "s", {}] as one ContentAny of four values.
    let mut e = Encoder::new();
    e.write_raw(&[1, 1, 1, 0, REF_ANY, 1, 1, b'a', 4, ANY_NULL, ANY_ARRAY, 1]);
    e.write_u8(ANY_INTEGER);
    e.write_var_i64(-5);
    e.write_u8(ANY_STRING);
    e.write_var_str("s");
    e.write_raw(&[118, 0, 0]); // empty object, then the empty delete set
    let t = tokens(e.as_slice(), strict()).expect("valid");
    match &t[1] {
        Token::Struct(s) => {
            assert_eq!(s.len, 4);
            assert_eq!(s.item().map(|i| i.content), Some(Content::Any));
        }
        other => panic!("{other:?}"),
    }
    // An XmlElement's name follows its type ref.
    let mut e = Encoder::new();
    e.write_raw(&[1, 1, 1, 0, REF_TYPE, 1, 1, b'a', TYPE_XML_ELEMENT]);
    e.write_var_str("p");
    e.write_u8(0);
    let t = tokens(e.as_slice(), strict()).expect("valid");
    assert!(matches!(&t[1], Token::Struct(s) if s.is_type()));
}
