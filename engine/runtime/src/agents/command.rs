//! Command agents: a local process per attempt.
//!
//! The task goes to stdin as one JSON object; `LTMC_*` variables carry the ids. The last line of
//! stdout that is a JSON object is the result (its `output` field, or the object itself);
//! otherwise all of stdout is the plain-text output. A non-zero exit is a failure. Output is
//! capped.
//!
//! Where the `ltmc` binary installed the [supervisor](super::supervisor), the agent runs under
//! it and its whole process tree belongs to the attempt: daemons that leave the process group
//! are killed when the agent exits, and the tree is terminated when the attempt times out or the
//! engine dies. Without it (the library used on its own), the agent runs in its own process
//! group: on timeout the group gets SIGTERM, then SIGKILL after a grace period, and after any
//! exit the group is killed. Either way the engine stops waiting for the agent's pipes a grace
//! period after it has ended, whoever still holds them.

use ltmc_core::protocol::EmittedEvent;
use ltmc_core::run::Outcome;
use ltmc_core::spec::AgentDef;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::Task;

/// Most stdout kept from one attempt; the rest is read and dropped.
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// Most stderr kept (its end, for error messages).
pub const MAX_STDERR_BYTES: usize = 16 * 1024;
/// Time between SIGTERM and SIGKILL on timeout.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// Reads everything, keeping the last `cap` bytes (the end of stderr explains a failure).
async fn read_tail(mut r: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut kept: std::collections::VecDeque<u8> = std::collections::VecDeque::with_capacity(cap.min(64 * 1024));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept.into_iter().collect(),
            Ok(n) => {
                kept.extend(&buf[..n]);
                let excess = kept.len().saturating_sub(cap);
                kept.drain(..excess);
            }
        }
    }
}

/// Reads everything, keeping the first `cap` bytes; reports whether anything was dropped.
async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, truncated),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
}

struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0, Signal::SIGKILL);
    }
}

