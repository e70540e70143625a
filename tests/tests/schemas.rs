//! The JSON Schemas in `schemas/` are generated from the Rust types; this test fails when they
//! drift. Regenerate with `LTMC_UPDATE_SCHEMAS=1 cargo test -p ltmc-tests --test schemas` and
//! review the diff.

use ltmc_core::RecordedEvent;
use ltmc_core::protocol::{AgentResult, AgentTask, WorkerReport, WorkerTask};
use ltmc_core::run::RunEvent;
use ltmc_core::session::SessionEvent;
use ltmc_core::spec::{self, Workflow};
use std::path::PathBuf;

fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("event-envelope.json", schemars::schema_for!(RecordedEvent)),
        ("run-events.json", schemars::schema_for!(RunEvent)),
        ("session-events.json", schemars::schema_for!(SessionEvent)),
        ("workflow-file.json", spec::file_schema()),
        ("agents-file.json", spec::agents_file_schema()),
        ("workflow-definition.json", schemars::schema_for!(Workflow)),
        ("agent-task.json", schemars::schema_for!(AgentTask)),
        ("agent-result.json", schemars::schema_for!(AgentResult)),
        ("worker-task.json", schemars::schema_for!(WorkerTask)),
        ("worker-report.json", schemars::schema_for!(WorkerReport)),
    ]
}

#[test]
fn checked_in_schemas_match_the_types() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let update = std::env::var("LTMC_UPDATE_SCHEMAS").is_ok_and(|v| v == "1");
    let mut drifted = Vec::new();
    for (name, schema) in schemas() {
        let text = format!("{}\n", serde_json::to_string_pretty(&schema)?);
        let path = dir.join(name);
        if update {
            std::fs::write(&path, &text)?;
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drifted.push(name);
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas drifted from the types: {drifted:?}; run LTMC_UPDATE_SCHEMAS=1 cargo test -p ltmc-tests --test schemas and review the diff"
    );
    Ok(())
}

#[test]
fn run_events_validate_against_their_schema_shape() -> anyhow::Result<()> {
    // Every event type the decider emits is one of the schema's variants.
    let schema = serde_json::to_value(schemars::schema_for!(RunEvent))?;
    let text = schema.to_string();
    for t in ["RunStarted", "StepReady", "StepDispatched", "StepCompleted", "StepFailed", "RunCompleted", "RunFailed"] {
        assert!(text.contains(&format!("\"{t}\"")), "{t} missing from the run event schema");
    }
    Ok(())
}
