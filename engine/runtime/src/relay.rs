//! The relay: publishes the committed log to JetStream stream `LTMC_EVENTS`, in position order.
//!
//! Postgres (or SQLite) is the truth; JetStream is a derived feed. The relay:
//! - holds a lease so one relay publishes per database: a row with an expiry that it renews as
//!   it goes, so a holder that stops making progress loses it within the lease's time to live,
//!   and sooner when its process ends (see [`lease`], decision 0014);
//! - publishes each event to `ltmc.events.<category>.<stream>.<EventType>` with
//!   `Nats-Msg-Id` = event id, `Nats-Expected-Last-Sequence` = the stream sequence its
//!   predecessor got, and the position, stream and version in headers, then awaits every ack
//!   before it checkpoints; an event too large for the server's `max_payload` goes out as
//!   consecutive parts (see [`parts`], decision 0014);
//! - keeps the JetStream stream an exact prefix of the log: the expected-last-sequence header
//!   makes the server refuse an event whose predecessor is missing, so the stream never has
//!   holes (the stream's sequence is persistent server state, unlike its last message id, which
//!   a restarted server forgets once the dedup window has passed);
//! - on start resumes from the lower of its checkpoint and the stream's tail, publishing only
//!   what lies beyond the tail, so neither a crash after publishing nor a lost tail duplicates
//!   or drops an event, however long the outage.
//!
//! Appends never wait for the relay: NATS being down only delays the feed.

pub mod lease;
pub mod parts;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use ltmc_core::RecordedEvent;
use ltmc_core::names::category;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{self, EventStore, Store};
use lease::Lease;

/// Longest time the relay's checkpoint trails what it has published while busy.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How long a relay that stops renewing keeps its lease (`relay_lease_ttl`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

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
    /// How long the lease outlives its holder's last renewal: a relay that stops making
    /// progress (stopped, hung) is replaced after at most this long. It renews every third of
    /// it.
    pub lease_ttl: Duration,
    /// Log failures (once per outage). A command that reports the relay's failure itself
    /// ([`RelayHandle::last_error`]) turns it off, so the user reads one message, not two.
    pub log_failures: bool,
    /// The stream keeps at most this many bytes, dropping its oldest messages (`nats_max_bytes`;
    /// `None`: no limit but the server's).
    pub max_bytes: Option<i64>,
    /// The stream drops messages older than this (`nats_max_age`; zero: kept for ever).
    pub max_age: Duration,
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
            lease_ttl: DEFAULT_LEASE_TTL,
            log_failures: true,
            max_bytes: None,
            max_age: Duration::ZERO,
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
    /// JetStream has no storage left for the stream: the server's `max_file_store` (or its
    /// disk) is full. Retrying succeeds only once there is room.
    #[error(
        "JetStream has no storage left for stream {stream} ({detail}); give the server more (max_file_store \
         in its jetstream block, or disk) or let the stream keep less (nats_max_bytes, nats_max_age); the relay \
         keeps trying, and the events are safe in the log"
    )]
    OutOfStorage {
        /// Stream name.
        stream: String,
        /// What the server said.
        detail: String,
    },
    /// Another relay took the lease over (this one had stopped renewing it): stand down.
    #[error("another relay ({holder}) took the lease over from this one (epoch {epoch}); standing by")]
    LeaseLost {
        /// The epoch this relay held.
        epoch: i64,
        /// The holder now.
        holder: String,
    },
}

fn nats<E: std::fmt::Display>(e: E) -> Error {
    Error::Nats(e.to_string())
}

/// Why a relay last failed, and where it stood then.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    cause: Cause,
    /// What was published when it failed: once more is, the relay got going again.
    published: i64,
}

/// The failures waiting will not mend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The stream is another database's ([`Error::Mismatch`]).
    Mismatch,
    /// JetStream has no storage left ([`Error::OutOfStorage`]).
    NoStorage,
    /// Anything else: NATS away, the store away, the lease lost.
    Other,
}

impl Cause {
    fn of(e: &Error) -> Cause {
        match e {
            Error::Mismatch { .. } => Cause::Mismatch,
            Error::OutOfStorage { .. } => Cause::NoStorage,
            _ => Cause::Other,
        }
    }
}

/// A running relay.
pub struct RelayHandle {
    published: watch::Receiver<i64>,
    leader: watch::Receiver<bool>,
    failure: Arc<Mutex<Option<Failure>>>,
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

