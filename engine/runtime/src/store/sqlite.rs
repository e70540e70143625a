//! Embedded SQLite backend: one file, WAL, `synchronous=FULL` (an acknowledged append survives
//! power loss). SQLite allows one writer at a time, which also makes the global order gap-safe.

mod lease;
mod rebuild;
mod views;

pub use lease::SqliteLease;

use chrono::{DateTime, SecondsFormat, Utc};
use ltmc_core::audit::Head;
use ltmc_core::event::to_micros;
use ltmc_core::{Metadata, NewEvent, RecordedEvent};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{broadcast, watch};

use super::{Appended, Error, EventStore, ExpectedVersion, Result, StreamInfo, chain_hashes, check_batch};

mod embedded {
    refinery::embed_migrations!("../../migrations/sqlite");
}

const EVENT_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, event_type, \
                             schema_version, data, metadata, recorded_at, hash";

/// The SQLite event store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Appends waiting for the writer (see `commit_group`).
    pending: Mutex<Vec<Pending>>,
    /// Short work waiting for the writer (projector batches, `with_writer_queued`): the next
    /// drain runs it after its group commit.
    jobs: Mutex<Vec<Job>>,
    /// A drain is scheduled that has not taken the queues yet (see `schedule_drain`).
    drain_scheduled: AtomicBool,
    /// The appends leave the views to the projector: applying them failed in an append's
    /// transaction, and no projector batch has been applied since.
    views_paused: AtomicBool,
    tx: broadcast::Sender<i64>,
    /// The positions published by this process's running projectors ([`SqliteStore::follow_views`]):
    /// while one lives, each group commit brings the views up to its own last event in its
    /// transaction and publishes the new checkpoint to them.
    followers: Mutex<Vec<Weak<watch::Sender<i64>>>>,
}

impl Inner {
    /// This process's running projectors (see [`SqliteStore::follow_views`]); none if the list
    /// cannot be read (they then catch up on their own).
    fn followers(&self) -> Vec<Arc<watch::Sender<i64>>> {
        self.followers.lock().map_or_else(|_| Vec::new(), |f| f.iter().filter_map(Weak::upgrade).collect())
    }
}

fn sql_err(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            Error::Unavailable(format!("the SQLite file is locked by another writer: {e}"))
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::CannotOpen => {
            Error::Unavailable(e.to_string())
        }
        // A damaged file, or one that is not a database: the store cannot be used (exit 3).
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) =>
        {
            Error::Unavailable(format!(
                "the SQLite file is damaged or not a database ({e}); restore it from a backup or point \
                 LTMC_DATABASE_URL at another file"
            ))
        }
        _ => Error::Backend(e.to_string()),
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| Error::Unavailable(format!("cannot open SQLite file {}: {e}", path.display())))?;
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(|e| match sql_err(e) {
        Error::Unavailable(m) => Error::Unavailable(format!("{}: {m}", path.display())),
        other => other,
    })?;
    // The projector's statements (one per shape of row change) stay prepared beside the log's.
    conn.set_prepared_statement_cache_capacity(64);
    plan_once(&conn)?;
    Ok(conn)
}

/// Has `conn` plan each statement once, whatever values are bound (SQLite's query planner
/// stability guarantee). Otherwise SQLite (3.54) marks a statement to be planned again when the
/// value bound to a `LIMIT ?` or an `= ?` changes, and rusqlite clears the bindings of every
/// statement it returns to its cache, which counts as a change: the log's hottest statements
/// were compiled again on every use (measured in docs/benchmarks.md). Our statements have one
/// good plan whatever their values.
fn plan_once(conn: &Connection) -> Result<()> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(sql_err)?;
    Ok(())
}

