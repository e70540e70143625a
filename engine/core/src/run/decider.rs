//! What a command means for a run, as events. Pure: no clock, no IO.

use serde_json::{Map, Value};

use std::collections::{BTreeMap, BTreeSet};

use super::aggregate::{COMPLETED_VOTE, FAILED_VOTE, Mode, verdict};
use super::events::*;
use super::idempotency_key;
use super::state::{RunState, RunStatus, StepStatus, evolve};
use crate::protocol::EmittedEvent;
use crate::spec::{DEFAULT_MAX_ACTIVATIONS, HandoffPolicy, Pattern, Workflow};

/// A request to change a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Start a run of a validated workflow.
    Start {
        /// New run id (UUID v7 from the runtime).
        run_id: String,
        /// The workflow to pin.
        workflow: Workflow,
        /// Input for the first steps (overrides the file's `input`).
        input: Option<Value>,
        /// Folder command agents run in (the workflow file's folder), kept so a resumed run
        /// finds its agents wherever it is resumed from.
        workdir: Option<String>,
    },
    /// An agent attempt finished.
    RecordOutcome {
        /// Step name.
        step: String,
        /// Attempt the outcome belongs to.
        attempt: u32,
        /// What happened.
        outcome: Outcome,
    },
    /// A failed attempt's backoff is over: dispatch `attempt` (the next one).
    Retry {
        /// Step name.
        step: String,
        /// The attempt to dispatch.
        attempt: u32,
    },
    /// Stop the run as failed (run timeout, cancellation, an unrecoverable engine error).
    Abort {
        /// Why.
        reason: String,
    },
    /// `event_driven`: an event from outside the run (`ltmc emit`, NATS).
    Trigger {
        /// Event type; must be one of the workflow's triggers.
        trigger: String,
        /// Its data.
        data: Value,
        /// Where it came from (`emit`, `nats`).
        source: String,
        /// Its version in stream `triggers-<run>`: an event is taken once.
        seq: Option<i64>,
    },
    /// `event_driven`: the idle timeout armed at `version` is over.
    Idle {
        /// The run's version when the timer was armed.
        version: i64,
    },
}

/// The result of one agent attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The agent succeeded.
    Completed {
        /// Its output.
        output: Value,
        /// Facts it reported (valid names).
        facts: Vec<String>,
        /// Its vote, if it gave one (parallel aggregation).
        vote: Option<String>,
        /// Events it emitted (activate agents in an `event_driven` workflow).
        events: Vec<EmittedEvent>,
        /// Wall time in ms.
        duration_ms: u64,
    },
    /// The agent failed.
    Failed {
        /// Why.
        error: String,
        /// Wall time in ms.
        duration_ms: u64,
    },
}

/// Backoff before the first retry when neither the agent nor the engine sets one, in seconds.
pub const DEFAULT_BACKOFF_SECS: f64 = 1.0;
/// Longest wait between two attempts, in milliseconds.
pub const MAX_BACKOFF_MS: u64 = 60_000;

/// The wait before retrying after failed attempt `attempt`: `base · 2^(attempt-1)`, at most
/// [`MAX_BACKOFF_MS`], with "equal jitter" (half fixed, half spread) so that agents failing
/// together do not retry together. The jitter is derived from the attempt's idempotency key,
/// not from a random source, so deciding stays deterministic and a replay gives the same wait.
pub fn retry_delay_ms(base_secs: f64, attempt: u32, key: &str) -> u64 {
    let base_ms = if base_secs.is_finite() && base_secs > 0.0 { base_secs * 1000.0 } else { 0.0 };
    let exp = (base_ms * 2f64.powi(attempt.saturating_sub(1).min(30) as i32)).min(MAX_BACKOFF_MS as f64) as u64;
    let half = exp / 2;
    // FNV-1a of the key.
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    half + h % (exp - half + 1)
}

