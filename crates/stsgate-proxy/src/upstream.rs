//! The upstream STS: one server or several (round robin over the healthy
//! ones, passive ejection, an optional active health check: [`Farm`]), a
//! pooled keep-alive client per worker (HTTP/1.1 over TCP or rustls), the
//! request rewritten for forwarding (hop-by-hop headers gone,
//! `X-Forwarded-*` added, spoofable headers replaced), and failures mapped
//! to 502 / 504.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
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

/// The upstream servers and their health, shared by every worker's client
/// (a clone is a handle on the same state).
///
/// Round robin over the healthy servers. A server is left out for
/// `upstream.eject_for` after a connect failure or a 5xx answer that is not
/// a SOAP fault (a SOAP fault is a failed sign-in, not a sick server), and
/// while the active health check fails. When every server is out, requests
/// are still sent (round robin over all): a guess beats a certain 502.
#[derive(Clone)]
pub struct Farm(Arc<FarmState>);

struct FarmState {
    servers: Vec<Server>,
    next: AtomicUsize,
    eject_for: Duration,
    started: std::time::Instant,
    gauge: OnceLock<prometheus::IntGaugeVec>,
    /// The TLS trust roots every worker's client verifies with (reloaded
    /// in place: [`crate::tls::UpstreamTrust`]); set by the first client.
    trust: OnceLock<Arc<crate::tls::UpstreamTrust>>,
}

struct Server {
    /// Scheme and authority.
    scheme: Scheme,
    authority: Authority,
    /// The configured URL, as the metric's label and in logs.
    label: String,
    /// Left out until this many ms after `started` (0: not ejected).
    ejected_until: AtomicU64,
    /// The active health check's last verdict.
    probe_failing: AtomicBool,
}

impl std::fmt::Debug for Farm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.servers.iter().map(|s| &s.label))
            .finish()
    }
}

