//! Runs: the events of one workflow execution, and the pure rules that produce them.
//!
//! A run lives in stream `run-<uuid>`. The runtime folds the stream with [`evolve`], asks
//! [`decide`] what a command means, appends the answer, then performs [`pending_work`]. Because
//! `StepDispatched` is recorded before the agent starts, a crash at any point leaves a stream
//! from which the remaining work can be derived again.

pub mod aggregate;
mod decider;
mod events;
mod state;

pub use decider::{
    Command, DEFAULT_BACKOFF_SECS, MAX_BACKOFF_MS, MAX_RUN_OUTPUT_BYTES, Outcome, Rejection, decide, retry_delay_ms,
};
pub use events::{
    AgentActivated, CoordinationPointReached, HandoffAccepted, HandoffRefused, RunCompleted, RunEvent, RunFailed,
    RunStarted, StepCompleted, StepDispatched, StepFailed, StepReady, TriggerReceived, UnknownEvent, VotesAggregated,
};
pub use state::{Effect, IllegalTransition, RunState, RunStatus, StepState, StepStatus, evolve, pending_work};

/// Stream id of a run.
pub fn stream_id(run_id: &str) -> String {
    format!("run-{run_id}")
}

/// The idempotency key of one attempt of one step: `run/step/attempt`.
pub fn idempotency_key(run_id: &str, step: &str, attempt: u32) -> String {
    format!("{run_id}/{step}/{attempt}")
}
