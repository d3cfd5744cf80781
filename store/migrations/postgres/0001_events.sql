-- Tandem event log on PostgreSQL: the system of record.
CREATE TABLE IF NOT EXISTS owners (
    stream   TEXT   PRIMARY KEY,
    epoch    BIGINT NOT NULL,
    shard    TEXT   NOT NULL,
    -- The last seq appended; appends move it forward in the same statement that checks the epoch.
    last_seq BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS events (
    stream  TEXT     NOT NULL,
    seq     BIGINT   NOT NULL,
    epoch   BIGINT   NOT NULL,
    id      UUID     NOT NULL UNIQUE,
    type    TEXT     NOT NULL,
    version SMALLINT NOT NULL,
    actor   TEXT     NOT NULL,
    ts      BIGINT   NOT NULL,
    trace   TEXT,
    payload BYTEA    NOT NULL,
    PRIMARY KEY (stream, seq)
);

CREATE TABLE IF NOT EXISTS snapshots (
    stream TEXT   NOT NULL,
    seq    BIGINT NOT NULL,
    epoch  BIGINT NOT NULL,
    state  BYTEA  NOT NULL,
    PRIMARY KEY (stream, seq)
);
