//! Sessions over real stores: concurrent writers never lose an update, compare-and-set admits
//! exactly one winner per version, and memory as of a position is what it was then.

use ltmc_core::session::{Command, Rejection, Write};
use ltmc_engine::sessions::{Error, Sessions};
use ltmc_engine::{EventStore, Store};
use serde_json::json;

fn put(key: &str, value: serde_json::Value, if_version: Option<u64>) -> Command {
    Command::Write { writer: "test".into(), writes: vec![Write { key: key.into(), value: Some(value), if_version }] }
}

/// 8 writers each add to a counter 10 times by read + compare-and-set, retrying on a mismatch:
/// the counter ends at 80 and its versions are 1..=80 with no gap (no update lost or doubled).
async fn concurrent_compare_and_set_loses_nothing(store: Store) -> anyhow::Result<()> {
    let sessions = Sessions::new(store.clone());
    let name = format!("cas{}", ltmc_tests::unique());
    sessions.create(&name, None, "test").await?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (sessions, name) = (sessions.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let mut mismatches = 0u32;
            for _ in 0..10 {
                loop {
                    let s = sessions.load(&name).await?;
                    let n = s.memory.get("n").and_then(|e| e.value.as_ref()).and_then(|v| v.as_i64()).unwrap_or(0);
                    match sessions.execute(&name, put("n", json!(n + 1), Some(s.key_version("n"))), "test").await {
                        Ok(_) => break,
                        Err(Error::Rejected(Rejection::VersionMismatch { .. })) => mismatches += 1,
                        Err(e) => return Err(anyhow::Error::new(e)),
                    }
                }
            }
            anyhow::Ok(mismatches)
        }));
    }
    let mut mismatches = 0;
    for t in tasks {
        mismatches += t.await??;
    }
    let s = sessions.load(&name).await?;
    assert_eq!(s.memory["n"].value, Some(json!(80)), "after {mismatches} refused stale writes");
    assert_eq!(s.key_version("n"), 80);
    // Blind writers (no version) are re-decided after a stream conflict: none is lost either.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (sessions, name) = (sessions.clone(), name.clone());
        tasks.push(tokio::spawn(
            async move { sessions.execute(&name, put(&format!("k{i}"), json!(i), None), "t").await },
        ));
    }
    for t in tasks {
        t.await??;
    }
    assert_eq!(sessions.load(&name).await?.values().count(), 9);
    Ok(())
}

/// The memory as of a position is the memory then; a later delete does not reach back.
async fn memory_as_of_a_position(store: Store) -> anyhow::Result<()> {
    let sessions = Sessions::new(store.clone());
    let name = format!("asof{}", ltmc_tests::unique());
    sessions.create(&name, None, "test").await?;
    let first = sessions.execute(&name, put("plan", json!("v1"), Some(0)), "test").await?;
    let at = first.memory["plan"].position;
    sessions.execute(&name, put("plan", json!("v2"), Some(1)), "test").await?;
    let del = Command::Write {
        writer: "t".into(),
        writes: vec![Write { key: "plan".into(), value: None, if_version: None }],
    };
    sessions.execute(&name, del, "test").await?;
    assert_eq!(sessions.get_shared_context(&name, "plan").await?, None);
    let then = sessions.load_until(&name, Some(at)).await?;
    assert_eq!(then.memory["plan"].value, Some(json!("v1")));
    // force_sync: the memory view has caught up when it returns.
    let head = store.head_position().await?;
    assert!(sessions.force_sync().await? >= head);
    assert_eq!(store.views_checkpoint().await?, head);
    let missing = sessions.get_shared_context("nobody", "plan").await.expect_err("no such session");
    assert!(missing.to_string().contains("no session nobody"), "{missing}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_compare_and_set_loses_nothing() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    concurrent_compare_and_set_loses_nothing(store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_compare_and_set_loses_nothing() -> anyhow::Result<()> {
    let schema = ltmc_tests::PgSchema::new().await?;
    concurrent_compare_and_set_loses_nothing(schema.store().await?).await?;
    schema.drop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_as_of_a_position() -> anyhow::Result<()> {
    let (store, _dir) = ltmc_tests::sqlite_store().await?;
    memory_as_of_a_position(store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_memory_as_of_a_position() -> anyhow::Result<()> {
    let schema = ltmc_tests::PgSchema::new().await?;
    memory_as_of_a_position(schema.store().await?).await?;
    schema.drop().await
}
