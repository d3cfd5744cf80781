//! Calls: WebRTC signaling and a selective forwarding unit around str0m (sans-IO), for call rooms of
//! up to 20 participants with screen sharing. Empty until the video-calls issue fills it; this doc
//! is the plan it builds to, on the seams that exist today.
//!
//! Where a call lives. A room's call belongs to the room's owner shard, like its chat: one owner key
//! (`room:{id}` on the ring) for the room's document, chat and call. The call core is a third
//! sans-IO core next to `shard::core::ShardCore` (documents) and `shard::room::RoomCore` (rooms),
//! driven by the same shard driver (`shard::driver`), with the same contract:
//!
//! * inputs through `handle_*(now, …)`: signaling requests of members (join, leave, SDP offers and
//!   answers, trickle ICE, publish/unpublish, subscribe with a wanted quality, mute), UDP datagrams
//!   received by the shard's media socket, timeouts;
//! * outputs through `poll_output()`: frames for members (through the same `shard::handle::ConnSink`
//!   a room member already has), datagrams to send, persisted call lifecycle events;
//! * the next deadline through `poll_timeout()`; no clock, no socket, no randomness inside (seeded).
//!
//! One str0m `Rtc` per participant, each isolated so that hostile traffic to one cannot take the
//! others down; the forwarding unit routes RTP between them without decoding (simulcast layer per
//! subscriber, key-frame requests, NACK/RTX, bandwidth estimate).
//!
//! Signaling path. Call frames are new `t` values of the native protocol (`proto::v1`, where every
//! frame is a typed variant checked against docs/protocol.md); the gateway's `/v1` session
//! (`gateway::v1::session`) checks grants and per-socket limits and routes them to the room's owner
//! like any room request (`shard::handle::RoomCmd`), locally or over the gateway ↔ shard link
//! (`proto::link::RoomCall`). Media never passes a gateway: it flows over UDP between the browser and
//! the owning shard (`--media-advertise`).

#![forbid(unsafe_code)]
