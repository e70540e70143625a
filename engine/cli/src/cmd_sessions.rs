//! `ltmc session …` and `ltmc memory …`: sessions of agents and their shared memory.

use anyhow::Context;
use ltmc_core::event::MAX_EVENT_BYTES;
use ltmc_core::session::{Command, SessionEvent, SessionState, SessionStatus, Write};
use ltmc_engine::config::Config;
use ltmc_engine::relay;
use ltmc_engine::sessions::Sessions;
use ltmc_engine::{EventStore, Store};
use serde_json::{Value, json};
use std::io::Read;

use crate::exit::{self, BadInput};
use crate::{args, term};

/// Who the CLI writes as when `--writer` is not given.
const CLI_ACTOR: &str = "cli";

struct Ctx {
    store: Store,
    config: Config,
    sessions: Sessions,
}

/// The store; one that does not exist is created only for a verb `writing` (create, join, put…).
async fn open(writing: bool) -> anyhow::Result<Ctx> {
    let config = Config::from_env()?;
    let store =
        if writing { crate::open::for_writing(&config).await? } else { crate::open::for_reading(&config).await? };
    Ok(Ctx { sessions: Sessions::new(store.clone()), store, config })
}

impl Ctx {
    /// Decides and appends `command`, then brings the views (and JetStream) up to date.
    async fn execute(&self, name: &str, command: Command, actor: &str) -> anyhow::Result<SessionState> {
        // A refusal wrote nothing: there is nothing to project or relay.
        let state = self.sessions.execute(name, command, actor).await?;
        let relay = self.config.relay_options().map(|o| relay::spawn(self.store.clone(), crate::cmd_run::quiet(o)));
        crate::cmd_run::sync(&self.store, relay).await?;
        Ok(state)
    }

    /// The session, refused when it was never created.
    async fn existing(&self, name: &str, until: Option<i64>) -> anyhow::Result<SessionState> {
        let state = self.sessions.load_until(name, until).await?;
        if state.status == SessionStatus::Missing {
            let hint = if until.is_some() { " at that position" } else { "" };
            return Err(BadInput(format!("no session {name}{hint}; `ltmc session list` lists them")).into());
        }
        Ok(state)
    }
}

/// What `ltmc session` is asked to do.
pub(crate) enum SessionAction {
    Create { name: String, description: Option<String> },
    List { limit: usize },
    Show { name: String },
    Join { name: String, agent: String, role: Option<String> },
    Heartbeat { name: String, agent: String },
    Leave { name: String, agent: String },
    Close { name: String, reason: Option<String> },
}

/// A session name, checked before the database is opened.
fn session_name(name: &str) -> Result<(), BadInput> {
    ltmc_core::names::validate("session", name).map_err(|e| BadInput(e.to_string()))
}

pub(crate) async fn session(action: SessionAction, json: bool) -> anyhow::Result<u8> {
    let (name, command) = match action {
        SessionAction::List { limit } => return list(&open(false).await?, limit, json).await,
        SessionAction::Show { name } => {
            session_name(&name)?;
            let state = open(false).await?.existing(&name, None).await?;
            print_session(&state, json)?;
            return Ok(exit::OK);
        }
        SessionAction::Create { name, description } => (name, Command::Create { description }),
        SessionAction::Join { name, agent, role } => (name, Command::Join { agent, role }),
        SessionAction::Heartbeat { name, agent } => (name, Command::Heartbeat { agent }),
        SessionAction::Leave { name, agent } => (name, Command::Leave { agent }),
        SessionAction::Close { name, reason } => (name, Command::Close { reason }),
    };
    ltmc_core::session::validate(&name, &command).map_err(|e| BadInput(e.to_string()))?;
    let state = open(true).await?.execute(&name, command, CLI_ACTOR).await?;
    if json {
        print_session(&state, true)?;
    } else {
        eprintln!("session {name}: {} (version {})", state.status.as_str(), state.version);
    }
    Ok(exit::OK)
}

fn session_json(s: &SessionState) -> Value {
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|(agent, m)| json!({"agent": agent, "role": m.role, "active": m.active, "heartbeats": m.heartbeats}))
        .collect();
    let memory: Vec<Value> = s
        .memory
        .iter()
        .filter(|(_, e)| e.value.is_some())
        .map(|(key, e)| json!({"key": key, "version": e.version, "writer": e.writer, "position": e.position}))
        .collect();
    json!({
        "session": s.name,
        "status": s.status.as_str(),
        "description": s.description,
        "version": s.version,
        "agents": members,
        "memory": memory,
    })
}

