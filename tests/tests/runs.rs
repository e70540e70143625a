//! Runs end to end on both backends: the order of events, hand-over of outputs, failures,
//! retries, command agents, timeouts that kill the process group, and recovery after a crash.

use ltmc_core::RecordedEvent;
use ltmc_core::run::{RunStatus, stream_id};
use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::store::read_stream_all;
use ltmc_engine::{Engine, EngineOptions, Store};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

fn wf(yaml: &str) -> Workflow {
    spec::parse_str(yaml, "test.yaml", &ParseOptions::default()).expect("valid workflow")
}

async fn events(store: &Store, run_id: &str) -> Vec<RecordedEvent> {
    read_stream_all(store, &stream_id(run_id)).await.expect("readable stream")
}

ltmc_tests::on_both_backends!(
    sequential_hands_each_output_to_the_next,
    parallel_dispatches_every_agent_at_once,
    dependency_graph_joins_outputs,
    failures_retry_then_fail_the_run,
    command_agents_speak_the_protocol,
    timeouts_kill_the_whole_process_group,
    a_crashed_run_resumes_without_repeating_finished_steps,
    hostile_or_huge_outputs_are_recorded_safely,
    builtin_agents_honour_their_timeout,
    facts_gate_hand_overs_and_decide_success,
    votes_decide_parallel_runs,
    a_waiting_hand_over_proceeds_when_another_branch_reports_the_facts,
);

async fn sequential_hands_each_output_to_the_next(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let w = wf(
        "pattern: sequential\ninput: {n: 1}\nagents:\n  dev: {builtin: echo}\n  test: {builtin: echo}\n  review: {builtin: echo}\n",
    );
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.output, Some(json!({"n": 1})));
    let evs = events(&store, &state.run_id).await;
    assert_eq!(
        ltmc_tests::types_and_steps(&evs),
        [
            "RunStarted",
            "StepReady:dev",
            "StepDispatched:dev",
            "StepCompleted:dev",
            "StepReady:test",
            "StepDispatched:test",
            "StepCompleted:test",
            "StepReady:review",
            "StepDispatched:review",
            "StepCompleted:review",
            "RunCompleted",
        ]
    );
    assert!(evs.windows(2).all(|w| w[0].stream_version + 1 == w[1].stream_version));
    assert!(evs.iter().all(|e| e.metadata.run_id.as_deref() == Some(state.run_id.as_str())));
    // The pinned definition and its hash are in RunStarted.
    assert!(evs[0].data["definition_hash"].as_str().is_some_and(|h| h.starts_with("sha256:")));
    assert_eq!(evs[0].data["definition"]["steps"][1]["needs"], json!(["dev"]));
    Ok(())
}

async fn parallel_dispatches_every_agent_at_once(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let w = wf(r#"{"pattern": "parallel", "agents": {"frontend": {"builtin": "noop"}, "backend": {"builtin": "noop"},
        "database": {"builtin": "noop"}, "api": {"builtin": "noop"}}, "coordination_points": ["integration"], "result_aggregation": true}"#);
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    let evs = events(&store, &state.run_id).await;
    // All four are dispatched in the run's first append, before any completes.
    let first_completion = evs.iter().position(|e| e.event_type == "StepCompleted").unwrap_or(0);
    let dispatched_before = evs[..first_completion].iter().filter(|e| e.event_type == "StepDispatched").count();
    assert_eq!(dispatched_before, 4);
    let first_append = evs.iter().filter(|e| e.global_position < evs[0].global_position + 9).count();
    assert_eq!(first_append, 9, "RunStarted + 4 x (ready, dispatched) share one append");
    // result_aggregation: true counts the votes (mode `all`): every agent completed.
    let counted = evs.iter().find(|e| e.event_type == "VotesAggregated").map(|e| e.data.clone()).unwrap_or_default();
    assert_eq!(counted["mode"], json!("all"));
    assert_eq!(counted["agreed"], json!(true));
    assert_eq!(counted["votes"].as_object().map(|m| m.len()), Some(4));
    let output = state.output.clone().unwrap_or_default();
    assert_eq!(output["decision"], json!("completed"));
    assert_eq!(output["outputs"].as_object().map(|m| m.len()), Some(4));
    Ok(())
}

