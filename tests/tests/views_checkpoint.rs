//! Views never run ahead of their checkpoint (issue 16, defect 8). While runs and sessions
//! append, a projector follows and is killed, and catch-ups and rebuilds start and are killed
//! at random points, a reader on a connection of its own reads, over and over and each time in
//! one snapshot, the highest position the views' rows carry and the checkpoint. The checkpoint
//! must cover the rows of its own snapshot and every row read before it: a reader that has seen
//! a row never afterwards reads a checkpoint behind it (only `rebuild --until` moves the views
//! back, and this test runs none).

use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::{Engine, EngineOptions, EventStore, Store, projector};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn wf(yaml: &str) -> Workflow {
    spec::parse_str(yaml, "views.yaml", &ParseOptions::default()).expect("valid workflow")
}

/// Runs and session writes (every view with a position), one after another until `stop`.
async fn keep_appending(engine: Engine, stop: Arc<AtomicBool>) -> anyhow::Result<usize> {
    use ltmc_core::session::{Command, Write};
    let mix = [
        "name: seq\npattern: sequential\nagents:\n  a: {builtin: echo}\n  b: {builtin: noop}\n  c: {builtin: echo}\n",
        "name: gate\npattern: sequential\nhandoff_validation: true\nagents:\n  dev: {builtin: noop}\n  test: {builtin: noop, requires: [code_review_passed]}\n",
    ];
    let sessions = ltmc_engine::sessions::Sessions::new(engine.store().clone());
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        for yaml in mix {
            let run_id = engine.start(wf(yaml), None, None, None).await?;
            engine.drive(&run_id, Some(PathBuf::from(".")), None).await?;
        }
        let name = format!("s{}", ltmc_tests::unique());
        sessions.create(&name, None, "test").await?;
        let writes = vec![Write { key: "k".into(), value: Some(serde_json::json!(rounds)), if_version: None }];
        sessions.execute(&name, Command::Write { writer: "agent:a".into(), writes }, "test").await?;
        rounds += 1;
    }
    Ok(rounds)
}

/// The highest position the rows of each view with one carry.
const POSITIONS: [(&str, &str); 5] = [
    ("runs", "SELECT max(last_position) FROM runs"),
    ("handoffs", "SELECT max(position) FROM handoffs"),
    ("sessions", "SELECT max(last_position) FROM sessions"),
    ("memory", "SELECT max(position) FROM memory"),
    ("memory_history", "SELECT max(position) FROM memory_history"),
];
const CHECKPOINT: &str = "SELECT position FROM checkpoints WHERE name = 'projections'";

/// One snapshot: the views' positions, then the checkpoint.
type Snapshot = (Vec<(&'static str, i64)>, i64);

/// A reader with a connection of its own.
enum Reader {
    Postgres(tokio_postgres::Client),
    Sqlite(rusqlite::Connection),
}

impl Reader {
    async fn open(store: &Store) -> anyhow::Result<Reader> {
        Ok(match store {
            Store::Postgres(pg) => {
                let url = ltmc_engine::store::postgres::url_with_schema(&ltmc_tests::pg_url(), pg.schema());
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                Reader::Postgres(client)
            }
            Store::Sqlite(s) => Reader::Sqlite(rusqlite::Connection::open(s.path())?),
        })
    }

    /// The rows' positions and the checkpoint, in one repeatable-read transaction (a SQLite
    /// read transaction is one snapshot).
    async fn read(&mut self) -> anyhow::Result<Snapshot> {
        match self {
            Reader::Postgres(client) => {
                let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
                let tx = tx.start().await?;
                let mut rows = Vec::new();
                for (view, sql) in POSITIONS {
                    rows.push((view, tx.query_one(sql, &[]).await?.get::<_, Option<i64>>(0).unwrap_or(0)));
                }
                let checkpoint = tx.query_opt(CHECKPOINT, &[]).await?.map_or(0, |r| r.get(0));
                tx.commit().await?;
                Ok((rows, checkpoint))
            }
            Reader::Sqlite(conn) => tokio::task::block_in_place(|| {
                let tx = conn.transaction()?;
                let mut rows = Vec::new();
                for (view, sql) in POSITIONS {
                    rows.push((view, tx.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))?.unwrap_or(0)));
                }
                let checkpoint = match tx.query_row(CHECKPOINT, [], |r| r.get(0)) {
                    Err(rusqlite::Error::QueryReturnedNoRows) => 0,
                    other => other?,
                };
                tx.commit()?;
                Ok((rows, checkpoint))
            }),
        }
    }
}