fn print_session(s: &SessionState, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", term::json(serde_json::to_string_pretty(&session_json(s))?));
        return Ok(());
    }
    // Roles, descriptions and writers were checked when written, but the rows are not ours.
    let mut lines = vec![format!("session  {} ({}, version {})", s.name, s.status.as_str(), s.version)];
    if let Some(d) = &s.description {
        lines.push(format!("about    {d}"));
    }
    for (agent, m) in &s.members {
        let state = if m.active { "active" } else { "left" };
        let role = m.role.as_deref().map(|r| format!(" as {r}")).unwrap_or_default();
        lines.push(format!("agent    {agent}{role}: {state}, {} heartbeats", m.heartbeats));
    }
    for (key, e) in s.memory.iter().filter(|(_, e)| e.value.is_some()) {
        lines.push(format!("memory   {key} v{} by {} at position {}", e.version, e.writer, e.position));
    }
    for l in &lines {
        outln!("{}", term::line(l));
    }
    Ok(())
}

async fn list(ctx: &Ctx, limit: usize, json: bool) -> anyhow::Result<u8> {
    let streams = ctx.store.list_streams("session", limit).await?;
    let mut rows = Vec::with_capacity(streams.len());
    for info in &streams {
        let name = info.stream_id.trim_start_matches("session-");
        let s = ctx.sessions.load(name).await?;
        rows.push(json!({
            "session": s.name,
            "status": s.status.as_str(),
            "active_agents": s.active_members().count(),
            "keys": s.values().count(),
            "created_at": info.created_at,
            "updated_at": info.updated_at,
        }));
    }
    if json {
        outln!("{}", term::json(serde_json::to_string_pretty(&rows)?));
    } else {
        outln!("{:<24} {:<8} {:>6} {:>6}  UPDATED", "SESSION", "STATUS", "AGENTS", "KEYS");
        for r in &rows {
            let row = format!(
                "{:<24} {:<8} {:>6} {:>6}  {}",
                r["session"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
                r["active_agents"].to_string(),
                r["keys"].to_string(),
                r["updated_at"].as_str().unwrap_or("")
            );
            outln!("{}", term::line(&row));
        }
    }
    Ok(exit::OK)
}

/// What `ltmc memory` is asked to do.
pub(crate) enum MemoryAction {
    Put { session: String, key: String, value: String, writer: Option<String>, if_version: Option<u64> },
    Delete { session: String, key: String, writer: Option<String>, if_version: Option<u64> },
    Get { session: String, key: String, at: Option<i64> },
    List { session: String, at: Option<i64> },
    History { session: String, key: Option<String> },
}

/// A value given on the command line: JSON, or `-` for JSON on stdin (at most 1 MiB, UTF-8).
fn parse_value(text: &str) -> anyhow::Result<Value> {
    let text = if text == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_EVENT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .context("reading the value from stdin")?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(BadInput(format!("the value on stdin is larger than {MAX_EVENT_BYTES} bytes")).into());
        }
        String::from_utf8(bytes).map_err(|e| BadInput(format!("the value on stdin is not UTF-8 text: {e}")))?
    } else {
        text.to_owned()
    };
    let value = serde_json::from_str(&text).map_err(|e| {
        BadInput(format!(
            "the value is not JSON ({e}); quote text as JSON, for example '\"pep8\"', or pass - to read it from stdin"
        ))
    })?;
    args::storable("the value", &value, MAX_EVENT_BYTES)?;
    Ok(value)
}

