//! The gateway's Prometheus metrics (registered into the process's registry, next to the shards').

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// The edge's metrics; cheap to clone (every field is a shared handle).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders (the whole process's).
    pub registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Connections closed by the server, by close code (counted when the close frame is sent,
    /// whichever side decided it).
    pub closes: IntCounterVec,
}

impl Metrics {
    /// Creates every metric and registers it in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let connections = IntGauge::new("tandem_connections", "Open WebSocket connections")
            .expect("valid metric");
        let closes = IntCounterVec::new(
            Opts::new(
                "tandem_server_closes_total",
                "Connections closed by the server, by close code",
            ),
            &["code"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections.clone()))
            .expect("metric names are unique");
        registry
            .register(Box::new(closes.clone()))
            .expect("metric names are unique");
        Self {
            registry: registry.clone(),
            connections,
            closes,
        }
    }

    /// Counts a close frame sent with `code`.
    pub fn closed(&self, code: u16) {
        self.closes.with_label_values(&[&code.to_string()]).inc();
    }

    /// Renders the process's registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    /// Metrics in a registry of their own (tests).
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}
