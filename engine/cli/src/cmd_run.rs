//! `ltmc run` and `ltmc resume`.

use anyhow::Context;
use ltmc_core::run::{RunEvent, RunState, RunStatus};
use ltmc_core::spec::AgentKind;
use ltmc_core::spec::{self, ParseOptions, Workflow};
use ltmc_engine::config::Config;
use ltmc_engine::relay;
use ltmc_engine::workers::Workers;
use ltmc_engine::{Engine, EventStore, Store};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cmd_runs::summary;
use crate::exit::{self, BadInput};
use crate::{args, term};
use ltmc_core::event::MAX_EVENT_BYTES;

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
    // Read at most one byte past the limit: a FIFO or a device has no size to check beforehand.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(spec::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| BadInput(format!("{shown}: cannot read the file: {e}")))?;
    if bytes.len() > spec::MAX_FILE_BYTES {
        return Err(BadInput(format!("{shown}: the file is larger than {} bytes", spec::MAX_FILE_BYTES)).into());
    }
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
    Arc::new(|e: &RunEvent| {
        if let Some(text) = progress_line(e) {
            // Step errors carry agents' stderr, and names come from files: one escaped line each.
            eprintln!("{}", term::line(&text));
        }
    })
}

/// The progress line for a recorded event (none for `StepReady` and `AgentActivated`).
fn progress_line(e: &RunEvent) -> Option<String> {
    Some(match e {
        RunEvent::RunStarted(s) => format!("run {} started (workflow {})", s.run_id, s.workflow),
        RunEvent::StepDispatched(d) if d.attempt > 1 => format!("  → {} ({}, attempt {})", d.step, d.agent, d.attempt),
        RunEvent::StepDispatched(d) => format!("  → {} ({})", d.step, d.agent),
        RunEvent::StepCompleted(c) => format!("  ✓ {} ({} ms)", c.step, c.duration_ms),
        RunEvent::StepFailed(f) => {
            format!("  ✗ {}: {}{}", f.step, f.error, if f.will_retry { " (retrying)" } else { "" })
        }
        RunEvent::RunCompleted(c) => match c.output.get("ended").and_then(|e| e.as_str()) {
            Some("idle") => "run completed: idle, no agent running and no new event".to_owned(),
            Some("max_activations") => "run completed: the activation cap was reached".to_owned(),
            _ => "run completed".to_owned(),
        },
        RunEvent::RunFailed(f) => format!("run failed: {}", f.reason),
        RunEvent::HandoffAccepted(h) => {
            format!("  ⇢ {} accepted: prerequisites met ({})", h.step, h.requires.join(", "))
        }
        RunEvent::HandoffRefused(h) => format!("  ⇥ {} refused: unmet {}", h.step, h.unmet.join(", ")),
        RunEvent::VotesAggregated(v) => {
            let votes: Vec<String> = v.votes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let agreed = if v.agreed { "agreed" } else { "disagreed" };
            format!("  Σ {} votes ({agreed}): {}", v.mode, votes.join(", "))
        }
        RunEvent::CoordinationPointReached(c) => format!("  ◆ {} reached (by {})", c.point, c.by),
        RunEvent::TriggerReceived(t) if t.activated.is_empty() => {
            format!("  ⚡ {} (from {}): starts nothing", t.trigger, t.source)
        }
        RunEvent::TriggerReceived(t) => {
            format!("  ⚡ {} (from {}) starts {}", t.trigger, t.source, t.activated.join(", "))
        }
        RunEvent::StepReady(_) | RunEvent::AgentActivated(_) => return None,
    })
}

/// `--emit TYPE` or `--emit TYPE=JSON`, checked against the workflow's triggers.
fn parse_emits(emits: &[String], workflow: &Workflow) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
    if !emits.is_empty() && workflow.triggers.is_empty() {
        return Err(BadInput("--emit is for `pattern: event_driven` workflows".into()).into());
    }
    emits
        .iter()
        .map(|e| {
            let (trigger, data) = match e.split_once('=') {
                Some((t, json)) => (
                    t,
                    serde_json::from_str(json).map_err(|err| {
                        BadInput(format!("--emit {}=…: the data is not valid JSON: {err}", term::short(t, 80)))
                    })?,
                ),
                None => (e.as_str(), serde_json::Value::Null),
            };
            // Checked before the run starts, so a refused event never leaves a run without a driver.
            let shown = term::short(trigger, 80);
            args::storable(&format!("--emit {shown}: the data"), &data, ltmc_engine::triggers::MAX_DATA_BYTES)?;
            if !workflow.triggers.contains_key(trigger) {
                let known: Vec<&str> = workflow.triggers.keys().map(String::as_str).collect();
                return Err(BadInput(format!(
                    "--emit {shown}: not a trigger of this workflow; its triggers are {}",
                    known.join(", ")
                ))
                .into());
            }
            Ok((trigger.to_owned(), data))
        })
        .collect()
}

