//! Folding a batch of row changes into fewer with the same effect, ordered so that changes of
//! one shape sit together (the adapters execute a run of one shape as one statement).
//!
//! Changes to different tables are independent (no projection reads another table), and so are
//! changes to different rows of one table when every change names its row by the table's key:
//! each row's changes keep their order, rows may interleave freely. Within a row, an update is
//! folded into the upsert before it when every column it sets was written by the upsert (the
//! row's value is then known), and into the update before it when the two combine into one
//! (`To` then `Add` of an integer, `Add` then `Add`, anything then `To`, …); what cannot be
//! folded stays, in order. The rows' first changes are then emitted, sorted by shape, then their
//! second changes, and so on. A batch of runs becomes about one statement per table and shape.

use std::collections::HashMap;

use super::{Change, Set, Val};

/// The changes, per table in first-seen order, folded and grouped by shape as described above.
pub fn compact(changes: Vec<Change>) -> Vec<Change> {
    let mut fold = Fold::default();
    changes.into_iter().for_each(|c| fold.push(c));
    fold.take().into_iter().flat_map(|(_, t)| t).collect()
}

/// [`compact`], incrementally: changes are folded as they are pushed, and [`Fold::take`] hands
/// out the result so far. A rebuild folds the whole history this way ([`crate::Replay`]).
#[derive(Default)]
pub struct Fold {
    tables: Vec<(&'static str, TableFold)>,
}

impl Fold {
    /// Folds `change` into what is held.
    pub fn push(&mut self, change: Change) {
        let hash = row_hash(&change);
        self.push_hashed(change, hash)
    }

    /// [`Fold::push`] for a change whose [`row_hash`] is known.
    pub(crate) fn push_hashed(&mut self, change: Change, hash: u64) {
        let table = table_of(&change);
        let i = match self.tables.iter().position(|(t, _)| *t == table) {
            Some(i) => i,
            None => {
                self.tables.push((table, TableFold::default()));
                self.tables.len() - 1
            }
        };
        self.tables[i].1.push(change, hash);
    }

    /// Rows held (changes not yet taken, counted by the row they address).
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|(_, t)| t.rows.len() + t.done.len()).sum()
    }

    /// Everything held, per table (first-seen order): each table's changes folded and emitted
    /// layer by layer, sorted by shape. Leaves the fold empty.
    pub fn take(&mut self) -> Vec<(&'static str, Vec<Change>)> {
        std::mem::take(&mut self.tables).into_iter().map(|(name, mut t)| (name, t.take())).collect()
    }

    /// Like [`Fold::take`], split for a table known to be empty: `.0` holds each row's first
    /// change where it is an upsert (nothing to conflict with: a plain insert), `.1` the rest,
    /// to apply after them. Tables whose changes named rows by different columns go whole to
    /// `.1`.
    pub fn take_split(&mut self) -> (Vec<Change>, Vec<Change>) {
        let (mut inserts, mut rest) = (Vec::new(), Vec::new());
        for (_, mut t) in std::mem::take(&mut self.tables) {
            if !t.done.is_empty() {
                rest.extend(t.take());
                continue;
            }
            for row in std::mem::take(&mut t.rows) {
                let mut row = row.into_iter();
                match row.next() {
                    Some(first @ Change::Upsert { .. }) => inserts.push(first),
                    Some(first) => rest.push(first),
                    None => {}
                }
                // Later changes of a row keep their order after the row's first: a layer of
                // their own per position, as `take` would emit them.
                rest.extend(row);
            }
        }
        (inserts, rest)
    }
}

/// One table's changes: folded per row, emitted layer by layer, sorted by shape.
#[derive(Default)]
struct TableFold {
    /// The columns this table's rows are named by, once a change has named one.
    key: Option<Vec<&'static str>>,
    rows: Vec<Vec<Change>>,
    /// Row by [`row_hash`] of its key (its first change holds the key, to check against).
    index: HashMap<u64, usize, foldhash::fast::RandomState>,
    /// Rows whose hash another row had first, by key.
    collided: HashMap<Vec<KeyVal>, usize, foldhash::fast::RandomState>,
    /// Emitted when a change named its row by other columns (rows may overlap: what came
    /// before is emitted first, in full).
    done: Vec<Change>,
}

