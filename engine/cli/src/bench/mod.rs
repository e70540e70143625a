//! `ltmc bench`: the engine beside the raw database doing the same durable work, same run.
//!
//! - W1: one workflow of 200 sequential `noop` steps; per-step latency vs one single-row
//!   durable commit (autocommit INSERT) on the same backend.
//! - W2: one workflow of 500 parallel `noop` steps then one aggregate step; wall time vs
//!   inserting as many rows as the run wrote, 500 rows per commit.
//! - A1/A10/A100: one append of 1, 10 or 100 events vs one transaction inserting as many rows.
//! - C100, W3 and K50 (worker steps over NATS): see `concurrency.rs`.
//! - P500 (`--processes`): W3 as 500 `ltmc run` processes, see `processes.rs`.
//!
//! Every figure is the median of `--repeat` repetitions.

use anyhow::Context;
use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::relay::{self, RelayOptions};
use ltmc_engine::store::postgres::url_with_schema;
use ltmc_engine::store::{new_event, sqlite::SqliteStore};
use ltmc_engine::{Engine, EngineOptions, EventStore, ExpectedVersion, Store};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::exit::{self, BadInput};

mod concurrency;
mod processes;
mod raw;
mod views;

use raw::{Raw, payload};

/// Options of `ltmc bench`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Backends to measure: sqlite, postgres, or all.
    #[arg(long, default_value = "all")]
    backend: String,
    /// Repetitions per workload; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Postgres for the postgres backend; a scratch schema `ltmc_bench` is (re)created in it.
    #[arg(long, env = "LTMC_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// NATS for the relay on the postgres backend (a scratch stream `LTMC_BENCH` is used) and
    /// for the worker-step workload K50 on both.
    #[arg(long, env = "LTMC_BENCH_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Measure Postgres alone, without the JetStream relay running beside it.
    #[arg(long)]
    without_relay: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Only the SQL-view workloads: rebuild from --views-events events, and the live lag.
    #[arg(long)]
    views: bool,
    /// Events in the log for the rebuild workload.
    #[arg(long, default_value_t = 1_000_000)]
    views_events: usize,
    /// Only P500: 500 `ltmc run` processes of W3's workflow, 50 at once, beside as many
    /// processes making its durable commits on a raw connection.
    #[arg(long, conflicts_with = "views")]
    processes: bool,
    /// The raw side of P500, run by `--processes` in each child: commit to this database.
    #[arg(long, hide = true)]
    raw_child: Option<String>,
}

