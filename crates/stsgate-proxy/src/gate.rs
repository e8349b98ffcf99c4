//! The corridor: one request, start to end.
//!
//! path filter → client facts → gate state (stage 2) → adaptive (stage 3)
//! → request blocking (stage 4) → upstream → response. Stages 3 and 4 are
//! the pure [`RuleSet::decide`]; this file derives the facts once, applies
//! the decision and logs it.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use stsgate_rules::{Action, Decision, RuleSet, Stage};

use crate::blocked;
use crate::client_ip::{self, ClientAddrs};
use crate::config::Config;
use crate::decision_log::{DecisionLog, Event, bounded};
use crate::geoip::GeoIp;
use crate::metrics::{Metrics, UpstreamClass};
use crate::paths::{PathClass, PathFilter};
use crate::proxy_body::{self, Body};
use crate::reload::Rules;
use crate::upstream::{self, Failure, ForwardFacts, Upstream};
use crate::wstrust;

/// `X-MS-Client-Application`.
pub static X_MS_CLIENT_APPLICATION: HeaderName = HeaderName::from_static("x-ms-client-application");
/// `X-MS-Client-User-Agent`.
pub static X_MS_CLIENT_USER_AGENT: HeaderName = HeaderName::from_static("x-ms-client-user-agent");

/// What the listener knows about a connection.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// TCP peer address.
    pub peer: IpAddr,
    /// The connection is TLS.
    pub tls: bool,
}

/// Everything a request needs, shared by all connections.
pub struct Gate {
    /// The config in force.
    pub config: Arc<Config>,
    /// The rules in force (hot reloaded).
    pub rules: Arc<Rules>,
    /// Metrics.
    pub metrics: Metrics,
    upstream: Upstream,
    paths: PathFilter,
    log: DecisionLog,
    geoip: Option<Arc<GeoIp>>,
}

impl Gate {
    /// Assembles the gate.
    pub fn new(
        config: Arc<Config>,
        rules: Arc<Rules>,
        metrics: Metrics,
        upstream: Upstream,
        log: DecisionLog,
        geoip: Option<Arc<GeoIp>>,
    ) -> Gate {
        let paths = PathFilter::new(&config.filter);
        Gate {
            config,
            rules,
            metrics,
            upstream,
            paths,
            log,
            geoip,
        }
    }

    /// The same gate with its own upstream connection pool (one per worker thread).
    pub fn with_own_upstream(&self) -> anyhow::Result<Gate> {
        Ok(Gate {
            config: self.config.clone(),
            rules: self.rules.clone(),
            metrics: self.metrics.clone(),
            upstream: Upstream::new(&self.config.upstream)?,
            paths: self.paths.clone(),
            log: self.log.clone(),
            geoip: self.geoip.clone(),
        })
    }

    /// Ends the decision log's writer once it has written what is queued.
    pub fn close_log(&self) {
        self.log.close();
    }

    /// Answers one request. Never fails: every error is an HTTP answer.
    pub async fn handle(&self, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let started = Instant::now();
        let response = match self.paths.classify(req.uri().path()) {
            PathClass::Forward => {
                self.metrics.decision(Stage::Path, Action::Forward);
                self.forward_streamed(req, conn).await
            }
            PathClass::Refuse => self.refuse_path(&req, conn),
            PathClass::Filtered => self.filtered(req, conn).await,
        };
        self.metrics.request(started.elapsed().as_secs_f64());
        response
    }

    fn refuse_path(&self, req: &Request<Incoming>, conn: Conn) -> Response<Body> {
        self.metrics.decision(Stage::Path, Action::Refuse);
        let response = blocked::blocked(self.config.blocked);
        self.log.send(Event {
            peer_ip: Some(conn.peer),
            path: Some(bounded(req.uri().path())),
            stage: Stage::Path.as_str(),
            action: Action::Refuse.as_str(),
            status: Some(response.status().as_u16()),
            ..Event::now()
        });
        response
    }

