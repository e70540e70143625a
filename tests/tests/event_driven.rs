//! Event-driven runs on both backends: triggers start listening agents, agents' events start
//! more, events come from outside (another process, NATS), dynamic allocation within the
//! engine's limit, and every run ends (activation cap, idle timeout).

use ltmc_core::RecordedEvent;
use ltmc_core::run::{RunStatus, stream_id};
use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::store::read_stream_all;
use ltmc_engine::workers::Workers;
use ltmc_engine::{Engine, EngineOptions, Store};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn wf(yaml: &str) -> Workflow {
    spec::parse_str(yaml, "events.yaml", &ParseOptions::default()).expect("valid workflow")
}

async fn events(store: &Store, run_id: &str) -> Vec<RecordedEvent> {
    read_stream_all(store, &stream_id(run_id)).await.expect("readable stream")
}

fn of_type<'a>(events: &'a [RecordedEvent], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e.event_type == t).map(|e| &e.data).collect()
}

/// Position in `events` of the first `event_type` for `step`.
fn at(events: &[RecordedEvent], event_type: &str, step: &str) -> usize {
    events
        .iter()
        .position(|e| e.event_type == event_type && e.data["step"] == step)
        .unwrap_or_else(|| panic!("no {event_type} for {step}"))
}

fn engine(store: &Store, idle_ms: u64) -> Engine {
    Engine::new(store.clone(), EngineOptions { idle_timeout: Duration::from_millis(idle_ms), ..Default::default() })
}

const CHAIN: &str = "
name: chain
pattern: event_driven
triggers: [code_change, test_failure, review_complete]
dynamic_agent_allocation: true
agents:
  developer: {builtin: echo, on: [test_failure], params: {events: [{type: code_change, data: {fixed: true}}]}}
  tester: {builtin: echo, on: [code_change], params: {events: [{type: review_complete}, {type: not_a_trigger}]}}
  reviewer: {builtin: noop, on: [review_complete], params: {facts: [review_approved]}}
success_criteria: [review_approved]
";

