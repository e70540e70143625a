//! `ltmc run` on Postgres while its connections are terminated (`pg_terminate_backend`) over
//! and over: the engine reconnects and carries on, and the run completes. A dropped connection
//! is an unavailable backend, never "the run failed" (exit 1).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn pg_url() -> String {
    std::env::var("LTMC_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn admin() -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Twelve steps of 150 ms: about two seconds of appends to interrupt.
fn workflow() -> String {
    let steps: String = (1..=12).map(|i| format!("  s{i}: {{builtin: sleep, params: {{ms: 150}}}}\n")).collect();
    format!("pattern: sequential\nagents:\n{steps}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_its_connections_being_terminated() -> anyhow::Result<()> {
    let id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let schema = format!("ltmct_{secs}_{id}");
    let app = format!("ltmc_fault_{id}");
    admin().await?.batch_execute(&format!("CREATE SCHEMA \"{schema}\"")).await?;
    // The application name marks this test's connections, so only they are terminated.
    let url = format!("{}&application_name={app}", ltmc_engine::store::postgres::url_with_schema(&pg_url(), &schema));
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("wf.yaml"), workflow())?;
    let (cwd, db) = (dir.path().to_path_buf(), url.clone());
    let ltmc = move |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ltmc"));
        c.args(args).current_dir(&cwd).env_remove("LTMC_NATS_URL").env("LTMC_DATABASE_URL", &db);
        c
    };
    // Migrate first, so the terminations hit the run and not the schema's creation.
    assert!(ltmc(&["migrate"]).output()?.status.success());

    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (stop, killed, app) = (stop.clone(), killed.clone(), app.clone());
        let client = admin().await?;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1";
                if let Ok(row) = client.query_one(sql, &[&app]).await {
                    killed.fetch_add(row.get::<_, i64>(0) as usize, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let run = ltmc(&["run", "wf.yaml", "--json"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut run = run;
        run.output()
    })
    .await??;
    stop.store(true, Ordering::Relaxed);
    killer.await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let n = killed.load(Ordering::Relaxed);
    assert!(n >= 5, "only {n} connections were terminated; exit {:?}:\n{stderr}", out.status.code());
    assert_eq!(out.status.code(), Some(0), "the run did not survive its connections being terminated:\n{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["status"], "completed", "{summary}");
    admin().await?.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
    Ok(())
}