/// Reads until `stop`; returns how many snapshots it read and each sighting of rows beyond the
/// checkpoint.
async fn keep_reading(store: Store, stop: Arc<AtomicBool>) -> anyhow::Result<(usize, Vec<String>)> {
    let mut reader = Reader::open(&store).await?;
    let (mut reads, mut wrong) = (0usize, Vec::new());
    // The highest position of a row read so far, and its view.
    let mut seen: (i64, &str) = (0, "");
    while !stop.load(Ordering::Relaxed) {
        let (rows, checkpoint) = reader.read().await?;
        reads += 1;
        let mut saw = |what: String| {
            if wrong.last() != Some(&what) {
                wrong.push(what); // once per sighting, not once per read of the same one
            }
        };
        if seen.0 > checkpoint {
            saw(format!("{} at {} read before, then a checkpoint at {checkpoint}", seen.1, seen.0));
        }
        for (view, position) in rows {
            if position > checkpoint {
                saw(format!("{view} at {position} in a snapshot whose checkpoint is {checkpoint}"));
            }
            seen = seen.max((position, view));
        }
    }
    Ok((reads, wrong))
}

async fn views_never_run_ahead_of_their_checkpoint(store: Store, _dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let stop = Arc::new(AtomicBool::new(false));
    let appending = tokio::spawn(keep_appending(engine, stop.clone()));
    let reading = tokio::spawn(keep_reading(store.clone(), stop.clone()));
    let mut rng = fastrand::Rng::with_seed(16);
    let mut live = projector::spawn(store.clone());
    let (mut rebuilt, mut killed) = (0, 0);
    for _ in 0..60 {
        // The projector killed and started again, a catch-up (what `ltmc run` does at its end)
        // and a rebuild, each killed at a random point or left to finish: all racing the
        // appends and each other.
        if rng.bool() {
            live.stop();
            live = projector::spawn(store.clone());
        }
        let catching_up = tokio::spawn({
            let store = store.clone();
            async move { projector::catch_up(&store).await }
        });
        let rebuilding = tokio::spawn({
            let store = store.clone();
            async move { projector::rebuild(&store, None).await }
        });
        let kill = rng.bool();
        tokio::time::sleep(Duration::from_millis(rng.u64(1..40))).await;
        if kill {
            catching_up.abort();
            rebuilding.abort();
        }
        if let Ok(caught_up) = catching_up.await {
            caught_up?; // not killed: it must have succeeded
        }
        match rebuilding.await {
            Ok(done) => {
                done?;
                rebuilt += 1;
            }
            Err(_) => killed += 1,
        }
    }
    live.stop();
    stop.store(true, Ordering::Relaxed);
    let rounds = appending.await??;
    let (reads, wrong) = reading.await??;
    eprintln!("{rounds} rounds of appends, {rebuilt} rebuilds done and {killed} killed, {reads} snapshots read");
    assert!(reads >= 50 && rebuilt >= 10, "too little happened: {reads} snapshots, {rebuilt} rebuilds");
    assert!(
        wrong.is_empty(),
        "{} sightings of rows beyond the checkpoint: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(8)]
    );
    // And after all that, a catch-up still brings them to the head.
    let head = store.head_position().await?;
    assert_eq!(projector::catch_up(&store).await?, head);
    Ok(())
}

ltmc_tests::on_both_backends!(views_never_run_ahead_of_their_checkpoint);
