//! Alerts to a SOAR (PRODUCT.md §4.4, `[alerts]`): the gate state's events
//! (`lockout`, `compromise_suspected`, `spray`, `block_added`,
//! `block_removed`, `block_expired`) posted as JSON to `alerts.webhook_url`.
//!
//! The state hands each event to an [`AlertQueue`] ([`EventSink`]), which
//! never blocks: a bounded queue, and a full queue drops the event and
//! counts it. One owned task, [`AlertSender::run`], posts the events one at
//! a time, retrying with exponential backoff on connect errors, timeouts and
//! non-2xx answers, and counts each in `stsgate_alerts_total{event, result}`
//! (`delivered`, `failed` after `max_attempts`, `dropped`). Nothing here
//! runs on the request path.
//!
//! The request carries `Authorization: Bearer <alerts.token_file>` and
//! `X-Stsgate-Signature: sha256=<hex HMAC-SHA-256 of the body>` keyed by
//! `alerts.signing_key_file`, when set. Neither secret is ever logged, and
//! no event holds a password or a password hash.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::{Value, json};
use stsgate_rules::SourceError;
use stsgate_state::block::{rfc3339, rfc3339_millis};
use stsgate_state::{Block, EventSink, StateEvent, Target, now_ms};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Config;

/// How long the final flush at shutdown may take, all events together.
pub const FLUSH: Duration = Duration::from_secs(2);
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-stsgate-signature";
/// The event name header (the body's `event`).
pub const EVENT_HEADER: &str = "x-stsgate-event";
/// The delivery id header (the body's `id`).
pub const DELIVERY_HEADER: &str = "x-stsgate-delivery";
/// Shortest signing key accepted, in bytes.
pub const MIN_KEY: usize = 16;
/// Most of a receiver's answer read (then the connection is reusable).
const MAX_ANSWER: usize = 64 * 1024;

/// What became of an alert: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertResult {
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed.
    Failed,
    /// Never attempted to the end: the queue was full, or the gate stopped.
    Dropped,
}

impl AlertResult {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertResult::Delivered => "delivered",
            AlertResult::Failed => "failed",
            AlertResult::Dropped => "dropped",
        }
    }

    const ALL: [AlertResult; 3] = [
        AlertResult::Delivered,
        AlertResult::Failed,
        AlertResult::Dropped,
    ];
}

/// `stsgate_alerts_total{event, result}`; every series exists from the start.
#[derive(Clone)]
pub struct AlertMetrics {
    total: IntCounterVec,
}

