//! The projector's transactions on Postgres: a batch of row changes and the checkpoint move
//! together, under a lock on the checkpoint row, so a crash leaves rows and checkpoint
//! consistent and two projectors never apply the same batch.

use ltmc_projections::{Change, Val};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_postgres::types::{IsNull, ToSql, Type, private::BytesMut, to_sql_checked};
use tokio_postgres::{GenericClient, Statement, Transaction};

use super::{PgStore, db_err};
use crate::store::views_sql::{CHECKPOINT, Param, Shape, groups, params};
use crate::store::{Error, Result};

/// A change's value bound to whatever type the column has (the projections' types match the
/// tables); an array of them binds a whole column of a group.
#[derive(Debug)]
pub(super) struct PgParam<'a>(pub(super) Param<'a>);

impl ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Param::Int(i) => i.to_sql(ty, out),
            Param::Val(v) => match v {
                Val::Null => Ok(IsNull::Yes),
                Val::Int(i) => i.to_sql(ty, out),
                Val::Real(f) => f.to_sql(ty, out),
                Val::Text(s) => s.to_sql(ty, out),
                Val::Json(v) => v.to_sql(ty, out),
                Val::Time(t) => t.to_sql(ty, out),
                Val::Bool(b) => b.to_sql(ty, out),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// (table, column) -> SQL type, for the casts of `unnest` statements. The views have the same
/// DDL in every schema (live or time-travel), so one map serves them all.
pub(super) type ColumnTypes = HashMap<(String, String), String>;

async fn read_column_types(tx: &impl GenericClient) -> Result<ColumnTypes> {
    let tables: Vec<&str> = ltmc_projections::tables();
    let rows = tx
        .query(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1) \
             AND a.attnum > 0 AND NOT a.attisdropped",
            &[&tables],
        )
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect())
}

/// Makes sure the checkpoint row exists, locks it and returns its position (one statement: an
/// upsert locks the row it finds).
async fn lock_checkpoint(tx: &Transaction<'_>) -> Result<i64> {
    let row = tx
        .query_one(
            "INSERT INTO checkpoints (name, position) VALUES ($1, 0) \
             ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING position",
            &[&CHECKPOINT],
        )
        .await
        .map_err(db_err)?;
    Ok(row.get(0))
}

/// Locks the checkpoint row (creating it) and fails with [`MOVED`] in the message unless it is at
/// `$2`: the failure aborts the transaction it is in, so statements sent after it in the same
/// pipeline, `COMMIT` included, change nothing.
const EXPECT_CHECKPOINT: &str = "WITH locked AS (INSERT INTO checkpoints (name, position) VALUES ($1, 0) \
     ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING position) \
     SELECT CASE WHEN position = $2 THEN position ELSE ('ltmc-checkpoint-moved:' || position)::bigint END \
     FROM locked";

const SET_CHECKPOINT: &str = "UPDATE checkpoints SET position = $2, updated_at = now() WHERE name = $1";

/// What the error of [`EXPECT_CHECKPOINT`] says when the checkpoint was elsewhere.
const MOVED: &str = "ltmc-checkpoint-moved";

pub(super) async fn set_checkpoint(tx: &impl GenericClient, position: i64) -> Result<()> {
    tx.execute(SET_CHECKPOINT, &[&CHECKPOINT, &position]).await.map_err(db_err)?;
    Ok(())
}

