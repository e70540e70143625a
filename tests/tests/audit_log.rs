//! `audit_log` is a view of the log itself (decision 0012): an event is in it once its append
//! commits, with no projector running, and its run and time filters read the log's indexes
//! instead of scanning it.

use ltmc_core::spec::{self, ParseOptions};
use ltmc_engine::{Engine, EngineOptions, EventStore, Store};
use std::path::{Path, PathBuf};

/// The audit rows of `run_id` and the plans of a run filter and a time filter.
async fn read(store: &Store, run_id: &str) -> anyhow::Result<(Vec<(i64, Option<String>, String, String)>, String)> {
    const ROWS: &str = "SELECT position, actor, action, target FROM audit_log WHERE run_id = $1 ORDER BY position";
    const BY_RUN: &str = "SELECT * FROM audit_log WHERE run_id = $1";
    const BY_TIME: &str = "SELECT * FROM audit_log WHERE at >= $1";
    match store {
        Store::Postgres(pg) => {
            let c = pg.client().await?;
            let rows = c.query(ROWS, &[&run_id]).await?;
            let rows = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
            // A handful of rows: without this, a sequential scan is the cheaper plan.
            c.batch_execute("SET enable_seqscan = off").await?;
            let mut plans = String::new();
            let at = chrono::Utc::now();
            for line in c.query(&format!("EXPLAIN {BY_RUN}"), &[&run_id]).await? {
                plans += &format!("{}\n", line.get::<_, String>(0));
            }
            for line in c.query(&format!("EXPLAIN {BY_TIME}"), &[&at]).await? {
                plans += &format!("{}\n", line.get::<_, String>(0));
            }
            c.batch_execute("RESET enable_seqscan").await?;
            Ok((rows, plans))
        }
        Store::Sqlite(s) => {
            let c = rusqlite::Connection::open(s.path())?;
            let sqlite = |sql: &str| sql.replace('$', "?");
            let mut stmt = c.prepare(&sqlite(ROWS))?;
            let rows = stmt
                .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?;
            let mut plans = String::new();
            for sql in [BY_RUN, BY_TIME] {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {}", sqlite(sql)))?;
                let details = stmt.query_map(["x"], |r| r.get::<_, String>(3))?;
                for d in details {
                    plans += &format!("{}\n", d?);
                }
            }
            Ok((rows, plans))
        }
    }
}

async fn an_event_is_in_the_audit_log_once_appended(store: Store, _dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let w = spec::parse_str(
        "pattern: sequential\nagents:\n  a: {builtin: noop}\n  b: {builtin: noop}\n",
        "audit.yaml",
        &ParseOptions::default(),
    )?;
    let state = engine.run(w, None, PathBuf::from("."), None).await?;
    assert_eq!(store.views_checkpoint().await?, 0, "no projector ran");

    let (rows, plans) = read(&store, &state.run_id).await?;
    let events = store.read_stream(&format!("run-{}", state.run_id), 0, 100).await?;
    let expected: Vec<(i64, Option<String>, String, String)> = events
        .iter()
        .map(|e| (e.global_position, e.metadata.actor.clone(), e.event_type.clone(), e.stream_id.clone()))
        .collect();
    assert!(expected.len() >= 8, "a run of two steps: {expected:?}");
    assert_eq!(rows, expected, "one audit row per event of the run, as the log holds it");
    assert!(plans.contains("events_run_id"), "the run filter reads the run index:\n{plans}");
    assert!(plans.contains("events_recorded_at"), "the time filter reads the time index:\n{plans}");
    Ok(())
}

ltmc_tests::on_both_backends!(an_event_is_in_the_audit_log_once_appended);
