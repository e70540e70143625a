//! Renders the projections' row changes as parameterised SQL for either backend. Table and
//! column names come from the projections' code, never from input; every value is a parameter.

use ltmc_projections::{Change, Set, Val};

/// Checkpoint row of the projector (`checkpoints.name`).
pub const CHECKPOINT: &str = "projections";

#[derive(Clone, Copy)]
pub(crate) enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    fn param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite => format!("?{n}"),
        }
    }
}

/// Most parameters in one statement (both backends allow more; this keeps statements modest).
const MAX_PARAMS: usize = 30_000;

/// The statements for a batch, in order: runs of consecutive upserts into the same table with
/// the same columns (and no key twice, which one statement could not update twice) become one
/// multi-row `INSERT … ON CONFLICT`; anything else is one statement per change.
pub(crate) fn render_all(changes: &[Change], d: Dialect) -> Vec<(String, Vec<Val>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < changes.len() {
        let Change::Upsert { table, key, cols } = &changes[i] else {
            out.push(render(&changes[i], d));
            i += 1;
            continue;
        };
        let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
        let key_of = |cols: &[(&str, Val)]| -> String {
            key.iter().map(|k| format!("{:?}", cols.iter().find(|(c, _)| c == k).map(|(_, v)| v))).collect()
        };
        let mut keys = std::collections::HashSet::new();
        keys.insert(key_of(cols));
        let mut j = i + 1;
        while j < changes.len() && (j - i + 1) * names.len() <= MAX_PARAMS {
            match &changes[j] {
                Change::Upsert { table: t, cols: c, .. }
                    if t == table
                        && c.len() == names.len()
                        && c.iter().zip(&names).all(|((a, _), b)| a == b)
                        && keys.insert(key_of(c)) =>
                {
                    j += 1
                }
                _ => break,
            }
        }
        let rows = &changes[i..j];
        let mut values = Vec::with_capacity(rows.len() * names.len());
        let mut tuples = Vec::with_capacity(rows.len());
        for row in rows {
            if let Change::Upsert { cols, .. } = row {
                let params: Vec<String> = (0..cols.len()).map(|n| d.param(values.len() + n + 1)).collect();
                tuples.push(format!("({})", params.join(", ")));
                values.extend(cols.iter().map(|(_, v)| v.clone()));
            }
        }
        let updates: Vec<String> =
            names.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
        let on_conflict =
            if updates.is_empty() { "DO NOTHING".to_owned() } else { format!("DO UPDATE SET {}", updates.join(", ")) };
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {} ON CONFLICT ({}) {on_conflict}",
            names.join(", "),
            tuples.join(", "),
            key.join(", ")
        );
        out.push((sql, values));
        i = j;
    }
    out
}

/// The statement and its parameters, in order.
pub(crate) fn render(change: &Change, d: Dialect) -> (String, Vec<Val>) {
    match change {
        Change::Upsert { table, key, cols } => {
            let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
            let params: Vec<String> = (1..=cols.len()).map(|n| d.param(n)).collect();
            let updates: Vec<String> =
                names.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
            let on_conflict = if updates.is_empty() {
                "DO NOTHING".to_owned()
            } else {
                format!("DO UPDATE SET {}", updates.join(", "))
            };
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) {on_conflict}",
                names.join(", "),
                params.join(", "),
                key.join(", ")
            );
            (sql, cols.iter().map(|(_, v)| v.clone()).collect())
        }
        Change::Update { table, key, set } => {
            let mut values: Vec<Val> = Vec::with_capacity(set.len() + key.len());
            let mut assignments = Vec::with_capacity(set.len());
            for (col, how) in set {
                let p = d.param(values.len() + 1);
                let (expr, v) = match how {
                    Set::To(v) => (p, v.clone()),
                    Set::Add(n) => (format!("{col} + {p}"), Val::Int(*n)),
                    Set::IfNull(v) => (format!("COALESCE({col}, {p})"), v.clone()),
                };
                values.push(v);
                assignments.push(format!("{col} = {expr}"));
            }
            let mut conditions = Vec::with_capacity(key.len());
            for (col, v) in key {
                conditions.push(format!("{col} = {}", d.param(values.len() + 1)));
                values.push(v.clone());
            }
            (format!("UPDATE {table} SET {} WHERE {}", assignments.join(", "), conditions.join(" AND ")), values)
        }
        Change::Delete { table, key } => {
            let conditions: Vec<String> =
                key.iter().enumerate().map(|(i, (col, _))| format!("{col} = {}", d.param(i + 1))).collect();
            let values = key.iter().map(|(_, v)| v.clone()).collect();
            (format!("DELETE FROM {table} WHERE {}", conditions.join(" AND ")), values)
        }
    }
}

/// The SQL text of a time value on SQLite (the same form as `events.recorded_at`).
pub(crate) fn sqlite_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_upserts_become_one_statement_without_repeating_a_key() {
        let row =
            |p: i64| Change::Upsert { table: "audit_log", key: &["position"], cols: vec![("position", Val::Int(p))] };
        let out = render_all(&[row(1), row(2), row(2), row(3)], Dialect::Postgres);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].0, "INSERT INTO audit_log (position) VALUES ($1), ($2) ON CONFLICT (position) DO NOTHING");
        assert_eq!(out[1].1, vec![Val::Int(2), Val::Int(3)]);
    }

    #[test]
    fn changes_render_as_parameterised_sql() {
        let up = Change::Upsert {
            table: "runs",
            key: &["run_id"],
            cols: vec![("run_id", Val::Text("r".into())), ("status", Val::Text("running".into()))],
        };
        let (sql, params) = render(&up, Dialect::Postgres);
        assert_eq!(
            sql,
            "INSERT INTO runs (run_id, status) VALUES ($1, $2) ON CONFLICT (run_id) DO UPDATE SET status = excluded.status"
        );
        assert_eq!(params.len(), 2);
        let upd = Change::Update {
            table: "steps",
            key: vec![("run_id", Val::Text("r".into())), ("step", Val::Text("s".into()))],
            set: vec![("retries", Set::Add(1)), ("first_dispatched_at", Set::IfNull(Val::Null))],
        };
        let del = Change::Delete {
            table: "memory",
            key: vec![("session_id", Val::Text("s".into())), ("key", Val::Text("k".into()))],
        };
        assert_eq!(render(&del, Dialect::Postgres).0, "DELETE FROM memory WHERE session_id = $1 AND key = $2");
        let (sql, params) = render(&upd, Dialect::Sqlite);
        assert_eq!(
            sql,
            "UPDATE steps SET retries = retries + ?1, first_dispatched_at = COALESCE(first_dispatched_at, ?2) WHERE run_id = ?3 AND step = ?4"
        );
        assert_eq!(params[0], Val::Int(1));
    }
}
