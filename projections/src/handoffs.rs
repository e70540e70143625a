//! `handoffs`: one row per checked hand-over — accepted, refused, or waiting — with the
//! prerequisites and the unmet ones.

use ltmc_core::RecordedEvent;
use serde_json::Value;

use super::{Change, Projection, Val, run_of, text};

pub(crate) struct Handoffs;

impl Projection for Handoffs {
    fn name(&self) -> &'static str {
        "handoffs"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["handoffs"]
    }

    fn append_only(&self) -> &'static [&'static str] {
        &["handoffs"]
    }

    fn apply(&self, e: &RecordedEvent, out: &mut Vec<Change>) {
        let Some(run_id) = run_of(&e.stream_id) else { return };
        let outcome = match e.event_type.as_str() {
            "HandoffAccepted" => "accepted",
            "HandoffRefused" if e.data.get("waiting") == Some(&Value::Bool(true)) => "waiting",
            "HandoffRefused" => "refused",
            _ => return,
        };
        if text(e, "step") == Val::Null {
            return;
        }
        let list = |f: &str| Val::Json(e.data.get(f).cloned().unwrap_or(Value::Array(vec![])));
        out.push(Change::Upsert {
            table: "handoffs",
            key: &["position"],
            cols: vec![
                ("position", Val::Int(e.global_position)),
                ("run_id", Val::Text(run_id.to_owned())),
                ("step", text(e, "step")),
                ("from_steps", list("from")),
                ("requires", list("requires")),
                ("unmet", list("unmet")),
                ("outcome", Val::Text(outcome.into())),
                ("at", Val::Time(e.recorded_at)),
            ],
        });
    }
}
