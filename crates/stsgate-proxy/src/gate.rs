//! One request, start to end: path filter → body → facts and the corridor's
//! decision ([`crate::corridor`]: gate state, adaptive, request blocking) →
//! refusal or upstream → response, counted and logged. Every answer the gate
//! makes itself comes from [`crate::blocked`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use stsgate_rules::{Action, Stage};
use stsgate_state::{GateState, Lesson, SignIn};

use crate::blocked::{self, Refusal};
use crate::client_ip::{self, ClientAddrs};
use crate::config::Config;
use crate::corridor::{self, RequestFacts, Verdict};
use crate::decision_log::{DecisionLog, Event, bounded};
use crate::geoip::GeoIp;
use crate::metrics::{Metrics, UpstreamClass};
use crate::paths::{PathClass, PathFilter};
use crate::proxy_body::{self, Body};
use crate::reload::Rules;
use crate::signin::{self, Outcome, Protocol};
use crate::upstream::{self, Failure, ForwardFacts, Upstream};

pub use crate::corridor::{X_MS_CLIENT_APPLICATION, X_MS_CLIENT_USER_AGENT, header_text};

/// Most header fields a request may carry (as for HTTP/1.1).
pub const MAX_HEADERS: usize = 100;
/// Largest header list a request may carry, counted as HTTP/2 does (name,
/// value and 32 bytes a field).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Over [`MAX_HEADERS`] fields or [`MAX_HEADER_BYTES`]?
fn headers_too_large(headers: &HeaderMap) -> bool {
    headers.len() > MAX_HEADERS
        || headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum::<usize>()
            > MAX_HEADER_BYTES
}

/// The `category` of the threat feed named `list`, when the threat check decided.
fn threat_category(
    rules: &stsgate_rules::RuleSet,
    stage: Stage,
    list: Option<&str>,
) -> Option<Arc<str>> {
    if stage != Stage::Threat {
        return None;
    }
    rules.adaptive.threat.as_ref()?.category(list?).cloned()
}

