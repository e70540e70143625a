//! `ltmc events`.

use ltmc_core::RecordedEvent;
use ltmc_core::names;
use ltmc_engine::EventStore;
use ltmc_engine::config::Config;

use crate::exit::{self, BadInput};
use crate::term;

/// Writes one line to stdout; a closed pipe (`ltmc events | head`) ends the command quietly.
fn emit(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

fn print(e: &RecordedEvent, json: bool) -> anyhow::Result<()> {
    if let Some(reason) = e.unreadable_reason() {
        // The rest of the log is still served; the stand-in says where the damage is.
        eprintln!(
            "{}",
            term::line(&format!(
                "warning: the event at position {} (stream {}, version {}) cannot be read: {reason}; `ltmc audit \
                 --verify` lists every damaged stream",
                e.global_position, e.stream_id, e.stream_version
            ))
        );
    }
    if json {
        emit(&term::json(serde_json::to_string(e)?))?;
    } else {
        let data = e.data.to_string();
        let data = if data.len() > 120 { format!("{}…", &data[..data.floor_char_boundary(120)]) } else { data };
        let line = format!(
            "{:>8}  {}  {}@{}  {}  {}",
            e.global_position,
            e.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            e.stream_id,
            e.stream_version,
            e.event_type,
            data
        );
        emit(&term::line(&line))?;
    }
    Ok(())
}

pub(crate) async fn events(
    stream: Option<&str>,
    after: i64,
    limit: usize,
    follow: bool,
    json: bool,
) -> anyhow::Result<u8> {
    if let Some(s) = stream {
        names::validate_stream_id(s).map_err(|e| BadInput(format!("--stream: {e}")))?;
    }
    let config = Config::from_env()?;
    let store = crate::open::for_reading(&config).await?;
    if follow {
        let mut sub = store.subscribe(after);
        loop {
            let e = sub.next().await?;
            if stream.is_none_or(|s| s == e.stream_id) {
                print(&e, json)?;
            }
        }
    }
    // `--after` is a global position in both cases.
    let events: Vec<RecordedEvent> = match stream {
        Some(s) => ltmc_engine::store::read_stream_all(&store, s)
            .await?
            .into_iter()
            .filter(|e| e.global_position > after)
            .take(limit)
            .collect(),
        None => store.read_all(after, limit).await?,
    };
    for e in &events {
        print(e, json)?;
    }
    Ok(exit::OK)
}
