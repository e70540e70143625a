//! The relay to JetStream: exactly the log, once each, in order — through crashes, lost
//! tails, lost checkpoints and NATS outages.

use ltmc_core::RecordedEvent;
use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::relay::{self, RelayOptions};
use ltmc_engine::store::new_event;
use ltmc_engine::{Engine, EngineOptions, EventStore, ExpectedVersion, Store};
use ltmc_tests::{PgSchema, eventually, nats_url, relay_options, sqlite_store, unique};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn workflow(yaml: &str) -> Workflow {
    spec::parse_str(yaml, "test.yaml", &ParseOptions::default()).expect("valid workflow")
}

fn sequential() -> Workflow {
    workflow("pattern: sequential\nagents:\n  a: {builtin: noop}\n  b: {builtin: echo}\n  c: {builtin: noop}\n")
}

fn parallel() -> Workflow {
    workflow(
        "pattern: parallel\nagents:\n  x: {builtin: noop}\n  y: {builtin: noop}\n  z: {builtin: echo}\n  w: {builtin: noop}\n",
    )
}

async fn all_events(store: &Store) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    loop {
        let batch = store.read_all(out.last().map_or(0, |e: &RecordedEvent| e.global_position), 1000).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch);
    }
}

/// JetStream must hold exactly the log: same count, and message i is the log's event i (so
/// every event once, in global order, hence in order per stream), on the right subject.
async fn assert_stream_equals_log(store: &Store, opts: &RelayOptions) -> anyhow::Result<usize> {
    let js = relay::jetstream(&opts.nats_url).await?;
    let mut stream = js.get_stream(&opts.stream_name).await?;
    let log = all_events(store).await?;
    let info = stream.info().await?.clone();
    assert_eq!(
        info.state.messages as usize,
        log.len(),
        "JetStream holds {} messages, the log {} events",
        info.state.messages,
        log.len()
    );
    assert_eq!(info.state.first_sequence, 1, "nothing was deleted from the stream");
    for (i, e) in log.iter().enumerate() {
        let msg = stream.get_raw_message(i as u64 + 1).await?;
        let id = msg.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
        assert_eq!(id, Some(e.event_id.to_string()), "message {} is not the log's event {}", i + 1, e.global_position);
        assert_eq!(msg.subject.as_str(), opts.subject(e));
        let pos = msg.headers.get("Ltmc-Position").map(|v| v.as_str().to_owned());
        assert_eq!(pos, Some(e.global_position.to_string()));
        let body: RecordedEvent = serde_json::from_slice(&msg.payload)?;
        assert_eq!(&body, e);
    }
    Ok(log.len())
}

async fn cleanup(opts: &RelayOptions) {
    if let Ok(js) = relay::jetstream(&opts.nats_url).await {
        let _ = js.delete_stream(&opts.stream_name).await;
    }
}

/// Runs workflows and raw appends until `stop` is set.
fn spawn_appender(store: Store, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
    tokio::spawn(async move {
        let engine = Engine::new(store.clone(), EngineOptions::default());
        let (seq, par) = (sequential(), parallel());
        let mut runs = 0;
        while !stop.load(Ordering::Relaxed) {
            let wf = if runs % 2 == 0 { seq.clone() } else { par.clone() };
            let state = engine.run(wf, None, PathBuf::from("."), None).await?;
            anyhow::ensure!(state.failure.is_none(), "run failed: {:?}", state.failure);
            let e = new_event("NoteTaken", 1, serde_json::json!({"run": runs}), Default::default());
            store.append(&format!("note-{}", unique()), ExpectedVersion::NoStream, &[e]).await?;
            runs += 1;
        }
        Ok(runs)
    })
}