impl TableFold {
    fn push(&mut self, change: Change, hash: u64) {
        match &self.key {
            Some(key) if names_row_by(&change, key) => {}
            Some(_) => {
                let before = self.layers();
                self.done.extend(before);
                self.key = Some(key_columns(&change));
            }
            None => self.key = Some(key_columns(&change)),
        }
        let next = self.rows.len();
        let row = match self.index.get(&hash) {
            Some(&row) if same_row(&self.rows[row][0], &change) => row,
            Some(_) => *self.collided.entry(row_of(&change)).or_insert(next),
            None => *self.index.entry(hash).or_insert(next),
        };
        if row == next {
            self.rows.push(Vec::new());
        }
        let changes = &mut self.rows[row];
        let folded = match (changes.last_mut(), &change) {
            (Some(Change::Upsert { cols, .. }), Change::Update { set, .. }) => fold(cols, set),
            (Some(Change::Update { set: before, .. }), Change::Update { set, .. }) => merge(before, set),
            _ => false,
        };
        if !folded {
            changes.push(normalized(change));
        }
    }

    /// The rows' changes, first changes first (sorted by shape), then second changes, and so on.
    fn layers(&mut self) -> Vec<Change> {
        self.index.clear();
        self.collided.clear();
        let mut out = Vec::new();
        let mut rows: Vec<std::vec::IntoIter<Change>> =
            std::mem::take(&mut self.rows).into_iter().map(Vec::into_iter).collect();
        while !rows.is_empty() {
            let mut layer: Vec<Change> = rows.iter_mut().filter_map(Iterator::next).collect();
            layer.sort_by_cached_key(shape_of);
            out.append(&mut layer);
            rows.retain(|r| r.len() > 0);
        }
        out
    }

    fn take(&mut self) -> Vec<Change> {
        let mut out = std::mem::take(&mut self.done);
        out.extend(self.layers());
        self.key = None;
        out
    }
}

/// The table a change writes.
pub(crate) fn table_of(change: &Change) -> &'static str {
    match change {
        Change::Upsert { table, .. } | Change::Update { table, .. } | Change::Delete { table, .. } => table,
    }
}

/// The columns a change names its row by, in the order it gives them.
fn key_names(change: &Change) -> impl Iterator<Item = &'static str> + '_ {
    (0..).map_while(move |i| match change {
        Change::Upsert { key, .. } => key.get(i).copied(),
        Change::Update { key, .. } | Change::Delete { key, .. } => key.get(i).map(|(c, _)| *c),
    })
}

/// The value a change gives key column `column`.
fn key_value<'a>(change: &'a Change, column: &str) -> Option<&'a Val> {
    match change {
        Change::Upsert { cols, .. } => col(cols, column),
        Change::Update { key, .. } | Change::Delete { key, .. } => {
            key.iter().find(|(c, _)| *c == column).map(|(_, v)| v)
        }
    }
}

/// The key columns a change names its row by, sorted.
pub(crate) fn key_columns(change: &Change) -> Vec<&'static str> {
    let mut cols: Vec<&'static str> = key_names(change).collect();
    cols.sort_unstable();
    cols
}

/// Whether `change` names its row by exactly the (sorted) columns `key`, without allocating.
pub(crate) fn names_row_by(change: &Change, key: &[&'static str]) -> bool {
    key_names(change).count() == key.len() && key_names(change).all(|c| key.contains(&c))
}

/// The key values of the row a change addresses, made hashable.
pub(crate) fn row_of(change: &Change) -> Vec<KeyVal> {
    key_of(key_columns(change).into_iter().map(|c| key_value(change, c)))
}

/// Whether `a` and `b`, naming rows by the same columns, name the same row. Values other than
/// text and integers compare by their debug text, as [`row_of`] and [`row_hash`] see them.
fn same_row(a: &Change, b: &Change) -> bool {
    key_names(b).all(|c| match (key_value(a, c), key_value(b, c)) {
        (Some(x), Some(y)) => x == y || format!("{x:?}") == format!("{y:?}"),
        (x, y) => x == y,
    })
}

/// A hash of the table and key values of the row a change addresses (the same for every
/// change naming that row by the same columns), without allocating.
pub(crate) fn row_hash(change: &Change) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x17c).build_hasher();
    table_of(change).hash(&mut h);
    // Key columns in name order, picked one by one (keys have a column or two: no sort buffer).
    let mut after: Option<&str> = None;
    while let Some(c) = key_names(change).filter(|c| after.is_none_or(|a| *c > a)).min() {
        match key_value(change, c) {
            Some(Val::Text(s)) => (0u8, s.as_str()).hash(&mut h),
            Some(Val::Int(i)) => (1u8, *i).hash(&mut h),
            other => (2u8, format!("{other:?}")).hash(&mut h),
        }
        after = Some(c);
    }
    h.finish()
}

