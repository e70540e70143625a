//! Workloads of issue 3: coordination overhead and many workflows at once.
//!
//! - C100: 100 sequential steps each sleeping 10 ms; the engine's wall time beside the same 100
//!   sleeps without it (the seed promises < 5 % overhead).
//! - W3: 500 workflows of 3 sequential `noop` steps, 50 at a time; workflows per second beside
//!   the same number of durable commits (4 per workflow) from 50 concurrent writers.

use ltmc_core::spec::Workflow;
use ltmc_engine::Engine;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::raw::Raw;
use super::{Row, chain, median, ms, workflow};

const W3_WORKFLOWS: usize = 500;
const W3_CONCURRENCY: usize = 50;

fn c100() -> anyhow::Result<Workflow> {
    let agents = json!({"sleep": {"builtin": "sleep", "params": {"ms": 10}}});
    workflow(&json!({"name": "c100", "agents": agents, "steps": chain(100, "sleep")}))
}

pub(super) fn w3() -> anyhow::Result<Workflow> {
    workflow(&json!({"name": "w3", "pattern": "sequential",
        "agents": {"a": {"builtin": "noop"}, "b": {"builtin": "noop"}, "c": {"builtin": "noop"}}}))
}

/// C100: engine wall time vs 100 plain 10 ms sleeps, in ms.
pub(super) async fn overhead(backend: &'static str, engine: &Engine, repeat: usize) -> anyhow::Result<Row> {
    let wf = c100()?;
    let (mut e, mut r) = (vec![], vec![]);
    for _ in 0..repeat {
        let t = Instant::now();
        let s = engine.run(wf.clone(), None, PathBuf::from("."), None).await?;
        anyhow::ensure!(s.failure.is_none(), "C100 run failed: {:?}", s.failure);
        e.push(ms(t.elapsed()));
        let t = Instant::now();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        r.push(ms(t.elapsed()));
    }
    Ok(Row { backend, workload: "C100 wall (100 x 10 ms sleep steps)", unit: "ms", ltmc: median(e), raw: median(r) })
}

/// W3: workflows per second, 50 at a time, vs the same commits made directly.
pub(super) async fn throughput(
    backend: &'static str,
    engine: &Engine,
    raw: &mut Raw,
    repeat: usize,
) -> anyhow::Result<Row> {
    let wf = w3()?;
    let (mut e, mut r) = (vec![], vec![]);
    for _ in 0..repeat {
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..W3_CONCURRENCY {
            let (engine, wf) = (engine.clone(), wf.clone());
            tasks.spawn(async move {
                for _ in 0..W3_WORKFLOWS / W3_CONCURRENCY {
                    let s = engine.run(wf.clone(), None, PathBuf::from("."), None).await?;
                    anyhow::ensure!(s.failure.is_none(), "W3 run failed: {:?}", s.failure);
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        e.push(W3_WORKFLOWS as f64 / t.elapsed().as_secs_f64());
        // Each workflow is 4 commits: its start, and one per step (the last with RunCompleted).
        let took = raw.concurrent_commits(W3_CONCURRENCY, 4 * W3_WORKFLOWS / W3_CONCURRENCY).await?;
        r.push(W3_WORKFLOWS as f64 / took.as_secs_f64());
    }
    Ok(Row {
        backend,
        workload: "W3 workflows/s (500 x 3 steps, 50 at once)",
        unit: "/s",
        ltmc: median(e),
        raw: median(r),
    })
}

const K_STEPS: usize = 50;

/// K50: per-step time of 50 sequential `worker: true` steps served over NATS by a worker (in
/// this process, performing `noop`) beside the same 50 steps run in-process, in ms. The target
/// is the difference: at most 2 ms.
pub(super) async fn worker_step(
    backend: &'static str,
    engine: &Engine,
    nats: &str,
    repeat: usize,
) -> anyhow::Result<Row> {
    use ltmc_core::spec::{AgentDef, Builtin};
    use ltmc_engine::workers::{self, Workers, serve};
    let agent = format!("bench_worker_{}", std::process::id());
    let remote = workflow(&json!({"name": "k50", "agents": {&agent: {"worker": true, "timeout": 30}},
        "steps": chain(K_STEPS, &agent)}))?;
    let local = workflow(&json!({"name": "k50local", "agents": {"noop": {"builtin": "noop"}},
        "steps": chain(K_STEPS, "noop")}))?;
    let engine = engine.clone().with_workers(Workers::connect(nats).await?);
    let def = AgentDef { builtin: Some(Builtin::Noop), ..Default::default() };
    let server = tokio::spawn(serve::serve(serve::WorkerOptions::new(nats, &agent, def)));
    let (mut e, mut r) = (vec![], vec![]);
    // One warm-up run: the worker's consumer and the run's mailbox are set up, not measured.
    for i in 0..=repeat {
        let t = Instant::now();
        let s = engine.run(remote.clone(), None, PathBuf::from("."), None).await?;
        anyhow::ensure!(s.failure.is_none(), "K50 run failed: {:?}", s.failure);
        let remote_ms = ms(t.elapsed()) / K_STEPS as f64;
        let t = Instant::now();
        let s = engine.run(local.clone(), None, PathBuf::from("."), None).await?;
        anyhow::ensure!(s.failure.is_none(), "K50 local run failed: {:?}", s.failure);
        if i > 0 {
            e.push(remote_ms);
            r.push(ms(t.elapsed()) / K_STEPS as f64);
        }
    }
    server.abort();
    let js = ltmc_engine::relay::jetstream(nats).await?;
    if let Ok(stream) = js.get_stream(workers::TASKS_STREAM).await {
        let _ = stream.delete_consumer(&workers::consumer_name(&agent)).await;
    }
    Ok(Row { backend, workload: "K50 worker step vs in-process", unit: "ms", ltmc: median(e), raw: median(r) })
}
