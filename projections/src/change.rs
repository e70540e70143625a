//! Row changes, backend-neutral: the projector renders them as parameterised SQL.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// SQL NULL.
    Null,
    /// An integer (`bigint` / INTEGER).
    Int(i64),
    /// A number (`double precision` / REAL).
    Real(f64),
    /// Text.
    Text(String),
    /// JSON (`jsonb` / TEXT holding JSON).
    Json(Value),
    /// A time (`timestamptz` / TEXT in RFC 3339, UTC, microseconds).
    Time(DateTime<Utc>),
    /// A flag (`boolean` / INTEGER 0 or 1).
    Bool(bool),
}

/// How an update sets a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Set {
    /// To this value.
    To(Val),
    /// To itself plus this (counters).
    Add(i64),
    /// To this value only if it is NULL (first occurrence wins).
    IfNull(Val),
}

/// A change to one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert the row; if a row with the same `key` columns exists, overwrite the other columns.
    Upsert {
        /// Table.
        table: &'static str,
        /// The key columns (a unique index); they must be among `cols`.
        key: &'static [&'static str],
        /// Every column given.
        cols: Vec<(&'static str, Val)>,
    },
    /// Update the rows matching `key`.
    Update {
        /// Table.
        table: &'static str,
        /// Column = value conditions, all of which must hold.
        key: Vec<(&'static str, Val)>,
        /// Assignments.
        set: Vec<(&'static str, Set)>,
    },
    /// Delete the rows matching `key`.
    Delete {
        /// Table.
        table: &'static str,
        /// Column = value conditions, all of which must hold.
        key: Vec<(&'static str, Val)>,
    },
}
