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

use crate::metrics::Metrics;
use crate::proxy_body::{Body, full};
use crate::reload::Rules;

/// Admin state shared by its connections.
pub struct Admin {
    rules: Arc<Rules>,
    metrics: Metrics,
    token: Option<String>,
    /// Rules loaded and listeners bound.
    pub ready: AtomicBool,
}

impl Admin {
    /// `token`: the API's bearer token; `None` turns the API off (404).
    pub fn new(rules: Arc<Rules>, metrics: Metrics, token: Option<String>) -> Admin {
        Admin {
            rules,
            metrics,
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
                let mut r = Response::new(full(self.metrics.render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8"
                        .parse()
                        .expect("valid"),
                );
                r
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.ready.load(Ordering::SeqCst) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
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
                self.api(req.method(), p).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn api(&self, method: &Method, path: &str) -> Response<Body> {
        match (method, path) {
            (&Method::POST, "/api/v1/reload") => match self.rules.reload("api").await {
                Ok(summary) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "result": "success", "rules": self.rules.path(), "summary": summary }),
                ),
                Err(errors) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({
                        "result": "failure",
                        "rules": self.rules.path(),
                        "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    }),
                ),
            },
            (_, "/api/v1/reload") => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// `Authorization: Bearer TOKEN`, compared in constant time.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = given.strip_prefix("Bearer ").map(str::trim) else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
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
