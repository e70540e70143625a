//! Rebuilding the views on Postgres: the log is replayed into fresh tables in a scratch schema,
//! which are then swapped in, in the same transaction, so readers see the old views until the
//! commit and the new ones after, never a half-built one.
//!
//! Four workers run at once: a reader streams the log over a connection of its own, a thread
//! decodes the events and projects them to row changes, another folds those ([`Replay`]: each
//! row once, as an insert) and encodes the rows in `COPY`'s binary format, and the
//! transaction's connection `COPY`s them in.
//! The fresh tables get their indexes after the load (an index built over sorted input costs a
//! fraction of one maintained row by row). Changes of rows already written (a run still going
//! when the replay handed its row out), and everything held beyond `held_rows`, need the
//! unique indexes: these are built before the first such change is applied as an ordinary
//! upsert or update.

use ltmc_core::RecordedEvent;
use ltmc_projections::{Change, Replay, Rows};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_postgres::types::{IsNull, ToSql, Type, private::BytesMut};
use tokio_postgres::{Row, Transaction};

use super::views::{ColumnTypes, PgParam, Prepared, execute_plan, plan, set_checkpoint};
use super::{db_err, row_to_event};
use crate::store::views_sql::Param;
use crate::store::{Error, Result};

/// The event columns a replay reads, in `row_to_event`'s order: the hash is left out (no
/// projection reads it; it is a tenth of a row), so replayed events carry an empty one. The
/// metadata is parsed whole, as the live projector does: reading its fields with `->>` would
/// accept values (numbers, a non-object) that the projector refuses as corrupt.
const REPLAY_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, event_type, \
                              schema_version, data, metadata, recorded_at, ''::text";

/// Rows encoded per `COPY` handed to the writer.
const COPY_CHUNK: usize = 20_000;

/// Events read per query.
const READ_BATCH: i64 = 10_000;

/// An index of a view table, to rebuild on the fresh one.
struct Index {
    name: String,
    table: String,
    unique: bool,
    primary: bool,
    /// The definition from `USING` on (method, columns, predicate): independent of the table.
    using: String,
}

/// What the projecting thread hands the writer.
enum Output {
    /// `COPY … FROM STDIN (FORMAT binary)` statements with their data.
    Copy(Vec<(String, Vec<u8>)>),
    /// Changes that may meet rows already written: upserts, updates, deletes.
    Changes(Vec<Change>),
}

