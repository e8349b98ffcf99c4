//! The main config file (`stsgate.toml`, PRODUCT.md §2), in two steps: a raw
//! serde model that mirrors the TOML (unknown keys are errors), then the
//! validated [`Config`] the server runs on. Relative paths are relative to
//! the directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use stsgate_rules::{SourceError, SourceText};
use toml::Spanned;

pub use crate::paths::{
    DEFAULT_PASS_PATHS, DEFAULT_PATHS, DEFAULT_REFUSE_PATHS, Filter, OtherPaths,
};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file itself.
    pub path: PathBuf,
    /// The rule file (hot reloaded).
    pub rules: PathBuf,
    /// `[listen]`.
    pub listen: Listen,
    /// `[upstream]`.
    pub upstream: Upstream,
    /// `[filter]`.
    pub filter: Filter,
    /// `[client_ip]`.
    pub client_ip: ClientIp,
    /// `[limits]`.
    pub limits: Limits,
    /// `[blocked]` style.
    pub blocked: BlockedStyle,
    /// `blocked.delay`: how long a refusal waits before it is answered.
    pub blocked_delay: crate::delay::DelayMode,
    /// `blocked.forms_page`: the forms sign-in page refusals answer with
    /// (`{action}`, `{username}`, `{error}` filled in); absent: the
    /// embedded page ([`crate::blocked::FORMS_PAGE`]).
    pub blocked_forms_page: Option<PathBuf>,
    /// `[admin]`.
    pub admin: Admin,
    /// `[state]`.
    pub state: State,
    /// `[geoip]`.
    pub geoip: GeoIp,
    /// `[log]`.
    pub log: Log,
    /// `[alerts]`.
    pub alerts: Alerts,
    /// `[directory]`: where users' groups come from (`[adaptive.user_group]`).
    pub directory: Option<stsgate_directory::Settings>,
    /// Where the file-valued keys were written, for errors about the files.
    pub positions: KeyPositions,
}

/// Line and column of the value of each file-valued key of the config
/// (`rules`, `listen.tls_cert`, `upstream.ca_file`, ...), so that a problem
/// with the file itself is reported where the file is named.
#[derive(Debug, Clone, Default)]
pub struct KeyPositions(Vec<(&'static str, u32, u32)>);

impl KeyPositions {
    /// Where `key` was written, if it was.
    pub fn get(&self, key: &str) -> Option<(u32, u32)> {
        self.0
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|&(_, line, column)| (line, column))
    }

    /// An error about the file named by `key`, at its value in `config`
    /// (`1:1` when the key is not written, as for a default).
    pub fn error(&self, config: &Path, key: &str, message: impl Into<String>) -> SourceError {
        let (line, column) = self.get(key).unwrap_or((1, 1));
        SourceError {
            path: config.display().to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Where the gate listens.
#[derive(Debug, Clone)]
pub struct Listen {
    /// One or more addresses.
    pub addrs: Vec<SocketAddr>,
    /// Certificate chain and key (PEM); absent: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// How long a graceful shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Accept PROXY protocol v1/v2 headers from trusted proxies.
    pub proxy_protocol: bool,
}

/// A PEM certificate chain and its key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// The STS behind the gate: one server, or several (a farm without a load
/// balancer).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http://` or `https://` base URL (the first of `urls`).
    pub url: http::Uri,
    /// Every server (`url`, or `urls`), in the order written.
    pub urls: Vec<http::Uri>,
    /// Path of the active health check (`GET`, 200 is healthy); none: passive only.
    pub health_check: Option<http::uri::PathAndQuery>,
    /// How often each server is checked.
    pub health_interval: Duration,
    /// How long a failing server is left out.
    pub eject_for: Duration,
    /// The servers' health, shared by every worker's client.
    pub farm: crate::upstream::Farm,
    /// Extra trust roots for an https upstream.
    pub ca_file: Option<PathBuf>,
    /// SNI and certificate name, when the URL holds an address.
    pub server_name: Option<String>,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Whole upstream exchange.
    pub timeout: Duration,
}

/// How the client IP is found.
#[derive(Debug, Clone)]
pub struct ClientIp {
    /// Peers whose forwarded headers (and PROXY protocol headers) are
    /// believed; hot reloaded (see [`crate::trusted`]).
    pub trusted_proxies: crate::trusted::TrustedProxies,
    /// Headers to read, in order.
    pub headers: Vec<HeaderName>,
    /// IP lists look at every believed address.
    pub match_all_hops: bool,
}

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body on a filtered path.
    pub max_body: u64,
    /// Time allowed for a request's headers (and the TLS handshake).
    pub header_read_timeout: Duration,
    /// Connections open at once, all clients together.
    pub max_connections: usize,
    /// Connections open at once from one peer address.
    pub max_connections_per_ip: usize,
    /// A connection with nothing read and no request in flight this long is closed.
    pub idle_timeout: Duration,
}

/// `blocked.style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockedStyle {
    /// HTTP 500 with a SOAP fault like the STS's failed sign-in.
    SoapFault,
    /// HTTP 403.
    Forbidden,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address of /metrics, /healthz, /readyz, /api/v1.
    pub addr: SocketAddr,
    /// Bearer token file; absent: the API answers 404.
    pub token_file: Option<PathBuf>,
    /// A second bearer token that may only read (GET, and `POST
    /// /api/v1/explain`, which changes nothing); acting with it is 403.
    pub read_token_file: Option<PathBuf>,
    /// `admin.ui`: the admin page at `/ui`; unset: on when `addr` is loopback.
    pub ui: Option<bool>,
}

impl Admin {
    /// Is the admin page served? `admin.ui`, or by default only on a
    /// loopback address (reached through an SSH tunnel).
    pub fn ui_enabled(&self) -> bool {
        self.ui.unwrap_or_else(|| self.addr.ip().is_loopback())
    }
}

/// Gate state storage.
#[derive(Debug, Clone)]
pub struct State {
    /// Embedded store directory.
    pub dir: PathBuf,
    /// Shared store.
    pub redis_url: Option<String>,
    /// Longest block the API accepts.
    pub max_ttl: Duration,
    /// This instance's name in alerts and shared state (default: the host
    /// name and the process id).
    pub instance: String,
}

/// GeoIP databases (MaxMind DB format), each optional, reloaded when the file changes.
#[derive(Debug, Clone, Default)]
pub struct GeoIp {
    /// Country database (country restriction; `city_db` serves too).
    pub country_db: Option<PathBuf>,
    /// City database: geo-velocity (and country).
    pub city_db: Option<PathBuf>,
    /// ASN database: `restriction = "asn"`.
    pub asn_db: Option<PathBuf>,
    /// Anonymous IP database: `[adaptive.anonymous_ip]`.
    pub anonymous_ip_db: Option<PathBuf>,
}

/// The decision log.
#[derive(Debug, Clone)]
pub struct Log {
    /// Output format.
    pub format: LogFormat,
    /// `udp://host:port` or `tcp://host:port` for syslog; absent: stdout.
    pub syslog_addr: Option<SyslogAddr>,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object a line.
    Json,
    /// A readable line.
    Text,
    /// RFC 5424 with structured data.
    Syslog,
}

/// A syslog collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddr {
    /// Datagrams.
    Udp(String),
    /// A stream, octet-counted framing (RFC 6587).
    Tcp(String),
}

