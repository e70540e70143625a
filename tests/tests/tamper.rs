//! Rows deleted or damaged behind the engine's back, on both backends (issue 16, defects 7 and
//! 10): `audit` names every damaged stream against the head records (`stream_heads`), one
//! unreadable row does not stop readers of the rest of the log, and a run whose history was
//! cut short is refused instead of replayed.

use ltmc_core::audit::Kind;
use ltmc_core::run::{RunStatus, stream_id};
use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::audit::{Report, audit};
use ltmc_engine::store::{self, ExpectedVersion, read_stream_all};
use ltmc_engine::{Engine, EngineOptions, EventStore, Store, projector};
use std::path::Path;

fn wf(yaml: &str) -> Workflow {
    spec::parse_str(yaml, "test.yaml", &ParseOptions::default()).expect("valid workflow")
}

/// Runs statements behind the engine's back.
async fn execute(store: &Store, sql: &str) -> anyhow::Result<()> {
    match store {
        Store::Postgres(pg) => pg.client().await?.batch_execute(sql).await?,
        Store::Sqlite(s) => rusqlite::Connection::open(s.path())?.execute_batch(sql)?,
    }
    Ok(())
}

/// A completed three-step run; its id.
async fn echo_run(engine: &Engine, dir: &Path) -> anyhow::Result<String> {
    let w = wf("pattern: sequential\nagents:\n  a: {builtin: echo}\n  b: {builtin: echo}\n  c: {builtin: echo}\n");
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    Ok(state.run_id)
}

fn damage_of(report: &Report, run_id: &str) -> Option<(Kind, i64)> {
    let stream = stream_id(run_id);
    report.broken.iter().find(|b| b.stream == stream).map(|b| (b.damage.kind, b.damage.version))
}

ltmc_tests::on_both_backends!(
    deleted_events_are_named_against_the_head_records,
    an_unreadable_row_is_named_and_the_rest_is_served,
    a_run_cut_short_is_refused_not_replayed,
    a_session_cut_short_is_refused,
);

async fn deleted_events_are_named_against_the_head_records(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(echo_run(&engine, dir).await?);
    }
    let clean = audit(&store, true).await?;
    assert!(clean.ok && clean.broken.is_empty(), "{clean:?}");
    assert_eq!(clean.events as i64, store.head_position().await?);

    // The migration fills head records for a log written before them: the same rows.
    let heads = store.stream_heads().await?;
    let backfill = match &store {
        Store::Postgres(_) => include_str!("../../migrations/postgres/V6__stream_heads.sql"),
        Store::Sqlite(_) => include_str!("../../migrations/sqlite/V6__stream_heads.sql"),
    };
    let insert = backfill.split("INSERT INTO stream_heads").nth(1).and_then(|s| s.split(';').next());
    let insert = format!("DELETE FROM stream_heads; INSERT INTO stream_heads {}", insert.unwrap_or_default());
    execute(&store, &insert).await?;
    let (mut before, mut after) = (heads, store.stream_heads().await?);
    before.sort_by(|a, b| a.0.cmp(&b.0));
    after.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(before, after, "the migration's backfill gives every stream its head record");

    let s = |i: usize| stream_id(&runs[i]);
    execute(
        &store,
        &format!(
            // The last two events of one run, a whole run, one event in the middle of another,
            // and the head record of a fourth; the fifth is untouched.
            "DELETE FROM events WHERE stream_id = '{0}' AND stream_version > 9; \
             DELETE FROM events WHERE stream_id = '{1}'; \
             DELETE FROM events WHERE stream_id = '{2}' AND stream_version = 4; \
             DELETE FROM stream_heads WHERE stream_id = '{3}';",
            s(0),
            s(1),
            s(2),
            s(3)
        ),
    )
    .await?;
    let report = audit(&store, true).await?;
    assert!(!report.ok, "{report:?}");
    assert_eq!(damage_of(&report, &runs[0]), Some((Kind::Truncated, 10)), "{report:?}");
    assert_eq!(damage_of(&report, &runs[1]), Some((Kind::Deleted, 1)), "{report:?}");
    assert_eq!(damage_of(&report, &runs[2]), Some((Kind::Missing, 4)), "{report:?}");
    assert_eq!(damage_of(&report, &runs[3]), Some((Kind::Unrecorded, 1)), "{report:?}");
    assert_eq!(damage_of(&report, &runs[4]), None, "the untouched run verifies: {report:?}");
    assert_eq!(report.broken.len(), 4, "{report:?}");
    let json = serde_json::to_value(&report)?;
    assert_eq!(json["ok"], false);
    assert!(json["broken"][0]["kind"].is_string() && json["broken"][0]["detail"].is_string(), "{json}");

    // An append cannot write over the deleted tail and hide it: the head record still says 11.
    let filler = store::new_event("StepReady", 1, serde_json::json!({}), Default::default());
    let err = store.append(&s(0), ExpectedVersion::Exact(9), &[filler]).await.expect_err("refused");
    assert!(matches!(err, store::Error::Conflict { actual: 11, .. }), "{err}");
    Ok(())
}

