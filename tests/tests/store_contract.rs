//! The append/read contract, run against both backends.

use ltmc_core::hash::first_broken_link;
use ltmc_core::{Metadata, NewEvent};
use ltmc_engine::store::{self, Error, new_event, read_stream_all};
use ltmc_engine::{EventStore, ExpectedVersion, Store};
use ltmc_tests::{PgSchema, sqlite_store};
use serde_json::json;

fn ev(i: usize) -> NewEvent {
    new_event(
        "ThingHappened",
        1,
        json!({"i": i, "nested": {"b": 1.5, "a": [1, "x", null]}}),
        Metadata { actor: Some("test".into()), ..Default::default() },
    )
}

async fn contract(store: Store) -> anyhow::Result<()> {
    let s = format!("thing-{}", ltmc_tests::unique());

    // NoStream creates; versions start at 1.
    let a = store.append(&s, ExpectedVersion::NoStream, &[ev(1), ev(2)]).await?;
    assert_eq!(a.next_version, 2);
    assert!(!a.duplicate);
    assert!(a.last_position > a.first_position);

    // Exact at the right version appends.
    let b_events = vec![ev(3)];
    let b = store.append(&s, ExpectedVersion::Exact(2), &b_events).await?;
    assert_eq!(b.next_version, 3);
    assert!(b.first_position > a.last_position);

    // A stale expectation is a typed conflict naming expected and actual.
    match store.append(&s, ExpectedVersion::Exact(2), &[ev(4)]).await {
        Err(Error::Conflict { expected, actual, .. }) => {
            assert_eq!(expected, "2");
            assert_eq!(actual, 3);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    match store.append(&s, ExpectedVersion::NoStream, &[ev(5)]).await {
        Err(Error::Conflict { actual: 3, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Retrying the same events is a no-op returning the original positions.
    let head_before = store.head_position().await?;
    let again = store.append(&s, ExpectedVersion::Exact(2), &b_events).await?;
    assert!(again.duplicate);
    assert_eq!((again.first_position, again.last_position, again.next_version), (b.first_position, b.last_position, 3));
    let again_any = store.append(&s, ExpectedVersion::Any, &b_events).await?;
    assert!(again_any.duplicate);
    assert_eq!(store.head_position().await?, head_before);

    // An id reused at another place is refused.
    match store.append("other-x", ExpectedVersion::NoStream, &b_events).await {
        Err(Error::IdReused { .. }) => {}
        other => panic!("expected IdReused, got {other:?}"),
    }

    // Any appends at the head.
    let c = store.append(&s, ExpectedVersion::Any, &[ev(6)]).await?;
    assert_eq!(c.next_version, 4);

    // Oversized payloads and bad stream ids are refused and write nothing.
    let big =
        new_event("Big", 1, json!({"blob": "x".repeat(ltmc_core::event::MAX_EVENT_BYTES + 1)}), Metadata::default());
    assert!(matches!(store.append(&s, ExpectedVersion::Any, &[big]).await, Err(Error::PayloadTooLarge { .. })));
    assert!(matches!(store.append("bad.stream", ExpectedVersion::Any, &[ev(7)]).await, Err(Error::Invalid(_))));
    assert!(matches!(store.append(&s, ExpectedVersion::Any, &[]).await, Err(Error::Invalid(_))));
    let dup_in_batch = ev(8);
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, &[dup_in_batch.clone(), dup_in_batch]).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(store.head_position().await?, c.last_position);

    // Reads: stream order, whole-log order, intact hash chain, data round-trips.
    let events = read_stream_all(&store, &s).await?;
    assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(events[0].data, json!({"i": 1, "nested": {"b": 1.5, "a": [1, "x", null]}}));
    assert_eq!(events[0].metadata.actor.as_deref(), Some("test"));
    assert_eq!(first_broken_link(&events), None);
    let all = store.read_all(0, 100).await?;
    assert!(all.windows(2).all(|w| w[0].global_position < w[1].global_position));
    let later = store.read_stream(&s, 2, 10).await?;
    assert_eq!(later.len(), 2);

    // A tampered copy fails verification at the altered version.
    let mut tampered = events.clone();
    tampered[2].data = json!({"i": 999});
    assert_eq!(first_broken_link(&tampered), Some(3));

    // Catch-up then live subscription.
    let mut sub = store.subscribe(0);
    let mut seen = Vec::new();
    while seen.len() < all.len() {
        seen.push(sub.next().await?.global_position);
    }
    assert_eq!(seen, all.iter().map(|e| e.global_position).collect::<Vec<_>>());
    let live = store.append(&s, ExpectedVersion::Exact(4), &[ev(9)]).await?;
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next()).await??;
    assert_eq!(next.global_position, live.first_position);

    // Streams of a category.
    let streams = store.list_streams("thing", 10).await?;
    assert!(streams.iter().any(|i| i.stream_id == s && i.version == 5));
    Ok(())
}

#[tokio::test]
async fn sqlite_store_honours_the_contract() -> anyhow::Result<()> {
    let (store, _dir) = sqlite_store().await?;
    contract(store).await
}

#[tokio::test]
async fn postgres_store_honours_the_contract() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    contract(schema.store().await?).await?;
    schema.drop().await
}

#[tokio::test]
async fn migrations_are_idempotent_and_refuse_edits() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let _first = schema.store().await?;
    assert_eq!(store::postgres::migrate_url(&schema.url).await?, 0, "a second migration applies nothing");
    // Simulate an edited migration: its recorded checksum no longer matches the file.
    let client = schema.client().await?;
    client.batch_execute("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1").await?;
    let err = store::postgres::migrate_url(&schema.url).await.expect_err("an edited migration must be refused");
    assert!(err.to_string().contains("migration"), "{err}");
    schema.drop().await
}

/// A schema already current is opened without the migration lock: 50 `ltmc run` at once used
/// to queue on it one by one to find nothing to do.
#[tokio::test]
async fn opening_a_current_schema_takes_no_lock() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let _first = schema.store().await?;
    let holder = schema.client().await?;
    holder.batch_execute("SELECT pg_advisory_lock(hashtext('ltmc.migrate.' || current_schema()))").await?;
    let opened = tokio::time::timeout(std::time::Duration::from_secs(10), schema.store()).await;
    assert!(opened.is_ok_and(|s| s.is_ok()), "opening a current schema waited for the migration lock");
    // A schema that is not current (a migration's record removed) still waits for it.
    holder
        .batch_execute(
            "DELETE FROM refinery_schema_history WHERE version = (SELECT max(version) FROM refinery_schema_history)",
        )
        .await?;
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(500), schema.store()).await;
    assert!(waiting.is_err(), "a schema to migrate is migrated under the lock");
    drop(holder);
    schema.drop().await
}