/// `[alerts]`: state events posted as JSON to a SOAR ([`crate::alerts`]).
/// Holds file paths only; the files are read by
/// [`crate::alerts::AlertSender::new`].
#[derive(Debug, Clone)]
pub struct Alerts {
    /// SOAR webhook, `http://` or `https://`; absent: alerts are only logged.
    pub webhook_url: Option<http::Uri>,
    /// Extra trust roots for an https webhook (the system's are used too).
    pub ca_file: Option<PathBuf>,
    /// Its first line is sent as `Authorization: Bearer`.
    pub token_file: Option<PathBuf>,
    /// Its first line is the HMAC-SHA-256 key of `X-Stsgate-Signature`.
    pub signing_key_file: Option<PathBuf>,
    /// Events waiting for delivery before new ones are dropped (default 1000).
    pub queue: usize,
    /// Bound of one delivery attempt, connect included (default 5s).
    pub timeout: Duration,
    /// Attempts per event before it is counted `failed` (default 6).
    pub max_attempts: u32,
    /// Wait after the first failed attempt, doubled after each (default 1s).
    pub backoff: Duration,
    /// Longest wait between two attempts (default 60s).
    pub max_backoff: Duration,
}

/// Most events `alerts.queue` may hold.
pub const MAX_ALERT_QUEUE: usize = 1_000_000;
/// Most attempts `alerts.max_attempts` may ask for.
pub const MAX_ALERT_ATTEMPTS: u32 = 20;

