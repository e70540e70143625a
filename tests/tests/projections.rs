//! The SQL views on both backends: after any mix of runs they equal a from-zero rebuild, also
//! when the projector is killed at random points, and they say what the runs did.

use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::{Engine, EngineOptions, EventStore, Store, projector};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TABLES: [&str; 8] =
    ["runs", "steps", "handoffs", "audit_log", "sessions", "session_agents", "memory", "memory_history"];

fn wf(yaml: &str) -> Workflow {
    spec::parse_str(yaml, "views.yaml", &ParseOptions::default()).expect("valid workflow")
}

/// Workflows covering every view: completion, retries then failure, a refused hand-over,
/// votes, and an event-driven run.
fn mix() -> Vec<Workflow> {
    vec![
        wf(
            "name: seq\npattern: sequential\nagents:\n  a: {builtin: echo}\n  b: {builtin: noop}\n  c: {builtin: echo}\n",
        ),
        wf(
            "name: flaky\npattern: sequential\nagents:\n  ok: {builtin: noop}\n  bad: {builtin: fail, retries: 2, backoff: 0}\n",
        ),
        wf(
            "name: gate\npattern: sequential\nhandoff_validation: true\nagents:\n  dev: {builtin: noop}\n  test: {builtin: noop, requires: [code_review_passed]}\n",
        ),
        wf(
            "name: vote\npattern: parallel\naggregation: majority\nagents:\n  x: {builtin: noop, params: {vote: approve}}\n  y: {builtin: noop, params: {vote: reject}}\n  z: {builtin: noop, params: {vote: approve}}\n",
        ),
        wf(
            "name: react\npattern: event_driven\ntriggers: [go]\nmax_activations: 2\nagents:\n  r: {builtin: echo, on: [go], params: {events: [{type: go}]}}\n",
        ),
    ]
}

async fn run_mix(engine: &Engine, times: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for _ in 0..times {
        for w in mix() {
            let event_driven = !w.triggers.is_empty();
            let run_id = engine.start(w, None, None, None).await?;
            if event_driven {
                engine.emit(&run_id, "go", json!({"n": 1}), "emit").await?;
            }
            engine.drive(&run_id, Some(PathBuf::from(".")), None).await?;
            ids.push(run_id);
        }
        session_mix(engine.store()).await?;
    }
    Ok(ids)
}

/// A session's life, touching every session and memory view: joins, heartbeats, a leave and a
/// join again, writes, a compare-and-set, a delete, a key written again, and the close.
async fn session_mix(store: &Store) -> anyhow::Result<String> {
    use ltmc_core::session::{Command, Write};
    let sessions = ltmc_engine::sessions::Sessions::new(store.clone());
    let name = format!("s{}", ltmc_tests::unique());
    let exec = |cmd: Command| {
        let (sessions, name) = (sessions.clone(), name.clone());
        async move { sessions.execute(&name, cmd, "test").await }
    };
    let write = |key: &str, value: Option<serde_json::Value>, if_version: Option<u64>| Command::Write {
        writer: "agent:dev".into(),
        writes: vec![Write { key: key.into(), value, if_version }],
    };
    sessions.create(&name, Some("views test".into()), "test").await?;
    exec(Command::Join { agent: "dev".into(), role: Some("developer".into()) }).await?;
    exec(Command::Join { agent: "qa".into(), role: None }).await?;
    exec(Command::Heartbeat { agent: "dev".into() }).await?;
    let context = json!({"requirements": {"auth": "oauth"}, "standards": "pep8", "scratch": [1, 2]});
    let serde_json::Value::Object(context) = context else { unreachable!("an object") };
    sessions.store_shared_context(&name, context, "agent:dev").await?;
    exec(write("requirements", Some(json!({"auth": "saml"})), Some(1))).await?;
    exec(write("scratch", None, Some(1))).await?;
    exec(write("scratch", Some(json!("again")), None)).await?;
    exec(write("gone", Some(json!(1)), None)).await?;
    exec(write("gone", None, None)).await?;
    exec(Command::Leave { agent: "qa".into() }).await?;
    exec(Command::Heartbeat { agent: "dev".into() }).await?;
    exec(Command::Join { agent: "qa".into(), role: Some("tester".into()) }).await?;
    exec(Command::Close { reason: Some("done".into()) }).await?;
    Ok(name)
}

