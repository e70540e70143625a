//! Gap-safe global order: a reader that checkpoints by position never misses an event, even
//! with many concurrent appenders whose transactions stay open for a while or roll back.

use chrono::Utc;
use ltmc_core::Metadata;
use ltmc_core::event::to_micros;
use ltmc_core::hash::{Link, chain};
use ltmc_engine::store::new_event;
use ltmc_engine::{EventStore, ExpectedVersion, Store};
use ltmc_tests::{PgSchema, sqlite_store, unique};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const WRITERS: usize = 8;
const APPENDS_PER_WRITER: usize = 25;
/// The probes' event type: on a `run-` stream, each makes one `handoffs` row, keyed by its
/// position, so the projector's output shows every event it applied.
const PROBE: &str = "HandoffAccepted";

/// Reads the log by position from 0 until it has reached `head`, returning the event ids seen.
async fn read_until(store: &Store, head: i64, seen: Arc<Mutex<Vec<(i64, Uuid)>>>) -> anyhow::Result<()> {
    let mut sub = store.subscribe(0);
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next()).await??;
        seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((e.global_position, e.event_id));
        if e.global_position >= head {
            return Ok(());
        }
    }
}

/// One append inside an explicit transaction that stays open for a random while and then
/// commits or rolls back. Returns the event ids if it committed.
async fn slow_append(client: &tokio_postgres::Client) -> anyhow::Result<Option<Vec<Uuid>>> {
    let stream = format!("run-gap-{}", unique());
    let n = 1 + fastrand::usize(0..3);
    let meta = Metadata::default();
    let mut ids = Vec::new();
    let mut types = Vec::new();
    let mut versions = Vec::new();
    let mut data = Vec::new();
    let mut metas = Vec::new();
    let mut times = Vec::new();
    let mut hashes = Vec::new();
    let mut prev = String::new();
    for v in 1..=n as i64 {
        let id = Uuid::now_v7();
        let d = json!({"step": format!("s{v}")});
        let t = to_micros(Utc::now());
        let h = chain(
            &prev,
            Link {
                stream_id: &stream,
                stream_version: v,
                event_id: id,
                event_type: PROBE,
                schema_version: 1,
                recorded_at: t,
                metadata: &meta,
                data: &d,
            },
        );
        prev.clone_from(&h);
        ids.push(id);
        types.push(PROBE.to_owned());
        versions.push(1i32);
        data.push(d);
        metas.push(serde_json::to_value(&meta)?);
        times.push(t);
        hashes.push(h);
    }
    client.batch_execute("BEGIN").await?;
    let row = client
        .query_one(
            "SELECT status FROM ltmc_append($1, 0, '', $2, $3, $4, $5, $6, $7, $8)",
            &[&stream, &ids, &types, &versions, &data, &metas, &times, &hashes],
        )
        .await?;
    assert_eq!(row.get::<_, &str>(0), "ok");
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..4))).await;
    if fastrand::u8(0..10) < 3 {
        client.batch_execute("ROLLBACK").await?;
        Ok(None)
    } else {
        client.batch_execute("COMMIT").await?;
        Ok(Some(ids))
    }
}

fn check(seen: &[(i64, Uuid)], committed: &HashSet<Uuid>) {
    let ids: Vec<Uuid> = seen.iter().map(|(_, id)| *id).collect();
    let unique_ids: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique_ids.len(), ids.len(), "the reader saw an event twice");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "positions must ascend");
    let missed: Vec<&Uuid> = committed.difference(&unique_ids).collect();
    assert!(missed.is_empty(), "the reader missed {} committed events", missed.len());
    assert_eq!(&unique_ids, committed, "the reader saw events that never committed");
}

