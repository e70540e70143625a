//! The event store: one trait, two backends (Postgres and embedded SQLite).
//!
//! Both keep the same `events` table (see `docs/event-log.md`), hash-chain every stream, refuse
//! stale expectations with a typed conflict, and treat a retried append of the same events as a
//! no-op that returns the original positions.

mod head_cache;
pub mod postgres;
pub mod sqlite;
mod subscription;
pub(crate) mod views_sql;

pub use views_sql::CHECKPOINT as VIEWS_CHECKPOINT;

pub use subscription::{POLL_INTERVAL, Subscription};

use chrono::Utc;
use ltmc_core::audit::Head;
use ltmc_core::event::{MAX_EVENT_BYTES, to_micros};
use ltmc_core::hash::{Link, chain};
use ltmc_core::names;
use ltmc_core::{NewEvent, RecordedEvent};
use std::future::Future;
use tokio::sync::broadcast;

/// What the appender believes the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (its last event has this `stream_version`).
    Exact(i64),
}

impl ExpectedVersion {
    fn describe(self) -> String {
        match self {
            ExpectedVersion::Any => "any".into(),
            ExpectedVersion::NoStream => "no stream".into(),
            ExpectedVersion::Exact(v) => v.to_string(),
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Global position of the first event.
    pub first_position: i64,
    /// Global position of the last event.
    pub last_position: i64,
    /// The stream's version after the append.
    pub next_version: i64,
    /// True when these events were already in the log (a retried append); nothing was written.
    pub duplicate: bool,
}

/// A lease row (`leases`): who holds it, since which hand-over, and whether it has expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The holder's name (the relay's `pid <pid> <id>`).
    pub holder: String,
    /// Grows by one with every new holder.
    pub epoch: i64,
    /// Its expiry has passed (by the database's clock on Postgres, this machine's on SQLite).
    pub expired: bool,
    /// The holder also holds the lease's lock, which ends with its process or connection.
    pub locked: bool,
}

/// A stream and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    /// Stream id.
    pub stream_id: String,
    /// Last version.
    pub version: i64,
    /// Time of the first event.
    pub created_at: chrono::DateTime<Utc>,
    /// Time of the last event.
    pub updated_at: chrono::DateTime<Utc>,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream is not at the expected version. Fold it again and retry, or give up.
    #[error("stream {stream} is at version {actual}, not the expected {expected}; re-read the stream and retry")]
    Conflict {
        /// Stream id.
        stream: String,
        /// What the caller expected.
        expected: String,
        /// Where the stream actually is.
        actual: i64,
    },
    /// An event id in the batch already exists elsewhere in the log.
    #[error("event id {event_id} is already in the log at a different place; event ids must be new")]
    IdReused {
        /// The event id.
        event_id: String,
    },
    /// An event is larger than [`MAX_EVENT_BYTES`].
    #[error(
        "event {event_type} in stream {stream} is {size} bytes; the limit is {limit} bytes (large outputs belong in blobs)"
    )]
    PayloadTooLarge {
        /// Stream id.
        stream: String,
        /// Event type.
        event_type: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Bad input: an empty batch, an invalid stream id, a database URL that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The database cannot be reached.
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    /// A stored row of a stream read alone cannot be read back. (Readers of the whole log get
    /// a stand-in instead, [`RecordedEvent::unreadable`], and go on.)
    #[error(
        "stream {stream} is damaged: its event at position {position} cannot be read ({reason}); \
         `ltmc audit --verify` lists every damaged stream"
    )]
    Corrupt {
        /// The stream, as far as it could be read.
        stream: String,
        /// Its position.
        position: i64,
        /// Why.
        reason: String,
    },
    /// A stream's events are not what was appended: altered, or some deleted (its head record
    /// is ahead of them). Folding it would act on a history that did not happen.
    #[error(
        "stream {stream} is damaged: {detail}; `ltmc audit --verify` lists every damaged stream, and the log \
         must be restored from a backup before this stream is used"
    )]
    Damaged {
        /// The stream.
        stream: String,
        /// What is wrong ([`ltmc_core::audit::Damage`]).
        detail: String,
    },
    /// Migrations could not be applied: an applied migration was edited (append-only, refused),
    /// or the database is newer than this binary.
    #[error(
        "the database schema cannot be migrated: {0}; migrations are append-only, so restore the original migration files or use a new database"
    )]
    Migration(String),
    /// Any other backend failure.
    #[error("event store error: {0}")]
    Backend(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operations every backend offers.
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` atomically if the stream is at `expected`.
    fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> impl Future<Output = Result<Appended>> + Send;
    /// Events of one stream with `stream_version > after_version`, in order, at most `limit`.
    fn read_stream(
        &self,
        stream: &str,
        after_version: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;
    /// Events of the whole log with `global_position > after`, in order, at most `limit`.
    fn read_all(&self, after: i64, limit: usize) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;
    /// The highest committed position (0 when the log is empty).
    fn head_position(&self) -> impl Future<Output = Result<i64>> + Send;
    /// Streams of a category (`run`), newest first.
    fn list_streams(&self, category: &str, limit: usize) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send;
    /// A stream's head record: the version and hash of its last event (`None` when it has none).
    fn stream_head(&self, stream: &str) -> impl Future<Output = Result<Option<Head>>> + Send;
    /// Every stream's head record, by stream id.
    fn stream_heads(&self) -> impl Future<Output = Result<Vec<(String, Head)>>> + Send;
    /// A named consumer's checkpoint (0 when none).
    fn checkpoint(&self, name: &str) -> impl Future<Output = Result<i64>> + Send;
    /// Wakes when this process (SQLite) or any process (Postgres) appends; carries the position.
    fn wake(&self) -> impl Future<Output = Result<broadcast::Receiver<i64>>> + Send;
}

/// Checks a batch before any IO: valid stream id, non-empty, each event within the size limit.
pub(crate) fn check_batch(stream: &str, events: &[NewEvent]) -> Result<()> {
    names::validate_stream_id(stream).map_err(|e| Error::Invalid(format!("cannot append: {e}")))?;
    if events.is_empty() {
        return Err(Error::Invalid(format!("cannot append to {stream}: no events given")));
    }
    let mut ids = std::collections::HashSet::with_capacity(events.len());
    for e in events {
        if !ids.insert(e.event_id) {
            return Err(Error::Invalid(format!("cannot append to {stream}: event id {} appears twice", e.event_id)));
        }
        if e.event_type.is_empty() || !e.event_type.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::Invalid(format!(
                "cannot append to {stream}: event type {:?} must be PascalCase letters and digits",
                e.event_type
            )));
        }
        if has_nul(&e.data) {
            return Err(Error::Invalid(format!(
                "cannot append to {stream}: event {} holds the character U+0000, which the log does not store \
                 (Postgres jsonb refuses it); replace it before appending",
                e.event_type
            )));
        }
        let size = json_len(&e.data) + json_len(&e.metadata);
        if size > MAX_EVENT_BYTES {
            return Err(Error::PayloadTooLarge {
                stream: stream.to_owned(),
                event_type: e.event_type.clone(),
                size,
                limit: MAX_EVENT_BYTES,
            });
        }
    }
    Ok(())
}

/// Whether any string or key in `v` holds U+0000.
pub fn has_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Length of the compact JSON of `v`, without building the string.
pub fn json_len<T: serde::Serialize>(v: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// The chain hashes of `events` appended after version `current` whose last hash is `prev`.
pub(crate) fn chain_hashes(stream: &str, current: i64, prev: &str, events: &[NewEvent]) -> Vec<String> {
    let mut prev = prev.to_owned();
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let h = chain(
            &prev,
            Link {
                stream_id: stream,
                stream_version: current + 1 + i as i64,
                event_id: e.event_id,
                event_type: &e.event_type,
                schema_version: e.schema_version,
                recorded_at: to_micros(e.recorded_at),
                metadata: &e.metadata,
                data: &e.data,
            },
        );
        prev.clone_from(&h);
        out.push(h);
    }
    out
}

/// The backend chosen by `LTMC_DATABASE_URL`.
#[derive(Clone)]
pub enum Store {
    /// Postgres.
    Postgres(postgres::PgStore),
    /// Embedded SQLite.
    Sqlite(sqlite::SqliteStore),
}

/// The tables of every view, for a time-travel snapshot: the view migrations, in order.
const VIEWS_DDL_POSTGRES: &str = concat!(
    include_str!("../../../../migrations/postgres/V2__views.sql"),
    include_str!("../../../../migrations/postgres/V3__sessions.sql"),
);
const VIEWS_DDL_SQLITE: &str = concat!(
    include_str!("../../../../migrations/sqlite/V2__views.sql"),
    include_str!("../../../../migrations/sqlite/V3__sessions.sql"),
);

/// Most rows of changing view tables (runs, steps, sessions, memory, …) a rebuild holds in
/// memory (about 1.5 KB each): its young rows and the late changes of rows already written
/// (`ltmc_projections::Replay`). Append-only tables are never held. Beyond it, everything held
/// is written and folding starts again.
pub const REBUILD_HELD_ROWS: usize = 500_000;

/// Default database: an embedded SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.ltmc/ltmc.db";

impl Store {
    /// Opens (and migrates) the store at `url`: `postgres://…` or `sqlite://PATH`.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(postgres::PgStore::open(url).await?))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Ok(Store::Sqlite(sqlite::SqliteStore::open(path).await?))
        } else {
            Err(Error::Invalid(format!(
                "database URL {url:?} is not postgres://… or sqlite://PATH (set LTMC_DATABASE_URL)"
            )))
        }
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// The projector's checkpoint: the last position the SQL views include.
    pub async fn views_checkpoint(&self) -> Result<i64> {
        match self {
            Store::Postgres(s) => s.views_checkpoint().await,
            Store::Sqlite(s) => s.views_checkpoint().await,
        }
    }

    /// When the projector's checkpoint last moved (`None` before the first batch).
    pub async fn views_updated_at(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        match self {
            Store::Postgres(s) => s.views_updated_at().await,
            Store::Sqlite(s) => s.views_updated_at().await,
        }
    }

    /// Applies a batch of view changes and moves the checkpoint from `from` to `to`, in one
    /// transaction; `false` (nothing written) when the checkpoint was not at `from`.
    pub async fn apply_views(&self, from: i64, to: i64, changes: Vec<ltmc_projections::Change>) -> Result<bool> {
        match self {
            Store::Postgres(s) => s.apply_views(from, to, &changes).await,
            Store::Sqlite(s) => s.apply_views(from, to, changes).await,
        }
    }

    /// [`Store::apply_views`], also writing `log` (the batch's events, from another database's
    /// log) into this database's log, at their own positions, in the same transaction: what a
    /// reporting copy fed from NATS does, so that it holds the log its views come from.
    pub async fn apply_views_with_log(
        &self,
        from: i64,
        to: i64,
        log: Vec<ltmc_core::RecordedEvent>,
        changes: Vec<ltmc_projections::Change>,
    ) -> Result<bool> {
        match self {
            Store::Postgres(s) => s.apply_views_with_log(from, to, &log, &changes).await,
            Store::Sqlite(s) => s.apply_views_with_log(from, to, log, changes).await,
        }
    }

    /// Rebuilds every view from the log (up to `until`) in one transaction, holding at most
    /// `held_rows` changing rows in memory ([`REBUILD_HELD_ROWS`] is the default).
    pub async fn rebuild_views(&self, until: Option<i64>, held_rows: usize) -> Result<i64> {
        let tables = ltmc_projections::tables();
        match self {
            Store::Postgres(s) => s.rebuild_views(&tables, until, held_rows).await,
            Store::Sqlite(s) => s.rebuild_views(tables, until, held_rows).await,
        }
    }

    /// Builds the views as of position `until` somewhere new, leaving the live views alone: into
    /// schema `into` on Postgres (`[A-Za-z0-9_]{1,63}`), into the new file at path `into` on
    /// SQLite. Returns the position the snapshot includes.
    pub async fn snapshot_views(&self, until: i64, into: &str) -> Result<i64> {
        let tables = ltmc_projections::tables();
        match self {
            Store::Postgres(s) => {
                let ok = !into.is_empty()
                    && into.len() <= 63
                    && !into.starts_with("pg_")
                    && into.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(Error::Invalid(format!(
                        "{into:?} cannot be a schema name: use [A-Za-z0-9_], at most 63 characters, not starting with pg_"
                    )));
                }
                s.snapshot_views(&tables, until, into, VIEWS_DDL_POSTGRES).await
            }
            Store::Sqlite(s) => s.snapshot_views(tables, until, std::path::PathBuf::from(into), VIEWS_DDL_SQLITE).await,
        }
    }

    /// The last position recorded at or before `at` (0 if none).
    pub async fn position_at(&self, at: chrono::DateTime<chrono::Utc>) -> Result<i64> {
        match self {
            Store::Postgres(s) => s.position_at(at).await,
            Store::Sqlite(s) => s.position_at(at).await,
        }
    }

    /// Asks this process's appends to bring the views up to date in their own transactions
    /// while `position` (a running projector's) lives, publishing each new checkpoint to it.
    /// `true` on SQLite (its one writer is in this process); Postgres appends never wait for
    /// the views (`false`).
    pub fn follow_views(&self, position: &std::sync::Arc<tokio::sync::watch::Sender<i64>>) -> bool {
        match self {
            Store::Postgres(_) => false,
            Store::Sqlite(s) => {
                s.follow_views(position);
                true
            }
        }
    }

    /// Subscribes to the whole log after `position`: catch-up reads, then live events.
    pub fn subscribe(&self, after: i64) -> Subscription {
        Subscription::new(self.clone(), after)
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Postgres($s) => $e,
            Store::Sqlite($s) => $e,
        }
    };
}