/// A command that does not apply to the run as it is. Shown to the user; not a crash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// `Start` on a run that exists.
    #[error("run {0} has already started")]
    AlreadyStarted(String),
    /// A command for a run that has not started.
    #[error("the run has not started")]
    NotStarted,
    /// A command for a finished run.
    #[error("the run is already {0}")]
    Finished(&'static str),
    /// An outcome for a step the run does not have.
    #[error("the run has no step named {0}")]
    UnknownStep(String),
    /// An outcome for an attempt that is not running (a duplicate delivery, or a stale one).
    #[error("step {step} attempt {attempt} is not running; the outcome was already recorded or is stale")]
    NotRunning {
        /// Step.
        step: String,
        /// Attempt.
        attempt: u32,
    },
    /// A trigger or idle timeout for a run that is not `event_driven`.
    #[error("the run's workflow is not event_driven")]
    NotEventDriven,
    /// An event type the workflow does not list as a trigger.
    #[error("`{0}` is not a trigger of this workflow; its triggers are {1}")]
    UnknownTrigger(String, String),
    /// An event from outside that was already taken.
    #[error("trigger {0} was already taken")]
    AlreadyTaken(i64),
    /// The idle timer fired, but something happened since it was armed.
    #[error("the run is not idle")]
    NotIdle,
    /// The workflow cannot be compiled (should have been caught at parse time).
    #[error("the workflow is invalid: {0}")]
    InvalidWorkflow(String),
}

/// Decides the events for `cmd` given the run's current state.
pub fn decide(s: &RunState, cmd: Command) -> Result<Vec<RunEvent>, Rejection> {
    match cmd {
        Command::Start { run_id, workflow, input, workdir } => {
            if s.status != RunStatus::NotStarted {
                return Err(Rejection::AlreadyStarted(s.run_id.clone()));
            }
            let (definition, definition_hash) = workflow.pinned();
            let started = RunEvent::RunStarted(RunStarted {
                run_id,
                workflow: workflow.name.clone(),
                definition,
                definition_hash,
                input: input.unwrap_or_else(|| workflow.input.clone()),
                workdir,
            });
            let next = evolve(s.clone(), &started).map_err(|e| Rejection::InvalidWorkflow(e.to_string()))?;
            let mut out = vec![started];
            out.extend(release_ready(&next));
            Ok(out)
        }
        Command::RecordOutcome { step, attempt, outcome } => {
            check_running(s)?;
            let Some((i, st)) = s.step(&step) else { return Err(Rejection::UnknownStep(step)) };
            if st.status != (StepStatus::Dispatched { attempt }) || st.error.is_some() {
                return Err(Rejection::NotRunning { step, attempt });
            }
            match outcome {
                Outcome::Completed { output, facts, vote, events, duration_ms } => {
                    let by = step.clone();
                    let emitted = events.clone();
                    let done = RunEvent::StepCompleted(StepCompleted {
                        step,
                        attempt,
                        output,
                        duration_ms,
                        facts,
                        vote,
                        events,
                    });
                    let mut next = fold(s, &done)?;
                    let mut out = vec![done];
                    for reached in points_reached(&next, &by) {
                        next = fold(&next, &reached)?;
                        out.push(reached);
                    }
                    if next.is_event_driven() {
                        // Emitted events that are triggers start agents; the others are kept
                        // in StepCompleted as data.
                        let triggers = next.workflow.as_ref().map(|w| w.triggers.clone()).unwrap_or_default();
                        let incoming = emitted
                            .into_iter()
                            .filter(|e| triggers.contains_key(&e.event_type))
                            .map(|e| (e.event_type, e.data, format!("step:{by}"), None))
                            .collect();
                        out.extend(react(next, incoming)?);
                        return Ok(out);
                    }
                    if let Some(mode) = aggregation(&next) {
                        // Until the votes decide, a hand-over waiting for facts may now proceed.
                        let counted = count_votes(&next, mode);
                        if counted.is_empty() {
                            out.extend(release_ready(&next));
                        }
                        out.extend(counted);
                    } else if next.steps.iter().all(|st| st.status == StepStatus::Completed) {
                        out.push(finish(&next));
                    } else {
                        out.extend(release_ready(&next));
                    }
                    Ok(out)
                }
                Outcome::Failed { error, duration_ms } => {
                    let agent =
                        s.workflow.as_ref().and_then(|w| s.plan.as_ref().and_then(|p| w.agents.get(&p.steps[i].agent)));
                    let retries = agent.and_then(|d| d.retries).unwrap_or(0);
                    let will_retry = attempt <= retries;
                    let retry_in_ms = will_retry.then(|| {
                        let base = agent.and_then(|d| d.backoff).unwrap_or(DEFAULT_BACKOFF_SECS);
                        retry_delay_ms(base, attempt, &idempotency_key(&s.run_id, &step, attempt))
                    });
                    let failed = RunEvent::StepFailed(StepFailed {
                        step: step.clone(),
                        attempt,
                        error: error.clone(),
                        duration_ms,
                        will_retry,
                        retry_in_ms,
                    });
                    if will_retry {
                        Ok(vec![failed])
                    } else if let Some(mode) = aggregation(s).filter(|m| m.tolerates_failures()) {
                        // The group decides: a failure is a `failed` vote.
                        let next = fold(s, &failed)?;
                        let mut out = vec![failed];
                        out.extend(count_votes(&next, mode));
                        Ok(out)
                    } else {
                        let reason = format!("step {step} failed after {attempt} attempt(s): {error}");
                        Ok(vec![failed, RunEvent::RunFailed(RunFailed { reason, step: Some(step), unmet: vec![] })])
                    }
                }
            }
        }
        Command::Retry { step, attempt } => {
            check_running(s)?;
            let Some((i, st)) = s.step(&step) else { return Err(Rejection::UnknownStep(step)) };
            if st.retry_in_ms.is_none() || st.status != (StepStatus::Dispatched { attempt: attempt.saturating_sub(1) })
            {
                return Err(Rejection::NotRunning { step, attempt });
            }
            let agent = s.plan.as_ref().map(|p| p.steps[i].agent.clone()).unwrap_or_default();
            Ok(vec![RunEvent::StepDispatched(StepDispatched {
                idempotency_key: idempotency_key(&s.run_id, &step, attempt),
                step,
                agent,
                attempt,
            })])
        }
        Command::Abort { reason } => {
            check_running(s)?;
            Ok(vec![RunEvent::RunFailed(RunFailed { reason, step: None, unmet: vec![] })])
        }
        Command::Trigger { trigger, data, source, seq } => {
            check_running(s)?;
            let Some(wf) = s.workflow.as_ref().filter(|_| s.is_event_driven()) else {
                return Err(Rejection::NotEventDriven);
            };
            if !wf.triggers.contains_key(&trigger) {
                let known: Vec<&str> = wf.triggers.keys().map(String::as_str).collect();
                return Err(Rejection::UnknownTrigger(trigger, known.join(", ")));
            }
            if let Some(q) = seq.filter(|q| *q <= s.triggers_seq) {
                return Err(Rejection::AlreadyTaken(q));
            }
            react(s.clone(), vec![(trigger, data, source, seq)])
        }
        Command::Idle { version } => {
            check_running(s)?;
            if !s.is_event_driven() {
                return Err(Rejection::NotEventDriven);
            }
            if s.version != version || s.steps.iter().any(|st| st.status != StepStatus::Completed) {
                return Err(Rejection::NotIdle);
            }
            Ok(vec![finish_reactive(s, "idle")])
        }
    }
}

