//! The projector: keeps the SQL views (`runs`, `steps`, `handoffs`, sessions and memory) up to date.
//!
//! It follows the log from its checkpoint (woken by LISTEN/NOTIFY or this process's appends,
//! polling as a fallback), maps each batch of events to row changes with the pure projections
//! of `ltmc-projections`, and applies them in the same transaction that moves the checkpoint,
//! under a lock on the checkpoint row: a crash anywhere leaves rows and checkpoint consistent,
//! and two projectors never apply a batch twice. The views can be rebuilt from the log at any
//! time ([`rebuild`]); a rebuild is one transaction, so readers never see a half-built view.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::store::{self, EventStore, Store};

/// Most events applied per transaction.
pub const BATCH: usize = 500;

/// Applies every event up to the log's head; returns the checkpoint.
pub async fn catch_up(store: &Store) -> Result<i64, store::Error> {
    catch_up_to(store, i64::MAX).await
}

/// Applies events until the views include position `through` (or the log's head, if it is
/// lower); returns the checkpoint. What a command that appended waits for: its own events, not
/// those other processes appended since, which their own commands or a projector apply.
pub async fn catch_up_to(store: &Store, through: i64) -> Result<i64, store::Error> {
    loop {
        let from = store.views_checkpoint().await?;
        if from >= through {
            return Ok(from);
        }
        let events = store.read_all(from, BATCH).await?;
        let Some(last) = events.last() else { return Ok(from) };
        let to = last.global_position;
        // `false`: another projector moved the checkpoint; read from where it is now.
        store.apply_views(from, to, ltmc_projections::changes(&events)).await?;
    }
}

/// Rebuilds every view from the log, up to `until` (the whole log when `None`).
pub async fn rebuild(store: &Store, until: Option<i64>) -> Result<i64, store::Error> {
    store.rebuild_views(until, store::REBUILD_HELD_ROWS).await
}

/// Builds the views as of `until` into schema (Postgres) or file (SQLite) `into`, for
/// inspection; the live views are not touched.
pub async fn snapshot(store: &Store, until: i64, into: &str) -> Result<i64, store::Error> {
    store.snapshot_views(until, into).await
}

/// A running projector.
pub struct ProjectorHandle {
    position: watch::Receiver<i64>,
    last_error: Arc<Mutex<Option<String>>>,
    running: Running,
}

/// Where a projector runs, and how it is stopped.
enum Running {
    /// A task on the caller's runtime.
    Task(JoinHandle<()>),
    /// A thread with a runtime of its own (Postgres), stopped by a message.
    Thread(tokio::sync::oneshot::Sender<()>),
}

impl ProjectorHandle {
    /// The last position applied by this projector.
    pub fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// Waits until the views include `position`, or `timeout` passes; returns whether they do.
    pub async fn wait_for(&mut self, position: i64, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.position.wait_for(|p| *p >= position)).await.is_ok_and(|r| r.is_ok())
    }

    /// A receiver of the applied position, for waiting on it from other tasks.
    pub fn watch(&self) -> watch::Receiver<i64> {
        self.position.clone()
    }

    /// Why the projector is not advancing, if it is failing: the last error, until it has
    /// applied a batch again.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Stops it (at any point: the views stay consistent with the checkpoint).
    pub fn stop(self) {
        match self.running {
            Running::Task(task) => task.abort(),
            Running::Thread(stop) => {
                let _ = stop.send(());
            }
        }
    }
}

/// Starts a projector; it retries after errors until stopped.
///
/// On SQLite it is a task of the caller's runtime, and while it runs this process's appends
/// apply their own events to the views in their transactions ([`Store::follow_views`]): the
/// task then only catches up with what they leave (the backlog when it starts, other
/// processes' appends, a batch that failed there). On Postgres it runs on a thread of its own,
/// with a runtime and connections of its own ([`crate::store::postgres::PgStore::detached`]):
/// each of its steps (the wake-up, the read, the batch's pipeline) would otherwise wait for the
/// caller's runtime, which a busy process (an engine driving 50 runs) keeps busy for tens of
/// milliseconds (measured in docs/benchmarks.md).
pub fn spawn(store: Store) -> ProjectorHandle {
    let (tx, position) = watch::channel(0);
    // Owned by the projector: stopping it ends the appends' part too (the store keeps a weak
    // reference), and closes the channel for those watching.
    let tx = Arc::new(tx);
    let with_appends = store.follow_views(&tx);
    let last_error = Arc::new(Mutex::new(None));
    let errors = last_error.clone();
    let run = move |store: Store| async move {
        use futures::FutureExt;
        let mut backoff = crate::backoff::Backoff::starting_at(Duration::from_millis(50));
        loop {
            let following = async {
                if with_appends {
                    follow_appends(&store, &tx, &errors).await
                } else {
                    follow(&store, &tx, &errors).await
                }
            };
            // A panic in projection code is an error like another: reported, and retried.
            let followed = std::panic::AssertUnwindSafe(following)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(store::Error::Backend("projecting the events panicked".into())));
            match followed {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, "projector interrupted; retrying");
                    if let Ok(mut slot) = errors.lock() {
                        *slot = Some(e.to_string());
                    }
                    backoff.wait().await;
                }
            }
        }
    };
    let running = match &store {
        Store::Postgres(pg) => on_own_thread(pg.clone(), run, last_error.clone()),
        Store::Sqlite(_) => Running::Task(tokio::spawn(run(store))),
    };
    ProjectorHandle { position, last_error, running }
}