/// Replays the log up to `until` into fresh copies of `tables` (those of the schema `target`,
/// first on `tx`'s search path) and swaps them in; moves `target`'s checkpoint. `reader` reads
/// the log (`events` on its search path). Returns the last position replayed.
pub(super) async fn rebuild(
    tx: &Transaction<'_>,
    reader: &tokio_postgres::Client,
    target: &str,
    tables: &[&'static str],
    until: i64,
    held_rows: usize,
    types: &ColumnTypes,
) -> Result<i64> {
    let stage = format!("ltmc_rebuild_{}", uuid::Uuid::now_v7().simple());
    // Read while the names still resolve to the live tables (a view's text names them).
    let views = dependent_views(tx, target, tables).await?;
    let indexes = stage_tables(tx, target, &stage, tables).await?;
    tx.batch_execute(&format!("SET LOCAL search_path TO \"{stage}\", \"{target}\"")).await.map_err(db_err)?;
    let copy_types = Arc::new(copy_types(tx, tables).await?);

    let (rows_tx, rows_rx) = mpsc::channel::<Vec<Row>>(2);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(4);
    let reading = async move {
        // Batches by position range, not LIMIT: the planner then always walks the primary key
        // (with a LIMIT and a wide range it may sort the rest of the table for every batch).
        let read = reader
            .prepare(&format!(
                "SELECT {REPLAY_COLUMNS} FROM events WHERE global_position > $1 AND global_position <= $2 \
                 ORDER BY global_position"
            ))
            .await
            .map_err(db_err)?;
        let width = READ_BATCH.min(held_rows.max(1) as i64); // small windows read small batches
        let mut after = 0i64;
        while after < until {
            let to = until.min(after.saturating_add(width));
            let rows = reader.query(&read, &[&after, &to]).await.map_err(db_err)?;
            after = to;
            if !rows.is_empty() && rows_tx.send(rows).await.is_err() {
                return Ok(()); // the projecting thread stopped: its error says why
            }
        }
        Ok(())
    };
    let (changes_tx, changes_rx) = mpsc::channel::<(i64, Vec<Change>)>(2);
    let decoding = tokio::task::spawn_blocking(move || decode(rows_rx, changes_tx));
    let projecting = tokio::task::spawn_blocking(move || fold(changes_rx, out_tx, held_rows, &copy_types));
    let projecting = async {
        let failed = |e: tokio::task::JoinError| Error::Backend(format!("projecting the log: {e}"));
        let (decoded, projected) = futures::future::join(decoding, projecting).await;
        decoded.map_err(failed)??;
        projected.map_err(failed)?
    };
    let writing = async {
        let (mut prepared, mut unique_built) = (Prepared::default(), false);
        let (mut busy, started) = (std::time::Duration::ZERO, std::time::Instant::now());
        while let Some(out) = out_rx.recv().await {
            let t = std::time::Instant::now();
            match out {
                Output::Copy(copies) => {
                    for (sql, data) in copies {
                        copy_in(tx, &sql, data).await?;
                    }
                }
                Output::Changes(changes) => {
                    if !unique_built {
                        build_indexes(tx, &stage, &indexes, true).await?;
                        unique_built = true;
                    }
                    let plan = plan(&changes, types)?;
                    let statements = prepared.all(tx, &plan).await?;
                    execute_plan(tx, &statements, &plan).await?;
                }
            }
            busy += t.elapsed();
        }
        tracing::debug!(
            writing_ms = busy.as_millis() as u64,
            loading_ms = started.elapsed().as_millis() as u64,
            "rebuild: rows loaded"
        );
        Ok(unique_built)
    };
    let ((), position, unique_built) = futures::future::try_join3(reading, projecting, writing).await?;
    let t = std::time::Instant::now();
    if !unique_built {
        build_indexes(tx, &stage, &indexes, true).await?;
    }
    build_indexes(tx, &stage, &indexes, false).await?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "rebuild: indexes built");
    let t = std::time::Instant::now();
    swap(tx, target, &stage, tables, &views).await?;
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "rebuild: tables swapped in");
    tx.batch_execute(&format!("SET LOCAL search_path TO \"{target}\"")).await.map_err(db_err)?;
    set_checkpoint(tx, position).await?;
    Ok(position)
}

/// Creates schema `stage` with an empty copy of each table (columns, defaults, constraints; no
/// indexes) and returns the tables' indexes.
async fn stage_tables(tx: &Transaction<'_>, target: &str, stage: &str, tables: &[&str]) -> Result<Vec<Index>> {
    let mut ddl = format!("CREATE SCHEMA \"{stage}\";");
    for t in tables {
        ddl.push_str(&format!(
            "CREATE TABLE \"{stage}\".\"{t}\" (LIKE \"{target}\".\"{t}\" INCLUDING DEFAULTS INCLUDING CONSTRAINTS \
             INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE);"
        ));
    }
    tx.batch_execute(&ddl).await.map_err(db_err)?;
    let rows = tx
        .query(
            "SELECT i.relname::text, t.relname::text, x.indisunique, x.indisprimary, pg_get_indexdef(x.indexrelid) \
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
             WHERE t.relnamespace = $1::text::regnamespace AND t.relname = ANY($2) ORDER BY 2, 1",
            &[&target, &tables],
        )
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            let def: String = r.get(4);
            let using = def.split_once(" USING ").map(|(_, u)| u.to_owned()).ok_or_else(|| {
                Error::Backend(format!("cannot read the definition of index {}: {def}", r.get::<_, String>(0)))
            })?;
            Ok(Index { name: r.get(0), table: r.get(1), unique: r.get(2), primary: r.get(3), using })
        })
        .collect()
}

/// Builds the unique indexes (`unique`) or the others on the fresh tables, under their final
/// names (the schema is new: no clash).
async fn build_indexes(tx: &Transaction<'_>, stage: &str, indexes: &[Index], unique: bool) -> Result<()> {
    for i in indexes.iter().filter(|i| i.unique == unique) {
        let kind = if i.unique { "UNIQUE INDEX" } else { "INDEX" };
        tx.batch_execute(&format!("CREATE {kind} \"{}\" ON \"{stage}\".\"{}\" USING {}", i.name, i.table, i.using))
            .await
            .map_err(db_err)?;
        if i.primary {
            tx.batch_execute(&format!(
                "ALTER TABLE \"{stage}\".\"{}\" ADD CONSTRAINT \"{}\" PRIMARY KEY USING INDEX \"{}\"",
                i.table, i.name, i.name
            ))
            .await
            .map_err(db_err)?;
        }
    }
    Ok(())
}

