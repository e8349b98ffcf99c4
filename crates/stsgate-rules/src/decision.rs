//! What the pipeline decides, and the trace `explain` prints.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

/// The stage that decided a request; the `stage` label of
/// `stsgate_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Stage 2: a dynamic block from the admin API or spray detection.
    DynamicBlock,
    /// Stage 2: smart lockout.
    Lockout,
    /// Stage 2: a sprayed password.
    Spray,
    /// Stage 3a: adaptive IP / country restriction.
    IpCountry,
    /// Stage 3b: adaptive threat service.
    Threat,
    /// Stage 4: the request blocking IP section.
    Ip,
    /// Stage 4: the request blocking application section.
    Application,
    /// Stage 4: the request blocking user agent section.
    UserAgent,
    /// Nothing fired.
    None,
    /// Not a filtered path (forwarded, or refused by `refuse_paths` / `other_paths`).
    Path,
}

impl Stage {
    /// Every stage, in label order.
    pub const ALL: [Stage; 10] = [
        Stage::DynamicBlock,
        Stage::Lockout,
        Stage::Spray,
        Stage::IpCountry,
        Stage::Threat,
        Stage::Ip,
        Stage::Application,
        Stage::UserAgent,
        Stage::None,
        Stage::Path,
    ];

    /// The name used in metrics, logs and the rule file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::DynamicBlock => "dynamic_block",
            Stage::Lockout => "lockout",
            Stage::Spray => "spray",
            Stage::IpCountry => "ip_country",
            Stage::Threat => "threat",
            Stage::Ip => "ip",
            Stage::Application => "application",
            Stage::UserAgent => "user_agent",
            Stage::None => "none",
            Stage::Path => "path",
        }
    }
}

/// What happens to a request; the `action` label of `stsgate_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Forwarded upstream.
    Forward,
    /// Refused with the blocked response.
    Refuse,
    /// Answered with a 302.
    Redirect,
    /// Forwarded with `X-Stsgate-Step-Up: required`.
    #[serde(rename = "require_2fa")]
    Require2fa,
    /// Adaptive left; forwarded if request blocking passes.
    #[serde(rename = "skip_2fa")]
    Skip2fa,
    /// Adaptive left; forwarded if request blocking passes.
    Resume,
    /// Adaptive left, request blocking skipped: forwarded.
    PostAuth,
    /// A check fired but is not enforced: forwarded.
    Continue,
    /// A stage in `log_only` mode would have refused: forwarded.
    LogOnly,
}

impl Action {
    /// Every action, in label order.
    pub const ALL: [Action; 9] = [
        Action::Forward,
        Action::Refuse,
        Action::Redirect,
        Action::Require2fa,
        Action::Skip2fa,
        Action::Resume,
        Action::PostAuth,
        Action::Continue,
        Action::LogOnly,
    ];

    /// The name used in metrics, logs and the rule file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Forward => "forward",
            Action::Refuse => "refuse",
            Action::Redirect => "redirect",
            Action::Require2fa => "require_2fa",
            Action::Skip2fa => "skip_2fa",
            Action::Resume => "resume",
            Action::PostAuth => "post_auth",
            Action::Continue => "continue",
            Action::LogOnly => "log_only",
        }
    }

    /// Does the request go upstream?
    pub const fn forwards(self) -> bool {
        !matches!(self, Action::Refuse | Action::Redirect)
    }
}

impl From<crate::model::FailureAction> for Action {
    fn from(a: crate::model::FailureAction) -> Self {
        use crate::model::FailureAction as F;
        match a {
            F::Continue => Action::Continue,
            F::Refuse => Action::Refuse,
            F::Redirect => Action::Redirect,
            F::Require2fa => Action::Require2fa,
            F::Skip2fa => Action::Skip2fa,
            F::Resume => Action::Resume,
            F::PostAuth => Action::PostAuth,
        }
    }
}

/// One entry of a list, where it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The entry as written (one item of a comma-separated string).
    pub text: Box<str>,
    /// The file it comes from; empty for entries that are not from a file
    /// (a dynamic block).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub file: Arc<str>,
    /// 1-based line in that file; 0 when not from a file.
    #[serde(skip_serializing_if = "is_zero")]
    pub line: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Entry {
    /// An entry that does not come from a file (a dynamic block: its id and reason).
    pub fn dynamic(text: impl Into<Box<str>>) -> Entry {
        Entry {
            text: text.into(),
            file: Arc::from(""),
            line: 0,
        }
    }

    /// Where it was written, `file:line`, or `None` for a dynamic entry.
    pub fn location(&self) -> Option<String> {
        (self.line > 0).then(|| format!("{}:{}", self.file, self.line))
    }
}

/// A country code (ISO 3166-1 alpha-2, upper case; `ZZ` for unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Country(pub [u8; 2]);

impl Country {
    /// No country known.
    pub const UNKNOWN: Country = Country(*b"ZZ");

