//! The events of a session stream (`session-<name>`): its lifecycle, who takes part, and the
//! shared memory its agents read and write. Each is stored as `event_type` + `data`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A session was opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionCreated {
    /// The session's name (`[A-Za-z0-9_-]{1,64}`).
    pub session: String,
    /// What the session is for (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An agent joined the session (or joined again after leaving).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentJoined {
    /// Agent name.
    pub agent: String,
    /// Its role in the session (free text: `reviewer`, `tester`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A member said it is still there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentHeartbeat {
    /// Agent name.
    pub agent: String,
}

/// A member left (by itself, or because the session closed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentLeft {
    /// Agent name.
    pub agent: String,
    /// Why, when not by its own choice (`session closed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The session was closed: no more members or memory writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionClosed {
    /// Why (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A memory key was given a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryWritten {
    /// The key.
    pub key: String,
    /// The new value (any JSON).
    pub value: Value,
    /// The key's version after this write: 1 for its first write, +1 for each write or delete.
    pub version: u64,
    /// Who wrote it (`agent:<name>`, `cli`, `run:<id>/<step>`).
    pub writer: String,
}

/// A memory key was removed; its version keeps counting if it is written again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemoryDeleted {
    /// The key.
    pub key: String,
    /// The key's version after the delete.
    pub version: u64,
    /// Who deleted it.
    pub writer: String,
}

/// Every event of a session stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event_type", content = "data")]
pub enum SessionEvent {
    /// See [`SessionCreated`].
    SessionCreated(SessionCreated),
    /// See [`AgentJoined`].
    AgentJoined(AgentJoined),
    /// See [`AgentHeartbeat`].
    AgentHeartbeat(AgentHeartbeat),
    /// See [`AgentLeft`].
    AgentLeft(AgentLeft),
    /// See [`SessionClosed`].
    SessionClosed(SessionClosed),
    /// See [`MemoryWritten`].
    MemoryWritten(MemoryWritten),
    /// See [`MemoryDeleted`].
    MemoryDeleted(MemoryDeleted),
}

/// A stored event that is not a session event, or whose data does not match its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_type} cannot be read as a session event: {reason}")]
pub struct UnknownSessionEvent {
    /// The stored type.
    pub event_type: String,
    /// Why it failed to parse.
    pub reason: String,
}

impl SessionEvent {
    /// Schema version of every session event's data.
    pub const SCHEMA_VERSION: i32 = 1;

    /// The stored `event_type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            SessionEvent::SessionCreated(_) => "SessionCreated",
            SessionEvent::AgentJoined(_) => "AgentJoined",
            SessionEvent::AgentHeartbeat(_) => "AgentHeartbeat",
            SessionEvent::AgentLeft(_) => "AgentLeft",
            SessionEvent::SessionClosed(_) => "SessionClosed",
            SessionEvent::MemoryWritten(_) => "MemoryWritten",
            SessionEvent::MemoryDeleted(_) => "MemoryDeleted",
        }
    }

    /// The stored `data`.
    pub fn data(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Reads a stored event back.
    pub fn from_parts(event_type: &str, data: &Value) -> Result<SessionEvent, UnknownSessionEvent> {
        serde_json::from_value(serde_json::json!({ "event_type": event_type, "data": data }))
            .map_err(|e| UnknownSessionEvent { event_type: event_type.to_owned(), reason: e.to_string() })
    }
}
