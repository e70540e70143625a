//! Fixtures that pin compatibility: the seed guide's workflow shapes (all five run as written,
//! with the agents file saying how each agent runs), and event histories
//! recorded from real runs. A change that stops an old history from folding, or alters the
//! hash chain's canonical form, fails here.

use ltmc_core::RecordedEvent;
use ltmc_core::hash::first_broken_link;
use ltmc_core::run::{RunEvent, RunState, RunStatus, evolve};
use ltmc_core::spec::{self, ParseOptions};
use ltmc_engine::store::read_stream_all;
use ltmc_engine::{Engine, EngineOptions};
use std::path::PathBuf;

fn fixture(path: &str) -> anyhow::Result<(String, PathBuf)> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(path);
    Ok((std::fs::read_to_string(&p)?, p))
}

fn seed_options() -> anyhow::Result<ParseOptions> {
    let (agents, p) = fixture("seed/agents.yaml")?;
    Ok(ParseOptions { agents: spec::parse_agents_str(&agents, &p.display().to_string())?, ..Default::default() })
}

#[tokio::test]
async fn the_seed_shapes_this_version_runs_run_as_written() -> anyhow::Result<()> {
    let (store, dir) = ltmc_tests::sqlite_store().await?;
    let engine = Engine::new(store.clone(), EngineOptions { retry_attempts: 0, ..Default::default() });
    for name in ["sequential.json", "parallel.json", "parallel-code-review.json", "complete-development-workflow.json"]
    {
        let (text, p) = fixture(&format!("seed/{name}"))?;
        let wf = spec::parse_str(&text, &p.display().to_string(), &seed_options()?)?;
        let state = engine.run(wf, None, dir.path().to_path_buf(), None).await?;
        assert_eq!(state.status, RunStatus::Completed, "{name}: {:?}", state.failure);
        let events = read_stream_all(&store, &format!("run-{}", state.run_id)).await?;
        if name == "sequential.json" {
            // handoff_validation is on and `test` requires code_review_passed, which dev reports.
            assert!(events.iter().any(|e| e.event_type == "HandoffAccepted" && e.data["step"] == "test"));
        }
        if name == "complete-development-workflow.json" {
            // Testing starts with review, once development completes, and runs beside it.
            let dispatched_at = |step: &str| {
                events
                    .iter()
                    .find(|e| e.event_type == "StepDispatched" && e.data["step"] == step)
                    .map(|e| e.stream_version)
                    .unwrap_or(0)
            };
            let completed_at = |step: &str| {
                events
                    .iter()
                    .find(|e| e.event_type == "StepCompleted" && e.data["step"] == step)
                    .map(|e| e.stream_version)
                    .unwrap_or(0)
            };
            assert!(completed_at("development") < dispatched_at("testing"));
            assert!(dispatched_at("review") < completed_at("testing"), "review runs while testing does");
            assert!(dispatched_at("documentation") < completed_at("testing"), "so do the docs");
            let points: Vec<&str> = events
                .iter()
                .filter(|e| e.event_type == "CoordinationPointReached")
                .filter_map(|e| e.data["point"].as_str())
                .collect();
            assert_eq!(points, ["requirements_complete", "code_complete", "tests_pass"]);
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_seed_event_driven_dict_runs_with_the_agents_file() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    let options = EngineOptions { idle_timeout: std::time::Duration::from_millis(300), ..Default::default() };
    let engine = Engine::new(store.clone(), options);
    let (text, p) = fixture("seed/event-driven.json")?;
    let wf = spec::parse_str(&text, &p.display().to_string(), &seed_options()?)?;
    assert!(wf.dynamic_agent_allocation);
    assert_eq!(wf.triggers.keys().collect::<Vec<_>>(), ["code_change", "review_complete", "test_failure"]);
    let run_id = engine.start(wf, None, None, None).await?;
    engine.emit(&run_id, "test_failure", serde_json::json!({"test": "login"}), "emit").await?;
    let state = engine.drive(&run_id, None, None).await?;
    assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
    assert_eq!(state.output.as_ref().map(|o| o["ended"].clone()), Some(serde_json::json!("idle")));
    let events = read_stream_all(&store, &format!("run-{run_id}")).await?;
    let chain: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "TriggerReceived")
        .map(|e| format!("{} -> {}", e.data["trigger"].as_str().unwrap_or("?"), e.data["activated"]))
        .collect();
    assert_eq!(
        chain,
        [
            r#"test_failure -> ["developer-1"]"#,
            r#"code_change -> ["tester-2"]"#,
            r#"review_complete -> ["review_bot-3"]"#
        ]
    );
    assert!(state.facts.contains("tests_pass") && state.facts.contains("review_approved"));
    Ok(())
}

fn replay(path: &str) -> anyhow::Result<(Vec<RecordedEvent>, RunState)> {
    let (text, _) = fixture(path)?;
    let events: Vec<RecordedEvent> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let mut state = RunState::default();
    for e in &events {
        state = evolve(state, &RunEvent::from_parts(&e.event_type, &e.data)?)?;
    }
    Ok((events, state))
}

#[test]
fn recorded_histories_still_fold_and_verify() -> anyhow::Result<()> {
    let (events, state) = replay("histories/completed-after-retry.jsonl")?;
    assert_eq!(first_broken_link(&events), None, "the hash chain's canonical form changed");
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.steps[0].attempts, 2, "dev failed once, then succeeded after its backoff");
    assert!(state.facts.contains("code_review_passed") && state.facts.contains("review_approved"));

    let (events, state) = replay("histories/refused-hand-over.jsonl")?;
    assert_eq!(first_broken_link(&events), None);
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.failure.as_deref().is_some_and(|f| f.contains("tests_pass")), "{:?}", state.failure);
    Ok(())
}
