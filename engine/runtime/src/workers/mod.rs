//! Workers over NATS: agents served by other processes, in any language.
//!
//! The engine publishes each attempt of a `worker: true` agent to JetStream work queue
//! `LTMC_TASKS` on `ltmc.tasks.<agent>` (names under the deployment's prefix, [`Names`]), with `Nats-Msg-Id` = the attempt's idempotency key, so
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

pub use names::Names;

mod names;

/// The work queue of tasks for workers, under the default prefix ([`Names::tasks_stream`]).
pub const TASKS_STREAM: &str = "LTMC_TASKS";
/// The stream keeping workers' reports until the engine reads them, under the default prefix
/// ([`Names::results_stream`]).
pub const RESULTS_STREAM: &str = "LTMC_RESULTS";
/// JetStream's de-duplication window on both streams.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long reports are kept (a run resumed later than this re-runs its worker attempts).
pub const RESULTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Subject of an agent's tasks, under the default prefix ([`Names::task_subject`]).
pub fn task_subject(agent: &str) -> String {
    Names::default().task_subject(agent)
}

/// Subject of a run's reports, under the default prefix ([`Names::results_subject`]).
pub fn results_subject(run_id: &str) -> String {
    Names::default().results_subject(run_id)
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
    names: Names,
}

impl Workers {
    /// Connects and makes sure both streams exist, under the default prefix `ltmc`.
    pub async fn connect(url: &str) -> Result<Workers, Error> {
        Workers::connect_with(url, Names::default()).await
    }

    /// Connects and makes sure both streams of the deployment named by `names` exist.
    pub async fn connect_with(url: &str, names: Names) -> Result<Workers, Error> {
        let js = connect(url, &names).await?;
        Ok(Workers { js, names })
    }

    /// The NATS connection (also used to take `<prefix>.emit.<run>.<type>` requests).
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    /// The deployment's NATS names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Opens a run's mailbox: reads its reports (past ones first) until dropped.
    pub async fn open_run(&self, run_id: &str) -> Result<RunMailbox, Error> {
        RunMailbox::open(self.js.clone(), self.names.clone(), run_id).await
    }
}

/// Connects to NATS and makes sure the tasks and results streams of `names` exist.
pub(crate) async fn connect(url: &str, names: &Names) -> Result<jetstream::Context, Error> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| Error(format!("cannot connect to {url}: {e}")))?;
    let js = jetstream::new(client);
    ensure_streams_of(&js, names).await?;
    Ok(js)
}

/// Creates the two streams of the default prefix if they do not exist.
pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), Error> {
    ensure_streams_of(js, &Names::default()).await
}

/// Creates the two streams of `names` if they do not exist (an existing stream is left as it
/// is).
pub async fn ensure_streams_of(js: &jetstream::Context, names: &Names) -> Result<(), Error> {
    let tasks = stream::Config {
        name: names.tasks_stream(),
        subjects: vec![format!("{}.tasks.>", names.prefix())],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let results = stream::Config {
        name: names.results_stream(),
        subjects: vec![format!("{}.results.>", names.prefix())],
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
