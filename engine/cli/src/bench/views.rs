//! Workloads of issue 4 (with `--views`):
//! - V-REBUILD: rebuild every SQL view from N events (default 1,000,000) beside bulk-loading N
//!   rows raw (COPY on Postgres, 10,000-row transactions on SQLite), in rows per second.
//! - V-REBUILD vs its rows loaded raw: the same rebuild beside the floor of any rebuild, the rows
//!   the views end up holding bulk-loaded raw into tables with the views' indexes, as events/s.
//! - V-LAG: under W3 (500 workflows × 3 steps, 50 at once) with the projector following, the
//!   99th percentile time from a run's last append to the views including it, beside one raw
//!   durable commit.

use ltmc_core::Metadata;
use ltmc_engine::store::new_event;
use ltmc_engine::{Engine, EventStore, ExpectedVersion, Store, projector};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::raw::Raw;
use super::{Row, median, ms};

const STEPS: usize = 3;
/// Events of one synthetic run: RunStarted, 3 × (StepReady, StepDispatched, StepCompleted), RunCompleted.
const PER_RUN: usize = 2 + 3 * STEPS;

/// Appends synthetic runs until the log holds at least `events` events: one append per run,
/// 32 appenders at once (the stores group their commits).
pub(super) async fn fill(store: &Store, events: usize) -> anyhow::Result<()> {
    let runs = events.div_ceil(PER_RUN);
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = runs.div_ceil(32);
    for t in 0..32 {
        let store = store.clone();
        tasks.spawn(async move {
            for r in (t * per_task)..((t + 1) * per_task).min(runs) {
                let run_id = format!("{:08x}-0000-7000-8000-{:012x}", t, r);
                let meta = Metadata { run_id: Some(run_id.clone()), actor: Some("bench".into()), ..Default::default() };
                let ev = |t: &str, data: serde_json::Value| new_event(t, 1, data, meta.clone());
                let steps: Vec<_> = (0..STEPS).map(|i| json!({"name": format!("s{i}"), "agent": "a"})).collect();
                let mut batch = vec![ev(
                    "RunStarted",
                    json!({"run_id": run_id, "workflow": "bench", "definition": {"pattern": "sequential", "steps": steps},
                           "definition_hash": "sha256:bench", "input": null}),
                )];
                for i in 0..STEPS {
                    let step = format!("s{i}");
                    batch.push(ev("StepReady", json!({"step": step})));
                    batch.push(ev(
                        "StepDispatched",
                        json!({"step": step, "agent": "a", "attempt": 1, "idempotency_key": format!("{run_id}/{step}/1")}),
                    ));
                    batch.push(ev("StepCompleted", json!({"step": step, "attempt": 1, "output": null, "duration_ms": 0})));
                }
                batch.push(ev("RunCompleted", json!({"output": null})));
                store.append(&format!("run-{run_id}"), ExpectedVersion::NoStream, &batch).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// V-REBUILD: events per second rebuilt beside raw rows per second bulk-loaded.
pub(super) async fn rebuild(
    backend: &'static str,
    store: &Store,
    raw: &mut Raw,
    events: usize,
    repeat: usize,
) -> anyhow::Result<[Row; 2]> {
    let t = Instant::now();
    fill(store, events).await?;
    eprintln!("  filled the log with {} events in {:.1}s", store.head_position().await?, t.elapsed().as_secs_f64());
    let (mut e, mut r, mut floor) = (vec![], vec![], vec![]);
    for _ in 0..repeat {
        let t = Instant::now();
        let at = projector::rebuild(store, None).await?;
        e.push(at as f64 / t.elapsed().as_secs_f64());
        r.push(events as f64 / raw.bulk(events).await?.as_secs_f64());
        floor.push(at as f64 / raw.view_rows(store).await?.as_secs_f64());
    }
    let rebuilt = median(e);
    Ok([
        Row { backend, workload: "V-REBUILD all views, events/s", unit: "/s", ltmc: rebuilt, raw: median(r) },
        Row { backend, workload: "V-REBUILD vs its rows loaded raw", unit: "/s", ltmc: rebuilt, raw: median(floor) },
    ])
}

/// V-LAG: p99 ms from a run's last append to the views including it, under W3.
pub(super) async fn live_lag(backend: &'static str, engine: &Engine, raw: &mut Raw) -> anyhow::Result<Row> {
    let store = engine.store().clone();
    projector::catch_up(&store).await?;
    let handle = projector::spawn(store.clone());
    let lags: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let wf = super::concurrency::w3()?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (engine, wf, store, lags, watch) =
            (engine.clone(), wf.clone(), store.clone(), lags.clone(), handle.watch());
        tasks.spawn(async move {
            for _ in 0..10 {
                let s = engine.run(wf.clone(), None, PathBuf::from("."), None).await?;
                anyhow::ensure!(s.failure.is_none(), "W3 run failed: {:?}", s.failure);
                // The head now is at or past this run's last event: a conservative target.
                let pos = store.head_position().await?;
                let t = Instant::now();
                let (lags, mut watch) = (lags.clone(), watch.clone());
                tokio::spawn(async move {
                    if watch.wait_for(|p| *p >= pos).await.is_ok()
                        && let Ok(mut l) = lags.lock()
                    {
                        l.push(ms(t.elapsed()));
                    }
                });
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let head = store.head_position().await?;
    let mut w = handle.watch();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), w.wait_for(|p| *p >= head)).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    handle.stop();
    let mut lags = lags.lock().map(|l| l.clone()).unwrap_or_default();
    anyhow::ensure!(lags.len() == 500, "only {} of 500 runs became visible", lags.len());
    lags.sort_by(|a, b| a.total_cmp(b));
    let p99 = lags[(lags.len() * 99).div_ceil(100) - 1];
    let commit = ms(raw.single_commits(200).await?) / 200.0;
    Ok(Row { backend, workload: "V-LAG p99 append -> runs view (W3)", unit: "ms", ltmc: p99, raw: commit })
}
