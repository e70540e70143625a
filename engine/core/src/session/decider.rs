//! What a command means for a session, as events. Pure: no clock, no IO.

use serde_json::Value;
use std::collections::BTreeSet;

use super::events::*;
use super::state::{SessionState, SessionStatus};
use crate::names;

/// Longest memory key accepted.
pub const MAX_KEY_LEN: usize = 128;
/// Longest writer, role, description or reason accepted, in characters.
pub const MAX_TEXT_LEN: usize = 256;
/// Most keys in one write.
pub const MAX_WRITES: usize = 1000;

/// A request to change a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Open the session (named by the state it is decided on).
    Create {
        /// What it is for.
        description: Option<String>,
    },
    /// An agent joins (again joining while in the session changes nothing).
    Join {
        /// Agent name.
        agent: String,
        /// Its role.
        role: Option<String>,
    },
    /// A member says it is still there.
    Heartbeat {
        /// Agent name.
        agent: String,
    },
    /// A member leaves.
    Leave {
        /// Agent name.
        agent: String,
    },
    /// Close the session: its members leave, and it takes no more writes.
    Close {
        /// Why.
        reason: Option<String>,
    },
    /// Write (or delete) memory keys, all or none.
    Write {
        /// Who writes (`cli`, `agent:<name>`).
        writer: String,
        /// The writes, applied in order.
        writes: Vec<Write>,
    },
}

/// One key's write in a [`Command::Write`].
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The key: 1-128 characters from `[A-Za-z0-9_.:/-]`.
    pub key: String,
    /// The new value; `None` deletes the key.
    pub value: Option<Value>,
    /// Compare-and-set: the write happens only if the key is at this version now (0 = never
    /// written).
    pub if_version: Option<u64>,
}

/// Why a session command was refused. Nothing is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// A name is not `[A-Za-z0-9_-]{1,64}`.
    #[error(transparent)]
    BadName(#[from] names::Error),
    /// A key, writer or text is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// Create: the session exists.
    #[error("session {0} already exists; `ltmc session show {0}` shows it")]
    AlreadyExists(String),
    /// The session was never created.
    #[error("no session {0}; create it with `ltmc session create {0}`")]
    NotFound(String),
    /// The session is closed.
    #[error("session {0} is closed; it takes no more members or memory writes")]
    Closed(String),
    /// The agent is not in the session.
    #[error("agent {agent} is not in session {session}; it joins with `ltmc session join {session} --agent {agent}`")]
    NotMember {
        /// Session.
        session: String,
        /// Agent.
        agent: String,
    },
    /// A compare-and-set found the key at another version.
    #[error("memory key {key} is at version {actual}, not the expected {expected}; read it again and retry")]
    VersionMismatch {
        /// The key.
        key: String,
        /// The version the writer expected.
        expected: u64,
        /// The key's version.
        actual: u64,
    },
    /// A delete of a key that has no value.
    #[error("memory key {key} has no value in session {session}; nothing to delete")]
    NoSuchKey {
        /// Session.
        session: String,
        /// The key.
        key: String,
    },
}

