//! The events of a run stream. Each is stored as `event_type` + `data`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A run began; the workflow definition is pinned here, so a changed file never alters it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunStarted {
    /// The run's id (UUID v7).
    pub run_id: String,
    /// Workflow name.
    pub workflow: String,
    /// The validated workflow definition (see the `workflow` schema).
    pub definition: Value,
    /// `sha256:` of the canonical definition JSON.
    pub definition_hash: String,
    /// Input given to the first steps.
    pub input: Value,
    /// Folder command agents run in (absolute), if the run has command agents' paths to resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// Every step a step needs has completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepReady {
    /// Step name.
    pub step: String,
}

/// The engine is about to start the step's agent (recorded before it starts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepDispatched {
    /// Step name.
    pub step: String,
    /// Agent name.
    pub agent: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// `run/step/attempt`; handed to the agent so it can deduplicate its own effects.
    pub idempotency_key: String,
}

/// The agent succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepCompleted {
    /// Step name.
    pub step: String,
    /// Which attempt succeeded.
    pub attempt: u32,
    /// The agent's output (JSON, or its plain text as a string).
    pub output: Value,
    /// Wall time of the agent, in milliseconds.
    pub duration_ms: u64,
    /// Named conditions the agent reported as holding now (`code_review_passed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<String>,
    /// The agent's vote, when it gave one (parallel aggregation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<String>,
    /// Events the agent emitted (they activate listening agents in an `event_driven` workflow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<crate::protocol::EmittedEvent>,
}

/// A named coordination point (barrier) was reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CoordinationPointReached {
    /// The point's name.
    pub point: String,
    /// The steps it waited for (empty when the point is a fact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// The step whose completion reached it.
    pub by: String,
}

/// A parallel group's votes were counted under the workflow's `aggregation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VotesAggregated {
    /// `all`, `any`, `first`, `majority` or `consensus_required`.
    pub mode: String,
    /// Each finished step's vote (`completed` when its agent gave none, `failed` for a failure).
    pub votes: std::collections::BTreeMap<String, String>,
    /// The winning vote, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Whether every vote was the same; `false` makes disagreement visible.
    pub agreed: bool,
    /// Whether the aggregation let the run succeed.
    pub success: bool,
}

/// With `handoff_validation`, a step's `requires` facts all held when it became ready: the
/// hand-over to its agent is accepted (recorded before the dispatch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HandoffAccepted {
    /// The step handed over to.
    pub step: String,
    /// The steps handing over (the ones it needs).
    pub from: Vec<String>,
    /// The prerequisites that were checked.
    pub requires: Vec<String>,
}

/// With `handoff_validation`, a step's `requires` facts did not all hold when it became ready:
/// the hand-over is refused and the run fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HandoffRefused {
    /// The step handed over to.
    pub step: String,
    /// The steps handing over.
    pub from: Vec<String>,
    /// The prerequisites.
    pub requires: Vec<String>,
    /// The ones that did not hold.
    pub unmet: Vec<String>,
    /// With `handoff_policy: wait`: the step waits for the facts (from any step of the run)
    /// instead of failing the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
}

/// The agent failed (non-zero exit, timeout, bad output, or a builtin `fail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepFailed {
    /// Step name.
    pub step: String,
    /// Which attempt failed.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// Wall time of the agent, in milliseconds.
    pub duration_ms: u64,
    /// Whether another attempt follows.
    pub will_retry: bool,
    /// When it does: the wait before the next attempt is dispatched, in milliseconds
    /// (exponential backoff with jitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// An event reached an `event_driven` run: emitted by one of its agents, or from outside
/// (`ltmc emit`, NATS `ltmc.emit.<run>.<type>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TriggerReceived {
    /// The event type (one of the workflow's triggers).
    pub trigger: String,
    /// Its data: the input of the agents it starts.
    pub data: Value,
    /// Where it came from: `step:<name>`, `emit`, `nats`.
    pub source: String,
    /// For an event from outside: its version in stream `triggers-<run>`, so each is taken once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// The steps it started (`<agent>-<n>`); empty when nobody listens or the activation cap
    /// was reached.
    #[serde(default)]
    pub activated: Vec<String>,
}

/// An agent instance was started for an event: a new step of the run, ready to dispatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentActivated {
    /// The new step's name, `<agent>-<n>` (n counts the run's activations).
    pub step: String,
    /// The agent.
    pub agent: String,
    /// The event type that started it.
    pub trigger: String,
    /// The step's input: `{"trigger": type, "data": data, "source": source}`.
    pub input: Value,
}

/// Every step completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunCompleted {
    /// The output of the last step, or a map of the final steps' outputs.
    pub output: Value,
}

/// The run stopped without completing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunFailed {
    /// Why.
    pub reason: String,
    /// The step that failed, if a step did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Facts that were required and did not hold (refused hand-over, unmet success criteria).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmet: Vec<String>,
}

/// Every event of a run stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event_type", content = "data")]
pub enum RunEvent {
    /// See [`RunStarted`].
    RunStarted(RunStarted),
    /// See [`StepReady`].
    StepReady(StepReady),
    /// See [`StepDispatched`].
    StepDispatched(StepDispatched),
    /// See [`StepCompleted`].
    StepCompleted(StepCompleted),
    /// See [`StepFailed`].
    StepFailed(StepFailed),
    /// See [`HandoffAccepted`].
    HandoffAccepted(HandoffAccepted),
    /// See [`VotesAggregated`].
    VotesAggregated(VotesAggregated),
    /// See [`CoordinationPointReached`].
    CoordinationPointReached(CoordinationPointReached),
    /// See [`HandoffRefused`].
    HandoffRefused(HandoffRefused),
    /// See [`TriggerReceived`].
    TriggerReceived(TriggerReceived),
    /// See [`AgentActivated`].
    AgentActivated(AgentActivated),
    /// See [`RunCompleted`].
    RunCompleted(RunCompleted),
    /// See [`RunFailed`].
    RunFailed(RunFailed),
}

/// A stored event that is not a run event, or whose data does not match its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_type} cannot be read as a run event: {reason}")]
pub struct UnknownEvent {
    /// The stored type.
    pub event_type: String,
    /// Why it failed to parse.
    pub reason: String,
}

impl RunEvent {
    /// Schema version of every run event's data.
    pub const SCHEMA_VERSION: i32 = 1;

    /// The stored `event_type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            RunEvent::RunStarted(_) => "RunStarted",
            RunEvent::StepReady(_) => "StepReady",
            RunEvent::StepDispatched(_) => "StepDispatched",
            RunEvent::StepCompleted(_) => "StepCompleted",
            RunEvent::StepFailed(_) => "StepFailed",
            RunEvent::HandoffAccepted(_) => "HandoffAccepted",
            RunEvent::VotesAggregated(_) => "VotesAggregated",
            RunEvent::CoordinationPointReached(_) => "CoordinationPointReached",
            RunEvent::HandoffRefused(_) => "HandoffRefused",
            RunEvent::TriggerReceived(_) => "TriggerReceived",
            RunEvent::AgentActivated(_) => "AgentActivated",
            RunEvent::RunCompleted(_) => "RunCompleted",
            RunEvent::RunFailed(_) => "RunFailed",
        }
    }

    /// The stored `data`.
    pub fn data(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("data").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Reads a stored event back.
    pub fn from_parts(event_type: &str, data: &Value) -> Result<RunEvent, UnknownEvent> {
        serde_json::from_value(serde_json::json!({ "event_type": event_type, "data": data }))
            .map_err(|e| UnknownEvent { event_type: event_type.to_owned(), reason: e.to_string() })
    }
}