impl AlertMetrics {
    /// Creates the counter and registers it in `registry`.
    pub fn new(registry: &Registry) -> AlertMetrics {
        let total = IntCounterVec::new(
            Opts::new(
                "stsgate_alerts_total",
                "Alerts to alerts.webhook_url, by event and result (delivered, failed after every attempt, dropped).",
            ),
            &["event", "result"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(total.clone()));
        for event in StateEvent::NAMES {
            for result in AlertResult::ALL {
                total.with_label_values(&[event, result.as_str()]).reset();
            }
        }
        AlertMetrics { total }
    }

    fn count(&self, event: &'static str, result: AlertResult) {
        self.total
            .with_label_values(&[event, result.as_str()])
            .inc();
    }
}

/// An event waiting for delivery, with the time it happened.
struct Pending {
    event: StateEvent,
    at_ms: u64,
}

/// The state's side of the queue: [`EventSink::send`] never waits.
#[derive(Clone)]
pub struct AlertQueue {
    tx: mpsc::Sender<Pending>,
    metrics: AlertMetrics,
}

impl EventSink for AlertQueue {
    fn send(&self, event: StateEvent) {
        let name = event.name();
        let pending = Pending {
            event,
            at_ms: now_ms(),
        };
        if self.tx.try_send(pending).is_err() {
            // Full, or the sender has stopped.
            self.metrics.count(name, AlertResult::Dropped);
            tracing::debug!(event = name, "alert dropped: the alert queue is full");
        }
    }
}

/// The delivery task and its queue. Build it with [`AlertSender::new`],
/// hand [`AlertSender::sink`] to `GateState::set_sink`, then spawn
/// [`AlertSender::run`].
pub struct AlertSender {
    rx: mpsc::Receiver<Pending>,
    queue: AlertQueue,
    webhook: Webhook,
    instance: String,
    max_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

/// Where and how to post.
struct Webhook {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    /// The URL without its query, for logs.
    shown: String,
    token: Option<HeaderValue>,
    key: Option<ring::hmac::Key>,
    timeout: Duration,
}

impl AlertSender {
    /// Reads `[alerts]`'s files and builds the client; `None` without
    /// `alerts.webhook_url`. `stsgate_alerts_total` is registered either way.
    /// Errors point at the key naming the file; they never hold its contents.
    pub fn new(
        config: &Config,
        registry: &Registry,
    ) -> Result<Option<AlertSender>, Vec<SourceError>> {
        let metrics = AlertMetrics::new(registry);
        let a = &config.alerts;
        let Some(url) = a.webhook_url.clone() else {
            return Ok(None);
        };
        let at = |key: &str, message: String| config.positions.error(&config.path, key, message);
        let mut errors = Vec::new();
        let token = a.token_file.as_deref().and_then(|path| {
            let bearer = read_secret(path, "alerts.token_file").and_then(|t| {
                let mut v = HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &t].concat())
                    .map_err(|_| {
                        format!(
                            "alerts.token_file: {} holds characters a header cannot carry",
                            path.display()
                        )
                    })?;
                v.set_sensitive(true);
                Ok(v)
            });
            bearer
                .map_err(|m| errors.push(at("alerts.token_file", m)))
                .ok()
        });
        let key = a.signing_key_file.as_deref().and_then(|path| {
            let key = read_secret(path, "alerts.signing_key_file").and_then(|k| {
                if k.len() < MIN_KEY {
                    return Err(format!(
                        "alerts.signing_key_file: the key in {} is shorter than {MIN_KEY} bytes (make one with: openssl rand -hex 32)",
                        path.display()
                    ));
                }
                Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k))
            });
            key.map_err(|m| errors.push(at("alerts.signing_key_file", m))).ok()
        });
        let tls = crate::tls::client_config(a.ca_file.as_deref())
            .map_err(|e| {
                let key = if a.ca_file.is_some() {
                    "alerts.ca_file"
                } else {
                    "alerts.webhook_url"
                };
                errors.push(at(key, format!("alerts TLS: {e:#}")));
            })
            .ok();
        let Some(tls) = tls.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(a.timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let shown = format!(
            "{}://{}{}",
            url.scheme_str().unwrap_or("http"),
            url.authority().map_or("", |a| a.as_str()),
            url.path()
        );
        let (tx, rx) = mpsc::channel(a.queue);
        Ok(Some(AlertSender {
            rx,
            queue: AlertQueue { tx, metrics },
            webhook: Webhook {
                client,
                url,
                shown,
                token,
                key,
                timeout: a.timeout,
            },
            instance: config.state.instance.clone(),
            max_attempts: a.max_attempts.max(1),
            backoff: a.backoff,
            max_backoff: a.max_backoff.max(a.backoff),
        }))
    }

    /// What `stsgate check` reports about `[alerts]`: [`AlertSender::new`]'s
    /// errors, nothing registered anywhere.
    pub fn check(config: &Config) -> Result<(), Vec<SourceError>> {
        AlertSender::new(config, &Registry::new()).map(|_| ())
    }

    /// The queue's sending side, for `GateState::set_sink`.
    pub fn sink(&self) -> Arc<AlertQueue> {
        Arc::new(self.queue.clone())
    }

    /// Delivers queued events until `stop` turns true; then gives what is
    /// left one attempt each within [`FLUSH`] (the rest are `dropped`), and
    /// returns. Events sent after that are dropped and counted.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(url = %self.webhook.shown, token = self.webhook.token.is_some(), signed = self.webhook.key.is_some(), "alerts to the SOAR webhook");
        let mut unfinished = None;
        loop {
            let pending = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                p = self.rx.recv() => match p {
                    Some(p) => p,
                    None => break,
                },
            };
            let (name, id, body) = self.prepare(&pending);
            match self.deliver(name, &id, &body, &mut stop).await {
                Some(result) => self.queue.metrics.count(name, result),
                None => {
                    unfinished = Some((name, id, body));
                    break;
                }
            }
        }
        self.flush(unfinished).await;
    }

    /// The event's name, a new id and its JSON body.
    fn prepare(&self, p: &Pending) -> (&'static str, String, Bytes) {
        let id = new_id();
        let body = event_json(&p.event, &id, p.at_ms, &self.instance);
        (p.event.name(), id, Bytes::from(body.to_string()))
    }

    /// Posts until delivered or `max_attempts` failed; `None` when stopped first.
    async fn deliver(
        &self,
        name: &'static str,
        id: &str,
        body: &Bytes,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<AlertResult> {
        let mut wait = self.backoff;
        for attempt in 1..=self.max_attempts {
            let outcome = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return None,
                r = self.webhook.post(name, id, body) => r,
            };
            let Err(why) = outcome else {
                tracing::debug!(event = name, id, attempt, "alert delivered");
                return Some(AlertResult::Delivered);
            };
            if attempt == self.max_attempts {
                tracing::warn!(event = name, id, attempts = attempt, url = %self.webhook.shown, error = %why, "alert not delivered: gave up");
                return Some(AlertResult::Failed);
            }
            tracing::info!(event = name, id, attempt, retry_in = ?wait, url = %self.webhook.shown, error = %why, "alert delivery failed, will retry");
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = wait.saturating_mul(2).min(self.max_backoff);
        }
        Some(AlertResult::Failed)
    }

    /// One attempt for each event left, all within [`FLUSH`].
    async fn flush(mut self, unfinished: Option<(&'static str, String, Bytes)>) {
        self.rx.close();
        let deadline = Instant::now() + FLUSH;
        let mut left = Vec::new();
        left.extend(unfinished);
        while let Ok(p) = self.rx.try_recv() {
            left.push(self.prepare(&p));
        }
        let (mut delivered, mut dropped) = (0usize, 0usize);
        for (name, id, body) in left {
            let sent = Instant::now() < deadline
                && matches!(
                    tokio::time::timeout_at(deadline, self.webhook.post(name, &id, &body)).await,
                    Ok(Ok(()))
                );
            let result = if sent {
                delivered += 1;
                AlertResult::Delivered
            } else {
                dropped += 1;
                AlertResult::Dropped
            };
            self.queue.metrics.count(name, result);
        }
        if dropped > 0 {
            tracing::warn!(
                delivered,
                dropped,
                "alert sender stopped with undelivered alerts"
            );
        } else {
            tracing::debug!(delivered, "alert sender stopped");
        }
    }
}

