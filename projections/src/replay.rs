//! A rebuild's view of the projections: the whole history replayed into empty tables.
//!
//! Replaying the log change by change writes a run's row a dozen times. Into empty tables it
//! need not: [`Replay`] folds the changes of each row in memory (the same fold as the live
//! projector's batches) and hands the row out once, as a plain insert. Rows of append-only
//! tables (one row per event, never changed) need no folding and are handed out as they come.
//!
//! Memory holds only the rows changed lately. Rows are folded in a young generation; when it
//! has grown past [`EVICT_AFTER_ROWS`] its rows are handed out as inserts and their keys
//! remembered (as hashes). A later change of such a row (a run that spans the eviction) is
//! folded with the others of its kind in a late fold, handed out as ordinary changes when the
//! replay ends, after every insert. A table whose changes name rows by other columns than
//! before cannot be tracked by key: from then on all its changes go to the late fold, in order.

use std::collections::HashSet;

use ltmc_core::RecordedEvent;

use super::compact::{key_columns, names_row_by, row_hash, table_of};
use super::{Change, Fold, all, append_only_tables};

/// Rows the young generation may hold before they are handed out. Small enough to stay in
/// cache; large enough that few rows are still changing when it is emptied.
const EVICT_AFTER_ROWS: usize = 16_384;

/// Rows whose key hashes a replay remembers (about 10 bytes each). Past that many, it forgets
/// them and applies every later change of a changing table as an ordinary change, as if every
/// row could have been written before: slower, but its memory stays bounded.
const REMEMBER_ROWS: usize = 8_000_000;

/// A from-zero replay of the log into empty tables.
pub struct Replay {
    append_only: Vec<&'static str>,
    /// Rows never handed out, folded.
    young: Fold,
    /// Changes of rows already handed out (and of tables tracked in order), folded.
    late: Fold,
    /// Hashes of the rows handed out ([`row_hash`]); a collision only sends a new row's changes
    /// to the late fold, which is slower but writes the same rows.
    written: HashSet<u64, foldhash::fast::RandomState>,
    /// Per table, the columns its rows are named by, and whether its changes go in order to the
    /// late fold (they named rows by other columns once).
    keys: Vec<(&'static str, Vec<&'static str>, bool)>,
    /// Young rows held before they are handed out.
    evict_after: usize,
    /// Rows `written` may hold; past it, `forgetful`.
    remember: usize,
    /// Rows handed out are no longer remembered: every change of a changing table goes to the
    /// late fold.
    forgetful: bool,
}

/// Every projection's changes of `events`, in order, unfolded.
pub fn project(events: &[RecordedEvent]) -> Vec<Change> {
    let mut out = Vec::with_capacity(events.len() * 3);
    // The stand-in for a row the store cannot read changes no view: the rest of the log is
    // projected, and `ltmc audit --verify` names the damaged stream.
    for e in events.iter().filter(|e| !e.is_unreadable()) {
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
            append_only: append_only_tables(),
            young: Fold::default(),
            late: Fold::default(),
            written: HashSet::default(),
            keys: Vec::new(),
            evict_after: EVICT_AFTER_ROWS,
            remember: REMEMBER_ROWS,
            forgetful: false,
        }
    }
}

impl Replay {
    /// A replay whose young generation holds at most `rows` rows (the default is
    /// [`EVICT_AFTER_ROWS`]): fewer rows in memory, more of them changed after their insert.
    pub fn evicting_after(rows: usize) -> Replay {
        Replay { evict_after: rows, ..Replay::default() }
    }

    /// Projects `events` (in log order, after those pushed before). Returns the rows that are
    /// ready, as inserts; every other change is folded and held.
    pub fn push(&mut self, events: &[RecordedEvent]) -> Vec<Change> {
        self.push_changes(project(events))
    }

    /// [`Replay::push`] for changes already projected with [`project`] (which may run on
    /// another thread: it holds no state).
    pub fn push_changes(&mut self, changes: Vec<Change>) -> Vec<Change> {
        self.push_evicting(changes, self.evict_after)
    }

    /// [`Replay::push_changes`], handing out the young rows when there are more than
    /// `evict_after`.
    fn push_evicting(&mut self, changes: Vec<Change>, evict_after: usize) -> Vec<Change> {
        let mut inserts = Vec::new();
        for change in changes {
            if matches!(&change, Change::Upsert { table, .. } if self.append_only.contains(table)) {
                inserts.push(change);
                continue;
            }
            let hash = row_hash(&change);
            if self.in_order(&change, &mut inserts) || self.forgetful || self.written.contains(&hash) {
                self.late.push_hashed(change, hash);
            } else {
                self.young.push_hashed(change, hash);
            }
        }
        if self.young.rows() > evict_after {
            inserts.extend(self.evict_young());
        }
        inserts
    }

