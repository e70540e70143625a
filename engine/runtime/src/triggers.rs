//! Events from outside an `event_driven` run.
//!
//! `ltmc emit`, [`crate::Engine::emit`] and NATS requests on `ltmc.emit.<run>.<type>` append a
//! `TriggerEmitted` event to stream `triggers-<run>`: durable before it is acknowledged, and
//! usable by a driver in any process. The run's driver reads that stream in order and records
//! each event in the run as `TriggerReceived` with its version (`seq`), so an event is taken
//! once, also across a crash.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

use crate::store::{EventStore, Store};

/// Type of the events in a `triggers-<run>` stream.
pub const EVENT_TYPE: &str = "TriggerEmitted";
/// Largest event data accepted from outside, as JSON.
pub const MAX_DATA_BYTES: usize = 256 * 1024;
/// How often the driver looks for new events (it polls; nothing wakes it early).
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// Stream of a run's external events.
pub fn stream_id(run_id: &str) -> String {
    format!("triggers-{run_id}")
}

/// NATS subject on which a program can emit `trigger` into a run (request/reply: the reply
/// says whether it was recorded).
pub fn emit_subject(run_id: &str, trigger: &str) -> String {
    format!("ltmc.emit.{run_id}.{trigger}")
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

/// Serves `ltmc.emit.<run>.*` for one run until the subscription ends: each message's payload
/// (JSON, or empty for `null`) is emitted as the event named by the subject's last token, and the
/// request is answered with an [`EmitReply`].
pub(crate) async fn serve_nats(client: async_nats::Client, engine: crate::Engine, run_id: String) {
    let mut sub = match client.subscribe(format!("ltmc.emit.{run_id}.*")).await {
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