/// What the gate keeps of a request's facts for after the upstream answers.
struct OwnedFacts {
    addrs: ClientAddrs,
    user: Option<String>,
    password_key: Option<stsgate_state::PasswordKey>,
}

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
    /// Gate state (stage 2).
    pub state: Arc<GateState>,
    /// The forms sign-in page refusals answer with (`blocked.forms_page`,
    /// else the embedded one).
    forms_page: Arc<str>,
    /// How long refusals wait (drawn from the STS's failed sign-in
    /// latencies), one per protocol (indexed by `Protocol as usize`).
    delay: Arc<[crate::delay::RefusalDelay; 3]>,
    /// `[directory]`: users' groups for `[adaptive.user_group]`.
    directory: Option<stsgate_directory::Directory>,
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
        state: Arc<GateState>,
    ) -> Gate {
        let paths = PathFilter::new(&config.filter);
        let delay = Arc::new(std::array::from_fn(|_| {
            crate::delay::RefusalDelay::new(config.blocked_delay)
        }));
        let forms_page = match config.blocked_forms_page.as_deref() {
            None => Arc::from(blocked::FORMS_PAGE),
            Some(path) => match blocked::read_forms_page(path) {
                Ok(page) => Arc::from(page),
                Err(message) => {
                    // Checked at start (preflight); gone since: the embedded page.
                    tracing::error!(%message, "forms refusal page: the embedded one is used");
                    Arc::from(blocked::FORMS_PAGE)
                }
            },
        };
        Gate {
            delay,
            forms_page,
            config,
            rules,
            metrics,
            upstream,
            paths,
            log,
            geoip,
            state,
            directory: None,
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
            state: self.state.clone(),
            delay: self.delay.clone(),
            forms_page: self.forms_page.clone(),
            directory: self.directory.clone(),
        })
    }

    /// The last refusals and failed sign-ins (admin API and page).
    pub fn recent(&self) -> &crate::recent::Recent {
        self.log.recent()
    }

    /// The same gate, asking `directory` for users' groups.
    pub fn with_directory(self, directory: Option<stsgate_directory::Directory>) -> Gate {
        Gate { directory, ..self }
    }

    /// The directory, when `[directory]` is configured.
    pub fn directory(&self) -> Option<&stsgate_directory::Directory> {
        self.directory.as_ref()
    }

    /// Ends the decision log's writer once it has written what is queued.
    pub fn close_log(&self) {
        self.log.close();
    }

    /// Answers one request. Never fails: every error is an HTTP answer.
    pub async fn handle(&self, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let started = Instant::now();
        if req.version() == Version::HTTP_2 && headers_too_large(req.headers()) {
            // HTTP/1.1's limits are hyper's own (431 too); HTTP/2's are checked here.
            self.metrics
                .rejected
                .with_label_values(&["header_too_large"])
                .inc();
            return blocked::answer(Refusal::ClientError(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ));
        }
        let response = match self.paths.classify(req.uri().path()) {
            PathClass::Forward => {
                self.metrics.decision(Stage::Path, Action::Forward);
                self.forward_streamed(req, conn).await
            }
            PathClass::Refuse => self.refuse_path(&req, conn),
            PathClass::Filtered => {
                let protocol = signin::protocol_for(req.uri().path());
                if signin::signs_in_with(protocol, req.method()) {
                    self.filtered(req, conn, protocol).await
                } else {
                    // A GET of the sign-in page (or a token endpoint GET): no credential.
                    self.metrics.decision(Stage::Path, Action::Forward);
                    self.forward_streamed(req, conn).await
                }
            }
        };
        self.metrics.request(started.elapsed().as_secs_f64());
        response
    }

    fn refuse_path(&self, req: &Request<Incoming>, conn: Conn) -> Response<Body> {
        self.metrics.decision(Stage::Path, Action::Refuse);
        let response = blocked::answer(Refusal::Blocked(self.config.blocked));
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

    /// A filtered request: body, facts, the corridor's decision, then
    /// refusal or upstream, whose answer is watched; one decision-log event.
    async fn filtered(
        &self,
        req: Request<Incoming>,
        conn: Conn,
        protocol: Protocol,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match self.read_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(status) => {
                let reason = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                    StatusCode::REQUEST_TIMEOUT => "body_timeout",
                    _ => "bad_request",
                };
                return self.reject(&parts, conn, status, protocol, reason);
            }
        };
        let mut rules = self.rules.current();
        let learns = rules.lockout.as_ref().is_some_and(|l| l.enabled)
            || rules.spray.as_ref().is_some_and(|s| s.enabled);
        let (user, password_key) =
            match signin::read(protocol, &parts.headers, parts.uri.query(), &body) {
                signin::Read::SignIn(c) => (
                    Some(c.user.to_string()),
                    // Only the keyed hash goes on; the password is never kept.
                    c.password
                        .filter(|_| learns)
                        .and_then(|p| self.state.password_key(p.as_bytes())),
                ),
                signin::Read::NoSignIn => (None, None),
                signin::Read::Refused(e) => {
                    // Read differently by the STS and the gate? Never forwarded.
                    return self.reject(
                        &parts,
                        conn,
                        StatusCode::BAD_REQUEST,
                        protocol,
                        e.reason(),
                    );
                }
            };
        // The user's groups, when the rules need them: the one wait before
        // the corridor, bounded by directory.timeout (the rule set is not
        // held across it).
        let answer = match (&self.directory, &user) {
            (Some(directory), Some(u)) if crate::directory::wanted(&rules, u) => {
                drop(rules);
                let answer = directory.groups(u).await;
                rules = self.rules.current();
                Some((answer, directory.settings().on_error))
            }
            _ => None,
        };
        let groups = answer
            .as_ref()
            .map_or(stsgate_rules::Groups::NotLooked, |(a, on_error)| {
                crate::directory::groups(a, *on_error)
            });
        let (verdict, request, mut event, in_flight) = self.decide(
            &rules,
            &parts,
            conn,
            corridor::Signer {
                protocol,
                user,
                password_key,
            },
            groups,
        );
        self.metrics.decision(verdict.stage, verdict.action);
        self.metrics
            .protocol_requests
            .with_label_values(&[protocol.as_str(), verdict.action.as_str()])
            .inc();
        event.protocol = Some(protocol.as_str());
        if verdict.action == Action::Refuse && verdict.stage == Stage::Lockout {
            self.compromise(&rules, &request);
        }
        // What the answer will teach needs only the settings: the rule set
        // itself (it may be large, and replaced meanwhile) is let go before
        // any await, so it is never freed on this thread.
        let learning = (rules.lockout.clone(), rules.spray.clone());
        drop(rules);
        let response = match verdict.action {
            Action::Refuse => {
                // Answered no sooner than the STS answers a wrong password.
                tokio::time::sleep(self.delay[protocol as usize].next()).await;
                let action = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                blocked::blocked_for(
                    self.config.blocked,
                    protocol,
                    action,
                    request.user.as_deref(),
                    &self.forms_page,
                )
            }
            Action::Redirect => blocked::answer(Refusal::Redirect(
                verdict.redirect_url.as_deref().unwrap_or("/"),
            )),
            _ => {
                let facts = ForwardFacts {
                    peer: conn.peer,
                    peer_trusted: request.addrs.peer_trusted,
                    client: request.addrs.client,
                    tls: conn.tls,
                    step_up: verdict.step_up,
                };
                let upstream_req = self.upstream_request(parts, proxy_body::full(body), &facts);
                let started = Instant::now();
                let answer = self.upstream.exchange(upstream_req).await;
                let took = started.elapsed();
                event.upstream_ms = Some(took.as_millis() as u64);
                if let Ok(r) = &answer {
                    event.signin = self.watch_answer(&learning, protocol, &request, r, took);
                }
                // Learned (or failed): no longer a guess in flight.
                drop(in_flight);
                self.answer(answer.map(|r| r.map(proxy_body::full)), started)
            }
        };
        event.status = Some(response.status().as_u16());
        self.log.send(event);
        response
    }

    /// Reads what the STS answered (the answer itself passes untouched):
    /// counted, its latency kept for refusal delays, and a success or failure
    /// taught to smart lockout and spray detection.
    fn watch_answer(
        &self,
        (lockout, spray): &(
            Option<stsgate_rules::LockoutSettings>,
            Option<stsgate_rules::SpraySettings>,
        ),
        protocol: Protocol,
        request: &OwnedFacts,
        answer: &Response<Bytes>,
        took: Duration,
    ) -> Option<&'static str> {
        if protocol != Protocol::WsTrust && request.user.is_none() {
            // A form request without credentials (another grant, an MFA
            // step, a home realm choice) is not a sign-in.
            return None;
        }
        let outcome = signin::classify(
            protocol,
            answer.status().as_u16(),
            answer.headers(),
            answer.body(),
        );
        let result = match outcome {
            Outcome::Success => Some(SignIn::Success),
            Outcome::Failure => Some(SignIn::Failure),
            Outcome::Unknown => None,
        };
        let name = outcome.as_str();
        self.metrics.signins.with_label_values(&[name]).inc();
        self.metrics
            .protocol_signins
            .with_label_values(&[protocol.as_str(), name])
            .inc();
        if result == Some(SignIn::Failure) {
            self.delay[protocol as usize].record_failure(took);
        }
        if let (Some(result), Some(user)) = (result, &request.user) {
            self.state.learn(
                &Lesson {
                    user: user.clone(),
                    password_key: request.password_key,
                    locations: request.addrs.carried.clone(),
                    client_ip: request.addrs.client,
                    result,
                    now_ms: stsgate_state::now_ms(),
                    place: crate::geoip::place_of_success(
                        self.geoip.as_deref(),
                        result,
                        request.addrs.client,
                    ),
                },
                lockout.as_ref(),
                spray.as_ref(),
            );
        }
        Some(name)
    }

    /// A request refused by lockout: the right password from an unfamiliar
    /// location while locked raises `compromise_suspected`.
    fn compromise(&self, rules: &stsgate_rules::RuleSet, request: &OwnedFacts) {
        let (Some(lockout), Some(user)) = (rules.lockout.as_ref(), &request.user) else {
            return;
        };
        let facts = stsgate_rules::Facts {
            user: Some(user),
            password_key: request.password_key,
            carried: &request.addrs.carried,
            now_ms: stsgate_state::now_ms(),
            ..stsgate_rules::Facts::new(request.addrs.client)
        };
        if let Some(alert) = self.state.guard.compromise(&facts, lockout) {
            self.state
                .raise(stsgate_state::StateEvent::CompromiseSuspected(Arc::new(
                    alert,
                )));
        }
    }

    /// The corridor on one request's facts: the verdict, the facts kept for
    /// after the answer, and the decision-log event so far. Reads the rules
    /// and the gate state in memory; never waits.
    fn decide(
        &self,
        rules: &stsgate_rules::RuleSet,
        parts: &http::request::Parts,
        conn: Conn,
        signer: corridor::Signer,
        groups: stsgate_rules::Groups<'_>,
    ) -> (
        Verdict,
        OwnedFacts,
        Event,
        Option<stsgate_state::guard::InFlight<'_>>,
    ) {
        let blocks = self.state.table();
        let request = RequestFacts::build(
            conn.peer,
            &parts.headers,
            parts.uri.path(),
            signer,
            &self.config.client_ip,
            rules,
            self.geoip.as_deref(),
        );
        if let Some((header, problem)) = &request.addrs.bad_header {
            self.metrics.bad_forwarded_headers.inc();
            tracing::warn!(peer = %conn.peer, header = %header, problem = %problem, "forwarded-IP header ignored");
        }
        let facts = stsgate_rules::Facts {
            groups,
            ..request.facts()
        };
        let verdict = Verdict::from(corridor::decide(
            &facts,
            &blocks,
            &self.state.guard,
            rules,
            &mut (),
        ));
        // A sign-in that goes upstream counts as a guess in flight until its
        // answer is learned, so a burst cannot outrun the thresholds.
        let learns = rules.lockout.as_ref().is_some_and(|l| l.enabled)
            || rules.spray.as_ref().is_some_and(|s| s.enabled);
        let in_flight = (learns && verdict.action.forwards() && facts.user.is_some())
            .then(|| self.state.guard.in_flight(&facts));
        let event = Event {
            peer_ip: Some(conn.peer),
            client_ip: Some(request.addrs.client),
            user: request.user.as_deref().map(bounded),
            application: request.application.as_deref().map(bounded),
            user_agent: request.shown_user_agent().map(bounded),
            path: Some(bounded(request.path)),
            stage: verdict.stage.as_str(),
            action: verdict.action.as_str(),
            list: verdict.list.clone(),
            entry: verdict.entry.as_deref().map(bounded),
            threat_category: threat_category(rules, verdict.stage, verdict.list.as_deref()),
            ..Event::now()
        };
        let owned = OwnedFacts {
            addrs: request.addrs,
            user: request.user,
            password_key: request.password_key,
        };
        (verdict, owned, event, in_flight)
    }

    /// A filtered request the gate cannot read (too large, too slow,
    /// malformed): answered with its 4xx, counted and logged.
    fn reject(
        &self,
        parts: &http::request::Parts,
        conn: Conn,
        status: StatusCode,
        protocol: Protocol,
        reason: &'static str,
    ) -> Response<Body> {
        self.metrics.rejected.with_label_values(&[reason]).inc();
        self.metrics
            .protocol_requests
            .with_label_values(&[protocol.as_str(), Action::Refuse.as_str()])
            .inc();
        let response = blocked::answer(Refusal::ClientError(status));
        self.log.send(Event {
            peer_ip: Some(conn.peer),
            path: Some(bounded(parts.uri.path())),
            protocol: Some(protocol.as_str()),
            stage: Stage::None.as_str(),
            action: Action::Refuse.as_str(),
            status: Some(response.status().as_u16()),
            ..Event::now()
        });
        response
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
                blocked::answer(Refusal::UpstreamUnreachable)
            }
            Err(Failure::Timeout) => {
                self.metrics.upstream(UpstreamClass::Timeout, seconds);
                tracing::warn!(upstream = %self.config.upstream.url, timeout = ?self.config.upstream.timeout, "upstream timed out: 504");
                blocked::answer(Refusal::UpstreamTimeout)
            }
        }
    }

    /// The GeoIP database, when one is configured.
    pub fn geoip(&self) -> Option<&GeoIp> {
        self.geoip.as_deref()
    }

    /// The GeoIP databases, shared (for their reload watch).
    pub fn geoip_shared(&self) -> Option<Arc<GeoIp>> {
        self.geoip.clone()
    }

    /// How long a graceful shutdown may take.
    pub fn drain_timeout(&self) -> Duration {
        self.config.listen.drain_timeout
    }
}
