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
    /// Stage 3b: anonymous IPs (VPN, Tor, proxies, hosting).
    AnonymousIp,
    /// Stage 3c: adaptive threat service.
    Threat,
    /// Stage 3d: user / group restriction.
    UserGroup,
    /// Stage 3e: geo-velocity (impossible travel).
    GeoVelocity,
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
    pub const ALL: [Stage; 13] = [
        Stage::DynamicBlock,
        Stage::Lockout,
        Stage::Spray,
        Stage::IpCountry,
        Stage::AnonymousIp,
        Stage::Threat,
        Stage::UserGroup,
        Stage::GeoVelocity,
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
            Stage::AnonymousIp => "anonymous_ip",
            Stage::Threat => "threat",
            Stage::UserGroup => "user_group",
            Stage::GeoVelocity => "geo_velocity",
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
    /// The user's groups from the directory, when the rules need them.
    pub groups: Groups<'a>,
    /// The sign-in protocol the request speaks (chosen by its path).
    pub protocol: Protocol,
    /// The client's autonomous system number, when the rules need it
    /// ([`crate::RuleSet::needs_asn`]); `Some(0)` when not known (`AS0`).
    pub asn: Option<u32>,
    /// The client IP's anonymity categories, when the rules need them
    /// ([`crate::RuleSet::needs_anonymous`]).
    pub anonymous: Option<Anonymous>,
    /// Where the client IP is, when the rules need it
    /// ([`crate::RuleSet::needs_place`]) and the city database knows it.
    pub place: Option<Place>,
    /// The user's last successful sign-in, when geo-velocity needs it and
    /// the gate knows one.
    pub last_signin: Option<SignedIn>,
    /// Every address of the request is a familiar IP of the user (smart
    /// lockout's sense, §4.4); filled with [`Facts::last_signin`].
    pub familiar: bool,
}

/// The user's groups, as the directory answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Groups<'a> {
    /// Not looked up: the rules need no groups, or the request has no user.
    #[default]
    NotLooked,
    /// Every group the user is in, nested membership included, each a DN
    /// normalised by [`normalize_dn`].
    Found(&'a [Box<str>]),
    /// The directory knows no such user.
    NoSuchUser,
    /// The directory did not answer within `directory.timeout` or failed;
    /// `refuse` is `directory.on_error = "refuse"`.
    Unavailable {
        /// `directory.on_error = "refuse"`.
        refuse: bool,
    },
}

/// Distinguished names compare in this form: ASCII-lowercased, spaces
/// around `,` and `=` removed, and no leading or trailing spaces. Used on
/// both the rule file's `groups` and the directory's answers.
pub fn normalize_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut after_separator = true;
    for c in dn.trim().chars() {
        match c {
            ',' | '=' => {
                out.truncate(out.trim_end_matches(' ').len());
                out.push(c);
                after_separator = true;
            }
            ' ' if after_separator => {}
            _ => {
                out.push(c.to_ascii_lowercase());
                after_separator = false;
            }
        }
    }
    out
}

/// The anonymity categories of MaxMind's Anonymous IP database, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Anonymous(pub u8);

impl Anonymous {
    /// `anonymous_vpn`.
    pub const VPN: Anonymous = Anonymous(1);
    /// `hosting_provider`.
    pub const HOSTING: Anonymous = Anonymous(2);
    /// `public_proxy`.
    pub const PUBLIC_PROXY: Anonymous = Anonymous(4);
    /// `residential_proxy`.
    pub const RESIDENTIAL_PROXY: Anonymous = Anonymous(8);
    /// `tor_exit_node`.
    pub const TOR: Anonymous = Anonymous(16);
    /// Every category with its name in the rule file.
    pub const NAMES: [(&'static str, Anonymous); 5] = [
        ("anonymous_vpn", Anonymous::VPN),
        ("hosting_provider", Anonymous::HOSTING),
        ("public_proxy", Anonymous::PUBLIC_PROXY),
        ("residential_proxy", Anonymous::RESIDENTIAL_PROXY),
        ("tor_exit_node", Anonymous::TOR),
    ];

    /// No category.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Both sets together.
    pub const fn union(self, other: Anonymous) -> Anonymous {
        Anonymous(self.0 | other.0)
    }

    /// The categories in both.
    pub const fn intersection(self, other: Anonymous) -> Anonymous {
        Anonymous(self.0 & other.0)
    }

    /// The category named `name` in the rule file.
    pub fn parse(name: &str) -> Option<Anonymous> {
        Anonymous::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// The names of the categories set, in [`Anonymous::NAMES`] order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Anonymous::NAMES
            .into_iter()
            .filter(move |(_, a)| self.0 & a.0 != 0)
            .map(|(n, _)| n)
    }
}

/// A place on Earth as the city database gives it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Place {
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// How far off the place may be, in km (`location.accuracy_radius`).
    pub accuracy_km: u16,
}

