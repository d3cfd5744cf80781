//! JSON Schema of the event envelope and of every payload, generated from the Rust types.
//!
//! The generated files live in `proto/schema/` and are checked in, so that consumers in other languages
//! can validate events. The `schema_is_fresh` test fails when they are stale; regenerate with
//! `TANDEM_UPDATE_SCHEMA=1 cargo test -p proto schema`.

use std::collections::BTreeMap;

use schemars::{schema_for, JsonSchema};

use crate::event::{
    CallParticipantV1, CallV1, ChatMessageDeletedV1, ChatMessageEditedV1, ChatMessageSentV1,
    DocumentUpdatedV1, Event, ScreenShareV1, TypingV1, UserPresenceV1, VideoPeerSignalV1,
};

fn render<T: JsonSchema>() -> String {
    let schema = schema_for!(T);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// File name → schema text, for every schema Tandem publishes.
pub fn generate() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert("event.schema.json", render::<Event>());
    m.insert(
        "document.updated.v1.schema.json",
        render::<DocumentUpdatedV1>(),
    );
    m.insert("user.joined.v1.schema.json", render::<UserPresenceV1>());
    m.insert("user.left.v1.schema.json", render::<UserPresenceV1>());
    m.insert(
        "chat.message.sent.v1.schema.json",
        render::<ChatMessageSentV1>(),
    );
    m.insert(
        "chat.message.edited.v1.schema.json",
        render::<ChatMessageEditedV1>(),
    );
    m.insert(
        "chat.message.deleted.v1.schema.json",
        render::<ChatMessageDeletedV1>(),
    );
    m.insert("typing.started.v1.schema.json", render::<TypingV1>());
    m.insert("typing.stopped.v1.schema.json", render::<TypingV1>());
    m.insert(
        "video.peer.signal.v1.schema.json",
        render::<VideoPeerSignalV1>(),
    );
    m.insert(
        "screen.share.started.v1.schema.json",
        render::<ScreenShareV1>(),
    );
    m.insert(
        "screen.share.stopped.v1.schema.json",
        render::<ScreenShareV1>(),
    );
    m.insert("call.started.v1.schema.json", render::<CallV1>());
    m.insert("call.ended.v1.schema.json", render::<CallV1>());
    m.insert(
        "call.participant.joined.v1.schema.json",
        render::<CallParticipantV1>(),
    );
    m.insert(
        "call.participant.left.v1.schema.json",
        render::<CallParticipantV1>(),
    );
    m
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn schema_is_fresh() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema");
        let update = std::env::var_os("TANDEM_UPDATE_SCHEMA").is_some();
        let mut stale = Vec::new();
        for (name, text) in super::generate() {
            let path = dir.join(name);
            if update {
                std::fs::create_dir_all(&dir).expect("create schema dir");
                std::fs::write(&path, &text).expect("write schema");
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(current) if current == text => {}
                _ => stale.push(name),
            }
        }
        assert!(
            stale.is_empty(),
            "stale JSON Schema files {stale:?}: run TANDEM_UPDATE_SCHEMA=1 cargo test -p proto schema"
        );
    }

    #[test]
    fn every_catalog_type_has_a_schema() {
        let files = super::generate();
        for t in crate::event::EventType::ALL {
            let name = format!("{}.v{}.schema.json", t.name(), t.version());
            assert!(files.contains_key(name.as_str()), "{name}");
        }
    }
}
