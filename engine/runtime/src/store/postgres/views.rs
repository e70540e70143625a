//! The projector's transactions on Postgres: a batch of row changes and the checkpoint move
//! together, under a lock on the checkpoint row, so a crash leaves rows and checkpoint
//! consistent and two projectors never apply the same batch.

use deadpool_postgres::Transaction;
use ltmc_projections::{Change, Val};
use std::collections::HashMap;
use tokio_postgres::types::{IsNull, ToSql, Type, private::BytesMut, to_sql_checked};

use super::{EVENT_COLUMNS, PgStore, db_err, row_to_event};
use crate::store::Result;
use crate::store::views_sql::{CHECKPOINT, Dialect, render};

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
    let rendered: Vec<(String, Vec<PgVal>)> = changes
        .iter()
        .map(|c| {
            let (sql, vals) = render(c, Dialect::Postgres);
            (sql, vals.into_iter().map(PgVal).collect())
        })
        .collect();
    let mut statements = HashMap::new();
    for (sql, _) in &rendered {
        if !statements.contains_key(sql) {
            statements.insert(sql.clone(), tx.prepare_cached(sql).await.map_err(db_err)?);
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
        lock_checkpoint(&tx).await?;
        for t in tables {
            tx.execute(&format!("DELETE FROM {t}"), &[]).await.map_err(db_err)?;
        }
        let until = until.unwrap_or(i64::MAX);
        let read = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > $1 AND global_position <= $2 \
             ORDER BY global_position LIMIT $3"
        );
        let mut position = 0i64;
        loop {
            let rows = tx.query(&read, &[&position, &until, &(batch as i64)]).await.map_err(db_err)?;
            let events = rows.iter().map(row_to_event).collect::<Result<Vec<_>>>()?;
            let Some(last) = events.last() else { break };
            position = last.global_position;
            execute_all(&tx, &ltmc_projections::changes(&events)).await?;
        }
        set_checkpoint(&tx, position).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(position)
    }
}
