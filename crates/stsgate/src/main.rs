//! # stsgate
//!
//! The binary: `run`, `check`, `explain` and `demo`. Wiring only: parse the
//! arguments, set up logging, hand over to `stsgate-proxy` and
//! `stsgate-rules`.

mod admin_client;
mod block;
mod check;
mod demo;
mod demo_sts;
mod explain;
mod lockout;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use stsgate_proxy::{Config, Server};
use stsgate_rules::SourceError;

/// A WS-Trust gate in front of ADFS.
#[derive(Parser)]
#[command(name = "stsgate", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGINT or SIGTERM (SIGHUP reloads the rules).
    Run {
        /// The main config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Load and compile the config and its rule file; print a summary or every error.
    Check(check::Args),
    /// Decide one request offline and print the trace.
    Explain(explain::Args),
    /// Start a demo STS on loopback with the gate in front of it.
    Demo(demo::Args),
    /// Dynamic blocks on the running gate: add, list, remove.
    #[command(subcommand)]
    Block(block::BlockCommand),
    /// Smart lockout on the running gate: list locked users, reset one.
    #[command(subcommand)]
    Lockout(lockout::LockoutCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check(args) => return check::check(&args),
        Command::Explain(args) => return explain::explain(&args),
        Command::Demo(args) => demo::demo(args),
        Command::Block(command) => return block::block(command),
        Command::Lockout(command) => return lockout::lockout(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Operational logs go to stderr; the decision log has stdout.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STSGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // Connections are served by the proxy's own worker threads (one per
    // core); this runtime accepts, reloads and answers the admin listener.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Loads the config, printing every error.
pub(crate) fn load_config(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => Some(config),
        Err(errors) => {
            print_errors(&errors);
            None
        }
    }
}

pub(crate) fn print_errors(errors: &[SourceError]) {
    for e in errors {
        eprintln!("{e}");
    }
}

fn run(path: &Path) -> Result<()> {
    init_tracing();
    let Some(config) = load_config(path) else {
        anyhow::bail!("the config has errors")
    };
    let runtime = runtime()?;
    let result = runtime.block_on(serve(config, None));
    // Whatever is still running (a connection cut at the drain timeout) is
    // not waited for past this.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Called once the listeners are bound (the demo prints its welcome).
pub(crate) type OnReady = Box<dyn FnOnce(&Config) + Send>;

/// Runs a server until SIGINT / SIGTERM, reloading on SIGHUP. `ready` is
/// called once the listeners are bound.
pub(crate) async fn serve(config: Config, ready: Option<OnReady>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let shown = config.clone();
    let server = Server::new(config).await?;
    let (listeners, admin) = server.bind().await?;
    if let Some(ready) = ready {
        ready(&shown);
    }
    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    };
    server.serve(listeners, admin, shutdown).await
}
