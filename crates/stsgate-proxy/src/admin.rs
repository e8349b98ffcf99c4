//! The admin listener (PRODUCT.md §4.5): `/metrics`, `/healthz`, `/readyz`,
//! the bearer-token API under `/api/v1` and the admin page at `/ui`
//! ([`crate::ui`]). Meant for a loopback or management address.
//!
//! Two tokens: `admin.token_file` may do everything; `admin.read_token_file`
//! may only read (GET, and `POST /api/v1/explain`, which changes nothing),
//! anything else is 403. A caller names itself with `X-Stsgate-Origin`
//! (the admin page sends `admin-ui`): the origin of the blocks it adds, and
//! logged with every change it makes.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;

use http_body_util::BodyExt;
use stsgate_state::{Added, NewBlock};

use crate::gate::Gate;
use crate::proxy_body::{Body, full};

/// Largest request body the API reads.
const MAX_API_BODY: usize = 64 * 1024;
/// Most blocks one `POST /api/v1/blocks` may hold (a JSON array).
const MAX_BLOCKS_PER_POST: usize = 10_000;

/// Most events one `GET /api/v1/events` answers.
const MAX_EVENTS: usize = crate::recent::CAPACITY;
/// The header a caller names itself with.
const X_STSGATE_ORIGIN: &str = "x-stsgate-origin";

/// The API's bearer tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// May do everything; `None` turns the API off (404).
    pub admin: Option<String>,
    /// May only read.
    pub read: Option<String>,
}

/// What a caller's token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Everything.
    Full,
    /// GET, and `POST /api/v1/explain`.
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Full => "full",
            Access::Read => "read",
        }
    }
}

/// Admin state shared by its connections.
pub struct Admin {
    gate: Arc<Gate>,
    tokens: Tokens,
    /// The admin page is served (`admin.ui`).
    ui: bool,
    /// Rules loaded and listeners bound.
    pub ready: AtomicBool,
}

impl Admin {
    /// `tokens.admin`: the API's bearer token; `None` turns the API (and the
    /// page) off (404). The page follows `admin.ui` in the gate's config.
    pub fn new(gate: Arc<Gate>, tokens: Tokens) -> Admin {
        let ui = gate.config.admin.ui_enabled();
        Admin {
            gate,
            tokens,
            ui,
            ready: AtomicBool::new(false),
        }
    }

