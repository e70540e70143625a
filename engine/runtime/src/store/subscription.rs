//! Catch-up subscription over the whole log: read from a position, then follow live appends.

use ltmc_core::RecordedEvent;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::broadcast;

use super::{EventStore, Result, Store};

/// How long a subscriber waits for a wake-up before polling anyway. Wake-ups come from
/// LISTEN/NOTIFY (Postgres) or this process's appends (SQLite); polling covers other processes
/// on SQLite and lost notifications.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Reads the log in position order from a checkpoint and then follows it. Gap-safe because the
/// stores commit positions in order (see `docs/event-log.md`).
pub struct Subscription {
    store: Store,
    after: i64,
    buffer: VecDeque<RecordedEvent>,
    wake: Option<broadcast::Receiver<i64>>,
    poll: Duration,
}

impl Subscription {
    pub(super) fn new(store: Store, after: i64) -> Subscription {
        Subscription { store, after, buffer: VecDeque::new(), wake: None, poll: POLL_INTERVAL }
    }

    /// Position of the last event returned.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// The next event, waiting for one if the log has nothing new.
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.after = e.global_position;
                return Ok(e);
            }
            self.fill(500).await?;
        }
    }

    /// Up to `max` events (at least one), waiting if the log has nothing new.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>> {
        if self.buffer.is_empty() {
            self.fill(max).await?;
        }
        let n = self.buffer.len().min(max);
        let out: Vec<RecordedEvent> = self.buffer.drain(..n).collect();
        if let Some(last) = out.last() {
            self.after = last.global_position;
        }
        Ok(out)
    }

    async fn fill(&mut self, max: usize) -> Result<()> {
        loop {
            if self.wake.is_none() {
                // Subscribe before reading so an append between the read and the wait still wakes us.
                self.wake = self.store.wake().await.ok();
            }
            let from = self.buffer.back().map_or(self.after, |e| e.global_position);
            let batch = self.store.read_all(from, max.max(1)).await?;
            if !batch.is_empty() {
                self.buffer.extend(batch);
                return Ok(());
            }
            match &mut self.wake {
                Some(rx) => {
                    if let Ok(Err(broadcast::error::RecvError::Closed)) =
                        tokio::time::timeout(self.poll, rx.recv()).await
                    {
                        self.wake = None;
                    }
                }
                None => tokio::time::sleep(self.poll).await,
            }
        }
    }
}
