//! `stsgate block add|list|remove`: the blocks API from the shell.

use std::process::ExitCode;

use anyhow::{Result, bail};
use http::{Method, StatusCode};

use crate::admin_client::{AdminClient, Target, error_text};

/// `stsgate block` subcommands.
#[derive(clap::Subcommand)]
pub enum BlockCommand {
    /// Block an IP (any IP notation) or a user for a while.
    Add {
        /// The IP, CIDR, range or `*` pattern to block.
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        ip: Option<String>,
        /// The user to block (UPN, DOMAIN\sam or sam; any case).
        #[arg(long)]
        user: Option<String>,
        /// How long, e.g. 30m, 4h, 7d.
        #[arg(long)]
        ttl: String,
        /// refuse (default) or require_2fa.
        #[arg(long)]
        action: Option<String>,
        /// Why (shown in the API, logs and alerts).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List the live blocks.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a block by its id.
    Remove {
        /// The block's id (from `block add` or `block list`).
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a `block` subcommand.
pub fn block(command: BlockCommand) -> ExitCode {
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: BlockCommand) -> Result<()> {
    match command {
        BlockCommand::Add {
            ip,
            user,
            ttl,
            action,
            reason,
            target,
        } => {
            let client = AdminClient::new(&target)?;
            let mut body = serde_json::json!({ "ttl": ttl, "origin": "cli" });
            if let Some(ip) = ip {
                body["ip"] = ip.into();
            }
            if let Some(user) = user {
                body["user"] = user.into();
            }
            if let Some(action) = action {
                body["action"] = action.into();
            }
            if let Some(reason) = reason {
                body["reason"] = reason.into();
            }
            let answer = client.call(Method::POST, "/api/v1/blocks", Some(&body))?;
            if !matches!(answer.status, StatusCode::CREATED | StatusCode::OK) {
                bail!("the block was not added: {}", error_text(&answer));
            }
            println!("{}", line(&answer.json));
            Ok(())
        }
        BlockCommand::List { json, target } => {
            let client = AdminClient::new(&target)?;
            let answer = client.call(Method::GET, "/api/v1/blocks", None)?;
            if answer.status != StatusCode::OK {
                bail!("cannot list the blocks: {}", error_text(&answer));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer.json).unwrap_or_default()
                );
                return Ok(());
            }
            let blocks = answer.json.as_array().cloned().unwrap_or_default();
            if blocks.is_empty() {
                println!("no live blocks");
            }
            for b in &blocks {
                println!("{}", line(b));
            }
            Ok(())
        }
        BlockCommand::Remove { id, target } => {
            let client = AdminClient::new(&target)?;
            let answer = client.call(Method::DELETE, &format!("/api/v1/blocks/{id}"), None)?;
            match answer.status {
                StatusCode::NO_CONTENT => {
                    println!("removed {id}");
                    Ok(())
                }
                _ => bail!("cannot remove {id}: {}", error_text(&answer)),
            }
        }
    }
}

/// One block on one line: id, target, action, end, origin, reason.
fn line(b: &serde_json::Value) -> String {
    let s = |k: &str| b.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let (kind, value) = if b.get("ip").is_some() {
        ("ip", s("ip"))
    } else {
        ("user", s("user"))
    };
    let mut out = format!(
        "{}  {kind} {value}  {}  until {}  ({}s left)  origin {}",
        s("id"),
        s("action"),
        s("expires_at"),
        b.get("ttl_left_seconds")
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
        s("origin"),
    );
    if let Some(r) = b.get("reason").and_then(|v| v.as_str()) {
        out.push_str(&format!("  reason {r:?}"));
    }
    out
}