/// A successful sign-in: where and when.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct SignedIn {
    /// Where the client IP was.
    pub place: Place,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
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
            groups: Groups::NotLooked,
            protocol: Protocol::WsTrust,
            asn: None,
            anonymous: None,
            place: None,
            last_signin: None,
            familiar: false,
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

/// The sign-in protocol a request speaks: which password door of the farm
/// it knocks on. The `protocol` key of the decision log and label of the
/// `stsgate_protocol_*` metrics; the `protocols` key of request blocking's
/// sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, serde::Deserialize)]
pub enum Protocol {
    /// WS-Trust `usernamemixed` (SOAP).
    #[default]
    #[serde(rename = "wstrust")]
    WsTrust,
    /// OAuth 2.0 resource owner password credentials grant.
    #[serde(rename = "oauth2_ropc")]
    OAuth2Ropc,
    /// The forms sign-in page (`/adfs/ls/`).
    #[serde(rename = "forms")]
    Forms,
}

impl Protocol {
    /// Every protocol, in label order.
    pub const ALL: [Protocol; 3] = [Protocol::WsTrust, Protocol::OAuth2Ropc, Protocol::Forms];

    /// The name in logs, metrics and rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::WsTrust => "wstrust",
            Protocol::OAuth2Ropc => "oauth2_ropc",
            Protocol::Forms => "forms",
        }
    }

    /// Its bit in a [`Protocols`] set.
    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of protocols (the `protocols` key of a request blocking section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols(u8);

impl Protocols {
    /// All three.
    pub const ALL: Protocols = Protocols(0b111);
    /// WS-Trust alone.
    pub const WSTRUST: Protocols = Protocols(Protocol::WsTrust.bit());

    /// The set of these protocols.
    pub fn of(protocols: impl IntoIterator<Item = Protocol>) -> Protocols {
        Protocols(protocols.into_iter().fold(0, |bits, p| bits | p.bit()))
    }

    /// Is `protocol` in the set?
    pub fn contains(self, protocol: Protocol) -> bool {
        self.0 & protocol.bit() != 0
    }

    /// The names, in label order, comma-separated.
    pub fn names(self) -> String {
        Protocol::ALL
            .iter()
            .filter(|p| self.contains(**p))
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
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
    /// The section does not apply to the request's protocol (its `protocols`).
    NotApplicable,
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
    /// What the check computed, when it is worth showing.
    #[serde(skip_serializing_if = "Detail::is_none")]
    pub detail: Detail,
}

impl<'r> Step<'r> {
    /// A step that asks for no action and shows no detail.
    pub const fn new(
        stage: Stage,
        outcome: Outcome,
        list: Option<&'r str>,
        entry: Option<&'r Entry>,
        note: &'static str,
    ) -> Step<'r> {
        Step {
            stage,
            outcome,
            list,
            entry,
            action: None,
            note,
            detail: Detail::None,
        }
    }
}

/// What a check computed, for `explain`: small and `Copy`, so the gate's
/// trace stays allocation-free.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Detail {
    /// Nothing to show.
    #[default]
    None,
    /// The client's country.
    Country(Country),
    /// The client's autonomous system number (0: unknown).
    Asn(u32),
    /// The client IP's anonymity categories.
    Anonymous(Anonymous),
    /// Geo-velocity: from the last successful sign-in to here.
    Travel {
        /// Great-circle distance, km.
        distance_km: f64,
        /// Time since the last sign-in, hours.
        hours: f64,
        /// Implied speed, km/h (infinite when no time passed).
        speed_kmh: f64,
        /// Distance that must be exceeded to fire: `min_distance_km` plus
        /// both accuracy radii.
        threshold_km: f64,
    },
}

impl Detail {
    /// True for [`Detail::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, Detail::None)
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Detail::None => Ok(()),
            Detail::Country(c) => write!(f, "country {}", c.as_str()),
            Detail::Asn(n) => write!(f, "AS{n}"),
            Detail::Anonymous(a) if a.is_empty() => f.write_str("no anonymity category"),
            Detail::Anonymous(a) => {
                for (i, name) in a.names().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(name)?;
                }
                Ok(())
            }
            Detail::Travel {
                distance_km,
                hours,
                speed_kmh,
                threshold_km,
            } => write!(
                f,
                "{distance_km:.0} km (fires beyond {threshold_km:.0} km) in {hours:.2} h: {speed_kmh:.0} km/h"
            ),
        }
    }
}

impl Serialize for Detail {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
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