/// Helper process for `relay_survives_kills`: a relay that runs until killed.
#[tokio::test]
#[ignore = "started as a child process by relay_survives_kills"]
async fn relay_child() -> anyhow::Result<()> {
    let (Ok(db), Ok(nats), Ok(stream), Ok(prefix)) = (
        std::env::var("LTMCT_RELAY_DB"),
        std::env::var("LTMCT_RELAY_NATS"),
        std::env::var("LTMCT_RELAY_STREAM"),
        std::env::var("LTMCT_RELAY_PREFIX"),
    ) else {
        return Ok(());
    };
    let store = Store::open(&db).await?;
    let _relay =
        relay::spawn(store, RelayOptions { stream_name: stream, subject_prefix: prefix, ..RelayOptions::new(&nats) });
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_kills() -> anyhow::Result<()> {
    const KILLS: usize = 24;
    let schema = PgSchema::new().await?;
    let store = schema.store().await?;
    let opts = relay_options(&nats_url());
    let stop = Arc::new(AtomicBool::new(false));
    let appender = spawn_appender(store.clone(), stop.clone());

    let exe = std::env::current_exe()?;
    let mut killed_behind = 0;
    for _ in 0..KILLS {
        let mut child = tokio::process::Command::new(&exe)
            .args(["relay_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("LTMCT_RELAY_DB", &schema.url)
            .env("LTMCT_RELAY_NATS", &opts.nats_url)
            .env("LTMCT_RELAY_STREAM", &opts.stream_name)
            .env("LTMCT_RELAY_PREFIX", &opts.subject_prefix)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400))).await;
        child.start_kill()?; // SIGKILL: no chance to finish a batch or write a checkpoint
        child.wait().await?;
        if store.checkpoint("relay").await? < store.head_position().await? {
            killed_behind += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let runs = appender.await??;
    assert!(runs >= 5, "the appender should have run workflows meanwhile (ran {runs})");

    // Something was published by the killed relays, and the survivors finish the job.
    let js = relay::jetstream(&opts.nats_url).await?;
    let before = js.get_stream(&opts.stream_name).await?.info().await?.state.messages;
    assert!(before > 0, "the killed relays published nothing");
    let mut survivor = relay::spawn(store.clone(), opts.clone());
    let head = store.head_position().await?;
    assert!(survivor.wait_for(head, Duration::from_secs(30)).await, "the relay did not catch up");
    survivor.stop();
    let n = assert_stream_equals_log(&store, &opts).await?;
    eprintln!(
        "{KILLS} kills ({killed_behind} while behind the log), {runs} runs, {n} events, {before} published before the last relay"
    );
    cleanup(&opts).await;
    schema.drop().await
}

#[tokio::test]
async fn relay_republishes_a_lost_tail_and_skips_what_is_there() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let store = schema.store().await?;
    let mut opts = relay_options(&nats_url());
    opts.duplicate_window = Duration::from_secs(1);
    let engine = Engine::new(store.clone(), EngineOptions::default());
    for _ in 0..3 {
        engine.run(sequential(), None, PathBuf::from("."), None).await?;
    }
    let mut r = relay::spawn(store.clone(), opts.clone());
    assert!(r.wait_for(store.head_position().await?, Duration::from_secs(10)).await);
    r.stop();
    assert_stream_equals_log(&store, &opts).await?;

    // A lost checkpoint (crash after publishing, before checkpointing) with the dedup window
    // long expired: nothing may be published twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    schema.client().await?.execute("UPDATE checkpoints SET position = 0 WHERE name = 'relay'", &[]).await?;
    engine.run(parallel(), None, PathBuf::from("."), None).await?;
    let mut r = relay::spawn(store.clone(), opts.clone());
    assert!(r.wait_for(store.head_position().await?, Duration::from_secs(10)).await);
    r.stop();
    assert_stream_equals_log(&store, &opts).await?;

    // A lost stream (deleted, or a JetStream without its data): everything is published again.
    relay::jetstream(&opts.nats_url).await?.delete_stream(&opts.stream_name).await?;
    let mut r = relay::spawn(store.clone(), opts.clone());
    assert!(r.wait_for(store.head_position().await?, Duration::from_secs(10)).await);
    r.stop();
    assert_stream_equals_log(&store, &opts).await?;
    cleanup(&opts).await;
    schema.drop().await
}

#[tokio::test]
async fn only_one_relay_publishes_per_database() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let store = schema.store().await?;
    let opts = relay_options(&nats_url());
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let mut relays: Vec<_> = (0..3).map(|_| relay::spawn(store.clone(), opts.clone())).collect();
    for _ in 0..5 {
        engine.run(parallel(), None, PathBuf::from("."), None).await?;
    }
    let head = store.head_position().await?;
    let published = eventually(Duration::from_secs(10), || {
        let s = store.clone();
        async move { s.checkpoint("relay").await.unwrap_or(0) >= head }
    })
    .await;
    assert!(published);
    let leaders = relays.iter().filter(|r| r.published() >= head).count();
    assert_eq!(leaders, 1, "exactly one relay holds the lease and publishes");
    for r in relays.drain(..) {
        r.stop();
    }
    assert_stream_equals_log(&store, &opts).await?;
    cleanup(&opts).await;
    schema.drop().await
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn nats_server_binary() -> String {
    std::env::var("LTMC_TEST_NATS_SERVER").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".into()
        } else {
            "nats-server".into()
        }
    })
}

