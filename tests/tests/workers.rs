//! Workers over NATS: tasks on `LTMC_TASKS`, reports on `ltmc.results.<run>`, on real JetStream.
//!
//! Each test serves an agent of its own name, so tests do not take each other's tasks. "Fake"
//! workers here are plain NATS clients speaking the wire protocol, which lets a test misbehave
//! on purpose (go silent, report twice, die without acknowledging).

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use ltmc_core::protocol::{ReportBody, WorkerReport, WorkerTask};
use ltmc_core::run::{RunStatus, stream_id};
use ltmc_core::spec::{self, AgentDef, Builtin, ParseOptions, Workflow};
use ltmc_engine::store::read_stream_all;
use ltmc_engine::workers::serve::{WorkerOptions, serve};
use ltmc_engine::workers::{self, Workers, consumer_name, task_subject};
use ltmc_engine::{Engine, EngineOptions, Store};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A workflow `prepare (echo) -> review (worker agent)` with the agent's `timeout`.
fn workflow(agent: &str, timeout: f64, retries: u32) -> Workflow {
    let yaml = format!(
        "name: wk\npattern: dependency\nagents:\n  prep: {{builtin: echo}}\n  {agent}: {{worker: true, timeout: {timeout}, retries: {retries}, backoff: 0}}\n\
         steps:\n  - {{name: prepare, agent: prep}}\n  - {{name: review, agent: {agent}, needs: [prepare]}}\ninput: {{pr: 7}}\n"
    );
    spec::parse_str(&yaml, "wk.yaml", &ParseOptions::default()).expect("valid workflow")
}

fn agent_name() -> String {
    format!("rev-{}", ltmc_tests::unique())
}

async fn js() -> anyhow::Result<jetstream::Context> {
    let js = jetstream::new(async_nats::connect(ltmc_tests::nats_url()).await?);
    workers::ensure_streams(&js).await?;
    Ok(js)
}

async fn engine(store: Store) -> anyhow::Result<Engine> {
    Ok(Engine::new(store, EngineOptions::default()).with_workers(Workers::connect(&ltmc_tests::nats_url()).await?))
}

/// Takes one task as the agent's workers would (same durable consumer), with this ack wait.
async fn take_task(
    js: &jetstream::Context,
    agent: &str,
    ack_wait: Duration,
) -> anyhow::Result<Option<(WorkerTask, jetstream::Message)>> {
    let stream = js.get_stream(workers::TASKS_STREAM).await?;
    let c: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &consumer_name(agent),
            consumer::pull::Config {
                durable_name: Some(consumer_name(agent)),
                filter_subject: task_subject(agent),
                ack_wait,
                ..Default::default()
            },
        )
        .await?;
    let mut batch = c.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await?;
    match batch.next().await {
        Some(m) => {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(Some((serde_json::from_slice(&m.payload)?, m)))
        }
        None => Ok(None),
    }
}

