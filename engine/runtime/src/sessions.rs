//! Sessions and shared memory over the event store: the seed's `SharedSessionManager` and
//! `CrossAgentMemoryHandler`. Each command folds `session-<name>`, asks the pure decider for
//! events and appends them at the version it folded; a concurrent writer makes the append
//! conflict, and the command is decided again on the new state (so compare-and-set stays exact).

use ltmc_core::session::{self, Command, Rejection, SessionEvent, SessionState, UnknownSessionEvent, Write, evolve};
use ltmc_core::{Metadata, names};
use serde_json::{Map, Value};

use crate::store::{self, EventStore, ExpectedVersion, Store, new_event};

/// Appends retried after a conflict before giving up.
const MAX_CONFLICT_RETRIES: usize = 20;

/// Session errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The command was refused; nothing was written.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A stored event does not read back as a session event.
    #[error(transparent)]
    Unknown(#[from] UnknownSessionEvent),
    /// Writers kept changing the session under this command.
    #[error("session {0} changed {MAX_CONFLICT_RETRIES} times while this command was decided; try again")]
    Contended(String),
}

/// Sessions in one store. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    store: Store,
}

impl Sessions {
    /// Sessions kept in `store`.
    pub fn new(store: Store) -> Sessions {
        Sessions { store }
    }

    /// Folds session `name` from the log, up to global position `until` (all when `None`).
    pub async fn load_until(&self, name: &str, until: Option<i64>) -> Result<SessionState, Error> {
        names::validate("session", name).map_err(Rejection::from)?;
        // Checked like a run's: a session whose last writes were deleted would otherwise show
        // older values as current, and a compare-and-set would pass against them.
        let events = store::read_stream_verified(&self.store, &session::stream_id(name)).await?;
        let mut state = SessionState::named(name);
        for e in events.iter().take_while(|e| until.is_none_or(|u| e.global_position <= u)) {
            state = evolve(state, &SessionEvent::from_parts(&e.event_type, &e.data)?, e.global_position);
        }
        Ok(state)
    }

    /// Folds session `name` from the log.
    pub async fn load(&self, name: &str) -> Result<SessionState, Error> {
        self.load_until(name, None).await
    }

    /// Decides `command` on the session and appends its events; returns the state after them.
    /// `actor` goes into each event's metadata.
    pub async fn execute(&self, name: &str, command: Command, actor: &str) -> Result<SessionState, Error> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let state = self.load(name).await?;
            let events = session::decide(&state, command.clone())?;
            if events.is_empty() {
                return Ok(state);
            }
            let metadata = Metadata {
                correlation_id: Some(session::stream_id(name)),
                actor: Some(actor.to_owned()),
                session_id: Some(name.to_owned()),
                ..Default::default()
            };
            let batch: Vec<_> = events
                .iter()
                .map(|e| new_event(e.event_type(), SessionEvent::SCHEMA_VERSION, e.data(), metadata.clone()))
                .collect();
            let expected =
                if state.version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(state.version) };
            match self.store.append(&session::stream_id(name), expected, &batch).await {
                Ok(appended) if appended.last_position - appended.first_position + 1 == events.len() as i64 => {
                    let positions = appended.first_position..;
                    return Ok(positions.zip(&events).fold(state, |s, (position, e)| evolve(s, e, position)));
                }
                // Positions may have gaps: read back where the events landed.
                Ok(_) => return self.load(name).await,
                Err(store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended(name.to_owned()))
    }

    /// Opens a new session.
    pub async fn create(&self, name: &str, description: Option<String>, actor: &str) -> Result<SessionState, Error> {
        self.execute(name, Command::Create { description }, actor).await
    }

    /// The seed's `store_shared_context`: writes every key of `context` (an object) at once.
    pub async fn store_shared_context(
        &self,
        name: &str,
        context: Map<String, Value>,
        writer: &str,
    ) -> Result<SessionState, Error> {
        let writes = context.into_iter().map(|(key, v)| Write { key, value: Some(v), if_version: None }).collect();
        self.execute(name, Command::Write { writer: writer.to_owned(), writes }, writer).await
    }

    /// The seed's `get_shared_context`: the key's current value (`None` when it has none),
    /// read from the log, so a write is visible to the next read.
    pub async fn get_shared_context(&self, name: &str, key: &str) -> Result<Option<Value>, Error> {
        session::validate_key(key)?;
        let state = self.load(name).await?;
        if state.status == session::SessionStatus::Missing {
            return Err(Rejection::NotFound(name.to_owned()).into());
        }
        Ok(state.memory.get(key).and_then(|e| e.value.clone()))
    }

    /// The seed's `force_sync`: returns once the SQL views (`memory`, `sessions`, …) include
    /// every event committed before the call, applying them itself if no projector has; returns
    /// the position they include.
    pub async fn force_sync(&self) -> Result<i64, Error> {
        Ok(crate::projector::catch_up(&self.store).await?)
    }
}
