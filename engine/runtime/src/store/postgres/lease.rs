//! The relay lease on Postgres.

use super::{PgStore, db_err};
use crate::store::Result;

/// A held relay lease: a session-level advisory lock on a dedicated connection. It ends when
/// the connection does (process exit, crash, network loss), so a successor never waits for a
/// timeout. Checkpoints are written on the same connection: a relay that lost its lease cannot
/// move the checkpoint.
pub struct PgLease {
    client: tokio_postgres::Client,
}

impl PgStore {
    /// Tries to take the lease `name` for this schema; `None` when another process holds it.
    pub async fn try_lease(&self, name: &str) -> Result<Option<PgLease>> {
        let client = self.connect().await?;
        let got: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('ltmc.lease.' || $1 || '.' || current_schema()))",
                &[&name],
            )
            .await
            .map_err(db_err)?
            .get(0);
        if got {
            // The relay checkpoint is a hint (the JetStream tail is authoritative); it need not
            // wait for a WAL flush, which would double the fsyncs of a busy log.
            client.batch_execute("SET synchronous_commit = off").await.map_err(db_err)?;
        }
        Ok(got.then_some(PgLease { client }))
    }
}

impl PgLease {
    /// Stores a checkpoint while holding the lease.
    pub async fn save_checkpoint(&self, name: &str, position: i64) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = now()",
                &[&name, &position],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Whether the lease's connection is still up.
    pub fn is_alive(&self) -> bool {
        !self.client.is_closed()
    }
}
