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