/// What decides a change's statement text: its kind and columns (and how an update sets them).
fn shape_of(change: &Change) -> (u8, Vec<(&'static str, u8)>) {
    match change {
        Change::Upsert { cols, .. } => (0, cols.iter().map(|(c, _)| (*c, 0)).collect()),
        Change::Update { key, set, .. } => {
            let set = set.iter().map(|(c, how)| {
                let kind = match how {
                    Set::To(_) => 0,
                    Set::Add(_) => 1,
                    Set::IfNull(_) => 2,
                };
                (*c, kind)
            });
            (1, set.chain(key.iter().map(|(c, _)| (*c, 9))).collect())
        }
        Change::Delete { key, .. } => (2, key.iter().map(|(c, _)| (*c, 0)).collect()),
    }
}

/// An update with its assignments in column order, so that updates of the same columns have
/// the same shape.
fn normalized(change: Change) -> Change {
    match change {
        Change::Update { table, key, mut set } => {
            set.sort_by_key(|(c, _)| *c);
            Change::Update { table, key, set }
        }
        other => other,
    }
}

/// A key value made hashable (keys are text or integers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum KeyVal {
    Text(String),
    Int(i64),
    Other(String),
}

fn key_of<'a>(vals: impl Iterator<Item = Option<&'a Val>>) -> Vec<KeyVal> {
    vals.map(|v| match v {
        Some(Val::Text(s)) => KeyVal::Text(s.clone()),
        Some(Val::Int(i)) => KeyVal::Int(*i),
        other => KeyVal::Other(format!("{other:?}")),
    })
    .collect()
}

