//! `stsgate explain`: decide one request offline, with the live config and
//! rules, and print each stage: what it looked at, what matched (list,
//! entry, rule-file line) and the final action.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use stsgate_proxy::explain::{Question, Report};
use stsgate_state::BlockTable;

use crate::admin_client::AdminClient;

/// `stsgate explain` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The main config file.
    #[arg(long, short)]
    config: PathBuf,
    /// The client IP. Without --peer it is also the TCP peer.
    #[arg(long)]
    ip: IpAddr,
    /// The TCP peer, e.g. a trusted proxy; the client IP then travels in
    /// X-MS-Forwarded-Client-IP unless a --header gives it.
    #[arg(long)]
    peer: Option<IpAddr>,
    /// A request header, 'Name: value' (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The request path.
    #[arg(long, default_value = "/adfs/services/trust/2005/usernamemixed")]
    path: String,
    /// The user name in the request's UsernameToken.
    #[arg(long)]
    user: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Ask the running gate at this admin URL (its live rules and state);
    /// without it, the state stored in state.dir is read (or, while the gate
    /// holds it, the gate at admin.addr is asked).
    #[arg(long)]
    admin: Option<String>,
    /// The admin token file (default: admin.token_file of --config).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

pub fn explain(args: &Args) -> ExitCode {
    match run(args) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print_text(&report);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<Report> {
    let question = Question {
        ip: args.ip,
        peer: args.peer,
        headers: args.headers.clone(),
        path: Some(args.path.clone()),
        user: args.user.clone(),
    };
    if args.admin.is_some() {
        return live(args, &question);
    }
    let Some(config) = crate::load_config(&args.config) else {
        anyhow::bail!("the config has errors");
    };
    let rules = match stsgate_proxy::reload::Rules::load_with_feeds(
        &config.rules,
        stsgate_proxy::metrics::Metrics::new(),
        stsgate_proxy::feeds::FeedStore::new(Some(&config.state.dir)),
    ) {
        Ok(rules) => rules.current(),
        Err(errors) => {
            crate::print_errors(&errors);
            anyhow::bail!("the rule file has errors");
        }
    };
    // The gate state: read from state.dir; when the running gate holds it,
    // asked of the gate itself through its admin API.
    let (blocks, stored, state) = match stored_state(&config) {
        Ok(found) => found,
        Err(e) if e.0.contains("in use") => {
            return live(args, &question).map_err(|live_err| {
                anyhow::anyhow!(
                    "{e}, and its admin API did not answer ({live_err:#}); pass --admin URL"
                )
            });
        }
        Err(e) => return Err(anyhow::anyhow!("{e}")),
    };
    let geoip = stsgate_proxy::geoip::GeoIp::open_config(&config.geoip)
        .ok()
        .flatten();
    // The directory, asked as the gate would (a connection of its own).
    let directory =
        stsgate_proxy::directory::open(&config, stsgate_proxy::metrics::Metrics::new().registry())
            .map_err(|errors| {
                crate::print_errors(&errors);
                anyhow::anyhow!("[directory] cannot be used")
            })?;
    let asked =
        stsgate_proxy::explain::ask_directory_blocking(directory.as_ref(), &rules, &question);
    stsgate_proxy::explain::explain_with_directory(
        &question,
        &config,
        &rules,
        &blocks,
        stored.as_ref().map_or(&no_guard(), |s| &s.guard),
        geoip.as_ref(),
        state,
        &asked,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The gate state kept in `state.dir` (blocks, lockout counts, sprayed
/// passwords), without creating anything there.
fn stored_state(
    config: &stsgate_proxy::Config,
) -> Result<(BlockTable, Option<stsgate_state::GateState>, &'static str), stsgate_state::StoreError>
{
    if !config
        .state
        .dir
        .join(stsgate_state::embedded::FILE)
        .exists()
    {
        return Ok((BlockTable::default(), None, "none"));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| stsgate_state::StoreError(e.to_string()))?;
    runtime.block_on(async {
        let store = stsgate_state::embedded::Embedded::open(&config.state.dir)?;
        let state = stsgate_state::GateState::with_stores(
            vec![std::sync::Arc::new(store)],
            config.state.max_ttl,
            config.state.instance.clone(),
            &prometheus::Registry::new(),
        );
        state.load().await?;
        let table = BlockTable::build(state.list());
        Ok((table, Some(state), "stored"))
    })
}

/// An empty guard, for when nothing is stored.
fn no_guard() -> stsgate_state::Guard {
    stsgate_state::Guard::new()
}

/// Asks the running gate (`POST /api/v1/explain`).
fn live(args: &Args, question: &Question) -> anyhow::Result<Report> {
    let client = AdminClient::new(&crate::admin_client::Target {
        admin: args.admin.clone(),
        token_file: args.token_file.clone(),
        config: Some(args.config.clone()),
    })?;
    let answer = client.call(
        http::Method::POST,
        "/api/v1/explain",
        Some(&serde_json::to_value(question)?),
    )?;
    if answer.status != http::StatusCode::OK {
        anyhow::bail!(
            "the gate could not explain: {}",
            crate::admin_client::error_text(&answer)
        );
    }
    Ok(serde_json::from_value(answer.json)?)
}

fn print_text(r: &Report) {
    let path_note = match r.path_class.as_str() {
        "filtered" => "a sign-in path: decided by the pipeline",
        "refuse" => "refused by filter.refuse_paths or filter.other_paths",
        _ => "not filtered: forwarded as is",
    };
    println!("path      {}  ({path_note})", r.path);
    println!(
        "client    peer {}{}  ->  client {}{}",
        r.peer_ip,
        if r.peer_trusted {
            " (trusted proxy)"
        } else {
            ""
        },
        r.client_ip,
        r.client_ip_note
            .as_ref()
            .map(|n| format!("  ({n})"))
            .unwrap_or_default()
    );
    let show = |v: &Option<String>| {
        v.as_ref()
            .map_or("(none)".to_string(), |v| format!("{v:?}"))
    };
    println!(
        "facts     application {}  user_agent {}  user {}",
        show(&r.application),
        show(&r.user_agent),
        show(&r.user)
    );
    if let Some(c) = &r.country {
        println!("          country {c}");
    }
    if let Some(d) = &r.directory {
        println!("          directory {d}");
    }
    if let Some(a) = &r.asn {
        println!("          asn {a}");
    }
    if let Some(a) = &r.anonymous {
        let a = if a.is_empty() {
            "(none)".to_string()
        } else {
            a.join(", ")
        };
        println!("          anonymous {a}");
    }
    if let Some(l) = &r.location {
        println!("          location {l}");
    }
    if r.path_class == "filtered" {
        let source = match r.state.as_str() {
            "live" => "the running gate's live state",
            "stored" => "the state stored in state.dir",
            _ => "no stored state",
        };
        println!("state     from {source}");
        for s in &r.steps {
            let group = match s.stage.as_str() {
                "dynamic_block" | "lockout" | "spray" => "state",
                "ip_country" | "threat" | "anonymous_ip" | "user_group" | "geo_velocity" => {
                    "adaptive"
                }
                _ => "request",
            };
            let outcome = match s.outcome.as_str() {
                "not_configured" => "not configured",
                "fired" => "FIRED",
                other => other,
            };
            let mut line = format!("{group:<9} {:<13} {outcome:<14}", s.stage);
            if let Some(list) = &s.list {
                line.push_str(&format!(" list {list}"));
            }
            if let Some(e) = &s.entry {
                line.push_str(&format!(" entry {}", entry_text(e)));
            }
            if let Some(c) = &s.threat_category {
                line.push_str(&format!(" category {c}"));
            }
            if let Some(a) = &s.action {
                line.push_str(&format!(" -> {a}"));
            }
            line.push_str(&format!("  [{}]", s.note));
            if let Some(d) = &s.detail {
                line.push_str(&format!(" ({d})"));
            }
            println!("{}", line.trim_end());
        }
    }
    let mut last = format!("decision  stage {}  action {}", r.stage, r.action);
    if let Some(list) = &r.list {
        last.push_str(&format!("  list {list}"));
    }
    if let Some(e) = &r.entry {
        last.push_str(&format!("  entry {}", entry_text(e)));
    }
    if let Some(c) = &r.threat_category {
        last.push_str(&format!("  threat_category {c}"));
    }
    println!("{last}");
    println!("response  {}", r.response);
}

fn entry_text(e: &stsgate_proxy::explain::EntryReport) -> String {
    match (&e.file, e.line) {
        (Some(file), Some(line)) => format!("{:?} ({file}:{line})", e.text),
        _ => format!("{:?}", e.text),
    }
}