/// Opens (creating) `<db>.<name>.lock`, the file OS locks are taken on.
fn lock_file(db: &Path, name: &str) -> Result<(std::fs::File, PathBuf)> {
    let path = PathBuf::from(format!("{}.{name}.lock", db.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    Ok((file, path))
}

/// Runs blocking SQLite work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Backend(format!("store task failed: {e}")))?
}

impl SqliteStore {
    /// Opens (creating the file and its folder if needed) and migrates the store at `path`.
    pub async fn open(path: &str) -> Result<SqliteStore> {
        if path.is_empty() {
            return Err(Error::Invalid("sqlite:// URL has no path; use sqlite://.ltmc/ltmc.db".into()));
        }
        let path = PathBuf::from(path);
        let p = path.clone();
        let (writer, reader) = blocking(move || {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
            }
            // Processes opening a fresh file at once would both create the tables: one migrates
            // at a time (an OS lock, released even if the holder dies); the others then find
            // nothing to do.
            let (lock, lock_path) = lock_file(&p, "migrate")?;
            lock.lock().map_err(|e| Error::Unavailable(format!("cannot lock {}: {e}", lock_path.display())))?;
            let mut writer = open_connection(&p)?;
            let migrated = embedded::migrations::runner().run(&mut writer).map_err(|e| Error::Migration(e.to_string()));
            drop(lock);
            migrated?;
            let reader = open_connection(&p)?;
            Ok((writer, reader))
        })
        .await?;
        let (tx, _) = broadcast::channel(1024);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                pending: Mutex::new(Vec::new()),
                jobs: Mutex::new(Vec::new()),
                drain_scheduled: AtomicBool::new(false),
                views_paused: AtomicBool::new(false),
                tx,
                followers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || {
            let conn = inner.reader.lock().map_err(|_| Error::Backend("reader lock poisoned".into()))?;
            f(&conn)
        })
        .await
    }

    async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut conn = inner.writer.lock().map_err(|_| Error::Backend("writer lock poisoned".into()))?;
            f(&mut conn)
        })
        .await
    }

    /// Like [`SqliteStore::with_writer`] for short work that must not wait behind a stream of
    /// appends: it is queued beside them and the next drain runs it right after its group
    /// commit (see [`drain`]). A projector batch waits for one commit at most instead of
    /// racing every new appender for the lock.
    async fn with_writer_queued<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        inner.jobs.lock().map_err(|_| Error::Backend("writer queue poisoned".into()))?.push(job);
        schedule_drain(&inner);
        answer.await.map_err(|_| Error::Backend("the write was dropped".into()))?
    }

    /// Has this process's appends keep the views current while `position` (a running
    /// projector's) lives: each group commit also applies the events after the views'
    /// checkpoint, up to its own last one, in its transaction, and publishes the new checkpoint
    /// to `position` once committed. So the views include an append as soon as it is
    /// acknowledged, and no hop through a busy runtime delays them. Views that are far behind
    /// (more than [`crate::projector::BATCH`] events) are left to the projector's catch-up.
    pub fn follow_views(&self, position: &Arc<watch::Sender<i64>>) {
        if let Ok(mut followers) = self.inner.followers.lock() {
            followers.retain(|f| f.strong_count() > 0);
            followers.push(Arc::downgrade(position));
        }
    }

    /// Stores a checkpoint.
    pub async fn save_checkpoint(&self, name: &str, position: i64) -> Result<()> {
        let name = name.to_owned();
        self.with_writer(move |c| write_checkpoint(c, &name, position)).await
    }
}

