//! Every verb with its stdout already closed (`ltmc runs | head -1` once `head` has exited)
//! ends quietly: no panic, no message, exit 0, and what it did is still done.

mod support;

use std::process::Stdio;
use support::{Sandbox, json_of};

/// `ltmc ARGS` with a stdout whose reader is gone; its exit code and stderr.
fn closed(sb: &Sandbox, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = sb.cmd(args).stdout(writer).stderr(Stdio::piped()).output().expect("run ltmc");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_verb_ends_quietly_on_a_closed_stdout() {
    let sb = Sandbox::new();
    sb.write("wf.yaml", "name: quiet\npattern: sequential\nagents:\n  a: {builtin: echo}\n  b: {builtin: noop}\n");
    let (code, stderr) = closed(&sb, &["run", "wf.yaml", "--input", r#"{"x": 1}"#, "--json"]);
    assert_eq!(code, Some(0), "run: {stderr}");
    assert!(!stderr.contains("panicked"), "run: {stderr}");
    // The run happened, whatever became of its output.
    let runs = json_of(&sb.run(&["runs", "--json"]));
    let run_id = runs[0]["run_id"].as_str().expect("a run").to_owned();
    assert_eq!(runs[0]["status"], "completed");
    assert_eq!(sb.run(&["session", "create", "quiet"]).status.code(), Some(0));
    let verbs: Vec<Vec<&str>> = vec![
        vec!["runs"],
        vec!["runs", "--json"],
        vec!["status", &run_id],
        vec!["status", &run_id, "--json"],
        vec!["events"],
        vec!["events", "--json"],
        vec!["audit", "--verify"],
        vec!["audit", "--verify", "--json"],
        vec!["metrics"],
        vec!["metrics", "--json"],
        vec!["metrics", "--prometheus"],
        vec!["projections", "status"],
        vec!["projections", "rebuild"],
        vec!["session", "list"],
        vec!["session", "show", "quiet"],
        vec!["memory", "put", "quiet", "k", "1"],
        vec!["memory", "get", "quiet", "k"],
        vec!["memory", "list", "quiet"],
        vec!["memory", "history", "quiet", "k"],
        vec!["--help"],
        vec!["--version"],
    ];
    for args in &verbs {
        let (code, stderr) = closed(&sb, args);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "ltmc {}: {stderr}", args.join(" "));
        assert_eq!(code, Some(0), "ltmc {}: {stderr}", args.join(" "));
    }
    // The write went through.
    assert_eq!(json_of(&sb.run(&["memory", "get", "quiet", "k", "--json"]))["value"], 1);
}
