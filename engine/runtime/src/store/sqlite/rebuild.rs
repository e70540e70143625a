//! Rebuilding the views on SQLite, inside one write transaction (readers keep seeing the old
//! views until it commits): the tables are emptied and the log is replayed into them.
//!
//! A thread with a read connection of its own reads, decodes and projects the log, a second
//! folds the changes ([`Replay`]: each row once, as an insert), while the writer inserts what
//! they handed over before. Changes of rows already written, and everything held beyond
//! `held_rows`, are applied as ordinary upserts and updates. The append-only tables (`handoffs`,
//! `memory_history`: a row per event, only ever inserted) load without their non-unique
//! indexes, which are built again, sorted, once the rows are in; the other tables keep theirs,
//! as their changes look rows up (measured in docs/benchmarks.md).

use ltmc_projections::{Change, Replay, Rows};
use rusqlite::{Connection, OpenFlags, params};
use std::path::Path;
use std::sync::mpsc;

use super::views::{Bound, execute_all};
use super::{collect, row_to_event, sql_err};
use crate::store::views_sql::Param;
use crate::store::{Error, Result};

/// The event columns a replay reads, in `row_to_event`'s order: the hash is left out (no view
/// shows it, and it is a long string per event).
const REPLAY_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, event_type, \
                              schema_version, data, metadata, recorded_at, ''";

/// Events read per query.
const READ_BATCH: i64 = 10_000;

/// Replays the events of the SQLite file `source` up to `until` into `tables` of `tx` (a write
/// transaction), emptied first, holding at most `held_rows` changing rows in memory. Returns the last position replayed.
pub(super) fn rebuild(tx: &Connection, source: &Path, tables: &[&str], until: i64, held_rows: usize) -> Result<i64> {
    for t in tables {
        tx.execute(&format!("DELETE FROM \"{t}\""), []).map_err(sql_err)?;
    }
    let deferred = defer_indexes(tx, tables)?;
    let (changes_tx, changes_rx) = mpsc::sync_channel::<Projected>(2);
    let (rows_tx, rows_rx) = mpsc::sync_channel::<Rows>(2);
    let position = std::thread::scope(|scope| {
        let reading = scope.spawn(move || read(source, until, held_rows, changes_tx));
        let folding = scope.spawn(move || fold(changes_rx, held_rows, rows_tx));
        let written = rows_rx.iter().try_for_each(|rows| {
            insert(tx, &rows.inserts)?;
            execute_all(tx, &rows.changes)
        });
        // On a write error the channels close (their receivers are dropped) and the folding and
        // reading threads stop.
        drop(rows_rx);
        let folded = folding.join();
        let read = reading.join().map_err(|_| Error::Backend("the rebuild's reader panicked".into()))?;
        folded.map_err(|_| Error::Backend("the rebuild's fold panicked".into()))?;
        written?;
        read
    })?;
    build_indexes(tx, &deferred)?;
    Ok(position)
}

/// Drops the non-unique indexes of the append-only tables among `tables` and returns their
/// definitions, to be built again once the rows are in: a rebuild only inserts into those
/// tables, and sorting once is cheaper than keeping the indexes through a million inserts. In
/// the rebuild's transaction, so readers never see the views without them.
fn defer_indexes(tx: &Connection, tables: &[&str]) -> Result<Vec<(String, String)>> {
    let append_only = ltmc_projections::append_only_tables();
    // Indexes made by CREATE INDEX (origin 'c'), not by a UNIQUE or PRIMARY KEY constraint.
    let mut stmt = tx
        .prepare(
            "SELECT l.name, m.sql FROM pragma_index_list(?1) AS l JOIN sqlite_master AS m ON m.name = l.name \
             WHERE l.\"unique\" = 0 AND l.origin = 'c' AND m.sql IS NOT NULL",
        )
        .map_err(sql_err)?;
    let mut deferred = Vec::new();
    for table in tables.iter().filter(|t| append_only.contains(t)) {
        let rows =
            stmt.query_map([table], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(sql_err)?;
        for row in rows {
            deferred.push(row.map_err(sql_err)?);
        }
    }
    for (name, _) in &deferred {
        tx.execute_batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\""))).map_err(sql_err)?;
    }
    Ok(deferred)
}

/// Builds the indexes [`defer_indexes`] dropped, letting SQLite's sorter use helper threads (the
/// reading thread is done by then).
fn build_indexes(tx: &Connection, deferred: &[(String, String)]) -> Result<()> {
    if deferred.is_empty() {
        return Ok(());
    }
    let helpers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    tx.execute_batch(&format!("PRAGMA threads = {helpers}")).map_err(sql_err)?;
    let built = deferred.iter().try_for_each(|(_, sql)| tx.execute_batch(sql).map_err(sql_err));
    // Reset on the writer's connection either way; a failed build's own error comes first.
    let reset = tx.execute_batch("PRAGMA threads = 0").map_err(sql_err);
    built.and(reset)
}

/// What the reading thread hands the folding thread.
enum Projected {
    /// The changes of the next events.
    Changes(Vec<Change>),
    /// The whole log was read: what the fold holds may be written.
    End,
}