/// An event reaching an `event_driven` run: (type, data, source, seq).
type Incoming = (String, Value, String, Option<i64>);

/// `event_driven`: records each incoming event and the agents it starts (while under the
/// activation cap), dispatches the activations that may run (all of them with
/// `dynamic_agent_allocation`, else one at a time per agent), and ends the run once the cap is
/// reached and nothing is left to run.
fn react(mut s: RunState, incoming: Vec<Incoming>) -> Result<Vec<RunEvent>, Rejection> {
    let Some(wf) = s.workflow.clone() else { return Ok(vec![]) };
    let cap = wf.max_activations.unwrap_or(DEFAULT_MAX_ACTIVATIONS);
    let mut out = Vec::new();
    for (trigger, data, source, seq) in incoming {
        let input = serde_json::json!({ "trigger": trigger, "data": data, "source": source });
        let mut activations = Vec::new();
        for agent in wf.triggers.get(&trigger).into_iter().flatten() {
            let n = s.activations + activations.len() as u32;
            if n >= cap {
                break;
            }
            activations.push(AgentActivated {
                step: format!("{agent}-{}", n + 1),
                agent: agent.clone(),
                trigger: trigger.clone(),
                input: input.clone(),
            });
        }
        let activated = activations.iter().map(|a| a.step.clone()).collect();
        let received = RunEvent::TriggerReceived(TriggerReceived { trigger, data, source, seq, activated });
        s = fold(&s, &received)?;
        out.push(received);
        for a in activations {
            let a = RunEvent::AgentActivated(a);
            s = fold(&s, &a)?;
            out.push(a);
        }
    }
    let Some(plan) = s.plan.clone() else { return Ok(out) };
    let mut busy: BTreeSet<&str> = plan
        .steps
        .iter()
        .zip(&s.steps)
        .filter(|(_, st)| matches!(st.status, StepStatus::Dispatched { .. }))
        .map(|(p, _)| p.agent.as_str())
        .collect();
    for (i, p) in plan.steps.iter().enumerate() {
        if s.steps[i].status != StepStatus::Ready || (!wf.dynamic_agent_allocation && busy.contains(p.agent.as_str())) {
            continue;
        }
        busy.insert(&p.agent);
        let dispatched = RunEvent::StepDispatched(StepDispatched {
            step: p.name.clone(),
            agent: p.agent.clone(),
            attempt: 1,
            idempotency_key: idempotency_key(&s.run_id, &p.name, 1),
        });
        s = fold(&s, &dispatched)?;
        out.push(dispatched);
    }
    if s.activations >= cap && s.steps.iter().all(|st| st.status == StepStatus::Completed) {
        out.push(finish_reactive(&s, "max_activations"));
    }
    Ok(out)
}

