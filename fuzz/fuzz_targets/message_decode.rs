//! Decoding any y-websocket frame never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::yjs::message::{decode_awareness_update, decode_state_vector, Message};

fuzz_target!(|data: &[u8]| {
    let _ = Message::decode(data);
    let _ = decode_awareness_update(data);
    let _ = decode_state_vector(data);
});
