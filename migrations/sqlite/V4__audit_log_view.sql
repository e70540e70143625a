-- `audit_log` becomes a view of the log itself (decision 0012): one row per event, read from
-- `events`, so it is never behind and a rebuild has nothing to write for it. Its two indexes
-- move to the log: the run an event belongs to (from its metadata) and when it was recorded.
-- json_extract rather than ->>, which the sqlite3 shell of older distributions (before 3.38)
-- cannot parse in a schema; the index and the view use the same expression, so it serves.
DROP TABLE audit_log;
CREATE INDEX events_run_id ON events (json_extract(metadata, '$.run_id'));
CREATE INDEX events_recorded_at ON events (recorded_at);
CREATE VIEW audit_log AS
SELECT global_position                        AS position,
       recorded_at                            AS at,
       json_extract(metadata, '$.actor')      AS actor,
       event_type                             AS action,
       stream_id                              AS target,
       json_extract(metadata, '$.run_id')     AS run_id,
       json_extract(metadata, '$.session_id') AS session_id,
       event_id
  FROM events;
