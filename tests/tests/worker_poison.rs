//! Poison on the worker wire, on real JetStream: malformed tasks on `LTMC_TASKS` must not stall
//! `ltmc worker`, and hostile messages on `ltmc.results.<run>` must not stall a run's mailbox.
//!
//! Some poison is only possible below the client library: a stored message whose header block
//! is a status line (`NATS/1.0 408 Request Timeout`) looks, to a JetStream client, like the
//! server's own signal. Those are published over a raw TCP connection.

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use futures::StreamExt;
use ltmc_core::run::RunStatus;
use ltmc_core::spec::{self, AgentDef, Builtin, ParseOptions, Workflow};
use ltmc_engine::workers::serve::{WorkerOptions, serve};
use ltmc_engine::workers::{self, RESULTS_STREAM, TASKS_STREAM, Workers, consumer_name, task_subject};
use ltmc_engine::{Engine, EngineOptions};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How long a worker or a mailbox may take to get past all the poison of one test (today's
/// main takes 50 s or forever).
const DEADLINE: Duration = Duration::from_secs(5);

/// Status lines a stored message can carry to look like the server's own signals.
const STATUS_LINES: [&str; 3] =
    ["NATS/1.0 408 Request Timeout", "NATS/1.0 100 Idle Heartbeat", "NATS/1.0 409 Consumer Deleted"];

async fn js() -> anyhow::Result<jetstream::Context> {
    let js = jetstream::new(async_nats::connect(ltmc_tests::nats_url()).await?);
    workers::ensure_streams(&js).await?;
    Ok(js)
}

/// Publishes `payload` on `subject` with a raw header block (which may be a status line), over
/// a plain TCP connection: async-nats cannot send a status line.
async fn raw_publish(subject: &str, header_line: &str, payload: &[u8]) -> anyhow::Result<()> {
    let url = ltmc_tests::nats_url();
    let addr = url.strip_prefix("nats://").unwrap_or(&url);
    let mut conn = BufReader::new(tokio::net::TcpStream::connect(addr).await?);
    let mut line = String::new();
    conn.read_line(&mut line).await?; // INFO
    let headers = format!("{header_line}\r\n\r\n");
    let mut out = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}}\r\nHPUB {subject} {} {}\r\n{headers}",
        headers.len(),
        headers.len() + payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    conn.get_mut().write_all(&out).await?;
    line.clear();
    conn.read_line(&mut line).await?;
    anyhow::ensure!(line.starts_with("PONG"), "the server refused the raw publish: {line}");
    Ok(())
}

/// A well-formed task for `agent` in run `run_id`, as the engine sends it.
fn task(agent: &str, run_id: &str) -> Value {
    json!({
        "run_id": run_id, "workflow": "wk", "step": "review", "agent": agent, "attempt": 1,
        "idempotency_key": format!("{run_id}/review/1"), "input": {"pr": 7}, "context": {},
        "timeout_secs": 10.0, "heartbeat_secs": 1.0, "reply_subject": format!("ltmc.results.{run_id}"),
    })
}

fn with(mut task: Value, field: &str, value: Value) -> Value {
    task[field] = value;
    task
}

/// A task whose run id is `run_id` and everything else consistent with it.
fn task_of_run(agent: &str, run_id: &str) -> Vec<u8> {
    task(agent, run_id).to_string().into_bytes()
}

