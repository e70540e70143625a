//! A rebuild's view of the projections: the whole history replayed into empty tables.
//!
//! Replaying the log change by change writes a run's row a dozen times. Into empty tables it
//! need not: [`Replay`] folds every change of the history in memory (the same fold as the live
//! projector's batches, over a longer window) and hands out each row once, as a plain insert.
//! Rows of append-only tables (one row per event, never changed) need no folding and are
//! handed out as they come, so memory holds only the rows of tables that change.

use ltmc_core::RecordedEvent;

use super::{Change, Fold, all};

/// A from-zero replay of the log into empty tables.
pub struct Replay {
    fold: Fold,
    append_only: Vec<&'static str>,
    /// Nothing has been taken from the fold yet: the tables it writes are still empty.
    fresh: bool,
}

/// Every projection's changes of `events`, in order, unfolded.
pub fn project(events: &[RecordedEvent]) -> Vec<Change> {
    let mut out = Vec::with_capacity(events.len() * 3);
    for e in events {
        for p in all() {
            p.apply(e, &mut out);
        }
    }
    out
}

/// Row changes to write, in this order: `inserts` are rows no write has made before (plain
/// inserts, no conflict possible), `changes` apply after them with upsert and update semantics.
#[derive(Debug, Default)]
pub struct Rows {
    /// Plain inserts.
    pub inserts: Vec<Change>,
    /// Changes to apply after the inserts, in order.
    pub changes: Vec<Change>,
}

impl Default for Replay {
    fn default() -> Self {
        Replay {
            fold: Fold::default(),
            append_only: all().iter().flat_map(|p| p.append_only().iter().copied()).collect(),
            fresh: true,
        }
    }
}

impl Replay {
    /// Projects `events` (in log order, after those pushed before). Returns the rows of
    /// append-only tables, as inserts; every other change is folded and held.
    pub fn push(&mut self, events: &[RecordedEvent]) -> Vec<Change> {
        self.push_changes(project(events))
    }

    /// [`Replay::push`] for changes already projected with [`project`] (which may run on
    /// another thread: it holds no state).
    pub fn push_changes(&mut self, changes: Vec<Change>) -> Vec<Change> {
        let mut inserts = Vec::new();
        for change in changes {
            match change {
                Change::Upsert { table, .. } if self.append_only.contains(&table) => inserts.push(change),
                other => self.fold.push(other),
            }
        }
        inserts
    }

    /// [`Replay::push_changes`] within a memory bound: when more than `held_rows` rows are
    /// held afterwards, they are taken too ([`Replay::take`]) and come back after the inserts.
    /// What a rebuild writes per batch; [`Replay::take`] at the end gives the rest.
    pub fn push_within(&mut self, changes: Vec<Change>, held_rows: usize) -> Rows {
        let mut rows = Rows { inserts: self.push_changes(changes), changes: Vec::new() };
        if self.held() > held_rows {
            let taken = self.take();
            rows.inserts.extend(taken.inserts);
            rows.changes = taken.changes;
        }
        rows
    }

    /// Rows held in memory.
    pub fn held(&self) -> usize {
        self.fold.rows()
    }

    /// Everything held, emptying the replay. The first take's rows are inserts (the tables
    /// were empty); after it, what is taken may meet rows written before, so it all comes as
    /// changes.
    pub fn take(&mut self) -> Rows {
        if std::mem::replace(&mut self.fresh, false) {
            let (inserts, changes) = self.fold.take_split();
            Rows { inserts, changes }
        } else {
            Rows { inserts: Vec::new(), changes: self.fold.take().into_iter().flat_map(|(_, c)| c).collect() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Val;
    use serde_json::json;

    fn event(position: i64, event_type: &str, data: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            global_position: position,
            stream_id: "run-r1".into(),
            stream_version: position,
            event_id: uuid::Uuid::nil(),
            event_type: event_type.into(),
            schema_version: 1,
            data,
            metadata: Default::default(),
            recorded_at: chrono::DateTime::UNIX_EPOCH,
            hash: String::new(),
        }
    }

    fn col<'a>(change: &'a Change, name: &str) -> Option<&'a Val> {
        match change {
            Change::Upsert { cols, .. } => cols.iter().find(|(c, _)| *c == name).map(|(_, v)| v),
            _ => None,
        }
    }

    #[test]
    fn a_run_becomes_one_row_per_table_row_and_audit_rows_come_at_once() {
        let mut replay = Replay::default();
        let first = replay.push(&[
            event(1, "RunStarted", json!({"workflow": "w", "definition": {"pattern": "sequential", "steps": [{}]}})),
            event(2, "StepReady", json!({"step": "a"})),
        ]);
        assert_eq!(first.len(), 2, "one audit row per event, at once: {first:?}");
        let second = replay.push(&[
            event(3, "StepDispatched", json!({"step": "a", "agent": "x", "attempt": 1})),
            event(4, "StepCompleted", json!({"step": "a", "attempt": 1, "duration_ms": 5})),
            event(5, "RunCompleted", json!({"output": 1})),
        ]);
        assert_eq!(second.len(), 3);
        assert_eq!(replay.held(), 2, "the run's row and its step's row");
        let rows = replay.take();
        assert!(rows.changes.is_empty(), "every row starts with an upsert: {:?}", rows.changes);
        let run = rows.inserts.iter().find(|c| matches!(c, Change::Upsert { table: "runs", .. })).expect("a run row");
        assert_eq!(col(run, "status"), Some(&Val::Text("completed".into())));
        assert_eq!((col(run, "steps_completed"), col(run, "attempts")), (Some(&Val::Int(1)), Some(&Val::Int(1))));
        assert_eq!(col(run, "last_position"), Some(&Val::Int(5)));
        let step =
            rows.inserts.iter().find(|c| matches!(c, Change::Upsert { table: "steps", .. })).expect("a step row");
        assert_eq!(col(step, "status"), Some(&Val::Text("completed".into())));
        assert_eq!(col(step, "duration_ms"), Some(&Val::Int(5)));
        assert_eq!(replay.held(), 0);
    }

    #[test]
    fn pushing_within_a_bound_takes_what_is_held_beyond_it() {
        let mut replay = Replay::default();
        let rows = replay.push_within(project(&[event(1, "RunStarted", json!({}))]), 1);
        assert_eq!((rows.inserts.len(), replay.held()), (1, 1), "the audit row; the run held (1 is not over 1)");
        let rows = replay.push_within(project(&[event(2, "StepReady", json!({"step": "a"}))]), 1);
        assert_eq!(rows.inserts.len(), 3, "the audit row, then the run and step rows taken: {rows:?}");
        assert_eq!(replay.held(), 0);
    }

    #[test]
    fn after_the_first_take_everything_comes_as_changes() {
        let mut replay = Replay::default();
        replay.push(&[event(1, "RunStarted", json!({})), event(2, "StepReady", json!({"step": "a"}))]);
        assert_eq!(replay.take().inserts.len(), 2);
        replay.push(&[event(3, "RunCompleted", json!({}))]);
        let rows = replay.take();
        // The run's row was written by the first take: its update may not become an insert.
        assert!(rows.inserts.is_empty());
        assert!(matches!(rows.changes.as_slice(), [Change::Update { table: "runs", .. }]), "{:?}", rows.changes);
    }
}