/// Checks a memory key: 1-128 characters from `[A-Za-z0-9_.:/-]`.
pub fn validate_key(key: &str) -> Result<(), Rejection> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/');
    if key.is_empty() {
        return Err(Rejection::Invalid("memory key is empty; use 1-128 characters from [A-Za-z0-9_.:/-]".into()));
    }
    if let Some(bad) = key.chars().find(|c| !ok_char(*c)) {
        let shown: String = key.chars().take(80).collect();
        return Err(Rejection::Invalid(format!(
            "memory key {shown:?} has the character {bad:?}; only [A-Za-z0-9_.:/-] is allowed"
        )));
    }
    if key.len() > MAX_KEY_LEN {
        let shown: String = key.chars().take(80).collect();
        return Err(Rejection::Invalid(format!(
            "memory key {shown:?}… is {} characters long; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

/// Checks free text (writer, role, description, reason): at most 256 characters, no control
/// characters.
fn validate_text(what: &str, text: &str, required: bool) -> Result<(), Rejection> {
    if required && text.trim().is_empty() {
        return Err(Rejection::Invalid(format!("{what} is empty")));
    }
    if text.chars().count() > MAX_TEXT_LEN {
        return Err(Rejection::Invalid(format!("{what} is longer than {MAX_TEXT_LEN} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(Rejection::Invalid(format!("{what} {text:?} holds a control character")));
    }
    Ok(())
}

fn opt_text(what: &str, text: &Option<String>) -> Result<(), Rejection> {
    text.as_deref().map_or(Ok(()), |t| validate_text(what, t, false))
}

/// The checks of `command` on session `session` that do not depend on the session's state (its
/// name, agent names, keys, free text), so a caller can refuse bad input before it opens the
/// log. [`decide`] makes the same checks.
pub fn validate(session: &str, command: &Command) -> Result<(), Rejection> {
    names::validate("session", session)?;
    match command {
        Command::Create { description } => opt_text("description", description),
        Command::Join { agent, role } => {
            names::validate("agent", agent)?;
            opt_text("role", role)
        }
        Command::Heartbeat { agent } | Command::Leave { agent } => Ok(names::validate("agent", agent)?),
        Command::Close { reason } => opt_text("reason", reason),
        Command::Write { writer, writes } => {
            validate_text("writer", writer, true)?;
            writes.iter().try_for_each(|w| validate_key(&w.key))
        }
    }
}

/// The events `command` produces on `state` (possibly none), or why it is refused.
pub fn decide(state: &SessionState, command: Command) -> Result<Vec<SessionEvent>, Rejection> {
    let name = || state.name.clone();
    let open = || match state.status {
        SessionStatus::Open => Ok(()),
        SessionStatus::Missing => Err(Rejection::NotFound(name())),
        SessionStatus::Closed => Err(Rejection::Closed(name())),
    };
    let member = |agent: &str| -> Result<(), Rejection> {
        names::validate("agent", agent)?;
        open()?;
        match state.members.get(agent) {
            Some(m) if m.active => Ok(()),
            _ => Err(Rejection::NotMember { session: name(), agent: agent.to_owned() }),
        }
    };
    match command {
        Command::Create { description } => {
            names::validate("session", &state.name)?;
            opt_text("description", &description)?;
            if state.status != SessionStatus::Missing {
                return Err(Rejection::AlreadyExists(name()));
            }
            Ok(vec![SessionEvent::SessionCreated(SessionCreated { session: name(), description })])
        }
        Command::Join { agent, role } => {
            names::validate("agent", &agent)?;
            opt_text("role", &role)?;
            open()?;
            match state.members.get(&agent) {
                Some(m) if m.active && m.role == role => Ok(vec![]),
                _ => Ok(vec![SessionEvent::AgentJoined(AgentJoined { agent, role })]),
            }
        }
        Command::Heartbeat { agent } => {
            member(&agent)?;
            Ok(vec![SessionEvent::AgentHeartbeat(AgentHeartbeat { agent })])
        }
        Command::Leave { agent } => {
            member(&agent)?;
            Ok(vec![SessionEvent::AgentLeft(AgentLeft { agent, reason: None })])
        }
        Command::Close { reason } => {
            opt_text("reason", &reason)?;
            open()?;
            let mut out: Vec<SessionEvent> = state
                .active_members()
                .map(|a| {
                    SessionEvent::AgentLeft(AgentLeft { agent: a.to_owned(), reason: Some("session closed".into()) })
                })
                .collect();
            out.push(SessionEvent::SessionClosed(SessionClosed { reason }));
            Ok(out)
        }
        Command::Write { writer, writes } => {
            validate_text("writer", &writer, true)?;
            open()?;
            write(state, &writer, writes)
        }
    }
}

/// The events of a write to an open session.
fn write(state: &SessionState, writer: &str, writes: Vec<Write>) -> Result<Vec<SessionEvent>, Rejection> {
    let session = state.name.clone();
    if writes.is_empty() {
        return Err(Rejection::Invalid("nothing to write: give at least one key".into()));
    }
    if writes.len() > MAX_WRITES {
        return Err(Rejection::Invalid(format!("{} keys in one write; the limit is {MAX_WRITES}", writes.len())));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        validate_key(&w.key)?;
        if !seen.insert(w.key.clone()) {
            return Err(Rejection::Invalid(format!("memory key {} is written twice in one write", w.key)));
        }
        let entry = state.memory.get(&w.key);
        let actual = entry.map_or(0, |e| e.version);
        if let Some(expected) = w.if_version
            && expected != actual
        {
            return Err(Rejection::VersionMismatch { key: w.key, expected, actual });
        }
        let version = actual + 1;
        out.push(match w.value {
            Some(value) => {
                SessionEvent::MemoryWritten(MemoryWritten { key: w.key, value, version, writer: writer.into() })
            }
            None if entry.is_some_and(|e| e.value.is_some()) => {
                SessionEvent::MemoryDeleted(MemoryDeleted { key: w.key, version, writer: writer.into() })
            }
            None => return Err(Rejection::NoSuchKey { session, key: w.key }),
        });
    }
    Ok(out)
}