pub(crate) async fn run(
    file: &Path,
    agents: Option<&Path>,
    input: Option<&str>,
    emits: &[String],
    json: bool,
) -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let workflow = load_workflow(file, agents)?;
    let input = input.map(|s| args::json("--input", s, MAX_EVENT_BYTES)).transpose()?;
    // The run's first event pins the definition and the input together: when they cannot fit,
    // say so now rather than after the database is opened.
    let run_input = input.as_ref().unwrap_or(&workflow.input);
    let pinned = ltmc_engine::store::json_len(&workflow) + ltmc_engine::store::json_len(run_input);
    if pinned > MAX_EVENT_BYTES {
        return Err(BadInput(format!(
            "the workflow and its input are {pinned} bytes as JSON; a run's first event holds both and \
             the limit is {MAX_EVENT_BYTES} bytes"
        ))
        .into());
    }
    let emits = parse_emits(emits, &workflow)?;
    let base_dir = file
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let base_dir = base_dir.canonicalize().unwrap_or(base_dir);
    let store = Store::open(&config.database_url).await.context("opening the event store")?;
    let relay = config.relay_options().map(|o| relay::spawn(store.clone(), quiet(o)));
    let engine = engine(&store, &config, &workflow).await?;
    let progress = progress();
    let run_id = engine.start(workflow, input, Some(&base_dir), Some(&progress)).await?;
    for (trigger, data) in emits {
        engine.emit(&run_id, &trigger, data, "emit").await?;
    }
    let state = engine.drive(&run_id, Some(base_dir), Some(progress)).await.map_err(|e| interrupted(e, &run_id))?;
    finish(&store, relay, state, json).await
}

/// An error that stopped driving a run. When the store or NATS failed under it, the run is still
/// running in the log, so say how to go on.
fn interrupted(e: ltmc_engine::driver::Error, run_id: &str) -> anyhow::Error {
    use ltmc_engine::driver::Error as E;
    let resumable = matches!(e, E::Store(_) | E::Busy(_) | E::Workers(_));
    let e = anyhow::Error::new(e);
    if resumable {
        e.context(format!("run {run_id} was interrupted and is still running; `ltmc resume {run_id}` continues it"))
    } else {
        e
    }
}

/// `ltmc emit RUN TRIGGER [--data JSON]`: an event into a running event-driven run.
pub(crate) async fn emit(run_id: &str, trigger: &str, data: Option<&str>) -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let run_id = &args::run_id(run_id)?;
    ltmc_core::names::validate("trigger", trigger).map_err(|e| BadInput(e.to_string()))?;
    let data = data
        .map(|s| args::json("--data", s, ltmc_engine::triggers::MAX_DATA_BYTES))
        .transpose()?
        .unwrap_or(serde_json::Value::Null);
    let store = Store::open(&config.database_url).await.context("opening the event store")?;
    let engine = Engine::new(store, config.engine.clone());
    let seq = engine.emit(run_id, trigger, data, "emit").await?;
    eprintln!("{trigger} emitted into run {run_id} (trigger {seq})");
    Ok(exit::OK)
}

pub(crate) async fn resume(run_id: &str, dir: Option<PathBuf>, json: bool) -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let run_id = &args::run_id(run_id)?;
    let store = Store::open(&config.database_url).await.context("opening the event store")?;
    let relay = config.relay_options().map(|o| relay::spawn(store.clone(), quiet(o)));
    let pinned = Engine::new(store.clone(), config.engine.clone()).load(run_id).await?.workflow;
    let engine = match pinned {
        Some(workflow) => engine(&store, &config, &workflow).await?,
        None => Engine::new(store.clone(), config.engine.clone()),
    };
    let state = engine.drive(run_id, dir, Some(progress())).await.map_err(|e| interrupted(e, run_id))?;
    finish(&store, relay, state, json).await
}

