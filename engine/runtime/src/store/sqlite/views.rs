//! The projector's transactions on SQLite: the batch of row changes and the checkpoint move
//! together in one write transaction on the store's one writer connection.

use ltmc_projections::{Change, Val};
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, TransactionBehavior, params};

use super::{EVENT_COLUMNS, SqliteStore, Views, collect, row_to_event, sql_err, write_checkpoint};
use crate::store::views_sql::{AUDIT_COLUMNS, CHECKPOINT, Param, groups, params as change_params, sqlite_time};
use crate::store::{Error, Result};
use std::path::PathBuf;

/// A change's value bound as the column's SQLite form (text borrowed, not copied).
pub(super) struct Bound<'a>(pub(super) Param<'a>);

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let owned = |v| Ok(ToSqlOutput::Owned(v));
        match self.0 {
            Param::Int(i) => owned(SqlValue::Integer(i)),
            Param::Val(v) => match v {
                Val::Null => owned(SqlValue::Null),
                Val::Int(i) => owned(SqlValue::Integer(*i)),
                Val::Real(f) => owned(SqlValue::Real(*f)),
                Val::Text(s) => Ok(ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))),
                Val::Json(j) => owned(SqlValue::Text(j.to_string())),
                Val::Time(t) => owned(SqlValue::Text(sqlite_time(t))),
                Val::Bool(b) => owned(SqlValue::Integer(i64::from(*b))),
            },
        }
    }
}

fn checkpoint(conn: &Connection) -> Result<i64> {
    let p: Option<i64> = conn
        .query_row("SELECT position FROM checkpoints WHERE name = ?1", params![CHECKPOINT], |r| r.get(0))
        .optional()
        .map_err(sql_err)?;
    Ok(p.unwrap_or(0))
}

fn set_checkpoint(conn: &Connection, position: i64) -> Result<()> {
    write_checkpoint(conn, CHECKPOINT, position)
}

/// Applies the changes in order: each group's changes through one cached single-row statement
/// (in-process SQLite gains nothing from multi-row statements but their parsing).
pub(super) fn execute_all(conn: &Connection, changes: &[Change]) -> Result<()> {
    let mut sql = std::collections::HashMap::new();
    for (shape, group) in groups(changes) {
        let text = sql.entry(shape.clone()).or_insert_with(|| shape.single_row_sql());
        let mut stmt = conn.prepare_cached(text).map_err(sql_err)?;
        for change in group {
            stmt.execute(rusqlite::params_from_iter(change_params(change).into_iter().map(Bound))).map_err(sql_err)?;
        }
    }
    Ok(())
}

/// Brings the views from their checkpoint up to `last`, the last event of a group commit, in
/// that commit's transaction `tx` (a running projector asked for it: see
/// `SqliteStore::follow_views`). `Skipped` leaves them to the projector when they are more
/// than a batch behind; `Failed` when applying failed (or panicked), which is undone to a
/// savepoint (the appends still commit) and logged; the projector then meets the same error and
/// reports it. An error means even the undo failed: the group must not commit.
pub(super) fn follow_in(tx: &Connection, last: i64) -> Result<Views> {
    let at = match checkpoint(tx) {
        Ok(at) if at < last && last - at <= crate::projector::BATCH as i64 => at,
        Ok(_) => return Ok(Views::Skipped),
        Err(e) => return Ok(failed(&e, 0, last)),
    };
    if let Err(e) = tx.execute_batch("SAVEPOINT ltmc_views") {
        return Ok(failed(&sql_err(e), at, last));
    }
    let apply = || {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > ?1 AND global_position <= ?2 \
                 ORDER BY global_position"
            ))
            .map_err(sql_err)?;
        let events = collect(stmt.query_map(params![at, last], row_to_event).map_err(sql_err)?)?;
        execute_all(tx, &ltmc_projections::changes(&events))?;
        set_checkpoint(tx, last)
    };
    // A panic in projection code must not unwind through the writer's lock (poisoning it for
    // every later append): it is a failed apply like any other.
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(apply))
        .unwrap_or_else(|_| Err(Error::Backend("projecting the events panicked".into())));
    match applied {
        Ok(()) => tx.execute_batch("RELEASE ltmc_views").map(|()| Views::Applied(last)).map_err(sql_err),
        Err(e) => {
            let failed = failed(&e, at, last);
            tx.execute_batch("ROLLBACK TO ltmc_views; RELEASE ltmc_views").map(|()| failed).map_err(sql_err)
        }
    }
}

/// Logs why the appends could not apply the views.
fn failed(e: &Error, from: i64, to: i64) -> Views {
    tracing::warn!(error = %e, from, to, "the views were not applied with the append; the projector will");
    Views::Failed
}

impl SqliteStore {
    /// The projector's checkpoint (0 before the first batch).
    pub async fn views_checkpoint(&self) -> Result<i64> {
        self.with_reader(checkpoint).await
    }

