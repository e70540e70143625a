//! `ltmc`: run durable multi-agent workflows from the command line.
//!
//! Data goes to stdout (`--json` for machines), progress and logs to stderr. Exit codes:
//! 0 ok, 1 the run failed, 2 bad input, 3 a backend (database, NATS) is unavailable.

/// `println!` for data on stdout: a closed stdout ends the command quietly ([`term::out`]).
macro_rules! outln {
    () => { $crate::term::out(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::term::out(format_args!($($arg)*), true) };
}

/// `print!` for data on stdout, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::term::out(format_args!($($arg)*), false) };
}

mod args;
mod bench;
mod cmd_admin;
mod cmd_events;
mod cmd_run;
mod cmd_runs;
mod cmd_sessions;
mod cmd_views;
mod cmd_worker;
mod exit;
mod open;
mod term;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// LTMC: durable coordination for teams of agents. Every action is an event in a log
/// (embedded SQLite by default, or Postgres) and, with LTMC_NATS_URL, in NATS JetStream.
#[derive(Parser)]
#[command(name = "ltmc", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a workflow file to the end: progress on stderr, result on stdout.
    Run {
        /// Workflow file (YAML or JSON).
        file: PathBuf,
        /// Agents file defining the agents the workflow names.
        #[arg(long)]
        agents: Option<PathBuf>,
        /// Run input as JSON (overrides the file's `input`).
        #[arg(long)]
        input: Option<String>,
        /// Event-driven runs: emit this event when the run starts, `TYPE` or `TYPE=JSON` (repeatable).
        #[arg(long, value_name = "TYPE[=JSON]")]
        emit: Vec<String>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Emit an event into a running event-driven run (it starts the agents listening for it).
    Emit {
        /// Run id.
        run: String,
        /// Event type: one of the workflow's triggers.
        trigger: String,
        /// Event data as JSON (the input of the agents it starts).
        #[arg(long)]
        data: Option<String>,
    },
    /// Resume an interrupted run: re-dispatch its unfinished steps with the same idempotency keys.
    Resume {
        /// Run id.
        run: String,
        /// Folder command agents run in (default: the one recorded when the run started).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List recent runs.
    Runs {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one run and its steps.
    Status {
        /// Run id.
        run: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print events from the log.
    Events {
        /// Only this stream (e.g. run-0192…).
        #[arg(long)]
        stream: Option<String>,
        /// Start after this global position.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Most events to print (without --follow).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Keep printing new events as they are appended.
        #[arg(long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Publish the log to NATS JetStream (needs LTMC_NATS_URL); runs until stopped.
    Relay,
    /// Audit the log: `--verify` recomputes every stream's hash chain.
    Audit {
        /// Recompute the hash chains and name the first altered event.
        #[arg(long)]
        verify: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Serve a `worker: true` agent's tasks from NATS (needs LTMC_NATS_URL) with a command.
    Worker {
        /// The agent to serve.
        #[arg(long)]
        agent: String,
        /// Serve with a built-in agent instead of a command (noop, echo, sleep, fail).
        #[arg(long)]
        builtin: Option<String>,
        /// Tasks performed at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Seconds JetStream waits for a heartbeat before giving the task to another worker.
        #[arg(long, default_value_t = 30.0)]
        ack_wait: f64,
        /// Exit after this many tasks.
        #[arg(long)]
        max_tasks: Option<u64>,
        /// Folder the command runs in.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The command and its arguments, after `--`; it reads the task on stdin and prints its
        /// result, as a command agent does.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// The SQL views kept from the log: `status`, `rebuild [--until POS | --at TIME] [--into NAME]`, `follow`.
    Projections {
        #[command(subcommand)]
        action: ViewsCmd,
    },
    /// Keep this database's SQL views from the JetStream stream (LTMC_NATS_URL, LTMC_NATS_STREAM)
    /// instead of its own log: a reporting copy in another database.
    Project {
        /// Read the events from NATS JetStream (the only source for now).
        #[arg(long, required = true)]
        from_nats: bool,
    },
    /// Coordination metrics from the SQL views (table, --json, or --prometheus text).
    Metrics {
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Prometheus text exposition format.
        #[arg(long)]
        prometheus: bool,
    },
    /// Sessions of agents working together: create, list, show, join, heartbeat, leave, close.
    Session {
        #[command(subcommand)]
        action: SessionCmd,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// A session's shared memory: put, get, list, history, delete.
    Memory {
        #[command(subcommand)]
        action: MemoryCmd,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Measure the engine against raw database commits on this machine.
    Bench(bench::Args),
}

#[derive(Subcommand)]
enum SessionCmd {
    /// Open a new session.
    Create {
        /// Session name ([A-Za-z0-9_-], at most 64).
        name: String,
        /// What the session is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// Recent sessions, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One session: status, agents, memory keys.
    Show {
        /// Session name.
        name: String,
    },
    /// An agent joins the session.
    Join {
        /// Session name.
        name: String,
        /// Agent name.
        #[arg(long)]
        agent: String,
        /// Its role in the session.
        #[arg(long)]
        role: Option<String>,
    },
    /// A member says it is still there.
    Heartbeat {
        /// Session name.
        name: String,
        /// Agent name.
        #[arg(long)]
        agent: String,
    },
    /// A member leaves the session.
    Leave {
        /// Session name.
        name: String,
        /// Agent name.
        #[arg(long)]
        agent: String,
    },
    /// Close the session: its members leave and its memory becomes read-only.
    Close {
        /// Session name.
        name: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum MemoryCmd {
    /// Write a key: VALUE is JSON, or - to read JSON from stdin.
    Put {
        /// Session name.
        session: String,
        /// Key ([A-Za-z0-9_.:/-], at most 128).
        key: String,
        /// The value as JSON ('"text"', '{"a": 1}'), or - for stdin.
        value: String,
        /// Who writes (default: cli).
        #[arg(long)]
        writer: Option<String>,
        /// Compare-and-set: write only if the key is at this version (0 = never written).
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Print a key's value (as of --at POSITION if given).
    Get {
        /// Session name.
        session: String,
        /// Key.
        key: String,
        /// The value as it was at this global position.
        #[arg(long)]
        at: Option<i64>,
    },
    /// Every key with a value (as of --at POSITION if given).
    List {
        /// Session name.
        session: String,
        /// The memory as it was at this global position.
        #[arg(long)]
        at: Option<i64>,
    },
    /// Every write and delete, oldest first.
    History {
        /// Session name.
        session: String,
        /// Only this key.
        key: Option<String>,
    },
    /// Delete a key (its version keeps counting).
    Delete {
        /// Session name.
        session: String,
        /// Key.
        key: String,
        /// Who deletes (default: cli).
        #[arg(long)]
        writer: Option<String>,
        /// Compare-and-set: delete only if the key is at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ViewsCmd {
    /// Each view's checkpoint, the log's head and the lag.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Replay the log into the views in one transaction (readers see the old rows until it
    /// commits); with --into, build them as of --until/--at into a new schema or file instead.
    Rebuild {
        /// Only the events up to this position (the views as they were then).
        #[arg(long)]
        until: Option<i64>,
        /// Only the events recorded up to this time (RFC 3339).
        #[arg(long)]
        at: Option<String>,
        /// Build into this new Postgres schema or SQLite file, leaving the live views alone.
        #[arg(long)]
        into: Option<String>,
    },
    /// Keep the views up to date until stopped.
    Follow,
}

/// mimalloc instead of the system allocator: the projector, the rebuild and JSON decoding
/// allocate many small short-lived values, and glibc's malloc spent a fifth of a rebuild's
/// time in a profile (docs/benchmarks.md).
use ltmc_engine::agents::supervisor;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `ltmc` is also the supervisor of the command agents it starts (before anything else: it
    // must not parse arguments, log or start a runtime).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == supervisor::ARG) {
        let code = supervisor::main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if let Ok(me) = std::env::current_exe() {
        supervisor::install(me);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LTMC_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error quotes the argument: escaped, like every other message.
        Err(e) if e.use_stderr() => {
            eprint!("{}", term::block(&e.render().to_string()));
            return ExitCode::from(exit::BAD_INPUT);
        }
        Err(e) => e.exit(),
    };
    // One thread: the engine's work is IO-bound, and on small VMs a wake-up that crosses
    // threads costs more than the work itself. Blocking SQLite calls still get their own threads.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Run { file, agents, input, emit, json } => {
                cmd_run::run(&file, agents.as_deref(), input.as_deref(), &emit, json).await
            }
            Cmd::Emit { run, trigger, data } => cmd_run::emit(&run, &trigger, data.as_deref()).await,
            Cmd::Resume { run, dir, json } => cmd_run::resume(&run, dir, json).await,
            Cmd::Runs { limit, json } => cmd_runs::list(limit, json).await,
            Cmd::Status { run, json } => cmd_runs::status(&run, json).await,
            Cmd::Events { stream, after, limit, follow, json } => {
                cmd_events::events(stream.as_deref(), after, limit, follow, json).await
            }
            Cmd::Migrate => cmd_admin::migrate().await,
            Cmd::Relay => cmd_admin::relay().await,
            Cmd::Audit { verify, json } => cmd_admin::audit(verify, json).await,
            Cmd::Worker { agent, builtin, concurrency, ack_wait, max_tasks, dir, command } => {
                let args = cmd_worker::Args { agent, command, builtin, concurrency, ack_wait, max_tasks, dir };
                cmd_worker::worker(args).await
            }
            Cmd::Projections { action } => match action {
                ViewsCmd::Status { json } => cmd_views::status(json).await,
                ViewsCmd::Rebuild { until, at, into } => {
                    cmd_views::rebuild(until, at.as_deref(), into.as_deref()).await
                }
                ViewsCmd::Follow => cmd_views::follow().await,
            },
            Cmd::Project { from_nats: _ } => cmd_views::project_from_nats().await,
            Cmd::Metrics { json, prometheus } => cmd_views::metrics(json, prometheus).await,
            Cmd::Session { action, json } => {
                use cmd_sessions::SessionAction as A;
                let action = match action {
                    SessionCmd::Create { name, description } => A::Create { name, description },
                    SessionCmd::List { limit } => A::List { limit },
                    SessionCmd::Show { name } => A::Show { name },
                    SessionCmd::Join { name, agent, role } => A::Join { name, agent, role },
                    SessionCmd::Heartbeat { name, agent } => A::Heartbeat { name, agent },
                    SessionCmd::Leave { name, agent } => A::Leave { name, agent },
                    SessionCmd::Close { name, reason } => A::Close { name, reason },
                };
                cmd_sessions::session(action, json).await
            }
            Cmd::Memory { action, json } => {
                use cmd_sessions::MemoryAction as A;
                let action = match action {
                    MemoryCmd::Put { session, key, value, writer, if_version } => {
                        A::Put { session, key, value, writer, if_version }
                    }
                    MemoryCmd::Get { session, key, at } => A::Get { session, key, at },
                    MemoryCmd::List { session, at } => A::List { session, at },
                    MemoryCmd::History { session, key } => A::History { session, key },
                    MemoryCmd::Delete { session, key, writer, if_version } => {
                        A::Delete { session, key, writer, if_version }
                    }
                };
                cmd_sessions::memory(action, json).await
            }
            Cmd::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Errors quote files, agents' stderr and arguments: escaped like every other line.
            eprintln!("error: {}", term::block(&format!("{e:#}")));
            ExitCode::from(exit::code_for(&e))
        }
    }
}