/// Waits for `live` to apply the log up to its head (failing after 20 s), then stops it;
/// returns the head.
async fn caught_up(mut live: projector::ProjectorHandle, store: &Store) -> anyhow::Result<i64> {
    let head = store.head_position().await?;
    assert!(
        live.wait_for(head, Duration::from_secs(20)).await,
        "the live projector reached the head: {:?}",
        live.last_error()
    );
    live.stop();
    Ok(head)
}

/// Every row of every view, as sorted text: equal dumps mean equal views.
async fn dump(store: &Store) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for t in TABLES {
        let mut rows: Vec<String> = match store {
            Store::Postgres(pg) => {
                let client = pg.client().await?;
                let rows = client.query(&format!("SELECT row_to_json(t)::text FROM {t} t"), &[]).await?;
                rows.iter().map(|r| format!("{t}: {}", r.get::<_, String>(0))).collect()
            }
            Store::Sqlite(s) => {
                let conn = rusqlite::Connection::open(s.path())?;
                let mut stmt = conn.prepare(&format!("SELECT * FROM {t}"))?;
                let n = stmt.column_count();
                let rows = stmt.query_map([], |r| {
                    let vals: Vec<String> = (0..n)
                        .map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
                        .collect::<Result<_, _>>()?;
                    Ok(format!("{t}: {}", vals.join(" | ")))
                })?;
                rows.collect::<Result<_, _>>()?
            }
        };
        rows.sort();
        out.extend(rows);
    }
    Ok(out)
}

