-- Session and shared-memory views (docs/sql.md), kept by the same projector as V2's.
CREATE TABLE sessions (
    session_id    text PRIMARY KEY,
    status        text NOT NULL,
    description   text,
    created_at    timestamptz NOT NULL,
    closed_at     timestamptz,
    close_reason  text,
    last_position bigint NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE session_agents (
    session_id   text NOT NULL,
    agent        text NOT NULL,
    role         text,
    active       boolean NOT NULL,
    joined_at    timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    left_at      timestamptz,
    heartbeats   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, agent)
);

CREATE TABLE memory (
    session_id text NOT NULL,
    key        text NOT NULL,
    value      jsonb NOT NULL,
    version    bigint NOT NULL,
    writer     text NOT NULL,
    position   bigint NOT NULL,
    written_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, key)
);

CREATE TABLE memory_history (
    position   bigint PRIMARY KEY,
    session_id text NOT NULL,
    key        text NOT NULL,
    operation  text NOT NULL,
    value      jsonb,
    version    bigint NOT NULL,
    writer     text NOT NULL,
    at         timestamptz NOT NULL
);
CREATE INDEX memory_history_key ON memory_history (session_id, key, version);
