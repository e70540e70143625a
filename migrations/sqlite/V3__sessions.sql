-- Session and shared-memory views (docs/sql.md); the same tables as on Postgres, times as
-- RFC 3339 text (UTC), JSON as text, flags as 0 or 1.
CREATE TABLE sessions (
    session_id    TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    description   TEXT,
    created_at    TEXT NOT NULL,
    closed_at     TEXT,
    close_reason  TEXT,
    last_position INTEGER NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE TABLE session_agents (
    session_id   TEXT NOT NULL,
    agent        TEXT NOT NULL,
    role         TEXT,
    active       INTEGER NOT NULL,
    joined_at    TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    left_at      TEXT,
    heartbeats   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, agent)
);

CREATE TABLE memory (
    session_id TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    writer     TEXT NOT NULL,
    position   INTEGER NOT NULL,
    written_at TEXT NOT NULL,
    PRIMARY KEY (session_id, key)
);

CREATE TABLE memory_history (
    position   INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    key        TEXT NOT NULL,
    operation  TEXT NOT NULL,
    value      TEXT,
    version    INTEGER NOT NULL,
    writer     TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX memory_history_key ON memory_history (session_id, key, version);