/// Reads an event row. A row whose content cannot be read (JSON that is not JSON, metadata
/// that is not an object, a bad time or id) becomes the [`RecordedEvent::unreadable`] stand-in,
/// so one damaged row does not stop a reader of the whole log.
fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<std::result::Result<RecordedEvent, Error>> {
    let position: i64 = r.get(0)?;
    Ok(Ok(read_row(r, position).unwrap_or_else(|reason| {
        // Stream and version as far as they can be read: text and integers of any storage class.
        let stream = match r.get_ref(1) {
            Ok(rusqlite::types::ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
            Ok(rusqlite::types::ValueRef::Integer(i)) => i.to_string(),
            _ => String::new(),
        };
        let version = r.get::<_, i64>(2).unwrap_or_default();
        RecordedEvent::unreadable(position, stream, version, reason)
    })))
}

fn read_row(r: &rusqlite::Row<'_>, position: i64) -> std::result::Result<RecordedEvent, String> {
    let corrupt = |what: &str, e: String| format!("{what}: {e}");
    // The columns only parsed are borrowed from SQLite's row, not copied into strings first.
    let text = |i: usize, what: &str| {
        r.get_ref(i).map_err(|e| corrupt(what, e.to_string()))?.as_str().map_err(|e| corrupt(what, e.to_string()))
    };
    Ok(RecordedEvent {
        global_position: position,
        stream_id: r.get(1).map_err(|e| corrupt("stream_id", e.to_string()))?,
        stream_version: r.get(2).map_err(|e| corrupt("stream_version", e.to_string()))?,
        event_id: text(3, "event_id")?.parse().map_err(|e: uuid::Error| corrupt("event_id", e.to_string()))?,
        event_type: r.get(4).map_err(|e| corrupt("event_type", e.to_string()))?,
        schema_version: r.get(5).map_err(|e| corrupt("schema_version", e.to_string()))?,
        data: serde_json::from_str(text(6, "data")?).map_err(|e| corrupt("data", e.to_string()))?,
        metadata: serde_json::from_str::<Metadata>(text(7, "metadata")?)
            .map_err(|e| corrupt("metadata", e.to_string()))?,
        recorded_at: DateTime::parse_from_rfc3339(text(8, "recorded_at")?)
            .map_err(|e| corrupt("recorded_at", e.to_string()))?
            .with_timezone(&Utc),
        hash: r.get(9).map_err(|e| corrupt("hash", e.to_string()))?,
    })
}

/// Sets checkpoint `name` (creating it) on `conn`, inside whatever transaction it is in.
fn write_checkpoint(conn: &Connection, name: &str, position: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO checkpoints (name, position, updated_at) VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) \
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        params![name, position],
    )
    .map_err(sql_err)?;
    Ok(())
}

fn collect(
    rows: rusqlite::MappedRows<'_, impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<Result<RecordedEvent>>>,
) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    for r in rows {
        out.push(r.map_err(sql_err)??);
    }
    Ok(out)
}

/// If every id of the batch is already in `stream`, in order, at consecutive versions, the
/// batch was appended before: returns where. Ids found anywhere else are a reuse (`None`).
fn find_duplicate(conn: &Connection, stream: &str, events: &[NewEvent]) -> Result<Option<Appended>> {
    let mut stmt = conn
        .prepare_cached("SELECT global_position, stream_id, stream_version FROM events WHERE event_id = ?1")
        .map_err(sql_err)?;
    let mut found = Vec::with_capacity(events.len());
    for e in events {
        let row = stmt
            .query_row([e.event_id.to_string()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })
            .optional()
            .map_err(sql_err)?;
        match row {
            Some(row) => found.push(row),
            None => return Ok(None),
        }
    }
    let base = found[0].2 - 1;
    if found.iter().enumerate().any(|(i, (_, s, v))| s != stream || *v != base + 1 + i as i64) {
        return Ok(None);
    }
    Ok(Some(Appended {
        first_position: found[0].0,
        last_position: found[found.len() - 1].0,
        next_version: base + events.len() as i64,
        duplicate: true,
    }))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// One append inside a transaction the caller owns (rows of a refused append are left for the
/// caller to roll back).
fn append_in(tx: &Connection, stream: &str, expected: ExpectedVersion, events: &[NewEvent]) -> Result<Appended> {
    let (current, prev): (i64, String) = tx
        .prepare_cached("SELECT version, hash FROM stream_heads WHERE stream_id = ?1")
        .map_err(sql_err)?
        .query_row([stream], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(sql_err)?
        .unwrap_or((0, String::new()));
    let ok = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => current == 0,
        ExpectedVersion::Exact(v) => current == v,
    };
    if !ok {
        // The head moved, perhaps by this very batch committed before a retry.
        if let Some(dup) = find_duplicate(tx, stream, events)? {
            return Ok(dup);
        }
        return Err(Error::Conflict { stream: stream.to_owned(), expected: expected.describe(), actual: current });
    }
    let hashes = chain_hashes(stream, current, &prev, events);
    let mut first = 0;
    let mut last = 0;
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, data, metadata, recorded_at, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(sql_err)?;
        for (i, e) in events.iter().enumerate() {
            let inserted = stmt.execute(params![
                stream,
                current + 1 + i as i64,
                e.event_id.to_string(),
                e.event_type,
                e.schema_version,
                e.data.to_string(),
                serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".into()),
                to_micros(e.recorded_at).to_rfc3339_opts(SecondsFormat::Micros, true),
                hashes[i],
            ]);
            match inserted {
                Ok(_) => {}
                // An event id exists already: a retried append (Any), or a reused id.
                Err(err) if is_unique_violation(&err) => {
                    drop(stmt);
                    let dup = find_duplicate(tx, stream, events)?;
                    return dup.ok_or_else(|| Error::IdReused { event_id: events[0].event_id.to_string() });
                }
                Err(err) => return Err(sql_err(err)),
            }
            last = tx.last_insert_rowid();
            if i == 0 {
                first = last;
            }
        }
    }
    // The head record moves in the same transaction (decision 0013).
    let next = current + events.len() as i64;
    tx.prepare_cached(
        "INSERT INTO stream_heads (stream_id, version, hash) VALUES (?1, ?2, ?3) \
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, hash = excluded.hash",
    )
    .map_err(sql_err)?
    .execute(params![stream, next, hashes[events.len() - 1]])
    .map_err(sql_err)?;
    Ok(Appended { first_position: first, last_position: last, next_version: next, duplicate: false })
}