pub(super) struct Row {
    backend: &'static str,
    workload: &'static str,
    unit: &'static str,
    ltmc: f64,
    raw: f64,
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn workflow(source: &Value) -> anyhow::Result<Workflow> {
    Ok(spec::parse_str(&source.to_string(), "bench.json", &ParseOptions::default())?)
}

/// `n` steps `s0 … s{n-1}` of `agent`, each needing the one before (the dependency form, so
/// any number of steps can share one agent).
pub(super) fn chain(n: usize, agent: &str) -> Vec<Value> {
    (0..n)
        .map(|i| match i {
            0 => json!({"name": "s0", "agent": agent}),
            _ => json!({"name": format!("s{i}"), "agent": agent, "needs": [format!("s{}", i - 1)]}),
        })
        .collect()
}

fn w1() -> anyhow::Result<Workflow> {
    workflow(&json!({"name": "w1", "agents": {"noop": {"builtin": "noop"}}, "steps": chain(200, "noop")}))
}

fn w2() -> anyhow::Result<Workflow> {
    let mut steps: Vec<Value> = (0..500).map(|i| json!({"name": format!("p{i}"), "agent": "noop"})).collect();
    let all: Vec<String> = (0..500).map(|i| format!("p{i}")).collect();
    steps.push(json!({"name": "aggregate", "agent": "noop", "needs": all}));
    workflow(&json!({"name": "w2", "agents": {"noop": {"builtin": "noop"}}, "steps": steps}))
}

async fn measure(
    backend: &'static str,
    store: Store,
    mut raw: Raw,
    relay_opts: Option<RelayOptions>,
    how: &How<'_>,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let How { nats, views, repeat } = *how;
    let mut relay = relay_opts.map(|o| relay::spawn(store.clone(), o));
    let engine = Engine::new(store.clone(), EngineOptions::default());
    if let Some(events) = views {
        rows.push(views::live_lag(backend, &engine, &mut raw).await?);
        // The rebuild reads Postgres only; a relay publishing the million events of the fill
        // beside it would measure the relay, not the rebuild (in production the relay has
        // published a log long before anyone rebuilds its views).
        if let Some(r) = relay {
            r.stop();
        }
        rows.extend(views::rebuild(backend, &store, &mut raw, events, repeat).await?);
        return Ok(());
    }
    let dir = PathBuf::from(".");
    let (wf1, wf2) = (w1()?, w2()?);
    // One warm-up run of each so connection set-up and statement preparation are not measured.
    engine.run(wf1.clone(), None, dir.clone(), None).await?;
    raw.single_commits(20).await?;

    let (mut e1, mut r1, mut e2, mut r2, mut relayed) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..repeat {
        let t = Instant::now();
        let s = engine.run(wf1.clone(), None, dir.clone(), None).await?;
        anyhow::ensure!(s.status.is_terminal() && s.failure.is_none(), "W1 run failed: {:?}", s.failure);
        e1.push(ms(t.elapsed()) / 200.0);
        r1.push(ms(raw.single_commits(200).await?) / 200.0);

        let t = Instant::now();
        let s = engine.run(wf2.clone(), None, dir.clone(), None).await?;
        let done = t.elapsed();
        anyhow::ensure!(s.failure.is_none(), "W2 run failed: {:?}", s.failure);
        e2.push(ms(done));
        if let Some(r) = relay.as_mut() {
            let head = store.head_position().await?;
            anyhow::ensure!(
                r.wait_for(head, Duration::from_secs(30)).await,
                "the relay did not publish W2 within 30 s"
            );
            relayed.push(ms(t.elapsed()));
        }
        r2.push(ms(raw.batched(s.version as usize, 500).await?));
    }
    rows.push(Row {
        backend,
        workload: "W1 per step (200 sequential noop)",
        unit: "ms",
        ltmc: median(e1),
        raw: median(r1),
    });
    rows.push(Row {
        backend,
        workload: "W2 wall (500 parallel noop + 1)",
        unit: "ms",
        ltmc: median(e2),
        raw: median(r2.clone()),
    });
    if !relayed.is_empty() {
        rows.push(Row {
            backend,
            workload: "W2 wall until in JetStream",
            unit: "ms",
            ltmc: median(relayed),
            raw: median(r2),
        });
    }

    for (label, n, reps) in
        [("append 1 event", 1usize, 200usize), ("append 10 events", 10, 100), ("append 100 events", 100, 30)]
    {
        let (mut e, mut r) = (vec![], vec![]);
        for _ in 0..repeat {
            let t = Instant::now();
            for _ in 0..reps {
                let stream = format!("bench-{}", uuid::Uuid::now_v7());
                let batch: Vec<_> = (0..n)
                    .map(|i| {
                        new_event(
                            "BenchEvent",
                            1,
                            serde_json::from_str(&payload(i)).unwrap_or(Value::Null),
                            Default::default(),
                        )
                    })
                    .collect();
                store.append(&stream, ExpectedVersion::NoStream, &batch).await?;
            }
            e.push(ms(t.elapsed()) / reps as f64);
            let t = Instant::now();
            for _ in 0..reps {
                if n == 1 {
                    raw.single_commits(1).await?;
                } else {
                    raw.batched(n, n).await?;
                }
            }
            r.push(ms(t.elapsed()) / reps as f64);
        }
        let workload = match n {
            1 => "A1 append 1 event",
            10 => "A10 append 10 events",
            _ => "A100 append 100 events",
        };
        let _ = label;
        rows.push(Row { backend, workload, unit: "ms", ltmc: median(e), raw: median(r) });
    }
    rows.push(concurrency::overhead(backend, &engine, repeat).await?);
    rows.push(concurrency::throughput(backend, &engine, &mut raw, repeat).await?);
    match concurrency::worker_step(backend, &engine, nats, repeat).await {
        Ok(row) => rows.push(row),
        Err(e) => eprintln!("warning: K50 (worker steps) not measured: {e:#}"),
    }
    if let Some(r) = relay {
        r.stop();
    }
    Ok(())
}

/// What to measure, shared by both backends.
#[derive(Clone, Copy)]
struct How<'a> {
    /// NATS for the relay and K50.
    nats: &'a str,
    /// `Some(events)`: only the view workloads, with this many events.
    views: Option<usize>,
    /// Repetitions.
    repeat: usize,
}

async fn sqlite(how: &How<'_>, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let path = dir.path().join("bench.db");
    let store = Store::Sqlite(SqliteStore::open(&path.display().to_string()).await?);
    let conn = rusqlite::Connection::open(dir.path().join("raw.db"))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         CREATE TABLE bench_raw (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);",
    )?;
    measure("sqlite", store, Raw::Sqlite(conn), None, how, rows).await
}

/// A connection to `url` with scratch schema `ltmc_bench` (re)created, holding the raw side's
/// table; drop the schema with it when done.
async fn scratch_schema(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connecting to Postgres")?;
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP SCHEMA IF EXISTS ltmc_bench CASCADE; CREATE SCHEMA ltmc_bench; \
             CREATE TABLE ltmc_bench.bench_raw (id bigserial PRIMARY KEY, payload jsonb NOT NULL);",
        )
        .await?;
    Ok(client)
}

