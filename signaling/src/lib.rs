//! Calls: WebRTC signaling and a selective forwarding unit around str0m (sans-IO), for calls of up to
//! 20 participants (50 by default) with screen sharing.
//!
//! Where a call lives. A room's call belongs to the room's owner shard, like its chat: one owner key
//! (`room:{id}` on the ring) for the room's document, chat and call. [`CallCore`] is a third sans-IO
//! core next to `shard::core::ShardCore` (documents) and `shard::room::RoomCore` (rooms), driven by
//! the shard's media driver (`shard::media`), with the same contract:
//!
//! * inputs through `handle_*(now, …)`: signaling requests of room members (`call.join`,
//!   `call.offer`, `call.ice`, `track.*`), UDP datagrams received by the shard's media socket, room
//!   departures, timeouts;
//! * outputs through `poll_output()`: frames for members (through the same `ConnSink` a room member
//!   already has), datagrams to send, call lifecycle events for the room's log;
//! * the next deadline through `poll_timeout()`; no clock, no socket, no thread inside.
//!
//! One str0m `Rtc` per participant (ICE-lite, host candidates of the media socket), each isolated:
//! an error in one participant's media drops that participant, never the others. The forwarding unit
//! routes media between them without decoding: per subscriber the simulcast layer it asked for and
//! that its bandwidth estimate allows, switched on key frames (with the RTP timeline kept), key
//! frames asked of the publisher when a subscriber starts or switches, NACK/RTX by str0m on both
//! legs, nothing forwarded for a track a subscriber set to `off`, and with many speakers only the
//! N loudest audio tracks.
//!
//! Negotiation: the client always offers (`call.offer`, one full description each time, naming
//! which sending m-lines publish which kind of track and which receiving m-lines carry which remote
//! track); the server answers. There is no glare: the server never offers.

#![forbid(unsafe_code)]

mod config;
mod core;
pub mod sdp;
pub mod turn;

pub use config::CallConfig;
pub use core::{CallCore, CallOutput, CallStats};
