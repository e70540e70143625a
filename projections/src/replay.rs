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
