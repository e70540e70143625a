//! The `ltmc` binary attacked from outside: hostile files refused in linear time, agents and
//! arguments that try to drive the terminal, arguments refused before the database is opened,
//! and exit codes that match docs/cli.md. Each test runs in a fresh temporary directory with the
//! default embedded store (`sqlite://.ltmc/ltmc.db`).

use serde_json::{Value, json};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

mod support;

use support::{Sandbox, assert_exit, text};

/// Bytes a terminal would act on: C0 controls other than line breaks and tabs, DEL, and the C1
/// controls (U+0080-U+009F) in UTF-8.
#[track_caller]
fn assert_no_controls(what: &str, bytes: &[u8]) {
    let s = text(bytes);
    let bad: Vec<char> = s.chars().filter(|c| c.is_control() && !matches!(c, '\n' | '\t')).take(5).collect();
    assert!(bad.is_empty(), "{what} holds raw control characters {bad:?}:\n{s}");
}

const MIB: usize = 1024 * 1024;

/// Hostile files just under the 1 MiB limit, each nested as deep as its size allows. Before the
/// depth limit, the YAML scanner took time in the square of the depth: 10 000 levels 0.4 s,
/// 100 000 levels 40 s, and a 1 MiB file was not refused within two minutes.
fn nested_files() -> Vec<(&'static str, String)> {
    let head = "pattern: sequential\nagents:\n  a: {builtin: echo}\ninput: ";
    let room = MIB - head.len() - 16;
    let mut block = format!("{head}\n");
    let mut level = 1;
    while block.len() + 2 * level + 8 < MIB - 16 {
        block.push_str(&format!("{}a:\n", " ".repeat(level)));
        level += 1;
    }
    block.push_str(&format!("{}1\n", " ".repeat(level)));
    vec![
        ("flow.yaml", format!("{head}{}{}\n", "[".repeat(room / 2), "]".repeat(room / 2))),
        ("open.yaml", format!("{head}{}\n", "[".repeat(room))),
        ("map.yaml", format!("{head}{}1{}\n", "{a: ".repeat(room / 5), "}".repeat(room / 5))),
        ("pairs.yaml", format!("{head}{}1{}\n", "[a: ".repeat(room / 5), "]".repeat(room / 5))),
        ("dashes.yaml", format!("{head}\n{}1\n", "- ".repeat(room / 2))),
        ("block.yaml", block),
        ("deep.json", format!("{{\"input\": {}{}}}\n", "[".repeat(room / 2), "]".repeat(room / 2))),
    ]
}

#[test]
fn deeply_nested_files_are_refused_within_a_second_naming_file_and_line() {
    let sb = Sandbox::new();
    for (name, contents) in nested_files() {
        assert!(contents.len() <= MIB, "{name} is {} bytes", contents.len());
        sb.write(name, &contents);
        // A debug build and a busy machine: a generous bound, far below the minutes it took.
        let (out, took) = sb.run_within(&["run", name], Duration::from_secs(30));
        assert_exit(&out, 2);
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{name}:")) && err.contains("nested more than 64"), "{name}: {err}");
        assert!(took < Duration::from_secs(5), "{name} took {took:?} to refuse");
        assert!(!sb.store_exists(), "{name}: a refused file wrote {}", sb.path().join(".ltmc").display());
    }
    // The line is the one where the nesting passes the limit.
    sb.write("lines.yaml", &format!("pattern: sequential\nagents: [a]\ninput:\n{}", "  [\n".repeat(100)));
    let out = sb.run(&["run", "lines.yaml"]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("lines.yaml:67:"), "{}", text(&out.stderr));
}

#[test]
fn a_nested_agents_file_is_refused_too() {
    let sb = Sandbox::new();
    sb.write("w.yaml", "pattern: sequential\nagents: [dev]\n");
    sb.write(
        "agents.yaml",
        &format!("dev: {{builtin: echo, params: {}1{}}}\n", "[".repeat(400_000), "]".repeat(400_000)),
    );
    let (out, took) = sb.run_within(&["run", "w.yaml", "--agents", "agents.yaml"], Duration::from_secs(30));
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("agents.yaml:1:"), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!sb.store_exists());
}