    /// Whether this relay holds the lease (and publishes) now.
    pub fn holds_lease(&self) -> bool {
        *self.leader.borrow()
    }

    /// Why the relay is not publishing, if it is currently failing.
    pub fn last_error(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.as_ref().map(|f| f.message.clone()))
    }

    /// Whether the relay is failing because the JetStream stream holds events that are not
    /// this log's (another database relays into it): waiting will not get this log published.
    pub fn is_mismatched(&self) -> bool {
        self.stuck_on(Cause::Mismatch)
    }

    /// Whether the relay is failing because JetStream has no storage left ([`Error::OutOfStorage`]).
    pub fn is_out_of_storage(&self) -> bool {
        self.stuck_on(Cause::NoStorage)
    }

    /// The last failure was for `cause`, and nothing was published since.
    fn stuck_on(&self, cause: Cause) -> bool {
        let published = *self.published.borrow();
        self.failure.lock().is_ok_and(|f| f.as_ref().is_some_and(|f| f.cause == cause && f.published == published))
    }

    /// Stops the relay.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Starts the relay on its own task. It keeps trying (lease, NATS, stream) until stopped.
pub fn spawn(store: Store, opts: RelayOptions) -> RelayHandle {
    let (tx, rx) = watch::channel(0);
    let (leader_tx, leader) = watch::channel(false);
    // Names this relay in the lease row, for operators: which process holds it.
    let holder = format!("pid {} relay {}", std::process::id(), &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let failure = Arc::new(Mutex::new(None::<Failure>));
    let slot = failure.clone();
    let task = tokio::spawn(async move {
        let mut backoff = crate::backoff::Backoff::starting_at(Duration::from_millis(100));
        loop {
            let e = match run_once(&store, &opts, &holder, &tx, &leader_tx).await {
                Ok(()) => {
                    backoff.reset();
                    continue;
                }
                Err(e) => e,
            };
            let now = Failure { message: e.to_string(), cause: Cause::of(&e), published: *tx.borrow() };
            // Said once per outage (an outage ends when something is published), and again when
            // its cause changes (NATS came back, and then its storage filled up): a long outage
            // is not a stream of warnings.
            let new = match slot.lock() {
                Ok(mut last) => {
                    let new = last.as_ref().is_none_or(|l| l.published != now.published || l.cause != now.cause);
                    *last = Some(now.clone());
                    new
                }
                Err(_) => true,
            };
            if matches!(e, Error::LeaseLost { .. }) {
                if opts.log_failures {
                    tracing::warn!(error = %e, "relay lost its lease");
                }
                continue;
            }
            if !opts.log_failures || !new {
                tracing::debug!(error = %e, "relay still interrupted");
            } else if now.cause == Cause::NoStorage {
                tracing::error!(error = %e, "relay stopped: JetStream is out of storage");
            } else {
                tracing::warn!(error = %e, "relay interrupted; retrying until it succeeds");
            }
            backoff.wait().await;
        }
    });
    RelayHandle { published: rx, leader, failure, task }
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
        max_bytes: opts.max_bytes.unwrap_or(-1),
        max_age: opts.max_age,
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
    /// Its event id (from `Nats-Msg-Id`).
    pub event_id: Option<String>,
    /// Its JetStream sequence (0 when the stream is empty).
    pub sequence: u64,
    /// When the last message is a part of an event that has more (a relay stopped in the
    /// middle of it): where the next part starts, and the event's length.
    pub unfinished: Option<(usize, usize)>,
}

impl Tail {
    /// The position up to which every event is in the stream whole.
    pub fn done(&self) -> i64 {
        if self.unfinished.is_some() { self.position - 1 } else { self.position }
    }
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
        stream: name.clone(),
        reason: format!("message {last} has no Ltmc-Position header; another program writes to this stream"),
    })?;
    let mut event_id = header("Nats-Msg-Id");
    let mut unfinished = None;
    if let Some(part) = header(parts::PART) {
        let (offset, total) = parts::parse_part(&part).ok_or_else(|| Error::Mismatch {
            stream: name,
            reason: format!("message {last} has a malformed {} header {part:?}", parts::PART),
        })?;
        // A part's message id is `<event id>/<offset>`.
        event_id = event_id.map(|id| id.split('/').next().unwrap_or_default().to_owned());
        let end = offset + msg.payload.len();
        unfinished = (end < total).then_some((end, total));
    }
    Ok(Tail { position, event_id, sequence: last, unfinished })
}

