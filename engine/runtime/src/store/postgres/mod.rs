//! Postgres backend: pooled connections, one round trip per append (the `ltmc_append` function
//! of migration V1), LISTEN/NOTIFY wake-ups.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use ltmc_core::audit::Head;
use ltmc_core::event::to_micros;
use ltmc_core::{Metadata, NewEvent, RecordedEvent};
use serde_json::Value;
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::{OnceCell, broadcast};
use tokio_postgres::{AsyncMessage, NoTls, Row};
use uuid::Uuid;

use super::head_cache::HeadCache;
use super::{Appended, Error, EventStore, ExpectedVersion, Result, StreamInfo, chain_hashes, check_batch};

mod group_commit;
mod lease;
mod migrate;
mod rebuild;
mod views;

use group_commit::{Call, Failure, GroupCommitter};

pub use lease::PgLeaseConn;
use migrate::migrate;
pub use migrate::migrate_url;

const EVENT_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, event_type, \
                             schema_version, data, metadata, recorded_at, hash";

/// The Postgres event store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    config: tokio_postgres::Config,
    schema: String,
    heads: HeadCache,
    listener: OnceCell<Listener>,
    committer: GroupCommitter,
    /// SQL type of each view column, read from the catalog once (`views::ColumnTypes`).
    view_types: OnceCell<Arc<views::ColumnTypes>>,
}

struct Listener {
    tx: broadcast::Sender<i64>,
    /// While it lives, the listening task keeps (or gets back) its connection; dropped with the
    /// store, it ends the task and closes the connection.
    _alive: tokio::sync::oneshot::Sender<()>,
}

type PgConnection = tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// A connection listening on `channel`.
async fn listen(config: &tokio_postgres::Config, channel: &str) -> Result<(tokio_postgres::Client, PgConnection)> {
    let (client, mut conn) = config.connect(NoTls).await.map_err(|e| Error::Unavailable(e.to_string()))?;
    // The LISTEN's answer arrives through the connection, which nobody polls yet: drive both.
    let sql = format!("LISTEN \"{channel}\"");
    {
        let listening = client.batch_execute(&sql);
        tokio::pin!(listening);
        let polled = futures::future::poll_fn(|cx| {
            while let std::task::Poll::Ready(Some(_)) = conn.poll_message(cx) {}
            listening.as_mut().poll(cx)
        });
        polled.await.map_err(db_err)?;
    }
    Ok((client, conn))
}

