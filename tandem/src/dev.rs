//! `tandem dev`: gateway + router + N shards in one process over the embedded SQLite store.

use std::sync::Arc;

use anyhow::Context;
use gateway::{Gateway, Routes};
use proto::ShardId;
use shard::metrics::Metrics;
use store::sqlite::SqliteLog;
use store::EventLog;
use tokio::net::TcpListener;

use crate::config::DevConfig;

/// Runs until Ctrl-C / SIGTERM, then closes every connection, commits everything and returns.
pub async fn run(cfg: DevConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("creating data folder {}", cfg.data.display()))?;
    let db = cfg.data.join("tandem.db");
    let store = Arc::new(
        SqliteLog::open(&db)
            .await
            .with_context(|| format!("opening {}", db.display()))?,
    );
    let metrics = Metrics::new();
    let shards: Vec<_> = (0..cfg.shards)
        .map(|i| {
            let id = ShardId::parse(&format!("dev-{i}")).expect("dev shard ids are valid");
            shard::driver::spawn(
                id,
                cfg.shard.clone(),
                store.clone() as Arc<dyn EventLog>,
                metrics.clone(),
            )
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
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    println!("tandem: listening on http://{addr} (documents at ws://{addr}/doc/{{docId}})");
    tracing::info!(%addr, shards = cfg.shards, data = %cfg.data.display(), "tandem dev ready");
    gateway::serve(listener, gw, shutdown_signal()).await?;
    tracing::info!("shutting down: closing connections and committing");
    for s in &shards {
        s.shutdown().await;
    }
    // Let the connection writers flush their 1001 close frames.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while metrics.connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
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