/// Runs `run` on a thread with a current-thread runtime of its own and a store with
/// connections of its own ([`crate::store::postgres::PgStore::detached`]). It ends on
/// [`ProjectorHandle::stop`], or when the caller's runtime does, as a task of it would.
fn on_own_thread<F, Fut>(pg: crate::store::postgres::PgStore, run: F, failed: Arc<Mutex<Option<String>>>) -> Running
where
    F: FnOnce(Store) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // `alive` is held by a task of the caller's runtime, which ends when that runtime does or
    // when the thread has ended (dropping `done`).
    let (alive, caller_gone) = tokio::sync::oneshot::channel::<()>();
    let (done, thread_ended) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _alive = alive;
        let _ = thread_ended.await;
    });
    let noted = failed.clone();
    let thread = std::thread::Builder::new().name("ltmc-projector".into()).spawn(move || {
        let _done = done;
        // A panic ends the thread: say so where `last_error` is read.
        struct Panicked(Arc<Mutex<Option<String>>>);
        impl Drop for Panicked {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    note(&self.0, "the projector's thread panicked".into());
                }
            }
        }
        let _panicked = Panicked(failed.clone());
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return note(&failed, format!("cannot start the projector's runtime: {e}")),
        };
        runtime.block_on(async move {
            let store = match pg.detached() {
                Ok(own) => Store::Postgres(own),
                Err(e) => return note(&failed, e.to_string()),
            };
            drop(pg); // the caller's pool is not this thread's to keep
            // A handle dropped without `stop` leaves it running, as a task would.
            let stop = async {
                if stopped.await.is_err() {
                    std::future::pending::<()>().await
                }
            };
            tokio::select! {
                () = stop => {}
                _ = caller_gone => {}
                () = run(store) => {}
            }
        });
    });
    if let Err(e) = thread {
        note(&noted, format!("cannot start the projector's thread: {e}"));
    }
    Running::Thread(stop)
}

/// Forgets the last error once a batch has been applied: the projector is advancing again.
fn recovered(errors: &Mutex<Option<String>>) {
    if let Ok(mut slot) = errors.lock() {
        *slot = None;
    }
}

/// Records why the projector is not running.
fn note(slot: &Mutex<Option<String>>, why: String) {
    tracing::error!(error = %why, "the projector cannot run");
    if let Ok(mut slot) = slot.lock() {
        *slot = Some(why);
    }
}

/// Follows the log from the checkpoint, a batch per transaction; while a batch is applied, the
/// events after it are read. Returns (to start again from the stored checkpoint) when another
/// projector moved it.
async fn follow(store: &Store, tx: &watch::Sender<i64>, errors: &Mutex<Option<String>>) -> Result<(), store::Error> {
    let mut from = store.views_checkpoint().await?;
    tx.send_replace(from); // read from the store: also lower, after a rebuild `--until`
    let mut sub = store.subscribe(from);
    let mut events = Vec::new();
    loop {
        if events.is_empty() {
            events.push(sub.next().await?);
        }
        // Whatever is already readable joins the batch (cancelling a read changes nothing).
        while events.len() < BATCH {
            match tokio::time::timeout(Duration::ZERO, sub.next()).await {
                Ok(Ok(e)) => events.push(e),
                _ => break,
            }
        }
        let to = events.last().map_or(from, |e| e.global_position);
        let started = std::time::Instant::now();
        let applying = store.apply_views(from, to, ltmc_projections::changes(&events));
        tokio::pin!(applying);
        let mut next = Vec::new();
        let applied = loop {
            tokio::select! {
                biased;
                applied = &mut applying => break applied?,
                event = sub.next(), if next.len() < BATCH => next.push(event?),
            }
        };
        if !applied {
            return Ok(());
        }
        tracing::debug!(events = events.len(), apply_us = started.elapsed().as_micros() as u64, "applied a batch");
        from = to;
        // Cleared first: whoever sees the new position must not read the old error with it.
        recovered(errors);
        publish(tx, to);
        events = next;
    }
}