/// Forwards notifications to `tx` as wake-ups. When the connection ends (terminated, a server
/// restart), makes a new one, waiting 50 ms, then twice as long each time up to 2 s, and wakes
/// every subscriber once it listens again: whatever was appended meanwhile is read then, not at
/// their next poll. Ends when the store is dropped (`dropped` resolves).
async fn keep_listening(
    config: tokio_postgres::Config,
    channel: String,
    mut client: tokio_postgres::Client,
    mut conn: PgConnection,
    tx: broadcast::Sender<i64>,
    mut dropped: tokio::sync::oneshot::Receiver<()>,
) {
    use futures::StreamExt;
    loop {
        {
            let mut messages = futures::stream::poll_fn(|cx| conn.poll_message(cx));
            loop {
                tokio::select! {
                    _ = &mut dropped => return,
                    msg = messages.next() => match msg {
                        // The payload is the last position; only the wake-up matters to
                        // subscribers, who read from where they are.
                        Some(Ok(AsyncMessage::Notification(n))) => {
                            let _ = tx.send(n.payload().parse().unwrap_or(i64::MAX));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
        drop(client);
        let mut delay = crate::backoff::Backoff::starting_at(std::time::Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = &mut dropped => return,
                () = delay.wait() => {}
            }
            match listen(&config, &channel).await {
                Ok((c, cn)) => {
                    (client, conn) = (c, cn);
                    let _ = tx.send(i64::MAX);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the Postgres listener cannot reconnect; retrying in {:?}", delay.peek());
                }
            }
        }
    }
}

pub(crate) fn db_err(e: tokio_postgres::Error) -> Error {
    if e.is_closed() || e.as_db_error().is_none() && e.to_string().contains("connect") {
        Error::Unavailable(with_causes(&e))
    } else {
        match e.as_db_error() {
            Some(db) if connection_lost(db.code()) => {
                Error::Unavailable(format!("{}: {}", db.code().code(), db.message()))
            }
            Some(db) => Error::Backend(format!("{}: {}", db.code().code(), db.message())),
            None => Error::Unavailable(e.to_string()),
        }
    }
}

/// `e` and its causes: "error connecting to server: Connection refused (os error 111)", not
/// just the first part.
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Where `config` points, for messages: `Postgres at HOST:PORT, database D, user U`.
fn target(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, p)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{p}", path.display()),
        })
        .collect();
    let hosts = if hosts.is_empty() { "localhost:5432".to_owned() } else { hosts.join(",") };
    let user = config.get_user().unwrap_or("(the OS user)");
    let db = config.get_dbname().unwrap_or(user);
    format!("Postgres at {hosts}, database {db}, user {user}")
}

/// Errors that say the connection or the server went away, not that the statement was wrong:
/// a terminated backend (`pg_terminate_backend`, 57P01), a server shutting down or starting up
/// (57P02, 57P03), a connection exception (class 08), too many clients (53300). Whatever was
/// being done can be retried on a new connection; appends retried with the same events are
/// idempotent.
fn connection_lost(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState as S;
    [S::ADMIN_SHUTDOWN, S::CRASH_SHUTDOWN, S::CANNOT_CONNECT_NOW, S::TOO_MANY_CONNECTIONS].contains(code)
        || code.code().starts_with("08")
}

/// An error opening the store, saying where: a server that cannot be reached, an unknown role
/// (28xxx) or database (3D000) is a store that cannot be opened (exit 3), and names the host,
/// port, database and user it tried.
fn opening_err(config: &tokio_postgres::Config, e: Error) -> Error {
    match e {
        Error::Unavailable(m) => Error::Unavailable(format!("{}: {m}", target(config))),
        Error::Backend(m) if m.starts_with("28") || m.starts_with("3D000") => {
            Error::Unavailable(format!("{}: {m}", target(config)))
        }
        other => other,
    }
}

/// How long opening a store waits for a server with no connection to spare.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How [`db_err`] begins the message of SQLSTATE 53300 (too many clients, or too many
/// connections for the role).
const TOO_MANY_CONNECTIONS: &str = "53300:";

/// A pool of at most `size` connections made with `config`.
fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool> {
    let manager =
        Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager).max_size(size).build().map_err(|e| Error::Backend(format!("building the pool: {e}")))
}

fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_err(e),
        other => Error::Unavailable(other.to_string()),
    }
}

