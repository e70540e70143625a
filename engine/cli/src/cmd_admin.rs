//! `ltmc migrate`, `ltmc relay`, `ltmc audit`.

use anyhow::Context;
use ltmc_engine::Store;
use ltmc_engine::config::Config;
use ltmc_engine::relay;

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
    let store = crate::open::for_reading(&config).await?;
    let report = ltmc_engine::audit::audit(&store, verify).await?;
    if json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!("{} events in {} streams", report.events, report.streams);
        if verify && report.ok {
            outln!("every stream verifies: its hash chain is unbroken and it reaches its head record");
        }
        for b in &report.broken {
            // A tampered row's stream id is not ours to print raw.
            let line = format!("DAMAGED: stream {}: {}", b.stream, b.damage.detail);
            outln!("{}", crate::term::line(&line));
        }
        if !report.ok && !verify {
            outln!("`ltmc audit --verify` checks every stream's hash chain and head record too");
        }
    }
    Ok(if report.ok { exit::OK } else { exit::RUN_FAILED })
}
