//! The state of a run, folded from its events, and the work it implies.

use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::events::RunEvent;
use crate::spec::{Pattern, Plan, PlanStep, Workflow};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunStatus {
    /// No `RunStarted` yet.
    #[default]
    NotStarted,
    /// Started, not finished.
    Running,
    /// `RunCompleted`.
    Completed,
    /// `RunFailed`.
    Failed,
}

impl RunStatus {
    /// Lower-case name used in the CLI and views.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::NotStarted => "not_started",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
        }
    }

    /// Completed or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed)
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Waiting for the steps it needs.
    Pending,
    /// Its needs are met; not yet dispatched.
    Ready,
    /// Its agent was (or is about to be) started for this attempt.
    Dispatched {
        /// Current attempt.
        attempt: u32,
    },
    /// Succeeded.
    Completed,
    /// Failed for good.
    Failed,
}

/// One step's state.
#[derive(Debug, Clone, PartialEq)]
pub struct StepState {
    /// Status.
    pub status: StepStatus,
    /// Attempts started so far.
    pub attempts: u32,
    /// Output once completed.
    pub output: Option<Value>,
    /// Last error.
    pub error: Option<String>,
    /// Set while a failed attempt waits for its retry: the backoff in milliseconds.
    pub retry_in_ms: Option<u64>,
    /// The agent's vote, once completed.
    pub vote: Option<String>,
    /// The facts its agent reported, once completed.
    pub facts: Vec<String>,
    /// With `handoff_policy: wait`: the prerequisites a ready step is waiting for.
    pub waiting: Vec<String>,
}

/// A run folded from its stream.
#[derive(Debug, Clone, Default)]
pub struct RunState {
    /// Run id, once started.
    pub run_id: String,
    /// Status.
    pub status: RunStatus,
    /// The pinned workflow (shared: folding and deciding clone the state often).
    pub workflow: Option<Arc<Workflow>>,
    /// Its plan.
    pub plan: Option<Arc<Plan>>,
    /// Definition hash from `RunStarted`.
    pub definition_hash: String,
    /// Run input.
    pub input: Value,
    /// Folder command agents run in, from `RunStarted`.
    pub workdir: Option<String>,
    /// One entry per plan step.
    pub steps: Vec<StepState>,
    /// Step name → index.
    pub index: Arc<HashMap<String, usize>>,
    /// Number of events folded (the stream version).
    pub version: i64,
    /// Output once completed.
    pub output: Option<Value>,
    /// Reason once failed.
    pub failure: Option<String>,
    /// Facts reported by completed steps (they gate hand-overs and success criteria).
    pub facts: BTreeSet<String>,
    /// Set once a parallel group's votes were counted (`VotesAggregated`).
    pub aggregated: bool,
    /// Facts that were required and did not hold, once failed for that reason.
    pub unmet: Vec<String>,
    /// Coordination points reached so far.
    pub reached: BTreeSet<String>,
    /// `event_driven`: agent activations so far (steps added by `AgentActivated`).
    pub activations: u32,
    /// `event_driven`: the last event taken from stream `triggers-<run>` (its version).
    pub triggers_seq: i64,
}

/// An event that cannot follow the state it was applied to: the history is corrupt or was
/// written by incompatible code. Never skipped silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[LTMC-E001] illegal transition at version {version}: {event} cannot follow {state}")]
pub struct IllegalTransition {
    /// Stream version of the offending event.
    pub version: i64,
    /// Its type.
    pub event: String,
    /// What the state was.
    pub state: String,
}

/// Work the runtime must perform for a run, derived from its state.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start (or start again, after a crash) one attempt of a step's agent.
    RunAgent {
        /// Step index in the plan.
        step: usize,
        /// Attempt number.
        attempt: u32,
    },
    /// Wait `delay_ms`, then send `Command::Retry` for `attempt` of the step. After a crash the
    /// wait starts again from the restart.
    RetryAfter {
        /// Step index in the plan.
        step: usize,
        /// The attempt to dispatch when the wait is over.
        attempt: u32,
        /// The backoff.
        delay_ms: u64,
    },
    /// `event_driven`, nothing running: if the run is still at `version` after `delay_ms`, send
    /// `Command::Idle` (the run completes). Any new event moves the version on.
    IdleAfter {
        /// The run's version when it went idle.
        version: i64,
        /// The idle timeout.
        delay_ms: u64,
    },
}

impl StepState {
    fn new(status: StepStatus) -> StepState {
        StepState {
            status,
            attempts: 0,
            output: None,
            error: None,
            retry_in_ms: None,
            vote: None,
            facts: vec![],
            waiting: vec![],
        }
    }
}

impl RunState {
    /// The step named `name`, with its index.
    pub fn step(&self, name: &str) -> Option<(usize, &StepState)> {
        self.index.get(name).map(|&i| (i, &self.steps[i]))
    }

