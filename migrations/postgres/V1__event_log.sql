-- The event log: the source of truth. Append-only; see docs/event-log.md.
CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    hash            text        NOT NULL,
    UNIQUE (stream_id, stream_version)
);

-- Where each consumer of the log (relay, projectors) has got to.
CREATE TABLE checkpoints (
    name       text PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Appends a batch to one stream in one statement (one round trip, autocommit).
--
-- Gap-safe order: every append takes one transaction-scoped advisory lock per schema before
-- it draws positions, and holds it until commit, so transactions that draw positions commit in
-- position order. A reader that has seen position P can never later see a commit below P.
-- Positions lost to a rolled-back append leave permanent holes, which readers simply skip.
--
-- The caller passes the version it expects and the hash of the event at that version (the
-- chain is computed by the engine). Returns status 'ok' with the new version and positions, or
-- 'conflict' with the stream's actual version. Event ids that already exist raise
-- unique_violation; the engine then tells a retried append (same ids, same places: a no-op)
-- from a reused id. Keeping those checks off the fast path saves a lookup per append.
CREATE FUNCTION ltmc_append(
    p_stream text,
    p_expected bigint,
    p_prev_hash text,
    p_event_ids uuid[],
    p_types text[],
    p_schema_versions integer[],
    p_data jsonb[],
    p_metadata jsonb[],
    p_recorded_at timestamptz[],
    p_hashes text[]
) RETURNS TABLE (status text, actual_version bigint, first_position bigint, last_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_current bigint;
    v_hash text;
    v_first bigint;
    v_last bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ltmc.append.' || current_schema()));

    SELECT e.stream_version, e.hash INTO v_current, v_hash
      FROM events e WHERE e.stream_id = p_stream
     ORDER BY e.stream_version DESC LIMIT 1;
    v_current := coalesce(v_current, 0);
    IF v_current <> p_expected OR coalesce(v_hash, '') <> p_prev_hash THEN
        RETURN QUERY SELECT 'conflict'::text, v_current, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;

    WITH ins AS (
        INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version,
                            data, metadata, recorded_at, hash)
        SELECT p_stream, p_expected + u.ord, u.id, u.typ, u.sv, u.d, u.m, u.ra, u.h
          FROM unnest(p_event_ids, p_types, p_schema_versions, p_data, p_metadata, p_recorded_at, p_hashes)
               WITH ORDINALITY AS u(id, typ, sv, d, m, ra, h, ord)
         ORDER BY u.ord
        RETURNING global_position
    )
    SELECT min(global_position), max(global_position) INTO v_first, v_last FROM ins;

    PERFORM pg_notify('ltmc_events_' || current_schema(), v_last::text);
    RETURN QUERY SELECT 'ok'::text, p_expected + cardinality(p_event_ids), v_first, v_last;
END;
$$;
