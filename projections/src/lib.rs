//! LTMC's SQL views, as pure functions from events to row changes.
//!
//! Each projection maps an event to [`Change`]s on its tables, once; the runtime's projector
//! turns them into parameterised SQL for Postgres or SQLite and applies a batch of them in the
//! same transaction as the checkpoint. No IO here: a projection is tested by feeding it events.

mod change;
mod compact;
mod handoffs;
mod memory;
mod replay;
mod runs;
mod sessions;
mod steps;

pub use change::{Change, Set, Val};
pub use compact::{Fold, compact};
pub use replay::{Replay, Rows, project};

use ltmc_core::RecordedEvent;

/// One view: the tables it owns and how an event changes them.
pub trait Projection: Sync {
    /// Name shown by `ltmc projections status`.
    fn name(&self) -> &'static str;
    /// Tables it writes (cleared by a rebuild).
    fn tables(&self) -> &'static [&'static str];
    /// The row changes `event` makes, appended to `out` (none for events it ignores).
    fn apply(&self, event: &RecordedEvent, out: &mut Vec<Change>);
    /// Those of its tables that are append-only: each row is written once, by an upsert keyed by
    /// the position of the event it records, and never changed. A rebuild streams their rows
    /// out instead of holding them ([`Replay`]).
    fn append_only(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Every projection, in the order their changes are applied.
pub fn all() -> [&'static dyn Projection; 5] {
    [&runs::Runs, &steps::Steps, &handoffs::Handoffs, &sessions::Sessions, &memory::Memory]
}

/// Every table the projections write (what a rebuild empties).
pub fn tables() -> Vec<&'static str> {
    all().iter().flat_map(|p| p.tables().iter().copied()).collect()
}

/// The tables every projection writes only once per row ([`Projection::append_only`]).
pub fn append_only_tables() -> Vec<&'static str> {
    all().iter().flat_map(|p| p.append_only().iter().copied()).collect()
}

/// The changes of a batch of events, for every projection, folded by [`compact`].
pub fn changes(events: &[RecordedEvent]) -> Vec<Change> {
    compact(project(events))
}

/// The run id of a `run-<id>` stream.
pub(crate) fn run_of(stream_id: &str) -> Option<&str> {
    stream_id.strip_prefix("run-")
}

/// The session name of a `session-<name>` stream.
pub(crate) fn session_of(stream_id: &str) -> Option<&str> {
    stream_id.strip_prefix("session-")
}

/// A string field of an event's data.
pub(crate) fn text(e: &RecordedEvent, field: &str) -> Val {
    e.data.get(field).and_then(|v| v.as_str()).map_or(Val::Null, |s| Val::Text(s.to_owned()))
}
