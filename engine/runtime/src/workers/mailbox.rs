//! A run's mailbox: sends its worker tasks and routes the reports that come back.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, consumer::DeliverPolicy};
use ltmc_core::protocol::{AgentTask, ReportBody, WorkerReport, WorkerTask};
use ltmc_core::run::Outcome;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::read::Puller;
use super::{Error, Names, nats};

type Key = (String, u32);

/// Most reports one pull request of the mailbox asks for.
const REPORTS_PER_PULL: usize = 256;

/// Most results a mailbox keeps for attempts nobody waits for yet (results that came while the
/// engine was down). A run has far fewer attempts; past it, a worker is sending results for
/// attempts that do not exist, and they are dropped instead of growing the engine's memory.
const MAX_EARLY_RESULTS: usize = 4096;

#[derive(Default)]
struct Inbox {
    /// Attempts waiting for reports.
    waiting: HashMap<Key, mpsc::UnboundedSender<ReportBody>>,
    /// Results that came before anyone waited (sent while the engine was down): the first wins.
    /// At most [`MAX_EARLY_RESULTS`].
    results: HashMap<Key, ReportBody>,
    /// Results dropped because `results` was full (warned about once).
    dropped: u64,
}

/// Sends a run's worker tasks and routes its reports to the attempts waiting for them. Reading
/// stops when the mailbox is dropped.
pub struct RunMailbox {
    js: jetstream::Context,
    names: Names,
    run_id: String,
    inbox: Arc<Mutex<Inbox>>,
    caught_up: watch::Receiver<bool>,
    router: JoinHandle<()>,
}

impl Drop for RunMailbox {
    fn drop(&mut self) {
        self.router.abort();
    }
}

impl RunMailbox {
    pub(super) async fn open(js: jetstream::Context, names: Names, run_id: &str) -> Result<RunMailbox, Error> {
        js.get_stream(names.results_stream()).await.map_err(nats)?;
        let (caught_tx, caught_up) = watch::channel(false);
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let (routed, subject) = (inbox.clone(), names.results_subject(run_id));
        let router = tokio::spawn(read_reports(
            js.clone(),
            names.results_stream(),
            subject,
            run_id.to_owned(),
            routed,
            caught_tx,
        ));
        Ok(RunMailbox { js, names, run_id: run_id.to_owned(), inbox, caught_up, router })
    }

    /// Sends one attempt to the agent's workers and waits for its result. The attempt fails when
    /// no report comes for `timeout`; each heartbeat restarts the count. Never panics.
    pub async fn perform(&self, task: &AgentTask, timeout: Duration) -> Outcome {
        let started = Instant::now();
        let elapsed = || started.elapsed().as_millis() as u64;
        let key = (task.step.clone(), task.attempt);
        // Read the reports already stored first: a result that came while the engine was down
        // is used, not asked for again.
        let mut caught = self.caught_up.clone();
        let _ = tokio::time::timeout(timeout, caught.wait_for(|c| *c)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let earlier = match self.inbox.lock() {
            Ok(mut inbox) => inbox.results.remove(&key).or_else(|| {
                inbox.waiting.insert(key.clone(), tx);
                None
            }),
            Err(_) => return Outcome::Failed { error: "worker mailbox poisoned".into(), duration_ms: 0 },
        };
        let _waiting = Unregister(self.inbox.clone(), key);
        if let Some(body) = earlier {
            return outcome(body, elapsed());
        }
        if let Err(e) = self.send(task, timeout, started + timeout).await {
            return Outcome::Failed {
                error: format!("could not queue the task for workers: {e}"),
                duration_ms: elapsed(),
            };
        }
        loop {
            match tokio::time::timeout(timeout, rx.recv()).await {
                Ok(Some(ReportBody::Heartbeat { .. })) => continue,
                Ok(Some(body)) => return outcome(body, elapsed()),
                Ok(None) => return Outcome::Failed { error: "worker mailbox closed".into(), duration_ms: elapsed() },
                Err(_) => {
                    return Outcome::Failed {
                        error: format!(
                            "no report from a worker of agent {} for {:.1}s (is `ltmc worker --agent {}` running?)",
                            task.agent,
                            timeout.as_secs_f64(),
                            task.agent
                        ),
                        duration_ms: elapsed(),
                    };
                }
            }
        }
    }

    /// Publishes the task (idempotently: the message id is the idempotency key), retrying while
    /// NATS is unreachable until `deadline`.
    async fn send(&self, task: &AgentTask, timeout: Duration, deadline: Instant) -> Result<(), Error> {
        let secs = timeout.as_secs_f64();
        let wire = WorkerTask {
            task: task.clone(),
            timeout_secs: secs,
            heartbeat_secs: (secs / 3.0).clamp(0.05, 10.0),
            reply_subject: self.names.results_subject(&self.run_id),
        };
        let payload = serde_json::to_vec(&wire).map_err(nats)?;
        let mut delay = crate::backoff::Backoff::starting_at(Duration::from_millis(50));
        loop {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", task.idempotency_key.as_str());
            let sent = match self
                .js
                .publish_with_headers(self.names.task_subject(&task.agent), headers, payload.clone().into())
                .await
            {
                Ok(ack) => ack.await.map(|_| ()).map_err(nats),
                Err(e) => Err(nats(e)),
            };
            match sent {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() + delay.peek() >= deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "queueing a worker task; retrying");
                    delay.wait().await;
                }
            }
        }
    }
}