// ---- the raw model ------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The rule file.
    rules: Spanned<String>,
    #[serde(default)]
    listen: RawListen,
    upstream: RawUpstream,
    #[serde(default)]
    filter: RawFilter,
    #[serde(default)]
    client_ip: RawClientIp,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    blocked: RawBlocked,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    geoip: RawGeoIp,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    alerts: RawAlerts,
    directory: Option<Spanned<RawDirectory>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    /// One address.
    addr: Option<Spanned<String>>,
    /// Several addresses.
    addrs: Option<Vec<Spanned<String>>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    /// Default 30s.
    drain_timeout: Option<Spanned<String>>,
    /// Default false: PROXY protocol headers from trusted proxies.
    #[serde(default)]
    proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    /// One server.
    url: Option<Spanned<String>>,
    /// Several servers, round robin over the healthy ones.
    urls: Option<Vec<Spanned<String>>>,
    /// Path of an active health check, e.g. "/adfs/probe".
    health_check: Option<Spanned<String>>,
    /// Default 5s.
    health_interval: Option<Spanned<String>>,
    /// Default 30s.
    eject_for: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    /// Default 5s.
    connect_timeout: Option<Spanned<String>>,
    /// Default 30s.
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    /// Default `["/adfs/services/trust/"]`.
    paths: Option<Vec<Spanned<String>>>,
    /// Default `forward`.
    other_paths: Option<OtherPaths>,
    /// Default: both windowstransport endpoints.
    refuse_paths: Option<Vec<Spanned<String>>>,
    /// Default: the metadata exchange and federation metadata paths.
    pass_paths: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientIp {
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    /// Default `["X-MS-Forwarded-Client-IP", "X-Forwarded-For"]`.
    headers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    match_all_hops: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    /// Default 256KiB.
    max_body: Option<Spanned<String>>,
    /// Default 10s.
    header_read_timeout: Option<Spanned<String>>,
    /// Default 10000.
    max_connections: Option<Spanned<i64>>,
    /// Default 1000 (Exchange Online sends many sign-ins from few addresses).
    max_connections_per_ip: Option<Spanned<i64>>,
    /// Default 60s.
    idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlocked {
    style: Option<BlockedStyle>,
    /// `"auto"` (default), a duration, or `"0s"`.
    delay: Option<Spanned<String>>,
    /// An HTML file: the forms sign-in page refusals on `/adfs/ls` answer with.
    forms_page: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Default 127.0.0.1:9100.
    addr: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    /// A token that may only read the API.
    read_token_file: Option<Spanned<String>>,
    /// The admin page; default on for a loopback `addr` only.
    ui: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    /// Default /var/lib/stsgate.
    dir: Option<Spanned<String>>,
    redis_url: Option<Spanned<String>>,
    /// Default 30d.
    max_ttl: Option<Spanned<String>>,
    /// Default: host name and process id.
    instance: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoIp {
    country_db: Option<Spanned<String>>,
    city_db: Option<Spanned<String>>,
    asn_db: Option<Spanned<String>>,
    anonymous_ip_db: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    syslog_addr: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    /// `http://` or `https://` URL; absent: no delivery.
    webhook_url: Option<Spanned<String>>,
    /// Extra trust roots for https.
    ca_file: Option<Spanned<String>>,
    /// Bearer token file.
    token_file: Option<Spanned<String>>,
    /// HMAC key file.
    signing_key_file: Option<Spanned<String>>,
    /// Default 1000.
    queue: Option<Spanned<i64>>,
    /// Default 5s.
    timeout: Option<Spanned<String>>,
    /// Default 6.
    max_attempts: Option<Spanned<i64>>,
    /// Default 1s.
    backoff: Option<Spanned<String>>,
    /// Default 60s.
    max_backoff: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    url: Option<Spanned<String>>,
    /// Service account DN; absent: anonymous.
    bind_dn: Option<Spanned<String>>,
    /// Its password, first line.
    password_file: Option<Spanned<String>>,
    /// Where users are searched.
    base_dn: Option<Spanned<String>>,
    /// Default: UPN or sAMAccountName.
    user_filter: Option<Spanned<String>>,
    /// Extra trust roots for ldaps.
    ca_file: Option<Spanned<String>>,
    /// Default 300ms.
    timeout: Option<Spanned<String>>,
    /// Default 15m.
    cache_for: Option<Spanned<String>>,
    /// "continue" (default) | "refuse".
    on_error: Option<Spanned<String>>,
}

/// The default client IP headers.
pub const DEFAULT_HEADERS: &[&str] = &["X-MS-Forwarded-Client-IP", "X-Forwarded-For"];

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, Vec<SourceError>> {
        Config::load_with(path, None)
    }

    /// [`Config::load`]; trusted proxy lists that fail fall back on `last_good`.
    pub fn load_with(
        path: &Path,
        last_good: Option<&crate::trusted::LastGood>,
    ) -> Result<Config, Vec<SourceError>> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![SourceError::whole_file(
                &shown,
                format!("cannot read the config file: {e}"),
            )]
        })?;
        Config::parse_with(&shown, &text, last_good)
    }

    /// Validates config text read from `path`; every error found is returned.
    pub fn parse(path: &str, text: &str) -> Result<Config, Vec<SourceError>> {
        Config::parse_with(path, text, None)
    }

    /// [`Config::parse`]; trusted proxy lists that fail fall back on `last_good`.
    pub fn parse_with(
        path: &str,
        text: &str,
        last_good: Option<&crate::trusted::LastGood>,
    ) -> Result<Config, Vec<SourceError>> {
        match Config::parse_with_all(path, text, last_good) {
            (Some(config), errors) if errors.is_empty() => Ok(config),
            (_, errors) => Err(errors),
        }
    }

    /// [`Config::parse`] for `check`: see [`Config::parse_with_all`].
    pub fn parse_all(path: &str, text: &str) -> (Option<Config>, Vec<SourceError>) {
        Config::parse_with_all(path, text, None)
    }

    /// [`Config::parse_with`] for `check`: every error, and the config as far as
    /// it validated (defaults where a value was wrong), so that the files it
    /// names can be checked in the same run. `None` when the text is not TOML
    /// or its errors could not be stepped over.
    pub fn parse_with_all(
        path: &str,
        text: &str,
        last_good: Option<&crate::trusted::LastGood>,
    ) -> (Option<Config>, Vec<SourceError>) {
        let src = SourceText::new(path, text);
        let (raw, early) = raw_model(&src);
        let mut v = Validator {
            src: &src,
            base: Path::new(path)
                .parent()
                .unwrap_or(Path::new(""))
                .to_path_buf(),
            errors: early,
            positions: KeyPositions::default(),
        };
        let Some(raw) = raw else {
            return (None, v.errors);
        };

        let listen = {
            let mut addrs: Vec<SocketAddr> = Vec::new();
            if let Some(a) = &raw.listen.addr {
                addrs.extend(v.socket_addr(a));
            }
            for a in raw.listen.addrs.iter().flatten() {
                addrs.extend(v.socket_addr(a));
            }
            if raw.listen.addr.is_none() && raw.listen.addrs.is_none() {
                addrs.push(SocketAddr::from(([0, 0, 0, 0], 443)));
            }
            let tls = match (&raw.listen.tls_cert, &raw.listen.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: v.file("listen.tls_cert", cert),
                    key: v.file("listen.tls_key", key),
                }),
                (None, None) => None,
                (Some(s), None) | (None, Some(s)) => {
                    v.error(
                        s,
                        "tls_cert and tls_key go together: set both, or neither for plain HTTP",
                    );
                    None
                }
            };
            let drain_timeout =
                v.duration(raw.listen.drain_timeout.as_ref(), Duration::from_secs(30));
            Listen {
                addrs,
                tls,
                drain_timeout,
                proxy_protocol: raw.listen.proxy_protocol,
            }
        };

        let upstream = {
            let u = &raw.upstream;
            let written: Vec<&Spanned<String>> = match (&u.url, &u.urls) {
                (Some(url), None) => vec![url],
                (None, Some(urls)) if !urls.is_empty() => urls.iter().collect(),
                (Some(_), Some(urls)) => {
                    if let Some(first) = urls.first() {
                        v.error(first, "set upstream.url or upstream.urls, not both");
                    }
                    Vec::new()
                }
                _ => {
                    v.errors.push(SourceError::whole_file(
                        path,
                        "[upstream] needs url = \"https://...\" (or urls = [...] for several servers)",
                    ));
                    Vec::new()
                }
            };
            let mut urls = Vec::with_capacity(written.len());
            for w in written {
                let url = match w.get_ref().parse::<http::Uri>() {
                    Ok(url)
                        if matches!(url.scheme_str(), Some("http" | "https"))
                            && url.host().is_some() =>
                    {
                        url
                    }
                    _ => {
                        v.error(w, format!("invalid upstream url {:?}: expected http://host[:port] or https://host[:port]", w.get_ref()));
                        continue;
                    }
                };
                if url
                    .path_and_query()
                    .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
                {
                    v.error(
                        w,
                        "the upstream url takes no path: requests keep their own path",
                    );
                }
                if urls.contains(&url) {
                    v.error(w, format!("upstream url {:?} is listed twice", w.get_ref()));
                }
                urls.push(url);
            }
            if urls.is_empty() {
                urls.push(http::Uri::from_static("http://invalid"));
            }
            let health_check = u.health_check.as_ref().and_then(|h| match h
                .get_ref()
                .parse::<http::uri::PathAndQuery>(
            ) {
                Ok(p) if p.as_str().starts_with('/') => Some(p),
                _ => {
                    v.error(
                        h,
                        format!(
                            "invalid health_check {:?}: a path such as \"/adfs/probe\"",
                            h.get_ref()
                        ),
                    );
                    None
                }
            });
            let eject_for = v.duration(u.eject_for.as_ref(), Duration::from_secs(30));
            Upstream {
                url: urls[0].clone(),
                farm: crate::upstream::Farm::new(&urls, eject_for),
                urls,
                health_check,
                health_interval: v.duration(u.health_interval.as_ref(), Duration::from_secs(5)),
                eject_for,
                ca_file: u.ca_file.as_ref().map(|p| v.file("upstream.ca_file", p)),
                server_name: u.server_name.as_ref().map(|s| s.get_ref().clone()),
                connect_timeout: v.duration(u.connect_timeout.as_ref(), Duration::from_secs(5)),
                timeout: v.duration(u.timeout.as_ref(), Duration::from_secs(30)),
            }
        };

        let filter = Filter {
            paths: v.prefixes(raw.filter.paths.as_deref(), DEFAULT_PATHS),
            other_paths: raw.filter.other_paths.unwrap_or(OtherPaths::Forward),
            refuse_paths: v.prefixes(raw.filter.refuse_paths.as_deref(), DEFAULT_REFUSE_PATHS),
            pass_paths: v.prefixes(raw.filter.pass_paths.as_deref(), DEFAULT_PASS_PATHS),
        };

        let client_ip = {
            let c = &raw.client_ip;
            let trusted_proxies =
                match crate::trusted::compile(path, text, &c.trusted_proxies, &v.base, last_good) {
                    Ok(set) => crate::trusted::TrustedProxies::new(set),
                    Err(mut e) => {
                        v.errors.append(&mut e);
                        crate::trusted::TrustedProxies::default()
                    }
                };
            let headers = match &c.headers {
                None => DEFAULT_HEADERS
                    .iter()
                    .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("valid header name"))
                    .collect(),
                Some(list) => list
                    .iter()
                    .filter_map(|h| match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                        Ok(name) => Some(name),
                        Err(_) => {
                            v.error(h, format!("invalid header name {:?}", h.get_ref()));
                            None
                        }
                    })
                    .collect(),
            };
            ClientIp {
                trusted_proxies,
                headers,
                match_all_hops: c.match_all_hops,
            }
        };

        let limits = Limits {
            max_body: v.size(raw.limits.max_body.as_ref(), 256 * 1024),
            header_read_timeout: v.duration(
                raw.limits.header_read_timeout.as_ref(),
                Duration::from_secs(10),
            ),
            max_connections: v.count(raw.limits.max_connections.as_ref(), 10_000),
            max_connections_per_ip: v.count(raw.limits.max_connections_per_ip.as_ref(), 1_000),
            idle_timeout: v.duration(raw.limits.idle_timeout.as_ref(), Duration::from_secs(60)),
        };

        let admin = Admin {
            addr: raw
                .admin
                .addr
                .as_ref()
                .and_then(|a| v.socket_addr(a))
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9100))),
            token_file: raw
                .admin
                .token_file
                .as_ref()
                .map(|p| v.file("admin.token_file", p)),
            read_token_file: raw
                .admin
                .read_token_file
                .as_ref()
                .map(|p| v.file("admin.read_token_file", p)),
            ui: raw.admin.ui,
        };

        let log = Log {
            format: raw.log.format.unwrap_or(LogFormat::Json),
            syslog_addr: raw.log.syslog_addr.as_ref().and_then(|a| {
                let s = a.get_ref();
                let parsed = if let Some(rest) = s.strip_prefix("udp://") {
                    Some(SyslogAddr::Udp(rest.to_string()))
                } else {
                    s.strip_prefix("tcp://")
                        .map(|rest| SyslogAddr::Tcp(rest.to_string()))
                };
                if parsed.is_none() {
                    v.error(
                        a,
                        format!(
                            "invalid syslog_addr {s:?}: expected udp://host:port or tcp://host:port"
                        ),
                    );
                }
                parsed
            }),
        };

        let config = Config {
            path: PathBuf::from(path),
            positions: KeyPositions::default(),
            rules: v.file("rules", &raw.rules),
            listen,
            upstream,
            filter,
            client_ip,
            limits,
            blocked: raw.blocked.style.unwrap_or(BlockedStyle::SoapFault),
            blocked_delay: match &raw.blocked.delay {
                None => crate::delay::DelayMode::Auto,
                Some(d) => crate::delay::DelayMode::parse(d.get_ref()).unwrap_or_else(|m| {
                    v.error(d, m);
                    crate::delay::DelayMode::Auto
                }),
            },
            blocked_forms_page: raw
                .blocked
                .forms_page
                .as_ref()
                .map(|p| v.file("blocked.forms_page", p)),
            admin,
            state: State {
                dir: raw
                    .state
                    .dir
                    .as_ref()
                    .map_or_else(|| PathBuf::from("/var/lib/stsgate"), |d| v.path(d)),
                redis_url: raw.state.redis_url.as_ref().and_then(|u| {
                    match stsgate_state::redis::RedisStore::new(u.get_ref(), "check") {
                        Ok(_) => Some(u.get_ref().clone()),
                        Err(e) => {
                            v.error(u, format!("invalid redis_url: {e}"));
                            None
                        }
                    }
                }),
                max_ttl: v.duration(raw.state.max_ttl.as_ref(), Duration::from_secs(30 * 86400)),
                instance: raw
                    .state
                    .instance
                    .as_ref()
                    .map_or_else(default_instance, |i| i.get_ref().clone()),
            },
            geoip: GeoIp {
                country_db: raw
                    .geoip
                    .country_db
                    .as_ref()
                    .map(|p| v.file("geoip.country_db", p)),
                city_db: raw
                    .geoip
                    .city_db
                    .as_ref()
                    .map(|p| v.file("geoip.city_db", p)),
                asn_db: raw.geoip.asn_db.as_ref().map(|p| v.file("geoip.asn_db", p)),
                anonymous_ip_db: raw
                    .geoip
                    .anonymous_ip_db
                    .as_ref()
                    .map(|p| v.file("geoip.anonymous_ip_db", p)),
            },
            log,
            alerts: alerts(&mut v, &raw.alerts),
            directory: raw.directory.as_ref().and_then(|d| directory(&mut v, d)),
        };
        v.errors.sort_by_key(|e| (e.line, e.column));
        (
            Some(Config {
                positions: v.positions,
                ..config
            }),
            v.errors,
        )
    }
}

