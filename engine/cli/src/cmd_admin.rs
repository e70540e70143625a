//! `ltmc migrate`, `ltmc relay`, `ltmc audit`.

use anyhow::Context;
use ltmc_core::hash::first_broken_link;
use ltmc_engine::config::Config;
use ltmc_engine::relay;
use ltmc_engine::{EventStore, Store};
use serde_json::json;
use std::collections::BTreeMap;

use crate::exit::{self, BadInput};

pub(crate) async fn migrate() -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    // Opening a store applies pending migrations (checksummed; an edited migration is refused).
    let store = Store::open(&config.database_url).await.context("migrating the event store")?;
    eprintln!("{} store at {} is migrated", store.backend(), redact(&config.database_url));
    Ok(exit::OK)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

pub(crate) async fn relay() -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let Some(opts) = config.relay_options() else {
        return Err(BadInput("`ltmc relay` needs LTMC_NATS_URL (for example nats://127.0.0.1:4222)".into()).into());
    };
    let store = Store::open(&config.database_url).await.context("opening the event store")?;
    eprintln!(
        "relaying {} to {} (stream {}, subjects {}.>); Ctrl-C stops",
        redact(&config.database_url),
        opts.nats_url,
        opts.stream_name,
        opts.subject_prefix
    );
    let handle = relay::spawn(store, opts);
    tokio::signal::ctrl_c().await.ok();
    handle.stop();
    Ok(exit::OK)
}

pub(crate) async fn audit(verify: bool, json: bool) -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let store = Store::open(&config.database_url).await.context("opening the event store")?;
    // Group the log by stream (events arrive in position order, so versions ascend).
    let mut streams: BTreeMap<String, Vec<ltmc_core::RecordedEvent>> = BTreeMap::new();
    let mut after = 0;
    let mut total = 0usize;
    loop {
        let batch = store.read_all(after, 5000).await?;
        let Some(last) = batch.last() else { break };
        after = last.global_position;
        total += batch.len();
        for e in batch {
            streams.entry(e.stream_id.clone()).or_default().push(e);
        }
    }
    let mut broken = Vec::new();
    if verify {
        for (stream, events) in &streams {
            if let Some(version) = first_broken_link(events) {
                broken.push(json!({ "stream": stream, "first_altered_version": version }));
            }
        }
    }
    if json {
        println!("{}", json!({ "events": total, "streams": streams.len(), "verified": verify, "broken": broken }));
    } else {
        println!("{total} events in {} streams", streams.len());
        if verify {
            if broken.is_empty() {
                println!("every hash chain verifies");
            }
            for b in &broken {
                // A tampered row's stream id is not ours to print raw.
                let stream = crate::term::line(b["stream"].as_str().unwrap_or(""));
                println!("ALTERED: stream {stream} from version {}", b["first_altered_version"]);
            }
        }
    }
    Ok(if broken.is_empty() { exit::OK } else { exit::RUN_FAILED })
}