async fn dependency_graph_joins_outputs(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let w = wf(
        "agents:\n  e: {builtin: echo}\nsteps:\n  - {name: a, agent: e, input: 1}\n  - {name: b, agent: e, needs: [a]}\n  - {name: c, agent: e, needs: [a], input: 3}\n  - {name: d, agent: e, needs: [b, c]}\n",
    );
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.output, Some(json!({"b": 1, "c": 3})));
    let order = ltmc_tests::types_and_steps(&events(&store, &state.run_id).await);
    let at = |s: &str| order.iter().position(|x| x == s).unwrap_or(usize::MAX);
    assert!(at("StepCompleted:a") < at("StepDispatched:b") && at("StepCompleted:a") < at("StepDispatched:c"));
    assert!(at("StepCompleted:b") < at("StepDispatched:d") && at("StepCompleted:c") < at("StepDispatched:d"));
    Ok(())
}

async fn failures_retry_then_fail_the_run(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    // Fails on attempt 1, succeeds on attempt 2.
    let flaky = wf(
        "pattern: sequential\nagents:\n  flaky:\n    run: [sh, -c, 'test \"$LTMC_ATTEMPT\" -ge 2 || { echo boom >&2; exit 7; }']\n    retries: 2\n",
    );
    let state = engine.run(flaky, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    let evs = events(&store, &state.run_id).await;
    let failed: Vec<&RecordedEvent> = evs.iter().filter(|e| e.event_type == "StepFailed").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].data["will_retry"], json!(true));
    assert!(failed[0].data["error"].as_str().is_some_and(|e| e.contains("status 7") && e.contains("boom")));
    // The retry waited its backoff (the engine's default: 1 s, doubling, with jitter: 0.5-1 s
    // before the second attempt), measured between the two recorded events.
    let wait = failed[0].data["retry_in_ms"].as_u64().unwrap_or(0);
    assert!((500..=1000).contains(&wait), "{wait}");
    let retried = evs.iter().find(|e| e.event_type == "StepDispatched" && e.data["attempt"] == json!(2));
    let retried = retried.ok_or_else(|| anyhow::anyhow!("no second attempt"))?;
    let waited = (retried.recorded_at - failed[0].recorded_at).num_milliseconds();
    assert!(waited >= wait as i64, "dispatched {waited} ms after the failure, backoff {wait} ms");
    // The engine's defaults were pinned with the run.
    assert_eq!(evs[0].data["definition"]["agents"]["flaky"]["backoff"], json!(1.0));
    assert_eq!(evs[0].data["definition"]["agents"]["flaky"]["timeout"], json!(300.0));

    let broken = wf(
        "pattern: sequential\nagents:\n  a: {builtin: noop}\n  b: {builtin: fail, params: {message: nope}, retries: 1, backoff: 0.01}\n  c: {builtin: noop}\n",
    );
    let state = engine.run(broken, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Failed);
    let order = ltmc_tests::types_and_steps(&events(&store, &state.run_id).await);
    assert_eq!(order.iter().filter(|e| *e == "StepFailed:b").count(), 2, "one retry, then give up");
    assert_eq!(order.last().map(String::as_str), Some("RunFailed:b"));
    assert!(!order.iter().any(|e| e.ends_with(":c")), "nothing runs after a failed step");
    Ok(())
}

