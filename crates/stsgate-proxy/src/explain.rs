//! `explain`: one request described by an operator, decided by the
//! corridor exactly as the gate would, with the trace of every stage. Used
//! by `stsgate explain` offline (the config, the rules and the stored
//! blocks) and by `POST /api/v1/explain` on the running gate (its live
//! rules and state).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use stsgate_rules::{Action, Outcome, RuleSet, Stage, Step};
use stsgate_state::BlockTable;

use crate::config::{BlockedStyle, Config};
use crate::corridor::{self, RequestFacts};
use crate::geoip::GeoIp;
use crate::paths::{PathClass, PathFilter};

/// The path `explain` assumes when none is given.
pub const DEFAULT_PATH: &str = "/adfs/services/trust/2005/usernamemixed";

/// A request as an operator describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// The client IP. Without `peer` it is also the TCP peer.
    pub ip: IpAddr,
    /// The TCP peer (e.g. a trusted proxy); the client IP then travels in the
    /// first configured client-IP header unless `headers` gives one.
    #[serde(default)]
    pub peer: Option<IpAddr>,
    /// Request headers, `Name: value`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// The request path.
    #[serde(default)]
    pub path: Option<String>,
    /// The user name in the request's credentials.
    #[serde(default)]
    pub user: Option<String>,
}

/// A matched entry, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryReport {
    /// The entry as written (a block: its id and reason).
    pub text: String,
    /// The rule file it is in (absent for a dynamic block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its line (absent for a dynamic block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

impl EntryReport {
    fn from(e: &stsgate_rules::Entry) -> EntryReport {
        EntryReport {
            text: e.text.to_string(),
            file: (e.line > 0).then(|| e.file.to_string()),
            line: (e.line > 0).then_some(e.line),
        }
    }
}

/// One stage's line of the trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// The check (`dynamic_block`, `ip_country`, `threat`, `ip`, ...).
    pub stage: String,
    /// `not_configured`, `disabled`, `skipped`, `passed`, `fired`.
    pub outcome: String,
    /// The list compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// The entry that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryReport>,
    /// The action asked for, when it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The `category` of the threat feed that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threat_category: Option<String>,
    /// Why.
    pub note: String,
    /// What the check computed: the country, the ASN, the anonymity
    /// categories, geo-velocity's distance and speed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What `explain` prints (as text, or as this JSON object).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The path asked about.
    pub path: String,
    /// `filtered`, `forward` or `refuse`.
    pub path_class: String,
    /// The TCP peer.
    pub peer_ip: IpAddr,
    /// Is the peer a trusted proxy?
    pub peer_trusted: bool,
    /// The client IP the stages see.
    pub client_ip: IpAddr,
    /// How the client IP was found, when it is worth saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip_note: Option<String>,
    /// The user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `X-MS-Client-Application`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// The user agent the rules read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The client's country, when a rule needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The client's autonomous system (`AS15169`; `AS0`: unknown), when a rule needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<String>,
    /// The client IP's anonymity categories, when a rule needs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<Vec<String>>,
    /// Where the client IP is (`latitude,longitude ±accuracy km`), when a rule needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Where the gate state came from: `live` (the running gate), `stored`
    /// (read from state.dir), or `none`.
    pub state: String,
    /// Every check, in corridor order.
    pub steps: Vec<StepReport>,
    /// The stage that decided.
    pub stage: String,
    /// The final action.
    pub action: String,
    /// The list that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// The entry that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryReport>,
    /// The `category` of the threat feed that decided (the decision log's
    /// `threat_category`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threat_category: Option<String>,
    /// What the directory said about the user when the rules need groups
    /// (`found, in DN; DN`, `no such user in the directory`, `unavailable:
    /// why`), or why it was not asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// Forwarded with `X-Stsgate-Step-Up: required`.
    pub step_up: bool,
    /// What the client gets.
    pub response: String,
}