/// WRITERS concurrent appenders: half through the store, half in explicit transactions held
/// open for a random while, 30 % of them rolled back. Fills `committed` with what committed.
async fn write_concurrently(
    schema: &PgSchema,
    store: &Store,
    committed: &Arc<Mutex<HashSet<Uuid>>>,
) -> anyhow::Result<()> {
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let committed = committed.clone();
        let client = schema.client().await?;
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..APPENDS_PER_WRITER {
                if w % 2 == 0 {
                    if let Some(ids) = slow_append(&client).await? {
                        committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.extend(ids);
                    }
                } else {
                    let e = new_event(PROBE, 1, json!({"step": "s1"}), Metadata::default());
                    store
                        .append(&format!("run-gap-{}", unique()), ExpectedVersion::NoStream, std::slice::from_ref(&e))
                        .await?;
                    committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(e.event_id);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    Ok(())
}

/// The projector follows the log while the appenders run: its `handoffs` (a row per probe) end
/// with exactly the committed events, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_projector_never_misses_an_event() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let store = schema.store().await?;
    let committed = Arc::new(Mutex::new(HashSet::new()));
    let mut projector = ltmc_engine::projector::spawn(store.clone());
    write_concurrently(&schema, &store, &committed).await?;
    let head = store.head_position().await?;
    assert!(projector.wait_for(head, Duration::from_secs(20)).await, "{:?}", projector.last_error());
    projector.stop();
    // A row at a position the log does not hold would have no event id: the check fails on it.
    let rows = schema
        .client()
        .await?
        .query(
            "SELECT h.position, e.event_id FROM handoffs h LEFT JOIN events e ON e.global_position = h.position \
             ORDER BY h.position",
            &[],
        )
        .await?;
    let seen: Vec<(i64, Uuid)> =
        rows.iter().map(|r| Ok((r.get::<_, i64>(0), r.try_get::<_, Uuid>(1)?))).collect::<anyhow::Result<_>>()?;
    let committed = committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    check(&seen, &committed);
    schema.drop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_reader_never_misses_an_event() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let store = schema.store().await?;
    let committed = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));

    // A reader follows the log while the writers run; a second one reads from zero at the end.
    let live_seen = seen.clone();
    let live_store = store.clone();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel::<i64>();
    let reader = tokio::spawn(async move {
        let head = head_rx.await?;
        read_until(&live_store, head, live_seen).await
    });
    // Early readers start before the head is known: follow from zero in the background too.
    let early_seen = Arc::new(Mutex::new(Vec::new()));
    let early = {
        let (store, seen) = (store.clone(), early_seen.clone());
        tokio::spawn(async move {
            let mut sub = store.subscribe(0);
            loop {
                match tokio::time::timeout(Duration::from_secs(3), sub.next()).await {
                    Ok(Ok(e)) => {
                        seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((e.global_position, e.event_id))
                    }
                    Ok(Err(e)) => return Err(anyhow::Error::from(e)),
                    Err(_) => return Ok::<_, anyhow::Error>(()),
                }
            }
        })
    };

    write_concurrently(&schema, &store, &committed).await?;
    let head = store.head_position().await?;
    let _ = head_tx.send(head);
    reader.await??;
    early.await??;

    let committed = committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    assert!(committed.len() > WRITERS * APPENDS_PER_WRITER / 2);
    check(&seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?, &committed);
    check(&early_seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?, &committed);
    schema.drop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_reader_never_misses_an_event() -> anyhow::Result<()> {
    let (store, _dir) = sqlite_store().await?;
    let committed = Arc::new(Mutex::new(HashSet::new()));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (store, committed) = (store.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            for _ in 0..APPENDS_PER_WRITER {
                let e = new_event("GapProbed", 1, Value::Null, Metadata::default());
                store.append(&format!("gap-{}", unique()), ExpectedVersion::NoStream, std::slice::from_ref(&e)).await?;
                committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(e.event_id);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    for w in writers {
        w.await??;
    }
    let head = store.head_position().await?;
    read_until(&store, head, seen.clone()).await?;
    let committed = committed.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    check(&seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?, &committed);
    Ok(())
}
