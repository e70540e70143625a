//! The relay: publishes the committed log to JetStream stream `LTMC_EVENTS`, in position order.
//!
//! Postgres (or SQLite) is the truth; JetStream is a derived feed. The relay:
//! - holds a lease so one relay publishes per database (an advisory lock on Postgres, a file
//!   lock on SQLite; both end with the holder's process);
//! - publishes each event to `ltmc.events.<category>.<stream>.<EventType>` with
//!   `Nats-Msg-Id` = event id, `Nats-Expected-Last-Sequence` = the stream sequence its
//!   predecessor got, and the position, stream and version in headers, then awaits every ack
//!   before it checkpoints;
//! - keeps the JetStream stream an exact prefix of the log: the expected-last-sequence header
//!   makes the server refuse an event whose predecessor is missing, so the stream never has
//!   holes (the stream's sequence is persistent server state, unlike its last message id, which
//!   a restarted server forgets once the dedup window has passed);
//! - on start resumes from the lower of its checkpoint and the stream's tail, publishing only
//!   what lies beyond the tail, so neither a crash after publishing nor a lost tail duplicates
//!   or drops an event, however long the outage.
//!
//! Appends never wait for the relay: NATS being down only delays the feed.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use ltmc_core::RecordedEvent;
use ltmc_core::names::category;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{self, EventStore, Store};

/// Longest time the relay's checkpoint trails what it has published while busy.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// NATS server URL.
    pub nats_url: String,
    /// JetStream stream name.
    pub stream_name: String,
    /// Subject prefix; events go to `<prefix>.<category>.<stream>.<EventType>`.
    pub subject_prefix: String,
    /// Most events published before awaiting their acks.
    pub batch: usize,
    /// Checkpoint and lease name.
    pub name: String,
    /// After a short batch, wait this long before reading again so that events appended in the
    /// meantime go out together: fewer reads and acks while the log is busy, at the price of at
    /// most this much extra delay.
    pub coalesce: Duration,
    /// JetStream's `Nats-Msg-Id` de-duplication window. The relay does not rely on it (it
    /// resumes past the stream's tail), it is a second line of defence.
    pub duplicate_window: Duration,
}

impl RelayOptions {
    /// The standard stream `LTMC_EVENTS` on `ltmc.events.>`.
    pub fn new(nats_url: &str) -> RelayOptions {
        RelayOptions {
            nats_url: nats_url.to_owned(),
            stream_name: "LTMC_EVENTS".into(),
            subject_prefix: "ltmc.events".into(),
            batch: 256,
            name: "relay".into(),
            coalesce: Duration::from_millis(5),
            duplicate_window: Duration::from_secs(120),
        }
    }

    /// The subject of one event.
    pub fn subject(&self, e: &RecordedEvent) -> String {
        format!("{}.{}.{}.{}", self.subject_prefix, category(&e.stream_id), e.stream_id, e.event_type)
    }
}

/// Relay errors (all retried by the relay loop; surfaced in logs and to tests).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS or JetStream refused or failed.
    #[error("NATS: {0}")]
    Nats(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The JetStream stream holds something the log does not.
    #[error("JetStream stream {stream} does not match the log: {reason}")]
    Mismatch {
        /// Stream name.
        stream: String,
        /// What differs.
        reason: String,
    },
}

fn nats<E: std::fmt::Display>(e: E) -> Error {
    Error::Nats(e.to_string())
}

/// A running relay.
pub struct RelayHandle {
    published: watch::Receiver<i64>,
    last_error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Highest position known to be in JetStream.
    pub fn published(&self) -> i64 {
        *self.published.borrow()
    }

    /// Waits until `position` is in JetStream, or `timeout` passes; returns whether it is.
    pub async fn wait_for(&mut self, position: i64, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.published.wait_for(|p| *p >= position)).await.is_ok_and(|r| r.is_ok())
    }

    /// Why the relay is not publishing, if it is currently failing.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Stops the relay.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts the relay on its own task. It keeps trying (lease, NATS, stream) until stopped.
