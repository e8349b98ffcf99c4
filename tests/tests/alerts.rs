//! Alerts to a SOAR through the running binary (PRODUCT.md §4.4, issue 7
//! item 5): block events posted to a real loopback HTTP receiver with the
//! bearer token and a signature the receiver verifies, in the shape of
//! `deploy/alerts.schema.json`; a receiver that is down, then back
//! (retries); one that always answers 500 (`failed`); a full queue
//! (`dropped`). Counted in `stsgate_alerts_total{event, result}`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stsgate_tests::*;

const OPEN_RULES: &str = "[request_blocking]\nenabled = false\n";
const TOKEN: &str = "soar-token-5f0c1e9a7b";
const KEY: &str = "9c1f0e6a4b7d2e8f0a1b3c5d7e9f1a2b";

/// A POST the receiver got.
#[derive(Debug, Clone)]
struct Hook {
    headers: HeaderMap,
    body: Bytes,
}

impl Hook {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the alert is JSON")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A real HTTP receiver on loopback: records every POST, answers `status`
/// after `delay`.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Hook>>>,
    status: Arc<AtomicU16>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Receiver {
    async fn start(delay: Duration) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::serve(listener, delay)
    }

    fn serve(listener: tokio::net::TcpListener, delay: Duration) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (got2, status2) = (got.clone(), status.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stop_rx => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (got, status) = (got2.clone(), status2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (got, status) = (got.clone(), status.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            got.lock().unwrap().push(Hook {
                                headers: parts.headers,
                                body,
                            });
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            got,
            status,
            _stop: stop_tx,
        }
    }

    fn got(&self) -> Vec<Hook> {
        self.got.lock().unwrap().clone()
    }
}

/// The secrets, in a directory of their own (absolute paths in the config).
fn secrets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("soar.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("alerts.key"), format!("{KEY}\n")).unwrap();
    dir
}

/// A gate whose `[alerts]` post to `addr`, with `more` alert settings.
fn gate(upstream: &Upstream, addr: SocketAddr, secrets: &tempfile::TempDir, more: &str) -> Gate {
    let extra = format!(
        "instance = \"gate-a\"\n[alerts]\nwebhook_url = \"http://{addr}/hooks/stsgate\"\ntoken_file = \"{}\"\nsigning_key_file = \"{}\"\n{more}\n",
        secrets.path().join("soar.token").display(),
        secrets.path().join("alerts.key").display(),
    );
    Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(OPEN_RULES, upstream)
    })
}

fn alerts(gate: &Gate, event: &str, result: &str) -> f64 {
    gate.metric(&format!(
        "stsgate_alerts_total{{event=\"{event}\",result=\"{result}\"}}"
    ))
}

/// The receiver's check: the signature is the HMAC-SHA-256 of the body.
fn verify(hook: &Hook) {
    let sig = hook.header("x-stsgate-signature");
    let hex = sig.strip_prefix("sha256=").expect("sha256= signature");
    assert_eq!(hex.len(), 64, "{sig}");
    let tag: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    ring::hmac::verify(&key, &hook.body, &tag).expect("the signature verifies");
    let mut tampered = hook.body.to_vec();
    tampered.push(b' ');
    assert!(ring::hmac::verify(&key, &tampered, &tag).is_err());
}

