-- SQL views of the log, kept by the projector (docs/sql.md); the same tables as on Postgres,
-- with times as RFC 3339 text (UTC) and JSON as text.
CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    workflow        TEXT,
    pattern         TEXT,
    status          TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    steps_total     INTEGER NOT NULL DEFAULT 0,
    steps_completed INTEGER NOT NULL DEFAULT 0,
    steps_failed    INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    retries         INTEGER NOT NULL DEFAULT 0,
    activations     INTEGER NOT NULL DEFAULT 0,
    failure         TEXT,
    output          TEXT,
    last_position   INTEGER NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE steps (
    run_id              TEXT NOT NULL,
    step                TEXT NOT NULL,
    agent               TEXT,
    status              TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    retries             INTEGER NOT NULL DEFAULT 0,
    ready_at            TEXT,
    first_dispatched_at TEXT,
    dispatched_at       TEXT,
    finished_at         TEXT,
    duration_ms         INTEGER,
    error               TEXT,
    vote                TEXT,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE handoffs (
    position   INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL,
    step       TEXT NOT NULL,
    from_steps TEXT NOT NULL,
    requires   TEXT NOT NULL,
    unmet      TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX handoffs_run ON handoffs (run_id);

CREATE TABLE audit_log (
    position   INTEGER PRIMARY KEY,
    at         TEXT NOT NULL,
    actor      TEXT,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    run_id     TEXT,
    session_id TEXT,
    event_id   TEXT NOT NULL
);
CREATE INDEX audit_log_run ON audit_log (run_id);
CREATE INDEX audit_log_at ON audit_log (at);