impl PgStore {
    /// Connects, applies pending migrations, and returns the store. A `search_path` given with
    /// `?options=-csearch_path%3Dmyschema` selects the schema the tables live in.
    pub async fn open(url: &str) -> Result<PgStore> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| Error::Invalid(format!("database URL is not a valid postgres URL: {e}")))?;
        let pool = pool(&config, 16)?;
        // A connection terminated while opening is replaced: a few quick tries, as for reads.
        // The schema is checked on the pool's first connection, which then serves the process's
        // reads and appends: a current schema costs no connection of its own.
        let open = || {
            crate::store::retry_unavailable(crate::store::READ_TRIES, || async {
                let client = pool.get().await.map_err(pool_err)?;
                let (schema, current) = migrate::check(&client).await?;
                if !current {
                    migrate(&config).await?;
                }
                Ok(schema)
            })
        };
        // A server with no connection to spare (53300: `max_connections`, or the role's
        // `CONNECTION LIMIT`) is waited out for a while: many `ltmc` processes started at once
        // then queue instead of failing. A server that is down is still reported promptly.
        let started = std::time::Instant::now();
        let mut delay = crate::backoff::Backoff::starting_at(std::time::Duration::from_millis(200));
        let schema = loop {
            match open().await {
                Err(Error::Unavailable(m)) if m.starts_with(TOO_MANY_CONNECTIONS) => {
                    if started.elapsed() >= BUSY_WAIT {
                        return Err(Error::Unavailable(format!(
                            "Postgres has no connection to spare after {} s of trying ({m}); raise \
                             max_connections (or the role's CONNECTION LIMIT), run fewer ltmc processes at once, or \
                             put a pooler such as PgBouncer in front of Postgres",
                            BUSY_WAIT.as_secs()
                        )));
                    }
                    tracing::warn!(error = %m, "Postgres has no connection to spare; trying again in {:?}", delay.peek());
                    delay.wait().await;
                }
                Err(e) => return Err(opening_err(&config, e)),
                Ok(schema) => break schema,
            }
        };
        Ok(PgStore::with(pool, config, schema))
    }

    /// The same database and schema through connections of its own (a new pool, listener and
    /// committer), driven by the runtime this is called on: a task on another runtime thread
    /// (the projector's) then never waits for this one's.
    pub(crate) fn detached(&self) -> Result<PgStore> {
        let config = self.inner.config.clone();
        Ok(PgStore::with(pool(&config, 4)?, config, self.inner.schema.clone()))
    }

    /// A store over `pool`, its committer started on the current runtime.
    fn with(pool: Pool, config: tokio_postgres::Config, schema: String) -> PgStore {
        PgStore {
            inner: Arc::new(Inner {
                committer: GroupCommitter::start(pool.clone()),
                pool,
                config,
                schema,
                heads: HeadCache::default(),
                listener: OnceCell::new(),
                view_types: OnceCell::new(),
            }),
        }
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The connection settings (for dedicated connections such as the relay lease).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.inner.config
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_err)
    }

    /// Opens a dedicated connection whose driver runs on its own task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = self.inner.config.connect(NoTls).await.map_err(|e| Error::Unavailable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    async fn head(&self, stream: &str) -> Result<(i64, String)> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT version, hash FROM stream_heads WHERE stream_id = $1", &[&stream])
            .await
            .map_err(db_err)?;
        Ok(row.map_or((0, String::new()), |r| (r.get(0), r.get(1))))
    }

    /// (version, hash) to chain from when appending at `expected`.
    /// A pooled connection is taken only on a cache miss: the append itself goes through the
    /// committer, so holding one per append would cap how many appends can queue for a group.
    async fn base(&self, stream: &str, expected: ExpectedVersion) -> Result<(i64, String)> {
        match expected {
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => Ok((0, String::new())),
            ExpectedVersion::Exact(v) => {
                if let Some((cv, h)) = self.inner.heads.get(stream)
                    && cv == v
                {
                    return Ok((v, h));
                }
                let row = self
                    .client()
                    .await?
                    .query_opt("SELECT hash FROM stream_heads WHERE stream_id = $1 AND version = $2", &[&stream, &v])
                    .await
                    .map_err(db_err)?;
                match row {
                    Some(r) => Ok((v, r.get(0))),
                    // The stream is shorter than expected: the append function reports the conflict.
                    None => Ok((v, String::new())),
                }
            }
            ExpectedVersion::Any => match self.inner.heads.get(stream) {
                Some(h) => Ok(h),
                None => self.head(stream).await,
            },
        }
    }
}

/// If every id of the batch is already in `stream`, in order, at consecutive versions, the
/// batch was appended before: returns where. Ids found anywhere else are a reuse (`None`).
async fn find_duplicate(client: &tokio_postgres::Client, stream: &str, ids: &[Uuid]) -> Result<Option<Appended>> {
    let rows = client
        .query(
            "SELECT event_id, global_position, stream_id, stream_version FROM events WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(db_err)?;
    if rows.len() != ids.len() {
        return Ok(None);
    }
    let mut found: Vec<(usize, i64, i64)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: Uuid = r.get(0);
        let s: String = r.get(2);
        let (Some(i), true) = (ids.iter().position(|x| *x == id), s == stream) else { return Ok(None) };
        found.push((i, r.get(1), r.get(3)));
    }
    found.sort_unstable();
    let base = found[0].2 - 1;
    if found.iter().enumerate().any(|(k, &(i, _, v))| i != k || v != base + 1 + k as i64) {
        return Ok(None);
    }
    Ok(Some(Appended {
        first_position: found[0].1,
        last_position: found[found.len() - 1].1,
        next_version: base + ids.len() as i64,
        duplicate: true,
    }))
}

