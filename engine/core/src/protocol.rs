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
/// as plain-text output. A JSON object with none of `output`, `facts`, `vote` and `events` is itself
/// the output.
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
    /// Events to emit: in an `event_driven` workflow, each whose `type` is a trigger activates
    /// the agents listening for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EmittedEvent>,
}

/// A task on JetStream work queue `LTMC_TASKS`, subject `ltmc.tasks.<agent>`, with
/// `Nats-Msg-Id` = the idempotency key. It is the command-agent task plus the time limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerTask {
    /// The task, exactly as a command agent reads it on stdin.
    #[serde(flatten)]
    pub task: AgentTask,
    /// Seconds the attempt may go without a report (a heartbeat or the result) before the engine
    /// fails it; each heartbeat restarts the count. `ltmc worker` also stops its command after
    /// this long.
    pub timeout_secs: f64,
    /// How often to send a heartbeat while working, in seconds.
    pub heartbeat_secs: f64,
    /// Subject to send reports to: exactly `ltmc.results.<run_id>`. A worker terminates a task
    /// naming any other subject (or a `run_id` that is not a subject token) rather than send
    /// anything there.
    pub reply_subject: String,
}

/// A worker's report on `ltmc.results.<run_id>`: a heartbeat, or the attempt's result. Send
/// results with `Nats-Msg-Id` = `<idempotency_key>/result`; a result delivered twice is
/// recorded once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerReport {
    /// Run id, from the task.
    pub run_id: String,
    /// Step name, from the task.
    pub step: String,
    /// Attempt, from the task.
    pub attempt: u32,
    /// What is reported.
    #[serde(flatten)]
    pub body: ReportBody,
}

/// The body of a [`WorkerReport`], tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportBody {
    /// Still working (also sent when the task is picked up).
    Heartbeat {
        /// Who is working on it (free text, e.g. `host:pid`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// The attempt succeeded; fields as in a command agent's result.
    Completed {
        /// The step's output.
        #[serde(default)]
        output: Value,
        /// Facts that hold now.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        facts: Vec<String>,
        /// Vote, in a parallel workflow with aggregation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vote: Option<String>,
        /// Events to emit (event-driven workflows).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        events: Vec<EmittedEvent>,
        /// Wall time of the work, in ms.
        #[serde(default)]
        duration_ms: u64,
    },
    /// The attempt failed; it is retried per the agent's policy.
    Failed {
        /// Why.
        error: String,
        /// Wall time of the work, in ms.
        #[serde(default)]
        duration_ms: u64,
    },
}

/// An event an agent emits with its result. In an `event_driven` workflow, an event whose
/// `type` is one of the workflow's triggers activates the agents listening for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmittedEvent {
    /// Event type, `[A-Za-z0-9_-]{1,64}` (`code_change`, `test_failure`, …).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Anything; the input of the agents it activates.
    #[serde(default)]
    pub data: Value,
}
