//! Events from outside an `event_driven` run.
//!
//! `ltmc emit`, [`crate::Engine::emit`] and NATS requests on `ltmc.emit.<run>.<type>` append a
//! `TriggerEmitted` event to stream `triggers-<run>`: durable before it is acknowledged, and
//! usable by a driver in any process. The run's driver reads that stream in order and records
//! each event in the run as `TriggerReceived` with its version (`seq`), so an event is taken
//! once, also across a crash.
//!
//! An acknowledged emit is never dropped: before a driver ends an event-driven run, it closes
//! the stream by appending `TriggersClosed` at the version it has read up to, and an emit
//! appends at the version it has read up to, after checking the stream is not closed. The two
//! appends expect the same version, so exactly one wins: either the emit lands first and the
//! driver takes it before ending the run, or the close lands first and the emit is refused
//! ("the run has ended"). A run resumed after a crash between the close and its end reopens
//! the stream (`TriggersReopened`).

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

use crate::driver::Error;
use crate::store::{self, EventStore, ExpectedVersion, Store, new_event};
use ltmc_core::event::Metadata;

/// Type of the events in a `triggers-<run>` stream.
pub const EVENT_TYPE: &str = "TriggerEmitted";
/// Marks a `triggers-<run>` stream closed: the run is ending and takes no more events.
pub const CLOSED: &str = "TriggersClosed";
/// Marks a closed stream open again: the run was resumed before it ended.
pub const REOPENED: &str = "TriggersReopened";
/// Most attempts at one emit or close that lose a race to another append.
const MAX_RACES: usize = 1000;
/// Largest event data accepted from outside, as JSON.
pub const MAX_DATA_BYTES: usize = 256 * 1024;
/// How often the driver looks for new events (it polls; nothing wakes it early).
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Stream of a run's external events.
pub fn stream_id(run_id: &str) -> String {
    format!("triggers-{run_id}")
}

/// NATS subject on which a program can emit `trigger` into a run (request/reply: the reply
/// says whether it was recorded), under the default prefix
/// ([`crate::workers::Names::emit_subject`]).
pub fn emit_subject(run_id: &str, trigger: &str) -> String {
    crate::workers::Names::default().emit_subject(run_id, trigger)
}

/// The data of a `TriggerEmitted` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerEmitted {
    /// Event type (a trigger of the run's workflow).
    pub trigger: String,
    /// Anything; the input of the agents it starts.
    pub data: Value,
    /// Who emitted it: `emit` (the CLI or API), `nats`.
    pub source: String,
}

