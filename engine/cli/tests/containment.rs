//! Agents cannot escape their attempt: daemons they start (in their own session, double-forked)
//! are killed when the attempt ends, a daemon holding the agent's stdout cannot stretch a
//! timeout, and an agent dies with the `ltmc` process that started it, `kill -9` included.
//! Linux only: the supervisor relies on `PR_SET_CHILD_SUBREAPER` and reads `/proc`.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::Sandbox;

/// A workflow of one `sh -c SCRIPT` agent.
fn workflow(sb: &Sandbox, script: &str, timeout: u32) -> PathBuf {
    let quoted = serde_json::to_string(script).expect("json string");
    let text = format!(
        "name: contain\npattern: sequential\nagents:\n  agent: {{run: [sh, -c, {quoted}], timeout: {timeout}, retries: 0}}\n"
    );
    sb.write("workflow.yaml", &text)
}

fn alive(pid: i32) -> bool {
    // A zombie is dead: it only waits for its parent to reap it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// The pids the agent wrote to `pids` (one per line), once `want` of them are there.
fn wait_for_pids(file: &Path, want: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids: Vec<i32> =
            std::fs::read_to_string(file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.len() >= want {
            return pids;
        }
        assert!(Instant::now() < deadline, "the agent did not write {want} pids to {}", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[track_caller]
fn assert_all_gone(pids: &[i32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| alive(*p)) {
        if Instant::now() > deadline {
            let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
            for p in &left {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
            panic!("processes the agent started outlived their attempt: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two daemons that leave the agent's process group — one in its own session, one
/// double-forked — both holding the agent's stdout. The agent itself answers at once.
const DAEMONS: &str = "setsid sh -c 'echo $$ >> pids; exec sleep 30' & \
    (sh -c 'echo $$ >> pids; exec sleep 30' &) ; \
    while [ $(wc -l < pids 2>/dev/null || echo 0) -lt 2 ]; do sleep 0.01; done; \
    echo '{\"output\": \"done\"}'";

#[test]
fn daemons_an_agent_starts_die_with_its_attempt() {
    let sb = Sandbox::new();
    let wf = workflow(&sb, DAEMONS, 20);
    let started = Instant::now();
    let out = sb.cmd(&["run", wf.to_str().expect("utf-8 path"), "--json"]).output().expect("run ltmc");
    let took = started.elapsed();
    let pids = wait_for_pids(&sb.path().join("pids"), 2);
    assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
    // Today's failure: the run waits for the daemons' 30 s because they hold its stdout.
    assert!(took < Duration::from_secs(10), "the run took {took:?}: something held the agent's stdout");
    assert_all_gone(&pids, Duration::from_secs(2));
}

#[test]
fn a_timeout_holds_whatever_holds_the_pipe() {
    let sb = Sandbox::new();
    // The agent never answers; its daemon ignores SIGTERM and keeps stdout open.
    let script = "setsid sh -c 'trap \"\" TERM; echo $$ >> pids; while :; do sleep 1; done' & \
                  echo $$ >> pids; sleep 60";
    let wf = workflow(&sb, script, 2);
    let started = Instant::now();
    let out = sb.cmd(&["run", wf.to_str().expect("utf-8 path")]).output().expect("run ltmc");
    let took = started.elapsed();
    let pids = wait_for_pids(&sb.path().join("pids"), 2);
    assert_eq!(out.status.code(), Some(1), "the run should fail: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out after 2.0s"));
    // The timeout (2 s), the grace before SIGKILL (2 s), and slack for a loaded machine.
    assert!(took < Duration::from_secs(9), "a 2 s timeout took {took:?}");
    assert_all_gone(&pids, Duration::from_secs(2));
}

#[test]
fn an_agent_dies_with_the_engine_that_started_it() {
    let sb = Sandbox::new();
    // The agent and a daemon of its own; each would write a side effect after 3 s.
    let script = "setsid sh -c 'echo $$ >> pids; sleep 3; echo daemon >> effects' & \
                  echo $$ >> pids; sleep 3; echo agent >> effects; echo '{}'";
    let wf = workflow(&sb, script, 60);
    let mut engine = sb
        .cmd(&["run", wf.to_str().expect("utf-8 path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ltmc");
    let pids = wait_for_pids(&sb.path().join("pids"), 2);
    engine.kill().expect("kill -9 the engine");
    let _ = engine.wait();
    assert_all_gone(&pids, Duration::from_secs(1));
    let effects = std::fs::read_to_string(sb.path().join("effects")).unwrap_or_default();
    assert!(effects.is_empty(), "agents wrote side effects after their engine died: {effects:?}");
}

#[test]
fn a_program_that_cannot_start_is_reported_as_such_under_the_supervisor() {
    let sb = Sandbox::new();
    sb.write("w.yaml", "pattern: sequential\nagents:\n  x: {run: [no-such-program], retries: 0}\n");
    let out = sb.cmd(&["run", "w.yaml"]).output().expect("run ltmc");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("cannot start \"no-such-program\" in {}: No such file", sb.path().display());
    assert!(stderr.contains(&want), "{stderr}");
}