    /// The facts reported by the steps `i` needs, directly or through the steps they need: what a
    /// hand-over to step `i` may rely on, whatever other branches have done so far.
    pub fn facts_before(&self, i: usize) -> BTreeSet<String> {
        let Some(plan) = &self.plan else { return BTreeSet::new() };
        let mut seen = vec![false; plan.steps.len()];
        let mut stack: Vec<usize> = plan.steps[i].needs.clone();
        let mut facts = BTreeSet::new();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n], true) {
                continue;
            }
            facts.extend(self.steps[n].facts.iter().cloned());
            stack.extend(plan.steps[n].needs.iter().copied());
        }
        facts
    }

    /// The input a step's agent receives: its fixed input, else the run input for a first step,
    /// the single output it needs, or a map of the outputs it needs by step name.
    pub fn step_input(&self, i: usize) -> Value {
        let Some(plan) = &self.plan else { return Value::Null };
        let step = &plan.steps[i];
        if let Some(v) = &step.input {
            return v.clone();
        }
        match step.needs.as_slice() {
            [] => self.input.clone(),
            [one] => self.steps[*one].output.clone().unwrap_or(Value::Null),
            many => {
                let mut m = Map::new();
                for &n in many {
                    m.insert(plan.steps[n].name.clone(), self.steps[n].output.clone().unwrap_or(Value::Null));
                }
                Value::Object(m)
            }
        }
    }

    /// Whether the run's workflow is `event_driven`.
    pub fn is_event_driven(&self) -> bool {
        self.workflow.as_ref().is_some_and(|w| w.pattern == Pattern::EventDriven)
    }

    fn illegal(&self, e: &RunEvent, why: &str) -> IllegalTransition {
        IllegalTransition {
            version: self.version + 1,
            event: e.event_type().to_owned(),
            state: format!("run {} ({why})", self.status.as_str()),
        }
    }
}

