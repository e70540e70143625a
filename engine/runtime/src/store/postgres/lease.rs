//! The relay lease on Postgres: a row of `leases` with an expiry, and a session advisory lock
//! that tells a successor when the holder's connection is gone (see `relay/lease.rs`).

use std::time::Duration;

use super::{PgStore, db_err};
use crate::store::{LeaseRow, Result};

/// A relay's own connection for its lease: reads and writes the lease row, takes the advisory
/// lock (held by this session) and writes the relay's checkpoint.
pub struct PgLeaseConn {
    client: tokio_postgres::Client,
}

const LOCK_KEY: &str = "hashtext('ltmc.lease.' || $1 || '.' || current_schema())";

impl PgStore {
    /// Opens a connection for a relay's lease.
    pub async fn lease_conn(&self) -> Result<PgLeaseConn> {
        let client = self.connect().await?;
        // The lease row and the checkpoint are the relay's own bookkeeping: the checkpoint is a
        // hint (the JetStream tail is authoritative) and a lost renewal only hands the lease
        // over early, which the epoch and JetStream's expected sequence make safe. Neither needs
        // to wait for a WAL flush, which would double the fsyncs of a busy log.
        client.batch_execute("SET synchronous_commit = off").await.map_err(db_err)?;
        Ok(PgLeaseConn { client })
    }
}

impl PgLeaseConn {
    /// The lease row, if any; `expired` by the server's clock.
    pub async fn read(&self, name: &str) -> Result<Option<LeaseRow>> {
        let row = self
            .client
            .query_opt(
                "SELECT holder, epoch, expires_at < clock_timestamp(), locked FROM leases WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| LeaseRow { holder: r.get(0), epoch: r.get(1), expired: r.get(2), locked: r.get(3) }))
    }

    /// Takes the lease from epoch `prev` (`None`: there is no row yet) if it is still free for
    /// `holder`: expired, already its own, or held by a holder whose lock `proved_dead` (we hold
    /// it). Returns the new epoch, or `None` when another relay got there first.
    pub async fn take(
        &self,
        name: &str,
        holder: &str,
        prev: Option<i64>,
        ttl: Duration,
        locked: bool,
    ) -> Result<Option<i64>> {
        let ttl = ttl.as_secs_f64();
        let row = match prev {
            None => self
                .client
                .query_opt(
                    "INSERT INTO leases (name, holder, epoch, expires_at, locked) \
                     VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3), $4) \
                     ON CONFLICT (name) DO NOTHING RETURNING epoch",
                    &[&name, &holder, &ttl, &locked],
                )
                .await
                .map_err(db_err)?,
            Some(prev) => self
                .client
                .query_opt(
                    "UPDATE leases SET holder = $2, epoch = epoch + 1, \
                     expires_at = clock_timestamp() + make_interval(secs => $3), locked = $4 \
                     WHERE name = $1 AND epoch = $5 \
                       AND (expires_at < clock_timestamp() OR holder = $2 OR (leases.locked AND $4)) \
                     RETURNING epoch",
                    &[&name, &holder, &ttl, &locked, &prev],
                )
                .await
                .map_err(db_err)?,
        };
        Ok(row.map(|r| r.get(0)))
    }

    /// Extends the lease held at `epoch`; `false` when it is no longer ours.
    pub async fn renew(&self, name: &str, holder: &str, epoch: i64, ttl: Duration, locked: bool) -> Result<bool> {
        let n = self
            .client
            .execute(
                "UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => $4), locked = $5 \
                 WHERE name = $1 AND holder = $2 AND epoch = $3",
                &[&name, &holder, &epoch, &ttl.as_secs_f64(), &locked],
            )
            .await
            .map_err(db_err)?;
        Ok(n == 1)
    }

    /// Gives the lease held at `epoch` up, so a successor need not wait for its expiry.
    pub async fn release(&self, name: &str, holder: &str, epoch: i64) -> Result<()> {
        self.client
            .execute(
                "UPDATE leases SET expires_at = clock_timestamp() - interval '1 second', locked = false \
                 WHERE name = $1 AND holder = $2 AND epoch = $3",
                &[&name, &holder, &epoch],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Stores checkpoint `checkpoint` if lease `name` is still at `epoch`.
    pub async fn save_checkpoint(&self, name: &str, epoch: i64, checkpoint: &str, position: i64) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO checkpoints (name, position, updated_at) SELECT $3, $4, now() \
                 WHERE EXISTS (SELECT 1 FROM leases WHERE name = $1 AND epoch = $2) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                &[&name, &epoch, &checkpoint, &position],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Tries to take the lease's advisory lock for this session.
    pub async fn try_lock(&self, name: &str) -> Result<bool> {
        let sql = format!("SELECT pg_try_advisory_lock({LOCK_KEY})");
        Ok(self.client.query_one(&sql, &[&name]).await.map_err(db_err)?.get(0))
    }

    /// Releases the lease's advisory lock held by this session.
    pub async fn unlock(&self, name: &str) -> Result<()> {
        let sql = format!("SELECT pg_advisory_unlock({LOCK_KEY})");
        self.client.query_one(&sql, &[&name]).await.map_err(db_err)?;
        Ok(())
    }

    /// Whether the connection is still up.
    pub fn is_alive(&self) -> bool {
        !self.client.is_closed()
    }
}
