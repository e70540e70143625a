//! `steps`: one row per step of a run — status, attempts, retries, and the times that define
//! coordination time (ready → first dispatched) and agent time.

use ltmc_core::RecordedEvent;
use serde_json::Value;

use super::{Change, Projection, Set, Val, run_of, text};

pub(crate) struct Steps;

impl Projection for Steps {
    fn name(&self) -> &'static str {
        "steps"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["steps"]
    }

    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Change>) {
        let Some(run_id) = run_of(&e.stream_id) else { return };
        let step = text(e, "step");
        if step == Val::Null {
            return; // not a step event (or a malformed one: it is in the audit log, not here)
        }
        let key = || vec![("run_id", Val::Text(run_id.to_owned())), ("step", step.clone())];
        let ready = |agent: Val| Change::Upsert {
            table: "steps",
            key: &["run_id", "step"],
            cols: vec![
                ("run_id", Val::Text(run_id.to_owned())),
                ("step", step.clone()),
                ("agent", agent),
                ("status", Val::Text("ready".into())),
                ("attempts", Val::Int(0)),
                ("retries", Val::Int(0)),
                ("ready_at", Val::Time(e.recorded_at)),
                // A step becomes ready once: a fresh row, every column written, so the
                // updates that follow in the same batch fold into this insert.
                ("first_dispatched_at", Val::Null),
                ("dispatched_at", Val::Null),
                ("finished_at", Val::Null),
                ("duration_ms", Val::Null),
                ("error", Val::Null),
                ("vote", Val::Null),
            ],
        };
        let status = |s: &str| ("status", Set::To(Val::Text(s.into())));
        match e.event_type.as_str() {
            "StepReady" => out.push(ready(Val::Null)),
            "AgentActivated" => out.push(ready(text(e, "agent"))),
            "HandoffRefused" if e.data.get("waiting") == Some(&Value::Bool(true)) => {
                out.push(Change::Update { table: "steps", key: key(), set: vec![status("waiting")] })
            }
            "StepDispatched" => out.push(Change::Update {
                table: "steps",
                key: key(),
                set: vec![
                    status("running"),
                    ("agent", Set::To(text(e, "agent"))),
                    ("attempts", Set::To(Val::Int(e.data.get("attempt").and_then(Value::as_i64).unwrap_or(0)))),
                    ("first_dispatched_at", Set::IfNull(Val::Time(e.recorded_at))),
                    ("dispatched_at", Set::To(Val::Time(e.recorded_at))),
                ],
            }),
            "StepCompleted" => out.push(Change::Update {
                table: "steps",
                key: key(),
                set: vec![
                    status("completed"),
                    ("finished_at", Set::To(Val::Time(e.recorded_at))),
                    ("duration_ms", Set::To(int(e, "duration_ms"))),
                    ("vote", Set::To(text(e, "vote"))),
                ],
            }),
            "StepFailed" if e.data.get("will_retry") == Some(&Value::Bool(true)) => out.push(Change::Update {
                table: "steps",
                key: key(),
                set: vec![status("retrying"), ("retries", Set::Add(1)), ("error", Set::To(text(e, "error")))],
            }),
            "StepFailed" => out.push(Change::Update {
                table: "steps",
                key: key(),
                set: vec![
                    status("failed"),
                    ("finished_at", Set::To(Val::Time(e.recorded_at))),
                    ("duration_ms", Set::To(int(e, "duration_ms"))),
                    ("error", Set::To(text(e, "error"))),
                ],
            }),
            _ => {}
        }
    }
}

fn int(e: &RecordedEvent, field: &str) -> Val {
    e.data.get(field).and_then(Value::as_i64).map_or(Val::Null, Val::Int)
}
