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
    decision        TEXT,
    agreed          INTEGER,
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

-- Per step: coordination time (ready -> first dispatch recorded: the engine's own time before
-- the agent starts) and agent time, in milliseconds. Times are exact to the microsecond (the
-- text is RFC 3339 with six decimals; julianday() would round to milliseconds).
CREATE VIEW step_times AS
SELECT run_id, step, agent, status, retries,
       (((strftime('%s', first_dispatched_at) * 1000000 + CAST(substr(first_dispatched_at, 21, 6) AS INTEGER))) - ((strftime('%s', ready_at) * 1000000 + CAST(substr(ready_at, 21, 6) AS INTEGER)))) / 1000.0 AS coordination_ms,
       CAST(duration_ms AS REAL) AS agent_ms
FROM steps;

-- One row: the seed's metrics and more, computed from the views. Percentiles are nearest-rank
-- (the value at rank ceil(p * n)), the same definition as percentile_disc on Postgres.
CREATE VIEW coordination_metrics AS
WITH c AS (SELECT coordination_ms AS x, row_number() OVER (ORDER BY coordination_ms) AS rn, count(*) OVER () AS n
           FROM step_times WHERE coordination_ms IS NOT NULL),
     a AS (SELECT agent_ms AS x, row_number() OVER (ORDER BY agent_ms) AS rn, count(*) OVER () AS n
           FROM step_times WHERE agent_ms IS NOT NULL)
SELECT
    (SELECT count(DISTINCT s.agent) FROM steps s JOIN runs r ON r.run_id = s.run_id
       WHERE s.status IN ('running', 'retrying') AND r.status = 'running')                  AS active_agents,
    (SELECT count(*) FROM runs WHERE status = 'running')                                   AS running_workflows,
    (SELECT count(*) FROM runs WHERE status = 'completed')                                 AS completed_workflows,
    (SELECT count(*) FROM runs WHERE status = 'failed')                                    AS failed_workflows,
    (SELECT avg(coordination_ms) FROM step_times)                                          AS avg_coordination_time_ms,
    (SELECT x FROM c WHERE rn = (n * 50 + 99) / 100)                                       AS p50_coordination_ms,
    (SELECT x FROM c WHERE rn = (n * 95 + 99) / 100)                                       AS p95_coordination_ms,
    (SELECT x FROM a WHERE rn = (n * 50 + 99) / 100)                                       AS p50_step_ms,
    (SELECT x FROM a WHERE rn = (n * 95 + 99) / 100)                                       AS p95_step_ms,
    (SELECT coalesce(sum(retries), 0) FROM runs)                                           AS retries,
    (SELECT avg(t.coordination_ms) FROM step_times t
       WHERE EXISTS (SELECT 1 FROM handoffs h WHERE h.run_id = t.run_id AND h.step = t.step
                     AND h.outcome = 'accepted'))                                          AS avg_handoff_latency_ms,
    (SELECT count(*) FROM handoffs WHERE outcome = 'refused')                              AS refused_handoffs,
    (SELECT count(*) FROM runs WHERE agreed = 0)                                           AS consensus_disagreements;
