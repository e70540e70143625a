//! Configuration from the environment.

use std::time::Duration;

use crate::driver::EngineOptions;
use crate::store::DEFAULT_DATABASE_URL;

/// Settings read from `LTMC_*` variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// `LTMC_DATABASE_URL`: `postgres://…` or `sqlite://PATH` (default `sqlite://.ltmc/ltmc.db`).
    pub database_url: String,
    /// `LTMC_NATS_URL`: when set, committed events are relayed to JetStream.
    pub nats_url: Option<String>,
    /// Engine options (`LTMC_DEFAULT_TIMEOUT` seconds, `LTMC_MAX_CONCURRENT_AGENTS`).
    pub engine: EngineOptions,
}

/// A variable that is set but unusable.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {why}")]
pub struct Error {
    /// Variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What is expected.
    pub why: &'static str,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    /// Reads the environment.
    pub fn from_env() -> Result<Config, Error> {
        let mut engine = EngineOptions::default();
        if let Some(v) = var("LTMC_DEFAULT_TIMEOUT") {
            let secs: f64 = v.parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0).ok_or(Error {
                name: "LTMC_DEFAULT_TIMEOUT",
                value: v.clone(),
                why: "a positive number of seconds",
            })?;
            engine.default_timeout = Duration::from_secs_f64(secs);
        }
        if let Some(v) = var("LTMC_MAX_CONCURRENT_AGENTS") {
            engine.max_concurrent_agents = v.parse().ok().filter(|n| *n > 0).ok_or(Error {
                name: "LTMC_MAX_CONCURRENT_AGENTS",
                value: v.clone(),
                why: "a positive integer",
            })?;
        }
        Ok(Config {
            database_url: var("LTMC_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
            nats_url: var("LTMC_NATS_URL"),
            engine,
        })
    }
}