/// The end of an `event_driven` run (`ended`: `idle` or `max_activations`): `RunCompleted` with
/// every activation's output, or `RunFailed` with the unmet success criteria.
fn finish_reactive(s: &RunState, ended: &str) -> RunEvent {
    let outputs: Map<String, Value> = s
        .plan
        .iter()
        .flat_map(|p| p.steps.iter())
        .zip(&s.steps)
        .map(|(p, st)| (p.name.clone(), st.output.clone().unwrap_or(Value::Null)))
        .collect();
    let mut output = serde_json::json!({ "ended": ended, "activations": s.activations, "outputs": outputs });
    if serde_json::to_vec(&output).map_or(0, |v| v.len()) > MAX_RUN_OUTPUT_BYTES {
        output = serde_json::json!({
            "ended": ended,
            "activations": s.activations,
            "truncated": true,
            "limit_bytes": MAX_RUN_OUTPUT_BYTES,
        });
    }
    finish_with(s, output)
}

fn check_running(s: &RunState) -> Result<(), Rejection> {
    match s.status {
        RunStatus::NotStarted => Err(Rejection::NotStarted),
        RunStatus::Running => Ok(()),
        other => Err(Rejection::Finished(other.as_str())),
    }
}

fn fold(s: &RunState, e: &RunEvent) -> Result<RunState, Rejection> {
    evolve(s.clone(), e).map_err(|err| Rejection::InvalidWorkflow(err.to_string()))
}