fn kill_group(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

pub(super) async fn perform(
    argv: &[String],
    def: &AgentDef,
    task: &Task,
    base_dir: &Path,
    timeout: Duration,
) -> Outcome {
    let started = Instant::now();
    let elapsed = || started.elapsed().as_millis() as u64;
    let Some((program, args)) = argv.split_first() else {
        return Outcome::Failed { error: "empty command".into(), duration_ms: 0 };
    };
    let cwd = match &def.cwd {
        Some(dir) => base_dir.join(dir),
        None => base_dir.to_path_buf(),
    };
    let supervisor = super::supervisor::program();
    let mut cmd = match supervisor {
        Some(sup) => {
            let mut c = Command::new(sup);
            c.arg(super::supervisor::ARG).arg("--").arg(program).args(args);
            c
        }
        None => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
    };
    cmd.current_dir(&cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LTMC_RUN_ID", &task.run_id)
        .env("LTMC_WORKFLOW", &task.workflow)
        .env("LTMC_STEP", &task.step)
        .env("LTMC_AGENT", &task.agent)
        .env("LTMC_ATTEMPT", task.attempt.to_string())
        .env("LTMC_IDEMPOTENCY_KEY", &task.idempotency_key)
        .envs(&def.env)
        .process_group(0)
        // The supervisor must not be killed outright: the tree it holds would escape. Closing
        // its stdin (dropping this attempt) makes it terminate the tree itself.
        .kill_on_drop(supervisor.is_none());
    if let Some(s) = &task.session_id {
        cmd.env("LTMC_SESSION_ID", s);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed {
                error: format!("cannot start {program:?} in {}: {e}", cwd.display()),
                duration_ms: elapsed(),
            };
        }
    };
    let pid = child.id();
    // If this attempt is abandoned (the run failed or timed out elsewhere, the driver stopped),
    // dropping the future kills the whole group, not only the direct child; a supervised tree
    // is ended by its supervisor when its stdin closes.
    let _group = GroupGuard(if supervisor.is_some() { None } else { pid });
    let stdin = child.stdin.take();
    let task_json = serde_json::to_vec(task).unwrap_or_default();
    let supervised = supervisor.is_some();
    let mut writer = tokio::spawn(async move {
        let mut stdin = stdin?;
        // An agent that ignores stdin closes the pipe; that is not an error.
        let _ = stdin.write_all(&task_json).await;
        let _ = stdin.write_all(b"\n").await;
        // A supervisor watches its stdin for the end of the attempt: keep it open till then.
        // An agent itself gets the end of its input (it may read to the end).
        supervised.then_some(stdin)
    });
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = tokio::spawn(async move {
        match stdout {
            Some(s) => read_capped(s, MAX_OUTPUT_BYTES).await,
            None => (Vec::new(), false),
        }
    });
    let err_reader = tokio::spawn(async move {
        match stderr {
            Some(s) => read_tail(s, MAX_STDERR_BYTES).await,
            None => Vec::new(),
        }
    });

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Some(status),
        Err(_) => {
            if supervisor.is_some() {
                // The end of stdin tells the supervisor to terminate the tree (SIGTERM, grace,
                // SIGKILL); it is killed itself only if it does not manage in twice that time.
                writer.abort();
                let _ = (&mut writer).await;
                if tokio::time::timeout(TERM_GRACE * 2, child.wait()).await.is_err() {
                    kill_group(pid, Signal::SIGKILL);
                    let _ = child.wait().await;
                }
            } else {
                kill_group(pid, Signal::SIGTERM);
                if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_err() {
                    kill_group(pid, Signal::SIGKILL);
                    let _ = child.wait().await;
                }
            }
            None
        }
    };
    // Whatever the agent left running in its group goes too; that also closes the pipes.
    kill_group(pid, Signal::SIGKILL);
    writer.abort();
    // A process that left the group (no supervisor) may still hold the pipes: wait for their
    // end only so long, so the attempt's time limit holds whatever holds them.
    let (out_abort, err_abort) = (out_reader.abort_handle(), err_reader.abort_handle());
    let pipes = async { (out_reader.await.unwrap_or_default(), err_reader.await.unwrap_or_default()) };
    let Ok(((stdout, out_truncated), stderr)) = tokio::time::timeout(TERM_GRACE, pipes).await else {
        out_abort.abort();
        err_abort.abort();
        return Outcome::Failed {
            error: format!(
                "the agent ended, but a process it started still holds its output open after {:.1}s; \
                 it was left running (run agents through the `ltmc` binary to have it killed)",
                TERM_GRACE.as_secs_f64()
            ),
            duration_ms: elapsed(),
        };
    };
    let stderr_tail = tail(&String::from_utf8_lossy(&stderr), 2000);

    let Some(status) = status else {
        return Outcome::Failed {
            error: format!(
                "timed out after {:.1}s; {} killed{}",
                timeout.as_secs_f64(),
                if supervisor.is_some() { "the agent's processes were" } else { "the process group was" },
                suffix(&stderr_tail)
            ),
            duration_ms: elapsed(),
        };
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Failed { error: format!("waiting for the agent failed: {e}"), duration_ms: elapsed() };
        }
    };
    if !status.success() {
        let why = String::from_utf8_lossy(&stderr);
        if let Some(e) = why.strip_prefix(super::supervisor::CANNOT_START)
            && supervisor.is_some()
            && status.code() == Some(super::supervisor::CANNOT_START_CODE)
        {
            let error = format!("cannot start {program:?} in {}: {}", cwd.display(), e.trim_end());
            return Outcome::Failed { error, duration_ms: elapsed() };
        }
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_owned(),
        };
        return Outcome::Failed { error: format!("{how}{}", suffix(&stderr_tail)), duration_ms: elapsed() };
    }
    let text = String::from_utf8_lossy(&stdout);
    if out_truncated {
        // A truncated result cannot be trusted to hold the agent's facts.
        let output = serde_json::json!({
            "truncated": true,
            "limit_bytes": MAX_OUTPUT_BYTES,
            "text": text,
        });
        return Outcome::Completed { output, facts: vec![], vote: None, events: vec![], duration_ms: elapsed() };
    }
    let AgentReply { output, facts, vote, events } = parse_result(&text);
    Outcome::Completed { output, facts, vote, events, duration_ms: elapsed() }
}

fn suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() { String::new() } else { format!("; stderr: {}", stderr.trim()) }
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// What an agent's stdout says.
#[derive(Debug, PartialEq)]
pub(crate) struct AgentReply {
    pub(crate) output: Value,
    pub(crate) facts: Vec<String>,
    pub(crate) vote: Option<String>,
    pub(crate) events: Vec<EmittedEvent>,
}

