//! The raw side of each comparison: the same durable work written directly with the database
//! client, no engine.

use serde_json::json;
use std::time::{Duration, Instant};

/// An event-sized payload for raw rows.
pub(super) fn payload(i: usize) -> String {
    json!({"step": format!("s{i}"), "attempt": 1, "output": null, "duration_ms": 0, "idempotency_key": format!("0192f3c4-0000-7000-8000-000000000000/s{i}/1")}).to_string()
}

/// The raw side: the same durable work written directly with the database client.
pub(super) enum Raw {
    /// A Postgres client, and the URL for more connections.
    Pg(tokio_postgres::Client, String),
    /// A SQLite connection (SQLite has one writer: more connections would only queue).
    Sqlite(rusqlite::Connection),
}

impl Raw {
    pub(super) async fn single_commits(&mut self, n: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        match self {
            Raw::Pg(c, _) => {
                let stmt = c.prepare("INSERT INTO bench_raw (payload) VALUES ($1::text::jsonb)").await?;
                for i in 0..n {
                    c.execute(&stmt, &[&payload(i)]).await?;
                }
            }
            Raw::Sqlite(c) => {
                let mut stmt = c.prepare("INSERT INTO bench_raw (payload) VALUES (?1)")?;
                for i in 0..n {
                    stmt.execute([payload(i)])?;
                }
            }
        }
        Ok(t.elapsed())
    }

    pub(super) async fn batched(&mut self, rows: usize, per_commit: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut done = 0;
        while done < rows {
            let n = per_commit.min(rows - done);
            let payloads: Vec<String> = (done..done + n).map(payload).collect();
            match self {
                Raw::Pg(c, _) => {
                    c.execute(
                        "INSERT INTO bench_raw (payload) SELECT p::jsonb FROM unnest($1::text[]) AS p",
                        &[&payloads],
                    )
                    .await?;
                }
                Raw::Sqlite(c) => {
                    let tx = c.transaction()?;
                    {
                        let mut stmt = tx.prepare_cached("INSERT INTO bench_raw (payload) VALUES (?1)")?;
                        for p in &payloads {
                            stmt.execute([p])?;
                        }
                    }
                    tx.commit()?;
                }
            }
            done += n;
        }
        Ok(t.elapsed())
    }

    /// Bulk-loads `rows` rows: `COPY … FROM STDIN` on Postgres, inserts in transactions of
    /// 10,000 rows on SQLite.
    pub(super) async fn bulk(&mut self, rows: usize) -> anyhow::Result<Duration> {
        let t = Instant::now();
        match self {
            Raw::Pg(c, _) => {
                use futures::SinkExt;
                let sink = c.copy_in("COPY bench_raw (payload) FROM STDIN").await?;
                futures::pin_mut!(sink);
                let mut chunk = Vec::with_capacity(1 << 20);
                for i in 0..rows {
                    chunk.extend_from_slice(payload(i).as_bytes());
                    chunk.push(b'\n');
                    if chunk.len() >= 1 << 20 {
                        sink.send(std::io::Cursor::new(std::mem::take(&mut chunk))).await?;
                    }
                }
                sink.send(std::io::Cursor::new(chunk)).await?;
                sink.finish().await?;
            }
            Raw::Sqlite(_) => {
                self.batched(rows, 10_000).await?;
            }
        }
        Ok(t.elapsed())
    }

    /// `clients` concurrent writers each making `per_client` single-row commits (Postgres); on
    /// SQLite the same number of commits from its one writer.
    pub(super) async fn concurrent_commits(&mut self, clients: usize, per_client: usize) -> anyhow::Result<Duration> {
        match self {
            Raw::Sqlite(_) => self.single_commits(clients * per_client).await,
            Raw::Pg(_, url) => {
                let mut conns = Vec::with_capacity(clients);
                for _ in 0..clients {
                    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                    tokio::spawn(conn);
                    conns.push(c);
                }
                let t = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for c in conns {
                    tasks.spawn(async move {
                        let stmt = c.prepare("INSERT INTO bench_raw (payload) VALUES ($1::text::jsonb)").await?;
                        for i in 0..per_client {
                            c.execute(&stmt, &[&payload(i)]).await?;
                        }
                        Ok::<_, anyhow::Error>(())
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    r??;
                }
                Ok(t.elapsed())
            }
        }
    }

    /// The floor of a rebuild: every row the views of `store` hold, bulk-loaded raw into empty
    /// tables of the same definition (same indexes), the way [`Raw::bulk`] loads its rows: `COPY`
    /// on Postgres, one `INSERT … SELECT` per table on SQLite (no per-row binding, and SQLite's
    /// transfer optimization copies the records without decoding them: a lower floor than any
    /// row-by-row load, measured in docs/benchmarks.md). Returns the time of the loads alone.
    pub(super) async fn view_rows(&mut self, store: &ltmc_engine::Store) -> anyhow::Result<Duration> {
        let tables = ltmc_projections::tables();
        match (self, store) {
            (Raw::Pg(c, _), _) => {
                use futures::{SinkExt, TryStreamExt};
                let mut elapsed = Duration::ZERO;
                for t in tables {
                    c.batch_execute(&format!(
                        "DROP TABLE IF EXISTS floor_{t}; CREATE TABLE floor_{t} (LIKE {t} INCLUDING ALL)"
                    ))
                    .await?;
                    let out = c.copy_out(&format!("COPY {t} TO STDOUT")).await?;
                    let chunks: Vec<_> = out.try_collect().await?;
                    let started = Instant::now();
                    let sink = c.copy_in(&format!("COPY floor_{t} FROM STDIN")).await?;
                    futures::pin_mut!(sink);
                    for chunk in chunks {
                        sink.send(std::io::Cursor::new(chunk)).await?;
                    }
                    sink.finish().await?;
                    elapsed += started.elapsed();
                    c.batch_execute(&format!("DROP TABLE floor_{t}")).await?;
                }
                Ok(elapsed)
            }
            (Raw::Sqlite(c), ltmc_engine::Store::Sqlite(s)) => {
                c.execute("ATTACH DATABASE ?1 AS views", [s.path().display().to_string()])?;
                let ddl: Vec<(String, String)> = {
                    let mut stmt = c.prepare(
                        "SELECT tbl_name, sql FROM views.sqlite_master WHERE type IN ('table', 'index') \
                         AND sql IS NOT NULL ORDER BY type DESC",
                    )?;
                    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect::<Result<_, _>>()?
                };
                let tx = c.transaction()?;
                for (table, sql) in &ddl {
                    if tables.contains(&table.as_str()) {
                        tx.execute_batch(&format!("{sql};"))?; // unqualified: created in main
                    }
                }
                let started = Instant::now();
                for t in &tables {
                    tx.execute(&format!("INSERT INTO main.{t} SELECT * FROM views.{t}"), [])?;
                }
                tx.commit()?;
                let elapsed = started.elapsed();
                for t in &tables {
                    c.execute_batch(&format!("DROP TABLE main.{t};"))?;
                }
                c.execute("DETACH DATABASE views", [])?;
                Ok(elapsed)
            }
            (Raw::Sqlite(_), _) => anyhow::bail!("the SQLite baseline needs a SQLite store"),
        }
    }
}