pub(crate) async fn memory(action: MemoryAction, json: bool) -> anyhow::Result<u8> {
    if let MemoryAction::Get { at: Some(p), .. } | MemoryAction::List { at: Some(p), .. } = action
        && p < 0
    {
        return Err(BadInput("--at must be a position (0 or more)".into()).into());
    }
    // Names, keys and the value are checked before the database is opened.
    match &action {
        MemoryAction::Put { session, key, .. }
        | MemoryAction::Delete { session, key, .. }
        | MemoryAction::Get { session, key, .. } => {
            session_name(session)?;
            ltmc_core::session::validate_key(key).map_err(|e| BadInput(e.to_string()))?;
        }
        MemoryAction::List { session, .. } | MemoryAction::History { session, key: None } => session_name(session)?,
        MemoryAction::History { session, key: Some(key) } => {
            session_name(session)?;
            ltmc_core::session::validate_key(key).map_err(|e| BadInput(e.to_string()))?;
        }
    }
    match action {
        MemoryAction::Put { session, key, value, writer, if_version } => {
            let value = parse_value(&value)?;
            write(&session, key, Some(value), writer, if_version, json).await
        }
        MemoryAction::Delete { session, key, writer, if_version } => {
            write(&session, key, None, writer, if_version, json).await
        }
        MemoryAction::Get { session, key, at } => {
            let state = open(false).await?.existing(&session, at).await?;
            let Some(entry) = state.memory.get(&key).filter(|e| e.value.is_some()) else {
                let when = at.map(|p| format!(" at position {p}")).unwrap_or_default();
                return Err(BadInput(format!("memory key {key} has no value in session {session}{when}")).into());
            };
            let value = entry.value.clone().unwrap_or(Value::Null);
            if json {
                let out = json!({"key": key, "value": value, "version": entry.version, "writer": entry.writer, "position": entry.position});
                outln!("{}", term::json(serde_json::to_string_pretty(&out)?));
            } else {
                outln!("{}", term::json(serde_json::to_string_pretty(&value)?));
            }
            Ok(exit::OK)
        }
        MemoryAction::List { session, at } => {
            let state = open(false).await?.existing(&session, at).await?;
            let rows: Vec<Value> = state
                .memory
                .iter()
                .filter_map(|(k, e)| e.value.as_ref().map(|v| json!({"key": k, "version": e.version, "writer": e.writer, "position": e.position, "value": v})))
                .collect();
            if json {
                outln!("{}", term::json(serde_json::to_string_pretty(&rows)?));
            } else {
                outln!("{:<32} {:>7} {:<16} VALUE", "KEY", "VERSION", "WRITER");
                for r in &rows {
                    let row = format!(
                        "{:<32} {:>7} {:<16} {}",
                        r["key"].as_str().unwrap_or(""),
                        r["version"].to_string(),
                        r["writer"].as_str().unwrap_or(""),
                        shorten(&r["value"].to_string(), 60)
                    );
                    outln!("{}", term::line(&row));
                }
            }
            Ok(exit::OK)
        }
        MemoryAction::History { session, key } => history(&open(false).await?, &session, key.as_deref(), json).await,
    }
}

async fn write(
    session: &str,
    key: String,
    value: Option<Value>,
    writer: Option<String>,
    if_version: Option<u64>,
    json: bool,
) -> anyhow::Result<u8> {
    let writer = writer.unwrap_or_else(|| CLI_ACTOR.to_owned());
    let command =
        Command::Write { writer: writer.clone(), writes: vec![Write { key: key.clone(), value, if_version }] };
    ltmc_core::session::validate(session, &command).map_err(|e| BadInput(e.to_string()))?;
    let state = open(true).await?.execute(session, command, &writer).await?;
    let version = state.key_version(&key);
    if json {
        outln!(
            "{}",
            json!({"session": session, "key": key, "version": version, "position": state.memory.get(&key).map(|e| e.position)})
        );
    } else {
        eprintln!("{session}/{key}: version {version}");
    }
    Ok(exit::OK)
}

async fn history(ctx: &Ctx, session: &str, key: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let events = ltmc_engine::store::read_stream_all(&ctx.store, &ltmc_core::session::stream_id(session)).await?;
    if events.is_empty() {
        return Err(BadInput(format!("no session {session}; `ltmc session list` lists them")).into());
    }
    let mut rows = Vec::new();
    for e in &events {
        let (k, op, version, writer, value) = match SessionEvent::from_parts(&e.event_type, &e.data)? {
            SessionEvent::MemoryWritten(w) => (w.key, "write", w.version, w.writer, Some(w.value)),
            SessionEvent::MemoryDeleted(d) => (d.key, "delete", d.version, d.writer, None),
            _ => continue,
        };
        if key.is_some_and(|want| want != k) {
            continue;
        }
        rows.push(json!({
            "position": e.global_position, "at": e.recorded_at, "key": k, "operation": op,
            "version": version, "writer": writer, "value": value,
        }));
    }
    if json {
        outln!("{}", term::json(serde_json::to_string_pretty(&rows)?));
    } else {
        outln!("{:>9} {:<27} {:<24} {:<6} {:>7} {:<16} VALUE", "POSITION", "AT", "KEY", "OP", "VERSION", "WRITER");
        for r in &rows {
            let row = format!(
                "{:>9} {:<27} {:<24} {:<6} {:>7} {:<16} {}",
                r["position"].to_string(),
                r["at"].as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or(""),
                r["operation"].as_str().unwrap_or(""),
                r["version"].to_string(),
                r["writer"].as_str().unwrap_or(""),
                if r["value"].is_null() && r["operation"] == "delete" {
                    "-".into()
                } else {
                    shorten(&r["value"].to_string(), 60)
                }
            );
            outln!("{}", term::line(&row));
        }
    }
    Ok(exit::OK)
}

/// `text` cut to `max` characters with an ellipsis.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}
