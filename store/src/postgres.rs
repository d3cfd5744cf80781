//! The PostgreSQL backend: the system of record.
//!
//! Every connection runs with `synchronous_commit = on`, so a commit returns only once the WAL is
//! flushed. One writer task takes every append waiting in its queue and commits them in one transaction
//! (group commit): many documents' appends share one WAL flush.
//!
//! Fencing and ordering are enforced by the database in the statement that writes: an append first runs
//! `UPDATE owners SET last_seq = … WHERE stream = … AND epoch = … AND last_seq = first_seq - 1`, which
//! takes the owner row's lock, so a concurrent takeover (`epoch = epoch + 1`) is ordered before or after
//! it, never interleaved; zero rows updated means a stale epoch or a seq conflict, and nothing is written.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use proto::{Epoch, Event, EventPayload, EventType, Seq, ShardId, StreamId, UserId};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use crate::group::{submit, writer_loop, Job};

use crate::{AppendRequest, EventLog, Loaded, Snapshot, StoreError};

/// Migrations, in order: (version, SQL). Applied by [`PgLog::migrate`] under an advisory lock.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/postgres/0001_events.sql"))];

/// How many snapshots per stream are kept.
const SNAPSHOTS_KEPT: i64 = 2;

/// The PostgreSQL event log.
pub struct PgLog {
    pool: PgPool,
    writer: mpsc::Sender<Job>,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgLog {
    /// Connects (`url` like `postgres://user@host:5432/db`), applies migrations and starts the writer.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, true).await
    }