/// Aliases repeating aliases ("billion laughs"): a small file, and one padded with 256 KiB of
/// values so that yaml_serde's own cap (100 alias jumps per event) no longer helps: padded to
/// 1 MiB, it grew past 2 GB of memory and gave no answer in a minute.
#[test]
fn aliases_that_expand_without_bound_are_refused() {
    let sb = Sandbox::new();
    let mut laughs = String::from("  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for k in 1..12 {
        laughs.push_str(&format!("  a{k}: &a{k} [{}]\n", vec![format!("*a{}", k - 1); 10].join(", ")));
    }
    let head = "pattern: sequential\nagents:\n  a: {builtin: echo}\ninput:\n";
    let pad = MIB / 8;
    let files = [
        ("lol.yaml", format!("{head}{laughs}")),
        ("lol-padded.yaml", format!("{head}  pad: [{}1]\n{laughs}", "1,".repeat(pad))),
    ];
    for (name, contents) in files {
        assert!(contents.len() <= MIB, "{name} is {} bytes", contents.len());
        sb.write(name, &contents);
        let (out, took) = sb.run_within(&["run", name], Duration::from_secs(30));
        assert_exit(&out, 2);
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{name}:")) && err.contains("aliases"), "{name}: {err}");
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        assert!(!sb.store_exists());
    }
    // Aliases that repeat a little are fine.
    sb.write(
        "ok.yaml",
        "pattern: sequential\nagents:\n  a: &echo {builtin: echo}\n  b: *echo\ninput: &i {x: [1, 2]}\n",
    );
    assert_exit(&sb.run(&["run", "ok.yaml"]), 0);
}

const HOSTILE_AGENTS: &str = r#"pattern: sequential
agents:
  loud:
    run: [sh, -c, 'printf "\033]0;pwned\007\033[2J\302\233" >&2; printf "{\"output\": \"title \\u001b]0;pwned\\u0007 csi \\u009b31m\"}"']
  broken:
    run: [sh, -c, 'printf "\033]0;pwned\007 stderr of a failing agent\n\033[31mred\n" >&2; exit 3']
    retries: 0
"#;

/// An agent that writes terminal sequences (set the title, clear the screen, C1 CSI) to stderr
/// and into its output: `run`, `status`, `runs` and `events` print them escaped, and `--json`
/// still carries the exact value.
#[test]
fn agents_cannot_write_to_the_terminal() {
    let sb = Sandbox::new();
    sb.write("loud.yaml", HOSTILE_AGENTS);
    let out = sb.run(&["run", "loud.yaml", "--json"]);
    assert_exit(&out, 1);
    assert_no_controls("run's progress", &out.stderr);
    assert_no_controls("run --json", &out.stdout);
    let err = text(&out.stderr);
    assert!(err.contains("\\u{1b}]0;pwned\\u{7}"), "the sequence is shown escaped:\n{err}");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
    let run_id = summary["run_id"].as_str().expect("run id").to_owned();
    assert!(summary["failure"].as_str().is_some_and(|f| f.contains("\u{1b}]0;pwned\u{7}")), "{summary:#}");

    let status = sb.run(&["status", &run_id]);
    assert_exit(&status, 0);
    assert_no_controls("status", &status.stdout);
    assert!(text(&status.stdout).contains("stderr of a failing agent"), "{}", text(&status.stdout));
    for args in [vec!["runs"], vec!["events"], vec!["events", "--json"], vec!["status", &run_id, "--json"]] {
        let out = sb.run(&args);
        assert_exit(&out, 0);
        assert_no_controls(&args.join(" "), &out.stdout);
        assert_no_controls(&args.join(" "), &out.stderr);
    }
    // The run's output, printed as text, is escaped; --json keeps the exact characters.
    sb.write("ok.yaml", &HOSTILE_AGENTS[..HOSTILE_AGENTS.find("  broken:").expect("broken agent")]);
    let out = sb.run(&["run", "ok.yaml"]);
    assert_exit(&out, 0);
    assert_no_controls("run's output", &out.stdout);
    assert_no_controls("run's progress", &out.stderr);
    assert!(text(&out.stdout).contains("title \\u{1b}]0;pwned\\u{7} csi \\u{9b}31m"), "{}", text(&out.stdout));
    let out = sb.run(&["run", "ok.yaml", "--json"]);
    assert_exit(&out, 0);
    assert_no_controls("run --json", &out.stdout);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(summary["output"], json!("title \u{1b}]0;pwned\u{7} csi \u{9b}31m"));
}

