//! The upstream STS: a pooled keep-alive client (HTTP/1.1 over TCP or
//! rustls), the request rewritten for forwarding (hop-by-hop headers gone,
//! `X-Forwarded-*` added, spoofable headers replaced), and failures mapped
//! to 502 / 504.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config;
use crate::proxy_body::Body;

/// `X-MS-Forwarded-Client-IP`.
pub static X_MS_FORWARDED_CLIENT_IP: HeaderName =
    HeaderName::from_static("x-ms-forwarded-client-ip");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Stsgate-Step-Up`: set by the gate only.
pub static X_STSGATE_STEP_UP: HeaderName = HeaderName::from_static("x-stsgate-step-up");

/// Largest upstream answer read whole on a filtered path.
pub const MAX_FILTERED_ANSWER: usize = 8 << 20;

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connect refused, reset, unreadable answer, DNS: 502.
    Unreachable,
    /// No (whole) answer within `upstream.timeout`: 504.
    Timeout,
}

/// The upstream and its connection pool.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

impl Upstream {
    /// Builds the client for `[upstream]`.
    pub fn new(cfg: &config::Upstream) -> Result<Upstream> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let tls = crate::tls::client_config(cfg.ca_file.as_deref())?;
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match &cfg.server_name {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
                    anyhow::anyhow!("upstream.server_name {name:?} is not a DNS name or IP address")
                })?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            client,
            scheme: cfg.url.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: cfg
                .url
                .authority()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("upstream url has no host"))?,
            timeout: cfg.timeout,
        })
    }

    /// The upstream URI for a request target.
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Sends and waits for the answer's headers, within the timeout.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, Failure> {
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, source = ?std::error::Error::source(&e), "upstream exchange failed");
                Err(Failure::Unreachable)
            }
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Sends and reads the whole answer (filtered paths: the answer is
    /// looked at, and the timeout covers the whole exchange).
    pub async fn exchange(&self, req: Request<Body>) -> Result<Response<Bytes>, Failure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let limited = http_body_util::Limited::new(body, MAX_FILTERED_ANSWER);
        match tokio::time::timeout_at(deadline, limited.collect()).await {
            Ok(Ok(collected)) => Ok(Response::from_parts(parts, collected.to_bytes())),
            Ok(Err(_)) => Err(Failure::Unreachable),
            Err(_) => Err(Failure::Timeout),
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// What forwarding needs to know about the client side.
#[derive(Debug, Clone, Copy)]
pub struct ForwardFacts {
    /// TCP peer.
    pub peer: IpAddr,
    /// Peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The client IP determined.
    pub client: IpAddr,
    /// The listener speaks TLS.
    pub tls: bool,
    /// Forward with `X-Stsgate-Step-Up: required`.
    pub step_up: bool,
}

/// Rewrites request headers for the upstream (PRODUCT.md §4.1). The Host is
/// kept (the STS checks it), taken from the URI for HTTP/2 clients.
///
/// From a peer that is not a trusted proxy, the headers a Web Application
/// Proxy or another reverse proxy sets are dropped: ADFS decides extranet or
/// intranet (and so extranet lockout and the `insidecorporatenetwork` claim)
/// from `X-MS-Proxy` and `X-MS-Endpoint-Absolute-Path`, and claim rules and
/// logs read `Forwarded` and `X-Real-IP`; a client must not be able to claim
/// to come from inside or through WAP. A trusted proxy's values are kept.
pub fn forward_headers(headers: &mut HeaderMap, uri: &Uri, f: &ForwardFacts) {
    /// Set by WAP or a reverse proxy, never by a client.
    static PROXY_ONLY: [HeaderName; 4] = [
        HeaderName::from_static("x-ms-proxy"),
        HeaderName::from_static("x-ms-endpoint-absolute-path"),
        HeaderName::from_static("forwarded"),
        HeaderName::from_static("x-real-ip"),
    ];
    strip_hop_by_hop(headers);
    if !f.peer_trusted {
        for name in &PROXY_ONLY {
            headers.remove(name);
        }
    }
    let host = headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = &host {
        headers.insert(header::HOST, host.clone());
    }
    let peer = HeaderValue::from_str(&f.peer.to_string()).expect("an IP is a valid header value");
    // X-Forwarded-For: a trusted proxy's chain is extended; anyone else's is replaced.
    let xff = match (f.peer_trusted, joined(headers, &X_FORWARDED_FOR)) {
        (true, Some(chain)) => {
            HeaderValue::from_str(&format!("{chain}, {}", f.peer)).unwrap_or(peer.clone())
        }
        _ => peer,
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    if !(f.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if f.tls { "https" } else { "http" }),
        );
    }
    if !(f.peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    if !f.peer_trusted {
        let client =
            HeaderValue::from_str(&f.client.to_string()).expect("an IP is a valid header value");
        headers.insert(X_MS_FORWARDED_CLIENT_IP.clone(), client);
    }
    headers.remove(&X_STSGATE_STEP_UP);
    if f.step_up {
        headers.insert(
            X_STSGATE_STEP_UP.clone(),
            HeaderValue::from_static("required"),
        );
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn facts(trusted: bool, step_up: bool) -> ForwardFacts {
        ForwardFacts {
            peer: "10.0.0.1".parse().unwrap(),
            peer_trusted: trusted,
            client: "5.5.5.5".parse().unwrap(),
            tls: true,
            step_up,
        }
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let mut h = headers(&[
            ("host", "sts.contoso.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-ms-forwarded-client-ip", "1.2.3.4"),
            ("x-forwarded-proto", "gopher"),
            ("x-stsgate-step-up", "none"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-ms-proxy", "wap01"),
            (
                "x-ms-endpoint-absolute-path",
                "/adfs/services/trust/2005/usernamemixed",
            ),
            ("forwarded", "for=10.1.1.1;proto=https"),
            ("x-real-ip", "10.1.1.1"),
        ]);
        forward_headers(&mut h, &Uri::from_static("/adfs/"), &facts(false, false));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-ms-forwarded-client-ip"], "5.5.5.5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "sts.contoso.com");
        assert_eq!(h["host"], "sts.contoso.com");
        for gone in [
            "x-stsgate-step-up",
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "x-ms-proxy",
            "x-ms-endpoint-absolute-path",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn trusted_peers_extend_the_chain() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-ms-forwarded-client-ip", "5.5.5.5, 1.2.3.4"),
            ("x-ms-proxy", "wap01"),
            (
                "x-ms-endpoint-absolute-path",
                "/adfs/services/trust/2005/usernamemixed",
            ),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        forward_headers(
            &mut h,
            &Uri::from_static("https://sts.contoso.com/adfs/"),
            &facts(true, true),
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-ms-forwarded-client-ip"], "5.5.5.5, 1.2.3.4");
        assert_eq!(h["host"], "sts.contoso.com");
        assert_eq!(h["x-stsgate-step-up"], "required");
        assert_eq!(h["x-ms-proxy"], "wap01");
        assert_eq!(
            h["x-ms-endpoint-absolute-path"],
            "/adfs/services/trust/2005/usernamemixed"
        );
        assert_eq!(h["forwarded"], "for=1.2.3.4");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
    }
}
