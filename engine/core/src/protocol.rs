//! The command-agent protocol: what an agent reads on stdin and may print on stdout.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The task a command agent receives on stdin, as one JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentTask {
    /// Run id.
    pub run_id: String,
    /// Session, if the run belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Workflow name.
    pub workflow: String,
    /// Step name.
    pub step: String,
    /// Agent name.
    pub agent: String,
    /// Attempt (1 = first).
    pub attempt: u32,
    /// `run/step/attempt`: the same when a step is dispatched again after a crash, so an agent
    /// can make its own side effects idempotent.
    pub idempotency_key: String,
    /// The step's input: the run input for a first step, the output of the one step it needs,
    /// or a map of step name -> output when it needs several.
    pub input: Value,
    /// Shared context (session memory); an empty object in this version.
    pub context: Value,
}

/// What a command agent may print as the last JSON object on stdout. Any other stdout is taken
/// as plain-text output. A JSON object with none of `output`, `facts` and `vote` is itself the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentResult {
    /// The step's output, handed to the steps that need it.
    #[serde(default)]
    pub output: Value,
    /// Named conditions that hold now (`code_review_passed`), each `[A-Za-z0-9_-]{1,64}`. They
    /// are checked against the next agents' `requires` (with `handoff_validation`) and against
    /// the workflow's `success_criteria`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<String>,
    /// The agent's vote in a `parallel` workflow with `aggregation` (`approve`, `reject`, …),
    /// `[A-Za-z0-9_-]{1,64}`; without one, a completed agent votes `completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<String>,
}
