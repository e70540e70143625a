//! `ltmc worker`: serve an agent's tasks from NATS with a local command or a built-in.

use ltmc_core::spec::{AgentDef, Builtin, Command};
use ltmc_engine::config::Config;
use ltmc_engine::workers::serve::{WorkerOptions, serve};
use std::path::PathBuf;
use std::time::Duration;

use crate::exit::{self, BadInput};

/// What `ltmc worker` was asked to do.
pub(crate) struct Args {
    pub(crate) agent: String,
    pub(crate) command: Vec<String>,
    pub(crate) builtin: Option<String>,
    pub(crate) concurrency: usize,
    pub(crate) ack_wait: f64,
    pub(crate) max_tasks: Option<u64>,
    pub(crate) dir: Option<PathBuf>,
}

pub(crate) async fn worker(args: Args) -> anyhow::Result<u8> {
    let config = Config::from_env()?;
    let Some(url) = config.nats_url.clone() else {
        return Err(BadInput("`ltmc worker` needs LTMC_NATS_URL (for example nats://127.0.0.1:4222)".into()).into());
    };
    ltmc_core::names::validate("agent", &args.agent).map_err(|e| BadInput(format!("--agent: {e}")))?;
    let def = match (args.command.is_empty(), args.builtin.as_deref()) {
        (false, None) => AgentDef { run: Some(Command::Argv(args.command)), ..Default::default() },
        (true, Some(name)) => {
            let builtin: Builtin = serde_json::from_value(serde_json::Value::String(name.to_owned()))
                .map_err(|_| BadInput(format!("--builtin {name:?}: expected noop, echo, sleep or fail")))?;
            AgentDef { builtin: Some(builtin), ..Default::default() }
        }
        (true, None) => {
            return Err(BadInput(
                "give the command after `--` (ltmc worker --agent NAME -- CMD ARGS…) or --builtin".into(),
            )
            .into());
        }
        (false, Some(_)) => return Err(BadInput("give a command or --builtin, not both".into()).into()),
    };
    let ack_wait = Duration::try_from_secs_f64(args.ack_wait)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| BadInput(format!("--ack-wait {}: expected a positive number of seconds", args.ack_wait)))?;
    let mut opts = WorkerOptions::new(&url, &args.agent, def);
    opts.concurrency = args.concurrency.max(1);
    opts.ack_wait = ack_wait;
    opts.max_tasks = args.max_tasks;
    opts.base_dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    opts.names = config.nats_names.clone();
    let subject = opts.names.task_subject(&args.agent);
    eprintln!("serving agent {} from {url} (tasks on {subject}); Ctrl-C stops", args.agent);
    tokio::select! {
        served = serve(opts) => {
            let n = served?;
            eprintln!("served {n} task(s)");
        }
        _ = tokio::signal::ctrl_c() => eprintln!("stopped"),
    }
    Ok(exit::OK)
}
