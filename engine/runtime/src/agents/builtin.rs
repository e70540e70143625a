//! Built-in agents: `noop`, `echo`, `sleep`, `fail`.

use ltmc_core::run::Outcome;
use ltmc_core::spec::Builtin;
use serde_json::Value;
use std::time::{Duration, Instant};

use super::Task;

/// Facts a built-in reports: `params.facts` (for tests and examples of hand-over checks).
fn param_facts(params: Option<&Value>) -> Vec<String> {
    // Anything but a list of strings is kept in a form no name can have, so it is refused.
    match params.and_then(|p| p.get("facts")) {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => {
            items.iter().map(|f| f.as_str().map_or_else(|| format!("{f} (not a string)"), str::to_owned)).collect()
        }
        Some(other) => vec![format!("{other} (not a list)")],
    }
}

/// The vote a built-in casts: `params.vote`.
fn param_vote(params: Option<&Value>) -> Option<String> {
    match params.and_then(|p| p.get("vote")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(format!("{other} (not a string)")),
    }
}

/// The events a built-in emits: `params.events` (`[{type, data}]`).
fn param_events(params: Option<&Value>) -> Vec<ltmc_core::protocol::EmittedEvent> {
    super::command::parse_events(params.and_then(|p| p.get("events")).cloned())
}

pub(super) async fn perform(b: Builtin, params: Option<&Value>, task: &Task) -> Outcome {
    let started = Instant::now();
    let param = |k: &str| params.and_then(|p| p.get(k));
    match b {
        Builtin::Noop => Outcome::Completed {
            output: Value::Null,
            facts: param_facts(params),
            vote: param_vote(params),
            events: param_events(params),
            duration_ms: 0,
        },
        Builtin::Echo => Outcome::Completed {
            output: task.input.clone(),
            facts: param_facts(params),
            vote: param_vote(params),
            events: param_events(params),
            duration_ms: 0,
        },
        Builtin::Sleep => {
            let ms = param("ms").and_then(Value::as_u64).unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Outcome::Completed {
                output: task.input.clone(),
                facts: param_facts(params),
                vote: param_vote(params),
                events: param_events(params),
                duration_ms: started.elapsed().as_millis() as u64,
            }
        }
        Builtin::Fail => Outcome::Failed {
            error: param("message").and_then(Value::as_str).unwrap_or("builtin fail agent failed").to_owned(),
            duration_ms: 0,
        },
    }
}
