//! `runs`: one row per run — status, counts, times, output or failure.

use ltmc_core::RecordedEvent;
use serde_json::Value;

use super::{Change, Projection, Set, Val, run_of, text};

pub(crate) struct Runs;

const KEY: &[&str] = &["run_id"];

impl Projection for Runs {
    fn name(&self) -> &'static str {
        "runs"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["runs"]
    }

    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Change>) {
        let Some(run_id) = run_of(&e.stream_id) else { return };
        let run = || vec![("run_id", Val::Text(run_id.to_owned()))];
        let mut update = |mut set: Vec<(&'static str, Set)>| {
            set.push(("last_position", Set::To(Val::Int(e.global_position))));
            set.push(("updated_at", Set::To(Val::Time(e.recorded_at))));
            out.push(Change::Update { table: "runs", key: run(), set });
        };
        match e.event_type.as_str() {
            "RunStarted" => {
                let def = e.data.get("definition");
                let pattern = def.and_then(|d| d.get("pattern")).and_then(Value::as_str).unwrap_or("");
                let steps = def.and_then(|d| d.get("steps")).and_then(Value::as_array).map_or(0, Vec::len);
                out.push(Change::Upsert {
                    table: "runs",
                    key: KEY,
                    cols: vec![
                        ("run_id", Val::Text(run_id.to_owned())),
                        ("workflow", text(e, "workflow")),
                        ("pattern", Val::Text(pattern.to_owned())),
                        ("status", Val::Text("running".into())),
                        ("started_at", Val::Time(e.recorded_at)),
                        ("finished_at", Val::Null),
                        ("steps_total", Val::Int(steps as i64)),
                        ("steps_completed", Val::Int(0)),
                        ("steps_failed", Val::Int(0)),
                        ("attempts", Val::Int(0)),
                        ("retries", Val::Int(0)),
                        ("activations", Val::Int(0)),
                        ("failure", Val::Null),
                        ("decision", Val::Null),
                        ("agreed", Val::Null),
                        ("output", Val::Null),
                        ("last_position", Val::Int(e.global_position)),
                        ("updated_at", Val::Time(e.recorded_at)),
                    ],
                });
            }
            "StepDispatched" => update(vec![("attempts", Set::Add(1))]),
            "StepCompleted" => update(vec![("steps_completed", Set::Add(1))]),
            "StepFailed" if e.data.get("will_retry") == Some(&Value::Bool(true)) => {
                update(vec![("retries", Set::Add(1))])
            }
            "StepFailed" => update(vec![("steps_failed", Set::Add(1))]),
            "VotesAggregated" => update(vec![
                ("decision", Set::To(text(e, "decision"))),
                ("agreed", Set::To(e.data.get("agreed").and_then(Value::as_bool).map_or(Val::Null, Val::Bool))),
            ]),
            "AgentActivated" => update(vec![("activations", Set::Add(1)), ("steps_total", Set::Add(1))]),
            "RunCompleted" => update(vec![
                ("status", Set::To(Val::Text("completed".into()))),
                ("finished_at", Set::To(Val::Time(e.recorded_at))),
                ("output", Set::To(Val::Json(e.data.get("output").cloned().unwrap_or(Value::Null)))),
            ]),
            "RunFailed" => update(vec![
                ("status", Set::To(Val::Text("failed".into()))),
                ("finished_at", Set::To(Val::Time(e.recorded_at))),
                ("failure", Set::To(text(e, "reason"))),
            ]),
            _ => update(vec![]),
        }
    }
}
