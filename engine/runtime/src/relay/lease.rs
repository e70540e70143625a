//! The relay's lease: one relay publishes per database, and a holder that stops making
//! progress loses the lease within its time to live (decision 0014).
//!
//! The lease is a row of `leases` (holder, epoch, expiry). The holder renews it from its
//! publishing loop, so a holder that is stopped (SIGSTOP), hung, or cut off from the database
//! stops renewing and the row expires; a standby then takes it with the next epoch. Beside the
//! row, the holder keeps the lease's lock (a Postgres session advisory lock, an OS file lock on
//! SQLite), which ends with its process: a standby that gets that lock while the row says its
//! holder has it knows the holder is gone, and takes over at once instead of at the expiry.
//!
//! The hard fence against a replaced holder that wakes up is JetStream's expected last
//! sequence (decision 0002): a message is stored only if the stream ends exactly where its
//! relay believes, so the woken holder's messages are refused once its successor has published
//! anything, and are the correct next messages otherwise. The epoch makes it stand down: it
//! renews before publishing once its own deadline has passed, that renewal names its epoch and
//! fails, and it stops; its checkpoint writes name the epoch too and write nothing.

use std::time::{Duration, Instant};

use crate::store::{self, LeaseRow, Store};

use super::Error;

/// How often a standby looks at the lease.
pub const STANDBY_POLL: Duration = Duration::from_millis(200);

enum Db {
    Pg(store::postgres::PgLeaseConn),
    Sqlite(store::sqlite::SqliteStore),
}

enum Lock {
    /// Held by the session of the lease's Postgres connection.
    Pg,
    /// Held while this value lives.
    Sqlite { _file: store::sqlite::SqliteLease },
}

impl Db {
    async fn open(store: &Store) -> Result<Db, Error> {
        Ok(match store {
            Store::Postgres(s) => Db::Pg(s.lease_conn().await?),
            Store::Sqlite(s) => Db::Sqlite(s.clone()),
        })
    }

    async fn read(&self, name: &str) -> Result<Option<LeaseRow>, Error> {
        Ok(match self {
            Db::Pg(c) => c.read(name).await?,
            Db::Sqlite(s) => s.read_lease(name).await?,
        })
    }

    async fn try_lock(&self, name: &str) -> Result<Option<Lock>, Error> {
        Ok(match self {
            Db::Pg(c) => c.try_lock(name).await?.then_some(Lock::Pg),
            Db::Sqlite(s) => s.try_lease(name).await?.map(|f| Lock::Sqlite { _file: f }),
        })
    }

    async fn unlock(&self, name: &str, lock: Lock) -> Result<(), Error> {
        match (self, lock) {
            (Db::Pg(c), Lock::Pg) => c.unlock(name).await?,
            (_, lock) => drop(lock),
        }
        Ok(())
    }

    async fn take(&self, l: &Lease, prev: Option<i64>) -> Result<Option<i64>, Error> {
        let locked = l.lock.is_some();
        Ok(match self {
            Db::Pg(c) => c.take(&l.name, &l.holder, prev, l.ttl, locked).await?,
            Db::Sqlite(s) => s.take_lease(&l.name, &l.holder, prev, l.ttl, locked).await?,
        })
    }

    async fn renew(&self, l: &Lease) -> Result<bool, Error> {
        let locked = l.lock.is_some();
        Ok(match self {
            Db::Pg(c) => c.renew(&l.name, &l.holder, l.epoch, l.ttl, locked).await?,
            Db::Sqlite(s) => s.renew_lease(&l.name, &l.holder, l.epoch, l.ttl, locked).await?,
        })
    }
}

/// A lease this relay holds (or is trying to take).
pub struct Lease {
    db: Db,
    name: String,
    holder: String,
    ttl: Duration,
    epoch: i64,
    lock: Option<Lock>,
    /// When the last successful renewal was sent: the row expires no earlier than this plus
    /// the time to live.
    renewed: Instant,
}

