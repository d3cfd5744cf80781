//! The `tandem` binary: one subcommand per role.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

mod cluster;
mod config;
mod ctl;
mod dev;
mod events;
mod webhooks;

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use gateway::auth::{mint_hs256, now_secs, Access, Claims};

/// Tandem: a real-time collaboration backend (Yjs documents over WebSocket, durable, sharded).
#[derive(Parser)]
#[command(name = "tandem", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Gateway, router and shards in one process with the embedded store: the zero-setup server.
    Dev(Box<config::DevOpts>),
    /// A shard process of a cluster: owns documents and rooms (PostgreSQL + Redis required).
    Shard(Box<cluster::ShardOpts>),
    /// A gateway process of a cluster: terminates WebSockets and routes to the owning shards.
    Gateway(Box<cluster::GatewayOpts>),
    /// Operator commands for a cluster: shards, ring plans, drains, locating keys.
    Ctl(ctl::CtlOpts),
    /// Mints an HS256 token for local use.
    Token(TokenOpts),
    /// The event log for humans: show, tail, replay (time travel), verify.
    #[command(subcommand)]
    Events(events::EventsCmd),
    /// Delivers bus events to an HTTP endpoint (signed, retried, dead-lettered).
    Webhooks(webhooks::WebhookOpts),
    /// Applies the PostgreSQL migrations and exits (`tandem dev --database-url` also does on start).
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "TANDEM_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[derive(clap::Args)]
struct TokenOpts {
    /// The HS256 secret the server was started with.
    #[arg(long, env = "TANDEM_JWT_HS256_SECRET", hide_env_values = true)]
    secret: String,
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// Document grant `PATTERN=read|write|admin`, repeatable (`*` matches any characters in an id).
    #[arg(long = "grant", required_unless_present = "room_grants")]
    grants: Vec<String>,
    /// Room grant `PATTERN=read|write|admin`, repeatable (chat, presence and typing over `/v1`).
    #[arg(long = "room-grant")]
    room_grants: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Audience.
    #[arg(long, default_value = "tandem")]
    aud: String,
    /// Issuer.
    #[arg(long, default_value = "tandem")]
    iss: String,
}

fn token(o: TokenOpts) -> anyhow::Result<()> {
    proto::UserId::parse(&o.sub).context("--sub")?;
    let grants = |flag: &str, list: &[String]| -> anyhow::Result<BTreeMap<String, Access>> {
        let mut map = BTreeMap::new();
        for g in list {
            let Some((pattern, access)) = g.rsplit_once('=') else {
                bail!("{flag} {g:?}: expected PATTERN=read|write|admin");
            };
            let access: Access = access.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            map.insert(pattern.to_owned(), access);
        }
        Ok(map)
    };
    let docs = grants("--grant", &o.grants)?;
    let rooms = grants("--room-grant", &o.room_grants)?;
    let now = now_secs();
    let claims = Claims {
        sub: o.sub,
        exp: now + o.ttl,
        nbf: now.saturating_sub(1),
        iat: now,
        aud: o.aud,
        iss: o.iss,
        docs,
        rooms,
    };
    println!("{}", mint_hs256(&o.secret, &claims)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Token(o) => token(o),
        Cmd::Webhooks(o) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(webhooks::run(o))
        }
        Cmd::Events(cmd) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(events::run(cmd)),
        Cmd::Migrate { database_url } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(async {
                let log = store::postgres::PgLog::connect(&database_url)
                    .await
                    .context("connecting to PostgreSQL")?;
                log.close().await;
                println!("migrations applied");
                anyhow::Ok(())
            }),
        Cmd::Shard(o) => {
            init_logs();
            let cfg = (*o).into_config()?;
            runtime()?.block_on(cluster::run_shard(cfg))
        }
        Cmd::Gateway(o) => {
            init_logs();
            let cfg = (*o).into_config()?;
            runtime()?.block_on(cluster::run_gateway(cfg))
        }
        Cmd::Ctl(o) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(ctl::run(o)),
        Cmd::Dev(o) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let cfg = (*o).into_config()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(dev::run(cfg))
        }
    }
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}
