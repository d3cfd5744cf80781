//! Opening the store a process runs on: the record (PostgreSQL, or the embedded SQLite file) and,
//! optionally, the Redis bus in front of it.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::{BusConfig, BusLog};
use crate::postgres::PgLog;
use crate::sqlite::SqliteLog;
use crate::{EventLog, StoreError};

/// Where the events live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendConfig {
    /// Folder holding the embedded store (`tandem.db`), used without `database_url`.
    pub data: PathBuf,
    /// PostgreSQL URL: the record lives there instead of the embedded SQLite file.
    pub database_url: Option<String>,
    /// Redis URL: committed events are published to Redis Streams (the bus; never the ack gate).
    pub redis_url: Option<String>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from(".tandem"),
            database_url: None,
            redis_url: None,
        }
    }
}

/// Why the store could not be opened, naming the setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// PostgreSQL could not be reached or migrated.
    #[error("connecting to PostgreSQL (--database-url): {0}")]
    Postgres(StoreError),
    /// The data folder or the SQLite file could not be opened.
    #[error("opening {path}: {source}")]
    Sqlite {
        /// The file or folder.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// Redis could not be reached.
    #[error("connecting to Redis (--redis-url): {0}")]
    Redis(StoreError),
}

/// The event log a process runs on (the record), optionally published to the Redis bus.
pub struct Backend {
    record: Record,
    bus: Option<Arc<BusLog>>,
}

enum Record {
    Sqlite(Arc<SqliteLog>),
    Postgres(Arc<PgLog>),
}

impl Backend {
    /// Opens the record (applying migrations) and connects the bus.
    pub async fn open(cfg: &BackendConfig) -> Result<Self, OpenError> {
        let record = match &cfg.database_url {
            Some(url) => {
                let log = PgLog::connect(url).await.map_err(OpenError::Postgres)?;
                tracing::info!("event log: PostgreSQL");
                Record::Postgres(Arc::new(log))
            }
            None => {
                let sqlite = |source| OpenError::Sqlite {
                    path: cfg.data.display().to_string(),
                    source,
                };
                std::fs::create_dir_all(&cfg.data)
                    .map_err(|e| sqlite(StoreError::Unavailable(e.to_string())))?;
                let db = cfg.data.join("tandem.db");
                let log = SqliteLog::open(&db).await.map_err(sqlite)?;
                tracing::info!(file = %db.display(), "event log: embedded SQLite");
                Record::Sqlite(Arc::new(log))
            }
        };
        let bus = match &cfg.redis_url {
            Some(url) => {
                let bus = BusLog::connect(record.log(), BusConfig::new(url.clone()))
                    .await
                    .map_err(OpenError::Redis)?;
                tracing::info!("event bus: Redis Streams");
                Some(Arc::new(bus))
            }
            None => None,
        };
        Ok(Self { record, bus })
    }

    /// The log shards write through (the bus in front of the record when there is one).
    pub fn log(&self) -> Arc<dyn EventLog> {
        match &self.bus {
            Some(b) => b.clone(),
            None => self.record.log(),
        }
    }

    /// Closes the record (the bus publishes what it has in the background until the process ends).
    pub async fn close(&self) {
        match &self.record {
            Record::Sqlite(l) => l.close().await,
            Record::Postgres(l) => l.close().await,
        }
    }
}

impl Record {
    fn log(&self) -> Arc<dyn EventLog> {
        match self {
            Self::Sqlite(l) => l.clone(),
            Self::Postgres(l) => l.clone(),
        }
    }
}