/// Short work for the writer connection other than appends (a projector batch: a few ms).
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Writes `log` (events of another database's log, a NATS-fed reporting copy's) into `tx`'s
/// log at their own positions. An event whose position or id is taken fails the batch: the
/// target holds a log of its own.
fn write_log(tx: &Connection, log: &[RecordedEvent]) -> Result<()> {
    if log.is_empty() {
        return Ok(());
    }
    let mut stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO events ({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))
        .map_err(sql_err)?;
    for e in log {
        let metadata = serde_json::to_string(&e.metadata)
            .map_err(|err| Error::Backend(format!("cannot encode the metadata of event {}: {err}", e.event_id)))?;
        stmt.execute(params![
            e.global_position,
            e.stream_id,
            e.stream_version,
            e.event_id.to_string(),
            e.event_type,
            e.schema_version,
            e.data.to_string(),
            metadata,
            to_micros(e.recorded_at).to_rfc3339_opts(SecondsFormat::Micros, true),
            e.hash,
        ])
        .map_err(|err| {
            Error::Backend(format!(
                "cannot copy event {} (position {}) into this database's log; does it hold a log of its own? {err}",
                e.event_id, e.global_position
            ))
        })?;
    }
    // The copied streams' head records move with them, as an append's do.
    let mut head = tx
        .prepare_cached(
            "INSERT INTO stream_heads (stream_id, version, hash) VALUES (?1, ?2, ?3) ON CONFLICT (stream_id) \
             DO UPDATE SET version = excluded.version, hash = excluded.hash WHERE stream_heads.version < excluded.version",
        )
        .map_err(sql_err)?;
    for e in log {
        head.execute(params![e.stream_id, e.stream_version, e.hash]).map_err(sql_err)?;
    }
    Ok(())
}

/// Makes sure a [`drain`] runs after work just queued: starts one on a blocking thread unless
/// one is already scheduled and has not yet taken the queues. Whoever queues work calls this,
/// and then waits for its answer without holding a thread: at most a running drain and the
/// next one occupy threads, where a thread per waiting appender (50 under W3) meant as many
/// cold allocator heaps and wake-ups (measured in docs/benchmarks.md).
fn schedule_drain(inner: &Arc<Inner>) {
    if !inner.drain_scheduled.swap(true, Ordering::SeqCst) {
        let scheduled = Scheduled(inner.clone());
        tokio::task::spawn_blocking(move || {
            let inner = scheduled.0.clone();
            if let Err(e) = drain(&inner, scheduled) {
                tracing::error!(error = %e, "the SQLite writer cannot run what was queued for it");
            }
        });
    }
}

/// A scheduled drain's mark: dropping it clears `drain_scheduled`, so that the next work queued
/// schedules another drain. The drain drops it once it holds the writer; if the drain never
/// runs (a runtime shutting down drops it, or no thread could be had), it is dropped then.
struct Scheduled(Arc<Inner>);

impl Drop for Scheduled {
    fn drop(&mut self) {
        self.0.drain_scheduled.store(false, Ordering::SeqCst);
    }
}