    /// A WS-Trust request: facts, decision, then forward or refuse.
    async fn filtered(&self, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let addrs = client_ip::derive(conn.peer, req.headers(), &self.config.client_ip);
        if let Some((header, problem)) = &addrs.bad_header {
            self.metrics.bad_forwarded_headers.inc();
            tracing::warn!(peer = %conn.peer, header = %header, problem = %problem, "forwarded-IP header ignored");
        }
        let (parts, body) = req.into_parts();
        let mut event = Event {
            peer_ip: Some(conn.peer),
            client_ip: Some(addrs.client),
            path: Some(bounded(parts.uri.path())),
            ..Event::now()
        };
        let body = self.read_body(&parts.headers, body).await;
        let rules = self.rules.current();
        let (stage, action, step_up, redirect_url) = {
            let application = header_text(&parts.headers, &X_MS_CLIENT_APPLICATION);
            let user_agent = header_text(&parts.headers, &X_MS_CLIENT_USER_AGENT);
            event.application = application.as_deref().map(bounded);
            event.user_agent = user_agent.as_deref().map(bounded);
            let body = match &body {
                Ok(body) => body,
                Err(status) => {
                    event.status = Some(status.as_u16());
                    self.log.send(Event {
                        stage: Stage::None.as_str(),
                        action: Action::Refuse.as_str(),
                        ..event
                    });
                    return blocked::plain(*status, status.canonical_reason().unwrap_or(""));
                }
            };
            event.user = wstrust::username(body).map(|u| bounded(&u));
            let decision = self.decide(
                &rules,
                &addrs,
                application.as_deref(),
                user_agent.as_deref(),
            );
            event.list = decision.list.map(str::to_string);
            event.entry = decision.entry.map(|e| e.text.to_string());
            (
                decision.stage,
                decision.action,
                decision.step_up,
                decision.redirect_url.map(str::to_string),
            )
        };
        let body = body.unwrap_or_default();
        drop(rules);
        self.metrics.decision(stage, action);
        event.stage = stage.as_str();
        event.action = action.as_str();

        let response = match action {
            Action::Refuse => blocked::blocked(self.config.blocked),
            Action::Redirect => blocked::redirect(redirect_url.as_deref().unwrap_or("/")),
            _ => {
                let facts = ForwardFacts {
                    peer: conn.peer,
                    peer_trusted: addrs.peer_trusted,
                    client: addrs.client,
                    tls: conn.tls,
                    step_up,
                };
                let request = self.upstream_request(parts, proxy_body::full(body), &facts);
                let started = Instant::now();
                let answer = self.upstream.exchange(request).await;
                event.upstream_ms = Some(started.elapsed().as_millis() as u64);
                self.answer(answer.map(|r| r.map(proxy_body::full)), started)
            }
        };
        event.status = Some(response.status().as_u16());
        self.log.send(event);
        response
    }

    /// Stages 2 to 4 on the request's facts.
    fn decide<'r>(
        &self,
        rules: &'r RuleSet,
        addrs: &ClientAddrs,
        application: Option<&str>,
        user_agent: Option<&str>,
    ) -> Decision<'r> {
        let country = crate::geoip::country_for(rules, self.geoip.as_deref(), addrs.client);
        let facts = addrs.facts(application, user_agent, country);
        // Stage 2 (dynamic blocks, smart lockout) slots in here, before the rules.
        rules.decide(&facts)
    }

    /// Reads a filtered request's body, bounded by `limits.max_body` and
    /// `limits.header_read_timeout`.
    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, StatusCode> {
        let max = self.config.limits.max_body;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        let limited =
            http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
        match tokio::time::timeout(self.config.limits.header_read_timeout, limited.collect()).await
        {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                Err(StatusCode::PAYLOAD_TOO_LARGE)
            }
            Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
            Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        }
    }

    /// Not a filtered path: forward, body and answer streamed.
    async fn forward_streamed(&self, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let addrs = client_ip::derive(conn.peer, req.headers(), &self.config.client_ip);
        let facts = ForwardFacts {
            peer: conn.peer,
            peer_trusted: addrs.peer_trusted,
            client: addrs.client,
            tls: conn.tls,
            step_up: false,
        };
        let (parts, body) = req.into_parts();
        let request = self.upstream_request(parts, proxy_body::stream(body), &facts);
        let started = Instant::now();
        let answer = self.upstream.send(request).await;
        self.answer(answer.map(|r| r.map(proxy_body::stream)), started)
    }

    fn upstream_request(
        &self,
        mut parts: http::request::Parts,
        body: Body,
        facts: &ForwardFacts,
    ) -> Request<Body> {
        upstream::forward_headers(&mut parts.headers, &parts.uri, facts);
        // The gate has read (or streams) the body itself; the upstream gets it at once.
        parts.headers.remove(header::EXPECT);
        parts.uri = self.upstream.uri(parts.uri.path_and_query());
        parts.version = Version::HTTP_11;
        Request::from_parts(parts, body)
    }

    /// Maps the upstream's answer, or its failure, to the client's answer.
    fn answer(&self, answer: Result<Response<Body>, Failure>, started: Instant) -> Response<Body> {
        let seconds = started.elapsed().as_secs_f64();
        match answer {
            Ok(mut response) => {
                self.metrics
                    .upstream(UpstreamClass::Status(response.status().as_u16()), seconds);
                upstream::strip_hop_by_hop(response.headers_mut());
                response
            }
            Err(Failure::Unreachable) => {
                self.metrics.upstream(UpstreamClass::Error, seconds);
                tracing::warn!(upstream = %self.config.upstream.url, "upstream unreachable: 502");
                blocked::plain(StatusCode::BAD_GATEWAY, "Bad Gateway\n")
            }
            Err(Failure::Timeout) => {
                self.metrics.upstream(UpstreamClass::Timeout, seconds);
                tracing::warn!(upstream = %self.config.upstream.url, timeout = ?self.config.upstream.timeout, "upstream timed out: 504");
                blocked::plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n")
            }
        }
    }

    /// How long a graceful shutdown may take.
    pub fn drain_timeout(&self) -> Duration {
        self.config.listen.drain_timeout
    }
}

/// A header's value as text (UTF-8, lossy); several instances joined with
/// ", " as HTTP combines them. Borrowed in the common single-value case.
pub fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut text = String::from_utf8_lossy(first.as_bytes());
    for more in values {
        let t = text.to_mut();
        t.push_str(", ");
        t.push_str(&String::from_utf8_lossy(more.as_bytes()));
    }
    Some(text)
}
