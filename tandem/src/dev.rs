//! `tandem dev`: gateway + router + N shards in one process over the embedded SQLite store.

use std::sync::Arc;

use anyhow::Context;
use gateway::{Gateway, Routes};
use proto::ShardId;
use shard::metrics::Metrics;
use store::bus::{BusConfig, BusLog};
use store::postgres::PgLog;
use store::sqlite::SqliteLog;
use store::EventLog;

use crate::config::DevConfig;

/// Runs until Ctrl-C / SIGTERM, then closes every connection, commits everything and returns.
pub async fn run(cfg: DevConfig) -> anyhow::Result<()> {
    let store = Store::open(&cfg).await?;
    let metrics = Metrics::new();
    let shards: Vec<_> = (0..cfg.shards)
        .map(|i| {
            let id = ShardId::parse(&format!("dev-{i}")).expect("dev shard ids are valid");
            shard::driver::spawn(id, cfg.shard.clone(), store.log(), metrics.clone())
        })
        .collect();
    if cfg.gateway.auth.allow_anonymous {
        tracing::warn!(
            "ANONYMOUS ACCESS: no JWT key is configured, so anyone who can reach this port can read and \
             write every document. Pass --jwt-hs256-secret (or --jwt-es256-public-key) outside local development."
        );
    }
    let gw = Arc::new(Gateway::new(
        cfg.gateway.clone(),
        Routes::new(shards.clone()),
        metrics.clone(),
    )?);
    let listener = gateway::server::bind(cfg.listen, cfg.gateway.listen_backlog)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "tandem: listening on http://{addr} (documents at ws://{addr}/doc/{{docId}}, native protocol at ws://{addr}/v1)"
    );
    tracing::info!(%addr, shards = cfg.shards, data = %cfg.data.display(), "tandem dev ready");
    gateway::serve(listener, gw.clone(), shutdown_signal()).await?;
    tracing::info!("shutting down: closing connections and committing");
    for s in &shards {
        s.shutdown().await;
    }
    gw.close_sessions();
    // Let the connection writers flush their 1001 close frames.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while metrics.connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The event log `tandem dev` runs on (the record), optionally published to the Redis bus.
pub(crate) struct Store {
    record: Record,
    bus: Option<Arc<BusLog>>,
}

enum Record {
    Sqlite(Arc<SqliteLog>),
    Postgres(Arc<PgLog>),
}

impl Store {
    pub(crate) async fn open(cfg: &DevConfig) -> anyhow::Result<Self> {
        let record = Record::open(cfg).await?;
        let bus = match &cfg.redis_url {
            Some(url) => {
                let bus = BusLog::connect(record.log(), BusConfig::new(url.clone()))
                    .await
                    .context("connecting to Redis (--redis-url)")?;
                tracing::info!("event bus: Redis Streams");
                Some(Arc::new(bus))
            }
            None => None,
        };
        Ok(Self { record, bus })
    }

    pub(crate) fn log(&self) -> Arc<dyn EventLog> {
        match &self.bus {
            Some(b) => b.clone(),
            None => self.record.log(),
        }
    }

    pub(crate) async fn close(&self) {
        self.record.close().await;
    }
}

impl Record {
    async fn open(cfg: &DevConfig) -> anyhow::Result<Self> {
        if let Some(url) = &cfg.database_url {
            let log = PgLog::connect(url)
                .await
                .context("connecting to PostgreSQL (--database-url)")?;
            tracing::info!("event log: PostgreSQL");
            return Ok(Self::Postgres(Arc::new(log)));
        }
        std::fs::create_dir_all(&cfg.data)
            .with_context(|| format!("creating data folder {}", cfg.data.display()))?;
        let db = cfg.data.join("tandem.db");
        let log = SqliteLog::open(&db)
            .await
            .with_context(|| format!("opening {}", db.display()))?;
        tracing::info!(file = %db.display(), "event log: embedded SQLite");
        Ok(Self::Sqlite(Arc::new(log)))
    }

    fn log(&self) -> Arc<dyn EventLog> {
        match self {
            Self::Sqlite(l) => l.clone(),
            Self::Postgres(l) => l.clone(),
        }
    }

    async fn close(&self) {
        match self {
            Self::Sqlite(l) => l.close().await,
            Self::Postgres(l) => l.close().await,
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
