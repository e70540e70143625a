//! Postgres migrations: embedded, checksummed (refinery), one migrator per schema at a time.

use std::str::FromStr;
use tokio_postgres::NoTls;

use super::db_err;
use crate::store::{Error, Result};

mod embedded {
    refinery::embed_migrations!("../../migrations/postgres");
}

/// Applies pending migrations with the settings of `config`; returns how many were applied.
/// An applied migration whose file changed is refused ([`Error::Migration`]).
pub(super) async fn migrate(config: &tokio_postgres::Config) -> Result<usize> {
    let (mut client, conn) = config.connect(NoTls).await.map_err(|e| Error::Unavailable(e.to_string()))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let schema: Option<String> = client.query_one("SELECT current_schema()", &[]).await.map_err(db_err)?.get(0);
    if schema.is_none() {
        return Err(Error::Invalid(
            "the database URL's search_path names no existing schema; create it first (CREATE SCHEMA name) \
             or drop the search_path option to use public"
                .into(),
        ));
    }
    // One migrator at a time per schema; the others wait, then find nothing to do.
    client
        .batch_execute("SELECT pg_advisory_lock(hashtext('ltmc.migrate.' || current_schema()))")
        .await
        .map_err(db_err)?;
    let result = embedded::migrations::runner().run_async(&mut client).await;
    let _ = client.batch_execute("SELECT pg_advisory_unlock(hashtext('ltmc.migrate.' || current_schema()))").await;
    // A connection lost halfway (terminated, server restarting) is not a bad migration.
    let lost = client.is_closed();
    drop(client);
    let _ = task.await;
    result.map(|report| report.applied_migrations().len()).map_err(|e| match lost {
        true => Error::Unavailable(format!("the connection was lost while migrating: {e}")),
        false => Error::Migration(e.to_string()),
    })
}

/// Applies pending migrations to the database at `url`; returns how many were applied.
pub async fn migrate_url(url: &str) -> Result<usize> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| Error::Invalid(format!("database URL is not a valid postgres URL: {e}")))?;
    migrate(&config).await
}
