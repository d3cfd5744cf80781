//! The y-websocket endpoint (`/doc/{docId}`): one document per socket; every binary message goes to
//! the document's owner, which answers on the socket's queue.

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::WebSocket;
use proto::{DocId, UserId};
use shard::handle::{ConnId, ShardHandle};

use crate::socket::{self, Inbound, Io, Socket};
use crate::state::Gateway;

/// What the pre-upgrade checks decided about a connection.
pub struct ConnParams {
    /// The connection's number.
    pub conn: ConnId,
    /// Its document.
    pub doc: DocId,
    /// Its user.
    pub actor: UserId,
    /// Whether its updates are accepted.
    pub can_write: bool,
}

/// Runs a y-websocket connection until either side closes it.
pub async fn run(gw: Arc<Gateway>, shard: ShardHandle, p: ConnParams, ws: WebSocket<Io>) {
    let Socket {
        reader,
        out: out_half,
        queue,
        sink,
        write_timeout,
    } = Socket::new(&gw, ws);
    gw.metrics.connections.inc();
    if !shard
        .open(p.conn, p.doc.clone(), p.actor.clone(), p.can_write, sink)
        .await
    {
        Box::pin(out_half.close(1011, "shard unavailable", write_timeout)).await;
        gw.metrics.connections.dec();
        return;
    }
    let inbound = DocInbound {
        shard: shard.clone(),
        conn: p.conn,
    };
    let reader_task = tokio::spawn(socket::read_loop(
        gw.clone(),
        reader,
        out_half.clone(),
        false,
        inbound,
    ));
    socket::write_loop(&gw, &out_half, queue, write_timeout, None).await;
    // Give the client a moment to answer our close frame, then tear the reader down.
    let abort = reader_task.abort_handle();
    if Box::pin(tokio::time::timeout(Duration::from_secs(2), reader_task))
        .await
        .is_err()
    {
        abort.abort();
        shard.close(p.conn).await;
    }
    gw.metrics.connections.dec();
}

/// Every binary message goes to the document's shard.
struct DocInbound {
    shard: ShardHandle,
    conn: ConnId,
}

impl Inbound for DocInbound {
    async fn message(&mut self, _text: bool, data: Vec<u8>) -> Result<(), (u16, &'static str)> {
        if self.shard.message(self.conn, data).await {
            Ok(())
        } else {
            Err((1011, "shard unavailable"))
        }
    }

    async fn finish(&mut self) {
        self.shard.close(self.conn).await;
    }
}
