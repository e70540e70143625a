//! Renders the projections' row changes as parameterised SQL for either backend. Table and
//! column names come from the projections' code, never from input; every value is a parameter.
//!
//! A batch of changes is cut into [`groups`]: runs of consecutive changes of the same [`Shape`]
//! (same table, same kind, same columns) that never touch a key twice. SQLite executes each
//! change of a group with one cached single-row statement (no round trips to save there);
//! Postgres executes a whole group as one statement over `unnest` of one array per column, so
//! the statement text depends only on the shape and is prepared once per connection.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use ltmc_projections::{Change, Set, Val};

/// Checkpoint row of the projector (`checkpoints.name`).
pub const CHECKPOINT: &str = "projections";

/// How an update sets a column, without the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SetKind {
    To,
    Add,
    IfNull,
}

/// What a change does, without its values: the statement text follows from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Shape {
    Upsert { table: &'static str, key: &'static [&'static str], cols: Vec<&'static str> },
    Update { table: &'static str, key: Vec<&'static str>, set: Vec<(&'static str, SetKind)> },
    Delete { table: &'static str, key: Vec<&'static str> },
}

/// One parameter value of a change, borrowed where it can be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Val(&'a Val),
    Int(i64),
}

impl Shape {
    pub(crate) fn of(change: &Change) -> Shape {
        match change {
            Change::Upsert { table, key, cols } => {
                Shape::Upsert { table, key, cols: cols.iter().map(|(c, _)| *c).collect() }
            }
            Change::Update { table, key, set } => Shape::Update {
                table,
                key: key.iter().map(|(c, _)| *c).collect(),
                set: set
                    .iter()
                    .map(|(c, how)| {
                        let kind = match how {
                            Set::To(_) => SetKind::To,
                            Set::Add(_) => SetKind::Add,
                            Set::IfNull(_) => SetKind::IfNull,
                        };
                        (*c, kind)
                    })
                    .collect(),
            },
            Change::Delete { table, key } => Shape::Delete { table, key: key.iter().map(|(c, _)| *c).collect() },
        }
    }

    pub(crate) fn table(&self) -> &'static str {
        match self {
            Shape::Upsert { table, .. } | Shape::Update { table, .. } | Shape::Delete { table, .. } => table,
        }
    }

    /// The columns the parameters are for, in parameter order (see [`params`]).
    pub(crate) fn columns(&self) -> Vec<&'static str> {
        match self {
            Shape::Upsert { cols, .. } => cols.clone(),
            Shape::Update { key, set, .. } => set.iter().map(|(c, _)| *c).chain(key.iter().copied()).collect(),
            Shape::Delete { key, .. } => key.clone(),
        }
    }

    /// `INSERT … ON CONFLICT` action of an upsert: overwrite every non-key column.
    fn on_conflict(key: &[&str], cols: &[&str]) -> String {
        let updates: Vec<String> =
            cols.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
        if updates.is_empty() { "DO NOTHING".to_owned() } else { format!("DO UPDATE SET {}", updates.join(", ")) }
    }

    /// The statement for one change of this shape, with SQLite's numbered parameters.
    pub(crate) fn single_row_sql(&self) -> String {
        let p = |n: usize| format!("?{n}");
        match self {
            Shape::Upsert { table, key, cols } => format!(
                "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) {}",
                cols.join(", "),
                (1..=cols.len()).map(p).collect::<Vec<_>>().join(", "),
                key.join(", "),
                Self::on_conflict(key, cols)
            ),
            Shape::Update { table, key, set } => {
                let assignments: Vec<String> = set
                    .iter()
                    .enumerate()
                    .map(|(i, (c, kind))| match kind {
                        SetKind::To => format!("{c} = {}", p(i + 1)),
                        SetKind::Add => format!("{c} = {c} + {}", p(i + 1)),
                        SetKind::IfNull => format!("{c} = COALESCE({c}, {})", p(i + 1)),
                    })
                    .collect();
                let conditions: Vec<String> =
                    key.iter().enumerate().map(|(i, c)| format!("{c} = {}", p(set.len() + i + 1))).collect();
                format!("UPDATE {table} SET {} WHERE {}", assignments.join(", "), conditions.join(" AND "))
            }
            Shape::Delete { table, key } => {
                let conditions: Vec<String> =
                    key.iter().enumerate().map(|(i, c)| format!("{c} = {}", p(i + 1))).collect();
                format!("DELETE FROM {table} WHERE {}", conditions.join(" AND "))
            }
        }
    }

    /// The statement for a whole group of this shape on Postgres: parameter `$n` is an array
    /// holding column n's value for every change of the group. `types` gives each column's SQL
    /// type (the arrays must be cast: `unnest` cannot infer them).
    pub(crate) fn unnest_sql(&self, types: &[String]) -> String {
        let arrays: Vec<String> = types.iter().enumerate().map(|(i, t)| format!("CAST(${} AS {t}[])", i + 1)).collect();
        let arrays = arrays.join(", ");
        match self {
            Shape::Upsert { table, key, cols } => format!(
                "INSERT INTO {table} ({}) SELECT * FROM unnest({arrays}) ON CONFLICT ({}) {}",
                cols.join(", "),
                key.join(", "),
                Self::on_conflict(key, cols)
            ),
            Shape::Update { table, key, set } => {
                let n = set.len() + key.len();
                let aliases: Vec<String> = (1..=n).map(|i| format!("p{i}")).collect();
                let assignments: Vec<String> = set
                    .iter()
                    .enumerate()
                    .map(|(i, (c, kind))| match kind {
                        SetKind::To => format!("{c} = v.p{}", i + 1),
                        SetKind::Add => format!("{c} = {table}.{c} + v.p{}", i + 1),
                        SetKind::IfNull => format!("{c} = COALESCE({table}.{c}, v.p{})", i + 1),
                    })
                    .collect();
                let conditions: Vec<String> =
                    key.iter().enumerate().map(|(i, c)| format!("{table}.{c} = v.p{}", set.len() + i + 1)).collect();
                format!(
                    "UPDATE {table} SET {} FROM unnest({arrays}) AS v({}) WHERE {}",
                    assignments.join(", "),
                    aliases.join(", "),
                    conditions.join(" AND ")
                )
            }
            Shape::Delete { table, key } => {
                let aliases: Vec<String> = (1..=key.len()).map(|i| format!("p{i}")).collect();
                let conditions: Vec<String> =
                    key.iter().enumerate().map(|(i, c)| format!("{table}.{c} = v.p{}", i + 1)).collect();
                format!(
                    "DELETE FROM {table} USING unnest({arrays}) AS v({}) WHERE {}",
                    aliases.join(", "),
                    conditions.join(" AND ")
                )
            }
        }
    }
}

