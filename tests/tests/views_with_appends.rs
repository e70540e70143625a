//! Where a projector's work happens. SQLite, with a projector running in the process: each
//! group commit brings the views up to its own events in its transaction, so an acknowledged
//! append is already in the views; what the appends cannot apply is left to the projector,
//! which says why. Postgres: the projector runs on a thread and runtime of its own, so a busy
//! caller's runtime does not hold it up.

use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::{Engine, EngineOptions, EventStore, ExpectedVersion, Store, projector};
use std::path::PathBuf;
use std::time::Duration;

fn sequential() -> Workflow {
    let yaml = "name: pair\npattern: sequential\nagents:\n  a: {builtin: noop}\n  b: {builtin: echo}\n";
    spec::parse_str(yaml, "pair.yaml", &ParseOptions::default()).expect("valid workflow")
}

fn sqlite(store: &Store) -> anyhow::Result<rusqlite::Connection> {
    let Store::Sqlite(s) = store else { anyhow::bail!("a SQLite store") };
    Ok(rusqlite::Connection::open(s.path())?)
}

fn run_status(store: &Store, run_id: &str) -> anyhow::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    Ok(sqlite(store)?.query_row("SELECT status FROM runs WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?)
}

fn notes(n: usize) -> Vec<ltmc_core::NewEvent> {
    (0..n).map(|_| ltmc_engine::store::new_event("NoteTaken", 1, serde_json::json!({}), Default::default())).collect()
}

/// One runtime thread: between an append's return and the next `.await`, no task of this
/// runtime (the projector's included) can run, so a position seen there was published by the
/// append's own commit.
#[tokio::test(flavor = "current_thread")]
async fn an_acknowledged_append_is_already_in_the_views() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let engine = Engine::new(store.clone(), EngineOptions::default());
    // A backlog of more than a batch before the projector starts: its catch-up applies that.
    for _ in 0..80 {
        engine.run(sequential(), None, PathBuf::from("."), None).await?;
    }
    let backlog = store.head_position().await?;
    assert!(backlog > projector::BATCH as i64, "{backlog} events");
    let mut live = projector::spawn(store.clone());
    assert!(live.wait_for(backlog, Duration::from_secs(20)).await, "caught up: {:?}", live.last_error());
    for i in 0..5 {
        let appended = store.append(&format!("notes-{i}"), ExpectedVersion::NoStream, &notes(3)).await?;
        assert_eq!(live.position(), appended.last_position, "published by the append's commit");
        assert_eq!(store.views_checkpoint().await?, appended.last_position, "and in the views");
    }
    let state = engine.run(sequential(), None, PathBuf::from("."), None).await?;
    assert_eq!(run_status(&store, &state.run_id)?.as_deref(), Some("completed"));
    // An append of more than a batch is left to the projector's catch-up.
    let big = store.append("notes-big", ExpectedVersion::NoStream, &notes(projector::BATCH + 100)).await?;
    assert!(live.position() < big.last_position, "the append did not apply {} events", projector::BATCH + 100);
    assert!(live.wait_for(big.last_position, Duration::from_secs(20)).await, "{:?}", live.last_error());
    // Caught up, the appends apply again.
    let appended = store.append("notes-after", ExpectedVersion::NoStream, &notes(1)).await?;
    assert_eq!(live.position(), appended.last_position);
    // A rebuild as of an earlier position sets the projector's position there, lower too; the
    // next append brings the views up to itself again.
    let earlier = appended.last_position - 5;
    assert_eq!(store.rebuild_views(Some(earlier), ltmc_engine::store::REBUILD_HELD_ROWS).await?, earlier);
    assert_eq!(live.position(), earlier);
    let again = store.append("notes-again", ExpectedVersion::NoStream, &notes(1)).await?;
    assert_eq!(live.position(), again.last_position);
    assert_eq!(store.views_checkpoint().await?, again.last_position);
    live.stop();
    // With the projector stopped, appends leave the views alone again.
    tokio::task::yield_now().await; // the aborted task is dropped
    let alone = store.append("notes-alone", ExpectedVersion::NoStream, &notes(1)).await?;
    assert!(store.views_checkpoint().await? < alone.last_position, "nobody follows the log now");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_the_appends_cannot_write_fails_no_append_and_is_reported() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let mut live = projector::spawn(store.clone());
    engine.run(sequential(), None, PathBuf::from("."), None).await?;
    let before = store.head_position().await?;
    assert_eq!(store.views_checkpoint().await?, before);
    // The steps table disappears behind the engine's back.
    let ddl: Vec<String> = {
        let c = sqlite(&store)?;
        let mut stmt = c.prepare("SELECT sql FROM sqlite_master WHERE tbl_name = 'steps' AND sql IS NOT NULL")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    sqlite(&store)?.execute_batch("DROP TABLE steps")?;

    let state = engine.run(sequential(), None, PathBuf::from("."), None).await?;
    assert_eq!(state.status, ltmc_core::run::RunStatus::Completed, "the appends committed: {:?}", state.failure);
    let head = store.head_position().await?;
    assert!(head > before);
    assert_eq!(store.views_checkpoint().await?, before, "no view moved without the steps table");
    assert_eq!(run_status(&store, &state.run_id)?, None, "nor any row of another view");
    let mut why = None;
    for _ in 0..100 {
        why = live.last_error();
        if why.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let why = why.expect("the projector reports why the views stand still");
    assert!(why.contains("steps"), "{why}");
    assert_eq!(projector::status(&store).await?.lag, head - before);

    // Put back, the projector applies what was left (on its next retry) and the appends follow.
    sqlite(&store)?.execute_batch(&(ddl.join(";\n") + ";"))?;
    assert!(live.wait_for(head, Duration::from_secs(20)).await, "{:?}", live.last_error());
    assert_eq!(live.last_error(), None, "advancing again, it has nothing to report");
    assert_eq!(run_status(&store, &state.run_id)?.as_deref(), Some("completed"));
    engine.run(sequential(), None, PathBuf::from("."), None).await?;
    assert_eq!(store.views_checkpoint().await?, store.head_position().await?);
    live.stop();
    Ok(())
}

/// The caller's one runtime thread is blocked (as by a busy engine) while the Postgres projector
/// applies what was appended: it does not need that thread.
#[tokio::test(flavor = "current_thread")]
async fn the_postgres_projector_does_not_wait_for_the_callers_runtime() -> anyhow::Result<()> {
    let schema = ltmc_tests::PgSchema::new().await?;
    let store = schema.store().await?;
    let live = projector::spawn(store.clone());
    let meta = ltmc_core::Metadata::default();
    let events: Vec<_> =
        (0..20).map(|_| ltmc_engine::store::new_event("NoteTaken", 1, serde_json::json!({}), meta.clone())).collect();
    let appended = store.append("notes-1", ltmc_engine::ExpectedVersion::NoStream, &events).await?;
    // From here on this runtime runs nothing until the loop ends.
    let started = std::time::Instant::now();
    while live.position() < appended.last_position && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(live.position(), appended.last_position, "{:?}", live.last_error());
    live.stop();
    schema.drop().await
}