    /// Serves until `stop` turns true; open admin connections are then closed.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                accepted = listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            if connections.len() >= 256 {
                continue;
            }
            let admin = self.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        connections.shutdown().await;
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(full(self.gate.metrics.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8"
                        .parse()
                        .expect("valid"),
                );
                r
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => self.readyz(),
            (&Method::GET, p)
                if self.ui && self.tokens.admin.is_some() && crate::ui::is_page(p) =>
            {
                crate::ui::asset(p).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n"))
            }
            (_, p) if p.starts_with("/api/v1/") => {
                let Some(admin_token) = &self.tokens.admin else {
                    return text(StatusCode::NOT_FOUND, "not found\n");
                };
                let Some(access) = authorized(&req, admin_token, self.tokens.read.as_deref())
                else {
                    let mut r = text(StatusCode::UNAUTHORIZED, "");
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
                    return r;
                };
                let reads = req.method() == Method::GET
                    || (req.method() == Method::POST && p == "/api/v1/explain");
                if access == Access::Read && !reads {
                    return error(
                        StatusCode::FORBIDDEN,
                        "",
                        "this token may only read (admin.read_token_file)",
                    );
                }
                let path = p.to_string();
                let mut r = self.api(req, &path, access).await;
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-store"),
                );
                r.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    header::HeaderValue::from_static("nosniff"),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// 200 once rules are loaded and listeners bound, with one line per
    /// state store (a failing store is reported, not fatal: the gate decides
    /// from memory).
    fn readyz(&self) -> Response<Body> {
        let ready = self.ready.load(Ordering::SeqCst);
        let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
        for h in self.gate.state.health() {
            match &h.error {
                None => body.push_str(&format!("store {}: ok\n", h.store)),
                Some(e) => body.push_str(&format!(
                    "store {}: failing, deciding from memory: {e}\n",
                    h.store
                )),
            }
        }
        // URL threat feeds: never a reason to be unready (the gate decides
        // with the lists it has), but said here.
        body.push_str(&crate::feeds::readyz_lines(&self.gate.rules));
        if let Some(d) = self.gate.directory() {
            body.push_str(&crate::directory::readyz_line(d));
        }
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut r = Response::new(full(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            "text/plain; charset=utf-8".parse().expect("valid"),
        );
        r
    }

    async fn api(&self, req: Request<Incoming>, path: &str, access: Access) -> Response<Body> {
        let method = req.method().clone();
        let origin = origin(&req);
        let (route, id) = if let Some(id) = path.strip_prefix("/api/v1/blocks/") {
            ("/api/v1/blocks/{id}", id)
        } else if let Some(user) = path.strip_prefix("/api/v1/lockouts/") {
            ("/api/v1/lockouts/{user}", user)
        } else {
            (path, "")
        };
        if route.ends_with('}') && (id.is_empty() || id.contains('/')) {
            return error(StatusCode::NOT_FOUND, "", "not found");
        }
        match (&method, route) {
            (&Method::POST, "/api/v1/reload") => self.reload(origin.as_deref()).await,
            (&Method::POST, "/api/v1/blocks") => match read_json(req).await {
                Ok(body) => self.add_blocks(&body, origin.as_deref()),
                Err(r) => r,
            },
            (&Method::GET, "/api/v1/whoami") => json(
                StatusCode::OK,
                &serde_json::json!({
                    "access": access.as_str(),
                    "instance": self.gate.state.instance(),
                    "version": env!("CARGO_PKG_VERSION"),
                }),
            ),
            (&Method::GET, "/api/v1/events") => self.events(req.uri().query()),
            (&Method::GET, "/api/v1/stats") => self.stats(),
            (&Method::GET, "/api/v1/rules") => self.rules(),
            (&Method::GET, "/api/v1/blocks") => self.list_blocks(req.uri().query()),
            (&Method::GET, "/api/v1/blocks/{id}") => match self.gate.state.get(id) {
                Some(b) => json(StatusCode::OK, &b.to_api(stsgate_state::now_ms())),
                None => error(StatusCode::NOT_FOUND, "", format!("no live block {id:?}")),
            },
            (&Method::DELETE, "/api/v1/blocks/{id}") => match self.gate.state.remove(id) {
                Some(b) => {
                    tracing::info!(id = %b.id, kind = b.target.kind(), origin = %origin.as_deref().unwrap_or("api"), "block removed through the API");
                    let mut r = Response::new(full(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                None => error(StatusCode::NOT_FOUND, "", format!("no live block {id:?}")),
            },
            (&Method::GET, "/api/v1/lockouts") => {
                let rules = self.gate.rules.current();
                let locked = self
                    .gate
                    .state
                    .guard
                    .locked(rules.lockout.as_ref(), stsgate_state::now_ms());
                json(
                    StatusCode::OK,
                    &serde_json::to_value(locked).unwrap_or_default(),
                )
            }
            (&Method::DELETE, "/api/v1/lockouts/{user}") => {
                // A path segment: `+` is itself, only `%XX` is decoded.
                let user = percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .into_owned();
                if self.gate.state.reset_lockout(&user) {
                    tracing::info!(user = %stsgate_state::guard::user_key(&user), origin = %origin.as_deref().unwrap_or("api"), "lockout reset through the API");
                    let mut r = Response::new(full(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                } else {
                    error(
                        StatusCode::NOT_FOUND,
                        "",
                        format!("no lockout counts for {user:?}"),
                    )
                }
            }
            (&Method::POST, "/api/v1/explain") => match read_json(req).await {
                Ok(body) => self.explain(body).await,
                Err(r) => r,
            },
            (
                _,
                "/api/v1/reload"
                | "/api/v1/whoami"
                | "/api/v1/events"
                | "/api/v1/stats"
                | "/api/v1/rules"
                | "/api/v1/blocks"
                | "/api/v1/blocks/{id}"
                | "/api/v1/explain"
                | "/api/v1/lockouts"
                | "/api/v1/lockouts/{user}",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "", "method not allowed"),
            _ => error(StatusCode::NOT_FOUND, "", "not found"),
        }
    }

    async fn reload(&self, origin: Option<&str>) -> Response<Body> {
        let rules = &self.gate.rules;
        // The trigger in the log: the page, or the API.
        let trigger = match origin {
            Some("admin-ui") => "admin-ui",
            _ => "api",
        };
        match rules.reload(trigger).await {
            Ok(summary) => json(
                StatusCode::OK,
                &serde_json::json!({ "result": "success", "rules": rules.path(), "summary": summary }),
            ),
            Err(errors) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({
                    "result": "failure",
                    "rules": rules.path(),
                    "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
            ),
        }
    }

    /// `POST /api/v1/blocks`: one block object (201 with the block), or an
    /// array of them (201 with the array). All are validated before any is added.
    fn add_blocks(&self, body: &serde_json::Value, origin: Option<&str>) -> Response<Body> {
        let max_ttl = self.gate.state.max_ttl();
        let items: Vec<&serde_json::Value> = match body {
            serde_json::Value::Array(items) if items.len() > MAX_BLOCKS_PER_POST => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "",
                    format!("at most {MAX_BLOCKS_PER_POST} blocks in one request"),
                );
            }
            serde_json::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        let mut new = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            // X-Stsgate-Origin names blocks that do not name their origin.
            let named;
            let item = match (origin, item) {
                (Some(o), serde_json::Value::Object(map)) if !map.contains_key("origin") => {
                    let mut map = map.clone();
                    map.insert("origin".into(), serde_json::Value::from(o));
                    named = serde_json::Value::Object(map);
                    &named
                }
                _ => *item,
            };
            match NewBlock::from_json(item, max_ttl) {
                Ok(n) => new.push(n),
                Err(e) => {
                    let message = if body.is_array() {
                        format!("block {i}: {}", e.message)
                    } else {
                        e.message
                    };
                    return error(StatusCode::UNPROCESSABLE_ENTITY, e.field, message);
                }
            }
        }
        let now = stsgate_state::now_ms();
        let added = self.gate.state.add(new);
        let shown: Vec<serde_json::Value> = added
            .iter()
            .map(|(b, how)| {
                let mut v = b.to_api(now);
                v["result"] = serde_json::Value::from(match how {
                    Added::Created => "created",
                    Added::Extended => "extended",
                });
                v
            })
            .collect();
        let all_new = added.iter().all(|(_, how)| *how == Added::Created);
        let status = if all_new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        match (body.is_array(), shown.into_iter().next()) {
            (false, Some(one)) => json(status, &one),
            _ => json(
                status,
                &serde_json::Value::Array(added.iter().map(|(b, _)| b.to_api(now)).collect()),
            ),
        }
    }

    /// `GET /api/v1/blocks[?ip=IP][&user=USER]`: live blocks, soonest to end
    /// first; `ip` keeps the blocks that cover that address, `user` those on
    /// that user.
    fn list_blocks(&self, query: Option<&str>) -> Response<Body> {
        let mut ip = None;
        let mut user = None;
        for (k, v) in form_pairs(query.unwrap_or("")) {
            match k.as_str() {
                "ip" => match stsgate_rules::ip::parse_addr(&v) {
                    Some(a) => ip = Some(a),
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "ip",
                            format!("ip {v:?} is not an address"),
                        );
                    }
                },
                "user" => user = Some(v.to_lowercase()),
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "",
                        format!("unknown query parameter {other:?}: expected ip or user"),
                    );
                }
            }
        }
        let now = stsgate_state::now_ms();
        let blocks: Vec<serde_json::Value> = self
            .gate
            .state
            .list()
            .iter()
            .filter(|b| {
                ip.is_none_or(|ip| match &b.target {
                    stsgate_state::Target::Ip(text) => {
                        let mut covers = false;
                        let _ = stsgate_rules::ip::for_each_item(text, |_, _, pattern| {
                            covers |= pattern.contains(ip);
                        });
                        covers
                    }
                    stsgate_state::Target::User(_) => false,
                })
            })
            .filter(|b| {
                user.as_deref()
                    .is_none_or(|u| matches!(&b.target, stsgate_state::Target::User(t) if t == u))
            })
            .map(|b| b.to_api(now))
            .collect();
        json(StatusCode::OK, &serde_json::Value::Array(blocks))
    }

    /// `GET /api/v1/events[?limit=N]`: the last refusals and failed sign-ins
    /// (decision-log events, newest first; at most [`MAX_EVENTS`]).
    fn events(&self, query: Option<&str>) -> Response<Body> {
        let mut limit = MAX_EVENTS;
        for (k, v) in form_pairs(query.unwrap_or("")) {
            match (k.as_str(), v.parse::<usize>()) {
                ("limit", Ok(n)) => limit = n.min(MAX_EVENTS),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "",
                        format!("unknown query parameter {k:?}={v:?}: expected limit=N"),
                    );
                }
            }
        }
        let events = self.gate.recent().newest(limit);
        json(
            StatusCode::OK,
            &serde_json::to_value(events).unwrap_or_default(),
        )
    }

    /// `GET /api/v1/stats`: the gate's own counters and gauges (those of
    /// `/metrics`) as JSON, for the page's rates: every
    /// `stsgate_decisions_total`, `stsgate_signins_total` and
    /// `stsgate_upstream_responses_total` series with its labels, and the
    /// state gauges.
    fn stats(&self) -> Response<Body> {
        let text = self.gate.metrics.render();
        let text = String::from_utf8_lossy(&text);
        let mut decisions = Vec::new();
        let mut signins = serde_json::Map::new();
        let mut upstream = serde_json::Map::new();
        let mut gauges = serde_json::Map::new();
        for (name, labels, value) in text.lines().filter_map(sample) {
            let label = |k: &str| {
                labels
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map_or("", |(_, v)| *v)
                    .to_string()
            };
            match name {
                "stsgate_decisions_total" => decisions.push(serde_json::json!({
                    "stage": label("stage"), "action": label("action"), "count": value as u64,
                })),
                "stsgate_signins_total" => {
                    signins.insert(label("result"), (value as u64).into());
                }
                "stsgate_upstream_responses_total" => {
                    upstream.insert(label("class"), (value as u64).into());
                }
                "stsgate_blocks_active" => {
                    gauges.insert(
                        format!("blocks_active_{}", label("kind")),
                        (value as u64).into(),
                    );
                }
                "stsgate_users_locked" | "stsgate_sprayed_passwords_active" => {
                    gauges.insert(
                        name.trim_start_matches("stsgate_").to_string(),
                        (value as u64).into(),
                    );
                }
                _ => {}
            }
        }
        json(
            StatusCode::OK,
            &serde_json::json!({
                "at_ms": stsgate_state::now_ms(),
                "decisions": decisions,
                "signins": signins,
                "upstream": upstream,
                "gauges": gauges,
            }),
        )
    }

    /// `GET /api/v1/rules`: the rule set in force: file, SHA-256 of the bytes
    /// compiled, when and why it was loaded, one summary line per list, and
    /// whether the file on disk still compiles.
    fn rules(&self) -> Response<Body> {
        let rules = &self.gate.rules;
        let loaded = rules.loaded();
        let summary = rules.current().summary();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "rules": rules.path(),
                "sha256": loaded.sha256,
                "loaded_at": stsgate_state::block::rfc3339(loaded.at_ms),
                "trigger": loaded.trigger,
                "file_ok": self.gate.metrics.rules_file_ok.get() == 1,
                "summary": summary,
            }),
        )
    }

    /// `POST /api/v1/explain`: the corridor on a described request, with the
    /// live rules and gate state.
    async fn explain(&self, body: serde_json::Value) -> Response<Body> {
        let question: crate::explain::Question = match serde_json::from_value(body) {
            Ok(q) => q,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "", e.to_string()),
        };
        let rules = self.gate.rules.current();
        let blocks = self.gate.state.table_full();
        let asked = crate::explain::ask_directory(self.gate.directory(), &rules, &question).await;
        match crate::explain::explain_with_directory(
            &question,
            &self.gate.config,
            &rules,
            &blocks,
            &self.gate.state.guard,
            self.gate.geoip(),
            "live",
            &asked,
        ) {
            Ok(report) => json(
                StatusCode::OK,
                &serde_json::to_value(report).unwrap_or_default(),
            ),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, "headers", e),
        }
    }
}