/// The LISTEN connection comes back: once it is terminated, appends wake subscribers again
/// (they used to be left polling every 250 ms for the rest of the process).
#[tokio::test]
async fn wake_ups_come_back_after_the_listener_is_terminated() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let store = schema.store().await?;
    let mut wake = store.wake().await?;
    store.append(&format!("thing-{}", ltmc_tests::unique()), ExpectedVersion::NoStream, &[ev(0)]).await?;
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), wake.recv()).await;
    assert!(first.is_ok_and(|r| r.is_ok()), "an append wakes a subscriber");
    let listen = format!("LISTEN \"ltmc_events_{}\"", schema.name);
    let admin = schema.client().await?;
    let killed =
        admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1", &[&listen]).await?;
    assert_eq!(killed.len(), 1, "one listening connection");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        store.append(&format!("thing-{}", ltmc_tests::unique()), ExpectedVersion::NoStream, &[ev(1)]).await?;
        if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_millis(200), wake.recv()).await {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no wake-up within 10 s of the listener's termination");
    }
    // And it listens again: a later append wakes it too.
    while wake.try_recv().is_ok() {}
    store.append(&format!("thing-{}", ltmc_tests::unique()), ExpectedVersion::NoStream, &[ev(2)]).await?;
    let again = tokio::time::timeout(std::time::Duration::from_secs(5), wake.recv()).await;
    assert!(again.is_ok_and(|r| r.is_ok()), "appends wake it after the reconnect");
    drop(store);
    schema.drop().await
}

/// `url` with its user replaced by `role`.
fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{host}")
}

/// A server with no connection to spare (53300) is waited out when the store is opened, rather
/// than failing the command: here the role's CONNECTION LIMIT is taken for 3 s.
#[tokio::test]
async fn opening_waits_for_a_connection_to_spare() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let role = format!("ltmct_role_{}", ltmc_tests::unique());
    let admin = schema.client().await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN CONNECTION LIMIT 2; GRANT ALL ON SCHEMA \"{}\" TO {role}",
            schema.name
        ))
        .await?;
    let url = store::postgres::url_with_schema(&as_role(&ltmc_tests::pg_url(), &role), &schema.name);
    drop(Store::open(&url).await?); // migrated by the role, which then owns the tables
    let gone = ltmc_tests::eventually(std::time::Duration::from_secs(10), || async {
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&role])
            .await
            .map_or(1, |r| r.get(0));
        n == 0
    })
    .await;
    assert!(gone, "the first store's connections closed");
    let mut held = Vec::new();
    for _ in 0..2 {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        held.push(client);
    }
    let started = std::time::Instant::now();
    let opening = tokio::spawn({
        let url = url.clone();
        async move { Store::open(&url).await }
    });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    held.pop();
    let opened = opening.await?;
    assert!(opened.is_ok(), "opening waited for a connection: {:?}", opened.err());
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    drop(opened);
    drop(held);
    schema.drop().await?;
    let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await;
    Ok(())
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    let err = Store::open("postgres://nobody@127.0.0.1:1/none").await.err().expect("must fail");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    // It says where, and why.
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1") && text.contains("database none") && text.contains("refused"), "{text}");
}