/// The statement text of each group of `changes`, with the group.
pub(super) fn plan<'c>(changes: &'c [Change], types: &ColumnTypes) -> Result<Vec<(String, &'c [Change])>> {
    groups(changes)
        .into_iter()
        .map(|(shape, group)| {
            let table = shape.table();
            let types = shape
                .columns()
                .iter()
                .map(|c| {
                    types.get(&(table.to_owned(), (*c).to_owned())).cloned().ok_or_else(|| {
                        Error::Backend(format!("view column {table}.{c} is missing; are the migrations applied?"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((Shape::unnest_sql(&shape, &types), group))
        })
        .collect()
}

/// Executes each group (prepared in `statements`, in the same order) as one statement over
/// arrays, pipelined: every execution is sent without waiting for the previous one's answer
/// (the connection keeps them in order).
pub(super) async fn execute_plan(
    tx: &impl GenericClient,
    statements: &[Statement],
    plan: &[(String, &[Change])],
) -> Result<()> {
    let columns: Vec<Vec<Vec<PgParam>>> = plan
        .iter()
        .map(|(_, group)| {
            let mut columns: Vec<Vec<PgParam>> = Vec::new();
            for change in *group {
                for (i, p) in params(change).into_iter().enumerate() {
                    if i == columns.len() {
                        columns.push(Vec::with_capacity(group.len()));
                    }
                    columns[i].push(PgParam(p));
                }
            }
            columns
        })
        .collect();
    let mut runs: Vec<_> = statements
        .iter()
        .zip(&columns)
        .map(|(stmt, columns)| {
            let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            Box::pin(futures::future::maybe_done(async move { tx.execute(stmt, &params).await }))
        })
        .collect();
    // A request goes out when its future is first polled: poll each once, in order, now, so
    // all of them are on the wire before this returns to the caller's pipeline (a join of many
    // futures may stop polling part-way and let later statements, a COMMIT, overtake them).
    for run in &mut runs {
        let _ = futures::poll!(run.as_mut());
    }
    for run in &mut runs {
        run.as_mut().await;
    }
    for run in &mut runs {
        if let Some(Err(e)) = run.as_mut().take_output() {
            return Err(db_err(e));
        }
    }
    Ok(())
}

/// Prepared statements by text, for a connection without deadpool's cache.
#[derive(Default)]
pub(super) struct Prepared(HashMap<String, Statement>);

impl Prepared {
    pub(super) async fn all(&mut self, tx: &Transaction<'_>, plan: &[(String, &[Change])]) -> Result<Vec<Statement>> {
        let mut out = Vec::with_capacity(plan.len());
        for (sql, _) in plan {
            if !self.0.contains_key(sql) {
                let stmt = tx.prepare(sql).await.map_err(db_err)?;
                self.0.insert(sql.clone(), stmt);
            }
            out.push(self.0[sql].clone());
        }
        Ok(out)
    }
}

impl PgStore {
    async fn view_types(&self, client: &impl GenericClient) -> Result<Arc<ColumnTypes>> {
        self.inner.view_types.get_or_try_init(|| async { read_column_types(client).await.map(Arc::new) }).await.cloned()
    }

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
        self.apply_views_with_log(from, to, &[], changes).await
    }

    /// [`PgStore::apply_views`], writing `log` (the events of the batch, from another
    /// database) into this database's log in the same transaction, at their own positions: a
    /// reporting copy fed from NATS holds the log its views come from, and its `audit_log`
    /// shows it.
    pub async fn apply_views_with_log(
        &self,
        from: i64,
        to: i64,
        log: &[ltmc_core::RecordedEvent],
        changes: &[Change],
    ) -> Result<bool> {
        let client = self.client().await?;
        let plain: &tokio_postgres::Client = &client;
        let types = self.view_types(plain).await?;
        let plan = plan(changes, &types)?;
        // Prepared before the transaction: preparing locks the tables a statement names until
        // the transaction ends, and a transaction holding them while it waits for the
        // checkpoint row would deadlock with a rebuild (which holds that row, then swaps the
        // tables).
        let mut statements = Vec::with_capacity(plan.len());
        for (sql, _) in &plan {
            statements.push(client.prepare_cached(sql).await.map_err(db_err)?);
        }
        // The whole transaction goes out as one pipeline, one round trip: begin, lock the
        // checkpoint (failing unless it is at `from`), the writes, the new checkpoint, commit.
        // If the checkpoint had moved, the failure aborted the transaction and the COMMIT
        // rolled it back.
        // Every statement is prepared beforehand: a statement given as text is prepared when
        // first polled and executed only after the server answers, behind what was sent
        // meanwhile (the COMMIT included).
        let expect = client.prepare_cached(EXPECT_CHECKPOINT).await.map_err(db_err)?;
        let set = client.prepare_cached(SET_CHECKPOINT).await.map_err(db_err)?;
        let copy_log = if log.is_empty() { None } else { Some(client.prepare_cached(COPY_LOG).await.map_err(db_err)?) };
        let c: &tokio_postgres::Client = &client;
        // Joined, not try-joined: every part's answer is waited for, so the checkpoint's own
        // answer decides, whatever order the parts' futures see their answers in (a write
        // refused because the moved checkpoint aborted the transaction is no error of its own),
        // and the COMMIT has ended the transaction before the connection goes back to the pool.
        let (begin, expected, written, set, committed) = futures::future::join5(
            async { c.batch_execute(BEGIN_ASYNC_COMMIT).await.map_err(db_err) },
            async { c.query_one(&expect, &[&CHECKPOINT, &from]).await.map_err(db_err) },
            // Joined, not awaited one after the other: the log's insert and the writes must all
            // be sent before the checkpoint and the COMMIT (a request goes out when first polled).
            futures::future::try_join(
                async {
                    match &copy_log {
                        Some(copy_log) => write_log(c, copy_log, log).await,
                        None => Ok(()),
                    }
                },
                execute_plan(c, &statements, &plan),
            ),
            async { c.execute(&set, &[&CHECKPOINT, &to]).await.map_err(db_err) },
            async { c.batch_execute("COMMIT").await.map_err(db_err) },
        )
        .await;
        if committed.is_err() {
            // If that fails too, the connection is broken and the first error says why.
            let _ = c.batch_execute("ROLLBACK").await;
        }
        match expected {
            Err(Error::Backend(m)) if m.contains(MOVED) => Ok(false),
            expected => {
                begin?;
                expected?;
                written?;
                set?;
                committed?;
                Ok(true)
            }
        }
    }

    /// Replays the log (up to `until`) into fresh tables and swaps them in for `tables`, in one
    /// transaction: readers see the old rows until it commits, then the new ones. Returns the
    /// checkpoint.
    pub async fn rebuild_views(&self, tables: &[&'static str], until: Option<i64>, held_rows: usize) -> Result<i64> {
        // The reader is a connection of its own, not a pooled one: a pooled connection may
        // still be working through requests of a caller that was cancelled (an aborted
        // catch-up's pipeline, waiting for the checkpoint row), and the rebuild, holding that
        // row, would wait behind them for ever.
        let reader = self.connect().await?;
        let mut client = self.connect().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let types = self.view_types(&tx).await?;
        lock_checkpoint(&tx).await?;
        // The head is read once the checkpoint row is held, so no projector moves the views
        // past it meanwhile: every event the views hold has committed by now, and a rebuild
        // without `until` ends at or beyond the checkpoint it found. Read before the lock, a
        // projector could apply batches beyond it while the rebuild waited, which the rebuild
        // then took back: a reader that had seen those rows read a checkpoint behind them
        // (issue 16, defect 8).
        let until = until.unwrap_or(i64::MAX).min(head(&reader).await?);
        let position = super::rebuild::rebuild(&tx, &reader, self.schema(), tables, until, held_rows, &types).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(position)
    }

    /// Builds the views as of `until` into a new schema `into` (tables and a checkpoint of its
    /// own), leaving the live views alone: time travel for inspection with `psql`.
    pub async fn snapshot_views(&self, tables: &[&'static str], until: i64, into: &str, ddl: &str) -> Result<i64> {
        // A connection of its own, as for a rebuild.
        let reader = self.connect().await?;
        let exists = reader
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&into])
            .await
            .map_err(db_err)?
            .is_some();
        if exists {
            return Err(Error::Invalid(format!("schema {into} exists; choose another name or drop it first")));
        }
        let mut config = self.config().clone();
        config.options(format!("-csearch_path={into}"));
        let (mut client, conn) =
            config.connect(tokio_postgres::NoTls).await.map_err(|e| Error::Unavailable(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let tx = client.transaction().await.map_err(db_err)?;
        tx.batch_execute(&format!("CREATE SCHEMA \"{into}\"")).await.map_err(db_err)?;
        tx.batch_execute(CHECKPOINTS_DDL).await.map_err(db_err)?;
        tx.batch_execute(ddl).await.map_err(db_err)?;
        let types = self.view_types(&tx).await?;
        lock_checkpoint(&tx).await?;
        let until = until.min(head(&reader).await?);
        let position =
            super::rebuild::rebuild(&tx, &reader, into, tables, until, crate::store::REBUILD_HELD_ROWS, &types).await?;
        // The audit log is a view of the log (decision 0012); the snapshot gets its rows as of
        // the position in a table of the same columns.
        let columns = crate::store::views_sql::AUDIT_COLUMNS;
        let copy = format!(
            "INSERT INTO audit_log ({columns}) SELECT {columns} FROM \"{}\".audit_log WHERE position <= $1",
            self.schema().replace('"', "\"\"")
        );
        tx.execute(&copy, &[&position]).await.map_err(db_err)?;
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

/// Events of another database's log, at their own positions ([`PgStore::apply_views_with_log`]).
/// The copied streams' head records move with them, as an append's do.
const COPY_LOG: &str = "WITH ins AS (INSERT INTO events (global_position, stream_id, stream_version, event_id, \
                        event_type, schema_version, data, metadata, recorded_at, hash) OVERRIDING SYSTEM VALUE \
                        SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], \
                        $6::integer[], $7::jsonb[], $8::jsonb[], $9::timestamptz[], $10::text[]) \
                        RETURNING stream_id, stream_version, hash) \
                        INSERT INTO stream_heads (stream_id, version, hash) \
                        SELECT DISTINCT ON (stream_id) stream_id, stream_version, hash FROM ins \
                        ORDER BY stream_id, stream_version DESC \
                        ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, hash = excluded.hash \
                        WHERE stream_heads.version < excluded.version";

/// Writes `log` with [`COPY_LOG`].
async fn write_log(c: &tokio_postgres::Client, copy_log: &Statement, log: &[ltmc_core::RecordedEvent]) -> Result<()> {
    let positions: Vec<i64> = log.iter().map(|e| e.global_position).collect();
    let streams: Vec<&str> = log.iter().map(|e| e.stream_id.as_str()).collect();
    let versions: Vec<i64> = log.iter().map(|e| e.stream_version).collect();
    let ids: Vec<uuid::Uuid> = log.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
    let schema_versions: Vec<i32> = log.iter().map(|e| e.schema_version).collect();
    let data: Vec<&serde_json::Value> = log.iter().map(|e| &e.data).collect();
    let metadata = log
        .iter()
        .map(|e| serde_json::to_value(&e.metadata))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Backend(format!("cannot encode an event's metadata: {e}")))?;
    let recorded: Vec<chrono::DateTime<chrono::Utc>> = log.iter().map(|e| e.recorded_at).collect();
    let hashes: Vec<&str> = log.iter().map(|e| e.hash.as_str()).collect();
    c.execute(
        copy_log,
        &[&positions, &streams, &versions, &ids, &types, &schema_versions, &data, &metadata, &recorded, &hashes],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// The views are derived from the log, so their transactions need not wait for the WAL to reach
/// the disk: a crash may lose the last few, whole (rows and checkpoint together), and the
/// projector applies those events again. The log's own appends keep synchronous commit.
const BEGIN_ASYNC_COMMIT: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// The log's last position: every event up to it has committed (appends take one lock per
/// schema, decision 0001), so a replay up to it misses nothing.
async fn head(client: &tokio_postgres::Client) -> Result<i64> {
    let row = client.query_one("SELECT coalesce(max(global_position), 0) FROM events", &[]).await.map_err(db_err)?;
    Ok(row.get(0))
}

const CHECKPOINTS_DDL: &str = "CREATE TABLE checkpoints (name text PRIMARY KEY, position bigint NOT NULL, \
                               updated_at timestamptz NOT NULL DEFAULT now());";
