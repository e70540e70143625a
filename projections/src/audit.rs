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
        let m = &e.metadata;
        let who = [m.actor.clone(), m.run_id.clone(), m.session_id.clone()];
        out.push(row(e, who, e.event_type.clone(), e.stream_id.clone()));
    }

    fn apply_owned(&self, mut e: RecordedEvent, out: &mut Vec<Change>) {
        let m = &mut e.metadata;
        let who = [m.actor.take(), m.run_id.take(), m.session_id.take()];
        let (action, target) = (std::mem::take(&mut e.event_type), std::mem::take(&mut e.stream_id));
        out.push(row(&e, who, action, target));
    }
}

/// The audit row of `e`, given its actor, run and session, type and stream (taken or copied).
fn row(e: &RecordedEvent, [actor, run_id, session_id]: [Option<String>; 3], action: String, target: String) -> Change {
    let opt = |v: Option<String>| v.map_or(Val::Null, Val::Text);
    Change::Upsert {
        table: "audit_log",
        key: &["position"],
        cols: vec![
            ("position", Val::Int(e.global_position)),
            ("at", Val::Time(e.recorded_at)),
            ("actor", opt(actor)),
            ("action", Val::Text(action)),
            ("target", Val::Text(target)),
            ("run_id", opt(run_id)),
            ("session_id", opt(session_id)),
            ("event_id", Val::Text(e.event_id.to_string())),
        ],
    }
}