/// An unknown role or database is a store that cannot be opened, named.
#[tokio::test]
async fn an_unknown_role_or_database_is_named() {
    let host = ltmc_tests::pg_url();
    let host = host.split_once('@').map_or("127.0.0.1:5432/test", |(_, h)| h).split('/').next().unwrap_or("");
    for (url, needle) in [
        (format!("postgres://ltmct_nobody@{host}/test"), "role \"ltmct_nobody\" does not exist"),
        (format!("postgres://postgres@{host}/ltmct_no_database"), "database \"ltmct_no_database\" does not exist"),
    ] {
        let err = Store::open(&url).await.err().expect("must fail");
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(needle) && text.contains(host), "{text}");
    }
}

#[tokio::test]
async fn a_missing_postgres_schema_is_named() {
    let url = ltmc_engine::store::postgres::url_with_schema(&ltmc_tests::pg_url(), "ltmct_0_does_not_exist");
    let err = Store::open(&url).await.err().expect("must fail");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("no existing schema"), "{err}");
}

/// Appends that arrive together share a transaction (group commit), yet each keeps its own
/// answer: a reused id or a stale expectation fails only that append.
async fn concurrent_appends(store: Store) -> anyhow::Result<usize> {
    let taken = ev(0);
    store.append("taken-1", ExpectedVersion::NoStream, std::slice::from_ref(&taken)).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..50 {
        let (store, taken) = (store.clone(), taken.clone());
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..8 {
                let stream = format!("grp-{t}-{i}");
                let r = match (t, i) {
                    // One append reuses an id, one has a stale expectation.
                    (7, 3) => store.append(&stream, ExpectedVersion::NoStream, &[ev(1), taken.clone()]).await,
                    (9, 5) => store.append("taken-1", ExpectedVersion::NoStream, &[ev(1)]).await,
                    _ => store.append(&stream, ExpectedVersion::NoStream, &[ev(1), ev(2)]).await,
                };
                outcomes.push(((t, i), r));
            }
            outcomes
        });
    }
    let mut ok = 0;
    while let Some(outcomes) = tasks.join_next().await {
        for ((t, i), r) in outcomes? {
            match ((t, i), r) {
                ((7, 3), Err(Error::IdReused { .. })) | ((9, 5), Err(Error::Conflict { .. })) => {}
                ((7, 3), other) | ((9, 5), other) => panic!("({t},{i}) should have failed: {other:?}"),
                (_, Ok(a)) => {
                    assert_eq!(a.next_version, 2);
                    ok += 1;
                }
                (_, Err(e)) => panic!("({t},{i}) failed: {e}"),
            }
        }
    }
    assert_eq!(ok, 50 * 8 - 2);
    let all = store.read_all(0, 10_000).await?;
    assert_eq!(all.len(), 1 + 2 * ok, "nothing of the failed appends was written");
    assert!(all.windows(2).all(|w| w[0].global_position < w[1].global_position));
    for e in all.iter().filter(|e| e.stream_id.starts_with("grp-")) {
        let chain = read_stream_all(&store, &e.stream_id).await?;
        assert_eq!(first_broken_link(&chain), None);
    }
    Ok(ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits_and_keep_their_own_answers() -> anyhow::Result<()> {
    let schema = PgSchema::new().await?;
    let ok = concurrent_appends(schema.store().await?).await?;
    // Fewer transactions than appends: concurrent appends were committed together.
    let client = schema.client().await?;
    let transactions: i64 = client
        .query_one("SELECT count(DISTINCT xmin::text) FROM events WHERE stream_id LIKE 'grp-%'", &[])
        .await?
        .get(0);
    assert!(transactions < ok as i64, "{transactions} transactions for {ok} appends");
    eprintln!("{ok} appends in {transactions} transactions");
    schema.drop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sqlite_appends_keep_their_own_answers() -> anyhow::Result<()> {
    let (store, _dir) = sqlite_store().await?;
    concurrent_appends(store).await.map(|_| ())
}
