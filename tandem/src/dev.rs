//! `tandem dev`: gateway + router + N shards in one process over the embedded SQLite store.

use std::sync::Arc;

use anyhow::Context;
use gateway::{Gateway, Routes};
use prometheus::Registry;
use proto::ShardId;
use store::Backend;

use crate::config::DevConfig;

/// Runs until Ctrl-C / SIGTERM, then closes every connection, commits everything and returns.
pub async fn run(cfg: DevConfig) -> anyhow::Result<()> {
    let store = Backend::open(&cfg.store()).await?;
    let registry = Registry::new();
    let metrics = shard::metrics::Metrics::new(&registry);
    let shards = (0..cfg.shards)
        .map(|i| {
            let id = ShardId::parse(&format!("dev-{i}")).expect("dev shard ids are valid");
            let media = cfg.calls.settings(i as u16);
            shard::driver::spawn(id, cfg.shard.clone(), store.log(), metrics.clone(), media)
                .with_context(|| format!("binding --media-listen {} (shard {i})", cfg.calls.listen))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if cfg.gateway.auth.allow_anonymous {
        tracing::warn!(
            "ANONYMOUS ACCESS: no JWT key is configured, so anyone who can reach this port can read and \
             write every document. Pass --jwt-hs256-secret (or --jwt-es256-public-key) outside local development."
        );
    }
    let gw = Arc::new(Gateway::new(
        cfg.gateway.clone(),
        Routes::new(shards.iter().map(|s| s.handle()).collect()),
        gateway::Metrics::new(&registry),
    )?);
    let listener = gateway::server::bind(cfg.listen, cfg.gateway.listen_backlog)
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "tandem: listening on http://{addr} (documents at ws://{addr}/doc/{{docId}}, native protocol at ws://{addr}/v1)"
    );
    let media: Vec<String> = shards
        .iter()
        .filter_map(|s| s.media_addr())
        .map(|a| a.to_string())
        .collect();
    tracing::info!(%addr, shards = cfg.shards, data = %cfg.data.display(), media = %media.join(","), "tandem dev ready");
    gateway::serve(listener, gw.clone(), shutdown_signal()).await?;
    tracing::info!("shutting down: closing connections and committing");
    for s in &shards {
        s.shutdown().await;
    }
    gw.close_sessions();
    // Let the connection writers flush their 1001 close frames.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while gw.metrics().connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
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
