//! Agents: what performs a step. Built-in agents run in-process; command agents are local
//! processes speaking the stdin/stdout JSON protocol of `docs/agents.md`.

mod builtin;
mod command;

pub use command::{MAX_OUTPUT_BYTES, MAX_STDERR_BYTES, TERM_GRACE};

use ltmc_core::run::Outcome;
use ltmc_core::spec::{AgentDef, AgentKind};
use std::path::Path;
use std::time::Duration;

/// Default agent timeout when neither the agent nor the configuration gives one (seconds).
pub const DEFAULT_TIMEOUT_SECS: f64 = 300.0;

/// The task handed to an agent (stdin of a command agent).
pub use ltmc_core::protocol::AgentTask as Task;

/// Largest output one step records, as JSON. Larger outputs are replaced by a marker with a
/// preview, so an outcome always fits in an event (`MAX_EVENT_BYTES`).
pub const MAX_OUTPUT_JSON_BYTES: usize = 512 * 1024;

/// Runs one attempt of an agent and reports its outcome. Never panics; every failure is an
/// [`Outcome::Failed`] with a reason.
pub async fn perform(def: &AgentDef, task: &Task, base_dir: &Path, default_timeout: Duration) -> Outcome {
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
        Err(why) => Outcome::Failed { error: format!("agent {} {why}", task.agent), duration_ms: 0 },
    };
    normalize(outcome)
}

/// Makes an outcome safe to record: no U+0000 (Postgres cannot store it; it becomes U+FFFD) and
/// an output no larger than [`MAX_OUTPUT_JSON_BYTES`].
fn normalize(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Completed { output, facts, vote, duration_ms } => {
            // Facts and votes gate hand-overs and decide runs: a malformed one fails the attempt.
            if let Some(e) = facts.iter().find_map(|f| ltmc_core::names::validate("fact", f).err()) {
                return Outcome::Failed { error: format!("the agent reported an invalid fact: {e}"), duration_ms };
            }
            if let Some(e) = vote.as_deref().and_then(|v| ltmc_core::names::validate("vote", v).err()) {
                return Outcome::Failed { error: format!("the agent cast an invalid vote: {e}"), duration_ms };
            }
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
            Outcome::Completed { output, facts, vote, duration_ms }
        }
        Outcome::Failed { error, duration_ms } => {
            Outcome::Failed { error: error.replace('\0', "\u{fffd}"), duration_ms }
        }
    }
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
