//! Workflow files: their shape, validation, and the plan each one compiles to.
//!
//! A workflow file is YAML or JSON. The seed guide's shapes are valid as written:
//! `{"pattern": "sequential", "agents": ["dev", "test"], "handoff_validation": true}` with the
//! agents defined in a separate agents file, or with an inline `agents:` map. The dependency form
//! lists `steps:` with `needs:`. Every form compiles to one [`Plan`]: a DAG of steps.

mod agent;
mod aliases;
mod error;
mod limits;
mod parse;
mod plan;
mod source;

pub use agent::{AgentDef, AgentKind, Builtin, Command};
pub use aliases::MAX_EXPANDED_BYTES;
pub use error::Error;
pub use limits::MAX_DEPTH;
pub use parse::{ParseOptions, parse_agents_str, parse_str};
pub use plan::{Plan, PlanStep};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Largest workflow or agents file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Most steps one workflow may have.
pub const MAX_STEPS: usize = 5_000;
/// Longest timeout accepted, in seconds (a year): longer values are mistakes.
pub const MAX_TIMEOUT_SECS: f64 = 31_536_000.0;
/// Activations an `event_driven` run may start when the file gives no `max_activations`.
pub const DEFAULT_MAX_ACTIVATIONS: u32 = 100;
/// Largest `max_activations` accepted.
pub const MAX_ACTIVATIONS: u32 = 10_000;
/// Seconds an `event_driven` run waits, with nothing running, for the next event before it
/// completes, when neither the file nor the configuration says.
pub const DEFAULT_IDLE_TIMEOUT_SECS: f64 = 60.0;
/// Most retries one agent may have.
pub const MAX_RETRIES: u32 = 100;
/// Longest first backoff accepted, in seconds (waits are capped at 60 s anyway).
pub const MAX_BACKOFF_SECS: f64 = 60.0;

/// The workflow patterns this version runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Agents run one after another; each gets the previous one's output.
    Sequential,
    /// Agents run at the same time; the run succeeds when all succeed.
    Parallel,
    /// Steps run when the steps they `need` have completed.
    Dependency,
    /// The seed's development flow: the agents run in order, except testing agents, which
    /// start when the step before them completes and run beside the later stages.
    SequentialWithParallelTesting,
    /// Agents start when events they listen for arrive (`triggers`); their results may emit
    /// more events. The run ends when idle for `idle_timeout` or after `max_activations`.
    EventDriven,
}

/// A validated workflow: every step's agent is defined, names are valid, the graph is acyclic.
/// This is what a run pins (content-hashed) in `RunStarted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Workflow {
    /// Workflow name (`[A-Za-z0-9_-]{1,64}`); defaults to the file stem.
    pub name: String,
    /// The pattern the file named (or `dependency` for the `steps:` form).
    pub pattern: Pattern,
    /// Definitions of the agents the steps use.
    pub agents: BTreeMap<String, AgentDef>,
    /// Steps in file order.
    pub steps: Vec<StepDef>,
    /// Seed option: check the next agent's `requires` facts at each hand-over.
    #[serde(default)]
    pub handoff_validation: bool,
    /// With `handoff_validation`, what an unmet prerequisite does: `fail` the run (default) or
    /// `wait` until steps of the run report the missing facts.
    #[serde(default, skip_serializing_if = "HandoffPolicy::is_fail")]
    pub handoff_policy: HandoffPolicy,
    /// Seed option: undo completed steps when the run fails.
    #[serde(default)]
    pub rollback_on_failure: bool,
    /// Named barriers, recorded as `CoordinationPointReached` when reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coordination_points: Vec<CoordinationPoint>,
    /// How a `parallel` workflow's votes decide the run: all, any, first, majority, consensus_required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<String>,
    /// Facts the run must hold when every step has completed; unmet ones fail the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success_criteria: Vec<String>,
    /// Run-level timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Input given to the first steps.
    #[serde(default)]
    pub input: Value,
    /// `event_driven`: each trigger (event type) and the agents it activates, in order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub triggers: BTreeMap<String, Vec<String>>,
    /// `event_driven`: start a new instance of an agent for every event (`true`), or queue
    /// events for an agent that is already running so it runs one at a time (`false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dynamic_agent_allocation: bool,
    /// `event_driven`: most agent activations in one run; later events are recorded, not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_activations: Option<u32>,
    /// `event_driven`: seconds without a running agent or a new event after which the run completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<f64>,
}

/// What a refused hand-over does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandoffPolicy {
    /// The run fails with the unmet prerequisites.
    #[default]
    Fail,
    /// The step waits until the facts hold (reported by any step of the run); the run fails
    /// only when nothing is left running that could report them.
    Wait,
}

impl HandoffPolicy {
    fn is_fail(&self) -> bool {
        *self == HandoffPolicy::Fail
    }
}

/// A named barrier: reached when every step of `after` has completed, or, when `after` is
/// empty (the seed's list form), when an agent reports the fact of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CoordinationPoint {
    /// The point's name.
    pub name: String,
    /// The steps that must have completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// One step of a validated workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepDef {
    /// Step name, unique in the workflow.
    pub name: String,
    /// Agent that performs it.
    pub agent: String,
    /// Steps that must complete first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Fixed input for this step (otherwise the outputs of its needs, or the run input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// JSON Schema of a workflow file (for editors and `schemas/workflow-file.json`).
pub fn file_schema() -> schemars::Schema {
    schemars::schema_for!(parse::WorkflowFile)
}

/// JSON Schema of an agents file.
pub fn agents_file_schema() -> schemars::Schema {
    let mut s = schemars::schema_for!(BTreeMap<String, AgentDef>);
    s.insert("title".into(), "LTMC agents file".into());
    s
}

impl Workflow {
    /// Compiles the workflow to its plan (a DAG of steps with indices).
    pub fn plan(&self) -> Result<Plan, Error> {
        Plan::compile(self)
    }

    /// Canonical JSON of the definition and its `sha256:` content hash.
    pub fn pinned(&self) -> (Value, String) {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let hash = crate::hash::content_hash(value.to_string().as_bytes());
        (value, hash)
    }
}
