-- The relay's lease (docs/event-log.md#how-the-relay-works, decision 0014): one relay publishes
-- per database, and a holder that stops renewing loses it once `expires_at` (Unix time in
-- milliseconds) has passed, even if its process lives on (stopped, hung). `epoch` grows with
-- every new holder; the holder's writes name it, so a holder that was replaced writes nothing.
-- `locked` (0 or 1) says the holder also holds the lease's file lock, which ends with its
-- process: a successor that gets that lock knows the holder is gone and need not wait.
CREATE TABLE leases (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    locked     INTEGER NOT NULL
);
