-- Head records (docs/event-log.md#head-records, decision 0013): each stream's last version and
-- its hash, written by every append in the same transaction as its events, in a table of its
-- own. Deleting a stream's last events, or all of them, leaves its hash chain intact; the head
-- record is the witness that names the loss (`ltmc audit --verify`, and every fold of a run).
-- Appends chain from it, so an append cannot write over a deleted tail and hide it.
CREATE TABLE stream_heads (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL,
    hash      TEXT    NOT NULL
);

INSERT INTO stream_heads (stream_id, version, hash)
SELECT e.stream_id, e.stream_version, e.hash FROM events e
 WHERE e.stream_version = (SELECT max(x.stream_version) FROM events x WHERE x.stream_id = e.stream_id);