async fn command_agents_speak_the_protocol(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let script = dir.join("agent.py");
    std::fs::write(
        &script,
        "import json, os, sys\ntask = json.load(sys.stdin)\nprint('thinking...')\n\
         print(json.dumps({'output': {'got': task['input'], 'step': task['step'], 'key': task['idempotency_key'], 'env': os.environ['LTMC_STEP'], 'ansi': '\\x1b[31mred'}}))\n",
    )?;
    let w = wf(&format!(
        "pattern: sequential\ninput: {{x: 42}}\nagents:\n  py: {{run: [python3, {}]}}\n  plain: {{run: [sh, -c, 'cat >/dev/null; echo plain words']}}\n  flood: {{run: [sh, -c, 'head -c 400000 /dev/zero | tr \"\\\\0\" a']}}\n",
        script.display()
    ));
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    let evs = events(&store, &state.run_id).await;
    let outputs: Vec<&Value> =
        evs.iter().filter(|e| e.event_type == "StepCompleted").map(|e| &e.data["output"]).collect();
    assert_eq!(outputs[0]["got"], json!({"x": 42}));
    assert_eq!(outputs[0]["env"], json!("py"));
    assert_eq!(outputs[0]["key"], json!(format!("{}/py/1", state.run_id)));
    assert_eq!(outputs[0]["ansi"], json!("\u{1b}[31mred"), "escapes are kept as data");
    assert_eq!(outputs[1], &json!("plain words"));
    assert_eq!(outputs[2]["truncated"], json!(true), "a flood of output is capped");
    assert!(outputs[2]["text"].as_str().is_some_and(|t| t.len() <= ltmc_engine::agents::MAX_OUTPUT_BYTES));
    Ok(())
}

fn processes_matching(marker: &str) -> usize {
    std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

async fn timeouts_kill_the_whole_process_group(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let marker = format!("{}.{}", 70 + fastrand::u32(0..20), fastrand::u32(100_000..999_999));
    // A grandchild in the background, and a shell that ignores SIGTERM.
    let w = wf(&format!(
        "pattern: sequential\nagents:\n  hang:\n    run: [sh, -c, 'trap \"\" TERM; sleep {marker} & sleep {marker}']\n    timeout: 0.3\n    retries: 0\n"
    ));
    let started = Instant::now();
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    let took = started.elapsed();
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.failure.as_deref().is_some_and(|f| f.contains("timed out")), "{:?}", state.failure);
    assert!(took < Duration::from_secs(10), "timeout + grace, not the agent's 70 s ({took:?})");
    assert_eq!(processes_matching(&marker), 0, "no process of the agent survives");
    Ok(())
}

async fn a_crashed_run_resumes_without_repeating_finished_steps(store: Store, dir: &Path) -> anyhow::Result<()> {
    let log = dir.join("calls.log");
    let gate = dir.join("gate");
    // `first` records its call; `second` records its call and waits for the gate file.
    let w = wf(&format!(
        "pattern: sequential\nagents:\n  first: {{run: [sh, -c, 'echo \"first $LTMC_IDEMPOTENCY_KEY\" >> {log}']}}\n  second: {{run: [sh, -c, 'echo \"second $LTMC_IDEMPOTENCY_KEY\" >> {log}; while [ ! -e {gate} ]; do sleep 0.02; done; echo done']}}\n",
        log = log.display(),
        gate = gate.display()
    ));
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let run_id = engine.start(w, None, Some(dir), None).await?;
    let driver = {
        let (engine, run_id) = (engine.clone(), run_id.clone());
        tokio::spawn(async move { engine.drive(&run_id, None, None).await })
    };
    // Crash the driver while `second` runs (its dispatch is recorded; its outcome is not).
    let seen_second = ltmc_tests::eventually(Duration::from_secs(10), || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).is_ok_and(|s| s.contains("second")) }
    })
    .await;
    assert!(seen_second);
    driver.abort();
    let _ = driver.await;

    // A new engine (as after a restart) folds the run and re-dispatches only `second`.
    std::fs::write(&gate, "")?;
    let engine = Engine::new(store.clone(), EngineOptions::default());
    // No folder given: the one recorded in RunStarted is used.
    let state = engine.drive(&run_id, None, None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.output, Some(json!("done")));
    let calls = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.starts_with("first")).count(), 1, "finished steps never run again: {calls}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("second")).count(), 2);
    let key = format!("{run_id}/second/1");
    assert!(
        lines.iter().filter(|l| l.starts_with("second")).all(|l| l.ends_with(&key)),
        "same idempotency key: {calls}"
    );
    let evs = events(&store, &run_id).await;
    assert_eq!(evs.iter().filter(|e| e.event_type == "StepCompleted").count(), 2);
    Ok(())
}

