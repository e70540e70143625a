//! Agents: what performs a step. Built-in agents run in-process; command agents are local
//! processes speaking the stdin/stdout JSON protocol of `docs/agents.md`.

mod builtin;
mod command;
pub mod supervisor;

pub use command::{MAX_OUTPUT_BYTES, MAX_STDERR_BYTES, TERM_GRACE};

use ltmc_core::protocol::EmittedEvent;
use ltmc_core::run::Outcome;
use ltmc_core::run::aggregate::FAILED_VOTE;
use ltmc_core::spec::{AgentDef, AgentKind};
use std::path::Path;
use std::time::Duration;

/// Default agent timeout when neither the agent nor the configuration gives one (seconds).
pub const DEFAULT_TIMEOUT_SECS: f64 = 300.0;

/// The task handed to an agent (stdin of a command agent).
pub use ltmc_core::protocol::AgentTask as Task;

/// Largest list of emitted events one step records, as JSON.
pub const MAX_EVENTS_JSON_BYTES: usize = 256 * 1024;

/// Largest output one step records, as JSON. Larger outputs are replaced by a marker with a
/// preview, so an outcome always fits in an event (`MAX_EVENT_BYTES`).
pub const MAX_OUTPUT_JSON_BYTES: usize = 512 * 1024;

/// Runs one attempt of an agent and reports its outcome: in-process, as a local command, or
/// through the run's worker `mailbox` for a `worker: true` agent. Never panics; every failure is
/// an [`Outcome::Failed`] with a reason.
pub async fn perform(
    def: &AgentDef,
    task: &Task,
    base_dir: &Path,
    default_timeout: Duration,
    mailbox: Option<&crate::workers::RunMailbox>,
) -> Outcome {
    let timeout = def.timeout.and_then(|t| Duration::try_from_secs_f64(t).ok()).unwrap_or(default_timeout);
    let outcome = match def.kind() {
        Ok(AgentKind::Builtin(b)) => {
            match tokio::time::timeout(timeout, builtin::perform(b, def.params.as_ref(), task)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Failed {
                    error: format!("timed out after {:.1}s", timeout.as_secs_f64()),
                    duration_ms: timeout.as_millis() as u64,
                },
            }
        }
        Ok(AgentKind::Command(argv)) => command::perform(&argv, def, task, base_dir, timeout).await,
        Ok(AgentKind::Worker) => match mailbox {
            Some(m) => m.perform(task, timeout).await,
            None => Outcome::Failed {
                error: format!(
                    "agent {} is served by workers over NATS, and this engine has no NATS connection",
                    task.agent
                ),
                duration_ms: 0,
            },
        },
        Err(why) => Outcome::Failed { error: format!("agent {} {why}", task.agent), duration_ms: 0 },
    };
    normalize(outcome)
}

/// Makes an outcome safe to record: no U+0000 (Postgres cannot store it; it becomes U+FFFD) and
/// an output no larger than [`MAX_OUTPUT_JSON_BYTES`].
fn normalize(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Completed { output, facts, vote, events, duration_ms } => {
            // Facts and votes gate hand-overs and decide runs: a malformed one fails the attempt.
            if let Some(why) = facts.iter().find_map(|f| bad_name("fact", f)) {
                return Outcome::Failed { error: format!("the agent reported an invalid fact: {why}"), duration_ms };
            }
            if let Some(why) = vote.as_deref().and_then(|v| bad_name("vote", v)) {
                return Outcome::Failed { error: format!("the agent cast an invalid vote: {why}"), duration_ms };
            }
            if vote.as_deref() == Some(FAILED_VOTE) {
                return Outcome::Failed {
                    error: format!("the agent cast the vote `{FAILED_VOTE}`, which is reserved for agents that failed"),
                    duration_ms,
                };
            }
            if let Some(why) = events.iter().find_map(|e| bad_event(&e.event_type)) {
                return Outcome::Failed { error: format!("the agent emitted an invalid event: {why}"), duration_ms };
            }
            if crate::store::json_len(&serde_json::to_value(&events).unwrap_or_default()) > MAX_EVENTS_JSON_BYTES {
                return Outcome::Failed {
                    error: format!("the agent emitted more than {MAX_EVENTS_JSON_BYTES} bytes of events"),
                    duration_ms,
                };
            }
            let events = events.into_iter().map(|e| EmittedEvent { data: scrub_nul(e.data), ..e }).collect();
            let mut output = scrub_nul(output);
            let size = crate::store::json_len(&output);
            if size > MAX_OUTPUT_JSON_BYTES {
                let text = output.to_string();
                let mut cut = 64 * 1024;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                output = serde_json::json!({
                    "truncated": true,
                    "json_bytes": size,
                    "limit_bytes": MAX_OUTPUT_JSON_BYTES,
                    "preview": &text[..cut],
                });
            }
            Outcome::Completed { output, facts, vote, events, duration_ms }
        }
        Outcome::Failed { error, duration_ms } => {
            Outcome::Failed { error: error.replace('\0', "\u{fffd}"), duration_ms }
        }
    }
}

/// Why an emitted event's type is not acceptable.
fn bad_event(event_type: &str) -> Option<String> {
    if let Some(value) = event_type.strip_suffix(" (not an event)") {
        return Some(format!("events must be objects like {{\"type\": \"code_change\", \"data\": …}}; got {value}"));
    }
    ltmc_core::names::validate("event type", event_type).err().map(|e| e.to_string())
}

/// Why `name` cannot be a fact or vote: not a string (marked by the parsers), or not a name.
fn bad_name(what: &'static str, name: &str) -> Option<String> {
    if let Some(value) = name.strip_suffix(" (not a string)") {
        return Some(format!("{what}s must be strings; got {value}"));
    }
    if let Some(value) = name.strip_suffix(" (not a list)") {
        return Some(format!("{what}s must be a list of strings; got {value}"));
    }
    ltmc_core::names::validate(what, name).err().map(|e| e.to_string())
}

fn scrub_nul(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{fffd}")),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub_nul).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k.replace('\0', "\u{fffd}"), scrub_nul(v))).collect())
        }
        other => other,
    }
}