/// Tries `op` again while the backend is unavailable, up to `tries` more times, waiting 50 ms,
/// then twice as long each time, at most 2 s. A connection terminated under the store is
/// replaced at once, so reads take 5 tries (about 1.5 s in all: a server that is down is still
/// reported promptly) and a run's appends 20 (about 30 s: appends retried with the same events
/// are idempotent).
pub(crate) async fn retry_unavailable<T, F: Future<Output = Result<T>>>(
    tries: u32,
    mut op: impl FnMut() -> F,
) -> Result<T> {
    let mut delay = crate::backoff::Backoff::starting_at(std::time::Duration::from_millis(50));
    for _ in 0..tries {
        match op().await {
            Err(Error::Unavailable(e)) => {
                tracing::warn!(error = %e, "the store is unavailable; retrying in {:?}", delay.peek());
                delay.wait().await;
            }
            other => return other,
        }
    }
    op().await
}

/// Tries of a read (or of opening a store) while the backend is unavailable.
pub(crate) const READ_TRIES: u32 = 5;

impl EventStore for Store {
    async fn append(&self, stream: &str, expected: ExpectedVersion, events: &[NewEvent]) -> Result<Appended> {
        delegate!(self, s => s.append(stream, expected, events).await)
    }
    async fn read_stream(&self, stream: &str, after_version: i64, limit: usize) -> Result<Vec<RecordedEvent>> {
        retry_unavailable(READ_TRIES, || async {
            delegate!(self, s => s.read_stream(stream, after_version, limit).await)
        })
        .await
    }
    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>> {
        retry_unavailable(READ_TRIES, || async { delegate!(self, s => s.read_all(after, limit).await) }).await
    }
    async fn head_position(&self) -> Result<i64> {
        retry_unavailable(READ_TRIES, || async { delegate!(self, s => s.head_position().await) }).await
    }
    async fn list_streams(&self, category: &str, limit: usize) -> Result<Vec<StreamInfo>> {
        retry_unavailable(READ_TRIES, || async { delegate!(self, s => s.list_streams(category, limit).await) }).await
    }
    async fn stream_head(&self, stream: &str) -> Result<Option<Head>> {
        retry_unavailable(READ_TRIES, || async { delegate!(self, s => s.stream_head(stream).await) }).await
    }
    async fn stream_heads(&self) -> Result<Vec<(String, Head)>> {
        retry_unavailable(READ_TRIES, || async { delegate!(self, s => s.stream_heads().await) }).await
    }
    async fn checkpoint(&self, name: &str) -> Result<i64> {
        retry_unavailable(READ_TRIES, || async { delegate!(self, s => s.checkpoint(name).await) }).await
    }
    async fn wake(&self) -> Result<broadcast::Receiver<i64>> {
        delegate!(self, s => s.wake().await)
    }
}

