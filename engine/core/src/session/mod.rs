//! Sessions: a named group of agents working together, with the shared memory they read and
//! write. A session lives in stream `session-<name>`; every join, heartbeat, leave and memory
//! write is an event there, so who was active and what memory held are known at any position.
//!
//! ```
//! use ltmc_core::session::{Command, SessionState, Write, decide, evolve};
//! let mut s = SessionState::named("dev_001");
//! for (i, e) in decide(&s, Command::Create { description: None }).unwrap().iter().enumerate() {
//!     s = evolve(s, e, i as i64 + 1);
//! }
//! let put = Write { key: "coding_standards".into(), value: Some("pep8".into()), if_version: Some(0) };
//! let events = decide(&s, Command::Write { writer: "cli".into(), writes: vec![put] }).unwrap();
//! assert_eq!(events[0].event_type(), "MemoryWritten");
//! ```

mod decider;
mod events;
mod state;

pub use decider::{Command, MAX_KEY_LEN, MAX_TEXT_LEN, MAX_WRITES, Rejection, Write, decide, validate, validate_key};
pub use events::{
    AgentHeartbeat, AgentJoined, AgentLeft, MemoryDeleted, MemoryWritten, SessionClosed, SessionCreated, SessionEvent,
    UnknownSessionEvent,
};
pub use state::{Entry, Member, SessionState, SessionStatus, evolve};

/// Stream id of a session.
pub fn stream_id(session: &str) -> String {
    format!("session-{session}")
}