/// `[alerts]`, validated.
fn alerts(v: &mut Validator<'_>, raw: &RawAlerts) -> Alerts {
    let webhook_url = raw.webhook_url.as_ref().and_then(|w| {
        let bad = |why: &str| format!("invalid webhook_url {:?}: {why}", w.get_ref());
        match w.get_ref().parse::<http::Uri>() {
            Ok(url)
                if matches!(url.scheme_str(), Some("http" | "https")) && url.host().is_some() =>
            {
                if url.authority().is_some_and(|a| a.as_str().contains('@')) {
                    v.error(
                        w,
                        "webhook_url must not hold credentials: put a token in alerts.token_file",
                    );
                    None
                } else {
                    Some(url)
                }
            }
            _ => {
                v.error(
                    w,
                    bad("expected http://host[:port]/path or https://host[:port]/path"),
                );
                None
            }
        }
    });
    if raw.webhook_url.is_none() {
        let set = [
            ("ca_file", raw.ca_file.as_ref().map(Spanned::span)),
            ("token_file", raw.token_file.as_ref().map(Spanned::span)),
            (
                "signing_key_file",
                raw.signing_key_file.as_ref().map(Spanned::span),
            ),
        ];
        if let Some((key, Some(span))) = set.into_iter().find(|(_, s)| s.is_some()) {
            v.errors.push(v.src.error(
                &span,
                format!("alerts.{key} needs alerts.webhook_url (where to send alerts)"),
            ));
        }
    }
    let queue = v.count(raw.queue.as_ref(), 1000);
    if let Some(q) = raw.queue.as_ref().filter(|_| queue > MAX_ALERT_QUEUE) {
        v.error(q, format!("queue must be at most {MAX_ALERT_QUEUE}"));
    }
    let max_attempts = v.count(raw.max_attempts.as_ref(), 6);
    if let Some(a) = raw.max_attempts.as_ref() {
        if max_attempts > MAX_ALERT_ATTEMPTS as usize {
            v.error(
                a,
                format!("max_attempts must be at most {MAX_ALERT_ATTEMPTS}"),
            );
        }
    }
    let mut positive = |d: Option<&Spanned<String>>, default: Duration, key: &str| {
        let value = v.duration(d, default);
        match d {
            Some(d) if value.is_zero() => {
                v.error(d, format!("{key} must be longer than zero"));
                default
            }
            _ => value,
        }
    };
    let timeout = positive(raw.timeout.as_ref(), Duration::from_secs(5), "timeout");
    let backoff = positive(raw.backoff.as_ref(), Duration::from_secs(1), "backoff");
    let max_backoff = positive(
        raw.max_backoff.as_ref(),
        Duration::from_secs(60),
        "max_backoff",
    );
    if backoff > max_backoff {
        if let Some(at) = raw.backoff.as_ref().or(raw.max_backoff.as_ref()) {
            v.error(at, "backoff must not be longer than max_backoff");
        }
    }
    Alerts {
        webhook_url,
        ca_file: raw.ca_file.as_ref().map(|p| v.file("alerts.ca_file", p)),
        token_file: raw
            .token_file
            .as_ref()
            .map(|p| v.file("alerts.token_file", p)),
        signing_key_file: raw
            .signing_key_file
            .as_ref()
            .map(|p| v.file("alerts.signing_key_file", p)),
        queue: queue.min(MAX_ALERT_QUEUE),
        timeout,
        max_attempts: u32::try_from(max_attempts)
            .unwrap_or(MAX_ALERT_ATTEMPTS)
            .min(MAX_ALERT_ATTEMPTS),
        backoff,
        max_backoff,
    }
}