/// Applies one event. Every legal (state, event) pair is listed; anything else is an
/// [`IllegalTransition`].
pub fn evolve(mut s: RunState, e: &RunEvent) -> Result<RunState, IllegalTransition> {
    match (s.status, e) {
        (RunStatus::NotStarted, RunEvent::RunStarted(ev)) => {
            let wf: Workflow = serde_json::from_value(ev.definition.clone())
                .map_err(|err| s.illegal(e, &format!("definition unreadable: {err}")))?;
            let plan = wf.plan().map_err(|err| s.illegal(e, &format!("definition invalid: {err}")))?;
            s.steps = vec![StepState::new(StepStatus::Pending); plan.steps.len()];
            s.index = Arc::new(plan.steps.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect());
            s.run_id = ev.run_id.clone();
            s.definition_hash = ev.definition_hash.clone();
            s.input = ev.input.clone();
            s.workdir = ev.workdir.clone();
            s.workflow = Some(Arc::new(wf));
            s.plan = Some(Arc::new(plan));
            s.status = RunStatus::Running;
        }
        (RunStatus::Running, RunEvent::StepReady(ev)) => {
            let i = step_index(&s, e, &ev.step)?;
            if s.steps[i].status != StepStatus::Pending {
                return Err(s.illegal(e, &format!("step {} is not pending", ev.step)));
            }
            s.steps[i].status = StepStatus::Ready;
        }
        (RunStatus::Running, RunEvent::StepDispatched(ev)) => {
            let i = step_index(&s, e, &ev.step)?;
            let st = &mut s.steps[i];
            let ok = match st.status {
                StepStatus::Ready => ev.attempt == 1,
                // A retry: the previous attempt failed with will_retry.
                StepStatus::Dispatched { attempt } => ev.attempt == attempt + 1 && st.error.is_some(),
                _ => false,
            };
            if !ok {
                return Err(s.illegal(e, &format!("step {} cannot start attempt {}", ev.step, ev.attempt)));
            }
            st.status = StepStatus::Dispatched { attempt: ev.attempt };
            st.attempts = ev.attempt;
            st.error = None;
            st.retry_in_ms = None;
        }
        (RunStatus::Running, RunEvent::StepCompleted(ev)) => {
            let i = step_index(&s, e, &ev.step)?;
            if s.steps[i].status != (StepStatus::Dispatched { attempt: ev.attempt }) || s.steps[i].error.is_some() {
                return Err(s.illegal(e, &format!("step {} attempt {} is not running", ev.step, ev.attempt)));
            }
            s.steps[i].status = StepStatus::Completed;
            s.steps[i].output = Some(ev.output.clone());
            s.steps[i].vote = ev.vote.clone();
            s.steps[i].facts = ev.facts.clone();
            s.facts.extend(ev.facts.iter().cloned());
        }
        (RunStatus::Running, RunEvent::StepFailed(ev)) => {
            let i = step_index(&s, e, &ev.step)?;
            if s.steps[i].status != (StepStatus::Dispatched { attempt: ev.attempt }) || s.steps[i].error.is_some() {
                return Err(s.illegal(e, &format!("step {} attempt {} is not running", ev.step, ev.attempt)));
            }
            s.steps[i].error = Some(ev.error.clone());
            if ev.will_retry {
                s.steps[i].retry_in_ms = Some(ev.retry_in_ms.unwrap_or(0));
            } else {
                s.steps[i].status = StepStatus::Failed;
            }
        }
        (RunStatus::Running, RunEvent::HandoffAccepted(ev)) => {
            let i = step_index(&s, e, &ev.step)?;
            if s.steps[i].status != StepStatus::Ready {
                return Err(s.illegal(e, &format!("step {} is not ready", ev.step)));
            }
            s.steps[i].waiting.clear();
        }
        (RunStatus::Running, RunEvent::HandoffRefused(ev)) => {
            let i = step_index(&s, e, &ev.step)?;
            if s.steps[i].status != StepStatus::Ready || !s.steps[i].waiting.is_empty() {
                return Err(s.illegal(e, &format!("step {} is not ready, or already waiting", ev.step)));
            }
            if ev.waiting {
                s.steps[i].waiting = ev.unmet.clone();
            }
        }
        (RunStatus::Running, RunEvent::CoordinationPointReached(ev)) => {
            let known = s.workflow.as_ref().is_some_and(|w| w.coordination_points.iter().any(|p| p.name == ev.point));
            if !known || !s.reached.insert(ev.point.clone()) {
                return Err(s.illegal(e, &format!("coordination point {} is unknown or already reached", ev.point)));
            }
        }
        (RunStatus::Running, RunEvent::TriggerReceived(ev)) => {
            if !s.is_event_driven() {
                return Err(s.illegal(e, "the workflow is not event_driven"));
            }
            if let Some(seq) = ev.seq {
                if seq <= s.triggers_seq {
                    return Err(s.illegal(e, &format!("trigger {seq} was already taken")));
                }
                s.triggers_seq = seq;
            }
        }
        (RunStatus::Running, RunEvent::AgentActivated(ev)) => {
            let listens = s.workflow.as_ref().is_some_and(|w| w.agents.contains_key(&ev.agent));
            if !s.is_event_driven() || !listens || s.index.contains_key(&ev.step) {
                return Err(s.illegal(e, &format!("agent {} cannot be activated as step {}", ev.agent, ev.step)));
            }
            if let Some(plan) = s.plan.as_mut() {
                Arc::make_mut(plan).steps.push(PlanStep {
                    name: ev.step.clone(),
                    agent: ev.agent.clone(),
                    needs: vec![],
                    input: Some(ev.input.clone()),
                });
            }
            Arc::make_mut(&mut s.index).insert(ev.step.clone(), s.steps.len());
            s.steps.push(StepState::new(StepStatus::Ready));
            s.activations += 1;
        }
        (RunStatus::Running, RunEvent::VotesAggregated(_)) => {
            if s.aggregated {
                return Err(s.illegal(e, "the votes were already counted"));
            }
            s.aggregated = true;
        }
        (RunStatus::Running, RunEvent::RunCompleted(ev)) => {
            // After an aggregation, steps may have failed or been abandoned (`any`, `first`).
            if !s.aggregated && s.steps.iter().any(|st| st.status != StepStatus::Completed) {
                return Err(s.illegal(e, "steps are unfinished"));
            }
            s.status = RunStatus::Completed;
            s.output = Some(ev.output.clone());
        }
        (RunStatus::Running, RunEvent::RunFailed(ev)) => {
            s.status = RunStatus::Failed;
            s.failure = Some(ev.reason.clone());
            s.unmet = ev.unmet.clone();
        }
        _ => return Err(s.illegal(e, "no such transition")),
    }
    s.version += 1;
    Ok(s)
}

fn step_index(s: &RunState, e: &RunEvent, name: &str) -> Result<usize, IllegalTransition> {
    s.index.get(name).copied().ok_or_else(|| s.illegal(e, &format!("unknown step {name}")))
}

/// The agents that should be running (every dispatched attempt without an outcome) and the
/// retries that are waiting. After a crash this re-derives the interrupted work; the same
/// idempotency keys are reused.
pub fn pending_work(s: &RunState) -> Vec<Effect> {
    if s.status != RunStatus::Running {
        return vec![];
    }
    // The same test `Command::Idle` makes (a failed activation has already failed the run).
    let idle = s.steps.iter().all(|st| st.status == StepStatus::Completed);
    if s.is_event_driven() && idle {
        let secs = s.workflow.as_ref().and_then(|w| w.idle_timeout).unwrap_or(crate::spec::DEFAULT_IDLE_TIMEOUT_SECS);
        return vec![Effect::IdleAfter { version: s.version, delay_ms: (secs * 1000.0) as u64 }];
    }
    s.steps
        .iter()
        .enumerate()
        .filter_map(|(i, st)| match (st.status, st.retry_in_ms) {
            (StepStatus::Dispatched { attempt }, None) if st.error.is_none() => {
                Some(Effect::RunAgent { step: i, attempt })
            }
            (StepStatus::Dispatched { attempt }, Some(delay_ms)) => {
                Some(Effect::RetryAfter { step: i, attempt: attempt + 1, delay_ms })
            }
            _ => None,
        })
        .collect()
}
