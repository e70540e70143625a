//! Agents: what performs a step. Built-in agents run in-process; command agents are local
//! processes speaking the stdin/stdout JSON protocol of `docs/agents.md`.

mod builtin;
mod command;

pub use command::{MAX_OUTPUT_BYTES, MAX_STDERR_BYTES, TERM_GRACE};

use ltmc_core::run::Outcome;
use ltmc_core::spec::{AgentDef, AgentKind};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Default agent timeout when neither the agent nor the configuration gives one (seconds).
pub const DEFAULT_TIMEOUT_SECS: f64 = 300.0;

/// The task handed to an agent (stdin of a command agent).
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    /// Run id.
    pub run_id: String,
    /// Session, if the run belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Workflow name.
    pub workflow: String,
    /// Step name.
    pub step: String,
    /// Agent name.
    pub agent: String,
    /// Attempt (1 = first).
    pub attempt: u32,
    /// `run/step/attempt`: the same on a re-dispatch after a crash.
    pub idempotency_key: String,
    /// The step's input.
    pub input: Value,
    /// Shared context (session memory); empty until sessions exist.
    pub context: Value,
}

/// Runs one attempt of an agent and reports its outcome. Never panics; every failure is an
/// [`Outcome::Failed`] with a reason.
pub async fn perform(def: &AgentDef, task: &Task, base_dir: &Path, default_timeout: Duration) -> Outcome {
    let timeout = def.timeout.map(Duration::from_secs_f64).unwrap_or(default_timeout);
    match def.kind() {
        Ok(AgentKind::Builtin(b)) => builtin::perform(b, def.params.as_ref(), task).await,
        Ok(AgentKind::Command(argv)) => command::perform(&argv, def, task, base_dir, timeout).await,
        Err(why) => Outcome::Failed { error: format!("agent {} {why}", task.agent), duration_ms: 0 },
    }
}