/// `[directory]`, validated.
fn directory(
    v: &mut Validator<'_>,
    raw: &Spanned<RawDirectory>,
) -> Option<stsgate_directory::Settings> {
    use stsgate_directory as dir;
    let table = raw.span();
    let d = raw.get_ref();
    let mut ok = true;
    let mut required =
        |v: &mut Validator<'_>, value: &Option<Spanned<String>>, key: &str, example: &str| {
            match value {
                Some(s) if !s.get_ref().trim().is_empty() => Some(s.get_ref().clone()),
                Some(s) => {
                    v.error(s, format!("directory.{key} must not be empty"));
                    ok = false;
                    None
                }
                None => {
                    v.errors.push(
                        v.src
                            .error(&table, format!("[directory] needs {key} = {example}")),
                    );
                    ok = false;
                    None
                }
            }
        };
    let url = required(v, &d.url, "url", "\"ldaps://dc1.corp.example.com\"");
    let base_dn = required(v, &d.base_dn, "base_dn", "\"DC=corp,DC=example,DC=com\"");
    if let (Some(u), Some(url)) = (&d.url, &url) {
        if let Err(m) = dir::check_url(url) {
            v.error(u, m);
            ok = false;
        }
    }
    let user_filter = d
        .user_filter
        .as_ref()
        .map_or(dir::DEFAULT_USER_FILTER.to_string(), |f| {
            f.get_ref().clone()
        });
    if let Some(f) = &d.user_filter {
        if let Err(m) = dir::check_user_filter(f.get_ref()) {
            v.error(f, m);
            ok = false;
        }
    }
    match (&d.bind_dn, &d.password_file) {
        (Some(b), None) => {
            v.error(b, "directory.bind_dn needs directory.password_file");
            ok = false;
        }
        (None, Some(p)) => {
            v.error(p, "directory.password_file needs directory.bind_dn");
            ok = false;
        }
        _ => {}
    }
    if let Some(c) = &d.ca_file {
        if url.as_deref().is_some_and(|u| !u.starts_with("ldaps://")) {
            v.error(c, "directory.ca_file is for an ldaps:// url");
            ok = false;
        }
    }
    let timeout = v.duration(d.timeout.as_ref(), dir::DEFAULT_TIMEOUT);
    if let Some(t) = d.timeout.as_ref().filter(|_| timeout.is_zero()) {
        v.error(t, "directory.timeout must be longer than zero");
        ok = false;
    }
    let on_error = match d.on_error.as_ref().map(|o| (o, o.get_ref().as_str())) {
        None | Some((_, "continue")) => dir::OnError::Continue,
        Some((_, "refuse")) => dir::OnError::Refuse,
        Some((o, other)) => {
            v.error(
                o,
                format!("invalid on_error {other:?}: expected \"continue\" or \"refuse\""),
            );
            ok = false;
            dir::OnError::Continue
        }
    };
    let settings = dir::Settings {
        url: url.unwrap_or_default(),
        bind_dn: d.bind_dn.as_ref().map(|b| b.get_ref().clone()),
        password_file: d
            .password_file
            .as_ref()
            .map(|p| v.file("directory.password_file", p)),
        base_dn: base_dn.unwrap_or_default(),
        user_filter,
        ca_file: d.ca_file.as_ref().map(|p| v.file("directory.ca_file", p)),
        timeout,
        cache_for: v.duration(d.cache_for.as_ref(), dir::DEFAULT_CACHE_FOR),
        on_error,
    };
    ok.then_some(settings)
}

