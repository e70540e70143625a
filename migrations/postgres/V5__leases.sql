-- The relay's lease (docs/event-log.md#how-the-relay-works, decision 0014): one relay publishes
-- per database, and a holder that stops renewing loses it once `expires_at` has passed, even if
-- its process and connections live on (stopped, hung). `epoch` grows with every new holder;
-- the holder's writes name it, so a holder that was replaced writes nothing. `locked` says the
-- holder also holds the lease's advisory lock, which ends with its connection: a successor that
-- gets that lock knows the holder is gone and need not wait for the expiry.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text        NOT NULL,
    epoch      bigint      NOT NULL,
    expires_at timestamptz NOT NULL,
    locked     boolean     NOT NULL
);
