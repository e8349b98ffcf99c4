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

/// The STS behind the gate.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http://` or `https://` base URL.
    pub url: http::Uri,
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
}

/// Gate state storage.
#[derive(Debug, Clone)]
pub struct State {
    /// Embedded store directory.
    pub dir: PathBuf,
    /// Shared store.
    pub redis_url: Option<String>,
}

/// GeoIP database.
#[derive(Debug, Clone)]
pub struct GeoIp {
    /// MaxMind DB country database.
    pub country_db: Option<PathBuf>,
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

/// Alert delivery.
#[derive(Debug, Clone)]
pub struct Alerts {
    /// SOAR webhook.
    pub webhook_url: Option<String>,
}

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
    url: Spanned<String>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Default 127.0.0.1:9100.
    addr: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    /// Default /var/lib/stsgate.
    dir: Option<Spanned<String>>,
    redis_url: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoIp {
    country_db: Option<Spanned<String>>,
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
    webhook_url: Option<Spanned<String>>,
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
        let src = SourceText::new(path, text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| vec![src.toml_error(&e)])?;
        let mut v = Validator {
            src: &src,
            base: Path::new(path)
                .parent()
                .unwrap_or(Path::new(""))
                .to_path_buf(),
            errors: Vec::new(),
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
                    cert: v.path(cert),
                    key: v.path(key),
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
            let url = match u.url.get_ref().parse::<http::Uri>() {
                Ok(url)
                    if matches!(url.scheme_str(), Some("http" | "https"))
                        && url.host().is_some() =>
                {
                    url
                }
                _ => {
                    v.error(&u.url, format!("invalid upstream url {:?}: expected http://host[:port] or https://host[:port]", u.url.get_ref()));
                    http::Uri::from_static("http://invalid")
                }
            };
            if url
                .path_and_query()
                .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
            {
                v.error(
                    &u.url,
                    "the upstream url takes no path: requests keep their own path",
                );
            }
            Upstream {
                url,
                ca_file: u.ca_file.as_ref().map(|p| v.path(p)),
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
            let trusted_proxies = match crate::trusted::compile(
                path,
                text,
                &c.trusted_proxies,
                &v.base,
                last_good,
            ) {
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
            token_file: raw.admin.token_file.as_ref().map(|p| v.path(p)),
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
            rules: v.path(&raw.rules),
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
            admin,
            state: State {
                dir: raw
                    .state
                    .dir
                    .as_ref()
                    .map_or_else(|| PathBuf::from("/var/lib/stsgate"), |d| v.path(d)),
                redis_url: raw.state.redis_url.as_ref().map(|u| u.get_ref().clone()),
            },
            geoip: GeoIp {
                country_db: raw.geoip.country_db.as_ref().map(|p| v.path(p)),
            },
            log,
            alerts: Alerts {
                webhook_url: raw.alerts.webhook_url.as_ref().map(|u| u.get_ref().clone()),
            },
        };
        if v.errors.is_empty() {
            Ok(config)
        } else {
            v.errors.sort_by_key(|e| (e.line, e.column));
            Err(v.errors)
        }
    }
}

/// Collects errors while turning raw values into validated ones.
struct Validator<'a> {
    src: &'a SourceText<'a>,
    base: PathBuf,
    errors: Vec<SourceError>,
}

impl Validator<'_> {
    fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.errors.push(self.src.error(&at.span(), message));
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
    fn defaults() {
        let c = Config::parse("/etc/stsgate/stsgate.toml", MINIMAL).unwrap();
        assert_eq!(c.rules, Path::new("/etc/stsgate/rules/wstrust.toml"));
        assert_eq!(c.listen.addrs, vec!["0.0.0.0:443".parse().unwrap()]);
        assert_eq!(c.filter.paths, ["/adfs/services/trust/"]);
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
        assert_eq!(e[0].line, 4, "{e:?}");
        let e = Config::parse("s.toml", &format!("{MINIMAL}[blocked]\ndelay = \"soon\"\n"))
            .unwrap_err();
        assert_eq!((e[0].line, e[0].column), (5, 9), "{e:?}");
        let e =
            Config::parse("s.toml", "rules = \"r\"\n[upstream]\nurl = \"ftp://x\"\n").unwrap_err();
        assert_eq!((e[0].line, e[0].column), (3, 7), "{e:?}");
    }
}