/// Arguments that cannot be used are refused (exit 2) before the database is opened: no
/// `.ltmc/` folder is created, and the argument is echoed escaped.
#[test]
fn bad_arguments_are_refused_before_the_store_is_opened() {
    let sb = Sandbox::new();
    sb.write("ok.yaml", "pattern: sequential\nagents:\n  a: {builtin: echo}\n");
    sb.write("nul.yaml", "pattern: sequential\nagents:\n  a: {builtin: echo}\ninput: {text: \"a\\0b\"}\n");
    sb.write("nul.json", r#"{"pattern": "sequential", "agents": {"a": {"builtin": "echo"}}, "input": "a\u0000"}"#);
    let title = "x\u{1b}]0;pwned\u{7}";
    let run = "0192aaaa-0000-7000-8000-000000000000";
    let long = "r".repeat(20_000);
    let cases: Vec<Vec<&str>> = vec![
        vec!["run", "ok.yaml", "--input", "\"a\\u0000b\""],
        vec!["run", "ok.yaml", "--input", "{\"k\\u0000\": 1}"],
        vec!["run", "nul.yaml"],
        vec!["run", "nul.json"],
        vec!["status", title],
        vec!["status", "nope"],
        vec!["status", &long],
        vec!["resume", "nope"],
        vec!["emit", "nope", "push"],
        vec!["emit", run, title],
        vec!["emit", run, "push", "--data", "\"\\u0000\""],
        vec!["session", "create", "a.b"],
        vec!["session", "show", title],
        vec!["session", "create", "s", "--description", title],
        vec!["session", "join", "s", "--agent", "a b"],
        vec!["session", "heartbeat", "s", "--agent", title],
        vec!["session", "close", "s", "--reason", title],
        vec!["memory", "put", "s", "k", "\"\\u0000\""],
        vec!["memory", "put", title, "k", "1"],
        vec!["memory", "put", "s", "k", "1", "--writer", title],
        vec!["memory", "get", "s", "bad key"],
        vec!["memory", "list", "a.b"],
        vec!["memory", "history", "s", "bad key"],
        vec!["memory", "delete", "s", title],
    ];
    for args in cases {
        let out = sb.run(&args);
        assert_exit(&out, 2);
        assert_no_controls(&format!("{args:?}"), &out.stderr);
        assert!(out.stderr.len() < 2000, "{args:?}: a long argument is shortened:\n{}", text(&out.stderr));
        assert!(!sb.store_exists(), "{args:?} opened the store before refusing:\n{}", text(&out.stderr));
    }
}

/// A file of random bytes where the database should be: the store cannot be used, which
/// docs/cli.md says is exit 3, on every verb that opens it.
#[test]
fn a_corrupt_database_file_exits_3() {
    let sb = Sandbox::new();
    sb.write("ok.yaml", "pattern: sequential\nagents:\n  a: {builtin: echo}\n");
    std::fs::create_dir(sb.path().join(".ltmc")).expect("dir");
    let mut x: u32 = 0x1234_5678;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(sb.path().join(".ltmc/ltmc.db"), noise).expect("write noise");
    for args in [
        vec!["run", "ok.yaml"],
        vec!["runs"],
        vec!["status", "0192aaaa-0000-7000-8000-000000000000"],
        vec!["events"],
        vec!["audit", "--verify"],
        vec!["migrate"],
        vec!["session", "list"],
        vec!["memory", "get", "s", "k"],
        vec!["projections", "status"],
    ] {
        let out = sb.run(&args);
        assert_exit(&out, 3);
        assert!(text(&out.stderr).contains("ltmc.db"), "{args:?} names the file: {}", text(&out.stderr));
    }
}

/// `memory put S K -` with bytes that are not UTF-8: bad input (exit 2), nothing written.
#[test]
fn invalid_utf8_on_stdin_is_bad_input() {
    let sb = Sandbox::new();
    assert_exit(&sb.run(&["session", "create", "s"]), 0);
    let events = sb.run(&["events", "--json"]).stdout;
    let mut child = sb
        .cmd(&["memory", "put", "s", "k", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    child.stdin.take().expect("stdin").write_all(b"\"caf\xe9\"").expect("write");
    let out = child.wait_with_output().expect("output");
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("UTF-8"), "{}", text(&out.stderr));
    assert_eq!(sb.run(&["events", "--json"]).stdout, events, "nothing was written");
}