/// The engine for `workflow`, connected to NATS (with LTMC_NATS_URL) when it has worker agents,
/// which need it, or is event-driven, which takes `<prefix>.emit.<run>.<type>` requests if it can.
pub(crate) async fn engine(store: &Store, config: &Config, workflow: &Workflow) -> anyhow::Result<Engine> {
    let engine = Engine::new(store.clone(), config.engine.clone());
    let workers = workflow.agents.values().any(|d| d.kind() == Ok(AgentKind::Worker));
    let Some(url) = config.nats_url.as_deref().filter(|_| workers || !workflow.triggers.is_empty()) else {
        return Ok(engine);
    };
    match Workers::connect_with(url, config.nats_names.clone()).await {
        Ok(w) => Ok(engine.with_workers(w)),
        Err(e) if workers => Err(anyhow::Error::new(e).context("connecting to NATS for the worker agents")),
        Err(e) => {
            eprintln!("warning: {}; events can still be emitted with `ltmc emit`", term::line(&e.to_string()));
            Ok(engine)
        }
    }
}

/// Prints the result, waits briefly for the relay to publish the run, brings the SQL views up to
/// date, and picks the exit code.
async fn finish(store: &Store, relay: Option<relay::RelayHandle>, state: RunState, json: bool) -> anyhow::Result<u8> {
    sync(store, relay).await?;
    if json {
        outln!("{}", term::json(serde_json::to_string_pretty(&summary(&state))?));
    } else if let Some(output) = &state.output {
        match output {
            // Agents' output: printed as text for people (`--json` gives it exactly).
            serde_json::Value::String(s) => outln!("{}", term::block(s)),
            other => outln!("{}", term::json(serde_json::to_string_pretty(other)?)),
        }
    }
    Ok(if state.status == RunStatus::Completed { exit::OK } else { exit::RUN_FAILED })
}

/// A command's relay: it does not log its failures, the command reports them ([`sync`]).
pub(crate) fn quiet(opts: relay::RelayOptions) -> relay::RelayOptions {
    relay::RelayOptions { log_failures: false, ..opts }
}

/// Brings the SQL views up to the log's head as it is now (everything this command appended,
/// memory writes included) and, with a relay, waits briefly for it to publish that far. Not
/// further: events other processes append meanwhile are theirs to wait for (with 50 `ltmc run`
/// at once, each one's catch-up chased the others' appends).
pub(crate) async fn sync(store: &Store, relay: Option<relay::RelayHandle>) -> anyhow::Result<()> {
    let through = store.head_position().await?;
    if let Err(e) = ltmc_engine::projector::catch_up_to(store, through).await {
        let e = term::line(&e.to_string()).into_owned();
        eprintln!("warning: the SQL views were not updated ({e}); `ltmc projections follow` catches up");
    }
    if let Some(relay) = relay {
        // Give the relay (ours, or another process holding the lease) a moment to publish the
        // run, but never hang on NATS: stop waiting once it makes no progress for 2 s.
        let (mut seen, mut progressed_at) = (-1, Instant::now());
        loop {
            let published = relay.published().max(store.checkpoint("relay").await?);
            if published >= through {
                break;
            }
            if relay.is_mismatched() || relay.is_out_of_storage() {
                // Waiting will not help: the stream is another database's, or JetStream is full.
                let why = relay.last_error().map(|e| term::line(&e).into_owned()).unwrap_or_default();
                let safe = if why.contains("safe in the log") { "" } else { "; the events are safe in the log" };
                eprintln!("warning: not published to NATS: {why}{safe}");
                break;
            }
            if published > seen {
                (seen, progressed_at) = (published, Instant::now());
            } else if progressed_at.elapsed() > Duration::from_secs(2) {
                let why = relay.last_error().map(|e| format!(" ({})", term::line(&e.to_string()))).unwrap_or_default();
                eprintln!(
                    "warning: NATS has not acknowledged every event{why}; they are safe in the log \
                     and `ltmc relay` publishes them when NATS is reachable"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        relay.stop();
    }
    Ok(())
}
