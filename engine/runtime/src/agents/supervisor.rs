//! The agent supervisor: a small process between the engine and each command agent that owns
//! the agent's whole process tree for the length of one attempt.
//!
//! A process group is not enough to contain an agent: a daemon that calls `setsid` or forks
//! twice leaves the group and is reparented to init, and a `kill -9` of the engine leaves the
//! agent running with nobody to stop it. The supervisor closes both holes:
//!
//! - it is a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`), so every orphan of the agent's
//!   tree, in any session or group, is reparented to it and stays findable;
//! - the engine keeps the supervisor's stdin open for the whole attempt. The supervisor reads the
//!   task (its first line) and hands it to the agent, then watches stdin: end of file means the
//!   attempt is over for the engine — it timed out, was abandoned, or the engine died (the
//!   kernel closes a dead process's pipes, `kill -9` included). The supervisor then terminates
//!   the tree: SIGTERM, [`TERM_GRACE`](super::TERM_GRACE), SIGKILL;
//! - when the agent itself exits, whatever it left running is killed at once, so nothing holds
//!   its stdout open and nothing outlives the attempt. The supervisor then exits as the agent
//!   did (same code, or the same signal).
//!
//! It is entered through the `ltmc` binary ([`ARG`] as the first argument), needs no async
//! runtime. It wakes as soon as stdin ends or the agent exits, and at least every [`TICK`] to
//! reap orphans.

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// First argument of `ltmc` that runs the supervisor: `ltmc __supervise-agent -- PROGRAM ARGS…`.
pub const ARG: &str = "__supervise-agent";
/// What the supervisor prints, then the OS error, on stderr when the agent's program cannot be
/// started, and its exit code then: the engine reports it as a start failure, as without it.
pub(crate) const CANNOT_START: &str = "ltmc supervisor: cannot start the agent: ";
pub(crate) const CANNOT_START_CODE: i32 = 127;
/// How often the supervisor looks at its stdin and reaps its children.
pub const TICK: Duration = Duration::from_millis(10);

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Runs every later command agent of this process under the supervisor found at `program` (an
/// executable that calls [`main`] when given [`ARG`]: the `ltmc` binary itself). Without it,
/// agents run in their own process group only, which a daemon can leave.
pub fn install(program: PathBuf) {
    let _ = PROGRAM.set(program);
}

/// The supervisor program, when one was installed.
pub(crate) fn program() -> Option<&'static PathBuf> {
    PROGRAM.get()
}

/// The supervisor's entry point; `args` are those after [`ARG`] (`-- PROGRAM ARGS…`). Returns
/// the exit code, or does not return when the agent died of a signal (the same signal ends the
/// supervisor, so the engine reports it the same way).
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let argv = match args.first().map(|a| a == "--") {
        Some(true) => &args[1..],
        _ => args,
    };
    let Some((program, rest)) = argv.split_first() else {
        eprintln!("ltmc {ARG}: no agent command given");
        return 2;
    };
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("ltmc {ARG}: cannot become a child subreaper ({e}); daemons may escape");
    }
    // The task is the first line of stdin; the rest of stdin is only watched for its end.
    let mut stdin = std::io::stdin().lock();
    let mut task = Vec::new();
    if stdin.read_until(b'\n', &mut task).is_err() || task.is_empty() {
        return 2;
    }
    let mut child = match Command::new(program).args(rest).stdin(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{CANNOT_START}{e}");
            return CANNOT_START_CODE;
        }
    };
    let main_pid = Pid::from_raw(child.id() as i32);
    if let Some(mut pipe) = child.stdin.take() {
        // A thread, so an agent that never reads stdin cannot block the supervisor.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&task);
        });
    }
    // A pipe that ends when the agent exits, so the wait below wakes at once rather than at the
    // next tick. WNOWAIT leaves the agent to be reaped (with its status) by `reap`.
    let exited = match std::io::pipe() {
        Ok((reader, writer)) => {
            std::thread::spawn(move || {
                while waitid(Id::Pid(main_pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) == Err(Errno::EINTR) {}
                drop(writer);
            });
            Some(reader)
        }
        Err(_) => None,
    };
    let me = Pid::this();
    loop {
        if let Some(status) = reap(main_pid) {
            // The attempt is over: nothing the agent started may outlive it.
            kill_tree(me, Signal::SIGKILL);
            return exit_as(status);
        }
        if engine_gone(&mut stdin, exited.as_ref()) {
            terminate_tree(me, main_pid);
            return 143;
        }
    }
}

