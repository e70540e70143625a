//! The relay lease on SQLite: a row of `leases` with an expiry, and an OS file lock that tells
//! a successor when the holder's process is gone (see `relay/lease.rs`). Expiries are Unix
//! milliseconds of this machine's clock: every process of one SQLite file runs on one machine.

use rusqlite::{OptionalExtension, params};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{SqliteStore, lock_file, sql_err};
use crate::store::{Error, LeaseRow, Result};

/// A held lease lock: an exclusive OS lock on `<db>.<name>.lock`, released by the OS when the
/// holder exits or crashes.
pub struct SqliteLease {
    _file: std::fs::File,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn expiry(ttl: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

impl SqliteStore {
    /// The lease row, if any.
    pub async fn read_lease(&self, name: &str) -> Result<Option<LeaseRow>> {
        let name = name.to_owned();
        self.with_reader(move |c| {
            c.query_row("SELECT holder, epoch, expires_at, locked FROM leases WHERE name = ?1", [&name], |r| {
                Ok(LeaseRow {
                    holder: r.get(0)?,
                    epoch: r.get(1)?,
                    expired: r.get::<_, i64>(2)? < now_ms(),
                    locked: r.get(3)?,
                })
            })
            .optional()
            .map_err(sql_err)
        })
        .await
    }

    /// Takes the lease from epoch `prev` (`None`: there is no row yet) if it is still free for
    /// `holder`: expired, already its own, or held by a holder whose lock `locked` proves gone
    /// (we hold it). Returns the new epoch, or `None` when another relay got there first.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        prev: Option<i64>,
        ttl: Duration,
        locked: bool,
    ) -> Result<Option<i64>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_writer(move |c| {
            let n = match prev {
                None => c.execute(
                    "INSERT INTO leases (name, holder, epoch, expires_at, locked) VALUES (?1, ?2, 1, ?3, ?4) \
                     ON CONFLICT (name) DO NOTHING",
                    params![name, holder, expiry(ttl), locked],
                ),
                Some(prev) => c.execute(
                    "UPDATE leases SET holder = ?2, epoch = epoch + 1, expires_at = ?3, locked = ?4 \
                     WHERE name = ?1 AND epoch = ?5 AND (expires_at < ?6 OR holder = ?2 OR (locked AND ?4))",
                    params![name, holder, expiry(ttl), locked, prev, now_ms()],
                ),
            }
            .map_err(sql_err)?;
            Ok((n == 1).then_some(prev.unwrap_or(0) + 1))
        })
        .await
    }

    /// Extends the lease held at `epoch`; `false` when it is no longer ours.
    pub async fn renew_lease(&self, name: &str, holder: &str, epoch: i64, ttl: Duration, locked: bool) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_writer(move |c| {
            let n = c
                .execute(
                    "UPDATE leases SET expires_at = ?4, locked = ?5 WHERE name = ?1 AND holder = ?2 AND epoch = ?3",
                    params![name, holder, epoch, expiry(ttl), locked],
                )
                .map_err(sql_err)?;
            Ok(n == 1)
        })
        .await
    }

    /// Gives the lease held at `epoch` up, so a successor need not wait for its expiry.
    pub async fn release_lease(&self, name: &str, holder: &str, epoch: i64) -> Result<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_writer(move |c| {
            c.execute(
                "UPDATE leases SET expires_at = ?4, locked = 0 WHERE name = ?1 AND holder = ?2 AND epoch = ?3",
                params![name, holder, epoch, now_ms() - 1000],
            )
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    /// Stores checkpoint `checkpoint` if lease `name` is still at `epoch`.
    pub async fn save_leased_checkpoint(&self, name: &str, epoch: i64, checkpoint: &str, position: i64) -> Result<()> {
        let (name, checkpoint) = (name.to_owned(), checkpoint.to_owned());
        self.with_writer(move |c| {
            c.execute(
                "INSERT INTO checkpoints (name, position, updated_at) \
                 SELECT ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE EXISTS (SELECT 1 FROM leases WHERE name = ?1 AND epoch = ?2) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                params![name, epoch, checkpoint, position],
            )
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    /// Tries to take the lease's file lock; `None` when another process (or another relay of
    /// this one) holds it.
    pub async fn try_lease(&self, name: &str) -> Result<Option<SqliteLease>> {
        let (file, lock_path) = lock_file(self.path(), name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(SqliteLease { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::Unavailable(format!("cannot lock {}: {e}", lock_path.display())))
            }
        }
    }
}
