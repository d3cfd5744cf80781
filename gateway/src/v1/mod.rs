//! The native multiplexed protocol at `/v1` (wire format: `proto::v1`, specified in
//! docs/protocol.md): one socket carries many documents (Yjs sync and awareness, binary frames
//! prefixed with the document id) and rooms (chat, presence, typing: JSON text frames).
//!
//! The decisions are the sans-IO [`session::Session`]; this driver feeds it the socket's messages,
//! resolves owners through the routes, calls the shards and queues replies. Documents reuse the
//! shard's y-websocket core unchanged: each open document is a channel with its own connection id
//! whose sink prefixes the document id to every frame. Rooms are served by the shard's room core;
//! every room of a socket shares the socket's connection id.

pub mod session;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fastwebsockets::WebSocket;
use proto::v1;
use shard::handle::{ConnSink, RoomCmd, ShardHandle};

use self::session::{Action, Limits, Session};
use crate::auth::Identity;
use crate::socket::{self, Inbound, Io, Socket};
use crate::state::Gateway;

/// The protocol version this endpoint speaks (the path is `/v{VERSION}`).
pub const VERSION: u32 = v1::VERSION;

/// `history` reads one socket may have in flight (each is a store read).
pub const MAX_HISTORY_IN_FLIGHT: usize = 4;

/// The session, shared with the teardown path (which may run after the reader is aborted).
type Shared = Arc<Mutex<Session<ShardHandle>>>;

fn lock(s: &Shared) -> MutexGuard<'_, Session<ShardHandle>> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn drain(s: &Shared) -> VecDeque<Action<ShardHandle>> {
    let mut s = lock(s);
    std::iter::from_fn(|| s.poll_action()).collect()
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
    let ids = gw.clone();
    let mut session = Session::new(
        identity,
        conn,
        Limits {
            max_docs: gw.cfg.max_docs_per_conn,
            max_rooms: gw.cfg.max_rooms_per_conn,
            max_history_in_flight: MAX_HISTORY_IN_FLIGHT,
        },
        Box::new(move || ids.next_conn_id()),
    );
    session.hello(gw.cfg.max_message_bytes);
    let session: Shared = Arc::new(Mutex::new(session));
    let inbound = V1Inbound {
        gw: gw.clone(),
        sink,
        session: session.clone(),
    };
    inbound.carry_out(drain(&session)).await;
    let reader_task = tokio::spawn(socket::read_loop(
        gw.clone(),
        reader,
        out.clone(),
        true,
        inbound,
    ));
    socket::write_loop(&gw, &out, queue, write_timeout, Some(gw.closing_watch())).await;
    let abort = reader_task.abort_handle();
    if Box::pin(tokio::time::timeout(Duration::from_secs(2), reader_task))
        .await
        .is_err()
    {
        abort.abort();
        lock(&session).close();
        release(drain(&session)).await;
    }
    gw.metrics.connections.dec();
}

/// Tells every owner that the socket is gone (the closing actions of [`Session::close`]).
async fn release(actions: VecDeque<Action<ShardHandle>>) {
    for a in actions {
        match a {
            Action::Close { shard, channel } => shard.close(channel).await,
            Action::RoomClose { shard, conn } => shard.room_close(conn).await,
            _ => {}
        }
    }
}

struct V1Inbound {
    gw: Arc<Gateway>,
    sink: ConnSink,
    session: Shared,
}

impl V1Inbound {
    /// Carries out `actions` in order; answers (routes, failures) add the session's next actions.
    async fn carry_out(&self, mut actions: VecDeque<Action<ShardHandle>>) {
        while let Some(a) = actions.pop_front() {
            match a {
                Action::Reply(frame) => self.sink.send_text_or_kill(frame.into()),
                Action::Route { key } => {
                    let owner = self.gw.routes.owner(&key.key()).await;
                    lock(&self.session).handle_routed(owner);
                    actions.extend(drain(&self.session));
                }
                Action::Open {
                    shard,
                    channel,
                    doc,
                    can_write,
                    failed,
                } => {
                    let prefix: Arc<[u8]> = v1::doc_prefix(&doc).into();
                    let sink = self.sink.channel(doc.clone(), prefix);
                    let user = lock(&self.session).user().clone();
                    if !shard.open(channel, doc, user, can_write, sink).await {
                        lock(&self.session).handle_unavailable(failed);
                        actions.extend(drain(&self.session));
                    }
                }
                Action::Message {
                    shard,
                    channel,
                    bytes,
                    failed,
                } => {
                    if !shard.message(channel, bytes).await {
                        lock(&self.session).handle_unavailable(failed);
                        actions.extend(drain(&self.session));
                    }
                }
                Action::Close { shard, channel } => {
                    shard.close(channel).await;
                    lock(&self.session).handle_close_done(channel);
                }
                Action::Room {
                    shard,
                    room,
                    rid,
                    access,
                    call,
                    permit,
                    failed,
                } => {
                    let (conn, user) = {
                        let s = lock(&self.session);
                        (s.conn(), s.user().clone())
                    };
                    let cmd = RoomCmd {
                        conn,
                        user,
                        access,
                        room,
                        rid,
                        call,
                        permit,
                        sink: self.sink.clone(),
                    };
                    if !shard.room(cmd).await {
                        lock(&self.session).handle_unavailable(failed);
                        actions.extend(drain(&self.session));
                    }
                }
                Action::RoomClose { shard, conn } => shard.room_close(conn).await,
            }
        }
    }
}

impl Inbound for V1Inbound {
    async fn message(&mut self, text: bool, data: Vec<u8>) -> Result<(), (u16, &'static str)> {
        {
            let mut s = lock(&self.session);
            if text {
                s.handle_text(&data);
            } else {
                s.handle_binary(data);
            }
        }
        Box::pin(self.carry_out(drain(&self.session))).await;
        Ok(())
    }

    async fn finish(&mut self) {
        lock(&self.session).close();
        Box::pin(release(drain(&self.session))).await;
    }
}
