//! The embedded backend: a SQLite file in WAL mode with `synchronous=FULL`, written by one writer task
//! that commits every append waiting in its queue in a single transaction (group commit).
//!
//! Why one writer task: SQLite has one writer at a time anyway; a single task turns many small
//! concurrent appends into one fsync, which is where the time goes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use proto::{Epoch, Event, EventPayload, EventType, Seq, ShardId, StreamId, UserId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::mpsc;

use crate::group::{submit, writer_loop, Job};

use crate::{AppendRequest, EventLog, Loaded, Snapshot, StoreError};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    stream  TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    epoch   INTEGER NOT NULL,
    id      BLOB    NOT NULL UNIQUE,
    type    TEXT    NOT NULL,
    version INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    trace   TEXT,
    payload BLOB    NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    stream TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    epoch  INTEGER NOT NULL,
    state  BLOB    NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    stream TEXT    NOT NULL PRIMARY KEY,
    epoch  INTEGER NOT NULL,
    shard  TEXT    NOT NULL
) WITHOUT ROWID;
"#;

/// How many snapshots per stream are kept (older ones are pruned when a new one is written).
const SNAPSHOTS_KEPT: i64 = 2;

/// The SQLite event log.
pub struct SqliteLog {
    pool: SqlitePool,
    writer: mpsc::Sender<Job>,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteLog {
    /// Opens (creating if needed) `path`, applies the schema and starts the writer task.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(unavailable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(unavailable)?;
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(4096);
        let commit_pool = pool.clone();
        tokio::spawn(writer_loop(rx, 1024, move |reqs| {
            let pool = commit_pool.clone();
            async move { commit(&pool, &reqs.iter().collect::<Vec<_>>()).await }
        }));
        Ok(Self { pool, writer: tx })
    }