/// Sections that only a rule file has.
const RULE_FILE_SECTIONS: &[&str] = &["request_blocking", "adaptive", "lockout", "spray"];

/// The raw model, and every error serde finds on the way. serde stops at
/// the first error; so the offending key-value line (or the whole table,
/// for a table header) is blanked out with spaces, which keeps every offset,
/// and the text parsed again, until it parses or no line can be blanked.
/// A `missing field` caused by a blanked key is not reported twice.
fn raw_model(src: &SourceText<'_>) -> (Option<RawConfig>, Vec<SourceError>) {
    let text = src.text();
    let Ok(table) = text.parse::<toml::Table>() else {
        // A syntax error: serde reports it with its position.
        return match toml::from_str::<RawConfig>(text) {
            Ok(raw) => (Some(raw), Vec::new()),
            Err(e) => (None, vec![src.toml_error(&e)]),
        };
    };
    if !table.contains_key("upstream") {
        if let Some(section) = RULE_FILE_SECTIONS.iter().find(|s| table.contains_key(**s)) {
            return (
                None,
                vec![src.error_at(
                    0,
                    format!(
                        "this looks like a rule file ([{section}], no [upstream]), not the main config: \
                         --config takes stsgate.toml, which names the rule file with rules = \"...\""
                    ),
                )],
            );
        }
    }
    let mut work = text.to_string();
    let mut errors: Vec<SourceError> = Vec::new();
    let mut blanked: Vec<String> = Vec::new();
    for _ in 0..64 {
        let e = match toml::from_str::<RawConfig>(&work) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => e,
        };
        let message = e.message();
        let caused_by_us = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
            .is_some_and(|field| blanked.iter().any(|b| b == field));
        if caused_by_us {
            break;
        }
        let error = src.toml_error(&e);
        if !errors.iter().any(|x| x.message == error.message) {
            errors.push(error);
        }
        let Some((next, key)) = e.span().and_then(|s| blank(&work, s.start)) else {
            break;
        };
        if next.parse::<toml::Table>().is_err() {
            break;
        }
        blanked.push(key);
        work = next;
    }
    (None, errors)
}

/// `text` with the key-value line at `offset` (or the table whose header
/// is there, up to the next header) replaced by spaces; and the key's last
/// name. `None` when there is nothing left to blank there.
fn blank(text: &str, offset: usize) -> Option<(String, String)> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = |from: usize| text[from..].find('\n').map_or(text.len(), |i| from + i);
    let first = text[start..line_end(start)].trim();
    if first.is_empty() {
        return None;
    }
    let (end, key) = if let Some(header) = first.strip_prefix('[') {
        let mut end = line_end(start);
        while end < text.len() {
            let next = line_end(end + 1);
            if text[end + 1..next].trim_start().starts_with('[') {
                break;
            }
            end = next;
        }
        (
            end,
            header.trim_matches(|c| c == '[' || c == ']').to_string(),
        )
    } else {
        (
            line_end(start),
            first.split('=').next().unwrap_or("").trim().to_string(),
        )
    };
    let key = key
        .rsplit('.')
        .next()
        .unwrap_or("")
        .trim_matches(['"', '\'', ' '])
        .to_string();
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    out.extend(
        text[start..end]
            .chars()
            .map(|c| if c == '\n' { c } else { ' ' }),
    );
    out.push_str(&text[end..]);
    Some((out, key))
}

/// The host name and process id: `adfs-gate-1/4242`.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "stsgate".to_string());
    format!("{host}/{}", std::process::id())
}

/// Collects errors while turning raw values into validated ones.
struct Validator<'a> {
    src: &'a SourceText<'a>,
    base: PathBuf,
    errors: Vec<SourceError>,
    positions: KeyPositions,
}

