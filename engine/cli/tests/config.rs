//! Configuration precedence: built-in defaults < ltmc.toml < environment < the workflow file.

use std::path::Path;
use std::process::{Command, Output};

fn ltmc(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ltmc"));
    c.args(args).current_dir(dir);
    for k in [
        "LTMC_DATABASE_URL",
        "LTMC_NATS_URL",
        "LTMC_CONFIG",
        "LTMC_RETRY_ATTEMPTS",
        "LTMC_RETRY_BACKOFF",
        "LTMC_DEFAULT_TIMEOUT",
        "LTMC_MAX_CONCURRENT_AGENTS",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("ltmc runs")
}

fn attempts(out: &Output) -> (i32, u64, String) {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        v["steps"][0]["attempts"].as_u64().unwrap_or(0),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const FLAKY: &str = "pattern: sequential\nagents:\n  flaky: {builtin: fail}\n";

#[test]
fn the_file_sets_defaults_the_environment_overrides_it_and_the_workflow_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("wf.yaml"), FLAKY).expect("write");
    std::fs::write(dir.path().join("ltmc.toml"), "# seed defaults, tuned\nretry_attempts = 2\nretry_backoff = 0.01\n")
        .expect("write");

    // ltmc.toml: 2 retries → 3 attempts.
    let (code, n, err) = attempts(&ltmc(dir.path(), &["run", "wf.yaml", "--json"], &[]));
    assert_eq!((code, n), (1, 3), "{err}");

    // The environment overrides the file.
    let (code, n, err) = attempts(&ltmc(dir.path(), &["run", "wf.yaml", "--json"], &[("LTMC_RETRY_ATTEMPTS", "0")]));
    assert_eq!((code, n), (1, 1), "{err}");

    // The workflow file overrides both.
    std::fs::write(dir.path().join("wf1.yaml"), "pattern: sequential\nagents:\n  flaky: {builtin: fail, retries: 1}\n")
        .expect("write");
    let (code, n, err) = attempts(&ltmc(dir.path(), &["run", "wf1.yaml", "--json"], &[("LTMC_RETRY_ATTEMPTS", "0")]));
    assert_eq!((code, n), (1, 2), "{err}");

    // LTMC_CONFIG names another file.
    std::fs::write(dir.path().join("other.toml"), "retry_attempts = 1\nretry_backoff = 0\n").expect("write");
    let (code, n, err) = attempts(&ltmc(dir.path(), &["run", "wf.yaml", "--json"], &[("LTMC_CONFIG", "other.toml")]));
    assert_eq!((code, n), (1, 2), "{err}");
}

#[test]
fn default_timeout_from_the_file_applies_to_agents_without_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ltmc.toml"), "default_timeout = 0.2\nretry_attempts = 0\n").expect("write");
    std::fs::write(
        dir.path().join("wf.yaml"),
        "pattern: sequential\nagents:\n  slow: {builtin: sleep, params: {ms: 5000}}\n",
    )
    .expect("write");
    let started = std::time::Instant::now();
    let (code, n, err) = attempts(&ltmc(dir.path(), &["run", "wf.yaml", "--json"], &[]));
    assert_eq!((code, n), (1, 1), "{err}");
    assert!(err.contains("timed out after 0.2s"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
}

#[test]
fn a_bad_configuration_is_bad_input_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("wf.yaml"), FLAKY).expect("write");
    for (text, expect) in [
        ("retry_attempts = 2\nretry_atempts = 3\n", "ltmc.toml:2: unknown setting `retry_atempts`"),
        ("default_timeout = -1\n", "ltmc.toml:1: default_timeout = -1 is invalid"),
        ("max_concurrent_agents = \"lots\"\n", "ltmc.toml:1: max_concurrent_agents = lots is invalid"),
        ("retry_attempts = \n", "ltmc.toml:1"),
        ("relay_lease_ttl = 0.1\n", "ltmc.toml:1: relay_lease_ttl = 0.1 is invalid: seconds from 1 to 3600"),
    ] {
        std::fs::write(dir.path().join("ltmc.toml"), text).expect("write");
        let out = ltmc(dir.path(), &["run", "wf.yaml"], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(err.contains(expect), "{text:?}: {err}");
        assert!(!dir.path().join(".ltmc").exists(), "nothing is written");
    }
    std::fs::remove_file(dir.path().join("ltmc.toml")).expect("rm");
    let out = ltmc(dir.path(), &["run", "wf.yaml"], &[("LTMC_CONFIG", "missing.toml")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml: cannot read it"));
    let out = ltmc(dir.path(), &["run", "wf.yaml"], &[("LTMC_RETRY_ATTEMPTS", "many")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("environment variable LTMC_RETRY_ATTEMPTS"));
}

#[test]
fn absurd_values_are_refused_not_panicked_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("wf.yaml"), FLAKY).expect("write");
    let out = ltmc(dir.path(), &["run", "wf.yaml"], &[("LTMC_DEFAULT_TIMEOUT", "1e300")]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    for wf in [
        "pattern: sequential\nagents:\n  a: {builtin: noop, timeout: 1e300}\n",
        "pattern: sequential\ntimeout: 1e300\nagents:\n  a: {builtin: noop}\n",
        "pattern: sequential\nagents:\n  a: {builtin: noop, retries: 4000000000}\n",
        "pattern: sequential\nagents:\n  a: {builtin: noop, backoff: 61}\n",
    ] {
        std::fs::write(dir.path().join("bad.yaml"), wf).expect("write");
        let out = ltmc(dir.path(), &["run", "bad.yaml"], &[]);
        assert_eq!(out.status.code(), Some(2), "{wf}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // TOML errors point at the right line, tables too.
    std::fs::write(dir.path().join("ltmc.toml"), "retry_attempts = 2\n= 3\n").expect("write");
    let err = String::from_utf8_lossy(&ltmc(dir.path(), &["run", "wf.yaml"], &[]).stderr).into_owned();
    assert!(err.contains("ltmc.toml:2"), "{err}");
    std::fs::write(dir.path().join("ltmc.toml"), "retry_attempts = 2\n\n[engine]\nx = 1\n").expect("write");
    let err = String::from_utf8_lossy(&ltmc(dir.path(), &["run", "wf.yaml"], &[]).stderr).into_owned();
    assert!(err.contains("ltmc.toml:3: unknown setting `engine`"), "{err}");
    assert!(!dir.path().join(".ltmc").exists());
}

#[test]
fn events_piped_into_head_exit_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Enough events (about 1,200 lines) to overflow the pipe's buffer once `head` has gone.
    let steps: String = (0..400).map(|i| format!("  - {{name: s{i}, agent: a}}\n")).collect();
    std::fs::write(dir.path().join("ok.yaml"), format!("agents:\n  a: {{builtin: noop}}\nsteps:\n{steps}"))
        .expect("write");
    assert!(ltmc(dir.path(), &["run", "ok.yaml"], &[]).status.success());
    let out = Command::new("sh")
        .args(["-c", &format!("{} events | head -1; exit ${{PIPESTATUS:-0}}", env!("CARGO_BIN_EXE_ltmc"))])
        .current_dir(dir.path())
        .env_remove("LTMC_DATABASE_URL")
        .output()
        .expect("sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("failed printing"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}