/// Takes the writer and does what is queued for it: the appends as one group commit, then the
/// other jobs, each on its own. Work queued after it took the queues schedules the next drain.
/// When the writer cannot be had, what was queued is dropped, so those waiting are told.
fn drain(inner: &Inner, scheduled: Scheduled) -> Result<()> {
    let writer = inner.writer.lock();
    // From here, newly queued work needs a drain of its own: this one may already have taken
    // the queues.
    drop(scheduled);
    let mut conn = match writer {
        Ok(conn) => conn,
        Err(_) => {
            let pending = inner.pending.lock().map(|mut p| std::mem::take(&mut *p));
            let jobs = inner.jobs.lock().map(|mut j| std::mem::take(&mut *j));
            drop((pending, jobs));
            return Err(Error::Backend("writer lock poisoned".into()));
        }
    };
    let group: Vec<Pending> =
        std::mem::take(&mut *inner.pending.lock().map_err(|_| Error::Backend("append queue poisoned".into()))?);
    if !group.is_empty() {
        // After the views failed in an append's transaction, the appends leave them to the
        // projector until it has applied a batch, rather than fail again in every group.
        let paused = inner.views_paused.load(Ordering::SeqCst);
        let followers = if paused { Vec::new() } else { inner.followers() };
        if commit_group(&mut conn, group, &followers) == Views::Failed {
            inner.views_paused.store(true, Ordering::SeqCst);
        }
    }
    let jobs: Vec<Job> =
        std::mem::take(&mut *inner.jobs.lock().map_err(|_| Error::Backend("writer queue poisoned".into()))?);
    for job in jobs {
        job(&mut conn);
    }
    Ok(())
}

/// An append waiting for the writer.
struct Pending {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: tokio::sync::oneshot::Sender<Result<Appended>>,
}

/// Group commit: appends waiting while another holds the writer share one transaction (one
/// fsync), each in a savepoint so that a refused one leaves no trace and fails nothing else.
/// A lone append is a plain transaction. With `followers` (running projectors), the views
/// are brought up to the group's last event in the same transaction (see
/// [`SqliteStore::follow_views`]).
fn commit_group(conn: &mut Connection, group: Vec<Pending>, followers: &[Arc<watch::Sender<i64>>]) -> Views {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let why = sql_err(e).to_string();
            for p in group {
                let _ = p.reply.send(Err(Error::Unavailable(why.clone())));
            }
            return Views::Skipped;
        }
    };
    let alone = group.len() == 1;
    let mut answers = Vec::with_capacity(group.len());
    for p in group {
        let result = if alone {
            append_in(&tx, &p.stream, p.expected, &p.events)
        } else {
            let result = tx
                .execute_batch("SAVEPOINT ltmc_append")
                .map_err(sql_err)
                .and_then(|()| append_in(&tx, &p.stream, p.expected, &p.events));
            let undo = !matches!(result, Ok(Appended { duplicate: false, .. }));
            let end = if undo { "ROLLBACK TO ltmc_append; RELEASE ltmc_append" } else { "RELEASE ltmc_append" };
            match tx.execute_batch(end).map_err(sql_err) {
                Ok(()) => result,
                Err(e) => Err(e),
            }
        };
        answers.push((p.reply, result));
    }
    let last =
        answers.iter().filter_map(|(_, r)| r.as_ref().ok().filter(|a| !a.duplicate)).map(|a| a.last_position).max();
    let views = match last {
        Some(last) if !followers.is_empty() => views::follow_in(&tx, last),
        _ => Ok(Views::Skipped),
    };
    let committed = match (&views, last) {
        (Err(e), _) => Err(Error::Backend(format!("the views could not be undone in the append's transaction: {e}"))),
        (Ok(_), Some(_)) => tx.commit().map_err(sql_err),
        (Ok(_), None) => Ok(()),
    };
    if let (Ok(()), Ok(Views::Applied(position))) = (&committed, &views) {
        for f in followers {
            crate::projector::publish(f, *position);
        }
    }
    for (reply, result) in answers {
        let result = match (&committed, result) {
            (Err(e), Ok(a)) if !a.duplicate => Err(Error::Unavailable(format!("commit failed: {e}"))),
            (_, r) => r,
        };
        let _ = reply.send(result);
    }
    match views {
        Ok(v) => v,
        Err(_) => Views::Failed,
    }
}

