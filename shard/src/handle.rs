//! The seam between the edges and the shards: what a gateway (or a shard's link listener) hands to
//! a shard, and how a shard reaches back to a client.
//!
//! * [`ShardHandle`]: a cheap, cloneable handle on one shard, whichever way it is reached: the
//!   driver in this process ([`crate::driver`]) or a gateway link to a shard process (the gateway's
//!   link client). Both implement [`ShardPort`]; nothing that holds a handle knows which it is.
//! * [`ConnSink`]: the shard's handle on one client connection's outbound queue: a socket of this
//!   process ([`ConnQueue`] is the socket's end), or a session of a link ([`Outlet`]).
//!
//! This module depends on nothing else in the crate: the driver and the link listener both build
//! on it, and a gateway needs nothing else from this crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use proto::link::RoomCall;
use proto::v1::{RequestId, ServerFrame};
use proto::{Access, DocId, RoomId, ShardId, StreamId, UserId};
use tokio::sync::mpsc;

/// A client connection (or a `/v1` document channel), numbered by its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What a shard sends to one client connection.
#[derive(Debug, Clone)]
pub enum ConnOut {
    /// A binary message.
    Frame(Arc<[u8]>),
    /// A text (JSON) message of the native protocol.
    Text(Arc<[u8]>),
    /// A binary message of the native protocol: a channel prefix (the document id) then the message.
    /// Boxed so that the enum stays three words.
    Prefixed(Box<Prefixed>),
    /// Close the socket with this code and reason. (`Box<str>`, not `String`: this enum sizes every
    /// slot of each socket's queue, allocated up front per connection.)
    Close(u16, Box<str>),
}

/// A channel prefix and the message after it.
pub type Prefixed = (Arc<[u8]>, Arc<[u8]>);

/// Where a [`ConnSink`] writes when the client is not a socket of this process: one session of a
/// gateway link, seen from the shard.
pub trait Outlet: Send + Sync {
    /// Queues a message; false when the link's budget is spent (the client is a slow consumer) or
    /// the link is gone.
    fn send(&self, out: ConnOut) -> bool;
    /// Tells the gateway to close the client's socket with `code`.
    fn kill(&self, code: u16);
    /// Ends the session: the gateway closes what it carries (a y-websocket socket, a document
    /// channel) with `code`.
    fn close(&self, code: u16, reason: &str);
    /// Whether the link is gone.
    fn is_closed(&self) -> bool;
}

/// The shard's handle on one connection's outbound queue (bounded: a slow consumer is closed).
#[derive(Clone)]
pub struct ConnSink {
    target: Target,
    /// Set on a native-protocol (`/v1`) document channel: frames get this document's prefix, and a
    /// close ends the channel (`doc.closed`) instead of the socket.
    channel: Option<Arc<Channel>>,
}

#[derive(Clone)]
enum Target {
    Local(Local),
    Remote(Arc<dyn Outlet>),
}

#[derive(Clone)]
struct Local {
    tx: mpsc::Sender<ConnOut>,
    /// Close code to use when the queue is dropped without a `Close` (0 = none).
    kill_code: Arc<AtomicU16>,
    /// Bytes queued and not yet written; the writer subtracts what it wrote.
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

struct Channel {
    doc: DocId,
    prefix: Arc<[u8]>,
}

/// The connection side of a [`ConnSink`].
pub struct ConnQueue {
    /// Messages from the shard.
    pub rx: mpsc::Receiver<ConnOut>,
    /// Close code set by the shard when it drops the connection (0 = none).
    pub kill_code: Arc<AtomicU16>,
    /// Bytes queued; subtract each frame's length after writing it.
    pub queued_bytes: Arc<AtomicUsize>,
}

impl ConnSink {
    /// A sink with room for `capacity` messages and `max_bytes` bytes, and its receiving end.
    pub fn new(capacity: usize, max_bytes: usize) -> (Self, ConnQueue) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let kill = Arc::new(AtomicU16::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        (
            Self {
                target: Target::Local(Local {
                    tx,
                    kill_code: kill.clone(),
                    queued_bytes: bytes.clone(),
                    max_bytes,
                }),
                channel: None,
            },
            ConnQueue {
                rx,
                kill_code: kill,
                queued_bytes: bytes,
            },
        )
    }

    /// A sink writing into `outlet` (a link session).
    pub fn remote(outlet: Arc<dyn Outlet>) -> Self {
        Self {
            target: Target::Remote(outlet),
            channel: None,
        }
    }

    /// The same socket's sink for one document of the native protocol: binary frames are prefixed
    /// with `prefix` (the lib0 var-string of the document id), and closing it ends only the channel.
    pub fn channel(&self, doc: DocId, prefix: Arc<[u8]>) -> Self {
        Self {
            channel: Some(Arc::new(Channel { doc, prefix })),
            ..self.clone()
        }
    }

