//! The event envelope shared by every stream, store and bus.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Largest `data` + `metadata` of one event, in bytes of JSON. Larger payloads are refused at
/// append with `store::Error::PayloadTooLarge`; agent outputs are capped well below it.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Who and what an event belongs to; stored beside the data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Metadata {
    /// Groups every event caused by one user request (a run's events share the run id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The event or command that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Who acted: `engine`, `agent:<name>`, `user:<name>`, `cli`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Session the event belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Run the event belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// An event about to be appended. Ids and timestamps are chosen by the caller so that a retried
/// append is recognised as the same events.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// UUID v7, unique across the log; also the JetStream `Nats-Msg-Id`.
    pub event_id: Uuid,
    /// PascalCase, past tense: `StepCompleted`.
    pub event_type: String,
    /// Version of the `data` shape for this event type.
    pub schema_version: i32,
    /// The event's payload.
    pub data: Value,
    /// Correlation, causation, actor, session and run.
    pub metadata: Metadata,
    /// When the engine recorded it (UTC, microsecond precision).
    pub recorded_at: DateTime<Utc>,
}

/// An event as stored in the log (table `events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordedEvent {
    /// Position in the whole log; increasing in commit order, gaps allowed.
    pub global_position: i64,
    /// The stream, e.g. `run-0192f3c4-…`.
    pub stream_id: String,
    /// 1..N within the stream, no gaps.
    pub stream_version: i64,
    /// UUID v7.
    pub event_id: Uuid,
    /// PascalCase past tense.
    pub event_type: String,
    /// Version of the `data` shape.
    pub schema_version: i32,
    /// The payload.
    pub data: Value,
    /// Correlation, causation, actor, session and run.
    pub metadata: Metadata,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// `sha256` chain hash over the previous event's hash and this event (see [`crate::hash`]).
    pub hash: String,
}

/// The `event_type` of the stand-in a store returns for a stored row it cannot read back (its
/// JSON is not JSON, its metadata not an object, ...). It cannot be the type of an appended
/// event (those are letters and digits), so nothing mistakes it for one: projections ignore
/// it, the relay does not publish it, `ltmc audit --verify` lists its stream as damaged, and
/// reading its stream alone is refused with the stream named.
pub const UNREADABLE: &str = "(unreadable)";

impl RecordedEvent {
    /// The stand-in for the unreadable row at `position`: its stream and version as far as
    /// they could be read, `data` `{"reason": reason}`, no hash.
    pub fn unreadable(position: i64, stream_id: String, stream_version: i64, reason: String) -> RecordedEvent {
        RecordedEvent {
            global_position: position,
            stream_id,
            stream_version,
            event_id: Uuid::nil(),
            event_type: UNREADABLE.to_owned(),
            schema_version: 0,
            data: serde_json::json!({ "reason": reason }),
            metadata: Metadata::default(),
            recorded_at: DateTime::UNIX_EPOCH,
            hash: String::new(),
        }
    }

    /// Whether this is the stand-in for an unreadable row ([`UNREADABLE`]).
    pub fn is_unreadable(&self) -> bool {
        self.event_type == UNREADABLE
    }

    /// Why the row is unreadable, for a stand-in.
    pub fn unreadable_reason(&self) -> Option<&str> {
        if self.is_unreadable() { self.data.get("reason").and_then(Value::as_str) } else { None }
    }
}

/// Truncates a timestamp to the microsecond, the precision both stores keep, so that the hash
/// computed before append equals the one recomputed from the stored row.
pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