    /// Like [`PgLog::connect`]; `group_commit = false` commits every append call in its own
    /// transaction (for measuring what group commit buys).
    pub async fn connect_with(url: &str, group_commit: bool) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(unavailable)?
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(unavailable)?;
        Self::migrate(&pool).await?;
        let (tx, rx) = mpsc::channel(4096);
        let commit_pool = pool.clone();
        let max_batch = if group_commit { 1024 } else { 1 };
        tokio::spawn(writer_loop(rx, max_batch, move |reqs| {
            let pool = commit_pool.clone();
            async move { commit(&pool, &reqs.iter().collect::<Vec<_>>()).await }
        }));
        Ok(Self { pool, writer: tx })
    }

    /// Applies pending migrations (idempotent; safe to run from several processes at once).
    pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
        let mut tx = pool.begin().await.map_err(unavailable)?;
        // One migrator at a time across processes.
        sqlx::query("SELECT pg_advisory_xact_lock(7431001)")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS tandem_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        for (version, sql) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query("SELECT version FROM tandem_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?
                    .map(|r| r.get(0));
            if done.is_none() {
                sqlx::raw_sql(*sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                sqlx::query("INSERT INTO tandem_migrations (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
        }
        tx.commit().await.map_err(unavailable)
    }

    /// The connection pool (tools and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn commit(
    pool: &PgPool,
    reqs: &[&AppendRequest],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut out: Vec<Option<Result<(), StoreError>>> = vec![None; reqs.len()];
    let mut tx = pool.begin().await.map_err(unavailable)?;
    // Rounds of at most one request per stream, in order: a stream's later request builds on the
    // earlier one's seqs. Each round costs three statements whatever its size.
    let mut remaining: Vec<usize> = (0..reqs.len()).collect();
    while !remaining.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (round, rest): (Vec<usize>, Vec<usize>) = remaining
            .iter()
            .partition(|&&i| seen.insert(&reqs[i].stream));
        remaining = rest;
        commit_round(&mut tx, reqs, &round, &mut out).await?;
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(out.into_iter().map(|r| r.unwrap_or(Ok(()))).collect())
}

/// One round: requests on distinct streams, appended with one fencing UPDATE and one INSERT.
async fn commit_round(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    reqs: &[&AppendRequest],
    round: &[usize],
    out: &mut [Option<Result<(), StoreError>>],
) -> Result<(), StoreError> {
    use std::collections::{HashMap, HashSet};
    // 1. Ids already in the log: a retry of a committed append is a no-op; any other reuse is refused.
    let ids: Vec<uuid::Uuid> = round
        .iter()
        .flat_map(|&i| reqs[i].events.iter().map(|e| e.id))
        .collect();
    let existing: Vec<(uuid::Uuid, String, i64)> =
        sqlx::query_as("SELECT id, stream, seq FROM events WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await
            .map_err(unavailable)?;
    let existing: HashMap<uuid::Uuid, (String, i64)> = existing
        .into_iter()
        .map(|(id, st, seq)| (id, (st, seq)))
        .collect();
    let mut batch_ids = HashSet::new();
    let mut live = Vec::new();
    for &i in round {
        let req = reqs[i];
        if req.events.is_empty() {
            out[i] = Some(Ok(()));
            continue;
        }
        let stream = req.stream.to_string();
        let retried = req.events.iter().enumerate().all(|(k, e)| {
            existing.get(&e.id) == Some(&(stream.clone(), to_i64(req.first_seq.0 + k as u64)))
        });
        if retried {
            out[i] = Some(Ok(()));
        } else if req
            .events
            .iter()
            .any(|e| existing.contains_key(&e.id) || !batch_ids.insert(e.id))
        {
            out[i] = Some(Err(StoreError::Duplicate));
        } else {
            live.push(i);
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    // 2. Fencing and ordering in the writing statement itself: it takes the owner rows' locks.
    let streams: Vec<String> = live.iter().map(|&i| reqs[i].stream.to_string()).collect();
    let epochs: Vec<i64> = live.iter().map(|&i| to_i64(reqs[i].epoch.0)).collect();
    let prevs: Vec<i64> = live
        .iter()
        .map(|&i| to_i64(reqs[i].first_seq.0.saturating_sub(1)))
        .collect();
    let lasts: Vec<i64> = live
        .iter()
        .map(|&i| to_i64(reqs[i].first_seq.0 + reqs[i].events.len() as u64 - 1))
        .collect();
    let moved: Vec<(String,)> = sqlx::query_as(
        "UPDATE owners o SET last_seq = v.last \
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS v(stream, epoch, prev, last) \
         WHERE o.stream = v.stream AND o.epoch = v.epoch AND o.last_seq = v.prev RETURNING o.stream",
    )
    .bind(&streams)
    .bind(&epochs)
    .bind(&prevs)
    .bind(&lasts)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)?;
    let moved: HashSet<String> = moved.into_iter().map(|(s,)| s).collect();
    // 3. The events of every request that passed, in one INSERT.
    let mut cols = Columns::default();
    for &i in &live {
        let req = reqs[i];
        let name = req.stream.to_string();
        if !moved.contains(&name) {
            continue;
        }
        for (k, e) in req.events.iter().enumerate() {
            cols.push(&name, req.epoch.0, req.first_seq.0 + k as u64, e);
        }
        out[i] = Some(Ok(()));
    }
    if !cols.ids.is_empty() {
        sqlx::query(
            "INSERT INTO events (stream, seq, epoch, id, type, version, actor, ts, trace, payload) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::uuid[], $5::text[], \
             $6::smallint[], $7::text[], $8::bigint[], $9::text[], $10::bytea[])",
        )
        .bind(&cols.streams)
        .bind(&cols.seqs)
        .bind(&cols.epochs)
        .bind(&cols.ids)
        .bind(&cols.types)
        .bind(&cols.versions)
        .bind(&cols.actors)
        .bind(&cols.tss)
        .bind(&cols.traces)
        .bind(&cols.payloads)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    }
    // Why the others were refused.
    let refused: Vec<usize> = live.iter().copied().filter(|&i| out[i].is_none()).collect();
    if !refused.is_empty() {
        let names: Vec<String> = refused
            .iter()
            .map(|&i| reqs[i].stream.to_string())
            .collect();
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT stream, epoch, last_seq FROM owners WHERE stream = ANY($1)")
                .bind(&names)
                .fetch_all(&mut **tx)
                .await
                .map_err(unavailable)?;
        let state: HashMap<String, (u64, u64)> = rows
            .into_iter()
            .map(|(s, e, l)| (s, (e as u64, l as u64)))
            .collect();
        for i in refused {
            let req = reqs[i];
            let (epoch, last) = state
                .get(&req.stream.to_string())
                .copied()
                .unwrap_or((0, 0));
            out[i] = Some(Err(if Epoch(epoch) != req.epoch {
                StoreError::StaleEpoch {
                    writer: req.epoch,
                    current: Epoch(epoch),
                }
            } else {
                StoreError::SeqConflict {
                    expected: Seq(last).next(),
                    got: req.first_seq,
                }
            }));
        }
    }
    Ok(())
}

/// Column arrays for one multi-row INSERT.
#[derive(Default)]
struct Columns {
    streams: Vec<String>,
    seqs: Vec<i64>,
    epochs: Vec<i64>,
    ids: Vec<uuid::Uuid>,
    types: Vec<String>,
    versions: Vec<i16>,
    actors: Vec<String>,
    tss: Vec<i64>,
    traces: Vec<Option<String>>,
    payloads: Vec<Vec<u8>>,
}

impl Columns {
    fn push(&mut self, stream: &str, epoch: u64, seq: u64, e: &proto::NewEvent) {
        let ty = e.payload.event_type();
        self.streams.push(stream.to_owned());
        self.seqs.push(to_i64(seq));
        self.epochs.push(to_i64(epoch));
        self.ids.push(e.id);
        self.types.push(ty.name().to_owned());
        self.versions
            .push(i16::try_from(ty.version()).unwrap_or(i16::MAX));
        self.actors.push(e.actor.as_str().to_owned());
        self.tss.push(e.ts);
        self.traces.push(e.trace.clone());
        self.payloads.push(e.payload.to_stored());
    }
}

/// Locks the stream's owner row for the transaction and checks that `writer` is its current epoch, so
/// no takeover can slip in before the transaction's writes commit.
async fn lock_epoch(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    stream: &str,
    writer: Epoch,
) -> Result<(), StoreError> {
    let current: Option<i64> = sqlx::query("SELECT epoch FROM owners WHERE stream = $1 FOR UPDATE")
        .bind(stream)
        .fetch_optional(&mut **tx)
        .await
        .map_err(unavailable)?
        .map(|r| r.get(0));
    StoreError::check_epoch(writer, Epoch(current.unwrap_or(0) as u64))
}

fn row_to_event(stream: &StreamId, row: &PgRow) -> Result<Event, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(what.to_owned());
    let ty: String = row.try_get("type").map_err(|_| corrupt("type"))?;
    let ty = EventType::from_name(&ty).map_err(|_| corrupt("type"))?;
    let version: i16 = row.try_get("version").map_err(|_| corrupt("version"))?;
    let version = u16::try_from(version).map_err(|_| corrupt("version"))?;
    let payload: Vec<u8> = row.try_get("payload").map_err(|_| corrupt("payload"))?;
    let actor: String = row.try_get("actor").map_err(|_| corrupt("actor"))?;
    Ok(Event {
        id: row.try_get("id").map_err(|_| corrupt("id"))?,
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
impl EventLog for PgLog {
    async fn acquire(&self, stream: &StreamId, shard: &ShardId) -> Result<Epoch, StoreError> {
        let row = sqlx::query(
            "INSERT INTO owners (stream, epoch, shard, last_seq) \
             VALUES ($1, 1, $2, COALESCE((SELECT MAX(seq) FROM events WHERE stream = $1), 0)) \
             ON CONFLICT (stream) DO UPDATE SET epoch = owners.epoch + 1, shard = EXCLUDED.shard \
             RETURNING epoch",
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
        let snap = sqlx::query(
            "SELECT seq, state FROM snapshots WHERE stream = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(stream.to_string())
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
             WHERE stream = $1 AND seq > $2 ORDER BY seq LIMIT $3",
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
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_epoch(&mut tx, &name, epoch).await?;
        let deleted = sqlx::query(
            "DELETE FROM events WHERE stream = $1 AND seq <= $2 \
             AND EXISTS (SELECT 1 FROM snapshots WHERE stream = $1 AND seq >= $2)",
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
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // Locks the owner row: a takeover cannot slip in between the check and the write.
        lock_epoch(&mut tx, &name, epoch).await?;
        sqlx::query(
            "INSERT INTO snapshots (stream, seq, epoch, state) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (stream, seq) DO UPDATE SET state = EXCLUDED.state, epoch = EXCLUDED.epoch",
        )
        .bind(&name)
        .bind(to_i64(snapshot.seq.0))
        .bind(to_i64(epoch.0))
        .bind(&snapshot.state)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "DELETE FROM snapshots WHERE stream = $1 AND seq NOT IN \
             (SELECT seq FROM snapshots WHERE stream = $1 ORDER BY seq DESC LIMIT $2)",
        )
        .bind(&name)
        .bind(SNAPSHOTS_KEPT)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }
}