/// Reads the run's reports in the order stored, from the first, and routes them; `caught_up`
/// turns true once every report stored when reading began is read. Reads through an ephemeral
/// consumer of its own, pulled with [`Puller`] (see `read.rs` for why not async-nats's ordered
/// consumer: one hostile message would stall it), and makes a new one from the next unread
/// sequence whenever a delivery is missing or the consumer is gone (a NATS restart).
async fn read_reports(
    js: jetstream::Context,
    stream: String,
    subject: String,
    run_id: String,
    inbox: Arc<Mutex<Inbox>>,
    caught_up: watch::Sender<bool>,
) {
    let mut next = 1;
    loop {
        let (mut reports, pending) = match reader(&js, &stream, &subject, next).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, run = %run_id, "reading worker reports");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if pending == 0 {
            caught_up.send_replace(true);
        }
        let mut delivered = 0;
        loop {
            let msg = match reports.next().await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    caught_up.send_replace(true); // the pull ended with nothing more to read
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, run = %run_id, "reading worker reports; reading again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            };
            let Ok(info) = msg.info() else { break };
            if info.consumer_sequence != delivered + 1 {
                break; // a delivery went missing: read again from the first report not read
            }
            delivered += 1;
            next = info.stream_sequence + 1;
            let pending = info.pending;
            if let Some((key, body)) = parse_report(&run_id, &msg.payload) {
                route(&inbox, key, body);
            }
            if pending == 0 {
                caught_up.send_replace(true);
            }
        }
    }
}

/// An ephemeral consumer of the run's reports from stream sequence `from`, and how many it
/// has to deliver now. It needs no acknowledgements and goes away when no longer pulled.
async fn reader(js: &jetstream::Context, stream_name: &str, subject: &str, from: u64) -> Result<(Puller, u64), Error> {
    let stream = js.get_stream_no_info(stream_name).await.map_err(nats)?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let info = consumer.cached_info();
    let (name, pending) = (info.name.clone(), info.num_pending);
    Ok((Puller::new(js, stream_name, &name, REPORTS_PER_PULL).await?, pending))
}

struct Unregister(Arc<Mutex<Inbox>>, Key);

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Ok(mut inbox) = self.0.lock() {
            inbox.waiting.remove(&self.1);
        }
    }
}

