//! Configuration: built-in defaults (the seed's `COORDINATION_CONFIG`), then `ltmc.toml`, then
//! `LTMC_*` environment variables; a workflow file's own values (agent `timeout`, `retries`,
//! `backoff`, run `timeout`) win over all of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::driver::EngineOptions;
use crate::store::DEFAULT_DATABASE_URL;

/// The settings, once resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// `database_url` / `LTMC_DATABASE_URL`: `postgres://…` or `sqlite://PATH`.
    pub database_url: String,
    /// `nats_url` / `LTMC_NATS_URL`: when set, committed events are relayed to JetStream.
    pub nats_url: Option<String>,
    /// `nats_prefix` / `LTMC_NATS_PREFIX` (default `ltmc`): the deployment's NATS names, every
    /// stream and subject it uses (events, tasks, results, emit). Give each database its own.
    pub nats_names: crate::workers::Names,
    /// `nats_stream` / `LTMC_NATS_STREAM`: the JetStream stream of events (default: the
    /// prefix's, `LTMC_EVENTS`).
    pub nats_stream: String,
    /// `nats_subject_prefix` / `LTMC_NATS_SUBJECT_PREFIX` (default: the prefix's, `ltmc.events`).
    /// One database per stream: two logs relayed into one stream would interleave, and the
    /// relay refuses that.
    pub nats_subject_prefix: String,
    /// `nats_max_bytes` / `LTMC_NATS_MAX_BYTES`: the events stream keeps at most this many
    /// bytes, dropping its oldest messages (default: no limit but the server's).
    pub nats_max_bytes: Option<i64>,
    /// `nats_max_age` / `LTMC_NATS_MAX_AGE` (seconds): the events stream drops older messages
    /// (default: kept for ever).
    pub nats_max_age: Option<Duration>,
    /// `relay_lease_ttl` / `LTMC_RELAY_LEASE_TTL` (seconds, default 15): how long a relay that
    /// stops making progress keeps the lease before another relay takes over.
    pub relay_lease_ttl: Duration,
    /// Engine options: `default_timeout`, `retry_attempts`, `retry_backoff`, `max_concurrent_agents`.
    pub engine: EngineOptions,
    /// The configuration file that was read, if any.
    pub file: Option<PathBuf>,
}

/// A setting that is present but unusable, or a configuration file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value is invalid.
    #[error("{origin}: {key} = {value} is invalid: {why}")]
    Invalid {
        /// Where it came from: `environment variable LTMC_X` or `ltmc.toml:LINE`.
        origin: String,
        /// The setting.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What is expected.
        why: &'static str,
    },
    /// The configuration file cannot be read or parsed, or names an unknown key.
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    File {
        /// The file.
        file: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// Every setting: its key in `ltmc.toml` and its environment variable.
const SETTINGS: [(&str, &str); 13] = [
    ("database_url", "LTMC_DATABASE_URL"),
    ("nats_url", "LTMC_NATS_URL"),
    ("nats_prefix", "LTMC_NATS_PREFIX"),
    ("nats_stream", "LTMC_NATS_STREAM"),
    ("nats_subject_prefix", "LTMC_NATS_SUBJECT_PREFIX"),
    ("nats_max_bytes", "LTMC_NATS_MAX_BYTES"),
    ("nats_max_age", "LTMC_NATS_MAX_AGE"),
    ("relay_lease_ttl", "LTMC_RELAY_LEASE_TTL"),
    ("max_concurrent_agents", "LTMC_MAX_CONCURRENT_AGENTS"),
    ("default_timeout", "LTMC_DEFAULT_TIMEOUT"),
    ("retry_attempts", "LTMC_RETRY_ATTEMPTS"),
    ("retry_backoff", "LTMC_RETRY_BACKOFF"),
    ("idle_timeout", "LTMC_IDLE_TIMEOUT"),
];

/// Name of the configuration file looked for in the working directory.
pub const FILE_NAME: &str = "ltmc.toml";

struct FileSource {
    path: PathBuf,
    text: String,
    table: toml::Table,
}

impl FileSource {
    fn load(path: &Path) -> Result<FileSource, Error> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            file: shown.clone(),
            line: None,
            message: format!("cannot read it: {e}"),
        })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::File {
            file: shown.clone(),
            line: e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
            message: e.message().to_owned(),
        })?;
        for key in table.keys() {
            if !SETTINGS.iter().any(|(k, _)| k == key) {
                let known: Vec<&str> = SETTINGS.iter().map(|(k, _)| *k).collect();
                return Err(Error::File {
                    file: shown,
                    line: line_of(&text, key),
                    message: format!("unknown setting `{key}`; known settings: {}", known.join(", ")),
                });
            }
        }
        Ok(FileSource { path: path.to_path_buf(), text, table })
    }
}

/// The line that sets `key` (`key = …`) or opens table `[key]`.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('='))
                || l.strip_prefix('[').is_some_and(|rest| rest.trim_start().starts_with(key))
        })
        .map(|i| i + 1)
}

/// Where each setting's value comes from, in precedence order: environment, then file.
struct Sources {
    file: Option<FileSource>,
}

