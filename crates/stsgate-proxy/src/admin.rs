//! The admin listener (PRODUCT.md §4.5): `/metrics`, `/healthz`, `/readyz`
//! and the bearer-token API under `/api/v1`. Meant for a loopback or
//! management address.

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

/// Admin state shared by its connections.
pub struct Admin {
    gate: Arc<Gate>,
    token: Option<String>,
    /// Rules loaded and listeners bound.
    pub ready: AtomicBool,
}

impl Admin {
    /// `token`: the API's bearer token; `None` turns the API off (404).
    pub fn new(gate: Arc<Gate>, token: Option<String>) -> Admin {
        Admin {
            gate,
            token,
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
            (_, p) if p.starts_with("/api/v1/") => {
                let Some(token) = &self.token else {
                    return text(StatusCode::NOT_FOUND, "not found\n");
                };
                if !authorized(&req, token) {
                    let mut r = text(StatusCode::UNAUTHORIZED, "");
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
                    return r;
                }
                let path = p.to_string();
                self.api(req, &path).await
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

    async fn api(&self, req: Request<Incoming>, path: &str) -> Response<Body> {
        let method = req.method().clone();
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
            (&Method::POST, "/api/v1/reload") => self.reload().await,
            (&Method::POST, "/api/v1/blocks") => match read_json(req).await {
                Ok(body) => self.add_blocks(&body),
                Err(r) => r,
            },
            (&Method::GET, "/api/v1/blocks") => self.list_blocks(req.uri().query()),
            (&Method::GET, "/api/v1/blocks/{id}") => match self.gate.state.get(id) {
                Some(b) => json(StatusCode::OK, &b.to_api(stsgate_state::now_ms())),
                None => error(StatusCode::NOT_FOUND, "", format!("no live block {id:?}")),
            },
            (&Method::DELETE, "/api/v1/blocks/{id}") => match self.gate.state.remove(id) {
                Some(_) => {
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
                let user = percent_decode(id);
                if self.gate.state.reset_lockout(&user) {
                    tracing::info!(user = %stsgate_state::guard::user_key(&user), "lockout reset through the API");
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
                Ok(body) => self.explain(body),
                Err(r) => r,
            },
            (
                _,
                "/api/v1/reload"
                | "/api/v1/blocks"
                | "/api/v1/blocks/{id}"
                | "/api/v1/explain"
                | "/api/v1/lockouts"
                | "/api/v1/lockouts/{user}",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "", "method not allowed"),
            _ => error(StatusCode::NOT_FOUND, "", "not found"),
        }
    }

    async fn reload(&self) -> Response<Body> {
        let rules = &self.gate.rules;
        match rules.reload("api").await {
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
    fn add_blocks(&self, body: &serde_json::Value) -> Response<Body> {
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

    /// `POST /api/v1/explain`: the corridor on a described request, with the
    /// live rules and gate state.
    fn explain(&self, body: serde_json::Value) -> Response<Body> {
        let question: crate::explain::Question = match serde_json::from_value(body) {
            Ok(q) => q,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, "", e.to_string()),
        };
        let rules = self.gate.rules.current();
        let blocks = self.gate.state.table_full();
        match crate::explain::explain(
            &question,
            &self.gate.config,
            &rules,
            &blocks,
            &self.gate.state.guard,
            self.gate.geoip(),
            "live",
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
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Authorization: Bearer TOKEN` (the scheme in any case, RFC 9110 §11.1),
/// the token compared in constant time.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = given.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
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