async fn hostile_or_huge_outputs_are_recorded_safely(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    // A NUL inside a JSON string (Postgres jsonb cannot store U+0000), and five parallel agents
    // whose outputs together exceed an event: the run completes and records what fits.
    std::fs::write(dir.join("nul.py"), "import json\nprint(json.dumps({'output': 'a' + chr(0) + 'b'}))\n")?;
    std::fs::write(dir.join("big.py"), "import json\nprint(json.dumps({'output': 'x' * 200000}))\n")?;
    let mut yaml = String::from("pattern: parallel\nagents:\n  nul: {run: [python3, nul.py]}\n");
    for i in 1..=5 {
        yaml.push_str(&format!("  b{i}: {{run: [python3, big.py]}}\n"));
    }
    let w = wf(&yaml);
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    let evs = events(&store, &state.run_id).await;
    let nul = evs
        .iter()
        .find(|e| e.event_type == "StepCompleted" && e.data["step"] == json!("nul"))
        .map(|e| &e.data["output"]);
    assert_eq!(nul, Some(&json!("a\u{fffd}b")));
    let done = evs.last().map(|e| e.data["output"].clone()).unwrap_or_default();
    assert_eq!(done["truncated"], json!(true), "the map of final outputs is too large for one event");
    assert_eq!(done["outputs_in_steps"].as_array().map(Vec::len), Some(6));
    Ok(())
}

async fn builtin_agents_honour_their_timeout(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let w =
        wf("pattern: sequential\nagents:\n  slow: {builtin: sleep, params: {ms: 5000}, timeout: 0.1, retries: 0}\n");
    let started = Instant::now();
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.failure.as_deref().is_some_and(|f| f.contains("timed out")), "{:?}", state.failure);
    assert!(started.elapsed() < Duration::from_secs(4));
    Ok(())
}

async fn facts_gate_hand_overs_and_decide_success(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    std::fs::write(
        dir.join("dev.py"),
        "import json, sys\ntask = json.load(sys.stdin)\nfacts = task['input'] or []\nprint(json.dumps({'output': 'built', 'facts': facts}))\n",
    )?;
    std::fs::write(dir.join("review.py"), "import json\nprint(json.dumps({'facts': ['review_approved']}))\n")?;
    std::fs::write(dir.join("bad.py"), "import json\nprint(json.dumps({'facts': ['not a name']}))\n")?;
    let yaml = "pattern: sequential\nhandoff_validation: true\nsuccess_criteria: [review_approved]\nagents:\n  dev: {run: [python3, dev.py]}\n  test: {builtin: noop, requires: [code_review_passed]}\n  review: {run: [python3, review.py]}\n";
    let w = wf(yaml);

    // The prerequisite holds: the hand-over is accepted and recorded, the criteria are met.
    let state = engine.run(w.clone(), Some(json!(["code_review_passed"])), dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    let order = ltmc_tests::types_and_steps(&events(&store, &state.run_id).await);
    let at = |s: &str| order.iter().position(|x| x == s).unwrap_or(usize::MAX);
    assert!(
        at("StepReady:test") < at("HandoffAccepted:test") && at("HandoffAccepted:test") < at("StepDispatched:test"),
        "{order:?}"
    );

    // It does not: the hand-over is refused with the unmet list and the run fails.
    let state = engine.run(w, Some(json!([])), dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Failed);
    let evs = events(&store, &state.run_id).await;
    let refused = evs.iter().find(|e| e.event_type == "HandoffRefused").map(|e| e.data.clone()).unwrap_or_default();
    assert_eq!(refused["unmet"], json!(["code_review_passed"]));
    assert_eq!(refused["from"], json!(["dev"]));
    assert!(!evs.iter().any(|e| e.event_type == "StepDispatched" && e.data["step"] == json!("test")));

    // Criteria unmet at the end fail the run; an invalid fact fails the step.
    let w = wf(
        "pattern: sequential\nsuccess_criteria: [docs_updated]\nagents:\n  a: {builtin: noop, params: {facts: [other]}}\n",
    );
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.failure.as_deref().is_some_and(|f| f.contains("docs_updated")), "{:?}", state.failure);
    let w = wf("pattern: sequential\nagents:\n  a: {run: [python3, bad.py], retries: 0}\n");
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.failure.as_deref().is_some_and(|f| f.contains("invalid fact")), "{:?}", state.failure);
    let w = wf("pattern: sequential\nagents:\n  a: {builtin: noop, params: {facts: [1]}, retries: 0}\n");
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert!(state.failure.as_deref().is_some_and(|f| f.contains("invalid fact")), "{:?}", state.failure);
    Ok(())
}

