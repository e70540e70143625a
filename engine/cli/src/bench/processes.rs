//! P500: W3 driven as users drive it, one process per workflow. 500 `ltmc run` processes of the
//! W3 workflow (3 sequential `noop` steps), 50 at once, each with its start-up, its connection
//! and its own exit; beside 500 processes of this same binary, 50 at once, each opening a raw
//! connection and making W3's 4 durable commits (`ltmc bench --raw-child URL`). Milliseconds of
//! wall time per workflow (per process on the raw side).

use anyhow::Context;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use super::raw::payload;
use super::{Row, median, ms};

/// Processes per repetition.
const TOTAL: usize = 500;
/// Processes at once.
const AT_ONCE: usize = 50;
/// Durable commits of one W3 workflow (RunStarted, one per step).
const COMMITS: usize = 4;

const W3_YAML: &str =
    "name: w3\npattern: sequential\nagents:\n  a: {builtin: noop}\n  b: {builtin: noop}\n  c: {builtin: noop}\n";

/// Where the children write: `LTMC_DATABASE_URL` for `ltmc run`, and the raw side's URL.
pub(super) struct Target<'a> {
    pub(super) backend: &'static str,
    pub(super) database_url: &'a str,
    pub(super) raw_url: &'a str,
    /// `LTMC_NATS_URL`, stream and subject prefix for the runs' relays.
    pub(super) nats: Option<(&'a str, &'a str, &'a str)>,
}

/// P500 on `target`, `repeat` times; the medians.
pub(super) async fn measure(target: &Target<'_>, dir: &Path, repeat: usize) -> anyhow::Result<Row> {
    let exe = std::env::current_exe().context("finding this binary")?;
    // `LTMC_BENCH_RUN_EXE` runs another build's `ltmc run` against this one's raw side: an A/B
    // of two builds in one session.
    let ltmc = std::env::var_os("LTMC_BENCH_RUN_EXE").map_or_else(|| exe.clone(), std::path::PathBuf::from);
    std::fs::write(dir.join("w3.yaml"), W3_YAML)?;
    // Migrated once, as a deployment is; every run then finds the schema current.
    run_all(&ltmc, target, dir, 1, &["migrate"]).await?;
    let (mut e, mut r) = (vec![], vec![]);
    for _ in 0..repeat {
        let t = Instant::now();
        run_all(&ltmc, target, dir, TOTAL, &["run", "w3.yaml"]).await?;
        e.push(ms(t.elapsed()) / TOTAL as f64);
        let t = Instant::now();
        run_all(&exe, target, dir, TOTAL, &["bench", "--raw-child", target.raw_url]).await?;
        r.push(ms(t.elapsed()) / TOTAL as f64);
    }
    Ok(Row {
        backend: target.backend,
        workload: "P500 processes, per workflow",
        unit: "ms",
        ltmc: median(e),
        raw: median(r),
    })
}

/// Runs `n` children `exe ARGS`, `AT_ONCE` at a time; fails if any fails.
async fn run_all(exe: &Path, target: &Target<'_>, dir: &Path, n: usize, args: &[&str]) -> anyhow::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut children = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = slots.clone().acquire_owned().await?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env("LTMC_DATABASE_URL", target.database_url).env_remove("LTMC_NATS_URL");
        if let Some((url, stream, prefix)) = target.nats {
            cmd.env("LTMC_NATS_URL", url).env("LTMC_NATS_STREAM", stream).env("LTMC_NATS_SUBJECT_PREFIX", prefix);
        }
        let child = cmd.spawn().context("starting a child process")?;
        children.spawn(async move {
            let out = child.wait_with_output().await;
            drop(permit);
            out
        });
    }
    while let Some(out) = children.join_next().await {
        let out = out??;
        anyhow::ensure!(
            out.status.success(),
            "a child `{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
    }
    Ok(())
}

/// The raw side in a child process: connect to `url` (`postgres://…`, or a SQLite file path)
/// and make W3's durable commits, one row each.
pub(super) async fn raw_child(url: &str) -> anyhow::Result<()> {
    if url.starts_with("postgres") {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(conn);
        let stmt = client.prepare("INSERT INTO bench_raw (payload) VALUES ($1::text::jsonb)").await?;
        for i in 0..COMMITS {
            client.execute(&stmt, &[&payload(i)]).await?;
        }
        drop(client);
        let _ = driver.await;
    } else {
        let conn = rusqlite::Connection::open(url)?;
        conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;")?;
        let mut stmt = conn.prepare("INSERT INTO bench_raw (payload) VALUES (?1)")?;
        for i in 0..COMMITS {
            stmt.execute([payload(i)])?;
        }
    }
    Ok(())
}