fn deep(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The poison tasks: what each is, and its body. (The status-line ones are added by the test.)
fn poison(agent: &str, dotted: &str) -> Vec<(&'static str, Vec<u8>)> {
    let run = uuid::Uuid::now_v7().to_string();
    let valid = task(agent, &run);
    let mut deep_input = valid.to_string();
    deep_input.truncate(deep_input.len() - 1);
    deep_input.push_str(&format!(",\"extra\":{}}}", deep(100_000)));
    let mut missing = valid.clone();
    if let Some(o) = missing.as_object_mut() {
        o.remove("timeout_secs");
    }
    vec![
        ("not JSON", b"this is not a task".to_vec()),
        ("empty", Vec::new()),
        ("invalid UTF-8", b"{\"run_id\": \"\xff\xfe\"}".to_vec()),
        ("nested 100,000 deep", deep(100_000).into_bytes()),
        ("a field nested 100,000 deep", deep_input.into_bytes()),
        ("missing fields", missing.to_string().into_bytes()),
        ("an object with nothing", b"{}".to_vec()),
        ("run id with a dot", task_of_run(agent, dotted)),
        ("run id *", task_of_run(agent, "*")),
        ("run id >", task_of_run(agent, ">")),
        ("run id overlong", task_of_run(agent, &"r".repeat(100_000))),
        ("run id with a space", task_of_run(agent, "a b")), // `PUB ltmc.results.a b …`: reply `b`
        (
            "another reply subject",
            with(valid.clone(), "reply_subject", json!("ltmc.poison.elsewhere")).to_string().into_bytes(),
        ),
        ("another agent", with(valid.clone(), "agent", json!("someone-else")).to_string().into_bytes()),
        ("another idempotency key", with(valid.clone(), "idempotency_key", json!("x/y/1")).to_string().into_bytes()),
        ("a step that is not a name", with(valid, "step", json!("re.view")).to_string().into_bytes()),
    ]
}

/// Stream sequence of the last message on `subject` in `stream`.
async fn last_seq(js: &jetstream::Context, stream: &str, subject: &str) -> anyhow::Result<Option<u64>> {
    let stream = js.get_stream(stream).await?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m.sequence)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The type of the last report stored for `run_id`, if any.
async fn last_report_type(js: &jetstream::Context, run_id: &str) -> Option<String> {
    let stream = js.get_stream(RESULTS_STREAM).await.ok()?;
    let m = stream.get_last_raw_message_by_subject(&workers::results_subject(run_id)).await.ok()?;
    let v: Value = serde_json::from_slice(&m.payload).ok()?;
    v.get("type").and_then(Value::as_str).map(str::to_owned)
}

/// Collects what arrives on `subject` (subjects or stream sequences of advisories).
async fn collect(
    client: &async_nats::Client,
    subject: String,
    advisory: bool,
) -> anyhow::Result<Arc<Mutex<Vec<String>>>> {
    let mut sub = client.subscribe(subject).await?;
    client.flush().await?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let item = if advisory {
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                v.get("stream_seq").map(Value::to_string).unwrap_or_default()
            } else {
                m.subject.to_string()
            };
            into.lock().expect("not poisoned").push(item);
        }
    });
    Ok(seen)
}

fn echo_worker(agent: &str) -> WorkerOptions {
    WorkerOptions::new(&ltmc_tests::nats_url(), agent, AgentDef { builtin: Some(Builtin::Echo), ..Default::default() })
}

