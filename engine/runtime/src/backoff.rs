//! The one backoff every retry loop of the runtime uses: a first wait, then twice as long each
//! time, up to a cap. The loops differ in what they retry and for how long; how long they wait
//! between tries is this.

use std::time::Duration;

/// Waits that double from `first` up to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

/// The cap of every loop in the runtime: long enough not to hammer a server that is down, short
/// enough that one back is noticed within seconds.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(2);

impl Backoff {
    /// Starting at `first`, capped at [`MAX_WAIT`].
    pub(crate) fn starting_at(first: Duration) -> Backoff {
        Backoff { first, next: first, max: MAX_WAIT }
    }

    /// The wait before the next try; the one after is twice as long, at most the cap.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    /// The wait [`Backoff::next_wait`] would give, without moving on.
    pub(crate) fn peek(&self) -> Duration {
        self.next
    }

    /// Sleeps for the next wait.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_wait()).await;
    }

    /// Starts again from the first wait (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_start_again_after_a_reset() {
        let mut b = Backoff::starting_at(Duration::from_millis(300));
        let waits: Vec<u128> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [300, 600, 1200, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(300));
    }
}
