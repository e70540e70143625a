//! `memory` (each session key's current value, version, writer and position) and
//! `memory_history` (every write and delete, one row per event).

use ltmc_core::RecordedEvent;
use serde_json::Value;

use super::{Change, Projection, Val, session_of, text};

pub(crate) struct Memory;

impl Projection for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["memory", "memory_history"]
    }

    fn append_only(&self) -> &'static [&'static str] {
        &["memory_history"]
    }

    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Change>) {
        let Some(session) = session_of(&e.stream_id) else { return };
        let (operation, value) = match e.event_type.as_str() {
            "MemoryWritten" => ("write", Val::Json(e.data.get("value").cloned().unwrap_or(Value::Null))),
            "MemoryDeleted" => ("delete", Val::Null),
            _ => return,
        };
        let key = text(e, "key");
        if key == Val::Null {
            return;
        }
        let sid = Val::Text(session.to_owned());
        let version = e.data.get("version").and_then(Value::as_i64).map_or(Val::Null, Val::Int);
        let at = Val::Time(e.recorded_at);
        let position = Val::Int(e.global_position);
        out.push(if operation == "write" {
            Change::Upsert {
                table: "memory",
                key: &["session_id", "key"],
                cols: vec![
                    ("session_id", sid.clone()),
                    ("key", key.clone()),
                    ("value", value.clone()),
                    ("version", version.clone()),
                    ("writer", text(e, "writer")),
                    ("position", position.clone()),
                    ("written_at", at.clone()),
                ],
            }
        } else {
            Change::Delete { table: "memory", key: vec![("session_id", sid.clone()), ("key", key.clone())] }
        });
        out.push(Change::Upsert {
            table: "memory_history",
            key: &["position"],
            cols: vec![
                ("position", position),
                ("session_id", sid),
                ("key", key),
                ("operation", Val::Text(operation.into())),
                ("value", value),
                ("version", version),
                ("writer", text(e, "writer")),
                ("at", at),
            ],
        });
    }
}