/// What a group commit did with the views ([`views::follow_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Views {
    /// Brought up to this position.
    Applied(i64),
    /// Left to the projector: none follows, or they are far behind.
    Skipped,
    /// Applying failed (undone): left to the projector, which reports why.
    Failed,
}

impl EventStore for SqliteStore {
    async fn append(&self, stream: &str, expected: ExpectedVersion, events: &[NewEvent]) -> Result<Appended> {
        check_batch(stream, events)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = Pending { stream: stream.to_owned(), expected, events: events.to_vec(), reply };
        // Queue the append; a drain commits everything queued as one group.
        self.inner.pending.lock().map_err(|_| Error::Backend("append queue poisoned".into()))?.push(pending);
        schedule_drain(&self.inner);
        let appended = answer.await.map_err(|_| Error::Backend("the append was dropped".into()))??;
        if !appended.duplicate {
            let _ = self.inner.tx.send(appended.last_position);
        }
        Ok(appended)
    }

    async fn read_stream(&self, stream: &str, after_version: i64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let stream = stream.to_owned();
        self.with_reader(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ?1 AND stream_version > ?2 ORDER BY stream_version LIMIT ?3"
                ))
                .map_err(sql_err)?;
            let events =
                collect(stmt.query_map(params![stream, after_version, limit as i64], row_to_event).map_err(sql_err)?)?;
            events.into_iter().map(|e| super::readable(Ok(e))).collect()
        })
        .await
    }

    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>> {
        self.with_reader(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > ?1 ORDER BY global_position LIMIT ?2"
                ))
                .map_err(sql_err)?;
            collect(stmt.query_map(params![after, limit as i64], row_to_event).map_err(sql_err)?)
        })
        .await
    }

    async fn head_position(&self) -> Result<i64> {
        self.with_reader(|c| {
            c.query_row("SELECT coalesce(max(global_position), 0) FROM events", [], |r| r.get(0)).map_err(sql_err)
        })
        .await
    }

    async fn list_streams(&self, category: &str, limit: usize) -> Result<Vec<StreamInfo>> {
        let prefix = format!("{category}-");
        self.with_reader(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT stream_id, max(stream_version), min(recorded_at), max(recorded_at) FROM events \
                     WHERE substr(stream_id, 1, length(?1)) = ?1 GROUP BY stream_id ORDER BY max(global_position) DESC LIMIT ?2",
                )
                .map_err(sql_err)?;
            let rows = stmt
                .query_map(params![prefix, limit as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                })
                .map_err(sql_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (stream_id, version, created, updated) = row.map_err(sql_err)?;
                let parse = |s: &str| DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).unwrap_or_default();
                out.push(StreamInfo { stream_id, version, created_at: parse(&created), updated_at: parse(&updated) });
            }
            Ok(out)
        })
        .await
    }

    async fn stream_head(&self, stream: &str) -> Result<Option<Head>> {
        let stream = stream.to_owned();
        self.with_reader(move |c| {
            c.prepare_cached("SELECT version, hash FROM stream_heads WHERE stream_id = ?1")
                .map_err(sql_err)?
                .query_row([stream], |r| Ok(Head { version: r.get(0)?, hash: r.get(1)? }))
                .optional()
                .map_err(sql_err)
        })
        .await
    }

    async fn stream_heads(&self) -> Result<Vec<(String, Head)>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare("SELECT stream_id, version, hash FROM stream_heads").map_err(sql_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, Head { version: r.get(1)?, hash: r.get(2)? })))
                .map_err(sql_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_err)
        })
        .await
    }

    async fn checkpoint(&self, name: &str) -> Result<i64> {
        let name = name.to_owned();
        self.with_reader(move |c| {
            c.query_row("SELECT position FROM checkpoints WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(sql_err)
                .map(|p| p.unwrap_or(0))
        })
        .await
    }

    async fn wake(&self) -> Result<broadcast::Receiver<i64>> {
        Ok(self.inner.tx.subscribe())
    }
}
