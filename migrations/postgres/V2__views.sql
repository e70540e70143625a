-- SQL views of the log, kept by the projector (docs/sql.md). Each table is rebuilt from the
-- events by `ltmc projections rebuild`; the projector advances checkpoint `projections` in the
-- same transaction as the rows.
CREATE TABLE runs (
    run_id          text PRIMARY KEY,
    workflow        text,
    pattern         text,
    status          text NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    steps_total     bigint NOT NULL DEFAULT 0,
    steps_completed bigint NOT NULL DEFAULT 0,
    steps_failed    bigint NOT NULL DEFAULT 0,
    attempts        bigint NOT NULL DEFAULT 0,
    retries         bigint NOT NULL DEFAULT 0,
    activations     bigint NOT NULL DEFAULT 0,
    failure         text,
    output          jsonb,
    last_position   bigint NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE steps (
    run_id              text NOT NULL,
    step                text NOT NULL,
    agent               text,
    status              text NOT NULL,
    attempts            bigint NOT NULL DEFAULT 0,
    retries             bigint NOT NULL DEFAULT 0,
    ready_at            timestamptz,
    first_dispatched_at timestamptz,
    dispatched_at       timestamptz,
    finished_at         timestamptz,
    duration_ms         bigint,
    error               text,
    vote                text,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE handoffs (
    position   bigint PRIMARY KEY,
    run_id     text NOT NULL,
    step       text NOT NULL,
    from_steps jsonb NOT NULL,
    requires   jsonb NOT NULL,
    unmet      jsonb NOT NULL,
    outcome    text NOT NULL,
    at         timestamptz NOT NULL
);
CREATE INDEX handoffs_run ON handoffs (run_id);

CREATE TABLE audit_log (
    position   bigint PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text,
    action     text NOT NULL,
    target     text NOT NULL,
    run_id     text,
    session_id text,
    event_id   text NOT NULL
);
CREATE INDEX audit_log_run ON audit_log (run_id);
CREATE INDEX audit_log_at ON audit_log (at);
