//! `audit_log`: one row per event — when, who, what, on which stream, for which run and session.

use ltmc_core::RecordedEvent;

use super::{Change, Projection, Val};

pub(crate) struct AuditLog;

impl Projection for AuditLog {
    fn name(&self) -> &'static str {
        "audit_log"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_log"]
    }

    fn append_only(&self) -> &'static [&'static str] {
        &["audit_log"]
    }

    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Change>) {
        let opt = |v: &Option<String>| v.clone().map_or(Val::Null, Val::Text);
        out.push(Change::Upsert {
            table: "audit_log",
            key: &["position"],
            cols: vec![
                ("position", Val::Int(e.global_position)),
                ("at", Val::Time(e.recorded_at)),
                ("actor", opt(&e.metadata.actor)),
                ("action", Val::Text(e.event_type.clone())),
                ("target", Val::Text(e.stream_id.clone())),
                ("run_id", opt(&e.metadata.run_id)),
                ("session_id", opt(&e.metadata.session_id)),
                ("event_id", Val::Text(e.event_id.to_string())),
            ],
        });
    }
}
