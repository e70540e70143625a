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
    /// `LTMC_NATS_STREAM`: the JetStream stream the log is relayed to (default `LTMC_EVENTS`).
    pub nats_stream: String,
    /// `LTMC_NATS_SUBJECT_PREFIX`: subject prefix (default `ltmc.events`). One database per
    /// stream: two logs relayed into one stream would interleave, and the relay refuses that.
    pub nats_subject_prefix: String,
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

fn valid_stream_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Config {
    /// Relay options for `LTMC_NATS_URL`, if it is set.
    pub fn relay_options(&self) -> Option<crate::relay::RelayOptions> {
        self.nats_url.as_deref().map(|url| crate::relay::RelayOptions {
            stream_name: self.nats_stream.clone(),
            subject_prefix: self.nats_subject_prefix.clone(),
            ..crate::relay::RelayOptions::new(url)
        })
    }

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
            nats_stream: match var("LTMC_NATS_STREAM") {
                Some(v) if valid_stream_name(&v) => v,
                Some(v) => {
                    return Err(Error { name: "LTMC_NATS_STREAM", value: v, why: "a stream name from [A-Za-z0-9_-]" });
                }
                None => "LTMC_EVENTS".to_owned(),
            },
            nats_subject_prefix: match var("LTMC_NATS_SUBJECT_PREFIX") {
                Some(v) if v.split('.').all(valid_stream_name) => v,
                Some(v) => {
                    return Err(Error {
                        name: "LTMC_NATS_SUBJECT_PREFIX",
                        value: v,
                        why: "dot-separated tokens from [A-Za-z0-9_-], without wildcards",
                    });
                }
                None => "ltmc.events".to_owned(),
            },
            engine,
        })
    }
}
