//! A session folded from its events: whether it is open, its members, its memory.

use serde_json::Value;
use std::collections::BTreeMap;

use super::events::SessionEvent;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionStatus {
    /// No `SessionCreated` yet.
    #[default]
    Missing,
    /// Members may join and write memory.
    Open,
    /// Closed: read-only.
    Closed,
}

impl SessionStatus {
    /// `missing`, `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Missing => "missing",
            SessionStatus::Open => "open",
            SessionStatus::Closed => "closed",
        }
    }
}

/// One agent that has joined the session at some point.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its role, from its latest join.
    pub role: Option<String>,
    /// Joined and not left since.
    pub active: bool,
    /// Heartbeats since it first joined.
    pub heartbeats: u64,
}

/// One memory key.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The value; `None` once deleted.
    pub value: Option<Value>,
    /// Writes and deletes so far (0 = never written).
    pub version: u64,
    /// Who wrote (or deleted) it last.
    pub writer: String,
    /// Global position of that write.
    pub position: i64,
}

/// A session as its events left it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    /// Its name (stream `session-<name>`).
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Open, closed, or not created.
    pub status: SessionStatus,
    /// Every agent that ever joined, by name.
    pub members: BTreeMap<String, Member>,
    /// Every key ever written, by name (deleted ones have no value).
    pub memory: BTreeMap<String, Entry>,
    /// The stream's version (events folded).
    pub version: i64,
}

impl SessionState {
    /// The session `name` before any event: missing until created.
    pub fn named(name: &str) -> SessionState {
        SessionState {
            name: name.to_owned(),
            description: None,
            status: SessionStatus::Missing,
            members: BTreeMap::new(),
            memory: BTreeMap::new(),
            version: 0,
        }
    }

    /// The names of the members that are in the session now.
    pub fn active_members(&self) -> impl Iterator<Item = &str> {
        self.members.iter().filter(|(_, m)| m.active).map(|(n, _)| n.as_str())
    }

    /// The key's version (0 when never written; a deleted key keeps its version).
    pub fn key_version(&self, key: &str) -> u64 {
        self.memory.get(key).map_or(0, |e| e.version)
    }

    /// Every key that has a value now, with it.
    pub fn values(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.memory.iter().filter_map(|(k, e)| e.value.as_ref().map(|v| (k.as_str(), v)))
    }
}

/// The state after `event`, recorded at global `position`. Events the decider would never
/// produce for this state (a member leaving twice) still fold: the log is the truth.
pub fn evolve(mut state: SessionState, event: &SessionEvent, position: i64) -> SessionState {
    state.version += 1;
    match event {
        SessionEvent::SessionCreated(e) => {
            state.description.clone_from(&e.description);
            state.status = SessionStatus::Open;
        }
        SessionEvent::AgentJoined(e) => {
            let m = state.members.entry(e.agent.clone()).or_insert(Member { role: None, active: false, heartbeats: 0 });
            m.active = true;
            m.role.clone_from(&e.role);
        }
        SessionEvent::AgentHeartbeat(e) => {
            if let Some(m) = state.members.get_mut(&e.agent) {
                m.heartbeats += 1;
            }
        }
        SessionEvent::AgentLeft(e) => {
            if let Some(m) = state.members.get_mut(&e.agent) {
                m.active = false;
            }
        }
        SessionEvent::SessionClosed(_) => state.status = SessionStatus::Closed,
        SessionEvent::MemoryWritten(e) => {
            state.memory.insert(
                e.key.clone(),
                Entry { value: Some(e.value.clone()), version: e.version, writer: e.writer.clone(), position },
            );
        }
        SessionEvent::MemoryDeleted(e) => {
            state
                .memory
                .insert(e.key.clone(), Entry { value: None, version: e.version, writer: e.writer.clone(), position });
        }
    }
    state
}
