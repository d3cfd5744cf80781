//! The two wire parsers added for the typed protocol layer, fed arbitrary bytes: they answer with an
//! error, never a panic (DESIGN.md invariant 7), and every frame they produce round-trips.

use proptest::prelude::*;
use proto::link::{self, Frame, Kind, RoomCall};
use proto::v1::{self, RequestId, RoomRequest};
use proto::{Access, DocId, RoomId, UserId};

fn frames() -> Vec<(u64, Frame<'static>)> {
    vec![
        (
            1,
            Frame::Open(link::Open {
                doc: DocId::parse("notes").expect("valid"),
                actor: UserId::parse("ada").expect("valid"),
                write: true,
                ring: 7,
            }),
        ),
        (2, Frame::Msg(b"\x00\x02\x01")),
        (3, Frame::Close),
        (
            4,
            Frame::Room(Box::new(link::Room {
                user: UserId::parse("ada").expect("valid"),
                access: Access::Admin,
                room: RoomId::parse("team").expect("valid"),
                rid: Some(RequestId::parse("m-1").expect("valid")),
                call: RoomCall::Request {
                    req: RoomRequest::Typing { on: true },
                },
                ring: 9,
            })),
        ),
        (5, Frame::RoomClose),
        (0, Frame::Ping),
        (0, Frame::Pong),
        (6, Frame::Binary(b"bin")),
        (7, Frame::Text(b"{}")),
        (
            u64::MAX,
            Frame::End {
                code: 1012,
                reason: "moved".into(),
            },
        ),
        (8, Frame::Kill { code: 1008 }),
        (0, Frame::Ring { version: 42 }),
    ]
}

#[test]
fn every_link_frame_round_trips_through_check_and_parse() {
    let mut stream = Vec::new();
    for (s, f) in frames() {
        link::encode(s, &f, &mut stream);
    }
    let mut at = 0;
    for (s, f) in frames() {
        let n = link::check(&stream[at..], link::MAX_FRAME)
            .expect("valid length")
            .expect("complete");
        assert_eq!(link::parse(&stream[at..at + n]), Ok((s, f)));
        at += n;
    }
    assert_eq!(at, stream.len());
    // A frame cut short is "need more", not an error.
    assert_eq!(link::check(&stream[..5], link::MAX_FRAME), Ok(None));
    assert!(
        link::check(&[0, 0, 0, 3], link::MAX_FRAME).is_err(),
        "shorter than a header"
    );
    assert_eq!(Kind::from_u8(99), None);
}

proptest! {
    #[test]
    fn link_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut rest = &bytes[..];
        while let Ok(Some(n)) = link::check(rest, 200) {
            let _ = link::parse(&rest[..n]);
            rest = &rest[n..];
        }
    }

    #[test]
    fn link_payloads_never_panic(kind in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = Vec::new();
        link::encode_parts(Kind::Ping, 1, &[&payload], &mut bytes);
        bytes[4] = kind;
        let _ = link::parse(&bytes);
    }

    #[test]
    fn client_text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = v1::parse_client_frame(&bytes);
    }

    #[test]
    fn client_json_never_panics(t in "(ping|join|send|history|doc\\.open|x)", room in ".{0,140}", extra in any::<i64>()) {
        let text = serde_json::json!({"t": t, "room": room, "doc": room, "id": room, "limit": extra,
            "text": extra, "before": extra}).to_string();
        let _ = v1::parse_client_frame(text.as_bytes());
    }

    #[test]
    fn doc_prefixes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        if let Some((id, rest)) = v1::split_doc_prefix(&bytes) {
            prop_assert!(id.len() + rest.len() < bytes.len());
        }
    }
}
