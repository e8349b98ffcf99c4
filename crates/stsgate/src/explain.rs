//! `stsgate explain`: decide one request offline, with the live config and
//! rules, and print each stage: what it looked at, what matched (list,
//! entry, rule-file line) and the final action.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use stsgate_proxy::client_ip;
use stsgate_proxy::gate::{X_MS_CLIENT_APPLICATION, X_MS_CLIENT_USER_AGENT, header_text};
use stsgate_proxy::paths::{PathClass, PathFilter};
use stsgate_rules::{Action, Outcome, Stage, Step};

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
}

#[derive(Serialize)]
struct Report<'r> {
    path: String,
    path_class: &'static str,
    peer_ip: IpAddr,
    peer_trusted: bool,
    client_ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip_note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<String>,
    steps: Vec<Step<'r>>,
    stage: Stage,
    action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    list: Option<&'r str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<&'r stsgate_rules::Entry>,
    step_up: bool,
    response: String,
}

pub fn explain(args: &Args) -> ExitCode {
    let Some(config) = crate::load_config(&args.config) else {
        return ExitCode::FAILURE;
    };
    let rules = match stsgate_proxy::reload::Rules::load(
        &config.rules,
        stsgate_proxy::metrics::Metrics::new(),
    ) {
        Ok(rules) => rules.current(),
        Err(errors) => {
            crate::print_errors(&errors);
            return ExitCode::FAILURE;
        }
    };
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let parsed = h.split_once(':').and_then(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                HeaderValue::from_str(value.trim()).ok()?,
            ))
        });
        match parsed {
            Some((name, value)) => {
                headers.append(name, value);
            }
            None => {
                eprintln!("stsgate: --header {h:?} is not 'Name: value'");
                return ExitCode::FAILURE;
            }
        }
    }
    let peer = args.peer.unwrap_or(args.ip);
    if args.peer.is_some()
        && !config
            .client_ip
            .headers
            .iter()
            .any(|h| headers.contains_key(h))
    {
        if let Some(first) = config.client_ip.headers.first() {
            headers.insert(
                first.clone(),
                HeaderValue::from_str(&args.ip.to_string()).expect("an IP is a valid header value"),
            );
        }
    }
    let addrs = client_ip::derive(peer, &headers, &config.client_ip);
    let client_ip_note = if let Some((h, problem)) = &addrs.bad_header {
        Some(format!("{h} ignored: {problem}"))
    } else if !addrs.peer_trusted && args.peer.is_some() {
        Some("the peer is not a trusted proxy: forwarded headers ignored".to_string())
    } else if addrs.peer_trusted && addrs.client != addrs.peer {
        Some("from the forwarded header of a trusted proxy".to_string())
    } else {
        None
    };
    let class = PathFilter::new(&config.filter).classify(&args.path);
    let application = header_text(&headers, &X_MS_CLIENT_APPLICATION);
    let user_agent = header_text(&headers, &X_MS_CLIENT_USER_AGENT);
    let geoip = match &config.geoip.country_db {
        Some(db) if rules.needs_country() => stsgate_proxy::geoip::GeoIp::open(db).ok(),
        _ => None,
    };
    let country = stsgate_proxy::geoip::country_for(&rules, geoip.as_ref(), addrs.client);
    let facts = addrs.facts(application.as_deref(), user_agent.as_deref(), country);
    let mut steps = Vec::new();
    let decision = match class {
        PathClass::Filtered => rules.decide_traced(&facts, &mut steps),
        PathClass::Forward => stsgate_rules::Decision::plain(Stage::Path, Action::Forward),
        PathClass::Refuse => stsgate_rules::Decision::plain(Stage::Path, Action::Refuse),
    };
    let response = match decision.action {
        Action::Refuse => match config.blocked {
            stsgate_proxy::config::BlockedStyle::SoapFault => {
                "the blocked response: HTTP 500, a SOAP fault like a failed sign-in".to_string()
            }
            stsgate_proxy::config::BlockedStyle::Forbidden => {
                "the blocked response: HTTP 403".to_string()
            }
        },
        Action::Redirect => format!("HTTP 302 to {}", decision.redirect_url.unwrap_or("/")),
        _ if decision.step_up => format!(
            "forwarded to {} with X-Stsgate-Step-Up: required",
            config.upstream.url
        ),
        _ => format!("forwarded to {}", config.upstream.url),
    };
    let report = Report {
        path: args.path.clone(),
        path_class: match class {
            PathClass::Filtered => "filtered",
            PathClass::Forward => "forward",
            PathClass::Refuse => "refuse",
        },
        peer_ip: addrs.peer,
        peer_trusted: addrs.peer_trusted,
        client_ip: addrs.client,
        client_ip_note,
        user: args.user.clone(),
        application: application.map(|a| a.into_owned()),
        user_agent: user_agent.map(|a| a.into_owned()),
        country: country.map(|c| c.as_str().to_string()),
        steps,
        stage: decision.stage,
        action: decision.action,
        list: decision.list,
        entry: decision.entry,
        step_up: decision.step_up,
        response,
    };
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

fn print_text(r: &Report<'_>) {
    let path_note = match r.path_class {
        "filtered" => "a WS-Trust path: decided by the pipeline",
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
    if r.path_class == "filtered" {
        println!("state     dynamic blocks, lockout: live state only (not consulted offline)");
        for s in &r.steps {
            let group = match s.stage {
                Stage::IpCountry | Stage::Threat => "adaptive",
                _ => "request",
            };
            let outcome = match s.outcome {
                Outcome::NotConfigured => "not configured",
                Outcome::Disabled => "disabled",
                Outcome::Skipped => "skipped",
                Outcome::Passed => "passed",
                Outcome::Fired => "FIRED",
            };
            let mut line = format!("{group:<9} {:<12} {outcome:<14}", s.stage.as_str());
            if let Some(list) = s.list {
                line.push_str(&format!(" list {list}"));
            }
            if let Some(e) = s.entry {
                line.push_str(&format!(" entry {:?} ({}:{})", e.text, e.file, e.line));
            }
            if let Some(a) = s.action {
                line.push_str(&format!(" -> {}", a.as_str()));
            }
            line.push_str(&format!("  [{}]", s.note));
            println!("{}", line.trim_end());
        }
    }
    let mut last = format!(
        "decision  stage {}  action {}",
        r.stage.as_str(),
        r.action.as_str()
    );
    if let Some(list) = r.list {
        last.push_str(&format!("  list {list}"));
    }
    if let Some(e) = r.entry {
        last.push_str(&format!("  entry {:?} ({}:{})", e.text, e.file, e.line));
    }
    println!("{last}");
    println!("response  {}", r.response);
}