fn route(inbox: &Mutex<Inbox>, key: Key, body: ReportBody) {
    let Ok(mut inbox) = inbox.lock() else { return };
    if let Some(tx) = inbox.waiting.get(&key) {
        let _ = tx.send(body);
    } else if !matches!(body, ReportBody::Heartbeat { .. }) {
        if inbox.results.len() < MAX_EARLY_RESULTS || inbox.results.contains_key(&key) {
            inbox.results.entry(key).or_insert(body);
        } else {
            if inbox.dropped == 0 {
                tracing::warn!(
                    "a worker sends results for more attempts than a run has ({MAX_EARLY_RESULTS} kept); \
                     the rest are dropped"
                );
            }
            inbox.dropped += 1;
        }
    }
}

/// The attempt a report is about, and what it says. A report for another run, or without
/// step and attempt, is dropped with a warning; one that names an attempt but is malformed
/// fails that attempt with the reason, so a broken worker is visible rather than waited on.
fn parse_report(run_id: &str, payload: &[u8]) -> Option<(Key, ReportBody)> {
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(run = run_id, error = %e, "dropped a worker report that is not JSON");
            return None;
        }
    };
    let step = value.get("step").and_then(Value::as_str);
    let attempt = value.get("attempt").and_then(Value::as_u64).and_then(|a| u32::try_from(a).ok());
    let (Some(step), Some(attempt)) = (step, attempt) else {
        tracing::warn!(run = run_id, "dropped a worker report without step and attempt");
        return None;
    };
    if value.get("run_id").and_then(Value::as_str) != Some(run_id) {
        tracing::warn!(run = run_id, "dropped a worker report for another run");
        return None;
    }
    let key = (step.to_owned(), attempt);
    match serde_json::from_value::<WorkerReport>(value) {
        Ok(r) => Some((key, r.body)),
        Err(e) => Some((
            key,
            ReportBody::Failed { error: format!("the worker sent a malformed report: {e}"), duration_ms: 0 },
        )),
    }
}

fn outcome(body: ReportBody, waited_ms: u64) -> Outcome {
    match body {
        ReportBody::Completed { output, facts, vote, events, duration_ms } => {
            Outcome::Completed { output, facts, vote, events, duration_ms: duration_ms.max(waited_ms) }
        }
        ReportBody::Failed { error, duration_ms } => Outcome::Failed { error, duration_ms: duration_ms.max(waited_ms) },
        ReportBody::Heartbeat { .. } => Outcome::Failed { error: "a heartbeat is not a result".into(), duration_ms: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_parsed_or_fail_their_attempt() {
        let ok = br#"{"run_id":"r","step":"s","attempt":2,"type":"completed","output":1,"facts":["a"]}"#;
        let (key, body) = parse_report("r", ok).expect("parsed");
        assert_eq!(key, ("s".to_owned(), 2));
        assert!(matches!(body, ReportBody::Completed { ref facts, .. } if facts == &["a".to_owned()]));
        assert!(parse_report("other", ok).is_none());
        assert!(parse_report("r", b"not json").is_none());
        assert!(parse_report("r", br#"{"run_id":"r","type":"completed"}"#).is_none());
        let bad = br#"{"run_id":"r","step":"s","attempt":1,"type":"finished"}"#;
        let (_, body) = parse_report("r", bad).expect("names an attempt");
        assert!(matches!(body, ReportBody::Failed { ref error, .. } if error.contains("malformed")));
    }

    #[test]
    fn results_for_attempts_nobody_waits_for_are_bounded() {
        let inbox = Mutex::new(Inbox::default());
        let done = || ReportBody::Failed { error: "x".into(), duration_ms: 0 };
        for i in 0..MAX_EARLY_RESULTS + 1000 {
            route(&inbox, (format!("bogus-{i}"), 1), done());
        }
        let inbox = inbox.lock().expect("inbox");
        assert_eq!(inbox.results.len(), MAX_EARLY_RESULTS);
        assert_eq!(inbox.dropped, 1000);
    }
}
