//! An acknowledged emit is never dropped: emits racing the idle end of an event-driven run are
//! either taken by the run (a `TriggerReceived` with their version) or refused because the run
//! has ended — never acknowledged and then left out. Hundreds of races on both backends.

use ltmc_core::run::{RunStatus, stream_id};
use ltmc_core::spec::{self, ParseOptions};
use ltmc_engine::driver::Error;
use ltmc_engine::store::read_stream_all;
use ltmc_engine::{Engine, EngineOptions, Store};
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Runs raced; each gets three emits at random moments around its idle end (30 ms).
const RUNS: usize = 120;
const EMITS_PER_RUN: usize = 3;

const WORKFLOW: &str = "pattern: event_driven
triggers: [tick]
idle_timeout: 0.03
max_activations: 1000
dynamic_agent_allocation: true
agents:
  a: {builtin: noop, on: [tick]}
";

async fn emits_racing_the_end_of_a_run_are_taken_or_refused(store: Store, _dir: &Path) -> anyhow::Result<()> {
    let workflow = spec::parse_str(WORKFLOW, "race.yaml", &ParseOptions::default())?;
    let engine = Engine::new(store.clone(), EngineOptions::default());
    let (mut acknowledged, mut refused) = (0, 0);
    for _ in 0..RUNS {
        let run_id = engine.start(workflow.clone(), None, None, None).await?;
        let driving = ltmc_tests::drive_in_background(&engine, &run_id);
        let mut emitters = Vec::new();
        for _ in 0..EMITS_PER_RUN {
            let (engine, run_id) = (engine.clone(), run_id.clone());
            let delay = Duration::from_millis(fastrand::u64(0..80));
            emitters.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                engine.emit(&run_id, "tick", json!(null), "emit").await
            }));
        }
        let mut acked = BTreeSet::new();
        for e in emitters {
            match e.await? {
                Ok(seq) => {
                    acked.insert(seq);
                }
                Err(Error::Rejected(why)) if why.to_string().contains("already") => refused += 1,
                Err(other) => anyhow::bail!("emit failed: {other}"),
            }
        }
        acknowledged += acked.len();
        let state = tokio::time::timeout(Duration::from_secs(20), driving).await???;
        assert_eq!(state.status, RunStatus::Completed, "{:?}", state.failure);
        let taken: BTreeSet<i64> = read_stream_all(&store, &stream_id(&run_id))
            .await?
            .iter()
            .filter(|e| e.event_type == "TriggerReceived")
            .filter_map(|e| e.data["seq"].as_i64())
            .collect();
        let lost: Vec<_> = acked.difference(&taken).collect();
        assert!(lost.is_empty(), "run {run_id}: emits {lost:?} were acknowledged and never taken (taken: {taken:?})");
        // Nothing emitted is left over for a resume to find either.
        let resumed = engine.drive(&run_id, None, None).await?;
        assert_eq!(resumed.triggers_seq, state.triggers_seq);
    }
    // Both sides of the race were exercised.
    assert!(acknowledged > 0 && refused > 0, "acknowledged {acknowledged}, refused {refused}");
    Ok(())
}

ltmc_tests::on_both_backends!(emits_racing_the_end_of_a_run_are_taken_or_refused);