    /// [`Replay::push_changes`] within a memory bound: when more than `held_rows` rows are
    /// held afterwards, they are taken too ([`Replay::take`]) and come back after the inserts.
    /// The young generation then holds at most half of `held_rows`. What a rebuild writes per
    /// batch; [`Replay::take`] at the end gives the rest.
    pub fn push_within(&mut self, changes: Vec<Change>, held_rows: usize) -> Rows {
        let evict_after = self.evict_after.min(held_rows / 2);
        let mut rows = Rows { inserts: self.push_evicting(changes, evict_after), changes: Vec::new() };
        if self.held() > held_rows {
            let taken = self.take();
            rows.inserts.extend(taken.inserts);
            rows.changes = taken.changes;
        }
        rows
    }

    /// Rows held in memory.
    pub fn held(&self) -> usize {
        self.young.rows() + self.late.rows()
    }

    /// Everything held: the young rows as inserts (and what follows their first change), then
    /// the late changes. Tables may have been written before: later changes keep coming as
    /// changes.
    pub fn take(&mut self) -> Rows {
        let inserts = self.evict_young();
        let changes = self.late.take().into_iter().flat_map(|(_, c)| c).collect();
        Rows { inserts, changes }
    }

    /// Hands out the young rows as inserts, remembering them; a row's changes that did not fold
    /// into its first go to the late fold, to follow the insert.
    fn evict_young(&mut self) -> Vec<Change> {
        let (inserts, rest) = self.young.take_split();
        self.written.extend(inserts.iter().chain(&rest).map(row_hash));
        if self.written.len() > self.remember {
            self.forgetful = true;
            self.written = HashSet::default();
        }
        for change in rest {
            self.late.push(change);
        }
        inserts
    }