impl Farm {
    /// The servers of `urls` (validated: a scheme and a host each), all healthy.
    pub fn new(urls: &[Uri], eject_for: Duration) -> Farm {
        let servers = urls
            .iter()
            .map(|u| Server {
                scheme: u.scheme().cloned().unwrap_or(Scheme::HTTP),
                authority: u
                    .authority()
                    .cloned()
                    .unwrap_or_else(|| Authority::from_static("invalid")),
                label: u.to_string().trim_end_matches('/').to_string(),
                ejected_until: AtomicU64::new(0),
                probe_failing: AtomicBool::new(false),
            })
            .collect();
        Farm(Arc::new(FarmState {
            servers,
            next: AtomicUsize::new(0),
            eject_for,
            started: std::time::Instant::now(),
            gauge: OnceLock::new(),
            trust: OnceLock::new(),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.0.started.elapsed().as_millis() as u64 + 1
    }

    fn healthy(&self, i: usize, now: u64) -> bool {
        let s = &self.0.servers[i];
        !s.probe_failing.load(Ordering::Relaxed) && s.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// The next server, round robin over the healthy ones.
    pub fn pick(&self) -> usize {
        let n = self.0.servers.len();
        let start = self.0.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return 0;
        }
        let now = self.now_ms();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.healthy(i, now))
            .unwrap_or(start % n)
    }

    /// Leaves server `i` out for `eject_for` (logged when it was in).
    pub fn eject(&self, i: usize, why: &str) {
        let s = &self.0.servers[i];
        let now = self.now_ms();
        let until = now + self.0.eject_for.as_millis() as u64;
        let before = s.ejected_until.swap(until, Ordering::Relaxed);
        if before <= now {
            tracing::warn!(server = %s.label, reason = why, eject_for = ?self.0.eject_for, "upstream server ejected");
        }
        self.update_gauge(i);
    }

    /// The active health check's verdict on server `i`.
    pub fn probed(&self, i: usize, ok: bool, detail: &str) {
        let s = &self.0.servers[i];
        let was_failing = s.probe_failing.swap(!ok, Ordering::Relaxed);
        if ok {
            // A passing probe ends an ejection too.
            s.ejected_until.store(0, Ordering::Relaxed);
        }
        match (was_failing, ok) {
            (false, false) => {
                tracing::warn!(server = %s.label, detail, "upstream server failed its health check")
            }
            (true, true) => tracing::info!(server = %s.label, "upstream server healthy again"),
            _ => {}
        }
        self.update_gauge(i);
    }

    /// Is server `i` in rotation now?
    pub fn is_healthy(&self, i: usize) -> bool {
        self.healthy(i, self.now_ms())
    }

    /// How many servers.
    pub fn len(&self) -> usize {
        self.0.servers.len()
    }

    /// True when there are none (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.0.servers.is_empty()
    }

    fn update_gauge(&self, i: usize) {
        if let Some(g) = self.0.gauge.get() {
            g.with_label_values(&[self.0.servers[i].label.as_str()])
                .set(i64::from(self.is_healthy(i)));
        }
    }

    /// The trust roots shared by every client of this farm, loaded from
    /// `ca_file` (and the system's) by the first call.
    fn trust(&self, ca_file: Option<&std::path::Path>) -> Result<Arc<crate::tls::UpstreamTrust>> {
        if let Some(trust) = self.0.trust.get() {
            return Ok(trust.clone());
        }
        let trust = crate::tls::UpstreamTrust::load(ca_file)?;
        Ok(self.0.trust.get_or_init(|| trust).clone())
    }

    /// The trust roots in use, once a client was made (for reloading).
    pub fn trust_in_use(&self) -> Option<Arc<crate::tls::UpstreamTrust>> {
        self.0.trust.get().cloned()
    }

    /// Reports `stsgate_upstream_healthy{server}` into `gauge` from now on.
    fn attach(&self, gauge: prometheus::IntGaugeVec) {
        let _ = self.0.gauge.set(gauge);
        for i in 0..self.len() {
            self.update_gauge(i);
        }
    }
}

/// An upstream client and its connection pool (one per worker thread), on
/// the shared [`Farm`].
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    farm: Farm,
    timeout: Duration,
}

fn client(cfg: &config::Upstream) -> Result<Client<HttpsConnector<HttpConnector>, Body>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    let tls = cfg.farm.trust(cfg.ca_file.as_deref())?.client_config()?;
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
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

impl Upstream {
    /// Builds a client for `[upstream]`, on its shared farm.
    pub fn new(cfg: &config::Upstream) -> Result<Upstream> {
        Ok(Upstream {
            client: client(cfg)?,
            farm: cfg.farm.clone(),
            timeout: cfg.timeout,
        })
    }

