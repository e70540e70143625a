-- Head records (docs/event-log.md#head-records, decision 0013): each stream's last version and
-- its hash, written by every append in the same transaction as its events, in a table of its
-- own. Deleting a stream's last events, or all of them, leaves its hash chain intact; the head
-- record is the witness that names the loss (`ltmc audit --verify`, and every fold of a run).
CREATE TABLE stream_heads (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL,
    hash      text   NOT NULL
);

INSERT INTO stream_heads (stream_id, version, hash)
SELECT DISTINCT ON (stream_id) stream_id, stream_version, hash
  FROM events ORDER BY stream_id, stream_version DESC;

-- ltmc_append of V1, now chaining from the head record instead of the stream's last row, and
-- moving it. A stream whose last rows were deleted is still at its recorded version, so an
-- append cannot write over the hole and hide it.
CREATE OR REPLACE FUNCTION ltmc_append(
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
    v_count integer := cardinality(p_event_ids);
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ltmc.append.' || current_schema()));

    SELECT h.version, h.hash INTO v_current, v_hash FROM stream_heads h WHERE h.stream_id = p_stream;
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

    INSERT INTO stream_heads (stream_id, version, hash)
    VALUES (p_stream, p_expected + v_count, p_hashes[v_count])
    ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, hash = excluded.hash;

    PERFORM pg_notify('ltmc_events_' || current_schema(), v_last::text);
    RETURN QUERY SELECT 'ok'::text, p_expected + v_count, v_first, v_last;
END;
$$;