fn start_nats(port: u16, dir: &std::path::Path) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(nats_server_binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// A restarted server forgets its last message id once the dedup window has passed, but keeps
/// its sequence: the relay resumes on the same stream without a gap or a duplicate.
#[tokio::test]
async fn relay_resumes_after_a_nats_restart_past_the_dedup_window() -> anyhow::Result<()> {
    let port = free_port()?;
    let mut opts = relay_options(&format!("nats://127.0.0.1:{port}"));
    opts.duplicate_window = Duration::from_secs(1);
    let nats_dir = tempfile::tempdir()?;
    let (store, _dir) = sqlite_store().await?;
    let engine = Engine::new(store.clone(), EngineOptions::default());

    let mut nats = start_nats(port, nats_dir.path())?;
    engine.run(sequential(), None, PathBuf::from("."), None).await?;
    let mut r = relay::spawn(store.clone(), opts.clone());
    assert!(r.wait_for(store.head_position().await?, Duration::from_secs(20)).await);
    r.stop();
    nats.start_kill()?;
    nats.wait().await?;

    tokio::time::sleep(Duration::from_millis(1500)).await; // let the dedup window pass
    engine.run(parallel(), None, PathBuf::from("."), None).await?;
    let mut nats = start_nats(port, nats_dir.path())?;
    let mut r = relay::spawn(store.clone(), opts.clone());
    assert!(r.wait_for(store.head_position().await?, Duration::from_secs(20)).await, "{:?}", r.last_error());
    r.stop();
    assert_stream_equals_log(&store, &opts).await?;
    nats.start_kill()?;
    nats.wait().await?;
    Ok(())
}

/// NATS down never fails an append; the relay catches up when NATS comes back. Uses a private
/// nats-server (Debian's, on PATH or /usr/sbin) on a free port so it can be stopped and started.
#[tokio::test]
async fn nats_outage_never_fails_appends_and_the_relay_catches_up() -> anyhow::Result<()> {
    let port = free_port()?;
    let url = format!("nats://127.0.0.1:{port}");
    let opts = relay_options(&url);
    for backend in ["postgres", "sqlite"] {
        let (store, _guard_dir, schema) = match backend {
            "postgres" => {
                let s = PgSchema::new().await?;
                (s.store().await?, None, Some(s))
            }
            _ => {
                let (store, dir) = sqlite_store().await?;
                (store, Some(dir), None)
            }
        };
        let mut r = relay::spawn(store.clone(), opts.clone());
        let engine = Engine::new(store.clone(), EngineOptions::default());
        for _ in 0..5 {
            let state = engine.run(sequential(), None, PathBuf::from("."), None).await?;
            assert!(state.failure.is_none());
        }
        assert_eq!(r.published(), 0, "nothing can be published while NATS is down");

        let dir = tempfile::tempdir()?;
        let mut nats = start_nats(port, dir.path())?;
        let head = store.head_position().await?;
        assert!(
            r.wait_for(head, Duration::from_secs(30)).await,
            "the relay did not catch up after NATS returned ({backend})"
        );
        r.stop();
        assert_stream_equals_log(&store, &opts).await?;
        cleanup(&opts).await;
        nats.start_kill()?;
        nats.wait().await?;
        if let Some(s) = schema {
            s.drop().await?;
        }
    }
    Ok(())
}
