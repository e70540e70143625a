//! The worker's side: take an agent's tasks from `LTMC_TASKS`, perform them with a local agent
//! definition (a command, or a built-in), report heartbeats and the result.
//!
//! A task is acknowledged only after its result is stored in `LTMC_RESULTS`: a worker that
//! dies mid-task leaves it to be delivered again after the ack wait (heartbeats extend that
//! wait), and the engine records whichever result comes first.
//!
//! A message that is not a task the engine could have sent (not a `WorkerTask`, names that are
//! not subject tokens, a reply subject other than `ltmc.results.<run_id>`) is terminated at
//! once with the reason logged, before it takes a slot: nobody can be told about it, and
//! left unacknowledged it would come back after every ack wait.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use ltmc_core::names::MAX_STREAM_ID_LEN;
use ltmc_core::protocol::{ReportBody, WorkerReport, WorkerTask};
use ltmc_core::run::{Outcome, idempotency_key};
use ltmc_core::spec::{AgentDef, AgentKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

use super::read::Puller;
use super::{Error, Names, consumer_name, nats};

/// How a worker serves an agent.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// NATS server URL.
    pub nats_url: String,
    /// The agent served (`[A-Za-z0-9_-]{1,64}`).
    pub agent: String,
    /// How the tasks are performed: `run:` or `builtin:`.
    pub def: AgentDef,
    /// Where a command runs.
    pub base_dir: PathBuf,
    /// Most tasks performed at once.
    pub concurrency: usize,
    /// How long JetStream waits for an acknowledgement (or a heartbeat) before delivering the
    /// task to another worker.
    pub ack_wait: Duration,
    /// Stop after this many tasks (for tests and batch jobs); `None` serves until stopped.
    /// Terminated malformed messages do not count.
    pub max_tasks: Option<u64>,
    /// The deployment's NATS names (its prefix).
    pub names: Names,
}

impl WorkerOptions {
    /// Defaults: one task at a time, 30 s ack wait, forever.
    pub fn new(nats_url: &str, agent: &str, def: AgentDef) -> WorkerOptions {
        WorkerOptions {
            nats_url: nats_url.to_owned(),
            agent: agent.to_owned(),
            def,
            base_dir: PathBuf::from("."),
            concurrency: 1,
            ack_wait: Duration::from_secs(30),
            max_tasks: None,
            names: Names::default(),
        }
    }
}

/// Serves the agent until `max_tasks` tasks are done (or forever). Refuses an agent name that
/// cannot be a subject token and a definition that is itself a worker.
pub async fn serve(opts: WorkerOptions) -> Result<u64, Error> {
    ltmc_core::names::validate("agent", &opts.agent).map_err(nats)?;
    match opts.def.kind() {
        Ok(AgentKind::Worker) => return Err(Error("a worker cannot serve an agent with another worker".into())),
        Err(why) => return Err(Error(format!("agent {} {why}", opts.agent))),
        Ok(_) => {}
    }
    let js = super::connect(&opts.nats_url, &opts.names).await?;
    let stream = js.get_stream(opts.names.tasks_stream()).await.map_err(nats)?;
    let _: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &consumer_name(&opts.agent),
            consumer::pull::Config {
                durable_name: Some(consumer_name(&opts.agent)),
                filter_subject: opts.names.task_subject(&opts.agent),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: opts.ack_wait,
                ..Default::default()
            },
        )
        .await
        .map_err(nats)?;
    let mut tasks = Puller::new(&js, &opts.names.tasks_stream(), &consumer_name(&opts.agent), 1).await?;
    let slots = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let opts = Arc::new(opts);
    let mut done = 0u64;
    let mut running = tokio::task::JoinSet::new();
    loop {
        if opts.max_tasks.is_some_and(|m| done >= m) {
            break;
        }
        // Take a task only when a slot is free, so an idle worker elsewhere can take the next.
        let permit = slots.clone().acquire_owned().await.map_err(nats)?;
        let msg = match tasks.next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "fetching a task; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let wire = match decode(&msg.payload, &opts.agent, &opts.names) {
            Ok(wire) => wire,
            Err(why) => {
                terminate(&msg, &why).await;
                continue;
            }
        };
        done += 1;
        let (js, opts) = (js.clone(), opts.clone());
        running.spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(&js, &opts, msg, wire).await {
                tracing::warn!(error = %e, "a task was not completed; it will be delivered again");
            }
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    Ok(done)
}

/// Longest reason logged for a terminated message.
const MAX_REASON_CHARS: usize = 300;

