//! Folding a batch of row changes into fewer with the same effect.
//!
//! Changes to different tables are independent (no projection reads another table), so each
//! table's changes keep their order and tables may be applied one after another. Within a
//! table, an update of a row that an earlier upsert of the same batch wrote is folded into that
//! upsert when every column it sets was written by the upsert (the row's value is then known);
//! what cannot be folded stays an update, in order. A batch of runs thus becomes about one
//! upsert per run and per step, plus the audit rows.

use std::collections::HashMap;

use super::{Change, Set, Val};

/// The changes, per table in first-seen order, with updates folded into earlier upserts.
pub fn compact(changes: Vec<Change>) -> Vec<Change> {
    let mut tables: Vec<(&'static str, Vec<Change>)> = Vec::new();
    // (table, key values) -> index of its latest upsert in that table's list, while foldable.
    let mut latest: HashMap<(&'static str, Vec<KeyVal>), usize> = HashMap::new();
    for change in changes {
        let table = match &change {
            Change::Upsert { table, .. } | Change::Update { table, .. } | Change::Delete { table, .. } => *table,
        };
        let list = match tables.iter().position(|(t, _)| *t == table) {
            Some(i) => &mut tables[i].1,
            None => {
                tables.push((table, Vec::new()));
                &mut tables.last_mut().expect("just pushed").1
            }
        };
        match change {
            Change::Upsert { table, key, cols } => {
                let id = (table, key_of(key.iter().map(|k| col(&cols, k))));
                latest.insert(id, list.len());
                list.push(Change::Upsert { table, key, cols });
            }
            Change::Update { table, key, set } => {
                let id = (table, key_of(key.iter().map(|(_, v)| Some(v))));
                let folded = latest.get(&id).and_then(|&i| match &mut list[i] {
                    Change::Upsert { cols, .. } => fold(cols, &set).then_some(()),
                    Change::Update { .. } | Change::Delete { .. } => None,
                });
                if folded.is_none() {
                    // Later updates must not jump ahead of this one.
                    latest.remove(&id);
                    list.push(Change::Update { table, key, set });
                }
            }
            Change::Delete { table, key } => {
                // Nothing after a delete may fold into the upsert before it.
                latest.remove(&(table, key_of(key.iter().map(|(_, v)| Some(v)))));
                list.push(Change::Delete { table, key });
            }
        }
    }
    tables.into_iter().flat_map(|(_, list)| list).collect()
}

/// A key value made hashable (keys are text or integers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyVal {
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

/// Applies `set` to the upsert's columns if every column it touches is there; else changes
/// nothing and returns false.
fn fold(cols: &mut [(&'static str, Val)], set: &[(&'static str, Set)]) -> bool {
    let foldable = set.iter().all(|(c, how)| match (col(cols, c), how) {
        (None, _) => false,
        (Some(Val::Int(_)), Set::Add(_)) => true,
        (Some(_), Set::Add(_)) => false,
        (Some(_), _) => true,
    });
    if !foldable {
        return false;
    }
    for (c, how) in set {
        if let Some((_, v)) = cols.iter_mut().find(|(name, _)| name == c) {
            match how {
                Set::To(new) => *v = new.clone(),
                Set::Add(n) => {
                    if let Val::Int(i) = v {
                        *i += n;
                    }
                }
                Set::IfNull(new) => {
                    if *v == Val::Null {
                        *v = new.clone();
                    }
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
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
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out[0], up("a", 0));
        assert_eq!(out[2], upd("a", vec![("n", Set::Add(1))]), "not folded past the update before it");
    }

    #[test]
    fn a_delete_keeps_its_place_and_stops_folding() {
        let del = Change::Delete { table: "runs", key: vec![("run_id", Val::Text("a".into()))] };
        let out = compact(vec![up("a", 0), del.clone(), upd("a", vec![("n", Set::Add(1))])]);
        assert_eq!(out, vec![up("a", 0), del, upd("a", vec![("n", Set::Add(1))])]);
    }

    #[test]
    fn tables_are_grouped_and_keep_their_own_order() {
        let audit =
            |p: i64| Change::Upsert { table: "audit_log", key: &["position"], cols: vec![("position", Val::Int(p))] };
        let out = compact(vec![audit(1), up("a", 0), audit(2), upd("a", vec![("n", Set::Add(1))]), audit(3)]);
        assert_eq!(out, vec![audit(1), audit(2), audit(3), up("a", 1)]);
    }
}