/// What the directory answered for `explain` ([`ask_directory`]).
#[derive(Debug, Clone)]
pub enum Asked {
    /// Not asked: why (no user, no group in the rules, ...).
    Not(&'static str),
    /// The answer, and `directory.on_error`.
    Answer(stsgate_directory::Answer, stsgate_directory::OnError),
}

/// Asks the directory about `q`'s user as the gate would: only when the
/// rules need groups and do not list the user by name.
pub async fn ask_directory(
    directory: Option<&stsgate_directory::Directory>,
    rules: &RuleSet,
    q: &Question,
) -> Asked {
    match asked_user(directory, rules, q) {
        Ok((directory, user)) => {
            Asked::Answer(directory.groups(user).await, directory.settings().on_error)
        }
        Err(why) => Asked::Not(why),
    }
}

/// [`ask_directory`] outside any async runtime (the CLI).
pub fn ask_directory_blocking(
    directory: Option<&stsgate_directory::Directory>,
    rules: &RuleSet,
    q: &Question,
) -> Asked {
    match asked_user(directory, rules, q) {
        Ok((directory, user)) => Asked::Answer(
            directory.groups_blocking(user),
            directory.settings().on_error,
        ),
        Err(why) => Asked::Not(why),
    }
}

fn asked_user<'d, 'q>(
    directory: Option<&'d stsgate_directory::Directory>,
    rules: &RuleSet,
    q: &'q Question,
) -> Result<(&'d stsgate_directory::Directory, &'q str), &'static str> {
    let user = q.user.as_deref().map(str::trim).filter(|u| !u.is_empty());
    match (directory, user) {
        _ if !rules.needs_groups() => Err(""),
        (_, None) => Err(""),
        (_, Some(u)) if !crate::directory::wanted(rules, u) => {
            Err("not asked: the user is listed by name in users")
        }
        (None, _) => Err("not asked: no [directory] in the config"),
        (Some(d), Some(u)) => Ok((d, u)),
    }
}

/// Decides `q` against `config`, `rules` and `blocks`, and reports each
/// stage. `state` says where `blocks` came from. The directory is not asked
/// (see [`explain_with_directory`]).
pub fn explain(
    q: &Question,
    config: &Config,
    rules: &RuleSet,
    blocks: &BlockTable,
    guard: &stsgate_state::Guard,
    geoip: Option<&GeoIp>,
    state: &str,
) -> Result<Report, String> {
    explain_with_directory(
        q,
        config,
        rules,
        blocks,
        guard,
        geoip,
        state,
        &Asked::Not(""),
    )
}

