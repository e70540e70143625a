//! `ltmc projections status|rebuild|follow`: the SQL views (`runs`, `steps`, `handoffs`,
//! sessions and memory) kept from the log. (`audit_log` is a view of the log itself.)

use ltmc_engine::config::Config;
use ltmc_engine::{EventStore, Store, projector};

use crate::exit::{self, BadInput};

/// The store; one that does not exist is created only for `writing` (`follow`, a reporting
/// copy), not to show or rebuild views of nothing.
async fn open(writing: bool) -> anyhow::Result<Store> {
    let config = Config::from_env()?;
    if writing { crate::open::for_writing(&config).await } else { crate::open::for_reading(&config).await }
}

/// Prints the views' checkpoint, the log's head and the lag.
pub(crate) async fn status(json: bool) -> anyhow::Result<u8> {
    let store = open(false).await?;
    let s = projector::status(&store).await?;
    if json {
        let views: Vec<&str> = ltmc_projections::all().iter().map(|p| p.name()).collect();
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({"views": views, "status": s}))?);
    } else {
        outln!("{:<12} {:>12} {:>12} {:>8}  HEALTH", "VIEW", "CHECKPOINT", "HEAD", "LAG");
        let since = s
            .updated_at
            .map(|t| format!(" (checkpoint last moved {})", t.format("%Y-%m-%dT%H:%M:%SZ")))
            .unwrap_or_default();
        for p in ltmc_projections::all() {
            let health = match s.health {
                "up_to_date" => "up to date".to_owned(),
                "catching_up" => "catching up".to_owned(),
                _ => format!("STALLED{since}: no projector is applying events; `ltmc projections follow` catches up"),
            };
            outln!("{:<12} {:>12} {:>12} {:>8}  {health}", p.name(), s.checkpoint, s.head, s.lag);
        }
    }
    Ok(exit::OK)
}

/// Replays the log into the views in one transaction; with `--until`/`--at` and `--into`, builds
/// the views as of that point into a separate schema or file instead (time travel).
pub(crate) async fn rebuild(until: Option<i64>, at: Option<&str>, into: Option<&str>) -> anyhow::Result<u8> {
    if until.is_some_and(|u| u < 0) {
        return Err(BadInput("--until must be a position (0 or more)".into()).into());
    }
    let at = at
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| BadInput(format!("--at {t:?}: expected an RFC 3339 time like 2026-11-27T06:00:00Z: {e}")))
        })
        .transpose()?;
    let store = open(false).await?;
    let until = match (until, at) {
        (Some(_), Some(_)) => return Err(BadInput("give --until or --at, not both".into()).into()),
        (Some(u), None) => Some(u),
        (None, Some(t)) => Some(store.position_at(t).await?),
        (None, None) => None,
    };
    let started = std::time::Instant::now();
    match into {
        Some(into) => {
            let until = match until {
                Some(u) => u,
                None => store.head_position().await?,
            };
            let at = projector::snapshot(&store, until, into).await?;
            let kind = if store.backend() == "postgres" { "schema" } else { "file" };
            eprintln!(
                "views as of position {at} built into {kind} {into} in {:.2}s; the live views are unchanged",
                started.elapsed().as_secs_f64()
            );
        }
        None => {
            let at = projector::rebuild(&store, until).await?;
            eprintln!("views rebuilt up to position {at} in {:.2}s", started.elapsed().as_secs_f64());
        }
    }
    Ok(exit::OK)
}

/// Keeps the views up to date until stopped.
pub(crate) async fn follow() -> anyhow::Result<u8> {
    let store = open(true).await?;
    let handle = projector::spawn(store);
    eprintln!("keeping the views up to date; Ctrl-C stops");
    tokio::signal::ctrl_c().await.ok();
    handle.stop();
    Ok(exit::OK)
}

/// `ltmc metrics`: brings the views up to date, then prints `coordination_metrics`.
pub(crate) async fn metrics(json: bool, prometheus: bool) -> anyhow::Result<u8> {
    if json && prometheus {
        return Err(BadInput("give --json or --prometheus, not both".into()).into());
    }
    let store = open(false).await?;
    projector::catch_up(&store).await?;
    let m = ltmc_engine::metrics::read(&store).await?;
    if prometheus {
        out!("{}", ltmc_engine::metrics::prometheus(&m));
    } else if json {
        outln!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3} ms"));
        let rows: [(&str, String); 13] = [
            ("active_agents", m.active_agents.to_string()),
            ("running_workflows", m.running_workflows.to_string()),
            ("completed_workflows", m.completed_workflows.to_string()),
            ("failed_workflows", m.failed_workflows.to_string()),
            ("avg_coordination_time_ms", ms(m.avg_coordination_time_ms)),
            ("p50_coordination_ms", ms(m.p50_coordination_ms)),
            ("p95_coordination_ms", ms(m.p95_coordination_ms)),
            ("p50_step_ms", ms(m.p50_step_ms)),
            ("p95_step_ms", ms(m.p95_step_ms)),
            ("retries", m.retries.to_string()),
            ("avg_handoff_latency_ms", ms(m.avg_handoff_latency_ms)),
            ("refused_handoffs", m.refused_handoffs.to_string()),
            ("consensus_disagreements", m.consensus_disagreements.to_string()),
        ];
        for (k, v) in rows {
            outln!("{k:<26} {v}");
        }
    }
    Ok(exit::OK)
}

/// `ltmc project --from-nats`: keeps this database's views from the JetStream stream instead of
/// its own log (a reporting copy elsewhere).
pub(crate) async fn project_from_nats() -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let Some(opts) = config.relay_options() else {
        return Err(BadInput("`ltmc project --from-nats` needs LTMC_NATS_URL".into()).into());
    };
    let store = open(true).await?;
    eprintln!("projecting stream {} from {} into the views; Ctrl-C stops", opts.stream_name, opts.nats_url);
    tokio::select! {
        done = projector::from_nats(&store, &opts, None) => { done?; }
        _ = tokio::signal::ctrl_c() => eprintln!("stopped"),
    }
    Ok(exit::OK)
}