impl Validator<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.errors.push(self.src.error(&at.span(), message));
    }

    /// [`Validator::path`] of a file-valued key, remembering where it was written.
    fn file(&mut self, key: &'static str, p: &Spanned<String>) -> PathBuf {
        let (line, column) = self.src.position(p.span().start);
        self.positions.0.push((key, line, column));
        self.path(p)
    }

    fn path(&self, p: &Spanned<String>) -> PathBuf {
        let p = Path::new(p.get_ref());
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn socket_addr(&mut self, a: &Spanned<String>) -> Option<SocketAddr> {
        match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(a, format!("invalid address {:?}: expected IP:PORT such as \"0.0.0.0:443\" or \"[::]:443\"", a.get_ref()));
                None
            }
        }
    }

    fn count(&mut self, n: Option<&Spanned<i64>>, default: usize) -> usize {
        match n {
            None => default,
            Some(n) if *n.get_ref() >= 1 => usize::try_from(*n.get_ref()).unwrap_or(usize::MAX),
            Some(n) => {
                self.error(n, "must be a whole number, at least 1");
                default
            }
        }
    }

    fn duration(&mut self, d: Option<&Spanned<String>>, default: Duration) -> Duration {
        let Some(d) = d else { return default };
        stsgate_rules::units::parse_duration(d.get_ref()).unwrap_or_else(|m| {
            self.error(d, m);
            default
        })
    }

    fn size(&mut self, s: Option<&Spanned<String>>, default: u64) -> u64 {
        let Some(s) = s else { return default };
        stsgate_rules::units::parse_size(s.get_ref()).unwrap_or_else(|m| {
            self.error(s, m);
            default
        })
    }

    fn prefixes(&mut self, list: Option<&[Spanned<String>]>, default: &[&str]) -> Vec<String> {
        let Some(list) = list else {
            return default.iter().map(|p| p.to_string()).collect();
        };
        list.iter()
            .filter_map(|p| {
                if p.get_ref().starts_with('/') {
                    Some(crate::paths::normalize(p.get_ref()).into_owned())
                } else {
                    self.error(
                        p,
                        format!(
                            "invalid path prefix {:?}: it must start with '/'",
                            p.get_ref()
                        ),
                    );
                    None
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "rules = \"rules/wstrust.toml\"\n[upstream]\nurl = \"https://adfs.corp.example.com\"\n";

    #[test]
    fn several_upstream_servers() {
        let c = Config::parse(
            "s.toml",
            "rules = \"r\"\n[upstream]\nurls = [\"https://adfs1.corp.example.com\", \"https://10.0.0.12:443\"]\nhealth_check = \"/adfs/probe\"\nhealth_interval = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.upstream.urls.len(), 2);
        assert_eq!(c.upstream.url, c.upstream.urls[0]);
        assert_eq!(c.upstream.farm.len(), 2);
        assert_eq!(
            c.upstream.health_check.as_ref().unwrap().as_str(),
            "/adfs/probe"
        );
        assert_eq!(c.upstream.health_interval, Duration::from_secs(2));
        assert_eq!(c.upstream.eject_for, Duration::from_secs(30));
        for (text, want) in [
            ("url = \"http://a\"\nurls = [\"http://b\"]", "not both"),
            ("urls = [\"http://a\", \"http://a\"]", "listed twice"),
            ("urls = [\"http://a\", \"ftp://b\"]", "invalid upstream url"),
            ("urls = []", "needs url"),
            ("timeout = \"5s\"", "needs url"),
            (
                "url = \"http://a\"\nhealth_check = \"probe\"",
                "invalid health_check",
            ),
        ] {
            let e = Config::parse("s.toml", &format!("rules = \"r\"\n[upstream]\n{text}\n"))
                .unwrap_err();
            assert!(e.iter().any(|e| e.message.contains(want)), "{text}: {e:?}");
        }
    }

    #[test]
    fn defaults() {
        let c = Config::parse("/etc/stsgate/stsgate.toml", MINIMAL).unwrap();
        assert_eq!(c.rules, Path::new("/etc/stsgate/rules/wstrust.toml"));
        assert_eq!(c.listen.addrs, vec!["0.0.0.0:443".parse().unwrap()]);
        assert_eq!(
            c.filter.paths,
            ["/adfs/services/trust/", "/adfs/oauth2/token", "/adfs/ls"]
        );
        assert_eq!(c.filter.refuse_paths.len(), 2);
        assert_eq!(c.filter.pass_paths[0], "/adfs/services/trust/mex");
        assert_eq!(c.limits.max_body, 262_144);
        assert_eq!(c.upstream.timeout, Duration::from_secs(30));
        assert_eq!(c.client_ip.headers[0].as_str(), "x-ms-forwarded-client-ip");
        assert_eq!(c.blocked, BlockedStyle::SoapFault);
        assert_eq!(c.blocked_delay, crate::delay::DelayMode::Auto);
        assert_eq!(c.admin.addr, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn every_error_in_one_run_and_where_files_are_named() {
        let text = "rules = \"r.toml\"\n[listen]\nbogus = 1\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[upstream]\nurl = \"http://sts\"\ntimeout = 5\nca_file = \"ca.pem\"\n[limits]\nmax_body = \"lots\"\n[nonsense]\na = 1\n[nonsense.sub]\nb = 2\n[admin]\ntoken_file = \"t\"\n";
        let (config, errors) = Config::parse_all("s.toml", text);
        let e: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].starts_with("s.toml:3:1: unknown field `bogus`"),
            "{e:?}"
        );
        assert!(e[1].starts_with("s.toml:8:11: invalid type"), "{e:?}");
        assert!(e[2].starts_with("s.toml:11:12: invalid size"), "{e:?}");
        assert!(
            e[3].starts_with("s.toml:12:2: unknown field `nonsense`"),
            "{e:?}"
        );
        let c = config.expect("the config as far as it validated");
        assert_eq!(c.positions.get("listen.tls_cert"), Some((4, 12)));
        assert_eq!(c.positions.get("upstream.ca_file"), Some((9, 11)));
        assert_eq!(c.positions.get("admin.token_file"), Some((17, 14)));
        assert_eq!(c.positions.get("geoip.country_db"), None);
        assert!(Config::parse("s.toml", text).is_err());
        // a required key with a bad value is not reported missing as well
        let e =
            Config::parse("s.toml", "rules = 1\n[upstream]\nurl = \"http://sts\"\n").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        // a rule file handed over as the config
        let e = Config::parse("r.toml", "[request_blocking.ip]\nrule = \"deny\"\n").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].to_string()
                .starts_with("r.toml:1:1: this looks like a rule file"),
            "{e:?}"
        );
    }

    #[test]
    fn alerts_defaults_and_errors() {
        let c = Config::parse("/etc/stsgate/s.toml", &format!("{MINIMAL}[alerts]\nwebhook_url = \"https://soar.example.com/hooks/stsgate\"\ntoken_file = \"soar.token\"\n")).unwrap();
        let a = &c.alerts;
        assert_eq!(
            a.webhook_url.as_ref().map(ToString::to_string).as_deref(),
            Some("https://soar.example.com/hooks/stsgate")
        );
        assert_eq!(
            a.token_file.as_deref(),
            Some(Path::new("/etc/stsgate/soar.token"))
        );
        assert_eq!((a.queue, a.max_attempts), (1000, 6));
        assert_eq!(
            (a.timeout, a.backoff, a.max_backoff),
            (
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::from_secs(60)
            )
        );
        assert_eq!(c.positions.get("alerts.token_file"), Some((6, 14)));
        assert!(
            Config::parse("s.toml", MINIMAL)
                .unwrap()
                .alerts
                .webhook_url
                .is_none()
        );
        for (text, at, want) in [
            (
                "webhook_url = \"ftp://soar\"",
                (5, 15),
                "invalid webhook_url",
            ),
            (
                "webhook_url = \"soar.example.com\"",
                (5, 15),
                "invalid webhook_url",
            ),
            (
                "webhook_url = \"https://u:p@soar\"",
                (5, 15),
                "must not hold credentials",
            ),
            ("token_file = \"t\"", (5, 14), "needs alerts.webhook_url"),
            (
                "webhook_url = \"http://soar\"\nqueue = 0",
                (6, 9),
                "at least 1",
            ),
            (
                "webhook_url = \"http://soar\"\nqueue = 2000000",
                (6, 9),
                "at most",
            ),
            (
                "webhook_url = \"http://soar\"\nmax_attempts = 21",
                (6, 16),
                "at most 20",
            ),
            (
                "webhook_url = \"http://soar\"\ntimeout = \"0s\"",
                (6, 11),
                "longer than zero",
            ),
            (
                "webhook_url = \"http://soar\"\nbackoff = \"2m\"",
                (6, 11),
                "max_backoff",
            ),
            (
                "webhook_url = \"http://soar\"\nretries = 3",
                (6, 1),
                "unknown field",
            ),
        ] {
            let e = Config::parse("s.toml", &format!("{MINIMAL}[alerts]\n{text}\n")).unwrap_err();
            assert!(
                e[0].message.contains(want) && (e[0].line, e[0].column) == at,
                "{text}: {e:?}"
            );
        }
    }

    #[test]
    fn errors_point_at_the_value() {
        let text = format!(
            "{MINIMAL}[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/99\"]\n[limits]\nmax_body = \"lots\"\n[listen]\naddr = \"localhost\"\ntls_cert = \"c.pem\"\n"
        );
        let e: Vec<String> = Config::parse("s.toml", &text)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e.iter()
                .any(|e| e.starts_with("s.toml:5:35: invalid IP entry")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|e| e.starts_with("s.toml:7:12: invalid size")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("s.toml:9:8: invalid address")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("s.toml:10:12: tls_cert and tls_key")),
            "{e:?}"
        );
        let e = Config::parse(
            "s.toml",
            "rules = \"r\"\n[upstream]\nurl = \"ftp://x\"\nbogus = 1\n",
        )
        .unwrap_err();
        assert_eq!((e.len(), e[0].line, e[1].line), (2, 3, 4), "{e:?}");
        let e = Config::parse("s.toml", &format!("{MINIMAL}[blocked]\ndelay = \"soon\"\n"))
            .unwrap_err();
        assert_eq!((e[0].line, e[0].column), (5, 9), "{e:?}");
        let e =
            Config::parse("s.toml", "rules = \"r\"\n[upstream]\nurl = \"ftp://x\"\n").unwrap_err();
        assert_eq!((e[0].line, e[0].column), (3, 7), "{e:?}");
    }

    #[test]
    fn directory_defaults_and_errors() {
        let c = Config::parse(
            "/etc/stsgate/s.toml",
            &format!(
                "{MINIMAL}[directory]\nurl = \"ldaps://dc1.corp.example.com\"\nbind_dn = \"CN=svc,DC=corp\"\npassword_file = \"ldap.secret\"\nbase_dn = \"DC=corp\"\n"
            ),
        )
        .unwrap();
        let d = c.directory.unwrap();
        assert_eq!(d.timeout, Duration::from_millis(300));
        assert_eq!(d.cache_for, Duration::from_secs(900));
        assert_eq!(d.on_error, stsgate_directory::OnError::Continue);
        assert_eq!(d.user_filter, stsgate_directory::DEFAULT_USER_FILTER);
        assert_eq!(
            d.password_file.as_deref(),
            Some(Path::new("/etc/stsgate/ldap.secret"))
        );
        assert!(
            Config::parse("s.toml", MINIMAL)
                .unwrap()
                .directory
                .is_none()
        );

        let e: Vec<String> = Config::parse(
            "s.toml",
            &format!(
                "{MINIMAL}[directory]\nurl = \"ldap://dc1\"\nbind_dn = \"CN=svc\"\nuser_filter = \"(uid=alice)\"\nca_file = \"ca.pem\"\ntimeout = \"0s\"\non_error = \"ignore\"\n"
            ),
        )
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
        for want in [
            "s.toml:4:1: [directory] needs base_dn",
            "s.toml:6:11: directory.bind_dn needs directory.password_file",
            "s.toml:7:15: user_filter must name {user}",
            "s.toml:8:11: directory.ca_file is for an ldaps:// url",
            "s.toml:9:11: directory.timeout must be longer than zero",
            "s.toml:10:12: invalid on_error",
        ] {
            assert!(e.iter().any(|e| e.starts_with(want)), "{want}: {e:?}");
        }
        let e = Config::parse(
            "s.toml",
            &format!("{MINIMAL}[directory]\nurl = \"https://dc1\"\nbase_dn = \"DC=corp\"\n"),
        )
        .unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("s.toml:5:7: invalid directory url"),
            "{e:?}"
        );
    }
}
