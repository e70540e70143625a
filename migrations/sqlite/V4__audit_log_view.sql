-- `audit_log` becomes a view of the log itself (decision 0012): one row per event, read from
-- `events`, so it is never behind and a rebuild has nothing to write for it. Its two indexes
-- move to the log: the run an event belongs to (from its metadata) and when it was recorded.
DROP TABLE audit_log;
CREATE INDEX events_run_id ON events (metadata ->> '$.run_id');
CREATE INDEX events_recorded_at ON events (recorded_at);
CREATE VIEW audit_log AS
SELECT global_position             AS position,
       recorded_at                 AS at,
       metadata ->> '$.actor'      AS actor,
       event_type                  AS action,
       stream_id                   AS target,
       metadata ->> '$.run_id'     AS run_id,
       metadata ->> '$.session_id' AS session_id,
       event_id
  FROM events;