impl Lease {
    /// Waits until this relay holds lease `name`, standing by while another relay holds it.
    pub async fn take(store: &Store, name: &str, holder: &str, ttl: Duration) -> Result<Lease, Error> {
        let mut l = Lease {
            db: Db::open(store).await?,
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl,
            epoch: 0,
            lock: None,
            renewed: Instant::now(),
        };
        let mut announced = false;
        loop {
            let row = l.db.read(name).await?;
            let prev = match &row {
                None => None,
                Some(r) if r.expired || r.holder == l.holder => Some(r.epoch),
                Some(r) if r.locked => {
                    // The holder keeps the lock while it lives: getting it proves it gone.
                    l.lock = l.db.try_lock(name).await?;
                    if l.lock.is_none() {
                        l.stand_by(&mut announced, r).await;
                        continue;
                    }
                    Some(r.epoch)
                }
                // Taken over from a hung holder that may still hold the lock: wait for expiry.
                Some(r) => {
                    l.stand_by(&mut announced, r).await;
                    continue;
                }
            };
            if l.lock.is_none() {
                l.lock = l.db.try_lock(name).await?;
            }
            let sent = Instant::now();
            match l.db.take(&l, prev).await? {
                Some(epoch) => {
                    (l.epoch, l.renewed) = (epoch, sent);
                    tracing::info!(lease = name, epoch, locked = l.lock.is_some(), "relay holds the lease");
                    return Ok(l);
                }
                None => {
                    if let Some(lock) = l.lock.take() {
                        l.db.unlock(name, lock).await?;
                    }
                    tokio::time::sleep(STANDBY_POLL).await;
                }
            }
        }
    }

    async fn stand_by(&self, announced: &mut bool, holder: &LeaseRow) {
        if !*announced {
            tracing::info!(lease = self.name, holder = holder.holder, "another relay holds the lease; standing by");
            *announced = true;
        }
        tokio::time::sleep(STANDBY_POLL).await;
    }

    /// Until when this relay may publish without renewing: the row expires no earlier, so no
    /// other relay has taken over before (a tenth of the time to live allows for clock drift).
    pub fn deadline(&self) -> Instant {
        self.renewed + self.ttl - self.ttl / 10
    }

    /// When the next renewal is due (a third of the time to live after the last one).
    pub fn renew_at(&self) -> Instant {
        self.renewed + self.ttl / 3
    }

    /// Renews the lease if due (or `now`); [`Error::LeaseLost`] when another relay took it
    /// over, then this relay must stop publishing.
    pub async fn keep(&mut self, now: bool) -> Result<(), Error> {
        if !now && Instant::now() < self.renew_at() {
            return Ok(());
        }
        if let Db::Pg(c) = &self.db
            && !c.is_alive()
        {
            return Err(store::Error::Unavailable("the relay lease's database connection closed".into()).into());
        }
        // A holder that took over from a hung one could not get the lock; it is free once that
        // one has stood down or died, and then the next successor need not wait for the expiry.
        if self.lock.is_none() {
            self.lock = self.db.try_lock(&self.name).await?;
        }
        let sent = Instant::now();
        if self.db.renew(self).await? {
            self.renewed = sent;
            Ok(())
        } else {
            let holder = self.db.read(&self.name).await?.map(|r| r.holder).unwrap_or_default();
            Err(Error::LeaseLost { epoch: self.epoch, holder })
        }
    }

    /// Makes sure this relay may publish now: renews if its deadline has passed (a stopped or
    /// hung relay that wakes up finds it has been replaced here, before publishing).
    pub async fn check(&mut self) -> Result<(), Error> {
        if Instant::now() < self.deadline() { Ok(()) } else { self.keep(true).await }
    }

    /// Stores the relay's checkpoint, unless the lease has passed to another relay.
    pub async fn save(&self, checkpoint: &str, position: i64) -> Result<(), Error> {
        match &self.db {
            Db::Pg(c) => c.save_checkpoint(&self.name, self.epoch, checkpoint, position).await?,
            Db::Sqlite(s) => s.save_leased_checkpoint(&self.name, self.epoch, checkpoint, position).await?,
        }
        Ok(())
    }

    /// Gives the lease up (after a failure, so that a relay that can publish takes over at
    /// once). Best effort: the expiry covers a database that cannot be reached.
    pub async fn release(self) {
        let done = match &self.db {
            Db::Pg(c) => c.release(&self.name, &self.holder, self.epoch).await,
            Db::Sqlite(s) => s.release_lease(&self.name, &self.holder, self.epoch).await,
        };
        if let Err(e) = done {
            tracing::debug!(error = %e, "could not release the relay lease; it expires");
        }
    }
}
