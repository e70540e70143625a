//! Reading stored messages below async-nats's consumers, so that no stored message can pass
//! for a signal of the server.
//!
//! A message's header block may be a status line (`NATS/1.0 408 Request Timeout`), and anyone
//! who can publish on a subject can store such a message. async-nats's pull consumers take it
//! for the server's own status: a fetch drops it (the task is never acknowledged, so it is
//! delivered again after every ack wait, forever) and an ordered consumer restarts at it (the
//! run's reports after it are never read). Here a stored message is recognised by what the
//! server adds to it, the `$JS.ACK.` reply subject of a delivery, never by its headers.

use async_nats::jetstream;
use async_nats::{Client, StatusCode, Subscriber};
use futures::StreamExt;
use tokio::time::{Duration, Instant};

use super::{Error, nats};

/// How long one pull request waits for messages before the server ends it.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Pulls a consumer's messages, `batch` per pull request, into an inbox of its own.
pub(super) struct Puller {
    js: jetstream::Context,
    client: Client,
    request: String,
    batch: usize,
    inbox: String,
    deliveries: Subscriber,
    /// Messages the open pull request may still deliver (0: none open).
    open: usize,
    deadline: Instant,
}

impl Puller {
    pub(super) async fn new(
        js: &jetstream::Context,
        stream: &str,
        consumer: &str,
        batch: usize,
    ) -> Result<Puller, Error> {
        let client = js.client();
        let inbox = client.new_inbox();
        let deliveries = client.subscribe(inbox.clone()).await.map_err(nats)?;
        let request = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}");
        let (js, batch) = (js.clone(), batch.max(1));
        Ok(Puller { js, client, request, batch, inbox, deliveries, open: 0, deadline: Instant::now() })
    }

    /// The next message delivered, or `None` when the pull expired with nothing more. No
    /// answer at all is an error: the consumer may be gone (a NATS restart forgets an ephemeral
    /// one, and the server does not answer a pull of a consumer it does not have). A delivery
    /// that arrives after its pull was given up is not lost: the inbox is kept, and a later
    /// call returns it.
    pub(super) async fn next(&mut self) -> Result<Option<jetstream::Message>, Error> {
        if self.open == 0 {
            let request = format!("{{\"batch\":{},\"expires\":{}}}", self.batch, PULL_EXPIRES.as_nanos());
            self.client
                .publish_with_reply(self.request.clone(), self.inbox.clone(), request.into())
                .await
                .map_err(nats)?;
            (self.open, self.deadline) = (self.batch, Instant::now() + PULL_EXPIRES + Duration::from_secs(1));
        }
        loop {
            let Ok(message) = tokio::time::timeout_at(self.deadline, self.deliveries.next()).await else {
                self.open = 0;
                return Err(Error(format!("no answer to a pull of {}", self.request)));
            };
            let Some(message) = message else { return Err(Error("the inbox was closed".into())) };
            if message.reply.as_ref().is_some_and(|r| r.starts_with("$JS.ACK.")) {
                self.open = self.open.saturating_sub(1);
                return Ok(Some(jetstream::Message { message, context: self.js.clone() }));
            }
            match message.status {
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => {
                    self.open = 0;
                    return Ok(None);
                }
                status => {
                    self.open = 0;
                    let status = status.map(|s| s.to_string()).unwrap_or_default();
                    return Err(Error(format!("pull: {status} {}", message.description.unwrap_or_default())));
                }
            }
        }
    }
}