/// `StepReady` + `StepDispatched` for every pending step whose needs have all completed.
/// Dispatch is recorded in the same append as readiness: intent before effect, one commit.
/// With `handoff_validation`, a step whose agent `requires` facts is handed over only if they
/// hold (`HandoffAccepted`); otherwise the hand-over is refused (`HandoffRefused` with the unmet
/// list) and, by `handoff_policy`:
/// - `fail`: the run fails. Only the facts of the steps it needs (directly or not) count, so
///   the answer does not depend on which branch finished first.
/// - `wait`: the step waits until the run's facts (from any step) include them, re-checked
///   after every completion; the run fails once nothing is left running that could report them.
fn release_ready(s: &RunState) -> Vec<RunEvent> {
    let (Some(plan), Some(wf)) = (&s.plan, &s.workflow) else { return vec![] };
    let wait = wf.handoff_policy == HandoffPolicy::Wait;
    let requires = |i: usize| -> Vec<String> {
        if !wf.handoff_validation {
            return vec![];
        }
        wf.agents.get(&plan.steps[i].agent).map(|a| a.requires.clone()).unwrap_or_default()
    };
    let from = |i: usize| -> Vec<String> { plan.steps[i].needs.iter().map(|&n| plan.steps[n].name.clone()).collect() };
    let unmet_of = |i: usize, requires: &[String]| -> Vec<String> {
        // Spare the walk over the step's ancestors when nothing is required.
        let facts = if requires.is_empty() || wait { None } else { Some(s.facts_before(i)) };
        let holds = |f: &String| facts.as_ref().map_or_else(|| s.facts.contains(f), |b| b.contains(f));
        requires.iter().filter(|f| !holds(f)).cloned().collect()
    };
    let dispatch = |i: usize| {
        let p = &plan.steps[i];
        RunEvent::StepDispatched(StepDispatched {
            step: p.name.clone(),
            agent: p.agent.clone(),
            attempt: 1,
            idempotency_key: idempotency_key(&s.run_id, &p.name, 1),
        })
    };
    let mut out = Vec::new();
    let (mut dispatched, mut waiting) = (false, Vec::new());
    for i in 0..plan.steps.len() {
        let st = &s.steps[i];
        let name = plan.steps[i].name.clone();
        let newly_ready = st.status == StepStatus::Pending
            && plan.steps[i].needs.iter().all(|&n| s.steps[n].status == StepStatus::Completed);
        let still_waiting = st.status == StepStatus::Ready && !st.waiting.is_empty();
        if !newly_ready && !still_waiting {
            continue;
        }
        let requires = requires(i);
        let unmet = unmet_of(i, &requires);
        if newly_ready {
            out.push(RunEvent::StepReady(StepReady { step: name.clone() }));
        }
        if unmet.is_empty() {
            if !requires.is_empty() {
                out.push(RunEvent::HandoffAccepted(HandoffAccepted { step: name, from: from(i), requires }));
            }
            out.push(dispatch(i));
            dispatched = true;
        } else if !wait {
            let reason = format!("hand-over to step {name} refused: unmet prerequisites {}", unmet.join(", "));
            let refused =
                HandoffRefused { step: name.clone(), from: from(i), requires, unmet: unmet.clone(), waiting: false };
            return vec![
                RunEvent::StepReady(StepReady { step: name.clone() }),
                RunEvent::HandoffRefused(refused),
                RunEvent::RunFailed(RunFailed { reason, step: Some(name), unmet }),
            ];
        } else {
            if newly_ready {
                let refused =
                    HandoffRefused { step: name.clone(), from: from(i), requires, unmet: unmet.clone(), waiting: true };
                out.push(RunEvent::HandoffRefused(refused));
            }
            waiting.push((name, unmet));
        }
    }
    let running = s.steps.iter().any(|st| matches!(st.status, StepStatus::Dispatched { .. }));
    if let Some((step, unmet)) = waiting.first().filter(|_| !running && !dispatched) {
        let reason = format!(
            "hand-over to step {step} is waiting for {}, and no step is left running that could report them",
            unmet.join(", ")
        );
        out.push(RunEvent::RunFailed(RunFailed { reason, step: Some(step.clone()), unmet: unmet.clone() }));
    }
    out
}

/// `CoordinationPointReached` for every point not yet reached whose steps have all completed
/// (or, for a point without steps, whose fact now holds), credited to step `by`.
fn points_reached(s: &RunState, by: &str) -> Vec<RunEvent> {
    let Some(wf) = &s.workflow else { return vec![] };
    wf.coordination_points
        .iter()
        .filter(|p| !s.reached.contains(&p.name))
        .filter(|p| {
            if p.after.is_empty() {
                s.facts.contains(&p.name)
            } else {
                p.after.iter().all(|a| s.step(a).is_some_and(|(_, st)| st.status == StepStatus::Completed))
            }
        })
        .map(|p| {
            RunEvent::CoordinationPointReached(CoordinationPointReached {
                point: p.name.clone(),
                after: p.after.clone(),
                by: by.to_owned(),
            })
        })
        .collect()
}

/// The aggregation mode of a `parallel` workflow that names one; `None` otherwise.
fn aggregation(s: &RunState) -> Option<Mode> {
    let wf = s.workflow.as_ref()?;
    if wf.pattern != Pattern::Parallel {
        return None;
    }
    wf.aggregation.as_deref().and_then(Mode::parse)
}