/// The task in a message, if it is one the engine could have sent to this agent: a
/// `WorkerTask` whose run id and step are subject tokens, whose agent is this one, and whose
/// idempotency key and reply subject are the ones the engine derives from them. Reports then
/// go only to `<prefix>.results.<run id>`, whatever the message says.
fn decode(payload: &[u8], agent: &str, names: &Names) -> Result<WorkerTask, String> {
    if payload.is_empty() {
        return Err("the message is empty".into());
    }
    let wire: WorkerTask = serde_json::from_slice(payload).map_err(|e| format!("not a WorkerTask: {e}"))?;
    let task = &wire.task;
    ltmc_core::names::validate("run", &task.run_id).map_err(|e| format!("run_id: {e}"))?;
    // A step is a name, or `<agent>-<n>` for an activation of an event-driven run (so it can be
    // longer than a name); it is no subject token, but it is in the result's `Nats-Msg-Id`.
    let step_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if task.step.is_empty() || task.step.len() > MAX_STREAM_ID_LEN || !task.step.chars().all(step_ok) {
        return Err(format!("step {:?} is not 1-{MAX_STREAM_ID_LEN} characters from [A-Za-z0-9_-]", short(&task.step)));
    }
    if task.agent != agent {
        return Err(format!("the task is for agent {:?}, not {agent}", short(&task.agent)));
    }
    let key = idempotency_key(&task.run_id, &task.step, task.attempt);
    if task.idempotency_key != key {
        return Err(format!("idempotency_key {:?} is not {key:?}", short(&task.idempotency_key)));
    }
    if wire.reply_subject != names.results_subject(&task.run_id) {
        return Err(format!(
            "reply_subject {:?} is not {:?}",
            short(&wire.reply_subject),
            names.results_subject(&task.run_id)
        ));
    }
    Ok(wire)
}

fn short(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Terminates a malformed message for good: not performed, not delivered again.
async fn terminate(msg: &jetstream::Message, why: &str) {
    // Shortened (a parser's message can quote a whole field) and without control characters.
    let mut reason = String::new();
    for c in why.chars().take(MAX_REASON_CHARS) {
        if c.is_control() {
            reason.extend(c.escape_default());
        } else {
            reason.push(c);
        }
    }
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    tracing::warn!(stream_seq = seq, %reason, "terminated a malformed task");
    if let Err(e) = msg.double_ack_with(AckKind::Term).await {
        tracing::warn!(stream_seq = seq, error = %e, "terminating a malformed task; it will be delivered again");
    }
}

async fn handle(
    js: &jetstream::Context,
    opts: &WorkerOptions,
    msg: jetstream::Message,
    wire: WorkerTask,
) -> Result<(), Error> {
    let task = wire.task;
    let subject = opts.names.results_subject(&task.run_id);
    let report =
        |body| WorkerReport { run_id: task.run_id.clone(), step: task.step.clone(), attempt: task.attempt, body };
    let worker = format!("{}:{}", hostname(), std::process::id());
    let heartbeat = serde_json::to_vec(&report(ReportBody::Heartbeat { worker: Some(worker) })).map_err(nats)?;
    let every = Duration::try_from_secs_f64(wire.heartbeat_secs)
        .unwrap_or(Duration::from_secs(10))
        .max(Duration::from_millis(50));
    let timeout = Duration::try_from_secs_f64(wire.timeout_secs).unwrap_or(Duration::from_secs(300));
    let work = crate::agents::perform(&opts.def, &task, &opts.base_dir, timeout, None);
    tokio::pin!(work);
    let outcome = loop {
        // A heartbeat now (the task was taken) and then every `heartbeat_secs`; each also tells
        // JetStream the task is still being worked on.
        let _ = js.client().publish(subject.clone(), heartbeat.clone().into()).await;
        let _ = msg.ack_with(AckKind::Progress).await;
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = tokio::time::sleep(every) => {}
        }
    };
    let body = match outcome {
        Outcome::Completed { output, facts, vote, events, duration_ms } => {
            ReportBody::Completed { output, facts, vote, events, duration_ms }
        }
        Outcome::Failed { error, duration_ms } => ReportBody::Failed { error, duration_ms },
    };
    let payload = serde_json::to_vec(&report(body)).map_err(nats)?;
    let mut delay = Duration::from_millis(50);
    loop {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}/result", task.idempotency_key).as_str());
        let stored = match js.publish_with_headers(subject.clone(), headers, payload.clone().into()).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(nats),
            Err(e) => Err(nats(e)),
        };
        match stored {
            Ok(()) => break,
            Err(e) if delay > Duration::from_secs(30) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "storing a result; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    msg.double_ack().await.map_err(nats)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into())
}
