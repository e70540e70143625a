//! `ltmc` against Postgres + NATS JetStream: a run lands in both, `events --follow` streams
//! it live, and `kill -9` of its processes never leaves the views ahead of their checkpoint.
//! Uses its own schema and its own JetStream stream.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn pg_url() -> String {
    std::env::var("LTMC_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn nats_url() -> String {
    std::env::var("LTMC_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Env {
    dir: tempfile::TempDir,
    vars: Vec<(&'static str, String)>,
    schema: String,
    stream: String,
}

impl Env {
    fn ltmc(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ltmc"));
        c.args(args).current_dir(self.dir.path()).env_remove("LTMC_NATS_URL");
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }
}

async fn admin() -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn setup() -> anyhow::Result<Env> {
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let schema = format!("ltmct_{secs}_{id}");
    admin().await?.batch_execute(&format!("CREATE SCHEMA \"{schema}\"")).await?;
    let stream = format!("LTMCT_CLI_{id}");
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("wf.yaml"),
        "pattern: sequential\ninput: {n: 7}\nagents:\n  dev: {builtin: echo}\n  test: {run: [sh, -c, 'cat >/dev/null; echo tested']}\n",
    )?;
    Ok(Env {
        vars: vec![
            ("LTMC_DATABASE_URL", ltmc_engine::store::postgres::url_with_schema(&pg_url(), &schema)),
            ("LTMC_NATS_URL", nats_url()),
            ("LTMC_NATS_STREAM", stream.clone()),
            ("LTMC_NATS_SUBJECT_PREFIX", format!("ltmct{id}.events")),
        ],
        dir,
        schema,
        stream,
    })
}

async fn teardown(env: Env) -> anyhow::Result<()> {
    if let Ok(js) = ltmc_engine::relay::jetstream(&nats_url()).await {
        let _ = js.delete_stream(&env.stream).await;
    }
    admin().await?.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", env.schema)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_lands_in_postgres_and_in_jetstream() -> anyhow::Result<()> {
    let env = setup().await?;
    let out = env.ltmc(&["run", "wf.yaml"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tested");

    let events = env.ltmc(&["events", "--json"]).output()?;
    assert!(events.status.success());
    let ids: Vec<String> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["event_id"].as_str().unwrap_or("").to_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(ids.len(), 8, "RunStarted, 2 x (ready, dispatched, completed), RunCompleted");

    // `ltmc run` waited for the relay: JetStream already holds every event, in order.
    let js = ltmc_engine::relay::jetstream(&nats_url()).await?;
    let stream = js.get_stream(&env.stream).await?;
    for (i, id) in ids.iter().enumerate() {
        let msg = stream.get_raw_message(i as u64 + 1).await?;
        assert_eq!(msg.headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some(id.as_str()));
    }
    assert!(stream.get_raw_message(ids.len() as u64 + 1).await.is_err(), "nothing more than the log");

    let audit = env.ltmc(&["audit", "--verify"]).output()?;
    assert!(audit.status.success(), "{}", String::from_utf8_lossy(&audit.stdout));
    teardown(env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_streams_a_run_live() -> anyhow::Result<()> {
    let env = setup().await?;
    // Migrate first so the follower does not race the runner to create the tables.
    assert!(env.ltmc(&["migrate"]).output()?.status.success());
    let mut follower =
        env.ltmc(&["events", "--follow", "--json"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = follower.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let run = env.ltmc(&["run", "wf.yaml"]).env_remove("LTMC_NATS_URL").output()?;
    assert!(run.status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut types = Vec::new();
    while !types.iter().any(|t| t == "RunCompleted") {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).map_err(|_| anyhow::anyhow!("follower saw only {types:?}"))?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        types.push(v["event_type"].as_str().unwrap_or("").to_owned());
    }
    follower.kill()?;
    follower.wait()?;
    assert_eq!(types.first().map(String::as_str), Some("RunStarted"));
    assert_eq!(types.len(), 8);
    teardown(env).await
}

/// Reads, in one repeatable-read snapshot after another, the highest position of the `runs` and
/// `handoffs` rows and the views' checkpoint, until `stop`; returns how many snapshots it read
/// and each sighting of a checkpoint that did not cover a row of its snapshot or one read
/// before it.
async fn read_views(url: String, stop: Arc<AtomicBool>) -> anyhow::Result<(usize, Vec<String>)> {
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let (mut reads, mut wrong, mut seen) = (0, Vec::new(), 0i64);
    while !stop.load(Ordering::Relaxed) {
        let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
        let tx = tx.start().await?;
        let rows: i64 = tx
            .query_one(
                "SELECT greatest((SELECT max(last_position) FROM runs), (SELECT max(position) FROM handoffs), 0)",
                &[],
            )
            .await?
            .get(0);
        let checkpoint: i64 = tx
            .query_opt("SELECT position FROM checkpoints WHERE name = 'projections'", &[])
            .await?
            .map_or(0, |r| r.get(0));
        tx.commit().await?;
        reads += 1;
        if rows.max(seen) > checkpoint {
            let what = format!("rows at {rows} (at {seen} before) with the checkpoint at {checkpoint}");
            if wrong.last() != Some(&what) {
                wrong.push(what); // once per sighting, not once per read of the same one
            }
        }
        seen = seen.max(rows);
    }
    Ok((reads, wrong))
}

/// The attack of issue 16 (defect 8): `ltmc run`s, `ltmc projections follow` and `ltmc
/// projections rebuild`, each killed with SIGKILL at random points, while a reader checks that
/// the views never hold rows beyond their checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processes_never_leave_views_ahead_of_their_checkpoint() -> anyhow::Result<()> {
    let env = setup().await?;
    assert!(env.ltmc(&["migrate"]).output()?.status.success());
    let spawn = |args: &[&str]| -> anyhow::Result<tokio::process::Child> {
        let mut c = env.ltmc(args);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        Ok(tokio::process::Command::from(c).kill_on_drop(true).spawn()?)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let url = ltmc_engine::store::postgres::url_with_schema(&pg_url(), &env.schema);
    let reading = tokio::spawn(read_views(url, stop.clone()));
    let mut rng = fastrand::Rng::with_seed(8);
    let mut follower = spawn(&["projections", "follow"])?;
    let (mut rebuilt, mut killed) = (0, 0);
    for _ in 0..50 {
        let runs = [spawn(&["run", "wf.yaml"])?, spawn(&["run", "wf.yaml"])?, spawn(&["run", "wf.yaml"])?];
        let mut rebuild = spawn(&["projections", "rebuild"])?;
        tokio::time::sleep(Duration::from_millis(rng.u64(5..150))).await;
        if rng.u8(0..3) == 0 {
            rebuild.start_kill()?;
            killed += 1;
        }
        if rng.u8(0..3) == 0 {
            follower.start_kill()?;
            follower.wait().await?;
            follower = spawn(&["projections", "follow"])?;
        }
        for mut run in runs {
            if rng.u8(0..4) == 0 {
                run.start_kill()?;
            }
            run.wait().await?;
        }
        rebuilt += usize::from(rebuild.wait().await?.success());
    }
    follower.start_kill()?;
    follower.wait().await?;
    stop.store(true, Ordering::Relaxed);
    let (reads, wrong) = reading.await??;
    eprintln!("{rebuilt} rebuilds finished, {killed} sent SIGKILL, {reads} snapshots read");
    assert!(reads >= 50 && rebuilt >= 5, "too little happened: {reads} snapshots, {rebuilt} rebuilds");
    assert!(
        wrong.is_empty(),
        "{} sightings of rows beyond the checkpoint: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(8)]
    );
    teardown(env).await
}

#[test]
fn an_invalid_stream_setting_is_bad_input() {
    let out = Command::new(env!("CARGO_BIN_EXE_ltmc"))
        .args(["runs"])
        .env("LTMC_NATS_STREAM", "bad.name")
        .env("LTMC_DATABASE_URL", "sqlite://unused.db")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LTMC_NATS_STREAM"));
}

/// Text with control characters other than line breaks and tabs (what a terminal acts on).
fn controls(bytes: &[u8]) -> Vec<char> {
    String::from_utf8_lossy(bytes).chars().filter(|c| c.is_control() && !matches!(c, '\n' | '\t')).collect()
}

/// The attack of `tests/hostile.rs` on Postgres: an agent's terminal sequences reach the terminal
/// escaped from `run`, `status`, `runs` and `events`, and `--json` keeps the exact text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_cannot_write_to_the_terminal_on_postgres() -> anyhow::Result<()> {
    let env = setup().await?;
    std::fs::write(
        env.dir.path().join("loud.yaml"),
        r#"pattern: sequential
agents:
  loud:
    run: [sh, -c, 'printf "\033]0;pwned\007" >&2; printf "{\"output\": \"t \\u001b]0;x\\u0007 \\u009b1m\"}"']
  broken:
    run: [sh, -c, 'printf "\033]0;pwned\007 failing\n" >&2; exit 3']
    retries: 0
"#,
    )?;
    let out = env.ltmc(&["run", "loud.yaml", "--json"]).output()?;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(controls(&out.stderr).is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(controls(&out.stdout).is_empty());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(summary["failure"].as_str().is_some_and(|f| f.contains("\u{1b}]0;pwned\u{7} failing")), "{summary}");
    let run_id = summary["run_id"].as_str().unwrap_or("").to_owned();
    for args in [vec!["status", run_id.as_str()], vec!["runs"], vec!["events"]] {
        let out = env.ltmc(&args).output()?;
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(controls(&out.stdout).is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
    let status = env.ltmc(&["status", &run_id]).output()?;
    assert!(String::from_utf8_lossy(&status.stdout).contains("\\u{1b}]0;pwned\\u{7} failing"));
    teardown(env).await
}

/// Refused arguments leave the Postgres schema untouched: not even the migrations run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_arguments_do_not_touch_postgres() -> anyhow::Result<()> {
    let env = setup().await?;
    for args in [
        vec!["run", "wf.yaml", "--input", "\"a\\u0000b\""],
        vec!["status", "nope"],
        vec!["resume", "x\u{1b}]0;t\u{7}"],
        vec!["memory", "put", "s", "k", "\"\\u0000\""],
        vec!["session", "create", "s", "--description", "x\u{1b}]0;t\u{7}"],
    ] {
        let out = env.ltmc(&args).output()?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(controls(&out.stderr).is_empty(), "{args:?}");
    }
    let tables: i64 = admin()
        .await?
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", &[&env.schema])
        .await?
        .get(0);
    assert_eq!(tables, 0, "a refused argument opened (and migrated) the store");
    teardown(env).await
}

/// A second database pointed at a stream another database fills: one message that says so and
/// what to change, and no wait for a relay that cannot succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_another_database_is_named_once() -> anyhow::Result<()> {
    let env = setup().await?;
    assert!(env.ltmc(&["run", "wf.yaml"]).output()?.status.success());
    // The same stream and subjects, another database: an embedded one in the same folder.
    let mut other = env.ltmc(&["run", "wf.yaml"]);
    other.env("LTMC_DATABASE_URL", "sqlite://other.db");
    let out = other.output()?;
    assert!(out.status.success(), "the run itself completes: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("does not match the log").count(), 1, "{stderr}");
    assert!(stderr.contains("another database relays into it") && stderr.contains("LTMC_NATS_STREAM"), "{stderr}");
    assert!(!stderr.contains("when NATS is reachable"), "NATS is reachable: {stderr}");
    teardown(env).await
}
