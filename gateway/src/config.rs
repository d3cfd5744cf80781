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
    /// Seconds a single frame write may take before the socket is dropped.
    pub write_timeout_secs: u64,
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
            write_timeout_secs: 10,
            allowed_origins: Vec::new(),
            auth: AuthConfig::default(),
        }
    }
}