async fn a_chain_of_events_starts_each_listener(store: Store) -> anyhow::Result<()> {
    let engine = engine(&store, 200);
    let run_id = engine.start(wf(CHAIN), None, None, None).await?;
    engine.emit(&run_id, "test_failure", json!({"test": "login"}), "emit").await?;
    let started = Instant::now();
    let state = engine.drive(&run_id, None, None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert!(started.elapsed() >= Duration::from_millis(200), "it waited out the idle timeout");
    let out = state.output.clone().unwrap_or_default();
    assert_eq!((out["ended"].clone(), out["activations"].clone()), (json!("idle"), json!(3)));
    let evs = events(&store, &run_id).await;
    let received = of_type(&evs, "TriggerReceived");
    let got: Vec<(String, String, Value)> = received
        .iter()
        .map(|d| {
            (
                d["trigger"].as_str().unwrap_or("").into(),
                d["source"].as_str().unwrap_or("").into(),
                d["activated"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("test_failure".into(), "emit".into(), json!(["developer-1"])),
            ("code_change".into(), "step:developer-1".into(), json!(["tester-2"])),
            ("review_complete".into(), "step:tester-2".into(), json!(["reviewer-3"])),
        ]
    );
    assert_eq!(received[0]["seq"], json!(1), "an event from outside carries its version in triggers-<run>");
    // The activation's input says what started it; the event that is not a trigger stays data.
    let activated = of_type(&evs, "AgentActivated");
    assert_eq!(
        activated[1]["input"],
        json!({"trigger": "code_change", "data": {"fixed": true}, "source": "step:developer-1"})
    );
    let tester_done =
        evs.iter().find(|e| e.event_type == "StepCompleted" && e.data["step"] == "tester-2").expect("done");
    assert_eq!(tester_done.data["events"][1]["type"], "not_a_trigger");
    assert!(at(&evs, "StepCompleted", "developer-1") < at(&evs, "StepDispatched", "tester-2"));
    Ok(())
}

async fn the_activation_cap_ends_a_loop(store: Store) -> anyhow::Result<()> {
    // ping starts pong, pong starts ping: without the cap this never ends.
    let yaml = "
pattern: event_driven
triggers: {ping: [ponger], pong: [pinger]}
max_activations: 7
idle_timeout: 60
agents:
  ponger: {builtin: noop, params: {events: [{type: pong}]}}
  pinger: {builtin: noop, params: {events: [{type: ping}]}}
";
    let engine = engine(&store, 60_000);
    let run_id = engine.start(wf(yaml), None, None, None).await?;
    engine.emit(&run_id, "ping", Value::Null, "emit").await?;
    let started = Instant::now();
    let state = engine.drive(&run_id, None, None).await?;
    assert!(started.elapsed() < Duration::from_secs(10), "the cap ended it, not the idle timeout");
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert_eq!(state.output.as_ref().map(|o| o["ended"].clone()), Some(json!("max_activations")));
    let evs = events(&store, &run_id).await;
    assert_eq!(of_type(&evs, "AgentActivated").len(), 7);
    assert_eq!(of_type(&evs, "StepCompleted").len(), 7);
    let last = of_type(&evs, "TriggerReceived").pop().cloned().unwrap_or_default();
    assert_eq!(last["activated"], json!([]), "the event past the cap is recorded and starts nothing");
    Ok(())
}

async fn a_failed_activation_fails_the_run(store: Store) -> anyhow::Result<()> {
    let yaml = "
pattern: event_driven
triggers: [code_change]
agents:
  broken: {builtin: fail, on: [code_change], retries: 1, backoff: 0, params: {message: compiler crashed}}
";
    let engine = engine(&store, 60_000);
    let run_id = engine.start(wf(yaml), None, None, None).await?;
    engine.emit(&run_id, "code_change", Value::Null, "emit").await?;
    let state = engine.drive(&run_id, None, None).await?;
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.failure.clone().unwrap_or_default().contains("compiler crashed"), "{:?}", state.failure);
    assert_eq!(of_type(&events(&store, &run_id).await, "StepFailed").len(), 2, "one retry, then the run fails");
    Ok(())
}

async fn events_from_another_process_are_taken_once_across_a_crash(store: Store, other: Store) -> anyhow::Result<()> {
    let yaml = "
pattern: event_driven
triggers: [code_change]
max_activations: 3
agents:
  tester: {builtin: echo, on: [code_change]}
";
    let engine = engine(&store, 60_000);
    let outside = engine_on(&other);
    let run_id = engine.start(wf(yaml), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    outside.emit(&run_id, "code_change", json!({"n": 1}), "emit").await?;
    let taken = ltmc_tests::eventually(Duration::from_secs(10), || async {
        of_type(&events(&store, &run_id).await, "StepCompleted").len() == 1
    })
    .await;
    assert!(taken, "the running driver took the event from the other process");
    driving.abort(); // crash
    let _ = driving.await;
    outside.emit(&run_id, "code_change", json!({"n": 2}), "emit").await?;
    outside.emit(&run_id, "code_change", json!({"n": 3}), "emit").await?;
    let state = engine.drive(&run_id, None, None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    let evs = events(&store, &run_id).await;
    let seqs: Vec<Value> = of_type(&evs, "TriggerReceived").iter().map(|d| d["seq"].clone()).collect();
    assert_eq!(seqs, [json!(1), json!(2), json!(3)], "each event once, in order");
    let inputs: Vec<Value> = of_type(&evs, "StepCompleted").iter().map(|d| d["output"]["data"]["n"].clone()).collect();
    assert_eq!(inputs, [json!(1), json!(2), json!(3)]);
    // Emitting into a finished run is refused and writes nothing.
    let before = ltmc_engine::EventStore::head_position(&store).await?;
    let err = outside.emit(&run_id, "code_change", Value::Null, "emit").await.expect_err("run is over");
    assert!(err.to_string().contains("completed"), "{err}");
    assert_eq!(ltmc_engine::EventStore::head_position(&store).await?, before);
    Ok(())
}

fn engine_on(store: &Store) -> Engine {
    Engine::new(store.clone(), EngineOptions::default())
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chain_of_events_starts_each_listener() -> anyhow::Result<()> {
        let (store, _dir) = ltmc_tests::sqlite_store().await?;
        super::a_chain_of_events_starts_each_listener(store).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_activation_cap_ends_a_loop() -> anyhow::Result<()> {
        let (store, _dir) = ltmc_tests::sqlite_store().await?;
        super::the_activation_cap_ends_a_loop(store).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_activation_fails_the_run() -> anyhow::Result<()> {
        let (store, _dir) = ltmc_tests::sqlite_store().await?;
        super::a_failed_activation_fails_the_run(store).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_from_another_process_are_taken_once_across_a_crash() -> anyhow::Result<()> {
        let (store, dir) = ltmc_tests::sqlite_store().await?;
        let path = dir.path().join("ltmc.db").display().to_string();
        let other = ltmc_engine::Store::Sqlite(ltmc_engine::store::sqlite::SqliteStore::open(&path).await?);
        super::events_from_another_process_are_taken_once_across_a_crash(store, other).await
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chain_of_events_starts_each_listener() -> anyhow::Result<()> {
        let schema = ltmc_tests::PgSchema::new().await?;
        super::a_chain_of_events_starts_each_listener(schema.store().await?).await?;
        schema.drop().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_activation_cap_ends_a_loop() -> anyhow::Result<()> {
        let schema = ltmc_tests::PgSchema::new().await?;
        super::the_activation_cap_ends_a_loop(schema.store().await?).await?;
        schema.drop().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_activation_fails_the_run() -> anyhow::Result<()> {
        let schema = ltmc_tests::PgSchema::new().await?;
        super::a_failed_activation_fails_the_run(schema.store().await?).await?;
        schema.drop().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_from_another_process_are_taken_once_across_a_crash() -> anyhow::Result<()> {
        let schema = ltmc_tests::PgSchema::new().await?;
        let (store, other) = (schema.store().await?, schema.store().await?);
        super::events_from_another_process_are_taken_once_across_a_crash(store, other).await?;
        schema.drop().await
    }
}

/// Three events for an agent that takes 150 ms: with dynamic allocation the three instances
/// overlap; without, each starts after the previous one completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_allocation_runs_instances_at_once_and_without_it_one_at_a_time() -> anyhow::Result<()> {
    for dynamic in [true, false] {
        let (store, _dir) = ltmc_tests::sqlite_store().await?;
        let yaml = format!(
            "pattern: event_driven\ntriggers: [job]\ndynamic_agent_allocation: {dynamic}\nmax_activations: 3\n\
             agents:\n  slow: {{builtin: sleep, on: [job], params: {{ms: 150}}}}\n"
        );
        let engine = engine(&store, 60_000);
        let run_id = engine.start(wf(&yaml), None, None, None).await?;
        for n in 0..3 {
            engine.emit(&run_id, "job", json!(n), "emit").await?;
        }
        let started = Instant::now();
        let state = engine.drive(&run_id, None, None).await?;
        let took = started.elapsed();
        assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
        let evs = events(&store, &run_id).await;
        if dynamic {
            assert!(at(&evs, "StepDispatched", "slow-3") < at(&evs, "StepCompleted", "slow-1"), "overlapping");
            // (The order above proves the overlap; wall time is not asserted, a loaded CI box varies.)
            let _ = took;
        } else {
            assert!(at(&evs, "StepCompleted", "slow-1") < at(&evs, "StepDispatched", "slow-2"));
            assert!(at(&evs, "StepCompleted", "slow-2") < at(&evs, "StepDispatched", "slow-3"));
            assert!(took >= Duration::from_millis(450), "{took:?}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_allocation_stays_within_max_concurrent_agents() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let yaml = "pattern: event_driven\ntriggers: [job]\ndynamic_agent_allocation: true\nmax_activations: 6\n\
                agents:\n  slow: {builtin: sleep, on: [job], params: {ms: 150}}\n";
    let options = EngineOptions { max_concurrent_agents: 2, ..Default::default() };
    let engine = Engine::new(store.clone(), options);
    let run_id = engine.start(wf(yaml), None, None, None).await?;
    for n in 0..6 {
        engine.emit(&run_id, "job", json!(n), "emit").await?;
    }
    let started = Instant::now();
    let state = engine.drive(&run_id, None, None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    // Six 150 ms agents, two at a time: three waves.
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_completes_after_its_idle_timeout() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let yaml = "pattern: event_driven\ntriggers: [code_change]\nidle_timeout: 0.3\nagents:\n  a: {builtin: noop, on: [code_change]}\n";
    let engine = engine(&store, 60_000);
    let started = Instant::now();
    let state = engine.run(wf(yaml), None, std::path::PathBuf::from("."), None).await?;
    let took = started.elapsed();
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.output, Some(json!({"ended": "idle", "activations": 0, "outputs": {}})));
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_emit_over_nats_with_a_reply() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let yaml = "pattern: event_driven\ntriggers: [code_change]\nmax_activations: 1\nagents:\n  a: {builtin: echo, on: [code_change]}\n";
    let nats = ltmc_tests::nats_url();
    let engine = engine(&store, 60_000).with_workers(Workers::connect(&nats).await?);
    let run_id = engine.start(wf(yaml), None, None, None).await?;
    let driving = ltmc_tests::drive_in_background(&engine, &run_id);
    let client = async_nats::connect(&nats).await?;
    let ask = |subject: String, body: &'static str| {
        let client = client.clone();
        async move {
            // The driver subscribes as it starts: ask until someone answers.
            for _ in 0..100 {
                if let Ok(Ok(reply)) =
                    tokio::time::timeout(Duration::from_millis(200), client.request(subject.clone(), body.into())).await
                {
                    return serde_json::from_slice::<Value>(&reply.payload).unwrap_or_default();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Value::Null
        }
    };
    let refused = ask(format!("ltmc.emit.{run_id}.deploy"), "{}").await;
    assert_eq!(refused["ok"], json!(false), "{refused}");
    assert!(refused["error"].as_str().unwrap_or("").contains("not a trigger"), "{refused}");
    let bad = ask(format!("ltmc.emit.{run_id}.code_change"), "not json").await;
    assert_eq!(bad["ok"], json!(false), "{bad}");
    let ok = ask(format!("ltmc.emit.{run_id}.code_change"), r#"{"sha": "abc"}"#).await;
    assert_eq!(ok, json!({"ok": true, "seq": 1}));
    let state = tokio::time::timeout(Duration::from_secs(10), driving).await???;
    assert_eq!(state.status, RunStatus::Completed);
    let evs = events(&store, &run_id).await;
    assert_eq!(of_type(&evs, "TriggerReceived")[0]["source"], json!("nats"));
    assert_eq!(of_type(&evs, "StepCompleted")[0]["output"]["data"], json!({"sha": "abc"}));
    Ok(())
}