async fn postgres(url: &str, relay: bool, how: &How<'_>, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let nats = how.nats;
    let client = scratch_schema(url).await?;
    let store = Store::open(&url_with_schema(url, "ltmc_bench")).await?;
    let (raw, rconn) = tokio_postgres::connect(&url_with_schema(url, "ltmc_bench"), tokio_postgres::NoTls).await?;
    tokio::spawn(rconn);
    let nats_client = async_nats_connect(nats).await?;
    let opts = RelayOptions {
        stream_name: "LTMC_BENCH".into(),
        subject_prefix: "ltmc.bench".into(),
        ..RelayOptions::new(nats)
    };
    let _ = nats_client.delete_stream("LTMC_BENCH").await;
    let (name, opts) = if relay { ("postgres+jetstream", Some(opts)) } else { ("postgres", None) };
    let result = measure(name, store, Raw::Pg(raw, url_with_schema(url, "ltmc_bench")), opts, how, rows).await;
    let _ = nats_client.delete_stream("LTMC_BENCH").await;
    client.batch_execute("DROP SCHEMA IF EXISTS ltmc_bench CASCADE").await?;
    result
}

async fn processes_sqlite(repeat: usize) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let raw = dir.path().join("raw.db");
    rusqlite::Connection::open(&raw)?.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE bench_raw (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);",
    )?;
    let database_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let raw_url = raw.display().to_string();
    let target = processes::Target { backend: "sqlite", database_url: &database_url, raw_url: &raw_url, nats: None };
    processes::measure(&target, dir.path(), repeat).await
}

async fn processes_postgres(url: &str, nats: Option<&str>, repeat: usize) -> anyhow::Result<Row> {
    let client = scratch_schema(url).await?;
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let schema_url = url_with_schema(url, "ltmc_bench");
    let js = match nats {
        Some(n) => Some(async_nats_connect(n).await?),
        None => None,
    };
    if let Some(js) = &js {
        let _ = js.delete_stream("LTMC_BENCH").await;
    }
    let target = processes::Target {
        backend: if nats.is_some() { "postgres+jetstream" } else { "postgres" },
        database_url: &schema_url,
        raw_url: &schema_url,
        nats: nats.map(|n| (n, "LTMC_BENCH", "ltmc.bench")),
    };
    let result = processes::measure(&target, dir.path(), repeat).await;
    if let Some(js) = &js {
        let _ = js.delete_stream("LTMC_BENCH").await;
    }
    client.batch_execute("DROP SCHEMA IF EXISTS ltmc_bench CASCADE").await?;
    result
}

async fn async_nats_connect(url: &str) -> anyhow::Result<ltmc_engine::relay::JetStream> {
    ltmc_engine::relay::jetstream(url).await.with_context(|| format!("connecting to NATS at {url}"))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<u8> {
    if let Some(url) = &args.raw_child {
        processes::raw_child(url).await?;
        return Ok(exit::OK);
    }
    if args.repeat == 0 || args.repeat > 1000 {
        return Err(BadInput("--repeat must be between 1 and 1000".into()).into());
    }
    let (do_sqlite, do_pg) = match args.backend.as_str() {
        "all" => (true, true),
        "sqlite" => (true, false),
        "postgres" => (false, true),
        other => return Err(BadInput(format!("--backend {other:?}: use sqlite, postgres or all")).into()),
    };
    let views = args.views.then_some(args.views_events);
    if views == Some(0) || args.views_events > 100_000_000 {
        return Err(BadInput("--views-events must be between 1 and 100000000".into()).into());
    }
    let how = How { nats: &args.nats, views, repeat: args.repeat };
    let mut rows = Vec::new();
    if args.processes {
        if do_sqlite {
            eprintln!("measuring P500 on sqlite ({} repetitions)…", args.repeat);
            rows.push(processes_sqlite(args.repeat).await?);
        }
        if do_pg {
            eprintln!("measuring P500 on postgres ({} repetitions)…", args.repeat);
            rows.push(
                processes_postgres(&args.postgres, (!args.without_relay).then_some(&*args.nats), args.repeat).await?,
            );
        }
    } else if do_sqlite {
        eprintln!("measuring sqlite ({} repetitions)…", args.repeat);
        sqlite(&how, &mut rows).await?;
    }
    if do_pg && !args.processes {
        eprintln!("measuring postgres + jetstream ({} repetitions)…", args.repeat);
        postgres(&args.postgres, !args.without_relay, &how, &mut rows).await?;
    }
    if args.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| json!({"backend": r.backend, "workload": r.workload, "unit": r.unit, "ltmc": r.ltmc, "raw": r.raw, "ratio": r.ltmc / r.raw}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("{:<20} {:<36} {:>12} {:>12} {:>7}", "BACKEND", "WORKLOAD (median)", "LTMC", "RAW", "RATIO");
        for r in &rows {
            outln!(
                "{:<20} {:<36} {:>9.3} {} {:>9.3} {} {:>6.2}x",
                r.backend,
                r.workload,
                r.ltmc,
                r.unit,
                r.raw,
                r.unit,
                r.ltmc / r.raw
            );
        }
    }
    Ok(exit::OK)
}