/// The indexes, views and tables of the store's schema with their definitions: a rebuild swaps
/// tables and must leave the same objects behind.
async fn schema_objects(store: &Store) -> anyhow::Result<Vec<String>> {
    match store {
        Store::Postgres(pg) => {
            let client = pg.client().await?;
            let rows = client
                .query(
                    "SELECT c.relkind::text || ' ' || c.relname || ' ' || coalesce(pg_get_indexdef(c.oid), '') || \
                     coalesce(pg_get_viewdef(c.oid), '') FROM pg_class c \
                     WHERE c.relnamespace = current_schema()::regnamespace ORDER BY c.relname",
                    &[],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }
        Store::Sqlite(s) => {
            let conn = rusqlite::Connection::open(s.path())?;
            let mut stmt = conn
                .prepare("SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        }
    }
}

async fn views_equal_a_rebuild_after_a_mix_of_runs(store: Store, _dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let live = projector::spawn(store.clone());
    let ids = run_mix(&engine, 2).await?;
    let head = caught_up(live, &store).await?;
    // A view of the user's own over a view table: a rebuild keeps it working.
    let own_view = "CREATE VIEW my_runs AS SELECT run_id, status FROM runs";
    match &store {
        Store::Postgres(pg) => pg.client().await?.batch_execute(own_view).await?,
        Store::Sqlite(s) => rusqlite::Connection::open(s.path())?.execute_batch(own_view)?,
    }
    let before = dump(&store).await?;
    let tables_before = schema_objects(&store).await?;
    assert_eq!(projector::rebuild(&store, None).await?, head);
    let after = dump(&store).await?;
    assert_eq!(before, after, "live views differ from a rebuild");
    assert_eq!(tables_before, schema_objects(&store).await?, "a rebuild changed indexes or views");
    let own_rows: i64 = match &store {
        Store::Postgres(pg) => pg.client().await?.query_one("SELECT count(*) FROM my_runs", &[]).await?.get(0),
        Store::Sqlite(s) => {
            rusqlite::Connection::open(s.path())?.query_row("SELECT count(*) FROM my_runs", [], |r| r.get(0))?
        }
    };
    assert_eq!(own_rows, ids.len() as i64, "the user's view reads the rebuilt runs");
    // A rebuild that may hold only 3 changing rows writes in windows, with the same result.
    assert_eq!(store.rebuild_views(None, 3).await?, head);
    assert_eq!(after, dump(&store).await?, "a rebuild in windows differs");
    assert_eq!(tables_before, schema_objects(&store).await?);
    let status = projector::status(&store).await?;
    assert_eq!((status.checkpoint, status.lag), (head, 0));

    // The metrics view, from the same rows: the mix twice.
    let m = ltmc_engine::metrics::read(&store).await?;
    assert_eq!(
        (m.completed_workflows, m.failed_workflows, m.running_workflows, m.active_agents),
        (6, 4, 0, 0),
        "{m:?}"
    );
    assert_eq!((m.retries, m.refused_handoffs, m.consensus_disagreements), (4, 2, 2), "{m:?}");
    let p50 = m.p50_coordination_ms.expect("steps were timed");
    assert!(p50 >= 0.0 && m.p95_coordination_ms >= Some(p50), "{m:?}");
    let text = ltmc_engine::metrics::prometheus(&m);
    assert!(text.contains("ltmc_workflows{status=\"completed\"} 6\n"), "{text}");
    assert!(text.contains("# TYPE ltmc_active_agents gauge\nltmc_active_agents 0\n"), "{text}");

    // What the views say.
    let audit = after.iter().filter(|r| r.starts_with("audit_log:")).count() as i64;
    assert_eq!(audit, head, "one audit row per event");
    let count = |table: &str| after.iter().filter(|r| r.starts_with(&format!("{table}: "))).count();
    // Two sessions of the mix: 2 agents each, 3 keys left of 4 written, 8 memory events each.
    assert_eq!((count("sessions"), count("session_agents"), count("memory"), count("memory_history")), (2, 4, 6, 16));
    let sqlite = matches!(store, Store::Sqlite(_));
    let closed = if sqlite { r#"Text("closed")"# } else { r#""status":"closed""# };
    assert!(after.iter().filter(|r| r.starts_with("sessions: ")).all(|r| r.contains(closed)), "{after:?}");
    let inactive = if sqlite { "Integer(0)" } else { r#""active":false"# };
    assert!(after.iter().filter(|r| r.starts_with("session_agents: ")).all(|r| r.contains(inactive)));
    assert!(!after.iter().any(|r| r.starts_with("memory: ") && r.contains("gone")), "a deleted key has no row");
    let runs: Vec<&String> = after.iter().filter(|r| r.starts_with("runs:")).collect();
    assert_eq!(runs.len(), ids.len());
    let row = |id: &str| runs.iter().find(|r| r.contains(id)).map(|r| r.to_string()).unwrap_or_default();
    let (seq, flaky, gate) = (row(&ids[0]), row(&ids[1]), row(&ids[2]));
    let has = |row: &str, needle: &str| row.contains(needle);
    if sqlite {
        assert!(has(&seq, r#"Text("completed")"#), "{seq}");
        assert!(has(&flaky, r#"Text("failed")"#), "{flaky}");
        assert!(after.iter().any(|r| r.starts_with("handoffs:") && r.contains(r#"Text("refused")"#)));
    } else {
        assert!(has(&seq, r#""status":"completed""#) && has(&seq, r#""steps_completed":3"#), "{seq}");
        assert!(has(&flaky, r#""status":"failed""#) && has(&flaky, r#""retries":2"#), "{flaky}");
        assert!(has(&gate, r#""status":"failed""#), "{gate}");
        assert!(after.iter().any(|r| r.starts_with("handoffs:") && r.contains(r#""outcome":"refused""#)));
    }
    Ok(())
}

/// The projector is aborted 20 times at random points while runs append; restarted each time,
/// it ends with views equal to a rebuild.
async fn killing_the_projector_keeps_views_consistent(store: Store, _dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let writer = tokio::spawn({
        let engine = engine.clone();
        async move { run_mix(&engine, 6).await }
    });
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..20 {
        let p = projector::spawn(store.clone());
        tokio::time::sleep(Duration::from_millis(rng.u64(1..25))).await;
        p.stop();
    }
    writer.await??;
    let head = store.head_position().await?;
    assert_eq!(projector::catch_up(&store).await?, head);
    let live = dump(&store).await?;
    projector::rebuild(&store, None).await?;
    assert_eq!(live, dump(&store).await?, "views after 20 kills differ from a rebuild");
    Ok(())
}

/// Rebuilds while runs append and the live projector follows: each rebuild completes (the
/// projector waits for it and starts again from its checkpoint), and the live views end equal
/// to a rebuild.
async fn rebuilding_while_the_projector_follows(store: Store, _dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let live = projector::spawn(store.clone());
    let writer = tokio::spawn({
        let engine = engine.clone();
        async move { run_mix(&engine, 4).await }
    });
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        projector::rebuild(&store, None).await?;
    }
    writer.await??;
    caught_up(live, &store).await?;
    let following = dump(&store).await?;
    projector::rebuild(&store, None).await?;
    assert_eq!(following, dump(&store).await?, "views followed across rebuilds differ from a rebuild");
    Ok(())
}

/// A rebuild that meets an event it cannot read fails, names it, and leaves the views as they
/// were: their rows, their indexes (SQLite drops the append-only tables' while it loads), their
/// checkpoint.
/// Runs one statement behind the engine's back.
async fn execute(store: &Store, sql: &str) -> anyhow::Result<()> {
    match store {
        Store::Postgres(pg) => pg.client().await?.batch_execute(sql).await?,
        Store::Sqlite(s) => rusqlite::Connection::open(s.path())?.execute_batch(sql)?,
    }
    Ok(())
}

async fn a_failed_rebuild_leaves_the_views_as_they_were(store: Store, _dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    run_mix(&engine, 1).await?;
    projector::catch_up(&store).await?;
    let checkpoint = store.views_checkpoint().await?;
    // A view table that refuses every new row: the rebuild fails writing it. (An unreadable
    // event no longer fails a rebuild: it is left out and its stream named, see tamper.rs.)
    let (inject, remove) = match &store {
        Store::Postgres(_) => (
            "ALTER TABLE runs ADD CONSTRAINT injected_failure CHECK (steps_total < 0) NOT VALID",
            "ALTER TABLE runs DROP CONSTRAINT injected_failure",
        ),
        Store::Sqlite(_) => (
            "CREATE TRIGGER injected_failure BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'injected_failure'); END",
            "DROP TRIGGER injected_failure",
        ),
    };
    execute(&store, inject).await?;
    let (objects, rows) = (schema_objects(&store).await?, dump(&store).await?);
    // Whole, and in windows of one row: then rows are written before the failing one.
    for held_rows in [ltmc_engine::store::REBUILD_HELD_ROWS, 1] {
        let err = store.rebuild_views(None, held_rows).await.expect_err("the refused row fails the rebuild");
        assert!(err.to_string().contains("injected_failure"), "the error says why: {err}");
        assert_eq!(rows, dump(&store).await?, "a failed rebuild changed the views' rows");
        assert_eq!(objects, schema_objects(&store).await?, "a failed rebuild changed indexes or views");
        assert_eq!(checkpoint, store.views_checkpoint().await?, "a failed rebuild moved the checkpoint");
    }
    execute(&store, remove).await?;
    assert_eq!(store.rebuild_views(None, 1).await?, store.head_position().await?, "it rebuilds once allowed");
    // The writer is still usable: runs go on appending.
    run_mix(&engine, 1).await?;
    Ok(())
}

ltmc_tests::on_both_backends!(
    a_failed_rebuild_leaves_the_views_as_they_were,
    rebuilding_while_the_projector_follows,
    views_equal_a_rebuild_after_a_mix_of_runs,
    killing_the_projector_keeps_views_consistent,
);

/// Time travel: the views as of a position, built into another schema or file; the live views
/// are untouched, and the snapshot equals a rebuild of the same prefix.
async fn time_travel_builds_views_elsewhere(store: Store, into: &str) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let ids = run_mix(&engine, 1).await?;
    projector::catch_up(&store).await?;
    let live = dump(&store).await?;
    // Just after the first run's RunStarted and first dispatch: it is running in the snapshot.
    let first = store.read_stream(&format!("run-{}", ids[0]), 0, 3).await?;
    let until = first[2].global_position;
    assert_eq!(projector::snapshot(&store, until, into).await?, until);
    assert_eq!(live, dump(&store).await?, "the live views were not touched");
    let err = projector::snapshot(&store, until, into).await.expect_err("exists");
    assert!(err.to_string().contains("exists"), "{err}");
    let (status, position): (String, i64) = match &store {
        Store::Postgres(pg) => {
            let c = pg.client().await?;
            let s = c.query_one(&format!("SELECT status FROM \"{into}\".runs WHERE run_id = $1"), &[&ids[0]]).await?;
            let p = c.query_one(&format!("SELECT position FROM \"{into}\".checkpoints"), &[]).await?;
            let n: i64 = c.query_one(&format!("SELECT count(*) FROM \"{into}\".audit_log"), &[]).await?.get(0);
            assert_eq!(n, until);
            c.batch_execute(&format!("DROP SCHEMA \"{into}\" CASCADE")).await?;
            (s.get(0), p.get(0))
        }
        Store::Sqlite(_) => {
            let c = rusqlite::Connection::open(into)?;
            let s = c.query_row("SELECT status FROM runs WHERE run_id = ?1", [&ids[0]], |r| r.get(0))?;
            let p = c.query_row("SELECT position FROM checkpoints", [], |r| r.get(0))?;
            let n: i64 = c.query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))?;
            assert_eq!(n, until);
            (s, p)
        }
    };
    assert_eq!((status.as_str(), position), ("running", until));
    // --at: the position of a time is the last event recorded at or before it.
    let head = store.head_position().await?;
    assert_eq!(store.position_at(chrono::Utc::now()).await?, head);
    assert_eq!(
        store.position_at(first[0].recorded_at - chrono::Duration::seconds(1)).await?,
        first[0].global_position - 1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_time_travel_builds_views_elsewhere() -> anyhow::Result<()> {
    let (store, dir) = ltmc_tests::sqlite_store().await?;
    let into = dir.path().join("as-of.db").display().to_string();
    time_travel_builds_views_elsewhere(store, &into).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_time_travel_builds_views_elsewhere() -> anyhow::Result<()> {
    let schema = ltmc_tests::PgSchema::new().await?;
    let into = format!("{}_asof", schema.name);
    time_travel_builds_views_elsewhere(schema.store().await?, &into).await?;
    schema.drop().await
}

/// Waits until `relay` has published the whole log of `src`, then stops it; returns the head.
async fn relayed(mut relay: ltmc_engine::relay::RelayHandle, src: &Store) -> anyhow::Result<i64> {
    let head = src.head_position().await?;
    assert!(relay.wait_for(head, Duration::from_secs(30)).await, "relayed: {:?}", relay.last_error());
    relay.stop();
    Ok(head)
}

/// Deletes the test's JetStream stream and drops both schemas.
async fn drop_all(
    opts: &ltmc_engine::relay::RelayOptions,
    source: ltmc_tests::PgSchema,
    target: ltmc_tests::PgSchema,
) -> anyhow::Result<()> {
    if let Ok(js) = ltmc_engine::relay::jetstream(&ltmc_tests::nats_url()).await {
        let _ = js.delete_stream(&opts.stream_name).await;
    }
    source.drop().await?;
    target.drop().await
}

/// A reporting database fed from JetStream ends up with the same views as the database whose
/// log the relay published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_fed_from_nats_equal_views_fed_from_the_log() -> anyhow::Result<()> {
    let (source, target) = (ltmc_tests::PgSchema::new().await?, ltmc_tests::PgSchema::new().await?);
    let (src, dst) = (source.store().await?, target.store().await?);
    let opts = ltmc_tests::relay_options(&ltmc_tests::nats_url());
    let relay = ltmc_engine::relay::spawn(src.clone(), opts.clone());
    let engine = Engine::new(src.clone(), EngineOptions::default());
    run_mix(&engine, 2).await?;
    let head = relayed(relay, &src).await?;
    projector::catch_up(&src).await?;
    let fed = tokio::time::timeout(Duration::from_secs(60), projector::from_nats(&dst, &opts, Some(head))).await??;
    assert_eq!(fed, head);
    // The copy holds the log its views come from, copied from the stream, event for event.
    assert_eq!(dst.head_position().await?, head);
    assert_eq!(src.read_all(0, head as usize).await?, dst.read_all(0, head as usize).await?, "the copied log differs");
    assert_eq!(dump(&src).await?, dump(&dst).await?, "the NATS-fed views differ");
    // Started again, it skips what it has.
    assert_eq!(projector::from_nats(&dst, &opts, Some(head)).await?, head);
    drop_all(&opts, source, target).await
}

/// A batch from NATS that the reporting database refuses writes nothing there: neither its
/// events nor its checkpoint move without its view rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_nats_batch_writes_nothing() -> anyhow::Result<()> {
    let (source, target) = (ltmc_tests::PgSchema::new().await?, ltmc_tests::PgSchema::new().await?);
    let (src, dst) = (source.store().await?, target.store().await?);
    let opts = ltmc_tests::relay_options(&ltmc_tests::nats_url());
    let relay = ltmc_engine::relay::spawn(src.clone(), opts.clone());
    let engine = Engine::new(src.clone(), EngineOptions::default());
    engine.run(wf("pattern: sequential\nagents:\n  a: {builtin: noop}\n"), None, PathBuf::from("."), None).await?;
    let head = relayed(relay, &src).await?;
    // Every insert into the target's `steps` fails when executed: the batch's last group of
    // writes (after `runs`), so every write before it was sent too.
    let client = target.client().await?;
    client.batch_execute("ALTER TABLE steps ADD CONSTRAINT refuse_all CHECK (false) NOT VALID").await?;
    let fed = tokio::time::timeout(Duration::from_secs(60), projector::from_nats(&dst, &opts, Some(head))).await?;
    let err = fed.expect_err("the target refuses the steps rows");
    assert!(err.to_string().contains("refuse_all"), "{err}");
    assert_eq!((dst.views_checkpoint().await?, dst.head_position().await?), (0, 0), "the batch wrote nothing");
    for table in ["runs", "steps"] {
        let n: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0);
        assert_eq!(n, 0, "no {table} row was written");
    }
    drop_all(&opts, source, target).await
}

/// A step left `running` by a run that ended (here `aggregation: first` abandons the slow one)
/// is not an active agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_ended_runs_are_not_active() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let w = wf(
        "pattern: parallel\naggregation: first\nagents:\n  fast: {builtin: noop}\n  slow: {builtin: sleep, params: {ms: 2000}}\n",
    );
    let state = engine.run(w, None, PathBuf::from("."), None).await?;
    assert_eq!(state.status, ltmc_core::run::RunStatus::Completed);
    projector::catch_up(&store).await?;
    let m = ltmc_engine::metrics::read(&store).await?;
    assert_eq!((m.active_agents, m.running_workflows, m.completed_workflows), (0, 0, 1), "{m:?}");
    Ok(())
}

/// `status` says when the views are behind with nobody applying events, never silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_views_that_stand_still() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let engine = Engine::new(store.clone(), EngineOptions::default());
    run_mix(&engine, 1).await?;
    let s = projector::status(&store).await?;
    assert_eq!((s.checkpoint, s.health), (0, "stalled"), "behind and never moved: {s:?}");
    assert!(s.lag > 0);
    projector::catch_up(&store).await?;
    let s = projector::status(&store).await?;
    assert_eq!((s.lag, s.health), (0, "up_to_date"), "{s:?}");
    run_mix(&engine, 1).await?;
    let s = projector::status(&store).await?;
    assert_eq!(s.health, "catching_up", "behind, but the checkpoint moved just now: {s:?}");
    Ok(())
}
