//! The projector's transactions on Postgres: a batch of row changes and the checkpoint move
//! together, under a lock on the checkpoint row, so a crash leaves rows and checkpoint
//! consistent and two projectors never apply the same batch.

use ltmc_projections::{Change, Val};
use std::collections::HashMap;
use tokio_postgres::Transaction;
use tokio_postgres::types::{IsNull, ToSql, Type, private::BytesMut, to_sql_checked};

use super::{EVENT_COLUMNS, PgStore, db_err, row_to_event};
use crate::store::views_sql::{CHECKPOINT, Dialect, render_all};
use crate::store::{Error, Result};

/// A value bound to whatever type the column has (the projections' types match the tables).
#[derive(Debug)]
struct PgVal(Val);

impl ToSql for PgVal {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(i) => i.to_sql(ty, out),
            Val::Real(f) => f.to_sql(ty, out),
            Val::Text(s) => s.to_sql(ty, out),
            Val::Json(v) => v.to_sql(ty, out),
            Val::Time(t) => t.to_sql(ty, out),
            Val::Bool(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Makes sure the checkpoint row exists, locks it and returns its position.
async fn lock_checkpoint(tx: &Transaction<'_>) -> Result<i64> {
    tx.execute("INSERT INTO checkpoints (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING", &[&CHECKPOINT])
        .await
        .map_err(db_err)?;
    let row = tx
        .query_one("SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE", &[&CHECKPOINT])
        .await
        .map_err(db_err)?;
    Ok(row.get(0))
}

async fn set_checkpoint(tx: &Transaction<'_>, position: i64) -> Result<()> {
    tx.execute("UPDATE checkpoints SET position = $2, updated_at = now() WHERE name = $1", &[&CHECKPOINT, &position])
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Applies the changes in order, pipelined: the distinct statements are prepared first, then
/// every execution is sent without waiting for the previous one's answer (the connection keeps
/// them in order).
async fn execute_all(tx: &Transaction<'_>, changes: &[Change]) -> Result<()> {
    let rendered: Vec<(String, Vec<PgVal>)> = render_all(changes, Dialect::Postgres)
        .into_iter()
        .map(|(sql, vals)| (sql, vals.into_iter().map(PgVal).collect()))
        .collect();
    let mut statements = HashMap::new();
    for (sql, _) in &rendered {
        if !statements.contains_key(sql) {
            statements.insert(sql.clone(), tx.prepare(sql).await.map_err(db_err)?);
        }
    }
    let runs = rendered.iter().map(|(sql, vals)| {
        let params: Vec<&(dyn ToSql + Sync)> = vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let stmt = &statements[sql];
        async move { tx.execute(stmt, &params).await }
    });
    futures::future::try_join_all(runs).await.map_err(db_err)?;
    Ok(())
}

impl PgStore {
    /// The projector's checkpoint (0 before the first batch).
    pub async fn views_checkpoint(&self) -> Result<i64> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT position FROM checkpoints WHERE name = $1", &[&CHECKPOINT])
            .await
            .map_err(db_err)?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    /// When the projector's checkpoint last moved (`None` before the first batch).
    pub async fn views_updated_at(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT updated_at FROM checkpoints WHERE name = $1", &[&CHECKPOINT])
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Applies `changes` (from the events after `from` up to `to`) and moves the checkpoint to
    /// `to`, in one transaction. `false`, writing nothing, when the checkpoint is not at `from`
    /// (another projector got there first).
    pub async fn apply_views(&self, from: i64, to: i64, changes: &[Change]) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        if lock_checkpoint(&tx).await? != from {
            return Ok(false);
        }
        execute_all(&tx, changes).await?;
        set_checkpoint(&tx, to).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// Empties `tables` and replays the log (up to `until`) into them in one transaction:
    /// readers see the old rows until it commits, then the new ones. Returns the checkpoint.
    pub async fn rebuild_views(&self, tables: &[&str], until: Option<i64>, batch: usize) -> Result<i64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let position = rebuild_in(&tx, tables, "events", until, batch).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(position)
    }

    /// Builds the views as of `until` into a new schema `into` (tables and a checkpoint of its
    /// own), leaving the live views alone: time travel for inspection with `psql`.
    pub async fn snapshot_views(&self, tables: &[&str], until: i64, into: &str, ddl: &str) -> Result<i64> {
        let client = self.client().await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&into])
            .await
            .map_err(db_err)?
            .is_some();
        if exists {
            return Err(Error::Invalid(format!("schema {into} exists; choose another name or drop it first")));
        }
        drop(client);
        let mut config = self.config().clone();
        config.options(format!("-csearch_path={into}"));
        let (mut client, conn) =
            config.connect(tokio_postgres::NoTls).await.map_err(|e| Error::Unavailable(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let tx = client.transaction().await.map_err(db_err)?;
        tx.batch_execute(&format!("CREATE SCHEMA \"{into}\"")).await.map_err(db_err)?;
        tx.batch_execute(CHECKPOINTS_DDL).await.map_err(db_err)?;
        tx.batch_execute(ddl).await.map_err(db_err)?;
        let events = format!("\"{}\".events", self.schema());
        let position = rebuild_in(&tx, tables, &events, Some(until), 5_000).await?;
        tx.commit().await.map_err(db_err)?;
        drop(client);
        let _ = driver.await;
        Ok(position)
    }

    /// The last position recorded at or before `at`.
    pub async fn position_at(&self, at: chrono::DateTime<chrono::Utc>) -> Result<i64> {
        let row = self
            .client()
            .await?
            .query_one("SELECT coalesce(max(global_position), 0) FROM events WHERE recorded_at <= $1", &[&at])
            .await
            .map_err(db_err)?;
        Ok(row.get(0))
    }
}

const CHECKPOINTS_DDL: &str = "CREATE TABLE checkpoints (name text PRIMARY KEY, position bigint NOT NULL, \
                               updated_at timestamptz NOT NULL DEFAULT now());";

/// Empties `tables` and replays `events_table` (up to `until`) into them, inside `tx`.
async fn rebuild_in(
    tx: &Transaction<'_>,
    tables: &[&str],
    events_table: &str,
    until: Option<i64>,
    batch: usize,
) -> Result<i64> {
    lock_checkpoint(tx).await?;
    for t in tables {
        tx.execute(&format!("DELETE FROM {t}"), &[]).await.map_err(db_err)?;
    }
    let until = until.unwrap_or(i64::MAX);
    let read = format!(
        "SELECT {EVENT_COLUMNS} FROM {events_table} WHERE global_position > $1 AND global_position <= $2 \
         ORDER BY global_position LIMIT $3"
    );
    let read = tx.prepare(&read).await.map_err(db_err)?;
    let mut position = 0i64;
    loop {
        let rows = tx.query(&read, &[&position, &until, &(batch as i64)]).await.map_err(db_err)?;
        let events = rows.iter().map(row_to_event).collect::<Result<Vec<_>>>()?;
        let Some(last) = events.last() else { break };
        position = last.global_position;
        execute_all(tx, &ltmc_projections::changes(&events)).await?;
    }
    set_checkpoint(tx, position).await?;
    Ok(position)
}