/// `design` reports `design_ok` late, on a branch `build` does not need: with the `fail` policy
/// the hand-over to `build` is refused at once; with `wait` it proceeds when the fact arrives;
/// when no step is left to report it, the waiting run fails with the unmet list.
async fn a_waiting_hand_over_proceeds_when_another_branch_reports_the_facts(
    store: Store,
    dir: &Path,
) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let yaml = |policy: &str, fact: &str| {
        format!(
            "handoff_validation: true\nhandoff_policy: {policy}\nagents:\n  prep: {{builtin: noop}}\n  designer: {{builtin: sleep, params: {{ms: 150, facts: [{fact}]}}}}\n  builder: {{builtin: noop, requires: [design_ok]}}\nsteps:\n  - {{name: prepare, agent: prep}}\n  - {{name: design, agent: designer}}\n  - {{name: build, agent: builder, needs: [prepare]}}\n"
        )
    };
    let failed = engine.run(wf(&yaml("fail", "design_ok")), None, dir.to_path_buf(), None).await?;
    assert_eq!(failed.status, RunStatus::Failed, "fail: only the facts of the steps it needs count");
    assert_eq!(failed.unmet, ["design_ok"]);

    let state = engine.run(wf(&yaml("wait", "design_ok")), None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    let evs = events(&store, &state.run_id).await;
    let pos = |t: &str, step: &str| evs.iter().position(|e| e.event_type == t && e.data["step"] == step);
    let refused = pos("HandoffRefused", "build").expect("refused first");
    assert_eq!(evs[refused].data["waiting"], json!(true));
    assert_eq!(evs[refused].data["unmet"], json!(["design_ok"]));
    assert!(pos("StepCompleted", "design") < pos("HandoffAccepted", "build"), "accepted once the fact arrived");
    assert!(pos("HandoffAccepted", "build") < pos("StepDispatched", "build"));

    // In a parallel group with aggregation too: the waiting reviewer votes once the fact arrives.
    let parallel = "pattern: parallel\naggregation: all\nhandoff_validation: true\nhandoff_policy: wait\nagents:\n  \
                    designer: {builtin: sleep, params: {ms: 100, facts: [design_ok]}}\n  \
                    reviewer: {builtin: noop, requires: [design_ok]}\n";
    let voted = engine.run(wf(parallel), None, dir.to_path_buf(), None).await?;
    assert_eq!(voted.status, RunStatus::Completed, "{:?}", voted.failure);
    assert_eq!(voted.steps[1].attempts, 1, "the waiting reviewer was handed over and voted");

    let stuck = engine.run(wf(&yaml("wait", "something_else")), None, dir.to_path_buf(), None).await?;
    assert_eq!(stuck.status, RunStatus::Failed);
    assert_eq!(stuck.unmet, ["design_ok"]);
    let reason = stuck.failure.clone().unwrap_or_default();
    assert!(reason.contains("no step is left running"), "{reason}");
    Ok(())
}

