//! What the binary's end-to-end tests share: a sandbox directory to run `ltmc` in (default
//! embedded store, no `LTMC_*` variables from the caller) and assertions on its output.
#![allow(dead_code)] // each test file uses its own part of it

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Sandbox {
    pub(crate) dir: tempfile::TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Sandbox {
        Sandbox { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, contents).expect("write file");
        p
    }

    /// `ltmc ARGS` in the sandbox with every `LTMC_*` variable removed.
    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ltmc"));
        c.args(args).current_dir(self.path());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LTMC_") {
                c.env_remove(k);
            }
        }
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ltmc")
    }

    /// `ltmc ARGS`, killed if it has not exited within `limit` (the test then fails).
    pub(crate) fn run_within(&self, args: &[&str], limit: Duration) -> (Output, Duration) {
        let started = Instant::now();
        let mut child = self.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start ltmc");
        while child.try_wait().expect("wait").is_none() {
            if started.elapsed() > limit {
                child.kill().ok();
                child.wait().ok();
                panic!("ltmc {} did not finish within {limit:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (child.wait_with_output().expect("output"), started.elapsed())
    }

    pub(crate) fn store_exists(&self) -> bool {
        self.path().join(".ltmc").exists()
    }
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
pub(crate) fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

pub(crate) fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", text(&out.stdout)))
}
