//! The rule file as written: a serde model that mirrors the TOML one to one.
//! Unknown keys are errors; strings that need checking keep their spans so
//! that errors point at them. Only [`crate::RuleSet`] reaches the request path.

use serde::Deserialize;
use toml::Spanned;

/// A whole rule file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// Stage 4, and the switch for stage 3.
    pub request_blocking: Option<RawRequestBlocking>,
    /// Stage 3: adaptive checks.
    pub adaptive: Option<RawAdaptive>,
    /// Smart lockout settings (gate state).
    pub lockout: Option<RawLockout>,
    /// Password spray detection settings (gate state).
    pub spray: Option<RawSpray>,
}

/// `[request_blocking]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestBlocking {
    /// "Request Blocking Enabled"; default true when the section is present.
    pub enabled: Option<bool>,
    /// "Use Adaptive Authentication for initial IP Blocking"; default false.
    pub use_adaptive: Option<bool>,
    /// How the configured sections combine; default `or`.
    pub logic: Option<Logic>,
    /// `enforce` (default) or `log_only`.
    pub mode: Option<Mode>,
    /// `[request_blocking.ip]`.
    pub ip: Option<RawList>,
    /// `[request_blocking.application]`: X-MS-Client-Application.
    pub application: Option<RawList>,
    /// `[request_blocking.user_agent]`: X-MS-Client-User-Agent, or the
    /// client's own User-Agent (see `header`).
    pub user_agent: Option<RawUserAgentList>,
}

/// One list section: its rule and its entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    /// `allow` or `deny`.
    pub rule: ListRule,
    /// The entries, each kept with its position in the file.
    #[serde(default)]
    pub entries: Vec<Spanned<String>>,
    /// The sign-in protocols the section applies to: `wstrust`,
    /// `oauth2_ropc`, `forms`. Default: all three, except for an `allow`
    /// list of `application` or `user_agent`: `wstrust` only (only Exchange
    /// Online's requests to the WS-Trust endpoint carry those headers).
    pub protocols: Option<Spanned<Vec<crate::Protocol>>>,
}

/// `[request_blocking.user_agent]`: a list and the header it reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUserAgentList {
    /// `allow` or `deny`.
    pub rule: ListRule,
    /// The entries, each kept with its position in the file.
    #[serde(default)]
    pub entries: Vec<Spanned<String>>,
    /// Which header: `auto` (default), `x-ms-client-user-agent`, `user-agent`.
    pub header: Option<UserAgentHeader>,
    /// The sign-in protocols the section applies to.
    pub protocols: Option<Spanned<Vec<crate::Protocol>>>,
}

/// Which header a user agent list reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum UserAgentHeader {
    /// `X-MS-Client-User-Agent` when the request carries it (Exchange Online
    /// sets it), the client's own `User-Agent` otherwise (a client talking to
    /// the farm directly).
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// Only `X-MS-Client-User-Agent`.
    #[serde(rename = "x-ms-client-user-agent")]
    MsClient,
    /// Only `User-Agent`.
    #[serde(rename = "user-agent")]
    UserAgent,
}

/// `[adaptive]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    /// `[adaptive.ip_country]`.
    pub ip_country: Option<RawIpCountry>,
    /// `[adaptive.anonymous_ip]`.
    pub anonymous_ip: Option<RawAnonymousIp>,
    /// `[adaptive.threat]`.
    pub threat: Option<RawThreat>,
    /// `[adaptive.user_group]`.
    pub user_group: Option<RawUserGroup>,
    /// `[adaptive.geo_velocity]`.
    pub geo_velocity: Option<RawGeoVelocity>,
}

/// `[adaptive.anonymous_ip]` (needs `geoip.anonymous_ip_db`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnonymousIp {
    /// Default true when the section is present.
    pub enabled: Option<bool>,
    /// `anonymous_vpn`, `hosting_provider`, `public_proxy`,
    /// `residential_proxy`, `tor_exit_node`.
    #[serde(default)]
    pub categories: Vec<Spanned<String>>,
    /// What to do when the check fires; default `refuse`.
    pub failure_action: Option<Spanned<FailureAction>>,
    /// Where `redirect` sends the client.
    pub redirect_url: Option<Spanned<String>>,
}

/// `[adaptive.user_group]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUserGroup {
    /// Default true when the section is present.
    pub enabled: Option<bool>,
    /// `allow`: fires for users listed nowhere; `deny` (default): for listed users.
    pub list: Option<ListRule>,
    /// UPN, `DOMAIN\sam` or sAMAccountName globs (`*`, `?`, `[..]`), any case.
    #[serde(default)]
    pub users: Vec<Spanned<String>>,
    /// Group distinguished names; nested membership counts (needs `[directory]`).
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    /// What to do when the check fires; default `refuse`.
    pub failure_action: Option<Spanned<FailureAction>>,
    /// Where `redirect` sends the client.
    pub redirect_url: Option<Spanned<String>>,
}

/// `[adaptive.geo_velocity]` (needs `geoip.city_db`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoVelocity {
    /// Default true when the section is present.
    pub enabled: Option<bool>,
    /// Implied speeds above this fire; default 900.
    pub max_speed_kmh: Option<Spanned<i64>>,
    /// Shorter hops (plus both accuracy radii) never fire; default 500.
    pub min_distance_km: Option<Spanned<i64>>,
    /// What to do when the check fires; default `refuse`.
    pub failure_action: Option<Spanned<FailureAction>>,
    /// Where `redirect` sends the client.
    pub redirect_url: Option<Spanned<String>>,
}

