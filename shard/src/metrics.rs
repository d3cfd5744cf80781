//! The shards' Prometheus metrics (the gateway has its own; both register into the process's
//! registry, which `/metrics` renders).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// The process's metrics; cheap to clone (every field is a shared handle).
#[derive(Clone)]
pub struct Metrics {
    /// Documents in memory.
    pub documents_loaded: IntGauge,
    /// Updates committed and applied.
    pub updates_applied: IntCounter,
    /// Time to apply a committed update and queue its broadcast.
    pub apply_seconds: Histogram,
    /// Time from handing a batch to the store until it is committed.
    pub append_seconds: Histogram,
    /// Events per store commit.
    pub append_batch_events: Histogram,
    /// Rooms held in memory.
    pub rooms_loaded: IntGauge,
    /// Room events committed and broadcast (chat messages, edits, deletions, joins, leaves).
    pub room_events: IntCounter,
}

impl Metrics {
    /// Creates every metric and registers it in `registry` (the process's; several shards of one
    /// process share one `Metrics`).
    pub fn new(registry: &Registry) -> Self {
        let documents_loaded = IntGauge::new("tandem_documents_loaded", "Documents held in memory")
            .expect("valid metric");
        let updates_applied = IntCounter::new(
            "tandem_updates_applied_total",
            "Document updates committed and applied",
        )
        .expect("valid metric");
        let buckets = vec![
            0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
            0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tandem_apply_seconds",
                "Time to apply a committed update and queue its broadcast",
            )
            .buckets(buckets.clone()),
        )
        .expect("valid metric");
        let append_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tandem_append_seconds",
                "Time from append request to durable commit",
            )
            .buckets(buckets),
        )
        .expect("valid metric");
        let append_batch_events = Histogram::with_opts(
            HistogramOpts::new("tandem_append_batch_events", "Events per group commit").buckets(
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
        )
        .expect("valid metric");
        let rooms_loaded =
            IntGauge::new("tandem_rooms_loaded", "Rooms held in memory").expect("valid metric");
        let room_events = IntCounter::new(
            "tandem_room_events_total",
            "Room events committed and broadcast",
        )
        .expect("valid metric");
        for m in [
            Box::new(documents_loaded.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(updates_applied.clone()),
            Box::new(apply_seconds.clone()),
            Box::new(append_seconds.clone()),
            Box::new(append_batch_events.clone()),
            Box::new(rooms_loaded.clone()),
            Box::new(room_events.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            documents_loaded,
            updates_applied,
            apply_seconds,
            append_seconds,
            append_batch_events,
            rooms_loaded,
            room_events,
        }
    }
}

impl Default for Metrics {
    /// Metrics in a registry of their own (tests, tools).
    fn default() -> Self {
        Self::new(&Registry::new())
    }
}

/// Renders `registry` in the Prometheus text exposition format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