/// The views reading `tables` directly, with their definitions: (name, definition).
async fn dependent_views(tx: &Transaction<'_>, target: &str, tables: &[&str]) -> Result<Vec<(String, String)>> {
    // With only pg_catalog on the path, names and definitions come back schema-qualified, so
    // they mean the same whatever the path is when they are replayed.
    tx.batch_execute("SET LOCAL search_path TO pg_catalog").await.map_err(db_err)?;
    let views = tx
        .query(
            "SELECT DISTINCT v.oid::regclass::text, v.relkind::text, pg_get_viewdef(v.oid) \
             FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class \
             JOIN pg_class t ON t.oid = d.refobjid \
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
             AND t.relnamespace = $1::text::regnamespace AND t.relname = ANY($2) AND v.oid <> t.oid",
            &[&target, &tables],
        )
        .await
        .map_err(db_err)?;
    tx.batch_execute(&format!("SET LOCAL search_path TO \"{target}\"")).await.map_err(db_err)?;
    if let Some(m) = views.iter().find(|v| v.get::<_, String>(1) != "v") {
        return Err(Error::Invalid(format!(
            "{} (not a plain view) reads the view tables; drop it before rebuilding, and create it again after",
            m.get::<_, String>(0)
        )));
    }
    Ok(views.iter().map(|v| (v.get(0), v.get::<_, String>(2).trim().trim_end_matches(';').to_owned())).collect())
}

/// Puts the fresh tables in place of the old ones: the old move out to a scratch schema (their
/// indexes with them), the fresh move in, every view reading the tables is defined again over
/// the fresh ones (a view holds its tables by identity, not by name), and the old are dropped.
async fn swap(
    tx: &Transaction<'_>,
    target: &str,
    stage: &str,
    tables: &[&str],
    views: &[(String, String)],
) -> Result<()> {
    let old = format!("{stage}_old");
    // Views first, then tables: a reader of a view locks the view, then its tables; taking them
    // the other way round could deadlock with it.
    let mut locked: Vec<String> = views.iter().map(|(name, _)| name.clone()).collect();
    locked.extend(tables.iter().map(|t| format!("\"{target}\".\"{t}\"")));
    let mut ddl = format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE; CREATE SCHEMA \"{old}\";", locked.join(", "));
    for t in tables {
        ddl.push_str(&format!(
            "ALTER TABLE \"{target}\".\"{t}\" SET SCHEMA \"{old}\"; ALTER TABLE \"{stage}\".\"{t}\" SET SCHEMA \"{target}\";"
        ));
    }
    ddl.push_str(&format!("SET LOCAL search_path TO \"{target}\";"));
    for (name, definition) in views {
        ddl.push_str(&format!("CREATE OR REPLACE VIEW {name} AS {definition};"));
    }
    for t in tables {
        ddl.push_str(&format!("DROP TABLE \"{old}\".\"{t}\";"));
    }
    ddl.push_str(&format!("DROP SCHEMA \"{old}\"; DROP SCHEMA \"{stage}\";"));
    tx.batch_execute(&ddl).await.map_err(db_err)
}

/// Column name -> type of each table (as `COPY`'s binary format needs them).
async fn copy_types(tx: &Transaction<'_>, tables: &[&'static str]) -> Result<CopyTypes> {
    let mut out = HashMap::new();
    for &t in tables {
        let stmt = tx.prepare(&format!("SELECT * FROM \"{t}\" LIMIT 0")).await.map_err(db_err)?;
        let cols = stmt.columns().iter().map(|c| (c.name().to_owned(), c.type_().clone())).collect();
        out.insert(t, cols);
    }
    Ok(out)
}

async fn copy_in(tx: &Transaction<'_>, sql: &str, data: Vec<u8>) -> Result<()> {
    use futures::SinkExt;
    let sink = tx.copy_in::<_, std::io::Cursor<Vec<u8>>>(sql).await.map_err(db_err)?;
    futures::pin_mut!(sink);
    sink.send(std::io::Cursor::new(data)).await.map_err(db_err)?;
    sink.finish().await.map_err(db_err)?;
    Ok(())
}