    fn try_send(&self, out: ConnOut, len: usize) -> bool {
        match &self.target {
            Target::Local(l) => {
                if l.queued_bytes.load(Ordering::Relaxed) + len > l.max_bytes {
                    return false;
                }
                if l.tx.try_send(out).is_err() {
                    return false;
                }
                l.queued_bytes.fetch_add(len, Ordering::Relaxed);
                true
            }
            Target::Remote(o) => o.send(out),
        }
    }

    /// Queues a binary message (prefixed on a `/v1` document channel); false when the socket is a
    /// slow consumer (or gone).
    pub fn try_send_frame(&self, msg: Arc<[u8]>) -> bool {
        match &self.channel {
            None => {
                let len = msg.len();
                self.try_send(ConnOut::Frame(msg), len)
            }
            Some(ch) => {
                let len = ch.prefix.len() + msg.len();
                self.try_send(ConnOut::Prefixed(Box::new((ch.prefix.clone(), msg))), len)
            }
        }
    }

    /// Queues a text (JSON) frame; false when the socket is a slow consumer (or gone).
    pub fn try_send_text(&self, msg: Arc<[u8]>) -> bool {
        let len = msg.len();
        self.try_send(ConnOut::Text(msg), len)
    }

    /// Queues a text frame, or closes the socket as a slow consumer (1008) when it does not fit.
    pub fn send_text_or_kill(&self, msg: Arc<[u8]>) {
        if !self.try_send_text(msg) {
            self.kill(1008);
        }
    }

    /// Marks the socket as closing with `code`: its writer sends the close frame once the queue
    /// holds nothing more for it. Used for slow consumers (the queue is full).
    pub fn kill(&self, code: u16) {
        match &self.target {
            Target::Local(l) => l.kill_code.store(code, Ordering::Relaxed),
            Target::Remote(o) => o.kill(code),
        }
    }

    /// Whether the receiving side is gone.
    pub fn is_closed(&self) -> bool {
        match &self.target {
            Target::Local(l) => l.tx.is_closed(),
            Target::Remote(o) => o.is_closed(),
        }
    }

    /// Ends what this sink carries: the whole socket (y-websocket), or only the document channel
    /// (`/v1`: a `doc.closed` frame; the client reopens the document to resync).
    pub fn close(&self, code: u16, reason: &str) {
        match (&self.channel, &self.target) {
            (_, Target::Remote(o)) => o.close(code, reason),
            (None, Target::Local(l)) => {
                // The close goes in first, so a writer that sees the kill code finds it queued.
                let _ = l.tx.try_send(ConnOut::Close(code, reason.into()));
                self.kill(code);
            }
            (Some(ch), Target::Local(_)) => {
                let frame = proto::v1::Frame::DocClosed {
                    doc: ch.doc.clone(),
                    code,
                    reason: reason.to_owned(),
                };
                self.send_text_or_kill(frame.to_bytes().into());
            }
        }
    }

    /// Closes the whole socket (also a `/v1` socket carrying this document channel) with `code`:
    /// the close is queued (so an idle writer wakes up) and the kill flag set.
    pub fn close_socket(&self, code: u16, reason: &str) {
        match &self.target {
            Target::Local(l) => {
                let _ = l.tx.try_send(ConnOut::Close(code, reason.into()));
                self.kill(code);
            }
            Target::Remote(o) => o.kill(code),
        }
    }

