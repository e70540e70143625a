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
///
/// Both ends are read off clocks that the loaded runtime cannot delay: a run's last event
/// carries the time it was recorded (before its append commits), and a thread of its own notes
/// the time each position the projector commits becomes visible. A run's lag is the time from
/// its last event's `recorded_at` to the first commit at or past that event's position.
pub(super) async fn live_lag(backend: &'static str, engine: &Engine, raw: &mut Raw) -> anyhow::Result<Row> {
    let store = engine.store().clone();
    projector::catch_up(&store).await?;
    let handle = projector::spawn(store.clone());
    let commits = observe(handle.watch())?;
    let wf = super::concurrency::w3()?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (engine, wf) = (engine.clone(), wf.clone());
        tasks.spawn(async move {
            let mut runs = Vec::with_capacity(10);
            for _ in 0..10 {
                let s = engine.run(wf.clone(), None, PathBuf::from("."), None).await?;
                anyhow::ensure!(s.failure.is_none(), "W3 run failed: {:?}", s.failure);
                runs.push(s.run_id);
            }
            Ok(runs)
        });
    }
    let mut runs = Vec::with_capacity(500);
    while let Some(done) = tasks.join_next().await {
        runs.extend(done??);
    }
    let w3 = runs.len() as f64 / started.elapsed().as_secs_f64();
    let head = store.head_position().await?;
    let mut w = handle.watch();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), w.wait_for(|p| *p >= head)).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    handle.stop();
    // The observer ends once the stopped projector's task is dropped, on this runtime: wait
    // for it off this thread.
    let commits = tokio::task::spawn_blocking(move || commits.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the commit observer panicked"))?;
    let mut lags = Vec::with_capacity(runs.len());
    for run in &runs {
        let events = ltmc_engine::store::read_stream_all(&store, &format!("run-{run}")).await?;
        let last = events.last().ok_or_else(|| anyhow::anyhow!("run {run} has no events"))?;
        let seen = commits.iter().find(|(p, _)| *p >= last.global_position);
        if let Some((_, at)) = seen {
            lags.push((*at - last.recorded_at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
        }
    }
    anyhow::ensure!(lags.len() == 500, "only {} of 500 runs became visible", lags.len());
    lags.sort_by(|a, b| a.total_cmp(b));
    let at = |q: usize| lags[(lags.len() * q).div_ceil(100) - 1];
    let p99 = at(99);
    eprintln!(
        "  V-LAG ms: p50 {:.1}, p90 {:.1}, p99 {p99:.1}, max {:.1}; W3 meanwhile {w3:.0} workflows/s",
        at(50),
        at(90),
        lags[lags.len() - 1]
    );
    let commit = ms(raw.single_commits(200).await?) / 200.0;
    Ok(Row { backend, workload: "V-LAG p99 append -> runs view (W3)", unit: "ms", ltmc: p99, raw: commit })
}

/// Positions the projector committed, each with when it became visible.
type Commits = Vec<(i64, chrono::DateTime<chrono::Utc>)>;

/// Notes, on a thread of its own, when each position the projector publishes became visible
/// (a position is published right after the transaction that applied it commits: the
/// projector's, or on SQLite the appends' own). Ends when the projector stops.
fn observe(mut positions: tokio::sync::watch::Receiver<i64>) -> std::io::Result<std::thread::JoinHandle<Commits>> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    std::thread::Builder::new().name("v-lag-observer".into()).spawn(move || {
        runtime.block_on(async move {
            let mut seen = Vec::new();
            while positions.changed().await.is_ok() {
                let p = *positions.borrow_and_update();
                seen.push((p, chrono::Utc::now()));
            }
            seen
        })
    })
}
