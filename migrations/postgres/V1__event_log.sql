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
CREATE INDEX events_type_idx ON events (event_type, global_position);

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
-- Returns status 'ok' or 'duplicate' (the same event ids were already appended at the same
-- versions: nothing is written, the original positions are returned), or 'conflict' with the
-- stream's actual version, or 'id_reused' when an event id exists elsewhere.
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
    v_n integer := cardinality(p_event_ids);
    v_found integer;
    v_first bigint;
    v_last bigint;
    v_same boolean;
    v_base_min bigint;
    v_base_max bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ltmc.append.' || current_schema()));

    SELECT count(*), min(e.global_position), max(e.global_position)
      INTO v_found, v_first, v_last
      FROM events e WHERE e.event_id = ANY (p_event_ids);
    IF v_found > 0 THEN
        -- A retry of an append that committed: same stream, same order, consecutive versions.
        SELECT bool_and(e.stream_id = p_stream), min(e.stream_version - u.ord), max(e.stream_version - u.ord)
          INTO v_same, v_base_min, v_base_max
          FROM events e
          JOIN unnest(p_event_ids) WITH ORDINALITY AS u(id, ord) ON e.event_id = u.id;
        IF v_found = v_n AND v_same AND v_base_min = v_base_max THEN
            RETURN QUERY SELECT 'duplicate'::text, v_base_min + v_n, v_first, v_last;
            RETURN;
        END IF;
        SELECT coalesce(max(e.stream_version), 0) INTO v_current FROM events e WHERE e.stream_id = p_stream;
        RETURN QUERY SELECT 'id_reused'::text, v_current, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;

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
    RETURN QUERY SELECT 'ok'::text, p_expected + v_n, v_first, v_last;
END;
$$;
