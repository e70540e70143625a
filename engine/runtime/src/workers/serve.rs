//! The worker's side: take an agent's tasks from `LTMC_TASKS`, perform them with a local agent
//! definition (a command, or a built-in), report heartbeats and the result.
//!
//! A task is acknowledged only after its result is stored in `LTMC_RESULTS`: a worker that
//! dies mid-task leaves it to be delivered again after the ack wait (heartbeats extend that
//! wait), and the engine records whichever result comes first.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use ltmc_core::protocol::{ReportBody, WorkerReport, WorkerTask};
use ltmc_core::run::Outcome;
use ltmc_core::spec::{AgentDef, AgentKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

use super::{Error, TASKS_STREAM, consumer_name, nats, results_subject, task_subject};

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
    pub max_tasks: Option<u64>,
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
    let js = super::connect(&opts.nats_url).await?;
    let stream = js.get_stream(TASKS_STREAM).await.map_err(nats)?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &consumer_name(&opts.agent),
            consumer::pull::Config {
                durable_name: Some(consumer_name(&opts.agent)),
                filter_subject: task_subject(&opts.agent),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: opts.ack_wait,
                ..Default::default()
            },
        )
        .await
        .map_err(nats)?;
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
        let mut batch = match consumer.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fetching a task; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(msg) = batch.next().await else { continue };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "no task");
                continue;
            }
        };
        done += 1;
        let (js, opts) = (js.clone(), opts.clone());
        running.spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(&js, &opts, msg).await {
                tracing::warn!(error = %e, "a task was not completed; it will be delivered again");
            }
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
    Ok(done)
}

async fn handle(js: &jetstream::Context, opts: &WorkerOptions, msg: jetstream::Message) -> Result<(), Error> {
    let wire: WorkerTask = match serde_json::from_slice(&msg.payload) {
        Ok(t) => t,
        Err(e) => {
            // Nobody can be told (the run is unknown); drop it for good rather than loop on it.
            tracing::warn!(error = %e, "dropped a task that is not a WorkerTask");
            return msg.ack_with(AckKind::Term).await.map_err(nats);
        }
    };
    let task = wire.task;
    let subject = results_subject(&task.run_id);
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
