//! `stsgate lockout list|reset`: the lockout API from the shell.

use std::process::ExitCode;

use anyhow::{Result, bail};
use http::{Method, StatusCode};

use crate::admin_client::{AdminClient, Target, error_text};

/// `stsgate lockout` subcommands.
#[derive(clap::Subcommand)]
pub enum LockoutCommand {
    /// Users locked now, with their counts and until when.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Unlock a user and clear their counts (a help-desk reset).
    Reset {
        /// The user (any case).
        user: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a `lockout` subcommand.
pub fn lockout(command: LockoutCommand) -> ExitCode {
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: LockoutCommand) -> Result<()> {
    match command {
        LockoutCommand::List { json, target } => {
            let answer = AdminClient::new(&target)?.call(Method::GET, "/api/v1/lockouts", None)?;
            if answer.status != StatusCode::OK {
                bail!("cannot list lockouts: {}", error_text(&answer));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer.json).unwrap_or_default()
                );
                return Ok(());
            }
            let users = answer.json.as_array().cloned().unwrap_or_default();
            if users.is_empty() {
                println!("no locked users");
            }
            for u in &users {
                let n = |k: &str| u.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
                println!(
                    "{}  unfamiliar failures {}  familiar failures {}  locked until {}",
                    u.get("user").and_then(|v| v.as_str()).unwrap_or(""),
                    n("unfamiliar_failures"),
                    n("familiar_failures"),
                    u.get("locked_until").and_then(|v| v.as_str()).unwrap_or(""),
                );
            }
            Ok(())
        }
        LockoutCommand::Reset { user, target } => {
            let path = format!("/api/v1/lockouts/{}", encode(&user));
            let answer = AdminClient::new(&target)?.call(Method::DELETE, &path, None)?;
            match answer.status {
                StatusCode::NO_CONTENT => {
                    println!("reset {user}");
                    Ok(())
                }
                _ => bail!("cannot reset {user}: {}", error_text(&answer)),
            }
        }
    }
}

/// Percent-encodes a user name for a path segment.
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
