//! Workers over NATS: agents served by other processes, in any language.
//!
//! The engine publishes each attempt of a `worker: true` agent to JetStream work queue
//! `LTMC_TASKS` on `ltmc.tasks.<agent>`, with `Nats-Msg-Id` = the attempt's idempotency key, so
//! a task re-published after an engine crash is not queued twice. A worker takes the task from
//! the durable consumer `ltmc-worker-<agent>`, reports heartbeats and then its result on
//! `ltmc.results.<run>`; that subject is kept by stream `LTMC_RESULTS`, so a result sent while
//! the engine is down is found when the run resumes. The engine fails an attempt when no report
//! came for the agent's `timeout`; each heartbeat restarts that count. A result delivered twice
//! is recorded once: the run's decider refuses an outcome for an attempt that is not running.
//!
//! The wire messages are [`ltmc_core::protocol::WorkerTask`] and
//! [`ltmc_core::protocol::WorkerReport`] (`schemas/worker-*.json`, `docs/workers.md`).

mod mailbox;
mod read;
pub mod serve;

pub use mailbox::RunMailbox;

use async_nats::jetstream::{self, stream};
use std::time::Duration;

/// The work queue of tasks for workers.
pub const TASKS_STREAM: &str = "LTMC_TASKS";
/// The stream keeping workers' reports until the engine reads them.
pub const RESULTS_STREAM: &str = "LTMC_RESULTS";
/// JetStream's de-duplication window on both streams.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long reports are kept (a run resumed later than this re-runs its worker attempts).
pub const RESULTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Subject of an agent's tasks.
pub fn task_subject(agent: &str) -> String {
    format!("ltmc.tasks.{agent}")
}

/// Subject of a run's reports.
pub fn results_subject(run_id: &str) -> String {
    format!("ltmc.results.{run_id}")
}

/// Durable consumer all workers of one agent share.
pub fn consumer_name(agent: &str) -> String {
    format!("ltmc-worker-{agent}")
}

/// Worker errors: NATS or JetStream failed.
#[derive(Debug, thiserror::Error)]
#[error("NATS: {0}")]
pub struct Error(pub String);

pub(crate) fn nats(e: impl std::fmt::Display) -> Error {
    Error(e.to_string())
}

/// The engine's side: dispatches tasks and reads reports. Cheap to clone.
#[derive(Clone)]
pub struct Workers {
    js: jetstream::Context,
}

impl Workers {
    /// Connects and makes sure both streams exist.
    pub async fn connect(url: &str) -> Result<Workers, Error> {
        let js = connect(url).await?;
        Ok(Workers { js })
    }

    /// The NATS connection (also used to take `ltmc.emit.<run>.<type>` requests).
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    /// Opens a run's mailbox: reads its reports (past ones first) until dropped.
    pub async fn open_run(&self, run_id: &str) -> Result<RunMailbox, Error> {
        RunMailbox::open(self.js.clone(), run_id).await
    }
}

/// Connects to NATS and makes sure `LTMC_TASKS` and `LTMC_RESULTS` exist.
pub(crate) async fn connect(url: &str) -> Result<jetstream::Context, Error> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| Error(format!("cannot connect to {url}: {e}")))?;
    let js = jetstream::new(client);
    ensure_streams(&js).await?;
    Ok(js)
}

/// Creates the two streams if they do not exist (an existing stream is left as it is).
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), Error> {
    let tasks = stream::Config {
        name: TASKS_STREAM.into(),
        subjects: vec!["ltmc.tasks.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let results = stream::Config {
        name: RESULTS_STREAM.into(),
        subjects: vec!["ltmc.results.>".into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: RESULTS_MAX_AGE,
        ..Default::default()
    };
    for config in [tasks, results] {
        let name = config.name.clone();
        js.get_or_create_stream(config).await.map_err(|e| Error(format!("stream {name}: {e}")))?;
    }
    Ok(())
}