/// The result of an agent's stdout: the last line that is a JSON object, or the whole text as a
/// string. An object with `output`, `facts` or `vote` follows the protocol; any other object is
/// itself the output.
pub(crate) fn parse_result(text: &str) -> AgentReply {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(text.trim()) {
        return unwrap_result(v);
    }
    for line in text.lines().rev() {
        let line = line.trim();
        if line.starts_with('{')
            && let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(line)
        {
            return unwrap_result(v);
        }
    }
    let trimmed = text.trim_end();
    let output = if trimmed.is_empty() { Value::Null } else { Value::String(trimmed.to_owned()) };
    AgentReply { output, facts: vec![], vote: None, events: vec![] }
}

fn unwrap_result(v: Value) -> AgentReply {
    match v {
        Value::Object(mut m) if ["output", "facts", "vote", "events"].iter().any(|k| m.contains_key(*k)) => {
            // Anything but strings is kept in a form no name can have, so validation refuses it.
            let facts = match m.remove("facts") {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|f| match f {
                        Value::String(s) => s,
                        other => format!("{other} (not a string)"),
                    })
                    .collect(),
                Some(Value::Null) | None => vec![],
                Some(other) => vec![format!("{other} (not a list)")],
            };
            let vote = match m.remove("vote") {
                Some(Value::String(s)) => Some(s),
                Some(Value::Null) | None => None,
                Some(other) => Some(format!("{other} (not a string)")),
            };
            let events = parse_events(m.remove("events"));
            AgentReply { output: m.remove("output").unwrap_or(Value::Null), facts, vote, events }
        }
        other => AgentReply { output: other, facts: vec![], vote: None, events: vec![] },
    }
}

/// Events from a result's `events` list. A malformed entry is kept with a type no name can have,
/// so validation refuses the attempt with a clear message rather than dropping it silently.
pub(crate) fn parse_events(v: Option<Value>) -> Vec<EmittedEvent> {
    let bad = |what: String| EmittedEvent { event_type: format!("{what} (not an event)"), data: Value::Null };
    match v {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(mut m) => match m.remove("type") {
                    Some(Value::String(t)) => {
                        EmittedEvent { event_type: t, data: m.remove("data").unwrap_or(Value::Null) }
                    }
                    _ => bad(Value::Object(m).to_string()),
                },
                other => bad(other.to_string()),
            })
            .collect(),
        Some(other) => vec![bad(other.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn last_json_object_wins() {
        let out = |t: &str| parse_result(t).output;
        assert_eq!(out("working...\n{\"output\": 1}\n{\"output\": 2}\n"), json!(2));
        assert_eq!(out("{\"a\": 1}"), json!({"a": 1}));
        assert_eq!(out("plain text\n"), json!("plain text"));
        assert_eq!(out(""), Value::Null);
        assert_eq!(out("{\n  \"output\": \"pretty\"\n}\n"), json!("pretty"));
    }

    #[test]
    fn facts_and_votes_come_with_the_protocol_object() {
        let r = |output, facts: &[&str], vote: Option<&str>| AgentReply {
            output,
            facts: facts.iter().map(|f| (*f).to_owned()).collect(),
            vote: vote.map(str::to_owned),
            events: vec![],
        };
        assert_eq!(parse_result("{\"output\": 1, \"facts\": [\"tests_pass\"]}"), r(json!(1), &["tests_pass"], None));
        assert_eq!(parse_result("{\"facts\": [\"a\", \"b\"]}"), r(Value::Null, &["a", "b"], None));
        assert_eq!(parse_result("{\"vote\": \"approve\", \"output\": 2}"), r(json!(2), &[], Some("approve")));
        // Not a protocol object: no facts, the object is the output.
        assert_eq!(parse_result("{\"fact\": 1}"), r(json!({"fact": 1}), &[], None));
        // A non-string fact is kept in a form no name can have, so it is refused later.
        assert_eq!(parse_result("{\"facts\": [1]}").facts, vec!["1 (not a string)".to_owned()]);
        assert!(ltmc_core::names::validate("fact", &parse_result("{\"facts\": 5}").facts[0]).is_err());
    }
}