/// The parameters of one change, in the order of [`Shape::columns`].
pub(crate) fn params(change: &Change) -> Vec<Param<'_>> {
    match change {
        Change::Upsert { cols, .. } => cols.iter().map(|(_, v)| Param::Val(v)).collect(),
        Change::Update { key, set, .. } => set
            .iter()
            .map(|(_, how)| match how {
                Set::To(v) | Set::IfNull(v) => Param::Val(v),
                Set::Add(n) => Param::Int(*n),
            })
            .chain(key.iter().map(|(_, v)| Param::Val(v)))
            .collect(),
        Change::Delete { key, .. } => key.iter().map(|(_, v)| Param::Val(v)).collect(),
    }
}

/// A hash of the row a change addresses (its key values). Equal keys hash equally, so a
/// collision can only split a group needlessly, never merge two changes of one row.
fn row_hash(change: &Change) -> u64 {
    let mut h = DefaultHasher::new();
    let mut add = |v: &Val| match v {
        Val::Null => 0u8.hash(&mut h),
        Val::Int(i) => (1u8, i).hash(&mut h),
        Val::Real(f) => (2u8, f.to_bits()).hash(&mut h),
        Val::Text(s) => (3u8, s).hash(&mut h),
        Val::Json(j) => (4u8, j.to_string()).hash(&mut h),
        Val::Time(t) => (5u8, t.timestamp_micros()).hash(&mut h),
        Val::Bool(b) => (6u8, b).hash(&mut h),
    };
    match change {
        Change::Upsert { key, cols, .. } => {
            for k in *key {
                if let Some((_, v)) = cols.iter().find(|(c, _)| c == k) {
                    add(v);
                }
            }
        }
        Change::Update { key, .. } | Change::Delete { key, .. } => key.iter().for_each(|(_, v)| add(v)),
    }
    h.finish()
}

/// Most changes in one group (a Postgres statement's arrays stay a few MB at most).
const MAX_GROUP: usize = 10_000;