impl Sources {
    /// The value of `key` as text, and where it came from.
    fn get(&self, key: &'static str) -> Option<(String, String)> {
        let env = SETTINGS.iter().find(|(k, _)| *k == key).map(|(_, e)| *e)?;
        if let Some(v) = std::env::var(env).ok().filter(|v| !v.trim().is_empty()) {
            return Some((v, format!("environment variable {env}")));
        }
        let f = self.file.as_ref()?;
        let value = f.table.get(key).filter(|v| v.as_str().is_none_or(|s| !s.trim().is_empty()))?;
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(_) => "a date".to_owned(),
            toml::Value::Array(_) => "a list".to_owned(),
            toml::Value::Table(_) => "a table".to_owned(),
        };
        let line = line_of(&f.text, key).map(|l| format!(":{l}")).unwrap_or_default();
        Some((text, format!("{}{line}", f.path.display())))
    }

    fn parse<T: std::str::FromStr>(
        &self,
        key: &'static str,
        why: &'static str,
        ok: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some((text, origin)) => match text.trim().parse::<T>() {
                Ok(v) if ok(&v) => Ok(Some(v)),
                _ => Err(Error::Invalid { origin, key, value: text, why }),
            },
        }
    }
}

fn valid_stream_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Config {
    /// Reads `LTMC_CONFIG` (a file that must exist) or `./ltmc.toml` (if present), then the
    /// environment.
    pub fn from_env() -> Result<Config, Error> {
        let file = match std::env::var("LTMC_CONFIG").ok().filter(|v| !v.trim().is_empty()) {
            Some(path) => Some(FileSource::load(Path::new(&path))?),
            None if Path::new(FILE_NAME).is_file() => Some(FileSource::load(Path::new(FILE_NAME))?),
            None => None,
        };
        Config::resolve(Sources { file })
    }

    /// Reads the given configuration file, then the environment.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        Config::resolve(Sources { file: Some(FileSource::load(path)?) })
    }

    fn resolve(src: Sources) -> Result<Config, Error> {
        let mut engine = EngineOptions::default();
        if let Some(secs) =
            src.parse::<f64>("default_timeout", "a positive number of seconds, at most 31536000", |s| {
                s.is_finite() && *s > 0.0 && *s <= ltmc_core::spec::MAX_TIMEOUT_SECS
            })?
        {
            engine.default_timeout = Duration::from_secs_f64(secs);
        }
        if let Some(n) = src.parse::<u32>("retry_attempts", "an integer from 0 to 100", |n| *n <= 100)? {
            engine.retry_attempts = n;
        }
        if let Some(secs) =
            src.parse::<f64>("retry_backoff", "seconds from 0 to 60", |s| s.is_finite() && (0.0..=60.0).contains(s))?
        {
            engine.retry_backoff = Duration::from_secs_f64(secs);
        }
        if let Some(secs) = src.parse::<f64>("idle_timeout", "a positive number of seconds, at most 31536000", |s| {
            s.is_finite() && *s > 0.0 && *s <= ltmc_core::spec::MAX_TIMEOUT_SECS
        })? {
            engine.idle_timeout = Duration::from_secs_f64(secs);
        }
        if let Some(n) = src.parse::<usize>("max_concurrent_agents", "a positive integer", |n| *n > 0)? {
            engine.max_concurrent_agents = n;
        }
        let nats_names = src
            .parse::<String>(
                "nats_prefix",
                "1 to 32 lower-case letters, digits, '-' or '_', starting with a letter",
                |v| crate::workers::Names::new(v).is_ok(),
            )?
            .map_or_else(crate::workers::Names::default, |p| crate::workers::Names::new(&p).unwrap_or_default());
        let nats_stream = src
            .parse::<String>("nats_stream", "a stream name from [A-Za-z0-9_-]", |v| valid_stream_name(v))?
            .unwrap_or_else(|| nats_names.events_stream());
        let nats_subject_prefix = src
            .parse::<String>(
                "nats_subject_prefix",
                "dot-separated tokens from [A-Za-z0-9_-], without wildcards",
                |v| v.split('.').all(valid_stream_name),
            )?
            .unwrap_or_else(|| nats_names.events_subjects());
        let nats_max_bytes =
            src.parse::<i64>("nats_max_bytes", "a number of bytes, at least 1048576", |b| *b >= 1024 * 1024)?;
        let nats_max_age = src
            .parse::<f64>("nats_max_age", "a positive number of seconds, at most 315360000 (ten years)", |s| {
                s.is_finite() && *s >= 1.0 && *s <= 315_360_000.0
            })?
            .map(Duration::from_secs_f64);
        let relay_lease_ttl = src
            .parse::<f64>("relay_lease_ttl", "seconds from 1 to 3600", |s| s.is_finite() && (1.0..=3600.0).contains(s))?
            .map_or(crate::relay::DEFAULT_LEASE_TTL, Duration::from_secs_f64);
        Ok(Config {
            database_url: src.get("database_url").map_or_else(|| DEFAULT_DATABASE_URL.to_owned(), |(v, _)| v),
            nats_url: src.get("nats_url").map(|(v, _)| v),
            nats_names,
            nats_stream,
            nats_subject_prefix,
            nats_max_bytes,
            nats_max_age,
            relay_lease_ttl,
            engine,
            file: src.file.map(|f| f.path),
        })
    }

    /// Relay options when `nats_url` is set.
    pub fn relay_options(&self) -> Option<crate::relay::RelayOptions> {
        self.nats_url.as_deref().map(|url| crate::relay::RelayOptions {
            stream_name: self.nats_stream.clone(),
            subject_prefix: self.nats_subject_prefix.clone(),
            lease_ttl: self.relay_lease_ttl,
            max_bytes: self.nats_max_bytes,
            max_age: self.nats_max_age.unwrap_or(Duration::ZERO),
            ..crate::relay::RelayOptions::new(url)
        })
    }
}
