use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// How an agent is defined in a workflow's `agents:` map or in an agents file.
///
/// Exactly one of `run`, `builtin` or `worker` says how it runs. `role`, `duration` and
/// `description` are the seed guide's descriptive fields and are kept with the definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    /// A command in argv form (`["python3", "agent.py"]`), or a string split on whitespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Command>,
    /// A built-in agent: `noop`, `echo`, `sleep`, `fail`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Builtin>,
    /// Served by workers over NATS: the task goes to JetStream work queue `LTMC_TASKS`, subject
    /// `ltmc.tasks.<agent>`; results come back on `ltmc.results.<run>` (`docs/workers.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<bool>,
    /// Parameters of a built-in agent (`ms` for `sleep`, `message` for `fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Seconds before the agent is stopped (its whole process group is killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Attempts after the first when it fails (default: the engine's `retry_attempts`, 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds before the first retry; each later retry waits twice as long (at most 60 s),
    /// with jitter (default: the engine's `retry_backoff`, 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<f64>,
    /// In an `event_driven` workflow: the triggers (event types) that start this agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
    /// Facts that must hold before a hand-over to this agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Undo command for rollback, argv form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Command>,
    /// Extra environment for a command agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory of a command agent, relative to the workflow file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// In `sequential_with_parallel_testing`: whether this is a testing agent (default: its name
    /// or role mentions "test").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testing: Option<bool>,
    /// Seed field: what the agent does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Seed field: expected duration, free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A command line: argv list, or one string split on whitespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Command {
    /// `["python3", "agent.py", "--fast"]`
    Argv(Vec<String>),
    /// `"python3 agent.py --fast"` (split on whitespace; no quoting, no shell).
    Line(String),
}

impl Command {
    /// The argv this command runs.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Argv(v) => v.clone(),
            Command::Line(s) => s.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

/// Built-in agents for tests, benchmarks and examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Succeeds at once with a `null` output.
    Noop,
    /// Succeeds at once with its input as output.
    Echo,
    /// Sleeps `params.ms` milliseconds (default 100), then echoes.
    Sleep,
    /// Fails with `params.message`.
    Fail,
}

/// The one way an agent runs, derived from its definition.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentKind {
    /// A built-in agent.
    Builtin(Builtin),
    /// A local command.
    Command(Vec<String>),
    /// Remote workers over NATS.
    Worker,
}

impl AgentDef {
    /// How this agent runs, or why it cannot.
    pub fn kind(&self) -> Result<AgentKind, String> {
        match (&self.run, &self.builtin, self.worker.unwrap_or(false)) {
            (Some(cmd), None, false) => {
                let argv = cmd.argv();
                if argv.is_empty() || argv[0].is_empty() {
                    return Err("`run` is empty; give a command like [\"python3\", \"agent.py\"]".into());
                }
                if let Command::Line(line) = cmd
                    && (line.contains('"') || line.contains('\''))
                {
                    return Err(
                        "`run` has quotes, which are not interpreted; use the list form [\"prog\", \"arg with spaces\"]"
                            .into(),
                    );
                }
                Ok(AgentKind::Command(argv))
            }
            (None, Some(b), false) => Ok(AgentKind::Builtin(*b)),
            (None, None, true) => Ok(AgentKind::Worker),
            (None, None, false) => {
                Err("says neither how to run: give `run: [command, args...]`, `builtin: noop|echo|sleep|fail` or `worker: true`".into())
            }
            _ => Err("gives more than one of `run`, `builtin` and `worker`; keep one".into()),
        }
    }
}
