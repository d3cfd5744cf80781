//! The validator never panics, and whatever it accepts yrs decodes and applies without crashing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::yjs::validate::{validate_update_v1, Limits};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

fuzz_target!(|data: &[u8]| {
    if validate_update_v1(data, &Limits::default()).is_ok() {
        if let Ok(u) = Update::decode_v1(data) {
            let doc = Doc::with_client_id(1);
            let _ = doc.transact_mut().apply_update(u);
        }
    }
});
