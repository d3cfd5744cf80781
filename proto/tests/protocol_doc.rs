//! docs/protocol.md is checked against `proto::v1`, the single source of the native protocol's wire
//! format: every example frame parses as the type it claims to be, every frame type in the tables
//! exists (and every type is in the tables), and so does every error code.

use std::collections::BTreeSet;

use proto::v1::{self, ClientFrame, ErrorCode, ServerFrame};
use proto::Event;
use serde_json::Value;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md is readable")
}

/// The part of the document from `heading` to the next heading of the same or a higher level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("docs/protocol.md has a section {heading:?}"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let rest = &text[start + heading.len()..];
    let end = rest
        .lines()
        .scan(0usize, |pos, line| {
            let at = *pos;
            *pos += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            let hashes = line.chars().take_while(|c| *c == '#').count();
            hashes > 0 && hashes <= level && line.chars().nth(hashes) == Some(' ')
        })
        .map_or(rest.len(), |(at, _)| at);
    &rest[..end]
}

/// The first cell of each table row (between backticks), for the rows of the table right after
/// `caption`.
fn table_types(text: &str, caption: &str) -> BTreeSet<String> {
    let rest = section(text, caption);
    rest.lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .flat_map(|l| {
            let cell = l.split('|').nth(1).unwrap_or_default();
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

const CLIENT_TYPES: &[&str] = &[
    "ping",
    "join",
    "leave",
    "send",
    "edit",
    "delete",
    "presence",
    "typing",
    "history",
    "doc.open",
    "doc.close",
    "call.join",
    "call.leave",
    "call.offer",
    "call.ice",
    "track.publish",
    "track.unpublish",
    "track.subscribe",
    "track.mute",
];

const SERVER_TYPES: &[&str] = &[
    "hello",
    "joined",
    "left",
    "ack",
    "event",
    "presence",
    "typing",
    "room.closed",
    "history",
    "doc.opened",
    "doc.closed",
    "call.joined",
    "call.answer",
    "call.ice",
    "call.participant.joined",
    "call.participant.left",
    "track.published",
    "track.unpublished",
    "track.muted",
    "call.speaker",
    "call.closed",
    "ok",
    "pong",
    "error",
];

/// The `t` of a frame the types produce, so the lists above cannot drift from the enums.
fn t_of(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v).expect("serializes")["t"]
        .as_str()
        .expect("a t field")
        .to_owned()
}

#[test]
fn the_frame_tables_list_exactly_the_frame_types() {
    let text = doc();
    let client = table_types(&text, "### Client → server");
    let server = table_types(&text, "### Server → client");
    let want: BTreeSet<String> = CLIENT_TYPES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(client, want, "client → server table");
    let want: BTreeSet<String> = SERVER_TYPES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(server, want, "server → client table");
    // The lists above are the enums' own names: a minimal frame of each type parses.
    for t in CLIENT_TYPES {
        let v = serde_json::json!({"t": t, "room": "r", "doc": "d", "text": "x", "target": 1,
            "state": null, "typing": true, "sdp": "v=0", "candidate": null, "mid": "0",
            "kind": "camera", "track": "p1-0", "quality": "low", "muted": true});
        let f: ClientFrame = serde_json::from_value(v).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(&t_of(&f), t);
    }
    for t in SERVER_TYPES {
        let v = serde_json::json!({"t": t, "v": 1, "user": "u", "limits": {"max_message_bytes": 1,
            "max_docs": 1, "max_rooms": 1}, "id": null, "room": "r", "position": {"epoch": 0, "seq": 0},
            "events": [], "presence": [], "typing": [], "epoch": 1, "seq": 1, "event": {},
            "set": [], "gone": [], "users": [], "code": "limit", "message": "m", "doc": "d",
            "access": "read", "reason": "r"});
        let v = match *t {
            // `code` is a close code there, and `reason` free text.
            "doc.closed" => serde_json::json!({"t": t, "doc": "d", "code": 1013, "reason": "r"}),
            "joined" => serde_json::json!({"t": t, "id": null, "room": "r",
                "position": {"epoch": 0, "seq": 0}, "events": [], "presence": [], "typing": []}),
            "call.joined" => serde_json::json!({"t": t, "id": null, "room": "r",
                "participant": "p1", "participants": [], "tracks": [], "ice_servers": []}),
            "call.answer" => serde_json::json!({"t": t, "id": null, "room": "r", "sdp": "v=0"}),
            "call.ice" => serde_json::json!({"t": t, "room": "r", "candidate": null}),
            "call.participant.joined" => serde_json::json!({"t": t, "room": "r",
                "participant": {"id": "p1", "user": "u"}}),
            "call.participant.left" => serde_json::json!({"t": t, "room": "r",
                "participant": "p1", "reason": "left"}),
            "track.published" => serde_json::json!({"t": t, "room": "r", "track": {"id": "p1-0",
                "participant": "p1", "user": "u", "kind": "screen", "muted": false, "layers": []}}),
            "track.unpublished" => serde_json::json!({"t": t, "room": "r", "track": "p1-0"}),
            "track.muted" => {
                serde_json::json!({"t": t, "room": "r", "track": "p1-0", "muted": true})
            }
            "call.speaker" => serde_json::json!({"t": t, "room": "r", "participant": null}),
            _ => v,
        };
        let f: ServerFrame<Value> =
            serde_json::from_value(v).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(&t_of(&f), t);
    }
}

#[test]
fn the_error_code_table_lists_exactly_the_error_codes() {
    let text = doc();
    let listed = table_types(&text, "## Error codes");
    let all = [
        ErrorCode::BadFrame,
        ErrorCode::BadRequest,
        ErrorCode::InvalidId,
        ErrorCode::Forbidden,
        ErrorCode::UnknownRoom,
        ErrorCode::UnknownDoc,
        ErrorCode::NotFound,
        ErrorCode::TooLarge,
        ErrorCode::Limit,
        ErrorCode::Unavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::Moved,
        ErrorCode::NotInCall,
        ErrorCode::Timeout,
    ];
    let want: BTreeSet<String> = all.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(listed, want);
    for c in all {
        let json = serde_json::to_value(c).expect("serializes");
        assert_eq!(json, c.as_str(), "as_str is the wire name");
    }
}

/// Every `→ {…}` / `← {…}` line of the document's examples, and every fenced `json` block.
fn examples(text: &str) -> Vec<(char, String)> {
    let mut out = Vec::new();
    let mut in_json = false;
    let mut block = String::new();
    for line in text.lines() {
        let t = line.trim();
        if in_json {
            if t == "```" {
                in_json = false;
                out.push(('=', std::mem::take(&mut block)));
            } else {
                block.push_str(line);
                block.push('\n');
            }
            continue;
        }
        if t == "```json" {
            in_json = true;
            continue;
        }
        for arrow in ['→', '←'] {
            if let Some(rest) = t.strip_prefix(arrow) {
                let rest = rest.trim();
                if rest.starts_with('{') {
                    out.push((arrow, rest.to_owned()));
                }
            }
        }
    }
    out
}

#[test]
fn every_example_frame_parses_as_what_it_claims_to_be() {
    let text = doc();
    let native = section(&text, "# Native protocol v1");
    let found = examples(native);
    let (mut client, mut server, mut other) = (0, 0, 0);
    for (dir, json) in found {
        let v: Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON: {json}\n{e}"));
        match dir {
            '→' => {
                let f = v1::parse_client_frame(json.as_bytes())
                    .unwrap_or_else(|e| panic!("not a client frame: {json}\n{e:?}"));
                assert_eq!(
                    serde_json::to_value(&f).expect("serializes"),
                    v,
                    "round trip"
                );
                client += 1;
            }
            '←' => {
                let f: ServerFrame<Event> = serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("not a server frame: {json}\n{e}"));
                let back = serde_json::to_value(&f).expect("serializes");
                assert_eq!(
                    back, v,
                    "every field of the example is a field of the frame"
                );
                server += 1;
            }
            _ if v.get("t").is_some() => {
                let _: ServerFrame<Event> = serde_json::from_value(v)
                    .unwrap_or_else(|e| panic!("not a server frame: {json}\n{e}"));
                server += 1;
            }
            _ => {
                let e: Event = serde_json::from_value(v.clone())
                    .unwrap_or_else(|e| panic!("not an event envelope: {json}\n{e}"));
                assert_eq!(serde_json::to_value(&e).expect("serializes"), v);
                other += 1;
            }
        }
    }
    assert!(
        client >= 5 && server >= 8 && other >= 1,
        "{client} {server} {other}"
    );
}

#[test]
fn inline_frames_in_the_prose_parse_too() {
    let text = doc();
    let native = section(&text, "# Native protocol v1");
    let mut n = 0;
    for span in native.split('`').skip(1).step_by(2) {
        if !span.starts_with("{\"t\":") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(span) else {
            // Templates such as `{"t":"history","room":"team","before":S}` are not examples.
            continue;
        };
        let t = v["t"].as_str().unwrap_or_default();
        if CLIENT_TYPES.contains(&t) {
            v1::parse_client_frame(span.as_bytes())
                .unwrap_or_else(|e| panic!("not a client frame: {span}\n{e:?}"));
        } else {
            let _: ServerFrame<Event> = serde_json::from_value(v)
                .unwrap_or_else(|e| panic!("not a server frame: {span}\n{e}"));
        }
        n += 1;
    }
    assert!(n >= 1, "{n}");
}
