//! `ltmc run` and `ltmc resume`.

use anyhow::Context;
use ltmc_core::run::{RunEvent, RunState, RunStatus};
use ltmc_core::spec::AgentKind;
use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::config::Config;
use ltmc_engine::relay;
use ltmc_engine::workers::Workers;
use ltmc_engine::{Engine, EventStore, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cmd_runs::summary;
use crate::exit::{self, BadInput};

/// Reads a file for the spec parser, refusing huge or non-UTF-8 files before parsing.
pub(crate) fn read_source(path: &Path) -> anyhow::Result<String> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| BadInput(format!("{shown}: cannot read the file: {e}")))?;
    if meta.len() > spec::MAX_FILE_BYTES as u64 {
        return Err(BadInput(format!(
            "{shown}: file is {} bytes; the limit is {} bytes",
            meta.len(),
            spec::MAX_FILE_BYTES
        ))
        .into());
    }
    let bytes = std::fs::read(path).map_err(|e| BadInput(format!("{shown}: cannot read the file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| BadInput(format!("{shown}: the file is not UTF-8 text: {e}")).into())
}

/// Parses and validates a workflow file (and its agents file).
pub(crate) fn load_workflow(file: &Path, agents: Option<&Path>) -> anyhow::Result<Workflow> {
    let mut opts = ParseOptions {
        default_name: file.file_stem().map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                .take(64)
                .collect()
        }),
        ..Default::default()
    };
    if let Some(a) = agents {
        opts.agents = spec::parse_agents_str(&read_source(a)?, &a.display().to_string())?;
    }
    Ok(spec::parse_str(&read_source(file)?, &file.display().to_string(), &opts)?)
}

fn progress() -> ltmc_engine::driver::Progress {
    Arc::new(|e: &RunEvent| match e {
        RunEvent::RunStarted(s) => eprintln!("run {} started (workflow {})", s.run_id, s.workflow),
        RunEvent::StepDispatched(d) if d.attempt > 1 => {
            eprintln!("  → {} ({}, attempt {})", d.step, d.agent, d.attempt)
        }
        RunEvent::StepDispatched(d) => eprintln!("  → {} ({})", d.step, d.agent),
        RunEvent::StepCompleted(c) => eprintln!("  ✓ {} ({} ms)", c.step, c.duration_ms),
        RunEvent::StepFailed(f) => {
            eprintln!("  ✗ {}: {}{}", f.step, f.error, if f.will_retry { " (retrying)" } else { "" })
        }
        RunEvent::RunCompleted(_) => eprintln!("run completed"),
        RunEvent::RunFailed(f) => eprintln!("run failed: {}", f.reason),
        RunEvent::HandoffAccepted(h) => {
            eprintln!("  ⇢ {} accepted: prerequisites met ({})", h.step, h.requires.join(", "))
        }
        RunEvent::HandoffRefused(h) => eprintln!("  ⇥ {} refused: unmet {}", h.step, h.unmet.join(", ")),
        RunEvent::VotesAggregated(v) => {
            let votes: Vec<String> = v.votes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let agreed = if v.agreed { "agreed" } else { "disagreed" };
            eprintln!("  Σ {} votes ({agreed}): {}", v.mode, votes.join(", "));
        }
        RunEvent::CoordinationPointReached(c) => eprintln!("  ◆ {} reached (by {})", c.point, c.by),
        RunEvent::StepReady(_) => {}
    })
}

pub(crate) async fn run(file: &Path, agents: Option<&Path>, input: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let workflow = load_workflow(file, agents)?;
    let input = input
        .map(|s| serde_json::from_str(s).map_err(|e| BadInput(format!("--input is not valid JSON: {e}"))))
        .transpose()?;
    let base_dir = file
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let base_dir = base_dir.canonicalize().unwrap_or(base_dir);
    let store = Store::open(&config.database_url).await.context("opening the event store")?;
    let relay = config.relay_options().map(|o| relay::spawn(store.clone(), o));
    let needs_workers = workflow.agents.values().any(|d| d.kind() == Ok(AgentKind::Worker));
    let engine = engine(&store, &config, needs_workers).await?;
    let state = engine.run(workflow, input, base_dir, Some(progress())).await?;
    finish(&store, relay, state, json).await
}

pub(crate) async fn resume(run_id: &str, dir: Option<PathBuf>, json: bool) -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let store = Store::open(&config.database_url).await.context("opening the event store")?;
    let relay = config.relay_options().map(|o| relay::spawn(store.clone(), o));
    let engine = engine(&store, &config, config.nats_url.is_some()).await?;
    let state = engine.drive(run_id, dir, Some(progress())).await?;
    finish(&store, relay, state, json).await
}

/// The engine, connected to NATS workers when `workers` and LTMC_NATS_URL is set.
pub(crate) async fn engine(store: &Store, config: &Config, workers: bool) -> anyhow::Result<Engine> {
    let engine = Engine::new(store.clone(), config.engine.clone());
    match (&config.nats_url, workers) {
        (Some(url), true) => {
            let w = Workers::connect(url).await.context("connecting to NATS for workers")?;
            Ok(engine.with_workers(w))
        }
        _ => Ok(engine),
    }
}

/// Prints the result, waits briefly for the relay to publish the run, and picks the exit code.
async fn finish(store: &Store, relay: Option<relay::RelayHandle>, state: RunState, json: bool) -> anyhow::Result<u8> {
    if let Some(relay) = relay {
        // Give the relay (ours, or another process holding the lease) a moment to publish the
        // run, but never hang on NATS: stop waiting once it makes no progress for 2 s.
        let head = store.head_position().await?;
        let (mut seen, mut progressed_at) = (-1, Instant::now());
        loop {
            let published = relay.published().max(store.checkpoint("relay").await?);
            if published >= head {
                break;
            }
            if published > seen {
                (seen, progressed_at) = (published, Instant::now());
            } else if progressed_at.elapsed() > Duration::from_secs(2) {
                let why = relay.last_error().map(|e| format!(" ({e})")).unwrap_or_default();
                eprintln!(
                    "warning: NATS has not acknowledged every event of this run{why}; they are safe in the log \
                     and `ltmc relay` publishes them when NATS is reachable"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        relay.stop();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary(&state))?);
    } else if let Some(output) = &state.output {
        match output {
            serde_json::Value::String(s) => println!("{s}"),
            other => println!("{}", serde_json::to_string_pretty(other)?),
        }
    }
    Ok(if state.status == RunStatus::Completed { exit::OK } else { exit::RUN_FAILED })
}