/// The batch cut into groups, in order: consecutive changes of one shape, no row twice (one
/// `INSERT … ON CONFLICT` or `UPDATE … FROM` cannot change a row twice).
pub(crate) fn groups(changes: &[Change]) -> Vec<(Shape, &[Change])> {
    let mut out: Vec<(Shape, &[Change])> = Vec::new();
    let mut start = 0;
    let mut rows = HashSet::new();
    let mut shape: Option<Shape> = None;
    for (i, change) in changes.iter().enumerate() {
        let this = Shape::of(change);
        let same = shape.as_ref() == Some(&this) && i - start < MAX_GROUP;
        if !same || !rows.insert(row_hash(change)) {
            if let Some(s) = shape.take() {
                out.push((s, &changes[start..i]));
            }
            start = i;
            rows.clear();
            rows.insert(row_hash(change));
        }
        shape = Some(this);
    }
    if let Some(s) = shape {
        out.push((s, &changes[start..]));
    }
    out
}

/// The columns of `audit_log`, the view of the log (migration V4) that a snapshot copies into a
/// table of its own.
pub(crate) const AUDIT_COLUMNS: &str = "position, at, actor, action, target, run_id, session_id, event_id";

/// The SQL text of a time value on SQLite (the same form as `events.recorded_at`).
pub(crate) fn sqlite_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handoff(p: i64) -> Change {
        Change::Upsert { table: "handoffs", key: &["position"], cols: vec![("position", Val::Int(p))] }
    }

    #[test]
    fn consecutive_changes_of_one_shape_group_without_repeating_a_row() {
        let changes = [handoff(1), handoff(2), handoff(2), handoff(3)];
        let out = groups(&changes);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].1.len(), 2);
        assert_eq!(out[1].1, &[handoff(2), handoff(3)]);
        let del = Change::Delete { table: "handoffs", key: vec![("position", Val::Int(9))] };
        let changes = [handoff(1), del.clone(), handoff(2)];
        assert_eq!(groups(&changes).len(), 3, "another shape ends a group");
    }

    #[test]
    fn shapes_render_as_parameterised_sql() {
        let up = Change::Upsert {
            table: "runs",
            key: &["run_id"],
            cols: vec![("run_id", Val::Text("r".into())), ("status", Val::Text("running".into()))],
        };
        assert_eq!(
            Shape::of(&up).single_row_sql(),
            "INSERT INTO runs (run_id, status) VALUES (?1, ?2) ON CONFLICT (run_id) DO UPDATE SET status = excluded.status"
        );
        assert_eq!(
            Shape::of(&up).unnest_sql(&["text".into(), "text".into()]),
            "INSERT INTO runs (run_id, status) SELECT * FROM unnest(CAST($1 AS text[]), CAST($2 AS text[])) \
             ON CONFLICT (run_id) DO UPDATE SET status = excluded.status"
        );
        let upd = Change::Update {
            table: "steps",
            key: vec![("run_id", Val::Text("r".into())), ("step", Val::Text("s".into()))],
            set: vec![("retries", Set::Add(1)), ("first_dispatched_at", Set::IfNull(Val::Null))],
        };
        assert_eq!(
            Shape::of(&upd).single_row_sql(),
            "UPDATE steps SET retries = retries + ?1, first_dispatched_at = COALESCE(first_dispatched_at, ?2) \
             WHERE run_id = ?3 AND step = ?4"
        );
        let types: Vec<String> = ["bigint", "timestamptz", "text", "text"].map(String::from).to_vec();
        assert_eq!(
            Shape::of(&upd).unnest_sql(&types),
            "UPDATE steps SET retries = steps.retries + v.p1, first_dispatched_at = COALESCE(steps.first_dispatched_at, v.p2) \
             FROM unnest(CAST($1 AS bigint[]), CAST($2 AS timestamptz[]), CAST($3 AS text[]), CAST($4 AS text[])) \
             AS v(p1, p2, p3, p4) WHERE steps.run_id = v.p3 AND steps.step = v.p4"
        );
        assert_eq!(Shape::of(&upd).columns(), ["retries", "first_dispatched_at", "run_id", "step"]);
        assert!(matches!(params(&upd)[0], Param::Int(1)));
        let del = Change::Delete {
            table: "memory",
            key: vec![("session_id", Val::Text("s".into())), ("key", Val::Text("k".into()))],
        };
        assert_eq!(Shape::of(&del).single_row_sql(), "DELETE FROM memory WHERE session_id = ?1 AND key = ?2");
        assert_eq!(
            Shape::of(&del).unnest_sql(&["text".into(), "text".into()]),
            "DELETE FROM memory USING unnest(CAST($1 AS text[]), CAST($2 AS text[])) AS v(p1, p2) \
             WHERE memory.session_id = v.p1 AND memory.key = v.p2"
        );
    }
}
