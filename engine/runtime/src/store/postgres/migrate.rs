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
    // A current schema needs no lock: every process opening the store (each `ltmc run`) used
    // to queue on it, one at a time, to find nothing to do.
    if check(&client).await?.1 {
        drop(client);
        let _ = task.await;
        return Ok(0);
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

/// The schema the tables live in (the first of the `search_path`), and whether it is current
/// ([`is_current`]). Refused when the `search_path` names no existing schema.
pub(super) async fn check(client: &tokio_postgres::Client) -> Result<(String, bool)> {
    let schema: Option<String> = client.query_one("SELECT current_schema()", &[]).await.map_err(db_err)?.get(0);
    let Some(schema) = schema else {
        return Err(Error::Invalid(
            "the database URL's search_path names no existing schema; create it first (CREATE SCHEMA name) \
             or drop the search_path option to use public"
                .into(),
        ));
    };
    Ok((schema, is_current(client).await))
}

/// Whether the schema holds exactly the embedded migrations, each with its checksum: then there
/// is nothing to apply and nothing to refuse. Anything else (no history table yet, a migration
/// missing, edited or newer than this binary, a failed read) goes to refinery, under the lock,
/// which applies or refuses as before.
async fn is_current(client: &tokio_postgres::Client) -> bool {
    let Ok(rows) = client.query("SELECT version::bigint, checksum FROM refinery_schema_history", &[]).await else {
        return false;
    };
    let Ok(mut applied) = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<(i64, String)>, tokio_postgres::Error>>()
    else {
        return false;
    };
    let mut embedded: Vec<(i64, String)> = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| (i64::from(m.version()), m.checksum().to_string()))
        .collect();
    applied.sort_unstable();
    embedded.sort_unstable();
    applied == embedded
}

/// Applies pending migrations to the database at `url`; returns how many were applied.
pub async fn migrate_url(url: &str) -> Result<usize> {
    let config = tokio_postgres::Config::from_str(url)
        .map_err(|e| Error::Invalid(format!("database URL is not a valid postgres URL: {e}")))?;
    migrate(&config).await
}