fn col<'a>(cols: &'a [(&'static str, Val)], name: &str) -> Option<&'a Val> {
    cols.iter().find(|(c, _)| *c == name).map(|(_, v)| v)
}

/// The value `how` gives a column holding `v`, when it can be known here.
fn set_value(v: &Val, how: &Set) -> Option<Val> {
    match (v, how) {
        (_, Set::To(new)) => Some(new.clone()),
        (Val::Int(i), Set::Add(n)) => i.checked_add(*n).map(Val::Int),
        (_, Set::Add(_)) => None,
        (Val::Null, Set::IfNull(new)) => Some(new.clone()),
        (v, Set::IfNull(_)) => Some(v.clone()),
    }
}

/// Applies `set` to the upsert's columns if every column it touches is there and its result
/// is known; else changes nothing and returns false.
fn fold(cols: &mut [(&'static str, Val)], set: &[(&'static str, Set)]) -> bool {
    let mut new = Vec::with_capacity(set.len());
    for (c, how) in set {
        match cols.iter().position(|(name, _)| name == c).and_then(|i| Some((i, set_value(&cols[i].1, how)?))) {
            Some(found) => new.push(found),
            None => return false,
        }
    }
    for (i, v) in new {
        cols[i].1 = v;
    }
    true
}

/// `a` then `b` as one assignment, when there is one.
fn then(a: &Set, b: &Set) -> Option<Set> {
    match (a, b) {
        (_, Set::To(v)) => Some(Set::To(v.clone())),
        (Set::To(v), b) => set_value(v, b).map(Set::To),
        (Set::Add(n), Set::Add(m)) => n.checked_add(*m).map(Set::Add),
        // COALESCE(COALESCE(c, v), w): v, unless v is NULL.
        (Set::IfNull(v), Set::IfNull(w)) => Some(Set::IfNull(if *v == Val::Null { w.clone() } else { v.clone() })),
        // COALESCE(c, v) + m, or (c + n) IfNull: not one assignment.
        (Set::Add(_), Set::IfNull(_)) | (Set::IfNull(_), Set::Add(_)) => None,
    }
}

/// Merges update `b` into the update `a` before it on the same row, if every column both set
/// combines; else changes nothing and returns false.
fn merge(a: &mut Vec<(&'static str, Set)>, b: &[(&'static str, Set)]) -> bool {
    let mut merged = Vec::with_capacity(b.len());
    for (c, how) in b {
        match a.iter().position(|(name, _)| name == c) {
            Some(i) => match then(&a[i].1, how) {
                Some(s) => merged.push((Some(i), *c, s)),
                None => return false,
            },
            None => merged.push((None, *c, how.clone())),
        }
    }
    for (i, c, s) in merged {
        match i {
            Some(i) => a[i].1 = s,
            None => a.push((c, s)),
        }
    }
    a.sort_by_key(|(c, _)| *c);
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn up(id: &str, n: i64) -> Change {
        Change::Upsert {
            table: "runs",
            key: &["run_id"],
            cols: vec![("run_id", Val::Text(id.into())), ("n", Val::Int(n)), ("first", Val::Null)],
        }
    }

    fn upd(id: &str, set: Vec<(&'static str, Set)>) -> Change {
        Change::Update { table: "runs", key: vec![("run_id", Val::Text(id.into()))], set }
    }

    #[test]
    fn updates_fold_into_the_upsert_that_wrote_the_row() {
        let out = compact(vec![
            up("a", 0),
            upd("a", vec![("n", Set::Add(1))]),
            upd("a", vec![("first", Set::IfNull(Val::Int(5))), ("n", Set::Add(2))]),
            upd("a", vec![("first", Set::IfNull(Val::Int(9)))]),
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0],
            Change::Upsert {
                table: "runs",
                key: &["run_id"],
                cols: vec![("run_id", Val::Text("a".into())), ("n", Val::Int(3)), ("first", Val::Int(5))],
            }
        );
    }

    #[test]
    fn what_cannot_fold_keeps_its_order() {
        // `other` is not a column the upsert wrote: the row's value is unknown here.
        let out = compact(vec![
            up("a", 0),
            upd("a", vec![("other", Set::Add(1))]),
            upd("a", vec![("n", Set::Add(1))]),
            upd("b", vec![("n", Set::Add(1))]),
        ]);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], up("a", 0));
        assert_eq!(out[1], upd("b", vec![("n", Set::Add(1))]), "rows' first changes come first");
        assert_eq!(out[2], upd("a", vec![("n", Set::Add(1)), ("other", Set::Add(1))]), "the two updates merged");
    }

    #[test]
    fn updates_of_a_row_merge_and_rows_group_by_shape() {
        let out = compact(vec![
            upd("a", vec![("n", Set::Add(1)), ("at", Set::To(Val::Int(1)))]),
            upd("b", vec![("first", Set::IfNull(Val::Int(1)))]),
            upd("c", vec![("n", Set::Add(1)), ("at", Set::To(Val::Int(2)))]),
            upd("a", vec![("n", Set::Add(2)), ("at", Set::To(Val::Int(3)))]),
            upd("a", vec![("first", Set::IfNull(Val::Int(4)))]),
            upd("a", vec![("first", Set::Add(1))]),
        ]);
        assert_eq!(
            out,
            vec![
                upd("a", vec![("at", Set::To(Val::Int(3))), ("first", Set::IfNull(Val::Int(4))), ("n", Set::Add(3))]),
                upd("c", vec![("at", Set::To(Val::Int(2))), ("n", Set::Add(1))]),
                upd("b", vec![("first", Set::IfNull(Val::Int(1)))]),
                upd("a", vec![("first", Set::Add(1))]),
            ]
        );
    }

    /// A table in memory: key -> columns.
    pub(crate) type Table = HashMap<Vec<KeyVal>, HashMap<&'static str, Val>>;

    /// Applies a change to a table in memory as SQL would.
    pub(crate) fn apply(rows: &mut Table, change: &Change) {
        let row = row_of(change);
        match change {
            Change::Upsert { cols, .. } => {
                let r = rows.entry(row).or_default();
                r.extend(cols.iter().cloned());
            }
            Change::Update { set, .. } => {
                if let Some(r) = rows.get_mut(&row) {
                    for (c, how) in set {
                        let v = r.get(c).cloned().unwrap_or(Val::Null);
                        let new = match (&v, how) {
                            (_, Set::To(x)) => x.clone(),
                            (Val::Int(i), Set::Add(n)) => Val::Int(i + n),
                            (_, Set::Add(_)) => Val::Null,
                            (Val::Null, Set::IfNull(x)) => x.clone(),
                            (v, Set::IfNull(_)) => v.clone(),
                        };
                        r.insert(c, new);
                    }
                }
            }
            Change::Delete { .. } => {
                rows.remove(&row);
            }
        }
    }

    /// 1 to 12 random upserts, updates and deletes of three rows of `runs`.
    pub(crate) fn random_changes(next: &mut impl FnMut(u64) -> u64) -> Vec<Change> {
        let cols = ["n", "first", "at"];
        let mut changes = Vec::new();
        for _ in 0..next(12) + 1 {
            let id = ["a", "b", "c"][next(3) as usize];
            let val = |r: u64| if r == 0 { Val::Null } else { Val::Int(r as i64) };
            changes.push(match next(6) {
                0 => up(id, next(3) as i64),
                1 => Change::Delete { table: "runs", key: vec![("run_id", Val::Text(id.into()))] },
                _ => {
                    let mut set = Vec::new();
                    for c in cols {
                        match next(4) {
                            0 => set.push((c, Set::To(val(next(3))))),
                            1 => set.push((c, Set::Add(next(3) as i64 + 1))),
                            2 => set.push((c, Set::IfNull(val(next(3))))),
                            _ => {}
                        }
                    }
                    upd(id, set)
                }
            });
        }
        changes
    }

    /// A reproducible random number below `n` per call (xorshift), from `seed`.
    pub(crate) fn random(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    #[test]
    fn compacting_never_changes_the_result() {
        let mut next = random(0x2545_f491_4f6c_dd1d);
        for _ in 0..2_000 {
            let changes = random_changes(&mut next);
            let (mut plain, mut compacted) = (Table::new(), Table::new());
            changes.iter().for_each(|c| apply(&mut plain, c));
            let out = compact(changes.clone());
            assert!(out.len() <= changes.len());
            out.iter().for_each(|c| apply(&mut compacted, c));
            let nulls_as_absent = |rows: &mut Table| rows.values_mut().for_each(|r| r.retain(|_, v| *v != Val::Null));
            nulls_as_absent(&mut plain);
            nulls_as_absent(&mut compacted);
            assert_eq!(plain, compacted, "{changes:?}\n=> {out:?}");

            // Into an empty table, the fold's split gives plain inserts (rows not there yet)
            // and the rest, with the same result.
            let mut fold = Fold::default();
            changes.iter().cloned().for_each(|c| fold.push(c));
            let (inserts, rest) = fold.take_split();
            let mut split = HashMap::new();
            for c in &inserts {
                assert!(matches!(c, Change::Upsert { .. }));
                assert!(!split.contains_key(&row_of(c)), "an insert met a row: {changes:?}");
                apply(&mut split, c);
            }
            rest.iter().for_each(|c| apply(&mut split, c));
            nulls_as_absent(&mut split);
            assert_eq!(plain, split, "{changes:?}\n=> {inserts:?} then {rest:?}");
        }
    }

    #[test]
    fn rows_whose_hashes_collide_stay_apart() {
        let changes =
            vec![up("a", 1), up("b", 2), upd("a", vec![("n", Set::Add(1))]), upd("b", vec![("n", Set::Add(1))])];
        let mut fold = Fold::default();
        changes.iter().cloned().for_each(|c| fold.push_hashed(c, 7));
        assert_eq!(fold.rows(), 2);
        let out: Vec<Change> = fold.take().into_iter().flat_map(|(_, c)| c).collect();
        assert_eq!(out, compact(changes));
        assert_eq!(out, vec![up("a", 2), up("b", 3)]);
    }

    #[test]
    fn a_delete_keeps_its_place_and_stops_folding() {
        let del = Change::Delete { table: "runs", key: vec![("run_id", Val::Text("a".into()))] };
        let out = compact(vec![up("a", 0), del.clone(), upd("a", vec![("n", Set::Add(1))])]);
        assert_eq!(out, vec![up("a", 0), del, upd("a", vec![("n", Set::Add(1))])]);
    }

    #[test]
    fn tables_are_grouped_and_keep_their_own_order() {
        let handoff =
            |p: i64| Change::Upsert { table: "handoffs", key: &["position"], cols: vec![("position", Val::Int(p))] };
        let out = compact(vec![handoff(1), up("a", 0), handoff(2), upd("a", vec![("n", Set::Add(1))]), handoff(3)]);
        assert_eq!(out, vec![handoff(1), handoff(2), handoff(3), up("a", 1)]);
    }
}