    /// Whether `change` belongs to a table whose changes go in order to the late fold. The
    /// first change naming a row of a table by other columns than before makes it one: the
    /// young rows are handed out first (into `inserts`), so the change follows them.
    fn in_order(&mut self, change: &Change, inserts: &mut Vec<Change>) -> bool {
        let table = table_of(change);
        match self.keys.iter().position(|(t, _, _)| *t == table) {
            None => {
                self.keys.push((table, key_columns(change), false));
                false
            }
            Some(i) if self.keys[i].2 => true,
            Some(i) if names_row_by(change, &self.keys[i].1) => false,
            Some(i) => {
                self.keys[i].2 = true;
                inserts.extend(self.evict_young());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Val;
    use serde_json::json;

    /// The upsert of run `id`'s row, with a counter at 0.
    fn run(id: &str) -> Change {
        Change::Upsert {
            table: "runs",
            key: &["run_id"],
            cols: vec![("run_id", Val::Text(id.into())), ("n", Val::Int(0))],
        }
    }

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
    fn a_run_becomes_one_row_per_table_row() {
        let mut replay = Replay::default();
        let first = replay.push(&[
            event(1, "RunStarted", json!({"workflow": "w", "definition": {"pattern": "sequential", "steps": [{}]}})),
            event(2, "StepReady", json!({"step": "a"})),
        ]);
        assert!(first.is_empty(), "both rows are still changing: {first:?}");
        let second = replay.push(&[
            event(3, "StepDispatched", json!({"step": "a", "agent": "x", "attempt": 1})),
            event(4, "StepCompleted", json!({"step": "a", "attempt": 1, "duration_ms": 5})),
            event(5, "RunCompleted", json!({"output": 1})),
        ]);
        assert!(second.is_empty(), "{second:?}");
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
        let bump = |id: &str| Change::Update {
            table: "runs",
            key: vec![("run_id", Val::Text(id.into()))],
            set: vec![("n", crate::Set::Add(1))],
        };
        let mut replay = Replay::default();
        // Within 4 rows, the young generation holds 2.
        let rows = replay.push_within(vec![run("a"), run("b")], 4);
        assert_eq!((rows.inserts.len(), replay.held()), (0, 2), "two young rows are not over 2");
        let rows = replay.push_within(vec![run("c")], 4);
        assert_eq!((rows.inserts.len(), replay.held()), (3, 0), "three are: handed out");
        let rows = replay.push_within(vec![bump("a"), bump("b"), run("d")], 4);
        assert!(rows.inserts.is_empty() && rows.changes.is_empty(), "{rows:?}");
        assert_eq!(replay.held(), 3, "two late rows, one young");
        let rows = replay.push_within(vec![bump("c"), run("e")], 4);
        assert_eq!(rows.inserts, vec![run("d"), run("e")], "over the bound, the young rows go out as inserts");
        assert_eq!(rows.changes, vec![bump("a"), bump("b"), bump("c")], "and the late ones as changes");
        assert_eq!(replay.held(), 0);
    }

    #[test]
    fn rows_handed_out_take_their_later_changes_as_changes() {
        let mut replay = Replay::default();
        replay.push(&[event(1, "RunStarted", json!({})), event(2, "StepReady", json!({"step": "a"}))]);
        assert_eq!(replay.take().inserts.len(), 2);
        replay.push(&[event(3, "RunCompleted", json!({}))]);
        let rows = replay.take();
        // The run's row was handed out by the first take: its update may not become an insert.
        assert!(rows.inserts.is_empty());
        assert!(matches!(rows.changes.as_slice(), [Change::Update { table: "runs", .. }]), "{:?}", rows.changes);
    }

    #[test]
    fn young_rows_are_handed_out_as_inserts_and_later_changes_follow_them() {
        let mut replay = Replay::evicting_after(2);
        let first = replay.push(&[
            event(1, "RunStarted", json!({})),
            event(2, "StepReady", json!({"step": "a"})),
            event(3, "StepReady", json!({"step": "b"})),
        ]);
        // The run and its two steps: more than two young rows.
        assert_eq!(first.len(), 3, "{first:?}");
        assert_eq!(replay.held(), 0);
        let second = replay.push(&[event(4, "RunCompleted", json!({}))]);
        assert!(second.is_empty(), "the run's row was handed out: {second:?}");
        assert_eq!(replay.held(), 1, "the run's late update");
        let rows = replay.take();
        assert!(rows.inserts.is_empty(), "{:?}", rows.inserts);
        assert!(matches!(rows.changes.as_slice(), [Change::Update { table: "runs", .. }]), "{:?}", rows.changes);
    }

    #[test]
    fn a_table_naming_rows_by_other_columns_goes_in_order_after_its_young_rows() {
        let up = |id: &str| Change::Upsert {
            table: "runs",
            key: &["run_id"],
            cols: vec![("run_id", Val::Text(id.into())), ("status", Val::Text("running".into()))],
        };
        let by_status = Change::Update {
            table: "runs",
            key: vec![("status", Val::Text("running".into()))],
            set: vec![("status", crate::Set::To(Val::Text("stopped".into())))],
        };
        let mut replay = Replay::default();
        let inserts = replay.push_changes(vec![up("a"), by_status.clone(), up("b")]);
        assert_eq!(inserts, vec![up("a")], "the young row goes out before the change");
        let rows = replay.take();
        assert!(rows.inserts.is_empty());
        assert_eq!(rows.changes, vec![by_status, up("b")], "in log order, after the insert");
    }

    #[test]
    fn replaying_in_any_windows_writes_what_the_changes_write() {
        use crate::compact::tests::{Table, apply, random, random_changes};
        let mut next = random(0x9e37_79b9_7f4a_7c15);
        for _ in 0..1_000 {
            let batches: Vec<Vec<Change>> = (0..next(5) + 1).map(|_| random_changes(&mut next)).collect();
            let mut plain = Table::new();
            batches.iter().flatten().for_each(|c| apply(&mut plain, c));
            let mut replay = Replay::evicting_after(next(4) as usize);
            replay.remember = [0, 1, 3, usize::MAX][next(4) as usize];
            let held_rows = [1, 2, 5, usize::MAX][next(4) as usize];
            let mut replayed = Table::new();
            let mut write = |rows: Rows| {
                for c in &rows.inserts {
                    assert!(matches!(c, Change::Upsert { .. }));
                    assert!(!replayed.contains_key(&crate::compact::row_of(c)), "an insert met a row: {batches:?}");
                    apply(&mut replayed, c);
                }
                rows.changes.iter().for_each(|c| apply(&mut replayed, c));
            };
            for batch in &batches {
                write(replay.push_within(batch.clone(), held_rows));
            }
            write(replay.take());
            assert_eq!(replay.held(), 0);
            let nulls_as_absent = |t: &mut Table| t.values_mut().for_each(|r| r.retain(|_, v| *v != Val::Null));
            nulls_as_absent(&mut plain);
            nulls_as_absent(&mut replayed);
            assert_eq!(plain, replayed, "{batches:?}");
        }
    }

    #[test]
    fn past_the_rows_it_remembers_every_change_comes_as_a_change() {
        let mut replay = Replay::evicting_after(1);
        replay.remember = 2;
        assert_eq!(replay.push_changes(vec![run("a"), run("b")]), vec![run("a"), run("b")]);
        assert!(!replay.forgetful, "two rows remembered");
        assert_eq!(replay.push_changes(vec![run("c"), run("d")]), vec![run("c"), run("d")]);
        assert!(replay.forgetful && replay.written.is_empty(), "four are past two: forgotten");
        assert!(replay.push_changes(vec![run("e"), run("a")]).is_empty(), "new or not, it may have been written");
        assert_eq!(replay.take().changes, vec![run("e"), run("a")]);
    }
}