/// [`follow`] on a store whose appends apply their own events to the views: catches up with
/// what they left, a batch per transaction, then waits for an append they did not cover (its
/// position beyond the views') or polls, for other processes' appends.
async fn follow_appends(
    store: &Store,
    tx: &watch::Sender<i64>,
    errors: &Mutex<Option<String>>,
) -> Result<(), store::Error> {
    let mut wake = store.wake().await?;
    loop {
        let from = store.views_checkpoint().await?;
        // Only raised: the appends may have published a later position since this read. (A
        // rebuild, which may lower it, sets it itself.)
        publish(tx, from);
        let events = store.read_all(from, BATCH).await?;
        if let Some(last) = events.last() {
            let to = last.global_position;
            // `false`: the appends moved the checkpoint meanwhile; read from where it is now.
            if store.apply_views(from, to, ltmc_projections::changes(&events)).await? {
                recovered(errors);
                publish(tx, to);
            }
            continue;
        }
        loop {
            match tokio::time::timeout(store::POLL_INTERVAL, wake.recv()).await {
                Ok(Ok(appended)) if appended <= *tx.borrow() => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => wake = store.wake().await?,
                _ => break, // beyond the views, missed wake-ups (lagged), or time to poll
            }
        }
    }
}

/// Publishes `position` as applied, unless a later one already is: on SQLite the appends and
/// the task both publish, each right after its own commit.
pub(crate) fn publish(tx: &watch::Sender<i64>, position: i64) {
    tx.send_if_modified(|p| {
        let later = position > *p;
        if later {
            *p = position;
        }
        later
    });
}

/// Where the views are.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Last position the views include.
    pub checkpoint: i64,
    /// Last position in the log.
    pub head: i64,
    /// Positions not yet in the views.
    pub lag: i64,
    /// When the checkpoint last moved.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `up_to_date`, `catching_up` (behind, and the checkpoint moved in the last
    /// [`STALL_AFTER`]), or `stalled` (behind, and it has not moved for longer: no projector is
    /// running, or the one running keeps failing).
    pub health: &'static str,
}

/// How long a checkpoint that is behind may stand still before the views are called stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// The views' checkpoint beside the log's head.
pub async fn status(store: &Store) -> Result<Status, store::Error> {
    let checkpoint = store.views_checkpoint().await?;
    let head = store.head_position().await?;
    let updated_at = store.views_updated_at().await?;
    let still = updated_at.map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default());
    let health = match (head - checkpoint, still) {
        (0, _) => "up_to_date",
        (_, Some(s)) if s < STALL_AFTER => "catching_up",
        _ => "stalled",
    };
    Ok(Status { checkpoint, head, lag: head - checkpoint, updated_at, health })
}

/// Projects from the JetStream stream the relay publishes (`LTMC_EVENTS` by default) into the
/// views of `target`, another database: a reporting copy that never reads the source log. Each
/// batch is applied with the target's checkpoint as on the source, together with its events,
/// copied into the target's own log (whose view `audit_log` is), so it is crash-consistent and
/// ends up identical to views fed from the log. Returns once the target's checkpoint reaches
/// `until` (or never, with `None`).
pub async fn from_nats(
    target: &Store,
    opts: &crate::relay::RelayOptions,
    until: Option<i64>,
) -> Result<i64, crate::relay::Error> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;
    let nats = |e: &dyn std::fmt::Display| crate::relay::Error::Nats(e.to_string());
    let js = crate::relay::jetstream(&opts.nats_url).await?;
    let stream = js.get_stream(&opts.stream_name).await.map_err(|e| nats(&e))?;
    let mut from = target.views_checkpoint().await?;
    if until.is_some_and(|u| from >= u) {
        return Ok(from);
    }
    // The stream is an exact prefix of the log in position order; events the target already has
    // are skipped. An event too large for one message comes as consecutive parts: put together
    // before it is applied, and an incomplete one is carried to the next batch.
    let consumer = stream.create_consumer(consumer::pull::OrderedConfig::default()).await.map_err(|e| nats(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| nats(&e))?;
    let mut parts = crate::relay::parts::Assembler::default();
    loop {
        let mut batch = Vec::new();
        let first = messages.next().await.ok_or_else(|| nats(&"the stream ended"))?.map_err(|e| nats(&e))?;
        batch.push(first);
        while batch.len() < BATCH {
            match tokio::time::timeout(Duration::from_millis(2), messages.next()).await {
                Ok(Some(Ok(m))) => batch.push(m),
                _ => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        for m in &batch {
            let sequence = m.info().map(|i| i.stream_sequence).unwrap_or_default();
            match parts.push(m.headers.as_ref(), &m.payload) {
                Ok(Some(e)) if e.global_position > from => events.push(e),
                Ok(_) => {}
                Err(e) => return Err(nats(&format!("stream {} message {sequence}: {e}", opts.stream_name))),
            }
        }
        let Some(last) = events.last() else { continue };
        let to = last.global_position;
        let changes = ltmc_projections::changes(&events);
        if !target.apply_views_with_log(from, to, events, changes).await? {
            return Err(nats(&"another projector moved the target's checkpoint; start again"));
        }
        from = to;
        if until.is_some_and(|u| from >= u) {
            return Ok(from);
        }
    }
}
