//! Group commit: appends that arrive while another is being written share one transaction, so
//! concurrent runs pay for one WAL flush between them instead of one each.
//!
//! The append lock of `ltmc_append` serialises appends, fsync included; without grouping,
//! throughput is bounded by one flush per append. One task owns a dedicated connection: a lone
//! request runs as a single autocommit call (the latency of a sequential run is unchanged);
//! requests that queued up meanwhile run as `BEGIN; ltmc_append(...) x N; COMMIT`. The lock is
//! still held until that commit, so the global order stays gap-safe. If any call in the group
//! fails (a reused event id raises), the group is rolled back and each request runs alone, so
//! one bad append never fails another.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::store::Error;

/// Most appends in one transaction.
const MAX_GROUP: usize = 64;

const APPEND_SQL: &str = "SELECT status, actual_version, first_position, last_position \
                          FROM ltmc_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The arguments of one `ltmc_append` call.
pub(super) struct Call {
    pub(super) stream: String,
    pub(super) current: i64,
    pub(super) prev: String,
    pub(super) ids: Vec<Uuid>,
    pub(super) types: Vec<String>,
    pub(super) versions: Vec<i32>,
    pub(super) data: Vec<Value>,
    pub(super) metadata: Vec<Value>,
    pub(super) recorded: Vec<DateTime<Utc>>,
    pub(super) hashes: Vec<String>,
}

impl Call {
    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.stream,
            &self.current,
            &self.prev,
            &self.ids,
            &self.types,
            &self.versions,
            &self.data,
            &self.metadata,
            &self.recorded,
            &self.hashes,
        ]
    }
}

/// What `ltmc_append` answered.
pub(super) struct Answer {
    pub(super) status: String,
    pub(super) actual: i64,
    pub(super) first: Option<i64>,
    pub(super) last: Option<i64>,
}

/// Why a call has no answer.
pub(super) enum Failure {
    /// An event id of the call exists already.
    UniqueViolation,
    /// Anything else.
    Store(Error),
}

struct Request {
    call: Call,
    reply: oneshot::Sender<Result<Answer, Failure>>,
}

/// Handle to the committer task.
pub(super) struct GroupCommitter {
    tx: mpsc::UnboundedSender<Request>,
}

impl GroupCommitter {
    /// Starts the committer on its own task; it takes a connection from `pool` for each group.
    pub(super) fn start(pool: deadpool_postgres::Pool) -> GroupCommitter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        GroupCommitter { tx }
    }

    /// Runs one `ltmc_append` call, alone or in a group.
    pub(super) async fn call(&self, call: Call) -> Result<Answer, Failure> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { call, reply })
            .map_err(|_| Failure::Store(Error::Unavailable("the append task has stopped".into())))?;
        answer.await.map_err(|_| Failure::Store(Error::Unavailable("the append task has stopped".into())))?
    }
}

struct Conn {
    client: deadpool_postgres::Object,
    stmt: Statement,
}

async fn connect(pool: &deadpool_postgres::Pool) -> Result<Conn, Error> {
    let client = pool.get().await.map_err(super::pool_err)?;
    let stmt = client.prepare_cached(APPEND_SQL).await.map_err(super::db_err)?;
    Ok(Conn { client, stmt })
}

async fn run(pool: deadpool_postgres::Pool, mut rx: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        // A pooled connection per group, not one of its own for the process's life: a process
        // that appends and reads in turn (one `ltmc run`) then opens one connection instead of
        // two, and a new Postgres connection costs the server milliseconds of CPU (about 190
        // a second on this machine's two cores: docs/benchmarks.md).
        let c = match connect(&pool).await {
            Ok(c) => c,
            Err(e) => {
                for r in group {
                    let _ = r.reply.send(Err(Failure::Store(Error::Unavailable(e.to_string()))));
                }
                continue;
            }
        };
        if group.len() == 1 || !commit_group(&c, &mut group).await {
            for r in group {
                let answer = alone(&c, &r.call).await;
                let _ = r.reply.send(answer);
            }
        }
    }
}

fn answer_of(row: &tokio_postgres::Row) -> Answer {
    Answer { status: row.get(0), actual: row.get(1), first: row.get(2), last: row.get(3) }
}

fn failure_of(e: tokio_postgres::Error) -> Failure {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        Failure::UniqueViolation
    } else {
        Failure::Store(super::db_err(e))
    }
}

async fn alone(c: &Conn, call: &Call) -> Result<Answer, Failure> {
    c.client.query_one(&c.stmt, &call.params()).await.map(|row| answer_of(&row)).map_err(failure_of)
}

/// Runs the group in one transaction and answers every request; returns false (having answered
/// none) when the group must be retried one by one.
async fn commit_group(c: &Conn, group: &mut Vec<Request>) -> bool {
    if c.client.batch_execute("BEGIN").await.is_err() {
        return false;
    }
    // Pipelined: every call is sent before the first answer is awaited.
    let calls = group.iter().map(|r| {
        let params = r.call.params();
        async move { c.client.query_one(&c.stmt, &params).await }
    });
    let rows = futures::future::join_all(calls).await;
    if rows.iter().any(Result::is_err) {
        let _ = c.client.batch_execute("ROLLBACK").await;
        return false;
    }
    if let Err(e) = c.client.batch_execute("COMMIT").await {
        // The outcome is unknown; callers retry with the same event ids, which is safe.
        let why = e.to_string();
        for r in group.drain(..) {
            let _ = r.reply.send(Err(Failure::Store(Error::Unavailable(format!("commit failed: {why}")))));
        }
        return true;
    }
    for (r, row) in group.drain(..).zip(rows) {
        let _ = r.reply.send(row.map(|row| answer_of(&row)).map_err(failure_of));
    }
    true
}