/// Reads an event row. A row whose content cannot be read (metadata that is not an object, a
/// time out of range) becomes the [`RecordedEvent::unreadable`] stand-in, so one damaged row
/// does not stop a reader of the whole log; only a row without a position is an error.
pub(crate) fn row_to_event(r: &Row) -> Result<RecordedEvent> {
    let position: i64 = r.try_get(0).map_err(|e| Error::Backend(format!("reading an event's position: {e}")))?;
    Ok(read_row(r, position).unwrap_or_else(|reason| {
        let stream = r.try_get::<_, String>(1).unwrap_or_default();
        let version = r.try_get::<_, i64>(2).unwrap_or_default();
        RecordedEvent::unreadable(position, stream, version, reason)
    }))
}

fn read_row(r: &Row, position: i64) -> std::result::Result<RecordedEvent, String> {
    let corrupt = |what: &str, e: String| format!("{what}: {e}");
    let json = |i: usize, what: &str| r.try_get::<_, JsonText>(i).map_err(|e| corrupt(what, e.to_string()));
    Ok(RecordedEvent {
        global_position: position,
        stream_id: r.try_get(1).map_err(|e| corrupt("stream_id", e.to_string()))?,
        stream_version: r.try_get(2).map_err(|e| corrupt("stream_version", e.to_string()))?,
        event_id: r.try_get::<_, Uuid>(3).map_err(|e| corrupt("event_id", e.to_string()))?,
        event_type: r.try_get(4).map_err(|e| corrupt("event_type", e.to_string()))?,
        schema_version: r.try_get(5).map_err(|e| corrupt("schema_version", e.to_string()))?,
        data: serde_json::from_str(json(6, "data")?.0).map_err(|e| corrupt("data", e.to_string()))?,
        metadata: serde_json::from_str::<Metadata>(json(7, "metadata")?.0)
            .map_err(|e| corrupt("metadata", e.to_string()))?,
        recorded_at: r.try_get::<_, DateTime<Utc>>(8).map_err(|e| corrupt("recorded_at", e.to_string()))?,
        hash: r.try_get(9).map_err(|e| corrupt("hash", e.to_string()))?,
    })
}

/// A `json` or `jsonb` column's text, borrowed from the row. Parsed with `serde_json::from_str`,
/// which relies on the text having been checked as UTF-8 once, where postgres-types' own decoding
/// (`from_slice`) checks every string inside the document again: a tenth of a rebuild's decoding
/// thread in a profile.
struct JsonText<'a>(&'a str);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText<'a> {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == tokio_postgres::types::Type::JSONB {
            match raw.split_first() {
                Some((1, text)) => text,
                _ => return Err("unsupported jsonb format version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(*ty, tokio_postgres::types::Type::JSON | tokio_postgres::types::Type::JSONB)
    }
}

impl EventStore for PgStore {
    async fn append(&self, stream: &str, expected: ExpectedVersion, events: &[NewEvent]) -> Result<Appended> {
        check_batch(stream, events)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut retries_left = 5;
        loop {
            let (current, prev) = self.base(stream, expected).await?;
            let hashes = chain_hashes(stream, current, &prev, events);
            let call = Call {
                stream: stream.to_owned(),
                current,
                prev,
                ids: ids.clone(),
                types: events.iter().map(|e| e.event_type.clone()).collect(),
                versions: events.iter().map(|e| e.schema_version).collect(),
                data: events.iter().map(|e| e.data.clone()).collect(),
                metadata: events.iter().map(|e| serde_json::to_value(&e.metadata).unwrap_or(Value::Null)).collect(),
                recorded: events.iter().map(|e| to_micros(e.recorded_at)).collect(),
                hashes: hashes.clone(),
            };
            let answer = match self.inner.committer.call(call).await {
                Ok(answer) => answer,
                // An event id exists already: a retried append, or a reused id.
                Err(Failure::UniqueViolation) => {
                    return match find_duplicate(&*self.client().await?, stream, &ids).await? {
                        Some(dup) => Ok(dup),
                        None => Err(Error::IdReused { event_id: ids.first().map(Uuid::to_string).unwrap_or_default() }),
                    };
                }
                Err(Failure::Store(e)) => return Err(e),
            };
            if answer.status == "ok" {
                if let Some(h) = hashes.last() {
                    self.inner.heads.put(stream, answer.actual, h.clone());
                }
                return Ok(Appended {
                    first_position: answer.first.unwrap_or(0),
                    last_position: answer.last.unwrap_or(0),
                    next_version: answer.actual,
                    duplicate: false,
                });
            }
            // A conflict: the head moved (perhaps by this very append, committed before a retry).
            self.inner.heads.forget(stream);
            if let Some(dup) = find_duplicate(&*self.client().await?, stream, &ids).await? {
                return Ok(dup);
            }
            if expected == ExpectedVersion::Any && retries_left > 0 {
                retries_left -= 1;
                continue;
            }
            return Err(Error::Conflict {
                stream: stream.to_owned(),
                expected: expected.describe(),
                actual: answer.actual,
            });
        }
    }

