//! `ltmc runs` and `ltmc status`.

use ltmc_core::run::{RunState, RunStatus, StepStatus};
use ltmc_engine::config::Config;
use ltmc_engine::{Engine, EventStore, driver, store};
use serde_json::{Value, json};

use crate::{args, exit, term};

/// A run as JSON: id, workflow, status, output or failure, and each step.
pub(crate) fn summary(s: &RunState) -> Value {
    let steps: Vec<Value> = s
        .plan
        .as_ref()
        .map(|p| {
            p.steps
                .iter()
                .zip(&s.steps)
                .map(|(def, st)| {
                    json!({
                        "step": def.name,
                        "agent": def.agent,
                        "status": step_status(st.status, s.status),
                        "attempts": st.attempts,
                        "error": st.error,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "run_id": s.run_id,
        "workflow": s.workflow.as_ref().map(|w| w.name.clone()),
        "definition_hash": s.definition_hash,
        "status": s.status.as_str(),
        "output": s.output,
        "failure": s.failure,
        "unmet": s.unmet,
        "facts": s.facts,
        "points_reached": s.reached,
        "version": s.version,
        "steps": steps,
    })
}

fn step_status(s: StepStatus, run: RunStatus) -> &'static str {
    match s {
        // A step left waiting or running when the run ended will never finish.
        StepStatus::Pending | StepStatus::Ready | StepStatus::Dispatched { .. } if run.is_terminal() => "abandoned",
        StepStatus::Pending => "pending",
        StepStatus::Ready => "ready",
        StepStatus::Dispatched { .. } => "running",
        StepStatus::Completed => "completed",
        StepStatus::Failed => "failed",
    }
}

async fn open() -> anyhow::Result<Engine> {
    let config = Config::from_env()?;
    let store = crate::open::for_reading(&config).await?;
    Ok(Engine::new(store, config.engine))
}

pub(crate) async fn list(limit: usize, json: bool) -> anyhow::Result<u8> {
    let engine = open().await?;
    let streams = engine.store().list_streams("run", limit).await?;
    let mut rows = Vec::new();
    for s in &streams {
        let run_id = s.stream_id.trim_start_matches("run-");
        let state = match engine.load(run_id).await {
            Ok(state) => state,
            // A damaged run is named and the others are still listed.
            Err(e) if !matches!(e, driver::Error::Store(store::Error::Unavailable(_))) => {
                eprintln!("{}", term::line(&format!("warning: run {run_id} cannot be shown: {e}")));
                rows.push(json!({
                    "run_id": run_id,
                    "workflow": null,
                    "status": "damaged",
                    "steps_completed": null,
                    "steps": null,
                    "started_at": s.created_at,
                    "updated_at": s.updated_at,
                }));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let done = state.steps.iter().filter(|st| st.status == StepStatus::Completed).count();
        rows.push(json!({
            "run_id": run_id,
            "workflow": state.workflow.as_ref().map(|w| w.name.clone()),
            "status": state.status.as_str(),
            "steps_completed": done,
            "steps": state.steps.len(),
            "started_at": s.created_at,
            "updated_at": s.updated_at,
        }));
    }
    if json {
        outln!("{}", term::json(serde_json::to_string_pretty(&rows)?));
    } else {
        outln!("{:<38} {:<24} {:<10} {:>9} STARTED", "RUN", "WORKFLOW", "STATUS", "STEPS");
        for r in &rows {
            let row = format!(
                "{:<38} {:<24} {:<10} {:>9} {}",
                r["run_id"].as_str().unwrap_or(""),
                r["workflow"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
                if r["steps"].is_null() { "-".to_owned() } else { format!("{}/{}", r["steps_completed"], r["steps"]) },
                r["started_at"].as_str().unwrap_or(""),
            );
            outln!("{}", term::line(&row));
        }
    }
    Ok(exit::OK)
}

pub(crate) async fn status(run_id: &str, json: bool) -> anyhow::Result<u8> {
    let run_id = args::run_id(run_id)?;
    let engine = open().await?;
    let state = engine.load(&run_id).await?;
    let s = summary(&state);
    if json {
        outln!("{}", term::json(serde_json::to_string_pretty(&s)?));
        return Ok(exit::OK);
    }
    // Failures quote agents' stderr and facts come from agents: every line is escaped.
    let mut lines = vec![
        format!("run      {}", state.run_id),
        format!("workflow {}", s["workflow"].as_str().unwrap_or("")),
        format!("status   {}", state.status.as_str()),
    ];
    if let Some(f) = &state.failure {
        lines.push(format!("failure  {f}"));
    }
    if !state.unmet.is_empty() {
        lines.push(format!("unmet    {}", state.unmet.join(", ")));
    }
    if !state.reached.is_empty() {
        lines.push(format!("points   {}", state.reached.iter().cloned().collect::<Vec<_>>().join(", ")));
    }
    if !state.facts.is_empty() {
        lines.push(format!("facts    {}", state.facts.iter().cloned().collect::<Vec<_>>().join(", ")));
    }
    lines.push(format!("events   {}", state.version));
    lines.push(String::new());
    lines.push(format!("{:<24} {:<20} {:<10} {:>8}  ERROR", "STEP", "AGENT", "STATUS", "ATTEMPTS"));
    for st in s["steps"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{:<24} {:<20} {:<10} {:>8}  {}",
            st["step"].as_str().unwrap_or(""),
            st["agent"].as_str().unwrap_or(""),
            st["status"].as_str().unwrap_or(""),
            st["attempts"],
            st["error"].as_str().unwrap_or(""),
        ));
    }
    for l in &lines {
        outln!("{}", term::line(l));
    }
    Ok(exit::OK)
}