    /// Parses a two-letter code, any case.
    pub fn parse(code: &str) -> Option<Country> {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("ZZ")
    }
}

/// Everything the rules look at, derived once per request (facts first,
/// then rules): no stage re-reads headers.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client IP (canonical: IPv4-mapped IPv6 is IPv4).
    pub client_ip: IpAddr,
    /// Every address the request carries that is believed, trusted proxies
    /// aside, the client first. IP lists match against all of them (deny:
    /// any matches; allow: all must). Empty means just `client_ip`.
    pub addresses: &'a [IpAddr],
    /// `X-MS-Client-Application`, if present.
    pub application: Option<&'a str>,
    /// `X-MS-Client-User-Agent`, if present.
    pub user_agent: Option<&'a str>,
    /// The client's own `User-Agent`, if present.
    pub http_user_agent: Option<&'a str>,
    /// The client's country, when the rules need it ([`crate::RuleSet::needs_country`]).
    pub country: Option<Country>,
    /// The TCP peer (canonical). Unspecified when not known (unit tests).
    pub peer: IpAddr,
    /// Every address the request carries, trusted proxies aside, the client
    /// first, whatever `match_all_hops` says: what smart lockout calls the
    /// request's locations. Empty means just `client_ip`.
    pub carried: &'a [IpAddr],
    /// The request path (normalised).
    pub path: &'a str,
    /// The user name from the request's credentials, when it has any.
    pub user: Option<&'a str>,
    /// When the request is decided, in milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// The keyed hash of the password the request carries (never the
    /// password), for the spray defence and the lockout's repeated-password rule.
    pub password_key: Option<[u8; 16]>,
}

impl<'a> Facts<'a> {
    /// Facts with only a client IP.
    pub fn new(client_ip: IpAddr) -> Self {
        Facts {
            client_ip,
            addresses: &[],
            application: None,
            user_agent: None,
            http_user_agent: None,
            country: None,
            peer: client_ip,
            carried: &[],
            path: "",
            user: None,
            now_ms: 0,
            password_key: None,
        }
    }

    /// The user agent a list reads by default: `X-MS-Client-User-Agent` when
    /// present, else the client's own `User-Agent`.
    pub fn user_agent(&self) -> Option<&'a str> {
        self.user_agent.or(self.http_user_agent)
    }

    /// Every address the request carries (see [`Facts::carried`]).
    pub fn locations(&self) -> &[IpAddr] {
        if self.carried.is_empty() {
            std::slice::from_ref(&self.client_ip)
        } else {
            self.carried
        }
    }

    /// The addresses IP lists compare.
    pub fn hops(&self) -> &[IpAddr] {
        if self.addresses.is_empty() {
            std::slice::from_ref(&self.client_ip)
        } else {
            self.addresses
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'r> {
    /// The stage that decided; `None` when nothing fired.
    pub stage: Stage,
    /// What happens.
    pub action: Action,
    /// The list that matched: `allow` / `deny`, or a threat feed's name.
    pub list: Option<&'r str>,
    /// The entry that matched (absent for an allow list that did not match).
    pub entry: Option<&'r Entry>,
    /// Forward with `X-Stsgate-Step-Up: required`.
    pub step_up: bool,
    /// Where a redirect goes.
    pub redirect_url: Option<&'r str>,
}

impl Decision<'_> {
    /// Nothing fired: forward.
    pub const FORWARD: Decision<'static> = Decision::plain(Stage::None, Action::Forward);

    /// A decision without list or entry.
    pub const fn plain(stage: Stage, action: Action) -> Decision<'static> {
        Decision {
            stage,
            action,
            list: None,
            entry: None,
            step_up: false,
            redirect_url: None,
        }
    }
}

/// What one check concluded, for `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The section is absent from the rule file.
    NotConfigured,
    /// The section or stage is switched off.
    Disabled,
    /// An earlier check made this one not run.
    Skipped,
    /// Checked; did not fire / does not block.
    Passed,
    /// Fired (adaptive) or blocks (request blocking).
    Fired,
}

/// One line of the trace.
#[derive(Debug, Clone, Serialize)]
pub struct Step<'r> {
    /// The check.
    pub stage: Stage,
    /// What it concluded.
    pub outcome: Outcome,
    /// The list compared, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<&'r str>,
    /// The entry that matched, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<&'r Entry>,
    /// The action this check asks for, when it fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// A few words on why.
    pub note: &'static str,
}

/// Receives the steps of a decision. `()` ignores them (the request path);
/// a `Vec<Step>` keeps them (`explain`).
pub trait Trace<'r> {
    /// Records one step.
    fn step(&mut self, step: Step<'r>);
}

impl<'r> Trace<'r> for () {
    #[inline(always)]
    fn step(&mut self, _: Step<'r>) {}
}

impl<'r> Trace<'r> for Vec<Step<'r>> {
    fn step(&mut self, step: Step<'r>) {
        self.push(step);
    }
}
