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
    let mut opts = RelayOptions { stream_name: stream, subject_prefix: prefix, ..RelayOptions::new(&nats) };
    if let Some(ms) = std::env::var("LTMCT_RELAY_LEASE_TTL_MS").ok().and_then(|v| v.parse().ok()) {
        opts.lease_ttl = Duration::from_millis(ms);
    }
    let relay = relay::spawn(store, opts);
    // Tells the parent test when this relay takes or loses the lease.
    println!("relay started");
    let mut held = false;
    loop {
        if relay.holds_lease() != held {
            held = !held;
            println!("holds lease: {held}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// A private nats-server started from a configuration file: `listen` on `port`, JetStream in
/// `dir`, then `server` lines and `jetstream` settings of the test's own.
fn start_nats_configured(
    port: u16,
    dir: &std::path::Path,
    server: &str,
    jetstream: &str,
) -> anyhow::Result<tokio::process::Child> {
    let conf = dir.join("nats.conf");
    let store_dir = dir.join("js").display().to_string();
    std::fs::write(
        &conf,
        format!("listen: \"127.0.0.1:{port}\"\n{server}\njetstream {{ store_dir: {store_dir:?} {jetstream} }}\n"),
    )?;
    Ok(tokio::process::Command::new(nats_server_binary())
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// A private nats-server whose messages may not exceed `max_payload` bytes.
fn start_nats_with_max_payload(
    port: u16,
    dir: &std::path::Path,
    max_payload: usize,
) -> anyhow::Result<tokio::process::Child> {
    start_nats_configured(port, dir, &format!("max_payload: {max_payload}"), "")
}

/// Reads the stream back as the documented wire format says (one message per event, or
/// consecutive `Ltmc-Part: <offset>/<total>` messages whose payloads make the event's JSON) and
/// checks it holds exactly the log; returns, for each event, how many messages carried it.
async fn messages_per_event(store: &Store, opts: &RelayOptions) -> anyhow::Result<Vec<usize>> {
    let js = relay::jetstream(&opts.nats_url).await?;
    let mut stream = js.get_stream(&opts.stream_name).await?;
    let last = stream.info().await?.state.last_sequence;
    let (mut seq, mut counts) = (0u64, Vec::new());
    for e in all_events(store).await? {
        let (mut body, mut n) = (Vec::new(), 0);
        let whole = loop {
            seq += 1;
            anyhow::ensure!(seq <= last, "the stream ends before the log's event {}", e.global_position);
            let msg = stream.get_raw_message(seq).await?;
            let h = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
            assert_eq!(h("Ltmc-Position"), Some(e.global_position.to_string()), "message {seq}");
            assert_eq!(msg.subject.as_str(), opts.subject(&e), "message {seq}");
            n += 1;
            let Some(part) = h("Ltmc-Part") else {
                assert_eq!(n, 1, "message {seq}: a whole message in the middle of the parts of an event");
                assert_eq!(h("Nats-Msg-Id"), Some(e.event_id.to_string()), "message {seq}");
                break msg.payload.to_vec();
            };
            let (offset, total) = part.split_once('/').expect("offset/total");
            assert_eq!(offset.parse::<usize>()?, body.len(), "message {seq}: parts continue each other");
            assert_eq!(h("Nats-Msg-Id"), Some(format!("{}/{offset}", e.event_id)), "message {seq}");
            body.extend_from_slice(&msg.payload);
            if body.len() >= total.parse::<usize>()? {
                assert_eq!(body.len(), total.parse::<usize>()?, "message {seq}: the parts add up to the total");
                break std::mem::take(&mut body);
            }
        };
        let got: RecordedEvent = serde_json::from_slice(&whole)?;
        assert_eq!(got, e, "the event at position {} differs in JetStream", e.global_position);
        counts.push(n);
    }
    assert_eq!(seq, last, "JetStream holds {} messages after the log's last event", last - seq);
    Ok(counts)
}

fn blob(n: usize) -> ltmc_core::NewEvent {
    new_event("BlobStored", 1, serde_json::json!({"blob": "x".repeat(n)}), Default::default())
}

/// An event under the log's 1 MiB limit but over the server's `max_payload` once wrapped (a
/// memory value of about 1 MiB) neither stops the feed nor is skipped: it goes out in parts,
/// the events after it follow, a relay stopped in the middle of one finishes it, and a copy fed
/// from the stream (`ltmc project --from-nats`) puts it back together.
async fn large_events_never_stop_the_feed(store: Store) -> anyhow::Result<()> {
    const MAX_PAYLOAD: usize = 65536;
    let port = free_port()?;
    let nats_dir = tempfile::tempdir()?;
    let mut nats = start_nats_with_max_payload(port, nats_dir.path(), MAX_PAYLOAD)?;
    let opts = relay_options(&format!("nats://127.0.0.1:{port}"));
    let engine = Engine::new(store.clone(), EngineOptions::default());
    engine.run(sequential(), None, PathBuf::from("."), None).await?;
    // Sizes on both sides of the largest event one message carries: the event's JSON beside
    // its headers (about 200 bytes here) must fit in max_payload.
    let stream_id = format!("blob-{}", unique());
    let probe = store.append(&stream_id, ExpectedVersion::NoStream, &[blob(0)]).await?;
    let envelope = serde_json::to_vec(&store.read_all(probe.first_position - 1, 1).await?[0])?.len();
    let headers =
        12 + [11 + 36, 27 + 20, 13 + 4, 11 + stream_id.len(), 19 + 3, 15 + 10].iter().map(|n| n + 4).sum::<usize>();
    let edge = MAX_PAYLOAD - envelope - headers;
    for n in edge - 48..edge + 48 {
        store.append(&stream_id, ExpectedVersion::Any, &[blob(n)]).await?;
    }
    let sessions = ltmc_engine::sessions::Sessions::new(store.clone());
    let session = format!("big{}", unique());
    sessions.create(&session, None, "cli").await?;
    let mut r = relay::spawn(store.clone(), opts.clone());
    let head = store.head_position().await?;
    assert!(
        r.wait_for(head, Duration::from_secs(60)).await,
        "the relay stopped at position {} of {head}: {:?}",
        r.published(),
        r.last_error()
    );
    r.stop();

    // A memory value of about 1 MiB, then more events; and a relay that published only the
    // first 10,000 bytes of it (as if it crashed there, under another max_payload).
    let value = serde_json::Value::String("v".repeat(ltmc_core::event::MAX_EVENT_BYTES - 4096));
    let mut context = serde_json::Map::new();
    context.insert("notes".into(), value);
    sessions.store_shared_context(&session, context, "cli").await?;
    engine.run(parallel(), None, PathBuf::from("."), None).await?;
    let big = all_events(&store).await?.into_iter().find(|e| e.event_type == "MemoryWritten").expect("written");
    let body = serde_json::to_vec(&big)?;
    let js = relay::jetstream(&opts.nats_url).await?;
    let last = js.get_stream(&opts.stream_name).await?.info().await?.state.last_sequence;
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", format!("{}/0", big.event_id).as_str());
    h.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
    h.insert("Ltmc-Position", big.global_position.to_string().as_str());
    h.insert("Ltmc-Stream", big.stream_id.as_str());
    h.insert("Ltmc-Stream-Version", big.stream_version.to_string().as_str());
    h.insert("Ltmc-Event-Type", big.event_type.as_str());
    h.insert("Ltmc-Part", format!("0/{}", body.len()).as_str());
    let first =
        async_nats::jetstream::message::PublishMessage::build().payload(body[..10_000].to_vec().into()).headers(h);
    js.send_publish(opts.subject(&big), first).await?.await?;

    let mut r = relay::spawn(store.clone(), opts.clone());
    let head = store.head_position().await?;
    assert!(
        r.wait_for(head, Duration::from_secs(60)).await,
        "the relay stopped at position {} of {head}: {:?}",
        r.published(),
        r.last_error()
    );
    r.stop();
    let counts = messages_per_event(&store, &opts).await?;
    let log = all_events(&store).await?;
    let sweep: Vec<usize> =
        log.iter().zip(&counts).filter(|(e, _)| e.event_type == "BlobStored").map(|(_, n)| *n).collect();
    assert!(sweep.contains(&1) && sweep.contains(&2), "the sizes straddle the limit (messages per event: {sweep:?})");
    let big_parts = log.iter().zip(&counts).find(|(e, _)| e.event_id == big.event_id).map(|(_, n)| *n);
    assert!(big_parts.is_some_and(|n| n > 16), "the 1 MiB event went out in {big_parts:?} parts");
    assert!(log.last().is_some_and(|e| e.event_type == "RunCompleted"), "the feed went on after it");

    // A copy fed from the stream puts every event back together.
    let (copy, _copy_dir) = sqlite_store().await?;
    let fed =
        tokio::time::timeout(Duration::from_secs(60), ltmc_engine::projector::from_nats(&copy, &opts, Some(head)))
            .await??;
    assert_eq!(fed, head);
    assert_eq!(all_events(&copy).await?, log, "the copy fed from NATS differs from the log");
    eprintln!("{} events in {} messages of at most {MAX_PAYLOAD} bytes", log.len(), counts.iter().sum::<usize>());
    nats.start_kill()?;
    nats.wait().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_never_stop_the_feed_sqlite() -> anyhow::Result<()> {
    let (store, _dir) = sqlite_store().await?;
    large_events_never_stop_the_feed(store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_never_stop_the_feed_postgres() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    large_events_never_stop_the_feed(schema.store().await?).await?;
    schema.drop().await
}

/// A relay process (`relay_child`) whose stdout lines the test reads.
struct RelayProcess {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl RelayProcess {
    fn start(db: &str, opts: &RelayOptions, ttl: Duration) -> anyhow::Result<RelayProcess> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["relay_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("LTMCT_RELAY_DB", db)
            .env("LTMCT_RELAY_NATS", &opts.nats_url)
            .env("LTMCT_RELAY_STREAM", &opts.stream_name)
            .env("LTMCT_RELAY_PREFIX", &opts.subject_prefix)
            .env("LTMCT_RELAY_LEASE_TTL_MS", ttl.as_millis().to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        Ok(RelayProcess { child, lines: tokio::io::BufReader::new(stdout).lines() })
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0))
    }

    /// Waits up to `timeout` for the line `line`.
    async fn said(&mut self, line: &str, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            while let Ok(Some(l)) = self.lines.next_line().await {
                if l.ends_with(line) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    }
}

/// The lease row (holder, epoch), read with plain SQL.
async fn lease_row(db: &str) -> anyhow::Result<(String, i64)> {
    let sql = "SELECT holder, epoch FROM leases WHERE name = 'relay'";
    if let Some(path) = db.strip_prefix("sqlite://") {
        let c = rusqlite::Connection::open(path)?;
        return Ok(c.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))?);
    }
    let (client, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let row = client.query_one(sql, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// A lease holder stopped with SIGSTOP (alive, connections open, making no progress) loses the
/// lease within its time to live; the standby takes over and JetStream keeps growing; continued
/// with SIGCONT, the old holder stands down, and no event is published twice.
async fn a_stopped_relay_loses_its_lease(store: Store, db: &str) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    const TTL: Duration = Duration::from_secs(2);
    let opts = relay_options(&nats_url());
    let engine = Engine::new(store.clone(), EngineOptions::default());
    engine.run(sequential(), None, PathBuf::from("."), None).await?;
    let mut a = RelayProcess::start(db, &opts, TTL)?;
    assert!(a.said("holds lease: true", Duration::from_secs(20)).await, "the first relay never took the lease");
    let mut b = RelayProcess::start(db, &opts, TTL)?;
    assert!(b.said("relay started", Duration::from_secs(20)).await, "the second relay did not start");
    let stop = Arc::new(AtomicBool::new(false));
    let appender = spawn_appender(store.clone(), stop.clone());
    let js = relay::jetstream(&opts.nats_url).await?;
    let published = || async {
        let mut s = js.get_stream(&opts.stream_name).await.ok()?;
        relay::stream_tail(&mut s).await.ok().map(|t| t.position)
    };
    let busy = eventually(Duration::from_secs(20), || async { published().await.unwrap_or(0) > 20 }).await;
    assert!(busy, "the first relay does not publish");

    // A process stopped in the middle of a write to a SQLite file keeps its write lock, which
    // stops every writer of the file (appends too), whatever the relay does; stop it again then.
    let mut tries = 0;
    let stopped_at = loop {
        kill(a.pid(), Signal::SIGSTOP)?;
        let stopped_at = std::time::Instant::now();
        let (stream, note) =
            (format!("note-{}", unique()), [new_event("NoteTaken", 1, serde_json::json!({}), Default::default())]);
        let probe = store.append(&stream, ExpectedVersion::NoStream, &note);
        if tokio::time::timeout(Duration::from_secs(1), probe).await.is_ok() || tries == 10 {
            break stopped_at;
        }
        tries += 1;
        kill(a.pid(), Signal::SIGCONT)?;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..150))).await;
    };
    // Only another relay can publish what is appended from now on.
    let head_at_stop = store.head_position().await?;
    let grew =
        eventually(TTL + Duration::from_secs(5), || async { published().await.unwrap_or(0) > head_at_stop }).await;
    let took_over = stopped_at.elapsed();
    assert!(
        grew,
        "JetStream stopped at position {:?} (log at {head_at_stop}) while the holder was stopped",
        published().await
    );
    assert!(b.said("holds lease: true", Duration::from_secs(1)).await, "the second relay does not hold the lease");
    assert!(took_over < TTL + Duration::from_secs(3), "took {took_over:?} to take over (lease TTL {TTL:?})");
    let (holder, epoch) = lease_row(db).await?;
    assert!(holder.starts_with(&format!("pid {} ", b.pid())), "lease held by {holder}");
    assert!(epoch >= 2, "a takeover is a new epoch ({epoch})");
    // While the old holder is still stopped, the feed keeps up with the appends.
    let head = store.head_position().await?;
    let kept_up = eventually(Duration::from_secs(20), || async { published().await.unwrap_or(0) >= head }).await;
    assert!(kept_up, "the new holder did not keep up");

    // The old holder wakes up in the middle of whatever it was doing: it stands down.
    kill(a.pid(), Signal::SIGCONT)?;
    assert!(a.said("holds lease: false", Duration::from_secs(10)).await, "the old holder did not stand down");
    tokio::time::sleep(Duration::from_millis(500)).await; // appends go on meanwhile
    stop.store(true, Ordering::Relaxed);
    appender.await??;
    let head = store.head_position().await?;
    let caught_up = eventually(Duration::from_secs(20), || async { published().await.unwrap_or(0) >= head }).await;
    assert!(caught_up, "the relays did not publish the whole log");
    assert_eq!(lease_row(db).await?.0, holder, "the old holder did not take the lease back");
    a.child.kill().await?;
    b.child.kill().await?;
    let n = assert_stream_equals_log(&store, &opts).await?;
    eprintln!("took over after {took_over:?} (TTL {TTL:?}, stopped again {tries} times); {n} events, each once");
    cleanup(&opts).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_relay_loses_its_lease_sqlite() -> anyhow::Result<()> {
    let (store, dir) = sqlite_store().await?;
    let db = format!("sqlite://{}", dir.path().join("ltmc.db").display());
    a_stopped_relay_loses_its_lease(store, &db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_relay_loses_its_lease_postgres() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    a_stopped_relay_loses_its_lease(schema.store().await?, &schema.url).await?;
    schema.drop().await
}

/// A row the log cannot read back does not stop the feed: the relay publishes every other
/// event, in order, and goes on to the head (issue 16, defect 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_does_not_stop_the_feed() -> anyhow::Result<()> {
    let (store, dir) = sqlite_store().await?;
    let engine = Engine::new(store.clone(), EngineOptions::default());
    for _ in 0..3 {
        engine.run(sequential(), None, PathBuf::from("."), None).await?;
    }
    let damaged = 5;
    rusqlite::Connection::open(dir.path().join("ltmc.db"))?
        .execute("UPDATE events SET data = '{not json' WHERE global_position = ?1", [damaged])?;
    let opts = relay_options(&nats_url());
    let relay = relay::spawn(store.clone(), opts.clone());
    let head = store.head_position().await?;
    assert!(eventually(Duration::from_secs(20), || async { relay.published() >= head }).await, "the relay stopped");
    let js = relay::jetstream(&opts.nats_url).await?;
    let mut stream = js.get_stream(&opts.stream_name).await?;
    let readable: Vec<RecordedEvent> = all_events(&store).await?.into_iter().filter(|e| !e.is_unreadable()).collect();
    assert_eq!(readable.len() as i64, head - 1);
    assert_eq!(stream.info().await?.state.messages as usize, readable.len(), "every other event is published");
    for (i, e) in readable.iter().enumerate() {
        let msg = stream.get_raw_message(i as u64 + 1).await?;
        assert_eq!(
            msg.headers.get("Ltmc-Position").map(|v| v.as_str().to_owned()),
            Some(e.global_position.to_string())
        );
    }
    relay.stop();
    cleanup(&opts).await;
    Ok(())
}

/// A private nats-server whose JetStream may store at most `max_file_store` bytes.
fn start_nats_with_storage(
    port: u16,
    dir: &std::path::Path,
    max_file_store: u64,
) -> anyhow::Result<tokio::process::Child> {
    start_nats_configured(port, dir, "", &format!(", max_file_store: {max_file_store}"))
}

/// Appends `n` events of about 2 KB each to streams of their own.
async fn fill(store: &Store, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let data = serde_json::json!({ "i": i, "pad": "x".repeat(2000) });
        let event = new_event("Filled", 1, data, Default::default());
        store.append(&format!("fill-{}", unique()), ExpectedVersion::NoStream, &[event]).await?;
    }
    Ok(())
}

/// JetStream out of storage is reported, not retried in silence: the relay says so, flags it,
/// and goes on once the stream may keep less (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_jetstream_is_reported_and_a_stream_limit_keeps_it_going() -> anyhow::Result<()> {
    let (store, _dir) = sqlite_store().await?;
    fill(&store, 200).await?; // about 400 KB of messages
    let nats_dir = tempfile::tempdir()?;
    let port = free_port()?;
    let _nats = start_nats_with_storage(port, nats_dir.path(), 256 * 1024)?;
    let url = format!("nats://127.0.0.1:{port}");
    assert!(eventually(Duration::from_secs(10), || async { relay::jetstream(&url).await.is_ok() }).await);
    let opts = RelayOptions { log_failures: false, ..relay_options(&url) };
    let relay = relay::spawn(store.clone(), opts.clone());
    assert!(
        eventually(Duration::from_secs(20), || async { relay.is_out_of_storage() }).await,
        "the relay says JetStream is full: {:?}",
        relay.last_error()
    );
    let why = relay.last_error().unwrap_or_default();
    assert!(why.contains("no storage left") && why.contains("max_file_store"), "{why}");
    assert!(relay.published() < store.head_position().await?);
    relay.stop();

    // The stream may keep less than the server has: the oldest messages go, the feed goes on.
    let opts = RelayOptions { max_bytes: Some(128 * 1024), ..opts };
    let relay = relay::spawn(store.clone(), opts.clone());
    let head = store.head_position().await?;
    assert!(
        eventually(Duration::from_secs(20), || async { relay.published() >= head }).await,
        "the relay reached the head under the stream's limit: {:?}",
        relay.last_error()
    );
    assert!(!relay.is_out_of_storage());
    let info = relay::jetstream(&url).await?.get_stream(&opts.stream_name).await?.info().await?.clone();
    assert!(info.state.bytes <= 128 * 1024, "the stream keeps at most its limit: {} bytes", info.state.bytes);
    assert!(info.state.first_sequence > 1, "its oldest messages were dropped");
    relay.stop();
    Ok(())
}