/// `[adaptive.ip_country]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpCountry {
    /// Default true when the section is present.
    pub enabled: Option<bool>,
    /// `ip` (default), `country` or `asn`.
    pub restriction: Option<Restriction>,
    /// `allow` or `deny` (default).
    pub list: Option<ListRule>,
    /// IP notation, ISO 3166 alpha-2 codes (`ZZ`: unknown) or `AS15169`
    /// numbers (`AS0`: unknown).
    #[serde(default)]
    pub entries: Vec<Spanned<String>>,
    /// What to do when the check fires; default `refuse`.
    pub failure_action: Option<Spanned<FailureAction>>,
    /// Where `redirect` sends the client.
    pub redirect_url: Option<Spanned<String>>,
}

/// `[adaptive.threat]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreat {
    /// Default true when the section is present.
    pub enabled: Option<bool>,
    /// Addresses never reported by the threat check (IP notation).
    #[serde(default)]
    pub whitelist: Vec<Spanned<String>>,
    /// Feed files.
    #[serde(default)]
    pub feeds: Vec<RawFeed>,
    /// Action per risk level.
    #[serde(default)]
    pub actions: RawThreatActions,
    /// Where a `redirect` action sends the client.
    pub redirect_url: Option<Spanned<String>>,
}

/// `[[adaptive.threat.feeds]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    /// The feed's name, used in logs as the list (and, for a URL feed, as
    /// its file name in `state.dir/feeds/`).
    pub name: Spanned<String>,
    /// The file: one IP, CIDR or range a line; `#` and `;` start comments.
    /// Either `path` or `url`.
    pub path: Option<Spanned<String>>,
    /// Fetched from here instead (`https://`, or `http://` to a loopback
    /// host), with ETag / If-Modified-Since, every `refresh`.
    pub url: Option<Spanned<String>>,
    /// How often a URL feed is fetched; default `1h`, at least `1s`.
    pub refresh: Option<Spanned<String>>,
    /// How long one download of a URL feed may take; default `30s`.
    pub timeout: Option<Spanned<String>>,
    /// Extra trust roots (PEM) for a URL feed's server, beside the system's;
    /// relative to the rule file.
    pub ca_file: Option<Spanned<String>>,
    /// The feed's category (`botnet`, `tor`, `scanner`...), logged as
    /// `threat_category` when it fires.
    pub category: Option<Spanned<String>>,
    /// The feed's risk level.
    pub risk: Risk,
}

/// `[adaptive.threat.actions]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreatActions {
    /// Default `refuse`.
    pub extreme: Option<Spanned<FailureAction>>,
    /// Default `refuse`.
    pub high: Option<Spanned<FailureAction>>,
    /// Default `continue`.
    pub medium: Option<Spanned<FailureAction>>,
    /// Default `continue`.
    pub low: Option<Spanned<FailureAction>>,
}

/// `[lockout]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLockout {
    /// Default true when the section is present.
    pub enabled: Option<bool>,
    /// `enforce` (default) or `log_only`.
    pub mode: Option<Mode>,
    /// Failures from unfamiliar IPs that lock a user; default 5.
    pub threshold: Option<Spanned<i64>>,
    /// Default `30m`.
    pub observation_window: Option<Spanned<String>>,
    /// Default `14d`.
    pub familiar_for: Option<Spanned<String>>,
}

/// `[spray]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpray {
    /// Default true when the section is present.
    pub enabled: Option<bool>,
    /// Distinct users failing from one IP that make it a spray; default 10.
    pub distinct_users: Option<Spanned<i64>>,
    /// Distinct users one wrong password fails for, from any IPs, that make
    /// it a sprayed password; default 5.
    pub same_password_users: Option<Spanned<i64>>,
    /// Default `10m`.
    pub window: Option<Spanned<String>>,
    /// Default `1h`.
    pub block_for: Option<Spanned<String>>,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListRule {
    /// Block (or fire) when the request matches no entry.
    Allow,
    /// Block (or fire) when the request matches an entry.
    Deny,
}

impl ListRule {
    /// The name used in the rule file, logs and traces: `allow` / `deny`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ListRule::Allow => "allow",
            ListRule::Deny => "deny",
        }
    }
}

/// How request blocking sections combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Logic {
    /// Refused when at least one configured section blocks.
    Or,
    /// Refused when every configured section blocks.
    And,
}

/// Enforce, or decide and only log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse what the stage refuses.
    Enforce,
    /// Decide, log and count, but forward.
    LogOnly,
}

/// What the IP / country check compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restriction {
    /// Client addresses against IP notation.
    Ip,
    /// The client's country against ISO codes.
    Country,
    /// The client's autonomous system number against `AS15169` entries.
    Asn,
}

/// A threat feed's risk level.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Lowest.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Highest.
    Extreme,
}

impl Risk {
    /// The name used in the rule file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Extreme => "extreme",
        }
    }
}

/// The failure actions of adaptive checks (PRODUCT.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Not enforced: logged and counted, go on with the next check.
    Continue,
    /// Refuse now with the blocked response.
    Refuse,
    /// Answer 302 to `redirect_url`.
    Redirect,
    /// Leave adaptive, run request blocking, forward with the step-up header.
    #[serde(rename = "require_2fa")]
    Require2fa,
    /// Leave adaptive, run request blocking.
    #[serde(rename = "skip_2fa")]
    Skip2fa,
    /// Leave adaptive, run request blocking.
    Resume,
    /// Leave adaptive and skip request blocking: forward.
    PostAuth,
}