    async fn read_stream(&self, stream: &str, after_version: i64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version > $2 \
                 ORDER BY stream_version LIMIT $3"
            ))
            .await
            .map_err(db_err)?;
        let rows = client.query(&stmt, &[&stream, &after_version, &(limit as i64)]).await.map_err(db_err)?;
        rows.iter().map(row_to_event).map(super::readable).collect()
    }

    async fn read_all(&self, after: i64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > $1 ORDER BY global_position LIMIT $2"
            ))
            .await
            .map_err(db_err)?;
        let rows = client.query(&stmt, &[&after, &(limit as i64)]).await.map_err(db_err)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn head_position(&self) -> Result<i64> {
        let client = self.client().await?;
        let row =
            client.query_one("SELECT coalesce(max(global_position), 0) FROM events", &[]).await.map_err(db_err)?;
        Ok(row.get(0))
    }

    async fn list_streams(&self, category: &str, limit: usize) -> Result<Vec<StreamInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT stream_id, max(stream_version), min(recorded_at), max(recorded_at) FROM events \
                 WHERE starts_with(stream_id, $1) GROUP BY stream_id ORDER BY max(global_position) DESC LIMIT $2",
                &[&format!("{category}-"), &(limit as i64)],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| StreamInfo { stream_id: r.get(0), version: r.get(1), created_at: r.get(2), updated_at: r.get(3) })
            .collect())
    }

    async fn stream_head(&self, stream: &str) -> Result<Option<Head>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT version, hash FROM stream_heads WHERE stream_id = $1", &[&stream])
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| Head { version: r.get(0), hash: r.get(1) }))
    }

    async fn stream_heads(&self) -> Result<Vec<(String, Head)>> {
        let client = self.client().await?;
        let rows = client.query("SELECT stream_id, version, hash FROM stream_heads", &[]).await.map_err(db_err)?;
        Ok(rows.iter().map(|r| (r.get(0), Head { version: r.get(1), hash: r.get(2) })).collect())
    }

    async fn checkpoint(&self, name: &str) -> Result<i64> {
        let client = self.client().await?;
        let row =
            client.query_opt("SELECT position FROM checkpoints WHERE name = $1", &[&name]).await.map_err(db_err)?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    async fn wake(&self) -> Result<broadcast::Receiver<i64>> {
        let listener = self
            .inner
            .listener
            .get_or_try_init(|| async {
                let channel = format!("ltmc_events_{}", self.inner.schema).replace('"', "\"\"");
                // The first connection is made here, so a server that cannot be reached is the
                // caller's error; later ones by the listening task, which outlives them.
                let (client, conn) = listen(&self.inner.config, &channel).await?;
                let (tx, _) = broadcast::channel(1024);
                let (alive, dropped) = tokio::sync::oneshot::channel();
                tokio::spawn(keep_listening(self.inner.config.clone(), channel, client, conn, tx.clone(), dropped));
                Ok::<_, Error>(Listener { tx, _alive: alive })
            })
            .await?;
        Ok(listener.tx.subscribe())
    }
}

/// `url` with its `search_path` set to `schema` (the tables of that store live there).
pub fn url_with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}