/// Waits up to a [`TICK`] for stdin or the agent's exit; true once stdin has ended (the engine
/// closed it or died).
fn engine_gone(stdin: &mut std::io::StdinLock<'_>, exited: Option<&std::io::PipeReader>) -> bool {
    let fd = stdin.as_fd();
    let mut fds = vec![PollFd::new(fd, PollFlags::POLLIN)];
    fds.extend(exited.map(|r| PollFd::new(r.as_fd(), PollFlags::POLLIN)));
    match poll(&mut fds, PollTimeout::try_from(TICK.as_millis() as i32).unwrap_or(PollTimeout::ZERO)) {
        Ok(0) | Err(Errno::EINTR) => false,
        Ok(_) if fds[0].revents().is_none_or(|r| r.is_empty()) => false, // the agent exited
        Ok(_) => {
            let mut buf = [0u8; 4096];
            // Readable: either more bytes (ignored) or the end of the pipe.
            !matches!(stdin.read(&mut buf), Ok(n) if n > 0)
        }
        Err(_) => true,
    }
}

/// Reaps every child that has ended (orphans of the agent's tree included); returns the
/// agent's own status once it has ended.
fn reap(main_pid: Pid) -> Option<WaitStatus> {
    let mut main_status = None;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return main_status,
            Ok(status) if status.pid() == Some(main_pid) => main_status = Some(status),
            Ok(_) => {}
        }
    }
}

/// On the engine's word (or death): SIGTERM to the tree, a grace period, then SIGKILL.
fn terminate_tree(me: Pid, main_pid: Pid) {
    kill_tree(me, Signal::SIGTERM);
    let deadline = Instant::now() + super::TERM_GRACE;
    while Instant::now() < deadline && !descendants(me).is_empty() {
        let _ = reap(main_pid);
        std::thread::sleep(TICK);
    }
    kill_tree(me, Signal::SIGKILL);
}

/// Signals every descendant; for SIGKILL, repeats until none is left, reaping as it goes (a
/// process forking while it is killed leaves children, which are reparented here).
fn kill_tree(me: Pid, signal: Signal) {
    for round in 0..1000 {
        let tree = descendants(me);
        if tree.is_empty() {
            return;
        }
        for pid in &tree {
            let _ = kill(*pid, signal);
        }
        if signal != Signal::SIGKILL {
            return;
        }
        while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        if round > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Every process whose chain of parents leads to `root` (the supervisor), read from `/proc`.
fn descendants(root: Pid) -> Vec<Pid> {
    // As a subreaper, every living descendant has an ancestor among our children: none left
    // (the usual end of an attempt) means no tree to look for.
    if waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) == Err(Errno::ECHILD) {
        return Vec::new();
    }
    children_files(root).unwrap_or_else(|| scan_proc(root))
}

/// The tree from `/proc/PID/task/TID/children` (kernels with CONFIG_PROC_CHILDREN): reads only
/// the tree's own processes; `None` when the kernel does not have those files.
fn children_files(root: Pid) -> Option<Vec<Pid>> {
    let mut found = Vec::new();
    let mut queue = vec![root.as_raw()];
    while let Some(p) = queue.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"));
        let Ok(tasks) = tasks else {
            if p == root.as_raw() {
                return None;
            }
            continue; // gone meanwhile
        };
        for task in tasks.flatten() {
            let children = match std::fs::read_to_string(task.path().join("children")) {
                Ok(c) => c,
                Err(e) if p == root.as_raw() && e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(_) => continue,
            };
            for c in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                found.push(Pid::from_raw(c));
                queue.push(c);
            }
        }
    }
    Some(found)
}

/// The tree from every process's `/proc/PID/stat`.
fn scan_proc(root: Pid) -> Vec<Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name is in parentheses and may hold anything; fields follow the last ')'.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let Some(ppid) = fields.next().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if state == Some("Z") && ppid == root.as_raw() {
            // A zombie child is dead already; it only waits to be reaped.
            continue;
        }
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut queue = vec![root.as_raw()];
    while let Some(p) = queue.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            found.push(Pid::from_raw(c));
            queue.push(c);
        }
    }
    found
}

/// Ends the supervisor the way the agent ended.
fn exit_as(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => {
            let _ = nix::sys::signal::raise(signal);
            128 + signal as i32
        }
        _ => 1,
    }
}
