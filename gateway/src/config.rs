//! Gateway configuration.

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;

/// Limits and policy of the edge. Every limit is configurable (see the README).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// Largest WebSocket message accepted, in bytes (bigger: close 1009).
    pub max_message_bytes: usize,
    /// Messages queued towards one socket before it counts as a slow consumer (close 1008).
    pub outbound_queue: usize,
    /// Bytes queued towards one socket before it counts as a slow consumer (close 1008).
    pub outbound_queue_bytes: usize,
    /// Seconds without any frame from a client (messages or pongs) before the socket is closed (1001).
    pub idle_timeout_secs: u64,
    /// Seconds between server pings.
    pub ping_interval_secs: u64,
    /// Sustained messages per second accepted from one socket; above it the gateway stops reading
    /// from that socket (TCP backpressure) until the rate is back under the limit. 0 = unlimited.
    pub max_messages_per_sec: u32,
    /// Messages one socket may send in a burst above the sustained rate.
    pub message_burst: u32,
    /// Seconds one write to the socket (a frame, or a batch of queued frames up to 256 KiB) may take
    /// before the socket is dropped.
    pub write_timeout_secs: u64,
    /// Pending-connection queue of the listening socket (capped by the kernel's `somaxconn`). Too
    /// small, and a burst of connects overflows it: the dropped SYNs are retried after a second.
    pub listen_backlog: u32,
    /// Documents one `/v1` socket may have open at once.
    pub max_docs_per_conn: usize,
    /// Rooms one `/v1` socket may have joined at once.
    pub max_rooms_per_conn: usize,
    /// Allowed `Origin` values; empty allows any. Requests without `Origin` (non-browser) are allowed.
    pub allowed_origins: Vec<String>,
    /// JWT settings.
    pub auth: AuthConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 128 * 1024 * 1024,
            idle_timeout_secs: 75,
            ping_interval_secs: 30,
            max_messages_per_sec: 500,
            message_burst: 1000,
            write_timeout_secs: 10,
            listen_backlog: 4096,
            max_docs_per_conn: 100,
            max_rooms_per_conn: 100,
            allowed_origins: Vec::new(),
            auth: AuthConfig::default(),
        }
    }
}
