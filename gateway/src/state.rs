//! The edge's shared state: configuration, routes, the authenticator, metrics, connection ids and
//! the shutdown flags. Every connection task holds an `Arc<Gateway>`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shard::handle::ConnId;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::routing::Routes;

/// The edge's shared state.
pub struct Gateway {
    pub(crate) cfg: GatewayConfig,
    pub(crate) routes: Routes,
    pub(crate) auth: Authenticator,
    pub(crate) metrics: Metrics,
    next_conn: AtomicU64,
    closing: AtomicBool,
    /// Turns true when `/v1` sockets must close (after the shards have committed everything).
    sessions_closing: watch::Sender<bool>,
}

impl Gateway {
    /// Builds the gateway over `routes`.
    pub fn new(cfg: GatewayConfig, routes: Routes, metrics: Metrics) -> anyhow::Result<Self> {
        let auth = Authenticator::new(cfg.auth.clone())?;
        Ok(Self {
            cfg,
            routes,
            auth,
            metrics,
            next_conn: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            sessions_closing: watch::Sender::new(false),
        })
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A fresh connection (or `/v1` document channel) id.
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn closing_watch(&self) -> watch::Receiver<bool> {
        self.sessions_closing.subscribe()
    }

    /// Closes every `/v1` socket with 1001. Call after the shards have shut down (so everything
    /// acknowledged is committed); y-websocket sockets are closed by their shards.
    pub fn close_sessions(&self) {
        self.sessions_closing.send_replace(true);
    }

    /// Stops accepting new WebSocket sessions (existing ones are closed by their shards).
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Whether new sessions are refused.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}
