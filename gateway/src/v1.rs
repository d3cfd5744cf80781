//! The native multiplexed protocol at `/v1` (specified in docs/protocol.md): one socket carries many
//! documents (Yjs sync and awareness, binary frames prefixed with the document id) and rooms (chat,
//! presence, typing: JSON text frames).
//!
//! The gateway parses and checks each request (ids, grants, per-socket limits) and routes it to the
//! shard that owns the document or room. Documents reuse the shard's y-websocket core unchanged: each
//! open document is a channel with its own connection id whose sink prefixes the document id to
//! every frame. Rooms are served by the shard's room core; every room of a socket shares the socket's
//! connection id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastwebsockets::WebSocket;
use proto::{DocId, RoomId, Seq};
use serde_json::{json, Value};
use shard::driver::{RoomCall, RoomCmd};
use shard::room::{Position, RoomAccess, RoomRequest};
use shard::{ConnId, ConnSink, ShardHandle};

use crate::auth::{Access, Identity};
use crate::conn::{self, Inbound, Io, Socket};
use crate::server::Gateway;

/// The protocol version this endpoint speaks (the path is `/v{VERSION}`).
pub const VERSION: u32 = 1;

/// Longest request id accepted (bytes).
const MAX_REQUEST_ID: usize = 128;

/// `history` reads one socket may have in flight (each is a store read).
const MAX_HISTORY_IN_FLIGHT: usize = 4;

/// What a socket has open, shared with the teardown path (which may run after the reader is aborted).
#[derive(Default)]
struct Registry {
    /// Document id → (channel connection id, owner).
    docs: HashMap<String, (ConnId, ShardHandle)>,
    /// Joined rooms → owner.
    rooms: HashMap<RoomId, ShardHandle>,
    /// Every shard this socket has sent room requests to (rooms move; each is told when it ends).
    room_shards: HashMap<proto::ShardId, ShardHandle>,
}

/// Runs a `/v1` socket until either side closes it.
pub(crate) async fn run(gw: Arc<Gateway>, identity: Identity, ws: WebSocket<Io>) {
    let Socket {
        reader,
        out,
        queue,
        sink,
        write_timeout,
    } = Socket::new(&gw, ws);
    gw.metrics.connections.inc();
    let conn = gw.next_conn_id();
    let registry: Arc<Mutex<Registry>> = Arc::default();
    let hello = json!({
        "t": "hello", "v": VERSION, "user": identity.user, "limits": {
            "max_message_bytes": gw.cfg.max_message_bytes,
            "max_docs": gw.cfg.max_docs_per_conn,
            "max_rooms": gw.cfg.max_rooms_per_conn,
        }
    });
    send_json(&sink, &hello);
    let inbound = V1Inbound {
        gw: gw.clone(),
        identity,
        conn,
        sink,
        registry: registry.clone(),
        history_slots: Arc::new(tokio::sync::Semaphore::new(MAX_HISTORY_IN_FLIGHT)),
    };
    let reader_task = tokio::spawn(conn::read_loop(
        gw.clone(),
        reader,
        out.clone(),
        true,
        inbound,
    ));
    conn::write_loop(&gw, &out, queue, write_timeout, Some(gw.closing_watch())).await;
    let abort = reader_task.abort_handle();
    if Box::pin(tokio::time::timeout(Duration::from_secs(2), reader_task))
        .await
        .is_err()
    {
        abort.abort();
        Box::pin(release(conn, &registry)).await;
    }
    gw.metrics.connections.dec();
}

/// Tells every owner that the socket is gone (idempotent: the registry is emptied).
async fn release(conn: ConnId, registry: &Mutex<Registry>) {
    let (docs, shards) = {
        let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
        r.rooms.clear();
        (
            std::mem::take(&mut r.docs),
            std::mem::take(&mut r.room_shards),
        )
    };
    for (_, (channel, shard)) in docs {
        shard.close(channel).await;
    }
    for (_, shard) in shards {
        shard.room_close(conn).await;
    }
}

/// Records that the socket sends room requests to `shard`; returns an earlier handle for the same
/// shard id that reached it another way (an old link, since replaced): it must be told the socket is
/// gone from it.
fn remember_shard(registry: &Mutex<Registry>, shard: &ShardHandle) -> Option<ShardHandle> {
    let mut r = registry.lock().unwrap_or_else(|e| e.into_inner());
    match r.room_shards.insert(shard.id().clone(), shard.clone()) {
        Some(old) if !old.same(shard) => Some(old),
        _ => None,
    }
}