/// The reading thread: reads, decodes and projects the log, and hands the changes to the
/// folding thread; returns the last position read. Three threads (this one, the fold and the
/// writer, which holds SQLite's one write and only writes) keep both cores busy: reading and
/// decoding is most of a rebuild's work (measured in docs/benchmarks.md).
fn read(source: &Path, until: i64, held_rows: usize, out: mpsc::SyncSender<Projected>) -> Result<i64> {
    let conn = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| Error::Unavailable(format!("cannot read {}: {e}", source.display())))?;
    super::plan_once(&conn)?;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {REPLAY_COLUMNS} FROM events WHERE global_position > ?1 AND global_position <= ?2 \
             ORDER BY global_position LIMIT ?3"
        ))
        .map_err(sql_err)?;
    let batch = READ_BATCH.min(held_rows.max(1) as i64); // small windows read small batches
    let mut position = 0i64;
    loop {
        let events = collect(stmt.query_map(params![position, until, batch], row_to_event).map_err(sql_err)?)?;
        let Some(last) = events.last() else { break };
        position = last.global_position;
        if out.send(Projected::Changes(ltmc_projections::project(&events))).is_err() {
            return Ok(position); // the writer stopped: its error says why
        }
    }
    // Sent only once the whole log was read: a failed read leaves the rest unwritten.
    let _ = out.send(Projected::End);
    Ok(position)
}

/// The folding thread: folds the changes ([`Replay`]: each row once, as an insert) and hands
/// the writer the rows to write. What it still holds is handed over only at [`Projected::End`].
fn fold(changes: mpsc::Receiver<Projected>, held_rows: usize, out: mpsc::SyncSender<Rows>) {
    let mut replay = Replay::default();
    for projected in changes {
        let rows = match projected {
            Projected::Changes(changes) => replay.push_within(changes, held_rows),
            Projected::End => replay.take(),
        };
        if out.send(rows).is_err() {
            return; // the writer stopped: its error says why
        }
    }
}

/// Plain inserts, through one cached statement per table and column list.
fn insert(tx: &Connection, inserts: &[Change]) -> Result<()> {
    let mut statements: Vec<(&'static str, Vec<&'static str>, String)> = Vec::new();
    for change in inserts {
        let Change::Upsert { table, cols, .. } = change else {
            return Err(Error::Backend("a rebuild insert is not an upsert".into()));
        };
        let same = |(t, names, _): &&(&'static str, Vec<&'static str>, String)| {
            t == table && names.len() == cols.len() && names.iter().zip(cols).all(|(n, (c, _))| n == c)
        };
        let sql = match statements.iter().find(same) {
            Some((_, _, sql)) => sql,
            None => {
                let names: Vec<&'static str> = cols.iter().map(|(c, _)| *c).collect();
                let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
                let sql = format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), marks.join(", "));
                statements.push((table, names, sql));
                &statements[statements.len() - 1].2
            }
        };
        let mut stmt = tx.prepare_cached(sql).map_err(sql_err)?;
        stmt.execute(rusqlite::params_from_iter(cols.iter().map(|(_, v)| Bound(Param::Val(v))))).map_err(sql_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_append_only_tables_non_unique_indexes_are_deferred() -> Result<()> {
        let conn = Connection::open_in_memory().map_err(sql_err)?;
        conn.execute_batch(
            "CREATE TABLE handoffs (position INTEGER PRIMARY KEY, at TEXT, run_id TEXT, event_id TEXT UNIQUE);
             CREATE INDEX handoffs_run ON handoffs (run_id);
             CREATE UNIQUE INDEX \"odd \"\"name\" ON handoffs (at, run_id);
             CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT);
             CREATE INDEX runs_status ON runs (status);",
        )
        .map_err(sql_err)?;
        let deferred = defer_indexes(&conn, &["handoffs", "runs"])?;
        let names: Vec<&str> = deferred.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["handoffs_run"]);
        let left = |table: &str| -> Result<i64> {
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1", [table], |r| {
                r.get(0)
            })
            .map_err(sql_err)
        };
        assert_eq!(left("handoffs")?, 2, "the unique indexes stay");
        assert_eq!(left("runs")?, 2, "a changing table keeps its indexes");
        build_indexes(&conn, &deferred)?;
        assert_eq!(left("handoffs")?, 3, "built again");
        Ok(())
    }

    #[test]
    fn a_failed_index_build_says_why_and_resets_the_sorter_threads() -> Result<()> {
        let conn = Connection::open_in_memory().map_err(sql_err)?;
        conn.execute_batch("CREATE TABLE t (a INTEGER)").map_err(sql_err)?;
        let deferred = vec![("i".to_owned(), "CREATE INDEX i ON t (no_such_column)".to_owned())];
        let err = build_indexes(&conn, &deferred).expect_err("the column does not exist");
        assert!(err.to_string().contains("no_such_column"), "{err}");
        let threads: i64 = conn.query_row("PRAGMA threads", [], |r| r.get(0)).map_err(sql_err)?;
        assert_eq!(threads, 0);
        Ok(())
    }
}