/// [`explain`] with the directory's answer about the user ([`ask_directory`]).
#[allow(clippy::too_many_arguments)]
pub fn explain_with_directory(
    q: &Question,
    config: &Config,
    rules: &RuleSet,
    blocks: &BlockTable,
    guard: &stsgate_state::Guard,
    geoip: Option<&GeoIp>,
    state: &str,
    asked: &Asked,
) -> Result<Report, String> {
    let (groups, directory) = match asked {
        Asked::Not("") => (stsgate_rules::Groups::NotLooked, None),
        Asked::Not(why) => (stsgate_rules::Groups::NotLooked, Some(why.to_string())),
        Asked::Answer(answer, on_error) => (
            crate::directory::groups(answer, *on_error),
            Some(crate::directory::describe(answer)),
        ),
    };
    let mut headers = HeaderMap::new();
    for h in &q.headers {
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
            None => return Err(format!("header {h:?} is not 'Name: value'")),
        }
    }
    let peer = q.peer.unwrap_or(q.ip);
    if q.peer.is_some()
        && !config
            .client_ip
            .headers
            .iter()
            .any(|h| headers.contains_key(h))
    {
        if let Some(first) = config.client_ip.headers.first() {
            headers.insert(
                first.clone(),
                HeaderValue::from_str(&q.ip.to_string()).expect("an IP is a valid header value"),
            );
        }
    }
    let path = q.path.as_deref().unwrap_or(DEFAULT_PATH);
    let user = q
        .user
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let request = RequestFacts::build(
        peer,
        &headers,
        path,
        crate::corridor::Signer {
            protocol: crate::signin::protocol_for(path),
            user,
            password_key: None,
        },
        &config.client_ip,
        rules,
        geoip,
    );
    let addrs = &request.addrs;
    let client_ip_note = if let Some((h, problem)) = &addrs.bad_header {
        Some(format!("{h} ignored: {problem}"))
    } else if !addrs.peer_trusted && q.peer.is_some() {
        Some("the peer is not a trusted proxy: forwarded headers ignored".to_string())
    } else if addrs.peer_trusted && addrs.client != addrs.peer {
        Some("from the forwarded header of a trusted proxy".to_string())
    } else {
        None
    };
    let class = PathFilter::new(&config.filter).classify(path);
    let mut steps: Vec<Step<'_>> = Vec::new();
    let decision = match class {
        PathClass::Filtered => {
            let facts = stsgate_rules::Facts {
                groups,
                ..request.facts()
            };
            corridor::decide(&facts, blocks, guard, rules, &mut steps)
        }
        PathClass::Refuse => {
            stsgate_rules::Decision::plain(stsgate_rules::Stage::Path, Action::Refuse)
        }
        _ => stsgate_rules::Decision::plain(stsgate_rules::Stage::Path, Action::Forward),
    };
    let response = match decision.action {
        Action::Refuse => match config.blocked {
            BlockedStyle::SoapFault => {
                "the blocked response: HTTP 500, a SOAP fault like a failed sign-in".to_string()
            }
            BlockedStyle::Forbidden => "the blocked response: HTTP 403".to_string(),
        },
        Action::Redirect => format!("HTTP 302 to {}", decision.redirect_url.unwrap_or("/")),
        _ if decision.step_up => format!(
            "forwarded to {} with X-Stsgate-Step-Up: required",
            config.upstream.url
        ),
        _ => format!("forwarded to {}", config.upstream.url),
    };
    Ok(Report {
        path: path.to_string(),
        path_class: match class {
            PathClass::Filtered => "filtered",
            PathClass::Refuse => "refuse",
            _ => "forward",
        }
        .to_string(),
        peer_ip: addrs.peer,
        peer_trusted: addrs.peer_trusted,
        client_ip: addrs.client,
        client_ip_note,
        user: request.user.clone(),
        application: request.application.as_deref().map(str::to_string),
        user_agent: request.shown_user_agent().map(str::to_string),
        country: request.country.map(|c| c.as_str().to_string()),
        asn: request.asn.map(|n| format!("AS{n}")),
        anonymous: request
            .anonymous
            .map(|a| a.names().map(str::to_string).collect()),
        location: request
            .place
            .map(|p| format!("{},{} ±{} km", p.latitude, p.longitude, p.accuracy_km)),
        state: state.to_string(),
        steps: steps
            .iter()
            .map(|s| StepReport {
                stage: s.stage.as_str().to_string(),
                outcome: outcome_name(s.outcome).to_string(),
                list: s.list.map(str::to_string),
                entry: s.entry.map(EntryReport::from),
                action: s.action.map(|a| a.as_str().to_string()),
                threat_category: threat_category(rules, s.stage, s.list),
                note: s.note.to_string(),
                detail: (!s.detail.is_none()).then(|| s.detail.to_string()),
            })
            .collect(),
        stage: decision.stage.as_str().to_string(),
        action: decision.action.as_str().to_string(),
        list: decision.list.map(str::to_string),
        entry: decision.entry.map(EntryReport::from),
        threat_category: threat_category(rules, decision.stage, decision.list),
        directory,
        step_up: decision.step_up,
        response,
    })
}

/// The `category` of the threat feed named `list`, for a threat step.
fn threat_category(rules: &RuleSet, stage: Stage, list: Option<&str>) -> Option<String> {
    if stage != Stage::Threat {
        return None;
    }
    Some(rules.adaptive.threat.as_ref()?.category(list?)?.to_string())
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::NotConfigured => "not_configured",
        Outcome::Disabled => "disabled",
        Outcome::Skipped => "skipped",
        Outcome::Passed => "passed",
        Outcome::Fired => "fired",
        Outcome::NotApplicable => "not_applicable",
    }
}
