//! The run driver: folds a run, asks the decider, appends, performs the pending work.
//!
//! Intent before effect: `StepDispatched` is committed before an agent starts, and an agent's
//! outcome is committed together with whatever it releases (the next steps' dispatch), so each
//! sequential step costs one commit. Outcomes that arrive together are decided and appended as
//! one batch. Recovery is the same loop started on an unfinished run: the fold yields the
//! dispatched-but-unfinished attempts, which run again with the same idempotency keys.

use ltmc_core::run::{self, Command, Effect, Outcome, RunEvent, RunState, evolve};
use ltmc_core::spec::Workflow;
use ltmc_core::{Metadata, NewEvent};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::agents::{self, Task};
use crate::store::{self, EventStore, ExpectedVersion, Store, new_event};
use crate::triggers;
use crate::workers::{RunMailbox, Workers};
use ltmc_core::spec::{AgentKind, Pattern};

/// Engine settings that shape how runs execute. The per-agent ones (`default_timeout`,
/// `retry_attempts`, `retry_backoff`) fill what an agent's definition leaves out and are pinned
/// with the run when it starts, so a resumed run keeps them whatever the configuration says later.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Agent timeout when the agent gives none (seed: `default_timeout = 300`).
    pub default_timeout: Duration,
    /// Retries after a failed attempt when the agent gives none (seed: `retry_attempts = 3`).
    pub retry_attempts: u32,
    /// Wait before the first retry, doubling each time (at most 60 s), with jitter.
    pub retry_backoff: Duration,
    /// Most agents running at once in this engine, across runs (seed: `max_concurrent_agents = 10`).
    pub max_concurrent_agents: usize,
    /// `event_driven` runs complete after this long with nothing running and no new event, when
    /// the workflow does not say (pinned at start).
    pub idle_timeout: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            default_timeout: Duration::from_secs_f64(agents::DEFAULT_TIMEOUT_SECS),
            retry_attempts: 3,
            retry_backoff: Duration::from_secs_f64(run::DEFAULT_BACKOFF_SECS),
            max_concurrent_agents: 10,
            idle_timeout: Duration::from_secs_f64(ltmc_core::spec::DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

/// Driver errors: the run could not be driven (the run's own failure is not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The stored history does not fold.
    #[error(transparent)]
    History(#[from] run::IllegalTransition),
    /// A stored event is not a run event.
    #[error(transparent)]
    Unknown(#[from] run::UnknownEvent),
    /// The command was refused.
    #[error(transparent)]
    Rejected(#[from] run::Rejection),
    /// No run with this id.
    #[error("no run {0}; `ltmc runs` lists them")]
    NotFound(String),
    /// The workflow has `worker: true` agents and the engine has no NATS connection.
    #[error("agent {0} is served by workers over NATS (`worker: true`); set LTMC_NATS_URL")]
    NeedsNats(String),
    /// NATS failed while opening the run's worker mailbox.
    #[error(transparent)]
    Workers(#[from] crate::workers::Error),
    /// Appends to this stream kept losing races to others; try again.
    #[error("stream {0} is too busy: other appends kept winning; try again")]
    Busy(String),
}

/// Runs workflows. Cheap to clone; clones share the concurrency limit.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    options: EngineOptions,
    slots: Arc<Semaphore>,
    workers: Option<Workers>,
}

/// Called with each event the driver appends (for progress output).
pub type Progress = Arc<dyn Fn(&RunEvent) + Send + Sync>;

impl Engine {
    /// An engine over `store`.
    pub fn new(store: Store, options: EngineOptions) -> Engine {
        let slots = Arc::new(Semaphore::new(options.max_concurrent_agents.max(1)));
        Engine { store, options, slots, workers: None }
    }

    /// Serves `worker: true` agents through NATS workers.
    pub fn with_workers(mut self, workers: Workers) -> Engine {
        self.workers = Some(workers);
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a run (appends `RunStarted` and the first dispatches) and returns its id.
    ///
    /// `workdir` is where command agents run (the workflow file's folder); it is recorded so a
    /// resumed run finds its agents from anywhere.
    pub async fn start(
        &self,
        mut workflow: Workflow,
        input: Option<Value>,
        workdir: Option<&Path>,
        progress: Option<&Progress>,
    ) -> Result<String, Error> {
        if self.workers.is_none()
            && let Some((name, _)) = workflow.agents.iter().find(|(_, d)| d.kind() == Ok(AgentKind::Worker))
        {
            return Err(Error::NeedsNats(name.clone()));
        }
        if workflow.pattern == Pattern::EventDriven {
            // Pinned with the run, so a later change of the defaults does not alter it.
            workflow.idle_timeout = workflow.idle_timeout.or(Some(self.options.idle_timeout.as_secs_f64()));
            workflow.max_activations = workflow.max_activations.or(Some(ltmc_core::spec::DEFAULT_MAX_ACTIVATIONS));
        }
        let run_id = uuid::Uuid::now_v7().to_string();
        for def in workflow.agents.values_mut() {
            def.timeout = def.timeout.or(Some(self.options.default_timeout.as_secs_f64()));
            def.retries = def.retries.or(Some(self.options.retry_attempts));
            def.backoff = def.backoff.or(Some(self.options.retry_backoff.as_secs_f64()));
        }
        let workdir = workdir.map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()).display().to_string());
        let start = Command::Start { run_id: run_id.clone(), workflow, input, workdir };
        let events = run::decide(&RunState::default(), start)?;
        let stream = run::stream_id(&run_id);
        self.append_retrying(&stream, ExpectedVersion::NoStream, &to_new(&run_id, &events)).await?;
        if let Some(p) = progress {
            events.iter().for_each(|e| p(e));
        }
        Ok(run_id)
    }

    /// Emits an event into an `event_driven` run from outside: appends it to `triggers-<run>`
    /// (durably) and returns its version there. The run's driver, in this process or another,
    /// takes it from there. Refused, writing nothing, for an unknown run or trigger, a run that
    /// is not event-driven or has ended, or data over [`triggers::MAX_DATA_BYTES`].
    pub async fn emit(&self, run_id: &str, trigger: &str, data: Value, source: &str) -> Result<i64, Error> {
        ltmc_core::names::validate("trigger", trigger).map_err(|e| store::Error::Invalid(e.to_string()))?;
        let size = store::json_len(&data);
        if size > triggers::MAX_DATA_BYTES {
            return Err(store::Error::PayloadTooLarge {
                stream: triggers::stream_id(run_id),
                event_type: triggers::EVENT_TYPE.into(),
                size,
                limit: triggers::MAX_DATA_BYTES,
            }
            .into());
        }
        let state = self.load(run_id).await?;
        // The same checks the run will make when it takes the event.
        let probe = Command::Trigger { trigger: trigger.into(), data: Value::Null, source: source.into(), seq: None };
        run::decide(&state, probe)?;
        let event = triggers::TriggerEmitted { trigger: trigger.into(), data, source: source.into() };
        // Refused when the run's driver has closed the stream to end the run (see triggers.rs).
        match triggers::append_emitted(&self.store, run_id, state.triggers_seq, &event).await? {
            Some(seq) => Ok(seq),
            None => Err(run::Rejection::Finished("ending").into()),
        }
    }

    /// Folds a run from the log.
    pub async fn load(&self, run_id: &str) -> Result<RunState, Error> {
        let events = store::read_stream_verified(&self.store, &run::stream_id(run_id)).await?;
        if events.is_empty() {
            return Err(Error::NotFound(run_id.to_owned()));
        }
        let mut state = RunState::default();
        for e in &events {
            state = evolve(state, &RunEvent::from_parts(&e.event_type, &e.data)?)?;
        }
        Ok(state)
    }

    /// Starts and drives a run to its end.
    pub async fn run(
        &self,
        workflow: Workflow,
        input: Option<Value>,
        base_dir: PathBuf,
        progress: Option<Progress>,
    ) -> Result<RunState, Error> {
        let run_id = self.start(workflow, input, Some(&base_dir), progress.as_ref()).await?;
        self.drive(&run_id, Some(base_dir), progress).await
    }

    /// Drives an existing run until it completes or fails; resumes an interrupted one. Command
    /// agents run in `base_dir`, else the folder recorded when the run started, else `.`.
    pub async fn drive(
        &self,
        run_id: &str,
        base_dir: Option<PathBuf>,
        progress: Option<Progress>,
    ) -> Result<RunState, Error> {
        let stream = run::stream_id(run_id);
        let mut state = self.load(run_id).await?;
        let base_dir =
            base_dir.or_else(|| state.workdir.clone().map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("."));
        // The run's timeout counts from RunStarted, so a resumed run keeps its original deadline.
        let deadline = match state.workflow.as_ref().and_then(|w| w.timeout) {
            Some(t) => {
                let started = self.started_at(run_id).await?;
                let elapsed = (chrono::Utc::now() - started).to_std().unwrap_or_default();
                let limit =
                    Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX).min(Duration::from_secs(31_536_000));
                Some(tokio::time::Instant::now() + limit.saturating_sub(elapsed))
            }
            None => None,
        };
        let mailbox = self.mailbox(&state).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Due>();
        let mut in_flight: HashSet<(usize, u32)> = HashSet::new();
        let mut agents_running = JoinSet::new();
        let mut idle_armed: Option<i64> = None;
        if state.is_event_driven() && !state.status.is_terminal() {
            // A crash between closing the stream and ending the run left it closed.
            triggers::reopen(&self.store, run_id, state.triggers_seq).await?;
            // Events from outside: taken from `triggers-<run>` in order, after the last one taken.
            let tx = tx.clone();
            let take = move |seq, t: triggers::TriggerEmitted| tx.send(Due::Trigger(seq, t)).is_ok();
            agents_running.spawn(triggers::follow(self.store.clone(), run_id.to_owned(), state.triggers_seq, take));
            if let Some(w) = &self.workers {
                agents_running.spawn(triggers::serve_nats(
                    w.client(),
                    w.names().clone(),
                    self.clone(),
                    run_id.to_owned(),
                ));
            }
        }
        loop {
            if state.status.is_terminal() {
                agents_running.abort_all();
                return Ok(state);
            }
            // Reap finished agent tasks so a long run does not keep them all.
            while agents_running.try_join_next().is_some() {}
            for effect in run::pending_work(&state) {
                match effect {
                    Effect::RunAgent { step, attempt } if in_flight.insert((step, attempt)) => {
                        let task = self.task(&state, step, attempt);
                        let def = state
                            .workflow
                            .as_ref()
                            .and_then(|w| w.agents.get(&task.agent))
                            .cloned()
                            .unwrap_or_default();
                        let (tx, slots, base_dir, timeout, mailbox) = (
                            tx.clone(),
                            self.slots.clone(),
                            base_dir.clone(),
                            self.options.default_timeout,
                            mailbox.clone(),
                        );
                        agents_running.spawn(async move {
                            let _permit = slots.acquire_owned().await;
                            let outcome = agents::perform(&def, &task, &base_dir, timeout, mailbox.as_deref()).await;
                            let _ = tx.send(Due::Outcome(task.step, task.attempt, outcome));
                        });
                    }
                    // The backoff timer of a failed attempt; the retry is dispatched when it fires.
                    Effect::RetryAfter { step, attempt, delay_ms } if in_flight.insert((step, attempt)) => {
                        let name = state.plan.as_ref().map(|p| p.steps[step].name.clone()).unwrap_or_default();
                        let tx = tx.clone();
                        agents_running.spawn(async move {
                            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                            let _ = tx.send(Due::Retry(name, attempt));
                        });
                    }
                    // Event-driven and idle: complete unless something happens first.
                    Effect::IdleAfter { version, delay_ms } if idle_armed != Some(version) => {
                        idle_armed = Some(version);
                        let tx = tx.clone();
                        agents_running.spawn(async move {
                            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                            let _ = tx.send(Due::Idle(version));
                        });
                    }
                    _ => {}
                }
            }
            // Wait for an outcome (or the run deadline), then take every outcome already waiting.
            let mut commands = Vec::new();
            let first = match deadline {
                Some(d) => tokio::select! {
                    o = rx.recv() => o,
                    _ = tokio::time::sleep_until(d) => None,
                },
                None => rx.recv().await,
            };
            match first {
                Some(due) => {
                    commands.push(due.into_command());
                    while let Ok(due) = rx.try_recv() {
                        commands.push(due.into_command());
                    }
                }
                None => {
                    let secs = state.workflow.as_ref().and_then(|w| w.timeout).unwrap_or(0.0);
                    commands.push(Command::Abort { reason: format!("run timed out after {secs}s") });
                }
            }
            let mut aborting = false;
            loop {
                // Kept only where a close can send the commands back (an event-driven run).
                let again = state.is_event_driven().then(|| commands.clone());
                let (next, events) = decide_all(&state, commands, &mut in_flight)?;
                if events.is_empty() {
                    break;
                }
                if state.is_event_driven() && next.status.is_terminal() {
                    // Emits acknowledged and not yet taken are taken before the run ends.
                    let pending = triggers::close(&self.store, run_id, next.triggers_seq).await?;
                    if !pending.is_empty() {
                        let taken = pending.into_iter().map(|(seq, t)| Due::Trigger(seq, t).into_command());
                        commands = taken.chain(again.unwrap_or_default()).collect();
                        continue;
                    }
                }
                let batch = to_new(run_id, &events);
                match self.append_retrying(&stream, ExpectedVersion::Exact(state.version), &batch).await {
                    Ok(()) => {}
                    // The outcome cannot be recorded as it is (too large, not storable): fail the
                    // run with the reason rather than leave it running forever.
                    Err(Error::Store(e @ (store::Error::PayloadTooLarge { .. } | store::Error::Invalid(_))))
                        if !aborting =>
                    {
                        aborting = true;
                        commands = vec![Command::Abort { reason: format!("could not record an outcome: {e}") }];
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if let Some(p) = &progress {
                    events.iter().for_each(|e| p(e));
                }
                state = next;
                break;
            }
        }
    }

    /// The run's worker mailbox when it has `worker: true` agents.
    async fn mailbox(&self, state: &RunState) -> Result<Option<Arc<RunMailbox>>, Error> {
        let Some(wf) = &state.workflow else { return Ok(None) };
        let Some((name, _)) = wf.agents.iter().find(|(_, d)| d.kind() == Ok(AgentKind::Worker)) else {
            return Ok(None);
        };
        let Some(workers) = &self.workers else { return Err(Error::NeedsNats(name.clone())) };
        Ok(Some(Arc::new(workers.open_run(&state.run_id).await?)))
    }

    /// When the run started (the time of its first event).
    async fn started_at(&self, run_id: &str) -> Result<chrono::DateTime<chrono::Utc>, Error> {
        let first = self.store.read_stream(&run::stream_id(run_id), 0, 1).await?;
        first.first().map(|e| e.recorded_at).ok_or_else(|| Error::NotFound(run_id.to_owned()))
    }

    /// Appends, retrying while the store is unavailable (about 30 s, [`store::retry_unavailable`]).
    /// The batch keeps its event ids, so a retry after an append that did commit is recognised
    /// as a duplicate.
    async fn append_retrying(&self, stream: &str, expected: ExpectedVersion, batch: &[NewEvent]) -> Result<(), Error> {
        store::retry_unavailable(20, || self.store.append(stream, expected, batch)).await?;
        Ok(())
    }

    fn task(&self, state: &RunState, step: usize, attempt: u32) -> Task {
        let (name, agent) =
            state.plan.as_ref().map(|p| (p.steps[step].name.clone(), p.steps[step].agent.clone())).unwrap_or_default();
        Task {
            run_id: state.run_id.clone(),
            session_id: None,
            workflow: state.workflow.as_ref().map(|w| w.name.clone()).unwrap_or_default(),
            idempotency_key: run::idempotency_key(&state.run_id, &name, attempt),
            step: name,
            agent,
            attempt,
            input: state.step_input(step),
            context: Value::Object(Default::default()),
        }
    }
}

/// Something that came due while driving a run.
enum Due {
    /// An agent attempt finished.
    Outcome(String, u32, Outcome),
    /// A retry's backoff is over.
    Retry(String, u32),
    /// An event from outside, with its version in `triggers-<run>`.
    Trigger(i64, triggers::TriggerEmitted),
    /// The idle timer armed at this run version is over.
    Idle(i64),
}

impl Due {
    fn into_command(self) -> Command {
        match self {
            Due::Outcome(step, attempt, outcome) => Command::RecordOutcome { step, attempt, outcome },
            Due::Retry(step, attempt) => Command::Retry { step, attempt },
            Due::Trigger(seq, t) => {
                Command::Trigger { trigger: t.trigger, data: t.data, source: t.source, seq: Some(seq) }
            }
            Due::Idle(version) => Command::Idle { version },
        }
    }
}

/// Decides `commands` in order from `state`: the state after them and the events to append.
/// A command refused (a late outcome after the run ended, a duplicate) records nothing.
fn decide_all(
    state: &RunState,
    commands: Vec<Command>,
    in_flight: &mut HashSet<(usize, u32)>,
) -> Result<(RunState, Vec<RunEvent>), Error> {
    let mut next = state.clone();
    let mut events = Vec::new();
    for cmd in commands {
        // The agent (or the retry's timer) is done with this attempt.
        if let Command::RecordOutcome { step, attempt, .. } | Command::Retry { step, attempt } = &cmd
            && let Some((i, _)) = next.step(step)
        {
            in_flight.remove(&(i, *attempt));
        }
        match run::decide(&next, cmd) {
            Ok(evs) => {
                for e in evs {
                    next = evolve(next, &e)?;
                    events.push(e);
                }
            }
            Err(rejection) => tracing::debug!(%rejection, "outcome not recorded"),
        }
    }
    Ok((next, events))
}

fn to_new(run_id: &str, events: &[RunEvent]) -> Vec<NewEvent> {
    let metadata = Metadata {
        correlation_id: Some(run_id.to_owned()),
        actor: Some("engine".to_owned()),
        run_id: Some(run_id.to_owned()),
        ..Default::default()
    };
    events.iter().map(|e| new_event(e.event_type(), RunEvent::SCHEMA_VERSION, e.data(), metadata.clone())).collect()
}