async fn an_unreadable_row_is_named_and_the_rest_is_served(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let (broken, fine) = (echo_run(&engine, dir).await?, echo_run(&engine, dir).await?);
    let damage = match &store {
        // jsonb holds only JSON: metadata that is not an object is what Postgres can carry.
        Store::Postgres(_) => "metadata = '5'",
        Store::Sqlite(_) => "data = '{not json'",
    };
    execute(
        &store,
        &format!("UPDATE events SET {damage} WHERE stream_id = '{}' AND stream_version = 6", stream_id(&broken)),
    )
    .await?;

    // audit lists the damaged stream and checks the rest, with or without --verify.
    for verify in [true, false] {
        let report = audit(&store, verify).await?;
        assert!(!report.ok, "{report:?}");
        assert_eq!(report.broken.len(), 1, "{report:?}");
        assert_eq!(damage_of(&report, &broken), Some((Kind::Unreadable, 6)), "{report:?}");
        assert_eq!(report.events as i64, store.head_position().await?, "every row is counted");
    }
    // The whole log is served, the row as its stand-in.
    let all = store.read_all(0, 1000).await?;
    let standin: Vec<_> = all.iter().filter(|e| e.is_unreadable()).collect();
    assert_eq!(standin.len(), 1);
    assert_eq!((standin[0].stream_id.as_str(), standin[0].stream_version), (stream_id(&broken).as_str(), 6));
    // The views take every other event: the projector and a rebuild both reach the head.
    let head = store.head_position().await?;
    assert_eq!(projector::catch_up(&store).await?, head);
    assert_eq!(store.rebuild_views(None, store::REBUILD_HELD_ROWS).await?, head);
    assert_eq!(store.rebuild_views(None, 1).await?, head);
    // The other run is whole; the damaged one is refused with its stream named.
    assert_eq!(engine.load(&fine).await?.status, RunStatus::Completed);
    let err = read_stream_all(&store, &stream_id(&broken)).await.expect_err("refused");
    assert!(matches!(&err, store::Error::Corrupt { stream, .. } if *stream == stream_id(&broken)), "{err}");
    let err = engine.load(&broken).await.expect_err("refused").to_string();
    assert!(err.contains(&stream_id(&broken)) && err.contains("audit --verify"), "{err}");
    // New runs go on.
    echo_run(&engine, dir).await?;
    Ok(())
}

async fn a_run_cut_short_is_refused_not_replayed(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let log = dir.join("side-effects.log");
    let w = wf(&format!(
        "pattern: sequential\nagents:\n  first: {{run: [sh, -c, 'echo first >> {0}']}}\n  second: {{run: [sh, -c, 'echo second >> {0}']}}\n",
        log.display()
    ));
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    let events = read_stream_all(&store, &stream_id(&state.run_id)).await?;
    assert_eq!(events.last().map(|e| e.event_type.as_str()), Some("RunCompleted"));
    // Cut the history back to just after `second` was dispatched: what a resume would redo.
    let dispatched =
        events.iter().rfind(|e| e.event_type == "StepDispatched").map(|e| e.stream_version).unwrap_or_default();
    execute(
        &store,
        &format!(
            "DELETE FROM events WHERE stream_id = '{}' AND stream_version > {dispatched}",
            stream_id(&state.run_id)
        ),
    )
    .await?;
    let resumed = engine.drive(&state.run_id, Some(dir.to_path_buf()), None).await;
    assert_eq!(std::fs::read_to_string(&log)?, "first\nsecond\n", "no finished step ran again");
    let err = resumed.expect_err("refused").to_string();
    assert!(err.contains("missing") && err.contains(&stream_id(&state.run_id)), "{err}");
    Ok(())
}

/// A session's stream is checked like a run's: with its last memory write deleted, reading the
/// session is refused instead of showing the older value as current.
async fn a_session_cut_short_is_refused(store: Store, _dir: &Path) -> anyhow::Result<()> {
    use ltmc_core::session::{Command, Write};
    let sessions = ltmc_engine::sessions::Sessions::new(store.clone());
    let name = format!("s{}", ltmc_tests::unique());
    sessions.create(&name, None, "test").await?;
    for v in [1, 2] {
        let writes = vec![Write { key: "k".into(), value: Some(serde_json::json!(v)), if_version: None }];
        sessions.execute(&name, Command::Write { writer: "agent:a".into(), writes }, "test").await?;
    }
    let stream = ltmc_core::session::stream_id(&name);
    let last = read_stream_all(&store, &stream).await?.last().map(|e| e.stream_version).unwrap_or_default();
    execute(&store, &format!("DELETE FROM events WHERE stream_id = '{stream}' AND stream_version = {last}")).await?;
    let err = sessions.load(&name).await.expect_err("refused").to_string();
    assert!(err.contains(&stream) && err.contains("missing"), "{err}");
    Ok(())
}