/// Reads a JSON request body of at most [`MAX_API_BODY`] bytes; a bad one
/// is answered 400 (or 413) with a JSON error.
async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, Response<Body>> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_API_BODY);
    let bytes = match limited.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "",
                format!("the body is larger than {} KiB", MAX_API_BODY / 1024),
            ));
        }
        Err(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "",
                "the body could not be read",
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "",
            format!("the body is not JSON: {e}"),
        )
    })
}

/// `k=v&k=v`, percent-decoded (`+` is a space).
fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// `Authorization: Bearer TOKEN` (the scheme in any case, RFC 9110 §11.1),
/// compared in constant time with both tokens.
fn authorized(req: &Request<Incoming>, admin: &str, read: Option<&str>) -> Option<Access> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    let (scheme, given) = given.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let given = given.trim().as_bytes();
    let full = bool::from(given.ct_eq(admin.as_bytes()));
    let read = read.is_some_and(|r| bool::from(given.ct_eq(r.as_bytes())));
    if full {
        Some(Access::Full)
    } else if read {
        Some(Access::Read)
    } else {
        None
    }
}

/// `X-Stsgate-Origin`, when it is a valid block origin (1 to 32 letters,
/// digits, `-`, `_`), lower case.
fn origin(req: &Request<Incoming>) -> Option<String> {
    let o = req.headers().get(X_STSGATE_ORIGIN)?.to_str().ok()?;
    (!o.is_empty()
        && o.len() <= stsgate_state::block::MAX_ORIGIN
        && o.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| o.to_ascii_lowercase())
}

/// A series' labels: (name, value) pairs.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One sample line of the text format: name, labels, value.
fn sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let labels = inner
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

/// A JSON error answer: `{"error": "...", "field": "..."}`.
fn error(status: StatusCode, field: &str, message: impl Into<String>) -> Response<Body> {
    let mut v = serde_json::json!({ "error": message.into() });
    if !field.is_empty() {
        v["field"] = serde_json::Value::from(field);
    }
    json(status, &v)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid"),
    );
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec_pretty(value).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn samples_of_the_text_format() {
        assert_eq!(
            sample(r#"stsgate_decisions_total{action="refuse",stage="ip"} 42"#),
            Some((
                "stsgate_decisions_total",
                vec![("action", "refuse"), ("stage", "ip")],
                42.0
            ))
        );
        assert_eq!(
            sample("stsgate_users_locked 3"),
            Some(("stsgate_users_locked", vec![], 3.0))
        );
        assert_eq!(sample("# HELP stsgate_users_locked Users."), None);
        assert_eq!(sample("garbage"), None);
    }
}
