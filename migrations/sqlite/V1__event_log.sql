-- The event log: the source of truth. Append-only; see docs/event-log.md.
-- SQLite allows one writer at a time, so positions are drawn and committed in the same order:
-- the log is gap-safe without extra locking.
CREATE TABLE events (
    global_position INTEGER PRIMARY KEY,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_id        TEXT    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    hash            TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version)
);

CREATE TABLE checkpoints (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