    /// When the projector's checkpoint last moved (`None` before the first batch).
    pub async fn views_updated_at(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let text: Option<String> = self
            .with_reader(|conn| {
                conn.query_row("SELECT updated_at FROM checkpoints WHERE name = ?1", params![CHECKPOINT], |r| r.get(0))
                    .optional()
                    .map_err(sql_err)
            })
            .await?;
        Ok(text.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&chrono::Utc)))
    }

    /// Applies `changes` and moves the checkpoint from `from` to `to` in one transaction;
    /// `false`, writing nothing, when the checkpoint is not at `from`.
    pub async fn apply_views(&self, from: i64, to: i64, changes: Vec<Change>) -> Result<bool> {
        self.apply_views_with_log(from, to, Vec::new(), changes).await
    }

    /// [`SqliteStore::apply_views`], writing `log` (the events of the batch, from another
    /// database) into this database's log in the same transaction, at their own positions: a
    /// reporting copy fed from NATS holds the log its views come from, and its `audit_log`
    /// shows it.
    pub async fn apply_views_with_log(
        &self,
        from: i64,
        to: i64,
        log: Vec<ltmc_core::RecordedEvent>,
        changes: Vec<Change>,
    ) -> Result<bool> {
        let inner = self.inner.clone();
        self.with_writer_queued(move |conn| {
            without_fsync(conn, |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err)?;
                if checkpoint(&tx)? != from {
                    return Ok(false);
                }
                super::write_log(&tx, &log)?;
                execute_all(&tx, &changes)?;
                set_checkpoint(&tx, to)?;
                tx.commit().map_err(sql_err)?;
                // The views can be written again: the appends may take them up again.
                inner.views_paused.store(false, std::sync::atomic::Ordering::SeqCst);
                Ok(true)
            })
        })
        .await
    }

    /// Replays the log (up to `until`) into the emptied `tables` in one transaction; readers
    /// keep seeing the old rows until it commits. Returns the checkpoint.
    pub async fn rebuild_views(&self, tables: Vec<&'static str>, until: Option<i64>, held_rows: usize) -> Result<i64> {
        let source = self.path().to_path_buf();
        let inner = self.inner.clone();
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_err)?;
            let until = match until {
                Some(u) => u,
                None => tx
                    .query_row("SELECT coalesce(max(global_position), 0) FROM events", [], |r| r.get(0))
                    .map_err(sql_err)?,
            };
            let position = super::rebuild::rebuild(&tx, &source, &tables, until, held_rows)?;
            set_checkpoint(&tx, position)?;
            tx.commit().map_err(sql_err)?;
            // This process's projectors now stand where the rebuild left the views, lower too
            // (`--until`); under the writer's lock, so no append publishes in between.
            for f in inner.followers() {
                f.send_replace(position);
            }
            inner.views_paused.store(false, std::sync::atomic::Ordering::SeqCst); // fresh views
            Ok(position)
        })
        .await
    }

    /// Builds the views as of `until` into a new SQLite file `into` (which must not exist),
    /// leaving the live views alone: time travel for inspection with `sqlite3`.
    pub async fn snapshot_views(
        &self,
        tables: Vec<&'static str>,
        until: i64,
        into: PathBuf,
        ddl: &'static str,
    ) -> Result<i64> {
        let source = self.path().to_path_buf();
        crate::store::sqlite::blocking(move || {
            if into.exists() {
                return Err(Error::Invalid(format!(
                    "{} exists; choose another file or remove it first",
                    into.display()
                )));
            }
            let mut conn = Connection::open(&into)
                .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", into.display())))?;
            conn.execute_batch(CHECKPOINTS_DDL).map_err(sql_err)?;
            conn.execute_batch(ddl).map_err(sql_err)?;
            // The audit log is a view of the log (decision 0012); the snapshot, which holds no
            // log, gets its rows as of the position in a table of the same columns.
            let source_name = source.to_str().ok_or_else(|| {
                Error::Invalid(format!("the database path {} is not UTF-8", source.display()))
            })?;
            conn.execute("ATTACH DATABASE ?1 AS source", [source_name]).map_err(sql_err)?;
            let tx = conn.transaction().map_err(sql_err)?;
            let position = super::rebuild::rebuild(&tx, &source, &tables, until, crate::store::REBUILD_HELD_ROWS)?;
            tx.execute(&format!("INSERT INTO main.audit_log ({AUDIT_COLUMNS}) SELECT {AUDIT_COLUMNS} FROM source.audit_log WHERE position <= ?1"), [position])
                .map_err(sql_err)?;
            set_checkpoint(&tx, position)?;
            tx.commit().map_err(sql_err)?;
            Ok(position)
        })
        .await
    }

    /// The last position recorded at or before `at`.
    pub async fn position_at(&self, at: chrono::DateTime<chrono::Utc>) -> Result<i64> {
        let at = sqlite_time(&at);
        self.with_reader(move |conn| {
            conn.query_row(
                "SELECT coalesce(max(global_position), 0) FROM events WHERE recorded_at <= ?1",
                params![at],
                |r| r.get(0),
            )
            .map_err(sql_err)
        })
        .await
    }
}

/// Runs `f` (a views transaction) with `synchronous = NORMAL`: in WAL mode its commit then does
/// not wait for an fsync. The views are derived from the log: a power loss may drop the last
/// few views transactions, whole (rows and checkpoint together), and the projector applies
/// those events again; the next append's fsync makes them durable anyway. The connection is
/// the log's writer too, so `FULL` comes back before anything else uses it.
fn without_fsync<T>(conn: &mut Connection, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("PRAGMA synchronous = NORMAL").map_err(sql_err)?;
    let out = f(conn);
    // SQLite refuses to change `synchronous` inside a transaction: end any that `f` left open
    // (its own rollback failed) before restoring, and say so if even that fails.
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.execute_batch("PRAGMA synchronous = FULL").map_err(|e| {
        Error::Backend(format!("cannot restore synchronous = FULL on the writer (appends would not be durable): {e}"))
    })?;
    out
}

const CHECKPOINTS_DDL: &str = "CREATE TABLE checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL, \
                               updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));";

impl SqliteStore {
    /// Reads the `coordination_metrics` view (`sql` selects its columns in order).
    pub(crate) async fn read_metrics(&self, sql: String) -> Result<crate::metrics::Metrics> {
        self.with_reader(move |conn| {
            conn.query_row(&sql, [], |r| crate::metrics::Metrics::from_columns(|i| r.get(i), |i| r.get(i)))
                .map_err(sql_err)
        })
        .await
    }
}