type CopyTypes = HashMap<&'static str, HashMap<String, Type>>;

/// The decoding thread: stored rows to events, and events to row changes (with the position
/// of the last).
fn decode(mut rows: mpsc::Receiver<Vec<Row>>, changes: mpsc::Sender<(i64, Vec<Change>)>) -> Result<()> {
    while let Some(batch) = rows.blocking_recv() {
        let events = batch.iter().map(row_to_event).collect::<Result<Vec<RecordedEvent>>>()?;
        drop(batch);
        let last = events.last().map_or(0, |e| e.global_position);
        if changes.blocking_send((last, ltmc_projections::project(&events))).is_err() {
            return Ok(()); // the folding thread stopped: its error says why
        }
    }
    Ok(())
}

/// The folding thread: folds each batch of changes, and hands the writer the inserts of
/// append-only tables at once and the rest when the fold is full or the log ends. Returns the
/// last position it saw.
fn fold(
    mut changes: mpsc::Receiver<(i64, Vec<Change>)>,
    out: mpsc::Sender<Output>,
    held_rows: usize,
    types: &CopyTypes,
) -> Result<i64> {
    let mut replay = Replay::default();
    let mut position = 0;
    let send = |o: Output| out.blocking_send(o).map_err(|_| Error::Backend("the rebuild's writer stopped".into()));
    let hand_over = |rows: Rows| -> Result<()> {
        // In chunks, so the writer loads one while the next is encoded (the last take of a
        // rebuild hands over every held row at once).
        for chunk in rows.inserts.chunks(COPY_CHUNK) {
            send(Output::Copy(encode(chunk, types)?))?;
        }
        if !rows.changes.is_empty() {
            send(Output::Changes(rows.changes))?;
        }
        Ok(())
    };
    while let Some((last, batch)) = changes.blocking_recv() {
        position = last;
        hand_over(replay.push_within(batch, held_rows))?;
    }
    hand_over(replay.take())?;
    Ok(position)
}

/// The inserts as `COPY … (FORMAT binary)` statements, one per table and column list.
fn encode(inserts: &[Change], types: &CopyTypes) -> Result<Vec<(String, Vec<u8>)>> {
    struct Group {
        table: &'static str,
        cols: Vec<&'static str>,
        /// The columns' types, in `cols`' order (looked up once per group, not per value).
        types: Vec<Type>,
        buf: BytesMut,
    }
    let mut groups: Vec<Group> = Vec::new();
    for change in inserts {
        let Change::Upsert { table, cols, .. } = change else {
            return Err(Error::Backend("a rebuild insert is not an upsert".into()));
        };
        let same = |g: &Group| {
            g.table == *table && g.cols.len() == cols.len() && g.cols.iter().zip(cols).all(|(n, (c, _))| n == c)
        };
        let i = match groups.iter().position(same) {
            Some(i) => i,
            None => {
                let table_types = types.get(table).ok_or_else(|| Error::Backend(format!("no view table {table}")))?;
                let types = cols
                    .iter()
                    .map(|(c, _)| {
                        table_types.get(*c).cloned().ok_or_else(|| {
                            Error::Backend(format!("view column {table}.{c} is missing; are the migrations applied?"))
                        })
                    })
                    .collect::<Result<Vec<Type>>>()?;
                let mut buf = BytesMut::with_capacity(1 << 16);
                buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
                buf.extend_from_slice(&[0; 8]); // flags, header extension length
                groups.push(Group { table, cols: cols.iter().map(|(c, _)| *c).collect(), types, buf });
                groups.len() - 1
            }
        };
        let Group { types, buf, .. } = &mut groups[i];
        buf.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for ((c, v), ty) in cols.iter().zip(types.iter()) {
            let at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            let written = PgParam(Param::Val(v))
                .to_sql(ty, buf)
                .map_err(|e| Error::Backend(format!("encoding {table}.{c}: {e}")))?;
            let len = match written {
                IsNull::Yes => -1i32,
                IsNull::No => (buf.len() - at - 4) as i32,
            };
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(groups
        .into_iter()
        .map(|Group { table, cols, mut buf, .. }| {
            buf.extend_from_slice(&(-1i16).to_be_bytes());
            let cols: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
            (format!("COPY \"{table}\" ({}) FROM STDIN (FORMAT binary)", cols.join(", ")), Vec::from(buf))
        })
        .collect())
}