fn send_json(sink: &ConnSink, v: &Value) {
    if !sink.try_send_text(serde_json::to_vec(v).unwrap_or_default().into()) {
        sink.kill(1008);
    }
}

/// A refused request: its wire code and a human-readable message.
struct Refusal {
    code: &'static str,
    message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

struct V1Inbound {
    gw: Arc<Gateway>,
    identity: Identity,
    conn: ConnId,
    sink: ConnSink,
    registry: Arc<Mutex<Registry>>,
    history_slots: Arc<tokio::sync::Semaphore>,
}

impl Inbound for V1Inbound {
    async fn message(&mut self, text: bool, data: Vec<u8>) -> Result<(), (u16, &'static str)> {
        if text {
            self.text(&data).await;
        } else {
            self.binary(data).await;
        }
        Ok(())
    }

    async fn finish(&mut self) {
        Box::pin(release(self.conn, &self.registry)).await;
    }
}

fn room_access(a: Access) -> RoomAccess {
    match a {
        Access::Read => RoomAccess::Read,
        Access::Write => RoomAccess::Write,
        Access::Admin => RoomAccess::Admin,
    }
}

/// lib0 var-string: a varuint length, then the bytes.
pub fn encode_prefix(id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + 2);
    let mut n = id.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(id.as_bytes());
    out
}

/// Splits a binary frame into its document id and the y-websocket message after it.
fn split_prefix(data: &[u8]) -> Option<(&str, &[u8])> {
    let mut len: usize = 0;
    let mut shift = 0;
    let mut i = 0;
    loop {
        let b = *data.get(i)?;
        i += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 14 {
            return None;
        }
    }
    let end = i.checked_add(len)?;
    let id = std::str::from_utf8(data.get(i..end)?).ok()?;
    Some((id, &data[end..]))
}

impl V1Inbound {
    fn reply_error(&self, id: Option<&str>, extra: Option<(&str, &str)>, r: &Refusal) {
        let mut v = json!({ "t": "error", "id": id, "code": r.code, "message": r.message });
        if let Some((k, val)) = extra {
            v[k] = val.into();
        }
        send_json(&self.sink, &v);
    }

    async fn binary(&mut self, data: Vec<u8>) {
        let Some((doc, msg)) = split_prefix(&data) else {
            self.reply_error(
                None,
                None,
                &refuse(
                    "bad_frame",
                    "a binary frame starts with the document id (lib0 var-string)",
                ),
            );
            return;
        };
        let target = {
            let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            r.docs.get(doc).cloned()
        };
        match target {
            Some((channel, shard)) => {
                if !Box::pin(shard.message(channel, msg.to_vec())).await {
                    self.reply_error(
                        None,
                        Some(("doc", doc)),
                        &refuse("unavailable", "the document's shard is unavailable"),
                    );
                }
            }
            None => {
                let doc = doc.chars().take(MAX_REQUEST_ID).collect::<String>();
                self.reply_error(
                    None,
                    Some(("doc", &doc)),
                    &refuse(
                        "unknown_doc",
                        "this document is not open on this socket (doc.open)",
                    ),
                )
            }
        }
    }