    /// The upstream URI for a request target (the server is chosen when
    /// the request is sent).
    pub fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        self.uri_on(0, path_and_query)
    }

    fn uri_on(&self, i: usize, path_and_query: Option<&PathAndQuery>) -> Uri {
        let server = &self.farm.0.servers[i];
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(server.scheme.clone());
        parts.authority = Some(server.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Sends to the next healthy server and waits for the answer's headers,
    /// within the timeout.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, Failure> {
        let i = self.farm.pick();
        *req.uri_mut() = self.uri_on(i, req.uri().path_and_query());
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => {
                if resp.status().is_server_error() && !is_soap(resp.headers()) {
                    self.farm.eject(i, "a 5xx answer that is not a SOAP fault");
                }
                Ok(resp)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, source = ?std::error::Error::source(&e), "upstream exchange failed");
                if e.is_connect() {
                    self.farm.eject(i, "connect failed");
                }
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

/// A SOAP answer (`application/soap+xml`, or SOAP 1.1's `text/xml`): a
/// 500 of this kind is the STS failing a sign-in.
fn is_soap(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start().to_ascii_lowercase())
        .is_some_and(|v| v.starts_with("application/soap+xml") || v.starts_with("text/xml"))
}

/// Runs the active health check of `cfg` (when `health_check` is set) and
/// reports `stsgate_upstream_healthy{server}`, until `shutdown` resolves.
/// Each server is asked `GET <health_check>` every `health_interval`,
/// within `connect_timeout`; 200 is healthy.
pub fn watch_health(
    cfg: &config::Upstream,
    metrics: &crate::metrics::Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let farm = cfg.farm.clone();
    farm.attach(metrics.upstream_healthy.clone());
    let probe = cfg.health_check.clone();
    let every = cfg.health_interval.max(Duration::from_millis(100));
    let within = cfg.connect_timeout;
    let prober = Upstream::new(cfg).ok();
    async move {
        let (Some(path), Some(prober)) = (probe, prober) else {
            return;
        };
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            let probes = (0..farm.len()).map(|i| {
                let prober = prober.clone();
                let path = path.clone();
                async move {
                    let req = Request::get(prober.uri_on(i, Some(&path)))
                        .header(header::USER_AGENT, "stsgate-health-check")
                        .body(crate::proxy_body::full(Bytes::new()));
                    let Ok(req) = req else {
                        return (i, false, "bad request".to_string());
                    };
                    match tokio::time::timeout(within, prober.client.request(req)).await {
                        Ok(Ok(resp)) if resp.status() == http::StatusCode::OK => {
                            (i, true, String::new())
                        }
                        Ok(Ok(resp)) => (i, false, format!("answered {}", resp.status().as_u16())),
                        Ok(Err(e)) => (i, false, format!("{e}")),
                        Err(_) => (i, false, format!("no answer within {within:?}")),
                    }
                }
            });
            for (i, ok, detail) in futures_join_all(probes).await {
                prober.farm.probed(i, ok, &detail);
            }
        }
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
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

    fn farm(n: usize, eject_for: Duration) -> Farm {
        let urls: Vec<Uri> = (0..n)
            .map(|i| format!("http://sts{i}.test:80").parse().unwrap())
            .collect();
        Farm::new(&urls, eject_for)
    }

    #[test]
    fn round_robin_over_healthy_servers() {
        let f = farm(3, Duration::from_secs(60));
        let picks: Vec<usize> = (0..6).map(|_| f.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        f.eject(1, "test");
        assert!(!f.is_healthy(1));
        let picks: Vec<usize> = (0..6).map(|_| f.pick()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert!(picks.contains(&0) && picks.contains(&2), "{picks:?}");
        // A passing health check ends the ejection; a failing one leaves out.
        f.probed(1, true, "");
        f.probed(2, false, "503");
        let picks: Vec<usize> = (0..6).map(|_| f.pick()).collect();
        assert!(picks.contains(&1) && !picks.contains(&2), "{picks:?}");
        // All out: requests still go somewhere.
        f.eject(0, "test");
        f.eject(1, "test");
        let picks: Vec<usize> = (0..3).map(|_| f.pick()).collect();
        assert_eq!(picks.len(), 3);
    }

    #[test]
    fn ejection_ends_after_its_time() {
        let f = farm(2, Duration::ZERO);
        f.eject(0, "test");
        std::thread::sleep(Duration::from_millis(5));
        assert!(f.is_healthy(0));
        let g = prometheus::IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["server"]).unwrap();
        f.attach(g.clone());
        assert_eq!(g.with_label_values(&["http://sts1.test:80"]).get(), 1);
        f.probed(1, false, "down");
        assert_eq!(g.with_label_values(&["http://sts1.test:80"]).get(), 0);
    }

    #[test]
    fn soap_answers_are_sign_ins_not_sickness() {
        for (ct, soap) in [
            ("application/soap+xml; charset=utf-8", true),
            ("text/xml; charset=utf-8", true),
            ("Application/SOAP+XML", true),
            ("text/html", false),
            ("", false),
        ] {
            assert_eq!(is_soap(&headers(&[("content-type", ct)])), soap, "{ct}");
        }
        assert!(!is_soap(&HeaderMap::new()));
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