/// Where the relay is in the stream: the sequence of its last message, and the event it must
/// finish first, if the stream ends in the middle of one (position, next offset).
struct Cursor {
    sequence: u64,
    resume: Option<(i64, usize)>,
}

async fn run_once(
    store: &Store,
    opts: &RelayOptions,
    holder: &str,
    published: &watch::Sender<i64>,
    leader: &watch::Sender<bool>,
) -> Result<(), Error> {
    let mut lease = Lease::take(store, &opts.name, holder, opts.lease_ttl).await?;
    leader.send_replace(true);
    let result = publish(store, opts, &mut lease, published).await;
    leader.send_replace(false);
    if !matches!(result, Err(Error::LeaseLost { .. })) {
        // Failing (NATS unreachable from here, say): let a relay that can publish take over now.
        lease.release().await;
    }
    result
}

async fn publish(
    store: &Store,
    opts: &RelayOptions,
    lease: &mut Lease,
    published: &watch::Sender<i64>,
) -> Result<(), Error> {
    let js = jetstream(&opts.nats_url).await?;
    let mut stream = ensure_stream(&js, opts).await?;
    let tail = stream_tail(&mut stream).await?;
    let checkpoint = store.checkpoint(&opts.name).await?;
    if tail.position > 0 {
        // The tail must be our event: the log's event at that position, same id (and, for an
        // unfinished one, the same length, so its remaining bytes continue its first ones).
        let at = store.read_all(tail.position - 1, 1).await?;
        let matches = at.first().is_some_and(|e| {
            e.global_position == tail.position
                && Some(e.event_id.to_string()) == tail.event_id
                && tail.unfinished.is_none_or(|(_, total)| serde_json::to_vec(e).is_ok_and(|b| b.len() == total))
        });
        if !matches {
            return Err(Error::Mismatch {
                stream: opts.stream_name.clone(),
                reason: format!(
                    "its last message (position {}) is not this log's event at that position; another database \
                     relays into it: give each database its own NATS prefix (LTMC_NATS_PREFIX) or stream (LTMC_NATS_STREAM and LTMC_NATS_SUBJECT_PREFIX)",
                    tail.position
                ),
            });
        }
    }
    let done = tail.done();
    let start = checkpoint.min(done);
    tracing::info!(checkpoint, tail = tail.position, unfinished = tail.unfinished.is_some(), "relay resuming");
    if done > checkpoint {
        lease.save(&opts.name, done).await?;
    }
    published.send_replace(done);
    let mut cursor =
        Cursor { sequence: tail.sequence, resume: tail.unfinished.map(|(offset, _)| (tail.position, offset)) };
    let mut sub = store.subscribe(start);
    // The checkpoint is a hint (the stream's tail is authoritative), so it is written at most
    // every CHECKPOINT_EVERY, and when the relay goes idle, rather than once per batch.
    let mut unsaved: Option<i64> = None;
    let mut saved_at = Instant::now();
    loop {
        // Renewing here, between batches and while idle, ties the lease to progress: a relay
        // stuck anywhere in this loop stops renewing and loses it.
        lease.keep(false).await?;
        let idle_save = unsaved.map(|_| Instant::now() + CHECKPOINT_EVERY);
        let until = idle_save.map_or(lease.renew_at(), |t| t.min(lease.renew_at()));
        let batch = match tokio::time::timeout_at(until.into(), sub.next_batch(opts.batch)).await {
            Ok(batch) => batch?,
            Err(_) => {
                if let Some(position) = unsaved.take() {
                    lease.save(&opts.name, position).await?;
                    saved_at = Instant::now();
                }
                continue;
            }
        };
        let mut acks = Vec::with_capacity(batch.len());
        let mut last = None;
        for e in batch.iter().filter(|e| e.global_position > done) {
            let from = match cursor.resume.take() {
                Some((position, offset)) if position == e.global_position => offset,
                _ => 0,
            };
            // A relay that was stopped or hung past its lease's deadline finds out here, before
            // it publishes, that another relay took over.
            lease.check().await?;
            // A row the store cannot read has nothing true to publish; the feed goes on past it
            // (`ltmc audit --verify` names its stream).
            if let Some(reason) = e.unreadable_reason() {
                tracing::error!(
                    position = e.global_position,
                    stream = %e.stream_id,
                    %reason,
                    "the event at this position cannot be read from the log; it is not published"
                );
            } else {
                publish_event(&js, opts, e, from, &mut cursor, &mut acks, lease).await?;
            }
            last = Some(e.global_position);
        }
        await_acks(acks, lease, &opts.stream_name).await?;
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

/// The headers of one message of event `e`; `part` is `<offset>/<total>` for a part.
fn headers(e: &RecordedEvent, msg_id: &str, expected_last_sequence: u64, part: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", msg_id);
    h.insert("Nats-Expected-Last-Sequence", expected_last_sequence.to_string().as_str());
    h.insert("Ltmc-Position", e.global_position.to_string().as_str());
    h.insert("Ltmc-Stream", e.stream_id.as_str());
    h.insert("Ltmc-Stream-Version", e.stream_version.to_string().as_str());
    h.insert("Ltmc-Event-Type", e.event_type.as_str());
    if let Some(part) = part {
        h.insert(parts::PART, part);
    }
    h
}

/// Publishes event `e` from byte `from` of its JSON: as one message when it fits the server's
/// `max_payload` (its ack joins `acks`), otherwise as parts, one at a time.
async fn publish_event(
    js: &JetStream,
    opts: &RelayOptions,
    e: &RecordedEvent,
    from: usize,
    cursor: &mut Cursor,
    acks: &mut Vec<PublishAckFuture>,
    lease: &mut Lease,
) -> Result<(), Error> {
    let body =
        serde_json::to_vec(e).map_err(|err| Error::Nats(format!("cannot encode event {}: {err}", e.event_id)))?;
    let (id, total) = (e.event_id.to_string(), body.len());
    let max = js.client().max_payload();
    let whole = headers(e, &id, cursor.sequence, None);
    if from == 0 && parts::header_len(&whole) + total <= max {
        let msg = PublishMessage::build().payload(body.into()).headers(whole);
        acks.push(js.send_publish(opts.subject(e), msg).await.map_err(nats)?);
        // Messages of one connection are stored in order, so each one's predecessor is known.
        cursor.sequence += 1;
        return Ok(());
    }
    // Sized with the longest sequence number and offset, so no part's headers are longer.
    let widest = headers(e, &format!("{id}/{total}"), u64::MAX, Some(&format!("{total}/{total}")));
    let room = max.saturating_sub(parts::header_len(&widest));
    if room < parts::MIN_PART {
        return Err(Error::Nats(format!(
            "the NATS server's max_payload ({max} bytes) leaves {room} bytes beside the headers of event {id}; the \
             relay needs at least {}: raise max_payload",
            parts::MIN_PART
        )));
    }
    // Parts go out one at a time, each acknowledged before the next: a message refused because
    // another relay published first then stops this event here, and no later part of ours can
    // land after a different relay's split of the same event.
    await_acks(std::mem::take(acks), lease, &opts.stream_name).await?;
    for range in parts::ranges(total, from, room) {
        lease.check().await?;
        let part = format!("{}/{total}", range.start);
        let h = headers(e, &format!("{id}/{}", range.start), cursor.sequence, Some(&part));
        let msg = PublishMessage::build().payload(body[range].to_vec().into()).headers(h);
        let ack = js.send_publish(opts.subject(e), msg).await.map_err(nats)?;
        cursor.sequence += 1;
        await_acks(vec![ack], lease, &opts.stream_name).await?;
    }
    Ok(())
}

/// Awaits each acknowledgement; past the lease's deadline, the lease must be renewed to go on
/// waiting (a relay whose NATS hangs does not keep the lease).
async fn await_acks(acks: Vec<PublishAckFuture>, lease: &mut Lease, stream: &str) -> Result<(), Error> {
    for ack in acks {
        let mut ack = ack.into_future();
        let acked = loop {
            match tokio::time::timeout_at(lease.deadline().into(), &mut ack).await {
                Ok(acked) => break acked,
                Err(_) => lease.keep(true).await?,
            }
        };
        match acked {
            Ok(a) if a.duplicate => {
                return Err(Error::Nats(format!("JetStream already had message {}; resynchronising", a.sequence)));
            }
            Ok(_) => {}
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                return Err(Error::Nats(format!("the stream's tail moved ({e}); resynchronising")));
            }
            Err(e) if out_of_storage(&e) => {
                return Err(Error::OutOfStorage { stream: stream.to_owned(), detail: e.to_string() });
            }
            Err(e) => return Err(nats(e)),
        }
    }
    Ok(())
}

/// Whether JetStream refused a message for want of storage (error code 10023, "insufficient
/// resources").
fn out_of_storage(e: &async_nats::jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|j| j.error_code() == async_nats::jetstream::ErrorCode::INSUFFICIENT_RESOURCES)
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