/// An event of a stream read alone: the stand-in for an unreadable row is refused, naming the
/// stream.
pub(crate) fn readable(e: Result<RecordedEvent>) -> Result<RecordedEvent> {
    let e = e?;
    match e.unreadable_reason() {
        Some(reason) => {
            Err(Error::Corrupt { stream: e.stream_id.clone(), position: e.global_position, reason: reason.to_owned() })
        }
        None => Ok(e),
    }
}

/// Reads a whole stream and checks it ([`ltmc_core::audit::check_stream`]): versions 1..N
/// without a gap, an unbroken hash chain, and nothing missing below its head record, which is
/// read first (events appended meanwhile are past it, and chained). A stream that fails is
/// refused with [`Error::Damaged`]: what a run or session is folded from must be what was
/// appended, or a step recorded as finished could run again.
pub async fn read_stream_verified<S: EventStore>(store: &S, stream: &str) -> Result<Vec<RecordedEvent>> {
    let head = store.stream_head(stream).await?;
    let events = read_stream_all(store, stream).await?;
    match ltmc_core::audit::check_stream(&events, head.as_ref()) {
        Some(damage) => Err(Error::Damaged { stream: stream.to_owned(), detail: damage.detail }),
        None => Ok(events),
    }
}

/// Reads a whole stream.
pub async fn read_stream_all<S: EventStore>(store: &S, stream: &str) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |e: &RecordedEvent| e.stream_version);
        let batch = store.read_stream(stream, after, 1000).await?;
        let done = batch.len() < 1000;
        out.extend(batch);
        if done {
            return Ok(out);
        }
    }
}

/// New event with a fresh UUID v7 and the current time.
pub fn new_event(
    event_type: &str,
    schema_version: i32,
    data: serde_json::Value,
    metadata: ltmc_core::Metadata,
) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version,
        data,
        metadata,
        recorded_at: to_micros(Utc::now()),
    }
}
