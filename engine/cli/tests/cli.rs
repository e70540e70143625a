//! The `ltmc` binary end to end: each test runs in a fresh temporary directory, with the default
//! embedded store (`sqlite://.ltmc/ltmc.db`, relative to that directory) and no NATS.

use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::{Sandbox, assert_exit, json_of, text};

const SEQUENTIAL: &str = "\
name: hello
pattern: sequential
agents:
  first: {builtin: echo}
  second: {builtin: sleep, params: {ms: 10}}
  third: {builtin: echo}
";

#[test]
fn sequential_run_then_runs_status_events_and_audit() {
    let sb = Sandbox::new();
    sb.write("hello.yaml", SEQUENTIAL);

    // Plain run: the final output alone on stdout, progress on stderr.
    let out = sb.run(&["run", "hello.yaml", "--input", r#"{"greeting": "hi"}"#]);
    assert_exit(&out, 0);
    assert_eq!(json_of(&out), json!({"greeting": "hi"}), "the echoed input is the result");
    let err = text(&out.stderr);
    assert!(err.contains("started") && err.contains("first") && err.contains("third"), "progress on stderr:\n{err}");
    assert!(err.contains("run completed"), "{err}");
    assert!(sb.path().join(".ltmc/ltmc.db").exists(), "default store is relative to the cwd");

    // --json: a summary.
    let out = sb.run(&["run", "hello.yaml", "--json", "--input", "[1, 2]"]);
    assert_exit(&out, 0);
    let summary = json_of(&out);
    assert_eq!(summary["status"], "completed", "{summary:#}");
    assert_eq!(summary["workflow"], "hello");
    assert_eq!(summary["output"], json!([1, 2]));
    let run_id = summary["run_id"].as_str().expect("run_id").to_owned();
    assert_eq!(summary["steps"].as_array().map(Vec::len), Some(3));

    // runs --json lists both runs.
    let out = sb.run(&["runs", "--json"]);
    assert_exit(&out, 0);
    let runs = json_of(&out);
    let rows = runs.as_array().expect("array of runs");
    assert_eq!(rows.len(), 2, "{runs:#}");
    let row = rows.iter().find(|r| r["run_id"] == run_id.as_str()).expect("the --json run is listed");
    assert_eq!(row["status"], "completed");
    assert_eq!(row["steps_completed"], 3);
    assert_eq!(row["workflow"], "hello");

    // status RUN --json shows its steps in order.
    let out = sb.run(&["status", &run_id, "--json"]);
    assert_exit(&out, 0);
    let status = json_of(&out);
    assert_eq!(status["status"], "completed");
    let steps: Vec<(&str, &str)> = status["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["step"].as_str().unwrap_or(""), s["status"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(steps, [("first", "completed"), ("second", "completed"), ("third", "completed")]);

    // events --json: one JSON object per line.
    let out = sb.run(&["events", "--json"]);
    assert_exit(&out, 0);
    let events: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line is not JSON ({e}): {l}")))
        .collect();
    let types: Vec<&str> = events.iter().filter_map(|e| e["event_type"].as_str()).collect();
    assert_eq!(types.iter().filter(|t| **t == "RunStarted").count(), 2, "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "RunCompleted").count(), 2, "{types:?}");
    assert_eq!(types.first(), Some(&"RunStarted"));
    let positions: Vec<i64> = events.iter().filter_map(|e| e["global_position"].as_i64()).collect();
    assert_eq!(positions.len(), events.len());
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions ascend: {positions:?}");
    // --stream narrows to one run.
    let out = sb.run(&["events", "--json", "--stream", &format!("run-{run_id}")]);
    assert_exit(&out, 0);
    let n = text(&out.stdout).lines().count();
    assert!(n >= 8 && n < events.len(), "{n} events in the stream of {run_id}");

    // The hash chains verify.
    let out = sb.run(&["audit", "--verify"]);
    assert_exit(&out, 0);
    let out = sb.run(&["audit", "--verify", "--json"]);
    assert_exit(&out, 0);
    let audit = json_of(&out);
    assert_eq!(audit["broken"], json!([]), "{audit:#}");
    assert_eq!(audit["events"].as_u64(), Some(events.len() as u64));
}

#[test]
fn seed_shaped_workflow_runs_with_an_agents_file() {
    let sb = Sandbox::new();
    sb.write(
        "seed.json",
        r#"{"pattern": "sequential", "agents": ["dev","test","review","docs"], "handoff_validation": true, "rollback_on_failure": true}"#,
    );
    sb.write(
        "agents.yaml",
        "dev: {builtin: echo}\ntest: {builtin: echo}\nreview: {builtin: echo}\ndocs: {builtin: echo}\n",
    );
    let out = sb.run(&["run", "seed.json", "--agents", "agents.yaml", "--input", "\"draft\"", "--json"]);
    assert_exit(&out, 0);
    let s = json_of(&out);
    assert_eq!(s["status"], "completed");
    assert_eq!(s["output"], "draft");
    assert_eq!(s["workflow"], "seed", "the name defaults to the file stem");
}

#[test]
fn failing_step_exits_1() {
    let sb = Sandbox::new();
    sb.write(
        "fails.yaml",
        "pattern: sequential\nagents:\n  ok: {builtin: noop}\n  bad: {builtin: fail, params: {message: deliberately broken}, retries: 0}\n  never: {builtin: noop}\n",
    );
    let out = sb.run(&["run", "fails.yaml"]);
    assert_exit(&out, 1);
    assert!(text(&out.stderr).contains("deliberately broken"), "{}", text(&out.stderr));

    let out = sb.run(&["run", "fails.yaml", "--json"]);
    assert_exit(&out, 1);
    let s = json_of(&out);
    assert_eq!(s["status"], "failed");
    let statuses: Vec<&str> =
        s["steps"].as_array().expect("steps").iter().filter_map(|st| st["status"].as_str()).collect();
    // A step the failed run never reached will never run: abandoned, not pending.
    assert_eq!(statuses, ["completed", "failed", "abandoned"]);
}

#[test]
fn retries_are_attempted_then_the_run_fails() {
    let sb = Sandbox::new();
    sb.write(
        "retry.yaml",
        "pattern: sequential\nagents:\n  flaky:\n    builtin: fail\n    retries: 2\n    backoff: 0.01\n",
    );
    let out = sb.run(&["run", "retry.yaml", "--json"]);
    assert_exit(&out, 1);
    let s = json_of(&out);
    assert_eq!(s["steps"][0]["attempts"], 3, "{s:#}");
    assert!(text(&out.stderr).contains("attempt 3"), "{}", text(&out.stderr));
}

#[test]
fn concurrent_runs_share_a_fresh_store() {
    let sb = Sandbox::new();
    sb.write(
        "par.yaml",
        "pattern: parallel\nagents:\n  a: {builtin: sleep, params: {ms: 20}}\n  b: {builtin: echo}\n  c: {builtin: noop}\n",
    );
    // All start against a store that does not exist yet, so they race to create and migrate it.
    let children: Vec<_> = (0..4)
        .map(|_| {
            sb.cmd(&["run", "par.yaml", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn ltmc")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert_exit(&out, 0);
        assert_eq!(json_of(&out)["status"], "completed");
    }
    let out = sb.run(&["runs", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json_of(&out).as_array().map(Vec::len), Some(4));
    assert_exit(&sb.run(&["audit", "--verify"]), 0);
}

/// Runs `ltmc ARGS` expecting a refusal: exit 2, stderr containing each needle, and no store.
#[track_caller]
fn assert_refused(sb: &Sandbox, args: &[&str], needles: &[&str]) -> String {
    let out = sb.run(args);
    assert_exit(&out, 2);
    let err = text(&out.stderr);
    for n in needles {
        assert!(err.contains(n), "stderr should contain {n:?}:\n{err}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", text(&out.stdout));
    assert!(!sb.store_exists(), "a refused input wrote {}", sb.path().join(".ltmc").display());
    err
}

#[test]
fn syntax_error_exits_2_with_file_and_line_and_writes_nothing() {
    let sb = Sandbox::new();
    sb.write("broken.yaml", "pattern: sequential\nagents:\n  a: {builtin: noop\n  b: {builtin: noop}\n");
    let err = assert_refused(&sb, &["run", "broken.yaml"], &["broken.yaml:"]);
    let line: String =
        err.split("broken.yaml:").nth(1).unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
    assert!(!line.is_empty(), "a line number follows the file name:\n{err}");
}

#[test]
fn unknown_key_exits_2_with_its_line() {
    let sb = Sandbox::new();
    sb.write("typo.yaml", "name: t\npatern: sequential\nagents:\n  a: {builtin: noop}\n");
    assert_refused(&sb, &["run", "typo.yaml"], &["typo.yaml:2:", "patern"]);
}

#[test]
fn unknown_agent_exits_2_naming_it() {
    let sb = Sandbox::new();
    sb.write("unk.yaml", "pattern: sequential\nagents:\n  - ghost\n");
    assert_refused(&sb, &["run", "unk.yaml"], &["unk.yaml:3:", "ghost"]);
    // Named in a list, defined nowhere, even with an agents file.
    sb.write("agents.yaml", "dev: {builtin: noop}\n");
    assert_refused(&sb, &["run", "unk.yaml", "--agents", "agents.yaml"], &["unk.yaml:3:", "ghost", "dev"]);
}

#[test]
fn bad_agents_file_exits_2_naming_it() {
    let sb = Sandbox::new();
    sb.write("w.yaml", "pattern: sequential\nagents: [dev]\n");
    sb.write("agents.yaml", "dev:\n  builtin: noop\n  retires: 1\n");
    assert_refused(&sb, &["run", "w.yaml", "--agents", "agents.yaml"], &["agents.yaml:3:", "retires"]);
}

#[test]
fn cycle_exits_2_naming_the_cycle() {
    let sb = Sandbox::new();
    sb.write(
        "cycle.yaml",
        "agents: {w: {builtin: noop}}\nsteps:\n  - {name: a, agent: w, needs: [c]}\n  - {name: b, agent: w, needs: [a]}\n  - {name: c, agent: w, needs: [b]}\n",
    );
    let err = assert_refused(&sb, &["run", "cycle.yaml"], &["cycle.yaml:"]);
    assert!(
        ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"].iter().any(|c| err.contains(c)),
        "stderr names the cycle:\n{err}"
    );
}

#[test]
fn missing_file_exits_2() {
    let sb = Sandbox::new();
    assert_refused(&sb, &["run", "nowhere.yaml"], &["nowhere.yaml"]);
}

#[test]
fn input_that_is_not_json_exits_2() {
    let sb = Sandbox::new();
    sb.write("ok.yaml", "pattern: sequential\nagents:\n  a: {builtin: echo}\n");
    assert_refused(&sb, &["run", "ok.yaml", "--input", "{not json"], &["--input"]);
}

#[test]
fn command_agent_result_object_is_recorded() {
    let sb = Sandbox::new();
    sb.write(
        "cmd.yaml",
        r#"pattern: sequential
agents:
  worker:
    run: ["sh", "-c", "cat >/dev/null; echo working on $LTMC_STEP; echo '{\"output\": {\"n\": 1}}'"]
  after: {builtin: echo}
"#,
    );
    let out = sb.run(&["run", "cmd.yaml", "--json"]);
    assert_exit(&out, 0);
    let s = json_of(&out);
    assert_eq!(s["output"], json!({"n": 1}), "{s:#}");

    let out = sb.run(&["events", "--json"]);
    assert_exit(&out, 0);
    let done: Vec<Value> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event_type"] == "StepCompleted" && e["data"]["step"] == "worker")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["data"]["output"], json!({"n": 1}), "the unwrapped output is what is recorded");
}

#[test]
fn command_agent_failure_exits_1_with_its_stderr() {
    let sb = Sandbox::new();
    sb.write(
        "cmd.yaml",
        "pattern: sequential\nagents:\n  bad:\n    run: [\"sh\", \"-c\", \"echo oops-from-agent >&2; exit 3\"]\n",
    );
    let out = sb.run(&["run", "cmd.yaml"]);
    assert_exit(&out, 1);
    let err = text(&out.stderr);
    assert!(err.contains("status 3") && err.contains("oops-from-agent"), "{err}");
}

/// Waits up to 2 s for every `sleep MARKER` process to be gone; panics naming the survivors.
fn assert_none_survive(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_matching(&format!("sleep {marker}"));
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("processes of the timed-out agent survive: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes whose command line contains `needle` (zombies have an empty cmdline).
fn processes_matching(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

#[test]
fn command_agent_timeout_kills_the_whole_process_group() {
    let sb = Sandbox::new();
    // A sleep length unique to this test run, so the check below cannot see anyone else's.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let marker = format!("30.{}{nanos:09}", std::process::id());
    sb.write(
        "slow.yaml",
        &format!(
            "pattern: sequential\nagents:\n  slow:\n    run: [\"sh\", \"-c\", \"sleep {marker} & sleep {marker}\"]\n    timeout: 0.5\n    retries: 0\n"
        ),
    );
    // Control: the search below does see a live process with the marker.
    let mut control = Command::new("sleep").arg(format!("{marker}9")).spawn().expect("spawn sleep");
    // Right after spawn the child may not have exec'd yet; poll with a deadline.
    let control_deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = false;
    while !seen && Instant::now() < control_deadline {
        seen = !processes_matching(&format!("sleep {marker}9")).is_empty();
        if !seen {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    control.kill().expect("kill control");
    control.wait().expect("reap control");
    assert!(seen, "the /proc scan finds a running sleep");

    let started = Instant::now();
    let out = sb.run(&["run", "slow.yaml"]);
    let took = started.elapsed();
    assert_exit(&out, 1);
    assert!(took < Duration::from_secs(10), "the run took {took:?}; the agent's timeout is 0.5 s");
    assert!(text(&out.stderr).contains("timed out"), "{}", text(&out.stderr));

    // The group was killed before ltmc exited; allow the kernel a moment to tear them down.
    assert_none_survive(&marker);
}

#[test]
fn command_agent_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let sb = Sandbox::new();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let marker = format!("31.{}{nanos:09}", std::process::id());
    // An ignored signal stays ignored across exec, so the sleeps ignore SIGTERM too.
    sb.write(
        "stubborn.yaml",
        &format!(
            "pattern: sequential\nagents:\n  stubborn:\n    run: [\"sh\", \"-c\", \"trap '' TERM; sleep {marker} & sleep {marker}; wait\"]\n    timeout: 0.3\n    retries: 0\n"
        ),
    );
    let started = Instant::now();
    let out = sb.run(&["run", "stubborn.yaml"]);
    assert_exit(&out, 1);
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(text(&out.stderr).contains("timed out"), "{}", text(&out.stderr));
    assert_none_survive(&marker);
}

#[test]
fn unsupported_database_url_exits_2() {
    let sb = Sandbox::new();
    sb.write("ok.yaml", "pattern: sequential\nagents:\n  a: {builtin: noop}\n");
    let out = sb.cmd(&["run", "ok.yaml"]).env("LTMC_DATABASE_URL", "mysql://x").output().expect("run");
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("mysql://x"), "{}", text(&out.stderr));
    assert!(!sb.store_exists());
    let out = sb.cmd(&["runs"]).env("LTMC_DATABASE_URL", "mysql://x").output().expect("runs");
    assert_exit(&out, 2);
}

#[test]
fn unreachable_postgres_exits_3() {
    let sb = Sandbox::new();
    sb.write("ok.yaml", "pattern: sequential\nagents:\n  a: {builtin: noop}\n");
    let url = "postgres://nobody@127.0.0.1:1/x";
    let started = Instant::now();
    let out = sb.cmd(&["run", "ok.yaml"]).env("LTMC_DATABASE_URL", url).output().expect("run");
    assert_exit(&out, 3);
    assert!(started.elapsed() < Duration::from_secs(30), "a refused connection fails fast");
    let out = sb.cmd(&["events"]).env("LTMC_DATABASE_URL", url).output().expect("events");
    assert_exit(&out, 3);
    assert!(!sb.store_exists());
}

#[test]
fn invalid_environment_exits_2() {
    let sb = Sandbox::new();
    sb.write("ok.yaml", "pattern: sequential\nagents:\n  a: {builtin: noop}\n");
    let out = sb.cmd(&["run", "ok.yaml"]).env("LTMC_DEFAULT_TIMEOUT", "soon").output().expect("run");
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("LTMC_DEFAULT_TIMEOUT"), "{}", text(&out.stderr));
    assert!(!sb.store_exists());
}

#[test]
fn status_of_an_unknown_run_is_refused() {
    let sb = Sandbox::new();
    sb.write("ok.yaml", "pattern: sequential\nagents:\n  a: {builtin: noop}\n");
    assert_exit(&sb.run(&["run", "ok.yaml"]), 0);
    let out = sb.run(&["status", "0192aaaa-0000-7000-8000-000000000000"]);
    assert_exit(&out, 2);
    let out = sb.run(&["events", "--stream", "run.with.dots"]);
    assert_exit(&out, 2);
}

/// Sessions and shared memory from the command line: the seed's store/get shared context,
/// compare-and-set, history, time travel by position, the SQL views, and clean refusals.
#[test]
fn sessions_and_shared_memory() {
    let sb = Sandbox::new();
    assert_exit(&sb.run(&["session", "create", "dev_001", "--description", "feature"]), 0);
    assert_exit(&sb.run(&["session", "join", "dev_001", "--agent", "dev", "--role", "developer"]), 0);
    assert_exit(
        &sb.run(&["memory", "put", "dev_001", "requirements", r#"{"auth":"oauth"}"#, "--writer", "agent:dev"]),
        0,
    );
    let put =
        sb.run(&["memory", "put", "dev_001", "requirements", r#"{"auth":"saml"}"#, "--if-version", "1", "--json"]);
    assert_exit(&put, 0);
    let put: Value = serde_json::from_slice(&put.stdout).expect("json");
    assert_eq!(put["version"], 2);
    let first_position = put["position"].as_i64().expect("position") - 1;

    // A stale compare-and-set is refused and writes nothing.
    let stale = sb.run(&["memory", "put", "dev_001", "requirements", "1", "--if-version", "1"]);
    assert_exit(&stale, 2);
    assert!(text(&stale.stderr).contains("at version 2, not the expected 1"), "{}", text(&stale.stderr));

    let get = sb.run(&["memory", "get", "dev_001", "requirements"]);
    assert_exit(&get, 0);
    assert_eq!(serde_json::from_slice::<Value>(&get.stdout).expect("json"), json!({"auth": "saml"}));
    let then = sb.run(&["memory", "get", "dev_001", "requirements", "--at", &first_position.to_string()]);
    assert_eq!(serde_json::from_slice::<Value>(&then.stdout).expect("json"), json!({"auth": "oauth"}), "as of then");
    let history = sb.run(&["memory", "history", "dev_001", "requirements", "--json"]);
    let history: Vec<Value> = serde_json::from_slice(&history.stdout).expect("json");
    let versions: Vec<(i64, &str)> =
        history.iter().map(|h| (h["version"].as_i64().unwrap_or(0), h["writer"].as_str().unwrap_or(""))).collect();
    assert_eq!(versions, [(1, "agent:dev"), (2, "cli")]);

    // Bad input: each says what and where, and writes nothing.
    let events_before = sb.run(&["events", "--json"]).stdout.len();
    for (args, says) in [
        (vec!["memory", "put", "dev_001", "k", "not json"], "is not JSON"),
        (vec!["memory", "put", "dev_001", "bad key", "1"], "character ' '"),
        (vec!["memory", "put", "ghost", "k", "1"], "no session ghost"),
        (vec!["session", "create", "a.b"], "character '.'"),
        (vec!["session", "create", "dev_001"], "already exists"),
        (vec!["session", "heartbeat", "dev_001", "--agent", "qa"], "not in session dev_001"),
        (vec!["memory", "delete", "dev_001", "nothing"], "no value"),
        (vec!["memory", "get", "dev_001", "k", "--at=-1"], "--at must be"),
    ] {
        let out = sb.run(&args);
        assert_exit(&out, 2);
        assert!(text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(sb.run(&["events", "--json"]).stdout.len(), events_before, "refusals wrote nothing");

    assert_exit(&sb.run(&["session", "close", "dev_001", "--reason", "done"]), 0);
    let closed = sb.run(&["memory", "put", "dev_001", "k", "1"]);
    assert_exit(&closed, 2);
    assert!(text(&closed.stderr).contains("is closed"));
    let show: Value = serde_json::from_slice(&sb.run(&["session", "show", "dev_001", "--json"]).stdout).expect("json");
    assert_eq!((show["status"].as_str(), show["agents"][0]["active"].as_bool()), (Some("closed"), Some(false)));

    // The SQL views are up to date when the command returns.
    let db = rusqlite::Connection::open(sb.path().join(".ltmc/ltmc.db")).expect("db");
    let row: (String, i64, String) = db
        .query_row(
            "SELECT s.status, m.version, m.value FROM sessions s JOIN memory m ON m.session_id = s.session_id \
             WHERE s.session_id = 'dev_001' AND m.key = 'requirements'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("views");
    assert_eq!(row, ("closed".into(), 2, r#"{"auth":"saml"}"#.into()));
    let agents: i64 =
        db.query_row("SELECT count(*) FROM session_agents WHERE active = 0", [], |r| r.get(0)).expect("agents");
    assert_eq!(agents, 1);
}

/// Verbs that only read never create a database: in a folder without one they say how to start
/// one (exit 2) and leave no `.ltmc/` behind; a verb that writes creates it.
#[test]
fn reading_verbs_never_create_a_database() {
    let sb = Sandbox::new();
    let verbs: [&[&str]; 12] = [
        &["runs"],
        &["status", "01a21b03-5528-73de-af72-6c5db88fbd97"],
        &["events"],
        &["audit", "--verify"],
        &["metrics"],
        &["projections", "status"],
        &["projections", "rebuild"],
        &["session", "list"],
        &["session", "show", "s1"],
        &["memory", "get", "s1", "k"],
        &["memory", "list", "s1"],
        &["memory", "history", "s1"],
    ];
    for args in verbs {
        let out = sb.run(args);
        assert_exit(&out, 2);
        assert!(
            text(&out.stderr).contains("no LTMC database at .ltmc/ltmc.db"),
            "ltmc {}: {}",
            args.join(" "),
            text(&out.stderr)
        );
        assert!(!sb.store_exists(), "ltmc {} created a database", args.join(" "));
    }
    assert_exit(&sb.run(&["session", "create", "s1"]), 0);
    assert!(sb.store_exists());
    assert_exit(&sb.run(&["runs"]), 0);
}