pub fn spawn(store: Store, opts: RelayOptions) -> RelayHandle {
    let (tx, rx) = watch::channel(0);
    let last_error = Arc::new(Mutex::new(None));
    let error_slot = last_error.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            match run_once(&store, &opts, &tx).await {
                Ok(()) => (backoff, failures) = (Duration::from_millis(100), 0),
                Err(e) => {
                    // Say it once; a long outage is not a stream of warnings.
                    failures += 1;
                    if let Ok(mut slot) = error_slot.lock() {
                        *slot = Some(e.to_string());
                    }
                    if failures == 1 {
                        tracing::warn!(error = %e, "relay interrupted; retrying until it succeeds");
                    } else {
                        tracing::debug!(error = %e, failures, "relay still interrupted");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    });
    RelayHandle { published: rx, last_error, task }
}

enum Lease {
    Pg(store::postgres::PgLease),
    Sqlite { _guard: store::sqlite::SqliteLease, store: store::sqlite::SqliteStore },
}

impl Lease {
    async fn save(&self, name: &str, position: i64) -> Result<(), Error> {
        match self {
            Lease::Pg(l) => l.save_checkpoint(name, position).await?,
            Lease::Sqlite { store, .. } => store.save_checkpoint(name, position).await?,
        }
        Ok(())
    }
}

async fn take_lease(store: &Store, name: &str) -> Result<Lease, Error> {
    loop {
        let lease = match store {
            Store::Postgres(s) => s.try_lease(name).await?.map(Lease::Pg),
            Store::Sqlite(s) => s.try_lease(name).await?.map(|l| Lease::Sqlite { _guard: l, store: s.clone() }),
        };
        if let Some(l) = lease {
            return Ok(l);
        }
        // Another relay publishes for this database; stand by.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates or updates the event stream.
pub async fn ensure_stream(js: &jetstream::Context, opts: &RelayOptions) -> Result<stream::Stream, Error> {
    let config = stream::Config {
        name: opts.stream_name.clone(),
        subjects: vec![format!("{}.>", opts.subject_prefix)],
        storage: stream::StorageType::File,
        duplicate_window: opts.duplicate_window,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    };
    js.create_or_update_stream(config).await.map_err(nats)?;
    js.get_stream(&opts.stream_name).await.map_err(nats)
}

/// The last message of the stream: its log position, event id and stream sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// Global position of the event in the last message (0 when the stream is empty).
    pub position: i64,
    /// Its event id (`Nats-Msg-Id`).
    pub event_id: Option<String>,
    /// Its JetStream sequence (0 when the stream is empty).
    pub sequence: u64,
}

/// Reads the stream's tail.
pub async fn stream_tail(stream: &mut stream::Stream) -> Result<Tail, Error> {
    let name = stream.cached_info().config.name.clone();
    let last = stream.info().await.map_err(nats)?.state.last_sequence;
    if last == 0 {
        return Ok(Tail::default());
    }
    let msg = stream.get_raw_message(last).await.map_err(nats)?;
    let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
    let position = header("Ltmc-Position").and_then(|p| p.parse::<i64>().ok()).ok_or_else(|| Error::Mismatch {
        stream: name,
        reason: format!("message {last} has no Ltmc-Position header; another program writes to this stream"),
    })?;
    Ok(Tail { position, event_id: header("Nats-Msg-Id"), sequence: last })
}

async fn run_once(store: &Store, opts: &RelayOptions, published: &watch::Sender<i64>) -> Result<(), Error> {
    let lease = take_lease(store, &opts.name).await?;
    let js = jetstream(&opts.nats_url).await?;
    let mut stream = ensure_stream(&js, opts).await?;
    let Tail { position: tail, event_id: tail_id, sequence: mut last_sequence } = stream_tail(&mut stream).await?;
    let checkpoint = store.checkpoint(&opts.name).await?;
    let start = checkpoint.min(tail);
    if tail > 0 {
        // The tail must be our event: the log's event at that position, same id.
        let at = store.read_all(tail - 1, 1).await?;
        let matches = at.first().is_some_and(|e| e.global_position == tail && Some(e.event_id.to_string()) == tail_id);
        if !matches {
            return Err(Error::Mismatch {
                stream: opts.stream_name.clone(),
                reason: format!(
                    "its last message (position {tail}) is not this log's event at that position; another database \
                     relays into it: give each database its own stream (LTMC_NATS_STREAM, LTMC_NATS_SUBJECT_PREFIX)"
                ),
            });
        }
    }
    tracing::info!(checkpoint, tail, "relay resuming");
    if tail > checkpoint {
        lease.save(&opts.name, tail).await?;
    }
    published.send_replace(tail);
    let mut sub = store.subscribe(start);
    // The checkpoint is a hint (the stream's tail is authoritative), so it is written at most
    // every CHECKPOINT_EVERY, and when the relay goes idle, rather than once per batch.
    let mut unsaved: Option<i64> = None;
    let mut saved_at = Instant::now();
    loop {
        let batch = match unsaved {
            Some(position) => match tokio::time::timeout(CHECKPOINT_EVERY, sub.next_batch(opts.batch)).await {
                Ok(batch) => batch?,
                Err(_) => {
                    lease.save(&opts.name, position).await?;
                    (unsaved, saved_at) = (None, Instant::now());
                    continue;
                }
            },
            None => sub.next_batch(opts.batch).await?,
        };
        let mut acks = Vec::with_capacity(batch.len());
        let mut last = None;
        for e in batch.iter().filter(|e| e.global_position > tail) {
            let mut headers = HeaderMap::new();
            headers.insert("Ltmc-Position", e.global_position.to_string().as_str());
            headers.insert("Ltmc-Stream", e.stream_id.as_str());
            headers.insert("Ltmc-Stream-Version", e.stream_version.to_string().as_str());
            headers.insert("Ltmc-Event-Type", e.event_type.as_str());
            let msg = jetstream::message::PublishMessage::build()
                .payload(serde_json::to_vec(e).unwrap_or_default().into())
                .headers(headers)
                .message_id(e.event_id.to_string())
                .expected_last_sequence(last_sequence);
            acks.push(js.send_publish(opts.subject(e), msg).await.map_err(nats)?);
            // Messages of one connection are stored in order, so each one's predecessor is known.
            last_sequence += 1;
            last = Some(e.global_position);
        }
        for ack in acks {
            match ack.await {
                Ok(a) if a.duplicate => {
                    return Err(Error::Nats(format!("JetStream already had message {}; resynchronising", a.sequence)));
                }
                Ok(_) => {}
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(Error::Nats(format!("the stream's tail moved ({e}); resynchronising")));
                }
                Err(e) => return Err(nats(e)),
            }
        }
        if let Some(last) = last {
            published.send_replace(last);
            unsaved = Some(last);
            if saved_at.elapsed() >= CHECKPOINT_EVERY {
                lease.save(&opts.name, last).await?;
                (unsaved, saved_at) = (None, Instant::now());
            }
        }
        if batch.len() < opts.batch && !opts.coalesce.is_zero() {
            tokio::time::sleep(opts.coalesce).await;
        }
    }
}

/// A JetStream context.
pub type JetStream = jetstream::Context;

/// Connects to NATS and returns a JetStream context.
pub async fn jetstream(url: &str) -> Result<JetStream, Error> {
    let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .map_err(|_| Error::Nats(format!("connecting to {url} timed out")))?
        .map_err(nats)?;
    Ok(jetstream::new(client))
}