    async fn text(&mut self, data: &[u8]) {
        let v: Value = match serde_json::from_slice(data) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                self.reply_error(
                    None,
                    None,
                    &refuse("bad_frame", "a text frame must hold one JSON object"),
                );
                return;
            }
        };
        let id = match v.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_REQUEST_ID => Some(s.clone()),
            Some(_) => {
                self.reply_error(
                    None,
                    None,
                    &refuse("bad_frame", "id must be a string of 1 to 128 bytes"),
                );
                return;
            }
        };
        let t = v
            .get("t")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let result = match t.as_str() {
            "ping" => {
                send_json(&self.sink, &json!({ "t": "pong", "id": id }));
                Ok(())
            }
            "doc.open" => Box::pin(self.doc_open(&v, id.as_deref())).await,
            "doc.close" => Box::pin(self.doc_close(&v, id.as_deref())).await,
            "history" => Box::pin(self.history(&v, id.as_deref())).await,
            "join" | "leave" | "send" | "edit" | "delete" | "presence" | "typing" => {
                Box::pin(self.room(&t, &v, id.as_deref())).await
            }
            "" => Err(refuse("bad_frame", "missing t (the frame type)")),
            _ => Err(refuse("bad_frame", "unknown frame type")),
        };
        if let Err(r) = result {
            let room = v
                .get("room")
                .and_then(Value::as_str)
                .filter(|s| s.len() <= 128);
            let doc = v
                .get("doc")
                .and_then(Value::as_str)
                .filter(|s| s.len() <= 128);
            let extra = room.map(|r| ("room", r)).or(doc.map(|d| ("doc", d)));
            self.reply_error(id.as_deref(), extra, &r);
        }
    }

    fn doc_id(v: &Value) -> Result<DocId, Refusal> {
        let raw = v
            .get("doc")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse("bad_frame", "missing doc"))?;
        DocId::parse(raw).map_err(|e| refuse("invalid_id", e.to_string()))
    }

    async fn doc_open(&mut self, v: &Value, id: Option<&str>) -> Result<(), Refusal> {
        let doc = Self::doc_id(v)?;
        let access = self
            .identity
            .doc_access(&doc)
            .ok_or_else(|| refuse("forbidden", "no grant for this document"))?;
        let shard = self
            .gw
            .routes
            .shard_for(&doc)
            .await
            .ok_or_else(|| refuse("unavailable", "no shard for this document"))?;
        // Opening again restarts the channel (after a doc.closed, or to force a resync).
        let previous = {
            let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            if !r.docs.contains_key(doc.as_str()) && r.docs.len() >= self.gw.cfg.max_docs_per_conn {
                return Err(refuse("limit", "too many open documents on this socket"));
            }
            r.docs.get(doc.as_str()).cloned()
        };
        if let Some((old, old_shard)) = previous {
            Box::pin(old_shard.close(old)).await;
        }
        let channel = self.gw.next_conn_id();
        let prefix: Arc<[u8]> = encode_prefix(doc.as_str()).into();
        let sink = self.sink.channel(doc.clone(), prefix);
        let access_name = match access {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        };
        // Queued before the shard can send anything on the channel: the reply comes first.
        send_json(
            &self.sink,
            &json!({ "t": "doc.opened", "id": id, "doc": doc, "access": access_name }),
        );
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .docs
            .insert(doc.as_str().to_owned(), (channel, shard.clone()));
        let user = self.identity.user.clone();
        if !Box::pin(shard.open(channel, doc.clone(), user, access >= Access::Write, sink)).await {
            self.registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .docs
                .remove(doc.as_str());
            return Err(refuse("unavailable", "the document's shard is unavailable"));
        }
        Ok(())
    }

    async fn doc_close(&mut self, v: &Value, id: Option<&str>) -> Result<(), Refusal> {
        let doc = Self::doc_id(v)?;
        let open = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .docs
            .remove(doc.as_str());
        let (channel, shard) =
            open.ok_or_else(|| refuse("unknown_doc", "this document is not open on this socket"))?;
        Box::pin(shard.close(channel)).await;
        send_json(&self.sink, &json!({ "t": "ok", "id": id }));
        Ok(())
    }

    fn room_id(v: &Value) -> Result<RoomId, Refusal> {
        let raw = v
            .get("room")
            .and_then(Value::as_str)
            .ok_or_else(|| refuse("bad_frame", "missing room"))?;
        RoomId::parse(raw).map_err(|e| refuse("invalid_id", e.to_string()))
    }

    async fn history(&mut self, v: &Value, id: Option<&str>) -> Result<(), Refusal> {
        let room = Self::room_id(v)?;
        let access = self
            .identity
            .room_access(&room)
            .ok_or_else(|| refuse("forbidden", "no grant for this room"))?;
        let seq = |k: &str| -> Result<Option<Seq>, Refusal> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(|n| Some(Seq(n))).ok_or_else(|| {
                    refuse("bad_frame", format!("{k} must be a seq (unsigned integer)"))
                }),
            }
        };
        let (before, after) = (seq("before")?, seq("after")?);
        if before.is_some() && after.is_some() {
            return Err(refuse("bad_request", "give before or after, not both"));
        }
        let limit = match v.get("limit") {
            None | Some(Value::Null) => 50,
            Some(x) => x
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| refuse("bad_frame", "limit must be a positive integer"))?
                as usize,
        };
        let shard = self
            .gw
            .routes
            .shard_for_room(&room)
            .await
            .ok_or_else(|| refuse("unavailable", "no shard for this room"))?;
        let replaced = remember_shard(&self.registry, &shard);
        if let Some(old) = replaced {
            Box::pin(old.room_close(self.conn)).await;
        }
        let permit = self
            .history_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                refuse(
                    "limit",
                    format!(
                        "at most {MAX_HISTORY_IN_FLIGHT} history requests in flight per socket"
                    ),
                )
            })?;
        let cmd = RoomCmd {
            conn: self.conn,
            user: self.identity.user.clone(),
            access: room_access(access),
            room,
            rid: id.map(str::to_owned),
            req: RoomCall::History {
                before,
                after,
                limit,
                permit: Some(permit),
            },
            sink: self.sink.clone(),
        };
        if !Box::pin(shard.room(cmd)).await {
            return Err(refuse("unavailable", "the room's shard is unavailable"));
        }
        Ok(())
    }

    async fn room(&mut self, t: &str, v: &Value, id: Option<&str>) -> Result<(), Refusal> {
        let room = Self::room_id(v)?;
        let text = || -> Result<String, Refusal> {
            v.get("text")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| refuse("bad_frame", "missing text (a string)"))
        };
        let target = || -> Result<Seq, Refusal> {
            v.get("target")
                .and_then(Value::as_u64)
                .map(Seq)
                .ok_or_else(|| refuse("bad_frame", "missing target (the message's seq)"))
        };
        let req = match t {
            "join" => {
                let since = match v.get("since") {
                    None | Some(Value::Null) => None,
                    Some(p) => {
                        Some(serde_json::from_value::<Position>(p.clone()).map_err(|_| {
                            refuse("bad_frame", "since must be {\"epoch\": N, \"seq\": N}")
                        })?)
                    }
                };
                let state = v.get("state").filter(|s| !s.is_null()).cloned();
                RoomRequest::Join { since, state }
            }
            "leave" => RoomRequest::Leave,
            "send" => RoomRequest::Send { text: text()? },
            "edit" => RoomRequest::Edit {
                target: target()?,
                text: text()?,
            },
            "delete" => RoomRequest::Delete { target: target()? },
            "presence" => RoomRequest::Presence {
                state: v
                    .get("state")
                    .cloned()
                    .ok_or_else(|| refuse("bad_frame", "missing state"))?,
            },
            "typing" => RoomRequest::Typing {
                on: v
                    .get("typing")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| refuse("bad_frame", "missing typing (true or false)"))?,
            },
            _ => return Err(refuse("bad_frame", "unknown frame type")),
        };
        let access = self
            .identity
            .room_access(&room)
            .ok_or_else(|| refuse("forbidden", "no grant for this room"))?;
        // A join is routed afresh (the room may have moved since an earlier join); other requests go
        // to the shard the socket joined.
        let fresh = if t == "join" {
            Some(
                self.gw
                    .routes
                    .shard_for_room(&room)
                    .await
                    .ok_or_else(|| refuse("unavailable", "no shard for this room"))?,
            )
        } else {
            None
        };
        if let Some(s) = &fresh {
            if let Some(old) = remember_shard(&self.registry, s) {
                Box::pin(old.room_close(self.conn)).await;
            }
        }
        let shard = {
            let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            match (fresh, r.rooms.get(&room).cloned()) {
                (Some(s), Some(_)) => {
                    r.rooms.insert(room.clone(), s.clone());
                    s
                }
                (Some(s), None) => {
                    if r.rooms.len() >= self.gw.cfg.max_rooms_per_conn {
                        return Err(refuse("limit", "too many rooms joined on this socket"));
                    }
                    r.rooms.insert(room.clone(), s.clone());
                    s
                }
                (None, Some(s)) if t == "leave" => {
                    r.rooms.remove(&room);
                    s
                }
                (None, Some(s)) => s,
                (None, None) => {
                    return Err(refuse(
                        "unknown_room",
                        "this socket has not joined the room",
                    ))
                }
            }
        };
        let cmd = RoomCmd {
            conn: self.conn,
            user: self.identity.user.clone(),
            access: room_access(access),
            room: room.clone(),
            rid: id.map(str::to_owned),
            req: RoomCall::Request(req),
            sink: self.sink.clone(),
        };
        if !Box::pin(shard.room(cmd)).await {
            self.registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rooms
                .remove(&room);
            return Err(refuse("unavailable", "the room's shard is unavailable"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_round_trips() {
        for id in ["d", "notes-1", &"x".repeat(128), &"y".repeat(300)] {
            let mut frame = encode_prefix(id);
            frame.extend_from_slice(&[0, 1, 2]);
            assert_eq!(split_prefix(&frame), Some((id, &[0u8, 1, 2][..])));
        }
        assert_eq!(split_prefix(&[]), None);
        assert_eq!(split_prefix(&[5, b'a']), None, "truncated id");
        assert_eq!(
            split_prefix(&[0x80, 0x80, 0x80, 0x01]),
            None,
            "absurd length"
        );
        assert_eq!(split_prefix(&[2, 0xff, 0xfe]), None, "not UTF-8");
    }
}