impl Webhook {
    /// One POST, bounded by `timeout`; `Err` says why it did not count as delivered.
    async fn post(&self, name: &'static str, id: &str, body: &Bytes) -> Result<(), String> {
        let mut req = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("stsgate/", env!("CARGO_PKG_VERSION")))
            .header(EVENT_HEADER, name)
            .header(DELIVERY_HEADER, id)
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        if let Some(token) = &self.token {
            req.headers_mut().insert(AUTHORIZATION, token.clone());
        }
        if let Some(key) = &self.key {
            let sig = HeaderValue::from_str(&signature(key, body)).map_err(|e| e.to_string())?;
            req.headers_mut().insert(SIGNATURE_HEADER, sig);
        }
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| chain(&e))?;
            let status = resp.status();
            // Read a little of the answer so the connection can be reused.
            let _ = Limited::new(resp.into_body(), MAX_ANSWER).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the receiver answered {status}"))
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// `sha256=` and the lower-case hex HMAC-SHA-256 of `body`: the value of
/// `X-Stsgate-Signature`.
pub fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    out.push_str(&hex(tag.as_ref()));
    out
}

/// The alert for `event`, which happened at `at_ms` (ms since the epoch).
/// Every event has `id`, `ts`, `event` and `instance`; then what it is about
/// (`deploy/alerts.schema.json`). Never a password or a password hash: the
/// state's events hold none.
pub fn event_json(event: &StateEvent, id: &str, at_ms: u64, instance: &str) -> Value {
    let mut v = json!({
        "id": id,
        "ts": rfc3339_millis(at_ms),
        "event": event.name(),
        "instance": instance,
    });
    match event {
        StateEvent::BlockAdded(b) | StateEvent::BlockRemoved(b) | StateEvent::BlockExpired(b) => {
            match &b.target {
                Target::User(user) => v["user"] = json!(user),
                Target::Ip(ip) => {
                    if let Ok(ip) = ip.parse::<IpAddr>() {
                        v["client_ip"] = json!(ip.to_string());
                    }
                }
            }
            v["block"] = block_json(b, at_ms);
        }
        StateEvent::Lockout(l) => {
            v["user"] = json!(l.user);
            v["client_ip"] = json!(l.client_ip.to_string());
            v["unfamiliar_failures"] = json!(l.unfamiliar_failures);
            v["familiar_failures"] = json!(l.familiar_failures);
            v["threshold"] = json!(l.threshold);
            v["locked_until"] = json!(rfc3339(l.locked_until_ms));
            v["mode"] = json!(l.mode);
        }
        StateEvent::CompromiseSuspected(c) => {
            v["user"] = json!(c.user);
            v["client_ip"] = json!(c.client_ip.to_string());
            v["locked_until"] = json!(rfc3339(c.locked_until_ms));
        }
        StateEvent::Spray(s) => {
            v["kind"] = json!(s.kind);
            if let Some(ip) = s.client_ip {
                v["client_ip"] = json!(ip.to_string());
            }
            v["users"] = json!(s.users);
            v["client_ips"] = json!(
                s.client_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            );
            v["until"] = json!(rfc3339(s.until_ms));
            if let Some(b) = &s.block {
                v["block"] = block_json(b, at_ms);
            }
        }
    }
    v
}