async fn cleanup(js: &jetstream::Context, agent: &str) {
    if let Ok(stream) = js.get_stream(TASKS_STREAM).await {
        let _ = stream.delete_consumer(&consumer_name(agent)).await;
        let _ = stream.purge().filter(task_subject(agent)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_terminates_each_malformed_task_and_serves_the_next() -> anyhow::Result<()> {
    let js = js().await?;
    let agent = format!("poison-{}", ltmc_tests::unique());
    let dotted = format!("{}.b", ltmc_tests::unique());
    let client = js.client();
    // Where reports go: the poison's run ids and reply subjects must never be used.
    let reports = collect(&client, "ltmc.results.>".into(), false).await?;
    let elsewhere = collect(&client, "ltmc.poison.>".into(), false).await?;
    let terminated = collect(
        &client,
        format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{TASKS_STREAM}.{}", consumer_name(&agent)),
        true,
    )
    .await?;

    // Each poison task, then a valid one, all queued before the worker starts.
    let mut poison_seqs = BTreeMap::new();
    let mut valid_runs = Vec::new();
    let mut queue_valid = async |js: &jetstream::Context| -> anyhow::Result<()> {
        let run = uuid::Uuid::now_v7().to_string();
        js.publish(task_subject(&agent), task_of_run(&agent, &run).into()).await?.await?;
        valid_runs.push(run);
        Ok(())
    };
    let cases = poison(&agent, &dotted);
    for (what, body) in &cases {
        let ack = js.publish(task_subject(&agent), body.clone().into()).await?.await?;
        poison_seqs.insert(ack.sequence, *what);
        queue_valid(&js).await?;
    }
    for status in STATUS_LINES {
        raw_publish(&task_subject(&agent), status, b"{}").await?;
        poison_seqs.insert(last_seq(&js, TASKS_STREAM, &task_subject(&agent)).await?.expect("stored"), status);
        queue_valid(&js).await?;
    }

    let started = Instant::now();
    let worker = tokio::spawn(serve(echo_worker(&agent)));
    let all_served = ltmc_tests::eventually(DEADLINE, || {
        let (js, runs) = (js.clone(), valid_runs.clone());
        async move {
            for run in &runs {
                if last_report_type(&js, run).await.as_deref() != Some("completed") {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let took = started.elapsed();
    let want: BTreeSet<u64> = poison_seqs.keys().copied().collect();
    let terminated_seqs = || -> BTreeSet<u64> {
        terminated.lock().expect("not poisoned").iter().filter_map(|s| s.parse().ok()).collect()
    };
    let all_terminated = ltmc_tests::eventually(Duration::from_secs(2), || {
        let done = terminated_seqs() == want;
        async move { done }
    })
    .await;
    let consumer = || async {
        let stream = js.get_stream(TASKS_STREAM).await?;
        Ok::<_, anyhow::Error>(stream.consumer_info(consumer_name(&agent)).await?)
    };
    // The last result is stored just before its task is acknowledged.
    let settled = ltmc_tests::eventually(Duration::from_secs(2), || async {
        consumer().await.is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
    })
    .await;
    worker.abort();
    let _ = worker.await;

    assert!(all_served, "the valid tasks behind the poison were not all served within {DEADLINE:?}");
    let missed: Vec<&str> =
        poison_seqs.iter().filter(|(seq, _)| !terminated_seqs().contains(seq)).map(|(_, what)| *what).collect();
    assert!(all_terminated, "poison tasks not terminated: {missed:?} (terminated: {:?})", terminated_seqs());
    assert!(settled, "tasks left pending or unacknowledged: {:?}", consumer().await?);
    let info = consumer().await?;
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.num_redelivered),
        (0, 0, 0),
        "nothing left or redelivered"
    );
    assert_eq!(
        last_seq(&js, TASKS_STREAM, &task_subject(&agent)).await?,
        None,
        "the work queue holds none of the agent's tasks"
    );
    let overlong = format!("ltmc.results.{}", "r".repeat(64));
    let forbidden =
        [format!("ltmc.results.{dotted}"), "ltmc.results.*".into(), "ltmc.results.>".into(), "ltmc.results.a".into()];
    let mut foreign: Vec<String> = reports
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|s| forbidden.contains(s) || s.starts_with(&overlong))
        .map(|s| s.chars().take(80).collect())
        .collect();
    foreign.extend(elsewhere.lock().expect("not poisoned").iter().cloned());
    assert!(foreign.is_empty(), "reports sent outside ltmc.results.<valid run id>: {foreign:?}");
    eprintln!("{} poison tasks and {} valid ones in {took:?}", poison_seqs.len(), valid_runs.len());
    cleanup(&js, &agent).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tasks_do_not_count_towards_max_tasks() -> anyhow::Result<()> {
    let js = js().await?;
    let agent = format!("poison-{}", ltmc_tests::unique());
    js.publish(task_subject(&agent), "not a task".into()).await?.await?;
    let run = uuid::Uuid::now_v7().to_string();
    js.publish(task_subject(&agent), task_of_run(&agent, &run).into()).await?.await?;
    let mut opts = echo_worker(&agent);
    opts.max_tasks = Some(1);
    let served = tokio::time::timeout(DEADLINE, serve(opts)).await??;
    assert_eq!(served, 1);
    assert_eq!(last_report_type(&js, &run).await.as_deref(), Some("completed"), "the one task served is the valid one");
    cleanup(&js, &agent).await;
    Ok(())
}

/// A workflow whose one step is served by workers of `agent`.
fn workflow(agent: &str) -> Workflow {
    let yaml = format!(
        "name: wk\npattern: sequential\nagents:\n  {agent}: {{worker: true, timeout: 10, retries: 0}}\ninput: {{pr: 7}}\n"
    );
    spec::parse_str(&yaml, "wk.yaml", &ParseOptions::default()).expect("valid workflow")
}

/// Hostile reports on the run's own subject, each as (header line or "", body).
fn hostile_reports(run_id: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![
        ("", b"this is not a report".to_vec()),
        ("", Vec::new()),
        ("", b"{\"run_id\": \"\xff\xfe\"}".to_vec()),
        ("", deep(100_000).into_bytes()),
        ("", format!("{{\"run_id\":\"{run_id}\",\"step\":{}}}", deep(100_000)).into_bytes()),
        ("", format!("{{\"run_id\":\"{run_id}\",\"type\":\"completed\"}}").into_bytes()),
        (
            "",
            json!({"run_id": "another-run", "step": "s", "attempt": 1, "type": "failed", "error": "x"})
                .to_string()
                .into_bytes(),
        ),
    ];
    for status in STATUS_LINES {
        out.push((status, b"{}".to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reports_do_not_stall_a_runs_mailbox() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let js = js().await?;
    let agent = format!("poison-{}", ltmc_tests::unique());
    let engine =
        Engine::new(store, EngineOptions::default()).with_workers(Workers::connect(&ltmc_tests::nats_url()).await?);
    let run_id = engine.start(workflow(&agent), None, None, None).await?;
    let subject = workers::results_subject(&run_id);
    let send = async |reports: Vec<(&'static str, Vec<u8>)>| -> anyhow::Result<()> {
        for (header, body) in reports {
            if header.is_empty() {
                js.publish(subject.clone(), body.into()).await?.await?;
            } else {
                raw_publish(&subject, header, &body).await?;
            }
        }
        Ok(())
    };
    // Before the engine reads the run's reports (read as stored ones) and while it waits.
    send(hostile_reports(&run_id)).await?;
    let started = Instant::now();
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    let queued = ltmc_tests::eventually(DEADLINE, || {
        let js = js.clone();
        let agent = agent.clone();
        async move { matches!(last_seq(&js, TASKS_STREAM, &task_subject(&agent)).await, Ok(Some(_))) }
    })
    .await;
    assert!(queued, "the task was not queued within {DEADLINE:?}: the mailbox did not read past the stored reports");
    send(hostile_reports(&run_id)).await?;
    let mut opts = echo_worker(&agent);
    opts.max_tasks = Some(1);
    tokio::time::timeout(DEADLINE, serve(opts)).await??;
    let state = tokio::time::timeout(DEADLINE, driving).await???;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert_eq!(state.output, Some(json!({"pr": 7})));
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    cleanup(&js, &agent).await;
    Ok(())
}

/// The Python example is the model for workers in other languages: it terminates malformed
/// tasks too, serves the next, and never publishes where a task says when that is not
/// `ltmc.results.<run id>` (today it dies at the first message that is not JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_worker_terminates_malformed_tasks() -> anyhow::Result<()> {
    let js = js().await?;
    let agent = format!("poison-{}", ltmc_tests::unique());
    let client = js.client();
    let elsewhere = collect(&client, "ltmc.poison.>".into(), false).await?;
    let terminated = collect(
        &client,
        format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{TASKS_STREAM}.{}", consumer_name(&agent)),
        true,
    )
    .await?;
    let mut poison_seqs = BTreeSet::new();
    for (_, body) in poison(&agent, &format!("{}.b", ltmc_tests::unique())) {
        poison_seqs.insert(js.publish(task_subject(&agent), body.into()).await?.await?.sequence);
    }
    let run = uuid::Uuid::now_v7().to_string();
    let mut valid = task(&agent, &run);
    valid["input"] = json!({"diff": "+let x = 1;\n"});
    js.publish(task_subject(&agent), valid.to_string().into()).await?.await?;
    let example = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/workers/worker.py");
    let python = tokio::process::Command::new("python3")
        .arg(&example)
        .args(["--agent", &agent, "--max-tasks", "1", "--url", &ltmc_tests::nats_url()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), python).await??;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python: {said}");
    assert_eq!(last_report_type(&js, &run).await.as_deref(), Some("completed"), "{said}");
    let all_terminated = ltmc_tests::eventually(Duration::from_secs(2), || {
        let seen: BTreeSet<u64> =
            terminated.lock().expect("not poisoned").iter().filter_map(|s| s.parse().ok()).collect();
        let done = seen == poison_seqs;
        async move { done }
    })
    .await;
    assert!(all_terminated, "terminated {:?} of {poison_seqs:?}: {said}", terminated.lock().expect("not poisoned"));
    assert!(elsewhere.lock().expect("not poisoned").is_empty(), "a report went where a task said");
    cleanup(&js, &agent).await;
    Ok(())
}
