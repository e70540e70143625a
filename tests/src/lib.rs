//! Shared helpers for LTMC's integration tests: real Postgres, real NATS JetStream, real SQLite.
//!
//! Each test gets its own Postgres schema (`ltmct_<secs>_<id>`) and its own JetStream stream
//! and subject prefix, so tests run in parallel without seeing each other. Schemas older than an
//! hour (left by aborted runs) are swept when a new one is made.

use ltmc_engine::Store;
use ltmc_engine::relay::RelayOptions;
use ltmc_engine::store::postgres::url_with_schema;
use ltmc_engine::store::sqlite::SqliteStore;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Postgres for tests: `LTMC_TEST_DATABASE_URL` or the local server.
pub fn pg_url() -> String {
    std::env::var("LTMC_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// NATS for tests: `LTMC_TEST_NATS_URL` or the local server.
pub fn nats_url() -> String {
    std::env::var("LTMC_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A short unique id for names.
pub fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// A fresh Postgres schema; drop it with [`PgSchema::drop`] at the end of the test.
pub struct PgSchema {
    /// Schema name.
    pub name: String,
    /// URL whose search_path is the schema.
    pub url: String,
}

impl PgSchema {
    /// Creates a new schema and sweeps stale ones.
    pub async fn new() -> anyhow::Result<PgSchema> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let name = format!("ltmct_{now}_{}", unique());
        let client = admin().await?;
        let stale = client.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ltmct\\_%'", &[]).await?;
        for row in stale {
            let n: String = row.get(0);
            let secs = n.split('_').nth(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(now);
            if now.saturating_sub(secs) > 3600 {
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{n}\" CASCADE")).await;
            }
        }
        client.batch_execute(&format!("CREATE SCHEMA \"{name}\"")).await?;
        Ok(PgSchema { url: url_with_schema(&pg_url(), &name), name })
    }

    /// Opens (and migrates) a store in the schema.
    pub async fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.url).await?)
    }

    /// A plain client whose search_path is the schema.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Drops the schema.
    pub async fn drop(self) -> anyhow::Result<()> {
        admin().await?.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name)).await?;
        Ok(())
    }
}

async fn admin() -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A store in a temporary SQLite file (kept alive by the returned directory).
pub async fn sqlite_store() -> anyhow::Result<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ltmc.db");
    let store = Store::Sqlite(SqliteStore::open(&path.display().to_string()).await?);
    Ok((store, dir))
}

/// Relay options on a stream and subject prefix of this test's own.
pub fn relay_options(nats: &str) -> RelayOptions {
    let id = unique();
    RelayOptions {
        stream_name: format!("LTMCT_{id}"),
        subject_prefix: format!("ltmct{id}.events"),
        ..RelayOptions::new(nats)
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each event as `Type` or `Type:step` (for asserting the order of a run's events).
pub fn types_and_steps(events: &[ltmc_core::RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.data.get("step").and_then(serde_json::Value::as_str) {
            Some(s) => format!("{}:{s}", e.event_type),
            None => e.event_type.clone(),
        })
        .collect()
}

/// Drives run `run_id` on its own task (so a test can act while it runs, or abort it as a crash).
pub fn drive_in_background(
    engine: &ltmc_engine::Engine,
    run_id: &str,
) -> tokio::task::JoinHandle<Result<ltmc_core::run::RunState, ltmc_engine::driver::Error>> {
    let (engine, run_id) = (engine.clone(), run_id.to_owned());
    tokio::spawn(async move { engine.drive(&run_id, None, None).await })
}

/// Declares each named test twice: `sqlite::<name>` on a fresh SQLite file, `postgres::<name>`
/// in a schema of its own. Each is an `async fn <name>(store: Store, dir: &Path)` in the
/// invoking module; `dir` is a scratch directory of the test's.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let (store, dir) = $crate::sqlite_store().await?;
                    super::$name(store, dir.path()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    let schema = $crate::PgSchema::new().await?;
                    let dir = tempfile::tempdir()?;
                    super::$name(schema.store().await?, dir.path()).await?;
                    schema.drop().await
                }
            )*
        }
    };
}