fn block_json(b: &Block, at_ms: u64) -> Value {
    b.to_api(at_ms)
}

/// 16 random hex digits.
fn new_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes = (fastrand::u64(..) ^ u64::from(nanos)).to_be_bytes();
    }
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The first line of a secret file, trimmed; the message never holds it.
fn read_secret(path: &std::path::Path, key: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.trim_ascii();
    if line.is_empty() {
        return Err(format!(
            "{key}: {} is empty (its first line is the secret)",
            path.display()
        ));
    }
    Ok(line.to_vec())
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use stsgate_state::{BlockAction, CompromiseAlert, LockoutAlert, SprayAlert};

    const AT: u64 = 1_764_000_000_123;

    fn block(target: Target) -> Arc<Block> {
        Arc::new(Block::new(
            target,
            BlockAction::Require2fa,
            Some("soar playbook".into()),
            "api".into(),
            AT - 1000,
            Duration::from_secs(4 * 3600),
        ))
    }

    #[test]
    fn block_events_name_the_block_and_who_it_is_on() {
        let b = block(Target::User("alice@contoso.com".into()));
        let v = event_json(
            &StateEvent::BlockAdded(b.clone()),
            "00112233aabbccdd",
            AT,
            "gate-1/42",
        );
        assert_eq!(v["id"], "00112233aabbccdd");
        assert_eq!(v["ts"], "2025-11-24T16:00:00.123Z");
        assert_eq!(v["event"], "block_added");
        assert_eq!(v["instance"], "gate-1/42");
        assert_eq!(v["user"], "alice@contoso.com");
        assert!(v.get("client_ip").is_none());
        assert_eq!(v["block"]["id"], b.id.as_str());
        assert_eq!(v["block"]["user"], "alice@contoso.com");
        assert_eq!(v["block"]["action"], "require_2fa");
        assert_eq!(v["block"]["reason"], "soar playbook");

        let ip = block(Target::Ip("192.0.2.7".into()));
        let v = event_json(&StateEvent::BlockExpired(ip), "x", AT, "i");
        assert_eq!(
            (v["event"].as_str(), v["client_ip"].as_str()),
            (Some("block_expired"), Some("192.0.2.7"))
        );
        // A range is not one client IP: only the block names it.
        let range = block(Target::Ip("192.0.2.0/24".into()));
        let v = event_json(&StateEvent::BlockRemoved(range), "x", AT, "i");
        assert!(v.get("client_ip").is_none());
        assert_eq!(v["block"]["ip"], "192.0.2.0/24");
    }

    #[test]
    fn lockout_compromise_and_spray_events() {
        let until = AT + 30 * 60 * 1000;
        let l = LockoutAlert {
            user: "bob@contoso.com".into(),
            client_ip: "203.0.113.9".parse().unwrap(),
            unfamiliar_failures: 5,
            familiar_failures: 1,
            threshold: 5,
            locked_until_ms: until,
            mode: "enforce",
        };
        let v = event_json(&StateEvent::Lockout(Arc::new(l)), "i1", AT, "g");
        assert_eq!(v["event"], "lockout");
        assert_eq!(v["user"], "bob@contoso.com");
        assert_eq!(v["client_ip"], "203.0.113.9");
        assert_eq!(
            (
                v["unfamiliar_failures"].as_u64(),
                v["familiar_failures"].as_u64()
            ),
            (Some(5), Some(1))
        );
        assert_eq!(v["threshold"], 5);
        assert_eq!(v["locked_until"], "2025-11-24T16:30:00Z");
        assert_eq!(v["mode"], "enforce");

        let c = CompromiseAlert {
            user: "bob@contoso.com".into(),
            client_ip: "2001:db8::1".parse().unwrap(),
            locked_until_ms: until,
        };
        let v = event_json(&StateEvent::CompromiseSuspected(Arc::new(c)), "i2", AT, "g");
        assert_eq!(v["event"], "compromise_suspected");
        assert_eq!(v["client_ip"], "2001:db8::1");
        assert_eq!(v["locked_until"], "2025-11-24T16:30:00Z");

        let b = block(Target::Ip("198.51.100.4".into()));
        let s = SprayAlert {
            kind: "ip",
            client_ip: Some("198.51.100.4".parse().unwrap()),
            users: vec!["a@contoso.com".into(), "b@contoso.com".into()],
            client_ips: vec!["198.51.100.4".parse().unwrap()],
            until_ms: until,
            block: Some(b.clone()),
        };
        let v = event_json(&StateEvent::Spray(Arc::new(s)), "i3", AT, "g");
        assert_eq!(v["event"], "spray");
        assert_eq!(v["kind"], "ip");
        assert_eq!(v["client_ip"], "198.51.100.4");
        assert_eq!(v["users"], json!(["a@contoso.com", "b@contoso.com"]));
        assert_eq!(v["client_ips"], json!(["198.51.100.4"]));
        assert_eq!(v["until"], "2025-11-24T16:30:00Z");
        assert_eq!(v["block"]["id"], b.id.as_str());

        let s = SprayAlert {
            kind: "password",
            client_ip: None,
            users: vec!["a@contoso.com".into()],
            client_ips: vec![
                "198.51.100.4".parse().unwrap(),
                "198.51.100.5".parse().unwrap(),
            ],
            until_ms: until,
            block: None,
        };
        let v = event_json(&StateEvent::Spray(Arc::new(s)), "i4", AT, "g");
        assert_eq!(v["kind"], "password");
        assert!(v.get("client_ip").is_none() && v.get("block").is_none());
        assert_eq!(v["client_ips"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef0123");
        let sig = signature(&key, br#"{"event":"lockout"}"#);
        let tag = (0..32)
            .map(|i| u8::from_str_radix(&sig[7 + 2 * i..9 + 2 * i], 16).unwrap())
            .collect::<Vec<_>>();
        assert!(ring::hmac::verify(&key, br#"{"event":"lockout"}"#, &tag).is_ok());
        assert!(ring::hmac::verify(&key, br#"{"event":"lockout" }"#, &tag).is_err());
    }

    #[test]
    fn ids_are_16_hex_digits_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    fn config(dir: &std::path::Path, alerts: &str) -> Config {
        let text = format!(
            "rules = \"r.toml\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[state]\ninstance = \"gate-1\"\n[alerts]\n{alerts}"
        );
        let path = dir.join("stsgate.toml");
        Config::parse(&path.display().to_string(), &text).unwrap()
    }

    #[test]
    fn secret_files_are_checked_where_they_are_named_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let c = config(dir.path(), "");
        assert!(AlertSender::new(&c, &registry).unwrap().is_none());
        // The series exist at zero even without a webhook.
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"stsgate_alerts_total{event="spray",result="dropped"} 0"#),
            "{text}"
        );

        std::fs::write(dir.path().join("short.key"), "s3cr3t-short\n").unwrap();
        std::fs::write(dir.path().join("empty.token"), "\n\n").unwrap();
        let c = config(
            dir.path(),
            "webhook_url = \"http://127.0.0.1:9/hook\"\ntoken_file = \"empty.token\"\nsigning_key_file = \"short.key\"\nca_file = \"missing.pem\"\n",
        );
        let errors: Vec<String> = match AlertSender::new(&c, &Registry::new()) {
            Err(e) => e.iter().map(ToString::to_string).collect(),
            Ok(_) => panic!("bad files accepted"),
        };
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("stsgate.toml:8:14: alerts.token_file:")
                && errors[0].contains("is empty"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("stsgate.toml:9:20: alerts.signing_key_file:")
                && errors[1].contains("shorter than 16"),
            "{errors:?}"
        );
        assert!(
            errors[2].contains("stsgate.toml:10:11: alerts TLS:"),
            "{errors:?}"
        );
        assert!(errors.iter().all(|e| !e.contains("s3cr3t")), "{errors:?}");

        std::fs::write(dir.path().join("ok.token"), "tok-123\n").unwrap();
        std::fs::write(
            dir.path().join("ok.key"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        let c = config(
            dir.path(),
            "webhook_url = \"https://soar.example.com/hooks/stsgate?k=v\"\ntoken_file = \"ok.token\"\nsigning_key_file = \"ok.key\"\nqueue = 3\n",
        );
        let sender = AlertSender::new(&c, &Registry::new()).unwrap().unwrap();
        assert_eq!(
            sender.webhook.shown,
            "https://soar.example.com/hooks/stsgate"
        );
        assert_eq!(sender.instance, "gate-1");
        assert_eq!(sender.max_attempts, 6);
        assert!(
            sender
                .webhook
                .token
                .as_ref()
                .is_some_and(HeaderValue::is_sensitive)
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let c = config(
            dir.path(),
            "webhook_url = \"http://127.0.0.1:9/hook\"\nqueue = 2\n",
        );
        let sender = AlertSender::new(&c, &registry).unwrap().unwrap();
        let sink = sender.sink();
        for _ in 0..5 {
            sink.send(StateEvent::BlockAdded(block(Target::Ip(
                "192.0.2.1".into(),
            ))));
        }
        let dropped = sender
            .queue
            .metrics
            .total
            .with_label_values(&["block_added", "dropped"])
            .get();
        assert_eq!(dropped, 3);
        // Stopped before it starts: what is queued gets one attempt in the
        // flush (port 9 refuses), then counts as dropped.
        let (stop_tx, stop_rx) = watch::channel(true);
        sender.run(stop_rx).await;
        drop(stop_tx);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let m = |r: &str| {
            let series = format!("stsgate_alerts_total{{event=\"block_added\",result=\"{r}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        assert_eq!(m("dropped"), 5.0);
        assert_eq!(m("delivered"), 0.0);
        // After the sender is gone, events are dropped and counted.
        sink.send(StateEvent::BlockRemoved(block(Target::Ip(
            "192.0.2.1".into(),
        ))));
    }
}