/// `VotesAggregated` and the run's end once the group can be decided; nothing before.
fn count_votes(s: &RunState, mode: Mode) -> Vec<RunEvent> {
    let Some(plan) = &s.plan else { return vec![] };
    let votes: Vec<Option<&str>> = s
        .steps
        .iter()
        .map(|st| match st.status {
            StepStatus::Completed => Some(st.vote.as_deref().unwrap_or(COMPLETED_VOTE)),
            StepStatus::Failed => Some(FAILED_VOTE),
            _ => None,
        })
        .collect();
    let Some(v) = verdict(mode, &votes) else { return vec![] };
    let counted: BTreeMap<String, String> =
        plan.steps.iter().zip(&votes).filter_map(|(p, vote)| vote.map(|v| (p.name.clone(), v.to_owned()))).collect();
    let mode_name = s.workflow.as_ref().and_then(|w| w.aggregation.clone()).unwrap_or_default();
    let aggregated = RunEvent::VotesAggregated(VotesAggregated {
        mode: mode_name.clone(),
        votes: counted.clone(),
        decision: v.decision.clone(),
        agreed: v.agreed,
        success: v.success,
    });
    if !v.success {
        let votes: Vec<String> = counted.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let reason = format!("aggregation {mode_name} not satisfied: {}", votes.join(", "));
        return vec![aggregated, RunEvent::RunFailed(RunFailed { reason, step: None, unmet: vec![] })];
    }
    // The run's output: the decision, the votes and the completed steps' outputs (the first
    // one's alone for `first`).
    let outputs: Map<String, Value> = plan
        .steps
        .iter()
        .zip(&s.steps)
        .filter(|(_, st)| st.status == StepStatus::Completed)
        .map(|(p, st)| (p.name.clone(), st.output.clone().unwrap_or(Value::Null)))
        .collect();
    let output = serde_json::json!({ "decision": v.decision, "votes": counted, "outputs": outputs });
    let end = match finish(s) {
        RunEvent::RunCompleted(_) => RunEvent::RunCompleted(RunCompleted { output: cap_output(output, plan) }),
        failed => failed,
    };
    vec![aggregated, end]
}

fn cap_output(output: Value, plan: &crate::spec::Plan) -> Value {
    if serde_json::to_vec(&output).map_or(0, |v| v.len()) <= MAX_RUN_OUTPUT_BYTES {
        return output;
    }
    let names: Vec<&str> = plan.steps.iter().map(|p| p.name.as_str()).collect();
    serde_json::json!({
        "decision": output["decision"],
        "votes": output["votes"],
        "truncated": true,
        "limit_bytes": MAX_RUN_OUTPUT_BYTES,
        "outputs_in_steps": names,
    })
}

/// The run's last event once every step has completed: `RunCompleted`, or `RunFailed` with the
/// success criteria that do not hold.
fn finish(s: &RunState) -> RunEvent {
    finish_with(s, run_output(s))
}

fn finish_with(s: &RunState, output: Value) -> RunEvent {
    let criteria = s.workflow.as_ref().map(|w| w.success_criteria.clone()).unwrap_or_default();
    let unmet: Vec<String> = criteria.into_iter().filter(|c| !s.facts.contains(c)).collect();
    if unmet.is_empty() {
        RunEvent::RunCompleted(RunCompleted { output })
    } else {
        RunEvent::RunFailed(RunFailed {
            reason: format!("every step completed but the success criteria are not met: {}", unmet.join(", ")),
            step: None,
            unmet,
        })
    }
}

/// Largest run output recorded in `RunCompleted`, as JSON; a larger map of final outputs is
/// replaced by a pointer to the steps that hold them.
pub const MAX_RUN_OUTPUT_BYTES: usize = 512 * 1024;

/// The run's result: the output of its one final step, or a map of final step → output.
fn run_output(s: &RunState) -> Value {
    let Some(plan) = &s.plan else { return Value::Null };
    let leaves = plan.leaves();
    if let [one] = leaves.as_slice() {
        return s.steps[*one].output.clone().unwrap_or(Value::Null);
    }
    let mut m = Map::new();
    for &i in &leaves {
        m.insert(plan.steps[i].name.clone(), s.steps[i].output.clone().unwrap_or(Value::Null));
    }
    let output = Value::Object(m);
    if serde_json::to_vec(&output).map_or(0, |v| v.len()) > MAX_RUN_OUTPUT_BYTES {
        let names: Vec<&str> = leaves.iter().map(|&i| plan.steps[i].name.as_str()).collect();
        return serde_json::json!({
            "truncated": true,
            "limit_bytes": MAX_RUN_OUTPUT_BYTES,
            "outputs_in_steps": names,
        });
    }
    output
}
