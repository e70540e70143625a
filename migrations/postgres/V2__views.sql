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
    decision        text,
    agreed          boolean,
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

-- Per step: coordination time (ready -> first dispatch recorded: the engine's own time before
-- the agent starts) and agent time, in milliseconds.
CREATE VIEW step_times AS
SELECT run_id, step, agent, status, retries,
       (EXTRACT(EPOCH FROM (first_dispatched_at - ready_at)) * 1000.0)::double precision AS coordination_ms,
       duration_ms::double precision AS agent_ms
FROM steps;

-- One row: the seed's metrics and more, computed from the views. Percentiles are nearest-rank
-- (percentile_disc), the same definition as on SQLite.
CREATE VIEW coordination_metrics AS
SELECT
    (SELECT count(DISTINCT s.agent) FROM steps s JOIN runs r ON r.run_id = s.run_id
       WHERE s.status IN ('running', 'retrying') AND r.status = 'running')                  AS active_agents,
    (SELECT count(*) FROM runs WHERE status = 'running')                                   AS running_workflows,
    (SELECT count(*) FROM runs WHERE status = 'completed')                                 AS completed_workflows,
    (SELECT count(*) FROM runs WHERE status = 'failed')                                    AS failed_workflows,
    (SELECT avg(coordination_ms) FROM step_times)                                          AS avg_coordination_time_ms,
    (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY coordination_ms) FROM step_times)  AS p50_coordination_ms,
    (SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY coordination_ms) FROM step_times) AS p95_coordination_ms,
    (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY agent_ms) FROM step_times)         AS p50_step_ms,
    (SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY agent_ms) FROM step_times)        AS p95_step_ms,
    (SELECT coalesce(sum(retries), 0)::bigint FROM runs)                                   AS retries,
    (SELECT avg(t.coordination_ms) FROM step_times t
       WHERE EXISTS (SELECT 1 FROM handoffs h WHERE h.run_id = t.run_id AND h.step = t.step
                     AND h.outcome = 'accepted'))                                          AS avg_handoff_latency_ms,
    (SELECT count(*) FROM handoffs WHERE outcome = 'refused')                              AS refused_handoffs,
    (SELECT count(*) FROM runs WHERE agreed = false)                                       AS consensus_disagreements;