async fn report(js: &jetstream::Context, task: &WorkerTask, body: ReportBody, msg_id: &str) -> anyhow::Result<()> {
    let r = WorkerReport {
        run_id: task.task.run_id.clone(),
        step: task.task.step.clone(),
        attempt: task.task.attempt,
        body,
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(task.reply_subject.clone(), headers, serde_json::to_vec(&r)?.into()).await?.await?;
    Ok(())
}

fn completed(output: Value) -> ReportBody {
    ReportBody::Completed { output, facts: vec!["reviewed".into()], vote: None, events: vec![], duration_ms: 1 }
}

async fn cleanup(js: &jetstream::Context, agent: &str) {
    if let Ok(stream) = js.get_stream(workers::TASKS_STREAM).await {
        let _ = stream.delete_consumer(&consumer_name(agent)).await;
        let _ = stream.purge().filter(task_subject(agent)).await;
    }
}

async fn event_types(store: &Store, run_id: &str) -> Vec<String> {
    ltmc_tests::types_and_steps(&read_stream_all(store, &stream_id(run_id)).await.expect("readable"))
}

async fn served_by_ltmc_worker(store: Store) -> anyhow::Result<()> {
    let js = js().await?;
    let agent = agent_name();
    let mut opts = WorkerOptions::new(
        &ltmc_tests::nats_url(),
        &agent,
        AgentDef { builtin: Some(Builtin::Echo), params: Some(json!({"facts": ["reviewed"]})), ..Default::default() },
    );
    opts.max_tasks = Some(1);
    let worker = tokio::spawn(serve(opts));
    let engine = engine(store.clone()).await?;
    let state = engine.run(workflow(&agent, 10.0, 0), None, PathBuf::from("."), None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert_eq!(state.output, Some(json!({"pr": 7})), "the worker's echo is the run's output");
    assert!(state.facts.contains("reviewed"), "facts from a worker gate hand-overs like any agent's");
    assert_eq!(worker.await??, 1);
    let types = event_types(&store, &state.run_id).await;
    assert_eq!(
        types,
        [
            "RunStarted",
            "StepReady:prepare",
            "StepDispatched:prepare",
            "StepCompleted:prepare",
            "StepReady:review",
            "StepDispatched:review",
            "StepCompleted:review",
            "RunCompleted"
        ]
    );
    cleanup(&js, &agent).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_an_agent_on_sqlite() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    served_by_ltmc_worker(store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_an_agent_on_postgres() -> anyhow::Result<()> {
    let schema = ltmc_tests::PgSchema::new().await?;
    served_by_ltmc_worker(schema.store().await?).await?;
    schema.drop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_carries_the_idempotency_key_as_its_message_id() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let (js, agent) = (js().await?, agent_name());
    let engine = engine(store).await?;
    let run_id = engine.start(workflow(&agent, 10.0, 0), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    let (task, msg) = take_task(&js, &agent, Duration::from_secs(30)).await?.expect("a task");
    assert_eq!(task.task.idempotency_key, format!("{run_id}/review/1"));
    assert_eq!(
        msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str()),
        Some(task.task.idempotency_key.as_str())
    );
    assert_eq!(msg.subject.as_str(), task_subject(&agent));
    assert_eq!(task.reply_subject, format!("ltmc.results.{run_id}"));
    assert_eq!(task.task.input, json!({"pr": 7}), "the input is the output of the step it needs");
    assert!((task.timeout_secs - 10.0).abs() < 1e-9);
    report(&js, &task, completed(json!("ok")), &format!("{}/result", task.task.idempotency_key)).await?;
    msg.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = driving.await??;
    assert_eq!(state.status, RunStatus::Completed);
    cleanup(&js, &agent).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_extend_the_deadline_and_silence_fails_the_attempt() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let (js, agent) = (js().await?, agent_name());
    let engine = engine(store.clone()).await?;
    // Timeout 0.6 s; the worker works for 1.5 s but says so every 0.2 s.
    let run_id = engine.start(workflow(&agent, 0.6, 1), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    let (task, msg) = take_task(&js, &agent, Duration::from_secs(30)).await?.expect("a task");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        report(&js, &task, ReportBody::Heartbeat { worker: Some("test".into()) }, &ltmc_tests::unique()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report(&js, &task, completed(json!("slow but alive")), &format!("{}/result", task.task.idempotency_key)).await?;
    msg.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = driving.await??;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert_eq!(state.steps[1].attempts, 1, "heartbeats kept the first attempt alive");

    // Silence: one heartbeat, then nothing. Each attempt fails 0.6 s after the last report.
    let run_id = engine.start(workflow(&agent, 0.6, 1), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    let started = Instant::now();
    for attempt in 1..=2 {
        let (task, msg) = take_task(&js, &agent, Duration::from_secs(30)).await?.expect("a task");
        assert_eq!(task.task.attempt, attempt, "the retry is a new task with the next attempt's key");
        report(&js, &task, ReportBody::Heartbeat { worker: None }, &ltmc_tests::unique()).await?;
        msg.ack_with(AckKind::Term).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let state = driving.await??;
    assert_eq!(state.status, RunStatus::Failed);
    let reason = state.failure.clone().unwrap_or_default();
    assert!(reason.contains("no report from a worker"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let types = event_types(&store, &run_id).await;
    assert_eq!(types.iter().filter(|t| *t == "StepFailed:review").count(), 2, "{types:?}");
    cleanup(&js, &agent).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_delivered_twice_is_recorded_once() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let (js, agent) = (js().await?, agent_name());
    let engine = engine(store.clone()).await?;
    let run_id = engine.start(workflow(&agent, 10.0, 2), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    let (task, msg) = take_task(&js, &agent, Duration::from_secs(30)).await?.expect("a task");
    // Distinct message ids, so JetStream's own de-duplication does not hide the repeats (and
    // unique ones: the stream's 2-minute window spans test runs).
    let key = &task.task.idempotency_key;
    report(&js, &task, completed(json!("first")), &format!("{key}/a")).await?;
    report(&js, &task, completed(json!("second")), &format!("{key}/b")).await?;
    report(&js, &task, ReportBody::Failed { error: "late failure".into(), duration_ms: 0 }, &format!("{key}/c"))
        .await?;
    msg.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = driving.await??;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.output, Some(json!("first")));
    let types = event_types(&store, &run_id).await;
    assert_eq!(types.iter().filter(|t| t.starts_with("StepCompleted:review")).count(), 1, "{types:?}");
    assert!(!types.iter().any(|t| t.starts_with("StepFailed")), "{types:?}");
    cleanup(&js, &agent).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_sent_while_the_engine_was_down_is_used_on_resume() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let (js, agent) = (js().await?, agent_name());
    let engine = engine(store.clone()).await?;
    let run_id = engine.start(workflow(&agent, 10.0, 0), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    let (task, msg) = take_task(&js, &agent, Duration::from_secs(30)).await?.expect("a task");
    driving.abort(); // the engine "crashes" with the attempt out at a worker
    let _ = driving.await;
    report(&js, &task, completed(json!("done while you were away")), &format!("{}/result", task.task.idempotency_key))
        .await?;
    msg.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = engine.drive(&run_id, None, None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.output, Some(json!("done while you were away")));
    assert_eq!(state.steps[1].attempts, 1);
    // The task was not queued again: nothing is waiting for the agent.
    let stream = js.get_stream(workers::TASKS_STREAM).await?;
    let c: consumer::PullConsumer =
        stream.get_consumer(&consumer_name(&agent)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut batch = c.fetch().max_messages(1).expires(Duration::from_millis(300)).messages().await?;
    assert!(batch.next().await.is_none(), "a task was queued again");
    cleanup(&js, &agent).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_worker_died_goes_to_another_worker() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let (js, agent) = (js().await?, agent_name());
    let engine = engine(store.clone()).await?;
    let run_id = engine.start(workflow(&agent, 10.0, 0), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    // The first worker takes the task and dies: no heartbeat, no ack.
    let (first, msg) = take_task(&js, &agent, Duration::from_secs(1)).await?.expect("a task");
    drop(msg);
    let mut opts = WorkerOptions::new(
        &ltmc_tests::nats_url(),
        &agent,
        AgentDef { builtin: Some(Builtin::Echo), ..Default::default() },
    );
    opts.max_tasks = Some(1);
    opts.ack_wait = Duration::from_secs(1);
    assert_eq!(serve(opts).await?, 1, "the second worker got the task after the ack wait");
    let state = driving.await??;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert_eq!(state.steps[1].attempts, 1, "the same attempt, redelivered");
    assert_eq!(first.task.attempt, 1);
    assert_eq!(event_types(&store, &run_id).await.iter().filter(|t| t.starts_with("StepDispatched:review")).count(), 1);
    cleanup(&js, &agent).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_report_fails_the_attempt_with_the_reason() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let (js, agent) = (js().await?, agent_name());
    let engine = engine(store.clone()).await?;
    let run_id = engine.start(workflow(&agent, 10.0, 0), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    let (task, msg) = take_task(&js, &agent, Duration::from_secs(30)).await?.expect("a task");
    let bad = json!({"run_id": run_id, "step": "review", "attempt": 1, "type": "completed", "facts": "all good"});
    js.publish(task.reply_subject.clone(), serde_json::to_vec(&bad)?.into()).await?.await?;
    msg.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = driving.await??;
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.failure.clone().unwrap_or_default().contains("malformed report"), "{:?}", state.failure);
    cleanup(&js, &agent).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_with_workers_is_refused_without_nats_and_writes_nothing() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let err = engine.start(workflow("rev", 1.0, 0), None, None, None).await.expect_err("refused");
    assert!(err.to_string().contains("LTMC_NATS_URL"), "{err}");
    assert_eq!(ltmc_engine::EventStore::head_position(&store).await?, 0);
    Ok(())
}

/// The Python example needs nothing of ours but nats-py: it proves the protocol is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_worker_serves_an_agent() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let (js, agent) = (js().await?, agent_name());
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/workers/worker.py");
    let mut python = tokio::process::Command::new("python3")
        .arg(&example)
        .args(["--agent", &agent, "--max-tasks", "1", "--url", &ltmc_tests::nats_url()])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let engine = engine(store.clone()).await?;
    let mut wf = workflow(&agent, 20.0, 0);
    wf.input = json!({"diff": "+let x = 1;\n+// TODO: tests\n"});
    let state = tokio::time::timeout(Duration::from_secs(30), engine.run(wf, None, PathBuf::from("."), None)).await??;
    let status = tokio::time::timeout(Duration::from_secs(10), python.wait()).await??;
    if state.status != RunStatus::Completed || !status.success() {
        let out = python.wait_with_output().await?;
        panic!(
            "run {:?} ({:?}); python {status}: {}{}",
            state.status,
            state.failure,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(state.output, Some(json!({"lines_added": 2, "todos": 1, "reviewed_by": "python"})));
    assert_eq!(state.steps[1].vote.as_deref(), Some("reject"));
    cleanup(&js, &agent).await;
    Ok(())
}

/// nats-server (Debian's, on PATH or /usr/sbin, or `LTMC_TEST_NATS_SERVER`) on `port`, storing
/// in `dir`, so a test can stop and start it.
fn start_nats(port: u16, dir: &std::path::Path) -> anyhow::Result<tokio::process::Child> {
    let binary = std::env::var("LTMC_TEST_NATS_SERVER").unwrap_or_else(|_| {
        let debian = "/usr/sbin/nats-server";
        if std::path::Path::new(debian).exists() { debian.into() } else { "nats-server".into() }
    });
    Ok(tokio::process::Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// The run's mailbox reads through a consumer of its own; a NATS restart loses it (it is kept
/// in memory), and the mailbox reads on from where it was with a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_stored_after_a_nats_restart_reaches_the_run() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("nats://127.0.0.1:{port}");
    let dir = tempfile::tempdir()?;
    let mut nats = start_nats(port, dir.path())?;
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let agent = agent_name();
    let connected =
        ltmc_tests::eventually(Duration::from_secs(10), || async { Workers::connect(&url).await.is_ok() }).await;
    assert!(connected, "the private nats-server did not start");
    let engine = Engine::new(store.clone(), EngineOptions::default()).with_workers(Workers::connect(&url).await?);
    let run_id = engine.start(workflow(&agent, 20.0, 0), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    // The task is queued (kept on file), then NATS restarts before a worker takes it.
    let queued = ltmc_tests::eventually(Duration::from_secs(10), || async {
        let Ok(js) = async_nats::connect(&url).await.map(jetstream::new) else { return false };
        let Ok(stream) = js.get_stream(workers::TASKS_STREAM).await else { return false };
        stream.get_last_raw_message_by_subject(&task_subject(&agent)).await.is_ok()
    })
    .await;
    assert!(queued, "the task was not queued");
    nats.start_kill()?;
    nats.wait().await?;
    let _nats = start_nats(port, dir.path())?;
    let mut opts = WorkerOptions::new(&url, &agent, AgentDef { builtin: Some(Builtin::Echo), ..Default::default() });
    opts.max_tasks = Some(1);
    let served = ltmc_tests::eventually(Duration::from_secs(10), || {
        let opts = opts.clone();
        async move { serve(opts).await.is_ok() }
    })
    .await;
    assert!(served, "no worker served the task after the restart");
    let state = tokio::time::timeout(Duration::from_secs(15), driving).await???;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert_eq!(state.steps[1].attempts, 1, "the first attempt's result was read");
    Ok(())
}

/// Two deployments with their own NATS prefixes on one server: each one's engine and worker see
/// only its own tasks and reports, though the agent has the same name in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_with_their_own_prefix_never_see_each_other() -> anyhow::Result<()> {
    use ltmc_engine::workers::Names;
    let id: String = ltmc_tests::unique().chars().filter(char::is_ascii_alphanumeric).take(12).collect();
    let agent = "reviewer";
    let mut deployments = Vec::new();
    for side in ["a", "b"] {
        let names = Names::new(&format!("t{}-{side}", id.to_ascii_lowercase())).map_err(anyhow::Error::msg)?;
        let (store, dir) = ltmc_tests::sqlite_store().await?;
        let url = ltmc_tests::nats_url();
        let workers = Workers::connect_with(&url, names.clone()).await?;
        let engine = Engine::new(store, EngineOptions::default()).with_workers(workers);
        // Each deployment's worker answers with its own side, as a fact.
        let def = AgentDef {
            builtin: Some(Builtin::Echo),
            params: Some(json!({"facts": [format!("served_by_{side}")]})),
            ..Default::default()
        };
        let mut opts = WorkerOptions::new(&url, agent, def);
        opts.names = names.clone();
        opts.max_tasks = Some(2);
        deployments.push((side, names, engine, tokio::spawn(serve(opts)), dir));
    }
    for round in 0..2 {
        let mut runs = Vec::new();
        for (side, _, engine, _, _) in &deployments {
            let (engine, side) = (engine.clone(), *side);
            runs.push(tokio::spawn(async move {
                (side, engine.run(workflow(agent, 20.0, 0), None, PathBuf::from("."), None).await)
            }));
        }
        for run in runs {
            let (side, state) = run.await?;
            let state = state?;
            assert_eq!(state.status, RunStatus::Completed, "round {round}, side {side}: {:?}", state.failure);
            assert!(state.facts.contains(&format!("served_by_{side}")), "side {side} was served by its own worker");
            let other = if side == "a" { "served_by_b" } else { "served_by_a" };
            assert!(!state.facts.contains(other), "side {side} was served by the other deployment's worker");
        }
    }
    let js = jetstream::new(async_nats::connect(ltmc_tests::nats_url()).await?);
    for (_, names, _, worker, _) in deployments {
        assert_eq!(worker.await??, 2, "each worker served exactly its own deployment's two tasks");
        for stream in [names.tasks_stream(), names.results_stream()] {
            let _ = js.delete_stream(&stream).await;
        }
    }
    Ok(())
}