/// The event against `deploy/alerts.schema.json`: required keys (also per
/// event), no key the schema does not name, the block's own keys.
fn conforms(v: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(workspace().join("deploy/alerts.schema.json")).unwrap(),
    )
    .unwrap();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let obj = v.as_object().expect("an object");
    let props = schema["properties"].as_object().unwrap();
    for key in obj.keys() {
        assert!(props.contains_key(key), "{key} is not in the schema: {v}");
    }
    let event = v["event"].as_str().unwrap();
    assert!(names(&schema["properties"]["event"]["enum"]).contains(&event.to_string()));
    let mut required = names(&schema["required"]);
    for rule in schema["allOf"].as_array().unwrap() {
        let cond = &rule["if"]["properties"]["event"];
        let applies = cond["const"].as_str() == Some(event)
            || names(&cond["enum"]).contains(&event.to_string());
        if applies {
            required.extend(names(&rule["then"]["required"]));
        }
    }
    for key in &required {
        assert!(obj.contains_key(key), "{key} missing: {v}");
    }
    if let Some(block) = obj.get("block").and_then(|b| b.as_object()) {
        let def = &schema["$defs"]["block"];
        let props = def["properties"].as_object().unwrap();
        for key in block.keys() {
            assert!(
                props.contains_key(key),
                "block.{key} is not in the schema: {v}"
            );
        }
        for key in names(&def["required"]) {
            assert!(block.contains_key(&key), "block.{key} missing: {v}");
        }
        assert!(
            block.contains_key("ip") != block.contains_key("user"),
            "{v}"
        );
    }
    let id = v["id"].as_str().unwrap();
    assert!(
        id.len() == 16 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_events_reach_the_soar_signed_and_with_the_token() {
    let upstream = Upstream::start().await;
    let receiver = Receiver::start(Duration::ZERO).await;
    let secrets = secrets();
    let gate = gate(&upstream, receiver.addr, &secrets, "");
    // Every series exists from the start.
    let (_, metrics) = gate.admin_get("/metrics");
    for event in [
        "lockout",
        "compromise_suspected",
        "spray",
        "block_added",
        "block_removed",
        "block_expired",
    ] {
        for result in ["delivered", "failed", "dropped"] {
            let series = format!("stsgate_alerts_total{{event=\"{event}\",result=\"{result}\"}} 0");
            assert!(metrics.contains(&series), "{series} missing");
        }
    }

    let (status, added) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"user": "Alice@Contoso.com", "action": "require_2fa", "ttl": "4h", "reason": "SOAR playbook: lockout"}"#),
    );
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(
        gate.api("DELETE", &format!("/api/v1/blocks/{id}"), None).0,
        204
    );
    let (status, _) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"ip": "192.0.2.77", "ttl": 1}"#),
    );
    assert_eq!(status, 201);
    assert!(
        gate.wait_until(Duration::from_secs(15), |_| receiver.got().len() >= 4),
        "{:?}",
        receiver.got()
    );

    let got = receiver.got();
    let events: Vec<serde_json::Value> = got.iter().map(Hook::json).collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "block_added",
            "block_removed",
            "block_added",
            "block_expired"
        ]
    );
    for (hook, event) in got.iter().zip(&events) {
        assert_eq!(hook.header("authorization"), format!("Bearer {TOKEN}"));
        assert_eq!(hook.header("content-type"), "application/json");
        assert_eq!(
            hook.header("x-stsgate-event"),
            event["event"].as_str().unwrap()
        );
        assert_eq!(
            hook.header("x-stsgate-delivery"),
            event["id"].as_str().unwrap()
        );
        verify(hook);
        conforms(event);
        assert_eq!(event["instance"], "gate-a");
    }
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "every event has its own id");
    assert_eq!(events[0]["user"], "alice@contoso.com");
    assert_eq!(events[0]["block"]["id"], id.as_str());
    assert_eq!(events[0]["block"]["action"], "require_2fa");
    assert_eq!(events[0]["block"]["reason"], "SOAR playbook: lockout");
    assert_eq!(events[1]["block"]["id"], id.as_str());
    assert_eq!(events[2]["client_ip"], "192.0.2.77");
    assert_eq!(events[3]["client_ip"], "192.0.2.77");
    assert_eq!(events[3]["block"]["ttl_left_seconds"], 0);

    assert!(gate.wait_until(Duration::from_secs(5), |g| alerts(
        g,
        "block_added",
        "delivered"
    ) == 2.0));
    assert_eq!(alerts(&gate, "block_removed", "delivered"), 1.0);
    assert_eq!(alerts(&gate, "block_expired", "delivered"), 1.0);
    assert_eq!(
        alerts(&gate, "block_added", "failed") + alerts(&gate, "block_added", "dropped"),
        0.0
    );
    // The secrets are never written anywhere.
    let logs = [gate.stdout(), gate.stderr()].concat().join("\n");
    assert!(
        !logs.contains(TOKEN) && !logs.contains(KEY),
        "a secret was logged"
    );
    assert!(logs.contains("alerts to the SOAR webhook"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_the_alert_once_it_is_back() {
    let upstream = Upstream::start().await;
    // A port nothing listens on yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let secrets = secrets();
    let gate = gate(
        &upstream,
        addr,
        &secrets,
        "max_attempts = 20\nbackoff = \"100ms\"\nmax_backoff = \"400ms\"\n",
    );
    let (status, _) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"user": "bob@contoso.com", "ttl": "1h"}"#),
    );
    assert_eq!(status, 201);
    assert!(
        gate.wait_stderr("alert delivery failed, will retry"),
        "{:?}",
        gate.stderr()
    );
    let receiver = Receiver::serve(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        Duration::ZERO,
    );
    assert!(gate.wait_until(Duration::from_secs(15), |g| alerts(
        g,
        "block_added",
        "delivered"
    ) == 1.0));
    let got = receiver.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["user"], "bob@contoso.com");
    verify(&got[0]);
    assert_eq!(alerts(&gate, "block_added", "failed"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_always_fails_is_counted_failed_after_every_attempt() {
    let upstream = Upstream::start().await;
    let receiver = Receiver::start(Duration::ZERO).await;
    receiver.status.store(500, Ordering::SeqCst);
    let secrets = secrets();
    let gate = gate(
        &upstream,
        receiver.addr,
        &secrets,
        "max_attempts = 3\nbackoff = \"50ms\"\nmax_backoff = \"100ms\"\n",
    );
    let (status, _) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"ip": "203.0.113.5", "ttl": "1h"}"#),
    );
    assert_eq!(status, 201);
    assert!(gate.wait_until(Duration::from_secs(15), |g| alerts(
        g,
        "block_added",
        "failed"
    ) == 1.0));
    let got = receiver.got();
    assert_eq!(got.len(), 3, "max_attempts = 3");
    // The same event each time: one id, one body, a receiver can drop repeats.
    assert!(got.iter().all(|h| h.body == got[0].body
        && h.header("x-stsgate-delivery") == got[0].header("x-stsgate-delivery")));
    assert_eq!(alerts(&gate, "block_added", "delivered"), 0.0);
    assert!(gate.wait_stderr("alert not delivered: gave up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts() {
    let upstream = Upstream::start().await;
    let receiver = Receiver::start(Duration::from_secs(1)).await;
    let secrets = secrets();
    let gate = gate(&upstream, receiver.addr, &secrets, "queue = 1\n");
    // Six blocks at once: one in delivery (the receiver is slow), one
    // waiting, the rest find the queue full.
    let bulk: Vec<String> = (1..=6)
        .map(|i| format!(r#"{{"ip": "198.51.100.{i}", "ttl": "1h"}}"#))
        .collect();
    let (status, _) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(&format!("[{}]", bulk.join(","))),
    );
    assert_eq!(status, 201);
    assert!(gate.wait_until(Duration::from_secs(15), |g| {
        alerts(g, "block_added", "delivered") + alerts(g, "block_added", "dropped") == 6.0
    }));
    let dropped = alerts(&gate, "block_added", "dropped");
    assert!((4.0..=5.0).contains(&dropped), "dropped {dropped}");
    assert_eq!(receiver.got().len() as f64, 6.0 - dropped);
    assert_eq!(alerts(&gate, "block_added", "failed"), 0.0);
}

/// The right password of every user, for the STS below.
const RIGHT: &str = "correct horse & battery";

/// An upstream that checks the password like an STS.
async fn sts() -> Upstream {
    let upstream = Upstream::start().await;
    let success = Bytes::from(fixture("rstr-2005-success.xml"));
    let fault = Bytes::from(fixture("fault-failed-authentication.xml"));
    upstream.respond(move |seen| {
        let body = String::from_utf8_lossy(&seen.body);
        let right = format!(
            "<sec:Password>{}</sec:Password>",
            RIGHT.replace('&', "&amp;")
        );
        if body.contains(&right) {
            Answer::soap(200, success.clone())
        } else {
            Answer::soap(500, fault.clone())
        }
    });
    upstream
}

async fn signin(gate: &Gate, user: &str, password: &str, from: &str) -> u16 {
    send(
        &http_client(),
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-ms-forwarded-client-ip", from)],
            rst_for(user, password),
        ),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_compromise_and_spray_reach_the_soar_without_a_password() {
    let upstream = sts().await;
    let receiver = Receiver::start(Duration::ZERO).await;
    let secrets = secrets();
    let rules = "[request_blocking]\nenabled = false\n[lockout]\nthreshold = 3\nobservation_window = \"30m\"\nfamiliar_for = \"1h\"\n[spray]\ndistinct_users = 4\nsame_password_users = 3\nwindow = \"10m\"\nblock_for = \"1h\"\n";
    let extra = format!(
        "instance = \"gate-b\"\n[alerts]\nwebhook_url = \"http://{}/hooks/stsgate\"\nsigning_key_file = \"{}\"\n[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blocked]\ndelay = \"0s\"\n",
        receiver.addr,
        secrets.path().join("alerts.key").display(),
    );
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(rules, &upstream)
    });
    let guesses = ["Guess-One-1", "Guess-Two-2", "Guess-Three-3"];
    // Alice at home, then three guesses from elsewhere: locked.
    assert_eq!(
        signin(&gate, "alice@contoso.com", RIGHT, "10.0.0.1").await,
        200
    );
    for (guess, from) in guesses.iter().zip(["192.0.2.1", "192.0.2.2", "192.0.2.3"]) {
        assert_eq!(signin(&gate, "alice@contoso.com", guess, from).await, 500);
    }
    // The right password from an unfamiliar IP while locked.
    assert_eq!(
        signin(&gate, "alice@contoso.com", RIGHT, "203.0.113.50").await,
        500
    );
    // One password over three users from three IPs.
    for (user, from) in [
        ("u1@contoso.com", "203.0.113.1"),
        ("u2@contoso.com", "203.0.113.2"),
        ("u3@contoso.com", "203.0.113.3"),
    ] {
        signin(&gate, user, "Winter2026!", from).await;
    }
    // One IP failing for four users.
    for (i, user) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
        signin(
            &gate,
            &format!("{user}@contoso.com"),
            &format!("Spring{i}"),
            "198.51.100.66",
        )
        .await;
    }
    let wanted = ["lockout", "compromise_suspected", "spray", "block_added"];
    let events = || -> Vec<serde_json::Value> { receiver.got().iter().map(Hook::json).collect() };
    assert!(
        gate.wait_until(Duration::from_secs(15), |_| {
            let e = events();
            e.iter().filter(|e| e["event"] == "spray").count() == 2
                && wanted.iter().all(|w| e.iter().any(|e| e["event"] == *w))
        }),
        "{:?}",
        events()
    );
    let events = events();
    for (hook, event) in receiver.got().iter().zip(&events) {
        verify(hook);
        conforms(event);
        assert_eq!(
            hook.header("authorization"),
            "",
            "no token_file: no Authorization"
        );
    }
    let one = |name: &str| events.iter().find(|e| e["event"] == name).unwrap().clone();
    let lockout = one("lockout");
    assert_eq!(lockout["user"], "alice@contoso.com");
    assert_eq!(lockout["client_ip"], "192.0.2.3");
    assert_eq!(
        (
            lockout["unfamiliar_failures"].as_u64(),
            lockout["threshold"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_eq!(lockout["mode"], "enforce");
    assert_eq!(lockout["instance"], "gate-b");
    let compromise = one("compromise_suspected");
    assert_eq!(
        (
            compromise["user"].as_str(),
            compromise["client_ip"].as_str()
        ),
        (Some("alice@contoso.com"), Some("203.0.113.50"))
    );
    let by_password = events.iter().find(|e| e["kind"] == "password").unwrap();
    assert_eq!(
        by_password["users"].as_array().unwrap().len(),
        3,
        "{by_password}"
    );
    assert_eq!(
        by_password["client_ips"].as_array().unwrap().len(),
        3,
        "{by_password}"
    );
    let by_ip = events.iter().find(|e| e["kind"] == "ip").unwrap();
    assert_eq!(by_ip["client_ip"], "198.51.100.66");
    assert_eq!(by_ip["block"]["origin"], "spray");
    let added = one("block_added");
    assert_eq!(
        (added["client_ip"].as_str(), added["block"]["id"].as_str()),
        (Some("198.51.100.66"), by_ip["block"]["id"].as_str())
    );
    assert!(
        gate.wait_until(Duration::from_secs(5), |g| alerts(g, "spray", "delivered")
            == 2.0)
    );
    assert_eq!(alerts(&gate, "lockout", "delivered"), 1.0);
    assert_eq!(alerts(&gate, "compromise_suspected", "delivered"), 1.0);
    // No password, in any spelling, in any alert.
    let bodies: String = receiver
        .got()
        .iter()
        .map(|h| String::from_utf8_lossy(&h.body).into_owned())
        .collect();
    for pw in guesses.iter().chain(&[
        RIGHT,
        "correct horse &amp; battery",
        "Winter2026!",
        "Spring0",
        "Spring3",
    ]) {
        assert!(!bodies.contains(pw), "{pw:?} in an alert");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_flushes_what_is_left() {
    let upstream = Upstream::start().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let secrets = secrets();
    // A long backoff: only the final flush can deliver in time.
    let gate = gate(
        &upstream,
        addr,
        &secrets,
        "backoff = \"1m\"\nmax_backoff = \"1m\"\n",
    );
    let (status, _) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"user": "dave@contoso.com", "ttl": "1h"}"#),
    );
    assert_eq!(status, 201);
    assert!(gate.wait_stderr("alert delivery failed, will retry"));
    let receiver = Receiver::serve(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        Duration::ZERO,
    );
    drop(gate.stop());
    let got = receiver.got();
    assert_eq!(got.len(), 1, "delivered by the final flush");
    assert_eq!(got[0].json()["user"], "dave@contoso.com");
}

#[test]
fn check_and_run_refuse_bad_alert_files_where_the_config_names_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), OPEN_RULES).unwrap();
    std::fs::write(dir.path().join("short.key"), "Sh0rt-Key\n").unwrap();
    let config = dir.path().join("stsgate.toml");
    std::fs::write(
        &config,
        "rules = \"r.toml\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[admin]\naddr = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n[alerts]\nwebhook_url = \"https://soar.example.com/hook\"\ntoken_file = \"missing.token\"\nsigning_key_file = \"short.key\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let (code, out, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{config}:10:14: alerts.token_file: cannot read")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{config}:11:20: alerts.signing_key_file: "))
            && err.contains("shorter than 16"),
        "{err}"
    );
    let (code, out, err) = stsgate(&["run", "--config", &config]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("{config}:10:14: alerts.token_file: cannot read")),
        "{err}"
    );
    assert!(
        !format!("{out}{err}").contains("Sh0rt-Key"),
        "the key is never shown"
    );
}