    /// Closes the pool after the writer has drained (used on shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn commit(
    pool: &SqlitePool,
    reqs: &[&AppendRequest],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unavailable)?;
    let mut out = Vec::with_capacity(reqs.len());
    for req in reqs {
        let stream = req.stream.to_string();
        if already_committed(&mut tx, &stream, req).await? {
            // A retry of an append that committed: a no-op, not a duplicate.
            out.push(Ok(()));
            continue;
        }
        let current = current_epoch(&mut tx, &stream).await?;
        if let Err(stale) = StoreError::check_epoch(req.epoch, current) {
            out.push(Err(stale));
            continue;
        }
        let last: i64 = sqlx::query(
            "SELECT MAX(m) FROM (SELECT COALESCE(MAX(seq), 0) AS m FROM events WHERE stream = ?1 \
             UNION ALL SELECT COALESCE(MAX(seq), 0) FROM snapshots WHERE stream = ?1)",
        )
        .bind(&stream)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?
        .get(0);
        let expected = Seq(last as u64).next();
        if req.first_seq != expected {
            out.push(Err(StoreError::SeqConflict {
                expected,
                got: req.first_seq,
            }));
            continue;
        }
        sqlx::query("SAVEPOINT req")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let mut failed = None;
        for (i, e) in req.events.iter().enumerate() {
            let ty = e.payload.event_type();
            let r = sqlx::query(
                "INSERT INTO events (stream, seq, epoch, id, type, version, actor, ts, trace, payload) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&stream)
            .bind(to_i64(req.first_seq.0 + i as u64))
            .bind(to_i64(req.epoch.0))
            .bind(&e.id.as_bytes()[..])
            .bind(ty.name())
            .bind(i64::from(ty.version()))
            .bind(e.actor.as_str())
            .bind(e.ts)
            .bind(e.trace.as_deref())
            .bind(e.payload.to_stored())
            .execute(&mut *tx)
            .await;
            if let Err(err) = r {
                failed = Some(match &err {
                    sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Duplicate,
                    _ => unavailable(err),
                });
                break;
            }
        }
        match failed {
            None => {
                sqlx::query("RELEASE req")
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                out.push(Ok(()));
            }
            Some(err) => {
                sqlx::query("ROLLBACK TO req")
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                sqlx::query("RELEASE req")
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                out.push(Err(err));
            }
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(out)
}

/// Whether every event of `req` is already in the log at exactly its seq (a retried append).
async fn already_committed(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    stream: &str,
    req: &AppendRequest,
) -> Result<bool, StoreError> {
    let Some(first) = req.events.first() else {
        return Ok(false);
    };
    // Cheap common case: the first id is not there, so this is not a retry.
    let seq: Option<i64> = sqlx::query("SELECT seq FROM events WHERE id = ? AND stream = ?")
        .bind(&first.id.as_bytes()[..])
        .bind(stream)
        .fetch_optional(&mut **tx)
        .await
        .map_err(unavailable)?
        .map(|r| r.get(0));
    if seq != Some(to_i64(req.first_seq.0)) {
        return Ok(false);
    }
    for (i, e) in req.events.iter().enumerate().skip(1) {
        let seq: Option<i64> = sqlx::query("SELECT seq FROM events WHERE id = ? AND stream = ?")
            .bind(&e.id.as_bytes()[..])
            .bind(stream)
            .fetch_optional(&mut **tx)
            .await
            .map_err(unavailable)?
            .map(|r| r.get(0));
        if seq != Some(to_i64(req.first_seq.0 + i as u64)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The stream's current fencing epoch (0 when never acquired), read inside the writing transaction.
async fn current_epoch(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    stream: &str,
) -> Result<Epoch, StoreError> {
    let current: Option<i64> = sqlx::query("SELECT epoch FROM owners WHERE stream = ?")
        .bind(stream)
        .fetch_optional(&mut **tx)
        .await
        .map_err(unavailable)?
        .map(|r| r.get(0));
    Ok(Epoch(current.unwrap_or(0) as u64))
}

fn row_to_event(stream: &StreamId, row: &sqlx::sqlite::SqliteRow) -> Result<Event, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
    let id: Vec<u8> = row.try_get("id").map_err(|_| corrupt("id"))?;
    let id = uuid::Uuid::from_slice(&id).map_err(|_| corrupt("id"))?;
    let ty: String = row.try_get("type").map_err(|_| corrupt("type"))?;
    let ty = EventType::from_name(&ty).map_err(|_| corrupt("type"))?;
    let version: i64 = row.try_get("version").map_err(|_| corrupt("version"))?;
    let version = u16::try_from(version).map_err(|_| corrupt("version"))?;
    let payload: Vec<u8> = row.try_get("payload").map_err(|_| corrupt("payload"))?;
    let actor: String = row.try_get("actor").map_err(|_| corrupt("actor"))?;
    Ok(Event {
        id,
        version,
        stream: stream.clone(),
        seq: Seq(row.try_get::<i64, _>("seq").map_err(|_| corrupt("seq"))? as u64),
        epoch: Epoch(
            row.try_get::<i64, _>("epoch")
                .map_err(|_| corrupt("epoch"))? as u64,
        ),
        actor: UserId::parse(&actor).map_err(|_| corrupt("actor"))?,
        ts: row.try_get("ts").map_err(|_| corrupt("ts"))?,
        trace: row.try_get("trace").map_err(|_| corrupt("trace"))?,
        payload: EventPayload::from_stored(ty, version, &payload)
            .map_err(|_| corrupt("payload"))?,
    })
}

#[async_trait]
impl EventLog for SqliteLog {
    async fn acquire(&self, stream: &StreamId, shard: &ShardId) -> Result<Epoch, StoreError> {
        let row = sqlx::query(
            "INSERT INTO owners (stream, epoch, shard) VALUES (?1, 1, ?2) \
             ON CONFLICT(stream) DO UPDATE SET epoch = epoch + 1, shard = ?2 RETURNING epoch",
        )
        .bind(stream.to_string())
        .bind(shard.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(Epoch(row.get::<i64, _>(0) as u64))
    }

    async fn append(&self, batch: Vec<AppendRequest>) -> Vec<Result<(), StoreError>> {
        submit(&self.writer, batch).await
    }

    async fn load(&self, stream: &StreamId) -> Result<Loaded, StoreError> {
        let name = stream.to_string();
        let snap = sqlx::query(
            "SELECT seq, state FROM snapshots WHERE stream = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(&name)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let snapshot = snap.map(|r| Snapshot {
            seq: Seq(r.get::<i64, _>(0) as u64),
            state: r.get(1),
        });
        let after = snapshot.as_ref().map(|s| s.seq).unwrap_or_default();
        let tail = self.read(stream, after, usize::MAX).await?;
        Ok(Loaded { snapshot, tail })
    }

    async fn read(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, epoch, id, type, version, actor, ts, trace, payload FROM events \
             WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(stream.to_string())
        .bind(to_i64(after.0))
        .bind(to_i64(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(|r| row_to_event(stream, r)).collect()
    }

    async fn prune(
        &self,
        stream: &StreamId,
        epoch: Epoch,
        through: Seq,
    ) -> Result<u64, StoreError> {
        let name = stream.to_string();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let current = current_epoch(&mut tx, &name).await?;
        StoreError::check_epoch(epoch, current)?;
        let deleted = sqlx::query(
            "DELETE FROM events WHERE stream = ?1 AND seq <= ?2 \
             AND EXISTS (SELECT 1 FROM snapshots WHERE stream = ?1 AND seq >= ?2)",
        )
        .bind(&name)
        .bind(to_i64(through.0))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        tx.commit().await.map_err(unavailable)?;
        Ok(deleted)
    }

    async fn write_snapshot(
        &self,
        stream: &StreamId,
        epoch: Epoch,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let name = stream.to_string();
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let current = current_epoch(&mut tx, &name).await?;
        StoreError::check_epoch(epoch, current)?;
        sqlx::query(
            "INSERT INTO snapshots (stream, seq, epoch, state) VALUES (?, ?, ?, ?) \
             ON CONFLICT(stream, seq) DO UPDATE SET state = excluded.state, epoch = excluded.epoch",
        )
        .bind(&name)
        .bind(to_i64(snapshot.seq.0))
        .bind(to_i64(epoch.0))
        .bind(&snapshot.state)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "DELETE FROM snapshots WHERE stream = ?1 AND seq NOT IN \
             (SELECT seq FROM snapshots WHERE stream = ?1 ORDER BY seq DESC LIMIT ?2)",
        )
        .bind(&name)
        .bind(SNAPSHOTS_KEPT)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(())
    }
}