    /// Queues a close frame without the kill flag (the shutdown path, where the queue drains first).
    pub fn send_close(&self, code: u16, reason: &str) {
        match &self.target {
            Target::Local(l) => {
                let _ = l.tx.try_send(ConnOut::Close(code, reason.into()));
            }
            Target::Remote(o) => o.close(code, reason),
        }
    }
}

/// A counted budget of things in flight (history reads per socket or per link). Sans-IO: taking a
/// slot never waits; the [`Permit`] gives it back when dropped.
#[derive(Debug, Clone)]
pub struct Slots {
    used: Arc<AtomicUsize>,
    max: usize,
}

impl Slots {
    /// At most `max` (at least 1) at once.
    pub fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
        }
    }

    /// A slot, if one is free.
    pub fn try_take(&self) -> Option<Permit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                used: self.used.clone(),
            })
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One taken slot of [`Slots`], returned on drop.
#[derive(Debug)]
pub struct Permit {
    used: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A native-protocol request about a room, with the socket's sink (for its replies and events).
pub struct RoomCmd {
    /// The socket (one id per socket for all its rooms).
    pub conn: ConnId,
    /// The authenticated user.
    pub user: UserId,
    /// The user's access in this room.
    pub access: Access,
    /// The room.
    pub room: RoomId,
    /// The request id, echoed in the reply.
    pub rid: Option<RequestId>,
    /// The request.
    pub call: RoomCall,
    /// Held until the reply is queued (history reads in flight are bounded per socket and per link).
    pub permit: Option<Permit>,
    /// The socket's sink.
    pub sink: ConnSink,
}

/// Boxed future of a [`ShardPort`] call.
pub type PortFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One way of reaching a shard. Every call waits while the shard's inbound queue is full
/// (backpressure) and answers false once the shard (or the link to it) is gone.
pub trait ShardPort: Send + Sync {
    /// Attaches connection `conn` (with `sink`) to `doc`.
    fn open(
        &self,
        conn: ConnId,
        doc: DocId,
        actor: UserId,
        can_write: bool,
        sink: ConnSink,
    ) -> PortFuture<'_, bool>;
    /// Delivers one binary (y-websocket) message from a connection.
    fn message(&self, conn: ConnId, bytes: Vec<u8>) -> PortFuture<'_, bool>;
    /// The connection is gone.
    fn close(&self, conn: ConnId) -> PortFuture<'_, ()>;
    /// A native-protocol room request.
    fn room(&self, cmd: RoomCmd) -> PortFuture<'_, bool>;
    /// The native-protocol socket is gone: it leaves every room of this shard.
    fn room_close(&self, conn: ConnId) -> PortFuture<'_, ()>;
    /// Whether the shard can be reached now (its driver runs, or its link is up).
    fn is_alive(&self) -> bool;
}

/// A cheap, cloneable handle on one shard.
#[derive(Clone)]
pub struct ShardHandle {
    id: ShardId,
    port: Arc<dyn ShardPort>,
}

impl ShardHandle {
    /// A handle on shard `id` reached through `port`.
    pub fn new(id: ShardId, port: Arc<dyn ShardPort>) -> Self {
        Self { id, port }
    }

    /// The shard's id.
    pub fn id(&self) -> &ShardId {
        &self.id
    }

    /// Whether both handles reach the shard the same way (the same driver, or the same link).
    pub fn same(&self, other: &ShardHandle) -> bool {
        // Compare the data pointers only: vtable pointers of one type may differ across codegen units.
        std::ptr::addr_eq(Arc::as_ptr(&self.port), Arc::as_ptr(&other.port))
    }

    /// Whether the shard can be reached now.
    pub fn is_alive(&self) -> bool {
        self.port.is_alive()
    }

    /// Attaches a connection to `doc`.
    pub fn open(
        &self,
        conn: ConnId,
        doc: DocId,
        actor: UserId,
        can_write: bool,
        sink: ConnSink,
    ) -> PortFuture<'_, bool> {
        self.port.open(conn, doc, actor, can_write, sink)
    }

    /// Delivers one binary message from a connection.
    pub fn message(&self, conn: ConnId, bytes: Vec<u8>) -> PortFuture<'_, bool> {
        self.port.message(conn, bytes)
    }

    /// Tells the shard a connection is gone.
    pub fn close(&self, conn: ConnId) -> PortFuture<'_, ()> {
        self.port.close(conn)
    }

    /// A native-protocol room request.
    pub fn room(&self, cmd: RoomCmd) -> PortFuture<'_, bool> {
        self.port.room(cmd)
    }

    /// Tells the shard a native-protocol socket is gone: it leaves every room of this shard.
    pub fn room_close(&self, conn: ConnId) -> PortFuture<'_, ()> {
        self.port.room_close(conn)
    }
}

/// A predicate over keys: which streams a shard owns (after a ring change).
pub type Owns = Arc<dyn Fn(&StreamId) -> bool + Send + Sync>;

/// What a shard holds, for operators (`tandem ctl`, a shard's `/stats`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Loaded documents.
    pub docs: Vec<DocId>,
    /// Loaded rooms.
    pub rooms: Vec<RoomId>,
    /// Document connections.
    pub connections: usize,
    /// Room members (connections).
    pub room_connections: usize,
}

/// The message of the `unavailable` error a room request gets from a shard that no longer owns it.
pub const ROOM_MOVING: &str = "the room is moving to another shard, retry";

/// A room `error` frame for a refusal made outside the room core (ownership checks, link limits).
pub fn room_error(
    rid: Option<&RequestId>,
    room: &RoomId,
    code: proto::v1::ErrorCode,
    message: &str,
) -> Vec<u8> {
    ServerFrame::<()>::Error {
        id: rid.cloned(),
        code,
        message: message.to_owned(),
        room: Some(room.to_string()),
        doc: None,
    }
    .to_bytes()
}