/// Reads `triggers-<run>` after version `after`, calling `take(version, event)` for each event
/// in order, until `take` returns false. Polls every [`POLL_EVERY`]; a read error is retried.
pub(crate) async fn follow(store: Store, run_id: String, mut after: i64, take: impl Fn(i64, TriggerEmitted) -> bool) {
    let stream = stream_id(&run_id);
    loop {
        match store.read_stream(&stream, after, 100).await {
            Ok(events) if !events.is_empty() => {
                for e in events {
                    after = e.stream_version;
                    if e.event_type != EVENT_TYPE {
                        continue; // a close or reopen marker
                    }
                    match serde_json::from_value::<TriggerEmitted>(e.data) {
                        Ok(t) => {
                            if !take(e.stream_version, t) {
                                return;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(run = %run_id, version = after, error = %err, "unreadable trigger skipped")
                        }
                    }
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(run = %run_id, error = %e, "reading triggers; retrying"),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// What `triggers-<run>` holds after the events a run has taken.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// The stream's version (0: no stream).
    pub(crate) version: i64,
    /// Whether its last marker is a close.
    pub(crate) closed: bool,
    /// Events not taken yet, with their versions.
    pub(crate) pending: Vec<(i64, TriggerEmitted)>,
}

impl Tail {
    fn expected(&self) -> ExpectedVersion {
        if self.version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(self.version) }
    }
}

/// Reads `triggers-<run>` after version `taken` (the last one the run recorded).
pub(crate) async fn tail(store: &Store, run_id: &str, taken: i64) -> Result<Tail, store::Error> {
    let stream = stream_id(run_id);
    let mut tail = Tail { version: taken, ..Tail::default() };
    loop {
        let events = store.read_stream(&stream, tail.version, 1000).await?;
        let Some(last) = events.last() else { return Ok(tail) };
        tail.version = last.stream_version;
        for e in events {
            match e.event_type.as_str() {
                CLOSED => tail.closed = true,
                REOPENED => tail.closed = false,
                EVENT_TYPE => match serde_json::from_value::<TriggerEmitted>(e.data) {
                    Ok(t) => tail.pending.push((e.stream_version, t)),
                    Err(err) => {
                        tracing::warn!(run = %run_id, version = e.stream_version, error = %err, "unreadable trigger skipped")
                    }
                },
                _ => {}
            }
        }
    }
}

/// Appends one marker or event to `triggers-<run>` at the version `tail` read; `Ok(false)` when
/// another append took that version first.
async fn append_at(
    store: &Store,
    run_id: &str,
    tail: &Tail,
    event_type: &str,
    data: Value,
) -> Result<bool, store::Error> {
    let metadata =
        Metadata { correlation_id: Some(run_id.to_owned()), run_id: Some(run_id.to_owned()), ..Default::default() };
    let batch = [new_event(event_type, 1, data, metadata)];
    match store.append(&stream_id(run_id), tail.expected(), &batch).await {
        Ok(_) => Ok(true),
        Err(store::Error::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Closes `triggers-<run>` before the run ends, or returns the events emitted and not yet taken
/// (the run must take them first; they were acknowledged).
pub(crate) async fn close(store: &Store, run_id: &str, taken: i64) -> Result<Vec<(i64, TriggerEmitted)>, Error> {
    for _ in 0..MAX_RACES {
        let tail = tail(store, run_id, taken).await?;
        if !tail.pending.is_empty() {
            return Ok(tail.pending);
        }
        if tail.closed || append_at(store, run_id, &tail, CLOSED, Value::Null).await? {
            return Ok(Vec::new());
        }
    }
    Err(Error::Busy(stream_id(run_id)))
}

/// Opens `triggers-<run>` again when a crash came between its close and the run's end.
pub(crate) async fn reopen(store: &Store, run_id: &str, taken: i64) -> Result<(), Error> {
    for _ in 0..MAX_RACES {
        let tail = tail(store, run_id, taken).await?;
        if !tail.closed || append_at(store, run_id, &tail, REOPENED, Value::Null).await? {
            return Ok(());
        }
    }
    Err(Error::Busy(stream_id(run_id)))
}

/// Appends an emitted event unless the stream is closed; its version, or `None` when the run
/// is ending and takes no more events.
pub(crate) async fn append_emitted(
    store: &Store,
    run_id: &str,
    taken: i64,
    event: &TriggerEmitted,
) -> Result<Option<i64>, Error> {
    let data = serde_json::to_value(event).unwrap_or(Value::Null);
    for _ in 0..MAX_RACES {
        let tail = tail(store, run_id, taken).await?;
        if tail.closed {
            return Ok(None);
        }
        if append_at(store, run_id, &tail, EVENT_TYPE, data.clone()).await? {
            return Ok(Some(tail.version + 1));
        }
    }
    Err(Error::Busy(stream_id(run_id)))
}

/// The reply to a NATS emit request.
#[derive(Debug, Serialize, Deserialize)]
pub struct EmitReply {
    /// Whether the event was recorded.
    pub ok: bool,
    /// Its version in `triggers-<run>`, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// Why not, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Serves `<prefix>.emit.<run>.*` for one run until the subscription ends: each message's payload
/// (JSON, or empty for `null`) is emitted as the event named by the subject's last token, and the
/// request is answered with an [`EmitReply`].
pub(crate) async fn serve_nats(
    client: async_nats::Client,
    names: crate::workers::Names,
    engine: crate::Engine,
    run_id: String,
) {
    let mut sub = match client.subscribe(names.emit_subject(&run_id, "*")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(run = %run_id, error = %e, "cannot listen for NATS triggers");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let trigger = msg.subject.rsplit('.').next().unwrap_or_default().to_owned();
        let data = if msg.payload.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_slice::<Value>(&msg.payload).map_err(|e| format!("the payload is not JSON: {e}"))
        };
        let reply = match data {
            Ok(data) => match engine.emit(&run_id, &trigger, data, "nats").await {
                Ok(seq) => EmitReply { ok: true, seq: Some(seq), error: None },
                Err(e) => EmitReply { ok: false, seq: None, error: Some(e.to_string()) },
            },
            Err(e) => EmitReply { ok: false, seq: None, error: Some(e) },
        };
        if let Some(to) = msg.reply {
            let body = serde_json::to_vec(&reply).unwrap_or_default();
            let _ = client.publish(to, body.into()).await;
        }
    }
}