async fn votes_decide_parallel_runs(store: Store, dir: &Path) -> anyhow::Result<()> {
    let engine = Engine::new(store.clone(), EngineOptions { retry_attempts: 0, ..Default::default() });
    let review = |mode: &str, votes: [&str; 3]| {
        wf(&format!(
            "pattern: parallel\naggregation: {mode}\nagents:\n  security: {{builtin: echo, params: {{vote: {}}}}}\n  performance: {{builtin: echo, params: {{vote: {}}}}}\n  style: {{builtin: echo, params: {{vote: {}}}}}\n",
            votes[0], votes[1], votes[2]
        ))
    };
    let counted = |evs: &[RecordedEvent]| {
        evs.iter().find(|e| e.event_type == "VotesAggregated").map(|e| e.data.clone()).unwrap_or_default()
    };

    // Consensus: all approve → completed with the decision; one dissent → failed, visible.
    let state = engine.run(review("consensus_required", ["approve"; 3]), None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert_eq!(state.output.clone().unwrap_or_default()["decision"], json!("approve"));
    let state = engine
        .run(review("consensus_required", ["approve", "reject", "approve"]), None, dir.to_path_buf(), None)
        .await?;
    assert_eq!(state.status, RunStatus::Failed);
    let c = counted(&events(&store, &state.run_id).await);
    assert_eq!(c["agreed"], json!(false));
    assert_eq!(c["votes"]["performance"], json!("reject"));
    assert!(state.failure.as_deref().is_some_and(|f| f.contains("performance=reject")), "{:?}", state.failure);

    // Majority: two of three carry it, even with a failed agent.
    let w = wf(
        "pattern: parallel\naggregation: majority\nagents:\n  a: {builtin: echo, params: {vote: approve}}\n  b: {builtin: echo, params: {vote: approve}}\n  c: {builtin: fail}\n",
    );
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    let c = counted(&events(&store, &state.run_id).await);
    assert_eq!((c["decision"].clone(), c["votes"]["c"].clone()), (json!("approve"), json!("failed")));

    // First: the quick agent decides; the slow one is abandoned.
    let w = wf(
        "pattern: parallel\naggregation: first\nagents:\n  quick: {builtin: echo, params: {vote: done}}\n  slow: {builtin: sleep, params: {ms: 5000}}\n",
    );
    let started = Instant::now();
    let state = engine.run(w, None, dir.to_path_buf(), None).await?;
    assert_eq!(state.status, RunStatus::Completed);
    assert!(started.elapsed() < Duration::from_secs(4), "the run did not wait for the slow agent");
    assert_eq!(counted(&events(&store, &state.run_id).await)["votes"].as_object().map(|m| m.len()), Some(1));

    // Any: one success is enough; none is not.
    let w = wf("pattern: parallel\naggregation: any\nagents:\n  a: {builtin: fail}\n  b: {builtin: noop}\n");
    assert_eq!(engine.run(w, None, dir.to_path_buf(), None).await?.status, RunStatus::Completed);
    let w = wf("pattern: parallel\naggregation: any\nagents:\n  a: {builtin: fail}\n  b: {builtin: fail}\n");
    assert_eq!(engine.run(w, None, dir.to_path_buf(), None).await?.status, RunStatus::Failed);
    Ok(())
}

#[tokio::test]
async fn reserved_and_malformed_votes_fail_the_attempt() -> anyhow::Result<()> {
    let (store, dir) = ltmc_tests::sqlite_store().await?;
    let engine = Engine::new(store, EngineOptions { retry_attempts: 0, ..Default::default() });
    for (params, expect) in [
        ("{vote: failed}", "reserved"),
        ("{vote: 1}", "votes must be strings; got 1"),
        ("{facts: [true]}", "facts must be strings; got true"),
        ("{facts: ok}", "facts must be a list of strings"),
    ] {
        let w =
            wf(&format!("pattern: parallel\naggregation: any\nagents:\n  a: {{builtin: noop, params: {params}}}\n"));
        let state = engine.run(w, None, dir.path().to_path_buf(), None).await?;
        assert_eq!(state.status, RunStatus::Failed, "{params}");
        let errors = format!("{:?} {:?}", state.failure, state.steps[0].error);
        assert!(errors.contains(expect), "{params}: {errors}");
    }
    Ok(())
}
